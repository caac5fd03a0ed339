"""Join two models' stored features on ``sample_id`` with DuckDB and hand them over as arrays.

Rows are matched by id, never by position: samples present for only one model are counted and
reported (with a few example ids), and the returned arrays are aligned row for row in
``sample_id`` order.

How (only id columns take part in joins; vectors are never hashed or sorted):

1. DuckDB joins the two models' ``sample_id`` columns (layer 0 of each) into ``common``:
   ``(sample_id, out_row)`` with ``out_row = 0..N-1`` in ``sample_id`` order.
2. For every layer file, DuckDB joins its ``(sample_id, file_row_number)`` with ``common``,
   giving ``dest[file_row] = out_row`` (``-1`` for rows outside the common set), and streams the
   file's ``vector`` column as Arrow record batches, each copied once into its rows of a
   preallocated ``(N, D) float32`` array. Peak memory is the arrays handed over plus one batch.

Within :func:`shared_features` (the pipeline's alignment stage, which names how many pairs each
model has) a model with more than one pair is instead read whole by its first pair, in the same
way over all its samples, and kept in this process until its last pair has taken its rows
(``PRH_FEATURE_CACHE_MB``, default 4096 MiB, least recently used out first; 0: nothing kept):
a zoo of V vision and L language models reads V + L models' files, not 2·V·L (most of the
alignment stage's time at the paper's scale). Feature versions never change; the kept arrays
are read-only and keyed by the store, the version and its files' SHA-256. What a pair computes
from one side (the alignment task's prepared layers, Grams, neighbour lists and encodings) is
kept in the same way and budget for the model's later pairs (:func:`kept_for_later_pairs`).

Bad stored features raise ``FeatureError`` (a ``ValueError``) naming the model, the layer (index
and name) and the file: duplicate or NULL ids, NULL vectors, ragged vectors, layer files that do
not hold the samples their model's layer 0 holds, and NaN/Inf values in the common samples (all such
layers of both models in one message, each with its count of bad samples and a few of their ids).
On a remote store (S3) the layer files are first fetched concurrently into a temporary local
folder (one GET per file) and read from there.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from storage.env_numbers import env_number
from storage.features import FeatureError, examples, non_finite_rows
from storage.layout import layer_file
from storage.store import Store, escape_glob

BATCH_ROWS = 8192
T = TypeVar("T")


@dataclass
class PairedFeatures:
    """Features of two models over their common samples.

    ``xs[l]``: ``(N, D_l) float32`` for layer ``l`` of model A, rows in ``sample_ids`` order;
    ``ys`` likewise for model B. ``only_a``/``only_b``: how many samples one model holds and the
    other does not; ``examples_only_a``/``examples_only_b``: a few of their ids (sorted).
    """

    sample_ids: list[str]
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    only_a: int
    only_b: int
    examples_only_a: list[str] = field(default_factory=list)
    examples_only_b: list[str] = field(default_factory=list)

    @property
    def n_a(self) -> int:
        """Samples model A holds (common + only in A)."""
        return len(self.sample_ids) + self.only_a

    @property
    def n_b(self) -> int:
        """Samples model B holds (common + only in B)."""
        return len(self.sample_ids) + self.only_b


def _layer_uris(store: Store, manifest: dict) -> list[str]:
    return [store.uri(f"{manifest['key']}/{layer_file(i)}") for i in range(int(manifest["catalog"]["n_layers"]))]


def layer_labels(manifest: dict) -> list[str]:
    """``"model 'vit' layer 3 'blocks.3'"`` for every layer of a features manifest (used in errors)."""
    catalog = manifest["catalog"]
    names = catalog.get("layer_names") or []
    labels = []
    for i in range(int(catalog["n_layers"])):
        name = f" {names[i]!r}" if i < len(names) and names[i] is not None else ""
        labels.append(f"model {catalog.get('model', '?')!r} layer {i}{name}")
    return labels


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def paired_features(store: Store, manifest_a: dict, manifest_b: dict) -> PairedFeatures:
    """Join the features of two published feature versions on ``sample_id``.

    Returns ``PairedFeatures`` whose ``xs``/``ys`` are ``(N, D_l) float32`` arrays (the caller's
    own) over the ``N`` samples both versions hold, in ``sample_id`` order (``N`` may be 0:
    callers decide how many they need). A model shared by later pairs (:func:`shared_features`)
    is read whole once and kept; another's common rows are read straight from its files.

    Raises ``FeatureError`` for unusable stored features (see the module docstring).
    """
    with ExitStack() as stack:
        sides = [_side(store, manifest_a, manifest_b["key"], stack), _side(store, manifest_b, manifest_a["key"], stack)]
        con = duckdb.connect(":memory:")
        stack.callback(con.close)
        counts = [side.register_ids(con, f"ids_{name}") for side, name in zip(sides, "ab")]
        con.execute("CREATE TEMP TABLE common AS SELECT sample_id, (row_number() OVER (ORDER BY sample_id) - 1)::BIGINT "
                    "AS out_row FROM (SELECT sample_id FROM ids_a JOIN ids_b USING (sample_id))")
        ids = con.sql("SELECT sample_id FROM common ORDER BY out_row").to_arrow_table().column(0).to_pylist()
        only_a = _only_in(con, "ids_a", "ids_b") if counts[0] > len(ids) else []
        only_b = _only_in(con, "ids_b", "ids_a") if counts[1] > len(ids) else []
        xs, ys = (side.layers(con, f"ids_{name}", len(ids)) for side, name in zip(sides, "ab"))
        _check_finite(sides[0].labels + sides[1].labels, xs + ys, ids)
        return PairedFeatures(ids, xs, ys, counts[0] - len(ids), counts[1] - len(ids), only_a, only_b)


class _Side:
    """One model of a pair: its layers' labels, and either its cached arrays (``features``) or
    the local paths of its layer files (read for the common rows only)."""

    def __init__(self, labels: list[str], features: "ModelFeatures | None" = None, files: list[str] | None = None) -> None:
        self.labels, self.features, self.files = labels, features, files or []
        self._rows = 0

    def register_ids(self, con: duckdb.DuckDBPyConnection, table: str) -> int:
        """Make ``table`` (``sample_id``, and ``row`` for cached arrays) in ``con``; its row count."""
        if self.features is not None:
            ids = self.features.ids
            con.register(table, pa.table({"sample_id": ids, "row": pa.array(np.arange(len(ids)))}))
            return len(ids)
        names = dict(zip(self.files, self.labels))
        self._rows = _check_ids(con, self.files[0], names)
        con.execute(f"CREATE TEMP VIEW {table} AS SELECT sample_id FROM read_parquet({_quote(self.files[0])})")
        return self._rows

    def layers(self, con: duckdb.DuckDBPyConnection, table: str, n_common: int) -> list[np.ndarray]:
        """Every layer's ``(n_common, D) float32`` rows in ``common.out_row`` order."""
        if self.features is not None:
            rows = con.sql(f"SELECT i.row FROM common c JOIN {table} i USING (sample_id) ORDER BY c.out_row").fetchnumpy()["row"]
            return [np.take(x, rows, axis=0) for x in self.features.layers]
        names = dict(zip(self.files, self.labels))
        return [_load_layer(con, uri, n_common, _same_rows(con, self.files, i, self._rows, names), names)
                for i, uri in enumerate(self.files)]


