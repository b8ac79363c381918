"""Fuzz the file loaders: damaged checkpoints, sidecars, weight tensors, tables and exit rules.

The property, for every loader and every damaged input: it returns a valid object or raises
ValueError. Any other exception fails the test, and a returned object is checked against what was
written (no silent wrong result): a loaded model gives the saved model's logits (or, when the
damage only changed a dtype losslessly or in precision, finite logits), a loaded table holds the
arrays that were written and passes the table's invariants, a loaded exit rule scores finitely.

The suite runs a few examples per kind (derandomized). ``DYNEXIT_FUZZ_EXAMPLES=N`` runs N random
examples per kind; ``DYNEXIT_FUZZ_REPORT=file.json`` writes the outcome counts per kind:

    DYNEXIT_FUZZ_EXAMPLES=600 DYNEXIT_FUZZ_REPORT=fuzz.json python -m pytest -q tests/dynexit/io/test_fuzz_files.py
"""

import collections
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from dynexit import criteria, solvers
from dynexit.io.checkpoint import load_checkpoint, save_checkpoint
from dynexit.policy import ExitRule
from dynexit.criteria import ExitScorer
from dynexit.table import ExitTable
from conftest import random_table
from _tiny_models import images, tiny

EXAMPLES = int(os.environ.get("DYNEXIT_FUZZ_EXAMPLES", "0"))
STATS: dict = collections.defaultdict(collections.Counter)  # kind -> {"loaded": n, "ValueError": n}


