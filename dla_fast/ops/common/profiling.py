"""Stage timing for benchmarks: CUDA events recorded at stage boundaries into a caller's dict."""

from __future__ import annotations

import torch


def mark_stage(profile: dict | None, name: str | None) -> None:
    """Record a CUDA event where stage ``name`` begins; ``name=None`` ends the last stage and turns the
    events into ``profile[stage + "_ms"]`` (synchronising; a stage entered several times gets the sum of its
    windows). A no-op without a dict, CUDA or on the CPU."""
    if profile is None or not torch.cuda.is_available():
        return
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    marks = profile.setdefault("_events", [])
    marks.append((name, event))
    if name is None:
        torch.cuda.synchronize()
        times = {}
        for (stage, begin), (_, end) in zip(marks[:-1], marks[1:]):
            times[stage + "_ms"] = times.get(stage + "_ms", 0.0) + begin.elapsed_time(end)
        profile.update(times)
        del profile["_events"]
