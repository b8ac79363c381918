"""Defaults the model families share: input statistics and the small Fashion-MNIST backbone.

One place, so the families never import each other for a constant. The Fashion-MNIST statistics
come from the dataset registry (:func:`dynexit.data.get_dataset`); grayscale inputs default to them,
colour inputs to ImageNet's (timm's ``IMAGENET_DEFAULT_MEAN`` / ``_STD``).
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dynexit.data import get_dataset

FMNIST_MEAN, FMNIST_STD = get_dataset("fashion-mnist").mean, get_dataset("fashion-mnist").std
# The backbone shared by the three Fashion-MNIST models: timm ResNet-18 at half width (32-64-128-256)
# with the 3-layer 3x3 stem (16-16-32), first conv of stride 2 and no max-pool: feature maps of
# 14, 14, 7, 4 and 2 pixels. Wider-but-smaller maps run faster on CPU than a stride-1 stem at
# quarter width for the same FLOPs, and keep measured early-exit speedups close to the FLOP ratios.
FMNIST_BACKBONE = dict(backbone="resnet18_half", small_input=True, stem_stride=2)


def default_normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel in [0, 1] units: Fashion-MNIST's for 1 channel, ImageNet's otherwise."""
    return (FMNIST_MEAN, FMNIST_STD) if in_chans == 1 else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
