"""``dynexit report``: the results page (docs/results.md and its PNG figures) from the shipped zoo.

Every number comes from the shipped ExitTables and bench results in ``data/zoo`` (see
:mod:`dynexit.zoo`): thresholds are fitted on the val table, accuracy and cost read on the test
table, never tuned on test. The page checks the seed papers' claims where the zoo allows:

- Dynamic Perceiver (Han et al., ICCV 2023): its curve at or above the conventional multi-exit CNN's
  at every budget both can spend, its last exit at least as accurate as the static CNN;
- DVT (Wang et al., NeurIPS 2021): reuse beats no reuse at exits 2 and 3 (Table 6), exit shares
  across budgets (Fig. 10), exit criteria compared (Table 9);
- Multi-Exit ViT (Bakhtiarnia et al., 2021): the branch study with practical exits (Fig. 5).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

import numpy as np

from dynexit import metrics, solvers, zoo

CRITERIA = ("max_prob", "entropy", "margin", "patience", "random")
N_BUDGETS = 40  # the solver benchmark's protocol (benchmarks/solvers.py, metrics.compare_solvers)
TIE = metrics.TIE  # 0.1 point


def _pct(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}"


def _md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def model_results(name: str) -> dict:
    """Everything the page needs about one zoo model, computed from its val / test tables."""
    val, test = zoo.load_table(name, "val"), zoo.load_table(name, "test")
    out = {"name": name, "exit_names": list(test.exit_names), "costs": test.costs.tolist(),
           "test_exit_accuracy": test.exit_accuracy().tolist(), "val_exit_accuracy": val.exit_accuracy().tolist(),
           "bench": zoo.load_bench(name)}
    if test.num_exits == 1:
        return out
    budgets = metrics.budget_grid(val, N_BUDGETS)
    # the library's one comparison: fitted on val at N_BUDGETS budgets, compared at matched test cost
    comparison = metrics.compare_solvers(val, test, [solvers.DEFAULT], reference="geometric", n_budgets=N_BUDGETS)
    out["curves"] = {s: c.curve.to_dict() for s, c in comparison.items()}
    out["oracle"] = {"costs": budgets.tolist(), "accuracy": metrics.oracle_curve(test, budgets).tolist()}
    d = comparison[solvers.DEFAULT].curve
    out["default_vs_geometric"] = comparison[solvers.DEFAULT].to_dict()
    # the cheapest budget (fitted on val) whose test accuracy is within 0.1 pt of the final exit
    final = test.exit_accuracy()[-1]
    ok = [i for i, a in enumerate(d.test_accuracy) if a >= final - TIE]
    out["match_final"] = None if not ok else {"budget": float(budgets[ok[0]]), "test_cost": d.test_cost[ok[0]],
                                              "test_accuracy": d.test_accuracy[ok[0]],
                                              "share_of_full": d.test_cost[ok[0]] / test.costs[-1]}
    # exit shares across budgets (DVT Fig. 10)
    shares = []
    for b in budgets[:: max(1, N_BUDGETS // 8)]:
        r = solvers.make(solvers.DEFAULT, float(b)).fit(val).evaluate(test)
        shares.append({"budget": float(b), "histogram": r.histogram.tolist()})
    out["exit_shares"] = shares
    # exit criteria (DVT Table 9): the exact Lagrangian threshold search on each criterion
    picks = [budgets[len(budgets) // 4], budgets[len(budgets) // 2], budgets[(3 * len(budgets)) // 4]]
    rows = {}
    for crit in CRITERIA:
        rows[crit] = [solvers.make("lagrangian", float(b), crit).fit(val).evaluate(test).accuracy for b in picks]
    rows[f"{solvers.DEFAULT} (default)"] = [solvers.make(solvers.DEFAULT, float(b)).fit(val).evaluate(test).accuracy for b in picks]
    out["criteria"] = {"budgets": [float(b) for b in picks], "accuracy": rows}
    return out


# ----------------------------------------------------------------------------- claims

def curve_above(a: dict, b: dict, tie: float = TIE) -> dict:
    """Is curve ``a`` at or above ``b`` (within ``tie``) at every budget both can spend?

    Read with :func:`dynexit.metrics.compare_at_matched_cost` (no oracle: the curves may come from two
    models' tables), from the larger of the two cheapest costs to the larger of the two costliest; a
    curve that ends earlier keeps its best accuracy beyond (it can run at any larger budget).
    ``overlap`` is False only when that range is a single cost.
    """
    lo, hi = max(min(a["test_cost"]), min(b["test_cost"])), max(max(a["test_cost"]), max(b["test_cost"]))
    if lo >= hi:
        return {"overlap": False}
    cmp = metrics.compare_at_matched_cost(a, b, tie=tie)
    return {"overlap": True, "range": cmp["cost_range"], "min_diff": cmp["worst"],
            "holds": cmp["losses"] == 0, "at_worst": cmp["worst_cost"]}


# ----------------------------------------------------------------------------- figures

def build_figures(results: dict[str, dict]) -> dict:
    """The page's plotly figures by file stem (anytime_all, curve_all, curve_NAME, shares_NAME; :mod:`dynexit.viz`)."""
    from dynexit import viz

    figs = {}
    multi = {n: r for n, r in results.items() if "curves" in r}
    for n, r in multi.items():
        curves = {f"{s} solver": (c["test_cost"], c["test_accuracy"]) for s, c in r["curves"].items()}
        figs[f"curve_{n}"] = viz.accuracy_vs_cost(
            curves, {"single exit (anytime)": (r["costs"], r["test_exit_accuracy"], r["exit_names"])},
            (r["oracle"]["costs"], r["oracle"]["accuracy"]), title=f"{n}: test accuracy vs cost (thresholds fitted on val)")
        sh = r["exit_shares"]
        figs[f"shares_{n}"] = viz.exit_shares_over_budgets([s["budget"] for s in sh], [s["histogram"] for s in sh],
                                                           r["exit_names"], title=f"{n}: where test images leave, by budget")
    if multi:
        curves = {n: (r["curves"][solvers.DEFAULT]["test_cost"], r["curves"][solvers.DEFAULT]["test_accuracy"])
                  for n, r in multi.items()}
        statics = {n: ([r["costs"][-1]], [r["test_exit_accuracy"][-1]], ["static"]) for n, r in results.items()
                   if "curves" not in r}
        figs["curve_all"] = viz.accuracy_vs_cost(curves, statics, title="All zoo models, default solver (test)")
    figs["anytime_all"] = viz.per_exit_accuracy(
        {n: (r["costs"], r["test_exit_accuracy"], r["exit_names"]) for n, r in results.items()},
        title="Per-exit accuracy and cost (every test image stops at that exit)")
    return figs


def write_pngs(figs: dict, out_dir: Path, width: int = 900, height: int = 480) -> list[Path]:
    """Write the figures as PNG with kaleido (it drives the system Chromium / Chrome)."""
    import os

    import plotly.io as pio

    from dynexit.viz import chromium_path

    out_dir.mkdir(parents=True, exist_ok=True)
    browser = chromium_path()
    if not os.environ.get("BROWSER_PATH") and browser:
        os.environ["BROWSER_PATH"] = browser  # kaleido's choreographer looks here
    paths = [out_dir / f"{k}.png" for k in figs]
    try:
        pio.write_images(list(figs.values()), [str(p) for p in paths], width=width, height=height)
    except Exception as err:  # kaleido raises several types when no browser can start
        raise RuntimeError(f"could not write PNG figures with kaleido ({err}); install Chromium "
                           "(apt-get install chromium) or Chrome, or set BROWSER_PATH") from err
    return paths


# ----------------------------------------------------------------------------- page

def _summary(results: dict[str, dict]) -> list[str]:
    """The summary section: per model its exits, full cost, final accuracy, matched cost and CPU speedup."""
    rows = []
    for n, r in results.items():
        m = r.get("match_final")
        b = r.get("bench") or {}
        t = (b.get("timings") or {}).get("batch256", {})
        rows.append([n, len(r["exit_names"]), f"{r['costs'][-1]:.2f}", _pct(r["test_exit_accuracy"][-1]),
                     "-" if m is None else f"{m['test_cost']:.2f} ({100 * m['share_of_full']:.0f}%, "
                                          f"{1 / m['share_of_full']:.2f}x)" if "curves" in r else "-",
                     "-" if not t else f"{t['measured_speedup']:.2f}x vs {b['theoretical_speedup']:.2f}x "
                                       f"({t['ratio_to_theoretical']:.2f}; {b.get('torch_threads', '?')} torch thread(s))"])
    header = ["model", "exits", "full MFLOPs", "final exit test acc (%)",
              "MFLOPs to match the final exit (within 0.1 pt; share, FLOPs speedup)",
              "measured CPU speedup, batch 256 (vs FLOPs speedup; ratio)"]
    return ["## Summary", "", _md_table(header, rows), ""]


def render(results: dict[str, dict], extras: dict, fig_dir: str = "figures") -> str:
    """The results page (Markdown) of :func:`model_results` per zoo model; figures linked under ``fig_dir``."""
    names = list(results)
    L = ["# Results: the dynexit zoo on Fashion-MNIST", "",
         f"Made by `dynexit report` on {extras['date']} ({extras['machine']}) from the shipped files in `data/zoo`. "
         "Thresholds are fitted on the validation split (5,000 images held out from training); every accuracy and "
         "cost below is measured on the 10,000 test images. Costs are multiply-adds per image counted with "
         "`torch.utils.flop_counter.FlopCounterMode` on the early-exit path (MFLOPs).", ""]
    if not names:
        return "\n".join(L + ["No zoo model is shipped yet: run `dynexit zoo reproduce NAME` first."]) + "\n"

    L += _summary(results)
    L += ["## Per-exit accuracy and cost (anytime)", "", f"![per-exit accuracy]({fig_dir}/anytime_all.png)", ""]
    for n, r in results.items():
        L += [f"**{n}**", "", _md_table(["exit", "MFLOPs", "val acc (%)", "test acc (%)"],
              [[e, f"{c:.2f}", _pct(v), _pct(t)] for e, c, v, t in
               zip(r["exit_names"], r["costs"], r["val_exit_accuracy"], r["test_exit_accuracy"])]), ""]

    multi = {n: r for n, r in results.items() if "curves" in r}
    if multi:
        L += ["## Accuracy vs MFLOPs", "",
              f"Each budgeted curve fits its thresholds on val at {N_BUDGETS} budgets between the first and the last "
              "exit's cost; the oracle sends each test image to its first correct exit (a ceiling, it knows the labels).",
              "", f"![all models]({fig_dir}/curve_all.png)", ""]
        for n in multi:
            L += [f"![{n}]({fig_dir}/curve_{n}.png)", ""]
        L += ["### Default solver vs MSDNet's geometric rule", "",
              f"Both solvers fitted on val at the {N_BUDGETS} budgets; their test curves compared at matched test cost "
              "(each read, linearly interpolated, at 100 costs both reach; a tie is within 0.1 point) by "
              "`dynexit.metrics.compare_solvers`, the comparison of the solver benchmark "
              "([solver_benchmark.md](solver_benchmark.md), every solver). Gap closed: share of the "
              "geometric-to-oracle gap the default closes (oracle limited to the same mean cost). "
              "Target: never worse beyond 0.1 point.", ""]
        L += [_md_table(["model", "wins / ties / losses (of 100 costs)", "mean (pt)", "worst (pt)", "losses at MFLOPs",
                         "gap closed (%)", "target met"], [_comparison_row(n, r["default_vs_geometric"]) for n, r in multi.items()]), ""]
        L += ["## Exit histograms across budgets", "",
              "Share of test images leaving at each exit as the budget grows (DVT paper, Fig. 10 style).", ""]
        for n in multi:
            L += [f"![{n} exit shares]({fig_dir}/shares_{n}.png)", ""]
        L += ["## Exit criteria compared", "",
              "Test accuracy (%) with thresholds from the exact Lagrangian search on each criterion, at three budgets "
              f"(DVT paper, Table 9 style); the last row is the default solver ({solvers.DEFAULT}).", ""]
        for n, r in multi.items():
            c = r["criteria"]
            L += [f"**{n}**", "", _md_table(["criterion"] + [f"{b:.1f} MFLOPs" for b in c["budgets"]],
                                            [[k] + [_pct(a) for a in v] for k, v in c["accuracy"].items()]), ""]
    L += extras.get("sections", [])
    return "\n".join(L) + "\n"


def _comparison_row(name: str, c: dict) -> list:
    loss = "-" if not c["loss_costs"] else f"{c['loss_costs'][0]:.1f}-{c['loss_costs'][1]:.1f}"
    gap = "n/a" if c["gap_closed"] is None else _pct(c["gap_closed"], 1)
    return [name, f"{c['wins']} / {c['ties']} / {c['losses']}", f"{100 * c['mean_gain']:+.2f}",
            f"{100 * c['worst']:+.2f}", loss, gap, "yes" if c["worst"] >= -TIE else "**no**"]


def claims_sections(results: dict[str, dict]) -> list[str]:
    """The papers' claims, measured (sections appended to the page)."""
    L = []
    dp, cnn, static = (results.get(n) for n in ("dynperceiver_fmnist", "multiexit_cnn_fmnist", "static_cnn_fmnist"))
    if dp and cnn and "curves" in dp and "curves" in cnn:
        above = curve_above(dp["curves"][solvers.DEFAULT], cnn["curves"][solvers.DEFAULT])
        L += ["## Dynamic Perceiver vs conventional multi-exit CNN vs static CNN", "",
              "Same half-width ResNet-18 backbone and training recipe for all three (Dyn-Perceiver paper, Fig. 1).", ""]
        if above.get("overlap"):
            L += [f"- Curve at or above the multi-exit CNN at every budget both can spend "
                  f"({above['range'][0]:.1f}-{above['range'][1]:.1f} MFLOPs): **{'holds' if above['holds'] else 'does not hold'}** "
                  f"(smallest difference {100 * above['min_diff']:+.2f} pt at {above['at_worst']:.1f} MFLOPs)."]
        if static:
            a, s = dp["test_exit_accuracy"][-1], static["test_exit_accuracy"][-1]
            L += [f"- Last exit at least as accurate as the static CNN: **{'holds' if a >= s else 'does not hold'}** "
                  f"({_pct(a)}% vs {_pct(s)}%; multi-exit CNN last exit {_pct(cnn['test_exit_accuracy'][-1])}%)."]
        L += [""]
    dvt, noreuse = results.get("dvt_fmnist"), results.get("dvt_fmnist_noreuse")
    if dvt and noreuse:
        rows = [[e, f"{c:.2f}", _pct(a), f"{c2:.2f}", _pct(b), f"{100 * (a - b):+.2f}"] for e, c, a, c2, b in
                zip(dvt["exit_names"], dvt["costs"], dvt["test_exit_accuracy"], noreuse["costs"], noreuse["test_exit_accuracy"])]
        L += ["## DVT reuse ablation", "", "Per-exit test accuracy with both reuse mechanisms and with neither "
              "(DVT paper, Table 6 style).", "",
              _md_table(["exit", "MFLOPs (reuse)", "acc reuse (%)", "MFLOPs (no reuse)", "acc no reuse (%)", "gain (pt)"], rows), ""]
        later = [(a, b) for a, b in zip(dvt["test_exit_accuracy"][1:3], noreuse["test_exit_accuracy"][1:3])]
        holds = all(a > b for a, b in later)
        L += [f"- Reuse beats no reuse at exits 2 and 3: **{'holds' if holds else 'does not hold'}** ("
              + "; ".join(f"exit {k + 2}: {_pct(a)}% vs {_pct(b)}%" for k, (a, b) in enumerate(later)) + ").", ""]
    if zoo.branch_study_path("mevit_fmnist").exists():
        data = zoo.load_branch_study("mevit_fmnist")
        rows = [[r["block"], r["type"], f"{r['mflops']:.2f}", _pct(r["accuracy"]), "yes" if r.get("practical") else "",
                 "yes" if r.get("selected") else ""] for r in data["rows"]]
        L += ["## Multi-Exit ViT branch study", "", "Every branch type at every candidate block, trained classifier-wise "
              "on the frozen backbone; val accuracy; practical = more accurate than every cheaper exit "
              "(Multi-Exit ViT paper, Fig. 5 style).", "",
              _md_table(["block", "branch", "MFLOPs", "val acc (%)", "practical", "selected"], rows), ""]
    return L


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def targets_section(results: dict[str, dict]) -> list[str]:
    """The zoo's targets, each with the measured number and met / not met / not measured."""
    rows = []
    dp = results.get("dynperceiver_fmnist")
    final = dp["test_exit_accuracy"][-1] if dp else None
    rows.append(["Dynamic Perceiver final exit >= 94.0%", "n/a" if dp is None else f"{_pct(final)}%",
                 _verdict(None if dp is None else final >= 0.94)])
    m = (dp or {}).get("match_final")
    rows.append(["Dynamic Perceiver reaches its final accuracy (within 0.1 pt) at <= 40% of its cost",
                 "n/a" if dp is None else ("never" if m is None else f"{100 * m['share_of_full']:.1f}% "
                                           f"({m['test_cost']:.2f} of {dp['costs'][-1]:.2f} MFLOPs)"),
                 _verdict(None if dp is None else (m is not None and m["share_of_full"] <= 0.40))])
    t = (((dp or {}).get("bench") or {}).get("timings") or {}).get("batch256")
    rows.append(["Dynamic Perceiver measured CPU speedup (batch 256) >= 0.8x its FLOPs speedup",
                 "n/a" if not t else f"{t['ratio_to_theoretical']:.2f}x ({t['measured_speedup']:.2f}x measured vs "
                                     f"{dp['bench']['theoretical_speedup']:.2f}x FLOPs)",
                 _verdict(None if not t else t["ratio_to_theoretical"] >= 0.8)])
    multi = {n: r for n, r in results.items() if "curves" in r}
    worst = min(multi.items(), key=lambda kv: kv[1]["default_vs_geometric"]["worst"]) if multi else None
    rows.append([f"Default solver never worse than geometric beyond 0.1 pt ({N_BUDGETS} budgets, 100 matched test costs, "
                 "every model)",
                 "n/a" if worst is None else f"worst {100 * worst[1]['default_vs_geometric']['worst']:+.2f} pt ({worst[0]})",
                 _verdict(None if worst is None else worst[1]["default_vs_geometric"]["worst"] >= -TIE)])
    for n in ("mevit_fmnist", "dvt_fmnist"):
        r = results.get(n)
        rows.append([f"{n} final exit >= 92%", "not shipped" if r is None else f"{_pct(r['test_exit_accuracy'][-1])}%",
                     _verdict(None if r is None else r["test_exit_accuracy"][-1] >= 0.92)])
    return ["## Targets", "", "Measured on the shipped files (test split).", "",
            _md_table(["target", "measured", "verdict"], rows), ""]


def training_section(names: list[str]) -> list[str]:
    """How long each shipped model trained, on what (from its weights' sidecar), and what is not shipped."""
    rows = []
    for n in names:
        info = zoo.info(n)
        train, on = info.get("train") or {}, info.get("trained_on") or {}
        secs = train.get("train_seconds")
        rows.append([n, train.get("epochs", "?"), "?" if secs is None else f"{secs / 3600:.1f}",
                     on.get("device", "?"), f"`{info['reproduce']}`"])
    L = ["## Training", "", "Wall time summed over each model's training history (its epochs, plus the branch study and exit training "
         "of the Multi-Exit ViT; runs interrupted and "
         "resumed count only the epochs they trained; a loaded machine shows in the time).", "",
         _md_table(["model", "epochs", "hours", "device", "rebuild"], rows), ""]
    missing = [n for n in zoo.list() if n not in names]
    if missing:
        L += ["Not shipped yet (no tables in `data/zoo`): " + ", ".join(f"`{n}`" for n in missing)
              + ". Each rebuilds with `dynexit zoo reproduce NAME`.", ""]
    return L


def build_report(out: str | Path = "docs/results.md", figures: bool = True) -> dict:
    """Compute everything, write the page (and PNGs under ``figures/`` next to it); returns the results."""
    out = Path(out)
    names = [n for n in zoo.list() if all(zoo.table_path(n, s).exists() for s in zoo.SPLITS)]
    results = {n: model_results(n) for n in names}
    extras = {"date": _dt.date.today().isoformat(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "sections": targets_section(results) + claims_sections(results) + training_section(names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    if figures and results:
        write_pngs(build_figures(results), out.parent / "figures")
    out.write_text(render(results, extras))
    (out.parent / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results