def _side(store: Store, manifest: dict, partner: str, stack: ExitStack) -> _Side:
    """``manifest``'s side of its pair with the version ``partner``: its cached arrays when a later
    pair will read it again (:func:`shared_features`), else its layer files (fetched into a
    temporary folder from S3)."""
    features = _CACHE.take(store, manifest, partner)
    if features is not None:
        return _Side(features.labels, features=features)
    files, labels = _local_layer_files(store, manifest, stack)
    return _Side(labels, files=files)


def _local_layer_files(store: Store, manifest: dict, stack: ExitStack) -> tuple[list[str], list[str]]:
    """(paths DuckDB reads, labels for messages) of a version's layer files: the store's own
    paths on a local store (escaped: DuckDB reads each as a pattern, a folder 'exp [1]' too), else
    copies fetched concurrently into a temporary folder that ``stack`` removes."""
    uris = _layer_uris(store, manifest)
    labels = [f"{label} ({uri})" for label, uri in zip(layer_labels(manifest), uris)]
    if store.is_local:
        return [escape_glob(uri) for uri in uris], labels
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="prh-pairing-"))
    remote = [uri.split("://", 1)[1] for uri in uris]
    local = [os.path.join(tmp, f"{i:04d}-{os.path.basename(path)}") for i, path in enumerate(remote)]
    store.fs.get(remote, local)
    return local, labels


