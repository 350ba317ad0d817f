"""dla_ref: the readable float64 NumPy reference that defines Dynamic Linear Attention's semantics."""

from .cache import Cache, Trace
from .reference import forward, step

__version__ = "0.2.0"  # the distribution's version (pyproject.toml reads it); dla_fast shares it

__all__ = ["Cache", "Trace", "__version__", "forward", "step"]
