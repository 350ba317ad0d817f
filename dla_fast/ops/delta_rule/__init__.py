"""The gated delta-rule backbone: ``S' = exp(g) (S - beta k k^T S) + beta k v^T`` (the open slot gets the write).

``chunk_torch`` (+ ``chunk_torch_scan``): the chunked forward (docs/delta-rule-chunked.md).
``recurrent``: the per-token forward (over the shared torch recurrence, the baseline) and the explicit backward.
"""
