"""Training: loss, schedule, a few steps lower the loss, the API end to end with resume, DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dynexit.io.checkpoint import load_checkpoint
from dynexit.training.loop import multi_exit_loss, pick_device, train
from dynexit.training.optim import lr_at
from _tiny_models import images, tiny


def test_loss_weights_and_distillation():
    y = torch.tensor([0, 1, 2])
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    plain, ces = multi_exit_loss([a, b], y, [0.5, 1.0])
    assert torch.isclose(plain, 0.5 * torch.nn.functional.cross_entropy(a, y) + torch.nn.functional.cross_entropy(b, y))
    assert len(ces) == 2
    same, _ = multi_exit_loss([b, b], y, [0.0, 1.0], distill_alpha=1.0)  # identical exits: KD term is zero
    assert torch.isclose(same, torch.nn.functional.cross_entropy(b, y), atol=1e-6)
    kd, _ = multi_exit_loss([a, b], y, [0.0, 0.0], distill_alpha=1.0, temperature=2.0)
    kd.backward()
    assert a.grad.abs().sum() > 0 and (b.grad is None or b.grad.abs().sum() == 0)  # teacher is detached
    with pytest.raises(ValueError, match="one value per exit"):
        multi_exit_loss([a, b], y, [1.0])


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_device_auto_and_errors():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("toaster")


def test_a_bare_cuda_is_each_torchrun_process_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda") == torch.device("cuda", 3) and pick_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("key", ["dynperceiver", "multiexit_cnn"])
def test_a_few_steps_lower_the_loss(key):
    m = tiny(key).train()
    x = images(m, 32, seed=3)
    y = torch.arange(32) % 10
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = multi_exit_loss(m(x), y, m.loss_weights(), 0.1, 0.5, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:3])


COMMON = dict(model="dynperceiver_tiny", train_subset=96, val_subset=64, batch_size=32, progress=False,
              warmup_epochs=0.5, num_workers=0)


def test_train_api_checkpoint_and_exact_resume(tmp_path):
    full = train(**COMMON, epochs=2, out_dir=str(tmp_path / "full"))
    assert full["steps"] == 6 and len(full["history"]) == 2
    assert len(full["val_accuracy"]) == 4
    m = load_checkpoint(full["checkpoint"])
    assert m.checkpoint_meta["recipe"]["epochs"] == 2 and m.checkpoint_meta["val_accuracy"] == full["val_accuracy"]
    # interrupted after epoch 1, then resumed: same weights as the uninterrupted run
    part = train(**COMMON, epochs=2, max_steps=3, out_dir=str(tmp_path / "part"))
    assert part["steps"] == 3
    resumed = train(**COMMON, epochs=2, resume=True, out_dir=str(tmp_path / "part"))
    assert resumed["steps"] == 6
    assert resumed["param_checksum"] == pytest.approx(full["param_checksum"], rel=1e-6)
    np.testing.assert_allclose(resumed["val_accuracy"], full["val_accuracy"])


def test_resume_without_state_is_clear(tmp_path):
    with pytest.raises(ValueError, match="no resume state"):
        train(**COMMON, epochs=1, resume=True, out_dir=str(tmp_path / "none"))


def test_cli_bad_arguments(capsys):
    from dynexit.cli import main
    assert main(["train", "--model", "no_such_model", "--out", "/tmp/unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model" in err and "Traceback" not in err
    assert main(["table", "--model", "no_such_model", "--split", "val", "--out", "/tmp/x.npz"]) == 2
    assert main(["bench", "--model", "dynperceiver_tiny"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dynexit", "train", "--model", "dynperceiver_tiny", "--train-subset", "128",
           "--val-subset", "64", "--batch-size", "16", "--max-steps", "3", "--epochs", "1", "--device", "cpu",
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "train_result.json").read_text())
    r1 = json.loads((out / "train_result_rank1.json").read_text())
    assert r0["world_size"] == 2 and r0["steps"] == 3 and r1["steps"] == 3
    # gradients were averaged: both processes hold the same weights
    assert r0["param_checksum"] == pytest.approx(r1["param_checksum"], rel=1e-6)
    assert (out / "checkpoint.safetensors").exists()
    load_checkpoint(out / "checkpoint.safetensors")


def test_train_on_an_imagefolder_tree(tmp_path):
    """`dynexit train --data imagefolder:PATH`: a tree written from real Fashion-MNIST images trains end to end."""
    from dynexit.cli import main
    from dynexit.testing import write_image_tree

    tree = write_image_tree(tmp_path / "tree", {"train": 80, "test": 20})
    out = tmp_path / "run"
    assert main(["train", "--model", "dynperceiver_tiny", "--data", f"imagefolder:{tree}", "--batch-size", "16",
                 "--epochs", "1", "--max-steps", "2", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 2 and len(result["val_accuracy"]) == 4
    assert load_checkpoint(out / "checkpoint.safetensors").checkpoint_meta["recipe"]["data"] == f"imagefolder:{tree}"


DIGITS = dict(model="multiexit_cnn", data="digits", batch_size=64, max_steps=1, progress=False, augment=False,
              ema_decay=0, model_kwargs={"backbone": "resnet10_quarter", "input_size": 8, "exit_after": [2]})


def test_checkpoint_records_the_dataset_and_its_classes(tmp_path):
    from dynexit.data import get_dataset

    result = train(**DIGITS, epochs=1, out_dir=str(tmp_path / "run"))
    record = load_checkpoint(result["checkpoint"]).checkpoint_meta["training_data"]
    spec = get_dataset("digits")
    assert record == {"dataset": "digits", "class_names": list(spec.class_names), "split_rule": spec.split_rule}
    assert json.loads((tmp_path / "run" / "resume.json").read_text())["training_data"] == record


def test_an_earlier_run_is_never_overwritten_silently(tmp_path):
    out = str(tmp_path / "run")
    first = train(**DIGITS, epochs=1, out_dir=out)
    with pytest.raises(ValueError, match=r"an earlier run's files are in .*--resume.*--force"):
        train(**DIGITS, epochs=1, out_dir=out)
    again = train(**DIGITS, epochs=1, out_dir=out, force=True)
    assert again["steps"] == 1 and again["checkpoint"] == first["checkpoint"]
    from dynexit.cli import main
    assert main(["train", "--model", "multiexit_cnn", "--data", "digits", "--out", out]) == 2  # refused before loading


def test_resume_refuses_a_state_trained_on_other_classes(tmp_path):
    from dynexit.training.resume import check_resume_data

    out = tmp_path / "run"
    train(**DIGITS, epochs=2, out_dir=str(out))
    state = out / "resume.safetensors"
    meta = json.loads(state.with_suffix(".json").read_text())
    meta["training_data"] = dict(meta["training_data"], dataset="imagefolder:/elsewhere",
                                 class_names=list("9876543210"))
    state.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"trained on imagefolder:/elsewhere with classes .* but digits has classes "
                                         r".*label 0 is '9' in training, '0' here.*resume with --data imagefolder"):
        train(**DIGITS, epochs=2, out_dir=str(out), resume=True)
    # a state from before the record: its config's dataset name decides
    record = {"dataset": "digits", "class_names": list("0123456789")}
    del meta["training_data"]
    state.with_suffix(".json").write_text(json.dumps(meta))
    check_resume_data(state, record)
    with pytest.raises(ValueError, match="the resume state was trained on digits, this run trains on cifar10"):
        check_resume_data(state, {"dataset": "cifar10", "class_names": list("0123456789")})
    # two trees with the same classes (a tree that moved) resume
    meta["training_data"] = {"dataset": "imagefolder:/old", "class_names": ["a", "b"]}
    state.with_suffix(".json").write_text(json.dumps(meta))
    check_resume_data(state, {"dataset": "imagefolder:/new", "class_names": ["a", "b"]})
