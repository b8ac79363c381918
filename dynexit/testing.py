"""Real ExitTables in seconds: a small multi-exit MLP trained on scikit-learn digits or Fashion-MNIST.

Used by the tests, the solver benchmark and ``dynexit demo``, where no trained zoo is needed. The
network is a stack of densely connected ReLU blocks with a linear exit after each, trained end to end on the sum of
the exits' cross-entropies (BranchyNet style: Teerapittayanon et al., ICPR 2016). Costs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 1 FLOP).
"""

from __future__ import annotations

import numpy as np

from dynexit.table import ExitTable


def _build(in_features: int, widths, num_classes: int):
    import torch.nn as nn

    blocks, heads, prev = nn.ModuleList(), nn.ModuleList(), 0
    for width in widths:
        blocks.append(nn.Sequential(nn.Linear(in_features + prev, width), nn.ReLU()))
        heads.append(nn.Linear(width, num_classes))
        prev = width
    return blocks, heads


class ToyMultiExitMLP:
    """Dense blocks (each sees the input and the previous block) and their exits; ``logits(x)`` -> (N, K, C) numpy, ``costs`` (K,) MFLOPs."""

    def __init__(self, in_features: int, widths=(8, 16, 32, 64), num_classes: int = 10):
        self.blocks, self.heads = _build(in_features, widths, num_classes)

    def parameters(self):
        return list(self.blocks.parameters()) + list(self.heads.parameters())

    def forward(self, x):
        import torch

        outs, h = [], x[:, :0]
        for block, head in zip(self.blocks, self.heads):
            h = block(torch.cat([x, h], dim=1))  # dense: every block sees the input (MSDNet style)
            outs.append(head(h))
        return outs

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            outs = self.forward(torch.as_tensor(x, dtype=torch.float32))
        return torch.stack(outs, dim=1).numpy()

    def costs(self) -> np.ndarray:
        """Cumulative MFLOPs per exit on the early-exit path (exit k pays blocks 1..k and heads 1..k)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, self.blocks[0][0].in_features)
        h, total, out = x[:, :0], 0.0, []
        with torch.no_grad():
            for block, head in zip(self.blocks, self.heads):
                with FlopCounterMode(display=False) as counter:
                    h = block(torch.cat([x, h], dim=1))
                    head(h)
                total += counter.get_total_flops() / 2 / 1e6
                out.append(total)
        return np.array(out)


def train_toy(x_train, y_train, widths=(8, 16, 32, 64), epochs: int = 30, batch_size: int = 128,
              lr: float = 3e-3, noise: float = 0.0, seed: int = 0) -> ToyMultiExitMLP:
    """Train the toy network end to end (Adam, sum of exit losses); ``noise`` adds input noise."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train = np.asarray(x_train, dtype=np.float32).reshape(len(x_train), -1)
    net = ToyMultiExitMLP(x_train.shape[1], widths, int(np.max(y_train)) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(xt)), max(1, len(xt) // batch_size)):
            xb = xt[batch]
            if noise:
                xb = xb + noise * torch.randn_like(xb)
            loss = sum(F.cross_entropy(out, yt[batch]) for out in net.forward(xb))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def digits_tables(seed: int = 0, widths=(4, 8, 16, 48), epochs: int = 40) -> tuple[ExitTable, ExitTable]:
    """(val, test) ExitTables of the toy network on scikit-learn digits (about a second on 2 cores)."""
    from dynexit.data import load_digits_split

    x_tr, y_tr = load_digits_split("train", seed)
    net = train_toy(x_tr, y_tr, widths=widths, epochs=epochs, seed=seed, noise=0.2)
    return tuple(_table(net, *load_digits_split(split, seed), "digits", split, seed) for split in ("val", "test"))


def fashion_mnist_tables(seed: int = 0, widths=(4, 16, 64, 256), epochs: int = 5) -> tuple[ExitTable, ExitTable]:
    """(val 5,000, test 10,000) ExitTables of the toy network on Fashion-MNIST (tens of seconds)."""
    from dynexit.data import load_fashion_mnist, split_indices

    x_tr, y_tr = load_fashion_mnist("train")
    net = train_toy(x_tr / 255.0, y_tr, widths=widths, epochs=epochs, seed=seed)
    out = []
    for split in ("val", "test"):
        x, y = load_fashion_mnist(split)
        out.append(_table(net, x / 255.0, y, "fashion-mnist", split, seed, split_indices(split)))
    return tuple(out)


def _table(net, x, y, dataset, split, seed, index=None) -> ExitTable:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    meta = {"model": f"toy_mlp_{dataset}", "dataset": dataset, "split": split, "seed": seed,
            "cost_counting": "FlopCounterMode, multiply-add = 1 FLOP, MFLOPs per image"}
    return ExitTable(net.logits(x), y, net.costs(), index=index, meta=meta)
