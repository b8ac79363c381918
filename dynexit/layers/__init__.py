"""Reusable layers for the model families (one idea per file)."""
from dynexit.layers.attention_capture import (AttentionMap, AttentionRecorder, CapturesAttention, attention_rollout,
                                              recording)
from dynexit.layers.cross_attention import CrossAttention
from dynexit.layers.exit_heads import ConvExitHead, LatentExitHead, LogitsEmbedding
from dynexit.layers.latent_blocks import LatentSelfAttention
from dynexit.layers.pool_linear_head import PoolLinearHead
from dynexit.layers.token_mixer import LatentTransition, TokenMixer
from dynexit.layers.vit_attention import CapturingAttention, make_attention_capturable

__all__ = [
    "AttentionMap", "AttentionRecorder", "CapturesAttention", "attention_rollout", "recording", "CrossAttention", "ConvExitHead",
    "LatentExitHead", "LogitsEmbedding", "LatentSelfAttention", "PoolLinearHead", "LatentTransition", "TokenMixer",
    "CapturingAttention", "make_attention_capturable",
]
