"""The CLI on bad input (one stderr line, exit 2, before anything loads) and zoo names (shipped weights)."""

import json
import re
import subprocess
import sys

import pytest

from dynexit import zoo
from dynexit.io.checkpoint import file_sha256
from dynexit.cli import main
from dynexit.table import ExitTable

from conftest import random_table

DVT = "dvt_fmnist"
HAS_DVT = zoo.available(DVT)
needs_dvt = pytest.mark.skipif(not HAS_DVT, reason="the shipped zoo model dvt_fmnist is not in data/zoo")


def fails(argv, capsys, *, match: str) -> str:
    """``main(argv)`` exits 2 with one line on stderr that names the command and matches ``match``."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err
    assert err.startswith(f"dynexit {argv[0]}: error: "), err
    assert re.search(match, err), err
    return err


@pytest.fixture
def no_model_loads(monkeypatch):
    """Bad arguments must be refused before a model is built or loaded: loading one fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(zoo, "resolve_model", boom)
    monkeypatch.setattr(zoo, "load_model", boom)


BAD_BENCH = [
    (["--budget", "-1"], r"--budget: a budget is a positive, finite number"),
    (["--budget", "0"], r"--budget: a budget is a positive"),
    (["--budget", "nan"], r"--budget: a budget is a positive, finite"),
    (["--budget", "inf"], r"--budget: a budget is a positive, finite"),
    (["--budget", "ten"], r"--budget: invalid float value: 'ten'"),
    (["--budget", "0.5"], r"budget 0.5 MFLOPs is below the cheapest exit \(1.531 MFLOPs\).*at least 1.531"),
    (["--thresholds", "0.5,abc"], r"--thresholds: expected comma-separated numbers .*, got '0.5,abc' \('abc' is not a"),
    (["--thresholds", "0.5,nan"], r"--thresholds: expected comma-separated numbers .*'nan' is not a finite number"),
    (["--thresholds", "1,,2"], r"--thresholds: expected comma-separated numbers .*got '1,,2' \(an empty item\)"),
    (["--thresholds", "0.5,"], r"--thresholds: .*\(an empty item\)"),
    (["--thresholds", ""], r"--thresholds: .*\(an empty item\)"),
    (["--thresholds", "1e999,0"], r"--thresholds: .*'1e999' is not a finite number"),
    (["--thresholds", "-1,-2"], r"--thresholds: expected one argument"),  # argparse: write --thresholds=-1,-2
    (["--budget", "10", "--batch-sizes", "1,,2"], r"--batch-sizes: .*got '1,,2' \(an empty item\)"),
    (["--budget", "10", "--batch-sizes", "256,"], r"--batch-sizes: .*got '256,' \(an empty item\)"),
    (["--budget", "10", "--json", ""], r"--json: the output path is empty; give a file name \(e\.g\. result\.json\)"),
    (["--budget", "10", "--val-table", "SHIPPED_TEST"], r"dvt_fmnist\.test\.npz is a table of the test split.*"
                                                         r"thresholds must be fitted on a validation split that is not "
                                                         r"the test split"),
    (["--thresholds", "0.5,0.5,0.5,0.5"], r"one value per exit \(3; the last may be omitted\), got 4"),
    (["--budget", "10", "--thresholds", "0.5,0.5"], r"either --budget B .* or --thresholds"),
    ([], r"either --budget B .* or --thresholds"),
    (["--budget", "10", "--batch-sizes", "0"], r"--batch-sizes: expected comma-separated positive integers, got '0'"),
    (["--budget", "10", "--batch-sizes", "-1"], r"--batch-sizes: expected comma-separated positive integers, got '-1'"),
    (["--budget", "10", "--batch-sizes", "256,x"], r"--batch-sizes: expected comma-separated positive integers"),
    (["--budget", "10", "--limit", "0"], r"--limit: expected a positive integer, got '0'"),
    (["--budget", "10", "--repeats", "-2"], r"--repeats: expected a positive integer"),
    (["--budget", "10", "--solver", "magic"], r"--solver: invalid choice: 'magic'"),
    (["--budget", "10", "--criterion", "vibes"], r"--criterion: invalid choice: 'vibes'"),
    (["--budget", "10", "--json", "TMP"], r"--json: .* is a folder; give a file name"),
    (["--budget", "10", "--json", "TMP/missing/r.json"], r"--json: cannot write .*r\.json: the folder .*missing does not exist"),
    (["--budget", "10", "--data-root", "TMP/nowhere"], r"--data-root: .*nowhere: no such folder"),
    (["--budget", "10", "--data-root", "TMP"], r"data root .* does not hold the Fashion-MNIST test split: missing t10k-images"),
    (["--budget", "10", "--val-table", "TMP/none.npz"], r"--val-table: .*none\.npz: no such file"),
    (["--budget", "10", "--data", "x"], r"argument --data: unknown dataset .x.: choose one of fashion-mnist"),
    (["--budget", "10", "--thr", "0.5"], r"unrecognized arguments: --thr"),
]


