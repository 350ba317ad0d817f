"""dla_fast: the optimised DLA implementation (torch on any device, Triton on NVIDIA GPUs).

``forward`` and ``step`` have ``dla_ref``'s semantics on torch tensors; ``Cache`` and ``Trace`` are the
torch twins of ``dla_ref.Cache`` and ``dla_ref.Trace``. docs/architecture.md maps the package; docs/api.md
documents every argument.
"""

from dla_ref import __version__

from .api import forward, step
from .cache import Cache, Trace

__all__ = ["Cache", "Trace", "__version__", "forward", "step"]
