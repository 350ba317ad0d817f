"""Every kernel variant the interpreter reruns launched also compiles for a GPU (sm_90, Triton's own compiler and
ptxas, no GPU needed): the interpreter runs code the compiler rejects.

Three times a change passed CI and failed on the H200 at compile time: the delta rule's cotangent kernels (run 27),
a plain Python global read inside the pair kernel (run 32's review) and a gather along a 2-wide axis that Triton 3.9
builds and Triton 3.6, the H200 machines' version, rejects (run 36). Each rerun of a test file under the interpreter
records the compile-time identity of every launch (``conftest._recorded_launches``: kernel, argument types,
constexpr values, warps, stages, register cap, the arguments divisible by 16, which the build specialises as the GPU's
JIT does); these tests wait for the reruns and build one of each kernel's variants with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)`` (``sm90_build.py``): per flags with the test environment's Triton, and per argument
types and flags with the GPU machines' Triton in two subprocesses (``.ci/run`` installs it into
``.ci/triton-gpu``). The interpreter routes 16-bit inputs to the float32 dot paths, so the bf16 tensor-core variants
are not among them (those are checked on the GPU only, docs/triton.md); the inline PTX that a GPU-only flag
(``GPU_ONLY_FLAGS``) selects is built here too, from a copy of each such launch with the flag on.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

triton = pytest.importorskip("triton")

from sm90_build import failures  # noqa: E402
from triton_here import CUDA  # noqa: E402

import conftest  # noqa: E402

TESTS = pathlib.Path(__file__).parent
GPU_TRITON = TESTS.parent / ".ci" / "triton-gpu"  # the GPU machines' Triton (.ci/run: pip install --target)


def _recorded(by_types: bool) -> list:
    """The launches the session's reruns recorded, one per kernel and flags (its boolean and None constexprs, which
    choose code paths) and, ``by_types``, argument types; the first in a fixed order where the tile sizes differ (each
    build costs ~1-3 s, and the suite launches most kernels at several sizes)."""
    lines = set()
    for path in sorted(pathlib.Path(conftest.launch_dir()).glob("*.jsonl")):
        lines |= set(path.read_text().splitlines())
    chosen = {}
    for launch in map(json.loads, sorted(lines)):
        flags = sorted((k, v) for k, v in launch["constexprs"].items() if v is None or isinstance(v, bool))
        key = json.dumps([launch["module"], launch["kernel"], flags, launch["types"] if by_types else None],
                         sort_keys=True)
        chosen.setdefault(key, launch)
    return list(chosen.values())


# Constexprs that a GPU sets and the interpreter cannot: their code is inline PTX (the merge simulation's ``FAST``, the
# delta rule's float64 scores' ``FAST_F64``).
GPU_ONLY_FLAGS = ("FAST", "FAST_F64")


def _with_gpu_only_flags(launches: list) -> list:
    """The launches, and a copy of each that the interpreter ran with a ``GPU_ONLY_FLAGS`` flag off, with it on."""
    extra = []
    for launch in launches:
        off = [k for k in GPU_ONLY_FLAGS if launch["constexprs"].get(k) is False]
        if off:
            extra.append(dict(launch, constexprs=dict(launch["constexprs"], **dict.fromkeys(off, True))))
    return launches + extra


def _launches(by_types: bool = True) -> list:
    if not conftest.reruns_finished():
        pytest.skip("no interpreter reruns in this session (run the suite, not this file alone)")
    launches = _recorded(by_types)
    assert launches, "the interpreter reruns recorded no launch"
    return _with_gpu_only_flags(launches)


def _report(failed: list, launches: list, version: str) -> str:
    return f"{len(failed)} of {len(launches)} recorded launches do not compile for sm_90 with Triton {version}:\n" + \
        "\n".join(failed)


# Processes that build the launches with the GPU machines' Triton, each every n-th launch: beside this process's own
# build they keep both of the CI machine's cores busy to the end.
GPU_TRITON_PROCESSES = 2


@functools.cache
def _gpu_triton_builds():
    """The build of every recorded launch with the GPU machines' Triton, started once in ``GPU_TRITON_PROCESSES``
    processes (each ``Popen`` with its output files), so that it runs beside this process's own build: each build of
    them all takes minutes on one core (CI, 2 cores, run 78: ~215 launches at ~1.3 s)."""
    launches = _launches()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU_TRITON), str(TESTS.parent), str(TESTS)]))
    builds = []
    for i in range(GPU_TRITON_PROCESSES):
        path = pathlib.Path(conftest.launch_dir()) / f"sm90_launches_{i}.json"
        path.write_text(json.dumps(launches[i::GPU_TRITON_PROCESSES]))
        out, err = (tempfile.TemporaryFile(mode="w+") for _ in range(2))  # noqa: SIM115 (closed by the test waiting)
        process = subprocess.Popen([sys.executable, str(TESTS / "sm90_build.py"), str(path)], env=env, stdout=out,
                                   stderr=err, text=True)
        atexit.register(process.kill)  # (a session that does not reach the test waiting for it)
        builds.append((process, (out, err)))
    return launches, builds


def _read_and_close(f) -> str:
    f.seek(0)
    text = f.read()
    f.close()
    return text


@pytest.mark.skipif(CUDA, reason="on a GPU every kernel is compiled by the suite itself")
def test_every_interpreted_launch_compiles_for_sm90():
    """With the test environment's Triton, one launch per kernel and flags: the next test builds every argument-type
    variant too, with the Triton the GPU machines run (a build costs ~1.5 s: 124 launches instead of 191, run 79)."""
    if GPU_TRITON.is_dir():
        _gpu_triton_builds()  # started now, checked by the next test
    launches = _launches(by_types=False)
    failed = failures(launches)
    assert not failed, _report(failed, launches, triton.__version__)


@pytest.mark.skipif(CUDA, reason="on a GPU every kernel is compiled by the suite itself")
def test_every_interpreted_launch_compiles_for_sm90_with_the_gpu_machines_triton():
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    launches, builds = _gpu_triton_builds()
    installed = [p.name.removesuffix(".dist-info").split("-")[1] for p in GPU_TRITON.glob("triton-*.dist-info")]
    failed = []
    for process, files in builds:
        process.wait(timeout=1200)
        stdout, stderr = (_read_and_close(f) for f in files)
        assert process.returncode == 0, f"the build process failed:\n{stderr[-3000:]}"
        result = json.loads(stdout.strip().splitlines()[-1])
        assert [result["triton"]] == installed, f"built with Triton {result['triton']}, {GPU_TRITON} holds {installed}"
        failed += result["failed"]
    assert not failed, _report(failed, launches, installed[0])


# The merge simulation as the H200s build it (Triton 3.6, sm_90, K = 30 slots on one warp), in cycles by
# ``benchmarks/sass_loop_model.py`` (its latencies fitted to run 48's two measured schedules of the event loop: 367 and
# 387 cycles, modeled 370 and 384): an event, and the path through a chunk at a full cache by its events (1: sparse,
# 4: moderate, 38: dense), pipelined (few rows: a chunk whose decisions were guessed) and not (after the walk). Run 49,
# pipelined: the event 370 -> 301 (the counts in float64) -> 287 (the next slot read by parity); chunks 1,862 / 2,972 /
# 15,552 -> 1,430 / 2,291 / 12,049. Run 53: the chunks' tables made before the kernel (``dla_closing_tables_kernel``),
# pipelined 287 -> 294 an event, chunks -> 948 / 1,830 / 11,826 (walked ones 3,119 / 3,980 -> 3,201 / 4,083); not
# pipelined 322 -> 321, chunks 1,865 / 2,831 / 13,779 -> 908 / 1,871 / 12,785 (with the tables' counts in float64 that
# event took 386). Run 54: a chunk's two divisions side by side and beside the next chunk's loads, and (pipelined) the
# first boundary's operands from the tables: pipelined 294 -> 278 an event, chunks -> 798 / 1,632 / 11,084 (walked
# 3,103 / 3,937); not pipelined chunks -> 820 / 1,766 / 12,680 (reading those operands there too: 399 an event). Code
# anywhere in the kernel can reschedule the loop (run 47: +5 % at dense inputs, unseen until measured).
MERGE_CYCLES = {
    "pipelined": {"an event": 278, 1: 798, 4: 1632, 38: 11084, "walked 1": 3103, "walked 4": 3937},
    "not pipelined": {"an event": 321, 1: 820, 4: 1766, 38: 12680},
}


def _merge_modeled(record: pathlib.Path, overrides: list) -> tuple[dict, str]:
    """The model's cycles of the recorded merge launch built with ``overrides``: ``{"an event": .., E: ..,
    "walked E": ..}`` (E events in a chunk: guessed when pipelined, any after the walk; walked: waited for)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU_TRITON), str(TESTS.parent)]))
    shape = ["FAST=True", "C=64", "KP=32", "KW=32"]  # K = 30, whatever K the recorded launch had
    run = subprocess.run([sys.executable, str(TESTS.parent / "benchmarks" / "sass_loop_model.py"), str(record),
                          "dla_merge_kernel", *shape, *overrides, "--merge-chunks"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"the build process failed:\n{run.stderr[-3000:]}"
    modeled = {"an event": float(re.search(r"modeled (\d+) cycles an iteration", run.stdout).group(1))}
    for kind, events, cycles in re.findall(r"^a (guessed|walked|chunk) .*?with (\d+) events: \d+ instructions, "
                                           r"modeled (\d+) cycles", run.stdout, re.M):
        modeled[f"walked {events}" if kind == "walked" else int(events)] = float(cycles)
    return modeled, run.stdout


@pytest.mark.skipif(CUDA, reason="the GPU runs the kernel itself (benchmarks/merge_bench.py times it)")
def test_the_merge_kernel_keeps_its_modeled_speed(tmp_path):
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    merges = [launch for launch in _launches() if launch["kernel"] == "dla_merge_kernel"
              and launch["constexprs"].get("PIPE") and launch["constexprs"].get("GUESSED")]
    assert merges, "the interpreter reruns recorded no pipelined merge launch"
    record = tmp_path / "merge.jsonl"
    record.write_text(json.dumps(merges[0]) + "\n")
    for mode, overrides in (("pipelined", []), ("not pipelined", ["PIPE=False", "GUESSED=False"])):
        modeled, out = _merge_modeled(record, overrides)
        for what, held in MERGE_CYCLES[mode].items():
            name = f"a chunk with {what} events" if isinstance(what, int) else what
            assert what in modeled, f"{mode}: the model found no path for {name}:\n{out[-2000:]}"
            assert modeled[what] >= 0.9 * held, (  # (a faster kernel, or a model that lost its path: update or mend)
                f"{mode}: the merge kernel models at {modeled[what]:.0f} cycles for {name}, below {held}: if the "
                f"kernel got faster, lower MERGE_CYCLES; else the model no longer finds the path")
            assert modeled[what] <= 1.02 * held, (
                f"{mode}: the merge kernel models at {modeled[what]:.0f} cycles for {name} against {held}:\n"
                + "\n".join(out.splitlines()[-40:]))


@pytest.mark.skipif(CUDA, reason="the GPU checks the values themselves (test_triton_kernels.py)")
def test_branch_free_float64_division_and_root_are_ptxas_fast_paths():
    """``div_f64`` and ``sqrt_f64`` (FAST) built for sm_90 with the GPU machines' Triton give ptxas's fast paths of
    ``/`` and ``tl.sqrt``: the same float64 instructions in the same order and the same integer constants
    (``sm90_float64_paths.py``). Where ptxas takes its fast path the results are then the same bits, which is what
    the delta rule's scores rely on (docs/precision.md, section 9)."""
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU_TRITON), str(TESTS.parent)]))
    run = subprocess.run([sys.executable, str(TESTS / "sm90_float64_paths.py")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"the build process failed:\n{run.stderr[-3000:]}"
    paths = json.loads(run.stdout.strip().splitlines()[-1])
    for name, mufu in (("div", "MUFU.RCP64H"), ("sqrt", "MUFU.RSQ64H")):
        ieee, fast = paths[name]
        assert ieee["float64"][0] == mufu and len(ieee["float64"]) >= 8, f"{name}: no fast path found: {ieee}"
        assert fast == ieee, f"{name}: the branch-free form differs from ptxas's fast path:\n{fast}\n{ieee}"
    assert paths["constant dividend"] == ["0x3fb999999999999a"], (
        f"div_f64(0.1, b) hands its inline PTX {paths['constant dividend']}, not float64 0.1")


def _sm90_usage_line(launch: dict, values: list, types: str, options: str, tmp_path) -> str:
    """``benchmarks/sm90_usage.py``'s line for ``launch`` rebuilt with the GPU machines' Triton (its constexprs
    ``values`` as ``NAME=VALUE``, pointer ``types`` and launch ``options``)."""
    record = tmp_path / "launch.jsonl"
    record.write_text(json.dumps(launch) + "\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU_TRITON), str(TESTS.parent)]))
    run = subprocess.run([sys.executable, str(TESTS.parent / "benchmarks" / "sm90_usage.py"), str(record),
                          launch["kernel"], *values, "--types", types, "--options", options], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the build process failed:\n{run.stderr[-3000:]}"
    return run.stdout.strip().splitlines()[-1]


def _sm90_usage(launch: dict, values: list, types: str, options: str, tmp_path) -> tuple[int, int, int]:
    """``(registers, stack bytes, programs an SM)`` of ``launch`` rebuilt as :func:`_sm90_usage_line` says."""
    line = _sm90_usage_line(launch, values, types, options, tmp_path)
    built = re.search(r"(\d+) registers, (\d+) B of stack, \d+ B of shared memory; (\d+) programs an SM", line)
    assert built, line
    return tuple(map(int, built.groups()))


@pytest.mark.skipif(CUDA, reason="built from the interpreter reruns' launch records (CPU)")
def test_the_16_bit_output_kernel_at_64_features_holds_four_programs_an_sm(tmp_path):
    """``dla_output_kernel`` as a bf16 forward at 64 features launches it (``output_launch``'s default, 128 registers)
    builds for sm_90 with the GPU machines' Triton without stack: four programs an SM, where it held three at 168
    (run 64: -6 to -13 % of the output stage at (1, 65536)). A change that makes it spill at the cap fails here."""
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    from dla_fast.ops.scalar_decay.chunk_fwd_output import output_launch

    outputs = [launch for launch in _launches() if launch["kernel"] == "dla_output_kernel"]
    assert outputs, "the interpreter reruns recorded no output-kernel launch"
    options = ",".join(f"{k}={v}" for k, v in output_launch(64, 64, 1, lowp=True, grouped=False).items())
    bf16 = ",".join(f"{p}=*bf16" for p in ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "bst_ptr"))
    registers, stack, programs = _sm90_usage(outputs[0], ["BK=64", "BV=64", "KP=32", "G=1", "LOWP=True",
                                                          "PREC='tf32x3'"], bf16, options, tmp_path)
    assert stack == 0 and programs >= 4, f"{registers} registers, {stack} B of stack, {programs} programs an SM"


@pytest.mark.skipif(CUDA, reason="built from the interpreter reruns' launch records (CPU)")
def test_the_16_bit_tables_adjoint_builds_no_16_column_wgmma(tmp_path):
    """The tables' adjoint with tf32 operands as the backward launches it for 16-bit inputs (``ADJOINT_16BIT_WARPS``,
    key blocks of ``KEY_BLOCK`` at every width) builds for sm_90 with the GPU machines' Triton with ``wgmma``
    instructions 32 columns wide only. Run 77: the two launches that gave wrong gradients on an H100 (16 warps, key
    blocks of 32) were the two built with 16-column ones (``instrShape = [16, 16, 8]``); a change of its tiles or
    warps that brings them back fails here."""
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    from dla_fast.ops.delta_rule.wy_tables_adjoint_triton import ADJOINT_16BIT_WARPS
    from dla_fast.ops.delta_rule.wy_tables_triton import KEY_BLOCK

    adjoints = [launch for launch in _launches() if launch["kernel"] == "dla_delta_wy_adjoint_kernel"
                and launch["constexprs"].get("OPD") != "float64"]  # (float32 scratch: any 16-bit operands' launch)
    assert adjoints, "the interpreter reruns recorded no 16-bit launch of the tables' adjoint"
    line = _sm90_usage_line(adjoints[0], [f"KB={KEY_BLOCK}", "OPD='tf32'"], "", f"num_warps={ADJOINT_16BIT_WARPS}",
                            tmp_path)
    layouts = re.findall(r"v3 \[[\d, ]+\] \[16, (\d+), 8\]", line)
    assert layouts and set(layouts) == {"32"}, line


# Delta-rule kernels as the forward and the backward launch them at 64 features, K = 30: (kernel, constexprs, the
# dimensions they take as constants, pointer types, launch options, stack bound). Run 68 measured the slot walks
# (``state_block``) at 208 and 568 B with their head widths and slot count compiled in, 728 and 1,048 with them as
# arguments (their addresses and masks spilled: the forward's walk -19 %; the walk's was 544 B with only K an
# argument); run 69 the decisions' table kernel at 224 B with ``Dk`` compiled in, 576 as an argument (-17 %). Each
# bound sits a little above the measured build, below those.
FLOAT64_TABLES = ",".join(f"{p}=*fp64" for p in ("q_ptr", "k_ptr", "g_ptr", "b_ptr", "x64_ptr", "b64_ptr", "a_ptr",
                                                  "z_ptr", "mq_ptr", "akapT_ptr", "ktT_ptr", "khd_ptr", "phi_ptr",
                                                  "attn_ptr", "qt_ptr"))
DIMENSION_BUILDS = [
    ("dla_delta_states_kernel", dict(BK=64, BV=4, KP=32, C=128, CS=64, READ_F32=False, V_EXACT=True, EARLY_LOADS=True,
                                     READS=True, STORE_STARTS=False), dict(K=30, Dk=64, Dv=64), "v_ptr=*bf16",
     "num_warps=4,num_stages=1", 256),
    ("dla_delta_slot_adjoints_kernel", dict(BK=64, BV=4, KP=32), dict(K=30, Dk=64, Dv=64), "do_ptr=*bf16",
     "num_warps=4,num_stages=1", 640),
    ("dla_delta_wy_tables_kernel", dict(C=64, KB=64, IB=16, BKD=16, STAGES=1, SCORES=True, OUTPUTS=False,
                                        BETA_KHD=False, STAGED=False), dict(Dk=64), FLOAT64_TABLES, "num_warps=4",
     256),
]


@pytest.mark.skipif(CUDA, reason="built from the interpreter reruns' launch records (CPU)")
@pytest.mark.parametrize("kernel,constexprs,dims,types,options,bound", DIMENSION_BUILDS,
                         ids=[w[0] for w in DIMENSION_BUILDS])
def test_the_delta_kernels_hold_their_dimensions_as_constants(kernel, constexprs, dims, types, options, bound,
                                                              tmp_path):
    """The slot walks (forward and kernel A) take ``K``, ``Dk``, ``Dv`` as compile-time constants and the decisions'
    table kernel ``Dk``, and their builds at 64 features and 30 slots stay under the stack measured with them (a
    kernel that holds more addresses across its loop fails here)."""
    if not GPU_TRITON.is_dir():
        pytest.skip(f"no GPU machines' Triton in {GPU_TRITON} (.ci/run installs it: pip install --target)")
    from sm90_build import jit_function

    launches = [launch for launch in _launches() if launch["kernel"] == kernel]
    assert launches, f"the interpreter reruns recorded no {kernel} launch"
    fn = jit_function(launches[0]["module"], kernel)
    assert set(dims) <= {p.name for p in fn.params if p.is_constexpr}, f"{kernel}: {', '.join(dims)} not constexpr"
    values = [f"{k}={v}" for k, v in {**constexprs, **dims}.items()]
    launch = dict(launches[0], options={})  # the entry's options alone (a recorded sweep's register cap is not ours)
    registers, stack, _ = _sm90_usage(launch, values, types, options, tmp_path)
    assert stack <= bound, f"{kernel}: {registers} registers, {stack} B of stack"
