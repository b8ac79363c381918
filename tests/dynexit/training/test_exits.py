"""Exit-training strategies, practical exits, branch selection and the branch study (tiny models)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dynexit.training.branch_study import branch_study, practical_exits, select_branches
from dynexit.training.exits import STRATEGIES, train_exits
from dynexit.models import MultiExitModel, create_model


def loader(n=48, batch=16, seed=0, shuffle=False):
    """Images whose label is written as a bright band at a label-dependent height (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for i, label in enumerate(y.tolist()):
        x[i, 0, 2 * label:2 * label + 3] += 0.6
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g)


def tiny_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("exits", [[0, "mlp"], [1, "cnn_add"]])
    return create_model("mevit_tiny", **kwargs)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, prefix=""):
    return any(not torch.equal(before[prefix + k], v) for k, v in module.state_dict().items())


class BNNet(MultiExitModel):
    """Two conv-BN stages, a linear exit after each: checks the generic code and BatchNorm handling."""

    exit_names = ("s1", "s2")

    def __init__(self):
        super().__init__(num_classes=10, in_chans=1, input_size=28)
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5)),
            nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())])
        self.heads = nn.ModuleList([nn.Linear(8, 10), nn.Linear(8, 10)])

    def forward_stage(self, k, state):
        x = self.stages[k](state["x"])
        return {"x": x}, self.heads[k](x.mean((2, 3)))

    def exit_branch(self, k):
        return self.heads[k]

    def backbone_stage(self, k):
        return self.stages[k]


# ---------------------------------------------------------------------------- classifier-wise

def test_classifier_wise_leaves_backbone_bit_identical_and_trains_every_branch():
    m = tiny_vit(exits=[[0, "mlp"], [1, "vit"], [2, "cnn_project"]], drop_path_rate=0.2, drop_rate=0.2, branch_drop=0.1)
    before = snapshot(m)
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    modes = {"backbone": set(), "branch": set()}
    hooks = [blk.register_forward_hook(lambda mod, i, o: modes["backbone"].add(mod.training)) for blk in m.vit.blocks]
    hooks += [b.register_forward_hook(lambda mod, i, o: modes["branch"].add(mod.training)) for b in m.branches]
    hist = train_exits(m, loader(), strategy="classifier-wise", epochs=2, lr=1e-2, progress=False)
    for h in hooks:
        h.remove()
    assert modes == {"backbone": {False}, "branch": {True}}
    backbone = {k: v for k, v in m.state_dict().items() if not k.startswith("branches.")}
    assert backbone and all(torch.equal(before[k], v) for k, v in backbone.items())
    for k, branch in enumerate(m.branches):
        assert changed(before, branch, f"branches.{k}."), f"branch {k} was not trained"
    assert m.training and {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert [r["trained_exits"] for r in hist["records"]] == [list(m.exit_names[:-1])] * 2
    assert hist["steps"] == 2 * 3 and hist["val_accuracy"] is None
    first, last = hist["records"][0]["loss"], hist["records"][-1]["loss"]
    assert set(first) == set(m.exit_names[:-1]) and sum(last.values()) < sum(first.values())


def test_classifier_wise_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    m = BNNet()
    before = snapshot(m)
    train_exits(m, loader(), strategy="classifier-wise", max_steps=2, progress=False)
    for k, v in m.state_dict().items():
        assert torch.equal(before[k], v) != k.startswith("heads.0."), k  # only the first head moves


# ---------------------------------------------------------------------------- end-to-end

def _captured_grads(m, params, **kw):
    grads = {}
    hooks = [p.register_hook(lambda g, n=n: grads.setdefault(n, g.clone())) for n, p in params.items()]
    train_exits(m, loader(), strategy="end-to-end", max_steps=1, progress=False, **kw)
    for h in hooks:
        h.remove()
    return grads


@pytest.mark.parametrize("weights", [None, [0.5, 0.0, 3.0]])
def test_end_to_end_weights_every_exit(weights):
    m = tiny_vit()
    ref = copy.deepcopy(m).train()
    x, y = next(iter(loader()))
    outs = ref(x)
    expect = weights or [1.0, 1.0, 2.0]  # default: the final exit counts twice
    assert m.loss_weights() == [1.0, 1.0, 2.0]
    targets = {"branch0": ref.branches[0].head[-1].weight, "branch1": ref.branches[1].head[-1].weight,
               "head": ref.vit.head.weight, "block0": ref.vit.blocks[0].mlp.fc2.weight}
    loss = sum(w * F.cross_entropy(o, y) for w, o in zip(expect, outs))
    want = dict(zip(targets, torch.autograd.grad(loss, list(targets.values()))))
    got = _captured_grads(m, {"branch0": m.branches[0].head[-1].weight, "branch1": m.branches[1].head[-1].weight,
                              "head": m.vit.head.weight, "block0": m.vit.blocks[0].mlp.fc2.weight},
                          loss_weights=weights)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-4)
    assert got["block0"].abs().sum() > 0


