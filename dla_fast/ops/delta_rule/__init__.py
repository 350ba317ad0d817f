"""The gated delta-rule backbone: ``S' = exp(g) (S - beta k k^T S) + beta k v^T`` (the open slot gets the write).

``chunk_torch`` (+ ``chunk_torch_scan``): the chunked forward (docs/delta-rule-chunked.md).
``chunk_torch_bwd`` (+ ``wy_tables``): its chunked backward with the partition held fixed (section 6 there).
``recurrent``: the per-token forward (over the shared torch recurrence, the baseline).
``chunk_fwd_decide``: the Triton decision kernel, stage 2 of the planned GPU forward (docs/delta-rule-chunked.md
section 7; not wired into ``dla_fast.forward`` yet).
"""
