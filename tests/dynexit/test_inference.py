"""Real early exit: same exits and logits as applying the thresholds to forward(x)."""

import numpy as np
import pytest
import torch

from dynexit import criteria, explain
from dynexit.inference import early_exit, exits_from_logits
from _tiny_models import TINY, images, quantile_thresholds as _quantile_thresholds, tiny


@pytest.mark.parametrize("key", list(TINY))
@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "margin", "patience"])
def test_matches_table_path(key, criterion):
    m = tiny(key).eval()
    x = images(m, 48, seed=1)
    with torch.no_grad():
        outs = m(x)
    t = _quantile_thresholds(outs, criterion, q=0.6)
    logits, exits = early_exit(m, x, t, criterion=criterion)
    ref_exits, ref_logits = exits_from_logits(outs, t, criterion)
    np.testing.assert_array_equal(exits.numpy(), ref_exits)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)


def test_really_skips_work():
    m = tiny("dynperceiver").eval()
    x = images(m, 32)
    seen = []
    h = m.cnn.stages[3].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    t = np.array([-np.inf, 0, 0, -np.inf])  # everyone leaves at exit 1
    _, exits = early_exit(m, x, t)
    assert (exits == 0).all() and seen == []
    t = np.array([np.inf, np.inf, np.inf])  # nobody leaves early; last threshold omitted
    _, exits, ran = early_exit(m, x, t, return_costs=True)
    assert (exits == 3).all() and seen == [32] and list(ran) == [32] * 4
    seen.clear()
    with torch.no_grad():
        outs = m(x)
    seen.clear()
    t = _quantile_thresholds(outs, "max_prob", 0.5)
    _, exits, ran = early_exit(m, x, t, return_costs=True)
    assert seen and seen[0] == int((exits >= 2).sum()) < 32
    assert ran[0] == 32 and ran[1] == int((exits >= 1).sum())
    h.remove()


def test_callable_criterion_and_batch_one():
    m = tiny("multiexit_cnn").eval()
    x = images(m, 1)
    calls = []

    def crit(probs):
        calls.append(probs.shape)
        return probs.max(axis=2)

    logits, exits = early_exit(m, x, np.zeros(4), criterion=crit)
    assert logits.shape == (1, 10) and exits.tolist() == [0]
    assert calls == [(1, 1, 10)]


def test_bad_thresholds():
    m = tiny("static_cnn").eval()
    with pytest.raises(ValueError, match="one value per exit"):
        early_exit(m, images(m, 2), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown exit criterion"):
        early_exit(tiny("multiexit_cnn").eval(), images(m, 2), [0.5] * 4, criterion="bogus")


@pytest.mark.parametrize("key", list(TINY))
def test_random_criterion_is_keyed_by_sample(key):
    """`random` draws one score per (sample, exit): early exit, which scores only the samples still
    running, picks the same exits as the table path (it used to key draws by the row among the
    remaining samples: 53 of 200 differed on the zoo's Dynamic Perceiver)."""
    m = tiny(key).eval()
    x = images(m, 200, seed=4)
    with torch.no_grad():
        outs = m(x)
    t = np.full(m.num_exits, 0.6)
    _, exits = early_exit(m, x, t, criterion="random")
    ref_exits, _ = exits_from_logits(outs, t, "random")
    assert np.unique(ref_exits).size == m.num_exits  # samples leave at every exit
    assert int((exits.numpy() != ref_exits).sum()) == 0
    # in batches (as the bench and table builders run a split), with the table rows as sample ids
    batched = torch.cat([early_exit(m, x[i:i + 64], t, criterion="random", sample_ids=np.arange(i, min(i + 64, 200)))[1]
                         for i in range(0, 200, 64)])
    assert int((batched.numpy() != ref_exits).sum()) == 0
    # one image traced with its row as sample id: the table path's exit
    for i in range(0, 200, 25):
        trace = explain.traced_early_exit(m, x[i].numpy(), t, "random", row=i)
        assert trace.exit == ref_exits[i]


def test_sample_ids_are_checked():
    m = tiny("multiexit_cnn").eval()
    x = images(m, 4)
    for bad in ([0, 1, 2], [0, 1, 2, -1], [0.0, 1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="sample_ids"):
            early_exit(m, x, np.zeros(m.num_exits), sample_ids=np.asarray(bad))
