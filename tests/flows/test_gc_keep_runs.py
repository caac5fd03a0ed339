"""`prh gc --keep-runs N`: the published versions that none of the N newest runs with results
uses, nor their inputs, are removed; the catalog afterwards is the catalog of the kept versions.

The store is built with the real store API (tiny Parquet files, no model runs) as a store looks
after months of nightly runs: two dataset versions, a vision model whose checkpoint changed every
night (superseded feature versions), alignment versions of old parameters. What must stay is
written out by hand below, from the story, not computed by the code under test."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from flows.cli import main
from storage import layout
from storage.catalog import connect
from storage.features import layer_tables
from storage.owner import current_owner
from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING, alive_key
from storage.store import Store
from tests.storage.catalog_store import MODELS, _alignment_rows

D1, D2 = "d1d1d1d1d1d1d1d1", "d2d2d2d2d2d2d2d2"
IDS = [f"s{i}" for i in range(6)]


def _day(day: int, hour: int, minute: int = 0) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:00+00:00"


def _published_at(store: Store, key: str, when: str) -> None:
    """Date the published version ``key`` back to ``when`` (its manifest's ``published_at``)."""
    manifest = store.manifest(key)
    store.write_json(f"{key}/manifest.json", {**manifest, "published_at": when})


def _dataset(store: Store, version: str, when: str) -> str:
    samples = pa.table({"dataset_version": [version] * len(IDS), "sample_id": IDS, "image_id": IDS,
                        "text": [f"caption {i} of {version}" for i in IDS], "image": [i.encode() * 50 for i in IDS]})
    key = layout.dataset_key(version)
    store.publish(key, {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": version, "name": version[:2], "n_samples": len(IDS)}})
    _published_at(store, key, when)
    return key


def _features(store: Store, dataset: str, model: str, version: str, when: str) -> str:
    rng = np.random.default_rng(abs(hash(version)) % 2**32)
    layers = [rng.normal(size=(len(IDS), 4)).astype(np.float32) for _ in range(2)]
    key = layout.features_key(dataset, model, version)
    catalog = {"model": model, "feature_version": version, "dataset_version": dataset, "n_layers": 2}
    store.publish(key, layer_tables(model, version, IDS, layers), {"kind": "features", "catalog": catalog})
    _published_at(store, key, when)
    return key


def _alignment(store: Store, dataset: str, vit: str, lm: str, version: str, when: str) -> str:
    scores, best = _alignment_rows("vit-small", "lm-small", version, len(IDS))
    scores, best = (t.set_column(t.schema.get_field_index("dataset_version"), "dataset_version", pa.array([dataset] * t.num_rows))
                    .set_column(t.schema.get_field_index("model_a"), "model_a", pa.array(["vit"] * t.num_rows))
                    .set_column(t.schema.get_field_index("model_b"), "model_b", pa.array(["lm"] * t.num_rows)) for t in (scores, best))
    key = layout.alignment_key(dataset, "vit", "lm", version)
    store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                  {"kind": "alignment", "lineage": {"dataset_version": dataset, "features": {"vit": vit, "lm": lm}}})
    _published_at(store, key, when)
    return key


def _run(store: Store, run_id: str, status: str, started: str, finished: str | None, dataset: str | None = None,
         features: dict[str, str] | None = None, alignments: list[str] | None = None, **more) -> None:
    store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": status, "started_at": started, "finished_at": finished,
                                              "dataset_version": dataset, "feature_versions": features or {},
                                              "alignment_versions": alignments or [], **more})


