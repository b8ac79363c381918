"""Exits on any timm model: the staged split reproduces timm, exits train on a frozen backbone."""

import numpy as np
import pytest
import timm
import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer

import dynexit
from dynexit import criteria
from dynexit.io.checkpoint import read_sidecar, load_checkpoint, save_checkpoint
from dynexit.training.exits import train_exits
from dynexit.flops import count_mflops, forward_flops
from dynexit.inference import early_exit, exits_from_logits
from dynexit.models import create_model
from dynexit.models.timm_exits import TimmExitModel, attach_exits

# tiny networks (no download): a quarter-width ResNet-10-T, a ConvNeXt (a `stages` network), a Swin
# (`layers`, channels-last feature maps) and a ViT
CNN = dict(num_classes=10, in_chans=1, channels=[16, 32, 64, 128], stem_width=8)
CONVNEXT = dict(num_classes=10, in_chans=1, dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
SWIN = dict(num_classes=10, in_chans=1, img_size=28, patch_size=2, window_size=7, embed_dim=16, depths=[1, 1],
            num_heads=[1, 2])
VIT = dict(num_classes=10, in_chans=1, img_size=28, patch_size=4, embed_dim=32, depth=4, num_heads=2)
BUILD = {
    "cnn": lambda: attach_exits(timm.create_model("resnet10t", **CNN), input_size=28),
    "convnext": lambda: attach_exits(timm.create_model("convnext_atto", **CONVNEXT), input_size=32, head="linear"),
    "swin": lambda: attach_exits(timm.create_model("swin_tiny_patch4_window7_224", **SWIN)),
    "vit": lambda: attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), at=[0, 2],
                                head=["cnn_ignore", "cnn_add"]),
}


def build(key, seed=0):
    torch.manual_seed(seed)
    return BUILD[key]()


