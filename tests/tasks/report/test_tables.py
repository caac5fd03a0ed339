"""Pivots and helpers over catalog rows."""

from __future__ import annotations

import json
import math

import numpy as np

from tasks.report.tables import (best_row, chance_ratio, ci_columns, common_chance, grid_blocks, interval, interval_columns,
                                  layer_matrix, metrics_of, model_grid, number, scored)
from tests.tasks.report.synthetic import LANGUAGE, LAYERS, N, TOPK, VISION, best_rows, score_of, score_rows


def test_model_grid_puts_vision_in_rows_and_language_in_columns():
    best = best_rows()
    grid = model_grid(best, "cka")
    assert grid.rows == sorted(VISION) and grid.columns == sorted(LANGUAGE)
    assert (grid.row_kind, grid.column_kind) == ("vision", "language")
    for i, a in enumerate(grid.rows):
        for j, b in enumerate(grid.columns):
            assert grid.values[i, j] == score_of("cka", VISION.index(a), LANGUAGE.index(b))
            assert grid.cells[i][j]["model_a"] == a and grid.cells[i][j]["model_b"] == b


def test_missing_pairs_and_values_are_nan():
    best = [r for r in best_rows(calibrated=False) if not (r["model_a"] == "vit-s" and r["model_b"] == "lm-a")]
    grid = model_grid(best, "mutual_knn", "calibrated_score")
    assert np.isnan(grid.values).all()
    raw = model_grid(best, "mutual_knn")
    assert np.isnan(raw.values[grid.rows.index("vit-s"), grid.columns.index("lm-a")])
    assert np.isfinite(raw.values).sum() == len(VISION) * len(LANGUAGE) - 1


def test_chance_ratio_prefers_the_analytical_level_then_the_null():
    knn, cka = (next(r for r in best_rows() if r["metric"] == m) for m in ("mutual_knn", "cka"))
    ratio, basis = chance_ratio(knn)
    assert basis == "chance" and math.isclose(ratio, knn["score"] / (TOPK / (N - 1)))
    ratio, basis = chance_ratio(cka)
    assert basis == "null" and math.isclose(ratio, cka["score"] / 0.02)
    assert chance_ratio({**cka, "null_mean": None}) is None
    # unbiased CKA: chance 0, null mean 0 plus noise: no ratio (it read 293x for a pair at chance)
    assert chance_ratio({**cka, "metric": "unbiased_cka", "score": 0.0157, "chance_level": 0.0, "null_mean": 0.0001}) is None
    # the report hunt: rsa_spearman of unrelated models read 10.7x null (its null mean 0 plus noise);
    # a signed metric without an analytical level gets no ratio either (cknna's null sits near 0 too)
    assert chance_ratio({**cka, "metric": "rsa_spearman", "score": 0.0107, "chance_level": None, "null_mean": 0.001}) is None
    assert chance_ratio({**cka, "metric": "cknna", "score": 0.2, "chance_level": None, "null_mean": 0.01}) is None
    assert chance_ratio({**cka, "metric": "svcca", "score": 0.4, "chance_level": None, "null_mean": 0.2}) == (2.0, "null")
    # a null mean of 0 or below is no basis for a ratio (no division by zero, no negative ratio)
    assert chance_ratio({**cka, "metric": "svcca", "score": 0.4, "chance_level": None, "null_mean": 0.0}) is None
    assert chance_ratio({**cka, "metric": "svcca", "score": 0.4, "chance_level": None, "null_mean": -0.1}) is None
    assert common_chance(best_rows(), "mutual_knn") == round(TOPK / (N - 1), 12) and common_chance(best_rows(), "cka") is None


def test_metric_order_and_ci_columns():
    assert metrics_of([{"metric": m} for m in ("zeta", "cka", "mutual_knn")]) == ["mutual_knn", "cka", "zeta"]
    assert ci_columns(["score", "ci_low", "ci_high"]) == ("ci_low", "ci_high")
    assert ci_columns(["score"]) is None


def test_layer_matrix_has_every_layer_pair_with_names():
    names_a, names_b, matrix = layer_matrix(score_rows(), "cka", "vit-b", "lm-b")
    assert matrix.shape == (LAYERS["vit-b"], LAYERS["lm-b"])
    assert names_a == [f"block.{i}" for i in range(LAYERS["vit-b"])] and names_b[0] == "layer.0"
    assert matrix[-1, -1] == score_of("cka", 1, 1) and np.unravel_index(matrix.argmax(), matrix.shape) == (3, 2)
    assert layer_matrix(score_rows(), "cka", "nope", "lm-b")[2].size == 0


