"""FLOPs of multi-exit models, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Convention of the early-exit papers (MSDNet, Dyn-Perceiver, DVT) and fvcore: one multiply-add counts
once, so MFLOPs = counter total / 2 / 1e6. The counter sees matrix products, convolutions and
attention (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, scaled-dot-product attention);
element-wise ops (norms, activations, pooling, softmax) are not counted, which is within a few
percent for these networks.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def _eval_no_grad(model):
    # FlopCounterMode's module tracker needs autograd enabled (it hooks tensors that require grad),
    # so only the mode is switched; no backward is ever run, so only forward FLOPs are counted.
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was)


def _dummy(model) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else "cpu"
    return torch.rand(1, model.in_chans, *model.input_size, device=device)


def count_mflops(fn, *args, **kwargs) -> tuple[float, object]:
    """Run ``fn(*args, **kwargs)`` under a FlopCounterMode; returns (multiply-add MFLOPs, result)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops() / 2 / 1e6, out


def stage_flops(model, x: torch.Tensor | None = None) -> np.ndarray:
    """MFLOPs of each stage of the staged form for one image (not cumulative), shape (K,)."""
    with _eval_no_grad(model):
        x = _dummy(model) if x is None else x[:1]
        mf, state = count_mflops(model.init_state, x)
        per = []
        for k in range(model.num_exits):
            f, (state, _) = count_mflops(model.forward_stage, k, state)
            per.append(f + (mf if k == 0 else 0.0))
    return np.asarray(per, dtype=np.float64)


def staged_flops(model, x: torch.Tensor | None = None) -> np.ndarray:
    """Cumulative MFLOPs per exit for one image on the staged (early-exit) path, shape (K,)."""
    return np.cumsum(stage_flops(model, x))


def forward_flops(model, x: torch.Tensor | None = None) -> float:
    """MFLOPs of one full ``forward`` for one image (all exits)."""
    with _eval_no_grad(model):
        x = _dummy(model) if x is None else x[:1]
        mf, _ = count_mflops(model, x)
    return mf
