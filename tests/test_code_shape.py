"""The layout's rules (docs/architecture.md), checked on the source so that they stay true.

- No function over ``MAX_LINES`` lines in library code unless a ``# Long: <reason>`` comment stands right
  above it (its decorators included).
- No private (underscore) name imported from another module of the project.
- No import cycle among the library's modules (imports inside functions included).
- No test module imports another test module.
- The library reads one environment variable of its own, ``DLA_FAST_BACKEND``, in ``dla_fast/backend.py``
  alone (with Triton's ``TRITON_INTERPRET``, there too).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = ("dla_ref", "dla_fast")
MAX_LINES = 80


def _modules(*packages):
    """``{dotted module name: path}`` of the ``.py`` files under the given top-level folders."""
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: pathlib.Path):
    """``(imported module, imported names, line)`` for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            yield base, [a.name for a in node.names], node.lineno


def test_no_long_function_without_a_reason():
    offenders = []
    for path in _modules(*LIBRARY).values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - node.lineno + 1
                reason = first >= 2 and lines[first - 2].strip().startswith("# Long:")
                if length > MAX_LINES and not reason:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not offenders, f"functions over {MAX_LINES} lines without a '# Long:' reason:\n" + "\n".join(offenders)


def test_no_private_name_imported_across_modules():
    modules = _modules(*LIBRARY, "tests", "properties", "benchmarks")
    offenders = []
    for module, path in modules.items():
        for target, names, line in _imports(module, path):
            if target.split(".")[0] not in LIBRARY + ("tests", "properties", "benchmarks"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}:{line} from {target} import {', '.join(names)}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_no_import_cycle_in_the_library():
    modules = _modules(*LIBRARY)
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names, _ in _imports(module, path):
            for candidate in [target] + [f"{target}.{n}" for n in names]:
                if candidate in modules and candidate != module:
                    graph[module].add(candidate)
    # A package's __init__ importing its own submodules is how Python packages work; it is not a cycle.
    for module in graph:
        graph[module] = {t for t in graph[module]
                         if not (module.startswith(t + ".") and modules[t].name == "__init__.py")}
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_test_module_imports_another():
    offenders = []
    for folder in ("tests", "properties", "benchmarks"):
        for module, path in _modules(folder).items():
            for target, names, line in _imports(module, path):
                leaf = target.rpartition(".")[2]
                imported = [leaf] + names if target.split(".")[0] in ("tests", "properties", "benchmarks") else [leaf]
                if any(name.startswith("test_") for name in imported):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target} {names}")
    assert not offenders, "test modules importing test modules:\n" + "\n".join(offenders)


def test_the_library_reads_only_the_backend_switch_from_the_environment():
    offenders = []
    for module, path in _modules(*LIBRARY).items():
        text = path.read_text()
        if ("os.environ" in text or "getenv" in text) and module != "dla_fast.backend":
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, "environment read outside dla_fast/backend.py: " + ", ".join(offenders)
