"""Why a model of the zoo is extracted although the store holds its features: after an upgrade
of prh (other extraction code) or of a library in the fingerprint, every model's stored version
is of another feature version, and the run's "to extract" said nothing of it (a store that older
code wrote looked the same as an empty one). The stored versions here are written as older code
wrote them: a manifest with its ``catalog`` and ``spec``, one small layer file."""

from __future__ import annotations

import pyarrow as pa

from storage import layout
from storage.store import Store
from tasks.extract.spec import ModelSpec
from tasks.extract_task import FEATURE_CODE, FEATURE_CODE_EXCLUDED, model_fingerprint
from tasks.why_extract import why_extract
from storage.versioning import code_version

DATASET = {"catalog": {"dataset_version": "397cf12af182d28f"}}
VIT = ModelSpec(name="random-vit", loader="random_hf", id="ViTConfig", modality="vision", pooling="avg", seed=0,
                config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 64, "image_size": 32, "patch_size": 8})


def _store_old_version(url: str, model: str, version: str, spec: dict, code: str) -> None:
    """A feature version as an older prh published it (its own code version, its own spec)."""
    layer = pa.table({"model": [model], "feature_version": [version], "layer": pa.array([0], pa.int16()),
                      "sample_id": ["emoji-1f600"], "vector": pa.array([[0.5, 1.0]], pa.list_(pa.float32(), 2))})
    catalog = {"model": model, "feature_version": version, "dataset_version": "397cf12af182d28f",
               "code_version": code, "n_layers": 1}
    Store(url).publish(layout.features_key("397cf12af182d28f", model, version), {layout.layer_file(0): layer},
                       {"kind": "features", "catalog": catalog, "spec": spec})


def test_a_model_never_stored_needs_no_reason(tmp_path):
    assert why_extract(str(tmp_path / "store"), DATASET, VIT) is None


def test_features_of_older_extraction_code_are_named_with_both_code_versions(tmp_path):
    url = str(tmp_path / "store")
    _store_old_version(url, "random-vit", "b2785a768493b52b", model_fingerprint(VIT), "483ece552deefdea")
    reason = why_extract(url, DATASET, VIT)
    now = code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)
    assert reason is not None and reason.startswith("its stored features b2785a768493b52b (published ")
    assert f"are of other extraction code (code version 483ece552deefdea, now {now})" in reason


def test_another_fingerprint_names_the_fields_that_differ_and_the_newest_version_is_compared(tmp_path):
    url = str(tmp_path / "store")
    now = code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)
    older = {**model_fingerprint(VIT), "seed": 7}
    _store_old_version(url, "random-vit", "aaaaaaaaaaaaaaaa", older, now)
    newer = {**model_fingerprint(VIT), "library": {"distribution": "transformers", "version": "4.0.0"}}
    _store_old_version(url, "random-vit", "ffffffffffffffff", newer, now)
    _store_old_version(url, "other-model", "0000000000000000", model_fingerprint(VIT), "483ece552deefdea")  # not this model
    reason = why_extract(url, DATASET, VIT)
    assert reason is not None and reason.startswith("its stored features ffffffffffffffff (published ")
    assert "were extracted with another library ({'distribution': 'transformers', 'version': '4.0.0'}, now " in reason
    assert "seed" not in reason and "code" not in reason


def test_other_code_and_another_fingerprint_are_both_named(tmp_path):
    url = str(tmp_path / "store")
    _store_old_version(url, "random-vit", "b2785a768493b52b", {**model_fingerprint(VIT), "seed": 7}, "483ece552deefdea")
    reason = why_extract(url, DATASET, VIT)
    assert reason is not None and "are of other extraction code (code version 483ece552deefdea, now " in reason
    assert reason.endswith(" and were extracted with another seed (7, now 0)")


def test_the_runs_words_for_a_model_to_extract_carry_the_reason_and_never_fail(tmp_path):
    """``flows.pipeline``'s "model i/n: NAME: ..." line: the reason after "to extract" when there is
    one; the plain words for a model never stored, and when the store cannot say (the extraction
    task reads it again and reports its errors)."""
    from flows.pipeline import _to_extract

    url = str(tmp_path / "store")
    assert _to_extract(url, DATASET, VIT) == "to extract"
    _store_old_version(url, "random-vit", "b2785a768493b52b", model_fingerprint(VIT), "483ece552deefdea")
    assert _to_extract(url, DATASET, VIT).startswith("to extract: its stored features b2785a768493b52b (published ")
    assert _to_extract(url, {"catalog": {}}, VIT) == "to extract"  # no dataset version: KeyError swallowed



def test_the_stored_version_closest_to_the_run_is_compared_not_merely_the_newest(tmp_path):
    """A store that holds the model at two settings (float32 nightly, a newer float16 trial): after
    an upgrade of the extraction code the float32 run differs from its own stored version by the
    code alone; the newer trial's dtype is no reason of this run's and must not be named as one."""
    url = str(tmp_path / "store")
    _store_old_version(url, "random-vit", "aaaaaaaaaaaaaaaa", model_fingerprint(VIT), "483ece552deefdea")
    _store_old_version(url, "random-vit", "ffffffffffffffff", {**model_fingerprint(VIT), "dtype": "float16"}, "483ece552deefdea")
    reason = why_extract(url, DATASET, VIT)
    assert reason is not None and reason.startswith("its stored features aaaaaaaaaaaaaaaa (published ")
    assert reason.endswith("are of other extraction code (code version 483ece552deefdea, now "
                           f"{code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)})")
