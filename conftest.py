"""Reruns of test files under Triton's interpreter, started together.

Without a GPU the Triton tests run in subprocesses with ``TRITON_INTERPRET=1`` (Triton reads the variable when the
kernels are defined, so it cannot be switched on inside this process). Each such file has a test marked
``interpreter_rerun(*pytest_args, env={...}, forwarded=(option names))`` whose body calls the ``interpreter_rerun``
fixture: it waits for the file's rerun and fails with its output unless it passed. Every selected rerun starts when
the session's tests are collected, so they run beside each other and the rest of the suite instead of one after
another: on the 2-core CI machine they were 701 of the suite's 760 s in series; together the suite took 567 s
(2026-12-01; sharing the cores costs ~25 % more CPU time in all). On 2026-12-02's slower CI-like machine the suite
took 25-29 min; with the first two interpreter speed-ups below (in the reruns' processes only) 12.5 min, CI on a fresh
clone 14.3-15.5 min, CPU-bound (24-26 CPU-minutes on 2 cores: splitting the longest file's rerun in two gained
nothing). By 2026-12-06 (run 61) that file's rerun had grown to ~9 CPU-minutes, the run's single-core tail: CI on a
fresh clone 16.7 min; with it split in two (``tests/test_triton_kernels.py``'s ``SCHEDULE_TESTS``) 14.7 min; since
run 80 in four (its delta-rule tests and its carry guesses' apart: the longest part had grown to 388 CPU-s).

Each rerun also records every kernel launch's compile-time identity (``_recorded_launches``), and
``tests/test_triton_sm90_builds.py`` compiles them for sm_90 once the reruns are done: the interpreter runs code the
compiler rejects (2026-12-03: 96 builds, ~100 s on one core).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

# Seconds to wait for one rerun; they share the machine's cores, so each takes longer than alone (the longest, the
# kernels' file, ~290 s alone on the CI machine).
RERUN_TIMEOUT = 1800
LAUNCH_LOG = "DLA_TEST_LAUNCH_LOG"  # set by a rerun's parent: where its kernel launches are recorded

_runs: dict[str, tuple[subprocess.Popen, object]] = {}
INTERPRETER_FOLDS = None  # the interpreter's own folds, where _vectorised_custom_reductions replaced them
INTERPRETER_NP_DTYPE = None  # the interpreter's own _get_np_dtype, where _memoised_numpy_dtypes replaced it


def _skip_nested_language_patches() -> None:
    """Under the interpreter: a ``@triton.jit`` helper called from a kernel no longer patches ``triton.language``
    again when the modules its globals hold were patched earlier in the same launch.

    Triton's interpreter (3.9) patches the language's builtins at each launch and again at every call of a jitted
    helper (``InterpretedFunction.__call__`` calls ``_patch_lang``, scanning the modules with ``inspect.getmembers``),
    though the earlier patches are still in place (the launch restores its own at its end; a helper's are never
    restored): measured 2026-12-02 on the CI-like 2-core machine, 56 % of
    ``test_the_value_check_kernel_flags_what_torch_finds``'s time. The helpers run the same code either way.
    Does nothing on an interpreter without these internals."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    if not all(hasattr(interpreter, name) for name in ("_patch_lang", "_LangPatchScope", "GridExecutor")):
        return
    patch_lang, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    patched = []  # per running launch: the language modules patched since it began (helpers' patches stay)

    @functools.cache
    def languages(fn):
        return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))

    def patch_once(fn):
        needed = languages(fn)
        if patched and needed <= patched[-1]:
            return interpreter._LangPatchScope()  # nothing to restore
        scope = patch_lang(fn)
        if patched:
            patched[-1] |= needed
        return scope

    def launch_patching_once(self, *args, **kwargs):
        patched.append(set())
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    interpreter._patch_lang = patch_once
    interpreter.GridExecutor.__call__ = launch_patching_once


