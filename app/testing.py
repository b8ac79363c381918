"""A tiny zoo for the app's tests and demos: small untrained models under the real zoo names.

The files have the shapes and names of the shipped zoo (``NAME.safetensors`` + ``.json``,
``NAME.val.npz``, ``NAME.test.npz``), so the app runs on it unchanged with ``DYNEXIT_ZOO=DIR``.

The weights are untrained; running them over images to build tables would take most of a test
budget on a busy CPU and give chance-level tables, so the tables hold *synthetic* logits instead
(later exits are right more often, as in a trained model) with the real labels of the embedded
Fashion-MNIST test images and the models' real per-exit costs. "val" rows are test images
0..n_val-1, "test" rows the next n_test; each table's ``index`` points at its images in the test
split, where the app looks them up. The meta says all this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# zoo name -> (registry name, kwargs): small and fast on CPU
TINY_ZOO = {
    "dynperceiver_fmnist": ("dynperceiver_tiny", {}),
    "static_cnn_fmnist": ("static_cnn", {"backbone": "resnet10_quarter"}),
    "mevit_fmnist": ("mevit_tiny", {}),
}


def build_tiny_zoo(dest, models=("dynperceiver_fmnist", "static_cnn_fmnist"), n_val: int = 300,
                   n_test: int = 500, seed: int = 0) -> Path:
    """Write a tiny zoo of untrained models to ``dest`` (once: a marker file says it is complete)."""
    from dynexit.data import load_fashion_mnist

    dest = Path(dest)
    done = dest / ".complete"
    if done.exists() and done.read_text() == repr((models, n_val, n_test, seed)):
        return dest  # built already by this process's other test module
    dest.mkdir(parents=True, exist_ok=True)
    _, labels = load_fashion_mnist("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, above all on a busy CPU
    try:
        _build(dest, models, labels, n_val, n_test, seed)
    finally:
        torch.set_num_threads(threads)
    done.write_text(repr((models, n_val, n_test, seed)))
    return dest


def _build(dest, models, labels, n_val, n_test, seed):
    from dynexit.checkpoint import save_checkpoint
    from dynexit.models import create_model
    from dynexit.table import ExitTable

    for i, name in enumerate(models):
        arch, kwargs = TINY_ZOO[name]
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs).eval()
        save_checkpoint(model, dest / f"{name}.safetensors", recipe={"model": arch, "note": "untrained, for tests"})
        meta = {"model": arch, "dataset": "fashion-mnist", "weights": "untrained (random init)",
                "logits": "synthetic (app.testing.build_tiny_zoo), not computed by the model"}
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
