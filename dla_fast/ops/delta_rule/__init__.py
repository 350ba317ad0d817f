"""The gated delta-rule backbone: ``S' = exp(g) (S - beta k k^T S) + beta k v^T`` (the open slot gets the write).

``chunk_torch`` (+ ``chunk_torch_scan``): the chunked forward (docs/delta-rule-chunked.md), CPU and float64.
``chunk_fwd`` (+ ``chunk_fwd_decide``): the device forward where the Triton kernels apply (CUDA, 32 <= D <= 128):
the decisions in a Triton kernel, the merges in scalar decay's, the states and outputs in torch with the
partition fixed (section 7 there). No host round trip.
``chunk_torch_bwd`` (+ ``wy_tables``): the chunked backward of both forwards, the partition held fixed (section 6).
``recurrent``: the per-token forward (over the shared torch recurrence, the baseline).
"""
