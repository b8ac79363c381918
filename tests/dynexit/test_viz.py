"""viz: every plotting helper returns a figure (never shows it) and labels its axes and exits."""

import numpy as np
import plotly.graph_objects as go
import pytest

from dynexit import viz

EXITS = ["latent_stage3", "latent_stage4", "cnn_head", "fusion"]


@pytest.fixture(autouse=True)
def never_shown(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a viz helper showed its figure")
    monkeypatch.setattr(go.Figure, "show", refuse)


def _rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def _titles(fig):
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def test_accuracy_vs_cost_draws_every_series_on_labelled_axes():
    fig = viz.accuracy_vs_cost({"geometric": ([1, 2, 3], [0.8, 0.85, 0.9])},
                               anytime={"exits": ([1, 3], [0.7, 0.9], ["a", "b"])}, oracle=([1, 3], [0.9, 0.95]),
                               current=(2.0, 0.85), title="t")
    assert isinstance(fig, go.Figure) and fig.layout.title.text == "t"
    assert _titles(fig) == (viz.COST_AXIS, "accuracy (%)")
    assert [t.name for t in fig.data] == ["geometric", "exits", "oracle (knows the labels)", "this budget"]
    assert list(fig.data[0].y) == pytest.approx([80, 85, 90]) and list(fig.data[1].text) == ["a", "b"]
    assert _titles(viz.accuracy_vs_cost({"g": ([1], [0.5])}, percent=False))[1] == "accuracy"


def test_exit_histogram_and_shares_name_every_exit():
    fig = viz.exit_histogram([5, 3, 2, 1], [1, 1, 0, 2], EXITS, costs=[1.0, 2.0, 3.0, 4.0])
    assert [t.name for t in fig.data] == ["right", "wrong"]
    assert list(fig.data[0].y) == [5, 3, 2, 1] and fig.data[0].x[0] == "1<br>1.0"
    assert _titles(fig) == ("exit and its cumulative MFLOPs", "images leaving here")
    assert fig.data[0].customdata[0] == "latent_stage3 (1.00 MFLOPs)"  # the full name and unit in the hover
    assert fig.layout.xaxis.tickangle is None  # plotly's "auto": it tilts the labels when they would overlap
    shares = viz.exit_shares_over_budgets([1.0, 2.0], [[3, 1, 0, 0], [1, 1, 1, 1]], EXITS)
    assert [t.name for t in shares.data] == EXITS
    assert list(shares.data[0].y) == pytest.approx([75, 25]) and shares.layout.yaxis.range == (0, 100)


def test_exit_histogram_drops_costs_that_would_crowd_its_labels():
    """12 exits, or costs like 350,000: the tick labels are the exit numbers, the costs in the hover."""
    many = viz.exit_histogram([1] * 12, [0] * 12, [f"e{k}" for k in range(12)], costs=np.arange(1.0, 13.0))
    assert list(many.data[0].x) == [str(k) for k in range(1, 13)]
    assert _titles(many)[0] == "exit (hover: its cost)"
    assert many.layout.xaxis.type == "category"  # every bar labelled, not a numeric axis's round values
    assert many.data[0].customdata[11] == "e11 (12.00 MFLOPs)"
    huge = viz.exit_histogram([1] * 7, [0] * 7, list("abcdefg"), costs=np.linspace(5e4, 3.5e5, 7))
    assert huge.data[0].x[0] == "1"
    seven = viz.exit_histogram([1] * 7, [0] * 7, list("abcdefg"), costs=np.linspace(100.5, 145.2, 7))
    assert seven.data[0].x[6] == "7<br>145.2"  # the zoo's models keep their costs under the bars
    assert len(viz.exit_histogram([], [], [], costs=[]).data[0].x) == 0


def test_cost_figures_speak_the_unit_they_are_given():
    fig = viz.accuracy_vs_cost({"g": ([1, 2], [0.8, 0.9])}, anytime={"exits": ([1, 2], [0.7, 0.9], ["a", "b"])},
                               unit="ms")
    assert _titles(fig)[0] == "mean ms per image"
    assert "ms" in fig.data[0].hovertemplate and "MFLOPs" not in fig.data[0].hovertemplate + fig.data[1].hovertemplate
    hist = viz.exit_histogram([1, 2], [0, 1], ["a", "b"], costs=[0.5, 1.5], unit="ms")
    assert _titles(hist)[0] == "exit and its cumulative ms" and hist.data[1].customdata[1] == "b (1.50 ms)"
    names = viz.exit_histogram([1], [0], ["latent_stage3"])
    assert _titles(names)[0] == "exit" and names.data[0].x[0] == "latent<br>stage3"


def test_exit_names_right_of_the_middle_are_written_leftwards():
    """The last exit's name must not be cut at the plot's right edge (issue 18)."""
    fig = viz.accuracy_vs_cost(anytime={"exits": ([1, 2, 9, 10], [0.5, 0.6, 0.7, 0.8], list("abcd"))})
    assert list(fig.data[0].textposition) == ["bottom right", "bottom right", "bottom left", "bottom left"]


def test_per_exit_accuracy_and_speedup_bars():
    fig = viz.per_exit_accuracy({"dp": ([1, 2], [0.5, 0.75], ["e1", "e2"])})
    assert fig.data[0].name == "dp" and list(fig.data[0].y) == pytest.approx([50, 75]) and list(fig.data[0].text) == ["e1", "e2"]
    assert _titles(fig) == ("cumulative MFLOPs per image at the exit", "accuracy when every image stops here (%)")
    bars = viz.speedup_bars(["dp", "cnn"], {"batch 1": [2.0, 1.5], "batch 256": [1.8, 1.2]})
    assert [t.name for t in bars.data] == ["batch 1", "batch 256"] and list(bars.data[0].x) == ["dp", "cnn"]
    assert _titles(bars) == ("model", "speedup over the full model (x; dotted: 1x)")


def test_confidence_trace_marks_the_exit_taken():
    fig = viz.confidence_trace([0.2, 0.5, 0.9, 0.95], [0.6, 0.7, 0.8], EXITS, exit_taken=2,
                               predictions=["Bag", "Bag", "Coat", "Coat"], right=[False, False, True, None])
    assert fig.data[0].x[2] == "<b>cnn_head</b><br><b>leaves here</b>" and fig.data[0].x[0] == "latent_stage3"
    assert fig.data[0].textposition == "inside"  # not above the bar, where the threshold marks are
    assert list(fig.data[0].text) == ["Bag (wrong)", "Bag (wrong)", "Coat", "Coat"]
    assert list(fig.data[0].marker.color) == [viz.WRONG, viz.WRONG, viz.RIGHT, viz.ORACLE]
    assert _titles(fig) == ("exit", "confidence")


def test_image_helpers_return_figures_with_one_panel_per_image_or_map():
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 28, 28))
    grid = viz.image_grid(imgs, titles=["a", "b", "c"], borders=[viz.RIGHT, None, viz.WRONG])
    assert len(grid.data) == 3 and [a.text for a in grid.layout.annotations] == ["a", "b", "c"]
    assert viz.image_grid(np.zeros((0, 28, 28))).layout.annotations[0].text == "no images here"
    overlays = viz.attention_overlays(imgs[0], {"x2z1": rng.random((7, 7)), "z2x2": rng.random((14, 14))})
    assert [a.text for a in overlays.layout.annotations] == ["input", "x2z1", "z2x2"]
    attr = viz.attribution_map(imgs[0], rng.standard_normal((28, 28)))
    assert [a.text for a in attr.layout.annotations] == ["input", "attribution"]
    gal = viz.gallery(imgs, captions=["x", "y", "z"], right=[True, False, None], cols=2)
    assert isinstance(gal.data[0], go.Image) and gal.data[0].source.startswith("data:image/png;base64,")
    assert list(gal.data[1].text) == ["x", "y", "z"]


