"""The delta rule's per-chunk WY/UT tables and their adjoint (docs/delta-rule-chunked.md sections 1 and 6).

:func:`wy_tables` computes, for a block of chunks at once, every table the chunked backward reads:
the intra-chunk attention ``q_t^T Phi(s, t] k_s``, the transported queries ``qt`` and keys ``kt``, the score's
``Akap``, the keys at the chunk end ``khd`` and the chunk operator ``Phi``; :func:`wy_tables_adjoint` takes the
gradients w.r.t. those tables back to ``(q, k, g, beta)`` by the explicit reverse of each formula (one
triangular inverse ``T``, whose adjoint is ``dL = -T^T dT T^T``). Everything in the dtype of the inputs (the
backward passes float64: ``T`` and the cancelling score terms need it).
"""

from __future__ import annotations

import torch

TABLES = ("attn", "qt", "kt", "akap", "khd", "Phi")


def _tr(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _masks(C: int, device):
    """``(causal, strict)``: ``s <= t`` and ``s < t`` as ``[C, C]`` bool."""
    causal = torch.ones((C, C), dtype=torch.bool, device=device).tril()
    return causal, causal.tril(-1)


def wy_tables(q, k, g, b, scores: bool = True):
    """The tables of a block of chunks: ``q, k [..., C, Dk]``, ``g, b [..., C]`` (one dtype).

    Returns ``(tables, saved)``: ``tables`` (keys :data:`TABLES`) with ``attn [..., C, C]``
    (``D o (tril(Q K^T) T)``), ``qt``, ``kt``, ``khd [..., C, Dk]`` (``exp(Gc[C-1] - Gc[s]) (T^T K)_s``),
    ``akap [..., C, C]``, ``Phi [..., Dk, Dk]``; ``saved``: the intermediates :func:`wy_tables_adjoint` reads.
    ``q=None`` leaves out ``attn`` and ``qt`` (the decisions do not read them); ``scores=False`` leaves out the
    score's ``kt`` and ``akap`` (the backward without a score gradient does not).
    """
    C, Dk = k.shape[-2:]
    causal, strict = _masks(C, k.device)
    Gc = g.cumsum(-1)
    Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))  # Gc[t - 1]
    GL = Gc[..., -1:]
    Gs = (k @ _tr(k)) * strict
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    T = torch.linalg.solve_triangular(eye + b.unsqueeze(-1) * Gs, eye.expand_as(Gs), upper=False,
                                      unitriangular=True)
    Z = T @ (b.unsqueeze(-1) * k)  # the WY factor: H_t ... H_{c0} = I - sum_{s <= t} k_s z_s^T
    dec = torch.exp(GL - Gc)
    kh = _tr(T) @ k
    Phi0 = torch.eye(Dk, dtype=k.dtype, device=k.device) - _tr(k) @ Z
    tables = dict(khd=dec.unsqueeze(-1) * kh, Phi=torch.exp(GL).unsqueeze(-1) * Phi0)
    saved = dict(Gc=Gc, Gp=Gp, GL=GL, Gs=Gs, T=T, Z=Z, dec=dec)
    if q is not None:
        M = (q @ _tr(k)) * causal
        D = torch.exp((Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~causal, -torch.inf))
        tables.update(attn=D * (M @ T), qt=torch.exp(Gc).unsqueeze(-1) * (q - M @ Z))
        saved.update(M=M, D=D)
    if scores:
        Dp = torch.exp((Gp.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~strict, -torch.inf))
        tables.update(kt=torch.exp(Gp).unsqueeze(-1) * (k - Gs @ Z), akap=Dp * (Gs @ T))
        saved["Dp"] = Dp
    return tables, saved


