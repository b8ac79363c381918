"""Issue 14.6, scale: float16 tables, chunked probabilities and scores, no full-size float64 copies.

The ImageNet-size figures themselves are measured by benchmarks/scale.py; these tests check, on small
tables, the properties that make them possible and that they change no result.
"""

import tracemalloc
import zipfile

import numpy as np
import pytest

from dynexit import arrays, criteria, solvers
from dynexit.solvers.crossval import CrossValidatedSolver, _exits
from dynexit.solvers.geometric import LOG_Q_GRID, geometric_grid, geometric_thresholds
from dynexit.arrays import softmax
from dynexit.table import ExitTable
from dynexit.testing import synthetic_logits

NAMES = ["max_prob", "entropy", "margin", "patience", "random"]


def make_table(n=600, k=4, c=10, seed=0, dtype=np.float32):
    labels = np.random.default_rng(seed).integers(0, c, n)
    logits = synthetic_logits(labels, k, c, seed=seed).astype(dtype)
    return ExitTable(logits, labels, np.cumsum(np.linspace(1.0, 2.0, k)), meta={"split": "val"})


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of 70 values: a (N, 4, 10) table is scored 1 row at a time, a (N, 2, 5) one 7 rows
    at a time with a ragged last chunk."""
    monkeypatch.setattr(arrays, "CHUNK_VALUES", 70)


def test_chunked_probabilities_equal_the_plain_softmax(tiny_chunks):
    for t in (make_table(n=53, k=2, c=5), make_table(n=40)):
        plain = softmax(t.logits.astype(np.float64)).astype(np.float32)
        assert len(arrays.row_chunks(t.num_samples, t.num_exits * t.num_classes)) > 5
        np.testing.assert_array_equal(t.probabilities(), plain)  # bit-identical, as before chunking
        # the chunks without the memoised array, and slices of it once it exists
        fresh = ExitTable(t.logits, t.labels, t.costs)
        parts = list(fresh.iter_probabilities())
        assert all(p.shape[0] == r.stop - r.start for r, p in parts) and not fresh.memoised(("probs", None))
        np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), plain)
        np.testing.assert_array_equal(np.concatenate([p for _, p in t.iter_probabilities()]), plain)
        temps = np.linspace(0.5, 2.0, t.num_exits)
        np.testing.assert_array_equal(t.probabilities(temps),
                                      softmax(t.logits / temps[None, :, None]).astype(np.float32))


def test_chunked_scores_equal_the_whole_array_criteria(tiny_chunks):
    t = make_table(n=53, k=2, c=5)
    fresh = ExitTable(t.logits, t.labels, t.costs)
    got = criteria.scores_many(fresh, NAMES)
    assert not fresh.memoised(("probs", None))  # scored without the whole probabilities
    for name, scores in zip(NAMES, got):
        whole = np.asarray(criteria.get(name)(t.probabilities()), dtype=np.float64)
        np.testing.assert_array_equal(scores, whole, err_msg=name)
        assert criteria.scores(fresh, name) is scores  # memoised per name, as before
    temps = [0.7, 1.5]
    np.testing.assert_array_equal(criteria.scores(fresh, "margin", temps),
                                  criteria.margin(t.probabilities(temps)))
    with pytest.raises(ValueError, match="unknown exit criterion"):
        criteria.scores_many(fresh, ["max_prob", "nope"])
    with pytest.raises(ValueError, match="temperatures must be positive"):
        criteria.scores_many(fresh, ["entropy"], temperature=[1.0, -1.0])


def test_walked_grid_is_msdnet_rule_at_every_ratio():
    rng = np.random.default_rng(1)
    for n, k in [(300, 4), (257, 1), (120, 2), (2000, 5)]:
        scores = np.round(rng.random((n, k)), 2)  # many ties
        scores[: n // 5, k // 2] = 0.5
        thresholds, exits = geometric_grid(scores, LOG_Q_GRID)
        expected = np.stack([geometric_thresholds(scores, float(np.exp(lq))) for lq in LOG_Q_GRID])
        np.testing.assert_array_equal(thresholds, expected)
        passes = scores[None] >= expected[:, None, :]
        passes[..., -1] = True
        np.testing.assert_array_equal(exits, passes.argmax(axis=2))
        np.testing.assert_array_equal(_exits(scores, expected[::7]), passes[::7].argmax(axis=2))


def test_float16_table_loads_and_solves_like_float32(tmp_path):
    t32 = make_table(n=1500, k=4, c=10, seed=2)
    t16 = ExitTable.load(t32.save(tmp_path / "t16.npz", logits_dtype="float16"))
    assert t16.logits.dtype == np.float32  # float16 on disk, float32 in memory, as always
    np.testing.assert_array_equal(t16.logits, t32.logits.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(t16.probabilities(), t32.probabilities(), atol=2e-3)
    direct = ExitTable(t32.logits.astype(np.float16), t32.labels, t32.costs)
    np.testing.assert_array_equal(direct.logits, t16.logits)
    assert direct.fingerprint == t16.fingerprint != t32.fingerprint
    for budget in np.linspace(t32.costs[0], t32.costs[-1], 7)[1:-1]:
        a = CrossValidatedSolver(budget=float(budget)).fit(t32)
        b = CrossValidatedSolver(budget=float(budget)).fit(t16)
        assert b.expected_cost_ <= budget * (1 + 1e-9)
        # float16 moves a logit by ~1e-3: a handful of the 1,500 samples may change exit
        assert abs(a.expected_cost_ - b.expected_cost_) <= 0.02 * budget
        assert abs(a.expected_accuracy_ - b.expected_accuracy_) <= 0.01


def test_uncompressed_and_fortran_order_files_load_the_same(tmp_path):
    t = make_table(n=50, k=3, c=6)
    raw = t.save(tmp_path / "raw.npz", compress=False)
    with zipfile.ZipFile(raw) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    zipped = t.save(tmp_path / "zipped.npz")
    with zipfile.ZipFile(zipped) as zf:
        assert zf.getinfo("logits.npy").compress_type == zipfile.ZIP_DEFLATED
    for path in (raw, zipped):
        back = ExitTable.load(path)
        np.testing.assert_array_equal(back.logits, t.logits)
        assert back.fingerprint == t.fingerprint
    arrays = dict(np.load(raw))
    arrays["logits"] = np.asfortranarray(arrays["logits"].astype(np.float64))
    assert not arrays["logits"].flags.c_contiguous
    np.savez(tmp_path / "fortran.npz", **arrays)
    np.testing.assert_array_equal(ExitTable.load(tmp_path / "fortran.npz").logits, t.logits)


def test_truncated_logits_member_is_refused(tmp_path):
    t = make_table(n=50, k=3, c=6)
    arrays = dict(np.load(t.save(tmp_path / "t.npz")))
    path = tmp_path / "short.npz"
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as zf:  # rewrite logits.npy without its last 100 bytes
        members = {name: zf.read(name) for name in zf.namelist()}
    members["logits.npy"] = members["logits.npy"][:-100]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="short.npz.*(damaged|more than the file holds)"):
        ExitTable.load(path)


def traced_peak(fn) -> int:
    """Peak bytes numpy and Python allocate while ``fn`` runs (numpy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_no_full_size_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "CHUNK_VALUES", 1 << 15)
    n, k, c = 1000, 4, 1000  # many classes, like ImageNet: the logits dominate
    t = make_table(n=n, k=k, c=c, seed=3)
    float32_size = n * k * c * 4  # 16 MB; a float64 copy would be 32 MB
    path = t.save(tmp_path / "t.npz", logits_dtype="float16")
    # load: the float32 logits themselves and chunks, never the float16 array beside them (+50%)
    # or a full bool mask of the NaN check (+25%)
    assert traced_peak(lambda: ExitTable.load(path)) < 1.15 * float32_size
    fresh = ExitTable.load(path)
    # scores (five (N, K) float64 results and the temporaries of a chunk), predictions and the
    # fingerprint: far below one float32 copy of the logits
    assert traced_peak(lambda: criteria.scores_many(fresh, NAMES)) < 0.25 * float32_size
    assert traced_peak(lambda: (fresh.correct, fresh.fingerprint)) < 0.1 * float32_size
    # the default solver's first fit: its (ratios x samples) tables (~200 N values), far below the logits
    assert traced_peak(lambda: CrossValidatedSolver(budget=4.0).fit(fresh)) < 0.5 * float32_size
    assert not fresh.memoised(("probs", None))
    # the whole probabilities stay available, as one float32 array (no float64 beside it)
    assert traced_peak(fresh.probabilities) < 1.1 * float32_size


