"""Markdown tables and matplotlib figures of the evidence study, made from its results (``evidence.json``), and
of the trained comparison (``recall.json``, :mod:`studies.recall`).

Everything here reads the results dictionary that :func:`studies.evidence.run_study` returns (or its JSON),
so that ``docs/evidence.md``'s tables can be regenerated, and checked, from the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections.abc import Iterable

import numpy as np

__all__ = ["LABELS", "document_tables", "fill_document", "fmt", "main", "named_tables", "recall_figure",
           "recall_tables", "render_tables", "select", "value", "write_figures"]

LABELS = {
    "dla": "DLA",
    "dla_oldest": "DLA bounds + oldest merge",
    "dla_smallest": "DLA bounds + smallest merge",
    "oracle": "true bounds + density merge",
    "oracle_oldest": "true bounds + oldest merge",
    "oracle_smallest": "true bounds + smallest merge",
    "fenwick": "Fenwick (log-linear)",
    "uniform": "uniform chunks",
    "single": "single state",
    "nomerge": "no merge",
}
TARGET_LABELS = {"regime_mix": "regime mix", "regime_recall": "regime recall", "token_mix": "token mix"}
#: The partitions that a streaming model could use at matched K (the "true bounds" rows need an oracle).
MATCHED = ("dla", "fenwick", "uniform")


def select(records: Iterable[dict], **where) -> list[dict]:
    """The records whose fields equal every ``where`` item."""
    return [r for r in records if all(r.get(key) == want for key, want in where.items())]


def value(records: Iterable[dict], field: str = "mean", **where):
    """The ``field`` of the single record matching ``where`` (None if there is none)."""
    found = select(records, **where)
    if len(found) > 1:
        raise ValueError(f"more than one record matches {where}")
    return found[0][field] if found else None


def fmt(x, bold: bool = False) -> str:
    """An error for a table: 3 decimals, 2 significant digits below 0.01, ``0`` below 1e-6 (exact up to
    rounding)."""
    if x is None:
        return "-"
    if x < 1e-6:
        text = "0"
    elif x < 0.01:
        text = f"{x:.2g}"
    else:
        text = f"{x:.3f}"
    return f"**{text}**" if bold else text


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%" if x < 0.1 else f"{100 * x:.1f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_of(values: dict, among: Iterable[str]) -> set:
    """Names among ``among`` whose value is the smallest (within 1e-6, which prints as 0, or 0.5% relative)."""
    present = {name: values[name] for name in among if values.get(name) is not None}
    if not present:
        return set()
    low = min(present.values())
    return {name for name, x in present.items() if x <= low + max(1e-6, 0.005 * low)}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def fidelity_table(results: dict, target: str, K: int) -> str:
    """Rows (decay, rate); the matched-K partitions (best in bold), the oracle reference and the floor."""
    recs = select(results["fidelity"]["records"], target=target, K=K)
    streams = results["fidelity"]["streams"]
    policies = ("dla", "fenwick", "uniform", "oracle", "single")
    header = ["decay", "regime starts", "DLA opens"] + [LABELS[p] for p in policies]
    rows = []
    for s in streams:
        vals = {p: value(recs, decay=s["decay"], rate=s["rate"], K=K, policy=p) for p in policies}
        best = best_of(vals, MATCHED)
        rows.append([f"{s['decay']:g}", pct(s["true_rate"]), pct(s["dla_open_rate"])]
                    + [fmt(vals[p], p in best) for p in policies])  # fmt: skip
    return table(header, rows)


def k_summary_table(results: dict) -> str:
    """Mean error over the boundary rates, per (target, decay, K), and at how many rates DLA is the best."""
    recs = results["fidelity"]["records"]
    settings = results["meta"]["settings"]
    policies = ("dla", "fenwick", "uniform", "single")
    header = (["target", "decay", "K"] + [LABELS[p] for p in policies]
              + ["DLA best (of 3) at", "slots used: DLA / Fenwick / uniform"])  # fmt: skip
    rows = []
    for target in ("regime_mix", "regime_recall", "token_mix"):
        for decay in settings["decays"]:
            for K in settings["Ks"]:
                recs = select(results["fidelity"]["records"], target=target, decay=decay, K=K)
                means, wins = {}, 0
                for p in policies:
                    means[p] = float(np.mean([value(recs, decay=decay, rate=r, K=K, policy=p, target=target)
                                              for r in settings["rates"]]))  # fmt: skip
                for r in settings["rates"]:
                    vals = {p: value(recs, decay=decay, rate=r, K=K, policy=p, target=target) for p in MATCHED}
                    wins += "dla" in best_of(vals, MATCHED)
                best = best_of(means, MATCHED)
                slots = {p: np.mean([value(recs, "slots", decay=decay, rate=r, K=K, policy=p, target=target)
                                     for r in settings["rates"]]) for p in MATCHED}  # fmt: skip
                used = " / ".join(f"{slots[p]:.1f}" for p in MATCHED)
                rows.append([TARGET_LABELS[target], f"{decay:g}", str(K)]
                            + [fmt(means[p], p in best) for p in policies]
                            + [f"{wins} of {len(settings['rates'])} rates", used])  # fmt: skip
    return table(header, rows)


def merge_table(results: dict, target: str, K: int) -> str:
    """The merge rules under the true boundaries and under DLA's, rows (decay, rate)."""
    recs = select(results["fidelity"]["records"], target=target, K=K)
    policies = ("oracle", "oracle_oldest", "oracle_smallest", "dla", "dla_oldest", "dla_smallest")
    header = (["decay", "regime starts"] + [LABELS[p] for p in policies]
              + ["longest slot's share of the tokens, true bounds: density / oldest / smallest"])  # fmt: skip
    rows = []
    for s in results["fidelity"]["streams"]:
        vals = {p: value(recs, decay=s["decay"], rate=s["rate"], policy=p) for p in policies}
        best_true, best_dla = best_of(vals, policies[:3]), best_of(vals, policies[3:])
        share = " / ".join(f"{value(recs, 'longest_share', decay=s['decay'], rate=s['rate'], policy=p):.2f}"
                           for p in policies[:3])  # fmt: skip
        rows.append([f"{s['decay']:g}", pct(s["true_rate"])]
                    + [fmt(vals[p], p in best_true or p in best_dla) for p in policies] + [share])  # fmt: skip
    return table(header, rows)


