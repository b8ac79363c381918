"""Plotly figures of early exiting, shared by the app, the notebooks and ``dynexit report``.

Computing lives in :mod:`dynexit.metrics`, :mod:`dynexit.solvers` and the models; these helpers
only draw, and return ``plotly.graph_objects.Figure`` objects (they never show them). Colours are
the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), safe for colour-blind readers;
right / wrong use blue / vermillion, never red / green.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dynexit.data import get_dataset

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
RIGHT, WRONG, ORACLE, CURRENT = "#0072B2", "#D55E00", "#7f7f7f", "#000000"
COST_AXIS = "mean MFLOPs per image"


_AXIS = dict(automargin=True, gridcolor="#EBF0F8", linecolor="#EBF0F8", ticks="", title=dict(standoff=15),
             zerolinecolor="#EBF0F8", zerolinewidth=2)
# plotly_white's look, only the parts these figures use, with the Okabe-Ito colourway. Assigning the
# full "plotly_white" template costs 20-30 ms per figure (it is validated every time); this one ~1 ms,
# which matters to the app (a slider move redraws about ten figures).
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(color="#2a3f5f"), hoverlabel=dict(align="left"), paper_bgcolor="white", plot_bgcolor="white",
    title=dict(x=0.05), xaxis=_AXIS, yaxis=_AXIS, colorway=PALETTE, hovermode="closest"))


def _layout(fig: go.Figure, title: str | None, height: int = 420, **kw) -> go.Figure:
    fig.layout.template = TEMPLATE
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=60 if title else 30, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0), **kw)
    return fig


def chromium_path() -> str | None:
    """The system Chromium / Chrome (``$DYNEXIT_CHROMIUM`` first), which PNG export and the browser tests drive."""
    import os
    import shutil
    from pathlib import Path

    env = os.environ.get("DYNEXIT_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def color(i: int) -> str:
    """The ``i``-th colour of the Okabe-Ito palette (cycling), as ``#RRGGBB``."""
    return PALETTE[i % len(PALETTE)]


def class_names(dataset: str = "fashion-mnist", short: bool = False) -> tuple[str, ...]:
    """A registered dataset's class names for labels: the full names, or ``short`` ones (<= 8
    characters, for tick labels). ValueError for an unknown dataset (see :func:`dynexit.data.get_dataset`)."""
    spec = get_dataset(dataset)
    return spec.short_names if short else spec.class_names


FASHION_MNIST_CLASSES = class_names("fashion-mnist")  # the notebooks' labels


# ----------------------------------------------------------------------------- accuracy vs cost

def accuracy_vs_cost(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                     anytime: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[str]]] | None = None,
                     oracle: tuple[Sequence[float], Sequence[float]] | None = None,
                     current: tuple[float, float] | None = None, title: str | None = None,
                     percent: bool = True, unit: str = "MFLOPs") -> go.Figure:
    """Accuracy against mean cost per image (x in ``unit``: "MFLOPs", or "ms" from a latency profile).

    ``curves``: label -> (costs, accuracies) of budgeted (threshold) policies, drawn as lines;
    ``anytime``: label -> (exit costs, exit accuracies, exit names), drawn as markers (every sample
    leaves at that exit); ``oracle``: the label-aware ceiling, dashed; ``current``: one highlighted
    point (the slider's budget). Accuracies are fractions in [0, 1], drawn in % when ``percent``.
    Exit names right of the middle of the cost range are written to the left of their marker, so
    the last exit's name is not cut at the plot's right edge.
    """
    scale = 100.0 if percent else 1.0
    every_x = [float(v) for _, (x, *_) in {**(curves or {}), **(anytime or {})}.items() for v in x]
    middle = (min(every_x) + max(every_x)) / 2 if every_x else 0.0
    fig = go.Figure()
    for i, (label, (x, y)) in enumerate((curves or {}).items()):
        fig.add_trace(go.Scatter(x=list(x), y=np.asarray(y) * scale, mode="lines+markers", name=label,
                                 line=dict(color=color(i), width=2), marker=dict(size=5),
                                 hovertemplate="%{x:.2f} " + unit + "<br>%{y:.2f}%<extra>" + label + "</extra>"))
    for i, (label, (x, y, names)) in enumerate((anytime or {}).items()):
        fig.add_trace(go.Scatter(x=list(x), y=np.asarray(y) * scale, mode="markers+text", name=label,
                                 text=[plain(n) for n in names], textfont=dict(size=10),
                                 textposition=["bottom left" if v > middle else "bottom right" for v in x],
                                 marker=dict(symbol="diamond", size=10, color=color(i), line=dict(width=1, color="white")),
                                 hovertemplate="%{text}: %{x:.2f} " + unit + ", %{y:.2f}%<extra>" + label + "</extra>"))
    if oracle is not None:
        fig.add_trace(go.Scatter(x=list(oracle[0]), y=np.asarray(oracle[1]) * scale, mode="lines", name="oracle (knows the labels)",
                                 line=dict(color=ORACLE, dash="dash")))
    if current is not None:
        fig.add_trace(go.Scatter(x=[current[0]], y=[current[1] * scale], mode="markers", name="this budget",
                                 marker=dict(symbol="star", size=16, color=CURRENT)))
    fig.update_xaxes(title=COST_AXIS.replace("MFLOPs", unit))
    fig.update_yaxes(title="accuracy (%)" if percent else "accuracy")
    return _layout(fig, title, showlegend=True)


