"""A sequential float32 model of a fast path, to measure float32 error and to exercise the harness.

It follows the contract step by step like ``dla_ref``, but as a fast path would: every state, score,
information sum and density in float32, and the score from the three scalars of
``docs/chunked-algorithm.md`` (``||P||^2``, ``<P, s_t> = k^T P v``, ``||s_t||^2``) with its stable
formula (scalar decay), in the stable variant of :func:`_score_scalar` (the docs' variant,
:func:`_score_scalar_docs`, loses accuracy under strong decay: ``docs/precision.md``). For the delta rule
(no three-scalar shortcut) it forms ``W = P' - a P`` and evaluates ``N(P') - N(P) = c P + W / r'``
elementwise, again without subtracting close numbers. ``forward`` has the reference's signature: float64 NumPy in,
float64 NumPy out.

It is not an implementation of the project (``dla_fast`` is); ``docs/precision.md`` uses it to measure
how far float32 arithmetic moves scores, outputs and states, and ``properties/test_harness.py`` uses it
as a fast path whose decisions genuinely differ from the reference's near ties.
"""

from __future__ import annotations

import math

import numpy as np

from dla_ref import Cache, Trace

f32 = np.float32


def _score_scalar_docs(nP, x, ss, g, N, eps, norm_eps):
    """The three-scalar score exactly as docs/chunked-algorithm.md (section 1) writes it, in float32.

    Kept to document a finding (docs/precision.md): ``am1 - delta`` subtracts two numbers close to -1
    when the decay is strong and the new token small against the state, so ``c`` loses about
    ``u / (a^2 + r'^2/r^2)`` of relative accuracy (1e-4 relative score error measured at a = 0.03).
    """
    a = f32(math.exp(g))
    am1 = f32(math.expm1(2.0 * g))  # a^2 - 1
    r2 = nP / f32(N) + f32(norm_eps)
    delta = (am1 * nP + f32(2) * a * x + ss) / (f32(N) * r2)
    sq = np.sqrt(f32(1) + delta)
    rp = np.sqrt(r2 * (f32(1) + delta))
    c = (am1 - delta) / ((a + sq) * sq * np.sqrt(r2))
    D2 = max(c * c * nP + f32(2) * c * x / rp + ss / (rp * rp), f32(0))
    return f32(np.sqrt(D2) / (np.sqrt(nP) / np.sqrt(r2) + f32(eps)))


def _score_scalar(nP, x, ss, g, N, eps, norm_eps):
    """The three-scalar score, stable in every decay regime, in float32.

    ``N(P') - N(P) = c P + s / r'`` with ``c = a/r' - 1/r``. Nothing close is subtracted:

        r^2  = nP/N + norm_eps,   r'^2 = (a^2 nP + 2 a x + ss)/N + norm_eps
        c    = (a^2 r^2 - r'^2) / (r r' (a r + r')),  a^2 r^2 - r'^2 = (a^2 - 1) norm_eps - (2 a x + ss)/N
        D2   = c^2 nP + 2 c x / r' + ss / r'^2      (cancels only when I << the terms: the sqrt(u) floor)
    """
    a = f32(math.exp(g))
    am1 = f32(math.expm1(2.0 * g))  # a^2 - 1, accurate for small |g|
    Nf, ne = f32(N), f32(norm_eps)
    r2 = nP / Nf + ne
    w = f32(2) * a * x + ss  # ||P'||^2 - a^2 ||P||^2 = <s, 2 a P + s>
    rp2 = (a * a * nP + w) / Nf + ne
    r, rp = np.sqrt(r2), np.sqrt(rp2)
    c = (am1 * ne - w / Nf) / r / rp / (a * r + rp)  # divided in turn: r^3 overflows float32 at 1e13
    D2 = max(c * c * nP + f32(2) * c * x / rp + ss / rp2, f32(0))
    return f32(np.sqrt(D2) / (np.sqrt(nP) / r + f32(eps)))