def test_uncompressed_float32_logits_are_memory_mapped_and_crc_checked(tmp_path):
    t = make_table(n=50, k=3, c=6)
    path = t.save(tmp_path / "raw.npz", compress=False)
    back = ExitTable.load(path)
    np.testing.assert_array_equal(back.logits, t.logits)
    assert isinstance(back.logits.base, np.memmap) and not back.logits.flags.writeable
    assert back.fingerprint == t.fingerprint
    # float16 or compressed logits are read into memory (converted to float32 on the way)
    for kwargs in ({"logits_dtype": "float16", "compress": False}, {}):
        read = ExitTable.load(t.save(tmp_path / "other.npz", **kwargs))
        assert read.logits.dtype == np.float32 and not isinstance(read.logits.base, np.memmap)
    # one flipped byte in the mapped logits is refused, as zipfile refuses it in a read member
    data = bytearray(path.read_bytes())
    at = data.index(t.logits.tobytes()[:16]) + 100
    data[at] ^= 0x01
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.npz: damaged ExitTable .npz \(BadZipFile: Bad CRC-32"):
        ExitTable.load(damaged)


def test_learned_candidate_is_scored_by_chunks_as_by_the_whole_table(monkeypatch):
    val, test = make_table(n=300, seed=4), make_table(n=200, seed=5)

    def fit_and_score():
        fitted = CrossValidatedSolver(budget=3.0, candidates=("learned",), z=0.0)
        fitted.fit(ExitTable(val.logits, val.labels, val.costs))  # a fresh table: nothing memoised
        return fitted, fitted.scorer_(test.probabilities()), fitted.scores(ExitTable(test.logits, test.labels,
                                                                                         test.costs))

    solvers.clear_cache()
    monkeypatch.setattr(arrays, "CHUNK_VALUES", 1 << 30)  # one chunk: the whole-array computation
    whole, whole_test, _ = fit_and_score()
    solvers.clear_cache()
    monkeypatch.setattr(arrays, "CHUNK_VALUES", 90)      # two rows per chunk
    chunked, _, chunked_test = fit_and_score()
    # equal up to the last bits of the logistic's matrix product, whose BLAS kernel depends on the
    # batch size (as it always did: the cross-fitted scores were computed one fold at a time)
    np.testing.assert_allclose(chunked.fit_scores_, whole.fit_scores_, rtol=1e-12)
    np.testing.assert_allclose(chunked.thresholds_, whole.thresholds_, rtol=1e-12)
    np.testing.assert_allclose(chunked_test, whole_test, rtol=1e-12)
    assert chunked.score_ == whole.score_ == "learned"