def _fold_along_axis(op, input, axis: int, scan: bool):
    """``op``'s combine function folded along ``axis`` of the tensors ``input``, left to right, a whole slice of the
    other axes at a time: the interpreter's own order of combines, each element's result the same number. Returns
    numpy arrays: the running values (``scan``) or the last ones (reduce)."""
    import triton.language as tl

    data = [x.handle.data for x in input]
    acc = [np.take(d, 0, axis=axis) for d in data]
    runs = [[a] for a in acc]
    for i in range(1, data[0].shape[axis]):
        now = [op.to_tensor(np.take(d, i, axis=axis), x.dtype) for d, x in zip(data, input)]
        got = op.combine_fn.fn(*(op.to_tensor(a, x.dtype) for a, x in zip(acc, input)), *now)
        got = got if isinstance(got, tuple) else (got,)
        acc = [np.asarray(g.handle.data if isinstance(g, tl.core.tensor) else g).astype(a.dtype).reshape(a.shape)
               for g, a in zip(got, acc)]
        if scan:
            for run, a in zip(runs, acc):
                run.append(a)
    if scan:
        return [np.stack(run, axis=axis) for run in runs]
    return acc


def _vectorised_custom_reductions() -> None:
    """Under the interpreter: ``tl.reduce`` and ``tl.associative_scan`` with a combine function of the kernel's own
    (not a sum, min, max or argmin) fold a slice at a time instead of an element at a time.

    Triton's interpreter (3.9) runs such a combine once per element, on scalars (``generic_reduce``,
    ``generic_scan``): measured 2026-12-02 on the CI-like machine, 112 scans were half of
    ``test_backward_in_ranges_of_chunks_gives_the_same_gradients``'s time. The folds here combine in the same order
    (element k of a row is combined with the running value of elements 0 .. k - 1), elementwise, so each result is
    the same number (``tests/test_interpreter_speedups.py``). Does nothing on an interpreter without these
    internals."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    if not all(hasattr(getattr(interpreter, c, None), f) for c, f in (("ScanOps", "generic_scan"),
                                                                      ("ReduceOps", "generic_reduce"))):
        return

    global INTERPRETER_FOLDS
    INTERPRETER_FOLDS = interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce  # for its test

    def generic_scan(self, input):
        return [self.to_tensor(run, x.dtype) for run, x in zip(_fold_along_axis(self, input, self.axis, True), input)]

    def generic_reduce(self, input):
        flat, axis = self.unravel(input, self.axis)
        out = []
        for last, x in zip(_fold_along_axis(self, flat, axis, False), input):
            if self.keep_dims:
                last = np.expand_dims(last, axis) if self.axis is not None else last.reshape((1,) * x.handle.data.ndim)
            out.append(self.to_tensor(last if self.keep_dims or self.axis is not None else last.item(), x.dtype))
        return out

    interpreter.ScanOps.generic_scan = generic_scan
    interpreter.ReduceOps.generic_reduce = generic_reduce


def _memoised_numpy_dtypes() -> None:
    """Under the interpreter: a Triton type's NumPy dtype is looked up once per type instead of at every use.

    Triton's interpreter (3.9) maps a type to its NumPy dtype (``_get_np_dtype``) through a dict of 17 types that it
    builds anew at each call, several calls per operation: measured 2026-12-02 on the CI-like machine, ~10 % of the
    delta rule's kernels' time. Triton's types are equal when their names are (``tl.dtype.__eq__``), so the answer
    for a type's class and name is the answer (``tests/test_interpreter_speedups.py``). Does nothing on an
    interpreter without it."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    if not hasattr(interpreter, "_get_np_dtype"):
        return

    global INTERPRETER_NP_DTYPE
    INTERPRETER_NP_DTYPE = own = interpreter._get_np_dtype  # for its test
    known = {}

    def get_np_dtype(tt_dtype):
        name = getattr(tt_dtype, "name", None)
        if not isinstance(name, str):
            return own(tt_dtype)
        key = type(tt_dtype), name
        if key not in known:
            known[key] = own(tt_dtype)
        return known[key]

    interpreter._get_np_dtype = get_np_dtype


