"""Alignment of two models' layer-wise features: every metric over every layer pair.

Pure computation on arrays (no Prefect, no storage): the Prefect task in
``tasks.align_task`` joins stored features and publishes what this returns.

Layers on which a score is undefined are excluded, visibly, instead of being scored:

- **degenerate layers** (every metric): a layer whose paired samples are numerically constant
  (rank 0 after centring: e.g. a ViT's CLS token at the embedding layer, the same vector for
  every image) or lie on one line (rank 1: e.g. a width-1 layer, whose L2-normalised rows are
  only ``±1``). k-NN metrics on such a layer rank ties (the order is tie-breaking noise) and
  kernel metrics divide ``0`` by an epsilon; such a score could still win the max over layer
  pairs. The test is relative: the RMS distance of the rows from their mean (rank 0), or from
  their best-fitting line through the mean (rank 1), is at most ``DEGENERATE_RTOL`` times the RMS
  row norm. On L2-normalised rows ``1e-4`` is below what a float32 Gram matrix resolves
  (``1 - d²/2`` with ``d = 1e-4`` rounds to 1), so no layer whose geometry the metrics can see
  is excluded.
- **metric-specific exclusions**: a layer that a metric's engine refuses on its own (e.g.
  ``svcca`` with ``cca_dim`` above the layer's width or rank) is excluded for that metric only.

An excluded layer gets NaN in every layer pair of the ``(La, Lb)`` matrix and takes no part in
the max over layer pairs, in its argmax, in the permutation calibration and in the bootstrap:
the engine only ever sees the layers that remain. ``PairAlignment.excluded_a``/``excluded_b``
say which layers were excluded and why. If every layer of one side is excluded, there is
nothing to align and ``DegenerateFeaturesError`` names the model and each layer's problem.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from contextlib import contextmanager
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tasks import metrics
from tasks.malloc_policy import pin_mmap_threshold
from tasks.memory_available import MEMORY_ENV, available_memory
from tasks.stop_request import raise_if_stopped
from tasks.metrics.representation import KEEP_GRAM_MAX_N, held_bytes

logger = logging.getLogger(__name__)

#: Relative tolerance of the degenerate-layer test (see the module docstring).
DEGENERATE_RTOL = 1e-4
_BLOCK = 4096
#: The most bytes a pair's cached Gram matrices may take (``gram_cache_limit``): 13 + 13 layers
#: at N = 4096 (1.6 GiB) keep theirs; 33 + 25 layers at N = 4096 (3.6 GiB) do not.
GRAM_CACHE_MAX_BYTES = 2 << 30
_SCREEN_ROWS = 256


#: Memory of the metrics whose work is ``O(L N^2)`` at every ``N`` (``rsa_spearman``; the CKA
#: family with an RBF kernel, ``cka_rbf_median``), in bytes per ``N^2`` for float32 layers:
#: ``(per layer, once, once with permutations)``. Per layer: what each layer's encoding keeps for
#: the rest of the pair (RBF: the packed float32 triangle of its kernel, 2; RSA: its float64
#: ranks, 4); once: the peak while one layer's encoding is built (RBF: distances, kernel, centred
#: copy, packing positions; RSA: float64 distances, their ranks and scipy's sort) or the
#: permutations run. Measured as peak RSS above the prepared features at N = 5,000 and 7,000
#: with 1 + 1 and 2 + 2 layers (2-core CPU): RBF 34.5 per N^2 for 1 + 1 layers and +2.0 per
#: further layer, the same with 20 permutations; RSA 39 for 1 + 1, +4.1 per further layer, the
#: same with 20 permutations (its null gathers the permuted ranks a block at a time; it copied
#: every y-layer's ranks per permutation: +7 for 2 + 2 layers, 2 + 12 layers at N = 3,000 1,004
#: MiB against 730 without permutations).
QUADRATIC_MEMORY: dict[str, tuple[float, float, float]] = {"rbf": (2.0, 31.0, 31.0), "rsa": (4.0, 31.0, 31.0)}
#: With permutations, the null's own peak grows with the permuted (y) side's layers, in bytes per
#: ``N^2``: ``(base, per y-layer)``, the peak at least ``base + per_layer * L_y`` (RBF: the
#: position-major float32 copy of the y side's packed kernels, 2 per layer, beside the position
#: tables). Measured as peak RSS above the held encodings, 2 + L_y layers, 20 permutations, one
#: thread: RBF 33.1 (L_y = 8) and 41.7 (12) at N = 3,000, 40.2 (12) at N = 4,000, where the
#: estimate had been 31; 30.4 to 33.2 (L_y = 5) and 32.4 to 34.1 (6) at N = 3,000, above a base
#: of 20 (the null's block temporaries, ~50 MiB whatever N, and the heap's fragments weigh most
#: at small L_y); a base of 25 leaves 1.8 per N^2 above the highest.
QUADRATIC_NULL_MEMORY: dict[str, tuple[float, float]] = {"rbf": (25.0, 2.0)}


#: Seconds between two progress lines of one pair (``PairProgress``); a pair done sooner logs none.
PROGRESS_EVERY_S = 20.0


class PairProgress:
    """Progress of one model pair's permutations and bootstrap resamples, as INFO lines of ``log``
    for an operator watching the run (``tasks.align_task`` passes the run's logger, which the
    Prefect UI and ``prh run`` show), e.g. ``vit x gpt2: cka: 120 of 200 bootstrap resamples done
    (45 s into the pair)``.

    At most one line every ``every_s`` seconds of ``clock`` (default ``PROGRESS_EVERY_S``,
    ``time.monotonic``) for the whole pair, and none before ``every_s`` seconds have passed since
    it was made: a fast pair logs nothing. ``callback`` gives the ``progress`` argument of
    ``metrics.calibrate`` / ``metrics.bootstrap_ci``; it only reads the clock, so no number and no
    random stream changes. It is also a safe point (``raise_if_stopped``): a stopped run, or a
    version another run published meanwhile, ends the pair at its next batch or resample.
    """

    def __init__(self, names: tuple[str, str], log: logging.Logger | logging.LoggerAdapter = logger,
                 every_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.names, self.log, self.clock = names, log, clock
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.started = self.last = clock()

    def callback(self, label: str, what: str) -> Callable[[int, int], None]:
        """``progress(done, total)`` for metric ``label``'s ``what`` (``'permutations'``,
        ``'bootstrap resamples'``): logs ``done of total`` when the interval has passed."""
        def progress(done: int, total: int) -> None:
            raise_if_stopped(f"{self.names[0]} x {self.names[1]}: {label}: {what} ({done} of {total} done)")
            now = self.clock()
            if now - self.last < self.every_s:
                return
            self.last = now
            self.log.info("%s x %s: %s: %d of %d %s done (%.0f s into the pair)", *self.names, label, done, total, what,
                          now - self.started)
        return progress


class DegenerateFeaturesError(ValueError):
    """Every layer of one side is excluded for a metric: nothing to align."""


class AlignmentMemoryError(ValueError):
    """The ``O(L N^2)`` metrics of a pair would need more memory than is available: refused
    before any of them runs (the operating system would otherwise kill the whole run)."""


@dataclass(frozen=True)
class MetricRequest:
    """One metric to compute, with its parameters (paper's names: ``topk``, ``kernel_metric``...)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Short display label, e.g. ``mutual_knn(topk=10)``."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})" if inner else self.name


@dataclass
class PairAlignment:
    """Result of one metric on one model pair.

    ``matrix``: ``(La, Lb) float64`` scores for every layer pair (NaN in the rows/columns of
    excluded layers); ``best``/``best_layers``: max over the remaining layer pairs and its argmax
    (``nan``/``(-1, -1)`` if the engine returned no finite score); ``chance_level``: analytical
    chance score (None if unknown); the calibration fields come from the permutation calibration
    (None when ``permutations == 0``). ``excluded_a``/``excluded_b``: layer index → why that
    layer of model A / model B was left out of this metric.
    """

    metric: MetricRequest
    matrix: np.ndarray
    best: float
    best_layers: tuple[int, int]
    chance_level: float | None
    null_mean: float | None = None
    null_std: float | None = None
    tau: float | None = None
    p_value: float | None = None
    calibrated: float | None = None
    permutations: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    ci_degenerate: bool | None = None
    bootstrap: int = 0
    excluded_a: dict[int, str] = field(default_factory=dict)
    excluded_b: dict[int, str] = field(default_factory=dict)


def prepare_layers(layers: Sequence[np.ndarray], q: float = 0.95, scope: str = "model", exact: bool = False,
                   threshold_from: Sequence[int] | None = None) -> list[np.ndarray]:
    """The paper's preprocessing of a model's layers (``(N, D_l)`` each): outlier clamp at quantile
    ``q``, then L2 rows (``metrics.prepare``).

    ``scope="model"`` is what the paper's ``measure_alignment.py`` does with the features it stores:
    layers of one width form an ``(N, L, D)`` tensor that gets ONE threshold (each sample's
    quantile pools its values over every layer); a model whose layers differ in width is a list,
    and each layer gets its own. ``threshold_from``: the indices of the layers whose values set that
    one threshold (default: all; see :func:`threshold_layers`), which then clamps every layer.
    ``scope="layer"``: one threshold per layer always. ``exact``: the sorted-element threshold
    (the paper's ``--precise``) instead of the mean of per-sample quantiles.
    """
    if scope not in ("model", "layer"):
        raise ValueError(f"outlier scope must be 'model' or 'layer', got {scope!r}")
    if scope == "model" and len(layers) > 1 and len({x.shape for x in layers}) == 1:
        arrays = [np.asarray(x) for x in layers]
        chosen = sorted(set(range(len(arrays)) if threshold_from is None else threshold_from))
        if not chosen or chosen[0] < 0 or chosen[-1] >= len(arrays):
            raise ValueError(f"threshold_from must name some of the {len(arrays)} layers, got {list(threshold_from or [])}")
        if len(chosen) == len(arrays) or q >= 1:
            return metrics.prepare(arrays, q=q, exact=exact, per_layer=False)  # one threshold
        import torch

        from tasks.metrics.preparation import pooled_outlier_threshold

        dtype = torch.float64 if all(x.dtype == np.float64 for x in arrays) else torch.float32  # as metrics.prepare computes
        t = float(pooled_outlier_threshold([torch.as_tensor(arrays[i], dtype=dtype) for i in chosen], q, exact))
        return [np.asarray(metrics.prepare(np.clip(x, -t, t).astype(x.dtype, copy=False), q=1.0)) for x in arrays]
    return [np.asarray(metrics.prepare(x, q=q, exact=exact)) for x in layers]


def threshold_layers(modality: str, n_layers: int) -> list[int] | None:
    """The layers whose values set a model's one outlier threshold (:func:`prepare_layers`'s
    ``threshold_from``): for a vision model every block but not layer 0, the embedding output,
    which the paper's extraction (timm hooks on the blocks) does not store, so its threshold never
    saw it (a ViT's CLS token there is one constant vector, which pulled the threshold down);
    every layer otherwise (the paper's language features start with the embedding output, as
    ours do). None: all layers."""
    return list(range(1, n_layers)) if modality == "vision" and n_layers > 1 else None


def degenerate_layers(layers: Sequence[np.ndarray], rtol: float = DEGENERATE_RTOL) -> dict[int, str]:
    """Layer index → problem, for every layer ``(N, D_l)`` that is constant or rank 1 across samples.

    Works block-wise in float64 (memory: one ``(4096, D)`` block); cost ``O(min(N, 256) D)`` for a
    usual layer, ``O(N D)`` for a degenerate one.
    """
    out = {}
    for index, x in enumerate(layers):
        problem = _degeneracy(np.asarray(x), rtol)
        if problem is not None:
            out[index] = problem
    return out


def _blocks(x: np.ndarray):
    for start in range(0, x.shape[0], _BLOCK):
        yield np.asarray(x[start : start + _BLOCK], dtype=np.float64)


def _degeneracy(x: np.ndarray, rtol: float) -> str | None:
    """Why ``x`` ``(N, D)`` is degenerate (rank <= 1 after centring, relative to its RMS row norm), or None.

    Rows of a degenerate layer are degenerate in any subset, so ``_SCREEN_ROWS`` evenly spaced
    rows are tested first and the whole layer only when they are degenerate: a usual layer
    costs ``O(_SCREEN_ROWS * D)``.
    """
    n = x.shape[0]
    if n == 0 or x.shape[1] == 0:
        return f"no values ({x.shape[0]} samples x width {x.shape[1]})"
    if n > _SCREEN_ROWS:
        screen = np.asarray(x[np.linspace(0, n - 1, _SCREEN_ROWS).astype(np.int64)], dtype=np.float64)
        if _degeneracy_of_rows(screen, rtol) is None:
            return None
    return _degeneracy_of_rows(x, rtol)


def _degeneracy_of_rows(x: np.ndarray, rtol: float) -> str | None:
    n = x.shape[0]
    mean = np.zeros(x.shape[1])
    square = 0.0
    for block in _blocks(x):
        mean += block.sum(axis=0)
        square += float(np.einsum("ij,ij->", block, block))
    mean /= n
    if square == 0.0:
        return f"constant: all {n} samples are zero vectors"
    spread2 = max(square / n - float(mean @ mean), 0.0)  # mean squared distance from the mean
    # recompute the spread directly when cancellation could hide it (rows far from the origin)
    if spread2 <= 1e-6 * square / n:
        spread2 = sum(float(np.einsum("ij,ij->", b - mean, b - mean)) for b in _blocks(x)) / n
    scale2 = square / n
    if spread2 <= rtol**2 * scale2:
        return (f"constant: all {n} samples have the same feature vector (RMS distance from their mean "
                f"{math.sqrt(spread2 / scale2):.1e} of the RMS norm)")
    # Rank 1: the best line through the mean, by power iteration on the centred covariance. An
    # exactly rank-1 layer converges in one step (a nearly rank-1 one in two, the error shrinks by
    # (s2/s1)^2 per step); a layer of rank >= 2 keeps a residual above the tolerance whatever the
    # direction, so stopping early cannot produce a false positive.
    best_row, best_norm = 0, -1.0
    for offset, b in zip(range(0, n, _BLOCK), _blocks(x)):
        norms = ((b - mean) ** 2).sum(axis=1)
        if float(norms.max()) > best_norm:
            best_row, best_norm = offset + int(norms.argmax()), float(norms.max())
    v = x[best_row].astype(np.float64) - mean  # start from the row farthest from the mean
    v /= np.linalg.norm(v)
    for _ in range(2):
        w = np.zeros_like(v)
        for b in _blocks(x):
            c = b - mean
            w += c.T @ (c @ v)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            break
        v = w / norm
    along = sum(float(((b - mean) @ v) @ ((b - mean) @ v)) for b in _blocks(x)) / n
    residual2 = max(spread2 - along, 0.0)
    if residual2 <= rtol**2 * scale2:
        return (f"rank 1: all {n} samples lie on one line (RMS distance from it {math.sqrt(residual2 / scale2):.1e} "
                "of the RMS norm)")
    return None


def alignment_device(requested: str) -> str:
    """The torch device the engine computes on for ``alignment.device`` ``requested``: ``'cpu'``;
    ``'auto'``: ``'cuda'`` where this process sees a CUDA device, else ``'cpu'``; ``'cuda'`` or
    ``'cuda:N'`` as given where this process has that device, else ``ValueError`` naming the
    setting, the host and what torch sees (the pair fails, the run goes on)."""
    if requested == "cpu":
        return "cpu"
    import socket

    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "auto":
        return "cuda" if count else "cpu"
    index = int(requested.partition(":")[2] or 0)
    if index >= count:
        sees = (f"torch sees {count} CUDA device(s) (cuda:0 to cuda:{count - 1})" if count else
                f"torch {torch.__version__} sees no CUDA device" + ("" if torch.backends.cuda.is_built() else " (a CPU-only build)"))
        raise ValueError(f"alignment.device {requested!r}: {sees} in this process (host {socket.gethostname()}); "
                         "use 'auto' to align on a GPU where there is one, else 'cpu'")
    return requested


class PreparedModel:
    """One model's prepared layers over one set of paired samples, and the work every pair of it can
    share: which layers are degenerate, and its ``Representation`` (each layer's Gram matrix,
    neighbour lists and metric encodings, computed once). Passing the same ``PreparedModel`` to
    :func:`align_layers` for several partners computes each of them once per model, not once per
    pair (``tasks.align_task`` keeps one for a model's later pairs); the scores are the same.

    ``layers``: the prepared ``(N, D_l) float32`` arrays (read-only); ``degenerate``: layer index →
    why it is excluded (:func:`degenerate_layers`); ``kept``: the other layers' indices.
    """

    def __init__(self, layers: Sequence[np.ndarray], degenerate: dict[int, str] | None = None) -> None:
        self.layers = list(layers)
        self.degenerate = degenerate_layers(self.layers) if degenerate is None else degenerate
        self.kept = [i for i in range(len(self.layers)) if i not in self.degenerate]
        self._representations: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def n(self) -> int:
        return int(self.layers[0].shape[0]) if self.layers else 0

    def representation(self, keep_gram_max_n: int, device: str = "cpu") -> Any:
        """The ``metrics.Representation`` of the kept layers with that Gram policy on ``device``
        (a torch device name), Grams cached (built once; two threads asking at once wait for one build)."""
        with self._lock:
            rep = self._representations.get((keep_gram_max_n, device))
            if rep is None:
                rep = metrics.Representation([self.layers[i] for i in self.kept], device=device,
                                             keep_gram_max_n=keep_gram_max_n)
                self._representations[(keep_gram_max_n, device)] = rep.cache_grams()
            return rep

    @property
    def expected_nbytes(self) -> int:
        """What it holds once a pair has used it, at least, for the feature cache to admit it by:
        before any pair has, its layers and, where its own Grams may be kept (``gram_cache_limit``
        of its kept layers alone: ``N`` up to ``KEEP_GRAM_MAX_N`` and within
        ``GRAM_CACHE_MAX_BYTES``), one ``(N, N)`` Gram per kept layer; after, what it holds
        (``nbytes``, encodings included)."""
        if self._representations:
            return self.nbytes
        kept = [self.layers[i] for i in self.kept]
        itemsize = 8 if any(np.asarray(x).dtype == np.float64 for x in kept) else 4
        grams = len(kept) * self.n * self.n * itemsize if self.n <= gram_cache_limit(kept, self.n) else 0
        return held_bytes(self.layers) + grams

    @property
    def nbytes(self) -> int:
        """Bytes it holds: the prepared layers, and each representation's Grams, lists and encodings."""
        # not under the build lock: the feature cache asks while holding its own, and a build takes seconds
        return held_bytes([self.layers, *tuple(self._representations.values())])


def gram_cache_limit(layers: Sequence[np.ndarray], n: int, budget: int | None = None) -> int:
    """``keep_gram_max_n`` for both sides of a pair: the engine's default (Grams kept up to
    ``N = 4096``) while the ``(N, N)`` Grams of all ``layers`` together take at most ``budget``
    bytes (``GRAM_CACHE_MAX_BYTES``), else 0: no Gram is kept, neighbour lists are found blockwise
    and linear CKA takes its feature-space path (same scores; both sides on one path)."""
    budget = GRAM_CACHE_MAX_BYTES if budget is None else budget
    itemsize = 8 if any(np.asarray(x).dtype == np.float64 for x in layers) else 4
    return KEEP_GRAM_MAX_N if len(layers) * n * n * itemsize <= budget else 0


def align_layers(
    xs: Sequence[np.ndarray] | PreparedModel,
    ys: Sequence[np.ndarray] | PreparedModel,
    requests: Sequence[MetricRequest],
    permutations: int = 0,
    seed: int = 0,
    bootstrap: int = 0,
    names: tuple[str, str] = ("x", "y"),
    progress: PairProgress | None = None,
    groups: Sequence[Any] | None = None,
    device: str = "cpu",
) -> list[PairAlignment]:
    """Score every layer pair of two prepared feature stacks with every requested metric.

    ``xs``: model A's layers, each ``(N, D_a,l) float32``; ``ys``: model B's, ``(N, D_b,l)``;
    rows paired; widths may differ between layers. Either may be a :class:`PreparedModel` (the
    same layers, with the work shared with its other pairs). With ``permutations > 0`` each metric's
    max-over-layer-pairs statistic is calibrated against a row-permutation null of ``ys`` (one
    permutation for all its layers; with ``groups``, one label per row such as its image, each
    permutation moves whole groups: ``metrics.calibrate``). With ``bootstrap > 0`` every metric gets a 95% interval of the
    max (``metrics.bootstrap_ci``: half the rows subsampled without replacement, half the groups with
    all their rows given ``groups``; resampling rows
    with replacement would bias them upward: duplicated rows); none where N is too small for a
    half-size subsample (logged). Degenerate layers, and layers a metric refuses, are excluded (see
    the module docstring); ``names`` (the two models) appear in errors. ``progress`` logs how far
    the permutations and resamples are (default: a ``PairProgress`` of this module's logger, made
    now). ``device``: where the engine computes (a torch device name: :func:`alignment_device`).

    Raises ``DegenerateFeaturesError`` if, for some metric, every layer of one side is excluded.
    """
    progress = PairProgress(names) if progress is None else progress
    px = xs if isinstance(xs, PreparedModel) else PreparedModel(xs)
    py = ys if isinstance(ys, PreparedModel) else PreparedModel(ys)
    if not px.layers or not py.layers:
        raise ValueError(f"{names[0]} has {len(px.layers)} layers and {names[1]} has {len(py.layers)}: both need at least one")
    n = px.n
    if py.n != n:
        raise ValueError(f"{names[0]} has {n} samples and {names[1]} has {py.n}: the rows must be paired")
    xs, ys, bad_x, bad_y, keep_x, keep_y = px.layers, py.layers, px.degenerate, py.degenerate, px.kept, py.kept
    _refuse_if_all_excluded(names[0], len(xs), bad_x, "any metric", n)
    _refuse_if_all_excluded(names[1], len(ys), bad_y, "any metric", n)
    # One cache per model: each layer's Gram matrix and neighbour lists are computed once and
    # shared by every metric and every permutation (and every partner, through a PreparedModel),
    # while the pair's Grams fit GRAM_CACHE_MAX_BYTES.
    keep_gram_max_n = gram_cache_limit([xs[i] for i in keep_x] + [ys[i] for i in keep_y], n)
    rep_x, rep_y = px.representation(keep_gram_max_n, device), py.representation(keep_gram_max_n, device)
    with quadratic_memory_reserved(requests, rep_x, rep_y, names, permutations, bootstrap):
        return _align_requests(requests, rep_x, rep_y, xs, ys, keep_x, keep_y, bad_x, bad_y, names, n, permutations, seed, bootstrap,
                               progress, groups)


def _align_requests(requests: Sequence[MetricRequest], rep_x: Any, rep_y: Any, xs: Sequence[Any], ys: Sequence[Any],
                    keep_x: list[int], keep_y: list[int], bad_x: dict[int, str], bad_y: dict[int, str], names: tuple[str, str],
                    n: int, permutations: int, seed: int, bootstrap: int, progress: PairProgress,
                    groups: Sequence[Any] | None = None) -> list[PairAlignment]:
    """`align_layers`' metrics, one after another, on the prepared pair (``rep_x``/``rep_y``: the
    layers kept, ``keep_x``/``keep_y`` their indices in ``xs``/``ys``; ``bad_x``/``bad_y`` the
    layers excluded for every metric, index -> why)."""
    results = []
    for request in requests:
        raise_if_stopped(f"{names[0]} x {names[1]}: {request.label()}")  # a stopped run: at the next metric
        refused_x, refused_y = _refused_layers(request, rep_x, rep_y)
        excluded_x = {**bad_x, **{keep_x[i]: why for i, why in refused_x.items()}}
        excluded_y = {**bad_y, **{keep_y[i]: why for i, why in refused_y.items()}}
        _refuse_if_all_excluded(names[0], len(xs), excluded_x, request.label(), n)
        _refuse_if_all_excluded(names[1], len(ys), excluded_y, request.label(), n)
        sub_x, kx = _subset(rep_x, keep_x, refused_x)
        sub_y, ky = _subset(rep_y, keep_y, refused_y)
        try:
            result = _align_one(request, sub_x, sub_y, n, permutations, seed, bootstrap, progress, groups)
        except metrics.MetricFunctionError as error:  # its layer numbers are of the layers that remain
            raise _in_model_terms(error, kx, ky, names) from error.__cause__
        result.matrix = _embed(result.matrix, kx, ky, (len(xs), len(ys)))
        if result.best_layers != (-1, -1):
            result.best_layers = (kx[result.best_layers[0]], ky[result.best_layers[1]])
        result.excluded_a, result.excluded_b = dict(sorted(excluded_x.items())), dict(sorted(excluded_y.items()))
        results.append(result)
    return results


def quadratic_memory(requests: Sequence[MetricRequest], rep_x: Any, rep_y: Any, permutations: int = 0,
                     bootstrap: int = 0) -> tuple[int, dict[str, int]]:
    """Bytes the ``O(L N^2)`` metrics of ``requests`` would add to this process on the pair
    ``rep_x``/``rep_y`` (``metrics.Representation``s of ``N`` rows): the total at their peak,
    and each metric's share (its label -> the bytes its encodings keep plus its own peak).

    Counted from ``QUADRATIC_MEMORY``: every layer whose encoding is not built yet (encodings a
    side already holds, from an earlier pair, cost nothing; metrics sharing an encoding count it
    once), plus the largest one-time peak (with ``permutations``, at least the null's,
    ``QUADRATIC_NULL_MEMORY``, which grows with the layers of ``rep_y``, the permuted side); with
    ``bootstrap``, a half-size subsample's encodings on top of the full ones where that is larger. Other metrics (k-NN lists, feature-space linear
    CKA, SVCCA...) need ``O(N k L)`` or ``O(N D)`` and are not counted."""
    n2 = float(rep_x.n) ** 2
    seen: set[Any] = set()
    held, peak, shares = 0.0, 0.0, {}
    for request in requests:
        spec = metrics.get_metric(request.name)
        params = spec.resolve(dict(request.params))
        kind = _quadratic_kind(spec.engine, params)
        if kind is None:
            continue
        per_layer, once, once_permuted = QUADRATIC_MEMORY[kind]
        scale = max(rep_x.dtype.itemsize, rep_y.dtype.itemsize) / 4 if kind == "rbf" else 1.0
        key = spec.engine.encode_key(params)
        new_layers = 0 if key in seen else sum(len(rep) for rep in (rep_x, rep_y) if not rep.memoized(key))
        seen.add(key)
        own = per_layer * scale * new_layers * n2
        top = (once_permuted if permutations else once) * scale * n2
        if permutations and kind in QUADRATIC_NULL_MEMORY:  # the null's copies of the permuted side, per layer of it
            base, per_permuted = QUADRATIC_NULL_MEMORY[kind]
            top = max(top, (base + per_permuted * len(rep_y)) * scale * n2)
        if bootstrap:  # the full encodings stay while a half-size subsample's are built
            top = max(top, (per_layer * (len(rep_x) + len(rep_y)) + once) * scale * n2 / 4)
        held, peak = held + own, max(peak, top)
        shares[request.label()] = int(own + top)
    return int(held + peak) if shares else 0, shares


def _quadratic_kind(engine: Any, params: dict[str, Any]) -> str | None:
    """``'rbf'`` / ``'rsa'`` for an engine whose encoding is ``O(L N^2)`` at every ``N``, else None
    (``Engine.quadratic_memory``; None for an engine object without the method)."""
    ask = getattr(engine, "quadratic_memory", None)
    kind = ask(params) if callable(ask) else None
    if kind is not None and kind not in QUADRATIC_MEMORY:
        raise ValueError(f"{type(engine).__qualname__}.quadratic_memory returned {kind!r}: expected one of "
                         f"{', '.join(map(repr, QUADRATIC_MEMORY))} or None (docs/metrics.md, 'Custom engines')")
    return kind


#: Bytes of ``O(L N^2)`` work reserved by the pairs aligning in this process now (a threads runner
#: aligns several at once: each checked alone against the same free memory, two pairs needing 60%
#: of it each both passed), under ``_RESERVED_CHANGED``'s lock.
_reserved_bytes = 0
_RESERVED_CHANGED = threading.Condition()
#: Seconds between looks at a stop request while a pair waits for memory others reserved.
RESERVE_POLL_S = 1.0


@contextmanager
def quadratic_memory_reserved(requests: Sequence[MetricRequest], rep_x: Any, rep_y: Any, names: tuple[str, str] = ("x", "y"),
                              permutations: int = 0, bootstrap: int = 0) -> Iterator[None]:
    """The block runs with the pair's ``O(L N^2)`` memory (``quadratic_memory``) reserved in this
    process: refused before any metric runs (``AlignmentMemoryError`` naming each such metric,
    ``N``, the layers, the memory needed and available, and what to change; without it the operating
    system kills the run) when it needs more than is available (`tasks.memory_available`) with no
    other reservation, else it waits while it does not fit beside the other pairs' reservations
    (conservative: their memory already taken is counted in both) until one ends, looking at
    stop requests meanwhile. A pair without such metrics neither waits nor reserves."""
    global _reserved_bytes
    # every pair's peaks the ones the code makes, not ones the allocator's history moves (the
    # estimate below is of those; so are the engine's memory bounds)
    pin_mmap_threshold()
    need, shares = quadratic_memory(requests, rep_x, rep_y, permutations, bootstrap)
    if not need:
        yield
        return
    with _RESERVED_CHANGED:
        while True:
            available = available_memory()
            if available is None or need <= available - _reserved_bytes:
                break
            if not _reserved_bytes:
                raise _memory_error(need, shares, available, rep_x, rep_y, names)
            _RESERVED_CHANGED.wait(RESERVE_POLL_S)
            raise_if_stopped(f"{names[0]} x {names[1]}: waiting for memory other pairs reserved")
        _reserved_bytes += need
    try:
        yield
    finally:
        with _RESERVED_CHANGED:
            _reserved_bytes -= need
            _RESERVED_CHANGED.notify_all()


def _memory_error(need: int, shares: dict[str, int], available: int, rep_x: Any, rep_y: Any,
                  names: tuple[str, str]) -> AlignmentMemoryError:
    """The refusal of a pair whose ``O(L N^2)`` metrics need ``need`` bytes (``shares``: each
    metric's) where ``available`` are free: names them, N, the layers, both figures and what to do."""
    gib = 2.0**30
    each = ", ".join(f"{label} {b / gib:.1f} GiB" for label, b in shares.items())
    return AlignmentMemoryError(
        f"{names[0]} x {names[1]}: {', '.join(shares)} at N={rep_x.n:,} over {len(rep_x)} + {len(rep_y)} layers would need "
        f"about {need / gib:.1f} GiB (each alone: {each}; memory grows as L N^2), but {available / gib:.1f} GiB is available: "
        f"leave {'them' if len(shares) > 1 else 'it'} out of alignment.metrics, align fewer samples (dataset.n), or, "
        f"where more memory is free than the system reports, set {MEMORY_ENV} (docs/metrics.md)")


def _align_one(request: MetricRequest, rep_x: Any, rep_y: Any, n: int, permutations: int, seed: int, bootstrap: int,
               progress: PairProgress | None = None, groups: Sequence[Any] | None = None) -> PairAlignment:
    """One metric on the layers that remain (``(La', Lb')`` matrix, argmax in those indices);
    ``progress`` is told how far its permutations and resamples are; ``groups``: rows that its
    permutations move and its bootstrap subsamples take together."""
    chance = _float_or_none(metrics.chance_level(request.name, n, **request.params))
    told = (lambda what: None) if progress is None else (lambda what: progress.callback(request.label(), what))
    if permutations > 0:
        cal = metrics.calibrate(request.name, rep_x, rep_y, permutations=permutations, seed=seed, aggregate="max",
                                progress=told("permutations"), groups=groups, **request.params)
        matrix = np.asarray(cal.matrix, dtype=np.float64)
        i, j = cal.argmax
        result = PairAlignment(request, matrix, float(cal.observed), (int(i), int(j)), chance,
                               null_mean=float(cal.null_mean), null_std=float(cal.null_std), tau=float(cal.tau),
                               p_value=float(cal.p_value), calibrated=float(cal.calibrated), permutations=cal.permutations)
    else:
        matrix = np.asarray(metrics.layer_matrix(request.name, rep_x, rep_y, **request.params), dtype=np.float64)
        best, (i, j) = metrics.aggregate(matrix, "max", metrics.get_metric(request.name).higher_is_better)
        result = PairAlignment(request, matrix, float(best), (int(i), int(j)), chance)
    if bootstrap > 0:
        raise_if_stopped(f"{request.label()}: its bootstrap interval")
        try:
            with warnings.catch_warnings():  # a degenerate interval is stored flagged and logged once, below
                warnings.simplefilter("ignore", RuntimeWarning)
                ci = metrics.bootstrap_ci(request.name, rep_x, rep_y, n_boot=bootstrap, level=0.95, seed=seed, aggregate="max",
                                          observed=matrix, progress=told("bootstrap resamples"), groups=groups,
                                          **request.params)
        except metrics.MetricFunctionError:  # a user metric failing on a subsample fails the pair, as on the full data
            raise
        except ValueError as error:  # too few samples for a half-size subsample of this metric
            warn_no_interval(request.label(), f"at N={n}: {error}")
        else:
            result.ci_low, result.ci_high, result.bootstrap = float(ci.low), float(ci.high), bootstrap - ci.n_refused
            result.ci_degenerate = bool(ci.degenerate)
            unit = "rows" if ci.n_groups is None else "images"
            if ci.n_refused:
                logger.warning("%s: %d of %d bootstrap subsamples of %d %s were refused by the metric (undefined there) and "
                               "left out: the interval rests on the other %d, which lean toward the subsamples it accepts",
                               request.label(), ci.n_refused, bootstrap, ci.resample_size, unit, bootstrap - ci.n_refused)
            if ci.degenerate:
                warn_degenerate_interval(request.label(), ci.low, ci.high, ci.estimate, f"the subsamples of {ci.resample_size} {unit}")
    return result


def warn_no_interval(label: str, why: str, log: logging.Logger | logging.LoggerAdapter = logger) -> None:
    """The warning for a metric left without a bootstrap interval (``why``: e.g. too few samples)."""
    log.warning("%s: no bootstrap interval %s", label, why)


def warn_degenerate_interval(label: str, low: float, high: float, estimate: float, subsamples: str = "its subsamples",
                             log: logging.Logger | logging.LoggerAdapter = logger) -> None:
    """The warning for a degenerate bootstrap interval ``[low, high]`` of a metric's best score
    ``estimate`` (``metrics.bootstrap_ci``: ``subsamples`` pile up on a bound of the metric or on
    one value away from the score, or their spread lies on one side of it)."""
    log.warning("%s: the bootstrap interval [%.4g, %.4g] is degenerate (%s pile up on a bound of the metric or on one "
                "value away from the score, or their spread lies on one side of it): it brackets the score %.4g but does "
                "not measure its spread (ci_degenerate; docs/metrics.md)", label, low, high, subsamples, estimate)


def _refused_layers(request: MetricRequest, rep_x: Any, rep_y: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Layers (indices into the representations) that the metric's engine refuses to encode.

    Encoding is tried on each whole side first (cached on the representation, so the real
    computation reuses it); only when that raises ``ValueError`` is each layer tried alone, to
    find which ones the metric cannot score (e.g. ``svcca`` with ``cca_dim`` above a layer's width
    or rank). An error that no single layer reproduces is not about layers and is raised as is.
    """
    spec = metrics.get_metric(request.name)
    params = spec.resolve(dict(request.params))
    refused: list[dict[int, str]] = []
    for rep in (rep_x, rep_y):
        try:
            spec.engine.encode_cached(rep, params)
            refused.append({})
            continue
        except ValueError as error:
            failure = error
        found = {}
        for i, layer in enumerate(rep.layers):
            try:
                spec.engine.encode(metrics.Representation([layer]), params)
            except ValueError as error:
                found[i] = f"{request.label()} undefined: " + re.sub(r"\blayer 0\b", "this layer", str(error))
        if not found:
            raise failure
        refused.append(found)
    return refused[0], refused[1]


def _subset(rep: Any, keep: list[int], refused: dict[int, str]) -> tuple[Any, list[int]]:
    """The representation without the refused layers, and the original index of each remaining one."""
    if not refused:
        return rep, keep
    remaining = [i for i in range(len(rep.layers)) if i not in refused]
    return rep.select_layers(remaining), [keep[i] for i in remaining]  # its Gram policy and cached Grams


def _in_model_terms(error: Exception, rows: list[int], cols: list[int], names: tuple[str, str]) -> Exception:
    """``error`` (a ``MetricFunctionError``) naming the models' own layers: the engine saw only the
    layers that remain (``rows``/``cols``: their indices in each model), as ``x`` and ``y``, so with
    a degenerate layer 0 left out its "layer 0 of x" was the model's layer 1."""
    def layer(index: str, kept: list[int]) -> int | str:
        return kept[int(index)] if int(index) < len(kept) else index

    text = re.sub(r"layer pair \((\d+), (\d+)\)", lambda m: f"layer pair ({layer(m[1], rows)}, {layer(m[2], cols)})", str(error))
    text = re.sub(r"\blayer (\d+) of x\b", lambda m: f"{names[0]} layer {layer(m[1], rows)}", text)
    text = re.sub(r"\blayer (\d+) of y\b", lambda m: f"{names[1]} layer {layer(m[1], cols)}", text)
    return type(error)(text)


def _embed(matrix: np.ndarray, rows: list[int], cols: list[int], shape: tuple[int, int]) -> np.ndarray:
    """``(La, Lb)`` NaN matrix holding ``matrix`` at ``rows`` x ``cols``."""
    out = np.full(shape, np.nan)
    out[np.ix_(rows, cols)] = matrix
    return out


def _refuse_if_all_excluded(name: str, n_layers: int, excluded: dict[int, str], what: str, n: int) -> None:
    if len(excluded) == n_layers:
        detail = "; ".join(f"layer {i}: {why}" for i, why in sorted(excluded.items()))
        raise DegenerateFeaturesError(f"{name}: no layer can be scored by {what} over the {n} paired samples ({detail})")


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