def needle_table(results: dict) -> str:
    """Rows (decay, T, K): the needles' mean error per partition, isolation, and the chance level."""
    recs = results["needles"]["records"]
    settings = results["meta"]["settings"]
    policies = ("dla", "fenwick", "uniform", "oracle", "oracle_oldest", "single")
    header = (["decay", "T", "K", "DLA opens"] + [LABELS[p] for p in policies]
              + ["alone in a slot: DLA / true+density / true+oldest", "chance"])  # fmt: skip
    rows = []
    for s in results["needles"]["streams"]:
        for K in settings["Ks"]:
            vals = {p: value(recs, T=s["T"], decay=s["decay"], K=K, policy=p) for p in policies}
            best = best_of(vals, MATCHED)
            alone = " / ".join(pct(value(recs, "isolated", T=s["T"], decay=s["decay"], K=K, policy=p))
                               for p in ("dla", "oracle", "oracle_oldest"))  # fmt: skip
            rows.append([f"{s['decay']:g}", str(s["T"]), str(K), pct(s["dla_open_rate"])]
                        + [fmt(vals[p], p in best) for p in policies]
                        + [alone, fmt(1 - K / settings["needle_Dv"])])  # fmt: skip
    return table(header, rows)


def needle_decision_table(results: dict) -> str:
    """Per stream setting: how DLA treats the needles (seed means)."""
    header = ["decay", "T", "DLA opens", "needle and next token open a slot", "needle score (median)",
              "other tokens' score (99th percentile)"]  # fmt: skip
    rows = [[f"{s['decay']:g}", str(s["T"]), pct(s["dla_open_rate"]), pct(s["needle_opens"]),
             f"{s['needle_score']:.3f}", f"{s['other_score_p99']:.3f}"] for s in results["needles"]["streams"]]
    return table(header, rows)


def score_table(results: dict) -> str:
    """Per decay: quantiles of DLA's scores (at the paper's tau) at the regime starts and elsewhere."""
    recs = select(results["sensitivity"]["records"], policy="oracle", target="regime_mix")
    header = ["decay", "at regime starts: 10th pct", "median", "other tokens: median", "99th pct"]
    rows = []
    for rec in recs:
        q = rec["score_quantiles"]
        rows.append([f"{rec['decay']:g}"] + [f"{q[key]:.3f}" for key in ("change_p10", "change_p50", "other_p50",
                                                                          "other_p99")])  # fmt: skip
    return table(header, rows)