# ---------------------------------------------------------------------------- layer-wise

def test_layer_wise_trains_one_stage_at_a_time():
    m = tiny_vit()
    parts = [{id(p) for mod in (m.backbone_stage(k), m.exit_branch(k)) if mod is not None for p in mod.parameters()}
             for k in range(m.num_exits)]
    by_id = {id(p): p for p in m.parameters()}
    log = []  # per optimiser step: which parameters it holds, and the values of every part

    def hook(opt, args, kwargs):
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        log.append((held, [torch.cat([by_id[i].detach().flatten() for i in sorted(part)]) for part in parts]))

    handle = register_optimizer_step_post_hook(hook)
    try:
        init = [torch.cat([by_id[i].detach().flatten() for i in sorted(part)]) for part in parts]
        hist = train_exits(m, loader(), strategy="layer-wise", epochs=1, max_steps=2, lr=1e-2, progress=False)
    finally:
        handle.remove()
    assert [held for held, _ in log] == [parts[0]] * 2 + [parts[1]] * 2 + [parts[2]] * 2
    for phase in range(m.num_exits):
        values = [v for _, v in log[2 * phase:2 * phase + 2]]
        end = values[-1]
        assert not torch.equal(end[phase], init[phase]), f"stage {phase} was not trained"
        for k in range(phase):  # earlier stages stay frozen
            assert torch.equal(end[k], log[2 * k + 1][1][k])
        for k in range(phase + 1, m.num_exits):  # later stages wait for their phase
            assert torch.equal(end[k], init[k])
    assert [r["trained_exits"] for r in hist["records"]] == [[n] for n in m.exit_names]


def test_layer_wise_generic_model_and_validation_history():
    torch.manual_seed(0)
    m = BNNet()
    hist = train_exits(m, loader(n=32), strategy="layer-wise", epochs=2, progress=False, val_loader=loader(seed=1))
    assert len(hist["records"]) == 4 and [r["phase"] for r in hist["records"]] == [0, 0, 1, 1]
    for r in hist["records"]:
        assert len(r["val_accuracy"]) == 2 and all(0 <= a <= 1 for a in r["val_accuracy"])
    assert hist["val_accuracy"] == hist["records"][-1]["val_accuracy"]


def test_every_strategy_lowers_the_loss():
    for strategy in STRATEGIES:
        m = tiny_vit()
        hist = train_exits(m, loader(n=64), strategy=strategy, epochs=3, lr=3e-3, progress=False)
        first = hist["records"][0]["loss"]
        last = [r for r in hist["records"] if r["phase"] == hist["records"][0]["phase"]][-1]["loss"]
        assert sum(last.values()) < sum(first.values()), strategy


def test_bad_arguments():
    m = tiny_vit()
    with pytest.raises(ValueError, match="classifier-wise, end-to-end, layer-wise"):
        train_exits(m, loader(), strategy="greedy")
    with pytest.raises(ValueError, match="one value per exit"):
        train_exits(m, loader(), strategy="end-to-end", loss_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="single exit"):
        train_exits(tiny_vit(exits=[]), loader(), strategy="classifier-wise")
    with pytest.raises(NotImplementedError, match="end to end"):
        train_exits(create_model("static_cnn", backbone="resnet10_quarter"), loader(), strategy="layer-wise")


