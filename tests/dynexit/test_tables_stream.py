"""Tables at any scale: streamed through a DataLoader, resumed after an interruption, sharded under
torchrun (two gloo processes give the one-process table), equal to the in-memory path bit for bit."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dynexit import data, zoo
from dynexit.io.checkpoint import save_checkpoint
from dynexit.table import ExitTable
from dynexit.tables import build_table, load_split_images, model_logits
from dynexit.tables_stream import shard_rows
from dynexit.testing import write_image_tree
from _tiny_models import tiny


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("tree"), {"train": 60, "test": 150})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tiny("multiexit_cnn").eval(), tmp_path_factory.mktemp("ck") / "cnn.safetensors")


def test_shards_cover_every_batch_once():
    for n, b, w in ((10, 3, 2), (7, 7, 3), (100, 16, 4)):
        rows = sorted(i for r in range(w) for batch in shard_rows(n, b, r, w) for i in batch)
        assert rows == list(range(n))


def test_imagefolder_table_streams_like_the_in_memory_path(tree, ckpt):
    name = f"imagefolder:{tree}"
    t = build_table(str(ckpt), "test", dataset=name, batch_size=32, num_workers=1)
    x, y = data.get_dataset(name).load("test")
    m = zoo.resolve_model(str(ckpt))
    np.testing.assert_array_equal(t.logits, model_logits(m, torch.from_numpy(x), batch_size=32))
    np.testing.assert_array_equal(t.labels, y)
    assert t.meta["dataset"] == name and t.meta["class_names"][0] == "0_T-shirt-top" and "test/ folder" in t.meta["split_rule"]
    half = build_table(m, "test", dataset=name, batch_size=32, logits_dtype="float16")
    np.testing.assert_array_equal(half.logits, t.logits.astype(np.float16).astype(np.float32))


def test_zoo_model_streaming_equals_the_old_in_memory_path():
    """The shipped tables' path: the old one (all images as one tensor, sliced) and the streaming one agree bit for bit."""
    model = zoo.load_model("dvt_fmnist")
    images, labels = load_split_images("test", limit=160)
    old = model_logits(model, images, batch_size=64)
    new = build_table(model, "test", batch_size=64, limit=160)
    np.testing.assert_array_equal(new.logits, old)
    np.testing.assert_array_equal(new.labels, labels.numpy())
    shipped = zoo.load_table("dvt_fmnist", "test")
    assert new.meta["dataset"] == shipped.meta["dataset"] == "fashion-mnist"


class _Interrupting(torch.utils.data.Dataset):
    """A dataset that raises once item ``at`` is read (an interrupted run)."""

    def __init__(self, base, at):
        self.base, self.at = base, at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.at:
            raise KeyboardInterrupt
        return self.base[i]


def test_resume_after_an_interruption(tree, tmp_path):
    from dynexit.tables_stream import stream_logits

    m = tiny("multiexit_cnn").eval()
    ds = data.get_dataset(f"imagefolder:{tree}").torch_dataset("test")
    full, labels = stream_logits(m, ds, batch_size=16)
    partial = tmp_path / "t.partial.npz"
    with pytest.raises(KeyboardInterrupt):
        stream_logits(m, _Interrupting(ds, 100), batch_size=16, partial=partial, save_every=2, key={"a": 1})
    with np.load(partial) as f:
        assert len(f["labels"]) == 96  # 6 batches of 16 saved before item 100
    seen = []
    counting = _Interrupting(ds, -1)
    counting.__class__ = type("Counting", (_Interrupting,), {"__getitem__": lambda self, i: (seen.append(i), self.base[i])[1]})
    again, labels2 = stream_logits(m, counting, batch_size=16, partial=partial, save_every=2, key={"a": 1})
    assert min(seen) == 96 and not partial.exists()
    np.testing.assert_array_equal(again, full)
    np.testing.assert_array_equal(labels2, labels)


def test_resume_with_other_arguments_starts_afresh(tree, tmp_path, capsys):
    from dynexit.tables_stream import stream_logits

    m = tiny("multiexit_cnn").eval()
    ds = data.get_dataset(f"imagefolder:{tree}").torch_dataset("test")
    partial = tmp_path / "p.npz"
    with pytest.raises(KeyboardInterrupt):
        stream_logits(m, _Interrupting(ds, 40), batch_size=16, partial=partial, save_every=1, key={"a": 1})
    out, _ = stream_logits(m, ds, batch_size=16, partial=partial, key={"a": 2})
    assert "made with other arguments; starting afresh" in capsys.readouterr().err
    np.testing.assert_array_equal(out, stream_logits(m, ds, batch_size=16)[0])


def test_two_gloo_processes_give_the_one_process_table(tree, ckpt, tmp_path):
    out = tmp_path / "ddp.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dynexit",
           "table", "--model", str(ckpt), "--split", "test", "--data", f"imagefolder:{tree}", "--batch-size", "16",
           "--logits-dtype", "float32", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone writes the gathered table
    two = ExitTable.load(out)
    torch.set_num_threads(1)
    one = build_table(str(ckpt), "test", dataset=f"imagefolder:{tree}", batch_size=16)
    assert two.num_samples == one.num_samples == 150
    np.testing.assert_array_equal(two.logits, one.logits)
    np.testing.assert_array_equal(two.labels, one.labels)
    assert two.fingerprint == one.fingerprint


def test_cli_table_on_an_imagefolder_tree(tree, ckpt, tmp_path, capsys):
    from dynexit.cli import main

    out = tmp_path / "t.npz"
    assert main(["table", "--model", str(ckpt), "--split", "val", "--data", f"imagefolder:{tree}", "--quiet",
                 "--out", str(out)]) == 0
    t = ExitTable.load(out)
    assert t.num_samples == 6 and t.meta["split"] == "val" and not out.with_name("t.npz.partial.npz").exists()
    assert main(["table", "--model", str(ckpt), "--split", "val", "--data", f"cifar10:{tmp_path}", "--out", str(out)]) == 2
    assert "does not hold cifar-10-batches-py/" in capsys.readouterr().err
    assert main(["table", "--model", str(ckpt), "--split", "val", "--data", f"cifar10:{tmp_path}",
                 "--data-root", str(tmp_path), "--out", str(out)]) == 2
    assert "give the root once" in capsys.readouterr().err