def test_image_mosaic_frames_and_caption_spots():
    mosaic, spots = viz.image_mosaic(np.full((3, 4, 4), 0.5), right=[True, False, None], cols=2, scale=2, gap=6)
    assert mosaic.dtype == np.uint8 and mosaic.shape == (2 * (4 * 2 + 12 + 16), 2 * (4 * 2 + 12), 3)
    assert len(spots) == 3
    tile_w = 4 * 2 + 12
    assert tuple(mosaic[6 - 1, 6]) == _rgb(viz.RIGHT)  # a blue frame just outside the first image
    assert tuple(mosaic[6 - 1, tile_w + 6]) == _rgb(viz.WRONG)


def test_class_names_come_from_the_dataset_registry():
    assert viz.class_names()[0] == "T-shirt/top" and viz.class_names(short=True)[-1] == "Boot"
    assert viz.FASHION_MNIST_CLASSES == viz.class_names("fashion-mnist")
    assert viz.class_names("digits") == tuple("0123456789")
    with pytest.raises(ValueError, match="unknown dataset"):
        viz.class_names("no-such-dataset")


def test_user_names_are_shown_as_written_not_read_as_markup():
    fig = viz.confidence_trace(np.array([0.5, 0.9]), np.array([0.6, -np.inf]), ["<b>a</b>", "b&c"], 1,
                               ["<i>cat</i>", "dog"], [True, False])
    bar = fig.data[0]
    assert list(bar.x) == ["&lt;b&gt;a&lt;/b&gt;", "<b>b&amp;c</b><br><b>leaves here</b>"]
    assert bar.text[0] == "&lt;i&gt;cat&lt;/i&gt;"
    assert viz.plain("x<y") == "x&lt;y"
