"""FLOPs of multi-exit models, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Convention of the early-exit papers (MSDNet, Dyn-Perceiver, DVT) and fvcore: one multiply-add counts
once, so MFLOPs = counter total / 2 / 1e6. The counter sees matrix products, convolutions and
attention (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, scaled-dot-product attention);
element-wise ops (norms, activations, pooling, softmax) are not counted, which is within a few
percent for these networks.

Two fixes to the stock counter make a count independent of the machine it runs on:

- **Attention by its formula, whatever kernel runs.** torch dispatches
  ``F.scaled_dot_product_attention`` to a kernel chosen by version, device and inputs; the stock
  registry knows the CUDA kernels (flash, efficient, cuDNN) but not the CPU flash kernel
  (``_scaled_dot_product_flash_attention_for_cpu``) nor the "overrideable" / MPS ones, so on some
  machines attention was counted as zero while the explicit path (``softmax(q k^T) v``, used while
  attention is captured) counted its two matrix products. :data:`SDPA_OPS` maps every forward SDPA
  op of this torch to torch's own formula (``sdpa_flop_count``: the q k^T and attn v products),
  which is exactly what the explicit path's two ``bmm`` count, so fused and explicit agree.
- **No module tracker.** FlopCounterMode attributes FLOPs to modules with a ``ModuleTracker`` that
  registers autograd hooks on module inputs requiring grad; under ``torch.no_grad()`` a parameter
  passed as a module input makes it fail ("Expected gradient function to be set"). dynexit only
  needs totals, so :class:`MacCounter` replaces the tracker by a fixed "Global" parent and counts
  inside ``no_grad`` / ``inference_mode`` code (e.g. :func:`dynexit.inference.early_exit`) too.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_SDPA_FORWARD_NAMES = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q (B, H, Nq, d) @ k^T and attn (B, H, Nq, Nk) @ v: 2 * B*H*Nq*Nk*(d + d_v) FLOPs, torch's formula
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# every forward SDPA kernel of the installed torch (names differ between versions, so looked up)
SDPA_OPS = {getattr(torch.ops.aten, n): _sdpa_formula for n in _SDPA_FORWARD_NAMES if hasattr(torch.ops.aten, n)}


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to the "Global" total."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


class MacCounter(FlopCounterMode):
    """``FlopCounterMode`` that counts every SDPA kernel by formula and works under ``no_grad``.

    ``get_total_flops()`` is in FLOPs (2 per multiply-add); :func:`count_mflops` converts. Per-module
    breakdowns are not available (see the module docstring for why the tracker is replaced).
    """

    def __init__(self):
        super().__init__(display=False, custom_mapping=SDPA_OPS)
        self.mod_tracker = _GlobalOnly()


@contextlib.contextmanager
def _eval(model):
    """Yield ``model`` in eval mode without changing its mode (the model may be shared by threads)."""
    from dynexit.models._base import eval_view
    with torch.no_grad():
        yield eval_view(model)


def _dummy(model) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else "cpu"
    return torch.rand(1, model.in_chans, *model.input_size, device=device)


def count_mflops(fn, *args, **kwargs) -> tuple[float, object]:
    """Run ``fn(*args, **kwargs)`` under a :class:`MacCounter`; returns (multiply-add MFLOPs, result).

    Works with or without autograd (``no_grad`` / ``inference_mode`` inside ``fn`` included). The
    MFLOPs are for the whole call, i.e. for the batch ``fn`` is given.
    """
    with MacCounter() as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops() / 2 / 1e6, out


def module_mflops(module, *inputs) -> float:
    """MFLOPs of one call ``module(*inputs)`` in eval mode (the module's own mode is untouched)."""
    with _eval(module) as m:
        return count_mflops(m, *inputs)[0]


def stage_flops(model, x: torch.Tensor | None = None) -> np.ndarray:
    """MFLOPs of each stage of the staged form for one image (not cumulative), shape (K,).

    Counted in eval mode on a random image (or the first of ``x``); the model's own mode is untouched.
    """
    with _eval(model) as m:
        x = _dummy(m) if x is None else x[:1]
        mf, state = count_mflops(m.init_state, x)
        per = []
        for k in range(m.num_exits):
            f, (state, _) = count_mflops(m.forward_stage, k, state)
            per.append(f + (mf if k == 0 else 0.0))
    return np.asarray(per, dtype=np.float64)


def staged_flops(model, x: torch.Tensor | None = None) -> np.ndarray:
    """Cumulative MFLOPs per exit for one image on the staged (early-exit) path, shape (K,)."""
    return np.cumsum(stage_flops(model, x))


def forward_flops(model, x: torch.Tensor | None = None) -> float:
    """MFLOPs of one full ``forward`` for one image (all exits)."""
    with _eval(model) as m:
        x = _dummy(m) if x is None else x[:1]
        mf, _ = count_mflops(m, x)
    return mf
