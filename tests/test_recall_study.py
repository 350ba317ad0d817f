"""The trained comparison (studies/recall.py, docs/evidence.md section 5): the fixed-partition mixers against
their definitions and against the DLA layer itself, and the smoke-size run end to end. (The documented tables
are checked against the committed recall.json in tests/test_evidence_study.py, with the other tables.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # examples/ (which studies.recall trains) is not installed: it runs from the root
    sys.path.insert(0, str(ROOT))

from dla_fast.layers import DynamicLinearAttention
from studies.mixers import PartitionedAttention, slot_index
from studies.partitions import uniform_partition
from studies.recall import MIXERS, SMOKE, main


def test_fenwick_index_is_the_level_of_t_xor_s_capped_at_K():
    T = 70
    for K in (2, 4, 8):
        index = slot_index("fenwick", T, K).numpy()
        for t in range(T):
            for s in range(T):
                level = -1 if s > t else 0 if s == t else int(t ^ s).bit_length()
                assert index[t, s] == min(level, K - 1), (t, s, K)
            assert len(set(index[t, : t + 1])) <= K  # at most K states read at any time


def test_uniform_single_and_nomerge_indices():
    T, K = 40, 5
    uniform = slot_index("uniform", T, K).numpy()
    for t in range(T):
        starts = uniform_partition(t, K)
        row = uniform[t, : t + 1]
        assert np.all(np.diff(row) <= 0) and row[-1] == 0 and row[0] == len(starts) - 1  # newest chunk is 0
        np.testing.assert_array_equal(np.flatnonzero(np.diff(row)) + 1, starts[1:])
    causal = np.tril(np.ones((T, T), dtype=bool))
    np.testing.assert_array_equal(slot_index("single", T, K).numpy(), np.where(causal, 0, -1))
    nomerge = slot_index("nomerge", T, T).numpy()
    np.testing.assert_array_equal(nomerge, np.where(causal, np.subtract.outer(np.arange(T), np.arange(T)), -1))
    with pytest.raises(ValueError):
        slot_index("nomerge", T, T - 1)
    with pytest.raises(ValueError):
        slot_index("chunks", T, K)


@pytest.mark.parametrize(("partition", "tau", "K"), [("single", 1e9, 4), ("nomerge", -1.0, 24)])
def test_the_quadratic_form_is_the_layer_with_the_same_parameters(partition, tau, K):
    """Only the partition differs: with ``tau`` so high that DLA never opens a second slot, the layer is the
    single-state mixer; with every token opening a slot and ``K >= T``, it is the one-slot-per-token mixer."""
    torch.manual_seed(0)
    layer = DynamicLinearAttention(32, 2, capacity=K, tau=tau).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from the zero initialisation of w_proj's bias
    mixer = PartitionedAttention(32, 2, partition=partition, capacity=K).double()
    mixer.load_state_dict(layer.state_dict())
    x = torch.randn(3, 20, 32, dtype=torch.float64)
    want, got = layer(x)[0], mixer(x)[0]
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall")
    return out, main(["--smoke", "--out", str(out)])


def test_smoke_run_writes_its_results_and_figure(smoke):
    out, results = smoke
    assert json.loads((out / "recall.json").read_text()) == json.loads(json.dumps(results))
    png = out / "recall.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    meta = results["meta"]
    assert meta["study"] == "recall" and meta["settings"]["seeds"] == list(SMOKE.seeds) and meta["date_utc"]
    runs = results["recall"]["runs"]
    assert {r["mixer"] for r in runs} == set(SMOKE.mixers) and set(SMOKE.mixers) <= set(MIXERS)
    for r in runs:
        assert 0 <= r["forced"] <= 1 and len(r["history"]) == SMOKE.steps
        assert (r["generated"] is not None) == (r["mixer"] == "dla")
        assert 1 <= r["states_after_context"] <= SMOKE.Ks[0]
    for row in results["recall"]["summary"]:
        stats = row["forced"]
        assert stats["min"] <= stats["mean"] <= stats["max"] and len(stats["per_seed"]) == len(SMOKE.seeds)
