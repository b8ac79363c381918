"""Per-image explanations: where a model looks (attention) and which pixels drive an exit (captum).

Computing only; :mod:`dynexit.viz` draws. All functions take one image, float in [0, 1], as
(H, W), (C, H, W) or (1, C, H, W), and a model, and compute with eval-mode semantics (BatchNorm
running statistics, no dropout) without ever changing the model: see :func:`eval_view`. They are
safe to call from several threads on one shared model object.

- :func:`attention_views`: the attention a model records while classifying the image, grouped into
  views of (H', W') maps. Dynamic Perceiver: cross-attention per stage, **x2z** (which image
  regions the latent code reads) and **z2x** (which regions take information back from the
  latent). ViTs (Multi-Exit ViT, the DVT cascade): per exit, the class token's attention in the last
  block before that exit, and the attention rollout of every block on the way to it.
- :func:`attribution`: a captum attribution (Integrated Gradients or Saliency) of exit k's logit for
  a class, computed on the staged path up to exit k only.
- :func:`traced_early_exit`: real early exit of one image that also keeps each computed exit's
  probabilities and score, so the app can show the decision step by step.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch

from dynexit.inference import check_thresholds, staged_exit
from dynexit.layers.attention_capture import AttentionMap, attention_rollout
from dynexit.models._base import eval_view

ATTRIBUTION_METHODS = ("integrated_gradients", "saliency")


def as_batch(image, model) -> torch.Tensor:
    """One image as a float batch (1, C, H, W) for ``model``."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    while x.ndim < 4:
        x = x.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
    if x.shape[1] == 1 and model.in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


# ----------------------------------------------------------------------------- attention

@dataclass
class AttentionView:
    """A group of spatial maps drawn side by side, with a sentence saying what they show."""

    title: str
    description: str
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # label -> (h, w), non-negative


def capture(model, image) -> list[AttentionMap]:
    """Every attention map the model records on one image (execution order); [] when it has none.

    Recorded in eval mode, in the calling thread only: other threads using ``model`` meanwhile are
    neither recorded nor affected."""
    if not model.attention_layers():
        return []
    model = eval_view(model)
    with torch.no_grad(), model.capture_attention() as rec:
        model(as_batch(image, model))
    return list(rec.maps)


def _is_branch(m: AttentionMap, exit_names) -> bool:
    """Attention inside an exit branch (e.g. a ViT-EE exit), named ``{exit}_attn{i}``."""
    return any(m.name.startswith(f"{e}_attn") for e in exit_names)


def vit_path(maps: list[AttentionMap], k: int, exit_names) -> list[AttentionMap]:
    """The self-attention maps on the way to exit k, on exit k's own token grid.

    Backbone blocks of stages <= k, plus exit k's own branch; earlier exits' branches are not on
    the path. Blocks on another grid (earlier DVT cascade stages) are left out: rollout multiplies
    maps of one token grid.
    """
    path = [m for m in maps if m.grid_axis == "both" and m.stage <= k
            and (not _is_branch(m, exit_names) or m.stage == k)]
    if not path:
        return []
    last = path[-1]
    return [m for m in path if m.grid == last.grid and m.weights.shape == last.weights.shape]


def attention_views(model, image, maps: list[AttentionMap] | None = None) -> list[AttentionView]:
    """The attention views of one image (see the module docstring); [] for a model without attention."""
    maps = capture(model, image) if maps is None else maps
    views = []
    x2z = [m for m in maps if m.kind == "x2z" and m.grid is not None]
    z2x = [m for m in maps if m.kind == "z2x" and m.grid is not None]
    if x2z:
        views.append(AttentionView(
            "x2z: what the latent code reads",
            "Cross-attention from the latent tokens (queries) to the image features (keys), per CNN stage, "
            "averaged over latent tokens and heads: bright regions are where the classification branch "
            "takes its information from.",
            {f"stage {m.stage} ({m.grid[0]}x{m.grid[1]})": m.spatial()[0].numpy() for m in x2z}))
    if z2x:
        views.append(AttentionView(
            "z2x: where the latent code writes back",
            "Cross-attention from every feature-map pixel (queries) to the latent tokens: the largest weight "
            "a pixel gives to any latent token, per stage. Bright regions take the most information back "
            "from the latent code into the CNN.",
            {(f"stage {m.stage}" if m.name != "z2x_last" else "last") + f" ({m.grid[0]}x{m.grid[1]})":
             m.spatial(reduce="max")[0].numpy() for m in z2x}))
    vit = [m for m in maps if m.grid_axis == "both" and m.grid is not None]
    if vit:
        names = list(model.exit_names)
        cls, roll = {}, {}
        for k, name in enumerate(names):
            path = vit_path(vit, k, names)
            if not path:
                continue
            cls[name] = path[-1].spatial()[0].numpy()
            roll[name] = attention_rollout(path)[0].numpy()
        views.append(AttentionView(
            "class-token attention before each exit",
            "For each exit, how much the class token attends to every image patch in the last attention "
            "block before that exit (averaged over heads).", cls))
        views.append(AttentionView(
            "attention rollout to each exit",
            "Attention rollout (Abnar & Zuidema, 2020): the attention of every block on the way to the exit "
            "multiplied together, residual connections included; which patches the exit's decision draws on.",
            roll))
    return views


