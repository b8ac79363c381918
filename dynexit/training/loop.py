"""Training of multi-exit models: a Python API and the loop behind ``dynexit train``.

Recipe (defaults in :class:`TrainConfig`):
- loss: sum over exits of w_k * CE(label smoothing) with the model's per-exit weights (Dyn-Perceiver:
  latent exits 0.5, CNN and fusion 1.0), plus self-distillation from the detached final exit into
  every earlier exit, ``alpha * T^2 * KL(softmax(final / T) || softmax(exit_k / T))``;
- AdamW, linear warm-up then cosine decay (per step), optional gradient clipping;
- light augmentation (random crop with 2-pixel padding, horizontal flip);
- EMA of the weights (timm ``ModelEmaV3`` with warm-up); the EMA copy is what gets validated and saved;
- validation every epoch (per-exit accuracy), checkpoint every epoch (safetensors + JSON sidecar) and
  a resume state (model, EMA, optimizer, step, RNG; also safetensors + JSON, never pickle);
- seeded; ``device="auto"`` picks CUDA, then MPS, then CPU;
- DDP under ``torchrun`` (NCCL on CUDA, gloo on CPU): each process takes a shard of every epoch,
  gradients are averaged, rank 0 writes the files.

>>> from dynexit.training.loop import TrainConfig, train
>>> result = train(TrainConfig(model="dynperceiver_fmnist", epochs=10, out_dir="runs/dp"))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dynexit.data import get_dataset
from dynexit.io.sidecar import training_data_record
from dynexit.training.distributed import ShardSampler
from dynexit.training.losses import multi_exit_loss
from dynexit.training.optim import WarmupCosineLR, build_optimizer, train_steps, weight_decay_groups
from dynexit.training.resume import check_resume_data, load_resume, save_resume


@dataclass
class TrainConfig:
    """The settings of one training run (``dynexit train`` flags of the same names); see the module
    docstring for the recipe. ``epochs`` may be fractional; ``max_steps`` stops early without
    shortening the LR schedule; ValueError for non-positive ``epochs``."""

    model: str = "dynperceiver_fmnist"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "fashion-mnist"
    data_root: str | None = None
    out_dir: str = "runs/train"
    epochs: float = 10
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    loss_weights: list | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    ema_decay: float = 0.9998
    augment: bool = True
    clip_grad: float | None = 5.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    max_steps: int | None = None
    resume: bool = False
    force: bool = False  # replace the checkpoint of an earlier run in out_dir (else refused, unless resume)
    progress: bool = True
    checkpoint_every_epoch: bool = True

    def __post_init__(self):
        # epochs may be fractional (0.5: half an epoch of steps); zero or less would still train one
        # step (the schedule's minimum), so it is refused rather than quietly turned into one step
        e = self.epochs
        if isinstance(e, bool) or not isinstance(e, (int, float, np.integer, np.floating)) or not math.isfinite(e) \
                or e <= 0:
            raise ValueError(f"epochs must be a positive number (an int, or a float for part of an epoch), got {e!r}")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (recorded in checkpoints and the resume state)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- pieces

def pick_device(device: str = "auto") -> torch.device:
    """The torch device for ``device`` (auto: CUDA of ``$LOCAL_RANK``, then MPS, then CPU; a bare
    ``cuda`` is also the GPU of ``$LOCAL_RANK``, so every torchrun process gets its own); ValueError
    for an unknown name or CUDA requested where there is none."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device auto or cpu")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def build_datasets(cfg: TrainConfig, image_size: tuple[int, int] | None = None, spec=None):
    """``(train, val)`` torch Datasets of ``(float32 image (C, H, W) in [0, 1], int label)``.

    The dataset comes from :func:`dynexit.data.get_dataset` (``cfg.data``: a registry name,
    ``torchvision:NAME`` or ``imagefolder:PATH``, files at ``cfg.data_root``; or ``spec``, its
    DatasetSpec, already made); an ImageFolder tree is resized to ``image_size`` (the model's input);
    ``cfg.train_subset`` / ``cfg.val_subset`` keep the first images. ValueError for an unknown
    dataset or a data root without its files.
    """
    spec = spec or get_dataset(cfg.data, cfg.data_root)
    train = spec.torch_dataset("train", cfg.augment, image_size=image_size)
    val = spec.torch_dataset("val", image_size=image_size)
    if cfg.train_subset:
        train = torch.utils.data.Subset(train, range(min(cfg.train_subset, len(train))))
    if cfg.val_subset:
        val = torch.utils.data.Subset(val, range(min(cfg.val_subset, len(val))))
    return train, val