@dataclass(frozen=True)
class ModelFeatures:
    """One feature version's layers over all its samples: ``ids`` (text) in ``sample_id`` order,
    ``layers[l]`` ``(n, D_l) float32`` in that row order (read-only: shared by every pair), and
    each layer's label for messages (model, layer, file)."""

    ids: pa.Array
    layers: list[np.ndarray]
    labels: list[str]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.layers) + self.ids.nbytes


#: ``PRH_FEATURE_CACHE_MB``: MiB of feature arrays (and work derived from them) kept per process
#: for the pairs still to come.
CACHE_ENV = "PRH_FEATURE_CACHE_MB"
DEFAULT_CACHE_MB = 4096.0


@contextmanager
def shared_features(store_url: str, pairs_per_model: Mapping[str, int]) -> Iterator[None]:
    """Within the block, a model (by name, in the store at ``store_url``) that ``pairs_per_model``
    gives more than one pair is read whole by its first pair and kept in this process
    (``PRH_FEATURE_CACHE_MB``, least recently used out first) until its last pair has read it: the
    pipeline's alignment stage reads each model once, not once per partner. Outside any such block
    (a notebook, one pair) nothing is kept and only the common rows are read."""
    owners = {(Store(store_url).url, name): count for name, count in pairs_per_model.items()}
    _CACHE.expect(owners)
    try:
        yield
    finally:
        _CACHE.forget(owners)


def _read_model(store: Store, manifest: dict) -> ModelFeatures:
    with ExitStack() as stack:
        return _load_model(*_local_layer_files(store, manifest, stack))


def _load_model(files: list[str], labels: list[str]) -> ModelFeatures:
    """Read local Parquet layer files of one model (``labels``: each file's label in errors)."""
    names = dict(zip(files, labels))
    con = duckdb.connect(":memory:")
    try:
        n = _check_ids(con, files[0], names)
        con.execute(f"CREATE TEMP TABLE common AS SELECT sample_id, (row_number() OVER (ORDER BY sample_id) - 1)::BIGINT "
                    f"AS out_row FROM read_parquet({_quote(files[0])})")
        ids = con.sql("SELECT sample_id FROM common ORDER BY out_row").to_arrow_table().column(0).combine_chunks()
        layers = [_load_layer(con, uri, n, _same_rows(con, files, i, n, names), names) for i, uri in enumerate(files)]
    finally:
        con.close()
    for layer in layers:
        layer.flags.writeable = False  # shared by every pair: never changed in place
    return ModelFeatures(ids.cast(pa.string()), layers, labels)


