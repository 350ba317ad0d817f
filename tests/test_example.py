"""``examples/recall_lm.py`` at its smoke size: it runs as a command and prints its metrics. (Whether the default
size learns MQAR is measured, not tested: docs/model.md.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # examples/ is not installed: it runs from the repository root
    sys.path.insert(0, str(ROOT))

from examples import recall_lm

METRICS = [r"training: 5 steps in [\d.]+ s, [\d,]+ tokens/s",
           r"accuracy \(teacher forced, 32 held-out sequences\): [01]\.\d{3}",
           r"accuracy \(generated: prefill \+ decode with the cache\): [01]\.\d{3}",
           r"prefill: [\d,]+ tokens/s; decode: [\d,]+ tokens/s"]


def test_the_example_runs_as_a_command():
    done = subprocess.run([sys.executable, "-m", "examples.recall_lm", "--smoke", "--device", "cpu", "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for pattern in METRICS:
        assert re.search(pattern, done.stdout), f"{pattern!r} not in:\n{done.stdout}"


def test_the_example_with_the_delta_rule(capsys):
    assert recall_lm.main(["--smoke", "--backbone", "gated_deltanet", "--steps", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "DLA (gated_deltanet" in out and "training: 2 steps" in out and "decode:" in out


def test_mqar_batches_ask_for_values_of_the_context():
    cfg = recall_lm.Config(**recall_lm.SMOKE)
    x, y = recall_lm.mqar_batch(cfg, 8, torch.Generator().manual_seed(0), "cpu")
    assert x.shape == y.shape == (8, cfg.seq_len)
    start = 2 * cfg.pairs
    assert (y[:, :start] == -100).all() and (y[:, start + 1 :: 2] == -100).all()
    pairs = {(int(k), int(v)) for row in x for k, v in zip(row[:start:2], row[1:start:2])}
    for row, target in zip(x, y):
        context = dict(zip(row[:start:2].tolist(), row[1:start:2].tolist()))
        assert len(context) == cfg.pairs, "distinct keys"
        for key, value in zip(row[start::2].tolist(), target[start::2].tolist()):
            assert context[key] == value and (key, value) in pairs


def test_bad_steps_are_refused():
    with pytest.raises(SystemExit):
        recall_lm.main(["--smoke", "--steps", "0"])
