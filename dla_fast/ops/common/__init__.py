"""Shared by every path: score, recurrence, partition record, layouts, Triton helpers."""
