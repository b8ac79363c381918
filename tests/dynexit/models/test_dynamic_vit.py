"""Dynamic Vision Transformer cascade: contract, reuse mechanisms, real early exit (tiny configs)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynexit import criteria
from dynexit.io.checkpoint import load_checkpoint, read_sidecar, save_checkpoint
from dynexit.flops import forward_flops
from dynexit.inference import early_exit, exits_from_logits
from dynexit.layers.dvt_reuse import FeatureReuse, ReuseBlock, resize_grid_axis, resize_relations
from dynexit.models import create_model, list_models

from _tiny_models import capture_keeps_outputs

COMBOS = list(itertools.product([True, False], repeat=2))  # (feature_reuse, relationship_reuse)
COMBO_IDS = [f"feat{int(f)}-rel{int(r)}" for f, r in COMBOS]
GRIDS = [(4, 4), (7, 7), (14, 14)]


def tiny(feature_reuse=True, relationship_reuse=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model("dvt_tiny", feature_reuse=feature_reuse, relationship_reuse=relationship_reuse, **kwargs).eval()


def scrambled(m, seed=0):
    """Every parameter redrawn from N(0, 0.5^2): the trunc-normal(0.02) init lets little signal through the
    reuse paths, while a trained model's reuse layers carry plenty; dependence is what the tests check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


def images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _half_thresholds(outs, q=0.5):
    probs = np.stack([torch.softmax(o.double(), 1).float().numpy() for o in outs], axis=1)
    t = np.quantile(criteria.get("max_prob")(probs), q, axis=0)
    t[-1] = -np.inf
    return t


# ----------------------------------------------------------------------------- contract, per reuse combination

@pytest.fixture(scope="module")
def costs():
    return {}  # (feature_reuse, relationship_reuse) -> exit costs, filled by the test below


@pytest.mark.parametrize("feat,rel", COMBOS, ids=COMBO_IDS)
def test_shapes_early_exit_and_costs(feat, rel, costs):
    m = tiny(feat, rel)
    x = images(16, seed=1)
    with torch.no_grad():
        outs = m(x)
    assert m.exit_names == ("vit4x4", "vit7x7", "vit14x14") and m.loss_weights() == [1.0, 1.0, 1.0]
    assert [tuple(o.shape) for o in outs] == [(16, 10)] * 3 and all(torch.isfinite(o).all() for o in outs)
    t = _half_thresholds(outs)
    logits, exits, ran = early_exit(m, x, t, return_costs=True)
    ref_exits, ref_logits = exits_from_logits(outs, t)
    np.testing.assert_array_equal(exits.numpy(), ref_exits)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)
    assert ran[0] == 16 and 0 < ran[1] < 16  # the thresholds really split the batch

    m.train()
    c = costs[(feat, rel)] = m.exit_costs()
    assert c.shape == (3,) and np.all(c > 0) and np.all(np.diff(c) > 0)
    assert c[-1] == pytest.approx(forward_flops(m), rel=1e-9)
    assert m.training  # counting restores the mode


def test_each_reuse_adds_cost_downstream_only(costs):
    for combo in COMBOS:
        if combo not in costs:  # run on its own
            costs[combo] = tiny(*combo).exit_costs()
    base = costs[(False, False)]
    for combo in [(True, False), (False, True), (True, True)]:
        assert costs[combo][0] == pytest.approx(base[0])  # the first ViT reuses nothing
        assert np.all(costs[combo][1:] > base[1:])
    both_extra = costs[(True, True)] - base
    np.testing.assert_allclose(both_extra, (costs[(True, False)] - base) + (costs[(False, True)] - base), rtol=1e-9)


# ----------------------------------------------------------------------------- reuse really carries information

@pytest.mark.parametrize("feat,rel", COMBOS, ids=COMBO_IDS)
def test_downstream_depends_on_upstream_iff_reuse(feat, rel):
    x = images(6)
    for k in (1, 2):  # ViT k reuses the work of ViT k - 1
        m = scrambled(tiny(feat, rel))
        with torch.no_grad():
            before = m(x)
            for p in m.stages[k - 1].blocks.parameters():
                p.add_(torch.randn_like(p))
            after = m(x)
        assert not torch.allclose(before[k - 1], after[k - 1])
        if feat or rel:
            assert (before[k] - after[k]).abs().max() > 1e-4, f"exit {k} ignores the upstream ViT"
        else:
            torch.testing.assert_close(before[k], after[k], rtol=0, atol=0)


@pytest.mark.parametrize("key", ["tokens", "relations"])
def test_each_state_entry_feeds_the_next_vit(key):
    m = scrambled(tiny(key == "tokens", key == "relations"))
    with torch.no_grad():
        state, _ = m.forward_stage(0, m.init_state(images(4)))
        assert set(state) == {"x", key}
        _, ref = m.forward_stage(1, state)
        _, out = m.forward_stage(1, {**state, key: state[key] + torch.randn_like(state[key])})
    assert (ref - out).abs().max() > 1e-4


