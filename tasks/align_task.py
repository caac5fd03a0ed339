"""Prefect task: join two models' stored features with DuckDB, score every layer pair, publish.

``align_to_store`` does the work (callable without Prefect, e.g. from tests); ``align_pair`` is
its Prefect task. See ``align_to_store`` for how bad feature sets are refused or handled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Collection, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from storage import layout
from storage.features import examples
from storage.pairing import PairedFeatures, kept_for_later_pairs, paired_features, release_features
from storage.store import Store
from storage.verify import checked_for_reuse
from storage.versioning import code_version, content_id
from tasks import metrics, reused_metrics
from tasks.metric_code import unreachable_files
from tasks.alignment import (MetricRequest, PairAlignment, PairProgress, PreparedModel, align_layers, alignment_device, prepare_layers, threshold_layers, warn_degenerate_interval,
                             warn_no_interval)
from tasks.image_rows import image_rows, mean_rows
from tasks.metric_plugins import load_metric_modules, metric_source
from tasks.params import AlignmentParams
from tasks.retries import backoff, retry_transient
from tasks.stop_request import PublishedMeanwhile, raise_if_stopped, unless_published_meanwhile
from tasks.stopped_task import run_in_flight
from tasks.why_align import log_why_computed

#: The code an alignment version depends on: the engine, the per-pair driver, the per-image rows,
#: the pairing join, this stage (it prepares the layers and calls the driver), the reading of
#: reused metric results and which of this code each built-in metric's version names.
ALIGNMENT_CODE = ("tasks/metrics", "tasks/alignment.py", "tasks/image_rows.py", "storage/pairing.py", "tasks/align_task.py",
                  "tasks/reused_metrics.py", "tasks/metric_code.py")


#: The level ``alpha`` of the calibration threshold ``tau``: ``tasks.alignment`` calls
#: ``tasks.metrics.calibrate`` without one, so its default (0.05).
CALIBRATION_ALPHA: float = inspect.signature(metrics.calibrate).parameters["alpha"].default


def min_calibrating_permutations(alpha: float = CALIBRATION_ALPHA) -> int:
    """The fewest permutations ``K`` at which a calibrated score can be above 0.

    ``tau`` is the ``ceil((1 - alpha)(K + 1))``-th smallest of ``{observed} ∪ null`` (``K + 1``
    values), so it can be below their maximum only when ``ceil((1 - alpha)(K + 1)) <= K``, i.e.
    ``K + 1 >= 1/alpha``; that is also when the smallest p-value, ``1/(K + 1)``, reaches ``alpha``.
    ``alpha`` is read exactly, as the decimal it prints as (the calibration does the same): 0.05
    is 1/20, giving 19, where the float ``1/0.05`` would not be exact."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return max(1, math.ceil(1 / Fraction(repr(float(alpha)))) - 1)


def few_permutations_warning(params: AlignmentParams, alpha: float = CALIBRATION_ALPHA) -> str | None:
    """A warning when ``0 < params.permutations`` is below ``min_calibrating_permutations(alpha)``
    (then every calibrated score is 0 and no p-value reaches ``alpha``, whatever the data); else None.
    Such a config is allowed (quick test runs use 9): the run says so once."""
    k, needed = params.permutations, min_calibrating_permutations(alpha)
    if not 0 < k < needed:
        return None
    return (f"alignment.permutations={k} is below {needed}, the fewest at which a calibrated score can be above 0 at "
            f"alpha={alpha:g}: with K={k} permutations the threshold tau (the ceil((1-alpha)(K+1))-th smallest of the observed "
            f"score and its {k} null values) is always their maximum, so every calibrated_score is 0 and no p-value can reach "
            f"{alpha:g} (the smallest is 1/(K+1) = {1 / (k + 1):.3g}); set alignment.permutations >= {needed} for calibrated scores")


#: Fewest bootstrap resamples whose 95% interval has at least one resample beyond each bound
#: (2 / (1 - 0.95)); with fewer the bounds are the most extreme resamples, interpolated.
MIN_STABLE_BOOTSTRAP = 40


def few_bootstrap_warning(params: AlignmentParams) -> str | None:
    """A warning when ``0 < params.bootstrap < MIN_STABLE_BOOTSTRAP``; else None (such a config
    is allowed: quick test runs use 20)."""
    n_boot = params.bootstrap
    if not 0 < n_boot < MIN_STABLE_BOOTSTRAP:
        return None
    return (f"alignment.bootstrap={n_boot} is below {MIN_STABLE_BOOTSTRAP}: each 2.5% tail of the 95% interval holds less "
            f"than one of the {n_boot} resamples, so ci_low and ci_high are the most extreme resamples (interpolated) and "
            "the interval is narrower than it should be; use a few hundred for stable bounds")


def metric_requests(params: AlignmentParams) -> list[MetricRequest]:
    """The configured metrics with their parameters, in name order: each metric's numbers do not
    depend on the others (each is seeded alone), so listing them in another order is the same
    alignment (same version, computed in the same order)."""
    return [MetricRequest(name, params.metric_params(name)) for name in sorted(params.metrics)]


