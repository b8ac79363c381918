"""The app's computing without Streamlit: budget views, galleries, rankings, comparisons, uploads, explanations."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dynexit_app import logic
from conftest import random_table
from dynexit import explain, metrics, solvers
from dynexit.data.images import ImageRejected, prepare_image
from dynexit.inference import early_exit
from dynexit.layers import AttentionMap
from dynexit.models import create_model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One image at a time through tiny models: one thread (as the app does), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tables():
    return random_table(n=400, k=4, c=10, seed=1), random_table(n=600, k=4, c=10, seed=2)


# ----------------------------------------------------------------------------- budget views

def test_budget_view_is_the_solver_fitted_on_val_and_evaluated_on_test(tables):
    val, test = tables
    budget = float(np.mean(val.costs))
    view = logic.budget_view(val, test, "lagrangian", "margin", budget)
    fitted = solvers.make("lagrangian", budget, "margin").fit(val)
    ref = fitted.evaluate(test)
    np.testing.assert_array_equal(view.result.exits, ref.exits)
    np.testing.assert_array_equal(view.thresholds, fitted.thresholds_)
    assert view.accuracy == ref.accuracy and view.speedup == pytest.approx(test.costs[-1] / ref.mean_cost)
    assert view.change_vs_final == pytest.approx(ref.accuracy - test.exit_accuracy()[-1])
    np.testing.assert_array_equal(view.overthinking, metrics.easy_hard(test, ref)["overthinking"])
    # every overthinking image was right before the exit it took, and is wrong there
    for r in view.overthinking:
        k = view.result.exits[r]
        assert test.correct[r, :k].any() and not test.correct[r, k]


def test_single_exit_model_needs_no_solver():
    val, test = random_table(n=50, k=1, c=5, seed=0), random_table(n=80, k=1, c=5, seed=1)
    view = logic.budget_view(val, test, "learned", "max_prob", 123.0)
    assert view.result.exits.max() == 0 and view.speedup == pytest.approx(1.0)
    assert view.accuracy == test.exit_accuracy()[0]
    assert logic.solver_curve(val, test, "learned", "max_prob")["accuracy"] == [test.exit_accuracy()[0]]
    assert view.thresholds.tolist() == [-np.inf] and view.rule.criterion == "max_prob"
    assert view.score_name == "no exit score (a single exit)"  # issue 18: not "learned exit score"


@pytest.mark.parametrize("costs", [[21.68, 33.2, 41.59, 42.22], [0.0031, 0.0102], [1, 2, 3]])
def test_slider_range_stays_valid_and_reads_well(costs):
    lo, hi, step = logic.slider_steps(costs)
    assert costs[0] <= lo < costs[0] + step + 1e-12 and costs[-1] <= hi < costs[-1] + step + 1e-12
    assert 20 <= (hi - lo) / step <= 201
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)
    assert lo <= logic.default_budget(costs) <= hi


def test_gallery_rows_leave_there_most_and_least_confident_first(tables):
    val, test = tables
    view = logic.budget_view(val, test, "geometric", "max_prob", float(np.mean(test.costs)))
    for k in range(test.num_exits):
        most, least = logic.exit_gallery(view, k, n=5)
        assert set(most).isdisjoint(least)
        assert np.all(view.result.exits[np.concatenate([most, least]).astype(int)] == k)
        conf = view.confidence
        assert np.all(np.diff(conf[most]) <= 0) and np.all(np.diff(conf[least]) >= 0)
        rows = np.flatnonzero(view.result.exits == k)
        if len(rows) >= 10:
            assert conf[most[0]] == conf[rows].max() and conf[least[0]] == conf[rows].min()


def test_hardest_and_easiest_orders(tables):
    _, test = tables
    hard, easy = logic.rank_images(test, "hardest"), logic.rank_images(test, "easiest")
    assert sorted(hard) == list(range(test.num_samples)) and sorted(easy) == list(range(test.num_samples))
    right = test.correct.sum(axis=1)
    assert right[hard[0]] == right.min()
    p_true = test.probabilities()[np.arange(test.num_samples), 0, test.labels]
    assert p_true[easy[0]] == p_true.max()
    with pytest.raises(ValueError):
        logic.rank_images(test, "median")
    assert logic.rank_images(test, "hardest") is hard  # cached by the app, keyed by the table's content
    assert not any("app_rank" in str(key) for key in test._memo)  # nothing written into the table


def test_budget_for_accuracy_and_accuracy_at_budgets():
    curve = {"cost": [1.0, 2.0, 3.0], "accuracy": [0.5, 0.7, 0.8]}
    assert logic.budget_for_accuracy(curve, 0.6) == pytest.approx(1.5)
    assert logic.budget_for_accuracy(curve, 0.5) == 1.0
    assert np.isnan(logic.budget_for_accuracy(curve, 0.9))
    np.testing.assert_allclose(logic.accuracy_at_budgets(curve, [0.5, 2.5, 9.0]), [np.nan, 0.75, 0.8])
    static = {"cost": [4.0], "accuracy": [0.9]}
    np.testing.assert_allclose(logic.accuracy_at_budgets(static, [3.0, 4.0, 5.0]), [np.nan, 0.9, 0.9])
    assert logic.budget_for_accuracy(static, 0.85) == 4.0


def test_bench_row_reads_dynexit_bench_results():
    bench = {"budget_mflops": 30.0, "theoretical_speedup": 1.5, "accuracy_full": 0.9, "accuracy_early_exit": 0.9,
             "timings": {"batch256": {"measured_speedup": 1.31}, "batch1": {"measured_speedup": 1.12}}}
    row = logic.bench_row("m", bench)
    assert row["measured speedup, batch 256"] == 1.31 and row["measured speedup, batch 1"] == 1.12
    assert logic.bench_row("m", None)["theoretical speedup"] is None


# ----------------------------------------------------------------------------- uploads

def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size (no pixel data): what a decompression bomb looks like at open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_upload_dark_object_on_white_is_fitted_centred_and_inverted():
    img = Image.new("RGB", (200, 100), "white")
    img.paste((0, 0, 0), (80, 30, 120, 70))
    out = prepare_image(_bytes(img))
    a = out.array
    assert a.shape == (28, 28) and a.dtype == np.float32 and out.inverted
    assert a[:7].max() == 0 and a[-7:].max() == 0  # 200 x 100 -> 28 x 14: padded above and below
    assert a[14, 14] > 0.9 and a[14, 2] < 0.05  # the object is light, the background black
    assert any("inverted" in n for n in out.notes) and any("200 x 100" in n for n in out.notes)
    kept = prepare_image(_bytes(img), invert=False)
    assert not kept.inverted and kept.array[14, 14] < 0.1
    light_on_dark = prepare_image(_bytes(Image.new("L", (28, 28), 0)))
    assert not light_on_dark.inverted and any("already 28 x 28" in n for n in light_on_dark.notes)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "1", "I;16", "I", "F"])
def test_upload_odd_modes_are_converted_with_a_note(mode):
    if mode == "I;16":
        a = np.full((28, 28), 600, dtype=np.uint16)
        a[10:18, 10:18] = 65535
        out = prepare_image(_bytes(Image.fromarray(a)), invert=False)
        assert any("16-bit" in n for n in out.notes)
        # scaled by 65535, not clipped at 255: the object is white, the background (600) near black
        assert out.array.max() == pytest.approx(1.0) and out.array[0, 0] < 0.02
        return
    if mode == "F":
        img = Image.fromarray(np.linspace(0, 3, 400, dtype=np.float32).reshape(20, 20))
        out = prepare_image(_bytes(img, "TIFF"), invert=False)
        assert any("floating-point" in n for n in out.notes) and 0 <= out.array.min() and out.array.max() <= 1
        return
    img = Image.new(mode, (30, 30))
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I" else "PNG"
    out = prepare_image(_bytes(img, fmt))
    assert out.array.shape == (28, 28) and np.isfinite(out.array).all() and out.original_mode == mode
    if mode in ("RGBA", "LA"):  # fully transparent: filled with white, inverted to black, flagged as blank
        assert any("filled with white (nothing is opaque)" in n for n in out.notes) and out.inverted
        assert out.warnings and "blank" in out.warnings[0] and out.warnings[0] in out.notes
    if mode == "CMYK":
        assert any("CMYK" in n for n in out.notes)


def test_upload_animated_takes_the_first_frame_with_a_note():
    frames = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = prepare_image(data, invert=False)
    assert any("3 frames" in n and "first frame" in n for n in out.notes)
    assert out.array.max() == 0  # the first frame is black


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "not an image"),
    (_png_header_only(30000, 30000), "too many pixels"),   # Pillow's own decompression-bomb guard
    (_png_header_only(8000, 6000), "48.0 megapixels"),     # our 40 MP limit, checked before decoding
    (_png_header_only(40, 40), "damaged or truncated"),
])
def test_upload_rejections_say_why(data, message):
    with pytest.raises(ImageRejected, match=message):
        prepare_image(data)


def test_upload_size_limit_in_bytes():
    with pytest.raises(ImageRejected, match="MB"):
        noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
        prepare_image(_bytes(Image.fromarray(noise)), max_bytes=1000)


# ----------------------------------------------------------------------------- explanations

@pytest.fixture(scope="module")
def perceiver():
    torch.manual_seed(0)
    return create_model("dynperceiver_tiny").eval()


def test_traced_early_exit_matches_real_early_exit(perceiver):
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    thresholds = np.array([0.12, 0.11, 0.12, -np.inf])
    _, exits = early_exit(perceiver, x, thresholds, "max_prob")
    for i in range(len(x)):
        trace = explain.traced_early_exit(perceiver, x[i, 0].numpy(), thresholds, "max_prob")
        assert trace.exit == int(exits[i]) and trace.computed == trace.exit + 1
        assert trace.scores[-1] >= thresholds[trace.exit] or trace.exit == 3
        full = explain.traced_early_exit(perceiver, x[i, 0].numpy(), thresholds, "max_prob", run_all=True)
        assert full.exit == trace.exit and full.computed == 4


def test_perceiver_attention_views_and_attribution(perceiver):
    img = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    views = explain.attention_views(perceiver, img)
    assert [v.title.split(":")[0] for v in views] == ["x2z", "z2x"]
    for v in views:
        assert v.maps and all(m.ndim == 2 and (m >= 0).all() for m in v.maps.values())
    for method in explain.ATTRIBUTION_METHODS:
        amap, target = explain.attribution(perceiver, img, 1, method=method, n_steps=4)
        assert amap.shape == (28, 28) and np.isfinite(amap).all() and 0 <= target < 10
    with pytest.raises(ValueError, match="out of range"):
        explain.attribution(perceiver, img, 4)


def test_vit_attention_follows_the_path_to_each_exit():
    torch.manual_seed(0)
    vit = create_model("mevit_tiny").eval()
    views = explain.attention_views(vit, np.zeros((28, 28), np.float32))
    assert [v.title for v in views] == ["class-token attention before each exit", "attention rollout to each exit"]
    assert list(views[1].maps) == list(vit.exit_names)
    # the path to exit k: backbone blocks up to k and exit k's own branch, not earlier branches
    w = torch.full((1, 1, 5, 5), 0.2)
    maps = [AttentionMap("block0", "vit", 0, w, (2, 2), "both", 1), AttentionMap("e0_attn0", "vit", 0, w, (2, 2), "both", 1),
            AttentionMap("block1", "vit", 1, w, (2, 2), "both", 1), AttentionMap("e1_attn0", "vit", 1, w, (2, 2), "both", 1)]
    assert [m.name for m in explain.vit_path(maps, 1, ["e0", "e1"])] == ["block0", "block1", "e1_attn0"]
    assert [m.name for m in explain.vit_path(maps, 0, ["e0", "e1"])] == ["block0", "e0_attn0"]
    # the DVT cascade: each exit rolls out its own token grid
    dvt = create_model("dvt_tiny").eval()
    roll = explain.attention_views(dvt, np.zeros((28, 28), np.float32))[1].maps
    assert [m.shape for m in roll.values()] == [(4, 4), (7, 7), (14, 14)]
    cnn = create_model("static_cnn", backbone="resnet10_quarter").eval()
    assert explain.attention_views(cnn, np.zeros((28, 28), np.float32)) == []


# ----------------------------------------------------------------------------- words for surprising budgets

def _pair(name):
    from dynexit import zoo
    if not zoo.available(name):
        pytest.skip("the shipped zoo is not here")
    return zoo.load_table(name, "val"), zoo.load_table(name, "test")


def test_spending_note_names_what_the_rule_spends():
    val, test = _pair("multiexit_cnn_fmnist")
    top = logic.budget_view(val, test, solvers.DEFAULT, "max_prob", float(val.costs[-1]))
    assert top.val_cost < val.costs[-1] - 1  # spending more lowers val accuracy on this model
    assert top.spending_note == (f"spends {top.val_cost:.1f} of the {val.costs[-1]:.1f} MFLOPs allowed: spending more "
                                 "did not help on the validation images")
    spent = logic.budget_view(val, test, "geometric", "max_prob", 25.0)  # MSDNet's rule spends all of it
    assert spent.spending_note is None


def test_accuracy_dip_note_only_when_a_smaller_budget_was_better_on_test():
    val, test = _pair("dvt_fmnist_noreuse")
    curve = {"budgets": [2.0, 5.0, 10.0], "cost": [2.0, 5.0, 10.0], "accuracy": [0.80, 0.90, 0.85]}
    view = logic.budget_view(val, test, "geometric", "max_prob", 10.0)
    view.result.correct[:] = False
    view.result.correct[: int(0.85 * len(test))] = True  # 85% at 10 MFLOPs
    note = logic.accuracy_dip_note(view, curve)
    assert note.startswith("At a smaller budget (5.0 MFLOPs) this solver is more accurate on the test images (90.00% vs")
    assert logic.accuracy_dip_note(view, {**curve, "accuracy": [0.80, 0.85, 0.85]}) is None  # within the tolerance
    assert logic.accuracy_dip_note(view, {**curve, "budgets": [10.0, 12.0, 14.0]}) is None  # nothing smaller


def test_zoom_range_frames_one_models_accuracies_in_percent():
    assert logic.zoom_range([0.93, 0.94], np.array([0.935, np.nan]), pad=0.5) == pytest.approx([92.5, 94.5])
    with pytest.raises(ValueError, match="no finite"):
        logic.zoom_range([np.nan])
