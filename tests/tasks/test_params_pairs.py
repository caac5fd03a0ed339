"""The direction of a model pair (``PipelineConfig.model_pairs``) does not depend on the models'
order in the zoo: some metrics are not symmetric, and a reordered zoo must find its stored pairs."""

from __future__ import annotations

import itertools

import pytest

from tasks.params import PipelineConfig


def _model(name: str, modality: str) -> dict:
    return {"name": name, "loader": "random_hf", "id": "ViTConfig" if modality == "vision" else "BertConfig",
            "modality": modality}


ZOO = [_model("vit-b", "vision"), _model("Bert", "language"), _model("vit-A", "vision"), _model("gpt", "language")]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(ZOO)))))
def test_all_pairs_are_oriented_the_same_whatever_the_zoo_order(order: tuple[int, ...]) -> None:
    config = PipelineConfig.model_validate({"models": [ZOO[i] for i in order], "alignment": {"pairs": "all"}})
    got = {(a.name, b.name) for a, b in config.model_pairs()}
    assert got == {("vit-A", "vit-b"), ("vit-A", "Bert"), ("vit-A", "gpt"), ("vit-b", "Bert"), ("vit-b", "gpt"),
                   ("Bert", "gpt")}  # vision first; else case-insensitive name order
    assert len(config.model_pairs()) == 6


def test_a_vision_language_pair_is_the_same_under_all_and_cross_modal() -> None:
    models = [_model("text", "language"), _model("img", "vision")]
    cross = PipelineConfig.model_validate({"models": models})
    every = PipelineConfig.model_validate({"models": models, "alignment": {"pairs": "all"}})
    assert [(a.name, b.name) for a, b in every.model_pairs()] == [(a.name, b.name) for a, b in cross.model_pairs()] \
        == [("img", "text")]
