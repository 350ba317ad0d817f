"""The delta rule's per-chunk UT tables (docs/delta-rule-chunked.md section 1) against explicit products of the
transitions ``A_t(X) = a_t (X - beta_t k_t k_t^T X)`` in float64: one triangular inverse serves every start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dla_fast.ops.delta_rule.chunk_torch import ut_tables
from dla_fast.ops.delta_rule.wy_tables import wy_tables, wy_tables_adjoint


def _transition(lo: int, hi: int, k, a, b) -> np.ndarray:
    """``A_hi ... A_lo`` applied to the identity (the identity when ``hi < lo``)."""
    X = np.eye(k.shape[1])
    for t in range(lo, hi + 1):
        X = a[t] * (X - b[t] * np.outer(k[t], k[t] @ X))
    return X


@pytest.mark.parametrize("seed", range(3))
def test_ut_tables_equal_the_explicit_transitions(seed):
    rng = np.random.default_rng(seed)
    C, Dk = 7, 4
    k = rng.standard_normal((C, Dk))
    k *= rng.uniform(0.1, np.sqrt(2.0), (C, 1)) / np.linalg.norm(k, axis=1, keepdims=True)  # beta ||k||^2 <= 2
    b = rng.uniform(0.0, 1.0, C)
    g = -rng.uniform(0.0, 1.0, C)
    a = np.exp(g)
    as_t = lambda x: torch.as_tensor(x).view(1, 1, *x.shape)  # noqa: E731  [nb, R, ...]
    tab = {n: x[0, 0].numpy() for n, x in ut_tables(as_t(k), as_t(g), as_t(b), torch.float64).items()}
    q = rng.standard_normal((C, Dk))
    wy = {n: x[0, 0].numpy() for n, x in wy_tables(as_t(q), as_t(k), as_t(g), as_t(b))[0].items()}
    gamma = np.exp(np.cumsum(g))
    akap = np.array([[k[t] @ _transition(s + 1, t - 1, k, a, b) @ k[s] if s < t else 0.0 for s in range(C)]
                     for t in range(C)])
    kt = np.array([_transition(0, t - 1, k, a, b).T @ k[t] for t in range(C)])
    kh = np.array([_transition(s + 1, C - 1, k, a, b) @ k[s] * gamma[s] / gamma[-1] for s in range(C)])
    np.testing.assert_allclose(wy["akap"], akap, atol=1e-14)  # the backward's (the forward's scan keeps P itself)
    np.testing.assert_allclose(wy["kt"], kt, atol=1e-14)
    np.testing.assert_allclose(tab["kh"], kh, atol=1e-14)
    np.testing.assert_allclose(tab["Phi"], _transition(0, C - 1, k, a, b), atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_wy_tables_agree_with_the_forwards_and_their_adjoint_with_autograd(seed):
    """The backward's tables equal the forward's (``ut_tables``: ``Phi``, ``kh``; ``attn`` and ``qt`` against the
    explicit transitions), and :func:`wy_tables_adjoint` equals torch autograd through :func:`wy_tables` (float64)."""
    rng = np.random.default_rng(seed)
    nb, R, C, Dk = 2, 2, 6, 3
    k = rng.standard_normal((nb, R, C, Dk))
    k *= rng.uniform(0.1, np.sqrt(2.0), (nb, R, C, 1)) / np.linalg.norm(k, axis=-1, keepdims=True)
    x = dict(q=rng.standard_normal((nb, R, C, Dk)), k=k, g=-rng.uniform(0.0, 1.0, (nb, R, C)),
             b=rng.uniform(0.0, 1.0, (nb, R, C)))
    x = {n: torch.tensor(a, requires_grad=True) for n, a in x.items()}
    tab, saved = wy_tables(x["q"], x["k"], x["g"], x["b"])
    ut = ut_tables(x["k"].detach(), x["g"].detach(), x["b"].detach(), torch.float64)
    torch.testing.assert_close(tab["Phi"].detach(), ut["Phi"], rtol=0, atol=1e-14)
    gamma = np.exp(np.cumsum(x["g"].detach().numpy(), -1))
    kh = ut["kh"] * torch.as_tensor(gamma[..., -1:] / gamma).unsqueeze(-1)
    torch.testing.assert_close(tab["khd"].detach(), kh, rtol=0, atol=1e-14)
    q0, k0, g0, b0 = (x[n][0, 0].detach().numpy() for n in ("q", "k", "g", "b"))
    a0 = np.exp(g0)
    attn = np.array([[q0[t] @ _transition(s + 1, t, k0, a0, b0) @ k0[s] if s <= t else 0.0 for s in range(C)]
                     for t in range(C)])
    qt = np.array([_transition(0, t, k0, a0, b0).T @ q0[t] for t in range(C)])
    np.testing.assert_allclose(tab["attn"][0, 0].detach().numpy(), attn, atol=1e-14)
    np.testing.assert_allclose(tab["qt"][0, 0].detach().numpy(), qt, atol=1e-14)
    cot = {n: torch.tensor(rng.standard_normal(tuple(t.shape))) for n, t in tab.items()}
    cot["attn"] *= torch.ones(C, C, dtype=torch.bool).tril()  # the backward's cotangents live on s <= t
    cot["akap"] *= torch.ones(C, C, dtype=torch.bool).tril(-1)
    want = torch.autograd.grad(sum((cot[n] * tab[n]).sum() for n in tab), [x[n] for n in ("q", "k", "g", "b")])
    detached = {n: t.detach() for n, t in tab.items()}
    got = wy_tables_adjoint(*(x[n].detach() for n in ("q", "k", "g", "b")), detached, saved, cot)
    for name, a, w in zip(["q", "k", "g", "b"], got, want):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12, msg=f"d{name}")


def test_the_tables_without_the_score_leave_out_its_tables_and_their_terms():
    """``scores=False`` (the backward without a score gradient) builds neither ``kt`` nor ``akap``, the other tables
    bit for bit as with them, and the adjoint without those two cotangents equals, bit for bit, the one given zero
    cotangents."""
    rng = np.random.default_rng(5)
    nb, R, C, Dk = 2, 2, 8, 3
    q, k = (torch.tensor(rng.standard_normal((nb, R, C, Dk))) for _ in range(2))
    g, b = torch.tensor(-rng.uniform(0.0, 1.0, (nb, R, C))), torch.tensor(rng.uniform(0.0, 1.0, (nb, R, C)))
    full, saved_full = wy_tables(q, k, g, b)
    tab, saved = wy_tables(q, k, g, b, scores=False)
    assert set(full) - set(tab) == {"kt", "akap"}
    for name, t in tab.items():
        assert torch.equal(t, full[name]), name
    cot = {n: torch.tensor(rng.standard_normal(tuple(t.shape))) for n, t in tab.items()}
    zeros = dict(cot, kt=torch.zeros_like(full["kt"]), akap=torch.zeros_like(full["akap"]))
    want = wy_tables_adjoint(q, k, g, b, full, saved_full, zeros)
    for name, a, w in zip("qkgb", wy_tables_adjoint(q, k, g, b, tab, saved, cot), want):
        assert torch.equal(a, w), f"d{name}"  # the left-out terms add exact zeros


def test_the_tables_decide_a_chunk_at_a_time_like_the_reference():
    """Scores from the WY tables and the open slot at each chunk start (the prototype of deciding a chunk at a time,
    ``benchmarks/delta_chunk_decisions.py``: ``y`` from ``kt`` and ``akap``, the norm by recursion re-anchored at
    each chunk; token by token, and in the kernel's order: every (start, token) pair's score, then a pointer chase)
    equal dla_ref's to float64 rounding, with the same decisions, over five chunks, some of which open no slot
    (their open slot carried through ``Phi``) and some several."""
    import importlib.util
    from pathlib import Path

    import dla_ref

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "delta_chunk_decisions.py"
    spec = importlib.util.spec_from_file_location("delta_chunk_decisions", path)
    proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proto)
    q, k, v, g, w, beta = proto.inputs(1, 320, 2, 8, seed=4, regime_length=60.0, jitter=0.2)
    ref = dla_ref.forward(q, k, v, g, w, tau=0.6, beta=beta)[2]
    rows = lambda x: torch.tensor(np.moveaxis(x, 2, 1).reshape(2, 320, *x.shape[3:]))  # noqa: E731
    for decide in (proto.decide_by_chunks, proto.decide_by_chunks_all_pairs):
        scores, starts, _ = decide(*(rows(x) for x in (k, v, g, beta)), 0.6)
        assert torch.equal(starts, rows(ref.starts.astype(bool)))
        assert 4 < int(starts.sum()) < 40  # chunks with and without a start
        np.testing.assert_allclose(scores.numpy(), rows(ref.scores).numpy(), rtol=1e-12, atol=1e-14)
