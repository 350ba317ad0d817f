"""Runnable examples of DLA in a model (docs/model.md)."""