def sensitivity_tables(results: dict, target: str = "regime_mix") -> str:
    """Per decay (rows) and tau (columns): DLA's opening rate, precision / recall, and its error."""
    recs = results["sensitivity"]["records"]
    settings = results["meta"]["settings"]
    taus = settings["sens_taus"]
    parts = []
    header = ["decay"] + [f"tau={t:g}" for t in taus]
    rate_rows, pr_rows, err_rows = [], [], []
    for decay in settings["sens_decays"]:
        dla = {t: select(recs, decay=decay, policy="dla", tau=t, target=target)[0] for t in taus}
        rate_rows.append([f"{decay:g}"] + [pct(dla[t]["open_rate"]) for t in taus])
        pr_rows.append([f"{decay:g}"] + [
            "-" if dla[t]["precision"] is None else f"{dla[t]['precision']:.2f} / {dla[t]['recall']:.2f}" for t in taus
        ])  # fmt: skip
        refs = [value(recs, decay=decay, policy=p, tau=None, target=target) for p in ("oracle", "fenwick", "single")]
        err_rows.append([f"{decay:g}"] + [fmt(dla[t]["mean"]) for t in taus] + [fmt(x) for x in refs])
    parts.append("DLA's opening rate (fraction of tokens that open a slot; regime starts: "
                 f"{pct(settings['sens_rate'])} of tokens):\n\n" + table(header, rate_rows))  # fmt: skip
    parts.append("Precision / recall of the openings against the regime starts (one token of slack):\n\n"
                 + table(header, pr_rows))  # fmt: skip
    parts.append(f"Fidelity error ({TARGET_LABELS[target]}, K = {settings['sens_K']}), with the tau-free "
                 "references:\n\n"
                 + table(header + ["true bounds + density merge", "Fenwick", "single state"], err_rows))  # fmt: skip
    return "\n".join(parts)


def _run_rows(meta: dict, software: str) -> list:
    """The rows every study's run table opens with: command, date, machine, software, seeds."""
    m = meta["machine"]
    return [
        ["command", f"`{meta.get('command', 'run_study')}`"],
        ["date (UTC)", meta["date_utc"]],
        ["machine", f"{m['cpu']}, {m['cores']} cores, {m['platform']}"],
        ["software", software],
        ["seeds", ", ".join(str(x) for x in meta["settings"]["seeds"])],
    ]


def run_table(results: dict) -> str:
    """What ran, when, with which seeds, and how long each experiment took."""
    meta = results["meta"]
    m, walls = meta["machine"], meta["wall_seconds"]
    rows = _run_rows(meta, f"Python {m['python']}, NumPy {m['numpy']}, torch {m['torch']} "
                           f"({m['torch_threads']} thread), dla {m['dla']}") + [
        ["wall time (s)", f"fidelity {walls['fidelity']}, needles {walls['needles']}, sensitivity "
                          f"{walls['sensitivity']}; total {walls['total']} (figures not included)"],
    ]  # fmt: skip
    return table(["", ""], rows)


# ---------------------------------------------------------------------------------------------
# The trained comparison (studies/recall.py, recall.json)
# ---------------------------------------------------------------------------------------------

RECALL_LABELS = {"dla": "DLA", "fenwick": "Fenwick (log-linear)", "uniform": "uniform chunks",
                 "single": "single state"}  # fmt: skip
RECALL_COLORS = {"dla": "tab:red", "fenwick": "tab:blue", "uniform": "tab:green", "single": "0.4"}


def spread(stats: dict | None) -> str:
    """``mean ± std (min-max)`` of an accuracy summary, 3 decimals."""
    if stats is None:
        return "-"
    if len(stats["per_seed"]) == 1:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})"


def first_step(history: list[dict], level: float) -> str:
    """The first logged step whose batch accuracy reaches ``level`` ('-' if none does)."""
    return next((str(h["step"]) for h in history if h["accuracy"] >= level), "-")


