"""The multi-exit training loss: weighted cross-entropy over the exits plus self-distillation.

Deep supervision of every exit (Lee et al., "Deeply-Supervised Nets", AISTATS 2015; Huang et al.,
"Multi-Scale Dense Networks", ICLR 2018) and distillation from the last exit into the earlier ones
(Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; Phuong and Lampert,
"Distillation-Based Training for Multi-Exit Architectures", ICCV 2019), as in Dynamic Perceiver.
"""

from __future__ import annotations

import torch.nn.functional as F


def multi_exit_loss(outputs, labels, weights=None, label_smoothing: float = 0.0, distill_alpha: float = 0.0,
                    temperature: float = 1.0):
    """Weighted CE over the exits plus self-distillation from the detached last exit.

    ``outputs``: one (B, C) logits tensor per exit; ``labels``: (B,) int64; ``weights``: one per
    exit (default 1.0); the distillation term is ``distill_alpha * T^2 * KL(softmax(last / T) ||
    softmax(exit_k / T))`` for every earlier exit, ``T = temperature``. Returns ``(loss, per-exit
    CE as a list of floats)``. ValueError when ``weights`` has not one value per exit.
    """
    k = len(outputs)
    weights = [1.0] * k if weights is None else list(weights)
    if len(weights) != k:
        raise ValueError(f"loss weights need one value per exit ({k}), got {len(weights)}")
    ces = [F.cross_entropy(o, labels, label_smoothing=label_smoothing) for o in outputs]
    loss = sum(w * ce for w, ce in zip(weights, ces))
    if distill_alpha > 0 and k > 1:
        t = float(temperature)
        teacher = F.log_softmax(outputs[-1].detach() / t, dim=1)
        for o in outputs[:-1]:
            kd = F.kl_div(F.log_softmax(o / t, dim=1), teacher, reduction="batchmean", log_target=True)
            loss = loss + distill_alpha * kd * t * t
    return loss, [float(c.detach()) for c in ces]
