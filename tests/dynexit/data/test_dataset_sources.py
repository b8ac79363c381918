"""The registry's file-based datasets: ImageFolder trees (written from real Fashion-MNIST images),
torchvision datasets by name (never downloaded), and the one ``--data NAME[:ROOT]`` parser."""

import argparse
import shutil

import numpy as np
import pytest

from dynexit import data
from dynexit.cli.args import data_arg
from dynexit.data.imagefolder import SPLIT_SEED, held_out
from dynexit.testing import write_image_tree

HAS_TRAIN = (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("tree"), {"train": 200, "test": 60})


def test_imagefolder_tree_with_train_and_test(tree):
    spec = data.get_dataset(f"imagefolder:{tree}")
    assert spec.class_names[0] == "0_T-shirt-top" and spec.num_classes == 10
    assert (spec.in_chans, spec.image_size, spec.resizable) == (1, (28, 28), True)
    assert f"default_rng({SPLIT_SEED})" in spec.split_rule and "test = test/ folder" in spec.split_rule
    sizes = {s: len(spec.torch_dataset(s)) for s in data.SPLITS}
    assert sizes == {"train": 180, "val": 20, "test": 60}
    # the pixels and labels are the Fashion-MNIST images the tree was written from
    x, y = spec.load("test")
    raw, labels = data.load_fashion_mnist("test")
    order = np.lexsort((np.arange(200, 260), labels[200:260]))  # sorted by class, then file name
    np.testing.assert_array_equal(np.round(x[:, 0] * 255).astype(np.uint8), raw[200:260][order])
    np.testing.assert_array_equal(y, labels[200:260][order])
    # resized to what a model takes, on request
    img, _ = spec.torch_dataset("val", image_size=(16, 20))[0]
    assert img.shape == (1, 16, 20)
    aug, label = spec.torch_dataset("train", augment=True)[3]
    assert aug.shape == (1, 28, 28) and int(label) == int(spec.torch_dataset("train")[3][1])


def test_held_out_rule_is_fixed_and_disjoint():
    val, rest = held_out(100)
    assert len(val) == 10 and len(rest) == 90 and not set(val) & set(rest)
    np.testing.assert_array_equal(val, held_out(100)[0])
    a, b, rest = held_out(50, 2)
    assert len(a) == len(b) == 5 and not set(a) & set(b) and len(rest) == 40


def test_flat_tree_and_three_folders(tmp_path):
    flat = write_image_tree(tmp_path / "flat", {"": 60})
    spec = data.get_dataset(f"imagefolder:{flat}")
    assert [len(spec.torch_dataset(s)) for s in data.SPLITS] == [48, 6, 6]
    three = write_image_tree(tmp_path / "three", {"train": 40, "val": 20, "test": 20})
    spec = data.get_dataset(f"imagefolder:{three}")
    assert [len(spec.torch_dataset(s)) for s in data.SPLITS] == [40, 20, 20]
    imagenet = write_image_tree(tmp_path / "imagenet", {"train": 40, "val": 20})
    spec = data.get_dataset(f"imagefolder:{imagenet}")  # ImageNet: val/ is what results are reported on
    assert [len(spec.torch_dataset(s)) for s in data.SPLITS] == [36, 4, 20] and "test = val/ folder" in spec.split_rule


def test_bad_trees_are_clear(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="no such folder"):
        data.get_dataset(f"imagefolder:{tmp_path / 'none'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(data.DataNotFoundError, match="no images"):
        data.get_dataset(f"imagefolder:{tmp_path / 'empty'}")
    odd = write_image_tree(tmp_path / "odd", {"train": 30, "test": 10})
    shutil.copytree(odd / "test" / next(p.name for p in (odd / "test").iterdir()), odd / "test" / "zebra")
    with pytest.raises(ValueError, match="test/ has classes that train/ lacks: \\['zebra'\\]"):
        data.get_dataset(f"imagefolder:{odd}")


def test_torchvision_datasets_never_download(tmp_path):
    spec = data.get_dataset("cifar100")
    assert spec.num_classes == 100 and spec.class_names[-1] == "worm" and (spec.in_chans, spec.image_size) == (3, (32, 32))
    assert data.get_dataset("svhn").num_classes == 10 and data.get_dataset("cifar10").class_names[0] == "airplane"
    with pytest.raises(data.DataNotFoundError, match=r"cifar10 needs a data root: --data cifar10:ROOT"):
        data.get_dataset("cifar10").torch_dataset("test")
    with pytest.raises(data.DataNotFoundError, match=rf"data root {tmp_path} does not hold cifar-10-batches-py/"):
        data.train_val_datasets("cifar10", tmp_path)
    with pytest.raises(ValueError, match="torchvision has no dataset 'Nope'"):
        data.get_dataset("torchvision:Nope", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*torchvision:NAME or imagefolder:PATH"):
        data.get_dataset("mnist")


@pytest.mark.skipif(not HAS_TRAIN, reason="needs `apt-get install dataset-fashion-mnist` (.ci/run installs it)")
def test_any_torchvision_dataset_by_name(tmp_path):
    import gzip

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in data.DEBIAN_DIR.glob("*.gz"):
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    spec = data.get_dataset("torchvision:FashionMNIST", tmp_path)
    assert spec.class_names == data.FASHION_MNIST_CLASSES and (spec.in_chans, spec.image_size) == (1, (28, 28))
    val = spec.torch_dataset("val")
    assert len(val) == 5000 and len(spec.torch_dataset("train")) == 55000
    x, y = spec.torch_dataset("test")[7]
    raw_test, labels = data.load_fashion_mnist("test")
    np.testing.assert_array_equal(np.round(x[0].numpy() * 255).astype(np.uint8), raw_test[7])
    assert int(y) == labels[7]


def test_data_arg_is_the_one_parser(tree, tmp_path):
    assert data_arg("fashion-mnist") == ("fashion-mnist", None)
    assert data_arg("fmnist") == ("fashion-mnist", None)
    assert data_arg(f"cifar10:{tmp_path}") == ("cifar10", str(tmp_path))
    assert data_arg(f"imagefolder:{tree}") == (f"imagefolder:{tree}", None)
    assert data_arg(f"torchvision:KMNIST:{tmp_path}") == ("torchvision:KMNIST", str(tmp_path))
    assert data_arg("torchvision:KMNIST") == ("torchvision:KMNIST", None)
    for bad, message in (("imagenet", "unknown dataset 'imagenet'"), (f"cifar10:{tmp_path / 'no'}", "no such folder"),
                         (f"imagefolder:{tmp_path / 'no'}", "no such folder"), ("torchvision:", "torchvision:NAME")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            data_arg(bad)
