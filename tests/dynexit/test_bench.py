"""dynexit bench's timing: the optimized inference copy timed for both runs, and the per-stage report."""

import json

import numpy as np
import pytest
import torch

from dynexit.bench import benchmark, format_result
from dynexit.bench_timing import inference_copy, stage_report, time_full_by_stage
from _tiny_models import tiny


@pytest.fixture(scope="module")
def dp():
    return tiny("dynperceiver").eval()


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_bench_times_the_optimized_copy_and_reports_every_stage(dp):
    x, y = _data()
    r = benchmark(dp, x, y, thresholds=[0.2, 0.2, 0.2], batch_sizes=(16,), repeats=1)
    json.dumps(r)
    how = r["inference"]
    assert how["optimized"] and how["rewrites"]["batchnorm_folded"] > 0 and how["max_abs_logit_difference"] <= 1e-4
    rows = r["stages"]["rows"]
    assert [row["exit"] for row in rows] == list(dp.exit_names) and r["stages"]["batch_size"] == 16
    assert sum(row["wall_share"] for row in rows) == pytest.approx(1.0)
    assert sum(row["flops_share"] for row in rows) == pytest.approx(1.0)
    assert rows[0]["early_exit_ran"] == 1.0
    np.testing.assert_allclose([row["mflops"] for row in rows], np.diff([0.0, *r["costs_mflops"]]))
    text = format_result({**r, "model": "tiny", "budget_mflops": None})
    assert "optimized inference copy, for the full model AND early exit" in text
    assert f"stage 1 -> {dp.exit_names[0]}:" in text and "of the FLOPs" in text


def test_no_optimize_times_the_model_as_loaded(dp):
    x, y = _data(24)
    r = benchmark(dp, x, y, thresholds=[-np.inf, 0, 0], batch_sizes=(8, 1), batch1_limit=2, repeats=1, optimize=False)
    assert r["inference"] == {"optimized": False} and r["exit_histogram"] == [24, 0, 0, 0]
    assert "the model as loaded" in format_result({**r, "model": "tiny", "budget_mflops": None})
    assert set(r["timings"]) == {"batch8", "batch1"} and r["stages"]["batch_size"] == 8


def test_optimized_and_plain_runs_take_the_same_exits(dp):
    x, y = _data(32, seed=1)
    a = benchmark(dp, x, y, thresholds=[0.15, 0.15, 0.15], batch_sizes=(32,), repeats=1)
    b = benchmark(dp, x, y, thresholds=[0.15, 0.15, 0.15], batch_sizes=(32,), repeats=1, optimize=False)
    assert a["exit_histogram"] == b["exit_histogram"] and a["costs_mflops"] == b["costs_mflops"]


def test_the_stage_clock_adds_up_to_the_full_model(dp):
    x, _ = _data(16)
    with torch.no_grad():
        total, stages = time_full_by_stage(dp, [(0, x[:8]), (8, x[8:])], repeats=2)
    assert stages.shape == (dp.num_exits,) and (stages > 0).all() and stages.sum() <= total


def test_stage_report_shares():
    rows = stage_report([3.0, 1.0], [30.0, 40.0], ["a", "b"])
    assert rows[0] == {"exit": "a", "seconds": 3.0, "wall_share": 0.75, "flops_share": 0.75, "mflops": 30.0}
    assert rows[1]["flops_share"] == pytest.approx(0.25) and "early_exit_ran" not in rows[1]


def test_a_refused_copy_is_said_and_the_model_timed_as_it_is(dp, monkeypatch):
    import dynexit.models.optimize as opt

    def refuse(model, **kw):
        raise RuntimeError("changed the logits by 1 (> 0.0001)")
    monkeypatch.setattr(opt, "optimize_for_inference", refuse)
    x, _ = _data(4)
    timed, how = inference_copy(dp, x)
    assert timed is dp and how == {"optimized": False, "refused": "changed the logits by 1 (> 0.0001)"}


def test_keep_freed_memory_says_what_it_set():
    from dynexit.bench_timing import keep_freed_memory

    done = keep_freed_memory()
    json.dumps(done)
    if done["allocator"] == "glibc":
        assert done["mmap_threshold"] >= 32 << 20 and done["trim_threshold"] == 2 ** 31 - 1
    else:
        assert done["allocator"] == "unchanged" and done["why"]


def test_per_batch_best_and_the_best_whole_pass_are_both_reported(dp):
    x, y = _data(24)
    r = benchmark(dp, x, y, thresholds=[0.2, 0.2, 0.2], batch_sizes=(8,), repeats=2, keep_memory=False)
    t = r["timings"]["batch8"]
    assert r["inference"]["memory"] == {"allocator": "unchanged", "why": "not asked"}
    # the sum of each batch's best is never slower than the best whole pass
    assert t["full_images_per_s"] >= t["best_pass"]["full_images_per_s"] * (1 - 1e-9)
    assert t["early_exit_images_per_s"] >= t["best_pass"]["early_exit_images_per_s"] * (1 - 1e-9)
    assert t["ratio_to_theoretical"] == pytest.approx(t["measured_speedup"] / r["theoretical_speedup"])
    assert sum(row["seconds"] for row in r["stages"]["rows"]) == pytest.approx(24 / t["full_images_per_s"])
    text = format_result({**r, "model": "tiny", "budget_mflops": None})
    assert "best whole pass" in text and "allocator: as the process started (not asked)" in text
