"""``benchmarks/sass_loop_model.py`` on listings written here: the control bits it decodes from real sm_90 encodings
(ptxas's, copied from the merge kernel's build), and the cycles it replays for loops whose answer is known."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))
import sass_loop_model as model  # noqa: E402

# Four instructions of the merge kernel's event loop as cuobjdump printed them (Triton 3.6, sm_90, run 48's build).
REAL = """
        /*2990*/                   SHFL.IDX PT, R73, R99, R71, 0x1f ;                    /* 0x00001f4763497589 */
                                                                                         /* 0x000e2200000e0000 */
        /*29b0*/                   REDUX.MIN.S32 UR4, R78 ;                              /* 0x000000004e0473c4 */
                                                                                         /* 0x000e620000010200 */
        /*2a10*/                   SEL R70, R70, R73, !P5 ;                              /* 0x0000004946467207 */
                                                                                         /* 0x001fc60006800000 */
        /*30c0*/               @P5 BRA 0x2990 ;                                          /* 0xfffffff800105947 */
                                                                                         /* 0x004fec000383ffff */
"""


def test_control_bits_of_real_encodings():
    shfl, redux, sel, bra = model.instructions(REAL)
    assert [i.op for i in (shfl, redux, sel, bra)] == ["SHFL", "REDUX", "SEL", "BRA"]
    # the shuffle and the reduction set write scoreboards 0 and 1; the select waits on 0 (its operand R73)
    assert (shfl.write_scoreboard, redux.write_scoreboard, sel.write_scoreboard) == (0, 1, model.NO_SCOREBOARD)
    assert sel.wait_mask == 0b000001 and (shfl.stall, redux.stall, sel.stall) == (1, 1, 3)
    assert model.innermost_loop([shfl, redux, sel, bra], "REDUX") == [shfl, redux, sel, bra]


def _listing(rows):
    """A listing of ``(text, stall, write scoreboard, wait mask)`` rows with their control bits encoded as sm_90's."""
    lines = []
    for k, (text, stall, write, wait) in enumerate(rows):
        high = (stall | write << 5 | model.NO_SCOREBOARD << 8 | wait << 11) << 41
        lines += [f"        /*{16 * k:04x}*/ {text} ; /* 0x{0:016x} */", f"        /* 0x{high:016x} */"]
    return "\n".join(lines)


def test_a_loop_of_fixed_latencies_takes_its_stall_counts_and_the_branch():
    code = model.instructions(_listing([("FADD R1, R1, R2", 4, 7, 0), ("FMUL R3, R1, R1", 5, 7, 0),
                                        ("@P0 BRA 0x0", 2, 7, 0)]))
    body = model.innermost_loop(code, "FMUL")
    assert model.cycles_per_iteration(body) == 4 + 5 + 2 + model.BRANCH


@pytest.mark.parametrize("between", [(), (10,), (15, 15)])
def test_a_wait_on_a_shuffle_costs_its_latency_less_the_cycles_issued_meanwhile(between):
    """A shuffle, instructions stalling ``between`` cycles (a stall count has four bits), then its reader."""
    rows = [("SHFL.IDX PT, R1, R2, R3, 0x1f", 1, 0, 0), *[("NOP", stall, 7, 0) for stall in between],
            ("FADD R4, R1, R1", 1, 7, 0b1), ("@P0 BRA 0x0", 1, 7, 0)]
    body = model.innermost_loop(model.instructions(_listing(rows)), "SHFL")
    issued = 1 + sum(between)  # cycles from the shuffle's issue to the reader's earliest
    waited = max(model.LATENCY["SHFL"] - issued, 0)
    assert model.cycles_per_iteration(body) == issued + waited + 1 + 1 + model.BRANCH
