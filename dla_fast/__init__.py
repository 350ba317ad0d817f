"""dla_fast: the optimised DLA implementation (torch, Triton)."""
