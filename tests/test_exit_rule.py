"""Exit rules: a fitted solver saved as JSON, loaded back, applied with real early exit."""

import json

import numpy as np
import pytest
import torch

from dynexit import solvers
from dynexit.exit_rule import ExitRule
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
