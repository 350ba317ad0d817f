"""Evidence for the mechanism: what information-aware boundaries and density-ordered merges buy at matched K.

Three experiments on seeded synthetic streams (``docs/evidence.md`` gives the definitions and the results):

1. **Memory fidelity at matched K** (:func:`fidelity_experiment`): at random query times of piecewise-stationary
   streams, how well each partition's slot states reproduce a target read of the no-merge memory (one slot
   per token), with the best slot weights (least squares); for boundary rates from 0.1% to 90%, three decays
   and ``K`` in {8, 16, 30}.
2. **Retrieval of rare tokens** (:func:`needle_experiment`): needles planted in long streams, read back at the
   end of the stream by a query equal to the needle's key, from each partition's slots.
3. **Sensitivity** (:func:`sensitivity_experiment`): DLA's boundary rate, boundary precision / recall and
   fidelity against ``tau`` and the decay.

Run ``python -m studies.evidence --out docs/figures`` (the full run) or ``--smoke`` (seconds). The results go to
``<out>/evidence.json``, the tables to ``<out>/evidence_tables.md`` and the figures to ``<out>/*.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import dla_ref

from .memory import fit_error, outer_products, prefix_states, slot_states, stack_padded
from .partitions import (
    density_merge,
    dla_trace,
    fenwick_partition,
    oldest_merge,
    partitions_from_trace,
    replay_cache,
    segment_lengths,
    smallest_merge,
    uniform_partition,
)
from .streams import Stream, make_stream

__all__ = [
    "FULL",
    "POLICIES",
    "SMOKE",
    "TARGETS",
    "Settings",
    "fidelity_experiment",
    "main",
    "dump_results",
    "needle_experiment",
    "rounded",
    "run_study",
    "sensitivity_experiment",
]

#: Partitions compared at matched K (the no-merge limit and the one-slot floor are added where they apply).
POLICIES = (
    "dla",  # DLA as implemented: its score >= tau opens a slot, density-ordered merges (dla_fast's trace)
    "dla_oldest",  # DLA's boundaries, the two oldest slots merged
    "dla_smallest",  # DLA's boundaries, the pair with the fewest tokens merged
    "oracle",  # the true boundaries forced (boundaries=), DLA's density-ordered merges (dla_fast's trace)
    "oracle_oldest",  # the true boundaries, the two oldest slots merged
    "oracle_smallest",  # the true boundaries, the pair with the fewest tokens merged
    "fenwick",  # log-linear attention's Fenwick partition, capped at K slots
    "uniform",  # K chunks of equal length
    "single",  # one slot: the single-state backbone
)

#: Target reads of the fidelity experiment (docs/evidence.md, "What is measured").
TARGETS = ("regime_mix", "regime_recall", "token_mix")


@dataclass(frozen=True)
class Settings:
    """Sizes of the three experiments. :data:`FULL` is the documented run, :data:`SMOKE` the CI one."""

    seeds: tuple[int, ...] = (0, 1, 2)
    tau: float = 0.6
    Ks: tuple[int, ...] = (8, 16, 30)
    # 1. memory fidelity
    fidelity_T: int = 4096
    rates: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9)
    decays: tuple[float, ...] = (0.5, 0.9, 0.99, 1.0)
    eval_times: int = 64  # query times per stream, drawn from [T / 4, T)
    draws: int = 4  # targets per query time and target family
    nomerge_times: int = 3  # query times per stream at which the no-merge limit is fitted (costly)
    Dk: int = 16
    Dv: int = 16
    # 2. needles
    needle_Ts: tuple[int, ...] = (4096, 16384, 65536)
    needle_decays: tuple[float, ...] = (0.5, 0.9, 1.0)
    needle_count: int = 16
    needle_rate: float = 0.01
    needle_Dk: int = 32
    needle_Dv: int = 128
    needle_nomerge_max_T: int = 4096  # the no-merge fit of every token is costly; done up to this T
    # 3. sensitivity
    sens_T: int = 2048
    sens_rate: float = 0.03
    sens_decays: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97)
    sens_taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    sens_K: int = 16
    sens_eval_times: int = 48


FULL = Settings()
SMOKE = Settings(
    seeds=(0,),
    Ks=(8, 16),
    fidelity_T=384,
    rates=(0.01, 0.3),
    decays=(0.5, 0.9),
    eval_times=12,
    draws=2,
    nomerge_times=3,
    needle_Ts=(1024,),
    needle_decays=(0.5, 1.0),
    needle_count=4,
    needle_Dv=64,
    needle_nomerge_max_T=1024,
    sens_T=384,
    sens_decays=(0.5, 0.9),
    sens_taus=(0.3, 0.6, 0.9),
    sens_eval_times=12,
)


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def query_times(T: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct query times drawn uniformly from ``[T / 4, T)``, increasing."""
    return np.sort(rng.choice(np.arange(T // 4, T), min(n, T - T // 4), replace=False)).astype(np.int64)


def stream_rng(*key: float) -> np.random.Generator:
    """A generator seeded by the experiment's coordinates (so each stream's draws are reproducible alone)."""
    return np.random.default_rng([int(round(x * 1_000_000)) for x in key])


def policy_partitions(stream: Stream, K: int, tau: float, times: np.ndarray) -> tuple[dict, dict]:
    """Partitions at ``times`` for every policy of :data:`POLICIES`, and ``{"open_rate": DLA's fraction of
    tokens that open a slot, "mismatches": how many DLA partitions the replay of DLA's own decisions under
    density_merge failed to reproduce (0 unless the harness is wrong), "opens", "scores": DLA's trace}``."""
    opens, merged, scores = dla_trace(stream.k, stream.v, stream.g, K, tau=tau)
    forced = stream.oracle_boundaries()
    o_opens, o_merged, o_scores = dla_trace(stream.k, stream.v, stream.g, K, tau=tau, boundaries=forced)
    parts = {
        "dla": partitions_from_trace(opens, merged, times),
        "dla_oldest": replay_cache(opens, scores, K, oldest_merge, times)[0],
        "dla_smallest": replay_cache(opens, scores, K, smallest_merge, times)[0],
        "oracle": partitions_from_trace(o_opens, o_merged, times),
        "oracle_oldest": replay_cache(o_opens, o_scores, K, oldest_merge, times)[0],
        "oracle_smallest": replay_cache(o_opens, o_scores, K, smallest_merge, times)[0],
        "fenwick": [fenwick_partition(int(t), K) for t in times],
        "uniform": [uniform_partition(int(t), K) for t in times],
        "single": [np.zeros(1, dtype=np.int64) for _ in times],
    }
    replayed = replay_cache(opens, scores, K, density_merge, times)[0]
    mismatches = sum(not np.array_equal(a, b) for a, b in zip(replayed, parts["dla"]))
    return parts, {"open_rate": float(opens.mean()), "mismatches": int(mismatches), "opens": opens, "scores": scores}


def regime_targets(stream: Stream, X, H, G, t: int, draws: int, rng: np.random.Generator) -> dict:
    """The three target reads at time ``t`` (``[draws, D]`` each); see docs/evidence.md."""
    starts = stream.regime_starts()
    R = slot_states(H, G, starts[starts <= t], t)  # one state per regime so far
    norms = np.linalg.norm(R, axis=1)
    live = np.flatnonzero(norms >= 1e-3 * norms.max())
    u = np.exp(G[t] - G[: t + 1])
    return {
        "regime_mix": rng.standard_normal((draws, len(R))) @ R,
        "regime_recall": R[rng.choice(live, draws)],
        "token_mix": (rng.standard_normal((draws, t + 1)) * u) @ X[: t + 1],
    }


def stacked_targets(stream: Stream, X, H, G, times, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Every target of :data:`TARGETS` at every query time, ``[E, len(TARGETS) * draws, D]`` (family-major)."""
    per_time = [regime_targets(stream, X, H, G, int(t), draws, rng) for t in times]
    return np.stack([np.concatenate([tg[name] for name in TARGETS]) for tg in per_time])


def split_targets(errors: np.ndarray, draws: int) -> dict:
    """``[E, len(TARGETS) * draws]`` errors -> ``{target: [E]}``, the mean over each family's draws."""
    return {name: errors[:, i * draws : (i + 1) * draws].mean(axis=1) for i, name in enumerate(TARGETS)}


def summarize(values: list[np.ndarray]) -> dict:
    """Mean and standard error over all the per-query values (seeds pooled), and each seed's mean."""
    pooled = np.concatenate([np.ravel(v) for v in values])
    sem = float(pooled.std(ddof=1) / np.sqrt(len(pooled))) if len(pooled) > 1 else 0.0
    return {"mean": float(pooled.mean()), "sem": sem, "n": int(len(pooled)),
            "per_seed": [float(np.mean(v)) for v in values]}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 1. Memory fidelity at matched K
# ---------------------------------------------------------------------------------------------


def fidelity_stream(settings: Settings, rate: float, decay: float, seed: int) -> dict:
    """Per-query errors of every (K, policy, target) on one stream, and its bookkeeping."""
    stream = make_stream(settings.fidelity_T, rate=rate, decay=decay, seed=seed, Dk=settings.Dk, Dv=settings.Dv)
    G = stream.log_decay_prefix
    X = outer_products(stream.k, stream.v)
    H = prefix_states(X, stream.g)
    rng = stream_rng(1, rate, decay, seed)
    times = query_times(stream.T, settings.eval_times, rng)
    Y = stacked_targets(stream, X, H, G, times, settings.draws, rng)  # [E, len(TARGETS) * draws, D]
    errors, slots, longest, mismatches, open_rate = {}, {}, {}, 0, None
    for K in settings.Ks:
        parts, info = policy_partitions(stream, K, settings.tau, times)
        mismatches += info["mismatches"]
        open_rate = info["open_rate"]
        for policy, plist in parts.items():
            basis = stack_padded([slot_states(H, G, p, int(t)) for p, t in zip(plist, times)], K)
            slots[(K, policy)] = np.array([len(p) for p in plist], dtype=np.float64)
            longest[(K, policy)] = np.array([segment_lengths(p, int(t)).max() / (t + 1) for p, t in zip(plist, times)])
            for name, err in split_targets(fit_error(basis, Y), settings.draws).items():
                errors[(K, policy, name)] = err
    # The no-merge limit (one slot per token) at the first few query times.
    nomerge = np.stack([
        fit_error(slot_states(H, G, np.arange(t + 1), int(t))[None], Y[e][None])[0]
        for e, t in enumerate(times[: settings.nomerge_times])
    ])  # fmt: skip
    for name, err in split_targets(nomerge, settings.draws).items():
        errors[("all", "nomerge", name)] = err
    return {"errors": errors, "slots": slots, "longest": longest, "dla_open_rate": open_rate, "mismatches": mismatches,
            "true_rate": float(len(stream.regime_starts()) / stream.T)}  # fmt: skip


def fidelity_experiment(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Experiment 1: records ``{decay, rate, K, policy, target, mean, sem, n, per_seed, slots, longest_share}``
    (``slots``: mean slots in use; ``longest_share``: mean share of the tokens in the longest slot)."""
    records, streams = [], []
    for decay in settings.decays:
        for rate in settings.rates:
            per_seed = [fidelity_stream(settings, rate, decay, seed) for seed in settings.seeds]
            streams.append({"decay": decay, "rate": rate,
                            "true_rate": float(np.mean([r["true_rate"] for r in per_seed])),
                            "dla_open_rate": float(np.mean([r["dla_open_rate"] for r in per_seed])),
                            "replay_mismatches": int(sum(r["mismatches"] for r in per_seed))})  # fmt: skip
            for key in per_seed[0]["errors"]:
                K, policy, target = key
                rec = {"decay": decay, "rate": rate, "K": K, "policy": policy, "target": target}
                rec.update(summarize([r["errors"][key] for r in per_seed]))
                if (K, policy) in per_seed[0]["slots"]:
                    rec["slots"] = float(np.mean([r["slots"][(K, policy)].mean() for r in per_seed]))
                    rec["longest_share"] = float(np.mean([r["longest"][(K, policy)].mean() for r in per_seed]))
                records.append(rec)
            log(f"fidelity decay={decay} rate={rate}: DLA opens {streams[-1]['dla_open_rate']:.4f} of tokens "
                f"(true regime starts {streams[-1]['true_rate']:.4f})")
    return {"records": records, "streams": streams}


# ---------------------------------------------------------------------------------------------
# 2. Retrieval of rare tokens (needles)
# ---------------------------------------------------------------------------------------------


def needle_reads(stream: Stream, partitions: dict, t: int) -> dict:
    """For every partition (a dict of partitions at time ``t``), the reads ``[N, m, Dv]`` of each needle's key
    from its slots: one pass over the stream for all of them."""
    queries = stream.k[stream.needles]  # [N, Dk]
    N, Dv = len(queries), stream.v.shape[1]
    keep = set()
    for starts in partitions.values():
        keep.update(np.append(starts[1:] - 1, t).tolist())
        keep.update((starts[starts > 0] - 1).tolist())
    keep = np.array(sorted(keep), dtype=np.int64)
    contributions = lambda sl: ((stream.k[sl] @ queries.T)[:, :, None] * stream.v[sl][:, None, :]).reshape(-1, N * Dv)
    Hq = prefix_states(contributions, stream.g, keep)
    row_of = lambda idx: np.searchsorted(keep, idx)
    G = stream.log_decay_prefix
    out = {}
    for key, starts in partitions.items():
        reads = slot_states(Hq, G, starts, t, row_of, to_time=False)  # [m, N * Dv], scale-free (see below)
        out[key] = np.ascontiguousarray(reads.reshape(len(starts), N, Dv).transpose(1, 0, 2))
    return out


def needle_stream(settings: Settings, T: int, decay: float, seed: int) -> dict:
    """Per-needle errors (and whether the needle sits alone in a slot) of every (K, policy) on one stream."""
    stream = make_stream(T, rate=settings.needle_rate, decay=decay, seed=seed, Dk=settings.needle_Dk,
                         Dv=settings.needle_Dv, n_needles=settings.needle_count)  # fmt: skip
    t = T - 1
    p = stream.needles
    # The no-merge read of a needle is lambda = 1 on the needle's token alone: D(p, t) (k_p . k_p) v_p. The fit
    # has free slot weights, so its error ignores the target's scale and each slot's (needle_reads drops the
    # decay to t, which underflows for old needles at fast decay): the target is v_p.
    targets = stream.v[p][:, None, :]
    partitions, mismatches = {}, 0
    for K in settings.Ks:
        parts, info = policy_partitions(stream, K, settings.tau, np.array([t]))
        partitions.update({(K, policy): plist[0] for policy, plist in parts.items()})
        mismatches += info["mismatches"]
    opens, scores = info["opens"], info["scores"]  # DLA's decisions do not depend on K
    after = np.minimum(p + 1, t)
    if settings.needle_nomerge_max_T >= T:
        partitions[("all", "nomerge")] = np.arange(t + 1)
    reads = needle_reads(stream, partitions, t)
    errors, isolated = {}, {}
    for key, starts in partitions.items():
        errors[key] = fit_error(reads[key], targets)[:, 0]
        isolated[key] = (np.isin(p, starts) & (np.isin(p + 1, starts) | (p == t))).astype(np.float64)
    others = np.ones(T, dtype=bool)
    others[p] = False
    others[0] = False
    return {"errors": errors, "isolated": isolated, "positions": p.tolist(), "dla_open_rate": float(opens.mean()),
            "mismatches": mismatches, "needle_opens": float(np.mean(opens[p] & opens[after])),
            "needle_score": float(np.median(scores[p])), "other_score_p99": float(np.percentile(scores[others], 99))}


def needle_experiment(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Experiment 2: records ``{T, decay, K, policy, mean, sem, n, per_seed, isolated, per_needle}``; per stream
    setting, DLA's opening rate, the fraction of needles where DLA opens a slot at the needle and at the next
    token, the median score of the needles and the 99th percentile of the other tokens' scores (seed means)."""
    records, streams = [], []
    for decay in settings.needle_decays:
        for T in settings.needle_Ts:
            per_seed = [needle_stream(settings, T, decay, seed) for seed in settings.seeds]
            streams.append({"T": T, "decay": decay, "replay_mismatches": int(sum(r["mismatches"] for r in per_seed))})
            for field in ("dla_open_rate", "needle_opens", "needle_score", "other_score_p99"):
                streams[-1][field] = float(np.mean([r[field] for r in per_seed]))
            for key in per_seed[0]["errors"]:
                K, policy = key
                rec = {"T": T, "decay": decay, "K": K, "policy": policy}
                rec.update(summarize([r["errors"][key] for r in per_seed]))
                rec["isolated"] = float(np.mean([r["isolated"][key].mean() for r in per_seed]))
                rec["per_needle"] = {
                    "seed": [seed for seed, r in zip(settings.seeds, per_seed) for _ in r["positions"]],
                    "position": [pos for r in per_seed for pos in r["positions"]],
                    "error": [float(err) for r in per_seed for err in r["errors"][key]],
                }
                records.append(rec)
            log(f"needles T={T} decay={decay}: DLA opens {streams[-1]['dla_open_rate']:.4f} of tokens")
    return {"records": records, "streams": streams}


# ---------------------------------------------------------------------------------------------
# 3. Sensitivity to tau and the decay
# ---------------------------------------------------------------------------------------------


def boundary_quality(opens: np.ndarray, stream: Stream) -> tuple[float | None, float | None]:
    """Precision and recall of DLA's slot openings (token 0 excluded) against the regime starts, one token of
    slack: an opening at ``t`` is right if a regime starts at ``t`` or ``t - 1``; a start at ``r`` is found if a
    slot opens at ``r`` or ``r + 1``."""
    T = stream.T
    true = np.zeros(T + 1, dtype=bool)
    true[stream.regime_starts()] = True
    true[0] = False
    got = np.zeros(T + 1, dtype=bool)
    got[:T] = opens
    got[0] = False
    right = got[1:T] & (true[1:T] | true[0 : T - 1])
    found = true[1:T] & (got[1:T] | got[2 : T + 1])
    precision = float(right.sum() / got.sum()) if got.sum() else None  # no opening: undefined
    recall = float(found.sum() / true.sum()) if true.sum() else None
    return precision, recall


def sensitivity_stream(settings: Settings, decay: float, seed: int) -> list[dict]:
    """DLA at every tau (and the tau-free references) on one stream: rates, precision / recall, errors."""
    K = settings.sens_K
    stream = make_stream(settings.sens_T, rate=settings.sens_rate, decay=decay, seed=seed, Dk=settings.Dk,
                         Dv=settings.Dv)  # fmt: skip
    G = stream.log_decay_prefix
    X = outer_products(stream.k, stream.v)
    H = prefix_states(X, stream.g)
    rng = stream_rng(3, decay, seed)
    times = query_times(stream.T, settings.sens_eval_times, rng)
    Y = stacked_targets(stream, X, H, G, times, settings.draws, rng)

    def errors_of(plist):
        basis = stack_padded([slot_states(H, G, p, int(t)) for p, t in zip(plist, times)], K)
        return split_targets(fit_error(basis, Y), settings.draws)

    parts, info = policy_partitions(stream, K, settings.tau, times)
    rows = [{"policy": policy, "tau": None, "errors": errors_of(parts[policy])}
            for policy in ("oracle", "fenwick", "uniform", "single")]  # fmt: skip
    # DLA's scores at the paper's tau: at the regime starts, and elsewhere (token 0 left out).
    change = np.zeros(stream.T, dtype=bool)
    change[stream.regime_starts()[1:]] = True
    rest = ~change
    rest[0] = False
    rows[0]["score_quantiles"] = {
        "change_p10": float(np.percentile(info["scores"][change], 10)),
        "change_p50": float(np.percentile(info["scores"][change], 50)),
        "other_p50": float(np.percentile(info["scores"][rest], 50)),
        "other_p99": float(np.percentile(info["scores"][rest], 99)),
    }
    for tau in settings.sens_taus:
        opens, merged, _ = dla_trace(stream.k, stream.v, stream.g, K, tau=tau)
        precision, recall = boundary_quality(opens, stream)
        rows.append({"policy": "dla", "tau": tau, "open_rate": float(opens.mean()), "precision": precision,
                     "recall": recall, "errors": errors_of(partitions_from_trace(opens, merged, times))})
    return rows


def sensitivity_experiment(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Experiment 3: records ``{decay, policy, tau, target, mean, sem, n, per_seed}`` and, for DLA,
    ``open_rate``, ``precision``, ``recall`` (means over seeds); the ``oracle`` records also carry
    ``score_quantiles``: quantiles of DLA's scores (at the paper's tau) at the regime starts and elsewhere."""
    records = []
    for decay in settings.sens_decays:
        per_seed = [sensitivity_stream(settings, decay, seed) for seed in settings.seeds]
        for i, row in enumerate(per_seed[0]):
            seeds_rows = [rows[i] for rows in per_seed]
            for name in TARGETS:
                rec = {"decay": decay, "policy": row["policy"], "tau": row["tau"], "target": name}
                rec.update(summarize([r["errors"][name] for r in seeds_rows]))
                for field in ("open_rate", "precision", "recall"):
                    if field in row:
                        values = [r[field] for r in seeds_rows if r[field] is not None]
                        rec[field] = float(np.mean(values)) if values else None
                if "score_quantiles" in row:
                    rec["score_quantiles"] = {key: float(np.mean([r["score_quantiles"][key] for r in seeds_rows]))
                                              for key in row["score_quantiles"]}  # fmt: skip
                records.append(rec)
        log(f"sensitivity decay={decay}: done")
    return {"records": records}


# ---------------------------------------------------------------------------------------------
# The whole study
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    """What ran the study (recorded in the results)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "dla": dla_ref.__version__}  # fmt: skip


def run_study(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Run the three experiments; return the results (what :func:`main` writes as JSON)."""
    started = time.perf_counter()
    results = {"meta": {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "machine": machine(), "settings": dataclasses.asdict(settings),
                        "policies": list(POLICIES), "targets": list(TARGETS)}}  # fmt: skip
    walls = {}
    for name, experiment in (("fidelity", fidelity_experiment), ("needles", needle_experiment),
                             ("sensitivity", sensitivity_experiment)):  # fmt: skip
        t0 = time.perf_counter()
        results[name] = experiment(settings, log)
        walls[name] = round(time.perf_counter() - t0, 1)
    walls["total"] = round(time.perf_counter() - started, 1)
    results["meta"]["wall_seconds"] = walls
    return results


def rounded(value, digits: int = 6):
    """``value`` with every float rounded to ``digits`` significant digits (the tables show at most 3)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def dump_results(results: dict) -> str:
    """The results as JSON, one record per line (readable diffs, a fraction of an indented dump's size)."""
    lines = ["{", f' "meta": {json.dumps(results["meta"], indent=1)},']
    experiments = [key for key in results if key != "meta"]
    for i, name in enumerate(experiments):
        lines.append(f' "{name}": {{')
        parts = list(results[name].items())
        for j, (key, items) in enumerate(parts):
            lines.append(f'  "{key}": [')
            lines += [f"   {json.dumps(item)}" + ("," if k < len(items) - 1 else "") for k, item in enumerate(items)]
            lines.append("  ]" + ("," if j < len(parts) - 1 else ""))
        lines.append(" }" + ("," if i < len(experiments) - 1 else ""))
    return "\n".join(lines + ["}", ""])


def run_command(module: str, description: str, run_study, sizes: tuple, out_help: str, argv) -> tuple:
    """The study commands' shared front: ``--smoke`` (the small CI size), ``--out``, ``--threads``,
    ``--no-figures``; ``run_study(size, log)`` runs with that many torch threads, and its results come back
    rounded as the JSON holds them, with the command line recorded. ``sizes`` is ``(full, smoke)``.
    Returns ``(args, results)``."""
    prog = f"python -m {module}"
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--smoke", action="store_true", help="the small CI size (seconds) instead of the full run")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/figures"), help=out_help)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    args = parser.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_study(sizes[1] if args.smoke else sizes[0], log=lambda line: print(line, flush=True))
    finally:
        torch.set_num_threads(previous)
    results["meta"]["command"] = prog + " " + " ".join(argv if argv is not None else sys.argv[1:])
    results = json.loads(json.dumps(rounded(results)))  # what the JSON holds: 6 significant digits, lists
    args.out.mkdir(parents=True, exist_ok=True)
    return args, results


def main(argv: list[str] | None = None) -> dict:
    """Command line: ``python -m studies.evidence [--smoke] [--out DIR] [--threads N]``. Returns the results."""
    args, results = run_command("studies.evidence", __doc__.splitlines()[0], run_study, (FULL, SMOKE),
                                "folder for evidence.json, evidence_tables.md and the PNG figures", argv)
    from .report import render_tables, write_figures  # matplotlib is imported only here

    (args.out / "evidence.json").write_text(dump_results(results))
    (args.out / "evidence_tables.md").write_text(render_tables(results))
    if not args.no_figures:
        write_figures(results, args.out)
    print(f"wrote {args.out}/evidence.json, evidence_tables.md (wall {results['meta']['wall_seconds']['total']} s)")
    return results


if __name__ == "__main__":
    main()
