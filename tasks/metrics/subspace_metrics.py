"""Subspace metrics: ``svcca`` (paper), ``procrustes`` and ``linear_regression`` (beyond the paper).

All per-layer work (standardisation, singular vectors) is done once in float64; pairs only need
small products of the cached bases, and permutations re-index their rows. Scores are float64
whatever the features' dtype, so ``calibrate`` counts ties at float64's rounding (``tie_rtol``).

``svcca`` (Raghu et al. 2017, the paper's ``svcca``): each layer is centred and divided by its
per-feature standard deviation (``ddof=1``, ``+1e-8``); its top-``cca_dim`` left singular vectors
``U`` (``N x cca_dim``, orthonormal, centred) are computed exactly (eigendecomposition of the
smaller of ``Z^T Z`` / ``Z Z^T`` in float64); the score is the mean canonical correlation between
``U_x`` and ``U_y``, i.e. the mean singular value of ``U_x^T U_y``.
The paper instead takes ``torch.svd_lowrank`` (randomised, a few power iterations: an
approximation of the same subspace that changes from run to run), fits sklearn's iterative
``CCA`` and adds ``1e-10`` Gaussian noise before ``np.corrcoef``; here the result is deterministic
and exact up to float64 rounding.

``procrustes``: ``||X_c^T Y_c||_* / (||X_c||_F ||Y_c||_F)`` with column-centred features: the
orthogonal-Procrustes similarity (``1 - d^2/2`` for the Procrustes distance between the
Frobenius-normalised representations); in ``[0, 1]``, symmetric, invariant to rotations and
isotropic scaling.

``linear_regression``: the in-sample ``R^2`` of the least-squares (optionally ridge,
``ridge >= 0``, finite) prediction of the centred ``y`` from the centred ``x``:
``R^2 = sum_i (2 f_i - f_i^2) ||u_i^T Y_c||^2 / ||Y_c||^2`` with ``X_c = U S V^T`` and
``f_i = s_i^2 / (s_i^2 + ridge)``. Not symmetric. With ``ridge=0`` and ``rank(X_c) = N - 1``
(width >= N - 1) it is trivially 1; use ``ridge`` for wide layers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from .engine import TIE_RTOL, Engine
from .representation import Representation


#: Below this ratio ``s / s_max`` the eigenproblem of :func:`left_singular` resolves a singular
#: direction only to ~``eps (s_max / s)^2`` (1e-8 relative here at float64): SVCCA then takes its
#: basis from the exact SVD (an input with s_min / s_max = 1.5e-7 scored 2.3e-5 off).
EIGH_ACCURATE_RTOL = 1e-4

#: ``svcca``'s singular values ``cca_dim`` and ``cca_dim + 1`` of a layer tie when their gap is
#: at most this many times the input's machine epsilon (``input_eps``) times the largest one,
#: and never less than ``CUT_TIE_MIN_RTOL`` (above the float64 eigenproblem's own error on the
#: directions it resolves): the top-``cca_dim`` subspace is then not the data's but the
#: rounding's (or the SVD's) choice.
CUT_TIE_EPS = 8
CUT_TIE_MIN_RTOL = 1e-8


def left_singular(z: torch.Tensor, r: int | None = None, rtol: float = 1e-7, exact: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top left singular vectors/values of ``z`` ``(N, D)`` float64 via a symmetric eigenproblem
    on the smaller of ``z^T z`` and ``z z^T`` (fast; it squares the condition number, so only
    directions with ``s >= rtol * s_max``, ``rtol >= 1e-7``, are resolved: fine for the top
    directions), or with ``exact`` by an SVD of ``z`` itself (5-10x slower; resolves
    ``s`` down to ``max(N, D) * eps * s_max``, numpy's least-squares cutoff, when ``rtol`` is that).

    Returns ``(U (N, r'), s (r',))`` in decreasing order; ``r' <= r`` is the numerical rank
    (singular values below ``rtol * s_max`` are dropped).
    """
    if exact:
        u, s, _ = torch.linalg.svd(z, full_matrices=False)
        keep = s > (float(s[0]) if s.numel() else 0.0) * rtol
        u, s = u[:, keep], s[keep]
        return (u[:, :r], s[:r]) if r is not None else (u, s)
    feature_side = z.shape[1] <= z.shape[0]
    w, v = torch.linalg.eigh(z.T @ z if feature_side else z @ z.T)
    w, v = w.flip(0), v.flip(1)
    top = float(w[0]) if w.numel() else 0.0
    keep = w > max(top, 0.0) * rtol * rtol
    w, v = w[keep], v[:, keep]
    if r is not None:
        w, v = w[:r], v[:, :r]
    s = w.sqrt()
    return ((z @ v) / s if feature_side else v), s