@torch.no_grad()
def evaluate(model, loader, device, distributed: bool = False) -> np.ndarray:
    """Per-exit accuracy (K,) over a loader; when ``distributed``, correct counts and totals are summed
    over the DDP ranks, so with disjoint shards (:class:`~dynexit.training.distributed.ShardSampler`)
    every sample counts exactly once."""
    was = model.training
    model.eval()
    counts = torch.zeros(model.num_exits + 1, dtype=torch.float64)  # correct per exit, then the total
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        outs = model(x)
        counts[:-1] += torch.stack([(o.argmax(1) == y).sum() for o in outs]).double().cpu()
        counts[-1] += len(y)
    model.train(was)
    if distributed:
        import torch.distributed as dist
        on = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")  # NCCL reduces GPU tensors
        counts = counts.to(on)
        dist.all_reduce(counts)
        counts = counts.cpu()
    return (counts[:-1] / counts[-1].clamp(min=1)).numpy()


# ----------------------------------------------------------------------------- the loop

def _setup_distributed(device: torch.device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True, dist.get_rank(), dist.get_world_size()


@dataclass
class _Run:
    """What one training run holds while it goes: the model (and its DDP wrapper), data, optimiser."""

    cfg: TrainConfig
    device: torch.device
    distributed: bool
    rank: int
    world: int
    model: nn.Module
    net: nn.Module  # what the steps run: the model, or its DistributedDataParallel wrapper
    loss_weights: list
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    sampler: object  # the DistributedSampler of the training set, or None
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineLR
    ema: object  # timm ModelEmaV3, or None
    schedule_steps: int  # the LR schedule's length
    total_steps: int  # where to stop (max_steps may stop early)
    training_data: dict  # dataset, class names, split rule (dynexit.io.sidecar.training_data_record)

    @property
    def main(self) -> bool:
        """Rank 0, which prints and writes the files."""
        return self.rank == 0

    def eval_model(self) -> nn.Module:
        """What is validated and saved: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _loaders(cfg: TrainConfig, distributed: bool, rank: int, world: int, spec, image_size=None):
    """``(train_loader, val_loader, train sampler or None, the train loader's generator)``."""
    train_ds, val_ds = build_datasets(cfg, image_size, spec)
    sampler = val_sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        val_sampler = ShardSampler(len(val_ds), rank, world)  # no padding: every val image counted once
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None,
                                               sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                                               generator=gen, persistent_workers=cfg.num_workers > 0)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=512, sampler=val_sampler, num_workers=cfg.num_workers)
    if len(train_loader) == 0:
        raise ValueError(f"training set of {len(train_ds)} samples is smaller than one batch of {cfg.batch_size}")
    return train_loader, val_loader, sampler, gen


def _start(cfg: TrainConfig) -> _Run:
    """Seed, build the model, data, optimiser, schedule and EMA of a run (nothing trained yet)."""
    from dynexit.models import create_model

    device = pick_device(cfg.device)
    distributed, rank, world = _setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, **cfg.model_kwargs).to(device)
    torch.manual_seed(cfg.seed + rank)
    weights = cfg.loss_weights or model.loss_weights()
    if len(weights) != model.num_exits:
        raise ValueError(f"--loss-weights needs {model.num_exits} values for {cfg.model}, got {len(weights)}")
    spec = get_dataset(cfg.data, cfg.data_root)
    spec.check_model(model, "training")
    train_loader, val_loader, sampler, gen = _loaders(cfg, distributed, rank, world, spec, tuple(model.input_size))
    steps_per_epoch = len(train_loader)
    schedule_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    optimizer, scheduler = build_optimizer(weight_decay_groups(model, cfg.weight_decay), cfg.lr, schedule_steps,
                                           int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)
    ema = None
    if cfg.ema_decay and cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, device=device)
    return _Run(cfg, device, distributed, rank, world, model, model, weights, train_loader, val_loader, sampler, gen,
                optimizer, scheduler, ema, schedule_steps,
                min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps,
                training_data_record(spec.name, spec.class_names, spec.split_rule))


