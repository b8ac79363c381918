"""Light training augmentation shared by the datasets: random crop with padding, horizontal flip."""

from __future__ import annotations


class AugmentedImages:
    """A torch Dataset of ``(float32 image (C, H, W) in [0, 1], label)`` augmented per item.

    ``images``: a (N, C, H, W) tensor, uint8 (kept compact in memory, scaled to [0, 1] per item) or
    float in [0, 1]; ``labels``: (N,). Each item is randomly cropped back to its size after
    ``padding`` zero pixels on each side, then flipped horizontally with probability 1/2
    (the usual CIFAR recipe: He et al., "Deep Residual Learning for Image Recognition", 2016, sec. 4.2).
    """

    def __init__(self, images, labels, padding: int = 2):
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import torch
        from torchvision.transforms import v2

        if not hasattr(self, "_transform"):
            self._transform = v2.Compose([
                v2.RandomCrop(self.images.shape[-1], padding=self.padding),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
            ])
        return self._transform(self.images[i]), self.labels[i]


class AugmentedDataset:
    """Any torch Dataset of ``(float image (C, H, W) in [0, 1], label)`` with the same per-item
    augmentation as :class:`AugmentedImages` (random crop after ``padding`` zero pixels, horizontal
    flip with probability 1/2), for datasets read file by file."""

    def __init__(self, base, padding: int = 2):
        self.base, self.padding = base, padding

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        from torchvision.transforms import v2

        if not hasattr(self, "_transform"):
            self._transform = None
        x, y = self.base[i]
        if self._transform is None:
            self._transform = v2.Compose([v2.RandomCrop(tuple(x.shape[-2:]), padding=self.padding),
                                          v2.RandomHorizontalFlip()])
        return self._transform(x), y
