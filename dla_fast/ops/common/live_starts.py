"""The decided partition from its live starts, vectorised in torch on any device (no numba, no per-token loop).

A slot is the run of tokens from its start to the next live start, so everything follows from the live starts: at
token t (after its update) the live starts are those ``p <= t`` not yet dead (``death > t``), and the slot holding
token s has recency ``#{live p > s}``. :class:`LiveStarts` turns the starts, their deaths and the lists of the
slots live at every chunk start into the per-chunk maps both the delta rule's device forward oracle
(``delta_rule.chunk_fwd_stage_torch.FixedPartition``, from the merge kernel's ``DecidedStructure``) and the delta
rule's torch backward (:class:`DevicePartition`, from a :class:`~.structure.Structure`) read.

:func:`live_starts_from_lists` takes them as the merge kernel keeps them (a kernel forward hands them to its
backward); :func:`live_starts` derives the deaths and the live lists from the compact per-token record (``starts``,
``merged``, ``size0``): each token rewrites the list of live starts by a map of its K entries (keep, shift one
left past the merged pair, or append the token), and the lists at every token are the prefix compositions of those
maps. A Hillis-Steele scan composes them inside each chunk (``log2 C`` steps over a block of chunks), then across
chunks (``log2 nC`` steps); the start removed by each merge is read off the list before its token.
"""

from __future__ import annotations

import torch

from .layout import chunks
from .partition import Partition
from .structure import Structure

# Later than any token: a start never merged away, an end list's unused entries (the merge kernel's INT32_MAX;
# triton_utils, its home, needs Triton, which this module does not).
NEVER = 2**31 - 1
# Elements of the largest tensors of a block of chunks ([block, R, C, K] int64 maps, [block, R, C, C] masks).
_BLOCK_ELEMENTS = 1 << 22


class LiveStarts:
    """The live starts of a decided partition, chunk-major (chunk length ``C``, capacity ``K``), and per block of
    chunks the maps its reads and state updates need.

    Args:
        starts: ``[nC, R, C]`` bool, the tokens that opened a slot (False past the rows' ends).
        death: ``[R, nC * C]`` int64, the token at which each start's slot was merged into its left neighbour
            (``NEVER``: never; read only where ``starts``); death0: ``[R, K]`` the same for the initial slots.
        live, livem: ``[nC, R, K]`` int64 start positions of the slots live at each chunk start, ascending (the
            initial slots at ``-m0 .. -1``; entries past ``livem`` are not read) and their number ``[nC, R]``.
        nxt, nxtm: the same at each chunk's end (the next chunk's start; after the last chunk, the final slots).
        size0: ``[R]`` the initial sizes; row_len: ``[R]`` int64, each row's length (tokens past it get no slot).
    """

    def __init__(self, C: int, K: int, starts, death, death0, live, livem, nxt, nxtm, size0, row_len):
        nC, R = livem.shape
        dev = starts.device
        self.C, self.K, self.R, self.size0, self.row_len = C, K, R, size0, row_len
        self.slot = torch.arange(K, device=dev)
        self.live, self.livem, self.starts, self.end_size = live, livem, starts, nxtm
        self.next_pos = torch.where(self.slot < nxtm.unsqueeze(-1), nxt, NEVER).contiguous()
        self.death_flat = death
        self.death = death.view(R, nC, C).transpose(0, 1)
        self.death0 = death0
        self.causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
        # later[p, s] = [p > s]: the live starts after s counted by one product.
        self.later, self.later_slot = (torch.ones(n, n, device=dev).tril(-1) for n in (C, K))

    def start_slots(self, b0: int, b1: int):
        """``(pos, valid, death)`` ``[nb, R, K]`` of the slots live at each chunk start (invalid: death -1)."""
        nb, R, K = b1 - b0, self.R, self.K
        pos = self.live[b0:b1]
        valid = self.slot < self.livem[b0:b1].unsqueeze(-1)
        d_init = self.death0.expand(nb, R, K).gather(-1, (pos + self.size0.view(1, R, 1)).clamp(0, K - 1))
        d_tok = self.death_flat.expand(nb, R, -1).gather(-1, pos.clamp(0, self.death_flat.shape[1] - 1))
        death = torch.where(valid, torch.where(pos < 0, d_init, d_tok), -1)
        return pos, valid, death

    def alive(self, b0: int, b1: int):
        """``(t_glob [nb, 1, C], alive [nb, R, C (t), C (p)])``: the tokens' positions and the chunk's own starts p
        live at token t."""
        C, dev = self.C, self.starts.device
        t_glob = torch.arange(b0, b1, device=dev).view(-1, 1, 1) * C + torch.arange(C, device=dev)
        alive = self.starts[b0:b1].unsqueeze(2) & self.causal & (self.death[b0:b1].unsqueeze(2) > t_glob.unsqueeze(-1))
        return t_glob, alive

    def recency(self, alive) -> torch.Tensor:
        """``J [nb, R, C, C]`` int64: the recency at token t of the slot holding token s (the chunk's live starts
        after s; meaningful for ``s <= t``)."""
        return (alive.float() @ self.later).long()

    def start_maps(self, b0: int, b1: int, t_glob, alive):
        """``(valid [nb, R, K], JF [nb, R, C, K], dest_f [nb, R, K], dest [nb, R, C])``: which start slots are
        listed, the recency at token t of the slot holding start slot i (meaningful where valid), the chunk-end slot
        of each start slot and of each token (int64, -1: not listed or past the row's length)."""
        nb, R, C = b1 - b0, self.R, self.C
        pos, valid, death = self.start_slots(b0, b1)
        n_in = alive.sum(-1, keepdim=True)
        alive_f = valid.unsqueeze(2) & (death.unsqueeze(2) > t_glob.unsqueeze(-1))  # [nb, R, C, K]
        JF = n_in + (alive_f.float() @ self.later_slot).long()
        # The chunk-end slot holding a start slot's first token, and each token.
        nxt = self.next_pos[b0:b1]
        dest_f = torch.where(valid, torch.searchsorted(nxt, pos.contiguous(), right=True) - 1, -1)
        dest = torch.searchsorted(nxt, t_glob.expand(nb, R, C).contiguous(), right=True) - 1
        dest = torch.where(t_glob < self.row_len.view(1, R, 1), dest, -1)
        return valid, JF, dest_f, dest


