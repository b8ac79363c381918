"""Capturable timm ViT attention: same outputs, weights in the shared AttentionMap format, rollout."""
import pytest
import timm
import torch

from dynexit.layers import AttentionMap, attention_rollout, make_attention_capturable
from dynexit.layers.attention_capture import recording


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1,
                             num_classes=10, depth=2, embed_dim=32, num_heads=2).eval()


def test_capture_keeps_outputs_and_records_class_token_maps(tiny_vit):
    x = torch.rand(3, 1, 28, 28)
    ref = tiny_vit(x)
    layers = make_attention_capturable(tiny_vit.blocks, (7, 7), num_prefix_tokens=1)
    with recording(layers) as rec:
        out = tiny_vit(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert rec.names() == ["block0", "block1"]
    w = rec[0].weights
    assert w.shape == (3, 2, 50, 50)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 50))
    # class-token attention: the cls row over the 49 patch keys, head-averaged
    torch.testing.assert_close(rec[0].spatial(), w.mean(1)[:, 0, 1:].reshape(3, 7, 7))
    roll = attention_rollout(rec.maps)
    assert roll.shape == (3, 7, 7) and torch.all(roll >= 0)


def test_rollout_of_identity_attention_is_uniform_mixing_free():
    eye = torch.eye(5).expand(1, 1, 5, 5)
    m = AttentionMap("b0", "vit", 0, eye, (2, 2), "both", 1)
    # attention to itself only: the class token draws nothing from the patches
    assert attention_rollout([m, m]).abs().max() == 0
    uniform = torch.full((1, 1, 4, 4), 0.25)
    u = AttentionMap("b0", "vit", 0, uniform, (2, 2), "both", 0)
    torch.testing.assert_close(attention_rollout([u]), torch.full((1, 2, 2), 0.25))


def test_rollout_rejects_cross_attention_maps():
    m = AttentionMap("x2z0", "x2z", 0, torch.rand(1, 1, 4, 9), (3, 3), "keys")
    with pytest.raises(ValueError, match="self-attention"):
        attention_rollout([m])
