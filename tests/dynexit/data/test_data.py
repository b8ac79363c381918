from pathlib import Path

import numpy as np
import pytest

from dynexit import data
from dynexit.data import fashion_mnist

HAS_TRAIN = (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists()


def test_embedded_test_split():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000] * 10
    assert (data.REPO_DATA_DIR / "LICENSE").exists()


def test_val_indices_are_fixed():
    idx = data.val_indices()
    assert len(idx) == 5000 and len(np.unique(idx)) == 5000 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, data.val_indices())
    # pinned: changing these would silently invalidate every shipped table
    assert idx[:5].tolist() == [11, 63, 73, 91, 97]
    assert int(idx.sum()) == 149914348
    np.testing.assert_array_equal(data.split_indices("val"), idx)


@pytest.mark.skipif(not HAS_TRAIN, reason="needs `apt-get install dataset-fashion-mnist` (.ci/run installs it)")
def test_train_val_split():
    xt, yt = data.load_fashion_mnist("train")
    xv, yv = data.load_fashion_mnist("val")
    assert len(yt) == 55000 and len(yv) == 5000
    assert len(np.intersect1d(data.split_indices("train"), data.split_indices("val"))) == 0


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "REPO_DATA_DIR", tmp_path / "nothing")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing2")
    monkeypatch.setattr(fashion_mnist, "_try_torchvision", lambda part, root: None)
    monkeypatch.delenv("DYNEXIT_DATA", raising=False)
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_fashion_mnist("test")
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    text = str(err.value)
    for place in ("nothing", "nothing2", "torchvision", "apt-get install dataset-fashion-mnist", "DYNEXIT_DATA"):
        assert place in text
    with pytest.raises(ValueError, match="unknown split"):
        data.load_fashion_mnist("training")


def _copy_test_split(dest, gzipped=True):
    import gzip
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for name in fashion_mnist._FILES["test"]:
        if gzipped:
            shutil.copy(data.REPO_DATA_DIR / f"{name}.gz", dest / f"{name}.gz")
        else:
            (dest / name).write_bytes(gzip.decompress((data.REPO_DATA_DIR / f"{name}.gz").read_bytes()))


