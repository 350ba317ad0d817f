"""The paths of each backbone, side by side (docs/architecture.md).

- ``common/``: what every path shares: the score (one derivation, each backend's implementation), the
  per-token torch recurrence, the recorded partition, layout helpers and shared Triton helpers.
- ``scalar_decay/``: the Mamba-2-style backbone ``S' = a S + k v^T``: the chunked torch path (numba scan),
  its torch backward, the Triton forward, backward and decode step.
- ``delta_rule/``: the gated delta-rule backbone ``S' = a (S - beta k k^T S) + beta k v^T``.
"""
