"""``dla_fast.plotting.plot_segmentation`` and ``dla-demo --plot``: a PNG of sensible size, the replay of the
slot layout, and bad arguments refused with the argument's name."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import dla_fast
import dla_ref
from dla_fast import demo, plotting
from dla_fast.plotting import plot_segmentation, replay
from dla_ref.synthetic import piecewise_stationary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


@pytest.fixture(scope="module")
def traces():
    inputs = piecewise_stationary(2, 96, 2, 8, 8, 4, regime_length=12, seed=3)
    _, _, ref = dla_ref.forward(*inputs, tau=0.6)
    _, _, fast = dla_fast.forward(*(torch.as_tensor(x) for x in inputs), tau=0.6, return_trace=True)
    return ref, fast


def check_png(path):
    width, height = png_size(path)
    assert 600 <= width <= 3000 and 400 <= height <= 3000, (width, height)
    assert 20_000 <= path.stat().st_size <= 2_000_000, path.stat().st_size


@pytest.mark.parametrize("which", [0, 1])
def test_writes_a_png_from_either_trace(traces, tmp_path, which):
    path = tmp_path / "seg.png"
    assert plot_segmentation(traces[which], head=1, batch=1, tau=0.6, path=path, capacity=4) == path
    check_png(path)


def test_without_a_path_it_returns_the_figure(traces):
    fig = plot_segmentation(traces[0], tau=0.6, regime_starts=np.zeros(96, dtype=bool), title="t")
    assert len(fig.axes) == 3 and fig.get_suptitle() == "t"


def test_replay_follows_starts_and_merges():
    """Slots open at 0, 2, 4; at 5 the cache (K = 3) merges the pair (0, 1) before opening slot 5."""
    starts = np.array([1, 0, 1, 0, 1, 1, 0], dtype=bool)
    merged = np.array([-1, -1, -1, -1, -1, 0, -1])
    seg = replay(np.zeros(7), starts, merged)
    assert seg.size.tolist() == [1, 1, 2, 2, 3, 3, 3]
    assert sorted(seg.lifetimes) == [(0, 0, None), (2, 2, 5), (4, 4, None), (5, 5, None)]
    assert seg.slot_of[4, :5].tolist() == [0, 0, 1, 1, 2]  # colour ids in opening order
    assert seg.slot_of[6].tolist() == [0, 0, 0, 0, 2, 3, 3]  # tokens 2-3 joined slot 0
    assert np.isnan(seg.slot_of[3, 4:]).all()  # the future is blank
    with pytest.raises(ValueError, match="^trace: token 5 merges"):
        replay(np.zeros(7), starts, np.array([-1, -1, -1, -1, -1, 3, -1]))
    assert replay(np.zeros(2), np.array([False, True]), np.array([-1, 0]), initial_size=2).size.tolist() == [2, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(head=2), "^head: expected an integer in \\[0, 2\\)"), (dict(batch=-1), "^batch"), (dict(head=0.5), "^head"),
     (dict(tau=float("nan")), "^tau"), (dict(tau=None), "^tau"), (dict(tau=float("inf")), "^tau"),
     (dict(path=3), "^path"), (dict(capacity=1), "^capacity"), (dict(initial_size=-1), "^initial_size"),
     (dict(regime_starts=np.zeros(5, dtype=bool)), "^regime_starts")],
)  # fmt: skip
def test_bad_arguments_are_named(traces, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_segmentation(traces[0], **{"tau": 0.6, **kwargs})


def test_bad_traces_are_refused():
    with pytest.raises(ValueError, match="^trace: expected a dla_fast.Trace or a dla_ref.Trace"):
        plot_segmentation({"scores": np.zeros((1, 3, 1))}, tau=0.6)
    with pytest.raises(ValueError, match="^trace: expected at least one token"):
        plot_segmentation(dla_ref.Trace(np.zeros((1, 0, 1)), np.zeros((1, 0, 1), bool), np.zeros((1, 0, 1), int)),
                          tau=0.6)
    with pytest.raises(ValueError, match="^trace.scores: expected shape"):
        plot_segmentation(dla_ref.Trace(np.zeros(3), np.zeros(3, bool), np.zeros(3, int)), tau=0.6)


def test_demo_saves_the_picture_of_the_walkthrough(tmp_path, capsys, monkeypatch):
    """``dla-demo --plot`` with the walkthrough's defaults: the picture's trace is the printed head's (its slot and
    merge counts), so the options the plot re-reads agree with the walkthrough's."""
    seen = {}
    original = plotting.plot_segmentation

    def spy(trace, **options):
        seen["trace"] = trace
        return original(trace, **options)

    monkeypatch.setattr(plotting, "plot_segmentation", spy)
    path = tmp_path / "walkthrough.png"
    assert demo.main(["--no-compare", "--plot", str(path), "--plot-head", "2"]) == 0
    out = capsys.readouterr().out
    assert f"Saved the segmentation of head 2 to {path}" in out
    check_png(path)
    head = out[out.index("head 2 "):]
    opened, T, merging = map(int, re.search(r"boundary rate: (\d+) of (\d+) tokens open a slot \([\d.]+%\), (\d+) of "
                                            r"them merging first", head).groups())
    trace = seen["trace"]
    assert trace.starts.shape == (1, T, 1) and T == 512
    assert int(trace.starts.sum()) == opened and int((trace.merged >= 0).sum()) == merging
    with pytest.raises(SystemExit):
        demo.main(["--no-compare", "--T", "40", "--heads", "2", "--plot", str(path), "--plot-head", "2"])
