"""Which exits are worth having: practical exits, the branch study and branch selection.

From Bakhtiarnia, Zhang and Iosifidis, "Multi-Exit Vision Transformer for Dynamic Inference"
(arXiv:2106.15183, 2021). An exit is *practical* when it is more accurate than every cheaper exit:
an exit that costs more and is no more accurate than one before it is never worth waiting for.

The branch study (the paper's per-block comparison of branch types, Fig. 5 style) attaches every
(block, type) candidate to one frozen, trained backbone, trains them all classifier-wise at once
(the candidates share no parameter, so this equals training each alone) and measures each one's
validation accuracy and its cost *as if it were the only early exit* (backbone up to its block plus
its own branch). :func:`select_branches` then turns the table into an ``exits=`` list.

>>> rows = branch_study("runs/mevit/checkpoint.safetensors", train_loader, val_loader, epochs=3)
>>> select_branches(rows, max_branches=4)["exits"]      # e.g. [[1, 'vit'], [2, 'cnn_add'], ...]
"""

from __future__ import annotations

import os

import numpy as np

from dynexit.metrics import practical_exits


def select_branches(rows, max_branches: int | None = None) -> dict:
    """Pick exit branches from a branch-study table.

    ``rows``: dicts with ``block``, ``type``, ``accuracy`` and ``mflops`` (as :func:`branch_study`
    returns; rows of type ``"head"``, the backbone's own exit, are left out of the choice).

    1. per block, the most accurate type (ties: the cheaper one);
    2. of those, the practical ones (:func:`dynexit.metrics.practical_exits`);
    3. with ``max_branches``, repeatedly drop the one that adds the least accuracy over the
       previous kept one (the cheapest is measured against zero), until ``max_branches`` remain.

    Returns ``{"exits": [[block, type], ...] sorted by block, "rows": copies of the rows with bool
    columns best_of_block, practical and selected}``.
    """
    if max_branches is not None and max_branches < 1:
        raise ValueError(f"max_branches must be >= 1 (or None for no limit), got {max_branches}")
    table = [dict(r) for r in rows]
    for r in table:
        missing = [k for k in ("block", "type", "accuracy", "mflops") if k not in r]
        if missing:
            raise ValueError(f"branch-study row {r} lacks {', '.join(missing)}")
        r.update(best_of_block=False, practical=False, selected=False)
    candidates = [r for r in table if r["type"] != "head"]
    best: dict[int, dict] = {}
    for r in candidates:
        b = best.get(r["block"])
        if b is None or (r["accuracy"], -r["mflops"]) > (b["accuracy"], -b["mflops"]):
            best[r["block"]] = r
    chosen = sorted(best.values(), key=lambda r: r["mflops"])
    for r in chosen:
        r["best_of_block"] = True
    mask = practical_exits([r["accuracy"] for r in chosen], [r["mflops"] for r in chosen])
    kept = [r for r, m in zip(chosen, mask) if m]
    for r in kept:
        r["practical"] = True
    while max_branches is not None and len(kept) > max_branches:
        gains = [r["accuracy"] - (kept[i - 1]["accuracy"] if i else 0.0) for i, r in enumerate(kept)]
        kept.pop(int(np.argmin(gains)))
    for r in kept:
        r["selected"] = True
    exits = [[int(r["block"]), str(r["type"])] for r in sorted(kept, key=lambda r: r["block"])]
    return {"exits": exits, "rows": table}


def branch_study(model_name_or_backbone, loader, val_loader, blocks=None, types=None, epochs: int = 1, *,
                 lr: float = 1e-3, weight_decay: float = 0.0, device="cpu", max_steps: int | None = None,
                 progress: bool = True, untrained: bool = False) -> list[dict]:
    """Train every (block, type) candidate branch on a frozen backbone; one row per candidate.

    ``model_name_or_backbone``: a trained Multi-Exit ViT, or a name for
    :func:`dynexit.zoo.resolve_model` (a zoo name, a checkpoint path, or with ``untrained=True`` a
    registry name: an untrained backbone, only for smoke tests). Its own branches are ignored; its backbone
    (``model.vit``) is copied and frozen. ``blocks`` (0-based) default to every block, ``types``
    to every type in ``BRANCH_TYPES``.

    Rows: ``{"block", "type", "exit", "accuracy" (validation), "mflops" (backbone to the block +
    the branch alone)}``, candidates ordered by block then type, then one row of type ``"head"``
    for the backbone's own exit (for reference lines in plots).
    """
    from dynexit.training.exits import train_exits
    from dynexit.layers.vit_exit_branches import BRANCH_TYPES
    from dynexit.models.multiexit_vit import MultiExitViT

    backbone = model_name_or_backbone
    if isinstance(backbone, (str, os.PathLike)):
        from dynexit.zoo import resolve_model

        backbone = resolve_model(backbone, untrained=untrained)
    if not isinstance(backbone, MultiExitViT):
        raise ValueError(f"branch_study needs a Multi-Exit ViT (a mevit_* model or checkpoint), "
                         f"got {type(backbone).__name__}")
    if val_loader is None:
        raise ValueError("branch_study needs a val_loader: candidates are compared by validation accuracy")
    depth = len(backbone.vit.blocks)
    blocks = list(range(depth)) if blocks is None else [int(b) for b in blocks]
    types = list(BRANCH_TYPES) if types is None else list(types)
    if not blocks or not types:
        raise ValueError("branch_study needs at least one block and one branch type")
    study = backbone.with_exits([[b, t] for b in sorted(set(blocks)) for t in types])
    history = train_exits(study, loader, strategy="classifier-wise", epochs=epochs, lr=lr, weight_decay=weight_decay,
                          device=device, max_steps=max_steps, progress=progress, val_loader=val_loader)
    accuracy, costs = history["val_accuracy"], study.solo_exit_costs()
    rows = [{"block": b, "type": t, "exit": name, "accuracy": float(accuracy[k]), "mflops": float(costs[k])}
            for k, ((b, t, _), name) in enumerate(zip(study.exits, study.exit_names))]
    rows.append({"block": depth - 1, "type": "head", "exit": "head", "accuracy": float(accuracy[-1]),
                 "mflops": float(costs[-1])})
    return rows