def fuzz(default: int):
    return settings(max_examples=EXAMPLES or default, deadline=None, database=None, derandomize=not EXAMPLES,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    out = os.environ.get("DYNEXIT_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({kind: dict(counts) for kind, counts in STATS.items()}, f, indent=1)


def outcome(kind: str, load):
    """``load()``'s result, or None when it raised ValueError; any other exception propagates."""
    try:
        value = load()
    except ValueError as err:
        assert str(err), "a ValueError without a message"
        STATS[kind]["ValueError"] += 1
        return None
    STATS[kind]["loaded"] += 1
    return value


# ----------------------------------------------------------------------------- damage strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.integers() | st.sampled_from([10 ** 400, -1, 0])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)


@st.composite
def byte_damage(draw, data: bytes, region: int | None = None) -> bytes:
    """Flip bytes, truncate, insert or nest: a damaged copy of ``data`` (flips within ``region`` bytes)."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "nest"]))
    out = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, (region or len(out)) - 1))
            out[pos] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        out = out[: draw(st.integers(0, len(out) - 1))]
    elif kind == "insert":
        pos = draw(st.integers(0, region or len(out)))
        out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    else:  # deeply nested JSON (a RecursionError in the parser) or a prefix of brackets
        depth = draw(st.sampled_from([10, 100_000]))
        out = bytearray(b"[" * depth + b"]" * depth) if draw(st.booleans()) else bytearray(b"{\"a\":" * depth) + out
    return bytes(out)


def json_paths(node, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))


@st.composite
def json_damage(draw, tree):
    """A copy of ``tree`` with one node replaced by a random JSON value, or deleted."""
    tree = json.loads(json.dumps(tree))
    paths = [p for p in json_paths(tree) if p]
    path = draw(st.sampled_from(paths))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.integers(0, 5)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return tree


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny Multi-Exit ViT, its files' bytes, and its logits on two images."""
    model = tiny("mevit").eval()
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors", val_accuracy=[0.5, 0.6, 0.7])
    x = images(model, 2)
    with torch.no_grad():
        ref = [t.clone() for t in model(x)]
    return {"model": model, "path": path, "weights": path.read_bytes(),
            "sidecar": json.loads(path.with_suffix(".json").read_text()), "x": x, "ref": ref}


def test_undamaged_files_load(checkpoint, table_file, rule_file):
    """The fixtures themselves load: the fuzz tests start from valid files."""
    ck = checkpoint
    assert_same_model(ck, load_checkpoint(write_checkpoint(ck, ck["weights"], ck["sidecar"])))
    table_file["path"].write_bytes(table_file["bytes"])
    assert_valid_table(ExitTable.load(table_file["path"]), table_file["arrays"])
    for rule in rule_file["rules"]:
        rule_file["path"].write_text(json.dumps(rule))
        assert_valid_rule(ExitRule.load(rule_file["path"]), rule_file["table"])


def write_checkpoint(ck, weights: bytes, sidecar: dict | bytes):
    path = ck["path"]
    path.write_bytes(weights)
    side = path.with_suffix(".json")
    side.write_bytes(sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode())
    return path


def logits_of(model, x):
    with torch.no_grad():
        return model(x)


def note_changed_fields(kind, ck, model):
    """A load never carries changed costs (the loader recounts them); changed training accuracies (a
    record of the training run, not used for any decision) keep a valid form and are counted."""
    meta = model.checkpoint_meta
    if meta.get("costs_mflops") is not None:
        np.testing.assert_allclose(meta["costs_mflops"], ck["sidecar"]["costs_mflops"], rtol=1e-6,
                                   err_msg="a sidecar with changed costs loaded")
    if meta.get("val_accuracy") != ck["sidecar"].get("val_accuracy"):
        STATS[kind]["loaded_with_changed_accuracy_record"] += 1


def assert_same_model(ck, model):
    """The loaded model is the saved one: same structure, same logits, valid costs."""
    ref = ck["model"]
    assert model.num_exits == ref.num_exits and list(model.exit_names) == list(ref.exit_names)
    assert model.num_classes == ref.num_classes
    for a, b in zip(logits_of(model, ck["x"]), ck["ref"]):
        assert torch.equal(a, b), "a damaged checkpoint loaded with different weights"
    costs = np.asarray(model.exit_costs())
    assert costs.shape == (model.num_exits,) and np.all(np.isfinite(costs)) and np.all(costs > 0)
    assert np.all(np.diff(costs) >= 0)


@fuzz(25)
@given(data=st.data())
def test_sidecar_fields(checkpoint, data):
    ck = checkpoint
    side = data.draw(json_damage(ck["sidecar"]))
    path = write_checkpoint(ck, ck["weights"], side)
    model = outcome("sidecar_fields", lambda: load_checkpoint(path))
    if model is not None:
        assert_same_model(ck, model)
        note_changed_fields("sidecar_fields", ck, model)


@fuzz(15)
@given(data=st.data())
def test_sidecar_bytes(checkpoint, data):
    ck = checkpoint
    raw = json.dumps(ck["sidecar"], indent=2).encode()
    path = write_checkpoint(ck, ck["weights"], data.draw(byte_damage(raw)))
    model = outcome("sidecar_bytes", lambda: load_checkpoint(path))
    if model is not None:
        assert_same_model(ck, model)
        note_changed_fields("sidecar_bytes", ck, model)


@fuzz(15)
@given(data=st.data(), checksum=st.booleans())
def test_weights_bytes(checkpoint, data, checksum):
    """With the sidecar's SHA-256 every change is refused; without it (older checkpoints such as the
    shipped zoo) damage to the header must still be refused or harmless."""
    ck = checkpoint
    side = dict(ck["sidecar"])
    header_end = 8 + int.from_bytes(ck["weights"][:8], "little")
    if not checksum:
        del side["weights_sha256"]
    damaged = data.draw(byte_damage(ck["weights"], region=None if checksum else header_end))
    path = write_checkpoint(ck, damaged, side)
    model = outcome("weights_bytes" + ("" if checksum else "_no_checksum"), lambda: load_checkpoint(path))
    if model is not None:
        assert damaged == ck["weights"] or not checksum, "weights that fail the checksum were loaded"
        assert_same_model(ck, model)


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ALL_DTYPES = FLOAT_DTYPES + (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
                             torch.complex64)


@fuzz(30)
@given(data=st.data())
def test_weight_tensors(checkpoint, data):
    """Random dtypes, NaN / inf / huge values, shapes and keys in the tensors (checksum kept valid):
    the loader's verdict must be exactly the expected one."""
    from safetensors.torch import save_file

    ck = checkpoint
    tensors = load_file_bytes(ck["weights"])
    own = ck["model"].state_dict()
    key = data.draw(st.sampled_from(sorted(tensors)))
    action = data.draw(st.sampled_from(["dtype", "value", "shape", "drop", "extra"]))
    should_fail, lossless = False, True
    t = tensors[key]
    if action == "dtype":
        dtype = data.draw(st.sampled_from(ALL_DTYPES))
        tensors[key] = t.to(dtype)
        if own[key].dtype.is_floating_point:
            should_fail = dtype not in FLOAT_DTYPES
            lossless = dtype in (torch.float32, torch.float64)
        else:
            should_fail = dtype.is_floating_point or dtype.is_complex or dtype == torch.bool
            lossless = bool(torch.equal(tensors[key].to(t.dtype), t)) if not should_fail else True
    elif action == "value" and t.dtype.is_floating_point and t.numel():
        value = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, 1e30]))
        t = t.double().clone()
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = value
        tensors[key] = t
        should_fail = not np.isfinite(np.float32(value)) if value != 1e30 else False
        lossless = value != 1e30
    elif action == "shape":
        tensors[key] = torch.zeros(t.numel() + 1, dtype=t.dtype)
        should_fail = True
    elif action == "drop":
        del tensors[key]
        should_fail = True
    elif action == "extra":
        tensors["bogus." + key] = t.clone()
        should_fail = True
    save_file(tensors, str(ck["path"]), metadata={"format": "dynexit.checkpoint", "arch": ck["sidecar"]["arch"],
                                                   "kwargs": json.dumps(ck["sidecar"]["kwargs"])})
    side = dict(ck["sidecar"], weights_sha256=hashlib.sha256(ck["path"].read_bytes()).hexdigest())
    ck["path"].with_suffix(".json").write_text(json.dumps(side))
    model = outcome("weight_tensors", lambda: load_checkpoint(ck["path"]))
    assert (model is None) == should_fail, f"{action} on {key}: expected {'an error' if should_fail else 'a load'}"
    if model is not None:
        out = logits_of(model, ck["x"])
        if lossless:
            for a, b in zip(out, ck["ref"]):
                assert torch.equal(a, b)
        # a lossy but valid change (float16, a large finite weight) still gives a usable model
        assert all(torch.isfinite(o).all() for o in out) or action == "value"


