"""Input validation for the torch paths: ``dla_ref.validation``'s checks and messages, one host sync."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dla_ref.validation import Dims, cache_value_checks, check_cache_shapes, check_scalars, check_shapes, value_checks

from .cache import Cache

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_float_tensor(name: str, x, device=None) -> torch.Tensor:
    """``x`` as a floating-point tensor (array-likes are converted); integer, bool and complex data are refused
    rather than silently cast (an integer ``q`` is almost always a bug upstream)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, device=device)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
                         f"got dtype {x.dtype}")
    return x


def check_same_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k and v share one dtype: it is the dtype the products run in and that ``o`` comes back in (g,
    slot_weights and beta may be any float dtype: they are read in float32, or float64 for float64 inputs)."""
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name}: expected the dtype of q ({q.dtype}), got {x.dtype}; q, k and v must share "
                             f"one dtype (cast them, e.g. k.to(q.dtype))")


def all_finite(x: torch.Tensor) -> torch.Tensor:
    """0-d bool: every entry of ``x`` is finite. One pass, no temporary (NaN and +-inf reach an extreme)."""
    if x.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=x.device)
    lo, hi = torch.aminmax(x)
    return torch.isfinite(lo) & torch.isfinite(hi)


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """States and scores are float32, or float64 when the inputs are float64 (exact checks)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def check_same_device(**tensors) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for name, device in devices.items():
        if device != first:
            raise ValueError(f"{name}: expected a tensor on {first} (as q), got one on {device}")
    return first


def raise_first(checks: Sequence[tuple[Any, str]]) -> None:
    """Evaluate every (violated, message) pair with one device synchronisation; raise the first violated."""
    if not checks:
        return
    flags = torch.stack([torch.as_tensor(c).reshape(()).to(torch.bool) for c, _ in checks])
    for flag, (_, message) in zip(flags.tolist(), checks):
        if flag:
            raise ValueError(message)


def as_cache(cache, dims: Dims, device, dtype, name: str = "initial_cache") -> Cache:
    """Shape-check a ``dla_fast.Cache`` (or ``dla_ref.Cache``, converted) and bring it to device/dtype."""
    import dla_ref

    if isinstance(cache, dla_ref.Cache):
        cache = Cache.from_ref(cache, device=device, dtype=dtype)
    if not isinstance(cache, Cache):
        raise ValueError(f"{name}: expected a dla_fast.Cache (or dla_ref.Cache) or None, got {type(cache).__name__}")
    check_cache_shapes(cache.states, cache.counts, cache.info, cache.size, dims, name=name)
    for field in ("counts", "size"):
        x = getattr(cache, field)
        if x.dtype.is_floating_point or x.dtype.is_complex:
            raise ValueError(f"{name}.{field}: expected an integer tensor, got dtype {x.dtype}")
    return cache


# The merge simulation (``dla_merge_kernel``) adds counts in float64, exact below 2**53: a row's counts may sum to
# below 2**52, which leaves room for a call's tokens (fewer than 2**31). No stream of tokens reaches it; a cache built
# by hand could.
ROW_COUNT_LIMIT = 2**52


def cache_checks(cache: Cache, K: int, name: str = "initial_cache") -> list:
    device = cache.states.device
    # each count too, not only the row's sum: an int64 sum of counts near 2**63 wraps below the limit
    too_large = ((cache.counts >= ROW_COUNT_LIMIT).any(-1) | (cache.counts.sum(-1) >= ROW_COUNT_LIMIT)).any()
    return cache_value_checks(
        cache.states, cache.counts, cache.info, cache.size, K,
        isfinite=all_finite, arange=lambda n: torch.arange(n, device=device), name=name,
    ) + [(too_large, f"{name}.counts: expected each row's counts to sum below 2**52 (dla_fast adds them in float64)")]


def validate_forward(q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps, initial_cache, chunk_size):
    """All of forward's checks; returns ``(tensors, tau, dims, cache)`` with the cache on q's device/dtype."""
    *validated, pending = forward_checks(q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps,
                                         initial_cache, chunk_size)
    raise_first(pending)
    return tuple(validated)