# ---------------------------------------------------------------------------- practical exits and selection

@pytest.mark.parametrize("acc,cost,expected", [
    ([0.5, 0.7, 0.6, 0.8], [1, 2, 3, 4], [True, True, False, True]),
    ([0.8, 0.5, 0.6, 0.7], [4, 1, 3, 2], [True, True, False, True]),   # any order: compared by cost
    ([0.9, 0.8, 0.7], [1, 2, 3], [True, False, False]),
    ([0.5, 0.5, 0.51], [1, 2, 3], [True, False, True]),                # a tie is not an improvement
    ([0.4, 0.6, 0.5], [1, 1, 2], [True, True, False]),                 # equal costs: neither is cheaper
])
def test_practical_exits(acc, cost, expected):
    assert practical_exits(acc, cost).tolist() == expected


def test_practical_exits_errors():
    with pytest.raises(ValueError, match="one cost per accuracy"):
        practical_exits([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        practical_exits([0.1, np.nan], [1.0, 2.0])


STUDY = [
    {"block": 0, "type": "mlp", "accuracy": 0.50, "mflops": 10.0},
    {"block": 0, "type": "vit", "accuracy": 0.60, "mflops": 14.0},
    {"block": 1, "type": "mlp", "accuracy": 0.58, "mflops": 20.0},
    {"block": 1, "type": "cnn_add", "accuracy": 0.58, "mflops": 25.0},
    {"block": 2, "type": "mlp", "accuracy": 0.75, "mflops": 30.0},
    {"block": 2, "type": "vit", "accuracy": 0.70, "mflops": 34.0},
    {"block": 3, "type": "mlp", "accuracy": 0.79, "mflops": 38.0},
    {"block": 3, "type": "mixer", "accuracy": 0.80, "mflops": 40.0},
    {"block": 3, "type": "head", "accuracy": 0.99, "mflops": 45.0},
]


def test_select_branches_on_a_hand_table():
    out = select_branches(STUDY)
    flagged = lambda col: [(r["block"], r["type"]) for r in out["rows"] if r[col]]  # noqa: E731
    assert flagged("best_of_block") == [(0, "vit"), (1, "mlp"), (2, "mlp"), (3, "mixer")]
    assert flagged("practical") == [(0, "vit"), (2, "mlp"), (3, "mixer")]
    assert out["exits"] == [[0, "vit"], [2, "mlp"], [3, "mixer"]]
    assert select_branches(STUDY, max_branches=2)["exits"] == [[0, "vit"], [2, "mlp"]]  # mixer adds least
    assert select_branches(STUDY, max_branches=1)["exits"] == [[0, "vit"]]
    assert STUDY[0].keys() == {"block", "type", "accuracy", "mflops"}  # the input is not modified
    with pytest.raises(ValueError, match="lacks mflops"):
        select_branches([{"block": 0, "type": "mlp", "accuracy": 0.5}])


def test_branch_study_smoke():
    backbone = tiny_vit(exits=[[1, "vit"]]).eval()
    before = snapshot(backbone)
    rows = branch_study(backbone, loader(), loader(seed=1), blocks=[0, 2], types=["mlp", "cnn_ignore"],
                        epochs=1, max_steps=2, progress=False)
    assert [(r["block"], r["type"]) for r in rows] == [(0, "mlp"), (0, "cnn_ignore"), (2, "mlp"), (2, "cnn_ignore"),
                                                       (2, "head")]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    cost = {(r["block"], r["type"]): r["mflops"] for r in rows}
    np.testing.assert_allclose(cost[(0, "mlp")], tiny_vit(exits=[[0, "mlp"]]).exit_costs()[0], rtol=1e-9)
    assert cost[(2, "mlp")] > cost[(0, "mlp")] and cost[(2, "cnn_ignore")] > cost[(2, "mlp")]
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # the source is untouched
    assert select_branches(rows)["exits"]
    with pytest.raises(ValueError, match="Multi-Exit ViT"):
        branch_study(BNNet(), loader(), loader())
