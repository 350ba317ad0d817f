"""``njit``: numba's compiler with the project's options, or plain Python where numba is missing.

numba is a dependency; the fallback only lets the package import (and run tiny checks, slowly) without it.
Compiled with ``cache=True``: the machine code is stored in ``__pycache__`` and reused by later processes
(docs/fast-path.md gives the first-call compile time).
"""

from __future__ import annotations

try:
    import numba as _numba

    njit = _numba.njit(cache=True, nogil=True)
except ImportError:

    def njit(fn):
        return fn
