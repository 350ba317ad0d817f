"""Every Triton function of the library reads only the module globals that Triton's compiler accepts.

Under the interpreter (CI's only Triton) a jitted function may read any global; compiled for a GPU, a plain
``int`` read from a global is a ``NameError`` at the first launch (Triton 3.6: "Cannot access global variable ...
Triton kernels can only access global variables that are instanstiated as constexpr"). Run 32's review left one
(``PAIR_TILE`` in the delta rule's pair kernel): every delta-rule test passed in CI and failed on the H200
(2026-12-03). The rule mirrored here is ``CodeGenerator.global_lookup``'s: modules, jitted functions,
``triton.language`` objects, dtypes and ``tl.constexpr`` values; Python's builtins are not globals.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap
import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _jitted():
    """``(module name, function name, Python function)`` of every jitted function in ``dla_fast``."""
    for path in sorted((ROOT / "dla_fast").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", None)
            if callable(fn) and type(obj).__name__ in ("JITFunction", "InterpretedFunction") \
                    and fn.__module__ == module.__name__:
                yield module.__name__, name, fn


def _read_globals(fn):
    """The names the function's body reads that it does not bind itself (arguments, assignments, loop targets);
    its decorators run in Python, not in the compiler."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    tree.decorator_list = []
    bound = {a.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
             for a in node.posonlyargs + node.args + node.kwonlyargs}
    bound |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def _accepted(value) -> bool:
    return (isinstance(value, (types.ModuleType, tl.constexpr, tl.dtype))
            or type(value).__name__ in ("JITFunction", "InterpretedFunction")
            or getattr(value, "__triton_builtin__", False)
            or getattr(value, "__module__", "").startswith("triton.language"))


def test_jitted_functions_read_only_globals_the_compiler_accepts():
    found = list(_jitted())
    assert len(found) > 50  # the walk finds the library's kernels
    wrong = [f"{module}.{name} reads {g} ({type(fn.__globals__[g]).__name__})" for module, name, fn in found
             for g in sorted(_read_globals(fn)) if g in fn.__globals__ and not _accepted(fn.__globals__[g])]
    assert not wrong, "\n".join(wrong)


PLAIN = 1024


def _reads_a_plain_global(x):
    return x // PLAIN


def test_a_plain_global_is_found():
    """The check catches what the compiler rejects (the rule's mutant): a plain int read from a global; the pair
    kernel's tile and scratch rows, read as ``tl.constexpr``, pass."""
    from dla_fast.ops.delta_rule import chunk_fwd_decide_wy as wy

    assert "PLAIN" in _read_globals(_reads_a_plain_global) and not _accepted(PLAIN)
    assert "_PAIR_TILE" in _read_globals(wy._pair_vectors.fn) and _accepted(wy._PAIR_TILE)
    assert "_NEXT" in _read_globals(wy.dla_delta_pair_paths_kernel.fn) and _accepted(wy._NEXT)
