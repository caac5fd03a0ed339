"""What a run's report reads from the catalog: the nearest-neighbour examples follow the rows the
alignment scored (one per image with ``alignment.unit: image``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tasks.report_source import _examples

IMAGES, CAPTIONS = 8, 3


def _catalog() -> duckdb.DuckDBPyConnection:
    """Views ``features`` and ``samples`` as the catalog has them: 8 images x 3 captions; the
    vision model's vector is the image's (identical over its captions), the language model's
    differs per caption."""
    rng = np.random.default_rng(0)
    ids = [f"i{i}-c{c}" for i in range(IMAGES) for c in range(CAPTIONS)]
    images = [s.split("-")[0] for s in ids]
    image_vectors = {i: rng.normal(size=6) for i in set(images)}
    vision = [image_vectors[i] for i in images]
    language = [image_vectors[i][:4] + 0.3 * rng.normal(size=4) for i in images]
    con = duckdb.connect()
    features = pa.table({
        "model": ["vit"] * len(ids) + ["lm"] * len(ids), "feature_version": ["fv"] * (2 * len(ids)),
        "layer": pa.array([1] * (2 * len(ids)), pa.int16()), "sample_id": ids + ids,
        "vector": [list(map(float, v)) for v in vision + language]})
    samples = pa.table({"dataset_version": ["ds"] * len(ids), "sample_id": ids, "image_id": images,
                        "text": [f"caption {s}" for s in ids], "image": [i.encode() for i in images]})
    con.register("features", features)
    con.register("samples", samples)
    return con


def _best(unit: str) -> list[dict]:
    return [{"metric": "mutual_knn", "model_a": "vit", "model_b": "lm", "layer_a": 1, "layer_b": 1, "layer_name_a": "layer.01",
             "layer_name_b": "layer.01", "score": 0.5, "dataset_version": "ds", "unit": unit}]


MODELS = [{"model": "vit", "feature_version": "fv"}, {"model": "lm", "feature_version": "fv"}]


def test_examples_of_an_image_level_alignment_are_images():
    """With unit: image the report showed caption rows: every vision list began with the query's
    own other captions (cosine 1.000), which the alignment never compared."""
    per_sample = _examples(_catalog(), _best("sample"), MODELS, "ds", None, k=3, n_examples=2)
    assert per_sample.unit == "sample" and per_sample.n_samples == IMAGES * CAPTIONS
    first = per_sample.examples[0]
    assert first.neighbours_a[0].similarity > 0.9999 and first.neighbours_a[0].sample_id.split("-")[0] == first.sample_id.split("-")[0]

    per_image = _examples(_catalog(), _best("image"), MODELS, "ds", None, k=3, n_examples=2)
    assert per_image.unit == "image" and per_image.n_samples == IMAGES
    for example in per_image.examples:
        assert example.sample_id.startswith("i") and "-" not in example.sample_id
        assert all(n.sample_id != example.sample_id and "-" not in n.sample_id for n in example.neighbours_a + example.neighbours_b)
        assert all(n.similarity < 0.9999 for n in example.neighbours_a)
    shown = per_image.samples[per_image.examples[0].sample_id]
    assert shown.text.endswith("(+2 more captions)") and shown.text.startswith(f"caption {per_image.examples[0].sample_id}-c0")


def test_default_run_is_the_latest_that_published_results() -> None:
    """``prh report`` without ``--run`` (docs/report.md, "Which rows"): the latest run by finish
    time that is COMPLETED, or FAILED with alignment results; not a FAILED run that published
    none, not a COMPLETED run of a one-model zoo (features only: it was taken, and the report and
    alignment_best_latest showed nothing), not a RUNNING one."""
    from tasks.report_source import select_run

    con = duckdb.connect()
    runs = pa.table({
        "run_id": ["done", "partly-failed", "failed-empty", "features-only", "running"],
        "status": ["COMPLETED", "FAILED", "FAILED", "COMPLETED", "RUNNING"],
        "alignment_versions": pa.array([["a/1"], ["a/2"], [], [], ["a/3"]], pa.list_(pa.string())),
        "started_at": ["2026-01-01T00:00", "2026-01-02T00:00", "2026-01-03T00:00", "2026-01-03T05:00", "2026-01-04T00:00"],
        "finished_at": ["2026-01-01T01:00", "2026-01-02T01:00", "2026-01-03T01:00", "2026-01-03T06:00", None],
        "ordered_at": pa.array([None] * 5, pa.string()),  # records written before prh placed runs
    })
    con.register("runs", runs)
    assert select_run(con)["run_id"] == "partly-failed"
    con.unregister("runs")
    con.register("runs", runs.slice(2))  # a FAILED run without results, a features-only one, a RUNNING one
    with pytest.raises(ValueError, match="no run that published results"):
        select_run(con)


def test_without_a_run_with_results_the_error_says_why_the_latest_run_is_none() -> None:
    """`prh report` after `prh run` of a one-model zoo (features only) said "the store has no run
    that published results: run `prh run` first", to a user who had just run it. Where the store
    has runs, the error now names the latest and why it has no results (as `--run ID` of it
    says); a store without any run is still told to run `prh run` first."""
    from tasks.report_source import select_run

    con = duckdb.connect()
    runs = pa.table({
        "run_id": ["features-only"], "status": ["COMPLETED"], "alignment_versions": pa.array([[]], pa.list_(pa.string())),
        "feature_versions": ['{"vit": "fv1"}'], "started_at": ["2026-01-03T05:00"], "finished_at": ["2026-01-03T06:00"],
        "ordered_at": pa.array([None], pa.string()),
    })
    con.register("runs", runs)
    with pytest.raises(ValueError) as raised:
        select_run(con)
    message = str(raised.value)
    assert message.startswith("the store has no run that published results")
    assert "run features-only has no alignment results to report: it COMPLETED without aligning a model pair" in message
    assert "run `prh run` first" not in message
    con.unregister("runs")
    con.register("runs", runs.slice(0, 0))
    with pytest.raises(ValueError, match=r"no run that published results: run `prh run` first"):
        select_run(con)


def test_a_stopped_run_says_how_it_ended_and_what_it_may_have_left_unlisted() -> None:
    """The report of a run stopped by SIGTERM (CANCELLED) said only 'lists no published
    alignment', though a pair it was aligning was published after its record was written."""
    from tasks.report_source import stopped_run_notes

    (note,) = stopped_run_notes({"run_id": "r1", "status": "CANCELLED", "error": "TerminationSignal: SIGTERM"})
    assert note.startswith("run r1 ended CANCELLED: TerminationSignal: SIGTERM; it lists the results it had finished")
    assert "alignment_best shows them" in note
    assert stopped_run_notes({"run_id": "r2", "status": "CRASHED"})[0].startswith("run r2 ended CRASHED; it lists")
    assert stopped_run_notes({"run_id": "r3", "status": "COMPLETED"}) == []
    assert stopped_run_notes({"run_id": "r4", "status": "FAILED"}) == []  # its failures are noted one by one


