"""The equivalence harness: the gate every fast path (torch, Triton, backward) must pass.

    from dla_fast.testing import check_equivalent
    report = check_equivalent(fast_forward, case, dtype="float32")   # raises AssertionError on failure

``fast_forward`` is an *adapter* with the reference's signature: it takes float64 NumPy arrays
``(q, k, v, g, slot_weights)`` and keywords ``tau, beta, boundaries, initial_cache (dla_ref.Cache or None),
eps, norm_eps``, runs the fast path in ``dtype`` (the adapter converts; the values it receives are already
representable in ``dtype``), and returns ``(o, cache, trace)`` as NumPy: ``o`` ``[B, T, H, Dv]``, a
``dla_ref.Cache``, and any object with ``scores``/``starts``/``merged`` ``[B, T, H]``.

``case`` is a :class:`dla_fast.testing.strategies.Case` (``build(Spec(...))`` or drawn by ``cases()``), or a
mapping with the keys ``q, k, v, g, slot_weights`` and optionally ``beta, boundaries, initial_cache, tau,
eps, norm_eps``.

What is compared (tolerances: ``docs/precision.md``, implemented in :class:`Policy`):

1. Inputs are rounded to ``dtype`` first (``q, k, v, g, slot_weights, beta`` and the initial cache's
   states; float32 for the states when ``dtype`` is narrower), and the reference runs on the *rounded*
   inputs in float64: input rounding is the same for both, so only the fast path's arithmetic is judged.
   The effect of the rounding itself (reference on rounded vs original inputs) is reported, not judged.
2. Decisions (``starts``) and merges must agree exactly, except where the reference's own margin is below
   the policy's bound: ``|I_t - tau|`` against the score tolerance, or the density gap between the pair
   the reference merged and the pair the fast path merged against the density tolerance. The first
   disagreement of each (b, h) must be explained so; everything before it is compared as usual.
   **Exact ties** (a margin of exactly 0: ``I_t == tau``, or two equal lowest densities) are decided by the
   tie rule (``>=`` opens a slot; the oldest pair merges). A flip there is explained only when the fast
   path's own values differ from the reference's: its score at that token is not bitwise the reference's,
   or its densities of the two pairs, recomputed from its own trace, are not.
3. After an explained decision flip, the fast path runs again with the reference's decisions forced
   (``boundaries=`` the reference's ``starts``); then scores, merges, outputs and the final cache are
   compared again. After an explained merge flip the structures part for good: that (b, h) is compared
   up to the flip only (its scores everywhere, since scores never depend on merges).
4. Scores, outputs, final states and information sums within tolerance; sizes, counts exactly.

The returned :class:`Report` (also the text of the ``AssertionError``) lists every divergence, the margin
that explains it, and the worst error of each quantity as a fraction of its tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dla_ref
from dla_ref import Cache

# ---------------------------------------------------------------------------------------------
# Precision: input rounding and the tolerance policy (docs/precision.md)
# ---------------------------------------------------------------------------------------------

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def dtype_name(dtype) -> str:
    """``np.float32`` / ``"float32"`` / ``torch.bfloat16`` ... -> ``"float32"``, ``"bfloat16"`` ..."""
    name = str(getattr(dtype, "__name__", dtype)).replace("torch.", "")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
               "double": "float64", "fp64": "float64"}
    name = aliases.get(name, name)
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {list(UNIT_ROUNDOFF)}, got {dtype!r}")
    return name


def round_to(x: np.ndarray | None, dtype) -> np.ndarray | None:
    """``x`` rounded to ``dtype`` (round to nearest even) and returned as float64.

    bfloat16 goes through float32 first, exactly as torch's ``tensor.to(torch.bfloat16)`` does from
    float64 (so a value just below a float32-level midpoint may round up: double rounding, as in torch).
    """
    if x is None:
        return None
    name = dtype_name(dtype)
    x = np.asarray(x, dtype=np.float64)
    if name == "float64":
        return x.copy()
    if name == "float32":
        return x.astype(np.float32).astype(np.float64)
    if name == "float16":
        return x.astype(np.float16).astype(np.float64)
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)  # bfloat16: the top 16 bits of a float32
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


@dataclass(frozen=True)
class Policy:
    """Tolerances for a fast path that keeps states and scores in float32 (contract, "Precision").

    ``u`` is the unit roundoff of the arithmetic (2^-24 for float32 states/scores; 2^-53 for a float64
    path), ``u_in`` that of the input dtype. Derivation and measurements: ``docs/precision.md``.

    Per token t (quantities of the reference run on the rounded inputs, see :func:`analyse`):

    - score:   ``c_score * g_t * E_t  +  c_cancel * min(sqrt(g_t) * E_t, g_t * E_t^2 / I_t)  +  c_abs * u``
      with ``g_t = u * n_t * kappa_t``, where ``E_t`` is the size of the two terms whose difference is ``N(P') - N(P)``
      (in units of ``I``: ``E_t >= I_t``), ``kappa_t = ||P||_abs / ||P||`` the cancellation in the open
      state, ``n_t = `` open-slot length + Dk + Dv (the longest sum behind each scalar).
    - density of a pair: the mean of its tokens' score tolerances, plus ``c_sum * u * n * density``.
    - output:  ``(c_out * u * (T_t + Dk + K) + c_in * u_in') * |o_t|_bound`` with ``|o_t|_bound`` the
      no-cancellation bound ``||q_t|| * K max|lambda_t| * c_t`` (``c_t = a_t c_{t-1} + b_t ||k_t|| ||v_t||``),
      ``T_t`` the tokens seen, ``u_in' = u_in`` when the input dtype is narrower than float32 (a fast path
      may round states / attention tiles to it before tensor-core products) and 0 otherwise.
    - state:   ``c_out * u * (T + Dk) * c_T`` per slot; information: the sum of its tokens' score
      tolerances plus ``c_sum * u * n * Ibar``.
    - outputs and states also get ``c_out * u_decay * G_t * |bound|``, ``G_t`` the sum of ``|g|`` so far: a chunked
      path weighs a token by ``exp`` of a difference of cumulative log decays, whose rounding (absolute
      ``u_decay * G_t``, float64 sums by default) is that relative error in the weight; a per-token product of
      decays has ``u`` per token instead, already counted in ``T_t``.
    """

    u: float
    u_in: float
    u_decay: float = UNIT_ROUNDOFF["float64"]
    c_score: float = 4.0
    c_cancel: float = 4.0
    c_abs: float = 16.0
    c_sum: float = 2.0
    c_out: float = 2.0
    c_in: float = 4.0

    @classmethod
    def for_dtype(cls, dtype, *, u: float | None = None) -> Policy:
        name = dtype_name(dtype)
        arith = UNIT_ROUNDOFF["float64"] if name == "float64" else UNIT_ROUNDOFF["float32"]
        u_in = UNIT_ROUNDOFF[name] if UNIT_ROUNDOFF[name] > UNIT_ROUNDOFF["float32"] else 0.0
        return cls(u=arith if u is None else u, u_in=u_in)

    def score_tol(self, a: Analysis) -> np.ndarray:
        E, I = a.E, a.I
        un = self.u * a.n * a.kappa  # relative error of the scalars behind the score (n-term sums)
        cancel = np.minimum(np.sqrt(un) * E, np.divide(un * E * E, I, out=np.full_like(E, np.inf), where=I > 0))
        return self.c_score * un * E + self.c_cancel * cancel + self.c_abs * self.u

    def output_tol(self, a: Analysis) -> np.ndarray:
        rounding = self.c_out * (self.u * a.seen + self.u_decay * a.decay_seen) + self.c_in * self.u_in
        return rounding * a.o_bound + 1e-300

    def state_tol(self, a: Analysis, T: int, Dk: int) -> np.ndarray:
        """``[B, H]``"""
        rounding = self.c_out * (self.u * (a.seen_final + Dk) + self.u_decay * a.decay_final) + self.c_in * self.u_in
        return rounding * a.c_final + 1e-300


# ---------------------------------------------------------------------------------------------
# What the reference's own run says about each token (float64, from the rounded inputs)
# ---------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Per-token quantities of the reference run, ``[B, T, H]`` unless noted."""

    I: np.ndarray  # the reference's score
    E: np.ndarray  # size of the two terms of N(P') - N(P), in units of I (E >= I)
    kappa: np.ndarray  # ||P||_abs / ||P|| of the open state (1: no cancellation)
    n: np.ndarray  # open-slot length + Dk + Dv
    seen: np.ndarray  # tokens seen (incl. the initial cache) + Dk + K
    o_bound: np.ndarray  # no-cancellation bound on |o_t|
    c_final: np.ndarray  # [B, H]: bound on the norm of the sum of the final states
    seen_final: np.ndarray  # [B, H]
    decay_seen: np.ndarray  # sum of |g| up to and including t
    decay_final: np.ndarray  # [B, H]: sum of |g| over the call


def analyse(inputs: Mapping[str, Any], trace) -> Analysis:
    """Replay the reference's decisions in float64 and record, per token, what its score tolerance needs."""
    q, k, v, g, w = (inputs[n] for n in ("q", "k", "v", "g", "slot_weights"))
    beta, cache, eps, norm_eps = inputs.get("beta"), inputs.get("initial_cache"), inputs["eps"], inputs["norm_eps"]
    B, T, H, Dk = q.shape
    Dv, K = v.shape[3], w.shape[3]
    N = Dk * Dv
    I = np.asarray(trace.scores, dtype=np.float64)
    E = np.zeros((B, T, H))
    kappa = np.ones((B, T, H))
    n = np.zeros((B, T, H))
    seen = np.zeros((B, T, H))
    c_all = np.zeros((B, T, H))
    c_final = np.zeros((B, H))
    seen_final = np.zeros((B, H))
    decay_seen = np.cumsum(np.abs(np.asarray(g, dtype=np.float64)), axis=1)
    decay_final = decay_seen[:, -1] if T else np.zeros((B, H))
    for b in range(B):
        for h in range(H):
            P, Pabs, length = None, 0.0, 0
            c, count = 0.0, 0
            if cache is not None and cache.size[b, h] > 0:
                m = int(cache.size[b, h])
                P = cache.states[b, h, m - 1].copy()
                Pabs, length = float(np.linalg.norm(P)), int(cache.counts[b, h, m - 1])
                c = float(np.linalg.norm(cache.states[b, h], axis=(-2, -1)).sum())
                count = int(cache.counts[b, h].sum())
            for t in range(T):
                a = math.exp(g[b, t, h])
                bt = 1.0 if beta is None else float(beta[b, t, h])
                kt, vt = k[b, t, h], v[b, t, h]
                s = bt * np.outer(kt, vt)
                s_norm = float(np.linalg.norm(s))
                if P is not None:
                    AP = a * P if beta is None else a * (P - bt * np.outer(kt, kt @ P))
                    Delta = AP - P + s
                    nP = float(np.sum(P * P))
                    r = math.sqrt(nP / N + norm_eps)
                    rp = math.sqrt(float(np.sum((P + Delta) ** 2)) / N + norm_eps)
                    unit = math.sqrt(nP) / r + eps  # ||N(P)|| + eps, the score's denominator
                    # N(P') - N(P) = (a/r' - 1/r) P + (A(P) - a P)/r' + s/r': the terms a fast path adds
                    # (docs/chunked-algorithm.md expands the score in exactly these; the last two are
                    # ||P||-independent, the first carries the cancellation when P' is parallel to P)
                    E[b, t, h] = (math.sqrt(nP) * abs(a / rp - 1 / r) + float(np.linalg.norm(AP - a * P)) / rp
                                  + s_norm / rp) / unit
                    kappa[b, t, h] = Pabs / math.sqrt(nP) if nP > 0 else 1.0
                    n[b, t, h] = length + Dk + Dv
                    if trace.starts[b, t, h]:
                        P, Pabs, length = s, s_norm, 1
                    else:
                        P, Pabs, length = AP + s, a * Pabs + s_norm, length + 1
                else:
                    P, Pabs, length = s, s_norm, 1
                c = a * c + s_norm
                count += 1
                c_all[b, t, h] = c
                seen[b, t, h] = count + Dk + K
            c_final[b, h], seen_final[b, h] = c, count
    o_bound = np.linalg.norm(q, axis=-1) * np.abs(w).max(-1) * K * c_all
    return Analysis(I, E, kappa, n, seen, o_bound, c_final, seen_final, decay_seen, decay_final)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class Divergence:
    kind: str  # "decision" or "merge"
    b: int
    t: int
    h: int
    reference: Any
    fast: Any
    margin: float  # the reference's margin (|I - tau|, or the density gap)
    bound: float  # the policy's bound on that margin
    explained: bool
    run: str  # "free" or "forced"
    # An exact tie (margin exactly 0) where the fast path computed the reference's own value(s): the tie
    # rule decides, so the flip is not explained whatever the bound.
    same_values_at_a_tie: bool = False

    def __str__(self) -> str:
        what = "|I_t - tau|" if self.kind == "decision" else "density gap"
        verdict = "explained" if self.explained else "NOT EXPLAINED"
        if self.same_values_at_a_tie:
            rule = "I_t >= tau opens a slot" if self.kind == "decision" else "the oldest of the tied pairs merges"
            values = "value" if self.kind == "decision" else "values"
            verdict = (f"NOT EXPLAINED: an exact tie, and the fast path computed the same {values} as the reference, "
                       f"so the tie rule decides ({rule})")
        return (f"{self.kind} at (b={self.b}, t={self.t}, h={self.h}) [{self.run} run]: reference {self.reference!r}, "
                f"fast {self.fast!r}; {what} = {self.margin:.3e} vs bound {self.bound:.3e}: {verdict}")


@dataclass
class Report:
    dtype: str
    case: str
    ok: bool = True
    failures: list = field(default_factory=list)
    divergences: list = field(default_factory=list)
    forced_rerun: bool = False
    truncated: dict = field(default_factory=dict)  # (b, h) -> first token not compared (outputs, cache)
    worst: dict = field(default_factory=dict)  # quantity -> (error / tolerance, where)
    input_rounding: dict = field(default_factory=dict)  # reference on rounded vs original inputs

    def fail(self, message: str) -> None:
        self.ok = False
        self.failures.append(message)

    def record(self, quantity: str, ratio: np.ndarray, prefix: tuple = ()) -> None:
        """Keep the worst error/tolerance ratio of ``quantity`` and where it occurred."""
        if ratio.size == 0:
            return
        i = int(np.argmax(ratio))
        where = prefix + tuple(int(x) for x in np.unravel_index(i, ratio.shape))
        if quantity not in self.worst or float(ratio.flat[i]) > self.worst[quantity][0]:
            self.worst[quantity] = (float(ratio.flat[i]), where)

    def __str__(self) -> str:
        lines = [f"DLA equivalence ({self.dtype}): {'PASS' if self.ok else 'FAIL'} -- case {self.case}"]
        lines += [f"  FAILURE: {f}" for f in self.failures]
        lines += [f"  divergence: {d}" for d in self.divergences]
        if self.forced_rerun:
            lines.append("  the fast path was rerun with the reference's decisions forced (boundaries=)")
        for (b, h), t in sorted(self.truncated.items()):
            lines.append(f"  (b={b}, h={h}): structures part at token {t}; outputs and cache compared before it only")
        for q, (r, where) in sorted(self.worst.items()):
            lines.append(f"  worst {q}: {r:.3g} of tolerance at {where}")
        for q, v in self.input_rounding.items():
            lines.append(f"  input rounding alone (reference on rounded vs original inputs): {q} {v}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The structure the reference went through (for the density margins)
# ---------------------------------------------------------------------------------------------


def _densities_before(trace, cache: Cache | None, tol: np.ndarray, b: int, h: int, T: int,
                      acc: Callable[[float], float] = float):
    """For each token t of (b, h): the pairs' densities before t (from ``trace``'s scores and structure,
    each information sum rounded by ``acc`` after every addition: ``float`` for float64, ``np.float32`` as a
    fast path keeps Ibar), their tolerances and their counts."""
    slots = []  # [count, info, summed score tolerance]
    if cache is not None:
        for i in range(int(cache.size[b, h])):
            slots.append([int(cache.counts[b, h, i]), acc(cache.info[b, h, i]), 0.0])
    out = []
    for t in range(T):
        d = [float(acc(x[1] + y[1])) / (x[0] + y[0]) for x, y in zip(slots[:-1], slots[1:])]
        e = [(x[2] + y[2]) / (x[0] + y[0]) for x, y in zip(slots[:-1], slots[1:])]
        out.append((d, e, [x[0] + y[0] for x, y in zip(slots[:-1], slots[1:])]))
        i = int(trace.merged[b, t, h])
        if 0 <= i < len(slots) - 1:
            x, y = slots[i], slots[i + 1]
            slots[i : i + 2] = [[x[0] + y[0], acc(x[1] + y[1]), x[2] + y[2]]]
        score = acc(trace.scores[b, t, h])
        if trace.starts[b, t, h] or not slots:
            slots.append([1, score, float(tol[b, t, h])])
        else:
            slots[-1] = [slots[-1][0] + 1, acc(slots[-1][1] + score), slots[-1][2] + float(tol[b, t, h])]
    return out


def _same_densities(ref: list, fast_runs: list, t: int, i: int, j: int) -> bool:
    """Whether every recomputation of the fast path's densities of pairs ``i`` and ``j`` before token ``t``
    is bitwise the reference's (then both paths compared the same numbers)."""
    d_ref = ref[t][0]
    for run in fast_runs:
        d = run[t][0]
        if not (i < len(d) and j < len(d) and d[i] == d_ref[i] and d[j] == d_ref[j]):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# check_equivalent
# ---------------------------------------------------------------------------------------------


def _inputs_of(case) -> dict:
    if isinstance(case, Mapping):
        d = dict(case)
    else:
        d = dict(q=case.q, k=case.k, v=case.v, g=case.g, slot_weights=case.slot_weights, beta=case.beta,
                 boundaries=case.boundaries, initial_cache=case.initial_cache, tau=case.tau, eps=case.eps,
                 norm_eps=case.norm_eps)
    d.setdefault("beta", None)
    d.setdefault("boundaries", None)
    d.setdefault("initial_cache", None)
    d.setdefault("tau", 0.6)
    d.setdefault("eps", 1e-6)
    d.setdefault("norm_eps", 1e-6)
    return d


def rounded_inputs(case, dtype) -> dict:
    """The case's inputs rounded to ``dtype`` (float64 arrays); the initial cache's states to float32 or
    ``dtype``, whichever is wider (fast paths keep states in float32)."""
    d = _inputs_of(case)
    out = {n: round_to(d[n], dtype) for n in ("q", "k", "v", "g", "slot_weights", "beta")}
    out["g"] = np.minimum(out["g"], 0.0)
    if out["beta"] is not None:
        out["beta"] = np.clip(out["beta"], 0.0, 1.0)
    cache = d["initial_cache"]
    if cache is not None:
        cache = cache.copy()
        state_dtype = "float64" if dtype_name(dtype) == "float64" else "float32"
        cache.states = round_to(cache.states, state_dtype)
        cache.info = round_to(cache.info, state_dtype)
    out.update(boundaries=None if d["boundaries"] is None else np.asarray(d["boundaries"]).copy(),
               initial_cache=cache, tau=d["tau"], eps=d["eps"], norm_eps=d["norm_eps"])
    return out


def _call(fn, inputs: dict, **override):
    kw = {n: inputs[n] for n in ("tau", "beta", "boundaries", "initial_cache", "eps", "norm_eps")}
    kw.update(override)
    kw = {n: (x.copy() if hasattr(x, "copy") and x is not None else x) for n, x in kw.items()}
    o, cache, trace = fn(*(inputs[n].copy() for n in ("q", "k", "v", "g", "slot_weights")), **kw)
    return np.asarray(o, dtype=np.float64), cache, trace


@dataclass
class _Judge:
    """What the divergence checks read: the reference's run on the rounded inputs and the policy's bounds."""

    report: Report
    policy: Policy
    inputs: dict
    t_r: Any  # the reference's trace
    stol: np.ndarray  # the score tolerance per token
    dens: dict  # (b, h) -> the reference's pair densities before every token, with their error bounds
    accumulations: tuple  # how a fast path may sum Ibar (float64; float32 too for narrower dtypes)

    def density_bound(self, b, h, t, i, j):
        """``(gap, bound)``: the density gap between pairs i and j before token t, and the policy's bound on it."""
        d, e, n = self.dens[(b, h)][t]
        gap = abs(d[i] - d[j]) if 0 <= i < len(d) and 0 <= j < len(d) else math.inf
        if gap == math.inf:
            return gap, 0.0
        return gap, e[i] + e[j] + self.policy.c_sum * self.policy.u * (n[i] * abs(d[i]) + n[j] * abs(d[j]))

    def merge_flip(self, run_trace, run, b, h, tm):
        """Record the first merge flip of (b, h) at token tm with the margin that may explain it."""
        i, j = int(self.t_r.merged[b, tm, h]), int(run_trace.merged[b, tm, h])
        gap, bound = self.density_bound(b, h, tm, i, j)
        explained = i >= 0 and j >= 0 and gap <= bound
        # An exact tie is decided by the tie rule unless the fast path's own densities differ.
        cache = self.inputs["initial_cache"]
        same = explained and gap == 0 and _same_densities(
            self.dens[(b, h)], [_densities_before(run_trace, cache, self.stol, b, h, tm + 1, acc)
                                for acc in self.accumulations], tm, i, j)
        self.report.divergences.append(Divergence("merge", b, tm, h, i, j, gap, bound, explained and not same,
                                                  run, same))

    def decision_flip(self, run_trace, run, b, h, td):
        """Record the first decision flip of (b, h) at token td with the margin that may explain it."""
        tau, t_r = self.inputs["tau"], self.t_r
        margin = abs(t_r.scores[b, td, h] - tau) if math.isfinite(tau) else math.inf
        bound = float(self.stol[b, td, h])
        forced = self.inputs["boundaries"] is not None or run == "forced" or (td == 0 and _empty(self.inputs, b, h))
        explained = margin <= bound and not forced
        # I_t == tau exactly: ">=" decides, unless the fast path's own score differs.
        same = explained and margin == 0 and float(run_trace.scores[b, td, h]) == float(t_r.scores[b, td, h])
        self.report.divergences.append(Divergence("decision", b, td, h, bool(t_r.starts[b, td, h]),
                                                  bool(run_trace.starts[b, td, h]), margin, bound,
                                                  explained and not same, run, same))

    def first_events(self, run_trace, run):
        """Per (b, h): the first decision flip and the first merge flip before it, each recorded. Returns
        ``(limits, score_limits)``: the first token not compared for outputs and cache (either flip), and for
        scores (the decision flip; merges never move scores)."""
        B, T, H = self.t_r.scores.shape
        limits, score_limits = {}, {}
        for b in range(B):
            for h in range(H):
                ds = np.flatnonzero(np.asarray(run_trace.starts[b, :, h]) != self.t_r.starts[b, :, h])
                ms = np.flatnonzero(np.asarray(run_trace.merged[b, :, h]) != self.t_r.merged[b, :, h])
                td = int(ds[0]) if ds.size else T
                tm = int(ms[0]) if ms.size else T
                if tm < td:
                    self.merge_flip(run_trace, run, b, h, tm)
                if td < T:
                    self.decision_flip(run_trace, run, b, h, td)
                    score_limits[(b, h)] = td
                if min(td, tm) < T:
                    limits[(b, h)] = min(td, tm)
        return limits, score_limits


def _input_rounding(case, inputs, o_r, t_r) -> dict:
    """The effect of the input rounding itself (the reference on rounded vs original inputs): reported."""
    o_orig, _, t_orig = _call(dla_ref.forward, rounded_inputs(case, "float64"))
    return {
        "decisions changed": int((t_orig.starts != t_r.starts).sum()),
        "max |o change| / |o| bound": float(np.max(np.abs(o_orig - o_r).max(-1) / (
            analyse(inputs, t_r).o_bound + 1e-300), initial=0.0)),
    }


def check_equivalent(fast_forward: Callable, case, *, dtype="float64", policy: Policy | None = None,
                     raise_on_failure: bool = True) -> Report:
    """Compare ``fast_forward`` with ``dla_ref.forward`` on ``case`` (see the module docstring).

    Args:
        fast_forward: the adapter (reference signature; float64 NumPy in and out).
        case: a :class:`dla_fast.testing.strategies.Case` or a mapping of the call's arguments.
        dtype: the input precision the fast path runs in: ``"float64"``, ``"float32"``, ``"bfloat16"``,
            ``"float16"`` (or the NumPy / torch dtype). Selects the rounding and the :class:`Policy`.
        policy: override the tolerances (e.g. ``Policy.for_dtype("float32", u=2**-11)`` for TF32 matmuls).
        raise_on_failure: raise ``AssertionError(str(report))`` when the report fails (default).

    Returns:
        The :class:`Report`.
    """
    name = dtype_name(dtype)
    policy = policy or Policy.for_dtype(name)
    inputs = rounded_inputs(case, name)
    report = Report(dtype=name, case=repr(case) if not isinstance(case, Mapping) else "<mapping>")
    o_r, c_r, t_r = _call(dla_ref.forward, inputs)
    if name != "float64":
        report.input_rounding = _input_rounding(case, inputs, o_r, t_r)
    an = analyse(inputs, t_r)
    stol = policy.score_tol(an)
    B, T, H = t_r.scores.shape
    dens = {(b, h): _densities_before(t_r, inputs["initial_cache"], stol, b, h, T) for b in range(B) for h in range(H)}
    # A tie is only held against the fast path when every one of these recomputations matches the reference.
    judge = _Judge(report, policy, inputs, t_r, stol, dens, (float,) if name == "float64" else (float, np.float32))
    fast = _call(fast_forward, inputs)
    if not _shapes_ok(report, fast, o_r, c_r, t_r):
        return _finish(report, raise_on_failure)

    # 1. The free run: everything before the first divergence of each (b, h) must agree.
    limits, score_limits = judge.first_events(fast[2], "free")
    _compare(report, policy, an, stol, fast, o_r, c_r, t_r, limits, score_limits, run="free")
    unexplained = [d for d in report.divergences if not d.explained]
    for d in unexplained:
        report.fail(str(d))
    decision_flips = [d for d in report.divergences if d.kind == "decision" and d.explained]

    # 2. Explained decision flips: rerun with the reference's decisions forced and compare again.
    if decision_flips and not unexplained:
        report.forced_rerun = True
        forced = _call(fast_forward, inputs, boundaries=np.asarray(t_r.starts).copy())
        if _shapes_ok(report, forced, o_r, c_r, t_r):
            n_before = len(report.divergences)
            limits, score_limits = judge.first_events(forced[2], "forced")
            for d in report.divergences[n_before:]:
                if not d.explained:
                    report.fail(str(d))
            _compare(report, policy, an, stol, forced, o_r, c_r, t_r, limits, score_limits, run="forced")
    report.truncated = dict(limits)  # where the structures part (after the forced rerun, if any)
    return _finish(report, raise_on_failure)


def _empty(inputs, b, h) -> bool:
    cache = inputs["initial_cache"]
    return cache is None or int(cache.size[b, h]) == 0


def _shapes_ok(report, run, o_r, c_r, t_r) -> bool:
    o, cache, trace = run
    problems = []
    if o.shape != o_r.shape:
        problems.append(f"o shape {o.shape} != {o_r.shape}")
    for f in ("scores", "starts", "merged"):
        x = np.asarray(getattr(trace, f))
        if x.shape != getattr(t_r, f).shape:
            problems.append(f"trace.{f} shape {x.shape} != {getattr(t_r, f).shape}")
    for f in ("states", "counts", "info", "size"):
        x = np.asarray(getattr(cache, f))
        if x.shape != getattr(c_r, f).shape:
            problems.append(f"cache.{f} shape {x.shape} != {getattr(c_r, f).shape}")
    for p in problems:
        report.fail(p)
    return not problems


def _compare(report, policy, an, stol, result, o_r, c_r, t_r, limits: dict, score_limits: dict, *, run: str):
    """Scores up to (and at) a decision flip; outputs up to any flip; the final cache of every (b, h)
    without a flip."""
    o, cache, trace = result
    B, T, H = t_r.scores.shape
    valid = np.ones((B, T, H), dtype=bool)  # outputs compared
    score_valid = np.ones((B, T, H), dtype=bool)
    for (b, h), t in limits.items():
        valid[b, t:, h] = False
    for (b, h), t in score_limits.items():
        score_valid[b, t + 1:, h] = False  # the score at the flip itself is still the same quantity
    scores = np.asarray(trace.scores, dtype=np.float64)
    err = np.abs(scores - t_r.scores)
    ratio = np.where(score_valid, err / stol, 0.0)
    report.record(f"score ({run})", ratio)
    if (ratio > 1).any():
        b, t, h = (int(x) for x in np.argwhere(ratio > 1)[0])
        report.fail(f"score at (b={b}, t={t}, h={h}) [{run} run]: fast {scores[b, t, h]!r}, reference "
                    f"{t_r.scores[b, t, h]!r}, |diff| {err[b, t, h]:.3e} > tolerance {stol[b, t, h]:.3e} "
                    f"({int((ratio > 1).sum())} scores out of tolerance)")
    otol = policy.output_tol(an)
    oerr = np.linalg.norm(o - o_r, axis=-1)
    ratio = np.where(valid, oerr / otol, 0.0)
    report.record(f"output ({run})", ratio)
    if (ratio > 1).any():
        b, t, h = (int(x) for x in np.argwhere(ratio > 1)[0])
        report.fail(f"output at (b={b}, t={t}, h={h}) [{run} run]: ||o_fast - o_ref|| = {oerr[b, t, h]:.3e} > "
                    f"tolerance {otol[b, t, h]:.3e} (reference o = {o_r[b, t, h].tolist()}, "
                    f"fast {o[b, t, h].tolist()}; "
                    f"{int((ratio > 1).sum())} outputs out of tolerance)")
    K = c_r.counts.shape[-1]
    Dk = c_r.states.shape[-2]
    state_tol = policy.state_tol(an, T, Dk)
    for b in range(B):
        for h in range(H):
            if (b, h) in limits:
                continue
            m = int(c_r.size[b, h])
            if int(np.asarray(cache.size)[b, h]) != m or list(np.asarray(cache.counts)[b, h]) != list(c_r.counts[b, h]):
                report.fail(f"final cache (b={b}, h={h}) [{run} run]: size {int(np.asarray(cache.size)[b, h])} counts "
                            f"{np.asarray(cache.counts)[b, h].tolist()}, reference size {m} "
                            f"counts {c_r.counts[b, h].tolist()}")
                continue
            serr = np.linalg.norm(np.asarray(cache.states)[b, h, :m] - c_r.states[b, h, :m], axis=(-2, -1))
            ratio = serr / state_tol[b, h]
            report.record(f"state ({run})", ratio, (b, h))
            if (ratio > 1).any():
                i = int(np.argmax(ratio))
                report.fail(f"final state (b={b}, h={h}, slot {i}) [{run} run]: ||S_fast - S_ref|| = {serr[i]:.3e} > "
                            f"tolerance {state_tol[b, h]:.3e}")
            info_tol = _info_tol(policy, t_r, stol, c_r, b, h, K)
            ierr = np.abs(np.asarray(cache.info)[b, h, :m] - c_r.info[b, h, :m])
            ratio = ierr / info_tol[:m]
            report.record(f"information ({run})", ratio, (b, h))
            if (ratio > 1).any():
                i = int(np.argmax(ratio))
                report.fail(f"final Ibar (b={b}, h={h}, slot {i}) [{run} run]: "
                            f"fast {np.asarray(cache.info)[b, h, i]!r}, "
                            f"reference {c_r.info[b, h, i]!r}, |diff| {ierr[i]:.3e} > tolerance {info_tol[i]:.3e}")


def _info_tol(policy, t_r, stol, c_r, b, h, K) -> np.ndarray:
    """Per final slot: the sum of its tokens' score tolerances plus summation rounding."""
    m = int(c_r.size[b, h])
    counts = c_r.counts[b, h, :m]
    T = t_r.scores.shape[1]
    # the last tokens of the call, in order, fill the slots from the newest backwards
    tol = np.zeros(K)
    t = T - 1
    for i in range(m - 1, -1, -1):
        take = min(int(counts[i]), t + 1)
        tol[i] = stol[b, t - take + 1 : t + 1, h].sum() if take > 0 else 0.0
        t -= take
    return tol + policy.c_sum * policy.u * np.concatenate([counts, np.zeros(K - m)]) * np.abs(c_r.info[b, h]) + 1e-300


def _finish(report: Report, raise_on_failure: bool) -> Report:
    if raise_on_failure and not report.ok:
        raise AssertionError(str(report))
    return report


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


def reference_adapter(q, k, v, g, slot_weights, **kwargs):
    """The trivial adapter: ``dla_ref.forward`` itself (tests the harness; passes at every dtype)."""
    return dla_ref.forward(q, k, v, g, slot_weights, **kwargs)


def torch_adapter(torch_forward: Callable, dtype, device="cpu", *, cache_type=None, **extra) -> Callable:
    """An adapter for a torch fast path with the reference's signature, returning tensors.

    Inputs ``q, k, v, g, slot_weights, beta`` are converted to ``dtype`` on ``device`` (``boundaries`` to
    bool; the initial cache to ``cache_type`` -- default ``dla_ref.Cache`` -- holding float32 states/info,
    or float64 when ``dtype`` is float64, and int64 counts/size); ``extra`` keywords are passed through
    (e.g. ``return_trace=True, chunk_size=16`` for ``dla_fast.forward``). The outputs ``(o, cache,
    trace)`` may hold tensors of any dtype: they come back as float64 / int64 / bool NumPy.
    """
    import torch

    tdtype = getattr(torch, dtype_name(dtype))
    sdtype = torch.float64 if tdtype == torch.float64 else torch.float32
    make_cache = cache_type or Cache

    def tensor(x, dt=tdtype):
        return None if x is None else torch.as_tensor(np.asarray(x)).to(device=device, dtype=dt)

    def numpy(x, dt):
        if hasattr(x, "detach"):
            x = x.detach().to("cpu")
            x = x.to(torch.float64) if x.is_floating_point() else x
            x = x.numpy()
        return np.asarray(x).astype(dt)

    def adapter(q, k, v, g, slot_weights, *, tau, beta=None, boundaries=None, initial_cache=None, eps, norm_eps):
        cache = None
        if initial_cache is not None:
            cache = make_cache(tensor(initial_cache.states, sdtype), tensor(initial_cache.counts, torch.int64),
                               tensor(initial_cache.info, sdtype), tensor(initial_cache.size, torch.int64))
        o, c, t = torch_forward(tensor(q), tensor(k), tensor(v), tensor(g), tensor(slot_weights), tau=tau,
                                beta=tensor(beta), boundaries=tensor(boundaries, torch.bool), initial_cache=cache,
                                eps=eps, norm_eps=norm_eps, **extra)
        out_cache = Cache(numpy(c.states, np.float64), numpy(c.counts, np.int64), numpy(c.info, np.float64),
                          numpy(c.size, np.int64))
        out_trace = dla_ref.Trace(numpy(t.scores, np.float64), numpy(t.starts, np.bool_), numpy(t.merged, np.int64))
        return numpy(o, np.float64), out_cache, out_trace

    return adapter
