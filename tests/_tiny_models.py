"""Tiny configs of every model family, shared by the model tests (fast on 2 CPU cores)."""

import numpy as np
import torch

from dynexit import criteria
from dynexit.models import create_model

TINY = {
    "dynperceiver": ("dynperceiver_tiny", {}),
    "multiexit_cnn": ("multiexit_cnn", dict(backbone="resnet10_quarter", exit_after=(1, 2, 3))),
    "static_cnn": ("static_cnn", dict(backbone="resnet10_quarter")),
    "multiexit_cnn_two": ("multiexit_cnn", dict(backbone="resnet10_quarter", exit_after=(2,))),
    "dynperceiver_rgb32": ("dynperceiver", dict(backbone="resnet10_quarter", in_chans=3, input_size=32, num_classes=5,
                                                num_latents=16, sa_depths=(1, 1, 1, 1), sa_heads=(1, 1, 1, 2),
                                                with_isc=False, with_dwc=False)),
    "mevit": ("mevit_tiny", {}),
    "dvt": ("dvt_tiny", {}),
}


def tiny(key, seed=0):
    torch.manual_seed(seed)
    name, kwargs = TINY[key]
    return create_model(name, **kwargs)


def images(model, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, model.in_chans, *model.input_size, generator=g)


def assert_staged_equals_forward(m, x):
    """The staged form (init_state, forward_stage per exit) gives forward's logits at every exit."""
    with torch.no_grad():
        full = m(x)
        state = m.init_state(x)
        for k in range(m.num_exits):
            state, logits = m.forward_stage(k, state)
            torch.testing.assert_close(logits, full[k])
    return full


def capture_keeps_outputs(m, x):
    """Run ``m`` with and without attention capture; the outputs must match. Returns the recorder."""
    with torch.no_grad():
        ref = m(x)
        with m.capture_attention() as rec:
            out = m(x)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return rec


def quantile_thresholds(outs, criterion, q=0.5):
    """Per-exit thresholds at the q-quantile of each exit's score over the outputs ``outs`` (list of (B, C))."""
    probs = np.stack([torch.softmax(o.double(), 1).float().numpy() for o in outs], axis=1)
    s = criteria.get(criterion)(probs)
    t = np.quantile(s, q, axis=0)
    t[-1] = -np.inf
    return t