def test_describe_dataset():
    from tasks.report.tables import describe_dataset

    hub = {"kind": "huggingface", "hub_id": "minhuh/prh", "revision": "wit_1024", "commit": "89abcdef0123456789ab", "split": "train",
           "captions": "first", "files": ["data/train-00000-of-00001.parquet"]}
    assert describe_dataset("prh-wit_1024-train", json.dumps(hub)) == \
        "prh-wit_1024-train · minhuh/prh@wit_1024 (commit 89abcdef0123), split train, first captions"
    assert describe_dataset("pairs", {"kind": "huggingface", "local_path": "/data/pairs", "split": "test", "captions": "all"}) == \
        "pairs · /data/pairs, split test, all captions"
    assert describe_dataset("pairs", {"kind": "huggingface", "local_path": "/data/pairs", "split": "test", "n": 64, "captions": "first"}) == \
        "pairs · /data/pairs, split test, first 64 rows, first captions"
    assert describe_dataset("openmoji-1024", {"kind": "openmoji", "n": 1024, "seed": 0, "image_size": 224}) == \
        "openmoji-1024 · OpenMoji, n=1024, seed 0, 224 px"
    assert describe_dataset("my-pairs", '{"kind": "path", "path": "/data/my-pairs.parquet"}') == "my-pairs · /data/my-pairs.parquet"
    assert describe_dataset("pets", {"kind": "path", "path": "/data/pets", "n": 500, "captions": "all"}) == \
        "pets · /data/pets, first 500 rows, all captions"
    assert describe_dataset("dataset_coco-test", {"kind": "path", "path": "/coco/dataset_coco.json", "split": "test", "n": 1024}) == \
        "dataset_coco-test · /coco/dataset_coco.json, split test, first 1024 rows"
    assert describe_dataset("synthetic", "test") == "synthetic · test" and describe_dataset(None, None) is None
    assert describe_dataset("pets", {"kind": "path", "path": "/data/pets"}, 12) == "pets · /data/pets, 12 rows rejected"
    assert describe_dataset("pets", {"kind": "path", "path": "/data/pets"}, 1) == "pets · /data/pets, 1 row rejected"
    assert describe_dataset("pets", {"kind": "path", "path": "/data/pets"}, 0) == "pets · /data/pets"


def test_rows_aligned_says_what_n_counts():
    from tasks.report.tables import rows_aligned

    assert rows_aligned([{"n_samples": 1024, "unit": "sample"}, {"n_samples": 1024}]) == "1024"  # old rows: no unit
    assert rows_aligned([{"n_samples": 24, "unit": "image"}]) == "24 images"
    assert rows_aligned([{"n_samples": 72, "unit": "sample"}, {"n_samples": 24, "unit": "image"}]) == "24, 72 (some pairs one row per image)"
    assert rows_aligned([]) == "none"  # a run that published no alignment: nothing was aligned, not an unknown count
    assert rows_aligned([{"n_samples": None}]) == "?"  # rows that do not say


def test_describe_metrics_names_the_parameters_behind_the_rows():
    from tasks.report.tables import describe_metrics

    scored = {"score": 0.3, "layer_a": 1, "layer_b": 2}
    best = [{"metric": "mutual_knn", "params": '{"topk": 10}', "permutations": 50, "bootstrap": 200, **scored},
            {"metric": "mutual_knn", "params": '{"topk": 10}', "permutations": 50, "bootstrap": 200, **scored},
            {"metric": "cka", "params": '{"kernel_metric": "ip"}', "permutations": 50, "bootstrap": 200, **scored},
            {"metric": "svcca", "params": "{}", "permutations": 0, "bootstrap": None, **scored}]
    assert describe_metrics(best, ["mutual_knn", "cka", "svcca"]) == \
        "mutual_knn (topk=10), cka (kernel_metric=ip), svcca; 0 | 50 permutations, 200 bootstrap resamples"
    mixed = best[:1] + [{**best[0], "params": '{"topk": 5}'}]
    assert describe_metrics(mixed, ["mutual_knn"]) == "mutual_knn (topk=10 | topk=5); 50 permutations, 200 bootstrap resamples"
    # the report hunt: a pair without a finite score stores 0 draws; the header read "0 | 99 permutations"
    unscored = {**best[0], "score": None, "layer_a": None, "layer_b": None, "permutations": 0, "bootstrap": 0}
    assert describe_metrics(best[:2] + [unscored], ["mutual_knn"]) == "mutual_knn (topk=10); 50 permutations, 200 bootstrap resamples"


def _all_pairs() -> list[dict]:
    """A ``pairs: all`` run: the cross-modal rows plus every vision–vision and language–language
    pair once (model_a first by name, as the pipeline orders them: docs/config.md)."""
    best = best_rows()
    for kind, names in (("vision", VISION), ("language", LANGUAGE)):
        for x, a in enumerate(sorted(names)):
            for b in sorted(names)[x + 1:]:
                for metric in ("mutual_knn", "cka"):
                    best.append({**best[0], "metric": metric, "model_a": a, "model_b": b, "modality_a": kind, "modality_b": kind,
                                 "score": 0.9 - 0.01 * len(best)})
    return best