# ----------------------------------------------------------------------------- where samples leave

def plain(text) -> str:
    """A user's string (class or exit name) for plotly text, shown as written: plotly reads ``<b>``,
    ``<br>`` and other tags in labels, so ``<``, ``>`` and ``&`` are escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cost_text(x: float, decimals: int = 1) -> str:
    """A cost for labels: ``decimals`` decimals from 1 up, thousands separated from 10,000, three
    significant digits below 1 (a table's costs may be 0.002 ms or 350,000 MFLOPs)."""
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 10_000:
        return f"{x:,.0f}"
    return f"{x:.{decimals}f}" if abs(x) >= 1 else f"{x:.3g}"


_TICK_CHARS = 40  # characters of costs that fit under a histogram's bars on a ~300 px plot (7 exits x "145.2")


def exit_histogram(histogram_correct: Sequence[int], histogram_wrong: Sequence[int], exit_names: Sequence[str],
                   costs: Sequence[float] | None = None, title: str | None = None, unit: str = "MFLOPs") -> go.Figure:
    """Samples leaving at each exit (K counts each), split into right and wrong (stacked bars).

    ``costs``: the K cumulative costs per image in ``unit`` ("MFLOPs", or "ms" from a latency profile).
    Each bar is labelled with the exit's number and, under it, its cost (the unit is in the axis title):
    short labels that stay horizontal and apart for 7 exits on a 300 px plot, where names (up to 20
    characters, e.g. ``block3_cnn_project``) overlapped. When the costs would not fit under the bars
    (more than ``_TICK_CHARS`` characters of them: 12 exits, or costs like 350,000), the labels are the
    exit numbers alone. The hover gives the exit's full name and cost. With no ``costs`` the labels are
    the exit names, wrapped.
    """
    if costs is not None:
        texts = [cost_text(c) for c in costs]
        fits = len(texts) * max(map(len, texts), default=0) <= _TICK_CHARS
        names = [f"{k + 1}<br>{t}" if fits else str(k + 1) for k, t in enumerate(texts)]
    else:
        names = ["<br>".join(plain(w) for w in textwrap.wrap(str(n).replace("_", " "), 12)) or plain(n)
                 for n in exit_names]
    full = ([f"{plain(n)} ({cost_text(c, 2)} {unit})" for n, c in zip(exit_names, costs)] if costs is not None
            else [plain(n) for n in exit_names])
    if costs is None:
        axis = "exit"
    else:
        axis = f"exit and its cumulative {unit}" if fits else "exit (hover: its cost)"
    hover = "%{customdata}: %{y:,} images %{fullData.name}<extra></extra>"
    fig = go.Figure([
        go.Bar(x=names, y=list(histogram_correct), name="right", marker_color=RIGHT, customdata=full,
               hovertemplate=hover),
        go.Bar(x=names, y=list(histogram_wrong), name="wrong", marker_color=WRONG, marker_pattern_shape="/",
               customdata=full, hovertemplate=hover),
    ])
    fig.update_layout(barmode="stack")
    # category: labels "1" ... "12" would otherwise make a numeric axis that labels only some bars;
    # tickangle left unset: plotly's "auto" tilts overlapping labels
    fig.update_xaxes(title=axis, tickfont=dict(size=11), type="category")
    fig.update_yaxes(title="images leaving here")
    return _layout(fig, title, height=360)


def exit_shares_over_budgets(budgets: Sequence[float], histograms: Sequence[Sequence[int]], exit_names: Sequence[str],
                             title: str | None = None) -> go.Figure:
    """Share of images leaving at each exit as the budget grows (DVT paper, Fig. 10 style)."""
    h = np.asarray(histograms, dtype=np.float64)
    share = 100.0 * h / h.sum(axis=1, keepdims=True)
    fig = go.Figure([go.Bar(x=[f"{b:.1f}" for b in budgets], y=share[:, k], name=name, marker_color=color(k))
                     for k, name in enumerate(exit_names)])
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="budget (" + COST_AXIS + ")", type="category")
    fig.update_yaxes(title="share of images (%)", range=[0, 100])
    return _layout(fig, title, height=360)