def input_eps(x: torch.Tensor) -> float:
    """Machine epsilon of the precision a layer's values were given in, for rank cutoffs.

    float32's for a float32 layer (float16/bfloat16 inputs are computed in float32) and for a
    float64 layer every value of which is a float32 number (a float32 layer upcast because the
    partner side or another layer of its side is float64); float64's otherwise. Rounding a
    low-rank layer to float32 adds full-rank noise of relative size ~1e-7 whose directions are
    not signal: a float64 cutoff kept them (R^2 0.31 instead of 0.04).
    """
    if x.dtype == torch.float64 and not torch.equal(x.to(torch.float32).to(torch.float64), x):
        return torch.finfo(torch.float64).eps
    return torch.finfo(torch.float32).eps


@dataclass
class BasisState:
    """Per-layer float64 factors, ``(N, r_l)`` each; ``extra`` holds metric-specific pieces."""

    bases: list[torch.Tensor]
    extra: list[Any]


def check_ridge(ridge: Any) -> float:
    """``ridge`` as a float; ``ValueError`` unless it is a finite real number ``>= 0`` (NaN passed
    a ``ridge < 0`` test and made every score NaN)."""
    if (isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge)
            or ridge < 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


class Float64Engine(Engine):
    """An engine whose scores are float64 whatever the features' dtype (the layers are cast to
    float64 before any arithmetic): ``calibrate``'s tie tolerance is float64's rounding."""

    def tie_rtol(self, params: dict[str, Any]) -> float:
        """``TIE_RTOL[torch.float64]``: float32's ``1e-5`` counted null draws up to ``1e-5``
        below the observed value as ties (p 0.7702 instead of 0.7552 for ``linear_regression``
        of float32 features, N=6000, 1000 permutations)."""
        return TIE_RTOL[torch.float64]


class SvccaEngine(Float64Engine):
    """``svcca`` with parameter ``cca_dim`` (default 10)."""

    encode_params = ("cca_dim",)
    variant = "svcca"

    def encode(self, rep: Representation, params: dict[str, Any]) -> BasisState:
        r = int(params.get("cca_dim", 10))
        bases = []
        for l, x in enumerate(rep.layers):
            if r < 1 or r > min(x.shape):
                raise ValueError(f"cca_dim must be in [1, min(N, D)] = [1, {min(x.shape)}] "
                                 f"for layer {l}, got {r}")
            z = x.to(torch.float64)
            z = z - z.mean(0)
            z = z / (z.std(0) + 1e-8)
            # numerical rank as numpy's matrix_rank counts it at the input's precision (float32
            # rounding noise of a rank-4 layer with an offset of 100 passed as rank >= 10), never
            # below the eigenproblem's own resolution 1e-7
            rtol = max(1e-7, max(z.shape) * input_eps(x))
            u, s = left_singular(z, r + 1, rtol=rtol)  # one value past the cut: is the cut a tie?
            if s.numel() < r or float(s[r - 1]) < EIGH_ACCURATE_RTOL * float(s[0]):
                # a kept direction the eigenproblem resolves only to ~eps (s_max / s)^2 (or one it
                # may have lost near the cutoff): SVCCA weighs every direction alike, so take the
                # basis from an SVD of z itself
                u, s = left_singular(z, r + 1, rtol=rtol, exact=True)
            if u.shape[1] < r:
                raise ValueError(f"layer {l} has rank {u.shape[1]} < cca_dim={r}")
            check_cut(l, s, r, max(CUT_TIE_MIN_RTOL, CUT_TIE_EPS * input_eps(x)))
            bases.append(u[:, :r])
        return BasisState(bases, [None] * len(bases))

    def permute(self, state: BasisState, perm: torch.Tensor, inv: torch.Tensor) -> BasisState:
        return BasisState([u.index_select(0, perm) for u in state.bases], state.extra)

    def matrix(self, a: BasisState, b: BasisState, params: dict[str, Any]) -> torch.Tensor:
        ua, ub = torch.stack(a.bases), torch.stack(b.bases)  # (L, N, r)
        cross = torch.einsum("anr,bns->abrs", ua, ub)
        return torch.linalg.svdvals(cross).clamp(max=1.0).mean(-1)


def check_cut(layer: int, s: torch.Tensor, r: int, rtol: float) -> None:
    """``ValueError`` naming ``layer`` when its singular values ``s`` (decreasing, float64; the
    top ``r`` and the next one if the layer has it) tie at the cut after the ``r``-th: the gap is
    at most ``rtol`` times the largest. The top-``r`` subspace is then not unique (one-hot rows
    of balanced classes: every singular value equal), and any basis of it that an SVD returns
    scores differently (0.075 here against 0.28 from numpy's SVD of the same layer)."""
    if s.numel() <= r:
        return
    top, last, nxt = float(s[0]), float(s[r - 1]), float(s[r])
    if last - nxt <= rtol * top:
        raise ValueError(
            f"layer {layer}: its standardised singular values {r} and {r + 1} tie at the cca_dim cut "
            f"({last:.9g} and {nxt:.9g}, within {rtol:.0e} of the largest, {top:.9g}): its top-{r} "
            f"subspace is not unique, so svcca would score an arbitrary choice of it; use another cca_dim")