@needs_dvt
@pytest.mark.parametrize("extra, match", BAD_BENCH)
def test_bench_bad_input_is_one_line_and_exit_2(extra, match, tmp_path, capsys, no_model_loads):
    shipped_test = str(zoo.table_path(DVT, "test"))
    argv = ["bench", "--model", DVT] + [a.replace("TMP", str(tmp_path)).replace("SHIPPED_TEST", shipped_test)
                                        for a in extra]
    fails(argv, capsys, match=match)


@needs_dvt
def test_bench_refuses_the_val_table_of_another_model(tmp_path, capsys, no_model_loads):
    random_table(n=50, k=4, c=10).save(tmp_path / "other.npz")
    fails(["bench", "--model", DVT, "--budget", "10", "--val-table", str(tmp_path / "other.npz")], capsys,
          match=r"the val table is not a table of this model: its exits cost .* the model's \[1.531, 11.202, 24.782\]")


BAD_MODEL = [
    (["--model", "dynperceiver_tiny"], r"'dynperceiver_tiny' is an architecture without trained weights.*--untrained"),
    (["--model", "no_such_model"], r"'no_such_model' is not a zoo model .*nor a registered architecture"),
    (["--model", "TMP/missing.safetensors"], r"missing\.safetensors: no such checkpoint file"),
    (["--model", "TMP"], r": a folder, not a checkpoint file"),
    (["--model", "no_such_model", "--untrained"], r"--untrained\) builds a registered architecture.*'no_such_model' is not one"),
]


@pytest.mark.parametrize("cmd", ["bench", "table"])
@pytest.mark.parametrize("model, match", BAD_MODEL)
def test_model_names_that_are_not_trained_weights_are_refused(cmd, model, match, tmp_path, capsys):
    rest = ["--budget", "10"] if cmd == "bench" else ["--split", "test", "--out", str(tmp_path / "t.npz"), "--limit", "8"]
    fails([cmd] + [a.replace("TMP", str(tmp_path)) for a in model] + rest, capsys, match=match)
    assert not (tmp_path / "t.npz").exists()


@needs_dvt
@pytest.mark.parametrize("extra, match", [
    (["--data-root", "NOWHERE"], r"--data-root: NOWHERE: no such folder"),
    (["--data", "NOWHERE"], r"argument --data: unknown dataset .NOWHERE."),
    (["--data", "cifar10:NOWHERE"], r"argument --data: NOWHERE: no such folder"),
    (["--data-root", "TMP"], r"data root .* does not hold the Fashion-MNIST val split: missing train-images"),
    (["--out", "TMP"], r"--out: .* is a folder"),
    (["--out", "TMP/missing/t.npz"], r"--out: cannot write .*the folder .*missing does not exist"),
    (["--batch-size", "0"], r"--batch-size: expected a positive integer, got '0'"),
    (["--split", "train"], r"--split: invalid choice: 'train'"),
    (["--out", "TMP/"], r"--out: .* is a folder; give a file name \(e\.g\. .*result\.npz\)"),
    (["--out", ""], r"--out: the output path is empty; give a file name \(e\.g\. result\.npz\)"),
])
def test_table_bad_input(extra, match, tmp_path, capsys, no_model_loads):
    argv = ["table", "--model", DVT, "--split", "val", "--out", str(tmp_path / "t.npz")]
    fails(argv + [a.replace("TMP", str(tmp_path)) for a in extra], capsys, match=match)