def _compose(maps: torch.Tensor, dim: int, K: int) -> torch.Tensor:
    """Inclusive prefix compositions along ``dim`` of list maps ``[..., K]`` (Hillis-Steele, ``log2 n`` steps): entry
    j of a map is where list entry j came from, an index into the list before it (``< K``) or a token (``K + t``)."""
    n, d = maps.shape[dim], 1
    while d < n:
        later, earlier = maps.narrow(dim, d, n - d), maps.narrow(dim, 0, n - d)
        composed = torch.where(later >= K, later, earlier.gather(-1, later.clamp(max=K - 1)))
        maps = torch.cat([maps.narrow(dim, 0, d), composed], dim)
        d *= 2
    return maps


def _resolve(maps: torch.Tensor, base: torch.Tensor, K: int) -> torch.Tensor:
    """Start positions of the codes ``maps [..., N]`` (as in :func:`_compose`) over the lists ``base [..., K]``
    (broadcast over the leading dimensions)."""
    base = base.expand(*maps.shape[:-1], base.shape[-1])
    return torch.where(maps >= K, maps - K, base.gather(-1, maps.clamp(max=K - 1)))


def _deaths(victim, merges, size0, K: int):
    """``(death [R, nC C], death0 [R, K])`` from the start each merge token removed (``victim [R, nC C]``, its
    position; ``merges`` bool): the token's index, ``NEVER`` for starts never removed."""
    R, N = victim.shape
    t = torch.arange(N, device=victim.device).expand(R, N)
    out = []
    for keep, index, width in ((victim >= 0, victim, N), (victim < 0, victim + size0.view(R, 1), K)):
        d = torch.full((R, width + 1), NEVER, dtype=torch.int64, device=victim.device)
        d.scatter_(1, torch.where(merges & keep, index, width), t)  # the others into a spare column
        out.append(d[:, :width])
    return out


def live_starts_from_lists(masks, death, death0, live, livem, fpos, size, size0, row_len, K: int, C: int) -> LiveStarts:
    """:class:`LiveStarts` from the live-start lists the merge kernel keeps (the fields of ``scalar_decay.chunk_fwd.
    DecidedStructure``, rows first: ``masks [R, nC]`` boundary bitmasks, ``death [R, nC C]``, ``death0 [R, K]``,
    ``live [R, nC, >= K]``, ``livem [R, nC]``, ``fpos [R, >= K]``, ``size [R]``), without :func:`live_starts`' scans.
    ``row_len [R]``: each row's length (the backward's :class:`DevicePartition` passes ``T`` for every row, as
    :func:`live_starts` does)."""
    dev = masks.device
    nxt = torch.cat([live[:, 1:, :K], fpos[:, None, :K]], 1).long().transpose(0, 1)
    nxtm = torch.cat([livem[:, 1:].long(), size[:, None].long()], 1).transpose(0, 1)
    starts = ((masks[:, :, None] >> torch.arange(C, device=dev, dtype=torch.int64)) & 1).bool().transpose(0, 1)
    return LiveStarts(C, K, starts, death.long(), death0.long(), live[:, :, :K].long().transpose(0, 1),
                      livem.long().transpose(0, 1), nxt, nxtm, size0, row_len.long())


