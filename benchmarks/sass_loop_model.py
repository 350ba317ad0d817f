#!/usr/bin/env python
"""Cycles per iteration of a one-warp kernel's innermost loop, predicted on the CPU from its sm_90 SASS (issue #11).

The merge simulation (``dla_merge_kernel``) runs one warp per row, alone on its SM's scheduler, so its event loop's
time is set by the order ptxas issues it in, which code elsewhere in the kernel can change (run 48: the same 124
instructions at 2.96 and 3.12 cycles each on the H200). ptxas writes that order into each instruction's control bits:
a *stall* count (cycles before the warp may issue its next instruction: fixed latencies and pipe throughput), and for
variable-latency instructions (shuffles, reductions, MUFU, conversions, memory) a scoreboard that a later instruction
waits on. The model replays one warp: each instruction issues after the previous one's stall and once the
scoreboards it waits on are released; a variable-latency result arrives ``LATENCY[op]`` cycles after issue, the MIO
unit's in issue order; a taken branch costs ``BRANCH`` cycles. Fitted to run 48's ``ncu`` measurements of two
schedules of the same loop (367 and 387 cycles an event; docs/performance.md "Run 49"), it gives 370 and 384; the
same model puts the merge kernel's path through a chunk with one event at 1,862 cycles (0.94 us at 1.98 GHz), where
run 42 had derived ~0.8 us of per-chunk work and ~0.18-0.2 us an event from measured kernel times.

    python benchmarks/sass_loop_model.py LAUNCH.jsonl KERNEL [NAME=VALUE ...] [--marker REDUX] [--sass OUT]
                                         [--merge-chunks]
    python benchmarks/sass_loop_model.py --from-sass FILE [--marker REDUX] [--merge-chunks [--not-pipelined]]

The first form builds the first recorded launch of KERNEL in LAUNCH.jsonl (``conftest``'s launch records, e.g.
``DLA_TEST_LAUNCH_LOG=... TRITON_INTERPRET=1 pytest ...``) for sm_90 with the Triton first on the path (the GPU
machines' is 3.6), its constexprs overridden by NAME=VALUE (e.g. ``FAST=True KP=32``); the second reads a
``cuobjdump -sass`` listing. Prints the loop's instructions, the sum of its stall counts and the modeled cycles;
``--merge-chunks`` also the merge kernel's path through one chunk at a full cache with 0, 1, 4 and 38 events (the
sparse, moderate and dense workloads' typical chunks): pipelined (``PIPE``, as the launch or its overrides say), a
chunk whose decisions were guessed; else any chunk, its tables read a chunk ahead.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import sys

# Variable-latency results, cycles after issue (fitted with BRANCH to run 48's two measured schedules; several
# nearby sets fit as well, within 1 %: the stall counts carry most of the loop's time).
LATENCY = {"SHFL": 27, "REDUX": 40, "MUFU": 30, "I2F": 14, "F2I": 14, "BREV": 12, "FLO": 12, "POPC": 12, "VOTE": 8,
           "LDS": 30, "LDG": 500, "STG": 0}
READ_LATENCY = 12  # a read scoreboard (a store's registers read)
BRANCH = 16  # a taken branch (the loop's back branch, or a jump along a path)
MIO = frozenset({"SHFL", "REDUX", "MUFU", "I2F", "F2I", "BREV", "FLO", "POPC", "LDS"})  # results in issue order
NO_SCOREBOARD = 7


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    text: str
    stall: int  # cycles before the warp's next instruction may issue
    write_scoreboard: int  # set until the result arrives (7: none)
    read_scoreboard: int  # set until the sources are read (7: none)
    wait_mask: int  # scoreboards waited on before issue

    @property
    def op(self) -> str:
        return re.sub(r"^@!?U?P\w+\s+", "", self.text).split()[0].split(".")[0]


def instructions(sass: str) -> list:
    """Every instruction of a ``cuobjdump -sass`` listing with its control bits (sm_90: bits 105-121 of the 128-bit
    word, i.e. the second 64-bit word printed shifted right by 41)."""
    lines = sass.splitlines()
    out = []
    for k, line in enumerate(lines[:-1]):
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s*(.*?);\s*/\* 0x[0-9a-f]{16} \*/", line)
        high = re.search(r"/\* (0x[0-9a-f]{16}) \*/", lines[k + 1])
        if m and high:
            ctrl = int(high.group(1), 16) >> 41
            out.append(Instruction(int(m.group(1), 16), re.sub(r"\s+", " ", m.group(2).strip()), ctrl & 0xF,
                                   (ctrl >> 5) & 7, (ctrl >> 8) & 7, (ctrl >> 11) & 0x3F))
    return out


def innermost_loop(code: list, marker: str) -> list:
    """The shortest loop (a backward branch and its target) holding an instruction whose op is ``marker``."""
    best = None
    for end, start in branches(code):
        holds = start <= end and any(x.op == marker for x in code[start:end + 1])
        if holds and (best is None or end - start < best[1] - best[0]):
            best = (start, end)
    if best is None:
        raise ValueError(f"no loop holding {marker}")
    return code[best[0]:best[1] + 1]


def issue_cycles(trace: list, latency: dict = LATENCY, branch: int = BRANCH, repeats: int = 24) -> float:
    """Steady-state issue cycles of ``trace`` (``(instruction, taken)`` pairs in the order one warp runs them, taken:
    a branch to elsewhere follows it) run back to back ``repeats`` times: the mean of the second half."""
    issue_next, mio_done = 0.0, 0.0
    released = [0.0] * 6
    starts = []
    for _ in range(repeats):
        starts.append(issue_next)
        for ins, taken in trace:
            issue = max([issue_next] + [released[b] for b in range(6) if ins.wait_mask >> b & 1])
            done = issue + latency.get(ins.op, 6)
            if ins.op in MIO:
                done = max(done, mio_done + 1)
                mio_done = done
            if ins.write_scoreboard != NO_SCOREBOARD:
                released[ins.write_scoreboard] = max(released[ins.write_scoreboard], done)
            if ins.read_scoreboard != NO_SCOREBOARD:
                released[ins.read_scoreboard] = max(released[ins.read_scoreboard], issue + READ_LATENCY)
            issue_next = issue + max(ins.stall, 1) + (branch if taken else 0)
    half = repeats // 2
    return (issue_next - starts[half]) / (repeats - half)


def cycles_per_iteration(body: list, latency: dict = LATENCY, branch: int = BRANCH) -> float:
    """Steady-state cycles of one iteration of a loop ``body`` (its last instruction the taken back branch)."""
    return issue_cycles([(ins, k == len(body) - 1) for k, ins in enumerate(body)], latency, branch)


def branches(code: list) -> list:
    """``(index, target index)`` of every branch with a target in ``code``."""
    at = {ins.address: k for k, ins in enumerate(code)}
    found = []
    for k, ins in enumerate(code):
        target = re.search(r"BRA .*?0x([0-9a-f]+)", ins.text) if ins.op == "BRA" else None
        if target and int(target.group(1), 16) in at:
            found.append((k, at[int(target.group(1), 16)]))
    return found


def merge_chunk_traces(code: list, events=(0, 1, 4, 38), pipelined: bool = True) -> dict:
    """``dla_merge_kernel``'s path through one chunk at a full cache with E boundaries (E merge events; 0: the chunk
    without a boundary), as ``issue_cycles`` traces by E, located by the kernel's branches: the chunk loop, (pipelined,
    GUESSED: its branch over the wait for the carry scan, so a chunk whose decisions were guessed) its branch over the
    boundary path, over the room-left loop, the event loop, and the boundary path's jump to the chunk's end.
    Pipelined, also ``("walked", E)`` for E >= 1: a chunk the kernel waits for, the guessed chunk's path with the
    block that branch skips run straight through (the wait's loop once, the jumps inside the block taken; its loads
    and atomic at their fixed latencies)."""
    event_loop = innermost_loop(code, "REDUX")
    ev0, ev1 = code.index(event_loop[0]), code.index(event_loop[-1])
    jumps = branches(code)
    start, end = max(((t, k) for k, t in jumps if t < ev0 and k > ev1), key=lambda x: x[1] - x[0])
    forward = [(k, t) for k, t in jumps if start < k < end and t > k]
    head = [(start, forward[0][0], 1)] if pipelined else []  # up to the branch over the wait
    entry = forward[0][1] if pipelined else start
    no_boundary = next(x for x in forward if entry <= x[0] < ev0 and x[1] > ev1)
    room_left = next(x for x in forward if x[0] > no_boundary[0] and x[1] < ev0)
    boundary_end = next(x for x in forward if x[0] > ev1)
    spans = {0: head + [(entry, no_boundary[0], 1), (no_boundary[1], end, 1)]}
    # between the room-left loop and the event loop, blocks for a cache that filled in this chunk are jumped over
    full_path, k = [], room_left[1]
    for a, b in sorted(x for x in forward if room_left[1] <= x[0] and x[1] < ev0):
        if a >= k:
            full_path.append((k, a, 1))
            k = b
    full_path.append((k, ev0 - 1, 1))
    for e in events:
        if e:
            spans[e] = head + [(entry, room_left[0], 1)] + full_path + [(ev0, ev1, e),
                               (ev1 + 1, boundary_end[0], 1), (boundary_end[1], end, 1)]
    if pipelined:  # the waited-for block, less the stretches its unconditional jumps skip
        jumps_over = [(k, t) for k, t in forward if forward[0][0] < k < entry and code[k].text.startswith("BRA")]
        walked = [(k, k, 1) for k in range(start, entry) if not any(a < k < b for a, b in jumps_over)]
        for e in events:
            if e:
                spans[("walked", e)] = walked + spans[e][1:]
    traces = {}
    for e, segments in spans.items():
        order = [k for a, b, reps in segments for k in list(range(a, b + 1)) * reps]
        traces[e] = [(code[k], n + 1 == len(order) or order[n + 1] != k + 1) for n, k in enumerate(order)]
    return traces


def sm90_sass(launch: dict) -> str:
    """``cuobjdump -sass`` of one recorded launch built for sm_90 (``tests/sm90_build.py``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [root, os.path.join(root, "tests")]  # the kernels' modules, and sm90_build
    import sm90_build

    return sm90_build.cubin_sass(sm90_build.build(launch))


def recorded_launch(path: str, kernel: str, overrides: dict) -> dict:
    """The first launch of ``kernel`` in a launch record, its constexprs updated by ``overrides``."""
    with open(path) as f:
        launch = next(json.loads(line) for line in f if json.loads(line)["kernel"] == kernel)
    launch["constexprs"].update(overrides)
    return launch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("launches", nargs="?")
    ap.add_argument("kernel", nargs="?")
    ap.add_argument("overrides", nargs="*", help="constexpr NAME=VALUE")
    ap.add_argument("--from-sass", help="a cuobjdump -sass listing instead of a build")
    ap.add_argument("--marker", default="REDUX", help="an op the loop holds (default: the merge's reduction)")
    ap.add_argument("--sass", help="write the built listing here")
    ap.add_argument("--merge-chunks", action="store_true",
                    help="also dla_merge_kernel's path through one chunk with 0, 1, 4, 38 events (a guessed one when "
                         "pipelined)")
    ap.add_argument("--not-pipelined", action="store_true",
                    help="with --from-sass: the listing is the merge kernel built with PIPE=False")
    args = ap.parse_args()
    pipelined = not args.not_pipelined
    if args.from_sass:
        with open(args.from_sass) as f:
            sass = f.read()
    else:
        overrides = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.overrides)}
        launch = recorded_launch(args.launches, args.kernel, overrides)
        pipelined = bool(launch["constexprs"].get("PIPE", True))
        sass = sm90_sass(launch)
        if args.sass:
            with open(args.sass, "w") as f:
                f.write(sass)
    body = innermost_loop(instructions(sass), args.marker)
    for ins in body:
        print(f"  stall {ins.stall:2d}  {ins.text}")
    print(f"loop of {len(body)} instructions: stall counts {sum(i.stall for i in body)} cycles, modeled "
          f"{cycles_per_iteration(body):.0f} cycles an iteration")
    if args.merge_chunks:
        kind = "a guessed chunk" if pipelined else "a chunk (not pipelined)"
        for e, trace in merge_chunk_traces(instructions(sass), pipelined=pipelined).items():
            what = f"a walked chunk with {e[1]}" if isinstance(e, tuple) else f"{kind} with {e}"
            print(f"{what} events: {len(trace)} instructions, modeled {issue_cycles(trace):.0f} cycles")


if __name__ == "__main__":
    main()
