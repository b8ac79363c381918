"""Run by test_exits_ddp.py under torchrun: train_exits data-parallel, then validate on exact shards.

argv: OUT_DIR. Writes ``rank{r}.json`` (initial and trained validation accuracy, the trained
weights' checksum) and, on rank 0, ``trained.safetensors`` (the model's state dict).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dynexit.data import get_dataset
from dynexit.training.distributed import shard_loader
from dynexit.training.exits import train_exits
from dynexit.training.loop import evaluate
from _tiny_models import tiny

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
out = Path(sys.argv[1])
model = tiny("mevit", seed=rank)  # different on every rank: train_exits starts all from rank 0's
spec = get_dataset("fashion-mnist")
test = spec.torch_dataset("test")
train_ds, val_ds = torch.utils.data.Subset(test, range(96)), torch.utils.data.Subset(test, range(96, 197))  # 101: not a multiple of 3
sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(train_ds, batch_size=32 // world, sampler=sampler)
val_loader = shard_loader(val_ds, batch_size=16)
history = train_exits(model, loader, epochs=1, max_steps=2, lr=1e-2, progress=False, val_loader=val_loader)
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
result = {"trained": history["val_accuracy"], "checksum": checksum,
          "again": evaluate(model, val_loader, "cpu", distributed=True).tolist()}
(out / f"rank{rank}.json").write_text(json.dumps(result))
if rank == 0:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "trained.safetensors"))
dist.destroy_process_group()