def test_a_run_failed_for_some_models_is_not_said_to_have_stopped() -> None:
    """A run where one model failed the check and the rest was published (``ZooFailures``: the
    record's ``error`` summarises its ``failures``) read in ``prh report`` as "ended FAILED: ...
    it lists the results it had finished when it stopped: any its tasks in flight ... are not in
    this report", every failure repeated: it had stopped nothing, and the page stored with the run
    (built before the error was recorded) had no such note. Its failures are noted one by one."""
    from tasks.report_source import stopped_run_notes

    failures = [{"stage": "check", "item": "rbad", "error": "ModelInputError: model 'rbad': no"},
                {"stage": "align", "item": "vit x rbad", "error": "skipped: rbad failed"}]
    record = {"run_id": "r5", "status": "FAILED", "failures": failures,
              "error": "flows.pipeline.ZooFailures: 1 of 3 models and 1 of 2 model pairs failed (the rest is published): "
                       "check rbad: ModelInputError: model 'rbad': no; align vit x rbad: skipped: rbad failed"}
    assert stopped_run_notes(record) == []
    assert stopped_run_notes({**record, "failures": json.dumps(failures)}) == []  # the runs view's JSON text
    # another error of a run with failures (it broke off after them) is still said
    (note,) = stopped_run_notes({**record, "error": "OSError: [Errno 28] No space left on device"})
    assert note.startswith("run r5 ended FAILED: OSError")


