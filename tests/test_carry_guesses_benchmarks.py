"""The carry guesses' benchmarks without a GPU: ``carry_guesses_gpu.py``'s report of differing scores (on hand-made
traces, the (row, chunk)s that differ, their positions, the largest difference and the starts in and before each
chunk) and ``carry_guesses.py``'s count of the chunks the serial chain decides with guesses several chunks deep."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cg = _load("carry_guesses_gpu")
counts = _load("carry_guesses")


def test_differing_chunks_names_rows_chunks_positions_and_the_starts_before():
    B, T, H = 1, 150, 2  # rows 0 and 1 (heads), chunks 0..2 (the last one short)
    scores = torch.rand(B, T, H)
    other = scores.clone()
    other[0, 70, 1] += 1e-7  # row 1, chunk 1, position 6
    other[0, 75, 1] += 3e-7  # row 1, chunk 1, position 11
    other[0, 140, 0] -= 2e-7  # row 0, chunk 2, position 12
    starts = torch.zeros(B, T, H, dtype=torch.bool)
    starts[0, [3, 130], 0] = True  # row 0: one start in chunk 0, one in chunk 2
    starts[0, [10, 20, 66], 1] = True  # row 1: two in chunk 0, one in chunk 1
    got = cg.differing_chunks(scores, other, starts)
    assert [(d["row"], d["chunk"], d["positions"]) for d in got] == [(0, 2, [12]), (1, 1, [6, 11])]
    assert got[0]["starts"] == [2] and got[0]["starts_before"] == 0  # chunk 1 of row 0 has no start
    assert got[1]["starts"] == [2] and got[1]["starts_before"] == 2
    assert got[1]["max_abs"] == pytest.approx(float((other[0, 75, 1] - scores[0, 75, 1]).abs()))
    assert cg.differing_chunks(scores, scores.clone(), starts) == []


def test_chain_chunks_with_deeper_guesses():
    """Chunks 0..6 as (has a boundary, its guess for the next holds): one deep, the chain decides chunk 0 and the
    chunks after 1, 3, 4 and 5; two deep, chunks 2 and 4 are reached through one boundary-free chunk from a chunk whose
    guess holds; four deep, chunk 5 too (three back to chunk 2). Chunk 6 follows chunk 5, whose guess fails."""
    flags = [(True, True), (False, False), (True, True), (False, False), (False, False), (True, False), (True, True)]
    assert [counts.chain_chunks(flags, d) for d in (1, 2, 4)] == [5, 3, 2]
    assert counts.chain_chunks([(False, False)] * 5, 4) == 5  # no boundary at all: every chunk on the chain