def recall_accuracy_table(results: dict, level: float = 0.5) -> str:
    """Rows (K, mixer): held-out accuracy over the seeds (best mean per K in bold), each seed, when training
    reached ``level``, the states read after the context, the training time."""
    summary, runs = results["recall"]["summary"], results["recall"]["runs"]
    header = ["K", "mixer", "accuracy, teacher forced: mean ± std (min-max)", "per seed", "generated (DLA's cache)",
              f"first step at {level:.0%} batch accuracy, per seed", "states after the context",
              "training s per run"]  # fmt: skip
    rows = []
    for K in results["meta"]["settings"]["Ks"]:
        group = [r for r in summary if r["K"] in (K, None)]
        best = max(r["forced"]["mean"] for r in group)
        for r in group:
            text = spread(r["forced"])
            text = f"**{text}**" if r["forced"]["mean"] >= best - 1e-9 else text
            seeds = " / ".join(f"{x:.3f}" for x in r["forced"]["per_seed"])
            steps = " / ".join(first_step(run["history"], level) for run in runs
                               if (run["mixer"], run["K"]) == (r["mixer"], r["K"]))  # fmt: skip
            rows.append([str(K), RECALL_LABELS[r["mixer"]] + (" (K-free)" if r["K"] is None else ""), text, seeds,
                         spread(r.get("generated")), steps, f"{r['states_after_context']['mean']:.1f}",
                         f"{r['train_seconds']['mean']:.0f}"])  # fmt: skip
    return table(header, rows)


def recall_run_table(results: dict) -> str:
    """What ran, when, with which seeds, on which task and model."""
    meta = results["meta"]
    m, task = meta["machine"], meta["task"]
    software = f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} thread), dla {m['dla']}"
    rows = _run_rows(meta, software) + [
        ["task", f"MQAR: {task['pairs']} pairs, {task['queries']} queries, T = {task['seq_len']}, "
                 f"{task['num_keys']} keys, {task['num_values']} values"],
        ["model", f"d = {task['hidden_size']}, {task['layers']} layers of {task['heads']} heads, "
                  f"{task['backbone']} decay, tau = {task['tau']} (DLA)"],
        ["training", f"{task['steps']} steps of {task['batch_size']} sequences, AdamW, peak lr {task['lr']} "
                     f"(examples/recall_lm.py); {task['eval_sequences']} held-out sequences"],
        ["wall time (s)", f"{meta['wall_seconds']} (figure not included)"],
    ]  # fmt: skip
    return table(["", ""], rows)


def recall_tables(results: dict) -> dict:
    """The trained comparison's tables, by name (``recall.json``)."""
    return {"recall_run": recall_run_table(results), "recall_accuracy": recall_accuracy_table(results)}


def recall_figure(results: dict, path: pathlib.Path) -> None:
    """Training curves per K (each seed thin, the seeds' mean thick) and the held-out accuracy of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, Ks = results["recall"]["runs"], results["meta"]["settings"]["Ks"]
    mixers = list(dict.fromkeys(r["mixer"] for r in runs))
    guess = 1 / results["meta"]["task"]["pairs"]  # the plateau: any value of the context
    fig, axes = plt.subplots(1, len(Ks) + 1, figsize=(4.6 * (len(Ks) + 1), 3.8), squeeze=False)
    for ax in axes[0]:
        ax.axhline(guess, color="k", lw=0.8, ls=":", label="1 / pairs: a context value at random")
    for j, K in enumerate(Ks):
        ax = axes[0][j]
        for name in mixers:
            group = [r for r in runs if r["mixer"] == name and r["K"] in (K, None)]
            steps = [h["step"] for h in group[0]["history"]]
            curves = np.array([[h["accuracy"] for h in r["history"]] for r in group])
            for curve in curves:
                ax.plot(steps, curve, color=RECALL_COLORS[name], lw=0.6, alpha=0.5)
            ax.plot(steps, curves.mean(0), color=RECALL_COLORS[name], lw=2, label=RECALL_LABELS[name])
        ax.set_title(f"training, K = {K} (single state: K-free)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("batch accuracy (values after query keys)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    ax = axes[0][-1]
    for i, K in enumerate(Ks):
        for k, name in enumerate(mixers):
            acc = [r["forced"] for r in runs if r["mixer"] == name and r["K"] in (K, None)]
            x = i + (k - (len(mixers) - 1) / 2) * 0.18
            ax.scatter([x] * len(acc), acc, color=RECALL_COLORS[name], s=18, zorder=3)
            ax.hlines(np.mean(acc), x - 0.07, x + 0.07, color=RECALL_COLORS[name], lw=2)
    ax.set_xticks(range(len(Ks)), [f"K = {K}" for K in Ks])
    ax.set_ylabel("held-out accuracy (dots: seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("after training", fontsize=10)
    fig.suptitle(f"MQAR (examples/recall_lm.py): the same model and training with {len(mixers)} partitions of the "
                 "past (lines: each seed thin, their mean thick)", fontsize=11)  # fmt: skip
    finish(fig, path, legend_from=axes[0][0], ncol=len(mixers) + 1)
    fig.subplots_adjust(wspace=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def named_tables(results: dict) -> dict:
    """Every table, by name: ``docs/evidence.md`` embeds them between ``<!-- table: NAME -->`` and
    ``<!-- /table -->``, and a test checks them against the committed ``docs/figures/evidence.json`` and
    ``recall.json``. ``results`` is either study's results (``meta["study"] == "recall"``: the trained one)."""
    if results["meta"].get("study") == "recall":
        return recall_tables(results)
    settings = results["meta"]["settings"]
    K_main = 16 if 16 in settings["Ks"] else settings["Ks"][-1]
    K_low = settings["Ks"][0]
    tables = {"run": run_table(results)}
    tables.update({f"fidelity_{target}_K{K_main}": fidelity_table(results, target, K_main)
                   for target in ("regime_mix", "regime_recall", "token_mix")})  # fmt: skip
    tables["fidelity_summary"] = k_summary_table(results)
    for target in ("regime_recall", "regime_mix"):
        tables[f"merges_{target}_K{K_low}"] = merge_table(results, target, K_low)
    tables["needles"] = needle_table(results)
    tables["needle_decisions"] = needle_decision_table(results)
    tables["sensitivity"] = sensitivity_tables(results)
    tables["scores"] = score_table(results)
    return tables


