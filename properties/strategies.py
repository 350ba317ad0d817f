"""What the properties draw: a small, printable :class:`Spec`, turned into arrays by :func:`build`.

Hypothesis draws only the *parameters* of a case (sizes, regimes, tau mode, a seed); :func:`build` makes
the arrays with ``numpy.random.default_rng(spec.seed)``. Shrinking therefore works on a handful of
integers and labels and stays fast, and every failure prints ``build(Spec(...))``: paste it after
``from properties.strategies import Spec, build`` to rerun the case.

Regimes (each chosen to make the contract's corners actually happen):

- ``data``: ``random`` (i.i.d. normal); ``piecewise`` (piecewise-stationary: regimes of ``regime_len``
  tokens around a random centre, with ``noise``); ``repeated`` (tokens drawn from a vocabulary of 1-3
  (k, v) pairs, in runs: identical tokens give identical scores, hence exact density ties); ``zero_keys``
  / ``zero_values`` (a fraction ``zero_frac`` of tokens with k = 0 or v = 0: scores exactly 0, ties
  everywhere); ``large`` / ``small`` (q, k, v scaled by 1e6 / 1e-6: the guards ``eps`` and ``norm_eps``
  dominate or vanish).
- ``decay``: ``none`` (g = 0), ``mild`` (g in [-0.1, 0]), ``strong`` (g ~ -Exp(1.5), down to about -10).
- ``backbone``: ``scalar`` (beta = None) or ``delta`` (beta in [0, 1], some exactly 0 and 1; keys are
  normalised to unit norm, as the delta rule expects, so that the transition is a contraction).
- ``tau_mode``: ``value`` (``tau_value``); ``zero`` (0.0: a score of exactly 0 must open a slot);
  ``negative`` (-1 or -inf); ``inf`` (+inf); ``observed`` (a pilot run with ``tau_value`` and tau set to
  the observed score at quantile ``tau_quantile``, so boundaries and merges really happen); ``exact``
  (tau equal, bit for bit, to a score that occurs in the final run: the ``>=`` tie).
- ``boundaries``: ``none`` or ``random`` (the override, each token True with ``boundary_p``).
- ``prefix``: 0 (empty initial cache) or the length of a prefix run whose final cache becomes
  ``initial_cache`` (so the call continues a stream, possibly with a full cache).
- ``splits``: split points for the streaming properties.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from hypothesis import strategies as st

import dla_ref
from dla_ref import Cache

DATA = ("random", "piecewise", "repeated", "zero_keys", "zero_values", "large", "small")
DECAY = ("none", "mild", "strong")
BACKBONE = ("scalar", "delta")
WEIGHTS = ("random", "ones", "positive")
TAU_MODES = ("value", "zero", "negative", "inf", "observed", "exact")
BOUNDARIES = ("none", "random")

# Longest call drawn: long enough for several merges at K <= 10, short enough for hundreds of cases a minute;
# the thorough profile draws longer calls too (override: DLA_PROPERTIES_MAX_T).
MAX_T = int(os.environ.get("DLA_PROPERTIES_MAX_T",
                           "48" if os.environ.get("DLA_HYPOTHESIS_PROFILE", "ci") == "thorough" else "24"))


@dataclass(frozen=True)
class Spec:
    """Everything needed to rebuild a case; ``build(spec)`` is deterministic."""

    seed: int = 0
    B: int = 1
    T: int = 8
    H: int = 1
    Dk: int = 2
    Dv: int = 2
    K: int = 3
    backbone: str = "scalar"
    decay: str = "none"
    data: str = "random"
    regime_len: int = 4
    noise: float = 0.1
    zero_frac: float = 1.0
    weights: str = "random"
    tau_mode: str = "value"
    tau_value: float = 0.6
    tau_quantile: float = 0.5
    boundaries: str = "none"
    boundary_p: float = 0.5
    prefix: int = 0
    splits: tuple = ()


@dataclass
class Case:
    """Arrays and keyword arguments of one call, plus the :class:`Spec` they came from.

    ``note`` records changes a property made after :func:`build` (e.g. ``tau=inf``), so the printed
    ``repr`` stays a complete recipe.
    """

    spec: Spec
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray
    slot_weights: np.ndarray
    beta: Optional[np.ndarray] = None
    boundaries: Optional[np.ndarray] = None
    initial_cache: Optional[Cache] = None
    tau: float = 0.6
    eps: float = 1e-6
    norm_eps: float = 1e-6
    note: tuple = field(default=())

    # sizes
    @property
    def B(self) -> int:
        return self.q.shape[0]

    @property
    def T(self) -> int:
        return self.q.shape[1]

    @property
    def H(self) -> int:
        return self.q.shape[2]

    @property
    def Dk(self) -> int:
        return self.q.shape[3]

    @property
    def Dv(self) -> int:
        return self.v.shape[3]

    @property
    def K(self) -> int:
        return self.slot_weights.shape[3]

    def arrays(self) -> tuple:
        """``(q, k, v, g, slot_weights)``, copies (an implementation may not mutate the case)."""
        return tuple(x.copy() for x in (self.q, self.k, self.v, self.g, self.slot_weights))

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the call (copies)."""
        return dict(
            tau=self.tau,
            beta=None if self.beta is None else self.beta.copy(),
            boundaries=None if self.boundaries is None else self.boundaries.copy(),
            initial_cache=None if self.initial_cache is None else self.initial_cache.copy(),
            eps=self.eps,
            norm_eps=self.norm_eps,
        )

    def run(self, impl: Callable) -> tuple:
        """``impl(q, k, v, g, slot_weights, **kwargs)`` on copies of the case."""
        return impl(*self.arrays(), **self.kwargs())

    def replace(self, note: str, **changes) -> "Case":
        """A modified copy; ``note`` (e.g. ``"tau=inf"``) is appended to the printed recipe."""
        return dataclasses.replace(self, note=self.note + (note,), **changes)

    def time_slice(self, start: int, stop: int, initial_cache: Optional[Cache]) -> "Case":
        """Tokens ``[start, stop)`` of this case, continuing from ``initial_cache``."""
        sl = lambda x: None if x is None else x[:, start:stop].copy()  # noqa: E731
        return dataclasses.replace(
            self,
            q=sl(self.q), k=sl(self.k), v=sl(self.v), g=sl(self.g), slot_weights=sl(self.slot_weights),
            beta=sl(self.beta), boundaries=sl(self.boundaries), initial_cache=initial_cache,
            note=self.note + (f"tokens[{start}:{stop}]",),
        )

    @property
    def initial_tokens(self) -> np.ndarray:
        """``[B, H]``: how many tokens the initial cache already holds (0 without one)."""
        if self.initial_cache is None:
            return np.zeros((self.B, self.H), dtype=np.int64)
        return self.initial_cache.counts.sum(-1)

    @property
    def initial_size(self) -> np.ndarray:
        if self.initial_cache is None:
            return np.zeros((self.B, self.H), dtype=np.int64)
        return self.initial_cache.size

    def __repr__(self) -> str:
        extra = "".join(f"  # then {n}" for n in self.note)
        return f"build({self.spec!r}){extra}  [tau={self.tau!r}]"