# ----------------------------------------------------------------------------- attribution

def forward_to_exit(model, k: int):
    """A function ``x -> logits of exit k`` that runs the stages up to k only."""
    k = model._check_exit(k)  # now, not at the first call
    return lambda x: model.forward_upto(x, k)[-1]


def attribution(model, image, k: int, target: int | None = None, method: str = "integrated_gradients",
                n_steps: int = 32) -> tuple[np.ndarray, int]:
    """Captum attribution of exit k's logit for ``target`` (default: exit k's prediction).

    Returns ``(map (H, W) signed, summed over channels, target class)``. Integrated Gradients
    integrates from a black image (the Fashion-MNIST background); Saliency is |d logit / d pixel|.
    Computed in eval mode (:func:`eval_view`): a model left in train mode gives the same map as in
    eval mode and its BatchNorm statistics are not updated. Gradients are taken with respect to the
    image only; no parameter's ``.grad`` is written.
    """
    from captum.attr import IntegratedGradients, Saliency

    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(ATTRIBUTION_METHODS)}")
    model = eval_view(model)
    fn = forward_to_exit(model, k)
    x = as_batch(image, model)
    if target is None:
        with torch.no_grad():
            target = int(fn(x).argmax(dim=1)[0])
    x = x.clone().requires_grad_(True)
    if method == "integrated_gradients":
        attr = IntegratedGradients(fn).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                                                 internal_batch_size=n_steps)
    else:
        attr = Saliency(fn).attribute(x, target=target, abs=True)
    return attr.detach()[0].sum(dim=0).numpy(), target


# ----------------------------------------------------------------------------- real early exit, traced

@dataclass
class ExitTrace:
    """One image through real early exit: what each computed exit said and where it left."""

    probs: np.ndarray     # (k_run, C) probabilities of the exits computed
    scores: np.ndarray    # (k_run,) exit score (criterion on exits 1..k)
    thresholds: np.ndarray  # (K,)
    exit: int             # the exit it left at (0-based)
    computed: int         # how many exits were computed (exit + 1 unless run_all)

    @property
    def prediction(self) -> int:
        return int(self.probs[self.exit].argmax())


@torch.no_grad()
def traced_early_exit(model, image, thresholds, criterion="max_prob", run_all: bool = False,
                      row: int = 0) -> ExitTrace:
    """Run one image stage by stage and stop at the first exit whose score reaches its threshold.

    The staged loop of :func:`dynexit.inference.early_exit` (:func:`~dynexit.inference.staged_exit`),
    in eval mode (:func:`eval_view`), keeping every computed exit's probabilities and score (the
    last exit's too). ``image`` as :func:`as_batch`; ``thresholds`` (K,) or (K-1,); ``criterion`` a
    name or callable. ``run_all`` keeps computing the later exits after it left (to show what they
    would have said; they do not change the exit). ``row`` is the image's sample id for per-sample
    criteria (``random``, see :mod:`dynexit.criteria`): pass its table row to get the table path's
    exit. ValueError for bad thresholds, a negative or non-integer ``row``, or a batch of images.
    """
    t = check_thresholds(thresholds, model.num_exits)
    model = eval_view(model)
    probs, scores, taken = [], [], None
    for stage in staged_exit(model, as_batch(image, model), t, criterion, sample_ids=[operator.index(row)],
                             run_all=run_all, score_last=True):
        probs.append(stage.probs[0])
        scores.append(float(stage.scores[0]))
        if taken is None and stage.leave[0]:
            taken = stage.k
    return ExitTrace(np.stack(probs), np.asarray(scores), t, taken, len(probs))
