"""``benchmarks/gpu_bench.py``'s baselines in several processes (``--fla-samples``), without a GPU: the merge of the
processes' rows (min, samples), the worker's spec and its one JSON line, failures raised with their stderr, and the
spread lines under the tables."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
_spec = importlib.util.spec_from_file_location("gpu_bench_under_test", PATH)
gb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gb)

# A fake worker: appends its spec to a log file, prints noise and then the row the log's length picks.
FAKE = """
import json, sys
spec = json.loads(sys.argv[-1])
with open(spec["log"], "a") as f:
    f.write(json.dumps(spec) + "\\n")
n = sum(1 for _ in open(spec["log"]))
print("noise from a library")
print(json.dumps(spec["rows"][n - 1]))
"""


def test_merge_takes_the_minimum_and_keeps_every_sample():
    rows = [dict(log_linear_ms=5.7, log_linear_levels=15, log_linear_peak_gib=1.5),
            dict(log_linear_ms=4.8, log_linear_levels=15, log_linear_peak_gib=1.5),
            dict(log_linear_ms=6.0, log_linear_levels=15, log_linear_peak_gib=1.5)]
    got = gb.merge_samples(rows)
    assert got == dict(log_linear_ms=4.8, log_linear_ms_samples=[5.7, 4.8, 6.0], log_linear_levels=15,
                       log_linear_peak_gib=1.5, log_linear_peak_gib_samples=[1.5, 1.5, 1.5])
    # notes and errors pass through; a time only some processes measured is the min of those
    got = gb.merge_samples([dict(fla_fwd_bwd_note="OOM"), dict(fla_fwd_bwd_ms=2.0), dict(fla_fwd_bwd_ms=1.0)])
    assert got == dict(fla_fwd_bwd_note="OOM", fla_fwd_bwd_ms=1.0, fla_fwd_bwd_ms_samples=[2.0, 1.0])
    assert gb.merge_samples([dict(simple_gla_error="ImportError")]) == dict(simple_gla_error="ImportError")


def test_samples_come_from_that_many_processes_one_after_another(tmp_path):
    log = tmp_path / "calls.jsonl"
    spec = dict(cfg=[2, 16384, 16, 64, 64], wl=gb.WORKLOADS["moderate"], quick=False, log=str(log),
                rows=[dict(simple_gla_ms=0.53), dict(simple_gla_ms=0.23), dict(simple_gla_ms=0.31)])
    got = gb.sample_baselines(("simple_gla",), None, spec, 3, command=[sys.executable, "-c", FAKE])
    assert got == dict(simple_gla_ms=0.23, simple_gla_ms_samples=[0.53, 0.23, 0.31])
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["baselines"] for c in calls] == [["simple_gla"]] * 3
    assert all(c["cfg"] == spec["cfg"] and c["wl"] == spec["wl"] for c in calls)


def test_one_sample_is_measured_in_this_process(monkeypatch):
    seen = []
    measure = lambda x, spec: seen.append((x, spec)) or dict(sdpa_ms=1.5)  # noqa: E731
    monkeypatch.setitem(gb.BASELINES, "sdpa", (None, measure, None))
    spec = dict(cfg=[1, 64, 1, 16, 16], wl={}, quick=True)
    assert gb.sample_baselines(("sdpa",), "inputs", spec, 1) == dict(sdpa_ms=1.5, sdpa_ms_samples=[1.5])
    assert seen == [("inputs", spec)]

    def missing(x, spec):
        raise ImportError("no fla")

    monkeypatch.setitem(gb.BASELINES, "simple_gla", (None, missing, "simple_gla_error"))
    assert gb.sample_baselines(("simple_gla",), "inputs", spec, 1) == dict(simple_gla_error="ImportError('no fla')")


def test_the_worker_builds_from_its_spec_and_prints_one_json_line(monkeypatch, capsys):
    def build(cfg, wl):
        return cfg, wl["decay"]

    def measure(x, spec):
        print("a library's chatter")
        return dict(x_ms=x[1], cfg=list(x[0]), cfg_is_tuple=isinstance(x[0], tuple), quick=spec["quick"])

    def measure_too(x, spec):
        return dict(y_ms=2 * x[1])

    monkeypatch.setitem(gb.BASELINES, "fake", (build, measure, None))
    monkeypatch.setitem(gb.BASELINES, "fake_too", (build, measure_too, None))
    spec = dict(baselines=["fake", "fake_too"], cfg=[1, 64, 1, 16, 16], wl=gb.WORKLOADS["dense"], quick=True)
    gb.worker(json.dumps(spec))
    out, err = capsys.readouterr()
    assert json.loads(out) == dict(x_ms=0.5, cfg=[1, 64, 1, 16, 16], cfg_is_tuple=True, quick=True, y_ms=1.0)
    assert out.count("\n") == 1 and "chatter" in err


def test_a_failing_worker_raises_with_its_stderr():
    """The real worker command: an unknown baseline fails in the worker, and its traceback reaches the caller."""
    with pytest.raises(RuntimeError, match=r"(?s)exit status 1.*KeyError: 'no_such_baseline'"):
        gb.run_worker(dict(baselines=["no_such_baseline"], cfg=[1, 64, 1, 16, 16], wl={}))
    with pytest.raises(RuntimeError, match="not json"):  # exits 0 but its last line is no JSON
        gb.run_worker({}, command=[sys.executable, "-c", "print('not json')"])


def test_the_tables_show_the_min_and_the_spread_below():
    res = dict(card="x", date="-", copy_bandwidth=1e12, bf16_matmul_flops=1e15, fla_samples=3)
    res["forward"] = {"(2, 16384, 16, 64, 64)": dict(
        simple_gla_ms=0.23, simple_gla_ms_samples=[0.53, 0.23, 0.31], log_linear_ms=4.75,
        log_linear_ms_samples=[6.04, 4.75, 5.0], sdpa_ms=3.0, sdpa_ms_samples=[3.0],
        dla={"moderate": dict(ms=2.0, api_ms=2.1, boundary_rate=0.07, roofline_fraction=0.3)})}
    res["delta_rule"] = {"(2, 16384, 16, 64, 64)": {"moderate": dict(
        dla_fwd_ms=2.0, fla_fwd_ms=1.0, fla_fwd_ms_samples=[1.0, 1.2], fla_fwd_bwd_note="made up")}}
    lines = gb.table(res).splitlines()
    assert "best of 3 processes" in lines[0]
    row = next(line for line in lines if line.startswith("(2, 16384, 16, 64, 64) | moderate"))
    assert "| 0.230 | 4.750 | 3.000 |" in row
    assert ("  (2, 16384, 16, 64, 64): min-max of 3 processes (ms): simple_gla 0.230-0.530, log_linear 4.750-6.040"
            in lines)  # sdpa's single sample shows no spread
    assert "  (2, 16384, 16, 64, 64) moderate: min-max of 2 processes (ms): fla_fwd 1.000-1.200" in lines


def test_the_forward_ratios_take_the_best_dla_process_when_sampled():
    """``--dla-samples``: dla_fast.forward timed in more processes; the table's DLA column and ratios take the best
    of them and this process's, the spread below."""
    res = dict(card="x", date="-", copy_bandwidth=1e12, bf16_matmul_flops=1e15, fla_samples=1, dla_samples=2)
    res["forward"] = {"(8, 4096, 16, 64, 64)": dict(simple_gla_ms=0.4, log_linear_ms=2.4, sdpa_ms=0.6, dla={
        "sparse": dict(ms=2.1, api_ms=1.9, dla_api_ms=1.6, dla_api_ms_samples=[1.6, 1.8], boundary_rate=0.013,
                       roofline_fraction=0.2),
        "dense": dict(ms=2.1, api_ms=1.5, dla_api_ms=1.6, dla_api_ms_samples=[1.6, 1.7], boundary_rate=0.6,
                      roofline_fraction=0.2)})}
    lines = gb.table(res).splitlines()
    assert "dla_fast.forward: the best of this process and 2 more" in lines[0]
    sparse = next(line for line in lines if line.startswith("(8, 4096, 16, 64, 64) | sparse"))
    assert "| 1.600 | 2.100 |" in sparse and "| 1.50x | 4.00x |" in sparse  # 2.4 / 1.6, 1.6 / 0.4
    dense = next(line for line in lines if line.startswith("(8, 4096, 16, 64, 64) | dense"))
    assert "| 1.500 | 2.100 |" in dense  # this process's was the best
    assert "  (8, 4096, 16, 64, 64) sparse: min-max of 2 processes (ms): dla_api 1.600-1.800" in lines
    assert "dla_api" in gb.BASELINES  # what the workers measure