def test_a_deployed_run_failed_for_some_models_is_not_said_to_have_stopped() -> None:
    """A deployment's worker loads ``flows/pipeline.py`` by its path (``prefect.yaml``'s entrypoint):
    its ``ZooFailures`` is then ``pipeline.ZooFailures``, and the record's error, which the note
    matched as ``flows.pipeline.ZooFailures:``, read again as a run that "stopped"."""
    from prefect.utilities.importtools import load_script_as_module

    from flows.run_record import one_line
    from tasks.report_source import stopped_run_notes

    before = set(sys.modules)
    try:
        deployed = load_script_as_module("flows/pipeline.py")
        error = one_line(deployed.ZooFailures("1 of 3 models failed (the rest is published): check rbad: no", "alignments"))
    finally:
        for name in set(sys.modules) - before:
            if name.startswith(("pipeline", "__prefect_loader")):
                del sys.modules[name]
    assert not error.startswith("flows.pipeline.")  # as the worker records it
    record = {"run_id": "r6", "status": "FAILED", "error": error,
              "failures": [{"stage": "check", "item": "rbad", "error": "ModelInputError: model 'rbad': no"}]}
    assert stopped_run_notes(record) == []


def test_a_run_is_found_by_a_unique_start_of_its_id() -> None:
    """The docs' queries show 8 characters of a run id: ``prh report --run`` takes them."""
    from tasks.report_source import select_run

    con = duckdb.connect()
    con.register("runs", pa.table({
        "run_id": ["69166179-aaaa", "69166179-bbbb", "cbe3b95e-cccc"],
        "started_at": ["2026-01-01T00:00", "2026-01-02T00:00", "2026-01-03T00:00"],
    }))
    assert select_run(con, "cbe3b95e")["run_id"] == "cbe3b95e-cccc"
    assert select_run(con, "69166179-aaaa")["run_id"] == "69166179-aaaa"
    with pytest.raises(ValueError, match=r"'69166179' is the start of 2 runs' ids \(69166179-bbbb, 69166179-aaaa\)"):
        select_run(con, "69166179")
    with pytest.raises(ValueError, match="no run 'zzz' in the store"):
        select_run(con, "zzz")


def _unscored(row: dict, **changes) -> dict:
    return {**row, "score": None, "layer_a": None, "layer_b": None, "layer_name_a": None, "layer_name_b": None, **changes}


def test_examples_skip_best_rows_without_a_finite_score() -> None:
    """A best row with NULL score and layers (tasks/align_task.py) crashed the choice of the
    neighbour pair (max over scores with a None); such rows are skipped, and a pair or run with
    none left is a note-worthy ValueError, not a TypeError."""
    knn = _best("sample")[0]
    cka = {**knn, "metric": "cka", "score": 0.8}
    other = _unscored(knn, model_b="lm2")  # another pair's mutual_knn row, NULL
    examples = _examples(_catalog(), [other, knn], MODELS, "ds", None, k=3, n_examples=2)
    assert (examples.model_a, examples.model_b, examples.layer_a) == ("vit", "lm", "layer.01")
    # the pair's mutual_knn row is NULL: its cka row's layers are used
    examples = _examples(_catalog(), [_unscored(knn), cka], MODELS, "ds", ("lm", "vit"), k=3, n_examples=2)
    assert (examples.model_a, examples.model_b, examples.layer_a) == ("vit", "lm", "layer.01")
    with pytest.raises(ValueError, match="vit × lm has no finite best score under any metric"):
        _examples(_catalog(), [_unscored(knn), _unscored(cka), {**knn, "model_b": "lm2"}], MODELS, "ds", ("vit", "lm"), 3, 2)
    with pytest.raises(ValueError, match="no model pair has a finite best score"):
        _examples(_catalog(), [_unscored(knn), other], MODELS, "ds", None, 3, 2)


