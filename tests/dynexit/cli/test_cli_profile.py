"""``dynexit profile``: a tiny checkpoint is timed, its profile written beside it and read back."""

import json

import pytest

from dynexit import profile
from dynexit.cli import main
from dynexit.io.checkpoint import save_checkpoint
from _tiny_models import tiny


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny("multiexit_cnn")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"), model


def test_profile_writes_beside_the_weights_and_prints_every_exit(checkpoint, capsys):
    path, model = checkpoint
    assert main(["profile", "--model", str(path), "--batch-size", "4", "--threads", "1", "--device", "cpu",
                 "--min-time", "0.01"]) == 0
    out = capsys.readouterr().out
    written = profile.profile_path(path)
    assert f"wrote {written}" in out and "1 thread" in out
    for name in model.exit_names:
        assert name in out
    prof = profile.load(written)  # a valid profile: the round trip
    assert set(prof["batches"]) == {"1", "4"} and prof["threads"] == 1 and prof["device"] == "cpu"
    assert prof["mflops"] == pytest.approx(list(model.exit_costs()))
    # one latency per exit at each batch size; whether they rise with depth is the machine's business here
    # (a tiny model timed for 10 ms on a busy CI box may not: exit_costs_ms refuses that, tests/dynexit/test_profile.py)
    assert all(len(prof["batches"][b]["median_ms"]) == model.num_exits for b in ("1", "4"))


def test_profile_out_and_untrained(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "--model", "multiexit_cnn", "--untrained", "--batch-size", "2", "--min-time", "0.01",
                 "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["format"] == profile.FORMAT


@pytest.mark.parametrize("argv, message", [
    (["profile", "--model", "multiexit_cnn", "--untrained"], "give --out"),
    (["profile", "--model", "no/such.safetensors"], "no such checkpoint file"),
    (["profile", "--model", "x", "--min-time", "0"], "positive"),
    (["profile", "--model", "x", "--batch-size", "0"], "positive integer"),
    (["profile", "--model", "x", "--device", "tpu"], "invalid choice"),
])
def test_profile_usage_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynexit profile: error:") and message in err and err.count("\n") == 1, err
