"""A researcher's loop on a real store: a finished run, then one vision and one language model
added to the zoo and the pipeline run again. Only the new models are extracted and only their
pairs scored; every stored number equals a from-scratch run of the final zoo on another store;
docs/queries.md's query 12 ranks the new models among the others as worked out from the run's
best rows here."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from flows.pipeline import prh_pipeline
from storage.catalog import connect, query
from storage.store import Store
from tasks.params import PipelineConfig
from tests.flows.test_pipeline import TINY_BERT, TINY_GPT, TINY_VIT
from tests.storage.test_queries import doc_queries

VIT_B = {**TINY_VIT, "name": "vit-b", "seed": 11}
BERT_B = {**TINY_BERT, "name": "bert-b", "seed": 12}


def _config(models: list[dict]) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 32, "seed": 0, "image_size": 32},
        "models": models,
        "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4, "permutations": 9},
    })


def _run_rows(store: Store, run_id: str, name: str) -> dict[tuple, dict]:
    """The rows of ``name`` (best.parquet or scores.parquet) of every alignment version the run's
    record lists, read with pyarrow alone, keyed by pair, metric and layers."""
    record = json.loads(store.read_bytes(f"runs/{run_id}.json"))
    rows = {}
    for key in record["alignment_versions"]:
        for r in pq.read_table(store.read_uri(f"{key}/{name}")).to_pylist():
            rows[(r["model_a"], r["model_b"], r["metric"], r["layer_a"], r["layer_b"])] = r
    return rows


def _landing(best: list[dict]) -> list[tuple]:
    """Query 12's answer worked out in Python: per metric, each pair's competition rank by score
    (1 = highest); each model's best-ranked pair; its rank among its modality's models."""
    out = []
    for metric in sorted({r["metric"] for r in best}):
        rows = [r for r in best if r["metric"] == metric]
        rank = {id(r): 1 + sum(o["score"] > r["score"] for o in rows) for r in rows}
        models: dict[str, dict] = {}
        for r in rows:
            for model, modality, partner in ((r["model_a"], r["modality_a"], r["model_b"]), (r["model_b"], r["modality_b"], r["model_a"])):
                mine = (rank[id(r)], partner)
                if model not in models or mine < (models[model]["pair_rank"], models[model]["partner"]):
                    models[model] = {"modality": modality, "pair_rank": rank[id(r)], "partner": partner, "score": r["score"]}
        for modality in ("vision", "language"):
            same = {m: v for m, v in models.items() if v["modality"] == modality}
            ranked = []
            for m, v in same.items():
                model_rank = 1 + sum(o["pair_rank"] < v["pair_rank"] for o in same.values())
                ranked.append((metric, m, modality, v["partner"], v["score"], v["pair_rank"], len(rows), model_rank, len(same)))
            out += sorted(ranked, key=lambda t: (t[7], t[1]))
    return out


@pytest.mark.usefixtures("prefect_harness")
def test_adding_models_computes_only_their_pairs_and_ranks_them_among_the_others(tmp_path):
    url = str(tmp_path / "store")
    first = prh_pipeline(config=_config([TINY_VIT, TINY_BERT, TINY_GPT]), store=url)
    assert (first["status"], first["aligned"], first["metrics_computed"]) == ("COMPLETED", 2, 4)

    final = [TINY_VIT, TINY_BERT, TINY_GPT, VIT_B, BERT_B]
    second = prh_pipeline(config=_config(final), store=url)
    assert second["status"] == "COMPLETED"
    assert second["extracted"] == ["bert-b", "vit-b"] and second["reused"] == ["tiny-bert", "tiny-gpt", "tiny-vit"]
    # 2 x 3 pairs, of which tiny-vit x tiny-bert and tiny-vit x tiny-gpt were stored: 4 new, 2 metrics each
    assert (second["aligned"], second["metrics_computed"], second["metrics_copied"]) == (4, 8, 0)

    store = Store(url)
    con = connect(url)
    run = query(con, f"select extracted, reused, aligned, len(alignment_versions) n from runs where run_id = '{second['run_id']}'").to_pylist()
    assert run == [{"extracted": ["bert-b", "vit-b"], "reused": ["tiny-bert", "tiny-gpt", "tiny-vit"], "aligned": 4, "n": 6}]

    # every number of the run equals a from-scratch run of the final zoo on another store
    fresh = prh_pipeline(config=_config(final), store=str(tmp_path / "fresh"))
    assert (fresh["aligned"], fresh["metrics_computed"]) == (6, 12)
    for name in ("scores.parquet", "best.parquet"):
        incremental, scratch = _run_rows(store, second["run_id"], name), _run_rows(Store(str(tmp_path / "fresh")), fresh["run_id"], name)
        assert incremental.keys() == scratch.keys() and len(incremental) > 0
        for key, row in incremental.items():
            for column, value in row.items():
                if isinstance(value, float):
                    assert value == pytest.approx(scratch[key][column], abs=1e-6, nan_ok=True), (name, key, column)
                else:
                    assert value == scratch[key][column], (name, key, column)

    # where the new models land: the doc's query against the run's best rows ranked here
    best = list(_run_rows(store, second["run_id"], "best.parquet").values())
    assert len(best) == 6 * 2
    columns = ("metric", "model", "modality", "best_partner", "best_score", "pair_rank", "n_pairs", "model_rank", "n_models")
    got = [tuple(r[c] for c in columns) for r in query(con, dict(doc_queries())["12. Where a model lands among the others"]).to_pylist()]
    expected = _landing(best)
    assert [g[:4] + g[5:] for g in got] == [e[:4] + e[5:] for e in expected]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected], abs=5.1e-5)  # the query rounds to 4 decimals
    assert {g[1] for g in got} == {"tiny-vit", "vit-b", "tiny-bert", "tiny-gpt", "bert-b"}