class _FeatureCache:
    """The models of :func:`shared_features` blocks: how many pairs each still has to come, and
    the arrays of those read (least recently used first out past the byte budget). One reader per
    version at a time (two pairs of one model in threads read it once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, Any] = OrderedDict()  # ModelFeatures, and derived items (kept_for_later_pairs)
        self._left: dict[tuple[str, str], int] = {}
        self._done: set[tuple[tuple[str, str], tuple[str, str]]] = set()
        self._reading: dict[tuple[str, ...], threading.Lock] = {}
        self._building: dict[tuple, _Building] = {}

    def expect(self, owners: Mapping[tuple[str, str], int]) -> None:
        with self._lock:
            for owner, count in owners.items():
                self._left[owner] = self._left.get(owner, 0) + count

    def forget(self, owners: Mapping[tuple[str, str], int]) -> None:
        with self._lock:
            for owner, count in owners.items():
                left = self._left.get(owner, 0) - count
                if left > 0:
                    self._left[owner] = left
                else:
                    self._left.pop(owner, None)
            for key in [k for k in self._items if (k[0], k[1]) not in self._left]:
                del self._items[key]
            self._done = {done for done in self._done if done[0] in self._left}

    def take(self, store: Store, manifest: dict, partner: str) -> ModelFeatures | None:
        """The version's arrays for one more pair (with the version ``partner``), read whole now
        if a later pair will want them too and they fit the budget; None: read its common rows
        from its files instead. A pair counts once: a retry of it takes without counting."""
        owner = _owner(store, manifest)
        key = (*owner, manifest["key"], json.dumps(manifest.get("files"), sort_keys=True))
        with self._lock:
            if owner not in self._left:  # outside any shared_features block: nothing kept
                return None
            left = self._count_off(owner, (manifest["key"], partner))
            budget = cache_budget()
            self._shrink(budget)
            if key in self._items:
                features = self._items[key]
                if left > 0:
                    self._items.move_to_end(key)
                else:
                    del self._items[key]  # its last pair
                return features
            if left <= 0 or not 0 < _model_bytes(manifest) <= budget:  # a model too big is never read whole
                return None
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                if self._left.get(owner, 0) <= 0:  # another thread's pair read it meanwhile, and no pair is left
                    return None
            try:
                features = _read_model(store, manifest)
            finally:
                with self._lock:
                    self._reading.pop(key, None)
            with self._lock:
                if features.nbytes <= budget and self._left.get(owner, 0) > 0:  # a later pair still wants it
                    self._items[key] = features
                    self._shrink(budget)
            return features

    def derived(self, store: Store, manifest: dict, name: tuple, build: Callable[[], Any]) -> Any:
        """``build()``'s result for the version (``name``: what it is, e.g. a preparation's
        parameters and sample set), kept like the version's arrays while later pairs of its model
        are to come (call it after :meth:`take`, which counted this pair off); the last pair gets
        the kept one and lets it go. Two threads asking at once wait for one build. Outside any
        :func:`shared_features` block: ``build()``, nothing kept."""
        owner = _owner(store, manifest)
        key = (*owner, manifest["key"], json.dumps(manifest.get("files"), sort_keys=True), "derived", *name)
        with self._lock:
            if owner not in self._left:
                building = None
            else:
                item = self._hand_out(owner, key)
                if item is not None:
                    return item
                building = self._building.setdefault(key, _Building())
                building.waiting += 1
        if building is None:
            return build()
        with building.lock:
            try:
                with self._lock:
                    building.waiting -= 1
                    item = self._hand_out(owner, key)
                if item is None:
                    item = build()  # an error here leaves the next waiter to build
                    with self._lock:
                        budget = cache_budget()
                        if (self._left.get(owner, 0) > 0 or building.waiting) and _size(item) <= budget:
                            self._items[key] = item
                            self._shrink(budget)
                        elif self._left.get(owner, 0) <= 0:
                            self._drop(owner)  # the model's last pair: nothing of it is wanted any more
                return item
            finally:
                with self._lock:
                    if not building.waiting and self._building.get(key) is building:
                        del self._building[key]

    def _hand_out(self, owner: tuple[str, str], key: tuple) -> Any:
        """The kept item ``key`` (lock held), let go when no later pair or waiting thread wants it; None if not kept."""
        if key not in self._items:
            return None
        building = self._building.get(key)
        if self._left.get(owner, 0) > 0 or (building is not None and building.waiting):
            self._items.move_to_end(key)
            return self._items[key]
        item = self._items.pop(key)
        self._drop(owner)  # the model's last pair: what else was kept of it (other sample sets) goes too
        return item

    def _drop(self, owner: tuple[str, str]) -> None:
        """Let go of everything kept of ``owner`` that no thread is building (lock held)."""
        for key in [k for k in self._items if (k[0], k[1]) == owner]:
            building = self._building.get(key)
            if building is None or not building.waiting:
                del self._items[key]

    def release(self, store: Store, manifest: dict, partner: str) -> None:
        """The pair of the version with ``partner`` will not read it (its alignment is stored)."""
        owner = _owner(store, manifest)
        with self._lock:
            if owner in self._left and self._count_off(owner, (manifest["key"], partner)) <= 0:
                for key in [k for k in self._items if (k[0], k[1]) == owner]:
                    del self._items[key]

    def _count_off(self, owner: tuple[str, str], pair: tuple[str, str]) -> int:
        """One pair of ``owner`` done (only the first time ``pair`` comes: a task retried takes
        again); the pairs still to come (lock held)."""
        if (owner, pair) not in self._done:
            self._done.add((owner, pair))
            self._left[owner] -= 1
        return self._left[owner]

    def _shrink(self, budget: float) -> None:
        """Drop what can never fit ``budget`` bytes (a kept preparation that grew past it), then the
        least recently used until the rest fit (lock held). Dropping only by age had let one grown
        item push out every other, the arrays the next pair wanted among them."""
        sizes = {key: _size(item) for key, item in self._items.items()}
        for key in [k for k, size in sizes.items() if size > budget]:
            del self._items[key]
            del sizes[key]
        total = sum(sizes.values())
        while self._items and total > budget:
            key, _ = self._items.popitem(last=False)
            total -= sizes.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._left.clear()
            self._done.clear()
            self._building.clear()
            self._reading.clear()


def _size(item: Any) -> int:
    """Bytes a kept item takes, or will once in use: its ``expected_nbytes`` when it says (a prepared
    model about to compute its Gram matrices), else its ``nbytes``."""
    return max(int(item.nbytes), int(getattr(item, "expected_nbytes", 0) or 0))


class _Building:
    """Threads waiting for one derived item's build (:meth:`_FeatureCache.derived`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0