def test_the_neighbour_pair_of_a_lower_is_better_metric_has_the_smallest_score(lower_metric) -> None:
    """Without mutual_knn the examples follow the first metric's best pair; for a metric where lower
    is better that is the smallest score (the largest was taken: the least aligned pair)."""
    knn = _best("sample")[0]
    near = {**knn, "metric": lower_metric, "score": 0.3}
    far = {**knn, "metric": lower_metric, "model_a": "lm", "model_b": "vit", "score": 0.9}
    for rows in ([near, far], [far, near]):
        examples = _examples(_catalog(), rows, MODELS, "ds", None, k=3, n_examples=2)
        assert (examples.model_a, examples.model_b) == ("vit", "lm")
    higher = [{**r, "metric": "cka"} for r in (near, far)]  # a built-in, higher is better: the largest
    assert _examples(_catalog(), higher, MODELS, "ds", None, k=3, n_examples=2).model_a == "lm"


PLUGIN = '''
from tasks.metrics import register_metric


def {name}(x, y):
    return float(((x - y) ** 2).sum(dim=1).mean())


register_metric("{name}", {name}, bounds=(0.0, float("inf")), higher_is_better=False, symmetric=True, overwrite=True)
'''


def test_the_report_loads_the_metric_modules_and_notes_one_that_fails(tmp_path, monkeypatch) -> None:
    """`prh report` in a process where the plugin was never imported: ``load_report_input`` imports
    ``$PRH_METRIC_MODULES`` first, so the user metric's direction is known; a module that does not
    import is a note, not a failure of the report."""
    import sys
    import uuid

    import tasks.metrics.origin as origin_state
    from tasks.metrics import METRICS
    from tasks.report.tables import higher_is_better
    from tasks.report_source import load_metric_plugins

    metric, module = f"user_dist_{uuid.uuid4().hex[:8]}", f"prh_test_report_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=metric))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        monkeypatch.setenv("PRH_METRIC_MODULES", module)
        assert higher_is_better(metric) is True  # not registered yet: taken as higher is better
        assert load_metric_plugins() == []
        assert higher_is_better(metric) is False
        monkeypatch.setenv("PRH_METRIC_MODULES", "no_such_prh_report_module_xyz")
        notes = load_metric_plugins()
        assert len(notes) == 1 and "no_such_prh_report_module_xyz" in notes[0] and "the report goes on" in notes[0]
    finally:
        METRICS._specs.pop(metric, None)
        sys.modules.pop(module, None)
        origin_state._READ.pop(module, None)


def test_runs_of_the_same_second_are_ordered_alike_by_report_and_gc() -> None:
    """Run times of older records are whole seconds: `prh report`'s latest run and `prh gc --keep-runs 1`'s newest
    run must be the same run when two finish in the same second (the last tie-breaker: run id)."""
    from storage.run_retention import newest_runs
    from tasks.report_source import select_run

    same = {"status": "COMPLETED", "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:05",
            "ordered_at": None}  # records written before prh placed runs
    records = [{**same, "run_id": rid, "alignment_versions": [f"a/{rid}"]} for rid in ("b-run", "c-run", "a-run")]
    for order in (records, records[::-1]):
        con = duckdb.connect()
        con.register("runs", pa.Table.from_pylist(order))
        assert select_run(con)["run_id"] == newest_runs(order, 1)[0]["run_id"] == "c-run"


