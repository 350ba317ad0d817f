"""Stage timing for benchmarks: CUDA events recorded at stage boundaries into a caller's dict."""

from __future__ import annotations

import torch


def mark_stage(profile: dict | None, name: str | None) -> None:
    """Record a CUDA event where stage ``name`` begins; ``name=None`` ends the last stage and turns the
    events into ``profile[stage + "_ms"]`` (synchronising). A no-op without a dict, CUDA or on the CPU."""
    if profile is None or not torch.cuda.is_available():
        return
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    marks = profile.setdefault("_events", [])
    marks.append((name, event))
    if name is None:
        torch.cuda.synchronize()
        for (stage, begin), (_, end) in zip(marks[:-1], marks[1:]):
            profile[stage + "_ms"] = begin.elapsed_time(end)
        del profile["_events"]