def _resume(run: _Run, resume_path: Path) -> tuple[int, int, list]:
    """``(step, epoch, history)`` to start from: the saved state with ``cfg.resume``, else zeros."""
    if not run.cfg.resume:
        return 0, 0, []
    if not resume_path.exists():
        raise ValueError(f"--resume: no resume state at {resume_path}; train without --resume first")
    check_resume_data(resume_path, run.training_data)
    meta = load_resume(resume_path, run.model, run.ema, run.optimizer)
    run.scheduler.jump_to(meta["step"])
    if run.main:
        print(f"resumed from {resume_path} at epoch {meta['epoch']}, step {meta['step']}", file=sys.stderr)
    return meta["step"], meta["epoch"], meta["history"]


def _train_epoch(run: _Run, epoch: int, n_epochs: int, step: int) -> tuple[int, dict]:
    """One epoch of optimiser steps (stopping at ``run.total_steps``): ``(step, running statistics)``."""
    from tqdm.auto import tqdm

    cfg, model = run.cfg, run.model
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    run.generator.manual_seed(cfg.seed * 1000 + epoch)
    run.net.train()
    stats = {"loss": 0.0, "correct": np.zeros(model.num_exits), "n": 0, "lr": None}
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{n_epochs}", disable=not (run.main and cfg.progress),
               leave=True, dynamic_ncols=True, file=sys.stderr)

    def loss_fn(x, y):
        stats["lr"] = run.optimizer.param_groups[0]["lr"]
        outs = run.net(x)
        loss, _ = multi_exit_loss(outs, y, run.loss_weights, cfg.label_smoothing, cfg.distill_alpha,
                                  cfg.distill_temperature)
        stats["loss"] += loss.item() * len(y)
        stats["correct"] += np.array([float((o.argmax(1) == y).sum()) for o in outs])
        stats["n"] += len(y)
        bar.set_postfix(loss=f"{stats['loss'] / stats['n']:.3f}", lr=f"{stats['lr']:.1e}",
                        acc="/".join(f"{a:.2f}" for a in stats["correct"] / stats["n"]))
        return loss

    ema_update = None if run.ema is None else (lambda s: run.ema.update(model, step=s))
    step = train_steps(bar, loss_fn, run.optimizer, run.scheduler, step=step, stop_at=run.total_steps,
                       device=run.device, clip_grad=cfg.clip_grad, clip_params=list(model.parameters()),
                       after_step=ema_update)
    bar.close()
    return step, stats


def _save(run: _Run, out_dir: Path, val_acc: np.ndarray, step: int, epoch: int, history: list) -> Path:
    """Checkpoint (the EMA weights) and resume state after ``epoch`` (0-based); the checkpoint path."""
    from dynexit.io.checkpoint import save_checkpoint

    recipe = {k: v for k, v in run.cfg.to_dict().items() if k not in ("progress", "resume", "force", "out_dir")}
    recipe.update(world_size=run.world, steps=step, epochs_done=epoch + 1)
    path = save_checkpoint(run.model, out_dir / "checkpoint.safetensors", val_accuracy=val_acc, recipe=recipe,
                           state_dict=run.eval_model().state_dict(),
                           extra={"history": history, "training_data": run.training_data})
    save_resume(out_dir / "resume.safetensors", run.model, run.ema, run.optimizer, step, epoch + 1, history,
                run.cfg.to_dict(), training_data=run.training_data)
    return path