def _version_inputs(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> dict[str, Any]:
    """What every metric's numbers of a pair depend on besides the metric itself. The seed only
    draws the permutations and the bootstrap resamples: without either it changes no number, and
    is left out (another seed finds the stored alignment)."""
    unit = {} if params.unit == "sample" else {"unit": params.unit}  # the default keeps version ids as they were
    seeded = {"seed": params.seed} if params.permutations or params.bootstrap else {}
    return {
        **unit,
        "features": [manifest_a["catalog"]["feature_version"], manifest_b["catalog"]["feature_version"]],
        "outlier_quantile": params.outlier_quantile,
        "outlier_scope": params.outlier_scope,
        "outlier_exact": params.outlier_exact,
        "permutations": params.permutations,
        "bootstrap": params.bootstrap,
        **seeded,
        "code_version": code_version(*ALIGNMENT_CODE),
    }


def alignment_version(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> str:
    """Content id of a pair's alignment: both feature versions, metrics and parameters, code."""
    sources = {name: source for name in sorted(params.metrics) if (source := metric_source(name)) is not None}
    return content_id(
        {
            **_version_inputs(manifest_a, manifest_b, params),
            **({"metric_sources": sources} if sources else {}),  # user metrics' code (built-ins: code_version)
            "metrics": [[r.name, r.params] for r in metric_requests(params)],
        }
    )


def metric_versions(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> dict[str, str]:
    """Metric name -> content id of that metric's results on the pair (``tasks.reused_metrics``):
    what the alignment version names, less the other metrics. Each metric is seeded alone, so its
    numbers do not depend on which other metrics are computed beside it."""
    inputs = _version_inputs(manifest_a, manifest_b, params)
    out = {}
    for request in metric_requests(params):
        source = metric_source(request.name)
        out[request.name] = content_id({**inputs, "code_version": metric_code_version(request.name),
                                        "metric": [request.name, request.params],
                                        **({"metric_source": source} if source is not None else {})})
    return out


def metric_code_version(name: str) -> str:
    """``code_version`` of the alignment code that metric ``name``'s numbers can run: for a
    built-in, less the modules of ``tasks/metrics`` no import reaches from its engine or from the
    code every metric runs through (``tasks.metric_code``), so that a change to one engine makes
    new versions of its own metrics only; for a user metric the whole alignment code."""
    from tasks.metrics import METRICS

    if metric_source(name) is not None:  # a user metric: its code may call any module of the package
        return code_version(*ALIGNMENT_CODE)
    engines = {type(METRICS[builtin].engine).__module__ for builtin in METRICS if metric_source(builtin) is None}
    return code_version(*ALIGNMENT_CODE, exclude=unreachable_files(METRICS[name].engine, ALIGNMENT_CODE, engines))


def _alignment_key(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> str:
    a, b = manifest_a["catalog"], manifest_b["catalog"]
    return layout.alignment_key(a["dataset_version"], a["model"], b["model"], alignment_version(manifest_a, manifest_b, params))


def result_tables(
    results: list[PairAlignment], manifest_a: dict[str, Any], manifest_b: dict[str, Any], version: str, n_samples: int,
    unit: str = "sample",
) -> tuple[pa.Table, pa.Table]:
    """(scores: one row per metric × layer pair, best: one row per metric) as Arrow tables.
    ``n_samples`` rows were aligned, each a ``unit`` (``sample`` or ``image``).

    A layer pair without a score (an excluded layer, see ``tasks.alignment``) gets a NULL
    ``score``, never NaN: DuckDB orders NaN above every number, so ``max(score)`` would be NaN.
    A best row without a finite score (the engine returned none) has NULL layers and score, and a
    statistic that is NaN (no null, threshold or interval without scores) is NULL too.
    """
    a, b = manifest_a["catalog"], manifest_b["catalog"]
    common = {"alignment_version": version, "dataset_version": a["dataset_version"], "model_a": a["model"], "model_b": b["model"]}
    scores, best = [], []
    for r in results:
        params = json.dumps(r.metric.params, sort_keys=True)
        la, lb = r.matrix.shape
        for i in range(la):
            for j in range(lb):
                scores.append({**common, "metric": r.metric.name, "params": params, "layer_a": i, "layer_b": j,
                               "layer_name_a": a["layer_names"][i], "layer_name_b": b["layer_names"][j],
                               "score": _finite_or_none(r.matrix[i, j]), "n_samples": n_samples, "unit": unit})
        i, j = scored_best_layers(r) or (None, None)  # as the NULL score
        best.append({**common, "metric": r.metric.name, "params": params, "modality_a": a["modality"], "modality_b": b["modality"],
                     "layer_a": i, "layer_b": j, "layer_name_a": None if i is None else a["layer_names"][i],
                     "layer_name_b": None if j is None else b["layer_names"][j],
                     "score": _finite_or_none(r.best), "chance_level": _nan_to_none(r.chance_level),
                     "null_mean": _nan_to_none(r.null_mean), "null_std": _nan_to_none(r.null_std), "tau": _nan_to_none(r.tau),
                     "p_value": _nan_to_none(r.p_value), "calibrated_score": _nan_to_none(r.calibrated),
                     "permutations": r.permutations, "ci_low": _nan_to_none(r.ci_low), "ci_high": _nan_to_none(r.ci_high),
                     "ci_degenerate": r.ci_degenerate, "bootstrap": r.bootstrap, "n_samples": n_samples, "unit": unit})
    schema_types = {"layer_a": pa.int32(), "layer_b": pa.int32(), "n_samples": pa.int32(), "permutations": pa.int32(),
                    "bootstrap": pa.int32(), "ci_low": pa.float64(), "ci_high": pa.float64(), "ci_degenerate": pa.bool_(),
                    "score": pa.float64(),
                    "layer_name_a": pa.string(), "layer_name_b": pa.string()}
    return _table(scores, schema_types), _table(best, schema_types)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _nan_to_none(value: float | None) -> float | None:
    """NULL for a statistic that is NaN (a metric without a single finite layer-pair score has no
    null, threshold or interval): DuckDB orders NaN above every number."""
    return None if value is None or math.isnan(value) else float(value)


def _table(rows: list[dict[str, Any]], types: dict[str, pa.DataType]) -> pa.Table:
    columns = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        dtype = types.get(name)
        if dtype is None and all(v is None or isinstance(v, float) for v in values):
            dtype = pa.float64()
        columns[name] = pa.array(values, type=dtype)
    return pa.table(columns)


def excluded_layers(results: list[PairAlignment], manifest_a: dict[str, Any], manifest_b: dict[str, Any]) -> list[dict[str, Any]]:
    """The alignment manifest's ``degenerate_layers``: one entry per (model, layer, problem) with the
    metrics it was left out of, e.g. ``{"model": "vit", "layer": 0, "layer_name": "embeddings",
    "problem": "constant: ...", "metrics": ["cka", "mutual_knn"]}``."""
    entries: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in results:
        for catalog, excluded in ((manifest_a["catalog"], r.excluded_a), (manifest_b["catalog"], r.excluded_b)):
            names = catalog.get("layer_names") or []
            for layer, problem in sorted(excluded.items()):
                entry = entries.setdefault((catalog["model"], layer, problem), {
                    "model": catalog["model"], "layer": layer, "layer_name": names[layer] if layer < len(names) else None,
                    "problem": problem, "metrics": []})
                entry["metrics"].append(r.metric.name)
    return list(entries.values())


def out_of_bounds(results: list[PairAlignment]) -> list[dict[str, Any]]:
    """The alignment manifest's ``out_of_bounds``: one entry per metric some of whose layer-pair
    scores fall outside the metric's registered range (beyond float rounding), e.g. ``{"metric":
    "cknna", "low": -1.0, "high": 1.0, "n_pairs": 116, "of": 126, "min": 0.41, "max": 3.36}``.
    Unbiased estimators (``cknna``, ``unbiased_cka``) are not bounded by construction: at small N
    next to ``topk`` they leave ``[-1, 1]``, and calibrated scores clamp at the upper bound."""
    from tasks.metrics import get_metric

    out = []
    for r in results:
        low, high = get_metric(r.metric.name).bounds_for(r.metric.params)
        finite = r.matrix[np.isfinite(r.matrix)]
        slack = 1e-9 * max(1.0, abs(low), abs(high))
        beyond = int(np.count_nonzero((finite < low - slack) | (finite > high + slack)))
        if beyond:
            out.append({"metric": r.metric.name, "low": float(low), "high": float(high), "n_pairs": beyond, "of": int(finite.size),
                        "min": float(finite.min()), "max": float(finite.max())})
    return out


def zero_vector_samples(layers: list[np.ndarray], sample_ids: list[str], catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """Layers in which some (not all) samples are all-zero vectors: ``{"model", "layer", "layer_name",
    "n_samples", "examples"}``. Such a sample has inner product 0 with every other, so its k-NN list
    is tie-breaking noise; it is kept (it is a real output of the model) and reported."""
    out = []
    names = catalog.get("layer_names") or []
    for layer, x in enumerate(layers):
        zero = np.flatnonzero(~x.any(axis=1)) if x.size else np.zeros(0, dtype=np.int64)
        if 0 < zero.size < x.shape[0]:
            out.append({"model": catalog["model"], "layer": layer, "layer_name": names[layer] if layer < len(names) else None,
                        "n_samples": int(zero.size), "examples": [sample_ids[i] for i in zero[:5]]})
    return out


def duplicate_vector_samples(layers: list[np.ndarray], sample_ids: list[str], catalog: dict[str, Any],
                             skip: Collection[int] = (), found: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
                             ) -> list[dict[str, Any]]:
    """Layers in which some samples have bit for bit the vector of another sample (all-zero
    vectors aside: ``zero_vector_samples``): ``{"model", "layer", "layer_name", "n_samples",
    "n_groups", "examples"}``, ``n_samples`` rows in ``n_groups`` groups of identical vectors.

    Identical samples are equally similar to every other sample, so which of them a k-NN list
    keeps at its last places, and in what order, is tie-breaking (the lower sample index), not the
    model: k-NN scores can move by that much between subsamples. Expected where several captions share an
    image (the vision rows of one image are identical), and in a language model's embeddings
    layer (``duplicate_hint``); kept and reported. The layers in ``skip``
    (indices into ``layers``) are not checked: ``align_to_store`` passes those left out of every
    metric (``unscored_layers``), e.g. a ViT's constant CLS layer, whose rows are all one vector
    and are not scored at all. ``found``, when given, receives ``layer -> (members, groups)``
    (``duplicate_groups``) of each layer listed, for ``log_duplicates``: the search sorts every
    row of a layer (seconds for 100,000 rows of width 4,096), so it is made once."""
    out = []
    names = catalog.get("layer_names") or []
    for layer, x in enumerate(layers):
        if layer in skip:
            continue
        members, groups = duplicate_groups(x)
        if members.size:
            if found is not None:
                found[layer] = (members, groups)
            out.append({"model": catalog["model"], "layer": layer, "layer_name": names[layer] if layer < len(names) else None,
                        "n_samples": int(members.size), "n_groups": int(np.unique(groups).size),
                        "examples": [sample_ids[i] for i in members[:5]]})
    return out


def duplicate_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(members, groups)``, two ``(M,) int64`` arrays: the rows of ``x`` ``(N, D)`` whose
    non-zero vector some other row has bit for bit, and for each the first row of its group of
    identical vectors; groups in the order of their first row, a group's members in row order."""
    rows = np.flatnonzero(x.any(axis=1)) if x.size else np.zeros(0, dtype=np.int64)
    if rows.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    vectors = np.ascontiguousarray(x[rows])
    keys = vectors.view(np.dtype((np.void, vectors.dtype.itemsize * vectors.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    shared = counts[inverse.ravel()] > 1
    group_of = rows[first[inverse.ravel()][shared]]
    order = np.lexsort((rows[shared], group_of))
    return rows[shared][order], group_of[order]


def unscored_layers(results: list[PairAlignment]) -> tuple[set[int], set[int]]:
    """(layers of side A, layers of side B) left out of every metric's scores: degenerate layers
    (constant or rank 1, see ``tasks.alignment``) and layers every configured metric refused."""
    if not results:
        return set(), set()
    return (set.intersection(*(set(r.excluded_a) for r in results)),
            set.intersection(*(set(r.excluded_b) for r in results)))


def log_duplicates(duplicates: list[dict[str, Any]], found: Mapping[int, tuple[np.ndarray, np.ndarray]], n_layers: int,
                   sample_ids: list[str], catalog: dict[str, Any], image_of: Mapping[str, str] | None,
                   logger: logging.Logger | logging.LoggerAdapter) -> None:
    """One line for the model of ``catalog`` when ``duplicates`` (its ``duplicate_vector_samples``
    entries; ``found``: their layers' groups, from the same call; ``n_layers``: the model's layers)
    has any, naming its worst layer and the likely cause (``duplicate_hint``): INFO where every
    group is the captions of one image (``duplicates_expected``: the dataset pairs an image with
    several captions, as the demo does for emoji that render alike), else a WARNING."""
    if not duplicates:
        return
    worst = max(duplicates, key=lambda d: d["n_samples"])
    language = catalog.get("modality") == "language"  # its duplicates are of texts: no image is looked up
    sharing = {} if language else images_shared(duplicates, found, sample_ids, image_of)
    level = logging.INFO if duplicates_expected(catalog, sharing) else logging.WARNING
    logger.log(level, "%s: in %s of its layers some samples share their exact vector with another (up to %d of %d samples, "
               "layer %d, e.g. %s); k-NN ties among them go to the lower sample index, not to anything the model tells; %s",
               catalog["model"], f"all {len(duplicates)}" if len(duplicates) == n_layers else len(duplicates),
               worst["n_samples"], len(sample_ids), worst["layer"], examples(worst["examples"]),
               duplicate_hint(duplicates, catalog, sharing))


def images_shared(duplicates: list[dict[str, Any]], found: Mapping[int, tuple[np.ndarray, np.ndarray]], sample_ids: list[str],
                  image_of: Mapping[str, str] | None) -> dict[int, tuple[int, int] | None]:
    """``layer -> (within, groups)`` for each layer of ``duplicates`` (``groups_in_one_image`` of
    its ``found`` groups): how many of its groups of identical rows are the captions of one image;
    None for a layer whose samples ``image_of`` (sample id -> image id) does not all know."""
    return {d["layer"]: groups_in_one_image(*found[d["layer"]], sample_ids, image_of) for d in duplicates}


def duplicates_expected(catalog: dict[str, Any], sharing: Mapping[int, tuple[int, int] | None]) -> bool:
    """Whether every group of identical rows in every layer of ``sharing`` (``images_shared``) is
    the captions of one image, for a model that is not a language model: the vision rows of an
    image's samples are its one vector by construction."""
    if catalog.get("modality") == "language" or not sharing:
        return False
    return all(shared is not None and shared[0] == shared[1] for shared in sharing.values())


def duplicate_hint(duplicates: list[dict[str, Any]], catalog: dict[str, Any], sharing: Mapping[int, tuple[int, int] | None]) -> str:
    """The likely cause of one model's duplicate vectors, from what is known: a language model's
    duplicates only in layer 0 are its embeddings layer's (one vector per token, before any
    context; with pooling ``last`` the captions ending in one token share it), in deeper layers
    identical texts; another model's (vision) are captions of one image or different images with
    identical features, as ``sharing`` (``images_shared``) tells of its worst layer, or of the
    worst layer with groups of different images (named) where there is one: what a WARNING is
    about."""
    if catalog.get("modality") == "language":
        if all(d["layer"] == 0 for d in duplicates):
            return _embeddings_hint(duplicates[0]["layer_name"], catalog.get("pooling"))
        return "the captions of these samples are likely the same text (a language model gives identical texts one vector)"
    worst = max(duplicates, key=lambda d: d["n_samples"])
    mixed = [d for d in duplicates if (shared := sharing.get(d["layer"])) is not None and shared[0] < shared[1]]
    shown = max(mixed, key=lambda d: d["n_samples"]) if mixed else worst
    where = "" if shown is worst else f"in layer {shown['layer']}, "
    shared = sharing.get(shown["layer"])
    if shared is None:
        return "expected when captions share an image (alignment.unit 'image' aligns one row per image)"
    within, groups = shared
    if within == groups:
        return ("expected: these samples are captions of one image, which share its vision features (alignment.unit 'image' "
                "aligns one row per image)")
    different = ("identical pictures under different image ids, or inputs the preprocessing maps to one")
    if within == 0:
        return f"{where}these samples are of different images ({different}): alignment.unit 'image' would not merge them"
    return (f"{where}{within} of the {groups} groups are captions of one image (alignment.unit 'image' aligns one row per "
            f"image), the others are of different images ({different})")


def _embeddings_hint(layer_name: str | None, pooling: str | None) -> str:
    """Why a language model's embeddings layer (layer 0) repeats vectors, for its ``pooling``."""
    where = f"layer 0 ({layer_name}) is the embeddings layer of a language model"
    if pooling == "last":
        return (f"{where} with pooling 'last': it holds one vector per distinct last token (captions ending in the same "
                "token share it), nothing to do with shared images")
    if pooling == "avg":
        return f"{where} with pooling 'avg': captions made of the same tokens share its vector, before any context is mixed in"
    return f"{where}: its vectors are the tokens' own, before any context, so captions with the same (last) tokens share one"


def groups_in_one_image(members: np.ndarray, group: np.ndarray, sample_ids: list[str],
                        image_of: Mapping[str, str] | None) -> tuple[int, int] | None:
    """``(within, groups)``: of the ``groups`` groups of identical rows that ``members`` and
    ``group`` (``(M,)`` each, ``duplicate_groups`` of one layer) describe, how many hold samples
    of one image only, by ``image_of`` (sample id -> image id); None when it is None or lacks one
    of their samples."""
    if image_of is None:
        return None
    images = [image_of.get(sample_ids[i]) for i in members]
    if any(image is None for image in images):
        return None
    by_group: dict[int, set[str]] = {}
    for g, image in zip(group.tolist(), images):
        by_group.setdefault(g, set()).add(image)
    return sum(len(held) == 1 for held in by_group.values()), len(by_group)


def duplicate_images(store: Store, dataset_version: str, sample_ids: list[str], unit: str) -> dict[str, str] | None:
    """Sample id -> image id for ``duplicate_hint``: each row its own image when the rows are
    images (``unit`` 'image'), else the dataset's ``image_id`` column; None when the dataset's
    samples cannot be read (features published without their dataset)."""
    if unit == "image":
        return {i: i for i in sample_ids}
    try:
        return sample_images(store, dataset_version)
    except (OSError, ValueError, KeyError):  # only the warning's hint depends on it
        return None


#: The last dataset's sample -> image table read, by (store URL, dataset version): a dataset
#: version names its content, so every pair of a run (and of later runs in this process) reads it
#: once, not once per pair. One entry: a large dataset's table is not held beside another's.
_SAMPLE_IMAGES: dict[tuple[str, str], dict[str, str]] = {}


def sample_images(store: Store, dataset_version: str) -> dict[str, str]:
    """Sample id -> image id of every sample of the dataset version (read once per process and
    version, ``_SAMPLE_IMAGES``; a failed read is not kept). The caller must not change it."""
    key = (store.url, dataset_version)
    held = _SAMPLE_IMAGES.get(key)
    if held is None:
        ids = store.read_table(f"{layout.dataset_key(dataset_version)}/{layout.SAMPLES_FILE}", columns=["sample_id", "image_id"])
        held = dict(zip(ids.column("sample_id").to_pylist(), ids.column("image_id").to_pylist()))
        _SAMPLE_IMAGES.clear()
        _SAMPLE_IMAGES[key] = held
    return held


def permutation_groups(store: Store, dataset_version: str, sample_ids: list[str], params: AlignmentParams,
                       names: tuple[str, str], logger: Any) -> list[str] | None:
    """Each aligned row's image id, for a permutation null that moves an image's samples together
    and bootstrap subsamples that take them together (``metrics.calibrate``'s and
    ``metrics.bootstrap_ci``'s ``groups``), where rows are samples (``unit`` 'sample'), the pair
    is calibrated or bootstrapped and some image has several of them (its captions); None
    otherwise (rows are images, or every image has one sample: single rows). A dataset whose
    samples cannot be read (features published without it) leaves single rows, with a warning; a
    sample it does not list, or lists without an image, is a group of its own."""
    if params.unit != "sample" or (params.permutations == 0 and params.bootstrap == 0):
        return None
    try:
        image_of = sample_images(store, dataset_version)
    except (OSError, ValueError, KeyError) as error:
        logger.warning("%s x %s: the permutation null and the bootstrap take single samples: the image of each sample "
                       "is unknown (dataset version %s: %s); where images have several captions the p-values are too small "
                       "and the intervals too narrow (alignment.unit 'image' avoids it)", *names, dataset_version, error)
        return None
    groups = [image if isinstance(image := image_of.get(s), str) else "\0sample:" + s for s in sample_ids]
    images = len(set(groups))
    if images == len(groups):
        return None
    done = [what for what, on in (("the permutation null moves whole images", params.permutations),
                                  ("the bootstrap subsamples whole images", params.bootstrap)) if on]
    logger.info("%s x %s: %s (%d samples of %d images), not single samples", *names, " and ".join(done), len(groups), images)
    return groups


def per_image(store: Store, pair: PairedFeatures, dataset_version: str) -> PairedFeatures:
    """``pair`` with one row per image (``tasks.image_rows``): every layer's rows of an image's
    samples averaged, rows in ``image_id`` order; ``sample_ids`` then holds the image ids."""
    image_of = sample_images(store, dataset_version)
    try:
        rows = image_rows(pair.sample_ids, image_of)
    except ValueError as error:
        raise ValueError(f"dataset version {dataset_version}: {error}") from None
    return PairedFeatures(rows.image_ids, [mean_rows(x, rows) for x in pair.xs], [mean_rows(y, rows) for y in pair.ys],
                          pair.only_a, pair.only_b, pair.examples_only_a, pair.examples_only_b)


def check_pairable(manifest_a: dict[str, Any], manifest_b: dict[str, Any]) -> None:
    """Refuse two feature versions of different datasets: their sample ids need not mean the same samples."""
    a, b = manifest_a["catalog"], manifest_b["catalog"]
    if a["dataset_version"] != b["dataset_version"]:
        raise ValueError(f"{a['model']} x {b['model']}: features of different dataset versions "
                         f"({a['dataset_version']} vs {b['dataset_version']}); a sample id names the same sample only "
                         "within one dataset version: extract both models from the same dataset")


def check_common_samples(pair: PairedFeatures, model_a: str, model_b: str, params: AlignmentParams) -> None:
    """Refuse a pair with fewer common samples than ``params.min_samples()``, naming both models,
    their counts, the binding requirement and example ids."""
    n = len(pair.sample_ids)
    for model, count in ((model_a, pair.n_a), (model_b, pair.n_b)):
        if count == 0:
            raise ValueError(f"{model_a} x {model_b}: the stored features of {model} hold no samples")
    try:
        params.check_sample_count(n, f"{model_a} x {model_b}: the pair")
    except ValueError as error:
        detail = (f"{model_a} has {pair.n_a} samples, {model_b} has {pair.n_b}, {n} in common; "
                  f"e.g. only in {model_a}: {examples(pair.examples_only_a) or '-'}; only in {model_b}: {examples(pair.examples_only_b) or '-'}")
        hint = " (no sample_id in common: were both extracted from the same dataset?)" if n == 0 else ""
        raise ValueError(f"{error}{hint}. {detail}") from None


def align_to_store(
    store_url: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, Any]:
    """Score every layer pair of two models with every metric and publish it (or reuse a stored result).

    Returns the alignment manifest plus ``reused``. Bad input raises ``ValueError`` (nothing is
    published): features of different dataset versions, a model without samples, fewer common
    samples than the metrics need (``AlignmentParams.min_samples``), unusable stored features (``FeatureError``: NaN/Inf, duplicate
    ids...), or a model none of whose layers can be scored (``DegenerateFeaturesError``).
    Degenerate layers are excluded from the scores (NULL), the max and the calibration, logged as
    warnings and listed in the manifest's ``degenerate_layers`` (not in its ``duplicate_vectors``:
    only scored layers are checked for identical samples); samples present for one model only are
    dropped and counted (``only_a``/``only_b``).
    """
    logger = logger or logging.getLogger(__name__)
    load_metric_modules()  # a worker process (Dask) gets the config unpickled, never validated
    model_a, model_b = manifest_a["catalog"]["model"], manifest_b["catalog"]["model"]
    check_pairable(manifest_a, manifest_b)
    store = Store(store_url)
    key = _alignment_key(manifest_a, manifest_b, params)
    existing = store.manifest(key)
    if existing is not None:
        release_features(store, manifest_a, manifest_b)  # its models' features are not read for this pair
        # still what its manifest lists (a scores file rewritten by hand had been shown in the run's
        # summary and report as this run's): checked here, in the task, in parallel and retried
        checked_for_reuse(store, key, existing, f"the stored alignment of {model_a} x {model_b}")
        logger.info("%s x %s: alignment already stored (%s)", model_a, model_b, key)
        return {**existing, "reused": True}
    started = time.perf_counter()
    progress = PairProgress((model_a, model_b), logger)  # its time counts from here: joining and preparing are the pair's too
    pair = paired_features(store, manifest_a, manifest_b)
    n_paired = len(pair.sample_ids)
    samples = hashlib.sha256(json.dumps(pair.sample_ids).encode()).hexdigest()  # the rows each side's preparation saw
    if params.unit == "image":
        pair = per_image(store, pair, manifest_a["catalog"]["dataset_version"])
        logger.info("%s x %s: %d paired samples averaged into %d images (alignment.unit 'image')",
                    model_a, model_b, n_paired, len(pair.sample_ids))
    check_common_samples(pair, model_a, model_b, params)
    if pair.only_a or pair.only_b:
        logger.warning("%s x %s: %d samples only in %s (e.g. %s), %d only in %s (e.g. %s); aligning the %d common samples",
                       model_a, model_b, pair.only_a, model_a, examples(pair.examples_only_a) or "-",
                       pair.only_b, model_b, examples(pair.examples_only_b) or "-", len(pair.sample_ids))
    zeros = (zero_vector_samples(pair.xs, pair.sample_ids, manifest_a["catalog"])
             + zero_vector_samples(pair.ys, pair.sample_ids, manifest_b["catalog"]))
    for z in zeros:
        logger.warning("%s layer %d (%s): %d of %d samples are all-zero vectors (e.g. %s); their neighbours are ties",
                       z["model"], z["layer"], z["layer_name"], z["n_samples"], len(pair.sample_ids), examples(z["examples"]))
    requests, versions = metric_requests(params), metric_versions(manifest_a, manifest_b, params)
    shape = (len(pair.xs), len(pair.ys))
    reused, reused_from = reusable_results(store, key, requests, versions, shape, (model_a, model_b), logger)
    for result in reused.values():
        log_interval_notes(result, params.bootstrap, logger)
    to_compute = [r for r in requests if r.name not in reused]
    computed, device = [], None  # device: where the computed metrics ran (None: every one copied)
    if to_compute:  # every metric copied (one dropped from the config): nothing to prepare
        log_why_computed(store, key, manifest_a, manifest_b, params, [r.name for r in to_compute], logger)
        device = alignment_device(params.device)
        if device != "cpu":
            logger.info("%s x %s: aligning on %s", model_a, model_b, device)
        xs, ys = (prepared_model(store, manifest, layers, params, samples)
                  for manifest, layers in ((manifest_a, pair.xs), (manifest_b, pair.ys)))
        try:  # a run beside this one may publish this version first: stop at the next metric then
            with unless_published_meanwhile(lambda: store.has_manifest_file(key), f"{model_a} x {model_b}'s alignment {key}"):
                computed = align_layers(xs, ys, to_compute, permutations=params.permutations, seed=params.seed,
                                        bootstrap=params.bootstrap, names=(model_a, model_b), progress=progress,
                                        groups=permutation_groups(store, manifest_a["catalog"]["dataset_version"],
                                                                  pair.sample_ids, params, (model_a, model_b), logger),
                                        device=device)
        except PublishedMeanwhile as news:
            logger.info("%s; this run stopped computing it and uses that copy", news)
            return {**store.published_meanwhile(key), "reused": True}
    by_name = {**reused, **{r.metric.name: r for r in computed}}
    results = [by_name[r.name] for r in requests]
    degenerate = excluded_layers(results, manifest_a, manifest_b)
    for d in degenerate:
        logger.warning("%s layer %d (%s) left out of %s: %s", d["model"], d["layer"], d["layer_name"], ", ".join(d["metrics"]), d["problem"])
    unscored_a, unscored_b = unscored_layers(results)
    found_a: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    found_b: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    duplicates_a = duplicate_vector_samples(pair.xs, pair.sample_ids, manifest_a["catalog"], unscored_a, found_a)
    duplicates_b = duplicate_vector_samples(pair.ys, pair.sample_ids, manifest_b["catalog"], unscored_b, found_b)
    duplicates = duplicates_a + duplicates_b
    if duplicates:
        image_of = duplicate_images(store, manifest_a["catalog"]["dataset_version"], pair.sample_ids, params.unit)
        log_duplicates(duplicates_a, found_a, len(pair.xs), pair.sample_ids, manifest_a["catalog"], image_of, logger)
        log_duplicates(duplicates_b, found_b, len(pair.ys), pair.sample_ids, manifest_b["catalog"], image_of, logger)
    beyond = out_of_bounds(results)
    for b in beyond:
        logger.warning("%s x %s: %s leaves its registered range [%g, %g] at %d of %d layer pairs (scores %.4g to %.4g): its "
                       "estimate is unreliable at N=%d (more samples; for cknna also a smaller topk; for a metric of your "
                       "own, check the bounds it was registered with). Calibrated scores stay in [0, 1]: 1 for a score "
                       "past the bound it approaches when alike, 0 when the null's threshold itself lies past it",
                       model_a, model_b, b["metric"], b["low"], b["high"], b["n_pairs"], b["of"], b["min"], b["max"],
                       len(pair.sample_ids))
    version = key.rsplit("/", 1)[1]
    scores, best = result_tables(results, manifest_a, manifest_b, version, len(pair.sample_ids), params.unit)
    seconds = time.perf_counter() - started
    manifest = {
        "kind": "alignment",
        "lineage": {
            "dataset_version": manifest_a["catalog"]["dataset_version"],
            "features": {model_a: manifest_a["catalog"]["feature_version"], model_b: manifest_b["catalog"]["feature_version"]},
            "code_version": code_version(*ALIGNMENT_CODE),
        },
        # in name order, as the version; without where it ran (``device``: not part of the version, below)
        "params": {**params.model_dump(exclude={"device"}), "metrics": sorted(params.metrics)},
        "device": device,
        "n_samples": len(pair.sample_ids),
        "unit": params.unit,
        "n_paired_samples": n_paired,
        "only_a": pair.only_a,
        "only_b": pair.only_b,
        "degenerate_layers": degenerate,
        "out_of_bounds": beyond,
        "zero_vectors": zeros,
        "duplicate_vectors": duplicates,
        reused_metrics.FIELD: {r.metric.name: reused_metrics.manifest_entry(r, versions[r.metric.name]) for r in results},
        "reused_metrics": reused_from,
        "seconds": round(seconds, 3),
    }
    raise_if_stopped(f"{model_a} x {model_b}: publishing its alignment")
    published = store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best}, manifest)
    if not published.written:  # another run published this version first: its copy is the store's
        logger.info("%s x %s: %s was published by another run meanwhile; this run's copy is dropped and that one used",
                    model_a, model_b, key)
        return {**published.manifest, "reused": True}
    for r in results:
        logger.info("%s x %s: %s %s%s", model_a, model_b, r.metric.label(),
                    best_summary(r, manifest_a["catalog"]["layer_names"], manifest_b["catalog"]["layer_names"]),
                    f", chance {r.chance_level:.4f}" if r.chance_level is not None else "")
    return {**published.manifest, "reused": False}


def best_summary(result: PairAlignment, names_a: list[str], names_b: list[str]) -> str:
    """``best 0.2844 at layers 17 (head) x 4 (layer.04)``: the pair's best score and its layers by
    index and by name, as the ``alignment_best`` row holds them (``layer_a``, ``layer_name_a``);
    ``no finite score`` where it has none (NULL layers and score there)."""
    layers = scored_best_layers(result)
    if layers is None:
        return "no finite score"
    i, j = layers
    return f"best {result.best:.4f} at layers {i} ({names_a[i]}) x {j} ({names_b[j]})"


def scored_best_layers(result: PairAlignment) -> tuple[int, int] | None:
    """The layers of ``result``'s best score, or None where it has none (no finite score: the
    engine's ``(-1, -1)``, or an infinite best), as the ``alignment_best`` row and the log give them."""
    i, j = result.best_layers
    return (i, j) if min(i, j) >= 0 and math.isfinite(result.best) else None


def log_interval_notes(result: PairAlignment, bootstrap: int, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """The warnings computing ``result`` logged about its bootstrap interval (``tasks.alignment``),
    for a reused result: a degenerate interval, none at all (too few samples for a half-size
    subsample) although ``bootstrap`` resamples were asked for, or subsamples the metric refused."""
    label = result.metric.label()
    if result.ci_degenerate:
        warn_degenerate_interval(label, result.ci_low, result.ci_high, result.best, "its subsamples (reused result)", logger)
    elif bootstrap > 0 and result.bootstrap == 0:
        warn_no_interval(label, "(too few samples for a half-size subsample; reused result)", logger)
    if 0 < result.bootstrap < bootstrap:  # the stored count is of the replicates used
        logger.warning("%s: %d of %d bootstrap subsamples were refused by the metric (undefined there) and left out: the "
                       "interval rests on the other %d (reused result)", label, bootstrap - result.bootstrap, bootstrap,
                       result.bootstrap)


def prepared_model(store: Store, manifest: dict[str, Any], layers: list[np.ndarray], params: AlignmentParams,
                   samples: str) -> PreparedModel:
    """One side of a pair, prepared (outlier clamp, L2 rows: :func:`prepare_layers`) with its
    shared work (``PreparedModel``: degenerate layers, Grams, neighbour lists, encodings). Within
    the pipeline's alignment stage a model's later pairs over the same samples (``samples``: a
    digest of the pair's sample ids) get the one this pair computed (``kept_for_later_pairs``)."""
    catalog = manifest["catalog"]
    name = ("prepared", params.unit, params.outlier_quantile, params.outlier_scope, params.outlier_exact, samples)
    return kept_for_later_pairs(store, manifest, name, lambda: PreparedModel(prepare_layers(
        layers, q=params.outlier_quantile, scope=params.outlier_scope, exact=params.outlier_exact,
        threshold_from=threshold_layers(catalog.get("modality", ""), len(layers)))))


def reusable_results(store: Store, key: str, requests: list[MetricRequest], versions: dict[str, str], shape: tuple[int, int],
                     names: tuple[str, str], logger: logging.Logger | logging.LoggerAdapter) -> tuple[dict[str, PairAlignment], dict[str, str]]:
    """(metric name -> its stored results, metric name -> the alignment version they come from) for
    every metric of ``requests`` that another stored alignment of the pair holds at the same metric
    version (``tasks.reused_metrics``), from the newest such version. A version that cannot be read
    (removed meanwhile, a file not the one its manifest lists, rows not as expected) is logged and
    passed over; a metric no readable version holds is computed."""
    reused: dict[str, PairAlignment] = {}
    sources: dict[str, str] = {}
    for source_key, manifest, held in reused_metrics.stored_versions(store, key.rsplit("/", 1)[0], versions):
        wanted = [r for r in requests if r.name in held and r.name not in reused]
        if not wanted:
            continue
        try:
            results = reused_metrics.stored_results(store, source_key, manifest, wanted, shape)
        except (OSError, ValueError, KeyError) as error:
            logger.warning("%s x %s: not reusing %s from the stored alignment %s (%s)", *names,
                           ", ".join(r.name for r in wanted), source_key, error)
            continue
        version = source_key.rsplit("/", 1)[1]
        for result in results:
            reused[result.metric.name] = result
            sources[result.metric.name] = version
        logger.info("%s x %s: %s reused from alignment %s (same features, parameters, seed and code)", *names,
                    ", ".join(r.name for r in wanted), version)
    return reused, sources


@task(name="align-pair", task_run_name="align-{model_a}-{model_b}", tags=["prh-align"], retries=3,
      retry_delay_seconds=backoff(5, 3), retry_jitter_factor=0.5, retry_condition_fn=retry_transient)
def align_pair(
    store_url: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams, model_a: str, model_b: str
) -> dict[str, Any]:
    """Score every layer pair of two models with every metric (or reuse a stored result): ``align_to_store``.
    Its run being stopped, the task run ends ``Cancelled`` (``tasks.stopped_task.run_in_flight``)."""
    return run_in_flight(f"aligning {model_a} x {model_b}",
                         lambda: align_to_store(store_url, manifest_a, manifest_b, params, get_run_logger()))