def test_alternating_rounds_reverse_their_order_every_other_round(monkeypatch):
    """``alternating_ms``: no variant runs first in every round (``round_order``; run 56 found the first variant of
    every round slower, whichever it was)."""
    seen = []
    monkeypatch.setattr(gb, "bench_ms", lambda fn, rep=40: fn() or 1.0)
    times = gb.alternating_ms({name: (lambda n=name: seen.append(n)) for name in "abc"}, rounds=3)
    assert seen == list("abccbaabc") and times == {n: [1.0, 1.0, 1.0] for n in "abc"}


def test_the_delta_forward_takes_the_best_process_when_sampled():
    """``--dla-samples`` for the delta rule: the cell's ``dla_fwd_ms`` is the best of this process's and the fresh
    processes' (``dla_gdn_fwd_ms``, already their minimum), this process's kept beside it; without samples nothing
    changes. The workers measure it by name."""
    row = gb.best_dla_forward(dict(dla_fwd_ms=16.56, dla_gdn_fwd_ms=12.2, dla_gdn_fwd_ms_samples=[12.2, 12.4]))
    assert row["dla_fwd_ms"] == 12.2 and row["dla_fwd_here_ms"] == 16.56
    row = gb.best_dla_forward(dict(dla_fwd_ms=12.0, dla_gdn_fwd_ms=12.2))
    assert row["dla_fwd_ms"] == 12.0 and row["dla_fwd_here_ms"] == 12.0
    assert gb.best_dla_forward(dict(dla_fwd_ms=12.0)) == dict(dla_fwd_ms=12.0)
    assert "dla_gdn_fwd" in gb.BASELINES