def test_state_shapes_and_last_stage_keeps_nothing_to_reuse():
    m = tiny()
    with torch.no_grad():
        state = m.init_state(images(3))
        s0, _ = m.forward_stage(0, state)
        s1, _ = m.forward_stage(1, s0)
        s2, _ = m.forward_stage(2, s1)
    for k, (state, grid) in enumerate([(s0, GRIDS[0]), (s1, GRIDS[1])]):
        n, channels = 1 + grid[0] * grid[1], m.stages[k].depth * m.stages[k].num_heads
        assert state["tokens"].shape == (3, n, 16) and state["relations"].shape == (3, channels, n, n)
    assert set(s2) == {"x"}


# ----------------------------------------------------------------------------- grid resizing

def test_resize_relations_hand_case():
    # 2x2 -> 4x4 grid, one class token. Patch logits depend on the key's column only: 0 or 1.
    # Bilinear (align_corners=False) resamples columns [0, 1] at x = -0.25, 0.25, 0.75, 1.25 (clamped),
    # i.e. [0, 0.25, 0.75, 1], the same for every query and every key row.
    col = torch.tensor([0.0, 1.0, 0.0, 1.0])
    rel = torch.zeros(1, 1, 5, 5)
    rel[..., 1:, 1:] = col                  # patch queries x patch keys
    rel[..., 1:, 0] = 5.0                   # every patch attends to the class token with logit 5
    rel[..., 0, 1:] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # class-token row over the 2x2 key grid
    rel[..., 0, 0] = -7.0
    out = resize_relations(rel, (2, 2), (4, 4), num_prefix_tokens=1)[0, 0]
    assert out.shape == (17, 17)
    expected_cols = torch.tensor([0.0, 0.25, 0.75, 1.0]).repeat(4)  # over the 16 keys, row-major
    torch.testing.assert_close(out[1:, 1:], expected_cols.expand(16, 16))
    torch.testing.assert_close(out[1:, 0], torch.full((16,), 5.0))  # class column: resized along queries only
    assert out[0, 0] == -7.0
    # class row: the 2x2 map [[1, 2], [3, 4]] = 2 * row + col + 1, resized on the key axis only
    s = torch.tensor([0.0, 0.25, 0.75, 1.0])  # resampled row / column coordinates
    torch.testing.assert_close(out[0, 1:], (2 * s[:, None] + s[None, :] + 1).flatten())


def test_resize_relations_constant_and_separable():
    for src, dst in [((4, 4), (7, 7)), ((7, 7), (14, 14))]:
        n = 1 + src[0] * src[1]
        const = resize_relations(torch.full((2, 3, n, n), 1.5), src, dst)
        torch.testing.assert_close(const, torch.full((2, 3, 1 + dst[0] * dst[1], 1 + dst[0] * dst[1]), 1.5))
        # separable map a[q] * b[k]: each axis is resized on its own, as a 2-d grid
        a, b = torch.rand(n), torch.rand(n)
        out = resize_relations((a[:, None] * b[None, :]).expand(1, 1, n, n), src, dst)[0, 0]

        def grid_resize(v):  # class entry kept, patches bilinearly resized as an image
            img = F.interpolate(v[1:].reshape(1, 1, *src), size=dst, mode="bilinear", align_corners=False)
            return torch.cat([v[:1], img.flatten()])

        torch.testing.assert_close(out, grid_resize(a)[:, None] * grid_resize(b)[None, :])
    same = torch.rand(1, 2, 17, 17)
    torch.testing.assert_close(resize_relations(same, (4, 4), (4, 4)), same)
    with pytest.raises(ValueError, match="4x4 grid"):
        resize_relations(torch.rand(1, 1, 16, 16), (4, 4), (7, 7))
    with pytest.raises(ValueError, match="3x3 grid"):
        resize_grid_axis(torch.rand(2, 10), (3, 3), (6, 6))


def test_feature_reuse_layer():
    fr = FeatureReuse(in_dim=12, out_dim=5, hidden_dim=8, src_grid=(4, 4), dst_grid=(7, 7))
    tokens = torch.randn(3, 17, 12)
    out = fr(tokens)
    assert out.shape == (3, 50, 5) and torch.all(out[:, 0] == 0)  # zeros for the class token
    # the class token is not reused; identical patch tokens give the same feature at every position
    same = torch.cat([torch.randn(3, 1, 12), torch.randn(3, 1, 12).expand(3, 16, 12)], dim=1)
    f = fr(same)
    torch.testing.assert_close(f[:, 1:], f[:, 1:2].expand(3, 49, 5))
    block = ReuseBlock(16, 2, reuse=fr)
    assert block.mlp.fc1.in_features == 16 + 5
    with pytest.raises(ValueError, match="upstream_tokens"):
        block(torch.randn(3, 50, 16))


# ----------------------------------------------------------------------------- real early exit