def per_exit_accuracy(models: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[str]]],
                      title: str | None = None, unit: str = "MFLOPs") -> go.Figure:
    """The anytime view: each exit's accuracy (every image stops there) against its cost (in ``unit``)."""
    fig = go.Figure()
    for i, (label, (x, y, names)) in enumerate(models.items()):
        fig.add_trace(go.Scatter(x=list(x), y=100 * np.asarray(y), mode="lines+markers", name=label,
                                 text=[plain(n) for n in names], line=dict(color=color(i)), marker=dict(size=8),
                                 hovertemplate="%{text}: %{x:.2f} " + unit + ", %{y:.2f}%<extra>" + label + "</extra>"))
    fig.update_xaxes(title=f"cumulative {unit} per image at the exit")
    fig.update_yaxes(title="accuracy when every image stops here (%)")
    return _layout(fig, title)


# ----------------------------------------------------------------------------- one image

def confidence_trace(confidence: Sequence[float], thresholds: Sequence[float], exit_names: Sequence[str],
                     exit_taken: int, predictions: Sequence[str], right: Sequence[bool],
                     criterion: str = "confidence", title: str | None = None) -> go.Figure:
    """One image's exit score at every exit against the thresholds; the exit it takes is marked.

    ``right[k]``: True (blue), False (vermillion, "(wrong)"), or None when the label is unknown (gray).
    """
    # the exit it leaves at: bold tick label and a black outline (no arrow to collide with the bar texts)
    names = [f"<b>{plain(n)}</b><br><b>leaves here</b>" if k == exit_taken else plain(n) for k, n in enumerate(exit_names)]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=list(confidence), name=criterion,
                         marker_color=[ORACLE if r is None else RIGHT if r else WRONG for r in right],
                         marker_line=dict(color=CURRENT, width=[3 if k == exit_taken else 0 for k in range(len(names))]),
                         text=[f"{plain(p)}{'' if r is None or r else ' (wrong)'}" for p, r in zip(predictions, right)],
                         # inside the bar, at its foot: above the bar or at its top, the label collided with
                         # the threshold marks, which sit near the bars' tops
                         textposition="inside", insidetextanchor="start", textangle=0,
                         textfont=dict(color="white"),
                         hovertemplate="%{x}: %{y:.3f}<br>predicts %{text}<extra></extra>"))
    th = [None if t is None or not np.isfinite(t) else float(t) for t in thresholds]
    fig.add_trace(go.Scatter(x=names, y=th, mode="markers+lines", name="threshold", line=dict(color=CURRENT, dash="dot"),
                             marker=dict(symbol="line-ew-open", size=24, line=dict(width=3))))
    fig.update_xaxes(title="exit")
    fig.update_yaxes(title=criterion)
    return _layout(fig, title, height=340)


