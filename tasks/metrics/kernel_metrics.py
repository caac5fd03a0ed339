"""CKA family (``cka``, ``unbiased_cka``, ``cka_rbf_median``): all layer pairs from per-layer kernels.

``CKA(K, L) = HSIC(K, L) / (sqrt(HSIC(K, K) HSIC(L, L)) + 1e-6)`` exactly as the paper's ``cka``
(HSIC un-normalised, see ``hsic.py``). Kernels: ``ip`` (``K = X X^T``) or ``rbf``
(``K = exp(-||x_i - x_j||^2 / (2 sigma^2))``, distances from the Gram matrix of the column-centred
features, so translation invariant; diagonal exactly 0);
``rbf_sigma='median'`` uses, per layer, the median of the pairwise distances (``i < j``; numpy's median convention).
``cka_rbf_median`` is that kernel and width by definition: it refuses any other (``FIXED_PARAMS``).

Two exact evaluation paths:

- Gram path (``N <= Representation.keep_gram_max_n`` or any RBF kernel): each layer stored as the
  packed upper triangle (``triangle.py``) of its centred kernel (biased) or of its zero-diagonal
  kernel plus row sums (unbiased); every layer pair's HSIC comes from one matrix product
  ``(M, La)^T @ (M, Lb)`` with ``M = N(N-1)/2``, and a sample permutation is one gather;
  ``null_matrices`` gathers 8 permutations per block of positions and multiplies once.
- Feature path (linear kernel, large ``N``): ``<Kc, Lc> = ||Xc^T Yc||_F^2`` and the unbiased terms
  from ``X^T 1`` and row norms, ``O(N D_a D_b)`` per pair and no ``N^2`` memory.

Each side's path follows its own ``Representation`` (``keep_gram``). When a linear-kernel pair
mixes them (a ``Representation`` with its own ``keep_gram_max_n`` against raw arrays or another
one), the Gram-path side is also encoded on the feature path (kept with its Gram encoding, a few
``(N, D)`` arrays) and the pair is computed there: exact, and no side gets ``N^2`` memory it
was not given.

Unbiased HSIC in float32: its three terms are each of order ``N^2`` times the kernel's mean and
nearly cancel, so a kernel with a large common part (features all pointing one way: mean cosine
0.99) lost 3 digits (1.2e-3 on scores, more on permutation nulls). The estimator is exactly
invariant to translating the features and to adding a constant to the kernel, so the linear
kernel is built from centred features (or ``H K H``) and every kernel's off-diagonal mean is
subtracted before it is stored in float32.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import check_real
from .engine import Engine
from .hsic import check_self_hsic, unbiased_from_parts, unbiased_terms_size
from .representation import BATCH_ELEMENTS, Representation, layer_stacks
from .gram import batched_device, center_gram_, centre_columns
from .triangle import index_dtype, pack, permuted_positions, row_major_positions, source_positions, triangle_pairs

EPS = 1e-6  # the paper's denominator epsilon
#: elements of one gathered block (positions x permutations x layers) in ``permuted_hsic``
NULL_BLOCK_ELEMENTS = 1 << 21
#: permutations gathered together in ``permuted_hsic``
NULL_PERMUTATIONS = 8
#: entries of a packed row squared and summed at once in ``_sq_norms`` (one float64 buffer, in
#: cache: 13 packed kernels at N=1024 took 2.5 ms against 5.9 ms in chunks of 1 << 16, 2 threads)
SQ_NORM_CHUNK = 1 << 13
#: packed-kernel positions per float64 chunk of the cross-HSIC products (``_cross_dots``)
CROSS_DOT_CHUNK = 1 << 16
#: parameters a variant fixes by its definition: ``cka_rbf_median`` is RBF CKA with the median
#: width, and another value scored another metric under its name (``kernel_metric='ip'``: linear
#: CKA), so one is refused (``CkaEngine.check_fixed``)
FIXED_PARAMS: dict[str, dict[str, str]] = {"cka_rbf_median": {"kernel_metric": "rbf", "rbf_sigma": "median"}}


@dataclass
class GramState:
    """Per-layer kernels of the Gram path: ``upper`` ``(L, M)`` packed strict upper triangles
    (``triangle.pack``) of the centred kernels (biased) or kernels (unbiased); ``diag`` ``(L, N)``
    their diagonals (biased only; the unbiased estimator zeroes them); ``rows`` ``(L, N)`` /
    ``tot`` ``(L,)`` float64 row sums and total of the zero-diagonal kernels (unbiased only);
    ``self_hsic`` ``(L,)`` float64; ``self_size`` ``(L,)`` the size of its terms (unbiased only,
    ``hsic.unbiased_terms_size``; unset on permuted states); ``scale`` ``(L,)`` a power of two
    ``<= 1`` per layer that brings its stored entries (``upper`` and ``diag``) to at most 1 in
    size: ``permuted_hsic`` multiplies the partner's float32 entries by it, which is exact, so that
    float32 products of two sides' kernel values cannot overflow (unscaled, finite float32
    features of row norms ~1e10 gave NaN null draws)."""

    upper: torch.Tensor
    self_hsic: torch.Tensor
    n: int
    unbiased: bool
    diag: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    tot: torch.Tensor | None = None
    self_size: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    #: linear kernel: the layers it encodes (unpermuted), so that the pair can move to the feature
    #: path against a feature-path partner (``CkaEngine.same_path``), and that encoding once made
    source: Any = field(default=None, repr=False, compare=False)
    features: "FeatureState | None" = field(default=None, repr=False, compare=False)


@dataclass
class FeatureState:
    """Linear-kernel layers as features. ``feats``: ``(N, D_l)`` each (centred when biased);
    ``sq`` ``(L, N)`` squared row norms, ``rows`` ``(L, N)`` kernel row sums without diagonal,
    ``tot`` ``(L,)`` (unbiased only); ``self_hsic`` ``(L,)`` float64; ``self_size`` as
    ``GramState``'s."""

    feats: list[torch.Tensor]
    self_hsic: torch.Tensor
    n: int
    unbiased: bool
    sq: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    tot: torch.Tensor | None = None
    self_size: torch.Tensor | None = None


