"""The scalar-decay (Mamba-2-style) backbone: ``S' = exp(g) S + k v^T`` for every slot.

- ``chunk_torch``: the chunked forward in torch (any device) around ``chunk_torch_scan`` (numba);
- ``chunk_torch_bwd``: its explicit backward with the partition held fixed;
- ``chunk_fwd`` (launcher) with ``chunk_fwd_decide``, ``chunk_fwd_states``, ``chunk_fwd_output`` (kernels):
  the Triton forward; ``chunk_bwd``: the Triton backward; ``fused_recurrent``: the Triton decode step.
"""