def _bf16_dots() -> None:
    """Under the interpreter: ``tl.dot`` of bfloat16 operands multiplies their values, as a GPU's bf16 tensor cores do
    (exact products, float32 sums), where Triton's interpreter (3.9) multiplies the raw ``uint16`` bits it stores
    them as (``tests/test_interpreter_speedups.py``), and float32 values cast to bfloat16 round to nearest even, as on
    a GPU, where the interpreter truncates them. The library itself still gives the interpreter float32 dots
    (``chunk_fwd``: a user's interpreter is not patched); this lets a test run a kernel's bf16 products on the CPU. Does
    nothing on an interpreter without ``create_dot``."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "create_dot"):
        return
    import triton.language as tl

    own = builder.create_dot

    def as_float32(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        bits = np.asarray(x.data).astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return own(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    own_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        # float32 -> bfloat16 rounded to nearest even, as a GPU converts (the interpreter truncates: biased, so sums of
        # rounded terms drift; run 76 measured 7 unit roundoffs where float16 operands gave 1)
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return own_cast(self, src, dst_type)
        bits = np.asarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return interpreter.TensorHandle(rounded, dst_type.scalar)

    builder.cast_impl = cast_impl


def _launches_on_fresh_stacks() -> None:
    """Under the interpreter: each kernel launch runs on a thread of its own (the caller waits for it), at the bottom
    of a fresh frame stack.

    CPython 3.11 keeps a thread's frames in 16 KiB chunks and frees a chunk as soon as the stack drops back below
    it, so an operation of the interpreter whose calls straddle a chunk boundary maps and unmaps a chunk each time;
    where the boundaries fall depends on how deep the launch sits. Measured 2026-12-02 on the CI-like machine: under
    Hypothesis (the Triton gradient properties) 1.4 million mmap/munmap pairs, 90-140 s of system time of that
    rerun's 190-280 CPU-seconds (it varied with the depth from commit to commit); with launches on fresh threads
    70 CPU-seconds, 1 s of it system time. The kernels run the same code on the same data either way; a launch's
    exception is raised in its caller (``tests/test_interpreter_speedups.py``). Does nothing on an interpreter
    without ``GridExecutor``."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    if not hasattr(interpreter, "GridExecutor"):
        return
    launch = interpreter.GridExecutor.__call__
    on_launch_thread = threading.local()

    def launch_on_a_fresh_stack(self, *args, **kwargs):
        if getattr(on_launch_thread, "value", False):  # a launch inside a launch: its stack is fresh already
            return launch(self, *args, **kwargs)
        outcome = {}

        def run():
            on_launch_thread.value = True
            try:
                outcome["result"] = launch(self, *args, **kwargs)
            except BaseException as e:  # raised again in the caller
                outcome["error"] = e

        thread = threading.Thread(target=run, name="interpreted launch", daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    interpreter.GridExecutor.__call__ = launch_on_a_fresh_stack


def _recorded_launches(log_path: str) -> None:
    """Under the interpreter: each kernel launch's compile-time identity (module, kernel, argument types, constexpr
    values, warps, stages, register cap, and the arguments divisible by 16: integers by value, tensors by address)
    appended to ``log_path`` as a JSON line, once per identity, for ``tests/test_triton_sm90_builds.py`` to compile for
    a GPU: the interpreter runs code the compiler rejects."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime import interpreter
    from triton.runtime.jit import mangle_type, native_specialize_impl

    launch = interpreter.GridExecutor.__call__
    seen = set()

    def launch_recorded(self, *args, **kwargs):
        names = inspect.signature(self.fn).parameters
        try:
            bound = inspect.getcallargs(self.fn, *args, **{k: v for k, v in kwargs.items() if k in names})
        except TypeError:  # the launch's own error, raised by the launch
            return launch(self, *args, **kwargs)
        types, constexprs, divisible = {}, {}, []
        for name, value in bound.items():
            if name in self.constexprs or value is None:
                constexprs[name] = value
            else:
                types[name] = mangle_type(value)
                # the JIT's own test (its "D" key); whether it applies is the kernel's (do_not_specialize): at the build
                if native_specialize_impl(BaseBackend, value, False, True, True)[1] == "D":
                    divisible.append(name)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion")
                   if kwargs.get(k) is not None}
        record = json.dumps(dict(module=self.fn.__globals__["__name__"], kernel=self.fn.__name__, types=types,
                                 constexprs={k: v for k, v in constexprs.items() if _plain(v)}, options=options,
                                 divisible=divisible), sort_keys=True)
        if record not in seen:
            seen.add(record)
            with open(log_path, "a") as f:
                f.write(record + "\n")
        return launch(self, *args, **kwargs)

    interpreter.GridExecutor.__call__ = launch_recorded


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


if os.environ.get("TRITON_INTERPRET") == "1":
    _skip_nested_language_patches()
    _vectorised_custom_reductions()
    _memoised_numpy_dtypes()
    _bf16_dots()
    if os.environ.get(LAUNCH_LOG):
        _recorded_launches(os.environ[LAUNCH_LOG])
    _launches_on_fresh_stacks()


def _skipped(item) -> bool:
    """Whether a ``skipif`` marker with a true condition skips ``item`` (the reruns' conditions are booleans)."""
    return any(mark.args and mark.args[0] is True for mark in item.iter_markers("skipif"))


@functools.cache
def launch_dir() -> str:
    """This session's folder of the reruns' launch logs (``_recorded_launches``), one file per rerun."""
    return tempfile.mkdtemp(prefix="dla-launches-")


def reruns_finished() -> list:
    """Waits for every rerun started in this session; returns their return codes."""
    return [process.wait(timeout=RERUN_TIMEOUT) for process, _ in _runs.values()]


def _start(item):
    """``item``'s rerun (the process and its output file), started on first use. A file may hold several reruns,
    each of a part of its tests (the marker's pytest arguments, e.g. ``-k``), so that its tests use both cores."""
    mark = item.get_closest_marker("interpreter_rerun")
    path = str(item.path)
    key = f"{path} {' '.join(mark.args)}".strip()
    if key not in _runs:
        part = f"-{len([k for k in _runs if k.startswith(path)])}"
        log = os.path.join(launch_dir(), f"{item.path.stem}{part}.jsonl")
        env = dict(os.environ, TRITON_INTERPRET="1", **{LAUNCH_LOG: log}, **mark.kwargs.get("env", {}))
        options = [f"--{name.replace('_', '-')}={value}" for name in mark.kwargs.get("forwarded", ())
                   if (value := item.config.getoption(name, None)) is not None]
        out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read when its test waits, then closed)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, path, *mark.args]
        _runs[key] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True), out
    return _runs[key]


