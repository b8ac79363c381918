"""Perceiver-style cross-attention layer (pre-norm attention + MLP, residual on the queries).

Used in both directions of the Dynamic Perceiver (Han et al., ICCV 2023):
- x2z: latent tokens query a (pooled) feature map, with an optional learnable key position offset
  added to the projected keys (the paper's "rpb");
- z2x: every pixel of a feature map queries the latent; narrow query/key channels keep it cheap.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.layers import Mlp

from dynexit.layers.attention_capture import CapturesAttention


class CrossAttention(nn.Module, CapturesAttention):
    """``out = q + Attn(LN(q), LN(kv)); out = out + MLP(LN(out))``.

    Parameters
    ----------
    q_dim, kv_dim : channels of the query and key/value inputs
    num_heads : attention heads
    qk_dim, v_dim : projected query/key and value widths (default q_dim, and qk_dim)
    mlp_ratio : hidden width of the MLP relative to q_dim (0 disables the MLP)
    num_keys : if given, a learnable offset (1, num_keys, qk_dim) is added to the keys
    """

    def __init__(self, q_dim: int, kv_dim: int, num_heads: int = 1, qk_dim: int | None = None,
                 v_dim: int | None = None, mlp_ratio: float = 1.0, num_keys: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        qk_dim = qk_dim or q_dim
        v_dim = v_dim or qk_dim
        if qk_dim % num_heads or v_dim % num_heads:
            raise ValueError(f"qk_dim {qk_dim} and v_dim {v_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (qk_dim // num_heads) ** -0.5
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)
        self.q = nn.Linear(q_dim, qk_dim, bias=False)
        self.k = nn.Linear(kv_dim, qk_dim, bias=False)
        self.v = nn.Linear(kv_dim, v_dim, bias=False)
        self.key_pos = nn.Parameter(torch.zeros(1, num_keys, qk_dim)) if num_keys else None
        self.proj = nn.Linear(v_dim, q_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(q_dim)
            self.mlp = Mlp(q_dim, max(1, int(q_dim * mlp_ratio)), drop=proj_drop)
        else:
            self.mlp_norm = self.mlp = None

    def _split(self, t):
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, grid=None) -> torch.Tensor:
        """x_q (B, Nq, q_dim), x_kv (B, Nk, kv_dim) -> (B, Nq, q_dim). ``grid`` is only recorded."""
        q = self.q(self.q_norm(x_q))
        kv = self.kv_norm(x_kv)
        k, v = self.k(kv), self.v(kv)
        if self.key_pos is not None:
            if self.key_pos.shape[1] != k.shape[1]:
                raise ValueError(f"cross-attention expects {self.key_pos.shape[1]} keys (its position offset), got {k.shape[1]}")
            k = k + self.key_pos
        q, k, v = self._split(q), self._split(k), self._split(v)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        self.record_attention(attn, grid)
        o = self.attn_drop(attn) @ v
        o = o.transpose(1, 2).reshape(x_q.shape[0], x_q.shape[1], -1)
        out = x_q + self.proj_drop(self.proj(o))
        if self.mlp is not None:
            out = out + self.mlp(self.mlp_norm(out))
        return out
