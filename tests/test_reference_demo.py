"""The synthetic generator (dla_ref.synthetic) and the demo (dla_ref.demo, console script dla-demo)."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dla_ref
from dla_ref import demo
from dla_ref.synthetic import piecewise_stationary, regime_starts

ROOT = Path(__file__).resolve().parents[1]


def test_piecewise_stationary_shapes_and_ranges():
    q, k, v, g, lam = piecewise_stationary(2, 40, 3, 4, 5, 6, seed=1)
    assert q.shape == k.shape == (2, 40, 3, 4) and v.shape == (2, 40, 3, 5)
    assert g.shape == (2, 40, 3) and lam.shape == (2, 40, 3, 6)
    assert all(x.dtype == np.float64 for x in (q, k, v, g, lam))
    assert (g <= 0).all()
    np.testing.assert_allclose(np.linalg.norm(k, axis=-1), 1.0)
    np.testing.assert_allclose(lam[0, 0, 0], 0.7 ** np.arange(6))


def test_piecewise_stationary_extras_and_determinism():
    *arrays, beta, regimes = piecewise_stationary(1, 50, 2, beta=0.25, seed=3, return_regimes=True)
    again = piecewise_stationary(1, 50, 2, beta=0.25, seed=3, return_regimes=True)
    for x, y in zip([*arrays, beta, regimes], again):
        np.testing.assert_array_equal(x, y)
    assert beta.shape == (1, 50, 2) and (beta == 0.25).all()
    assert regimes.dtype == np.int64 and (np.diff(regimes, axis=1) >= 0).all()
    starts = regime_starts(regimes)
    assert starts[:, 0].all()
    np.testing.assert_array_equal(starts[:, 1:], np.diff(regimes, axis=1) == 1)


def test_piecewise_stationary_regimes_last_at_least_the_minimum():
    *_, regimes = piecewise_stationary(1, 2000, 2, regime_length=20, min_regime_length=8, seed=0, return_regimes=True)
    for h in range(2):
        _, lengths = np.unique(regimes[0, :, h], return_counts=True)
        assert (lengths[:-1] >= 8).all()  # the last regime may be cut by T
        assert 15 <= lengths[:-1].mean() <= 25


def test_piecewise_stationary_per_head_decay():
    *_, g = piecewise_stationary(1, 10, 3, decay=[0.5, 0.6, 1.0], seed=0)[:4]
    np.testing.assert_allclose(g[0, 0], np.log([0.5, 0.6, 1.0]))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"K": 1}, "K"), ({"decay": 0.0}, "decay"), ({"decay": [0.5, 1.5]}, "decay"), ({"beta": 2.0}, "beta"),
     ({"regime_length": 4.0}, "regime_length")],
)  # fmt: skip
def test_piecewise_stationary_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match="^" + name):
        piecewise_stationary(1, 10, 2, **kwargs)


def test_with_the_default_decay_boundaries_fall_at_regime_changes():
    """What the generator is for: at decay 1/2 and tau = 0.6 a new regime opens a slot, its own tokens do not."""
    q, k, v, g, lam, regimes = piecewise_stationary(1, 256, 2, seed=5, return_regimes=True)
    _, _, trace = dla_ref.forward(q, k, v, g, lam, tau=0.6)
    changes = regime_starts(regimes)
    assert (trace.starts & changes).sum() >= 0.9 * changes.sum()
    assert (trace.starts & ~changes).sum() <= 0.1 * changes.sum()


def test_slot_layout_replayed_from_the_trace_matches_the_final_cache():
    q, k, v, g, lam = piecewise_stationary(1, 200, 2, K=4, regime_length=16, seed=2)
    _, cache, trace = dla_ref.forward(q, k, v, g, lam)
    for h in range(2):
        history = demo.slot_starts_over_time(trace.starts[0, :, h], trace.merged[0, :, h])
        starts = history[-1]
        assert len(starts) == cache.size[0, h]
        np.testing.assert_array_equal(np.diff(starts + [200]), cache.counts[0, h, : len(starts)])


def test_layout_row_hand_example():
    """Slots starting at 0, 3, 5 at t = 6 of T = 10, one character per 2 tokens showing tokens 0, 2, 4, 6, 8:
    0 and 2 are in slot 0, 4 in slot 1, 6 in slot 2, 8 is not seen yet."""
    assert demo.layout_row([0, 3, 5], 6, 10, 2) == "0012 "


def test_demo_main_prints_every_section(capsys):
    assert demo.main(["--T", "96", "--heads", "2", "--capacity", "3", "--seed", "4", "--tau", "0.6"]) == 0
    out = capsys.readouterr().out
    for text in ("head 0", "head 1", "boundary rate", "scores around each new slot", "slot layout over time",
                 "final cache", "density", "T = 96", "K = 3"):  # fmt: skip
        assert text in out, text


def test_demo_defaults_finish_in_a_few_seconds(capsys):
    began = time.perf_counter()
    assert demo.main([]) == 0
    assert time.perf_counter() - began < 10.0
    assert "head 3" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--capacity", "1"], ["--T", "0"], ["--heads", "0"], ["--bogus"]])
def test_demo_rejects_bad_options(argv):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2


def test_demo_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "dla_ref.demo", "--T", "48", "--heads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "head 0" in result.stdout
