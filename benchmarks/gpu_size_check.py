"""GPU check of the Triton forward across head sizes and regimes, against dla_ref (float64), float32 inputs.

Prints one row per (Dk = Dv, K, regime, side stream on/off): decisions agreed, relative output and final
state errors. Used to find which sizes the kernels handle correctly on the card (docs/triton.md).
"""

import sys

import numpy as np
import torch

sys.path.insert(0, ".")
import dla_ref  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton  # noqa: E402
from dla_fast.settings import TritonSettings  # noqa: E402
from dla_ref.synthetic import jittered_regimes as regimes  # noqa: E402

rows = []
for D in (16, 32, 64, 128):
    for K, rl, jit, name in ((30, 12.0, 0.3, "moderate"), (3, 3.0, 1.0, "dense K=3"), (30, 3.0, 1.0, "dense K=30")):
        B, T, H = 2, 300, 2
        q, k, v, g, w = regimes(B, T, H, D, D, K, seed=D + K, regime_length=rl, jitter=jit)
        o_r, c_r, tr_r = dla_ref.forward(q, k, v, g, w, tau=0.6)
        for side in (True, False):
            t = lambda x: torch.tensor(x, dtype=torch.float32, device="cuda")  # noqa: E731
            try:
                o, cache, trace, _ = forward_scalar_decay_triton(
                    t(q), t(k), t(v), t(g), t(w), tau=0.6, settings=TritonSettings(side_stream=side))
                torch.cuda.synchronize()
                agree = (trace[1].cpu().numpy() == tr_r.starts).mean()
                oerr = np.linalg.norm(o.double().cpu().numpy() - o_r) / np.linalg.norm(o_r)
                serr = np.linalg.norm(cache[0].double().cpu().numpy() - c_r.states) / np.linalg.norm(c_r.states)
                rows.append(f"D={D:<4} {name:<11} side={side!s:<5} starts={tr_r.starts.mean():5.1%} agree={agree:8.4%} "
                            f"o_err={oerr:9.2e} state_err={serr:9.2e}")
            except Exception as e:  # noqa: BLE001
                rows.append(f"D={D:<4} {name:<11} side={side!s:<5} ERROR {type(e).__name__}: {str(e)[:80]}")
                print("\n".join(rows), flush=True)
                raise
print("\n".join(rows))