def pytest_collection_modifyitems(session, config, items):
    """The tests that wait for a rerun after every other test, and the sm_90 builds of the reruns' launches last:
    they wait for every rerun, and the tests queued behind them would otherwise wait too instead of running beside the
    reruns (CI, run 61: the properties' ~3 min ran after the builds, on one core; run 78: this process waited 400 s
    for the chain file's rerun at 1 % of the suite, with ~5 CPU-minutes of its own tests still to run)."""
    def rank(item):
        if item.path.name == "test_triton_sm90_builds.py":
            return 2
        return 1 if item.get_closest_marker("interpreter_rerun") is not None else 0

    items.sort(key=rank)  # stable: the order otherwise kept


def pytest_collection_finish(session):
    for item in session.items:
        if item.get_closest_marker("interpreter_rerun") is not None and not _skipped(item):
            _start(item)


def pytest_sessionfinish(session):
    for process, _ in _runs.values():  # a run whose test was interrupted or timed out
        if process.poll() is None:
            process.kill()


@pytest.fixture(autouse=True)
def kernels_stay_in_bounds():
    """Under the interpreter: every kernel launched by a test loads, stores and updates atomically only elements of
    its own tensor arguments, each within the view it was given (``dla_fast.testing.interpreter_bounds``): the first
    that does not raises in the kernel. On a GPU such an access is an illegal address that poisons the process, or
    silently another buffer's bytes (several of a call's buffers are views of one allocation)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from dla_fast.testing.interpreter_bounds import checked_memory

    with checked_memory(views=True):
        yield


@pytest.fixture
def interpreter_rerun(request):
    """A function that waits for this test file's rerun under Triton's interpreter and fails with its output
    unless it passed."""

    def wait():
        process, out = _start(request.node)
        process.wait(timeout=RERUN_TIMEOUT)
        out.seek(0)
        text = out.read()
        out.close()
        assert process.returncode == 0 and " passed" in text, text[-6000:]

    return wait
