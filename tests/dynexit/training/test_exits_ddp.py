"""train_exits under torchrun (gloo, CPU): ranks stay identical, and validation counts every sample once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynexit.data import get_dataset
from dynexit.training.distributed import ShardSampler
from dynexit.training.loop import evaluate
from _tiny_models import tiny

WORKER = Path(__file__).with_name("_exits_ddp_worker.py")


def _run(nproc: int, out: Path) -> list[dict]:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(WORKER), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_shard_sampler_has_no_padding():
    shards = [list(ShardSampler(101, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(101)) and [len(s) for s in shards] == [34, 34, 33]
    with pytest.raises(ValueError, match="outside a world"):
        ShardSampler(10, 3, 3)


def test_three_processes_validate_like_one(tmp_path):
    three = _run(3, tmp_path / "three")
    assert len({r["checksum"] for r in three}) == 1  # gradients averaged, weights broadcast: one model
    assert all(r["trained"] == three[0]["trained"] == r["again"] for r in three)
    # the trained model validated in one process, on all 101 images: the same accuracy, to the last bit
    from safetensors.torch import load_file

    model = tiny("mevit")
    model.load_state_dict(load_file(str(tmp_path / "three" / "trained.safetensors")))
    val = torch.utils.data.Subset(get_dataset("fashion-mnist").torch_dataset("test"), range(96, 197))
    alone = evaluate(model, torch.utils.data.DataLoader(val, batch_size=16), "cpu")
    np.testing.assert_array_equal(alone, three[0]["trained"])
