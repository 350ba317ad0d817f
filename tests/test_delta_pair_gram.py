"""``benchmarks/delta_pair_gram_accuracy.py``'s Gram form of the delta decisions' pair sums (issue #12's lead for the
pair kernel, no path uses it yet) against the pair kernel's form on the benchmark's workloads, float64 on the CPU:
the two agree to float64 rounding of each table's terms (run 69 measured at most 1.6e-14 at (1, 2048, 4, 64))."""

from __future__ import annotations

import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import delta_pair_gram_accuracy as gram  # noqa: E402
from gpu_bench import WORKLOADS, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402


@pytest.mark.parametrize("workload", ["moderate", "dense"])
def test_the_gram_form_gives_the_pair_kernels_sums(workload):
    q, k, v, g, w, beta = delta_inputs(1, 256, 2, 16, 16, WORKLOADS[workload], device="cpu")
    kc, vc, gc, bc = (gram.chunks(x) for x in (k, v, g, beta))
    akap = wy_tables(None, kc, gc, bc, scores=True)[0]["akap"]
    args = (akap, vc, gc.exp(), bc, (kc * kc).sum(-1))
    X, SS = gram.pair_sums_direct(*args)
    X2, SS2, x_terms, ss_terms = gram.pair_sums_gram(*args)
    pairs = torch.ones(gram.CHUNK, gram.CHUNK, dtype=torch.bool).triu(1)
    assert x_terms[..., pairs].max() > 0 and ss_terms[..., pairs].min() > 0
    assert ((X - X2).abs() <= 1e-12 * x_terms)[..., pairs].all()
    assert ((SS - SS2).abs() <= 1e-12 * ss_terms)[..., pairs].all()
