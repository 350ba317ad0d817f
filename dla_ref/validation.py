"""Input validation shared by every DLA path.

The checks work on anything with ``.shape`` and ``.ndim`` (NumPy arrays, torch tensors), so the
reference and the fast paths reject bad input with the same messages. Value checks (finite, ranges)
are returned as ``(condition, message)`` pairs so that a torch caller can evaluate all of them with a
single device synchronisation; :func:`raise_first` evaluates them for NumPy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dims:
    """The sizes of one call: batch, time, heads, key and value width, cache capacity."""

    B: int
    T: int
    H: int
    Dk: int
    Dv: int
    K: int


def _shape_error(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {tuple(got.shape)}")


def check_shapes(q, k, v, g, slot_weights, beta=None, boundaries=None, *, is_bool: Callable[[Any], bool]) -> Dims:
    """Check ranks and that B, T, H, Dk, Dv agree between the arguments; return the sizes."""
    if q.ndim != 4:
        raise _shape_error("q", "[B, T, H, Dk]", q)
    B, T, H, Dk = q.shape
    if k.ndim != 4 or tuple(k.shape) != (B, T, H, Dk):
        raise _shape_error("k", f"[B, T, H, Dk] = {[B, T, H, Dk]} (as q)", k)
    if v.ndim != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise _shape_error("v", f"[B, T, H, Dv] with [B, T, H] = {[B, T, H]} (as q)", v)
    Dv = v.shape[3]
    if Dk < 1 or Dv < 1:
        raise ValueError(f"q/v: Dk and Dv must be at least 1, got Dk={Dk}, Dv={Dv}")
    if g.ndim != 3 or tuple(g.shape) != (B, T, H):
        if tuple(g.shape) == (B, H, T) and H != T:
            raise ValueError(f"g: expected shape [B, T, H] = {[B, T, H]} (from q), got {tuple(g.shape)}; q, k and v "
                             f"look like [B, H, T, D]: DLA takes [B, T, H, D] (FLA's layout), e.g. q.transpose(1, 2)")
        raise _shape_error("g", f"[B, T, H] = {[B, T, H]}", g)
    if slot_weights.ndim != 4 or tuple(slot_weights.shape[:3]) != (B, T, H):
        raise _shape_error("slot_weights", f"[B, T, H, K] with [B, T, H] = {[B, T, H]}", slot_weights)
    K = slot_weights.shape[3]
    if K < 2:
        raise ValueError(f"slot_weights: the cache capacity K = slot_weights.shape[-1] must be >= 2, got {K}")
    if beta is not None and (beta.ndim != 3 or tuple(beta.shape) != (B, T, H)):
        raise _shape_error("beta", f"[B, T, H] = {[B, T, H]}", beta)
    if boundaries is not None:
        if boundaries.ndim != 3 or tuple(boundaries.shape) != (B, T, H):
            raise _shape_error("boundaries", f"[B, T, H] = {[B, T, H]}", boundaries)
        if not is_bool(boundaries):
            raise ValueError(f"boundaries: expected a boolean array, got dtype {boundaries.dtype}")
    return Dims(int(B), int(T), int(H), int(Dk), int(Dv), int(K))


def check_scalars(tau: float, eps: float, norm_eps: float) -> float:
    """tau may be any real or +-inf (not NaN); the guards must be positive and finite.

    Returns tau as a Python float, so that the decision ``I_t >= tau`` is taken at the caller's
    precision (a NumPy float32 tau would otherwise pull the comparison down to float32).
    """
    if isinstance(tau, (str, bytes)):
        raise ValueError(f"tau: expected a real number, got {tau!r}")
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau: expected a real number, got {tau!r}") from None
    if math.isnan(tau):
        raise ValueError("tau: expected a real number or +-inf, got NaN")
    for name, value in (("eps", eps), ("norm_eps", norm_eps)):
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return tau


def finite_message(name: str) -> str:
    return f"{name}: expected finite values, found NaN or Inf"


G_POSITIVE_MESSAGE = "g: expected log decays g <= 0 (decay exp(g) <= 1), found g > 0"
BETA_RANGE_MESSAGE = "beta: expected values in [0, 1]"


def value_checks(q, k, v, g, slot_weights, beta, *, isfinite: Callable[[Any], Any]) -> list[tuple[Any, str]]:
    """(violated, message) pairs; ``violated`` is a 0-d boolean array/tensor, true on bad input. The first
    violated one is the error raised."""
    checks = []
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("slot_weights", slot_weights), ("beta", beta)):
        if x is not None:
            checks.append((~isfinite(x).all(), finite_message(name)))
    checks.append(((g > 0).any(), G_POSITIVE_MESSAGE))
    if beta is not None:
        checks.append((((beta < 0) | (beta > 1)).any(), BETA_RANGE_MESSAGE))
    return checks


def check_cache_shapes(states, counts, info, size, dims: Dims, name: str = "initial_cache") -> None:
    """A cache continuing this call must have the call's B, H, K, Dk, Dv."""
    B, H, K, Dk, Dv = dims.B, dims.H, dims.K, dims.Dk, dims.Dv
    expected = {
        "states": ((B, H, K, Dk, Dv), states),
        "counts": ((B, H, K), counts),
        "info": ((B, H, K), info),
        "size": ((B, H), size),
    }
    for field, (shape, x) in expected.items():
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{name}.{field}: expected shape {list(shape)} for B={B}, H={H}, K={K}, Dk={Dk}, Dv={Dv}, "
                f"got {list(x.shape)}"
            )


def cache_value_checks(states, counts, info, size, K: int, *, isfinite, arange, name="initial_cache"):
    """(violated, message) pairs for a cache: sizes in [0, K], counts >= 1 exactly on used slots."""
    used = arange(K) < size[..., None]
    return [
        (((size < 0) | (size > K)).any(), f"{name}.size: expected values in [0, K={K}]"),
        ((size % 1 != 0).any(), f"{name}.size: expected whole numbers"),
        ((counts % 1 != 0).any(), f"{name}.counts: expected whole numbers"),
        ((used & (counts < 1)).any(), f"{name}.counts: expected counts >= 1 on the first `size` slots"),
        ((~used & (counts != 0)).any(), f"{name}.counts: expected zero counts on unused slots"),
        (~isfinite(states).all(), f"{name}.states: expected finite values"),
        ((~used[..., None, None] & (states != 0)).any(), f"{name}.states: expected zero states on unused slots"),
        ((~isfinite(info) | (info < 0)).any(), f"{name}.info: expected finite, non-negative sums of scores"),
        ((~used & (info != 0)).any(), f"{name}.info: expected zero sums on unused slots"),
    ]


def raise_first(checks: Sequence[tuple[Any, str]]) -> None:
    """Raise ValueError with the message of the first violated check (host-side evaluation)."""
    for violated, message in checks:
        if bool(violated):
            raise ValueError(message)
