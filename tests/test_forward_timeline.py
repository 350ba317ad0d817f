"""``benchmarks/forward_timeline.py --steady``'s analysis without a GPU: on a hand-made kernel list of back-to-back
calls, the whole calls it keeps, the GPU's span, busy and idle time, the idle gaps by the kernels on either side, and
kernels on a second stream that overlap the first."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("torch")
BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("forward_timeline_under_test", BENCH / "forward_timeline.py")
ft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ft)


def _kernel(name, start, dur):
    return dict(name=name, start_us=float(start), end_us=float(start + dur), dur=float(dur))


def _calls(n):
    """n calls 100 us apart: table 0-40, a side kernel 30-50 (overlapping it), output 60-90: the GPU is busy 80 us
    of each call and idles 50-60 and 90-100."""
    ks = []
    for i in range(n):
        t = 100 * i
        ks += [_kernel("dla_table_kernel", t, 40), _kernel("void side<float>(int)", t + 30, 20),
               _kernel("dla_output_kernel", t + 60, 30)]
    return ks


def test_steady_summary_keeps_whole_middle_calls_and_finds_the_idle_gaps():
    r = ft.steady_summary(_calls(8), 8)
    assert r["n"] == 6
    # calls 2..7: from 100 to the last kept output's end, 690 (that call's trailing gap is outside the span)
    assert r["span_us"] == 590.0 and r["busy_us"] == 6 * 80
    assert r["gaps"] == {("side", "dla_output_kernel"): 60.0, ("dla_output_kernel", "dla_table_kernel"): 50.0}
    assert r["kernel_us"] == {"dla_table_kernel": 240.0, "side": 120.0, "dla_output_kernel": 180.0}


def test_steady_summary_refuses_a_trace_with_other_than_the_calls_asked_for():
    with pytest.raises(SystemExit, match="expected 8 calls, found 7"):
        ft.steady_summary(_calls(7), 8)


def test_steady_summary_takes_a_call_from_its_first_table_kernel_after_an_output():
    """Decisions by blocks launch a table kernel a block (run 62): a call starts at the first table kernel after the
    previous call's output kernel, whatever the table kernels between."""
    ks = []
    for i in range(8):
        t = 100 * i
        ks += [_kernel("dla_table_kernel", t, 10), _kernel("dla_table_kernel", t + 15, 10),
               _kernel("dla_table_kernel", t + 30, 10), _kernel("void side<float>(int)", t + 30, 20),
               _kernel("dla_output_kernel", t + 60, 30)]
    assert ft.call_starts(ks) == list(range(0, 40, 5))
    r = ft.steady_summary(ks, 8)
    assert r["n"] == 6 and r["busy_us"] == 6 * 70  # 0-10, 15-25, 30-50, 60-90 of each call
    assert r["kernel_us"] == {"dla_table_kernel": 180.0, "side": 120.0, "dla_output_kernel": 180.0}


def test_kernel_time_per_call_sums_each_kernel_over_the_calls():
    ks = _calls(4) + [_kernel("void dla_output_kernel<1>(float*)", 500, 10)]  # one more launch of one kernel
    per = ft.kernel_us_per_call(ks, 4)
    assert per == {"dla_output_kernel": (4 * 30 + 10) / 4, "dla_table_kernel": 40.0, "side": 20.0}
    assert list(per) == ["dla_table_kernel", "dla_output_kernel", "side"]  # the longest first
