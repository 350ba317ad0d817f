"""Mutation check: deliberately wrong implementations, and the properties that kill them.

Each mutant is ``dla_ref.forward`` with one rule of ``dla_ref.reference`` replaced (monkeypatched only
for the duration of the call, so case building and the properties' own formulas stay correct). Two kinds:

- ``MUTANTS``, wrong references: every property of the contract (``properties/test_{structure,backbone,
  streaming,symmetry}.py``) runs against them;
- ``FAST_MUTANTS``, fast-path-style mutants: a rule written the way a fast path writes it (a loop keeping
  the lowest density, a threshold comparison) with one comparison flipped. They compute every value bit for
  bit as the reference does and break only a tie rule, and they are judged the way a fast path is judged:
  only by the *gate* properties (``registry.prop(..., gate=True)``: ``properties/test_equivalence.py``,
  ``check_equivalent`` at float64).

Each runs under the ``mutation`` profile (the ``ci`` profile's examples and seed, without shrinking); a
mutant is *killed* when at least one property fails.

    python -m properties.mutation                # the full table: mutant -> killing properties
    python -m properties.mutation --first        # stop at the first kill per mutant (what CI asserts)
    python -m properties.mutation --drawn-only   # without the @example cases: the drawn cases alone

``properties/test_mutation.py`` asserts, in CI, that every mutant is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from collections.abc import Callable

import numpy as np
from hypothesis import Phase, settings

from dla_ref import reference as R
from dla_ref.reference import Slot, StepResult

# ---------------------------------------------------------------------------------------------
# The mutants: small copies of the per-rule functions, each with one deliberate error
# ---------------------------------------------------------------------------------------------


def _merge_ties_to_newest(slots):
    d = [R.pair_density(slots[i], slots[i + 1]) for i in range(len(slots) - 1)]
    i = min(range(len(d)), key=lambda j: (d[j], -j))  # MUTANT: ties go to the newest pair
    left, right = slots[i], slots[i + 1]
    slots[i : i + 2] = [Slot(left.state + right.state, left.count + right.count, left.info + right.info)]
    return i


def _merge_highest_density(slots):
    d = [R.pair_density(slots[i], slots[i + 1]) for i in range(len(slots) - 1)]
    i = max(range(len(d)), key=lambda j: (d[j], -j))  # MUTANT: the highest density
    left, right = slots[i], slots[i + 1]
    slots[i : i + 2] = [Slot(left.state + right.state, left.count + right.count, left.info + right.info)]
    return i


def _merge_argmin_le(slots):
    """The lowest-density merge as a fast path writes it (keep the best pair so far), with ``<=`` for ``<``."""
    d = [R.pair_density(slots[i], slots[i + 1]) for i in range(len(slots) - 1)]
    i = 0
    for j in range(1, len(d)):
        if d[j] <= d[i]:  # MUTANT: <= instead of <: ties go to the newest pair
            i = j
    left, right = slots[i], slots[i + 1]
    slots[i : i + 2] = [Slot(left.state + right.state, left.count + right.count, left.info + right.info)]
    return i


def _read_chronological(q, slots, slot_weights):
    o = np.zeros(slots[0].state.shape[1])
    for j in range(len(slots)):
        o += slot_weights[j] * (q @ slots[j].state)  # MUTANT: lambda[0] weighs the oldest slot
    return o


def _read_without_open_slot(q, slots, slot_weights):
    m = len(slots)
    o = np.zeros(slots[0].state.shape[1])
    for j in range(1, m):  # MUTANT: the open slot is not read
        o += slot_weights[j] * (q @ slots[m - 1 - j].state)
    return o


def _step(variant: str) -> Callable:
    """A copy of ``dla_ref.reference.step`` with one deliberate error (``variant``)."""

    def step(slots, q, k, v, a, slot_weights, *, capacity, tau, beta=None, boundary=None, eps=1e-6, norm_eps=1e-6):
        s = R.contribution(k, v, beta)
        if not slots:
            score = 0.0
            if variant == "first_token_not_forced":  # MUTANT: the empty cache's first token is decided like any
                starts_slot = (score >= tau) if boundary is None else bool(boundary)
                if not starts_slot:
                    slots.append(Slot(np.zeros_like(s), 0, 0.0))  # ... and lands in an empty "open slot"
            else:
                starts_slot = True
        else:
            P = slots[-1].state
            P_next = R.transition(P, a, k, beta) + s
            score = R.information_score(P, P_next, eps, norm_eps)
            if variant == "strict_threshold":
                starts_slot = (score > tau) if boundary is None else bool(boundary)  # MUTANT: > instead of >=
            else:
                starts_slot = (score >= tau) if boundary is None else bool(boundary)

        if variant == "closed_slots_not_decayed":  # MUTANT: only the open slot gets the transition
            if slots:
                slots[-1].state = R.transition(slots[-1].state, a, k, beta)
        else:
            for slot in slots:
                slot.state = R.transition(slot.state, a, k, beta)

        if variant == "read_before_update":  # MUTANT: the output misses token t itself
            early = R.read(q, slots, slot_weights) if slots else np.zeros(v.shape[0])

        merged = -1
        if not starts_slot:
            open_slot = slots[-1]
            open_slot.state = open_slot.state + s
            open_slot.count += 1
            if variant != "info_not_accumulated":  # MUTANT: Ibar keeps only the slot's first score
                open_slot.info += score
        else:
            if variant == "merge_after_append":  # MUTANT: append first, then merge among K + 1 slots
                slots.append(Slot(s, 1, score))
                if len(slots) > capacity:
                    merged = R.merge_lowest_density_pair(slots)
            else:
                if len(slots) == capacity:
                    merged = R.merge_lowest_density_pair(slots)
                slots.append(Slot(s, 1, score))

        out = early if variant == "read_before_update" else R.read(q, slots, slot_weights)
        return StepResult(out, score, starts_slot, merged)

    return step


# name -> (what is wrong, {attribute of dla_ref.reference: replacement})
MUTANTS: dict[str, tuple[str, dict]] = {
    "ties_to_newest": ("merge ties go to the newest pair", {"merge_lowest_density_pair": _merge_ties_to_newest}),
    "merge_after_append": ("the new slot is appended before the merge", {"step": _step("merge_after_append")}),
    "lambda_chronological": ("lambda read in chronological order (lambda[0] = oldest)", {"read": _read_chronological}),
    "open_slot_not_read": ("the open slot is left out of the read", {"read": _read_without_open_slot}),
    "closed_slots_not_decayed": ("only the open slot gets the transition", {"step": _step("closed_slots_not_decayed")}),
    "strict_threshold": ("a slot opens iff I_t > tau (not >=)", {"step": _step("strict_threshold")}),
    "first_token_not_forced": ("the first token of an empty cache is not forced to open a slot",
                               {"step": _step("first_token_not_forced")}),
    # a few more, for good measure
    "merge_highest_density": ("the highest-density pair is merged",
                              {"merge_lowest_density_pair": _merge_highest_density}),
    "read_before_update": ("the read comes before the update (o_t misses token t)",
                           {"step": _step("read_before_update")}),
    "info_not_accumulated": ("Ibar is not accumulated when a slot grows", {"step": _step("info_not_accumulated")}),
}

# name -> (what is wrong, {attribute of dla_ref.reference: replacement}); judged by the gate properties only
FAST_MUTANTS: dict[str, tuple[str, dict]] = {
    "fast_merge_argmin_le": ("the merge argmin keeps a pair with `<=` (ties go to the newest pair)",
                             {"merge_lowest_density_pair": _merge_argmin_le}),
    "fast_threshold_gt": ("the threshold compares with `>` (a score exactly at tau opens no slot)",
                          {"step": _step("strict_threshold")}),
}

ALL_MUTANTS = {**MUTANTS, **FAST_MUTANTS}

# The modules whose properties the check runs (imported here: the registry imports no test module).
PROPERTY_MODULES = ("properties.test_structure", "properties.test_backbone", "properties.test_streaming",
                    "properties.test_symmetry", "properties.test_equivalence")

# The properties most likely to kill each mutant first (only an ordering: every property is tried).
HINTS = {
    "ties_to_newest": ["test_merge_takes_the_lowest_density_pair_ties_to_the_oldest"],
    "merge_after_append": ["test_merges_only_at_a_new_slot_with_a_full_cache", "test_merges_join_neighbours_only"],
    "lambda_chronological": ["test_nonpositive_tau_with_room_gives_one_slot_per_token"],
    "open_slot_not_read": ["test_infinite_tau_keeps_one_slot"],
    "closed_slots_not_decayed": ["test_all_ones_weights_equal_the_single_state_backbone"],
    "strict_threshold": ["test_decisions_follow_the_threshold_or_the_override"],
    "first_token_not_forced": ["test_decisions_follow_the_threshold_or_the_override"],
}


@contextlib.contextmanager
def patched(replacements: dict):
    saved = {name: getattr(R, name) for name in replacements}
    try:
        for name, fn in replacements.items():
            setattr(R, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(R, name, fn)


def mutant_forward(name: str) -> Callable:
    """``dla_ref.forward`` with mutant ``name`` (of ``MUTANTS`` or ``FAST_MUTANTS``) in place during the call."""
    replacements = ALL_MUTANTS[name][1]

    def forward(*args, **kwargs):
        with patched(replacements):
            return R.forward(*args, **kwargs)

    forward.__name__ = f"mutant_{name}"
    return forward


def load_properties() -> dict:
    """Import the property modules (each registers its properties) and return the registry."""
    from properties.registry import REGISTRY

    for module in PROPERTY_MODULES:
        importlib.import_module(module)
    return REGISTRY


def kills(prop, impl: Callable, *, drawn_only: bool = False) -> str | None:
    """Run property ``prop`` against ``impl`` under the ``mutation`` profile; the failure's first line, or None.

    ``drawn_only``: skip the property's ``@example`` cases (the generate phase alone)."""
    from properties.registry import hypothesis_test

    profile = settings.get_profile("mutation")
    if drawn_only:
        profile = settings(profile, phases=(Phase.generate,))
    test = hypothesis_test(prop, impl, settings(profile))
    try:
        test()
    except Exception as exc:  # noqa: BLE001 - any failure (assertion or crash) kills the mutant
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        first = next((line.strip() for line in lines if line.strip().startswith("FAILURE:")), lines[0])
        return f"{type(exc).__name__}: {first[:240]}"
    return None


