"""A random-init language model's special-token ids stay inside its vocabulary: a config class's
default ids (GPT-2's bos/eos 50256, ModernBERT's cls/sep 50281/50282) are replaced by the
tokenizer's own (or None) where the vocabulary is smaller, so transformers prints no "must be None
or an integer within the vocabulary" warning; ids a config names itself are left alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from transformers.utils import logging as hf_logging

from tasks.extract import extract_all, load_extractor
from tasks.extract.hf_models import check_model
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS, TINY_LANGUAGE

OUTSIDE = "within the vocabulary"
GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=128)


class _Records(logging.Handler):
    """Every record transformers' loggers emit while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def transformers_warnings() -> Iterator[list[logging.LogRecord]]:
    """transformers' warnings while a test runs. Its `warning_once` prints a message once per
    process (an lru_cache): the cache is cleared first, so an earlier test cannot hide one."""
    hf_logging.get_logger("transformers").warning_once.cache_clear()
    handler = _Records()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)


def _spec(cls: str, config: dict, **kw) -> ModelSpec:
    return ModelSpec(name="m", loader="random_hf", id=cls, modality="language", config=config, **kw)


def _token_ids(config) -> dict[str, int]:
    return {k: v for k, v in vars(config).items() if k.endswith("_token_id") and isinstance(v, int)}


@pytest.mark.parametrize("spec", [
    _spec("GPT2Config", dict(GPT2, vocab_size=400)),  # a vocabulary smaller than GPT-2's default ids (50256)
    _spec("GPT2Config", GPT2),  # the byte-level tokenizer's 384 tokens
    _spec(*TINY_LANGUAGE["modernbert"]),  # cls/sep 50281/50282 by default
], ids=["gpt2-vocab-400", "gpt2-byte-level", "modernbert"])
def test_a_random_models_special_token_ids_lie_inside_its_vocabulary(spec, transformers_warnings):
    checked = check_model(spec)
    outside = [str(r.getMessage()) for r in transformers_warnings if OUTSIDE in r.getMessage()]
    assert outside == []
    vocab = checked.config.vocab_size
    assert all(0 <= v < vocab for v in _token_ids(checked.config).values()), _token_ids(checked.config)
    tok = checked.tokenizer
    assert (checked.config.pad_token_id, checked.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_ids_a_config_names_itself_are_kept():
    checked = check_model(_spec("GPT2Config", dict(GPT2, vocab_size=400, bos_token_id=7, eos_token_id=9)))
    assert (checked.config.bos_token_id, checked.config.eos_token_id) == (7, 9)


def test_the_features_do_not_depend_on_the_special_token_ids():
    """GPT-2's forward does not read bos/eos: the same seed gives the same features with the
    class's default ids (given explicitly) as with ids taken from the tokenizer."""
    fixed = load_extractor(_spec("GPT2Config", dict(GPT2, vocab_size=400, bos_token_id=50256, eos_token_id=50256)),
                           device="cpu")
    own = load_extractor(_spec("GPT2Config", dict(GPT2, vocab_size=400)), device="cpu")
    for a, b in zip(extract_all(fixed, CAPTIONS).layers, extract_all(own, CAPTIONS).layers, strict=True):
        np.testing.assert_array_equal(a, b)