@pytest.mark.parametrize("versions", ['{"rvit": 5}', "x", "[1]", {"rvit": None}])
def test_a_damaged_feature_versions_field_is_named_with_its_run(versions) -> None:
    """A run record edited by hand: `{"rvit": 5}` failed the report with `ArrowTypeError: Expected
    bytes, got a 'int' object`, and `"x"` with `Expecting value: line 1 column 1 (char 0)`."""
    from tasks.report_source import feature_selection

    with pytest.raises(ValueError, match=r"^run r1's record is damaged: its feature_versions is not an object"):
        feature_selection({"run_id": "r1", "feature_versions": versions})
    table = feature_selection({"run_id": "r1", "feature_versions": '{"rvit": "v1"}'})
    assert table.to_pylist() == [{"model": "rvit", "feature_version": "v1"}]
    assert feature_selection({"run_id": "r1", "feature_versions": None}).num_rows == 0


def _report_notes(tmp_path, damage) -> list[str]:
    from storage.store import Store
    from tasks.report_source import load_report_input
    from tests.storage.catalog_store import build_catalog_store

    store = build_catalog_store(str(tmp_path / "store"))
    damage(store)
    return load_report_input(Store(store.url)).notes


def test_examples_of_a_store_without_its_samples_file_are_noted(tmp_path):
    """The store hunt: with the dataset's samples.parquet gone, the examples showed sample ids in
    caption quotes, without a note."""

    def remove_samples(store):
        [path] = [p for p in store.fs.find(store.path("datasets")) if p.endswith("samples.parquet")]
        store.fs.rm_file(path)

    notes = _report_notes(tmp_path, remove_samples)
    assert any(n.startswith("nearest-neighbour examples: ") and "are shown by id only" in n and "prh verify" in n
               for n in notes), notes


def test_examples_of_a_missing_or_damaged_layer_file_name_the_cause(tmp_path):
    """A missing layer file read as "fewer than 2 common samples with features"; one damaged
    mid-file as DuckDB's bare "invalid TType"."""
    def remove_every_layer_file(store):
        for path in store.fs.find(store.path("features")):
            if "/fv-" in path and path.endswith(".parquet"):
                store.fs.rm_file(path)

    notes = _report_notes(tmp_path, remove_every_layer_file)
    assert any("nearest-neighbour examples left out: no features of" in n and "layer file is missing or damaged" in n
               for n in notes), notes


def test_examples_of_a_layer_file_damaged_mid_file_point_to_prh_verify(tmp_path):
    def damage_pages(store):
        for path in store.fs.find(store.path("features")):
            if "/fv-" in path and path.endswith(".parquet"):
                data = bytearray(store.fs.cat(path))
                footer = int.from_bytes(data[-8:-4], "little") + 8
                for i in range(4, len(data) - footer):  # every page, the footer left sound
                    data[i] ^= 0x5A
                store.fs.pipe(path, bytes(data))

    notes = _report_notes(tmp_path, damage_pages)
    assert any(n.startswith("nearest-neighbour examples left out: ") and n.endswith("(a damaged file? `prh verify` names it)")
               for n in notes), notes


def test_layers_left_out_of_the_scores_are_explained(tmp_path):
    """The report hunt: a model's constant layers were blank in its layer heatmaps and the best
    score was over the other layer pairs, with no note saying which layers or why (the
    alignment manifests record them)."""
    import pyarrow as pa

    from storage.store import Store
    from tasks.report_source import excluded_layer_notes

    store = Store(str(tmp_path / "store"))
    constant = {"model": "vit-deg", "layer": 0, "layer_name": "embeddings", "problem": "constant: all 40 samples",
                "metrics": ["cka", "mutual_knn"]}
    refused = {"model": "vit-deg", "layer": 3, "layer_name": None, "problem": "svcca(cca_dim=10) undefined: width 4",
               "metrics": ["svcca"]}
    keys = []
    other_pair = {**constant, "problem": "constant: all 38 samples", "metrics": ["cknna"]}  # the review: listed twice
    for partner, entries in (("lm-a", [constant]), ("lm-b", [other_pair, refused]), ("lm-c", [])):
        key = f"alignment/d1/vit-deg__{partner}/v{partner}"
        store.publish(key, {"best.parquet": pa.table({"x": [1]})}, {"kind": "alignment", "degenerate_layers": entries})
        keys.append(key)
    notes = excluded_layer_notes(store, {"alignment_versions": keys + ["alignment/d1/gone__x/v0"]})
    assert notes == ["vit-deg: 2 layer(s) left out of its scores (blank in its layer heatmaps; its best scores are over the other "
                     "layer pairs): layer 0 'embeddings' (cka, cknna, mutual_knn): constant: all 40 samples; layer 3 (svcca): "
                     "svcca(cca_dim=10) undefined: width 4"]
    assert excluded_layer_notes(store, {"alignment_versions": keys[2:]}) == []