@pytest.mark.parametrize("argv, match", [
    (["solve", "TMP/v.npz", "TMP/t.npz", "--budget", "-1"], r"--budget: a budget is a positive"),
    (["solve", "TMP/v.npz", "TMP/t.npz", "--budget", "3", "--json", "TMP"], r"--json: .* is a folder"),
    (["solve", "TMP/v.npz", "TMP/t.npz", "--budget", "3", "--sol", "geometric"], r"unrecognized arguments: --sol geometric"),
    (["curve", "TMP/v.npz", "TMP/t.npz", "--json", "TMP/no/c.json"], r"--json: cannot write .*does not exist"),
    (["curve", "TMP/v.npz", "TMP/t.npz", "--csv", "TMP"], r"--csv: .* is a folder"),
    (["calibrate", "TMP/v.npz", "TMP/t.npz", "--json", "TMP"], r"--json: .* is a folder"),
    (["train", "--model", "dynperceiver_tiny", "--data-root", "TMP/nowhere"], r"--data-root: .*nowhere: no such folder"),
    (["train", "--model", "dynperceiver_tiny", "--data-root", "TMP"], r"data root .* does not hold the Fashion-MNIST train split"),
    (["train", "--model", "dynperceiver_tiny", "--batch-size", "-1"], r"--batch-size: expected a positive integer"),
    (["train", "--model", "dynperceiver_tiny", "--loss-weights", "1,x"], r"--loss-weights: expected comma-separated finite numbers"),
    (["train", "--model", "dynperceiver_tiny", "--loss-weights", "1,,1"], r"--loss-weights: .*\(an empty item\)"),
    (["train", "--model", "dynperceiver_tiny", "--loss-weights", "1,inf"], r"--loss-weights: .*'inf' is not a finite"),
    (["train", "--model", "dynperceiver_tiny", "--epochs", "0"], r"--epochs: expected a positive, finite number, got '0'"),
    (["train", "--model", "dynperceiver_tiny", "--epochs", "-2"], r"--epochs: expected a positive, finite number"),
    (["solve", "TMP/t.npz", "TMP/t.npz", "--budget", "3"], r"TMP/t\.npz and TMP/t\.npz are the same table; thresholds "
                                                           r"must be fitted on a validation split that is not the test"),
    (["curve", "TMP/t.npz", "TMP/t2.npz"], r"are the same table; thresholds must be fitted on a validation split"),
    (["calibrate", "TMP/test_split.npz", "TMP/t.npz"], r"test_split\.npz is a table of the test split"),
    (["solve", "TMP/v.npz", "TMP/t.npz", "--budget", "3", "--json", ""], r"--json: the output path is empty"),
    (["zoo", "info", "nope"], r"unknown zoo model 'nope'"),
    (["zoo", "info"], r"needs a model name"),
    (["report", "--no-fig"], r"unrecognized arguments: --no-fig"),
])
def test_every_subcommand_refuses_bad_input_in_one_line(argv, match, tmp_path, capsys):
    random_table(n=60, k=3, c=4, seed=0).save(tmp_path / "v.npz")
    random_table(n=60, k=3, c=4, seed=1).save(tmp_path / "t.npz")
    random_table(n=60, k=3, c=4, seed=1).save(tmp_path / "t2.npz")  # the same table under another name
    other, same_model = random_table(n=60, k=3, c=4, seed=2), ExitTable.load(tmp_path / "t.npz")
    ExitTable(other.logits, other.labels, same_model.costs, meta={"split": "test"}).save(tmp_path / "test_split.npz")
    fails([a.replace("TMP", str(tmp_path)) for a in argv], capsys, match=match.replace("TMP", re.escape(str(tmp_path))))


@needs_dvt
@pytest.mark.parametrize("budget, match", [("-1", "a budget is a positive"), ("0.5", "below the cheapest exit")])
def test_a_bad_budget_is_refused_before_torch_or_a_model_loads(budget, match):
    """Refused from the sidecar's costs, in a fresh process that never imports torch (it took 48 s)."""
    code = ("import sys, dynexit.cli as c; rc = c.main(['bench', '--model', %r, '--budget', %r]); "
            "print(rc, 'torch' in sys.modules)" % (DVT, budget))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert match in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- zoo names run the shipped weights

def _hash_prefix(name: str) -> str:
    return file_sha256(zoo.weights_path(name))[:zoo.HASH_CHARS]