def render_tables(results: dict) -> str:
    """Every table of docs/evidence.md, as one markdown document (``evidence_tables.md``)."""
    meta = results["meta"]
    out = ["# Evidence study: tables\n", f"Generated by `{meta.get('command', 'run_study')}` on {meta['date_utc']} "
           f"({meta['machine']['cpu']}, {meta['wall_seconds']['total']} s); docs/evidence.md gives the definitions.\n"]
    for name, text in named_tables(results).items():
        out.append(f"## {name}\n")
        out.append(text)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

STYLE = {
    "dla": {"color": "tab:red", "marker": "o", "lw": 2.0},
    "dla_oldest": {"color": "tab:red", "marker": "x", "ls": ":"},
    "dla_smallest": {"color": "tab:red", "marker": "+", "ls": "-."},
    "oracle": {"color": "tab:purple", "marker": "s", "ls": "--"},
    "oracle_oldest": {"color": "tab:purple", "marker": "x", "ls": ":"},
    "oracle_smallest": {"color": "tab:purple", "marker": "+", "ls": "-."},
    "fenwick": {"color": "tab:blue", "marker": "^"},
    "uniform": {"color": "tab:green", "marker": "v"},
    "single": {"color": "0.4", "marker": ".", "ls": "--"},
}
FLOOR = 1e-4  # errors below this are drawn at it (log axes)


