"""The layout of a language model's hidden states (one vector per token, `(B, T, D)`) is checked on
every forward (`HFLanguageExtractor._check_token_states`), the load probe's first: a model that
fails it is refused by name before any shard is written."""

from __future__ import annotations

import logging

import pytest

from tasks.extract import ModelInputError
from tasks.extract.spec import ModelSpec

#: DeepSeek-V4 keeps 4 residual streams per token: its hidden states are `(B, T, 4, D)`.
DEEPSEEK_V4 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                   q_lora_rank=16, qk_rope_head_dim=8, moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1,
                   num_experts_per_tok=2, max_position_embeddings=128)


def test_a_model_without_one_vector_per_token_is_refused_before_any_shard_is_written(tmp_path) -> None:
    from tasks.dataset_task import publish_dataset
    from tasks.extract_task import extract_to_store
    from tests.tasks.test_dataset_task import _coco_params

    url = str(tmp_path / "store")
    dataset = publish_dataset(_coco_params(tmp_path), url)
    spec = ModelSpec(name="streams", loader="random_hf", id="DeepseekV4Config", modality="language", config=DEEPSEEK_V4)
    with pytest.raises(ModelInputError, match=r"layer 'embeddings' has shape \(1, 2, 4, 32\) for a batch of 1 caption"
                                               r"\(s\) of 2 tokens: not one vector per token"):
        extract_to_store(url, dataset, spec, logging.getLogger("prh.test.token_states"), shard_size=2)
    features = tmp_path / "store" / "features"  # a shard would be features/<dataset>/<model>/<version>/_partial/...
    written = [p for p in features.rglob("*") if p.is_file()] if features.exists() else []
    assert written == [], written
