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
import torch.nn.functional as F
from torch import nn

from dynexit.data import train_val_datasets


@dataclass
class TrainConfig:
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
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- pieces

def pick_device(device: str = "auto") -> torch.device:
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
    return dev


def multi_exit_loss(outputs, labels, weights=None, label_smoothing: float = 0.0, distill_alpha: float = 0.0,
                    temperature: float = 1.0):
    """Weighted CE over the exits plus self-distillation from the detached last exit.

    Returns ``(loss, per_exit_ce list of floats)``.
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


def lr_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to ``minimum``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_datasets(cfg: TrainConfig):
    """``(train, val)`` torch Datasets of ``(float32 image (C, H, W) in [0, 1], int label)``.

    The dataset comes from :func:`dynexit.data.train_val_datasets` (the registry, or a torchvision
    name with ``cfg.data_root``); ``cfg.train_subset`` / ``cfg.val_subset`` keep the first images.
    ValueError for an unknown dataset or a data root without its files.
    """
    train, val = train_val_datasets(cfg.data, cfg.data_root, augment=cfg.augment)
    if cfg.train_subset:
        train = torch.utils.data.Subset(train, range(min(cfg.train_subset, len(train))))
    if cfg.val_subset:
        val = torch.utils.data.Subset(val, range(min(cfg.val_subset, len(val))))
    return train, val


@torch.no_grad()
def evaluate(model, loader, device, distributed: bool = False) -> np.ndarray:
    """Per-exit accuracy over a loader (summed over DDP ranks when distributed)."""
    was = model.training
    model.eval()
    correct, total = None, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        outs = model(x)
        c = torch.stack([(o.argmax(1) == y).sum() for o in outs]).double().cpu()
        correct = c if correct is None else correct + c
        total += len(y)
    model.train(was)
    counts = torch.cat([correct, torch.tensor([float(total)], dtype=torch.float64)])
    if distributed:
        import torch.distributed as dist
        dist.all_reduce(counts)
    return (counts[:-1] / counts[-1].clamp(min=1)).numpy()


# ----------------------------------------------------------------------------- resume state

def _save_resume(path: Path, model, ema, optimizer, step: int, epoch: int, history: list, cfg: TrainConfig):
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.module.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"opt.{idx}.{key}"] = t.detach().cpu().contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "epoch": epoch, "history": history, "config": cfg.to_dict(),
            "param_groups": opt["param_groups"], "ema_updates": getattr(ema, "num_updates", None) if ema else None}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    path.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=1, default=float))
    os.replace(tmp, path)
    os.replace(path.with_suffix(".json.tmp"), path.with_suffix(".json"))


def _load_resume(path: Path, model, ema, optimizer):
    from dynexit.io.checkpoint import read_weights

    tensors = read_weights(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.with_suffix('.json')}: missing or corrupt resume state ({err})") from err
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if ema_sd:
            ema.module.load_state_dict(ema_sd)
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if ema is not None and meta.get("ema_updates") is not None and hasattr(ema, "num_updates"):
        ema.num_updates = meta["ema_updates"]
    return meta


# ----------------------------------------------------------------------------- the loop

def _setup_distributed(device: torch.device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True, dist.get_rank(), dist.get_world_size()


def train(cfg: TrainConfig | None = None, **overrides) -> dict:
    """Train a model; returns ``{"history", "val_accuracy", "checkpoint", "seconds_per_epoch"}``."""
    from tqdm.auto import tqdm

    from dynexit.io.checkpoint import save_checkpoint
    from dynexit.models import create_model

    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    device = pick_device(cfg.device)
    distributed, rank, world = _setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = rank == 0
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, **cfg.model_kwargs).to(device)
    torch.manual_seed(cfg.seed + rank)
    weights = cfg.loss_weights or model.loss_weights()
    if len(weights) != model.num_exits:
        raise ValueError(f"--loss-weights needs {model.num_exits} values for {cfg.model}, got {len(weights)}")
    train_ds, val_ds = build_datasets(cfg)

    sampler = val_sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None,
                                               sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                                               generator=gen, persistent_workers=cfg.num_workers > 0)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=512, sampler=val_sampler, num_workers=cfg.num_workers)
    if len(train_loader) == 0:
        raise ValueError(f"training set of {len(train_ds)} samples is smaller than one batch of {cfg.batch_size}")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("latent") or "key_pos" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ema = None
    if cfg.ema_decay and cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, device=device)

    steps_per_epoch = len(train_loader)
    schedule_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))  # the LR schedule's length
    total_steps = min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps  # where to stop
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    out_dir = Path(cfg.out_dir)
    resume_path = out_dir / "resume.safetensors"
    step, start_epoch, history = 0, 0, []
    if cfg.resume:
        if not resume_path.exists():
            raise ValueError(f"--resume: no resume state at {resume_path}; train without --resume first")
        meta = _load_resume(resume_path, model, ema, optimizer)
        step, start_epoch, history = meta["step"], meta["epoch"], meta["history"]
        if main:
            print(f"resumed from {resume_path} at epoch {start_epoch}, step {step}", file=sys.stderr)

    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    n_epochs = math.ceil(schedule_steps / steps_per_epoch)
    ckpt_path, val_acc, epoch_times = None, None, []
    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731
    epoch = start_epoch
    for epoch in range(start_epoch, n_epochs):
        if step >= total_steps:
            break
        if sampler is not None:
            sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1000 + epoch)
        net.train()
        t0 = time.time()
        run_loss, run_correct, run_n = 0.0, np.zeros(model.num_exits), 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{n_epochs}", disable=not (main and cfg.progress),
                   leave=True, dynamic_ncols=True, file=sys.stderr)
        for x, y in bar:
            if step >= total_steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(step, schedule_steps, warmup, cfg.lr, cfg.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            outs = net(x)
            loss, _ = multi_exit_loss(outs, y, weights, cfg.label_smoothing, cfg.distill_alpha, cfg.distill_temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}: lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            run_loss += loss.item() * len(y)
            run_correct += np.array([float((o.argmax(1) == y).sum()) for o in outs])
            run_n += len(y)
            bar.set_postfix(loss=f"{run_loss / run_n:.3f}", lr=f"{lr:.1e}",
                            acc="/".join(f"{a:.2f}" for a in run_correct / run_n))
        bar.close()
        epoch_times.append(time.time() - t0)
        val_acc = evaluate(eval_model(), val_loader, device, distributed)
        record = {"epoch": epoch + 1, "step": step, "train_loss": run_loss / max(run_n, 1),
                  "train_accuracy": (run_correct / max(run_n, 1)).tolist(), "val_accuracy": val_acc.tolist(),
                  "seconds": epoch_times[-1], "lr": lr}
        history.append(record)
        if main:
            print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val acc per exit "
                  + " ".join(f"{n}={a:.4f}" for n, a in zip(model.exit_names, val_acc))
                  + f"  ({epoch_times[-1]:.0f}s)", file=sys.stderr, flush=True)
            if cfg.checkpoint_every_epoch or step >= total_steps or epoch == n_epochs - 1:
                recipe = {k: v for k, v in cfg.to_dict().items() if k not in ("progress", "resume", "out_dir")}
                recipe.update(world_size=world, steps=step, epochs_done=epoch + 1)
                ckpt_path = save_checkpoint(model, out_dir / "checkpoint.safetensors", val_accuracy=val_acc,
                                            recipe=recipe, state_dict=eval_model().state_dict(),
                                            extra={"history": history})
                _save_resume(resume_path, model, ema, optimizer, step, epoch + 1, history, cfg)
        if distributed:
            import torch.distributed as dist
            dist.barrier()
    result = {"history": history, "val_accuracy": None if val_acc is None else val_acc.tolist(),
              "checkpoint": str(ckpt_path) if ckpt_path else None, "steps": step,
              "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else None,
              "exit_names": list(model.exit_names), "rank": rank, "world_size": world,
              "param_checksum": float(sum(p.detach().double().sum() for p in model.parameters()))}
    if main:
        (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    elif distributed:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"train_result_rank{rank}.json").write_text(json.dumps(result, indent=2))
    if distributed:
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