def _adjoint_reads(tab, sv, cot):
    """The tables that read ``T`` and ``Z`` directly: ``(dq, dk, dM, dGs, dT, dZ, dGc, dGp, dGL)``."""
    T, Z, M, Gs = sv["T"], sv["Z"], sv["M"], sv["Gs"]
    # attn = D o (M T)
    dX = cot["attn"] * sv["D"]
    E = cot["attn"] * tab["attn"]
    dGc = E.sum(-1) - E.sum(-2)
    dM, dT = dX @ _tr(T), _tr(M) @ dX
    # qt = e^Gc (Q - M Z)
    dGc = dGc + (cot["qt"] * tab["qt"]).sum(-1)
    dq = torch.exp(sv["Gc"]).unsqueeze(-1) * cot["qt"]
    dM = dM - dq @ _tr(Z)
    dZ = -(_tr(M) @ dq)
    dGp, dk, dGs = torch.zeros_like(sv["Gp"]), 0.0, 0.0  # the score's tables' terms, where they take cotangents
    if "kt" in cot:  # kt = e^Gp (K - Gs Z)
        dGp = (cot["kt"] * tab["kt"]).sum(-1)
        dk = torch.exp(sv["Gp"]).unsqueeze(-1) * cot["kt"]
        dGs = -(dk @ _tr(Z))
        dZ = dZ - _tr(Gs) @ dk
    if "akap" in cot:  # akap = Dp o (Gs T)
        dX = cot["akap"] * sv["Dp"]
        E = cot["akap"] * tab["akap"]
        dGp = dGp + E.sum(-1)
        dGc = dGc - E.sum(-2)
        dGs = dGs + dX @ _tr(T)
        dT = dT + _tr(Gs) @ dX
    # khd = e^{GL - Gc} (T^T K)
    E = (cot["khd"] * tab["khd"]).sum(-1)
    dGL = E.sum(-1, keepdim=True)
    dGc = dGc - E
    dkh = sv["dec"].unsqueeze(-1) * cot["khd"]
    return dq, dk, dM, dGs, dT, dZ, dGc, dGp, dGL, dkh


def wy_tables_adjoint(q, k, g, b, tables, saved, cot):
    """``(dq, dk, dg, db)`` of ``sum_name <cot[name], tables[name]>`` (cotangents shaped like the tables, for every
    :data:`TABLES` key but the score's ``kt`` and ``akap``, which may be left out: no cotangent), by the reverse of
    :func:`wy_tables`."""
    T, Z, Gs = saved["T"], saved["Z"], saved["Gs"]
    causal, strict = _masks(k.shape[-2], k.device)
    dq, dk, dM, dGs, dT, dZ, dGc, dGp, dGL, dkh = _adjoint_reads(tables, saved, cot)
    dT = dT + k @ _tr(dkh)  # kh = T^T K
    dk = dk + T @ dkh
    # Phi = e^GL (I - K^T Z)
    dGL = dGL + (cot["Phi"] * tables["Phi"]).sum((-1, -2)).unsqueeze(-1)
    dP = torch.exp(saved["GL"]).unsqueeze(-1) * cot["Phi"]
    dk = dk - Z @ _tr(dP)
    dZ = dZ - k @ dP
    # Z = T (b K)
    bk = b.unsqueeze(-1) * k
    dT = dT + dZ @ _tr(bk)
    dbk = _tr(T) @ dZ
    dk = dk + b.unsqueeze(-1) * dbk
    db = (k * dbk).sum(-1)
    # T = L^{-1}, L = I + diag(b) Gs: dL = -T^T dT T^T (its strictly lower part is L's only free part)
    dL = -(_tr(T) @ dT @ _tr(T)) * strict
    dGs = (dGs + b.unsqueeze(-1) * dL) * strict
    db = db + (dL * Gs).sum(-1)
    # Gs = strict(K K^T), M = causal(Q K^T)
    dk = dk + (dGs + _tr(dGs)) @ k
    dM = dM * causal
    dq = dq + dM @ k
    dk = dk + _tr(dM) @ q
    # The cumulative decays: Gp[t] = Gc[t - 1], GL = Gc[C - 1], Gc[t] = g[c0] + ... + g[t].
    dGc = dGc + torch.nn.functional.pad(dGp[..., 1:], (0, 1))
    dGc[..., -1] += dGL[..., 0]
    return dq, dk, dGc.flip(-1).cumsum(-1).flip(-1), db
