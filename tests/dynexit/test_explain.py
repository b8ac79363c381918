"""Explanations: the traced early exit is real early exit step by step; attributions are image-shaped."""

import numpy as np
import pytest
import torch

from dynexit import explain
from dynexit.inference import early_exit, staged_exit
from _tiny_models import images, quantile_thresholds, tiny


@pytest.mark.parametrize("key", ["dynperceiver", "multiexit_cnn", "mevit"])
@pytest.mark.parametrize("criterion", ["max_prob", "patience"])
def test_traced_early_exit_takes_early_exits_exits_and_logits(key, criterion):
    m = tiny(key).eval()
    x = images(m, 12, seed=3)
    with torch.no_grad():
        outs = m(x)
    t = quantile_thresholds(outs, criterion, q=0.5)
    logits, exits = early_exit(m, x, t, criterion)
    assert len(set(exits.tolist())) > 1  # the thresholds send images to different exits
    for i in range(len(x)):
        trace = explain.traced_early_exit(m, x[i].numpy(), t, criterion)
        assert trace.exit == int(exits[i]) and trace.computed == trace.exit + 1
        # the probabilities it shows at the exit it took are those of early exit's logits there
        np.testing.assert_allclose(trace.probs[trace.exit], torch.softmax(logits[i].double(), 0).numpy(), atol=1e-5)
        assert trace.prediction == int(logits[i].argmax())
        full = explain.traced_early_exit(m, x[i].numpy(), t, criterion, run_all=True)
        assert full.exit == trace.exit and full.computed == m.num_exits  # later exits shown, exit unchanged
        np.testing.assert_array_equal(full.scores[:trace.computed], trace.scores)


def test_staged_exit_is_the_loop_of_early_exit():
    m = tiny("dynperceiver").eval()
    x = images(m, 16, seed=4)
    t = np.array([0.6, 0.6, 0.6, -np.inf])
    _, exits, ran = early_exit(m, x, t, return_costs=True)
    stages = list(staged_exit(m, x, t))
    assert [len(s.rows) for s in stages] == ran[:len(stages)].tolist()
    left = {int(r): s.k for s in stages for r in s.rows[torch.from_numpy(s.leave)]}
    assert left == {i: int(e) for i, e in enumerate(exits)}
    assert stages[-1].scores is None or stages[-1].k < m.num_exits - 1  # the last exit is never scored


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_attribution_has_the_image_shape(method):
    m = tiny("multiexit_cnn").eval()
    img = images(m, 1, seed=5)[0].numpy()
    amap, target = explain.attribution(m, img, 1, method=method, n_steps=4)
    assert amap.shape == tuple(m.input_size) and np.isfinite(amap).all()
    assert 0 <= target < m.num_classes
    with pytest.raises(ValueError, match="unknown attribution method"):
        explain.attribution(m, img, 1, method="nope")