def _score_general(P, AP, s, a, eps, norm_eps):
    """The same decomposition for any transition: ``N(P') - N(P) = c P + W / r'``, ``W = P' - a P``
    (``= A(P) - a P + s``), formed elementwise, in float32."""
    Nf, ne = f32(P.size), f32(norm_eps)
    W = (AP - a * P) + s
    nP = np.sum(P * P, dtype=f32)
    r2 = nP / Nf + ne
    w = np.sum(W * (f32(2) * a * P + W), dtype=f32)  # ||P'||^2 - a^2 ||P||^2
    rp2 = (a * a * nP + w) / Nf + ne
    r, rp = np.sqrt(r2), np.sqrt(rp2)
    am1 = f32(a * a - f32(1))
    c = (am1 * ne - w / Nf) / r / rp / (a * r + rp)  # divided in turn: r^3 overflows float32 at 1e13
    D = c * P + W / rp
    return f32(np.sqrt(np.sum(D * D, dtype=f32)) / (np.sqrt(nP) / r + f32(eps)))


def forward(q, k, v, g, slot_weights, *, tau=0.6, beta=None, boundaries=None, initial_cache=None,
            eps=1e-6, norm_eps=1e-6, score_formula=None):
    """float32 DLA; ``score_formula`` replaces the scalar-decay score (e.g. ``_score_scalar_docs``)."""
    scalar_score = score_formula or _score_scalar
    q, k, v, slot_weights = (np.asarray(x, dtype=f32) for x in (q, k, v, slot_weights))
    g = np.asarray(g, dtype=np.float64)
    B, T, H, Dk = q.shape
    Dv, K = v.shape[3], slot_weights.shape[3]
    N = Dk * Dv
    o = np.zeros((B, T, H, Dv), dtype=np.float64)
    trace = Trace(np.zeros((B, T, H)), np.zeros((B, T, H), bool), np.full((B, T, H), -1, np.int64))
    final = Cache.empty(B, H, K, Dk, Dv)
    for b in range(B):
        for h in range(H):
            states, counts, infos = [], [], []
            if initial_cache is not None:
                for i in range(int(initial_cache.size[b, h])):
                    states.append(initial_cache.states[b, h, i].astype(f32))
                    counts.append(int(initial_cache.counts[b, h, i]))
                    infos.append(f32(initial_cache.info[b, h, i]))
            for t in range(T):
                kt, vt, qt, gt = k[b, t, h], v[b, t, h], q[b, t, h], float(g[b, t, h])
                a = f32(math.exp(gt))
                bt = None if beta is None else f32(beta[b, t, h])
                s = np.outer(kt, vt) if bt is None else bt * np.outer(kt, vt)
                if not states:
                    score, start = f32(0), True
                else:
                    P = states[-1]
                    if bt is None:
                        nP = np.sum(P * P, dtype=f32)
                        x = f32(kt @ P @ vt)
                        ss = f32(np.dot(kt, kt) * np.dot(vt, vt))
                        score = scalar_score(nP, x, ss, gt, N, eps, norm_eps)
                    else:
                        AP = a * (P - bt * np.outer(kt, kt @ P))
                        score = _score_general(P, AP, s, a, eps, norm_eps)
                    start = bool(score >= tau) if boundaries is None else bool(boundaries[b, t, h])
                if bt is None:
                    states = [a * S for S in states]
                else:
                    states = [a * (S - bt * np.outer(kt, kt @ S)) for S in states]
                merged = -1
                if not start:
                    states[-1] = states[-1] + s
                    counts[-1] += 1
                    infos[-1] = f32(infos[-1] + score)
                else:
                    if len(states) == K:
                        d = [f32(f32(infos[i] + infos[i + 1]) / f32(counts[i] + counts[i + 1])) for i in range(K - 1)]
                        merged = int(np.argmin(d))  # argmin: the first (oldest) among ties
                        states[merged : merged + 2] = [states[merged] + states[merged + 1]]
                        counts[merged : merged + 2] = [counts[merged] + counts[merged + 1]]
                        infos[merged : merged + 2] = [f32(infos[merged] + infos[merged + 1])]
                    states.append(s.astype(f32))
                    counts.append(1)
                    infos.append(f32(score))
                m = len(states)
                out = np.zeros(Dv, dtype=f32)
                for j in range(m):
                    out += slot_weights[b, t, h, j] * (qt @ states[m - 1 - j])
                o[b, t, h] = out
                trace.scores[b, t, h] = score
                trace.starts[b, t, h] = start
                trace.merged[b, t, h] = merged
            final.size[b, h] = len(states)
            for i in range(len(states)):
                final.states[b, h, i] = states[i]
                final.counts[b, h, i] = counts[i]
                final.info[b, h, i] = infos[i]
    return o, final, trace
