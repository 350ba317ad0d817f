"""The delta rule's decisions a chunk at a time, from the WY tables: a float64 prototype and its accuracy.

The device forward decides token by token against the explicit open slot (``chunk_fwd_decide``: 36 ms at
(2, 16384, 16, 64) on an H200, 60 % of the forward, docs/delta-rule-chunked.md section 7). Everything a score
needs can instead come from the chunk's tables (section 2 there), given the open slot at the chunk start ``P_c``:

    y_t  = [slot carried in] P_c^T kt_t + sum_{s in the slot's run, s < t} akap[t, s] b_s v_s
    nP   <- a^2 nP + 2 a x + ss        (the open slot's squared norm, by recursion inside the chunk)

so per chunk one ``[C, Dk] @ [Dk, Dv]`` product with the carried slot, the suffix sums of ``akap[t, s] b_s v_s``
(every start in the chunk at once), and a scalar walk over the chunk's tokens; only ``P_c`` crosses chunks
(``Phi P_c`` plus the chunk's tokens, or the tokens since the chunk's last start), and ``nP`` is re-anchored to the
explicit ``|P_c|^2`` at every chunk start. Section 2 dropped the recursion because it cancels where the rule
erases the state; this script measures how often and how badly on the suite's kind of inputs, and what a guard
(``nP`` against the sum of its terms' magnitudes) would send back to the explicit walk.

    python benchmarks/delta_chunk_decisions.py          # a few seconds on the CPU

Prints, per input set: decisions that differ from ``dla_ref`` (with their margins), the largest relative score
error, and the share of chunks whose recursion cancels below each guard.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dla_ref  # noqa: E402
from dla_fast.ops.common.score import information_score_torch  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402
from dla_ref.synthetic import jittered_regimes  # noqa: E402

C = 64
GUARDS = (1e-4, 1e-6, 1e-8)


def _outputs(R, T):
    """``(scores, starts, cancel)`` ``[R, T]`` to fill."""
    return (torch.zeros(R, T, dtype=torch.float64), torch.zeros(R, T, dtype=torch.bool),
            torch.ones(R, T, dtype=torch.float64))


def _chunk_tables(k, v, g, beta):
    """Per chunk: ``(c0, n, v, g, beta, |k|^2, the score tables, b v)``, float64."""
    T = k.shape[1]
    for c0 in range(0, T, C):
        n = min(C, T - c0)
        kc, vc, gc, bc = k[:, c0:c0 + n], v[:, c0:c0 + n], g[:, c0:c0 + n], beta[:, c0:c0 + n]
        tab, _ = wy_tables(None, kc, gc, bc)
        yield c0, n, vc, gc, bc, (kc * kc).sum(-1), tab, bc.unsqueeze(-1) * vc


def decide_by_chunks(k, v, g, beta, tau, eps=1e-6, norm_eps=1e-6):
    """Scores and decisions of every token (empty initial cache), a chunk at a time from the tables.

    ``k, v [R, T, D]``, ``g, beta [R, T]`` float64. Returns ``(scores [R, T], starts [R, T] bool, cancel [R, T])``
    with ``cancel`` the recursion's ``nP_next / (a^2 nP + |2 a x| + ss)`` at each token that joins its slot (1
    elsewhere): how much of the norm cancelled."""
    R, T, Dk = k.shape
    Dv = v.shape[-1]
    N = Dk * Dv
    scores, starts, cancel = _outputs(R, T)
    P = torch.zeros(R, Dk, Dv, dtype=torch.float64)  # the open slot at the chunk start
    has_slot = torch.zeros(R, dtype=torch.bool)
    rows = torch.arange(R)
    for c0, n, vc, gc, bc, kk, tab, bv in _chunk_tables(k, v, g, beta):
        carried_y = tab["kt"] @ P  # [R, n, Dv]: P_c^T kt_t
        terms = tab["akap"].unsqueeze(-1) * bv.unsqueeze(1)  # [R, t, s, Dv]: akap[t, s] b_s v_s (0 for s >= t)
        suffix = terms.flip(2).cumsum(2).flip(2)  # [R, t, p, Dv]: sum over s >= p
        nP = (P * P).sum((1, 2))
        start_pos = torch.full((R,), -1, dtype=torch.long)  # -1: the slot carried into the chunk
        a_all = torch.exp(gc)
        for t in range(n):
            from_start = suffix[rows, t, start_pos.clamp(min=0)]
            y = torch.where((start_pos < 0).unsqueeze(-1), carried_y[:, t] + suffix[:, t, 0], from_start)
            a, b = a_all[:, t], bc[:, t]
            w = vc[:, t] - a.unsqueeze(-1) * y
            x = b * (y * w).sum(-1)
            ss = b * b * kk[:, t] * (w * w).sum(-1)
            score = torch.where(has_slot, information_score_torch(nP, x, ss, gc[:, t], N, eps, norm_eps), 0.0)
            start = (score >= tau) | ~has_slot
            nP_next = a * a * nP + 2 * a * x + ss
            magnitude = a * a * nP + (2 * a * x).abs() + ss
            cancel[:, c0 + t] = torch.where(start, 1.0, nP_next / magnitude.clamp(min=1e-300))
            nP = torch.where(start, b * b * kk[:, t] * (vc[:, t] * vc[:, t]).sum(-1), nP_next)
            start_pos = torch.where(start, t, start_pos)
            scores[:, c0 + t], starts[:, c0 + t] = score, start
            has_slot = has_slot | True
        # The open slot at the chunk end: the carried one through Phi plus every token, or the run since the start.
        since = (torch.arange(n) >= start_pos.clamp(min=0).unsqueeze(-1)).to(torch.float64)  # [R, n]
        run = (tab["khd"] * since.unsqueeze(-1)).transpose(1, 2) @ bv
        P = torch.where((start_pos < 0).view(R, 1, 1), tab["Phi"] @ P + run, run)
    return scores, starts, cancel


def decide_by_chunks_all_pairs(k, v, g, beta, tau, eps=1e-6, norm_eps=1e-6):
    """:func:`decide_by_chunks` in the kernel's order (docs/delta-rule-chunked.md section 8): per chunk the scores of
    every (start p, token t > p) pair and of the carried slot at once, the norms by one recursion over t for all
    starts together, then only a pointer chase over the chunk's tokens. Same inputs and outputs (``cancel`` of the
    tokens on the path taken)."""
    R, T, Dk = k.shape
    N = Dk * v.shape[-1]
    scores, starts, cancel = _outputs(R, T)
    P = torch.zeros(R, Dk, v.shape[-1], dtype=torch.float64)
    has_slot = torch.zeros(R, dtype=torch.bool)
    rows = torch.arange(R)
    for c0, n, vc, gc, bc, kk, tab, bv in _chunk_tables(k, v, g, beta):
        a = torch.exp(gc)
        suffix = (tab["akap"].unsqueeze(-1) * bv.unsqueeze(1)).flip(2).cumsum(2).flip(2)  # [R, t, p, Dv]
        # Index 0 of the start axis: the carried slot; 1 + p: the slot opened at p. y[R, start, t, Dv].
        y = torch.cat([(tab["kt"] @ P + suffix[:, :, 0]).unsqueeze(1), suffix.transpose(1, 2)], 1)
        w = vc.unsqueeze(1) - a.view(R, 1, n, 1) * y
        x = bc.unsqueeze(1) * (y * w).sum(-1)
        ss = (bc * bc * kk).unsqueeze(1) * (w * w).sum(-1)
        nP = torch.cat([(P * P).sum((1, 2)).unsqueeze(1), torch.zeros(R, n)], 1)  # before each start's next token
        fresh = bc * bc * kk * (vc * vc).sum(-1)
        pair_scores = torch.zeros(R, n + 1, n, dtype=torch.float64)
        pair_cancel = torch.ones(R, n + 1, n, dtype=torch.float64)
        for t in range(n):  # one recursion over t for every start at once (a scan in a kernel)
            pair_scores[:, :, t] = information_score_torch(nP, x[:, :, t], ss[:, :, t], gc[:, t:t + 1], N, eps,
                                                           norm_eps)
            nxt = a[:, t:t + 1] ** 2 * nP + 2 * a[:, t:t + 1] * x[:, :, t] + ss[:, :, t]
            pair_cancel[:, :, t] = nxt / (a[:, t:t + 1] ** 2 * nP + (2 * a[:, t:t + 1] * x[:, :, t]).abs()
                                          + ss[:, :, t]).clamp(min=1e-300)
            nP = nxt
            nP[:, 1 + t] = fresh[:, t]  # the slot opened at t starts from b k v^T
        cur = torch.zeros(R, dtype=torch.long)  # the open slot's index on the start axis
        for t in range(n):  # the pointer chase: only lookups
            score = torch.where(has_slot, pair_scores[rows, cur, t], 0.0)
            start = (score >= tau) | ~has_slot
            cancel[:, c0 + t] = torch.where(start, 1.0, pair_cancel[rows, cur, t])
            scores[:, c0 + t], starts[:, c0 + t] = score, start
            cur = torch.where(start, 1 + t, cur)
            has_slot = has_slot | True
        since = (torch.arange(n) >= (cur - 1).clamp(min=0).unsqueeze(-1)).to(torch.float64)
        run = (tab["khd"] * since.unsqueeze(-1)).transpose(1, 2) @ bv
        P = torch.where((cur == 0).view(R, 1, 1), tab["Phi"] @ P + run, run)
    return scores, starts, cancel


def inputs(B, T, H, D, seed, beta_range=(0.2, 1.0), **regime):
    q, k, v, g, w = jittered_regimes(B, T, H, D, D, 4, seed=seed, **{"decay": 0.97, **regime})
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = np.random.default_rng(seed).uniform(*beta_range, (B, T, H))
    return q, k, v, g, w, beta


def compare(name, q, k, v, g, w, beta, tau=0.6):
    ref = dla_ref.forward(q, k, v, g, w, tau=tau, beta=beta)[2]
    B, T, H, D = k.shape
    to_rows = lambda x: torch.tensor(np.moveaxis(x, 2, 1).reshape(B * H, T, *x.shape[3:]))  # noqa: E731
    t0 = time.perf_counter()
    scores, starts, cancel = decide_by_chunks(*(to_rows(x) for x in (k, v, g, beta)), tau)
    secs = time.perf_counter() - t0
    pairs = decide_by_chunks_all_pairs(*(to_rows(x) for x in (k, v, g, beta)), tau)
    same = torch.equal(pairs[1], starts) and torch.allclose(pairs[0], scores, rtol=1e-13, atol=1e-15)
    ref_scores, ref_starts = to_rows(ref.scores), to_rows(ref.starts.astype(bool))
    differ = starts != ref_starts
    margins = (ref_scores - tau).abs()[differ]
    big = ref_scores.abs() > 1e-6  # smaller scores are differences of nearly equal unit states in any float64 path
    rel = ((scores - ref_scores).abs() / ref_scores.abs().clamp(min=1e-300))[big]
    absolute = (scores - ref_scores).abs().max().item()
    chunk_min = torch.nn.functional.pad(cancel, (0, -T % C), value=1.0).view(B * H, -1, C).amin(-1)
    flagged = " ".join(f"<{gd:.0e}: {(chunk_min < gd).double().mean():.3f}" for gd in GUARDS)
    print(f"{name:44s} starts {int(ref_starts.sum()):5d} | differ {int(differ.sum())}"
          f"{'' if not differ.any() else f' (margins {margins.min():.1e}..{margins.max():.1e})'} | scores > 1e-6: "
          f"rel err max {rel.max():.1e}; all: abs err max {absolute:.1e} | chunks cancelling {flagged} | "
          f"{secs:.1f} s | all-pairs order {'the same' if same else 'DIFFERS'}", flush=True)


def main():
    print("the delta rule's decisions a chunk at a time from the WY tables (float64) against dla_ref")
    compare("regimes, D = 16, moderate", *inputs(1, 2048, 2, 16, seed=1, regime_length=12.0, jitter=0.3))
    compare("regimes, D = 32, dense", *inputs(1, 1024, 2, 32, seed=2, regime_length=2.0, jitter=0.8))
    compare("regimes, D = 64, sparse", *inputs(1, 1024, 1, 64, seed=3, regime_length=80.0, jitter=0.2))
    compare("beta in [0.9, 1], D = 8 (strong erasure)", *inputs(1, 1024, 2, 8, seed=4, beta_range=(0.9, 1.0),
                                                                 regime_length=5.0, jitter=0.5))
    compare("beta = 1, D = 2 (near-total erasure)", *inputs(1, 512, 2, 2, seed=5, beta_range=(1.0, 1.0),
                                                             regime_length=5.0, jitter=0.5))
    compare("beta = 1, D = 1 (exact erasure)", *inputs(1, 256, 2, 1, seed=6, beta_range=(1.0, 1.0),
                                                        regime_length=5.0, jitter=0.5))
    q, k, v, g, w, beta = inputs(1, 256, 2, 1, seed=7, beta_range=(1.0, 1.0), regime_length=5.0, jitter=0.5)
    v = v * (np.random.default_rng(7).random(v.shape[:3] + (1,)) < 0.7)  # 30 % zero values: erased to exactly 0
    compare("beta = 1, D = 1, 30 % zero values", q, k, v, g, w, beta)


if __name__ == "__main__":
    main()