def forward_checks(q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps, initial_cache, chunk_size,
                   input_values: bool = True):
    """``validate_forward`` without reading the value checks back: ``(tensors, tau, dims, cache, pending)``, with
    ``pending`` the (violated, message) pairs still on the device: the inputs' (unless ``input_values`` is false:
    a caller that checks them itself), then the initial cache's. The caller must raise them (``raise_first``)
    before it returns anything computed from the inputs; structure, shape, dtype and scalar errors are raised
    here."""
    q, k, v, g, slot_weights = (as_float_tensor(n, x) for n, x in
                                zip(("q", "k", "v", "g", "slot_weights"), (q, k, v, g, slot_weights)))
    device = q.device
    beta = None if beta is None else as_float_tensor("beta", beta, device)
    if boundaries is not None and not isinstance(boundaries, torch.Tensor):
        boundaries = torch.as_tensor(boundaries, device=device)
    check_same_device(q=q, k=k, v=v, g=g, slot_weights=slot_weights, beta=beta, boundaries=boundaries)
    check_same_dtype(q, k, v)
    dims = check_shapes(q, k, v, g, slot_weights, beta, boundaries, is_bool=lambda x: x.dtype == torch.bool)
    checked_tau = check_scalars(tau, eps, norm_eps)
    tau = float(tau) if checked_tau is None else checked_tau
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    # While torch.compile traces, no value checks (a host read): dla::forward runs them when it runs (docs/api.md).
    tracing = torch.compiler.is_compiling()
    checks = [] if tracing or not input_values else input_value_checks(q, k, v, g, slot_weights, beta)
    cache = None
    if initial_cache is not None:
        cache = as_cache(initial_cache, dims, device, compute_dtype(q))
        checks += [] if tracing else cache_checks(cache, dims.K)
    return (q, k, v, g, slot_weights, beta, boundaries), tau, dims, cache, checks


def input_value_checks(q, k, v, g, slot_weights, beta) -> list:
    """The inputs' (violated, message) pairs on their device (``dla_ref.validation.value_checks``)."""
    return value_checks(q, k, v, g, slot_weights, beta, isfinite=all_finite)


def _step_shape_error(name: str, expected: str, x) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")


def validate_step(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps, cache):
    """step's checks (one token per sequence: no time axis); returns ``(tensors, boundary, tau, dims, cache)``.

    Shapes, dtypes and scalars always, unless this cache's last step had the same signature (``step_signature``):
    a decode loop pays for them once. The token's values (finite inputs, ``g <= 0``, ``beta`` in [0, 1]) on the
    CPU only, where reading them back costs no device synchronisation. The cache's values once per cache
    (``Cache.checked``): a cache built by dla_fast is valid by construction, one from elsewhere is checked on
    its first step (one sync), never per token.
    """
    tracing = torch.compiler.is_compiling()  # while torch.compile traces: no value checks at all (docs/api.md)
    signature = None if tracing else step_signature(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps,
                                                    cache)
    known = signature is not None and cache.checked and cache.scratch.get("signature") == signature
    if known:
        tau, dims = cache.scratch["validated"]
    else:
        (q, k, v, g, slot_weights, beta), boundary, tau, dims = _check_step_structure(
            q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps)
    checks = []
    if q.is_cpu and not tracing:  # free on the host; on an accelerator a sync per decoded token
        checks = input_value_checks(q, k, v, g, slot_weights, beta)
    if cache is None:
        cache = Cache.empty(dims.B, dims.H, dims.K, dims.Dk, dims.Dv, dtype=compute_dtype(q), device=q.device)
    elif not known:
        _check_step_cache(cache, dims, q.device)
        if not cache.checked and not tracing:
            checks += cache_checks(cache, dims.K, name="cache")
    raise_first(checks)
    cache.checked = cache.checked or not tracing
    if not known:
        cache.scratch.clear()  # what the last signature decided, its buffers and compiled launches
        if signature is not None:  # the cache's tensors held too: their ids, in the signature, stay theirs
            cache.scratch.update(signature=signature, validated=(tau, dims),
                                 tensors=(cache.states, cache.counts, cache.info, cache.size))
    return (q, k, v, g, slot_weights, beta), boundary, tau, dims, cache


_Tensor = torch.Tensor
_NUMBERS = (int, float)