def image_grid(images: np.ndarray, titles: Sequence[str] | None = None, borders: Sequence[str] | None = None,
               cols: int = 8, title: str | None = None, size: int = 110) -> go.Figure:
    """Small gray images in a grid, each with a caption and an optional coloured frame."""
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        fig = go.Figure()
        fig.add_annotation(text="no images here", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return _layout(fig, title, height=120)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles is not None else None,
                        horizontal_spacing=0.01, vertical_spacing=0.12 / rows if rows > 1 else 0.0)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        fig.add_trace(go.Heatmap(z=np.asarray(img)[::-1], colorscale="gray", showscale=False,
                                 zmin=0, zmax=1, hoverinfo="skip"), row=r + 1, col=c + 1)
        if borders is not None and borders[i]:
            fig.add_shape(type="rect", xref=f"x{i + 1 if i else ''} domain", yref=f"y{i + 1 if i else ''} domain",
                          x0=0, y0=0, x1=1, y1=1, line=dict(color=borders[i], width=4))
    fig.update_xaxes(visible=False, scaleanchor=None)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    return _layout(fig, title, height=rows * size + (60 if title else 30), showlegend=False)


def attention_overlays(image: np.ndarray, maps: Mapping[str, np.ndarray], title: str | None = None,
                       size: int = 220) -> go.Figure:
    """The image, then each attention / attribution map upsampled onto it (one panel per map)."""
    image = np.asarray(image, dtype=np.float64)
    names = ["input"] + list(maps)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.02)
    fig.add_trace(go.Heatmap(z=image[::-1], colorscale="gray", showscale=False, zmin=0, zmax=1, hoverinfo="skip"),
                  row=1, col=1)
    h, w = image.shape
    for i, (name, m) in enumerate(maps.items(), start=2):
        m = np.asarray(m, dtype=np.float64)
        up = np.kron(m, np.ones((int(np.ceil(h / m.shape[0])), int(np.ceil(w / m.shape[1])))))[:h, :w]
        span = up.max() - up.min()
        up = (up - up.min()) / span if span > 0 else np.zeros_like(up)
        fig.add_trace(go.Heatmap(z=image[::-1], colorscale="gray", showscale=False, zmin=0, zmax=1, hoverinfo="skip"),
                      row=1, col=i)
        fig.add_trace(go.Heatmap(z=up[::-1], colorscale="Viridis", opacity=0.6, showscale=i == len(names), zmin=0, zmax=1,
                                 colorbar=dict(title="relative<br>weight", thickness=10),
                                 hovertemplate="weight %{z:.2f}<extra>" + name + "</extra>"), row=1, col=i)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    return _layout(fig, title, height=size + 70, showlegend=False, width=None)


# ----------------------------------------------------------------------------- galleries (fast: one image trace)

def _frame(tile: np.ndarray, rgb: tuple[int, int, int], width: int) -> np.ndarray:
    tile[:width], tile[-width:], tile[:, :width], tile[:, -width:] = rgb, rgb, rgb, rgb
    return tile


def _hex_rgb(c: str) -> tuple[int, int, int]:
    c = c.lstrip("#")
    return tuple(int(c[i:i + 2], 16) for i in (0, 2, 4))


