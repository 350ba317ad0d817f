"""dla_fast: the optimised DLA implementation (torch, Triton).

``forward`` and ``step`` have ``dla_ref``'s semantics on torch tensors; ``Cache`` and ``Trace`` are the
torch twins of ``dla_ref.Cache`` and ``dla_ref.Trace``. See docs/fast-path.md.
"""

from .api import forward, step
from .cache import Cache, Trace

__all__ = ["Cache", "Trace", "forward", "step"]
