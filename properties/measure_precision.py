"""Measure how close the float32 model comes to the precision policy's tolerances (docs/precision.md).

    python -m properties.measure_precision                       # 300 cases of the ci sizes per dtype
    python -m properties.measure_precision --cases 40 --max-T 256 --max-D 16
    python -m properties.measure_precision --docs-formula --dtypes float32   # the docs' score formula

For each input dtype, every case drawn by ``dla_fast.testing.strategies.cases`` runs through
``check_equivalent(float32_model.forward, case, dtype=...)``; the table gives, per compared quantity,
the worst error as a fraction of its tolerance (1.0 = at the tolerance), the median of the per-case worst
ratios, and the number of decision / merge flips that reference margins explained.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dla_fast.testing import check_equivalent
from dla_fast.testing.strategies import cases
from properties import float32_model


def measure(dtype: str, n: int, max_T: int, max_D: int, fast=float32_model.forward) -> dict:
    worst: dict = {}
    flips = {"decision": 0, "merge": 0}
    failures = []
    extra = {} if max_D <= 4 else dict(Dk=st.integers(1, max_D), Dv=st.integers(1, max_D))

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(case=cases(max_T=max_T, min_T=min(max_T, max_T // 4), **extra))
    def run(case):
        if dtype == "float16" and case.spec.data == "large":
            return
        report = check_equivalent(fast, case, dtype=dtype, raise_on_failure=False)
        if not report.ok:
            failures.append(str(report))
        for q, (r, _) in report.worst.items():
            worst.setdefault(q.split(" ")[0], []).append(r)
        for d in report.divergences:
            flips[d.kind] += 1

    run()
    return dict(worst=worst, flips=flips, failures=failures)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--max-T", type=int, default=24)
    ap.add_argument("--max-D", type=int, default=4)
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--docs-formula", action="store_true",
                    help="score with docs/chunked-algorithm.md's formula as written (shows its failures)")
    args = ap.parse_args(argv)
    print("| dtype | cases | T <= | D <= | quantity | worst error / tolerance | median "
          "| flips explained (decision, merge) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    bad = 0
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        fast = float32_model.forward
        if args.docs_formula:
            def fast(*a, **kw):
                return float32_model.forward(*a, score_formula=float32_model._score_scalar_docs, **kw)
        res = measure(dtype, args.cases, args.max_T, args.max_D, fast)
        for q, ratios in sorted(res["worst"].items()):
            print(f"| {dtype} | {args.cases} | {args.max_T} | {args.max_D} | {q} | {max(ratios):.3g} | "
                  f"{np.median(ratios):.2g} | {res['flips']['decision']}, {res['flips']['merge']} |")
        for f in res["failures"][:3]:
            print("\n".join("    " + line for line in f.splitlines()[:3]))
        bad += len(res["failures"])
        print(f"<!-- {dtype}: {time.perf_counter() - t0:.0f}s, {len(res['failures'])} failures -->")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