def step_signature(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps, cache):
    """What step's checks and kernels depend on, for a cache and tensor inputs (None otherwise): each input's
    shape, dtype and device, the scalars with their types, and the cache's tensors by identity (a tensor's
    shape, dtype and device do not change). The step's kernels do not specialise on the inputs' alignment."""
    # Plain conditions rather than all(...) over generators: this runs once per decoded token (half the time).
    if (not isinstance(cache, Cache) or type(q) is not _Tensor or type(k) is not _Tensor or type(v) is not _Tensor
            or type(g) is not _Tensor or type(slot_weights) is not _Tensor
            or (beta is not None and type(beta) is not _Tensor)
            or (boundary is not None and type(boundary) is not _Tensor)
            or type(tau) not in _NUMBERS or type(eps) not in _NUMBERS or type(norm_eps) not in _NUMBERS):
        return None
    return (
        q.shape, k.shape, v.shape, g.shape, slot_weights.shape,
        q.dtype, k.dtype, v.dtype, g.dtype, slot_weights.dtype,
        q.get_device(), k.get_device(), v.get_device(), g.get_device(), slot_weights.get_device(),
        None if beta is None else (beta.shape, beta.dtype, beta.get_device()),
        None if boundary is None else (boundary.shape, boundary.dtype, boundary.get_device()),
        type(tau), tau, type(eps), eps, type(norm_eps), norm_eps,
        id(cache.states), id(cache.counts), id(cache.info), id(cache.size),
    )


def _check_step_structure(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps):
    """Types, dtypes, devices, shapes and scalars of one step; returns ``(tensors, boundary, tau, dims)``."""
    q, k, v, g, slot_weights = (as_float_tensor(n, x) for n, x in
                                zip(("q", "k", "v", "g", "slot_weights"), (q, k, v, g, slot_weights)))
    device = q.device
    beta = None if beta is None else as_float_tensor("beta", beta, device)
    check_same_device(q=q, k=k, v=v, g=g, slot_weights=slot_weights, beta=beta)
    check_same_dtype(q, k, v)
    dims = _step_dims(q, k, v, g, slot_weights, beta)
    if boundary is not None:
        boundary = torch.as_tensor(boundary, device=device)
        if boundary.dtype != torch.bool or tuple(boundary.shape) != (dims.B, dims.H):
            raise ValueError(f"boundary: expected a bool tensor of shape [B, H] = {[dims.B, dims.H]}, "
                             f"got {boundary.dtype} {tuple(boundary.shape)}")
    checked_tau = check_scalars(tau, eps, norm_eps)
    return (q, k, v, g, slot_weights, beta), boundary, float(tau) if checked_tau is None else checked_tau, dims


def _step_dims(q, k, v, g, slot_weights, beta) -> Dims:
    """The shapes of one decoding step (no time axis)."""
    if q.ndim != 3:
        raise _step_shape_error("q", "[B, H, Dk]", q)
    B, H, Dk = q.shape
    if tuple(k.shape) != (B, H, Dk):
        raise _step_shape_error("k", f"[B, H, Dk] = {[B, H, Dk]} (as q)", k)
    if v.ndim != 3 or tuple(v.shape[:2]) != (B, H):
        raise _step_shape_error("v", f"[B, H, Dv] with [B, H] = {[B, H]} (as q)", v)
    Dv = v.shape[2]
    if Dk < 1 or Dv < 1:
        raise ValueError(f"q/v: Dk and Dv must be at least 1, got Dk={Dk}, Dv={Dv}")
    if tuple(g.shape) != (B, H):
        raise _step_shape_error("g", f"[B, H] = {[B, H]}", g)
    if slot_weights.ndim != 3 or tuple(slot_weights.shape[:2]) != (B, H):
        raise _step_shape_error("slot_weights", f"[B, H, K] with [B, H] = {[B, H]}", slot_weights)
    K = slot_weights.shape[2]
    if K < 2:
        raise ValueError(f"slot_weights: the cache capacity K = slot_weights.shape[-1] must be >= 2, got {K}")
    if beta is not None and tuple(beta.shape) != (B, H):
        raise _step_shape_error("beta", f"[B, H] = {[B, H]}", beta)
    return Dims(int(B), 1, int(H), int(Dk), int(Dv), int(K))


def _check_step_cache(cache, dims: Dims, device) -> None:
    """The cache's type, shapes, device and dtypes (no values: those are checked once, see ``validate_step``)."""
    if not isinstance(cache, Cache):
        raise ValueError(f"cache: expected a dla_fast.Cache or None, got {type(cache).__name__}")
    check_cache_shapes(cache.states, cache.counts, cache.info, cache.size, dims, name="cache")
    if cache.states.device != device:
        raise ValueError(f"cache: expected a cache on {device} (as q), got one on {cache.states.device}")
    if cache.states.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cache.states: expected float32 or float64, got dtype {cache.states.dtype}")
    if cache.counts.dtype != torch.int64 or cache.size.dtype != torch.int64:
        raise ValueError("cache: expected int64 counts and size (step updates the cache in place)")
