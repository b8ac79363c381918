"""FLOP counting: a hand count on a tiny model, and the staged path against the full forward."""

import numpy as np
import pytest
import torch
from torch import nn

from dynexit.flops import forward_flops, stage_flops, staged_flops
from dynexit.models import MultiExitModel
from _tiny_models import TINY, tiny


class HandCounted(MultiExitModel):
    """conv(1->4, 3x3, 8x8) -> pool -> fc(4->3) | conv(4->4, 3x3, 8x8) -> pool -> fc(4->3)."""

    exit_names = ("a", "b")

    def __init__(self):
        super().__init__(num_classes=3, in_chans=1, input_size=8)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.f1, self.f2 = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward_stage(self, k, state):
        conv, fc = (self.c1, self.f1) if k == 0 else (self.c2, self.f2)
        x = torch.relu(conv(state["x"]))
        return {"x": x}, fc(x.mean((2, 3)))


def test_hand_count():
    m = HandCounted()
    conv1 = 8 * 8 * 4 * 1 * 9   # output positions x out channels x (in channels x kernel): multiply-adds
    conv2 = 8 * 8 * 4 * 4 * 9
    fc = 4 * 3
    expected = np.array([conv1 + fc, conv1 + fc + conv2 + fc]) / 1e6
    np.testing.assert_allclose(m.exit_costs(), expected, rtol=1e-9)
    np.testing.assert_allclose(stage_flops(m), [conv1 + fc, conv2 + fc] / np.float64(1e6))


@pytest.mark.parametrize("key", list(TINY))
def test_last_cost_matches_forward(key):
    m = tiny(key)
    assert abs(staged_flops(m)[-1] - forward_flops(m)) <= 0.05 * forward_flops(m)


def test_fmnist_costs_reasonable():
    from dynexit.models import create_model
    c = create_model("dynperceiver_fmnist").exit_costs()
    s = create_model("static_cnn_fmnist").exit_costs()
    assert 10 < s[0] < 100
    assert c[0] < c[-1] and c[-1] < 2 * s[0]
