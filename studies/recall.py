"""The trained comparison at matched K (issue #15, item 3): the recall language model of ``examples/recall_lm.py``
with token mixers that differ only in their partition of the past.

- ``dla``: ``dla_fast.layers.DynamicLinearAttention`` as it is (scalar decay, capacity ``K``, ``tau = 0.6``);
- ``fenwick``: log-linear attention's Fenwick partition with one read weight per level, levels ``>= K - 1``
  fused (:class:`studies.mixers.PartitionedAttention`);
- ``uniform``: ``K`` chunks of equal length, re-cut at every token (not in the default run: ``Settings.mixers``);
- ``single``: one state, the decayed linear attention backbone (independent of ``K``: run once per seed).

Every model is the example's (embedding, 2 blocks of mixer + MLP, LM head), built and trained by the example's
own code (``RecallLM(cfg, mixer)``, ``train``) with the same seeds; only the mixer differs. Each run reports the
teacher-forced accuracy of the values on held-out sequences, and for DLA also the accuracy of generation with
its cache (prefill + decode, the example's ``generate_answers``). ``docs/evidence.md`` gives the results.

    python -m studies.recall --out docs/figures          # the full run (about 14 minutes on 2 shared cores)
    python -m studies.recall --smoke --out /tmp/recall   # seconds

It writes ``<out>/recall.json`` (every number, the seeds, the date and the machine) and ``<out>/recall.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from examples.recall_lm import SMOKE as EXAMPLE_SMOKE
from examples.recall_lm import Config, RecallLM, dla_mixer, generate_answers, mqar_batch, teacher_forced_accuracy, train

from .evidence import dump_results, machine, run_command
from .mixers import PartitionedAttention, slot_index

__all__ = ["FULL", "MIXERS", "SMOKE", "Settings", "main", "mixer_factory", "run_one", "run_study", "summarize"]

MIXERS = ("dla", "fenwick", "uniform", "single")


@dataclass(frozen=True)
class Settings:
    """What :func:`run_study` runs: every mixer at every ``K`` (``single`` once) for every seed, on the example's
    task and model (``examples.recall_lm.Config``, or its smoke size) with ``steps`` training steps."""

    seeds: tuple[int, ...] = (0, 1, 2)
    Ks: tuple[int, ...] = (4, 8)
    mixers: tuple[str, ...] = ("dla", "fenwick", "single")  # "uniform" too costs 6 more runs (about 2.5 min)
    steps: int = 400
    log_every: int = 20
    smoke_size: bool = False  # the example's SMOKE sizes (a tiny task and model)

    def config(self, K: int) -> Config:
        return Config(**{**(EXAMPLE_SMOKE if self.smoke_size else {}), "steps": self.steps, "capacity": K})


FULL = Settings()
SMOKE = Settings(seeds=(0,), Ks=(4,), steps=3, log_every=1, smoke_size=True)


def mixer_factory(name: str) -> Callable[[Config, int], torch.nn.Module]:
    """The example's mixer hook for ``name``: DLA itself, or the layer with a fixed partition."""
    if name == "dla":
        return dla_mixer
    if name not in MIXERS:
        raise ValueError(f"mixer: expected one of {MIXERS}, got {name!r}")
    return lambda cfg, i: PartitionedAttention(cfg.hidden_size, cfg.heads, partition=name, capacity=cfg.capacity,
                                               tau=cfg.tau, layer_idx=i)


def states_after_context(name: str, cfg: Config) -> float:
    """States a fixed partition reads at the last context token (for DLA: measured from its cache instead)."""
    t = 2 * cfg.pairs - 1
    return float(len(set(slot_index(name, t + 1, cfg.capacity)[t].tolist())))


def run_one(settings: Settings, name: str, K: int, seed: int) -> dict:
    """Train one model (the example's recipe, seed ``seed``) and evaluate it on 512 held-out sequences."""
    cfg = settings.config(K)
    torch.manual_seed(seed)
    model = RecallLM(cfg, mixer_factory(name))
    history: list = []
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the example prints every log step
        train(model, cfg, "cpu", seed, settings.log_every, history)
    train_s = time.perf_counter() - began
    model.eval()
    x, y = mqar_batch(cfg, cfg.eval_sequences, torch.Generator().manual_seed(seed + 1), "cpu")
    record = {"mixer": name, "K": None if name == "single" else K, "seed": seed,
              "forced": teacher_forced_accuracy(model, x, y), "generated": None,
              "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_s, 1),
              "final_loss": history[-1]["loss"], "history": history}  # fmt: skip
    if name == "dla":
        answers, _, _, slots = generate_answers(model, cfg, x)
        record["generated"] = (answers == x[:, 2 * cfg.pairs + 1 :: 2]).float().mean().item()
        record["states_after_context"] = float(np.mean(slots))
    else:
        record["states_after_context"] = states_after_context(name, cfg)
    return record


def summarize(runs: list[dict]) -> list[dict]:
    """Per (mixer, K): mean, sample standard deviation, min and max over the seeds of each accuracy."""
    out = []
    for key in dict.fromkeys((r["mixer"], r["K"]) for r in runs):
        group = [r for r in runs if (r["mixer"], r["K"]) == key]
        row = {"mixer": key[0], "K": key[1], "seeds": [r["seed"] for r in group]}
        for field in ("forced", "generated", "states_after_context", "train_seconds"):
            values = np.array([r[field] for r in group if r[field] is not None], dtype=np.float64)
            if values.size:
                row[field] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1
                              else 0.0, "min": float(values.min()), "max": float(values.max()),
                              "per_seed": values.tolist()}  # fmt: skip
        out.append(row)
    return out


def run_study(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Every run of ``settings``; returns the results (what :func:`main` writes as JSON)."""
    started = time.perf_counter()
    cfg = settings.config(settings.Ks[0])
    task = {key: getattr(cfg, key) for key in ("pairs", "queries", "num_keys", "num_values", "seq_len", "hidden_size",
                                               "layers", "heads", "tau", "backbone", "batch_size", "steps", "lr",
                                               "eval_sequences")}  # fmt: skip
    runs, single_K = [], settings.Ks[-1]
    for K in settings.Ks:
        for name in settings.mixers:
            if name == "single" and single_K != K:
                continue  # one state: K plays no part
            for seed in settings.seeds:
                runs.append(run_one(settings, name, K, seed))
                r = runs[-1]
                log(f"{name:8s} K={K:2d} seed {seed}: accuracy {r['forced']:.3f}"
                    + ("" if r["generated"] is None else f" (generated {r['generated']:.3f})")
                    + f", {r['train_seconds']} s")  # fmt: skip
    meta = {"study": "recall", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "settings": dataclasses.asdict(settings), "task": task,
            "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return {"meta": meta, "recall": {"summary": summarize(runs), "runs": runs}}


def main(argv: list[str] | None = None) -> dict:
    """Command line: ``python -m studies.recall [--smoke] [--out DIR] [--threads N]``. Returns the results."""
    args, results = run_command("studies.recall", __doc__.splitlines()[0], run_study, (FULL, SMOKE),
                                "folder for recall.json and recall.png", argv)
    from .report import recall_figure  # matplotlib is imported only here

    (args.out / "recall.json").write_text(dump_results(results))
    if not args.no_figures:
        recall_figure(results, args.out / "recall.png")
    print(f"wrote {args.out}/recall.json (wall {results['meta']['wall_seconds']} s)")
    return results


if __name__ == "__main__":
    main()