def kill_table(names=None, *, first_only: bool = False, drawn_only: bool = False,
               log=None) -> dict[str, list[tuple[str, str]]]:
    """``{mutant: [(property, failure), ...]}``: reference mutants over the contract's properties, fast-path
    mutants over the gate properties."""
    import properties.profiles  # noqa: F401 - registers the profiles

    props = load_properties()
    table = {}
    for name in names or [*MUTANTS, *FAST_MUTANTS]:
        impl = mutant_forward(name)
        candidates = [p for p in props if props[p].gate == (name in FAST_MUTANTS)]
        order = [p for p in HINTS.get(name, []) if p in candidates]
        order += [p for p in candidates if p not in order]
        table[name] = []
        for pname in order:
            t0 = time.perf_counter()
            failure = kills(props[pname], impl, drawn_only=drawn_only)
            if log:
                log(f"  {name:26s} {pname:66s} {'KILLED' if failure else 'survived'} ({time.perf_counter() - t0:.1f}s)")
            if failure:
                table[name].append((pname, failure))
                if first_only:
                    break
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", action="store_true", help="stop at the first killing property per mutant")
    ap.add_argument("--drawn-only", action="store_true", help="skip the @example cases (the drawn cases alone)")
    ap.add_argument("--verbose", action="store_true", help="log every (mutant, property) run")
    ap.add_argument("mutants", nargs="*", help=f"subset of: {', '.join([*MUTANTS, *FAST_MUTANTS])}")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    table = kill_table(args.mutants or None, first_only=args.first, drawn_only=args.drawn_only,
                       log=print if args.verbose else None)
    print("\n| mutant | what is wrong | killed by |\n| --- | --- | --- |")
    for name, killers in table.items():
        props = ", ".join(f"`{p}`" for p, _ in killers) or "**SURVIVED**"
        print(f"| `{name}` | {ALL_MUTANTS[name][0]} | {props} |")
    survivors = [n for n, k in table.items() if not k]
    print(f"\n{len(table) - len(survivors)}/{len(table)} mutants killed in {time.perf_counter() - t0:.0f}s")
    if "--verbose" in (argv or sys.argv):
        for name, killers in table.items():
            for p, f in killers:
                print(f"{name} / {p}: {f}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