def test_pairs_all_keeps_the_grid_vision_by_language_and_gives_each_modality_its_own():
    """pairs: all mixed modalities in one grid: a language model among the rows, a vision model
    among the columns, axes 'model A' / 'model B', same-modality scores beside cross-modal ones."""
    best = _all_pairs()
    assert grid_blocks(best, "cka") == [("vision", "language"), ("language", "language"), ("vision", "vision")]
    grid = model_grid(best, "cka")
    assert grid.rows == sorted(VISION) and grid.columns == sorted(LANGUAGE)
    assert (grid.row_kind, grid.column_kind) == ("vision", "language")
    assert np.isfinite(grid.values).all()
    for i, a in enumerate(grid.rows):
        for j, b in enumerate(grid.columns):
            assert grid.values[i, j] == score_of("cka", VISION.index(a), LANGUAGE.index(b))
    for kind, names in (("vision", VISION), ("language", LANGUAGE)):
        same = model_grid(best, "cka", block=(kind, kind))
        assert (same.row_kind, same.column_kind) == (kind, kind)
        pairs = {(r["model_a"], r["model_b"]): r["score"] for r in best if r["metric"] == "cka" and r["modality_a"] == r["modality_b"] == kind}
        assert set(same.rows) | set(same.columns) == set(names)
        shown = {(a, b): same.values[i, j] for i, a in enumerate(same.rows) for j, b in enumerate(same.columns) if np.isfinite(same.values[i, j])}
        assert shown == pairs


def test_a_language_vision_row_is_drawn_with_its_vision_model_as_the_row():
    row = {**best_rows()[0], "model_a": "lm-a", "model_b": "vit-s", "modality_a": "language", "modality_b": "vision"}
    assert grid_blocks([row], row["metric"]) == [("vision", "language")]
    grid = model_grid([row], row["metric"])
    assert (grid.rows, grid.columns, grid.values.tolist()) == (["vit-s"], ["lm-a"], [[row["score"]]])


def test_a_single_modality_zoo_has_one_grid_of_that_modality():
    best = [r for r in _all_pairs() if r["modality_a"] == r["modality_b"] == "language"]
    assert grid_blocks(best, "mutual_knn") == [("language", "language")]
    grid = model_grid(best, "mutual_knn")
    assert (grid.row_kind, grid.column_kind) == ("language", "language")
    assert grid.rows == sorted(LANGUAGE)[:-1] and grid.columns == sorted(LANGUAGE)[1:]
    unknown = [{**r, "modality_a": None, "modality_b": None} for r in best]
    assert (model_grid(unknown, "mutual_knn").row_kind, model_grid(unknown, "mutual_knn").column_kind) == (None, None)


def test_number_is_a_finite_float_or_none():
    assert number(None) is None and number(math.nan) is None and number(math.inf) is None and number(-math.inf) is None
    assert number(2) == 2.0 and isinstance(number(2), float)


def test_an_interval_needs_both_finite_bounds_and_the_columns_one_row_with_them():
    ci = ("ci_low", "ci_high")
    assert interval({"ci_low": 0.1, "ci_high": 0.3}, ci) == (0.1, 0.3)
    assert interval({"ci_low": 0.1, "ci_high": None}, ci) is None and interval({"ci_low": None, "ci_high": 0.3}, ci) is None
    assert interval({"ci_low": 0.1, "ci_high": 0.3}, None) is None
    without = {"metric": "cka", "score": 0.5, "ci_low": None, "ci_high": None}
    with_bounds = {"metric": "cka", "score": 0.6, "ci_low": 0.4, "ci_high": 0.7}
    assert interval_columns([without, without]) is None  # the columns, every value NULL: a run without bootstrap
    assert interval_columns([without, with_bounds]) == ci  # one row with both bounds is enough
    assert interval_columns([{"metric": "cka", "score": 0.5}]) is None


def test_a_scored_best_row_has_a_finite_score_and_both_layers():
    assert scored({"score": 0.5, "layer_a": 0, "layer_b": 2})
    assert not scored({"score": None, "layer_a": 0, "layer_b": 2})
    assert not scored({"score": math.nan, "layer_a": 0, "layer_b": 2})
    assert not scored({"score": 0.5, "layer_a": None, "layer_b": 2}) and not scored({"score": 0.5, "layer_a": 0, "layer_b": None})


def test_best_row_ranks_only_the_rows_of_its_metric():
    """best_row: the most aligned of ``metric``'s rows with a finite score; a larger score of another
    metric, or a row of this metric without a finite score, is never it."""
    best = [{"metric": "cka", "model_a": "v", "model_b": "a", "score": 0.4},
            {"metric": "mutual_knn", "model_a": "v", "model_b": "b", "score": 0.9},
            {"metric": "cka", "model_a": "v", "model_b": "c", "score": None},
            {"metric": "cka", "model_a": "v", "model_b": "d", "score": 0.3}]
    assert best_row(best, "cka")["model_b"] == "a"
    assert best_row(best, "svcca") is None


def test_layer_matrix_of_a_pair_without_rows_is_empty_on_both_axes():
    """(layer names of A, of B, (La, Lb) scores): no rows of the pair, no layers on either side."""
    names_a, names_b, matrix = layer_matrix(score_rows(), "cka", "nope", "lm-b")
    assert (names_a, names_b, matrix.shape) == ([], [], (0, 0))