# ---------------------------------------------------------------------------------------------
# Building the arrays
# ---------------------------------------------------------------------------------------------


def _tokens(rng: np.random.Generator, spec: Spec, n: int) -> dict[str, np.ndarray]:
    B, H, Dk, Dv, K = spec.B, spec.H, spec.Dk, spec.Dv, spec.K
    q = rng.standard_normal((B, n, H, Dk))
    if spec.data == "piecewise":
        regimes = max(1, -(-n // max(1, spec.regime_len)))
        ck = rng.standard_normal((B, regimes, H, Dk))
        cv = rng.standard_normal((B, regimes, H, Dv))
        which = np.arange(n) // max(1, spec.regime_len)
        k = ck[:, which] + spec.noise * rng.standard_normal((B, n, H, Dk))
        v = cv[:, which] + spec.noise * rng.standard_normal((B, n, H, Dv))
    elif spec.data == "repeated":
        vocab = int(rng.integers(1, 4))
        vk = rng.standard_normal((B, vocab, H, Dk))
        vv = rng.standard_normal((B, vocab, H, Dv))
        runs = np.arange(n) // max(1, spec.regime_len)
        ids = rng.integers(0, vocab, size=(B, int(runs[-1]) + 1 if n else 0, H))[:, runs]
        k = np.take_along_axis(vk, ids[..., None], axis=1) if n else np.zeros((B, 0, H, Dk))
        v = np.take_along_axis(vv, ids[..., None], axis=1) if n else np.zeros((B, 0, H, Dv))
    else:
        k = rng.standard_normal((B, n, H, Dk))
        v = rng.standard_normal((B, n, H, Dv))
    if spec.backbone == "delta":  # unit keys: the delta rule's transition is then a contraction
        norm = np.linalg.norm(k, axis=-1, keepdims=True)
        k = np.where(norm > 0, k / np.where(norm > 0, norm, 1.0), 0.0)
    if spec.data in ("zero_keys", "zero_values"):
        mask = rng.random((B, n, H)) < spec.zero_frac
        if spec.data == "zero_keys":
            k[mask] = 0.0
        else:
            v[mask] = 0.0
    if spec.data in ("large", "small"):
        scale = 1e6 if spec.data == "large" else 1e-6
        q, v = q * scale, v * scale
        if spec.backbone == "scalar":
            k = k * scale
    if spec.decay == "none":
        g = np.zeros((B, n, H))
    elif spec.decay == "mild":
        g = -rng.uniform(0.0, 0.1, size=(B, n, H))
    else:
        g = -np.minimum(rng.exponential(1.5, size=(B, n, H)), 10.0)
    if spec.weights == "ones":
        w = np.ones((B, n, H, K))
    elif spec.weights == "positive":
        w = rng.uniform(0.1, 1.0, size=(B, n, H, K))
    else:
        w = rng.standard_normal((B, n, H, K))
    beta = None
    if spec.backbone == "delta":
        beta = rng.uniform(0.0, 1.0, size=(B, n, H))
        pick = rng.random((B, n, H))
        beta[pick < 0.1] = 0.0
        beta[pick > 0.8] = 1.0
    bnd = None
    if spec.boundaries == "random":
        bnd = rng.random((B, n, H)) < spec.boundary_p
    return dict(q=q, k=k, v=v, g=g, slot_weights=w, beta=beta, boundaries=bnd)


def _exact_tau(case: Case, pilot_tau: float, quantile: float) -> Optional[float]:
    """A tau equal, bit for bit, to a score of the run with that tau (None when none is found).

    From a pilot run with ``pilot_tau``, a token t* qualifies when every earlier score of its (b, h)
    is on the same side of ``pilot_tau`` and of ``I_t*`` (so the run with ``tau = I_t*`` repeats the
    pilot's history up to t* and computes exactly the same ``I_t*``). The chosen tau is verified.
    """
    if case.T == 0:
        return None
    _, _, trace = case.replace("pilot", tau=pilot_tau).run(dla_ref.forward)
    nonempty = case.initial_size[:, None, :] > 0
    candidates = []
    for b in range(case.B):
        for h in range(case.H):
            s = trace.scores[b, :, h]
            for t in range(case.T):
                if t == 0 and not nonempty[b, 0, h]:
                    continue
                x = s[t]
                if not np.isfinite(x):
                    continue
                earlier = s[:t] if nonempty[b, 0, h] else s[1:t]
                if np.all((earlier >= pilot_tau) == (earlier >= x)):
                    candidates.append((x, b, t, h))
    if not candidates:
        return None
    candidates.sort()
    x, b, t, h = candidates[min(len(candidates) - 1, int(quantile * len(candidates)))]
    _, _, check = case.replace("verify", tau=x).run(dla_ref.forward)
    return float(x) if check.scores[b, t, h] == x else None


def build(spec: Spec) -> Case:
    """The arrays of ``spec``, from ``numpy.random.default_rng(spec.seed)``; deterministic."""
    rng = np.random.default_rng(spec.seed)
    tau = {"value": spec.tau_value, "zero": 0.0, "inf": np.inf}.get(spec.tau_mode, spec.tau_value)
    if spec.tau_mode == "negative":
        tau = -np.inf if spec.tau_value > 1.0 else -1.0
    initial = None
    if spec.prefix > 0:
        pre = _tokens(rng, spec, spec.prefix)
        pilot = spec.tau_value if spec.tau_mode in ("observed", "exact") else tau
        _, initial, _ = dla_ref.forward(
            pre["q"], pre["k"], pre["v"], pre["g"], pre["slot_weights"],
            tau=pilot, beta=pre["beta"], boundaries=pre["boundaries"],
        )
    arrays = _tokens(rng, spec, spec.T)
    case = Case(spec=spec, initial_cache=initial, tau=float(tau), **arrays)
    if spec.tau_mode == "observed" and spec.T > 0:
        _, _, trace = case.replace("pilot", tau=spec.tau_value).run(dla_ref.forward)
        scores = trace.scores[:, 1:].ravel() if case.initial_cache is None else trace.scores.ravel()
        if scores.size:
            scores = np.sort(scores)
            case.tau = float(scores[min(scores.size - 1, int(spec.tau_quantile * scores.size))])
    elif spec.tau_mode == "exact":
        x = _exact_tau(case, spec.tau_value, spec.tau_quantile)
        if x is not None:
            case.tau = x
    return case


# ---------------------------------------------------------------------------------------------
# The Hypothesis strategies
# ---------------------------------------------------------------------------------------------


def _pick(fixed: dict, name: str, default):
    """A field's strategy: the caller's fixed value or strategy, else the default strategy."""
    if name not in fixed:
        return default
    value = fixed[name]
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


@st.composite
def specs(draw, **fixed) -> Spec:
    """Draw a :class:`Spec`. Any field may be fixed by keyword, as a value or as a strategy.

    Two extra keywords bound the sizes: ``max_T`` (default :data:`MAX_T`) and ``min_T`` (default 0).
    """
    fixed = dict(fixed)
    max_T = fixed.pop("max_T", MAX_T)
    min_T = fixed.pop("min_T", 0)
    T = draw(_pick(fixed, "T", st.one_of(st.integers(min_T, max(min_T, min(max_T, 3))), st.integers(min_T, max_T))))
    K = draw(_pick(fixed, "K", st.integers(2, max(2, min(T + 3, 10)))))
    tau_mode = draw(_pick(fixed, "tau_mode", st.sampled_from(TAU_MODES)))
    data = draw(_pick(fixed, "data", st.sampled_from(DATA)))
    splits = draw(_pick(fixed, "splits", st.lists(st.integers(0, T), max_size=3).map(lambda s: tuple(sorted(s)))))
    return Spec(
        seed=draw(_pick(fixed, "seed", st.integers(0, 2**32 - 1))),
        B=draw(_pick(fixed, "B", st.integers(1, 2))),
        T=T,
        H=draw(_pick(fixed, "H", st.integers(1, 2))),
        Dk=draw(_pick(fixed, "Dk", st.integers(1, 4))),
        Dv=draw(_pick(fixed, "Dv", st.integers(1, 4))),
        K=K,
        backbone=draw(_pick(fixed, "backbone", st.sampled_from(BACKBONE))),
        decay=draw(_pick(fixed, "decay", st.sampled_from(DECAY))),
        data=data,
        regime_len=draw(_pick(fixed, "regime_len", st.integers(1, 8))),
        noise=draw(_pick(fixed, "noise", st.sampled_from((0.0, 0.01, 0.1, 1.0)))),
        zero_frac=draw(_pick(fixed, "zero_frac", st.sampled_from((0.5, 1.0)))),
        weights=draw(_pick(fixed, "weights", st.sampled_from(WEIGHTS))),
        tau_mode=tau_mode,
        tau_value=draw(_pick(fixed, "tau_value", st.floats(0.05, 2.0))),
        tau_quantile=draw(_pick(fixed, "tau_quantile", st.floats(0.0, 1.0))),
        boundaries=draw(_pick(fixed, "boundaries", st.sampled_from(BOUNDARIES))),
        boundary_p=draw(_pick(fixed, "boundary_p", st.sampled_from((0.1, 0.5, 0.9)))),
        prefix=draw(_pick(fixed, "prefix", st.one_of(st.just(0), st.integers(1, 2 * K + 2)))),
        splits=splits,
    )


def cases(**fixed) -> st.SearchStrategy[Case]:
    """Draw a built :class:`Case` (see :func:`specs` for the keywords)."""
    return specs(**fixed).map(build)
