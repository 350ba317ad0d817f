"""Studies of the DLA mechanism: reproducible experiments whose results back ``docs/evidence.md``.

- :mod:`studies.streams`: seeded piecewise-stationary streams, with optional planted needles.
- :mod:`studies.partitions`: partitions of a stream's past into at most ``K`` contiguous slots: DLA's (from
  ``dla_fast``'s trace), a replay of any boundary decisions through a ``K``-slot cache with a pluggable merge
  rule, the Fenwick partition of log-linear attention, uniform chunks, one slot.
- :mod:`studies.memory`: slot states of a partition, and how well they reproduce a target read (least squares
  over the slot weights).
- :mod:`studies.evidence`: the three experiments and the command line (``python -m studies.evidence``).
- :mod:`studies.report`: markdown tables and matplotlib figures from the results JSON.
- :mod:`studies.mixers`: the DLA layer's parameters with a fixed partition (Fenwick, uniform chunks, one state) in
  the quadratic form, for trained comparisons.
- :mod:`studies.recall`: the trained comparison at matched K on the recall task of ``examples/recall_lm.py``
  (``python -m studies.recall``).

The study is not part of the library: it uses ``dla_fast`` and ``dla_ref`` through their public API only
(:mod:`studies.mixers` subclasses the layer and uses its public attributes).
"""

import os

# The study solves many small least-squares problems; on a small shared machine a multithreaded BLAS only
# contends (measured: a 4096 x 128 QR 15x slower with two OpenBLAS threads than with one). This takes effect
# when ``studies`` is imported before NumPy, as ``python -m studies.evidence`` does; an explicit setting wins.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