def shifted_rbf_and_width(gram: torch.Tensor, sigma: float | str) -> tuple[torch.Tensor, float, float]:
    """``(K - c, width, c)``: the RBF kernel ``K = exp(-d^2 / (2 width^2))`` ``(N, N)`` from an
    inner-product Gram (not modified), less a constant ``c`` (0 or 1); ``sigma`` a number or
    ``'median'`` (the width used: ``sigma``, or the median distance). One ``N x N`` buffer beside
    ``gram``: every step is in place (same operations, in the same order, as
    ``exp((sq_i + sq_j - 2 g_ij).clamp(0) / (-2 sigma^2)) - c``, ``- 1`` through ``expm1``).

    Both CKAs ignore a constant added to the kernel (``H`` removes it from the biased HSIC; the
    unbiased one is a U-statistic whose terms cancel it), and the constant decides which digits
    the stored kernel keeps: ``exp`` keeps those of entries near 0 and rounds away those of
    entries near 1, ``expm1`` the opposite. ``c = 1`` where the mean off-diagonal ``d^2 / (2
    width^2)`` is below ``ln 2`` (then the mean off-diagonal entry is above 1/2, by Jensen's
    inequality, not always most entries: a width large against the distances), else 0. ``exp`` alone made float32 biased RBF CKA 1.2e-5 relative off at ``rbf_sigma=100``
    and 5.2e-5 at 300 on unit rows (N=150), and refused the unbiased one at 300 as rounding;
    ``expm1`` alone turned a narrow width's off-diagonal ``1e-7`` into ``-1``.

    Pass the Gram of column-centred features (``Representation.centred_gram``): the squared
    distances are differences of its entries, so an offset shared by the rows (``|m|`` against a
    spread ``s``) would cost a factor ``|m|^2 / s^2`` of rounding (float32, offset 1e4, spread ~4:
    RBF CKA 0.039 instead of 0.772, and a median distance of 0)."""
    sq = torch.diagonal(gram)
    d2 = (sq[:, None] + sq[None, :]).sub_(gram, alpha=2.0).clamp_min_(0.0)  # 2 g is exact
    d2.fill_diagonal_(0.0)
    check_rbf_sigma(sigma)
    n = d2.shape[0]
    if isinstance(sigma, str):
        iu = torch.triu_indices(n, n, 1, device=d2.device)
        s = _median(d2[iu[0], iu[1]].sqrt())
        if s <= 0:
            raise ValueError("median pairwise distance is 0; cannot use the median heuristic")
    else:
        s = float(sigma)
    mean_d2 = float(d2.sum(dtype=torch.float64)) / max(n * (n - 1), 1)
    c = 1.0 if mean_d2 < math.log(2.0) * 2.0 * s * s else 0.0  # (no overflow: s is a Python float)
    scale = 2.0 * s * s
    info = torch.finfo(d2.dtype)
    if s < info.tiny:
        # s itself rounds to 0 in the kernel's dtype: the limit, K = 1 where the distance is 0
        # and exp(-huge) = 0 elsewhere (exact: a positive float32 d2 / 2s^2 is far past underflow)
        return (d2 == 0).to(d2.dtype).sub_(c), s, c
    if not info.tiny <= scale <= info.max:
        # 2 s^2 underflows (or overflows) in the kernel's dtype: divide by s twice, so that a
        # distance of 0 stays 0 (K = 1) instead of 0/0 (the limit K -> I, or K -> all ones)
        d2.div_(s).div_(s).mul_(-0.5)
    else:
        d2.div_(-scale)
    return (d2.expm1_() if c else d2.exp_()), s, c