class ProcrustesEngine(Float64Engine):
    """``procrustes`` (no parameters)."""

    variant = "procrustes"

    def encode(self, rep: Representation, params: dict[str, Any]) -> BasisState:
        bases = []
        for x in rep.layers:
            z = x.to(torch.float64)
            z = z - z.mean(0)
            z = z / z.norm().clamp_min(1e-300)
            if z.shape[1] > z.shape[0]:  # same Gram, fewer columns: z = R^T Q^T, so z^T y = Q (R y)
                # has the singular values of R y; a QR is exact to rounding, where the Gram's
                # eigenvectors (left_singular) dropped directions below 1e-7 s_max (3e-8 off on
                # float32-rounded low-rank layers)
                z = torch.linalg.qr(z.T, mode="r")[1].T
            bases.append(z)
        return BasisState(bases, [None] * len(bases))

    def permute(self, state: BasisState, perm: torch.Tensor, inv: torch.Tensor) -> BasisState:
        return BasisState([u.index_select(0, perm) for u in state.bases], state.extra)

    def matrix(self, a: BasisState, b: BasisState, params: dict[str, Any]) -> torch.Tensor:
        out = torch.empty((len(a.bases), len(b.bases)), dtype=torch.float64,
                          device=a.bases[0].device)
        for i, x in enumerate(a.bases):
            for j, y in enumerate(b.bases):
                # the nuclear norm from singular values, not sqrt(eigenvalues of m m^T): each
                # near-zero eigenvalue's rounding noise became ~1e-8 (procrustes(x, x) = 1 + 7e-7)
                out[i, j] = torch.linalg.svdvals(x.T @ y).sum()
        return out


class RegressionEngine(Float64Engine):
    """``linear_regression`` with parameter ``ridge`` (default 0): R^2 of y predicted from x."""

    variant = "linear_regression"
    encode_params = ()  # the bases do not depend on ``ridge``: shared by every ridge value

    def encode(self, rep: Representation, params: dict[str, Any]) -> BasisState:
        bases, extra = [], []
        for x in rep.layers:
            z = x.to(torch.float64)
            z = z - z.mean(0)
            # least squares keeps every direction the input's precision resolves (numpy's lstsq
            # cutoff max(N, D) eps s_max, eps of the input: float32's for float32 values, whose
            # rounding noise is not signal): the Gram eigenproblem lost those below 1e-7 s_max
            # (R^2 0.004 where lstsq gives 0.993); a float64 eps on float32 values kept the noise
            # (R^2 0.31 instead of 0.04 for a rank-16 width-128 layer and unrelated targets)
            u, s = left_singular(z, rtol=max(z.shape) * input_eps(x), exact=True)
            bases.append(u)
            extra.append((s, z / z.norm().clamp_min(1e-300)))
        return BasisState(bases, extra)

    def permute(self, state: BasisState, perm: torch.Tensor, inv: torch.Tensor) -> BasisState:
        return BasisState([u.index_select(0, perm) for u in state.bases],
                          [(s, y.index_select(0, perm)) for s, y in state.extra])

    def matrix(self, a: BasisState, b: BasisState, params: dict[str, Any]) -> torch.Tensor:
        ridge = check_ridge(params.get("ridge", 0.0))
        out = torch.empty((len(a.bases), len(b.bases)), dtype=torch.float64,
                          device=a.bases[0].device)
        for i, (u, (s, _)) in enumerate(zip(a.bases, a.extra)):
            f = s * s / (s * s + ridge)
            w = 2 * f - f * f
            for j, (_, yn) in enumerate(b.extra):
                out[i, j] = (w * ((u.T @ yn) ** 2).sum(1)).sum()
        return out


def register() -> None:
    from .registry import register_metric

    register_metric("svcca", engine=SvccaEngine(), bounds=(0.0, 1.0), symmetric=True,
                    locality="global", defaults={"cca_dim": 10}, overwrite=True,
                    description="mean canonical correlation of top-cca_dim SVD subspaces (paper; "
                                "exact deterministic SVD)")
    register_metric("procrustes", engine=ProcrustesEngine(), bounds=(0.0, 1.0), symmetric=True,
                    locality="global", overwrite=True,
                    description="orthogonal Procrustes similarity ||Xc^T Yc||_* / (||Xc|| ||Yc||)")
    register_metric("linear_regression", engine=RegressionEngine(), bounds=(0.0, 1.0),
                    symmetric=False, locality="global", defaults={"ridge": 0.0}, overwrite=True,
                    description="R^2 of predicting y from x by (ridge) least squares")
