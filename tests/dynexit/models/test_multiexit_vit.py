"""Multi-Exit ViT: the seven branch types, staged form, real early exit, costs, attention, checkpoints."""

import numpy as np
import pytest
import torch

from dynexit.io.checkpoint import load_checkpoint, save_checkpoint
from dynexit.flops import forward_flops
from dynexit.inference import early_exit, exits_from_logits
from dynexit.layers import AttentionMap
from dynexit.layers.vit_exit_branches import BRANCH_TYPES, branch_options, create_branch
from dynexit.models import create_model, list_models
from _tiny_models import quantile_thresholds as _quantile_thresholds

from _tiny_models import assert_staged_equals_forward, capture_keeps_outputs

DEPTH = 3  # mevit_tiny: dim 32, 3 blocks, 2 heads, 7x7 tokens + class token
ALL_TYPES = list(BRANCH_TYPES)


def tiny(exits, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model("mevit_tiny", exits=exits, **kwargs)


def images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def check_early_exit_and_costs(m, n=32):
    """Same exits and logits as the table path (some samples leaving early), monotone costs ending at forward's."""
    m.eval()
    x = images(n, seed=1)
    outs = assert_staged_equals_forward(m, x)
    t = _quantile_thresholds(outs, "max_prob", q=0.6)
    logits, exits = early_exit(m, x, t)
    ref_exits, ref_logits = exits_from_logits(outs, t)
    np.testing.assert_array_equal(exits.numpy(), ref_exits)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)
    assert exits.min() == 0 and exits.max() > 0
    c = m.exit_costs()
    assert c.shape == (m.num_exits,) and np.all(c > 0) and np.all(np.diff(c) > 0)
    np.testing.assert_allclose(c[-1], forward_flops(m), rtol=1e-9)
    return outs


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_branch_type_on_every_block(kind):
    m = tiny([[b, kind] for b in range(DEPTH)])
    assert m.exit_names == tuple(f"block{b}_{kind}" for b in range(DEPTH)) + ("head",)
    outs = check_early_exit_and_costs(m)
    assert all(o.shape == (32, 10) and torch.isfinite(o).all() for o in outs)
    # a branch on the last block leaves only the head for the last stage
    assert m.segments[-1] == () and m.backbone_stage(m.num_exits - 1) is not None


def test_mixed_types_share_one_backbone():
    exits = [[2, "resmlp"], [0, "mlp"], [0, "cnn_project"], [1, "vit"], [1, "cnn_ignore"], [2, "mixer"], [1, "cnn_add"]]
    m = tiny(exits)
    # sorted by block, stable within a block
    assert m.exit_names == ("block0_mlp", "block0_cnn_project", "block1_vit", "block1_cnn_ignore", "block1_cnn_add",
                            "block2_resmlp", "block2_mixer", "head")
    assert m.segments == [(0,), (), (1,), (), (), (2,), (), ()]
    check_early_exit_and_costs(m, n=48)


@pytest.mark.parametrize("grid,prefix", [((7, 7), 1), ((3, 5), 2), ((4, 4), 0)])
@pytest.mark.parametrize("kind", ALL_TYPES)
def test_branch_shapes_and_token_layouts(kind, grid, prefix):
    if kind in ("cnn_add", "cnn_project") and prefix == 0:
        with pytest.raises(ValueError, match="class token"):
            create_branch(kind, 16, grid, prefix, 5)
        return
    b = create_branch(kind, 16, grid, prefix, 5, hidden=8).eval()
    assert b(torch.randn(3, prefix + grid[0] * grid[1], 16)).shape == (3, 5)
    with pytest.raises(ValueError, match="expects tokens"):
        b(torch.randn(3, prefix + grid[0] * grid[1] + 1, 16))


