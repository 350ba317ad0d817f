"""The gradient oracle: the contract's per-token recurrence in torch, with the decisions forced.

:func:`straightforward` writes the contract with Python lists of torch tensors (one list of slot states per
(b, h)), with the decisions ``starts`` / ``merged`` forced from the trace of the call under test, so that
torch autograd through it is an independent reference for ``dla_fast``'s gradients. It shares no code with
``dla_fast.autograd`` (neither the chunked tables nor the masked-attention form nor the ``dg`` identity).
:func:`assert_rel_close` is the comparison the gradient tests use (relative to the largest expected entry).

Used by ``properties/test_gradients.py`` and ``tests/test_grad_api.py``.
"""

from __future__ import annotations

import torch

import dla_fast

RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def _backbone(g, kt, vt, bt):
    """The contract's transition and contribution: ``A_t(X) = a X``, ``s_t = k v^T`` (scalar decay) or
    ``A_t(X) = a (X - beta k (k^T X))``, ``s_t = beta k v^T`` (delta rule)."""
    a = torch.exp(g)
    if bt is None:
        return (lambda X: a * X), torch.outer(kt, vt)
    return (lambda X: a * (X - bt * torch.outer(kt, kt @ X))), bt * torch.outer(kt, vt)


def _update(slots, s, start, merged_index):
    """Rule 3 with the decision forced: extend the open slot, or merge pair ``merged_index`` (if >= 0) and append."""
    if not start:
        return slots[:-1] + [slots[-1] + s]
    if merged_index >= 0:
        i = merged_index
        slots = slots[:i] + [slots[i] + slots[i + 1]] + slots[i + 2:]
    return slots + [s]


def straightforward(q, k, v, g, lam, beta, init_states, init_size, starts, merged):
    """The contract, token by token, decisions forced: ``(o [B, T, H, Dv], final states [B, H, K, Dk, Dv])``."""
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    outs = [[None] * H for _ in range(B)]
    finals = [[None] * H for _ in range(B)]
    for b in range(B):
        for h in range(H):
            m0 = 0 if init_states is None else int(init_size[b, h])
            slots = [init_states[b, h, i] for i in range(m0)]
            o = []
            for t in range(T):
                A, s = _backbone(g[b, t, h], k[b, t, h], v[b, t, h], None if beta is None else beta[b, t, h])
                slots = _update([A(X) for X in slots], s, starts[b, t, h], int(merged[b, t, h]))
                m = len(slots)
                o.append(sum(lam[b, t, h, j] * (q[b, t, h] @ slots[m - 1 - j]) for j in range(m)))
            outs[b][h] = torch.stack(o) if T else q.new_zeros((0, Dv))
            finals[b][h] = torch.stack(slots + [q.new_zeros((Dk, Dv))] * (K - len(slots)))
    return torch.stack([torch.stack(r, 1) for r in outs]), torch.stack([torch.stack(r) for r in finals])


def straightforward_scores(k, v, g, beta, init_states, init_size, starts, merged, eps, norm_eps) -> dict:
    """``{(b, t, h): I_t}`` for the tokens the score decided (non-empty cache), from the contract's formula
    ``||N(P') - N(P)|| / (||N(P)|| + eps)``, ``P' = A_t(P) + s_t`` on the open slot, decisions forced."""
    B, T, H, _ = k.shape
    N = lambda X: X / torch.sqrt((X * X).mean() + norm_eps)  # noqa: E731
    scores = {}
    for b in range(B):
        for h in range(H):
            m0 = 0 if init_states is None else int(init_size[b, h])
            slots = [init_states[b, h, i] for i in range(m0)]
            for t in range(T):
                A, s = _backbone(g[b, t, h], k[b, t, h], v[b, t, h], None if beta is None else beta[b, t, h])
                if slots:
                    P = slots[-1]
                    scores[(b, t, h)] = torch.linalg.norm(N(A(P) + s) - N(P)) / (torch.linalg.norm(N(P)) + eps)
                slots = _update([A(X) for X in slots], s, starts[b, t, h], int(merged[b, t, h]))
    return scores


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def tensors(case):
    """float64 leaf tensors requiring grad: ``(inputs dict, dla_fast.Cache or None)``."""
    leaf = lambda x: None if x is None else torch.tensor(x, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x = dict(q=leaf(case.q), k=leaf(case.k), v=leaf(case.v), g=leaf(case.g), slot_weights=leaf(case.slot_weights),
             beta=leaf(case.beta))
    cache = None
    if case.initial_cache is not None:
        cache = dla_fast.Cache.from_ref(case.initial_cache, dtype=torch.float64)
        cache.states.requires_grad_(True)
    return x, cache


def run_fast(case, x, cache, chunk_size, **kw):
    return dla_fast.forward(
        x["q"], x["k"], x["v"], x["g"], x["slot_weights"], tau=kw.pop("tau", case.tau), beta=x["beta"],
        boundaries=None if case.boundaries is None else torch.as_tensor(case.boundaries, device=x["q"].device),
        initial_cache=cache, return_trace=True, chunk_size=chunk_size, eps=case.eps, norm_eps=case.norm_eps, **kw,
    )


def run_oracle(x, cache, trace, lam=None, g=None):
    return straightforward(
        x["q"], x["k"], x["v"], x["g"] if g is None else g, x["slot_weights"] if lam is None else lam, x["beta"],
        None if cache is None else cache.states, None if cache is None else cache.size, trace.starts, trace.merged,
    )


def assert_rel_close(actual, expected, what, rtol=RTOL, floor=0.0):
    """``max |actual - expected| <= rtol * max(max |expected|, floor)``."""
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    scale = max(float(expected.abs().max()), floor)
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale or err <= 1e-300, (
        f"{what}: max |error| {err:.3e} > {rtol:g} * max |expected| {scale:.3e} "
        f"(relative {err / max(scale, 1e-300):.3e})")
