"""``benchmarks/forward_revision_ab.py`` without a GPU: the other revision's package exported from git and imported
beside this tree's, each forward running its own package's code (under the interpreter, in a subprocess: the module
renaming must not touch this test process)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")
ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "forward_revision_ab.py"

CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
import forward_revision_ab as ab
fns = ab.forwards([{other!r}, {second!r}])
this, other, second = fns["this"], fns[{other!r}], fns[{second!r}]
assert len({{f.__code__.co_filename for f in fns.values()}}) == 3
assert other.__code__.co_filename.startswith({other!r}) and second.__code__.co_filename.startswith({second!r})
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 70, 2, 16, generator=g) for _ in range(3))
gl = -torch.rand(1, 70, 2, generator=g)
w = torch.rand(1, 70, 2, 4, generator=g)
a, b, c = (ab.flat(f(q, k, v, gl, w, tau=0.6)) for f in (this, other, second))
assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
print("ok")
"""


def test_export_and_import_other_revisions_beside_this_tree(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        out = subprocess.run([sys.executable, str(SCRIPT), "--export", "HEAD", str(d)], capture_output=True,
                             text=True, check=True)
        assert (d / "dla_fast" / "ops" / "scalar_decay" / "chunk_fwd.py").is_file(), out.stdout
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    child = CHILD.format(bench=str(ROOT / "benchmarks"), other=str(dirs[0]), second=str(dirs[1]))
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=str(ROOT),
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
