"""Every kernel variant the interpreter reruns launched also compiles for a GPU (sm_90, Triton's own compiler and
ptxas, no GPU needed): the interpreter runs code the compiler rejects.

Twice a change passed CI and failed on the H200 at compile time: the delta rule's cotangent kernels (run 27) and a
plain Python global read inside the pair kernel (run 32's review, found 2026-12-03). Each rerun of a test file under
the interpreter records the compile-time identity of every launch (``conftest._recorded_launches``: kernel,
argument types, constexpr values, warps, stages, register cap); this test waits for the reruns and builds one of
each kernel's variants per argument types and flags with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``. The
interpreter routes 16-bit inputs to the float32 dot paths, so the bf16 tensor-core variants are not among them
(those are checked on the GPU only, docs/triton.md).
"""

from __future__ import annotations

import importlib
import json
import pathlib

import pytest

triton = pytest.importorskip("triton")

from triton_here import CUDA  # noqa: E402

import conftest  # noqa: E402

TARGET = ("cuda", 90, 32)


def _recorded() -> list:
    """The launches the session's reruns recorded, one per kernel, argument types and flags (its boolean and None
    constexprs, which choose code paths); the first in a fixed order where the tile sizes differ (each build costs
    ~2 s, and the suite launches most kernels at several sizes)."""
    lines = set()
    for path in sorted(pathlib.Path(conftest.launch_dir()).glob("*.jsonl")):
        lines |= set(path.read_text().splitlines())
    chosen = {}
    for launch in map(json.loads, sorted(lines)):
        flags = sorted((k, v) for k, v in launch["constexprs"].items() if v is None or isinstance(v, bool))
        key = json.dumps([launch["module"], launch["kernel"], flags, launch["types"]], sort_keys=True)
        chosen.setdefault(key, launch)
    return list(chosen.values())


def _jit_function(module: str, kernel: str):
    fn = getattr(importlib.import_module(module), kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # autotuners and heuristics wrap it
        fn = fn.fn
    return fn


def build(launch: dict):
    """``triton.compile`` of one recorded launch for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(launch["module"], launch["kernel"])
    constexprs = launch["constexprs"]
    signature = {name: launch["types"].get(name, "constexpr") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget(*TARGET), options=launch["options"])


@pytest.mark.skipif(CUDA, reason="on a GPU every kernel is compiled by the suite itself")
def test_every_interpreted_launch_compiles_for_sm90():
    if not conftest.reruns_finished():
        pytest.skip("no interpreter reruns in this session (run the suite, not this file alone)")
    launches = _recorded()
    assert launches, "the interpreter reruns recorded no launch"
    failed = []
    for launch in launches:
        try:
            build(launch)
        except Exception as e:  # noqa: BLE001 (every failure is reported, with its launch)
            failed.append(f"{launch['module']}.{launch['kernel']} {launch['constexprs']} {launch['options']}: "
                          f"{type(e).__name__}: {str(e)[:400]}")
    assert not failed, f"{len(failed)} of {len(launches)} recorded launches do not compile for sm_90:\n" + \
        "\n".join(failed)