def live_starts(structure: Structure, C: int, device=None) -> LiveStarts:
    """:class:`LiveStarts` (chunks of ``C`` tokens, every row ``T`` long) from the compact per-token record, on
    ``device`` (default: the structure's). No host synchronisation: ``O(R T K log C)`` integer work in blocks of
    chunks, then ``O(R nC K log nC)``."""
    device = device or structure.starts.device
    s = Structure(*(x.to(device) for x in (structure.starts, structure.merged, structure.size0)), structure.K)
    starts, merged, size0, K = s.starts, s.merged, s.size0, s.K
    R, T = starts.shape
    nC = max(1, -(-T // C))
    st = chunks(starts, C, nC)
    mi = chunks(merged.long() + 1, C, nC) - 1  # padding: no merge
    m_before = chunks(s.sizes_before(), C, nC)
    j = torch.arange(K, device=device)
    t_glob = torch.arange(nC * C, device=device).view(nC, 1, C, 1)
    ends, victims = [], []
    block = max(1, _BLOCK_ELEMENTS // (R * C * K))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        new, m, mb = st[b0:b1].unsqueeze(-1), mi[b0:b1].unsqueeze(-1), m_before[b0:b1].unsqueeze(-1)
        m_after = mb + new.long() - (m >= 0).long()
        # Token t's map: merged pair (m, m + 1) -> entries past m shift one left; a start is appended.
        src = torch.where(new & (j == m_after - 1), K + t_glob[b0:b1],
                          torch.where((m >= 0) & (j > m) & (j < m_after - 1), j + 1, j))
        P = _compose(src, 2, K)  # the list after token t from the list at the chunk start
        before = torch.cat([j.expand(b1 - b0, R, 1, K), P[:, :, :-1]], 2)  # ... and before token t
        victims.append(before.gather(-1, (m + 1).clamp(0, K - 1)).squeeze(-1))
        ends.append(P[:, :, -1])
    initial = j - size0.view(R, 1)  # the initial slots at -m0 .. -1 (entries past m0 not read)
    after = _resolve(_compose(torch.cat(ends), 0, K), initial, K)  # [nC, R, K]: the lists at the chunk ends
    live = torch.cat([initial.unsqueeze(0), after[:-1]])
    victim = _resolve(torch.cat(victims), live, K)  # [nC, R, C]
    death, death0 = _deaths(victim.transpose(0, 1).reshape(R, nC * C), (mi >= 0).transpose(0, 1).reshape(R, -1),
                            size0, K)
    livem = m_before[:, :, 0]
    nxt, nxtm = torch.cat([live[1:], after[-1:]]), torch.cat([livem[1:], s.final_size().unsqueeze(0)])
    return LiveStarts(C, K, st, death, death0, live, livem, nxt, nxtm, size0,
                      torch.full((R,), T, dtype=torch.int64, device=device))


class DevicePartition(Partition):
    """:class:`~.partition.Partition` with its tables built by torch on the slot states' device from
    :func:`live_starts` (no numba, no host copy of the structure, no loop over tokens): the same integer tables
    (equal bit for bit), so the same updates and reads. One host synchronisation per call, the tables' widths
    (``mF``, ``Rt``; :class:`~.partition.Partition`'s constructor). ``live``: the structure's :class:`LiveStarts`
    when a kernel forward handed them over (:func:`live_starts_from_lists`), else built here."""

    def __init__(self, *args, live: LiveStarts | None = None):
        self._given_live = live
        super().__init__(*args)

    def _chunk_tables(self):
        nC, R, C, K, T = self.nC, self.R, self.C, self.K, self.T
        ls = self._given_live if self._given_live is not None else live_starts(self.structure, C, self.kc.device)
        self.live = ls
        JF = torch.empty((nC, R, C, K), dtype=torch.int64, device=self.kc.device)
        destF, dest = (torch.empty((nC, R, n), dtype=torch.int64, device=self.kc.device) for n in (K, C))
        block = max(1, _BLOCK_ELEMENTS // (R * C * max(C, K)))
        for b0 in range(0, nC, block):
            b1 = min(nC, b0 + block)
            t_glob, alive = ls.alive(b0, b1)
            valid, JF_b, destF[b0:b1], dest[b0:b1] = ls.start_maps(b0, b1, t_glob, alive)
            JF[b0:b1] = torch.where(valid.unsqueeze(2) & (t_glob < T).unsqueeze(-1), JF_b, -1)
        return JF, destF, dest, torch.cat([ls.livem, ls.end_size[-1:]])  # m_start: the last entry the final size

    def recency(self, b0: int, b1: int) -> torch.Tensor:
        ls = self.live
        t_glob, alive = ls.alive(b0, b1)
        return torch.where(ls.causal & (t_glob < self.T).unsqueeze(-1), ls.recency(alive), -1)
