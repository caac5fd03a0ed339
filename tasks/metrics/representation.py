"""``Representation``: one model's layers on one paired sample set, with per-layer caches.

A representation computes each structure once and hands it to every metric and every partner
model: the Gram matrix ``x @ x.T`` of a layer, its neighbour lists for a given ``k``, and each
metric's own per-layer encoding (``memo``). Passing the same ``Representation`` to several
``layer_matrix``/``calibrate`` calls therefore never recomputes a Gram or a kNN list.

Gram matrices are kept only when ``N <= keep_gram_max_n`` (default 4096: 64 MiB per float32
layer) and only once a metric asks for one (``gram``). Neighbour lists are taken from a cached
Gram when there is one, else found blockwise straight from the features (Gram rows computed a
block at a time and reduced to their top-k at once, never stored), so memory for kNN metrics is
``O(L*N*k)`` plus one block. To share one Gram per layer between kNN and kernel metrics, call
``cache_grams()`` first.

Kernel metrics (CKA's centred kernels, RBF distances) need the Gram of the column-centred
features (``centred_gram``): translation invariant, so a common offset of the rows costs no
digits. ``H G H`` of a cached Gram is used for it only while the offset is small against the
spread (``CENTRED_FROM_GRAM_MAX_RATIO``); otherwise it is computed from the centred features
(``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` in float32 at offset 1e4 and spread ~4 lost every digit).
"""

from __future__ import annotations

import math
import operator
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._arrays import ArrayLike, check_finite, resolve_device, split_layers, to_tensor
from .copies import copy_canon, settle_copies, subset_canon
from .gram import (as_stack, batched_device, center_gram_, centre_columns, feature_chunks, gram_full, gram_upper,
                   stacked_gram_upper, stacked_view)
from .neighbors import (DEFAULT_BLOCK_ELEMENTS, candidate_depth, restrict_lists, stacked_topk_neighbors, ties_in_index_order,
                        topk_neighbors)
from .ranked_topk import ranked_topk

KEEP_GRAM_MAX_N = 4096
#: ``centred_gram`` takes ``H G H`` of a cached Gram only while the layer's squared mean row
#: ``|m|^2`` is at most this many times its mean squared centred row ``mean_i |x_i - m|^2``: the
#: Gram's rounding (relative to ``|x_i||x_j|``) then grows by at most this factor against the
#: centred entries; beyond it the centred Gram is multiplied from the centred features
CENTRED_FROM_GRAM_MAX_RATIO = 64.0
#: a float32 layer's largest squared row norm ``S = max_i |x_i|^2`` may be at most this (rows of
#: norm up to 2^50, about 1.1e15). Every float32 value the metrics form from one side is then
#: finite for ``N < 2^24``: Gram and centred-Gram entries (``<= 4S``), RBF distances (``<= 16S``)
#: and their sums over ``N`` rows (``<= 16 N S < 2^128``); products of two sides' kernel values are
#: formed in float64 (CKNNA) or after scaling by a power of two (CKA nulls,
#: ``kernel_metrics.GramState.scale``). Above it a float32 Gram overflows (inf, then NaN scores
#: or wrong neighbour lists)
FLOAT32_MAX_SQ_ROW_NORM = 2.0 ** 100
#: the same for float64 (rows of norm up to 2^230, about 1.7e69): products of two Gram or kernel
#: entries (``<= 16 S^2``) summed over ``N^2 < 2^48`` pairs stay below float64's ``2^1024``
#: (rows of norm ~1e120 made every CKA and CKNNA score and null draw NaN)
FLOAT64_MAX_SQ_ROW_NORM = 2.0 ** 460
#: the smallest ``peak^2`` (``peak = max |x|``) of a layer per computation dtype: below it the
#: products of its values reach the subnormal range (then 0): distances tie and neighbour lists
#: fall back to index order (float32 values of ~1e-23 scored ``mutual_knn`` 0.95 for 0.79).
#: A peak of 2^-50 (float32, ~8.9e-16) or 2^-450 (float64, ~3.5e-136) is far from that
MIN_SQ_PEAK = {torch.float32: 2.0 ** -100, torch.float64: 2.0 ** -900}
#: the computation dtypes a ``Representation`` may be given
COMPUTE_DTYPES = (torch.float32, torch.float64)
_MAX_SQ_ROW_NORM = {torch.float32: FLOAT32_MAX_SQ_ROW_NORM, torch.float64: FLOAT64_MAX_SQ_ROW_NORM}
#: elements of one float64 row block when ``max_sq_row_norm`` measures a large-valued layer
SQ_ROW_NORM_BLOCK = 1 << 22
#: elements of one stack of same-width layers (features, or their Gram matrices) that per-layer
#: work is batched over (one kernel launch for the stack instead of one per layer: on a GPU the
#: launches, not the arithmetic, bounded the engine at ~1000 samples)
BATCH_ELEMENTS = 1 << 25
#: a subset reads its neighbour lists off its parent's when the depth that needs is at most this
#: many times ``k``, plus 16 (``Representation._parent_lists_pay``): subsets of about a fifth of
#: the sample or more (bootstrap's half-size subsamples: depth 6k + 16)
PARENT_DEPTH_MAX_PER_K = 16
#: off a GPU a subset of ``m`` rows reads a layer's Gram off its parent's cached one only where
#: ``D m >= PARENT_GRAM_MIN_WIDTH_ROWS (N + m)`` (``Representation._parent_gram_pays``), else
#: multiplies its own rows: reading ``m`` rows of a cold ``(N, N)`` Gram costs about as much as
#: the product of a layer of width ~400 at N=1024, m=512 (2 threads: 0.45-0.9 ms a layer; the
#: centred product 0.56 ms at width 320, 1.25 ms at 768), and the demo's CNN layers are 16-320
#: wide (bootstrap of CKA, 23 x 7 layers of width 320 / 384, cached Grams: 6.7-6.8 s per 100
#: replicates with every layer's read off the parent's, 4.6 s with this rule)
PARENT_GRAM_MIN_WIDTH_ROWS = 128