def finish(fig, path: pathlib.Path, *, legend_from=None, ncol: int = 4, **margins) -> None:
    """Save with margins in inches (matplotlib's tight layout on log axes costs seconds here), no minor
    ticks, and the legend of the axes ``legend_from`` below the panels."""
    width, height = fig.get_size_inches()
    inches = {"top": 0.8, "bottom": 0.55, "left": 0.75, "right": 0.15, **margins}
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        rows = -(-len(labels) // ncol)
        inches["bottom"] += 0.22 * rows + 0.1
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    for ax in fig.axes:
        ax.minorticks_off()
    fig.subplots_adjust(top=1 - inches["top"] / height, bottom=inches["bottom"] / height, left=inches["left"] / width,
                        right=1 - inches["right"] / width, hspace=0.38, wspace=0.12)  # fmt: skip
    fig.savefig(path, dpi=100)


def plot_lines(ax, x, series: dict) -> None:
    for policy, ys in series.items():
        ys = np.maximum(np.asarray(ys, dtype=np.float64), FLOOR)
        ax.plot(x, ys, label=LABELS[policy], markersize=4, **STYLE[policy])


def fidelity_figure(plt, results: dict, K: int, policies: tuple, path: pathlib.Path, title: str) -> None:
    recs = results["fidelity"]["records"]
    settings = results["meta"]["settings"]
    rates = settings["rates"]
    targets = ("regime_mix", "regime_recall", "token_mix")
    decays = settings["decays"]
    fig, axes = plt.subplots(len(targets), len(decays), figsize=(4.2 * len(decays), 3.2 * len(targets)),
                             sharex=True, sharey=True, squeeze=False)  # fmt: skip
    for i, target in enumerate(targets):
        for j, decay in enumerate(decays):
            ax = axes[i][j]
            series = {p: [value(recs, decay=decay, rate=r, K=K, policy=p, target=target) for r in rates]
                      for p in policies}  # fmt: skip
            plot_lines(ax, rates, series)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(FLOOR * 0.7, 1.3)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{TARGET_LABELS[target]}, decay {decay:g}", fontsize=10)
            if i == len(targets) - 1:
                ax.set_xlabel("regime-change rate (per token)")
            if j == 0:
                ax.set_ylabel(f"fit error (<= {FLOOR:g} drawn at {FLOOR:g})")
    fig.suptitle(title, fontsize=12)
    finish(fig, path, legend_from=axes[0][0], ncol=len(policies))
    plt.close(fig)


def needle_figure(plt, results: dict, path: pathlib.Path) -> None:
    recs = results["needles"]["records"]
    settings = results["meta"]["settings"]
    policies = ("dla", "fenwick", "uniform", "oracle", "oracle_oldest", "single")
    decays, Ks, Ts = settings["needle_decays"], settings["Ks"], settings["needle_Ts"]
    fig, axes = plt.subplots(len(decays), len(Ks), figsize=(4.2 * len(Ks), 3.3 * len(decays)), sharex=True,
                             sharey=True, squeeze=False)  # fmt: skip
    for i, decay in enumerate(decays):
        for j, K in enumerate(Ks):
            ax = axes[i][j]
            series = {p: [value(recs, T=T, decay=decay, K=K, policy=p) for T in Ts] for p in policies}
            for policy, ys in series.items():
                ax.plot(Ts, ys, label=LABELS[policy], markersize=4, **STYLE[policy])
            ax.axhline(1 - K / settings["needle_Dv"], color="k", lw=0.8, ls=":", label="chance (1 - K/Dv)")
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"decay {decay:g}, K = {K}", fontsize=10)
            if i == len(decays) - 1:
                ax.set_xlabel("stream length T")
            if j == 0:
                ax.set_ylabel("needle read-back error")
    fig.suptitle("Retrieval of planted needles at the end of the stream (mean over needles and seeds)", fontsize=12)
    finish(fig, path, legend_from=axes[0][0], ncol=4)
    plt.close(fig)


