"""Real ExitTables in seconds: a small multi-exit MLP trained on scikit-learn digits or Fashion-MNIST.

Used by the tests, the solver benchmark and ``dynexit demo``, where no trained zoo is needed; and
:func:`build_tiny_zoo`, untrained stand-ins under the zoo's names for the app and notebook tests. The
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
        """Every trainable parameter (blocks, then heads)."""
        return list(self.blocks.parameters()) + list(self.heads.parameters())

    def forward(self, x):
        import torch

        outs, h = [], x[:, :0]
        for block, head in zip(self.blocks, self.heads):
            h = block(torch.cat([x, h], dim=1))  # dense: every block sees the input (MSDNet style)
            outs.append(head(h))
        return outs

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Every exit's logits (N, K, C) for inputs ``x`` (N, in_features), without gradients."""
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


# ----------------------------------------------------------------------------- a tiny zoo

# zoo name -> (registry name, kwargs): small untrained stand-ins, fast on CPU
TINY_ZOO = {
    "dynperceiver_fmnist": ("dynperceiver_tiny", {}),
    "multiexit_cnn_fmnist": ("multiexit_cnn", {"backbone": "resnet10_quarter"}),
    "static_cnn_fmnist": ("static_cnn", {"backbone": "resnet10_quarter"}),
    "mevit_fmnist": ("mevit_tiny", {}),
    "dvt_fmnist": ("dvt_tiny", {}),
    "dvt_fmnist_noreuse": ("dvt_tiny", {"feature_reuse": False, "relationship_reuse": False}),
}


def build_tiny_zoo(dest, models=None, n_val: int = 300, n_test: int = 500, seed: int = 0):
    """Write a tiny zoo of untrained models under the real zoo names to ``dest``; returns its Path.

    The files have the shapes and names of the shipped zoo (``NAME.safetensors`` + ``.json``,
    ``NAME.val.npz``, ``NAME.test.npz``), so the app and the notebooks run on it unchanged with
    ``DYNEXIT_ZOO=DIR``; ``models`` defaults to every name of :data:`TINY_ZOO`.

    The weights are untrained; running them over images to build tables would take most of a test
    budget on a busy CPU and give chance-level tables, so the tables hold *synthetic* logits instead
    (:func:`synthetic_logits`: later exits are right more often, as in a trained model) with the real
    labels of the embedded Fashion-MNIST test images and the models' real per-exit costs. "val" rows
    are test images 0..n_val-1, "test" rows the next n_test; each table's ``index`` points at its
    images in the test split. The meta says all this. Built once: a marker file says it is complete.
    """
    from pathlib import Path

    import torch

    from dynexit.data import load_fashion_mnist

    models = tuple(TINY_ZOO) if models is None else tuple(models)
    unknown = [m for m in models if m not in TINY_ZOO]
    if unknown:
        raise ValueError(f"no tiny stand-in for {', '.join(unknown)}; the tiny zoo has: {', '.join(TINY_ZOO)}")
    dest = Path(dest)
    done = dest / ".complete"
    if done.exists() and done.read_text() == repr((models, n_val, n_test, seed)):
        return dest  # built already by this process's other test module
    dest.mkdir(parents=True, exist_ok=True)
    _, labels = load_fashion_mnist("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, above all on a busy CPU
    try:
        _build_tiny_zoo(dest, models, labels, n_val, n_test, seed)
    finally:
        torch.set_num_threads(threads)
    done.write_text(repr((models, n_val, n_test, seed)))
    return dest


def _build_tiny_zoo(dest, models, labels, n_val, n_test, seed):
    import torch

    from dynexit.io.checkpoint import save_checkpoint
    from dynexit.models import create_model

    for i, name in enumerate(models):
        arch, kwargs = TINY_ZOO[name]
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs).eval()
        save_checkpoint(model, dest / f"{name}.safetensors", recipe={"model": arch, "note": "untrained, for tests"})
        meta = {"model": arch, "dataset": "fashion-mnist", "weights": "untrained (random init)",
                "logits": "synthetic (dynexit.testing.build_tiny_zoo), not computed by the model"}
        for split, rows in (("val", np.arange(n_val)), ("test", np.arange(n_val, n_val + n_test))):
            logits = synthetic_logits(labels[rows], model.num_exits, seed=seed + 10 * i + (split == "test"))
            ExitTable(logits, labels[rows], model.exit_costs(), model.exit_names, rows,
                      {**meta, "split": split}).save(dest / f"{name}.{split}.npz", logits_dtype="float16")


def synthetic_logits(labels, num_exits: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Logits (N, K, C): each image has a difficulty; exit k is surer of the true class the deeper it is."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    logits = rng.normal(size=(n, num_exits, num_classes))
    ease = rng.random((n, 1))
    depth = np.linspace(0.4, 1.0, num_exits)[None, :] if num_exits > 1 else np.ones((1, 1))
    logits[np.arange(n), :, labels] += 5.0 * depth * ease
    return logits.astype(np.float32)


# ----------------------------------------------------------------------------- an ImageFolder tree

def write_image_tree(dest, counts: dict, source: str = "test", root=None):
    """Write real Fashion-MNIST images as a class-per-folder tree of PNGs; returns ``dest`` as a Path.

    ``counts``: split folder -> number of images, e.g. ``{"train": 200, "test": 100}`` (``""``: the
    class folders directly under ``dest``); the images are the first ones of the Fashion-MNIST
    ``source`` split (``root``: where its files are, as :func:`dynexit.data.load_fashion_mnist`),
    taken in order, each split after the previous one; a file is named by its position there. Class
    folders are ``0_T-shirt-top`` .. ``9_Ankle boot``, so their sorted order is Fashion-MNIST's labels.
    ValueError when the split has fewer images than asked for.
    """
    from pathlib import Path

    from PIL import Image

    from dynexit.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    x, y = load_fashion_mnist(source, root)
    if sum(counts.values()) > len(y):
        raise ValueError(f"the {source} split has {len(y)} images, asked for {sum(counts.values())}")
    dest, start = Path(dest), 0
    names = [f"{k}_{c.replace('/', '-')}" for k, c in enumerate(FASHION_MNIST_CLASSES)]
    for split, n in counts.items():
        for i in range(start, start + n):
            folder = dest / split / names[y[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i:05d}.png")
        start += n
    return dest