class Representation:
    """Layers ``(N, D_l)`` of one model, on one device, in the computation dtype, with caches.

    Args:
        xs: sequence of ``(N, D_l)`` arrays (widths may differ), a ``(L, N, D)`` array/tensor, or
            one ``(N, D)`` layer; numpy or torch. Used as given (no preprocessing).
        device: ``'cpu'``/``'cuda'``/torch.device; default: cuda when the input is on cuda.
        keep_gram_max_n: keep per-layer Gram matrices in memory when ``N`` is at most this.
        dtype: computation dtype, ``torch.float32`` or ``torch.float64`` (others refused); default
            float64 when any layer is float64 (a float64 layer is never rounded to float32), else
            float32.

    Raises:
        ValueError: fewer than 2 samples, a layer of width 0, a NaN/inf value (the error
            names the layer and counts the bad rows), a constant layer (all rows identical), or,
            computing in float32, a row of norm above 2^50 (``FLOAT32_MAX_SQ_ROW_NORM``: its
            Gram would overflow float32): a metric of such features would be NaN or silently
            meaningless.
    """

    def __init__(self, xs: ArrayLike | Sequence[ArrayLike], device: str | torch.device | None = None,
                 keep_gram_max_n: int = KEEP_GRAM_MAX_N, dtype: torch.dtype | None = None) -> None:
        layers = split_layers(xs)
        device = resolve_device(device, xs, *layers)
        if dtype is None:
            dtype = torch.float64 if any(_is_float64(x) for x in layers) else torch.float32
        elif dtype not in COMPUTE_DTYPES:  # half precision would sum Grams and counts in it
            raise ValueError(f"dtype must be torch.float32 or torch.float64 (the computation dtype; inputs of "
                             f"any dtype are converted to it), got {dtype!r}")
        if isinstance(xs, (np.ndarray, torch.Tensor)) and xs.ndim == 3:  # one conversion, the layers its views
            tensors = list(to_tensor(xs, device, dtype).unbind(0))
        else:
            tensors = [to_tensor(x, device, dtype) for x in layers]
        check_values(tensors)
        n = int(tensors[0].shape[0])
        self._set(tensors, device, dtype, n, n <= keep_gram_max_n, [int(x.shape[1]) for x in tensors])

    def _set(self, layers: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype, n: int,
             keep_gram: bool, widths: list[int], parent: "Representation | None" = None,
             rows: torch.Tensor | None = None) -> None:
        """Every field, with empty caches (``__init__`` and ``subset``)."""
        self.layers, self.device, self.dtype, self.n, self.keep_gram = layers, device, dtype, n, keep_gram
        self._widths = list(widths)
        self._grams: dict[int, torch.Tensor] = {}
        self._memo: dict[Any, Any] = {}
        self._parent = parent  # on a subset: the full sample
        self._rows = rows  # and the subset's rows in it

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def widths(self) -> list[int]:
        return list(self._widths)

    def gram(self, layer: int) -> torch.Tensor:
        """``(N, N)`` inner products of ``layer`` (cached when ``keep_gram``). Do not modify."""
        g = self.cached_gram(layer)
        if g is None:
            g = gram_full(self.layers[layer])
            if self.keep_gram:
                self._grams[layer] = g
        return g

    def centred_gram(self, layer: int, upper_only: bool = False) -> torch.Tensor:
        """``(N, N)`` Gram ``Xc Xc^T`` of the column-centred layer (``Xc = X - 1 m^T``, ``m`` the
        mean row), a fresh matrix the caller may modify; never cached. From the cached Gram
        (``H G H``, no product) when there is one and the layer's offset is small
        (``CENTRED_FROM_GRAM_MAX_RATIO``), else multiplied from the centred features; with
        ``upper_only`` that product may leave the blocks below the diagonal undefined
        (``gram.gram_upper``). Translation invariant up to rounding of the spread, not of the
        offset: the kernel metrics' distances and centred kernels come from it."""
        return self._centred_gram(layer, upper_only)

    def centring_source(self, layer: int) -> torch.Tensor | None:
        """The cached ``(N, N)`` Gram that `centred_gram` centres (``H G H``) for ``layer``, or None
        when it multiplies the centred features instead. Its entries' rounding (``eps`` of
        ``|x_i||x_j|``, common offset included) is what the centred Gram then carries, up to
        ``CENTRED_FROM_GRAM_MAX_RATIO`` times that of its own entries. Do not modify."""
        g = self.cached_gram(layer)
        return g if g is not None and offset_is_small(g) else None

    def _centred_gram(self, layer: int, upper_only: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """`centred_gram`, written into ``out`` (an ``(N, N)`` buffer, upper only) when given."""
        g = self.centring_source(layer)
        if g is not None:
            return center_gram_(g.clone() if out is None else out.copy_(g))
        xc = centre_columns(self.layers[layer])
        return gram_upper(xc, out=out) if upper_only or out is not None else gram_full(xc)

    def centred_gram_stack(self, layers: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """``(G, N, N)``: ``centred_gram(l, upper_only=True)`` of each of ``layers`` (one width)
        (entries ``j >= i`` defined), in one buffer (``out``, ``(G, N, N)`` of the representation's
        dtype, when given); entry for entry, except on a GPU (``batched_device``) for layers
        without a cached Gram, centred and multiplied as stacks (``gram.feature_chunks``,
        ``gram.stacked_gram_upper``: the same matrices up to rounding)."""
        if out is None:
            out = torch.empty((len(layers), self.n, self.n), dtype=self.dtype, device=self.device)
        if batched_device(self.device) and all(self.cached_gram(l) is None for l in layers):
            group = [self.layers[l] for l in layers]
            for start, stop in feature_chunks(group):  # the centred copies of a bounded number of layers at once
                stacked_gram_upper(centre_columns(as_stack(group[start:stop])), out=out[start:stop])
            return out
        for s, l in enumerate(layers):
            self._centred_gram(l, True, out[s])
        return out

    def cached_gram(self, layer: int) -> torch.Tensor | None:
        """The cached Gram of ``layer`` or ``None`` (never multiplies; a subset takes its rows of
        the parent's cached Gram where that is cheaper than its own product: `_parent_gram_pays`)."""
        g = self._grams.get(layer)
        if g is None and self._parent is not None and self._parent_gram_pays(layer):  # the rows of the parent's
            whole = self._parent.cached_gram(layer)
            if whole is not None:
                g = self._grams[layer] = whole.index_select(0, self._rows).index_select(1, self._rows)
        return g

    def _parent_gram_pays(self, layer: int) -> bool:
        """Whether a subset reads ``layer``'s Gram off its parent's (when cached) rather than
        multiplying its own rows: always on a GPU, elsewhere for layers wide enough
        (``PARENT_GRAM_MIN_WIDTH_ROWS``)."""
        assert self._parent is not None
        return batched_device(self.device) or self._widths[layer] * self.n >= PARENT_GRAM_MIN_WIDTH_ROWS * (self._parent.n + self.n)

    def cache_grams(self) -> "Representation":
        """Compute and keep every layer's Gram (when ``keep_gram``), to share it across metrics."""
        if self.keep_gram:
            for l in range(len(self)):
                self.gram(l)
        return self

    def knn(self, layer: int, k: int, exclude_self: bool = True, precision: str = "exact"
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)`` of the top-``k`` inner-product neighbours, each ``(N, k)``.

        Cached per ``(layer, k, exclude_self, precision)``, so lists of different precisions
        never mix. ``precision='exact'``: from the cached Gram if any, else blockwise;
        ``'bf16'``/``'bf16-refine'``: the opt-in bfloat16 search of ``bf16_neighbors``, always
        from the features (a cached Gram does not change its result).
        """
        key = ("knn", layer, k, exclude_self, precision)
        if key not in self._memo:
            if precision != "exact":
                self._memo[key] = self.settled(layer, *topk_neighbors(self.layers[layer], k, exclude_self=exclude_self,
                                                                      precision=precision), exclude_self)
            elif self._parent is not None and self._parent_lists_pay(k, exclude_self):
                self._memo[key] = self._knn_from_parent(layer, k, exclude_self)
            else:
                self._memo[key] = self._search(layer, k, exclude_self)
        return self._memo[key]

    def _search(self, layer: int, k: int, exclude_self: bool, scratch: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-``k`` lists of ``layer``, not cached: from the cached Gram, else blockwise
        (``scratch``: an ``(N, N)`` buffer the search may overwrite, see ``topk_neighbors``)."""
        gram = self.cached_gram(layer)
        if gram is not None:
            found = topk_neighbors(None, k, exclude_self=exclude_self, gram=gram, scratch=scratch)
        else:
            found = topk_neighbors(self.layers[layer], k, exclude_self=exclude_self, scratch=scratch)
        return self.settled(layer, *found, exclude_self)

    def copies(self, layer: int) -> torch.Tensor | None:
        """``(N,)`` int64: each row's lowest-index copy (a row of equal values) in ``layer``
        (`copies.copy_canon`; a subset's from its parent's), or None when its rows are all
        distinct. Cached."""
        key = ("copies", layer)
        if key not in self._memo:
            if self._parent is not None and self._rows is not None:
                self._memo[key] = subset_canon(self._parent.copies(layer), self._rows)
            else:
                self._memo[key] = copy_canon(self.layers[layer])
        return self._memo[key]

    def settled(self, layer: int, values: torch.Tensor, indices: torch.Tensor, exclude_self: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lists of ``layer`` with its exact copies held as one value (`copies.settle_copies`): the
        tie rule whatever the rounding of the products with two copies."""
        return settle_copies(values, indices, self.copies(layer), exclude_self)

    def knn_indices(self, k: int, exclude_self: bool = True, precision: str = "exact"
                    ) -> torch.Tensor:
        """All layers' neighbour lists stacked: ``(L, N, k)`` int64."""
        return self.knn_stack(k, exclude_self, precision)[1]

    def knn_stack(self, k: int, exclude_self: bool = True, precision: str = "exact"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers' ``knn`` stacked: ``(L, N, k)`` values and int64 indices. Exact lists not yet
        cached are searched, on a GPU, a stack of same-width layers at a time where their Gram
        matrices fit one block (``neighbors.stacked_topk_neighbors``: the same lists as ``knn``,
        layer by layer; on a CPU the stacked Grams measured slower, 1.41 x floor against 1.16)."""
        if precision == "exact" and self._parent is None:
            self._search_stacks(k, exclude_self)
        lists = [self.knn(l, k, exclude_self, precision) for l in range(len(self))]
        return torch.stack([v for v, _ in lists]), torch.stack([i for _, i in lists])

    def _search_stacks(self, k: int, exclude_self: bool) -> None:
        """Cache the exact lists of every layer that has none yet (``knn_stack``): on a GPU those
        without a cached Gram, searched in stacks; on a CPU all, layer by layer through one
        reused Gram buffer (a fresh Gram per layer: 26 ms of page faults in 180 for 2 x 13
        layers at N=1024). Layers whose Gram exceeds one block are left to ``knn``."""
        n = self.n
        if n * n > DEFAULT_BLOCK_ELEMENTS:
            return
        todo = [l for l in range(len(self)) if ("knn", l, k, exclude_self, "exact") not in self._memo]
        if not batched_device(self.device):  # on a CPU the stack only costs cache
            scratch = torch.empty((n, n), dtype=self.dtype, device=self.device) if todo else None
            for l in todo:  # from the cached Gram, if any, copied into the buffer
                self._memo[("knn", l, k, exclude_self, "exact")] = self._search(l, k, exclude_self, scratch)
            return
        todo = [l for l in todo if self.cached_gram(l) is None]
        for stack in layer_stacks([self.layers[l] for l in todo], n * n):
            found = stacked_topk_neighbors([self.layers[todo[s]] for s in stack], k, exclude_self=exclude_self)
            for s, v, i in zip(stack, *found):
                self._memo[("knn", todo[s], k, exclude_self, "exact")] = self.settled(todo[s], v, i, exclude_self)

    def memoized(self, key: Any) -> bool:
        """Whether ``memo`` already holds ``key`` (an encoding built: asking for it costs nothing)."""
        return key in self._memo

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """Cache ``build()`` under ``key`` (per-metric encodings keyed by metric and params)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def subset(self, rows: torch.Tensor) -> "Representation":
        """The representation of the samples ``rows`` (``(m,)`` distinct int64 indices, on this
        device), sharing this one's work: sub-matrices ``G[rows][:, rows]`` of the cached Grams
        (no product recomputed); layers ``x[rows]`` copied only when a metric reads them; exact
        neighbour lists read off deeper lists of this sample (``neighbors.restrict_lists``,
        computed once per layer and kept here), rows they cannot settle recomputed. Encodings
        start empty."""
        sub = Representation.__new__(Representation)
        sub._set(_RowsOf(self.layers, rows), self.device, self.dtype, int(rows.numel()), self.keep_gram,
                 self._widths, parent=self, rows=rows)
        return sub

    def select_layers(self, indices: Sequence[int]) -> "Representation":
        """The layers ``indices`` of this representation (same samples, device, dtype and Gram
        policy), holding the Grams this one has cached for them (shared, not copied); neighbour
        lists and encodings start empty. On a sample subset (``subset``): the layers without the
        link to the full sample's caches (computed anew when asked for)."""
        sub = Representation.__new__(Representation)
        layers = [self.layers[i] for i in indices]
        sub._set(layers, self.device, self.dtype, self.n, self.keep_gram, [self._widths[i] for i in indices])
        if self._parent is None:
            sub._grams = {j: self._grams[i] for j, i in enumerate(indices) if i in self._grams}
        return sub

    def _parent_lists_pay(self, k: int, exclude_self: bool) -> bool:
        """Whether a subset's lists are read off its parent's deeper lists (``_knn_from_parent``),
        rather than searched among its own rows: the depth that needs (``candidate_depth``, about
        ``3 k N / m + 16`` for ``m`` of ``N`` rows) is at most ``PARENT_DEPTH_MAX_PER_K * k + 16``.
        A small subset would need lists as long as the sample (subsamples of 100 of 20,000 rows
        held 7 GB of lists), while its own search is small."""
        assert self._parent is not None
        kmax = self._parent.n - 1 if exclude_self else self._parent.n
        return candidate_depth(k, self._parent.n, self.n, kmax) <= PARENT_DEPTH_MAX_PER_K * k + 16

    def _knn_from_parent(self, layer: int, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-``k`` lists of a subset from its parent's deeper lists (``subset``), found for
        every layer at once (the other layers' are kept for their turn)."""
        parent, rows = self._parent, self._rows
        assert parent is not None and rows is not None
        kmax = self.n - 1 if exclude_self else self.n
        if not 1 <= k <= kmax:
            raise ValueError(f"topk must be in [1, {kmax}] for N={self.n}, got {k}")
        parent_kmax = parent.n - 1 if exclude_self else parent.n
        depth = candidate_depth(k, parent.n, self.n, parent_kmax)
        def deep_lists() -> tuple[torch.Tensor, torch.Tensor]:
            # (L, N, depth) values and int32 indices, kept by the parent for every subsample (one
            # copy; each subsample copies its rows of them: int64 indices had cost twice the
            # bytes, bootstrap of mutual_knn over 23 x 7 layers 2.3-2.5 s against 1.8 s)
            values, indices = zip(*(parent._search(l, depth, exclude_self) for l in range(len(parent))))
            return torch.stack(values), torch.stack(indices).to(torch.int32)

        deep = parent.memo(("knn-stack", depth, exclude_self), deep_lists)
        values, indices, short = restrict_lists(*deep, rows, parent.n, k, complete=depth >= parent_kmax)
        values, indices = ties_in_index_order(values, indices)  # a subset's rows need not be in the parent's order
        for l, redo in enumerate(short):
            if bool(redo.any()):  # too few subset members in a row's list, or a tie past it: search afresh
                values[l], indices[l] = self._search_rows(l, redo.nonzero().squeeze(1), k, exclude_self,
                                                          values[l], indices[l])
            if ("knn", l, k, exclude_self, "exact") not in self._memo:
                self._memo[("knn", l, k, exclude_self, "exact")] = self.settled(l, values[l], indices[l], exclude_self)
        return self._memo[("knn", layer, k, exclude_self, "exact")]

    def _search_rows(self, layer: int, redo: torch.Tensor, k: int, exclude_self: bool,
                     values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``values``/``indices`` ``(m, k)`` of a subset with the rows ``redo`` searched afresh."""
        assert self._parent is not None and self._rows is not None
        whole = self._parent.cached_gram(layer)
        block = (whole.index_select(0, self._rows[redo]).index_select(1, self._rows) if whole is not None
                 else self.layers[layer].index_select(0, redo) @ self.layers[layer].T)
        if exclude_self:
            block[torch.arange(redo.numel(), device=block.device), redo] = float("-inf")
        v, i = ranked_topk(block, k, ordered=True)
        values, indices = values.clone(), indices.clone()
        values[redo], indices[redo] = v, i
        return values, indices

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this representation holds: its layers, cached Grams, neighbour lists
        and encodings (``memo``), each buffer counted once (a view counts its whole buffer). On a
        subset, not its parent's. What keeping it alive costs (``tasks.alignment.PreparedModel``)."""
        return held_bytes(self)


def held_bytes(obj: Any) -> int:
    """Bytes of the tensors and numpy arrays reachable from ``obj`` through lists, tuples, dicts,
    dataclasses, plain objects' attributes and representations (their layers, cached Grams, lists
    and encodings; a subset's rows it copied, not its parent's), each buffer counted once, whole (a
    view counts the buffer it views)."""
    seen_buffers: dict[int, int] = {}
    seen_objects: set[int] = set()
    todo = [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen_objects or item is None or isinstance(item, (str, bytes, int, float, bool)):
            continue
        seen_objects.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen_buffers[storage.data_ptr()] = max(seen_buffers.get(storage.data_ptr(), 0), storage.nbytes())
        elif isinstance(item, np.ndarray):
            base = item
            while isinstance(base.base, np.ndarray):
                base = base.base
            ptr = base.__array_interface__["data"][0]
            seen_buffers[ptr] = max(seen_buffers.get(ptr, 0), base.nbytes)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, Representation):
            todo.extend([item.layers, item._grams, item._memo])
        elif isinstance(item, _RowsOf):  # a subset's rows: the copies it made, not its parent's layers
            todo.append(item._copies)
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, (types.ModuleType, type)) and not callable(item):
            todo.extend(vars(item).values())  # not through a module, class or function an encoding refers to
    return sum(seen_buffers.values())


def check_values(layers: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` unless every ``(N, D_l)`` layer has ``N >= 2``, ``D_l >= 1``, only
    finite values, two rows that differ (a constant layer) and values within the computation
    dtype's range here (:func:`check_value_range`)."""
    n = int(layers[0].shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 paired samples, got N={n}")
    for l, x in enumerate(layers):
        if x.shape[1] == 0:
            raise ValueError(f"layer {l} has width 0")
    peaks, constant = _value_stats(layers)  # one device sync for every layer
    if not all(math.isfinite(p) for p in peaks):
        check_finite(layers)
    check_value_range(layers, peaks)
    if any(constant):
        l = constant.index(True)
        raise ValueError(f"layer {l} is constant (all {n} rows identical): every metric of it is 0/0 or ties only, "
                         "a meaningless number; leave the layer out")


def _value_stats(layers: Sequence[torch.Tensor]) -> tuple[list[float], list[bool]]:
    """``max |x|`` (NaN or inf where the layer holds one: ``aminmax`` propagates NaN, so a finite
    peak means finite values) and whether all rows are equal (a
    constant layer), per ``(N, D_l)`` layer, with one transfer to the host. Same-width layers are
    compared a stack at a time (``layer_stacks``) when they are views of one stacked tensor, or,
    on a GPU, copied into one (kernel launches, not bytes, cost there); else layer by layer.
    Off a GPU the peaks are always taken a layer at a time: ``aminmax`` along a dimension of a
    stack took 8.5 ms for 13 layers of 1024 x 768 (2 threads) against 1.1 ms for the same
    layers one by one, so a ``(L, N, D)`` array was checked 5x slower than a list of layers."""
    peaks: list[torch.Tensor | None] = [None] * len(layers)
    constant: list[torch.Tensor | None] = [None] * len(layers)
    for stack in layer_stacks(layers):
        group = [layers[l] for l in stack]
        batched = batched_device(group[0].device)
        x = stacked_view(group)
        if x is None and batched and len(group) > 1:
            x = torch.stack(group)
        if x is not None and batched:
            lo, hi = torch.aminmax(x.reshape(len(group), -1), dim=1)  # NaN propagates
            peak = torch.maximum(lo.abs(), hi.abs())
        else:
            peak = torch.stack([torch.stack(torch.aminmax(z)).abs().amax() for z in group])
        same = _all_rows_equal(x) if x is not None else torch.stack([_all_rows_equal(z[None])[0] for z in group])
        for s, l in enumerate(stack):
            peaks[l], constant[l] = peak[s], same[s]
    stats = torch.stack([torch.stack(peaks).to(torch.float64), torch.stack(constant).to(torch.float64)]).tolist()
    return stats[0], [bool(c) for c in stats[1]]


def _all_rows_equal(x: torch.Tensor) -> torch.Tensor:
    """``(G,)`` bool: whether all rows of each ``(N, D)`` slice of ``x`` ``(G, N, D)`` are equal.
    Off a GPU only the slices whose first two rows are equal are compared whole (a layer that is
    not constant almost always shows it there; the whole comparison was 18 of the 26 ms of the
    engine's input checks at N=1024, 13 layers of width 768 a side); on a GPU one comparison of
    the stack, with no transfer to decide."""
    if batched_device(x.device):
        return (x == x[:, :1]).reshape(len(x), -1).all(dim=1)
    same = (x[:, 1] == x[:, 0]).all(dim=1)
    for s in same.nonzero().flatten().tolist():
        same[s] = bool((x[s] == x[s, :1]).all())
    return same


def layer_stacks(layers: Sequence[torch.Tensor], size: int | None = None, max_elements: int = BATCH_ELEMENTS,
                 consecutive: bool = False) -> list[list[int]]:
    """Indices of ``layers`` in stacks of one shape (and dtype and device), in order of first
    appearance, each stack of at most ``max_elements`` elements of ``size`` each (default: a
    layer's own size; at least one layer per stack), a shape's layers split evenly. With
    ``consecutive``: stacks of consecutive layers only, so that they come in layer order."""
    groups: list[tuple[Any, list[int]]] = []
    for l, x in enumerate(layers):
        key = (tuple(x.shape), x.dtype, x.device)
        same = [idx for k, idx in (groups[-1:] if consecutive else groups) if k == key]
        if same:
            same[0].append(l)
        else:
            groups.append((key, [l]))
    out = []
    for _, idx in groups:
        each = layers[idx[0]].numel() if size is None else size
        per = max(1, max_elements // max(1, each))
        count = -(-len(idx) // per)
        step = -(-len(idx) // count)
        out.extend(idx[i:i + step] for i in range(0, len(idx), step))
    return out


def check_value_range(layers: Sequence[torch.Tensor], peaks: Sequence[float]) -> None:
    """Raise ``ValueError`` naming the first layer whose values are out of its computation dtype's
    range here: a squared row norm above ``FLOAT32_MAX_SQ_ROW_NORM`` (float32) or
    ``FLOAT64_MAX_SQ_ROW_NORM`` (float64), or a nonzero ``peak^2`` below ``MIN_SQ_PEAK``;
    ``peaks`` ``max |x|`` per layer. A layer with ``D_l * peak^2`` within the upper limit passes
    at no cost (the usual case); only the others have their row norms measured (in float64)."""
    for l, (x, peak) in enumerate(zip(layers, peaks)):
        name = str(x.dtype).replace("torch.", "")
        smallest = MIN_SQ_PEAK.get(x.dtype)
        if smallest is not None and 0 < peak < math.sqrt(smallest):  # (peak * peak can underflow to 0)
            raise ValueError(
                f"layer {l} has values of magnitude at most {peak:.3g}, below {name}'s range here, 2^{math.log2(smallest) / 2:.0f} "
                f"= {math.sqrt(smallest):.3g}: products of them underflow (distances tie, neighbour lists and kernels "
                "are wrong); scale the features (prepare() gives unit rows)"
                + (" or pass them as float64" if x.dtype == torch.float32 else ""))
        limit = _MAX_SQ_ROW_NORM.get(x.dtype)
        if limit is None or peak * peak * x.shape[1] <= limit:
            continue
        norm = peak * math.sqrt(max_sq_row_norm(x / peak))  # scaled: a float64 norm of ~1e154 squares to inf
        if norm > math.sqrt(limit):
            raise ValueError(
                f"layer {l} has rows of norm up to {norm:.3g}, above {name}'s limit here, 2^{math.log2(limit) / 2:.0f} "
                f"= {math.sqrt(limit):.3g}: its {name} Gram matrix and kernels would "
                "overflow (NaN or wrong scores); scale the features (prepare() gives unit rows)"
                + (" or pass them as float64" if x.dtype == torch.float32 else ""))


def max_sq_row_norm(x: torch.Tensor, block: int = SQ_ROW_NORM_BLOCK) -> float:
    """``max_i |x_i|^2`` of ``x`` ``(N, D)``, summed in float64 a block of rows at a time."""
    rows = max(1, block // max(1, x.shape[1]))
    return max(float((x[i:i + rows].to(torch.float64) ** 2).sum(1).max()) for i in range(0, x.shape[0], rows))


def offset_is_small(gram: torch.Tensor, ratio: float = CENTRED_FROM_GRAM_MAX_RATIO) -> bool:
    """Whether the rows whose ``(N, N)`` Gram is ``gram`` have ``|m|^2 <= ratio * mean_i |x_i - m|^2``
    (``m`` the mean row): ``|m|^2 = sum(G) / N^2`` and ``mean_i |x_i|^2 = trace(G) / N``, summed
    in float64. A spread lost to rounding (zero or negative) is not small."""
    n = gram.shape[0]
    mean_sq = float(gram.sum(dim=1).to(torch.float64).sum()) / (n * n)
    spread = float(torch.diagonal(gram).to(torch.float64).sum()) / n - mean_sq
    return spread > 0 and mean_sq <= ratio * spread


def _is_float64(x: ArrayLike) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dtype == torch.float64
    return np.asarray(x).dtype == np.float64


def as_representation(xs: "ArrayLike | Sequence[ArrayLike] | Representation",
                      device: str | torch.device | None = None) -> Representation:
    """Wrap raw features in a ``Representation``; pass an existing one through unchanged."""
    if isinstance(xs, Representation):
        if device is not None and torch.device(device).type != xs.device.type:
            raise ValueError(f"representation lives on {xs.device}, asked for {device}")
        return xs
    return Representation(xs, device=device)


class _RowsOf(Sequence[torch.Tensor]):
    """The rows ``rows`` of each layer of ``layers``, copied on first access and kept."""

    def __init__(self, layers: Sequence[torch.Tensor], rows: torch.Tensor) -> None:
        self._layers, self._rows = layers, rows
        self._copies: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, layer: int | slice) -> Any:  # type: ignore[override]
        """One layer's rows (an int, or anything ``operator.index`` takes: ``np.int64``), or a
        list of them for a slice, as a list of layers gives (an ``Engine`` may slice them)."""
        if isinstance(layer, slice):
            return [self[l] for l in range(len(self))[layer]]
        try:
            layer = range(len(self))[operator.index(layer)]
        except TypeError:
            raise TypeError(f"layer index must be an int or a slice, got {type(layer).__name__}") from None
        if layer not in self._copies:
            self._copies[layer] = self._layers[layer].index_select(0, self._rows)
        return self._copies[layer]

    def __iter__(self):
        return (self[l] for l in range(len(self)))