_CACHE = _FeatureCache()


def _owner(store: Store, manifest: dict) -> tuple[str, str]:
    return store.url, str(manifest["catalog"]["model"])


def _model_bytes(manifest: dict) -> int:
    """The bytes of a feature version's arrays from its manifest (0 when it does not say)."""
    catalog = manifest.get("catalog") or {}
    widths, n = catalog.get("layer_widths"), catalog.get("n_samples")
    if not (isinstance(widths, list) and all(isinstance(w, int) for w in widths) and isinstance(n, int)):
        return 0
    return 4 * n * sum(widths)


def cache_budget() -> float:
    """``PRH_FEATURE_CACHE_MB`` in bytes (``ValueError`` naming it when it is not a number >= 0)."""
    return env_number(CACHE_ENV, DEFAULT_CACHE_MB, what="a number of MiB, 0 or more (0: no cache)") * 2**20


def release_features(store: Store, manifest_a: dict, manifest_b: dict) -> None:
    """A pair of :func:`shared_features` that reads no features (its alignment is stored): its
    models' counts go down as if it had, so that the last pair that reads a model lets it go."""
    _CACHE.release(store, manifest_a, manifest_b["key"])
    _CACHE.release(store, manifest_b, manifest_a["key"])


def kept_for_later_pairs(store: Store, manifest: dict, name: tuple, build: Callable[[], T]) -> T:
    """``build()``: something computed from the feature version ``manifest`` over one pair's
    samples (``name`` says what, hashable: the same name must give the same result), which the
    model's later pairs of the :func:`shared_features` block get without computing it again. It is
    kept in the same budget as the arrays (``PRH_FEATURE_CACHE_MB``: admitted by its
    ``expected_nbytes`` where it has one, else its ``nbytes``, measured anew as it grows; one that
    grew past the budget is let go first) and let go by the model's last pair. Call it after the
    pair's :func:`paired_features`. Outside a block it is built for this pair alone."""
    return _CACHE.derived(store, manifest, name, build)