def _nightly_store(url: str) -> tuple[Store, set[str]]:
    """Five nights of runs; returns the store and every key --keep-runs 1 must keep."""
    store = Store(url)
    d1, d2 = _dataset(store, D1, _day(1, 2)), _dataset(store, D2, _day(2, 2))
    # night 1, dataset D1
    f1, l1 = _features(store, D1, "vit", "fv1", _day(1, 2)), _features(store, D1, "lm", "fl1", _day(1, 2))
    a1 = _alignment(store, D1, "fv1", "fl1", "al1", _day(1, 3))
    _run(store, "run-1", "COMPLETED", _day(1, 1), _day(1, 4), D1, {"vit": "fv1", "lm": "fl1"}, [a1])
    # night 2, dataset D2; a second alignment of other parameters
    f2, l2 = _features(store, D2, "vit", "fv2", _day(2, 2)), _features(store, D2, "lm", "fl2", _day(2, 2))
    a2, a2b = _alignment(store, D2, "fv2", "fl2", "al2", _day(2, 3)), _alignment(store, D2, "fv2", "fl2", "al2b", _day(2, 3))
    _run(store, "run-2", "COMPLETED", _day(2, 1), _day(2, 4), D2, {"vit": "fv2", "lm": "fl2"}, [a2, a2b])
    # night 3: the vision checkpoint changed (fv3), the language features reused; one pair failed
    f3 = _features(store, D2, "vit", "fv3", _day(3, 2))
    a3 = _alignment(store, D2, "fv3", "fl2", "al3", _day(3, 3))
    _run(store, "run-3", "FAILED", _day(3, 1), _day(3, 4), D2, {"vit": "fv3", "lm": "fl2"}, [a3])
    # night 4 (the newest run with results): fv4; an alignment of other parameters published 10
    # minutes before it started (within the clock-skew margin) and one 30 minutes before (not)
    f4 = _features(store, D2, "vit", "fv4", _day(4, 2))
    a4 = _alignment(store, D2, "fv4", "fl2", "al4", _day(4, 3))
    a4s = _alignment(store, D2, "fv3", "fl2", "al4s", _day(4, 0, 50))
    _alignment(store, D2, "fv3", "fl2", "al4old", _day(4, 0, 30))
    _run(store, "run-4", "COMPLETED", _day(4, 1), _day(4, 4), D2, {"vit": "fv4", "lm": "fl2"}, [a4])
    # published after run-4 started by another run that recorded nothing yet: a new language
    # model version aligned with the old fv2 (which it needs)
    l9 = _features(store, D2, "lm", "fl9", _day(4, 5))
    a9 = _alignment(store, D2, "fv2", "fl9", "al9", _day(4, 6))
    # night 5: failed before publishing any alignment, cancelled night 6: neither published results
    _run(store, "run-5", "FAILED", _day(5, 1), _day(5, 2), D1, {"vit": "fv1", "lm": "fl1"}, [])
    _run(store, "run-6", "CANCELLED", _day(6, 1), _day(6, 2), D1, {"vit": "fv1"}, [])  # stopped before its record listed any
    store.write_json(layout.rendered_dataset_key("recipe1"), {"dataset_version": D1, "source": {"kind": "openmoji"}})
    store.write_json(layout.rendered_dataset_key("recipe2"), {"dataset_version": D2, "source": {"kind": "openmoji"}})
    # kept: run-4's versions (d2, f4, l2, a4); al4s (skew margin) and its inputs (f3); the recent
    # l9 and a9 with a9's input f2; the pointer to d2. Removed: d1 with f1, l1, a1 and its
    # pointer, a2, a2b, a3, al4old
    keep = {d2, f4, l2, a4, a4s, f3, l9, a9, f2, layout.rendered_dataset_key("recipe2")}
    assert {d1, f1, l1, a1, a2, a2b, a3} & keep == set()
    return store, keep


def _versions(store: Store) -> set[str]:
    """Keys of every published version and rendered pointer in the store, from a fresh listing."""
    files = store.sizes("")
    found = {key.rsplit("/", 1)[0] for key in files if key.endswith("/manifest.json")}
    return found | {key for key in files if key.startswith("datasets/rendered/")}


def _freed(out: str) -> tuple[int, dict[str, int]]:
    """The total and the bytes per kind from gc's last line."""
    last = out.rstrip().splitlines()[-1]
    total = int(re.search(r"\(([\d,]+) bytes\) (?:would be )?freed", last).group(1).replace(",", ""))
    parts = {what: int(size.replace(",", "")) for what, size in re.findall(r"\d+ ([^;:]+?) ([\d,]+) bytes", last.split("freed: ", 1)[-1])}
    return total, parts


def _catalog(store: Store) -> dict[str, list[tuple]]:
    """Every row of every view, with the key of the version it comes from as its first value."""
    con = connect(store)
    views = {
        "datasets": "select 'datasets/' || dataset_version, * from datasets",
        "samples": "select 'datasets/' || dataset_version, * exclude (image) from samples",
        "models": "select concat_ws('/', 'features', dataset_version, model, feature_version), * from models",
        "features": "select concat_ws('/', 'features', m.dataset_version, f.model, f.feature_version), f.layer, f.sample_id, "
                    "f.vector from features f join models m using (model, feature_version)",
        "alignment": "select concat_ws('/', 'alignment', dataset_version, model_a || '__' || model_b, alignment_version), * from alignment",
        "alignment_best": "select concat_ws('/', 'alignment', dataset_version, model_a || '__' || model_b, alignment_version), * "
                          "from alignment_best",
        "runs": "select 'runs', run_id, status, dataset_version, alignment_versions from runs",
    }
    return {view: sorted(con.sql(sql).fetchall(), key=repr) for view, sql in views.items()}


