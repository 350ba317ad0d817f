"""Build recorded kernel launches for sm_90 without a GPU: ``triton.compile`` of each for ``GPUTarget("cuda", 90,
32)``, with whichever Triton comes first on the path.

``tests/test_triton_sm90_builds.py`` builds in its own process with the test environment's Triton, and runs
``python tests/sm90_build.py LAUNCHES.json`` with the GPU machines' Triton first on ``PYTHONPATH``: a kernel one Triton
version compiles, another may reject (run 36: a gather along a 2-wide axis built with Triton 3.9 and failed in Triton
3.6's thread-locality pass). The script prints ``{"triton": version, "failed": [...]}`` as JSON.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import subprocess
import sys
import tempfile

import triton

TARGET = ("cuda", 90, 32)


def jit_function(module: str, kernel: str):
    """The kernel's ``JITFunction`` (autotuners and heuristics wrap it)."""
    fn = getattr(importlib.import_module(module), kernel)
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    return fn


def divisibility(fn, launch: dict) -> dict:
    """The launch's ``tt.divisibility`` attributes as the GPU's JIT sets them: on each argument recorded divisible by
    16 (an integer's value, a tensor's address) that the kernel does not exempt (``do_not_specialize``, or
    ``do_not_specialize_on_alignment`` for an address). Without them the build is another kernel (run 44, Triton 3.6:
    the output kernel as it was before that run built with 640 B of stack and 4 wgmma waits, with them none and 20,
    as ``ncu`` found it on the H200)."""
    exempt = {p.name for p in fn.params if p.do_not_specialize or p.do_not_specialize_on_alignment}
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if name in launch.get("divisible", ()) and name not in exempt}


def build(launch: dict):
    """``triton.compile`` of one recorded launch (``conftest._recorded_launches``' format) for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(launch["module"], launch["kernel"])
    constexprs = launch["constexprs"]
    signature = {name: launch["types"].get(name, "constexpr") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                       attrs=divisibility(fn, launch))
    return triton.compile(source, target=GPUTarget(*TARGET), options=launch["options"])


def cuobjdump(kernel, flag: str) -> str:
    """``cuobjdump FLAG`` of a compiled kernel's cubin (``-sass``, ``-res-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([triton.knobs.nvidia.cuobjdump.path, flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def cubin_sass(kernel) -> str:
    """``cuobjdump -sass`` of a compiled kernel's cubin."""
    return cuobjdump(kernel, "-sass")


def failures(launches: list) -> list:
    """One line per launch that does not build: kernel, constexprs, options and the error."""
    failed = []
    for launch in launches:
        try:
            build(launch)
        except Exception as e:  # noqa: BLE001 (every failure is reported, with its launch)
            failed.append(f"{launch['module']}.{launch['kernel']} {launch['constexprs']} {launch['options']}: "
                          f"{type(e).__name__}: {str(e)[:400]}")
    return failed


if __name__ == "__main__":
    launches = json.loads(pathlib.Path(sys.argv[1]).read_text())
    print(json.dumps({"triton": triton.__version__, "failed": failures(launches)}))