# which part of the token sequence each type reads (see the module docstring)
READS_CLASS_TOKEN = {"mlp": True, "cnn_ignore": False, "cnn_add": True, "cnn_project": True, "vit": True,
                     "mixer": False, "resmlp": False}


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_branch_reads_the_documented_tokens(kind):
    torch.manual_seed(0)
    b = create_branch(kind, 16, (7, 7), 1, 5).eval()
    x = torch.randn(2, 50, 16)
    new_cls, new_patches = x.clone(), x.clone()
    new_cls[:, 0] += torch.randn(2, 16)  # (a constant shift would vanish in LayerNorm)
    new_patches[:, 1:] += torch.randn(2, 49, 16)
    with torch.no_grad():
        ref, by_cls, by_patches = b(x), b(new_cls), b(new_patches)
    assert (not torch.allclose(ref, by_cls, atol=1e-6)) == READS_CLASS_TOKEN[kind]
    assert (not torch.allclose(ref, by_patches, atol=1e-6)) == (kind != "mlp")


def test_head_is_the_timm_vit():
    m = tiny([[0, "mlp"], [1, "cnn_add"]]).eval()
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[-1], m.vit(m.normalize(x)))


def test_exit_parts_partition_the_parameters():
    m = tiny([[0, "vit"], [0, "mlp"], [2, "cnn_add"]])
    owners = {}
    for k in range(m.num_exits):
        stage = m.backbone_stage(k)
        for part in ([m.exit_branch(k)] + ([stage] if stage is not None else [])):
            for p in part.parameters():
                assert id(p) not in owners, "a parameter belongs to two exit parts"
                owners[id(p)] = k
    assert set(owners) == {id(p) for p in m.parameters()}
    assert m.backbone_stage(1) is None  # block 0 is shared: stage 1 runs only its branch
    first = {id(p) for p in m.backbone_stage(0).parameters()}
    assert {id(m.vit.cls_token), id(m.vit.pos_embed), id(m.vit.patch_embed.proj.weight)} <= first
    assert id(m.vit.norm.weight) in {id(p) for p in m.backbone_stage(m.num_exits - 1).parameters()}
    assert m.exit_branch(0) is m.branches[0]
    assert set(m.state_dict()) == set(tiny([[0, "vit"], [0, "mlp"], [2, "cnn_add"]]).state_dict())
    with pytest.raises(ValueError, match=r"exits 0\.\.3"):
        m.exit_branch(4)


def test_loss_weights_double_the_final_exit():
    m = tiny([[0, "mlp"], [1, "mlp"]])
    assert m.loss_weights() == [1.0, 1.0, 2.0]
    assert tiny([[0, "mlp"]], loss_weights=[0.5, 1.0]).loss_weights() == [0.5, 1.0]
    with pytest.raises(ValueError, match="loss_weights needs 2"):
        tiny([[0, "mlp"]], loss_weights=[1.0])


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="valid types: mlp, cnn_ignore, cnn_add, cnn_project, vit, mixer, resmlp"):
        tiny([[0, "transformer"]])
    with pytest.raises(ValueError, match=r"3 blocks, numbered 0\.\.2"):
        tiny([[3, "mlp"]])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        tiny([[-1, "mlp"]])
    with pytest.raises(ValueError, match="listed twice"):
        tiny([[1, "mlp"], [1, "mlp"]])
    with pytest.raises(ValueError, match=r"\[block, type\]"):
        tiny([1, "mlp"])
    with pytest.raises(ValueError, match="needs a class token"):
        tiny([[0, "cnn_add"]], class_token=False)
    with pytest.raises(ValueError, match="its options: hidden, drop, conv_dim"):
        tiny([[0, "cnn_ignore", {"num_heads": 2}]])
    with pytest.raises(ValueError, match="register tokens without a class token"):
        tiny([[0, "mlp"]], class_token=False, reg_tokens=2)
    with pytest.raises(ValueError, match="1-channel"):
        tiny([[0, "mlp"]])(torch.rand(2, 3, 28, 28))
    assert branch_options("vit") == ["hidden", "drop", "num_heads", "mlp_ratio"]


def test_register_tokens_are_prefix_tokens():
    m = tiny([[0, "cnn_project"], [1, "vit"], [2, "mixer"]], reg_tokens=2)
    assert m.num_prefix_tokens == 3
    check_early_exit_and_costs(m, n=16)


