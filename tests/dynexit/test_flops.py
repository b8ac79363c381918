"""FLOP counting: a hand count on a tiny model, and the staged path against the full forward."""

import numpy as np
import pytest
import torch
from torch import nn

from dynexit.flops import forward_flops, stage_flops, staged_flops
from dynexit.models import MultiExitModel
from _tiny_models import TINY, tiny


class HandCounted(MultiExitModel):
    """conv(1->4, 3x3, 8x8) -> pool -> fc(4->3) | conv(4->4, 3x3, 8x8) -> pool -> fc(4->3)."""

    exit_names = ("a", "b")

    def __init__(self):
        super().__init__(num_classes=3, in_chans=1, input_size=8)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.f1, self.f2 = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward_stage(self, k, state):
        conv, fc = (self.c1, self.f1) if k == 0 else (self.c2, self.f2)
        x = torch.relu(conv(state["x"]))
        return {"x": x}, fc(x.mean((2, 3)))


def test_hand_count():
    m = HandCounted()
    conv1 = 8 * 8 * 4 * 1 * 9   # output positions x out channels x (in channels x kernel): multiply-adds
    conv2 = 8 * 8 * 4 * 4 * 9
    fc = 4 * 3
    expected = np.array([conv1 + fc, conv1 + fc + conv2 + fc]) / 1e6
    np.testing.assert_allclose(m.exit_costs(), expected, rtol=1e-9)
    np.testing.assert_allclose(stage_flops(m), [conv1 + fc, conv2 + fc] / np.float64(1e6))


@pytest.mark.parametrize("key", list(TINY))
def test_last_cost_matches_forward(key):
    m = tiny(key)
    assert abs(staged_flops(m)[-1] - forward_flops(m)) <= 0.05 * forward_flops(m)


def test_fmnist_costs_reasonable():
    from dynexit.models import create_model
    c = create_model("dynperceiver_fmnist").exit_costs()
    s = create_model("static_cnn_fmnist").exit_costs()
    assert 10 < s[0] < 100
    assert c[0] < c[-1] and c[-1] < 2 * s[0]


# ----------------------------------------------------------------------------- attention: one count whatever kernel runs

import timm
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from dynexit.flops import SDPA_OPS, count_mflops
from dynexit.inference import early_exit
from dynexit.models import create_model
from dynexit.models.timm_exits import attach_exits

VIT = dict(num_classes=10, in_chans=1, img_size=28, patch_size=4, embed_dim=32, depth=2, num_heads=2)
ATTENTION_MODELS = {
    "mevit": lambda: tiny("mevit"),
    "dvt_reuse": lambda: create_model("dvt_tiny", feature_reuse=True, relationship_reuse=True),
    "dvt_noreuse": lambda: create_model("dvt_tiny", feature_reuse=False, relationship_reuse=False),
    "dynperceiver": lambda: tiny("dynperceiver"),
    "timm_vit_exits": lambda: attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), at=[0],
                                           head=["vit"]),
}


class _Ops(TorchDispatchMode):
    """Records the aten ops that run."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("key", list(ATTENTION_MODELS))
def test_fused_explicit_and_captured_attention_cost_the_same(key):
    torch.manual_seed(0)
    m = ATTENTION_MODELS[key]().eval()
    x = torch.rand(1, m.in_chans, *m.input_size)
    with _Ops() as seen, torch.no_grad():
        m(x)
    # the default path must really run a fused kernel here, or this test could not see the bug
    assert seen.ops & set(SDPA_OPS), f"no fused SDPA kernel ran in {key}: {sorted(map(str, seen.ops))[:20]}"
    fused = staged_flops(m, x)
    with sdpa_kernel(SDPBackend.MATH):  # softmax(q k^T) v as explicit matrix products
        explicit = staged_flops(m, x)
    with m.capture_attention():  # the capturing path computes attention explicitly too
        captured = staged_flops(m, x)
    np.testing.assert_allclose(fused, explicit, rtol=1e-12)
    np.testing.assert_allclose(fused, captured, rtol=1e-12)


def test_vit_matches_hand_count():
    """A timm ViT (the backbone of every ViT family) against its multiply-adds derived by hand."""
    net = timm.create_model("vit_tiny_patch16_224", **VIT).eval()
    n, d, p = (28 // 4) ** 2 + 1, VIT["embed_dim"], VIT["patch_size"]
    patch = (n - 1) * d * (1 * p * p)                  # patch-embedding conv
    block = (n * d * 3 * d                              # qkv
             + n * n * d + n * n * d                    # q k^T, attn v (all heads together)
             + n * d * d                                # output projection
             + 2 * n * d * 4 * d)                       # MLP (ratio 4)
    expected = (patch + VIT["depth"] * block + d * 10) / 1e6
    x = torch.rand(1, 1, 28, 28)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend), torch.no_grad():
            got, _ = count_mflops(net, x)
        assert got == pytest.approx(expected, rel=0.01)
        assert got == pytest.approx(expected, rel=1e-9)  # only element-wise ops are left out, by convention


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_counting_early_exit_under_no_grad(grad_mode):
    """FlopCounterMode's module tracker failed when a parameter was passed into a submodule under no_grad."""
    m = tiny("dynperceiver").eval()
    x = torch.rand(3, 1, *m.input_size)
    with grad_mode():
        everyone_last, (_, exits) = count_mflops(early_exit, m, x, [np.inf] * m.num_exits)
        everyone_first, _ = count_mflops(early_exit, m, x, [-np.inf] * m.num_exits)
    assert (exits == m.num_exits - 1).all()
    np.testing.assert_allclose([everyone_first, everyone_last], 3 * m.exit_costs()[[0, -1]], rtol=1e-6)


# ----------------------------------------------------------------------------- the shipped zoo's costs

import json

from dynexit import zoo
from dynexit.io.checkpoint import load_checkpoint
from dynexit.table import ExitTable

SHIPPED = [n for n in zoo.list() if zoo.available(n)]


@pytest.mark.skipif(not SHIPPED, reason="no shipped zoo")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_costs_equal_a_recount(name):
    """Sidecar, both tables and the bench result carry exactly what this code counts on the shipped weights."""
    path = zoo.weights_path(name)
    recount = staged_flops(load_checkpoint(path))  # counted afresh (exit_costs() would return the sidecar's)
    shipped = {"sidecar": json.loads(path.with_suffix(".json").read_text())["costs_mflops"]}
    for split in zoo.SPLITS:
        shipped[f"{split} table"] = ExitTable.load(zoo.table_path(name, split)).costs
    bench = path.with_name(f"{name}.bench.json")
    if bench.exists():
        shipped["bench"] = json.loads(bench.read_text())["costs_mflops"]
    for what, costs in shipped.items():
        np.testing.assert_allclose(costs, recount, rtol=1e-9, err_msg=f"{name}: {what} costs differ from a recount")