#: A child process: builds the report tests' store, makes one report (every import done), then
#: lowers its open-file limit to a few above the files it holds open and asks for the report again.
FEW_FILES = """
import os, resource, sys
from flows.cli import main
from tests.flows.report_store import build
root = sys.argv[1]
build(root + "/store")
assert main(["report", "--out", root + "/warm", "--store", root + "/store"]) == 0
limit = len(os.listdir("/proc/self/fd")) + 4
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(limit, file=sys.stderr)
sys.exit(main(["report", "--out", root + "/report", "--store", root + "/store"]))
"""


def test_a_report_with_too_few_file_descriptors_is_one_line_naming_the_limit(tmp_path):
    """`prh report` over a store with more files than the process may keep open (`ulimit -n`):
    a raw `_duckdb.IOException` traceback. Now one line naming the store, the file, the cause
    and the limit, exit 2; and it does not send the user to `prh verify` for damage."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", FEW_FILES, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    err = done.stderr.strip().splitlines()
    limit = err[-2]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert err[-1].startswith(f"prh report: error: reading the run's results from file://{tmp_path}/store failed: "
                              "IO Error: Cannot open file ")
    assert err[-1].endswith(f": Too many open files (this process may keep only {limit} files open at once "
                            "(`ulimit -n`), fewer than the query reads: raise the limit, e.g. `ulimit -n 4096`, and "
                            "run it again; the store is not damaged by this)")
    assert not (tmp_path / "report").exists()


_DAY = "2026-01-0{}T00:00:00+00:00"


@pytest.mark.parametrize(("records", "latest"), [
    pytest.param([{"run_id": "x-ahead", "started_at": "5000-01-01T00:00:00+00:00", "ordered_at": "5000-01-01T00:00:00+00:00"},
                  {"run_id": "a-next", "started_at": _DAY.format(1), "ordered_at": "5000-01-01T00:00:00.000001+00:00"}],
                 "a-next", id="placed 1 us after a record dated centuries ahead"),
    pytest.param([{"run_id": "b", "started_at": " " + _DAY.format(2), "finished_at": _DAY.format(3)},
                  {"run_id": "a", "started_at": _DAY.format(1), "finished_at": _DAY.format(3)}],
                 "b", id="a start with a space, the same finish"),
    pytest.param([{"run_id": "b", "started_at": "1969-12-31T00:00:00+00:00"}, {"run_id": "a", "started_at": "junk"}],
                 "b", id="a start before 1970 and one that is no time"),
])
def test_report_and_gc_agree_on_the_latest_run_whatever_its_times(tmp_path, records, latest) -> None:
    """`prh report`'s default run (the catalog's ``LATEST_RUN_SQL``, ``TIMESTAMPTZ`` to the
    microsecond, NULL last) and `prh gc --keep-runs 1`'s newest run are the same run: gc had
    compared float epoch seconds (two runs 1 µs apart in year 5000 were equal, the start then
    decided), read a time with a space as none (the catalog reads it) and put a run without a time
    before one started before 1970."""
    from storage import layout
    from storage.catalog import connect
    from storage.run_retention import newest_runs
    from storage.runs import run_records
    from storage.store import Store
    from tasks.report_source import select_run

    store = Store(str(tmp_path / "store"))
    for record in records:
        store.write_json(layout.run_key(record["run_id"]),
                         {"status": "COMPLETED", "alignment_versions": ["alignment/d/a__b/v"], **record})
    assert select_run(connect(store))["run_id"] == latest
    assert newest_runs(run_records(store), 1)[0]["run_id"] == latest
