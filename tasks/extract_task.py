"""Prefect task: extract every layer's pooled features of one model over a stored dataset."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.utilities.timeout import timeout

from storage import layout
from storage.features import layer_tables
from storage.shards import read_shard, remove_partial, write_shard
from storage.store import Store
from storage.verify import checked_for_reuse
from storage.versioning import code_version, content_id, refuse_loaded_library
from tasks.extract.sources import distribution_version
from tasks.extract.finite import check_finite
from tasks.extract.spec import ModelSpec
from tasks.feature_copy import published_elsewhere, reuse_renamed
from tasks.no_results import TASK_OPTIONS
from tasks.retries import ModelLoadTimeout, backoff, model_load_timeout, retry_transient
from tasks.stop_request import PublishedMeanwhile, raise_if_stopped, unless_published_meanwhile
from tasks.stopped_task import run_in_flight

#: Part of every feature version. Raise it when this module changes what is stored (it is not
#: hashed itself, so that a change to its orchestration does not re-extract every model): the
#: rows written per image and caption, the order of layers, the shard layout.
FEATURE_SCHEMA_VERSION = 1
#: The code a feature version depends on: the extractors, the pixel conversion they call
#: (``tasks.data.images.to_rgb``) and the feature file schema.
FEATURE_CODE = ("tasks/extract", "tasks/data/images.py", "storage/features.py")
#: Modules of FEATURE_CODE that cannot change a feature: the checks that run before any model
#: loads (where a model is read from is in the fingerprint), the checks that only refuse (they raise
#: or return None) and the error type.
FEATURE_CODE_EXCLUDED = ("tasks/extract/preflight.py", "tasks/extract/refusals.py", "tasks/extract/errors.py")


def model_fingerprint(spec: ModelSpec) -> dict[str, Any]:
    """What determines ``spec``'s features, as hashed into its feature version and stored as its
    manifest's ``spec``: ``ModelSpec.fingerprint()``, plus ``trust_remote_code: true`` where the
    entry sets it. With it, a checkpoint whose ``config.json`` maps ``AutoModel`` (``auto_map``)
    to its own code for a model type transformers knows loads that code; without it, transformers'
    own class of that type: the same id and revision, other features (a tiny BERT whose own code
    doubles the embeddings: 0.69 apart on every layer), which had shared one feature version, so
    whichever ran first was served to the other. Added here, not in the fingerprint, so that the
    extraction code version (and with it every model's features) stays as it was; an entry
    without the flag keeps its version.

    A ``random_hf`` model also names the installed torch (``torch``: its distribution and
    version): its weights are drawn by torch's generator and ``torch.nn.init``, so another torch
    may draw other weights for the same seed, config and transformers; they had been reused as if
    drawn alike. Its public version only (``2.13.0`` of ``2.13.0+cpu`` and ``2.13.0+cu128``): the
    CPU and CUDA builds of one release draw the same weights, which a CPU run and a GPU worker
    share."""
    fingerprint = spec.fingerprint()
    if spec.trust_remote_code:
        fingerprint["trust_remote_code"] = True
    if spec.loader == "random_hf":
        torch_version = distribution_version("torch")
        if torch_version["version"] is not None:
            torch_version["version"] = torch_version["version"].split("+", 1)[0]
        fingerprint["torch"] = torch_version
    return fingerprint


def feature_version(dataset_version: str, spec: ModelSpec) -> str:
    """Content id of a model's features: dataset, everything about the model
    (:func:`model_fingerprint`), the code."""
    return content_id(
        {
            "dataset_version": dataset_version,
            "model": model_fingerprint(spec),
            "code_version": code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED),
            "schema": FEATURE_SCHEMA_VERSION,
        }
    )


def stored_features(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec,
                    renamed: bool = False) -> dict[str, Any] | None:
    """Manifest of this model's features if already published, else None. ``renamed``: else the
    manifest of the same version published under another model name (a model renamed in the zoo),
    which ``extract_to_store`` copies instead of extracting (unless its files prove damaged)."""
    dataset_version = dataset_manifest["catalog"]["dataset_version"]
    version = feature_version(dataset_version, spec)
    store = Store(store_url)
    manifest = store.manifest(layout.features_key(dataset_version, spec.name, version))
    if manifest is None and renamed:
        found = published_elsewhere(store, dataset_version, spec.name, version, logging.getLogger("prh.extract"))
        manifest = found[0][1] if found else None
    return manifest


DEFAULT_SHARD_SIZE = 2048


#: Tag of the tasks that hold a GPU: `prefect concurrency-limit create prh-gpu <number of GPUs>`.
GPU_TAG = "prh-gpu"

#: Per-shard measurements stored with each shard and summed over shards.
_SHARD_SUMS = ("nll_nats", "predicted_tokens", "text_bytes", "bpb_sum", "bpb_texts", "bpb_truncated_texts", "truncated_texts")


@task(name="extract-features", task_run_name="extract-{spec.name}", tags=[GPU_TAG], retries=2,
      retry_delay_seconds=backoff(10, 2, factor=3), retry_jitter_factor=0.5, retry_condition_fn=retry_transient,
      **TASK_OPTIONS)  # the store is the cache: tasks/no_results.py
def extract_features(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """Extract (or reuse) ``spec``'s features for the dataset; returns the feature manifest. Its
    run being stopped, the task run ends ``Cancelled`` (``tasks.stopped_task.run_in_flight``)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = None

    def report(done: int, total: int) -> None:
        # A progress artifact per model, visible in the UI while a long extraction runs.
        nonlocal artifact_id
        percent = 100.0 * done / max(total, 1)
        if artifact_id is None:
            artifact_id = create_progress_artifact(percent, description=f"extracting {spec.name}: {done}/{total} items")
        else:
            update_progress_artifact(artifact_id, percent, description=f"extracting {spec.name}: {done}/{total} items")

    return run_in_flight(f"extracting {spec.name}",
                         lambda: extract_to_store(store_url, dataset_manifest, spec, get_run_logger(), on_progress=report))


@task(name="reuse-features", task_run_name="reuse-{spec.name}", retries=2,
      retry_delay_seconds=backoff(10, 2, factor=3), retry_jitter_factor=0.5, retry_condition_fn=retry_transient,
      **TASK_OPTIONS)
def reuse_features(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The stored feature manifest of a model whose features are published under its own name,
    with ``reused: True``. Not tagged ``prh-gpu``: it reads one manifest, so a run whose models
    are all stored (a nightly with an unchanged zoo, the alignment stage on the CPU pool) never
    queues behind other runs' extractions for a GPU slot. Its run being stopped, the task run ends
    ``Cancelled`` (``tasks.stopped_task.run_in_flight``)."""
    return run_in_flight(f"reusing {spec.name}'s features",
                         lambda: extract_to_store(store_url, dataset_manifest, spec, get_run_logger()))


def extract_to_store(
    store_url: str,
    dataset_manifest: dict[str, Any],
    spec: ModelSpec,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Extract ``spec``'s features shard by shard, resuming from stored shards, then publish.

    A version already published under this name is returned as it is; one published under
    another model name (the model was renamed) is copied under this name without loading the
    model (``tasks.feature_copy``); both come back with ``reused: True``.

    Vision models run once per distinct image (rows of captions of the same image share it);
    language models once per caption. Each shard of ``shard_size`` items is stored atomically
    as soon as it is done, so a run killed mid-model continues from the last complete shard.
    Progress is logged per batch (at most every 5 s) and passed to ``on_progress(done, total)``.
    """
    logger = logger or logging.getLogger("prh.extract")
    store = Store(store_url)
    dataset_version = dataset_manifest["catalog"]["dataset_version"]
    version = feature_version(dataset_version, spec)
    key = layout.features_key(dataset_version, spec.name, version)
    existing = store.manifest(key)
    if existing is not None:
        checked_for_reuse(store, key, existing, f"the stored features of model {spec.name!r}")
        logger.info("%s: features %s already stored, nothing to extract", spec.name, version)
        return {**existing, "reused": True}
    copied = reuse_renamed(store, dataset_version, spec.name, version, key, logger)
    if copied is not None:  # the same version under another name (the model was renamed): nothing computed
        return {**copied, "reused": True}

    checked_for_reuse(store, dataset_manifest["key"], dataset_manifest,
                      f"the stored dataset that model {spec.name!r} would be extracted from")
    columns = ["sample_id", "image_id", "text"] + (["image"] if spec.modality == "vision" else [])
    samples = store.read_table(f"{dataset_manifest['key']}/{layout.SAMPLES_FILE}", columns=columns)
    sample_ids = samples.column("sample_id").to_pylist()
    if spec.modality == "vision":
        image_ids = samples.column("image_id").to_pylist()
        first: dict[str, int] = {}
        for row, image_id in enumerate(image_ids):
            first.setdefault(image_id, row)
        items = pc.take(samples.column("image"), list(first.values())).to_pylist()
        item_ids = [sample_ids[row] for row in first.values()]  # one sample of each image
        position = {image_id: i for i, image_id in enumerate(first)}
        expand = np.array([position[i] for i in image_ids]) if len(first) != len(image_ids) else None
    else:
        items = samples.column("text").to_pylist()
        item_ids = sample_ids
        expand = None

    started = time.perf_counter()
    try:  # a run beside this one (a nightly, a run from the UI) may publish this version first
        with unless_published_meanwhile(lambda: store.has_manifest_file(key), f"{spec.name}'s features {version}"):
            extracted = _extract_shards(store, key, spec, items, shard_size, logger, started, on_progress, item_ids)
    except PublishedMeanwhile as news:
        logger.info("%s: %s; this run stopped extracting it and uses that copy", spec.name, news)
        published = store.published_meanwhile(key)
        _remove_shards(store, key, spec.name, logger)  # a shard this run wrote after the other run removed them
        return {**published, "reused": True}
    layers = [np.concatenate(parts) for parts in zip(*extracted.shards)]
    check_finite(spec.name, extracted.model["layer_names"], layers, item_ids)  # stored shards too: never publish NaN/Inf
    if expand is not None:
        layers = [x[expand] for x in layers]
    seconds = time.perf_counter() - started

    fingerprint = model_fingerprint(spec)
    catalog = {
        "model": spec.name,
        "feature_version": version,
        "dataset_version": dataset_version,
        "modality": spec.modality,
        "loader": spec.loader,
        "model_id": spec.id,
        "revision": spec.revision,
        "commit": extracted.model.get("commit"),
        "source_digest": source_digest(fingerprint),
        "pooling": spec.pooling,
        "dtype": spec.dtype,
        "param_count": extracted.model["param_count"],
        "n_layers": len(layers),
        "layer_names": extracted.model["layer_names"],
        "layer_widths": [int(x.shape[1]) for x in layers],
        "bits_per_byte": extracted.bits_per_byte,
        "bits_per_byte_pooled": extracted.extras.get("bits_per_byte_pooled"),
        "n_samples": len(sample_ids),
        "code_version": code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED),
        "device": extracted.model["device"],
        "seconds": round(seconds, 3),
    }
    manifest = {"kind": "features", "catalog": catalog, "spec": fingerprint,
                "extras": extracted.extras, "resumed_shards": extracted.resumed}
    raise_if_stopped(f"{spec.name}: publishing its features (every shard is stored)")
    library = fingerprint.get("library") or {}
    refuse_loaded_library(library.get("distribution"), library.get("version"))  # upgraded after the version was made
    published = store.publish(key, layer_tables(spec.name, version, sample_ids, layers), manifest)
    _remove_shards(store, key, spec.name, logger)
    if not published.written:  # another run published this version first: its copy is the store's
        logger.info("%s: %s was published by another run meanwhile; this run's copy is dropped and that one used",
                    spec.name, key)
        return {**published.manifest, "reused": True}
    distinct = f" ({len(items)} distinct images)" if len(items) != len(sample_ids) else ""
    logger.info("%s: %d layers x %d samples%s in %.1fs on %s (batch size %d) -> %s", spec.name, len(layers), len(sample_ids),
                distinct, seconds, catalog["device"], spec.batch_size, key)
    return {**published.manifest, "reused": False}


def _remove_shards(store: Store, key: str, name: str, logger: Any) -> None:
    """Remove the shards of the published version ``key``; a failure is only logged."""
    try:
        remove_partial(store, key)
    except Exception as error:  # noqa: BLE001 - the features are published; `prh gc` clears these shards later
        logger.warning("%s: features published, but their shards under %s/_partial stay (%s); prh gc removes them",
                       name, key, error)


def source_digest(fingerprint: dict[str, Any]) -> str | None:
    """What pins the weights' content, from a spec's fingerprint: ``sha256:<hex>`` of a local
    checkpoint folder or of a split-zip's parts; None for hub ids (``commit`` pins those),
    packaged and random models."""
    source = fingerprint.get("source") or {}
    digest = source.get("local_digest") or source.get("digest")
    return f"sha256:{digest}" if isinstance(digest, str) else None


@dataclass
class _Extraction:
    """Every shard's layers, what the model says of itself (``_model_facts``), bits per byte and the
    summed shard measurements, and how many shards were read back instead of computed."""

    shards: list[list[np.ndarray]]
    model: dict[str, Any]
    bits_per_byte: float | None
    extras: dict[str, Any]
    resumed: int


class _LoadLock:
    """Model loads in threads (``PRH_TASK_RUNNER=threads``): a seeded random init draws its weights
    from torch's process-wide generator (seeded inside ``fork_rng``), so it runs alone; the other
    loads run together, but never beside one. Without it two random inits in threads drew from
    each other's sequence: one feature version held different numbers from run to run."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._alone = False

    @contextmanager
    def hold(self, alone: bool) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone and (not alone or self._shared == 0))
            if alone:
                self._alone = True
            else:
                self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._shared -= 1
                self._changed.notify_all()


_LOADS = _LoadLock()
#: Loaders whose models draw their weights from torch's process-wide generator.
SEEDED_LOADERS = ("random_hf",)


def _load_with_timeout(spec: ModelSpec) -> Any:
    """Load the model, giving up after ``PRH_MODEL_LOAD_TIMEOUT`` seconds (waiting for another
    thread's seeded random init does not count: :class:`_LoadLock`)."""
    from tasks.extract.extractor import load_extractor

    seconds = model_load_timeout()
    with _LOADS.hold(alone=spec.loader in SEEDED_LOADERS):
        try:
            with timeout(seconds=seconds, timeout_exc_type=ModelLoadTimeout):
                return load_extractor(spec)
        except ModelLoadTimeout:  # Prefect's "Scope timed out after 0.001 second(s)." named neither the model nor the limit
            raise ModelLoadTimeout(f"{spec.name}: loading {spec.id!r} took longer than PRH_MODEL_LOAD_TIMEOUT={seconds:g} s "
                                   "(raise it for a large download; 0: no limit)") from None


def _extract_shards(store: Store, key: str, spec: ModelSpec, items: list[Any], shard_size: int,
                    logger: Any, started: float, on_progress: Callable[[int, int], None] | None = None,
                    item_ids: list[str] | None = None) -> _Extraction:
    """Every shard's layers, read back when stored, else computed (loading the model once).

    A computed shard is written (Parquet encoding and upload) by one background thread while the
    next shard is computed; at most one write is in flight, so memory holds at most two shards,
    and a write's error surfaces before the next shard's write is queued (at the latest, before
    this returns)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prh-shard-writer") as writer:
        pending: list[Future[None]] = []

        def write_behind(index: int, layers: list[np.ndarray], loss: dict[str, Any], items: tuple[int, int]) -> None:
            while pending:
                pending.pop().result()  # the previous shard is stored (or its error raised here)
            pending.append(writer.submit(write_shard, store, key, index, layers, loss, items))

        extraction = _compute_shards(store, key, spec, items, shard_size, logger, started, on_progress, item_ids, write_behind)
        while pending:
            pending.pop().result()
    return extraction


def time_left(seconds: float, done: int, left: int) -> str:
    """``, about 95 s left`` for the extraction progress line: ``left`` items at the pace of the
    ``done`` items computed in ``seconds`` since the model loaded (a resumed extraction's stored
    shards and the model's loading do not count); nothing when none is left or none was computed."""
    if left <= 0 or done <= 0:
        return ""
    return f", about {seconds / done * left:.0f} s left"


def item_unit(spec: ModelSpec) -> str:
    """What one extraction item of ``spec`` is, as the progress log counts them: a vision model
    runs once per distinct image (captions of one image share it), a language model once per
    caption. The log had said "items", and the demo's vision models counted 1018 of them against
    the run's 1024 samples (six of its emoji render as the same picture), unexplained."""
    return "images" if spec.modality == "vision" else "captions"


def _compute_shards(store: Store, key: str, spec: ModelSpec, items: list[Any], shard_size: int,
                    logger: Any, started: float, on_progress: Callable[[int, int], None] | None,
                    item_ids: list[str] | None, write: Callable[[int, list[np.ndarray], dict[str, Any], tuple[int, int]], None]
                    ) -> _Extraction:
    from tasks.extract.extractor import extract_all

    total = len(items)
    bounds = [(lo, min(lo + shard_size, total)) for lo in range(0, total, shard_size)]
    extractor = None
    shards: list[list[np.ndarray]] = []
    resumed = 0
    sums: dict[str, float] = {}
    model: dict[str, Any] | None = None  # what the model says of itself, as the shards recorded it
    computing: list[float] = []  # (when the model had loaded, the first item it computed): the pace of the time left
    try:
        for index, (lo, hi) in enumerate(bounds):
            widths = list(extractor.layer_dims) if extractor is not None else None
            stored = read_shard(store, key, index, hi - lo, widths, items=(lo, hi))
            if stored is not None:
                layers, loss = stored
                loss = dict(loss)
                recorded = loss.pop("model", None)
                if extractor is None:  # a loaded model speaks for itself
                    model = recorded or model
                resumed += 1
                logger.info("%s: shard %d/%d already stored (items %d-%d), resuming after it", spec.name, index + 1, len(bounds), lo, hi)
            else:
                if extractor is None:
                    logger.info("%s: loading %s (%s, %s)", spec.name, spec.id, spec.loader, spec.modality)
                    extractor = _load_with_timeout(spec)
                    model = _model_facts(extractor)
                    logger.info("%s: loaded on %s (%s parameters), batch size %d", spec.name, model["device"],
                                f"{model['param_count']:,}", spec.batch_size)
                if not computing:
                    computing.extend((time.perf_counter(), lo))
                n_batches = -(-total // spec.batch_size)
                last = [0.0]

                def progress(done: int, _n: int, lo: int = lo) -> None:
                    raise_if_stopped(f"{spec.name}: shard {index + 1} (its complete shards are stored)")
                    now = time.perf_counter()
                    overall = lo + done
                    if overall == total or now - last[0] > 5 or done <= spec.batch_size:
                        last[0] = now
                        logger.info("%s: batch %d/%d (%d/%d %s, %.1fs%s)", spec.name, -(-overall // spec.batch_size), n_batches,
                                    overall, total, item_unit(spec), now - started,
                                    time_left(now - computing[0], overall - int(computing[1]), total - overall))
                        if on_progress is not None:
                            on_progress(overall, total)

                features = extract_all(extractor, items[lo:hi], progress=progress)
                layers = features.layers
                ids = item_ids[lo:hi] if item_ids is not None else [f"item {i}" for i in range(lo, hi)]
                check_finite(spec.name, features.layer_names, layers, ids)  # fail at the first bad shard, store nothing
                loss = {k: features.extras[k] for k in _SHARD_SUMS if k in features.extras}
                write(index, layers, {**loss, "model": model}, (lo, hi))
            shards.append(layers)
            for name, value in loss.items():
                sums[name] = sums.get(name, 0) + value
        if model is None or len(model["layer_names"]) != len(shards[0] if shards else []):
            # no shard (nothing to extract), or facts that do not fit the shards: ask the model itself
            extractor = extractor or _load_with_timeout(spec)
            model = _model_facts(extractor)
        extras: dict[str, Any] = {}
        if spec.modality == "language":
            extras["truncated_texts"] = int(sums.get("truncated_texts", 0))
            if model.get("pad_free"):
                extras["pad_free"] = model["pad_free"]
            if extras["truncated_texts"]:
                logger.warning("%s: %d of %d captions are longer than max_length=%d tokens and were cut to fit it (raise "
                               "max_length to keep them whole)", spec.name, extras["truncated_texts"], total, spec.max_length)
        bpb = None
        if model["is_causal_lm"] and sums.get("text_bytes"):
            from tasks.extract.bpb import bits_per_byte, mean_bits_per_byte

            pooled = None
            if sums.get("predicted_tokens") and sums.get("bpb_texts"):
                bpb = mean_bits_per_byte(sums.get("bpb_sum", 0.0), int(sums["bpb_texts"]))
                pooled = bits_per_byte(sums.get("nll_nats", 0.0), int(sums["text_bytes"]))
            else:  # 0 would read as a perfect language model
                logger.warning("%s: no caption token was scored (max_length=%d leaves no token after the first, or the "
                               "captions are one token each): bits per byte left empty", spec.name, spec.max_length)
            extras.update(bits_per_byte_pooled=pooled, bpb_sum=sums.get("bpb_sum", 0.0), bpb_texts=int(sums.get("bpb_texts", 0)),
                          nll_nats=sums.get("nll_nats", 0.0), predicted_tokens=int(sums.get("predicted_tokens", 0)),
                          text_bytes=int(sums["text_bytes"]), bpb_truncated_texts=int(sums.get("bpb_truncated_texts", 0)))
        return _Extraction(shards, model, bpb, extras, resumed)
    finally:  # the next model of the zoo starts with the memory this one held (its facts are kept)
        if extractor is not None:
            extractor.release()


def _model_facts(extractor: Any) -> dict[str, Any]:
    """What the features' manifest needs from the loaded model, kept in every shard it computes so
    that a run finding every shard stored publishes without loading the model again."""
    facts = {"layer_names": list(extractor.layer_names), "param_count": int(extractor.param_count),
             "is_causal_lm": bool(extractor.is_causal_lm), "device": str(getattr(extractor, "device", "cpu")),
             "commit": getattr(extractor, "source_commit", None)}
    pad_free = getattr(extractor, "pad_free_reason", None)  # a language model that reads its pads: why it ran pad-free
    return {**facts, "pad_free": pad_free} if pad_free else facts

