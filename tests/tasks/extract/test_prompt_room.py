"""A prompt that fills ``max_length`` would cut every caption away (identical features, bits per
byte of the prompt): refused at the pre-check, and a cut caption that kept only prompt tokens is
refused at run time, never pooled."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.extract import check_model, extract_all, load_extractor
from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec

GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=128)
CAPTIONS = ["a red apple", "two cats on a sofa", "a bicycle"]
PREFIX = "A photograph taken from a large collection of pictures showing this: "  # 69 bytes = 69 ByT5 tokens


def _spec(prompt: str, max_length: int = 64, **kw) -> ModelSpec:
    return ModelSpec(name="g", loader="random_hf", id="GPT2Config", modality="language", prompt=prompt,
                     max_length=max_length, config=GPT2, **kw)


def _prompt_tokens(prompt: str) -> int:
    """Tokens of the prompt's own text under the byte-level ByT5 tokenizer: its UTF-8 bytes."""
    return len(prompt.replace("{text}", "").encode("utf-8"))


@pytest.mark.parametrize("prompt", [PREFIX + "{text}", "{text}" + PREFIX, "An image of {text}. " + PREFIX])
def test_a_prompt_that_fills_max_length_is_refused_before_loading(prompt):
    n = _prompt_tokens(prompt)
    assert n >= 64 - 1  # with ByT5's one special token (EOS), no caption token fits in 64
    with pytest.raises(ModelInputError) as err:
        check_model(_spec(prompt))
    msg = str(err.value)
    assert "'g'" in msg and f"takes {n} tokens" in msg and "max_length 64" in msg
    assert f"set max_length: {n + 2} or more" in msg and "shorten the prompt" in msg


def test_a_prompt_longer_than_the_positions_says_shorten_it():
    spec = ModelSpec(name="g", loader="random_hf", id="GPT2Config", modality="language", prompt=PREFIX * 2 + "{text}",
                     max_length=128, config=GPT2)
    with pytest.raises(ModelInputError, match=r"leaves no room for a caption token .*; shorten the prompt \(the model takes 128"):
        check_model(spec)


def test_one_caption_token_of_room_is_enough_and_captions_differ():
    """At the boundary (prompt + EOS + 1 = max_length) the pre-check passes and each caption keeps
    its first byte: captions with different first bytes get different features."""
    n = _prompt_tokens(PREFIX)
    ex = load_extractor(_spec(PREFIX + "{text}", max_length=n + 2), device="cpu")
    feats = extract_all(ex, ["apple", "zebra", "cat"])
    assert feats.extras["truncated_texts"] == 3
    for layer in feats.layers[1:]:
        assert len(np.unique(layer, axis=0)) == 3
    with pytest.raises(ModelInputError, match="leaves no room"):
        check_model(_spec(PREFIX + "{text}", max_length=n + 1))


def test_a_caption_cut_to_the_prompt_at_run_time_is_refused_not_pooled():
    """The run-time guard (for a prompt the pre-check did not see: here the spec is swapped after
    loading): a cut caption whose kept tokens are the prompt's alone raises, naming the caption."""
    ex = load_extractor(_spec("{text}"), device="cpu")
    ex.spec = _spec(PREFIX + "{text}", max_length=64).model_copy()
    with pytest.raises(ModelInputError, match=r"caption 'a red apple' keeps no token of its own: max_length 64"):
        ex.prepare(CAPTIONS)


def test_left_truncation_keeps_the_caption_when_the_suffix_leaves_room():
    """With truncation on the left, the run-time guard compares the kept tokens with the prompt's
    text AFTER {text}: a long caption cut on the left keeps its tail and passes; one cut to the
    suffix alone is refused."""
    ex = load_extractor(_spec("{text}. ok", max_length=16), device="cpu")
    ex.tokenizer.truncation_side = "left"
    prepared = ex.prepare(["a very long caption that is cut on the left"])
    assert prepared.n_truncated == 1
    ex.spec = _spec("{text}" + "x" * 20, max_length=16).model_copy()
    with pytest.raises(ModelInputError, match="keeps no token of its own"):
        ex.prepare(["a caption"])