def load_file_bytes(raw: bytes) -> dict:
    from safetensors.torch import load

    return {k: v.clone() for k, v in load(raw).items()}


def test_folders_in_place_of_files(checkpoint, tmp_path):
    ck = checkpoint
    for which in ("weights", "sidecar"):
        path = tmp_path / which / "m.safetensors"
        path.parent.mkdir()
        path.write_bytes(ck["weights"])
        path.with_suffix(".json").write_text(json.dumps(ck["sidecar"]))
        target = path if which == "weights" else path.with_suffix(".json")
        target.unlink()
        target.mkdir()
        with pytest.raises(ValueError, match="is a folder"):
            load_checkpoint(path)


# ----------------------------------------------------------------------------- tables

@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    table = random_table(n=16, k=3, c=4, seed=3)
    path = table.save(tmp_path_factory.mktemp("table") / "t.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return {"table": table, "path": path, "bytes": path.read_bytes(), "arrays": arrays}


def assert_valid_table(t: ExitTable, written: dict):
    """The loaded table holds the written arrays and meets the table's invariants."""
    n, k, c = t.logits.shape
    assert t.logits.dtype == np.float32 and np.all(np.isfinite(t.logits))
    assert t.labels.dtype == np.int64 and t.labels.shape == (n,) and t.labels.min() >= 0 and t.labels.max() < c
    assert t.costs.shape == (k,) and np.all(np.isfinite(t.costs)) and np.all(t.costs > 0)
    assert np.all(np.diff(t.costs) >= 0) and len(t.exit_names) == k and t.index.shape == (n,)
    np.testing.assert_array_equal(t.logits, written["logits"].astype(np.float32))
    np.testing.assert_array_equal(t.labels, written["labels"])
    np.testing.assert_array_equal(t.costs, written["costs"])
    np.testing.assert_array_equal(t.index, written["index"])
    assert list(t.exit_names) == written["exit_names"].tolist()


@fuzz(25)
@given(data=st.data())
def test_table_bytes(table_file, data):
    tf = table_file
    damaged = data.draw(byte_damage(tf["bytes"]))
    tf["path"].write_bytes(damaged)
    t = outcome("table_bytes", lambda: ExitTable.load(tf["path"]))
    if t is not None:  # the zip's CRCs make any loaded table the one that was written
        assert_valid_table(t, tf["arrays"])
        assert t.fingerprint == tf["table"].fingerprint


TABLE_DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool",
                "complex64", "<U3", "object"]


@st.composite
def damaged_array(draw, original: np.ndarray):
    dtype = draw(st.sampled_from(TABLE_DTYPES + [str(original.dtype)] * 3))
    shape = draw(st.sampled_from([original.shape, original.shape[:-1], original.shape + (1,), (0,), ()]))
    shape = tuple(shape)
    values = draw(st.sampled_from(["same", "random", "nan", "inf", "huge", "negative"]))
    base = original if shape == original.shape else np.resize(original, shape) if original.size else np.zeros(shape)
    if values == "random":
        base = np.random.default_rng(draw(st.integers(0, 1000))).normal(size=shape) * 10
    arr = np.array(base, dtype=np.float64) if values in ("nan", "inf", "huge", "negative") and base.dtype.kind in "iuf" \
        else np.array(base)
    if arr.size and arr.dtype.kind == "f":
        pos = draw(st.integers(0, arr.size - 1))
        arr.reshape(-1)[pos] = {"nan": np.nan, "inf": np.inf, "huge": 1e300, "negative": -3.0}.get(values,
                                                                                                 arr.reshape(-1)[pos])
    if dtype == "object":
        return arr.astype(object)
    try:
        return arr.astype(dtype)
    except (ValueError, TypeError):  # e.g. strings that are not numbers: keep them as strings
        return arr