def needle_depth_figure(plt, results: dict, path: pathlib.Path) -> None:
    """Each needle's error against its age, in the shortest stream at the largest K (where most survive)."""
    recs = results["needles"]["records"]
    settings = results["meta"]["settings"]
    T, K = min(settings["needle_Ts"]), max(settings["Ks"])
    decays = settings["needle_decays"]
    fig, axes = plt.subplots(1, len(decays), figsize=(5.0 * len(decays), 3.6), sharey=True, squeeze=False)
    for j, decay in enumerate(decays):
        ax = axes[0][j]
        for policy in ("dla", "fenwick", "uniform", "oracle", "oracle_oldest"):
            per = select(recs, T=T, decay=decay, K=K, policy=policy)[0]["per_needle"]
            age = T - 1 - np.array(per["position"])
            err = np.array(per["error"])
            style = {key: val for key, val in STYLE[policy].items() if key not in ("lw", "ls")}
            ax.plot(age, err, label=LABELS[policy], markersize=5, ls="none", alpha=0.8, **style)
        ax.axhline(1 - K / settings["needle_Dv"], color="k", lw=0.8, ls=":", label="chance (1 - K/Dv)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("needle age at the query (tokens)")
        ax.set_title(f"T = {T}, K = {K}, decay {decay:g}", fontsize=10)
    axes[0][0].set_ylabel("needle read-back error")
    fig.suptitle("Each needle (all seeds): 0 means read back exactly, which needs a slot of its own", fontsize=11)
    finish(fig, path, legend_from=axes[0][0], ncol=6)
    plt.close(fig)


def sensitivity_figure(plt, results: dict, path: pathlib.Path) -> None:
    recs = results["sensitivity"]["records"]
    settings = results["meta"]["settings"]
    taus, decays = settings["sens_taus"], settings["sens_decays"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(decays)))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    for color, decay in zip(colors, decays):
        rows = [select(recs, decay=decay, policy="dla", tau=t, target="regime_mix")[0] for t in taus]
        axes[0].plot(taus, [max(r["open_rate"], 1e-4) for r in rows], marker="o", color=color, label=f"decay {decay:g}")
        axes[1].plot(taus, [np.nan if r["recall"] is None else r["recall"] for r in rows], marker="o", color=color)
        axes[1].plot(taus, [np.nan if r["precision"] is None else r["precision"] for r in rows], marker="x", ls=":",
                     color=color)  # fmt: skip
        axes[2].plot(taus, [max(r["mean"], FLOOR) for r in rows], marker="o", color=color)
        single = value(recs, decay=decay, policy="single", tau=None, target="regime_mix")
        axes[2].axhline(max(single, FLOOR), color=color, lw=0.8, ls="--")
    axes[0].axhline(settings["sens_rate"], color="k", lw=0.8, ls=":", label="regime starts")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("fraction of tokens opening a slot")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("recall (o, solid) and precision (x, dotted)")
    axes[1].set_ylim(-0.03, 1.03)
    axes[2].set_yscale("log")
    axes[2].set_ylabel(f"fit error, regime mix, K = {settings['sens_K']} (dashed: single state)")
    for ax in axes:
        ax.axvspan(0.5, 0.7, color="0.9", zorder=0)
        ax.set_xlabel("tau (grey band: the paper's 0.5-0.7)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Sensitivity to tau and the decay (regime starts at {settings['sens_rate']:g} per token)",
                 fontsize=12)
    finish(fig, path)
    fig.subplots_adjust(wspace=0.32)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_figures(results: dict, out: pathlib.Path) -> list[pathlib.Path]:
    """Write every PNG figure into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    paths = []
    for K in results["meta"]["settings"]["Ks"]:
        path = out / f"fidelity_K{K}.png"
        fidelity_figure(plt, results, K, ("dla", "fenwick", "uniform", "oracle", "single"), path,
                        f"Memory fidelity at K = {K} (mean over query times and seeds)")  # fmt: skip
        paths.append(path)
    K_low = results["meta"]["settings"]["Ks"][0]
    path = out / f"merges_K{K_low}.png"
    fidelity_figure(plt, results, K_low, ("oracle", "oracle_oldest", "oracle_smallest", "dla", "dla_oldest"), path,
                    f"Merge rules at K = {K_low}: density-ordered (DLA's) against fixed policies")  # fmt: skip
    paths.append(path)
    for name, figure in (("needles", needle_figure), ("needle_depth", needle_depth_figure),
                         ("sensitivity", sensitivity_figure)):  # fmt: skip
        path = out / f"{name}.png"
        figure(plt, results, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Refreshing docs/evidence.md
# ---------------------------------------------------------------------------------------------

TABLE_BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", flags=re.S)


def document_tables(*results: dict) -> dict:
    """The tables of several studies' results (``evidence.json``, ``recall.json``), by name."""
    tables: dict = {}
    for item in results:
        tables.update(named_tables(item))
    return tables


def fill_document(text: str, *results: dict) -> str:
    """``text`` with every ``<!-- table: NAME -->`` ... ``<!-- /table -->`` block replaced by that table of one
    of the ``results``."""
    tables = document_tables(*results)

    def replace(match):
        name = match.group(2)
        if name not in tables:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(tables)}")
        return match.group(1) + "\n" + tables[name] + "\n" + match.group(4)

    return TABLE_BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> None:
    """``python -m studies.report RESULTS.json [RESULTS.json ...] DOC.md``: refresh the tables embedded in the
    document from the results (``evidence.json``, ``recall.json``: every table the document embeds)."""
    parser = argparse.ArgumentParser(prog="python -m studies.report", description=main.__doc__)
    parser.add_argument("results", type=pathlib.Path, nargs="+")
    parser.add_argument("document", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = [json.loads(path.read_text()) for path in args.results]
    args.document.write_text(fill_document(args.document.read_text(), *results))


if __name__ == "__main__":
    main()