def images(model, n=6, seed=0):
    return torch.rand(n, model.in_chans, *model.input_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", list(BUILD))
def test_staged_final_exit_equals_timm_forward(key):
    m = build(key).eval()
    x = images(m)
    with torch.no_grad():
        outs = m(x)
        ref = m.model(m.normalize(x))
    assert len(outs) == m.num_exits == len(m.at) + 1 and m.exit_names[-1] == "head"
    torch.testing.assert_close(outs[-1], ref, rtol=0, atol=1e-6)
    for o in outs:
        assert o.shape == (len(x), 10) and torch.isfinite(o).all()


@pytest.mark.parametrize("key", list(BUILD))
def test_features_equal_forward_intermediates(key):
    m = build(key).eval()
    x = images(m)
    with torch.no_grad():
        ours = m.features(x)
        if m.is_vit:
            ref = m.model.forward_intermediates(m.normalize(x), indices=m.at, output_fmt="NLC",
                                                return_prefix_tokens=True, intermediates_only=True)
            ref = [torch.cat([prefix, patches], dim=1) for patches, prefix in ref]
        else:
            ref = m.model.forward_intermediates(m.normalize(x), indices=m.at, intermediates_only=True)
    assert len(ours) == len(ref) == len(m.at)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_vit_without_class_token():
    net = timm.create_model("vit_tiny_patch16_224", **VIT, class_token=False, global_pool="avg")
    m = attach_exits(net, at=[1, 2], head=["mlp", "cnn_ignore"]).eval()
    x = images(m)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[-1], net(m.normalize(x)), rtol=0, atol=1e-6)
        ref = net.forward_intermediates(m.normalize(x), indices=[1, 2], output_fmt="NLC", intermediates_only=True)
        for a, b in zip(m.features(x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_normalisation_inside_the_model():
    x = torch.rand(2, 1, 28, 28)
    m = build("cnn")  # timm's pretrained_cfg mean/std (ImageNet), averaged for gray images
    gray_mean, gray_std = np.mean(IMAGENET_DEFAULT_MEAN), np.mean(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(m.init_state(x)["x"], (x - gray_mean) / gray_std)
    m = attach_exits(timm.create_model("resnet10t", **CNN), input_size=28, mean=[0.3], std=[0.4],
                     channels=CNN["channels"], stem_width=8)  # how it was built, for checkpoints
    torch.testing.assert_close(m.init_state(x)["x"], (x - 0.3) / 0.4)
    assert m.arch_kwargs["mean"] == [pytest.approx(0.3)] and m.arch_kwargs["std"] == [pytest.approx(0.4)]


def test_default_exits_and_names():
    cnn, convnext, vit = build("cnn"), build("convnext"), attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT))
    # ResNet: feature levels 0 (stem, stride 2) .. 4 (layer4, the head's input): exits after layer1-3
    assert cnn.at == [1, 2, 3] and cnn.exit_names == ("layer1_conv", "layer2_conv", "layer3_conv", "head")
    assert convnext.at == [0, 1, 2] and convnext.exit_names[0] == "stages.0_linear"
    assert vit.at == [2] and vit.exit_names == ("block2_mlp", "head")  # every third block of 4
    m = attach_exits(timm.create_model("resnet10t", **CNN), input_size=28, at=[3, -4], head=["linear", "conv"])
    assert m.at == [1, 3] and m.head_types == ["conv", "linear"]  # sorted with their heads, negative indices


@pytest.mark.parametrize("key", list(BUILD))
@pytest.mark.parametrize("criterion", ["max_prob", "patience"])
def test_early_exit_matches_table_path(key, criterion):
    m = build(key).eval()
    x = images(m, 32, seed=1)
    with torch.no_grad():
        outs = m(x)
    probs = np.stack([torch.softmax(o.double(), 1).float().numpy() for o in outs], axis=1)
    t = np.quantile(criteria.get(criterion)(probs), 0.6, axis=0)
    logits, exits = early_exit(m, x, t, criterion=criterion)
    ref_exits, ref_logits = exits_from_logits(outs, t, criterion)
    np.testing.assert_array_equal(exits.numpy(), ref_exits)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("key, last", [("cnn", "layer4"), ("vit", "blocks.3")])
def test_early_exit_skips_later_stages(key, last):
    m = build(key).eval()
    seen = []
    hook = m.model.get_submodule(last).register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    t = np.full(m.num_exits, -np.inf)  # everyone leaves at the first exit
    _, exits = early_exit(m, images(m, 8), t)
    assert (exits == 0).all() and seen == []
    _, exits = early_exit(m, images(m, 8), np.full(m.num_exits - 1, np.inf))
    assert (exits == m.num_exits - 1).all() and seen == [8]
    hook.remove()


@pytest.mark.parametrize("key", list(BUILD))
def test_costs(key):
    m = build(key)
    c = m.exit_costs()
    assert c.shape == (m.num_exits,) and np.all(c > 0) and np.all(np.diff(c) > 0)
    np.testing.assert_allclose(c[-1], forward_flops(m), rtol=1e-9)  # the staged path counts everything once
    net_only = count_mflops(m.model.eval(), images(m, 1))[0]
    with torch.no_grad():
        feats = m.features(images(m, 1))
    heads = sum(count_mflops(h.eval(), f)[0] for h, f in zip(m.exit_heads, feats))
    np.testing.assert_allclose(c[-1], net_only + heads, rtol=1e-9)
    assert m.training  # counting restores the mode


@pytest.fixture(scope="module")
def fmnist():
    from dynexit.data import load_fashion_mnist
    x, y = load_fashion_mnist("test")  # ships with the repo
    x = torch.from_numpy(x[:1600]).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(y[:1600])


def _loader(x, y, batch_size=64, shuffle=False):
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key", ["cnn", "vit"])
def test_classifier_wise_training(key, fmnist):
    m = build(key)
    x, y = fmnist
    train, val = _loader(x[:1280], y[:1280], shuffle=True), _loader(x[1280:], y[1280:], batch_size=320)
    backbone = {k: v.clone() for k, v in m.model.state_dict().items()}
    heads = [[p.detach().clone() for p in h.parameters()] for h in m.exit_heads]
    before = train_exits(m, val, strategy="classifier-wise", max_steps=1, lr=0.0, progress=False,
                         val_loader=val)["val_accuracy"]
    history = train_exits(m, train, strategy="classifier-wise", epochs=2, lr=3e-3, progress=False, val_loader=val)
    after = history["val_accuracy"]
    after_state = m.model.state_dict()
    assert after_state.keys() == backbone.keys()
    for k, v in backbone.items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(after_state[k], v), f"backbone tensor {k} changed"
    for k, (h, old) in enumerate(zip(m.exit_heads, heads)):
        assert any(not torch.equal(p, q) for p, q in zip(h.parameters(), old)), f"exit {k} did not train"
    # every exit learns: from chance (a fresh head) to well above it; the frozen head does not move
    for k in range(len(m.exit_heads)):
        assert after[k] > max(before[k] + 0.2, 0.4), (k, before[k], after[k])
    assert after[-1] == before[-1]
    assert all(not p.requires_grad for p in m.model.parameters())  # frozen again afterwards


@pytest.mark.parametrize("key", ["cnn", "vit"])
def test_parts_cover_the_network(key):
    m = build(key)
    stage_params = [{id(p) for p in s.parameters()} if (s := m.backbone_stage(k)) is not None else set()
                    for k in range(m.num_exits)]
    own_head = {id(p) for p in m.exit_branch(m.num_exits - 1).parameters()}
    parts = [*stage_params, own_head]
    assert sum(len(s) for s in parts) == len(set().union(*parts))  # no parameter in two parts
    assert set().union(*parts) == {id(p) for p in m.model.parameters()}
    for k, h in enumerate(m.exit_heads):
        assert m.exit_branch(k) is h
    with pytest.raises(ValueError, match="out of range"):
        m.exit_branch(m.num_exits)


def test_freeze_keeps_backbone_in_eval_mode():
    m = build("cnn").train()
    assert not any(p.requires_grad for p in m.model.parameters())
    assert not m.model.training and all(h.training for h in m.exit_heads)
    m = attach_exits(timm.create_model("resnet10t", **CNN), input_size=28, freeze=False).train()
    assert all(p.requires_grad for p in m.model.parameters()) and m.model.training


def test_checkpoint_round_trip_by_name(tmp_path):
    torch.manual_seed(0)
    m = attach_exits("resnet10t", in_chans=1, num_classes=10, input_size=28, at=[2, 3], head=["linear", "conv"],
                     mean=0.3, std=0.4, channels=[16, 32, 64, 128], stem_width=8).eval()
    assert m.arch_name == "timm_exits" and "pretrained" not in m.config()["kwargs"]
    assert m.config()["kwargs"]["timm_kwargs"] == {"channels": [16, 32, 64, 128], "stem_width": 8}
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    assert "pretrained" not in read_sidecar(path)["kwargs"]  # loading must never download
    back = load_checkpoint(path)
    assert isinstance(back, TimmExitModel) and back.exit_names == m.exit_names and back.at == [2, 3]
    x = images(m)
    with torch.no_grad():
        for a, b in zip(m(x), back(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    rebuilt = create_model("timm_exits", **m.config()["kwargs"])
    assert rebuilt.config() == m.config()
    # built through the registry directly (as `dynexit train --model timm_exits` does): same clean config
    direct = create_model("timm_exits", timm_name="resnet10t", in_chans=1, num_classes=10, input_size=28, at=[2, 3],
                          head=["linear", "conv"], mean=0.3, std=0.4, pretrained=False,
                          timm_kwargs={"channels": [16, 32, 64, 128], "stem_width": 8})
    assert direct.config() == m.config()


def test_checkpoint_of_an_instance(tmp_path):
    torch.manual_seed(0)
    m = build("vit").eval()  # built by timm.create_model: rebuilt from pretrained_cfg + the ViT's kwargs
    with pytest.raises(ValueError, match="builds a different network"):
        m.config()
    m = attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), at=[0, 2], head=["cnn_ignore", "cnn_add"],
                     embed_dim=32, depth=4, num_heads=2, patch_size=4).eval()
    back = load_checkpoint(save_checkpoint(m, tmp_path / "vit.safetensors"))
    x = images(m)
    with torch.no_grad():
        for a, b in zip(m(x), back(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    bare = attach_exits(VisionTransformer(**VIT), at=[1])  # not built by timm.create_model
    with pytest.raises(ValueError, match="not built by timm.create_model"):
        bare.config()
    with pytest.raises(ValueError, match="cannot save these exits.*not built by timm.create_model"):
        save_checkpoint(bare, tmp_path / "bare.safetensors")  # the specific reason, not a generic one


def test_vit_attention_capture():
    m = build("vit").eval()
    x = images(m, 3)
    with m.capture_attention() as rec:
        m(x)
    assert rec.names() == [f"block{i}" for i in range(4)]  # one map per block
    for a in rec:
        assert a.spatial().shape == (3, 7, 7)
        torch.testing.assert_close(a.weights.sum(-1), torch.ones(3, 2, 50))
    with m.capture_attention() as rec:
        early_exit(m, x, np.full(m.num_exits, -np.inf))  # all leave after block 0
    assert rec.names() == ["block0"]


def test_every_vit_branch_type():
    kinds = ["mlp", "cnn_ignore", "cnn_add", "cnn_project", "vit", "mixer", "resmlp"]
    at = [0, 0, 1, 1, 2, 2, 2]
    m = attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), at=at, head=kinds).eval()
    assert m.num_exits == 8 and m.backbone_stage(1) is None  # second exit on block 0 runs no block
    x = images(m, 4)
    with torch.no_grad():
        outs = m(x)
    assert all(o.shape == (4, 10) for o in outs)
    assert np.all(np.diff(m.exit_costs()) > 0)


def test_bad_inputs_are_clear_errors(monkeypatch):
    net = timm.create_model("resnet10t", **CNN)
    with pytest.raises(ValueError, match="unknown timm model 'resnet_no_such'"):
        attach_exits("resnet_no_such")
    with pytest.raises(ValueError, match="cannot split Sequential.*Supported: timm VisionTransformer"):
        attach_exits(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), input_size=28)
    doubled = timm.create_model("resnet10t", **CNN)  # computes something between its modules: refused
    doubled.__class__ = type("DoublingResNet", (ResNet,),
                             {"forward_features": lambda self, x: ResNet.forward_features(self, x) * 2})
    with pytest.raises(ValueError, match="cannot split DoublingResNet.*does not reproduce its forward"):
        attach_exits(doubled, input_size=28)
    with pytest.raises(ValueError, match=r"index 4 is out of range.*indices 0..4.*final features"):
        attach_exits(net, at=[1, 4], input_size=28)
    with pytest.raises(ValueError, match="out of range"):
        attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), at=[7])
    with pytest.raises(ValueError, match="unknown head type 'cnn_add' for a CNN.*need a VisionTransformer"):
        attach_exits(net, head="cnn_add", input_size=28)
    with pytest.raises(ValueError, match="unknown head type 'bogus'"):
        attach_exits(timm.create_model("vit_tiny_patch16_224", **VIT), head="bogus")
    with pytest.raises(ValueError, match="one per exit"):
        attach_exits(net, at=[1, 2], head=["conv"] * 3, input_size=28)
    with pytest.raises(ValueError, match="num_classes=5.*reset_classifier"):
        attach_exits(net, num_classes=5, input_size=28)
    with pytest.raises(ValueError, match="1-channel"):
        attach_exits(net, input_size=28)(torch.rand(2, 3, 28, 28))

    def offline(*args, **kwargs):  # what timm's hub download raises without network
        from huggingface_hub.errors import LocalEntryNotFoundError
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match="could not download .* pretrained weights.*pretrained=False"):
        tiny = {k: v for k, v in CNN.items() if k not in ("num_classes", "in_chans")}
        attach_exits("resnet10t", pretrained=True, num_classes=10, in_chans=1, input_size=28, **tiny)


def test_pretrained_with_other_classes_warns_about_the_new_head(monkeypatch):
    monkeypatch.setattr(timm.models._builder, "load_pretrained", lambda *args, **kwargs: None)  # "downloaded"
    tiny = {k: v for k, v in CNN.items() if k not in ("num_classes", "in_chans")}
    with pytest.warns(UserWarning, match="pretrained weights classify 1000 classes.*fine-tune"):
        m = attach_exits("resnet10t", pretrained=True, num_classes=10, in_chans=1, input_size=28, **tiny)
    assert "pretrained" not in m.arch_kwargs  # a checkpoint brings its own weights


def test_lazy_export():
    assert dynexit.attach_exits is attach_exits