def test_a_set_dynexit_data_is_the_only_place_read(tmp_path, monkeypatch):
    """The shipped test split is there, but a DYNEXIT_DATA the user set is never replaced by it."""
    called = []
    monkeypatch.setattr(fashion_mnist, "_try_torchvision", lambda part, root: called.append(part))
    monkeypatch.setenv("DYNEXIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataNotFoundError, match=r"DYNEXIT_DATA=.*nowhere: no such directory.*unset DYNEXIT_DATA"):
        data.load_fashion_mnist("test")
    with pytest.raises(data.DataNotFoundError, match=r"DYNEXIT_DATA=.*nowhere: no such directory"):
        data.check_fashion_mnist_source("test")  # the cheap check the CLI runs before a model loads
    monkeypatch.setenv("DYNEXIT_DATA", str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match=r"DYNEXIT_DATA=.*neither that folder nor its fashion-mnist "
                                                     r"subfolder holds the Fashion-MNIST test split"):
        data.load_fashion_mnist("test")
    _copy_test_split(tmp_path / "fashion-mnist", gzipped=False)  # the subfolder counts, uncompressed files too
    x, y, source = data.load_fashion_mnist("test", return_source=True)
    assert x.shape == (10000, 28, 28) and source == str(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte")
    with pytest.raises(data.DataNotFoundError, match=r"DYNEXIT_DATA=.* Fashion-MNIST val split"):
        data.load_fashion_mnist("val")
    monkeypatch.setenv("DYNEXIT_DATA", "")  # empty counts as unset: the default places
    assert data.load_fashion_mnist("test", return_source=True)[2].startswith(str(data.REPO_DATA_DIR))
    assert called == []


def test_uncompressed_idx_files_are_read_like_gzipped_ones(tmp_path):
    _copy_test_split(tmp_path / "gz")
    _copy_test_split(tmp_path / "raw", gzipped=False)
    assert data.check_fashion_mnist_root(tmp_path / "raw", "test") == tmp_path / "raw"
    xg, yg = data.load_fashion_mnist("test", root=tmp_path / "gz")
    xr, yr = data.load_fashion_mnist("test", root=tmp_path / "raw")
    np.testing.assert_array_equal(xg, xr)
    np.testing.assert_array_equal(yg, yr)


def test_an_explicit_root_is_the_only_place_read(tmp_path, monkeypatch):
    # the repository's test split is there, but a root the user named must never be replaced by it
    called = []
    monkeypatch.setattr(fashion_mnist, "_try_torchvision", lambda part, root: called.append(part))
    with pytest.raises(ValueError, match=r"data root .*nowhere: no such directory.*t10k-images-idx3-ubyte\[\.gz\]"):
        data.load_fashion_mnist("test", root=tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        data.load_fashion_mnist("test", root=tmp_path / "file")
    with pytest.raises(ValueError, match=r"does not hold the Fashion-MNIST test split: missing t10k-images"):
        data.load_fashion_mnist("test", root=tmp_path)
    _copy_test_split(tmp_path)
    assert data.check_fashion_mnist_root(tmp_path, "test") == tmp_path
    with pytest.raises(ValueError, match=r"does not hold the Fashion-MNIST val split: missing train-images"):
        data.load_fashion_mnist("val", root=tmp_path)  # val is held out of the training file
    assert called == []


def test_explicit_dir_and_bad_idx(tmp_path):
    _copy_test_split(tmp_path)
    x, _ = data.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (10000, 28, 28)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x00\x00\x09\x01junk")
    with pytest.raises(ValueError, match="bad.gz"):
        data.read_idx(bad)


def test_torch_datasets_and_digits():
    ds = data.fashion_mnist_dataset("test")
    img, label = ds[0]
    assert img.shape == (1, 28, 28) and 0 <= float(img.min()) and float(img.max()) <= 1
    aug = data.AugmentedImages(ds.tensors[0][:4].mul(255).byte(), ds.tensors[1][:4])
    a, _ = aug[0]
    assert a.shape == (1, 28, 28) and a.dtype.is_floating_point
    x, y = data.load_digits_split("val")
    assert x.shape[1:] == (8, 8) and len(x) == len(y) and x.max() <= 1


def test_imagefolder_of_rgb_files_of_any_size(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((10, 12 + i, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    spec = data.get_dataset(f"imagefolder:{tmp_path}")
    assert spec.class_names == ("cat", "dog") and (spec.in_chans, spec.image_size) == (3, (10, 12))
    img, label = spec.torch_dataset("train", image_size=(8, 8))[9]
    assert img.shape == (3, 8, 8) and int(label) == 1 and float(img.max()) <= 1


def test_registry_specs_and_loads():
    assert data.available_datasets()[:2] == ("fashion-mnist", "digits")
    fm = data.get_dataset("fashion-mnist")
    assert data.get_dataset("fmnist") is fm and fm.num_classes == 10 and (fm.in_chans, fm.image_size) == (1, (28, 28))
    assert fm.class_names == data.FASHION_MNIST_CLASSES and all(len(s) <= 8 for s in fm.short_names)
    assert fm.short_names[0] == "T-shirt" and fm.short_names[-1] == "Boot"
    x, y, source = fm.load("test", return_source=True)
    raw, labels = data.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0] * 255, raw)  # exact: k / 255 * 255 rounds back to k
    np.testing.assert_array_equal(y, labels)
    assert source.startswith(str(data.REPO_DATA_DIR))
    digits = data.get_dataset("digits")
    xd, yd = digits.load("val")
    assert xd.shape[1:] == (1, 8, 8) and 0 <= xd.min() and xd.max() <= 1 and digits.num_classes == 10
    np.testing.assert_array_equal(xd[:, 0], data.load_digits_split("val")[0])
    with pytest.raises(ValueError, match="takes no data root"):
        digits.load("val", root="/tmp")
    with pytest.raises(ValueError, match="unknown split"):
        digits.load("training")
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet': choose one of fashion-mnist, digits, cifar10"):
        data.get_dataset("imagenet")


def test_train_val_datasets_go_through_the_registry():
    train, val = data.train_val_datasets("digits", augment=True)
    img, label = train[0]
    assert img.shape == (1, 8, 8) and img.dtype.is_floating_point and len(val) == 359
    with pytest.raises(ValueError, match="cifar10, cifar100, svhn"):
        data.train_val_datasets("imagenet")
    with pytest.raises(ValueError, match="needs a data root"):
        data.train_val_datasets("cifar10")