def test_keep_runs_keeps_the_newest_runs_versions_and_their_inputs(store_url, capsys):
    store, keep = _nightly_store(store_url)
    before_files, before_versions, before_catalog = store.sizes(""), _versions(store), _catalog(store)
    removed = before_versions - keep
    assert len(removed) == 9 and keep <= before_versions

    assert main(["gc", "--store", store.url, "--keep-runs", "1", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert store.sizes("") == before_files  # a dry run removes nothing
    assert {key for key in removed if f"would remove {key}: " in dry} == removed
    assert not any(f"would remove {key}:" in dry for key in keep)

    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert _versions(store) == keep
    after_files = store.sizes("")
    gone = {key: size for key, size in before_files.items() if key not in after_files}
    assert set(after_files) <= set(before_files) and all(any(k == v or k.startswith(v + "/") for v in removed) for k in gone)
    total, parts = _freed(out)
    assert total == sum(gone.values()) and _freed(dry) == (total, parts)
    pointer = layout.rendered_dataset_key("recipe1")
    assert parts == {"published version(s) no kept run uses": total - before_files[pointer],
                     "rendered-dataset pointer(s) to removed datasets": before_files[pointer]}
    for key in removed - {pointer}:  # each printed with its size
        size = sum(s for k, s in gone.items() if k.startswith(key + "/"))
        assert f"removed {key}: a published version that none of the 1 newest run(s) with results uses, {size / 1e6:.1f} MB" in out
    assert f"removed {pointer}: the demo's pointer to datasets/{D1}, removed above" in out
    # the moment is 15 minutes before the kept run started: said, so that it is not read as a wrong start time
    assert "keeping 9 published version(s): those of run(s) run-4, their inputs and every version published since " \
           "2026-03-04T00:45:00+00:00 (15 minutes before the oldest kept run started: a margin for clock skew between " \
           "hosts)" in out

    # the catalog opens and is the old catalog restricted to the kept versions; the runs stay
    expected = {view: [row for row in rows if row[0] == "runs" or row[0] in keep] for view, rows in before_catalog.items()}
    assert _catalog(store) == expected and len(expected["runs"]) == 6 and expected["alignment_best"]
    if store.is_local:  # no empty folders left behind
        assert not any(p.is_dir() and not any(p.iterdir()) for p in __import__("pathlib").Path(store.root).rglob("*"))
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0  # nothing more to remove
    assert capsys.readouterr().out.rstrip().endswith("nothing to remove")


def test_a_removed_runs_report_says_so(tmp_path, capsys):
    """`prh report --run OLD` after its versions were removed: a clear error, not a partial page."""
    store, _ = _nightly_store(str(tmp_path / "store"))
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    capsys.readouterr()
    assert main(["report", "--store", store.url, "--run", "run-2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "run run-2's results are no longer all in the store: 2 of the 5 versions it names are gone" in err
    assert "prh gc --keep-runs" in err and not (tmp_path / "r").exists()


def test_nothing_published_is_removed_while_a_run_is_alive(tmp_path, capsys):
    """A live run records what it reuses only when it ends: until then no version goes. Once it
    has ended, its versions are the newest run's and stay."""
    store, _ = _nightly_store(str(tmp_path / "store"))
    before = store.sizes("")
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
    record = {"process": current_owner(), "heartbeat_s": RUN_HEARTBEAT_SECONDS}
    _run(store, "live", RUNNING, started, None, **record)
    store.write_json(alive_key("live"), {"run_id": "live", "heartbeat_at": time.time()})
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"--keep-runs 1: no published versions removed: run live (started {started}) is still running" in out
    assert {k: v for k, v in store.sizes("").items() if not k.startswith("runs/")} == \
           {k: v for k, v in before.items() if not k.startswith("runs/")}

    # it ended, having reused night 1's versions: those stay now, night 4's go
    store.delete(alive_key("live"))
    a1 = layout.alignment_key(D1, "vit", "lm", "al1")
    _run(store, "live", "COMPLETED", started, started, D1, {"vit": "fv1", "lm": "fl1"}, [a1])
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    capsys.readouterr()
    assert store.manifest(a1) is not None and store.manifest(layout.features_key(D1, "vit", "fv1")) is not None
    assert store.exists(layout.rendered_dataset_key("recipe1")) and store.manifest(layout.alignment_key(D2, "vit", "lm", "al4")) is None


@pytest.mark.parametrize("damage", [b'{"run_id": "run-7", "status": "COMPL', b"[1, 2]"])
def test_a_damaged_run_record_stops_the_removal_and_is_named(tmp_path, capsys, caplog, damage):
    """The store hunt: the newest run's record cut short was skipped without a word, so gc kept an
    older run's versions and removed the ones the newest run had used; the runs view and the
    report went on without it and prh verify said every version matched."""
    store, _ = _nightly_store(str(tmp_path / "store"))
    before = store.sizes("")
    store.fs.pipe(store.path(layout.run_key("run-7")), damage)
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert (f"--keep-runs 1: no published versions removed: run record runs/run-7.json in store {store.display_url} is "
            "damaged (not ") in out and "repair or remove that file; no published version is removed until then" in out
    assert {k: v for k, v in store.sizes("").items() if not k.startswith("runs/")} == \
           {k: v for k, v in before.items() if not k.startswith("runs/")}
    with caplog.at_level("WARNING", logger="storage.runs"):
        runs = connect(store).sql("select run_id from runs order by run_id").fetchall()
    assert [r[0] for r in runs] == [f"run-{i}" for i in range(1, 7)]
    assert "run record runs/run-7.json in store" in caplog.text and "is damaged" in caplog.text
    assert main(["verify", "--store", store.url, "--remove-damaged"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED runs/run-7.json: a run record, not a version: run record runs/run-7.json" in out
    assert "left runs/run-7.json in place: a run record (repair or remove that file by hand)" in out
    assert store.exists(layout.run_key("run-7")) and "1 damaged" in out


def test_keep_runs_needs_one_run(tmp_path, capsys):
    store, _ = _nightly_store(str(tmp_path / "store"))
    before = store.sizes("")
    assert main(["gc", "--store", store.url, "--keep-runs", "0"]) == 2
    assert "--keep-runs must be 1 or more (0 would remove every published version), got 0" in capsys.readouterr().err
    assert main(["gc", "--store", store.url]) == 0  # without the option: no retention
    assert store.sizes("") == before and "nothing to remove" in capsys.readouterr().out


def test_a_store_without_runs_with_results_keeps_everything(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    _dataset(store, D1, _day(1, 2))
    _run(store, "run-1", "FAILED", _day(1, 1), _day(1, 2), D1, {}, [])
    assert main(["gc", "--store", store.url, "--keep-runs", "3"]) == 0
    assert "no published versions removed: no run published results" in capsys.readouterr().out
    assert store.manifest(layout.dataset_key(D1)) is not None


def test_unpublish_leaves_a_version_that_is_being_published(tmp_path):
    """A writer holding the version's claim (publishing it again) keeps it; a stale claim is
    taken over."""
    store = Store(str(tmp_path / "store"))
    key = _dataset(store, D1, _day(1, 2))
    store.write_json(f"{key}/.publishing", {"owner": "w", "claimed_at": time.time(), "process": current_owner()})
    assert store.unpublish(key) is False and store.manifest(key) is not None
    store.write_json(f"{key}/.publishing", {"owner": "w", "claimed_at": time.time() - 3600, "process": None})
    assert store.unpublish(key) is True and not store.exists(key) and not store.exists("datasets")


@pytest.mark.parametrize("keep", [2, 10])
def test_more_runs_kept_keep_more(tmp_path, capsys, keep):
    """--keep-runs 2 keeps run-3's versions too (a FAILED run with results); 10 keeps every run's."""
    store, kept = _nightly_store(str(tmp_path / "store"))
    assert main(["gc", "--store", store.url, "--keep-runs", str(keep)]) == 0
    capsys.readouterr()
    a3 = layout.alignment_key(D2, "vit", "lm", "al3")
    a4old = layout.alignment_key(D2, "vit", "lm", "al4old")  # published after run-3 started
    extra = {a3, a4old} if keep == 2 else {a3, a4old} | {layout.alignment_key(D2, "vit", "lm", v) for v in ("al2", "al2b")} | {
        layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"), layout.features_key(D1, "lm", "fl1"),
        layout.alignment_key(D1, "vit", "lm", "al1"), layout.rendered_dataset_key("recipe1")}
    assert _versions(store) == kept | extra


def test_a_run_that_starts_during_gc_stops_the_removal(tmp_path):
    """A run's sign of life that appears while gc removes versions stops it: what that run
    reuses is unknown."""
    from storage.run_retention import apply_retention, plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    plan = plan_retention(store, 1)

    def a_run_starts(key: str) -> None:
        store.write_json(alive_key("new"), {"run_id": "new", "heartbeat_at": time.time()})

    assert apply_retention(store, plan, on_removed=a_run_starts) == plan.remove[:1]
    assert plan.blocked.startswith("a run started during gc") and len(plan.remove) == 8
    assert store.manifest(plan.remove[0]) is None and all(store.manifest(key) is not None for key in plan.remove[1:])


def _extraction(store: Store, run_id: str, status: str, started: str, dataset: str | None = None,
                features: dict[str, str] | None = None, **more) -> None:
    store.write_json(layout.extraction_key(run_id), {"run_id": run_id, "flow": "prh-extract", "status": status,
                                                     "started_at": started, "dataset_version": dataset,
                                                     "feature_versions": features or {}, **more})


def test_an_extraction_stage_holds_back_gc_and_keeps_what_it_reused(tmp_path, capsys):
    """prh-extract records no alignment: while it runs nothing goes; once it has ended, the dataset
    and feature versions it published or reused stay for its alignment stage (which has not
    recorded them yet) when it started after the oldest kept run; an older stage keeps nothing."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    before = store.sizes("")
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
    _extraction(store, "gpu-live", RUNNING, started, process=current_owner(), heartbeat_s=RUN_HEARTBEAT_SECONDS)
    store.write_json(alive_key("gpu-live"), {"run_id": "gpu-live", "heartbeat_at": time.time()})
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    assert f"no published versions removed: run gpu-live (started {started}) is still running" in capsys.readouterr().out
    assert {k: v for k, v in store.sizes("").items() if not k.startswith("runs/")} == \
           {k: v for k, v in before.items() if not k.startswith("runs/")}

    # it ended having reused night 1's dataset and features; a stage of night 2 (before run-4) names a2's inputs
    store.delete(alive_key("gpu-live"))
    _extraction(store, "gpu-live", "COMPLETED", started, D1, {"vit": "fv1", "lm": "fl1"})
    _extraction(store, "gpu-old", "COMPLETED", _day(2, 1), D2, {"vit": "fv2", "lm": "fl2"})
    _extraction(store, "gpu-early-failure", "FAILED", started, None, error="the dataset could not be read")
    night1 = {layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"), layout.features_key(D1, "lm", "fl1"),
              layout.rendered_dataset_key("recipe1")}
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    capsys.readouterr()
    assert _versions(store) == keep | night1  # fv2 stays as a9's input only; al1 goes (no stage names it)
    assert store.read_json(layout.extraction_key("gpu-live"))["status"] == "COMPLETED"  # records stay


@pytest.mark.parametrize("lineage", ["x", {"dataset_version": D2, "features": ["vit", "lm"]}])
def test_a_manifest_whose_lineage_is_not_an_object_is_kept_as_damaged(tmp_path, capsys, lineage):
    """An alignment manifest whose `lineage` (or its `features`) is not an object (a hand edit):
    plan_retention failed with AttributeError and gc with a traceback. It is a damaged manifest
    now (prh verify's business): kept, as one that is not JSON is, and the rest is planned as before."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    odd = layout.alignment_key(D2, "vit", "lm", "al2")  # removed when sound (no kept run uses it)
    assert odd not in keep
    manifest = store.manifest(odd)
    store.write_json(f"{odd}/manifest.json", {**manifest, "lineage": lineage})
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"removed {odd}:" not in out
    assert _versions(store) == keep | {odd}
    assert main(["verify", "--store", store.url]) == 1
    assert f"DAMAGED {odd}: manifest.json: its " in capsys.readouterr().out


def _zoo_then_one_pair(url: str) -> tuple[Store, str, dict[str, str]]:
    """The four pairs of ``tests.storage.catalog_store`` scored in January (run-0, run-1), then a
    March run that scored one pair again with other parameters (a zoo cut down to two models);
    every version dated back to its run. Returns the store, the March version's key and each
    pair's January key."""
    from tests.storage.catalog_store import DATASET, build_catalog_store

    store = build_catalog_store(url)
    for box in (layout.DATASETS, layout.FEATURES, layout.ALIGNMENT):
        for key, _ in list(store.manifests(box)):
            _published_at(store, key, "2026-01-01T00:10:00+00:00")
    january = {key.split("/")[2]: key for key, _ in store.manifests(layout.ALIGNMENT)}
    scores, best = _alignment_rows("vit-small", "lm-small", "al-march", 8)
    key = layout.alignment_key(DATASET, "vit-small", "lm-small", "al-march")
    store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                  {"kind": "alignment", "lineage": {"dataset_version": DATASET,
                                                    "features": {"vit-small": "fv-vit-small", "lm-small": "fv-lm-small"}}})
    _published_at(store, key, _day(1, 3))
    _run(store, "run-march", "COMPLETED", _day(1, 1), _day(1, 4), DATASET,
         {"vit-small": "fv-vit-small", "lm-small": "fv-lm-small"}, [key])
    return store, key, january


def test_keep_current_keeps_what_alignment_best_shows(tmp_path, capsys):
    """--keep-runs 1 keeps the newest run's versions only: the three pairs that only January's runs
    scored left alignment_best (gc said nothing of it). It now says so, and --keep-current keeps
    them (with their features): only the superseded version of the re-scored pair goes."""
    store, march, january = _zoo_then_one_pair(str(tmp_path / "store"))
    current = "select model_a, model_b, metric, alignment_version, score from alignment_best order by all"
    before = connect(store).sql(current).fetchall()
    assert len(before) == 8 and {r[3] for r in before if (r[0], r[1]) == ("vit-small", "lm-small")} == {"al-march"}

    assert main(["gc", "--store", store.url, "--keep-runs", "1", "--keep-current", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "and the current results (alignment_best)" in out and "held current results" not in out
    assert main(["gc", "--store", store.url, "--keep-runs", "1", "--keep-current"]) == 0
    capsys.readouterr()
    gone = {january["vit-small__lm-small"]}
    assert _versions(store) >= {march, *january.values()} - gone and not _versions(store) & gone
    assert connect(store).sql(current).fetchall() == before  # what alignment_best shows is all there
    assert connect(store).execute("select count(*) from alignment").fetchone()[0] == 2 * sum(
        MODELS[a][2] * MODELS[b][2] for a in ("vit-small", "vit-large") for b in ("lm-small", "lm-large"))

    store, march, january = _zoo_then_one_pair(str(tmp_path / "plain"))
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "--keep-runs 1: 3 of the removed alignment version(s) held current results" in out, out
    assert "--keep-current keeps them" in out
    left = connect(store).sql(current).fetchall()
    assert [r for r in before if (r[0], r[1]) == ("vit-small", "lm-small")] == left  # the newest run's pair only


def test_keep_current_needs_keep_runs(tmp_path, capsys):
    store, _, _ = _zoo_then_one_pair(str(tmp_path / "store"))
    before = _versions(store)
    assert main(["gc", "--store", store.url, "--keep-current"]) == 2
    assert "--keep-current goes with --keep-runs N" in capsys.readouterr().err
    assert _versions(store) == before


def test_a_long_extraction_stage_that_finished_after_the_kept_run_started_keeps_what_it_named(tmp_path, capsys):
    """A GPU extraction stage that started before the newest run (a short run from the UI) and
    finished after it: its alignment stage has not run yet, so what it named stays. gc counted
    stages by their start only and removed its dataset and features (the alignment stage then
    failed: dataset not stored)."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    _extraction(store, "gpu-long", "COMPLETED", _day(3, 20), D1, {"vit": "fv1", "lm": "fl1"}, finished_at=_day(4, 5))
    _extraction(store, "gpu-done-before", "COMPLETED", _day(3, 20), D2, {"vit": "fv2", "lm": "fl2"}, finished_at=_day(3, 23))
    night1 = {layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"), layout.features_key(D1, "lm", "fl1"),
              layout.rendered_dataset_key("recipe1")}
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    capsys.readouterr()
    assert _versions(store) == keep | night1  # gpu-done-before ended before run-4: it keeps nothing more


def test_a_run_that_starts_and_ends_during_gc_stops_the_removal(tmp_path):
    """A run that started after gc planned and ended before gc next looked left no sign of life
    (it removes its own at the end), and gc removed versions it had used; its record stays, and a
    record gc did not see when it planned stops the removal as a sign of life does."""
    from storage.run_retention import apply_retention, plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    plan = plan_retention(store, 1)

    def a_run_comes_and_goes(key: str) -> None:
        _run(store, "quick", "COMPLETED", _day(7, 1), _day(7, 2), D2, {"vit": "fv2", "lm": "fl2"}, [])

    assert apply_retention(store, plan, on_removed=a_run_comes_and_goes) == plan.remove[:1]
    assert plan.blocked.startswith("a run started during gc")
    assert all(store.manifest(key) is not None for key in plan.remove[1:])
    assert plan_retention(store, 1).run_files == plan.run_files | {layout.run_key("quick")}


def test_a_features_only_run_neither_displaces_the_kept_run_nor_loses_its_features(tmp_path, capsys):
    """A run of a one-model zoo ends COMPLETED with features only: it took the slot of `--keep-runs
    1`'s newest run with results (every alignment version but those published in the last 15
    minutes was removed). It is no run with results; the features it used stay."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    _run(store, "vit-alone", "COMPLETED", _day(7, 1), _day(7, 2), D1, {"vit": "fv1"}, [])
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    assert "those of run(s) run-4," in capsys.readouterr().out
    assert _versions(store) == keep | {layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"),
                                       layout.rendered_dataset_key("recipe1")}


@pytest.mark.parametrize("status", ["CANCELLED", "FAILED"])
def test_the_pairs_a_stopped_run_aligned_stay_with_their_inputs(tmp_path, capsys, status):
    """A run stopped (or failed) mid-alignment after the kept run lists the pairs it had aligned
    in ``partial_alignment_versions``, here one it found stored from night 1: gc removed it with
    its dataset and features (published long before), and the run's retry computed them all again.
    They stay, with what they were computed from, as a features-only run's features do."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    a1 = layout.alignment_key(D1, "vit", "lm", "al1")
    _run(store, "stopped", status, _day(7, 1), _day(7, 2), D1, {"vit": "fv1", "lm": "fl1"}, [],
         partial_alignment_versions=[a1], aligned=0)
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    assert "those of run(s) run-4," in capsys.readouterr().out  # still no run with results
    assert _versions(store) == keep | {a1, layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"),
                                       layout.features_key(D1, "lm", "fl1"), layout.rendered_dataset_key("recipe1")}


def test_a_kept_run_keeps_the_pairs_its_stopped_attempt_aligned(tmp_path, capsys):
    """A completed run retried and stopped mid-alignment keeps its first attempt's grid
    (``alignment_versions``) and lists the pairs the retry aligned (``partial_alignment_versions``):
    every version its record names stays, those too."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    a3 = layout.alignment_key(D2, "vit", "lm", "al3")  # night 3's, found stored by the retry
    _run(store, "run-4", "CANCELLED", _day(4, 1), _day(4, 4), D2, {"vit": "fv4", "lm": "fl2"},
         [layout.alignment_key(D2, "vit", "lm", "al4")], partial_alignment_versions=[a3])
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    assert "those of run(s) run-4," in capsys.readouterr().out
    assert _versions(store) == keep | {a3}


def test_the_newest_runs_are_ordered_by_finish_then_start_then_id():
    """``newest_runs``: ``select_run``'s order, newest first: finish time (start time when there is
    none), then start time, then run id; runs without results never count."""
    from storage.run_retention import newest_runs

    def record(run_id: str, started: tuple, finished: tuple | None, status: str = "COMPLETED") -> dict:
        return {"run_id": run_id, "status": status, "started_at": _day(*started), "finished_at": finished and _day(*finished),
                "alignment_versions": ["alignment/d/a__b/v"]}

    records = [record("run-long", (1, 1), (5, 1)),  # started first, finished last
               record("run-a", (2, 1), (5, 1)),  # the same finish, a later start
               record("run-short", (3, 1), (4, 1)),
               record("run-open", (4, 12), None, "FAILED"),  # no finish time: its start counts (day 4, 12:00)
               record("run-b", (2, 1), (3, 1)), record("run-c", (2, 1), (3, 1)),  # the same times: by id
               record("run-cancelled-early", (9, 1), (9, 2), "RUNNING")]
    assert [r["run_id"] for r in newest_runs(records, 10)] == ["run-a", "run-long", "run-open", "run-short", "run-c", "run-b"]
    assert [r["run_id"] for r in newest_runs(records, 2)] == ["run-a", "run-long"]


def test_a_version_published_at_the_kept_moment_is_recent():
    """Every version published since ``plan.since`` is kept: at that very moment too; one without a
    readable ``published_at`` counts as recent."""
    from storage.run_retention import _published_since
    from storage.runs import epoch_seconds

    since = epoch_seconds(_day(4, 1)) - 900
    assert _published_since({"published_at": _day(4, 0, 45)}, since)
    assert not _published_since({"published_at": _day(4, 0, 44)}, since)
    assert _published_since({"published_at": "not a time"}, since) and _published_since({}, since)


def test_a_run_dated_after_this_clock_stops_the_removal(tmp_path, capsys):
    """The environment hunt: a clock set back between two runs (or a host whose clock ran ahead)
    left a record dated after every later run. It sorted as the newest run, so `--keep-runs 1`
    kept that old run's versions and removed those of the run really last, the newest results.
    Now nothing published is removed and the record is named; once its times are corrected, gc
    keeps the right run."""
    store, keep = _nightly_store(str(tmp_path / "store"))
    a1 = layout.alignment_key(D1, "vit", "lm", "al1")
    ahead = time.time() + 86400 * 30
    started = datetime.fromtimestamp(ahead, timezone.utc).isoformat()
    finished = datetime.fromtimestamp(ahead + 600, timezone.utc).isoformat()
    _run(store, "run-0", "COMPLETED", started, finished, D1, {"vit": "fv1", "lm": "fl1"}, [a1])
    before = {k: v for k, v in store.sizes("").items() if not k.startswith("runs/")}
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"--keep-runs 1: no published versions removed: run run-0's record has started_at {started}, 720.0 h after this host's clock" in out
    assert "which runs are the newest cannot be told" in out
    assert {k: v for k, v in store.sizes("").items() if not k.startswith("runs/")} == before
    _run(store, "run-0", "COMPLETED", _day(1, 1), _day(1, 4), D1, {"vit": "fv1", "lm": "fl1"}, [a1])  # the clock's real day
    assert main(["gc", "--store", store.url, "--keep-runs", "1"]) == 0
    assert _versions(store) == keep


def test_several_damaged_run_records_are_counted_in_the_blocking_reason(tmp_path) -> None:
    """With damaged run records nothing is planned for removal; the reason names the first and
    counts the others."""
    from storage.run_retention import plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    for run_id in ("run-7", "run-8"):
        store.fs.pipe(store.path(layout.run_key(run_id)), b"[1, 2]")
    plan = plan_retention(store, 1)
    assert plan.remove == [] and plan.blocked.startswith("run record runs/run-7.json")
    assert "(and 1 more); no published version is removed until then" in plan.blocked


def test_a_time_dated_ahead_is_read_as_the_runs_are_ordered() -> None:
    """The runs are ordered (``newest_runs``, the catalog) by times read with surrounding spaces
    (a hand-edited `" 2099-..."`), which sorted such a record as the newest run; the guard read
    the same time as no time and let gc remove the versions of the runs after it."""
    from storage.run_retention import dated_ahead, newest_runs

    now = time.time()
    ahead = datetime.fromtimestamp(now + 86400 * 30, timezone.utc).isoformat()
    records = [{"run_id": "edited", "status": "COMPLETED", "started_at": _day(1, 1), "finished_at": f" {ahead}\n",
                "alignment_versions": ["alignment/d/a__b/v1"]},
               {"run_id": "last", "status": "COMPLETED", "started_at": _day(2, 1), "finished_at": _day(2, 2),
                "alignment_versions": ["alignment/d/a__b/v2"]}]
    assert newest_runs(records, 1)[0]["run_id"] == "edited"
    blocked = dated_ahead(records, now)
    assert blocked is not None and blocked.startswith("run edited's record has finished_at")
    assert "started_at, finished_at and ordered_at" in blocked


def test_a_kept_run_whose_record_does_not_name_its_feature_versions_readably_stops_the_removal(tmp_path) -> None:
    """What the newest run used cannot be kept when its record does not name it (feature versions
    that are not an object): nothing is removed, and the reason names the run."""
    from storage.run_retention import plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    a4 = layout.alignment_key(D2, "vit", "lm", "al4")
    _run(store, "run-4", "COMPLETED", _day(4, 1), _day(4, 4), D2, "not an object", [a4])
    plan = plan_retention(store, 1)
    assert plan.remove == [] and plan.blocked is not None and "run run-4's record does not name its" in plan.blocked


@pytest.mark.parametrize("dataset", ["", 7])
def test_an_extraction_stage_that_names_no_dataset_readably_keeps_nothing_and_blocks_nothing(tmp_path, dataset) -> None:
    """An extraction stage's record whose ``dataset_version`` is empty or not text names no
    version: it changes nothing in the plan."""
    from storage.run_retention import plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    expected = plan_retention(store, 1)
    _extraction(store, "gpu-odd", "COMPLETED", _day(4, 2), dataset, {"vit": "fv1", "lm": "fl1"}, finished_at=_day(4, 5))
    plan = plan_retention(store, 1)
    assert plan.blocked is None and (plan.keep, plan.remove) == (expected.keep, expected.remove)


def test_an_alignment_lineage_without_its_dataset_keeps_the_feature_versions_of_its_keys_dataset(tmp_path) -> None:
    """An alignment version's inputs are read from its manifest's ``lineage``; one that names no
    ``dataset_version`` (a sound manifest: the field is optional) is of the dataset its key names,
    so its feature versions stay (al9's input fv2 is kept by nothing else)."""
    from storage.run_retention import plan_retention

    store, keep = _nightly_store(str(tmp_path / "store"))
    a9 = layout.alignment_key(D2, "vit", "lm", "al9")
    manifest = store.manifest(a9)
    store.write_json(f"{a9}/manifest.json", {**manifest, "lineage": {"features": {"vit": "fv2", "lm": "fl9"}}})
    plan = plan_retention(store, 1)
    assert plan.blocked is None and layout.features_key(D2, "vit", "fv2") in plan.keep
    assert set(plan.remove) == _versions(store) - keep - {layout.rendered_dataset_key("recipe1")}


def test_an_extraction_stage_counts_by_when_it_ran_and_one_without_times_keeps_what_it_names(tmp_path) -> None:
    """A stage that finished before the kept moment (run-4's start less the clock skew) keeps
    nothing; one that finished at that very moment counts, as a version published then does; one
    whose record has no time at all cannot be placed, so what it names stays."""
    from storage.run_retention import plan_retention
    from storage.runs import CLOCK_SKEW_SECONDS, epoch_seconds

    night1 = {layout.dataset_key(D1), layout.features_key(D1, "vit", "fv1"), layout.features_key(D1, "lm", "fl1")}
    kept_moment = datetime.fromtimestamp(epoch_seconds(_day(4, 1)) - CLOCK_SKEW_SECONDS, timezone.utc).isoformat()
    for case, (finished, kept) in enumerate(((_day(3, 23), False), (kept_moment, True), (None, True))):
        store, _ = _nightly_store(str(tmp_path / f"store-{case}"))
        _extraction(store, "gpu", "COMPLETED", finished, D1, {"vit": "fv1", "lm": "fl1"}, finished_at=finished)
        plan = plan_retention(store, 1)
        assert plan.blocked is None and (night1 <= plan.keep) is kept and (night1 & set(plan.remove) == set()) is kept



def test_a_record_is_dated_ahead_only_more_than_the_clock_skew_after_now() -> None:
    """``dated_ahead``: a record that started or finished more than ``CLOCK_SKEW_SECONDS`` after
    this host's clock stops gc, naming the run and the field; one within the skew does not."""
    from storage.run_retention import dated_ahead
    from storage.runs import CLOCK_SKEW_SECONDS

    now = datetime(2026, 3, 4, 12, tzinfo=timezone.utc).timestamp()

    def record(seconds_after_now: float) -> dict:
        finished = datetime.fromtimestamp(now + seconds_after_now, timezone.utc).isoformat()
        return {"run_id": "run-x", "started_at": _day(4, 11), "finished_at": finished}

    assert dated_ahead([record(CLOCK_SKEW_SECONDS)], now) is None
    assert dated_ahead([record(CLOCK_SKEW_SECONDS + 1)], now).startswith("run run-x's record has finished_at ")


def test_a_version_being_published_again_and_a_pointer_gone_meanwhile_are_not_counted_as_removed(tmp_path) -> None:
    """Between plan and removal a writer took the claim of a planned version (publishing it again:
    it is left alone) and the demo's pointer was removed by someone else: neither is reported
    removed nor sized; the rest goes."""
    from storage.run_retention import apply_retention, plan_retention

    store, _ = _nightly_store(str(tmp_path / "store"))
    plan = plan_retention(store, 1)
    claimed, pointer = plan.remove[0], layout.rendered_dataset_key("recipe1")
    assert pointer in plan.pointers
    store.write_json(f"{claimed}/.publishing", {"owner": "w", "claimed_at": time.time(), "process": current_owner()})
    store.delete(pointer)
    sizes: dict[str, int] = {}
    removed = apply_retention(store, plan, sizes=sizes)
    assert removed == plan.remove[1:] and set(sizes) == set(removed)
    assert store.manifest(claimed) is not None and all(store.manifest(key) is None for key in removed)


def test_a_start_time_the_catalog_reads_is_read_by_keep_runs_too(tmp_path) -> None:
    """A hand-edited record whose start has spaces around it (`" 2026-03-04T01:00:00+00:00 "`) is
    a time to the catalog and to the order of runs (``storage.times.utc_time``), but
    ``storage.runs.epoch_seconds`` read it as no time: ``--keep-runs`` kept that run as the newest
    and then refused ("record has no start time"). Every reading of a stored time is now the one
    reading; a time past ``datetime``'s range once in UTC is no time to both."""
    from storage.run_retention import plan_retention
    from storage.runs import epoch_seconds

    store = Store(str(tmp_path / "store"))
    _dataset(store, D2, _day(4, 0))
    vit, lm = _features(store, D2, "vit", "fv4", _day(4, 2)), _features(store, D2, "lm", "fl2", _day(4, 2))
    key = _alignment(store, D2, "fv4", "fl2", "al4", _day(4, 3))
    _run(store, "run-4", "COMPLETED", f" {_day(4, 1)} ", _day(4, 4), D2, {"vit": "fv4", "lm": "fl2"}, [key])
    plan = plan_retention(store, 1)
    assert plan.blocked is None and plan.kept_runs == ["run-4"]
    assert plan.since == datetime(2026, 3, 4, 1, tzinfo=timezone.utc).timestamp() - 900  # 15 min of skew before its start
    assert {vit, lm, key} <= plan.keep
    assert epoch_seconds("2026-03-04 06:30:00+05:30") == datetime(2026, 3, 4, 1, tzinfo=timezone.utc).timestamp()
    assert epoch_seconds("2026-03-04T01:00:00") == datetime(2026, 3, 4, 1, tzinfo=timezone.utc).timestamp()  # no offset: UTC
    assert epoch_seconds("9999-12-31T23:59:59-05:00") is None and epoch_seconds("soon") is None