def test_early_exit_keeps_only_remaining_rows():
    m = tiny()
    x = images(32, seed=2)
    with torch.no_grad():
        outs = m(x)
    t = _half_thresholds(outs)
    t[1] = np.inf  # nobody leaves at exit 2: stage 3 runs on everyone stage 2 saw
    seen = {}

    def hook(k):
        def fn(module, args, kwargs):
            seen[k] = (args[0], kwargs.get("upstream_tokens"), kwargs.get("upstream_relations"))
        return fn

    handles = [m.stages[k].register_forward_pre_hook(hook(k), with_kwargs=True) for k in (1, 2)]
    try:
        _, exits = early_exit(m, x, t)
    finally:
        for h in handles:
            h.remove()
    stay = exits >= 1
    n = int(stay.sum())
    assert 0 < n < 32 and set(exits.tolist()) <= {0, 2}
    for k in (1, 2):
        img, tokens, relations = seen[k]
        assert img.shape[0] == tokens.shape[0] == relations.shape[0] == n
    torch.testing.assert_close(seen[1][0], m.normalize(x[stay]))  # exactly the samples that stayed
    with torch.no_grad():
        full_state, _ = m.forward_stage(0, m.init_state(x))
    torch.testing.assert_close(seen[1][1], full_state["tokens"][stay])
    torch.testing.assert_close(seen[1][2], full_state["relations"][stay])
    seen.clear()
    handles = [m.stages[k].register_forward_pre_hook(hook(k), with_kwargs=True) for k in (1, 2)]
    try:
        _, exits = early_exit(m, x, np.array([-np.inf, np.inf]))  # everyone leaves at exit 1
    finally:
        for h in handles:
            h.remove()
    assert (exits == 0).all() and seen == {}


# ----------------------------------------------------------------------------- attention, checkpoints, configs

def test_attention_capture_per_stage():
    m = tiny(seed=3, depths=(1, 2, 1))
    rec = capture_keeps_outputs(m, images(5))
    assert rec.names() == ["s0.block0", "s1.block0", "s1.block1", "s2.block0"]
    for amap in rec:
        k = amap.stage
        n = 1 + GRIDS[k][0] * GRIDS[k][1]
        assert amap.name.startswith(f"s{k}.") and amap.grid == GRIDS[k] and amap.num_prefix_tokens == 1
        assert amap.weights.shape == (5, 2, n, n)
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(5, 2, n))
        assert amap.spatial().shape == (5, *GRIDS[k])


def test_checkpoint_round_trip(tmp_path):
    m = tiny(relationship_reuse=False, seed=4, embed_dims=[16, 24, 16], depths=[1, 2, 1])
    path = save_checkpoint(m, tmp_path / "dvt.safetensors", val_accuracy=[0.5, 0.6, 0.7])
    m2 = load_checkpoint(path)
    assert m2.arch_name == "dvt_tiny" and not m2.relationship_reuse and m2.feature_reuse
    assert [len(s.blocks) for s in m2.stages] == [1, 2, 1]
    x = images(4)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_allclose(read_sidecar(path)["costs_mflops"], m.exit_costs())


def test_every_parameter_learns():
    m = tiny().train()
    outs = m(images(4))
    sum(F.cross_entropy(o, torch.arange(4)) for o in outs).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="strictly finer"):
        create_model("dvt_tiny", patch_sizes=(4, 7, 2))
    with pytest.raises(ValueError, match="one value per stage"):
        create_model("dvt_tiny", depths=(1, 1))
    with pytest.raises(ValueError, match="divisible by the heads"):
        create_model("dvt_tiny", embed_dims=(16, 15, 16))
    with pytest.raises(ValueError, match="between 1 and the image size"):
        create_model("dvt_tiny", patch_sizes=(56, 4, 2))
    with pytest.raises(ValueError, match="at least one"):
        create_model("dvt_tiny", patch_sizes=())
    with pytest.raises(ValueError, match="1-channel"):
        tiny()(torch.rand(2, 3, 28, 28))


def test_registered_configs():
    assert {"dvt_tiny", "dvt_fmnist", "dvt_fmnist_noreuse", "dvt_deit_small"} <= set(list_models("dvt*"))
    full, ablation = create_model("dvt_fmnist"), create_model("dvt_fmnist_noreuse")
    assert full.grids == ablation.grids == ((4, 4), (6, 6), (7, 7))  # patch 5 pads the image to 30x30
    assert not ablation.feature_reuse and not ablation.relationship_reuse
    assert not [n for n, _ in ablation.named_parameters() if "reuse" in n]
    names = [n for n, _ in full.named_parameters()]
    assert any(".reuse." in n for n in names) and any(".relation_reuse." in n for n in names)
    c = full.exit_costs()
    assert c[0] < 0.1 * c[-1]  # the first ViT is cheap
    # ImageNet-size cascade (shrunk for speed): 7x7 / 10x10 / 14x14 tokens on 224x224, padded 23-pixel patches
    big = create_model("dvt_deit_small", embed_dims=24, depths=1, num_heads=2, num_classes=7).eval()
    assert big.grids == ((7, 7), (10, 10), (14, 14))
    with torch.no_grad():
        assert [tuple(o.shape) for o in big(torch.rand(1, 3, 224, 224))] == [(1, 7)] * 3