def _check_out_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """ValueError when ``out_dir`` holds an earlier run's checkpoint or resume state and the config
    neither resumes it nor (``force``) replaces it: a new run would silently overwrite it."""
    if cfg.resume or cfg.force:
        return
    found = [out_dir / f for f in ("checkpoint.safetensors", "resume.safetensors") if (out_dir / f).exists()]
    if found:
        raise ValueError(f"{found[0]}: an earlier run's files are in {out_dir}; continue that run with --resume, "
                         "train into another --out, or replace them with --force")


def train(cfg: TrainConfig | None = None, **overrides) -> dict:
    """Train a model with the recipe of the module docstring (``overrides`` replace ``cfg`` fields).

    Returns ``{"history", "val_accuracy" (per exit, last epoch), "checkpoint" (path), "steps",
    "seconds_per_epoch", "exit_names", "rank", "world_size", "param_checksum"}``, also written to
    ``out_dir/train_result.json``. ValueError for a bad config (unknown model or dataset, wrong
    number of loss weights, a training set smaller than a batch, ``resume`` without a state or with
    one trained on other classes, an ``out_dir`` holding an earlier run without ``resume`` or ``force``);
    FloatingPointError when the loss diverges.
    """
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    out_dir = Path(cfg.out_dir)
    _check_out_dir(cfg, out_dir)
    run = _start(cfg)
    step, start_epoch, history = _resume(run, out_dir / "resume.safetensors")
    if run.distributed:  # after resuming: DDP starts every rank from rank 0's weights
        from torch.nn.parallel import DistributedDataParallel
        run.net = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    n_epochs = math.ceil(run.schedule_steps / len(run.train_loader))
    ckpt_path, val_acc, epoch_times = None, None, []
    for epoch in range(start_epoch, n_epochs):
        if step >= run.total_steps:
            break
        t0 = time.time()
        step, stats = _train_epoch(run, epoch, n_epochs, step)
        epoch_times.append(time.time() - t0)
        val_acc = evaluate(run.eval_model(), run.val_loader, run.device, run.distributed)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": stats["loss"] / max(stats["n"], 1),
                        "train_accuracy": (stats["correct"] / max(stats["n"], 1)).tolist(),
                        "val_accuracy": val_acc.tolist(), "seconds": epoch_times[-1], "lr": stats["lr"]})
        if run.main:
            print(f"epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f}  val acc per exit "
                  + " ".join(f"{n}={a:.4f}" for n, a in zip(run.model.exit_names, val_acc))
                  + f"  ({epoch_times[-1]:.0f}s)", file=sys.stderr, flush=True)
            if cfg.checkpoint_every_epoch or step >= run.total_steps or epoch == n_epochs - 1:
                ckpt_path = _save(run, out_dir, val_acc, step, epoch, history)
        if run.distributed:
            import torch.distributed as dist
            dist.barrier()
    return _finish(run, out_dir, history, val_acc, ckpt_path, step, epoch_times)


def _finish(run: _Run, out_dir: Path, history, val_acc, ckpt_path, step: int, epoch_times: list) -> dict:
    """The result dict, written to ``train_result.json`` (``train_result_rankN.json`` off rank 0)."""
    result = {"history": history, "val_accuracy": None if val_acc is None else val_acc.tolist(),
              "checkpoint": str(ckpt_path) if ckpt_path else None, "steps": step,
              "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else None,
              "exit_names": list(run.model.exit_names), "rank": run.rank, "world_size": run.world,
              "param_checksum": float(sum(p.detach().double().sum() for p in run.model.parameters()))}
    if run.main:
        (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    elif run.distributed:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"train_result_rank{run.rank}.json").write_text(json.dumps(result, indent=2))
    if run.distributed:
        import torch.distributed as dist
        dist.destroy_process_group()
    return result


def config_from_args(args) -> TrainConfig:
    """A TrainConfig from parsed ``dynexit train`` arguments."""
    kw = {}
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f.name) and getattr(args, f.name) is not None:
            kw[f.name] = getattr(args, f.name)
    return TrainConfig(**kw)