def pairs_not_coming(store_url: str, pairs_per_model: Mapping[str, int]) -> None:
    """Within a :func:`shared_features` block, pairs counted at its start that will not run (a model's
    extraction failed): their models' counts go down, and a model with no pair left is let go now
    rather than at the block's end."""
    _CACHE.forget({(Store(store_url).url, name): count for name, count in pairs_per_model.items()})


def clear_feature_cache() -> None:
    """Forget every kept model and every expected pair (tests)."""
    _CACHE.clear()


def _same_rows(con: duckdb.DuckDBPyConnection, files: list[str], layer: int, first_rows: int, names: dict[str, str]) -> int:
    """The rows of layer file ``files[layer]`` of a model, which must be its layer 0's count
    (``first_rows``), ids checked: whether a pair reads the model whole or its common rows, a
    layer missing samples of its model is refused alike."""
    if layer == 0:
        return first_rows
    uri = files[layer]
    rows = _check_ids(con, uri, names)
    # the ids too, not only their count: a layer with one id swapped held as many rows, and a pair
    # reading the model whole refused it while a pair reading its common rows did not
    missing = [r[0] for r in con.execute(
        f"SELECT f.sample_id FROM read_parquet({_quote(files[0])}) f ANTI JOIN read_parquet({_quote(uri)}) o "
        "USING (sample_id) ORDER BY 1 LIMIT 5").fetchall()]
    if rows != first_rows or missing:
        detail = f"missing e.g. {examples(missing)}; " if missing else ""
        raise FeatureError(f"{names.get(uri, uri)}: {rows} samples, its model's layer 0 holds {first_rows} "
                           f"({detail}the model's layers must hold the same samples)")
    return rows


def _only_in(con: duckdb.DuckDBPyConnection, table: str, other: str, limit: int = 5) -> list[str]:
    """A few (sorted) ids of the registered id ``table`` that ``other`` lacks."""
    rows = con.execute(
        f"SELECT f.sample_id FROM {table} f ANTI JOIN {other} o USING (sample_id) ORDER BY 1 LIMIT {limit}"
    ).fetchall()
    return [r[0] for r in rows]


def _check_finite(labels: list[str], layers: list[np.ndarray], ids: list[str]) -> None:
    """Raise one ``FeatureError`` listing every layer (``labels``) whose common samples hold NaN or Inf."""
    problems = []
    for label, x in zip(labels, layers):
        bad = non_finite_rows(x)
        if bad.size:
            nan_rows = int(np.isnan(x[bad]).any(axis=1).sum())
            problems.append(
                f"{label}: {bad.size} of {len(ids)} common samples have NaN or Inf features "
                f"({nan_rows} with NaN, {bad.size - nan_rows} with only Inf; e.g. {examples([ids[i] for i in bad])})"
            )
    if problems:
        raise FeatureError(f"non-finite stored features in {len(problems)} layer(s); alignment refuses them "
                           "(re-extract the model, e.g. in float32):\n  " + "\n  ".join(problems))


def _check_ids(con: duckdb.DuckDBPyConnection, uri: str, names: dict[str, str] | None = None) -> int:
    """Rows in a layer file; raises ``FeatureError`` if its ids are NULL or repeated."""
    name = (names or {}).get(uri, uri)
    rows, distinct, nulls = con.execute(
        f"SELECT count(*), count(DISTINCT sample_id), count(*) - count(sample_id) FROM read_parquet({_quote(uri)})"
    ).fetchall()[0]
    if nulls:
        raise FeatureError(f"{name}: {nulls} rows have a NULL sample_id")
    if distinct != rows:
        dupes = con.execute(
            f"SELECT sample_id FROM read_parquet({_quote(uri)}) GROUP BY sample_id HAVING count(*) > 1 ORDER BY 1 LIMIT 5"
        ).fetchall()
        raise FeatureError(
            f"{name}: {rows - distinct} duplicate sample_id rows (e.g. {', '.join(r[0] for r in dupes)}); "
            "features must hold one row per sample"
        )
    return int(rows)