def test_no_class_token_pools_the_mean():
    m = tiny([[0, "mlp"], [1, "cnn_ignore"], [2, "vit"]], class_token=False)
    assert m.num_prefix_tokens == 0
    check_early_exit_and_costs(m, n=16)


def test_attention_capture_per_block_and_vit_branch():
    m = tiny([[0, "mlp"], [1, "vit"], [1, "cnn_add"]]).eval()
    x = images(5)
    rec = capture_keeps_outputs(m, x)
    assert rec.names() == ["block0", "block1", "block1_vit_attn0", "block2"]
    assert [a.stage for a in rec] == [0, 1, 1, 3]  # block i runs in the stage of the exit that first needs it
    for a in rec:
        assert isinstance(a, AttentionMap) and a.kind == "vit" and a.grid_axis == "both"
        assert a.weights.shape == (5, 2, 50, 50)
        torch.testing.assert_close(a.weights.sum(-1), torch.ones(5, 2, 50))
        assert a.spatial().shape == (5, 7, 7)
    assert len(rec) == 4  # nothing recorded outside the context
    with torch.no_grad():
        m(x)
    assert len(rec) == 4


def test_checkpoint_round_trip_with_mixed_branches(tmp_path):
    exits = [[0, "cnn_project"], [1, "mixer"], [2, "resmlp", {"hidden": 16}]]
    m = tiny(exits, seed=3)
    path = save_checkpoint(m, tmp_path / "mevit.safetensors", val_accuracy=[0.1] * 4)
    back = load_checkpoint(path)
    assert back.exit_names == m.exit_names and back.config() == m.config()
    assert back.branches[2].head[0].fc1.out_features == 16
    m.eval()
    x = images(6)
    with torch.no_grad():
        for a, b in zip(m(x), back(x)):
            torch.testing.assert_close(a, b)
    fresh = tiny(exits, seed=4).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x)[0], back(x)[0])  # the weights came from the file


def test_with_exits_keeps_the_backbone():
    m = tiny([[0, "mlp"]], seed=1)
    other = m.with_exits([[1, "vit"], [2, "mixer"]])
    assert other.exit_names == ("block1_vit", "block2_mixer", "head")
    assert other.arch_kwargs["exits"] == [[1, "vit"], [2, "mixer"]]
    for (ka, a), (kb, b) in zip(m.vit.state_dict().items(), other.vit.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x)[-1], other.eval()(x)[-1])


def test_solo_exit_costs_match_single_branch_models():
    exits = [[0, "vit"], [1, "cnn_project"], [2, "mlp"]]
    solo = tiny(exits).solo_exit_costs()
    for k, e in enumerate(exits):
        np.testing.assert_allclose(solo[k], tiny([e]).exit_costs()[0], rtol=1e-9)
    np.testing.assert_allclose(solo[-1], tiny([]).exit_costs()[0], rtol=1e-9)


def test_entrypoints():
    assert {"mevit_tiny", "mevit_fmnist", "mevit_small_patch16_224"} <= set(list_models("mevit*"))
    m = create_model("mevit_fmnist")
    assert m.num_exits >= 3 and m.input_size == (28, 28) and m.in_chans == 1 and m.grid == (7, 7)
    costs = m.exit_costs()
    assert 15 < costs[-1] < 40 and np.all(np.diff(costs) > 0)  # width 64, 6 blocks, 49 tokens: ~20 MFLOPs
    m = create_model("mevit_fmnist", exits=[[2, "mlp"], [4, "vit"]], drop_path_rate=0.1)
    assert m.exit_names == ("block2_mlp", "block4_vit", "head")
    assert m.arch_kwargs == {"exits": [[2, "mlp"], [4, "vit"]], "drop_path_rate": 0.1}
    assert m.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    big = create_model("mevit_small_patch16_224", num_classes=5, exits=[[11, "mlp"]])
    assert big.grid == (14, 14) and big.in_chans == 3 and big.vit.embed_dim == 384
    assert big.exit_names == ("block11_mlp", "head") and big.vit.head.out_features == 5
