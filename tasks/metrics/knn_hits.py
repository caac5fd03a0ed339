"""Entries shared by fixed x-side neighbour lists and row-permuted y-side lists, found sparsely.

Calibration permutes the rows of ``y`` (``y' = y[perm]``, ``inv`` the inverse permutation). The
y'-list of sample ``i`` is ``inv[idx_b[perm[i]]]`` (``neighbors.permute_lists``): a relabelling
of the cached lists, so reading y's entry ``(m, u, t)`` (layer ``m``, sample ``u``, rank ``t``)
in the permuted coordinates gives the pair ``(i, j) = (inv[u], inv[idx_b[m, u, t]])``, with
y'-kernel value and reverse-membership flag those of the unpermuted entry ``(m, u, t)``.

Under a permutation only about ``k^2 / N`` of a sample's ``k`` entries meet an x-list, so instead
of testing all ``La * Lb * N * k`` (x-layer, y-entry) combinations this module

1. keeps, for every ordered pair ``(i, j)``, the bitmask of the x-layers whose list of ``i``
   contains ``j`` (``ListTable``: a dense ``(N*N,)`` integer table, or sorted unique keys
   ``i*N + j`` when ``N^2`` is too large), built once;
2. per permutation looks up the ``Lb * N * k`` y'-entries in it (one gather, or a binary search)
   and expands the few non-zero bitmasks into the hits ``(perm, x-layer, y-layer, i, j)``.

Everything is integer work, so the hits are exactly the mask entries that recomputing the lists
from permuted features gives (there is no tolerance involved) when no similarity ties at the
k-th neighbour. With exact ties (duplicate rows: several captions of one image) the relabelled
lists keep the tie order of the unpermuted rows, where recomputing would break the tie by the
permuted row order: another, equally valid list, so such nulls can differ from recomputed ones
by the tied entries (docs/metrics.md, "How all layer pairs share work"). Layers are split into groups of at
most 63 (one int64 bitmask per group).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .gram import batched_device

#: dense (N*N,) bitmask table per layer group when it takes at most this many bytes
DENSE_TABLE_MAX_BYTES = 1 << 26
#: layers per bitmask (int64 has 63 usable bits)
MAX_GROUP = 63


def _mask_dtype(bits: int) -> torch.dtype:
    """Smallest signed integer dtype holding ``bits`` flags below its sign bit."""
    for dtype, width in ((torch.int16, 15), (torch.int32, 31), (torch.int64, 63)):
        if bits <= width:
            return dtype
    raise ValueError(f"at most {MAX_GROUP} layers per bitmask, got {bits}")


@dataclass
class ListTable:
    """Membership of ordered pairs ``(i, j)`` in the x-side lists, per group of layers.

    ``groups``: ``(first_layer, count)``; per group either ``dense[g]`` ``(N*N,)`` bitmasks
    (bit ``l - first`` set iff ``j in idx[l, i]``) or ``keys[g]`` (sorted unique ``i*N + j``,
    int64) with ``masks[g]`` their bitmasks.
    """

    n: int
    groups: list[tuple[int, int]]
    dense: list[torch.Tensor] | None = None
    keys: list[torch.Tensor] | None = None
    masks: list[torch.Tensor] | None = None

    def lookup(self, g: int, keys: torch.Tensor) -> torch.Tensor:
        """Bitmasks of group ``g`` for flat keys ``i*N + j`` (any shape, int64); 0 = no list."""
        if self.dense is not None:
            return self.dense[g].index_select(0, keys.reshape(-1)).view(keys.shape)
        sk, sm = self.keys[g], self.masks[g]  # type: ignore[index]
        pos = torch.searchsorted(sk, keys.reshape(-1)).clamp_(max=sk.numel() - 1)
        found = sk.index_select(0, pos) == keys.reshape(-1)
        return torch.where(found, sm.index_select(0, pos), 0).view(keys.shape)


def build_list_table(idx: torch.Tensor, max_group: int | None = None,
                     dense_max_bytes: int | None = None) -> ListTable:
    """``ListTable`` of the lists ``idx`` ``(L, N, k)`` int64 (entries of a row distinct).

    ``max_group`` (layers per bitmask, default ``MAX_GROUP``) and ``dense_max_bytes`` (default
    ``DENSE_TABLE_MAX_BYTES``; larger tables use sorted keys) are exposed for tests."""
    max_group = MAX_GROUP if max_group is None else max_group
    dense_max_bytes = DENSE_TABLE_MAX_BYTES if dense_max_bytes is None else dense_max_bytes
    if not 1 <= max_group <= MAX_GROUP:
        raise ValueError(f"max_group must be in [1, {MAX_GROUP}], got {max_group}")
    L, n, k = idx.shape
    dev = idx.device
    groups = [(g0, min(max_group, L - g0)) for g0 in range(0, L, max_group)]
    table = ListTable(n, groups)
    itemsize = max(torch.empty(0, dtype=_mask_dtype(c)).element_size() for _, c in groups)
    use_dense = n * n * itemsize <= dense_max_bytes
    dense, keys, masks = [], [], []
    for g0, count in groups:
        dtype = _mask_dtype(count)
        flat = pair_keys(idx[g0:g0 + count]).reshape(-1)
        bit = torch.cat([torch.full((n * k,), 1 << (l - g0), dtype=dtype, device=dev)
                         for l in range(g0, g0 + count)])
        if use_dense:  # a layer's keys are distinct, so summing its bits is or-ing them
            dense.append(torch.zeros(n * n, dtype=dtype, device=dev).index_add_(0, flat, bit))
        else:
            uniq, where = torch.unique(flat, sorted=True, return_inverse=True)
            keys.append(uniq)
            masks.append(torch.zeros(uniq.numel(), dtype=dtype, device=dev).index_add_(0, where, bit))
    if use_dense:
        table.dense = dense
    else:
        table.keys, table.masks = keys, masks
    return table


#: int64 keys of one chunk of ``member_counts`` (whole y-layers, or rows of one, at a time)
COUNT_CHUNK_ELEMENTS = 1 << 22


def member_counts(table: ListTable, keys: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """How many of each row's pairs each x-layer's lists hold, for all layer pairs at once.

    One lookup per key in ``table`` (a bitmask of the x-layers holding the pair) and one bit test
    per x-layer: ``Lb * N * m`` lookups and ``La * Lb * N * m`` integer operations, never the
    ``(La, Lb, N, m)`` membership tensor (a gather of it from a dense ``(La, N*N)`` adjacency was
    14 of 15 ms of ``mutual_knn``'s 13 x 13 matrix at N=1024, k=10: random reads of a 13 MB table).

    Args:
        table: ``ListTable`` of the x-lists (``La`` layers, ``N`` samples).
        keys: ``(Lb, N, m)`` int64 ordered pairs ``u*N + v`` in ``[0, N*N)`` of each y-layer and
            sample: ``i*N + idx_b[i, t]`` (is ``idx_b[i, t]`` in the x-list of ``i``?) or
            ``idx_b[i, t]*N + i`` (is ``i`` in the x-list of ``idx_b[i, t]``?).
        reduce: ``'sum'``: how many of the ``m`` pairs of a row are held (int64); ``'any'``:
            whether one is (bool); ``'total'``: the counts summed over samples.

    Returns:
        ``(La, Lb, N)`` int64 counts or bool (``'total'``: ``(La, Lb)`` int64), exact.
    """
    if reduce not in ("sum", "any", "total"):
        raise ValueError(f"reduce must be 'sum', 'any' or 'total', got {reduce!r}")
    Lb, n, m = keys.shape
    La = sum(count for _, count in table.groups)
    out = torch.empty((La, Lb) if reduce == "total" else (La, Lb, n),
                      dtype=torch.bool if reduce == "any" else torch.int64, device=keys.device)
    layers = max(1, COUNT_CHUNK_ELEMENTS // max(n * m, 1))  # whole y-layers per chunk
    rows = n if layers > 1 else max(1, min(n, COUNT_CHUNK_ELEMENTS // max(m, 1)))  # or rows of one
    for b0 in range(0, Lb, layers):
        b1 = min(Lb, b0 + layers)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            part = keys[b0:b1, r0:r1]
            for g, (g0, count) in enumerate(table.groups):
                masks = table.lookup(g, part)  # (B, R, m): bit l - g0 set iff x-layer l holds the pair
                # off a GPU one bit at a time (13 bits: 0.56 ms against 0.90 for all at once at
                # N=1024, k=10, 13 y-layers); on a GPU a few launches for all of them
                per = max(1, COUNT_CHUNK_ELEMENTS // max(masks.numel(), 1)) if batched_device(masks.device) else 1
                for s0 in range(0, count, per):
                    s1 = min(count, s0 + per)
                    shifts = torch.arange(s0, s1, dtype=masks.dtype, device=masks.device).view(-1, 1, 1, 1)
                    held = torch.bitwise_and(masks.unsqueeze(0) >> shifts, 1) != 0  # (bits, B, R, m)
                    rows_out = out[g0 + s0:g0 + s1, b0:b1]
                    if reduce == "any":
                        rows_out[:, :, r0:r1] = held.any(-1)
                    elif reduce == "sum":
                        rows_out[:, :, r0:r1] = held.sum(-1)
                    elif r0 == 0:
                        rows_out.copy_(held.sum((-1, -2)))
                    else:
                        rows_out += held.sum((-1, -2))
    return out


@functools.lru_cache(maxsize=4)
def _byte_pair_counts(device: str) -> torch.Tensor:
    """``(65536,)`` uint8: the set bits of each 16-bit value."""
    v = torch.arange(1 << 16, device=device)
    return sum(((v >> b) & 1 for b in range(16)), torch.zeros_like(v)).to(torch.uint8)


def bit_counts(masks: torch.Tensor) -> torch.Tensor:
    """Set bits of each of ``masks`` (int16/int32/int64 bitmasks of ``ListTable``, sign bit
    clear), int64, same shape: 16 bits at a time looked up in a table."""
    table = _byte_pair_counts(str(masks.device))
    bits = 8 * masks.element_size() - 1
    out = torch.zeros(masks.shape, dtype=torch.int64, device=masks.device)
    for shift in range(0, bits, 16):
        out += table.index_select(0, ((masks >> shift) & 0xFFFF).to(torch.int64).reshape(-1)).view(masks.shape)
    return out


def pair_keys(idx: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """``(L, N, k)`` int64 keys of the entries of lists ``idx`` ``(L, N, k)``: ``i*N + idx[l, i, t]``,
    or with ``reverse`` the transposed pairs ``idx[l, i, t]*N + i`` (``member_counts``)."""
    n = idx.shape[1]
    rows = torch.arange(n, device=idx.device).view(1, n, 1)
    return idx * n + rows if reverse else rows * n + idx


def inverse_permutations(perms: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` inverses of the rows of ``perms`` ``(B, N)`` int64 (``inv[b, perms[b, i]] = i``)."""
    n = perms.shape[1]
    inv = torch.empty_like(perms)
    return inv.scatter_(1, perms, torch.arange(n, device=perms.device).expand_as(perms).contiguous())


#: (held entries x layers of a group) bits expanded at once by ``permuted_hits``
EXPAND_CHUNK_ELEMENTS = 1 << 22


@dataclass
class Hits:
    """Mask entries ``(i, j)`` in both the x-list (layer ``layer_a``) and the y'-list (layer
    ``layer_b``) of ``i`` for permutation ``batch``; ``entry`` is the flat index of the y-entry
    in ``idx_b.reshape(-1)`` (to read y's kernel value / reverse flag). All ``(H,)`` int64."""

    batch: torch.Tensor
    layer_a: torch.Tensor
    layer_b: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    entry: torch.Tensor


def permuted_hits(table: ListTable, idx_b: torch.Tensor, invs: torch.Tensor | None,
                  max_hits: int | None = None) -> Hits | None:
    """Hits of the x-lists in ``table`` against the y-lists ``idx_b`` ``(Lb, N, k)`` permuted by
    each row of ``invs`` ``(B, N)`` (inverse permutations, int64); ``invs=None``: the lists as
    they are (one batch, the identity). With ``max_hits``: ``None`` when the hits are more (they
    are counted, ``bit_counts``, before they are listed)."""
    Lb, n, k = idx_b.shape
    dev = idx_b.device
    if invs is None:  # the identity: j = idx_b[m, i, t]
        B = 1
        cols = idx_b.reshape(1, Lb, n, k)
        keys = pair_keys(idx_b).reshape(1, Lb, n, k)
        invs = torch.arange(n, device=dev).view(1, n)
    else:
        B = invs.shape[0]
        cols = invs.index_select(1, idx_b.reshape(-1)).view(B, Lb, n, k)  # j = inv[idx_b[m, u, t]]
        keys = (invs * n).view(B, 1, n, 1) + cols  # i*N + j with i = inv[u]
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    found = 0
    for g, (g0, count) in enumerate(table.groups):
        masks = table.lookup(g, keys).reshape(-1)
        if max_hits is not None:  # counted before they are expanded
            found += int(bit_counts(masks).sum())
            if found > max_hits:
                return None
        where = masks.nonzero().squeeze(1)
        shifts = torch.arange(count, dtype=masks.dtype, device=dev)
        # the held entries' bitmasks expanded to their bits a chunk at a time: all at once was a
        # (held entries, count) tensor of the mask dtype, twice (2.4 GiB for 63 layers of N=4000,
        # k=10 against themselves)
        step = max(1, EXPAND_CHUNK_ELEMENTS // count)
        for w0 in range(0, where.numel(), step):
            held = where[w0:w0 + step]
            sel = ((masks.index_select(0, held).unsqueeze(1) >> shifts) & 1).nonzero()
            parts.append((held.index_select(0, sel[:, 0]), sel[:, 1] + g0))
    flat = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64, device=dev)
    layer_a = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64, device=dev)
    per_perm = Lb * n * k
    batch = flat // per_perm
    entry = flat - batch * per_perm
    layer_b = entry // (n * k)
    u = (entry // k) % n
    row = invs.view(-1).index_select(0, batch * n + u)
    col = cols.view(-1).index_select(0, flat)
    return Hits(batch, layer_a, layer_b, row, col, entry)