@needs_dvt
def test_bench_on_a_zoo_name_runs_the_shipped_weights(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", DVT, "--budget", "10", "--limit", "256", "--batch-sizes", "256",
                 "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    # trained: ~86% on the full test split; an untrained network is at chance (~10%)
    assert result["accuracy_full"] > 0.7 and result["accuracy_early_exit"] > 0.7
    assert result["weights"]["path"].endswith("dvt_fmnist.safetensors")
    assert result["weights"]["sha256"] == file_sha256(zoo.weights_path(DVT))
    assert result["weights"]["zoo"] == DVT
    assert f"weights: {result['weights']['path']} (sha256 {_hash_prefix(DVT)}" in text
    # the shipped val table of the same weights file fitted the thresholds (no 5,000-image rebuild)
    assert result["val_table"].endswith("dvt_fmnist.val.npz")
    assert result["mean_cost_mflops"] <= result["full_cost_mflops"]


@needs_dvt
def test_table_on_a_zoo_name_runs_the_shipped_weights(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["table", "--model", DVT, "--split", "test", "--limit", "256", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    table = ExitTable.load(out)
    assert table.exit_accuracy()[-1] > 0.7
    shipped = zoo.load_table(DVT, "test").subset(list(range(256)))
    assert (table.predictions == shipped.predictions).mean() > 0.98  # the weights the shipped table came from
    assert table.meta["weights"]["sha256"] == shipped.meta["checkpoint_sha256"]
    assert f"(sha256 {_hash_prefix(DVT)}, zoo model {DVT})" in text


def test_untrained_runs_only_when_asked_and_says_so(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["table", "--model", "dynperceiver_tiny", "--untrained", "--split", "test", "--limit", "16",
                 "--out", str(out), "--quiet"]) == 0
    assert "weights: UNTRAINED" in capsys.readouterr().out
    assert ExitTable.load(out).meta["weights"] == "untrained"


def _tiny_checkpoint(folder):
    from dynexit.io.checkpoint import save_checkpoint
    from _tiny_models import tiny

    return save_checkpoint(tiny("dynperceiver").eval(), folder / "dp.safetensors")


def test_a_deeply_nested_sidecar_is_a_damaged_file_not_a_recursion_error(tmp_path, capsys, monkeypatch):
    ckpt = _tiny_checkpoint(tmp_path)
    ckpt.with_suffix(".json").write_text("[" * 100000 + "]" * 100000)
    fails(["bench", "--model", str(ckpt), "--budget", "10"], capsys,
          match=r"dp\.json: corrupt checkpoint sidecar \(JSON nested too deeply to read\)")
    # the zoo name: the damaged-file error with the rebuild command
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path))
    (tmp_path / "dp.safetensors").rename(zoo.weights_path(DVT))
    zoo.weights_path(DVT).with_suffix(".json").write_text("[" * 100000 + "]" * 100000)
    fails(["bench", "--model", DVT, "--budget", "10"], capsys,
          match=r"dvt_fmnist\.safetensors: damaged zoo file .*nested too deeply.*dynexit zoo reproduce dvt_fmnist")
    fails(["bench", "--model", DVT, "--budget", "10", "--model-kwargs", "[" * 100000], capsys,
          match=r"unrecognized arguments")  # (bench has no --model-kwargs; train's is checked below)
    fails(["train", "--model", "dynperceiver_tiny", "--model-kwargs", "[" * 100000 + "]" * 100000], capsys,
          match=r"--model-kwargs: expected a JSON object, got '\[\[\[.*\(nested too deeply\)")


def test_a_set_dynexit_data_is_honoured_strictly(tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.setenv("DYNEXIT_DATA", str(tmp_path / "nowhere"))
    fails(["table", "--model", DVT, "--split", "test", "--out", str(tmp_path / "t.npz")], capsys,
          match=r"DYNEXIT_DATA=.*nowhere: no such directory.*unset DYNEXIT_DATA")
    monkeypatch.setenv("DYNEXIT_DATA", str(tmp_path))
    fails(["bench", "--model", DVT, "--thresholds", "0.5,0.5"], capsys,
          match=r"DYNEXIT_DATA=.*neither that folder nor its fashion-mnist subfolder holds the Fashion-MNIST test split")


@needs_dvt
def test_bench_with_thresholds_and_a_budget_above_the_full_cost(tmp_path, capsys):
    common = ["--limit", "300", "--batch-sizes", "300", "--repeats", "1"]
    assert main(["bench", "--model", DVT, "--thresholds=inf,-inf", "--criterion", "random"] + common) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"model {DVT}  thresholds given [inf, -inf, -inf]  criterion random"
    assert "None" not in out and "exits taken: [0, 300, 0]" in out
    # a budget above the full model's cost is accepted, as `dynexit solve` accepts it
    assert main(["bench", "--model", DVT, "--budget", "1000"] + common) == 0
    assert "budget 1000 MFLOPs" in capsys.readouterr().out