def _destinations(con: duckdb.DuckDBPyConnection, uri: str, n_rows: int, n_common: int, name: str) -> np.ndarray:
    """``dest[file_row] = out_row`` for every row of ``uri`` (``-1``: not a common sample)."""
    table = con.sql(
        f"""
        SELECT f.file_row_number AS file_row, c.out_row
        FROM read_parquet({_quote(uri)}, file_row_number = true) f JOIN common c USING (sample_id)
        """
    ).to_arrow_table()
    file_rows = table.column("file_row").to_numpy()
    out_rows = table.column("out_row").to_numpy()
    if len(out_rows) != n_common or (n_common and np.bincount(out_rows, minlength=n_common).max() != 1):
        missing = con.execute(
            f"SELECT c.sample_id FROM common c ANTI JOIN read_parquet({_quote(uri)}) f USING (sample_id) ORDER BY 1 LIMIT 5"
        ).fetchall()
        detail = f"; missing e.g. {examples([r[0] for r in missing])}" if missing else ""
        raise FeatureError(f"{name}: expected each of the {n_common} common samples once, got {len(out_rows)} matching rows"
                           f"{detail} (the model's layers must hold the same samples)")
    dest = np.full(n_rows, -1, dtype=np.int64)
    dest[file_rows] = out_rows
    return dest


def _load_layer(
    con: duckdb.DuckDBPyConnection, uri: str, n_common: int, n_rows: int | None, names: dict[str, str] | None = None
) -> np.ndarray:
    """``(n_common, D) float32``: the layer's vectors in ``common.out_row`` order.

    ``n_rows``: the file's row count if its ids were already checked, else None (checked here).
    """
    name = (names or {}).get(uri, uri)
    if n_rows is None:
        n_rows = _check_ids(con, uri, names)
    dest = _destinations(con, uri, n_rows, n_common, name)
    reader = con.sql(
        f"SELECT file_row_number AS file_row, vector FROM read_parquet({_quote(uri)}, file_row_number = true)"
    ).to_arrow_reader(BATCH_ROWS)
    out: np.ndarray | None = None
    with reader:
        out = _scatter(reader, dest, n_common, name)
    if out is None:
        return np.zeros((n_common, 0), dtype=np.float32)
    return out


def _scatter(reader: pa.RecordBatchReader, dest: np.ndarray, n_common: int, uri: str) -> np.ndarray | None:
    """Copy each batch's vectors into their ``dest`` rows of one preallocated array."""
    out: np.ndarray | None = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        rows = dest[batch.column(0).to_numpy()]
        vectors = batch_vectors(batch.column(1), uri)
        if out is None:
            out = np.empty((n_common, vectors.shape[1]), dtype=np.float32)
        elif vectors.shape[1] != out.shape[1]:
            raise FeatureError(f"{uri}: feature vectors have unequal lengths ({vectors.shape[1]} vs {out.shape[1]})")
        keep = rows >= 0
        if keep.all():
            if rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
                out[rows[0] : rows[-1] + 1] = vectors  # contiguous: a plain block copy
            else:
                out[rows] = vectors
        elif keep.any():
            out[rows[keep]] = vectors[keep]
    return out


def batch_vectors(column: pa.Array, where: str = "features") -> np.ndarray:
    """``(rows, D) float32`` view of a list / fixed-size-list column (no copy when possible)."""
    n = len(column)
    if column.null_count:
        raise FeatureError(f"{where}: {column.null_count} feature vectors are NULL")
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
        values = column.values.slice(column.offset * d, n * d)
    else:
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        d = int(lengths[0]) if n else 0
        if (lengths != d).any():
            raise FeatureError(f"{where}: feature vectors have unequal lengths")
        values = column.values.slice(int(offsets[0]), n * d)
    if values.null_count:
        raise FeatureError(f"{where}: feature vectors contain NULL elements")
    flat = values.to_numpy(zero_copy_only=False)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return flat.reshape(n, d)