def check_rbf_sigma(sigma: float | str) -> None:
    """Raise ``ValueError`` unless ``sigma`` is a positive finite number or ``'median'`` (an
    infinite width makes every kernel entry 1: a constant kernel, scored 0)."""
    if isinstance(sigma, str):
        if sigma != "median":
            raise ValueError(f"rbf_sigma must be a positive number or 'median', got {sigma!r}")
    elif not 0 < float(check_real("rbf_sigma", sigma)) < math.inf:  # True is not a width
        raise ValueError(f"rbf_sigma must be a positive finite number, got {sigma}")


def _median(v: torch.Tensor) -> float:
    """Median with the usual (numpy) convention: mean of the two middle values for even sizes."""
    m = v.numel()
    lo = torch.kthvalue(v, (m + 1) // 2).values
    hi = torch.kthvalue(v, m // 2 + 1).values if m % 2 == 0 else lo
    return float((lo + hi) / 2)


class CkaEngine(Engine):
    """CKA with parameters ``kernel_metric`` (``ip``|``rbf``), ``rbf_sigma``, ``unbiased``."""

    encode_params = ("kernel_metric", "rbf_sigma", "unbiased")

    def __init__(self, variant: str = "cka") -> None:
        self.variant = variant

    def quadratic_memory(self, params: dict[str, Any]) -> str | None:
        """``'rbf'`` with an RBF kernel (its packed ``N x N`` kernels); linear CKA may work from
        the features."""
        return "rbf" if params.get("kernel_metric", "ip") == "rbf" else None

    def unbiased(self, params: dict[str, Any]) -> bool:
        """``unbiased_cka`` always uses the unbiased HSIC (as the paper's wrapper forces)."""
        return self.variant == "unbiased_cka" or bool(params.get("unbiased", False))

    def check_fixed(self, params: dict[str, Any]) -> None:
        """``ValueError`` naming the metric and the parameter when ``params`` give a parameter that
        the variant fixes (``FIXED_PARAMS``) another value: ``cka_rbf_median`` with
        ``kernel_metric='ip'`` scored linear CKA, with ``rbf_sigma=1.0`` a fixed width."""
        for name, value in FIXED_PARAMS.get(self.variant, {}).items():
            given = params.get(name, value)
            if not (isinstance(given, str) and given == value):
                raise ValueError(f"{self.variant} is RBF CKA with the median width: {name} must be {value!r}, got "
                                 f"{given!r}; use cka with kernel_metric='rbf' and rbf_sigma=... for another "
                                 "kernel or width")

    def encode_key(self, params: dict[str, Any]) -> tuple:
        if type(self).encode is not CkaEngine.encode:  # a subclass encoding its own way
            return super().encode_key(params)
        # every CkaEngine encodes alike: cka, unbiased_cka, cka_rbf_median and cknna share it
        kernel = params.get("kernel_metric", "ip")
        sigma = params.get("rbf_sigma", 1.0) if kernel == "rbf" else None
        if kernel == "rbf":
            check_rbf_sigma(sigma)  # before it is hashed into the cache key (a list is unhashable)
        self.check_fixed(params)
        return ("cka", kernel, sigma, self.unbiased(params))

    def encode(self, rep: Representation, params: dict[str, Any]) -> GramState | FeatureState:
        kernel = params.get("kernel_metric", "ip")
        unbiased = self.unbiased(params)
        if kernel not in ("ip", "rbf"):
            raise ValueError(f"kernel_metric must be 'ip' or 'rbf', got {kernel!r}")
        if kernel == "rbf":  # before any kernel is built
            check_rbf_sigma(params.get("rbf_sigma", 1.0))
        self.check_fixed(params)
        if unbiased and rep.n < 4:
            raise ValueError("unbiased CKA needs N >= 4")
        if kernel == "ip" and not rep.keep_gram:
            state: GramState | FeatureState = _encode_features(rep.layers, rep.n, unbiased)
        else:
            # one layer's N x N kernel at a time, packed before the next is built (a list of every
            # layer's kernel peaked at 4 GB for RBF CKA at N=5000, 12 x 12 layers)
            state = encode_kernels(self._kernels(rep, kernel, params.get("rbf_sigma", 1.0), unbiased),
                                   unbiased, count=len(rep))
            if kernel == "ip":
                state.source = rep.layers  # the layers, not the representation: no reference cycle
        if unbiased:  # a self-HSIC of 0 (up to rounding) or below: 0/0, refused like a constant layer
            check_self_hsic(state.self_hsic, state.self_size, rep.n, rep.dtype)
        return state

    @staticmethod
    def same_path(a: GramState | FeatureState, b: GramState | FeatureState
                  ) -> tuple[GramState | FeatureState, GramState | FeatureState]:
        """Both sides on one path: a Gram-path side against a feature-path side (two
        representations with different ``keep_gram``, e.g. ``keep_gram_max_n=0`` against raw
        arrays) is re-encoded on the feature path (exact for the linear kernel; kept with the Gram
        encoding). Raises ``ValueError`` where that is impossible (no representation kept)."""
        if isinstance(a, FeatureState) == isinstance(b, FeatureState):
            return a, b

        def features(state: GramState | FeatureState) -> FeatureState:
            if isinstance(state, FeatureState):
                return state
            if state.features is None:
                if state.source is None:
                    raise ValueError(
                    "the two sides use different CKA paths (one keeps N x N Gram matrices, the other "
                    "works from features: their Representations have different keep_gram_max_n) and "
                    "the Gram side cannot be re-encoded; give both the same keep_gram_max_n")
                state.features = _encode_features(state.source, state.n, state.unbiased)
            return state.features

        return features(a), features(b)

    @staticmethod
    def _kernels(rep: Representation, kernel: str, sigma: float | str, unbiased: bool):
        """``(kernel, already_centred, upper_only)`` of each layer, built when asked for. Off a GPU
        every linear kernel is written into one reused buffer: a yielded kernel holds until the next
        is asked for (``encode_kernels`` with ``count`` packs each first; a list of them would not)."""
        if kernel != "rbf":
            # H X X^T H = Xc Xc^T (or H G H of a cached Gram); unbiased: HKH has the same
            # unbiased HSIC as K, without the large common part whose cancellation cost
            # float32 its digits. On a GPU a stack of consecutive same-width layers at a time
            # (G, N, N); elsewhere one layer at a time in one reused buffer, packed while it is
            # still in cache (a fresh stack's pages and its cold reads had cost 48 of the 240 ms
            # of linear CKA at N=1024, 13 x 13 layers of width 768, on a 2-core CPU)
            batched = batched_device(rep.device)
            buffer = None if batched else torch.empty((1, rep.n, rep.n), dtype=rep.dtype, device=rep.device)
            for stack in layer_stacks(rep.layers, rep.n * rep.n, max_elements=BATCH_ELEMENTS if batched else 1,
                                      consecutive=True):
                # the cached Grams that H G H centres carry their offset's rounding: sources of the floor
                yield rep.centred_gram_stack(stack, out=buffer), True, True, [rep.centring_source(l) for l in stack]
            return
        for l in range(len(rep)):
            # distances from the centred features' Gram: a common offset cancels exactly
            try:
                gram = rep.centred_gram(l)
                k, width, c = shifted_rbf_and_width(gram, sigma)  # K - c, a fresh matrix: centred in place
            except ValueError as err:  # the median heuristic on this layer's distances
                raise ValueError(f"layer {l}: {err}") from None
            # unbiased: the distances carry the rounding of the Gram they are differences of (a
            # cached Gram's, offset included, where H G H came from it): the floor's source
            source = None
            if unbiased:
                cached = rep.centring_source(l)
                source = _rbf_rounding_source(gram if cached is None else cached, k, c, width)
            del gram
            yield (k if unbiased else center_gram_(k)), not unbiased, False, [source]
            del k, source

    def permute(self, state: GramState | FeatureState, perm: torch.Tensor, inv: torch.Tensor):
        if isinstance(state, FeatureState):
            return FeatureState(
                [x.index_select(0, perm) for x in state.feats], state.self_hsic, state.n,
                state.unbiased,
                None if state.sq is None else state.sq[:, perm],
                None if state.rows is None else state.rows[:, perm], state.tot)
        # no ``source``: the permuted state no longer encodes the representation's row order
        return GramState(state.upper.index_select(1, permuted_positions(perm)), state.self_hsic,
                         state.n, state.unbiased,
                         None if state.diag is None else state.diag[:, perm],
                         None if state.rows is None else state.rows[:, perm], state.tot,
                         scale=state.scale)

    def null_matrices(self, a, b, perms: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """``(B, La, Lb)`` CKA of ``a`` against ``b`` row-permuted by each of ``perms``.

        Gram path: the permuted packed triangles of several permutations are gathered a block of
        positions at a time (``triangle.source_positions``) from a position-major copy of ``b``
        (one contiguous row of ``Lb`` values per position) and multiplied with ``a``'s block in
        one product, accumulated in float64; the diagonal / row-sum terms are re-indexed. Same
        numbers as ``matrix(a, permute(b, perm))`` up to the float32 sums within a block (the
        observed matrix multiplies in float64, ``_cross_dots``): about 1e-6 relative on a null
        draw at N=3000, ~5e-9 absolute, far below any observed-minus-null gap.
        """
        a, b = self.same_path(a, b)
        if isinstance(a, FeatureState):
            return super().null_matrices(a, b, perms, params)
        hsic = permuted_hsic(a, b, perms)
        return hsic / (torch.sqrt(a.self_hsic[:, None] * b.self_hsic[None, :]) + EPS)

    def hsic(self, a: GramState | FeatureState, b: GramState | FeatureState) -> torch.Tensor:
        """``(La, Lb)`` float64 HSIC of every layer pair (both sides on one path: ``same_path``)."""
        a, b = self.same_path(a, b)
        if isinstance(a, FeatureState):
            return _feature_hsic(a, b)  # type: ignore[arg-type]
        tr = 2.0 * _cross_dots(a.upper, b.upper)
        if not a.unbiased:
            return tr + _cross_dots(a.diag, b.diag)
        return unbiased_from_parts(tr, a.tot[:, None], b.tot[None, :], a.rows @ b.rows.T, a.n)

    def matrix(self, a, b, params: dict[str, Any]) -> torch.Tensor:
        a, b = self.same_path(a, b)
        return self.hsic(a, b) / (torch.sqrt(a.self_hsic[:, None] * b.self_hsic[None, :]) + EPS)


def _cross_dots(a: torch.Tensor, b: torch.Tensor, chunk: int = CROSS_DOT_CHUNK) -> torch.Tensor:
    """``(La, Lb)`` float64 inner products of the rows of ``a`` ``(La, M)`` with those of ``b``
    ``(Lb, M)``, ``chunk`` columns at a time, each chunk's product in float64 (the product of two
    float32 values is exact in float64). One float32 product over the N(N-1)/2 entries of packed
    kernels drifted: CKA of a layer with itself 0.99945 at N=4096 (-5e-4), and the error grew
    with N; the self terms were already float64 sums (``_sq_norms``). Each chunk is converted
    into the same two float64 buffers (``_float64_chunks``)."""
    out = torch.zeros((a.shape[0], b.shape[0]), dtype=torch.float64, device=a.device)
    for ca, cb in _float64_chunks(a, b, chunk=chunk):
        out += ca @ cb.T
    return out


def _sq_norms(rows: torch.Tensor, chunk: int = SQ_NORM_CHUNK) -> torch.Tensor:
    """Squared L2 norms ``(L,)`` of the rows of ``rows`` ``(L, M)``, accumulated in float64 (a
    float32 norm over the N(N-1)/2 entries of a packed kernel drifted: -3.7e-4 relative at 8.4M
    entries, CKA off by 2.6e-4 at N=4096). ``chunk`` entries at a time: each chunk's squares are
    exact in float64 and summed as one dot product per row, then the chunks' sums are added; the
    float64 copy is one chunk, not a whole row (1.1 GiB for 12 packed kernels at N=5000).
    ``linalg.vector_norm`` in float64 lost 4,400 units in the last place over the 500k entries
    of N=1000, enough to turn an unbiased self-HSIC of exactly 0 into -2,200 units of its terms'
    size."""
    out = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for (c,) in _float64_chunks(rows, chunk=chunk):
        out += torch.linalg.vecdot(c, c)
    return out


def _float64_chunks(*mats: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Float64 copies of ``chunk`` columns at a time of each of ``mats`` (``(L_i, M)`` each, same
    ``M``), written into one buffer per matrix that every chunk reuses: a fresh float64 chunk per
    step made the kernel allocate (and the process fault in) new pages each time, 85 ms of
    squaring 13 packed kernels at N=1024 against 2 ms in reused buffers. A yielded chunk is
    overwritten by the next."""
    m = mats[0].shape[1]
    width = min(chunk, m)
    bufs = [torch.empty((x.shape[0], width), dtype=torch.float64, device=x.device) for x in mats]
    for c0 in range(0, m, chunk):
        w = min(chunk, m - c0)
        yield tuple(buf[:, :w].copy_(x[:, c0:c0 + w]) for buf, x in zip(bufs, mats))


def encode_kernels(kernels: Iterable[tuple[Any, ...]], unbiased: bool, count: int | None = None) -> GramState:
    """``GramState`` of symmetric ``(N, N)`` kernels given as ``(kernel, already_centred,
    upper_only)`` (``upper_only``: only entries ``j >= i`` are valid, see ``gram.gram_upper``),
    optionally with a fourth item: per kernel of the stack, the ``(N, N)`` matrix whose entries'
    rounding it carries (a cached Gram it was centred from: ``Representation.centring_source``)
    or None (its own), which sets the floor of the unbiased self-HSIC check (`_formed_terms_size`).

    ``kernels`` may be a generator of ``count`` kernels: each is packed before the next is asked
    for, so memory is the packed triangles plus one kernel (and one centred copy). Kernels are
    not modified. Biased: centred (``H K H``) unless already centred, packed with their
    diagonal. Unbiased: diagonal dropped, row sums of the zero-diagonal kernel kept.
    """
    if count is None:
        kernels = list(kernels)
        count = len(kernels)
    upper = diag = rows = None
    n = l = 0
    formed = None  # unbiased: the terms' size of each kernel as formed (or of its rounding's source)
    for kernel, centred, upper_only, *source in kernels:
        sources = source[0] if source else None
        # a (G, N, N) stack of G layers' kernels, or one (N, N) kernel
        stack = kernel if kernel.dim() == 3 else kernel[None]
        g = int(stack.shape[0])
        if upper is None:  # sizes from the first kernel
            n, dev, dtype = int(stack.shape[1]), stack.device, stack.dtype
            upper = torch.empty((count, n * (n - 1) // 2), dtype=dtype, device=dev)
            if unbiased:
                rows = torch.zeros((count, n), dtype=torch.float64, device=dev)
                formed = torch.zeros(count, dtype=torch.float64, device=dev)
                i, j = triangle_pairs(n, dev)
            else:
                diag = torch.empty((count, n), dtype=dtype, device=dev)
        if l + g > count:
            raise ValueError(f"expected {count} kernels")
        if not unbiased and centred:  # the whole stack packed at once
            pack(stack, out=upper[l:l + g])
            diag[l:l + g] = torch.diagonal(stack, dim1=1, dim2=2)
            l += g
            del kernel, stack
            continue
        for s, k in enumerate(stack.unbind(0)):
            if not unbiased:
                if upper_only:
                    raise ValueError("centring needs the full kernel")
                k = center_gram_(k.clone())
                pack(k, out=upper[l])
                diag[l] = torch.diagonal(k)
            else:
                u = pack(k).to(torch.float64)
                formed[l] = _formed_terms_size(u, i, j, n)
                if sources is not None and sources[s] is not None:
                    formed[l] = torch.maximum(formed[l], _formed_terms_size(pack(sources[s]).to(torch.float64), i, j, n))
                u -= u.mean()  # the unbiased HSIC ignores a constant added to K~: keep float32 values small
                upper[l] = u.to(dtype)
                u = upper[l].to(torch.float64)
                rows[l].index_add_(0, i, u).index_add_(0, j, u)  # K~ row sums from its upper triangle
                del u
            l += 1
        k = None  # (unbound when the stack held no kernel)
        del kernel, stack, k  # free this kernel before the next one is built
    if upper is None or l != count:
        raise ValueError(f"expected {count} kernels")
    if not unbiased:
        self_hsic = 2.0 * _sq_norms(upper) + _sq_norms(diag)  # the sum of all squared entries
        return GramState(upper, self_hsic, n, False, diag=diag, scale=unit_scale(self_hsic, dtype))
    tot = rows.sum(-1)
    tr = 2.0 * _sq_norms(upper)
    rows_dot = (rows * rows).sum(-1)
    return GramState(upper, unbiased_from_parts(tr, tot, tot, rows_dot, n), n, True, rows=rows, tot=tot,
                     self_size=torch.maximum(unbiased_terms_size(tr, tot, tot, rows_dot, n), torch.finfo(dtype).eps * formed),
                     scale=unit_scale(tr, dtype))


def _formed_terms_size(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    """Size (0-d float64) of the unbiased self-HSIC's terms of the zero-diagonal kernel whose
    packed strict upper triangle is ``u`` (float64; ``i``, ``j``: its entries' rows and columns).

    ``encode_kernels`` checks a self-HSIC against the stored kernel's terms (its off-diagonal mean
    taken out), but at least against ``eps`` times this size of the kernel as formed, or of the
    matrix it was centred from: the stored entries carry their rounding, ``eps`` relative to those
    entries. Where the exact kernel's off-diagonal is constant (distinct one-hot rows:
    ``I - 11^T/N``; an exact self-HSIC of 0) the stored one is nothing but that rounding, whose
    self-HSIC is of the order of its own terms' size: such a layer passed the check on the stored
    kernel alone (0.0022 scored in float32 at N=10; through a cached Gram with a common offset,
    ``H G H``, 0.038 at N=20). Its self-HSIC is of the order of ``eps^2`` times this size, below
    the check's ``N eps`` times the floor."""
    rows = torch.zeros(n, dtype=torch.float64, device=u.device).index_add_(0, i, u).index_add_(0, j, u)
    tot = rows.sum()
    return unbiased_terms_size(2.0 * (u * u).sum(), tot, tot, (rows * rows).sum(), n)


def _rbf_rounding_source(gram: torch.Tensor, shifted: torch.Tensor, c: float, width: float) -> torch.Tensor | None:
    """The ``(N, N)`` matrix whose ``eps`` the RBF kernel carries from the Gram ``gram`` its
    distances are differences of (the centred Gram, or the cached Gram it was centred from:
    `Representation.centring_source`), ``shifted`` its ``K - c`` (`shifted_rbf_and_width`,
    ``(N, N)``): ``K_ij (|G_ii| + |G_jj| + 2 |G_ij|) / (2 width^2)``, a
    squared distance's rounding ``eps`` of its Gram entries (offset included) times the
    kernel's slope in it (``width``: the kernel's, `shifted_rbf_and_width`: ``rbf_sigma`` or the
    median distance, not computed again). The floor of the unbiased self-HSIC check
    (`encode_kernels`): equidistant rows plus a common offset (exact self-HSIC 0) passed on the
    rounding alone (unbiased RBF CKA 2.5e-5 in float32); and ``K - 1`` (``c = 1``), unlike ``K``,
    has no rounding of its own at the scale of 1 to hide a flat kernel's. None where
    ``1 / (2 width^2)`` is not finite.
    In the Gram's dtype (a float64 copy and a second median had made the encoding of one
    layer peak 33 MB higher at N=4096, 772 against 739 MB)."""
    twice_square = 2.0 * width * width
    slope = 1.0 / twice_square if twice_square > 0 else math.inf
    if not math.isfinite(slope):
        return None
    sq = torch.diagonal(gram).abs()
    out = gram.abs().mul_(2.0).add_(sq[:, None]).add_(sq[None, :])
    if c:
        out.addcmul_(out, shifted)  # times K = 1 + shifted
    else:
        out.mul_(shifted)
    if slope * float(out.max()) >= torch.finfo(out.dtype).max:  # a width so small that the Gram's dtype overflows
        out = out.to(torch.float64)
    return out.mul_(slope)


def unit_scale(sum_sq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(L,)`` powers of two ``2^-e`` (``e >= 0`` the smallest) with ``2^-e sqrt(sum_sq) <= 1``, in
    ``dtype``: ``sum_sq`` ``(L,)`` float64 bounds the square of every entry of a layer's kernel, so
    the entries times the scale are at most 1 in size (a scale of 1 for a kernel of zeros)."""
    e = torch.ceil(torch.log2(sum_sq.sqrt())).clamp_(min=0)
    return torch.exp2(-e).to(dtype)


def _encode_features(layers: Sequence[torch.Tensor], n: int, unbiased: bool) -> FeatureState:
    """Feature-path encoding (linear kernel) of ``layers`` ``(n, D_l)``."""
    feats: list[torch.Tensor] = []
    if not unbiased:
        feats = [centre_columns(x) for x in layers]
        self_hsic = torch.stack([((x.T @ x).to(torch.float64) ** 2).sum() for x in feats])
        return FeatureState(feats, self_hsic, n, False)
    feats = [centre_columns(x) for x in layers]  # same unbiased HSIC, no common part to cancel
    sq = torch.stack([(x.to(torch.float64) ** 2).sum(1) for x in feats])
    rows = torch.stack([(x @ x.sum(0)).to(torch.float64) for x in feats]) - sq
    tot = rows.sum(-1)
    state = FeatureState(feats, torch.empty(0), n, True, sq, rows, tot)
    full = torch.stack([((x.T @ x).to(torch.float64) ** 2).sum() for x in feats])
    diag = (sq * sq).sum(-1)
    rows_dot = (rows * rows).sum(-1)
    state.self_hsic = unbiased_from_parts(full - diag, tot, tot, rows_dot, n)
    state.self_size = unbiased_terms_size(full + diag, tot, tot, rows_dot, n)
    return state


def _feature_hsic(a: FeatureState, b: FeatureState) -> torch.Tensor:
    out = torch.empty((len(a.feats), len(b.feats)), dtype=torch.float64, device=a.self_hsic.device)
    for i, x in enumerate(a.feats):
        for j, y in enumerate(b.feats):
            out[i, j] = ((x.T @ y).to(torch.float64) ** 2).sum()
    if not a.unbiased:
        return out
    tr = out - a.sq @ b.sq.T
    return unbiased_from_parts(tr, a.tot[:, None], b.tot[None, :], a.rows @ b.rows.T, a.n)


def permuted_hsic(a: GramState, b: GramState, perms: torch.Tensor) -> torch.Tensor:
    """``(B, La, Lb)`` float64 HSIC of ``a`` against ``b`` permuted by each row of ``perms``
    ``(B, N)`` (``b``'s packed triangles read at ``source_positions``; see ``CkaEngine.null_matrices``).
    """
    n, La, Lb = a.n, a.upper.shape[0], b.upper.shape[0]
    m = a.upper.shape[1]
    dev = a.upper.device
    # b's entries times its power-of-two scale (exact; undone in float64 below): a float32 product
    # of a's entries (finite) with them (at most 1) cannot overflow, nor can a block's sum
    scale = b.scale if b.scale is not None else torch.ones(Lb, dtype=b.upper.dtype, device=dev)
    unscale = scale.to(torch.float64)
    # (M, Lb): one position's values of every layer side by side, in row-major order (what
    # ``source_positions`` reads), always a copy (b's cached kernels stay as they are)
    b_t = b.upper.T.index_select(0, row_major_positions(n, dev)).mul_(scale)
    out = []
    for s0 in range(0, perms.shape[0], NULL_PERMUTATIONS):
        ps = perms[s0:s0 + NULL_PERMUTATIONS]
        count = ps.shape[0]
        perms_t = ps.T.contiguous().to(index_dtype(n))
        tr = torch.zeros((La, count * Lb), dtype=torch.float64, device=dev)
        step = max(1, NULL_BLOCK_ELEMENTS // (count * Lb))
        for c0 in range(0, m, step):
            c1 = min(m, c0 + step)
            pos = source_positions(perms_t, c0, c1)  # (C, B)
            block = b_t.index_select(0, pos.view(-1)).view(c1 - c0, count * Lb)
            tr += (a.upper[:, c0:c1] @ block).to(torch.float64)
        tr = 2.0 * tr.view(La, count, Lb).transpose(0, 1) / unscale  # (B, La, Lb)
        if not a.unbiased:
            diag = (b.diag * scale[:, None])[:, ps].transpose(0, 1)  # (B, Lb, N)
            out.append(tr + (a.diag @ diag.transpose(1, 2)).to(torch.float64) / unscale)
        else:
            rows = b.rows[:, ps].transpose(0, 1)  # (B, Lb, N) float64
            out.append(unbiased_from_parts(tr, a.tot[:, None], b.tot[None, :],
                                           a.rows @ rows.transpose(1, 2), n))
    return torch.cat(out)
