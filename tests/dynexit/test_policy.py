"""Exit rules: a fitted solver saved as JSON, loaded back, applied with real early exit."""

import json

import numpy as np
import pytest
import torch

from dynexit import solvers
from dynexit.policy import ExitRule
from dynexit.inference import early_exit
from dynexit.table import ExitTable

from _tiny_models import images, tiny


@pytest.fixture(scope="module")
def model_and_val():
    model = tiny("dynperceiver").eval()
    x = images(model, 96, seed=1)
    with torch.no_grad():
        logits = torch.stack(model(x), dim=1).numpy()
    labels = logits[:, -1].argmax(1)  # the last exit is "right": earlier exits are right when they agree
    labels[::7] = (labels[::7] + 1) % model.num_classes
    return model, ExitTable(logits, labels, model.exit_costs(), model.exit_names)


@pytest.mark.parametrize("solver, criterion", [("learned", "max_prob"), ("lagrangian", "entropy"),
                                               ("geometric", "margin")])
def test_saved_rule_takes_the_same_exits_as_the_solver(model_and_val, tmp_path, solver, criterion):
    model, val = model_and_val
    budget = float(val.costs[0] + 0.5 * (val.costs[-1] - val.costs[0]))
    fitted = solvers.make(solver, budget, criterion, **({"n_folds": 3} if solver == "learned" else {})).fit(val)
    path = ExitRule.from_solver(fitted, model=model.arch_name).save(tmp_path / "rule.json")
    data = json.loads(path.read_text())  # plain JSON: infinities are strings
    assert all(isinstance(t, (float, str)) for t in data["thresholds"]) and data["meta"]["model"] == model.arch_name
    rule = ExitRule.load(path)
    np.testing.assert_array_equal(rule.thresholds, fitted.thresholds_)
    x = images(model, 40, seed=5)
    logits, exits = rule.apply(model, x)
    ref_logits, ref_exits = early_exit(model, x, fitted.thresholds_, fitted.criterion)
    torch.testing.assert_close(logits, ref_logits)
    assert torch.equal(exits, ref_exits)