def image_mosaic(images: np.ndarray, right: Sequence[bool | None] | None = None, cols: int = 8, scale: int = 3,
                 gap: int = 6, caption_px: int = 16) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Gray (N, h, w) or RGB (N, h, w, 3) images in [0, 1] tiled into one RGB uint8 mosaic.

    Each tile is upscaled ``scale`` times (nearest neighbour, so pixels stay visible) and framed
    blue when ``right[i]`` is True, vermillion (with a thicker frame) when False, not at all when
    None; an all-NaN image leaves its place blank. Returns the mosaic and, per image, the (x, y)
    pixel where its caption goes.
    """
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape[:3]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    th, tw = h * scale + 2 * gap, w * scale + 2 * gap
    mosaic = np.full((rows * (th + caption_px), cols * tw, 3), 255, dtype=np.uint8)
    spots = []
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y0, x0 = r * (th + caption_px), c * tw
        if np.isnan(img).all():  # a blank place (e.g. to start a new row)
            continue
        tile = np.full((th, tw, 3), 255, dtype=np.uint8)
        px = (np.clip(img, 0, 1) * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        tile[gap:gap + h * scale, gap:gap + w * scale] = px[..., None] if px.ndim == 2 else px
        flag = None if right is None else right[i]
        if flag is not None:  # a frame around the image, inside the tile: white space stays between tiles
            width = max(1, gap // 3) if flag else max(2, 2 * gap // 3)
            inner = tile[gap - width:th - gap + width, gap - width:tw - gap + width]
            _frame(inner, _hex_rgb(RIGHT if flag else WRONG), width)
        mosaic[y0:y0 + th, x0:x0 + tw] = tile
        spots.append((x0 + tw / 2, y0 + th + caption_px / 2))
    return mosaic, spots


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png;base64`` URI (plotly Image traces, HTML)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery(images: np.ndarray, captions: Sequence[str] | None = None, right: Sequence[bool | None] | None = None,
            cols: int = 8, title: str | None = None, scale: int = 3) -> go.Figure:
    """A gallery of small images, gray (N, h, w) or RGB (N, h, w, 3): one PNG image trace, captions under the tiles.

    Much faster to build and send than :func:`image_grid` (one trace instead of one subplot per
    image). ``right``: True frames a tile blue (right), False vermillion and thicker (wrong).
    """
    images = np.asarray(images)
    if len(images) == 0:
        fig = go.Figure()
        fig.add_annotation(text="no images here", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return _layout(fig, title, height=90 + (30 if title else 0))
    mosaic, spots = image_mosaic(images, right, cols=cols, scale=scale)
    hgt, wid = mosaic.shape[:2]
    traces = [go.Image(source=png_data_uri(mosaic), hoverinfo="skip")]
    if captions is not None:  # one text trace: much cheaper than one annotation per image
        traces.append(go.Scatter(x=[x for x, _ in spots], y=[y for _, y in spots], text=[plain(c) for c in captions], mode="text",
                                 textfont=dict(size=10, color="#2a3f5f"), hoverinfo="skip"))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title=title, height=hgt + (50 if title else 20), showlegend=False,
        margin=dict(l=5, r=5, t=40 if title else 5, b=5),
        xaxis=dict(visible=False, range=[0, wid], constrain="domain"),
        yaxis=dict(visible=False, range=[hgt, 0], scaleanchor="x", constrain="domain")))


# ----------------------------------------------------------------------------- attribution, speed

def attribution_map(image: np.ndarray, attribution: np.ndarray, title: str | None = None, size: int = 240) -> go.Figure:
    """The image and a signed attribution map (orange: raises the class score, purple: lowers it)."""
    image = np.asarray(image, dtype=np.float64)
    a = np.asarray(attribution, dtype=np.float64)
    span = float(np.abs(a).max()) or 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=["input", "attribution"], horizontal_spacing=0.04)
    fig.add_trace(go.Heatmap(z=image[::-1], colorscale="gray", showscale=False, zmin=0, zmax=1, hoverinfo="skip"),
                  row=1, col=1)
    fig.add_trace(go.Heatmap(z=a[::-1] / span, colorscale="PuOr_r", zmid=0, zmin=-1, zmax=1,
                             colorbar=dict(title="relative<br>attribution", thickness=10),
                             hovertemplate="%{z:.2f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    for i in (1, 2):
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    return _layout(fig, title, height=size + 70, showlegend=False)


def speedup_bars(models: Sequence[str], series: Mapping[str, Sequence[float]], title: str | None = None) -> go.Figure:
    """Grouped bars per model, e.g. theoretical vs measured speedups (x times faster than the full model)."""
    fig = go.Figure([go.Bar(x=list(models), y=list(v), name=label, marker_color=color(i),
                            text=[f"{x:.2f}x" if x == x else "" for x in v], textposition="outside")
                     for i, (label, v) in enumerate(series.items())])
    fig.add_hline(y=1.0, line=dict(color=CURRENT, dash="dot"))  # named in the axis title: a label here hid bars
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="model")
    fig.update_yaxes(title="speedup over the full model (x; dotted: 1x)", rangemode="tozero")
    return _layout(fig, title, height=360)