@fuzz(40)
@given(data=st.data())
def test_table_arrays(table_file, data):
    """Wrong dtypes (strings, complex, objects, bools), shapes, NaN / inf and missing keys, a .npy renamed
    .npz: refused with a ValueError that never suggests allow_pickle, or loaded exactly as written."""
    tf = table_file
    arrays = dict(tf["arrays"])
    action = data.draw(st.sampled_from(["replace", "replace", "replace", "drop", "npy"]))
    key = data.draw(st.sampled_from(sorted(arrays)))
    if action == "replace":
        arrays[key] = data.draw(damaged_array(arrays[key]))
    elif action == "drop":
        del arrays[key]
    path = tf["path"]
    if action == "npy":
        with open(path, "wb") as f:
            np.save(f, data.draw(damaged_array(arrays[key])), allow_pickle=True)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # object arrays go in pickled, as a foreign writer might do

    def load():
        try:
            return ExitTable.load(path)
        except ValueError as err:
            assert "allow_pickle" not in str(err) and str(path) in str(err)
            raise

    t = outcome("table_arrays", load)
    if t is not None:
        assert action == "replace"
        assert_valid_table(t, arrays)


# ----------------------------------------------------------------------------- exit rules

@pytest.fixture(scope="module")
def rule_file(tmp_path_factory):
    table = random_table(n=40, k=3, c=4, seed=5)
    budget = float(table.costs[0] + 0.4 * (table.costs[-1] - table.costs[0]))
    rules = [ExitRule.from_solver(solvers.make("learned", budget, n_folds=2).fit(table)).to_dict(),
             ExitRule.from_solver(solvers.make("lagrangian", budget, "entropy").fit(table)).to_dict()]
    return {"rules": rules, "path": tmp_path_factory.mktemp("rule") / "rule.json", "table": table}


def assert_valid_rule(rule: ExitRule, table: ExitTable):
    assert rule.thresholds.ndim == 1 and rule.thresholds.size >= 1 and not np.isnan(rule.thresholds).any()
    if isinstance(rule.criterion, ExitScorer):
        probs = table.probabilities()[:, : rule.thresholds.size]
        with np.errstate(over="ignore"):  # exp overflows to inf for saturated scores; the score is then 0
            scores = rule.criterion(probs)
        assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1)), "a rule scores NaN"
    else:
        criteria.get(rule.criterion)
    json.dumps(rule.to_dict())  # a loaded rule can be saved again


@fuzz(40)
@given(data=st.data(), which=st.integers(0, 1), as_bytes=st.booleans())
def test_exit_rules(rule_file, data, which, as_bytes):
    rf = rule_file
    rule = rf["rules"][which]
    if as_bytes:
        rf["path"].write_bytes(data.draw(byte_damage(json.dumps(rule, indent=1).encode())))
    else:
        rf["path"].write_text(json.dumps(data.draw(json_damage(rule))))
    loaded = outcome("exit_rule", lambda: ExitRule.load(rf["path"]))
    if loaded is not None:
        assert_valid_rule(loaded, rf["table"])


def test_rule_with_nan_coefficients_is_refused(rule_file):
    rule = json.loads(json.dumps(rule_file["rules"][0]))
    linear = next(m for m in rule["criterion"]["exits"] if isinstance(m, dict))
    linear["coef"][1] = float("nan")
    rule_file["path"].write_text(json.dumps(rule))
    with pytest.raises(ValueError, match="finite"):
        ExitRule.load(rule_file["path"])


def test_module_counts_cover_every_kind():
    """Runs last in this file: the fuzz tests that ran saw both outcomes (they are not vacuous)."""
    if not STATS:
        pytest.skip("no fuzz test ran in this process")
    for kind in ("sidecar_fields", "weight_tensors", "table_arrays", "exit_rule"):
        if kind in STATS:
            assert STATS[kind]["ValueError"] > 0 and STATS[kind]["loaded"] > 0, (kind, STATS[kind])
