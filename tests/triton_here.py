"""Where the Triton kernel tests run (shared by ``test_triton_kernels.py`` and ``test_triton_backward.py``).

In-process on a CUDA GPU or when ``TRITON_INTERPRET=1`` is set. On a machine with neither (CI), each file's
``test_interpreter_run`` waits for that file's rerun in a subprocess with ``TRITON_INTERPRET=1`` (started with the
others when the tests are collected: the root ``conftest.py``): Triton reads the variable when the kernels are
defined, so it cannot be switched on inside this process.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
RUN_HERE = INTERPRET or CUDA
DEV = "cuda" if CUDA else "cpu"

needs_kernels = pytest.mark.skipif(not RUN_HERE, reason="needs CUDA or TRITON_INTERPRET=1")
runs_elsewhere = pytest.mark.skipif(RUN_HERE, reason="kernels run in this process")


def after_prefix(x_all, prefix: int, lengths):
    """The inputs after their first ``prefix`` tokens, each batch row zero past its length (as the API pads a
    variable-length batch), and the lengths as a tensor on ``DEV`` (None: every row full)."""
    x = [a[:, prefix:].clone() for a in x_all]
    for b, n in enumerate(lengths or ()):
        for a in x:
            a[b, n:] = 0
    return x, None if lengths is None else torch.tensor(lengths, device=DEV)