def test_bad_rules_give_clear_errors(model_and_val, tmp_path):
    model, val = model_and_val
    with pytest.raises(ValueError, match="not fitted"):
        ExitRule.from_solver(solvers.make("lagrangian", 10.0))
    with pytest.raises(ValueError, match="no such exit rule"):
        ExitRule.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON exit rule"):
        ExitRule.load(tmp_path / "bad.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"thresholds": [0.5]}))
    with pytest.raises(ValueError, match="not a dynexit exit rule"):
        ExitRule.load(tmp_path / "foreign.json")
    rule = ExitRule(np.array([0.9, -np.inf]), "max_prob")
    data = rule.to_dict()
    data["thresholds"][0] = float("nan")
    with pytest.raises(ValueError, match="finite number"):
        ExitRule.from_dict(data)
    with pytest.raises(ValueError, match="another model"):
        rule.apply(model, images(model, 2))


@pytest.fixture(scope="module")
def learned_rule_dict(model_and_val):
    _, val = model_and_val
    budget = float(val.costs[0] + 0.5 * (val.costs[-1] - val.costs[0]))
    return ExitRule.from_solver(solvers.make("learned", budget, n_folds=3).fit(val)).to_dict()


def _first_linear_exit(data):
    return next(m for m in data["criterion"]["exits"] if isinstance(m, dict))


@pytest.mark.parametrize("damage, message", [
    (lambda d: _first_linear_exit(d)["coef"].__setitem__(0, float("nan")), "'coef' must be a list of .* finite"),
    (lambda d: _first_linear_exit(d)["mean"].append(1.0), "'mean' must be a list of"),
    (lambda d: _first_linear_exit(d).__setitem__("scale", [0.0] * len(_first_linear_exit(d)["scale"])),
     "'scale' must be positive"),
    (lambda d: _first_linear_exit(d).__setitem__("intercept", float("inf")), "'intercept' must be a finite"),
    (lambda d: _first_linear_exit(d).pop("coef"), "missing coef"),
    (lambda d: d["criterion"]["exits"].__setitem__(0, "x"), "exit 1: expected a finite number"),
    (lambda d: d["criterion"]["exits"].pop(), "exits but there are"),
    (lambda d: d.__setitem__("criterion", "no_such_criterion"), "unknown exit criterion"),
    (lambda d: d.__setitem__("criterion", 7), "criterion must be"),
    (lambda d: d["thresholds"].__setitem__(0, 10 ** 400), "finite number"),
    (lambda d: d.__setitem__("thresholds", {"a": 1}), "list of thresholds"),
    (lambda d: d.__setitem__("meta", [1]), "meta must be an object"),
    (lambda d: d.__setitem__("format_version", True), "format version True"),
])
def test_damaged_rule_files(learned_rule_dict, tmp_path, damage, message):
    data = json.loads(json.dumps(learned_rule_dict))
    damage(data)
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        ExitRule.load(path)
    assert str(err.value).startswith(str(path))


def test_rule_validates_on_construction_and_odd_files(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        ExitRule(np.array([np.nan, -np.inf]), "max_prob")
    with pytest.raises(ValueError, match="shape"):
        ExitRule(np.zeros((2, 2)), "max_prob")
    with pytest.raises(ValueError, match="unknown exit criterion"):
        ExitRule(np.array([0.5, -np.inf]), "nope")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        ExitRule.load(tmp_path / "deep.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        ExitRule.load(tmp_path / "folder.json")


def test_a_rule_made_for_another_model_is_refused(model_and_val):
    """Identity: zoo / architecture name, weights SHA-256 and exit names in the rule's meta."""
    model, val = model_and_val
    x = images(model, 4, seed=2)
    th = [0.9] * model.num_exits

    def apply(**meta):
        return ExitRule(th, "max_prob", meta).apply(model, x)

    for meta, match in [
        ({"model": "mevit_fmnist"}, r"made for zoo model 'mevit_fmnist', the model is 'dynperceiver_tiny'"),
        ({"model": "multiexit_cnn_fmnist"}, r"made for zoo model 'multiexit_cnn_fmnist'"),
        ({"model": "dvt_tiny"}, r"made for architecture 'dvt_tiny', the model is 'dynperceiver_tiny'"),
        ({"exit_names": ["a", "b", "c", "d"]}, r"exits are \['a', 'b', 'c', 'd'\]"),
    ]:
        with pytest.raises(ValueError, match=r"this exit rule belongs to another model: the rule(.s| was) " + match):
            apply(**meta)
    for meta in ({}, {"model": model.arch_name}, {"model": "my deployment"}, {"exit_names": list(model.exit_names)},
                 {"weights_sha256": "b" * 64}):  # the in-memory model's weights are not known: not checked
        assert apply(**meta)[1].shape == (4,)

    # weights known (as resolve_model / load_checkpoint record them): another file's hash is refused
    other = tiny("dynperceiver").eval()
    other.weights_source = {"path": "w.safetensors", "sha256": "a" * 64, "zoo": None}
    with pytest.raises(ValueError, match=r"weights with SHA-256 bbbbbbbbbbbb\.\.\., the model's weights are aaaa"):
        ExitRule(th, "max_prob", {"weights_sha256": "b" * 64}).apply(other, x)
    assert ExitRule(th, "max_prob", {"weights_sha256": "a" * 64}).apply(other, x)[1].shape == (4,)

    # from_solver(model=<the model>) records all of it
    fitted = solvers.make("geometric", float(val.costs[1])).fit(val)
    rule = ExitRule.from_solver(fitted, model=other)
    assert rule.meta["model"] == "dynperceiver_tiny" and rule.meta["weights_sha256"] == "a" * 64
    assert rule.meta["exit_names"] == list(other.exit_names)
    with pytest.raises(ValueError, match="SHA-256"):
        ExitRule.from_dict(rule.to_dict()).apply(model_with_hash(other, "c" * 64), x)


def model_with_hash(model, sha):
    model.weights_source = {"path": "w.safetensors", "sha256": sha, "zoo": None}
    return model


def test_a_rule_refuses_the_table_of_another_model(tmp_path):
    from conftest import random_table
    val, test = random_table(n=120, k=3, seed=0), random_table(n=120, k=3, seed=1)
    rule = solvers.make("geometric", float(val.costs.mean())).fit(val).rule_
    rule.evaluate(test)  # the same model's test table: fine
    other = ExitTable(test.logits, test.labels, test.costs * [1.0, 0.8, 0.9])
    with pytest.raises(ValueError, match="belongs to another model"):
        rule.evaluate(other)
    back = ExitRule.load(rule.save(tmp_path / "r.json"))
    assert np.array_equal(back.costs, rule.costs)
    with pytest.raises(ValueError, match="belongs to another model"):
        back.evaluate(other)


def test_save_refuses_a_folder_or_a_missing_folder_and_leaves_nothing(tmp_path):
    from conftest import random_table
    rule = solvers.make("geometric", 2.0).fit(random_table(n=80, k=3)).rule_
    with pytest.raises(ValueError, match="is a folder"):
        rule.save(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        rule.save(tmp_path / "nowhere" / "r.json")
    assert list(tmp_path.iterdir()) == []
