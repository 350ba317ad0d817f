"""Which path runs a call: the Triton kernels or the torch code (docs/architecture.md).

The one environment variable the library reads is ``DLA_FAST_BACKEND`` (with Triton's own
``TRITON_INTERPRET``), and it is read here alone:

- unset or ``auto``: CUDA tensors of float32, bfloat16 or float16 with ``32 <= Dk, Dv <= 128`` run the
  Triton kernels (the scalar-decay forward and backward, the delta rule's decisions and merges inside its
  device forward, the decode step of both backbones); everything else runs torch;
- ``torch``: torch everywhere (the chunked torch path on the GPU too);
- ``triton`` with ``TRITON_INTERPRET=1``: the kernels on CPU tensors through Triton's interpreter (tests).
"""

from __future__ import annotations

import os

import torch

# Head sizes below 32 take the torch path on CUDA (the Triton forward refuses them: a known fault at 16,
# docs/triton.md); the step follows the same rule so both paths agree.
TRITON_MIN_DIM = 32
# The kernels accept heads up to 256, but above 128 the forward exceeds the H200's shared memory on a GPU
# (262,144 > 232,448 bytes at Dk = Dv = 256 in float32, bfloat16 and float16; measured 2026-11-30): wider
# heads take the torch path there (the interpreter, which has no such limit, still runs them in tests).
TRITON_MAX_DIM = 256
TRITON_MAX_GPU_DIM = 128
# The delta rule's slot-state kernel holds every slot of a block of value features in one program: above 128 slots
# not even one feature's fits the H200's shared memory (164 KB at K = 128, Dk = 128; sm_90 compile, 2026-11-30),
# so more slots take the chunked torch path.
TRITON_MAX_DELTA_SLOTS = 128
BACKENDS = ("auto", "torch", "triton")


def requested_backend() -> str:
    """The value of ``DLA_FAST_BACKEND`` (``auto`` when unset); anything else is an error."""
    backend = os.environ.get("DLA_FAST_BACKEND", "") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"DLA_FAST_BACKEND: expected one of {BACKENDS}, got {backend!r}")
    return backend


def interpreting() -> bool:
    """Whether Triton runs kernels through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def uses_triton(x: torch.Tensor, dk: int, dv: int) -> bool:
    """Whether a call on ``x``'s device and dtype, with these head sizes, runs the Triton kernels (where the
    backbone has them: every scalar-decay path; the delta rule's forward, decode step and its backward's reverse
    pass over chunks, the rest of its backward being torch)."""
    backend = requested_backend()
    if x.dtype == torch.float64 or backend == "torch":
        return False
    if backend == "triton" and interpreting():
        return dk <= TRITON_MAX_DIM and dv <= TRITON_MAX_DIM and triton_available()
    if not x.is_cuda:
        return False
    in_range = min(dk, dv) >= TRITON_MIN_DIM and max(dk, dv) <= TRITON_MAX_GPU_DIM
    return in_range and triton_available()


def uses_delta_kernels(x: torch.Tensor, dk: int, dv: int, slots: int) -> bool:
    """Whether the delta rule's slot-state kernels run (its device forward; its backward's reverse pass): as
    :func:`uses_triton`, and up to ``TRITON_MAX_DELTA_SLOTS`` slots."""
    return uses_triton(x, dk, dv) and slots <= TRITON_MAX_DELTA_SLOTS
