"""dla_ref: the readable float64 NumPy reference that defines Dynamic Linear Attention's semantics."""

from .cache import Cache, Trace
from .reference import forward, step

__all__ = ["Cache", "Trace", "forward", "step"]
