import json

import pytest

from dynexit.cli import main


@pytest.fixture(scope="module")
def table_files(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("tables")
    val, test = digits
    return str(val.save(out / "val.npz")), str(test.save(out / "test.npz"))


def test_solve(table_files, capsys, tmp_path, digits):
    val, _ = digits
    out = tmp_path / "r.json"
    assert main(["solve", *table_files, "--budget", str(val.costs[2]), "--solver", "geometric",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "thresholds" in text and "exit histogram" in text
    result = json.loads(out.read_text())
    assert sum(result["histogram"]) == 360


def test_solve_writes_strict_json_and_the_deployable_rule(table_files, capsys, tmp_path, digits):
    from dynexit.policy import ExitRule
    val, test = digits
    out, rule = tmp_path / "r.json", tmp_path / "rule.json"
    assert main(["solve", *table_files, "--budget", str(val.costs[0] * 1.01), "--json", str(out),
                 "--rule", str(rule)]) == 0
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON: infinite thresholds are "inf" / "-inf"
    assert json.loads(text)["thresholds"][-1] == "-inf"  # the last exit takes everyone left
    loaded = ExitRule.load(rule)
    assert loaded.evaluate(test).accuracy == pytest.approx(json.loads(text)["accuracy"])


def test_curve(table_files, capsys, tmp_path):
    assert main(["curve", *table_files, "--points", "5", "--csv", str(tmp_path / "c.csv"),
                 "--json", str(tmp_path / "c.json")]) == 0
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 6
    assert len(json.loads((tmp_path / "c.json").read_text())["test_accuracy"]) == 5


@pytest.mark.parametrize("argv, message", [
    (["solve", "nope.npz", "nope.npz", "--budget", "1"], "no such file"),
    (["solve", "VAL", "TEST", "--budget", "1e-12"], "below the cheapest exit"),
    (["solve", "VAL", "TEST", "--budget", "abc"], "invalid float"),
    (["solve", "VAL", "TEST", "--budget", "1", "--solver", "magic"], "invalid choice"),
    (["curve", "VAL", "TEST", "--points", "1"], "at least 2"),
    (["frobnicate"], "invalid choice"),
])
def test_errors_are_one_line_exit_2(table_files, capsys, argv, message):
    argv = [table_files[0] if a == "VAL" else table_files[1] if a == "TEST" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_calibrate(table_files, capsys, tmp_path):
    assert main(["calibrate", *table_files, "--json", str(tmp_path / "t.json")]) == 0
    assert "ECE before" in capsys.readouterr().out
    result = json.loads((tmp_path / "t.json").read_text())
    assert len(result["temperature"]) == 4 and all(t > 0 for t in result["temperature"])
