"""A prompted caption too long for ``max_length`` is shortened by characters (its start, or its end
with ``truncation_side='left'``) so that the whole prompt is fed: the text after ``{text}`` stays,
and ``last`` pools the prompt's last token. Bits per byte divides by the bytes actually fed (prompt
and kept caption; without a prompt, the bytes the kept tokens cover), not the whole caption's.
References: byte-level ByT5 ids built by hand (byte + 3, EOS = 1) and an independent forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import MINILM

GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=128)
PROMPT = 'This sentence: "{text}" means in one word:"'  # PromptEOL: text after the caption
LONG = "two cats sleeping on a very long and comfortable sofa in the sun, next to a window"
SHORT = "a red apple"
MAX = 64


def _spec(prompt: str | None, pooling: str = "last", **kw) -> ModelSpec:
    return ModelSpec(name="g", loader="random_hf", id="GPT2Config", modality="language", prompt=prompt, pooling=pooling,
                     max_length=MAX, config=GPT2, **kw)


def _byt5_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")] + [1]


def _expected_text(caption: str, from_end: bool = False) -> str:
    """The prompt with the longest cut of an ASCII caption that fits: ByT5 feeds one token per byte
    plus EOS, so the caption keeps MAX - 1 - (the prompt's bytes) characters."""
    keep = MAX - 1 - len(PROMPT.replace("{text}", "").encode("utf-8"))
    return PROMPT.replace("{text}", caption[len(caption) - keep:] if from_end else caption[:keep])


def _hand(ex, ids: list[int]) -> tuple[list[np.ndarray], float, int]:
    """Last-token features (float64) of every hidden state, the summed next-token NLL in nats over the
    non-special tokens after the first (float64 log-softmax), and their number: one text, no padding."""
    t = torch.tensor([ids])
    with torch.inference_mode():
        out = ex.lm(input_ids=t, output_hidden_states=True, use_cache=False)
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)
    targets = [i for i in range(1, len(ids)) if ids[i] != 1]  # EOS is special: never scored
    nll = -sum(float(logp[i - 1, ids[i]]) for i in targets)
    return [h[0, -1].double().numpy() for h in out.hidden_states], nll, len(targets)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_long_caption_is_shortened_and_the_prompt_end_is_pooled(side):
    ex = load_extractor(_spec(PROMPT), device="cpu")
    ex.tokenizer.truncation_side = side
    feats = extract_all(ex, [SHORT, LONG], batch_size=2)
    assert feats.extras["truncated_texts"] == feats.extras["bpb_truncated_texts"] == 1
    fed = [PROMPT.replace("{text}", SHORT), _expected_text(LONG, from_end=side == "left")]
    assert fed[1].endswith('" means in one word:"') and len(_byt5_ids(fed[1])) == MAX
    per_text = []
    for row, text in enumerate(fed):
        ref, nll, _ = _hand(ex, _byt5_ids(text))
        for name, layer, r in zip(feats.layer_names, feats.layers, ref):
            np.testing.assert_allclose(layer[row], r, rtol=0, atol=2e-5, err_msg=f"{name} row {row}")
        per_text.append(nll / math.log(2) / len(text.encode("utf-8")))  # bytes fed: prompt + kept caption
    assert feats.extras["text_bytes"] == sum(len(t.encode("utf-8")) for t in fed)
    assert feats.extras["bits_per_byte"] == pytest.approx(float(np.mean(per_text)), rel=1e-6)


def test_a_caption_that_keeps_no_character_is_refused():
    ex = load_extractor(_spec(PROMPT), device="cpu")
    ex.spec = _spec("x" * (MAX - 1) + "{text}").model_copy()  # the prompt alone fills max_length
    with pytest.raises(ModelInputError, match=r"caption 'a red apple' keeps no token of its own: max_length 64"):
        ex.prepare([SHORT])


def test_without_a_prompt_bits_per_byte_counts_the_bytes_kept():
    """Byte-level tokenizer: tokens truncated as before (MAX - 1 bytes and EOS); the denominator is
    the MAX - 1 bytes fed, not the caption's 84."""
    ex = load_extractor(_spec(None, pooling="avg"), device="cpu")
    caption = LONG + " and more words"
    feats = extract_all(ex, [caption])
    kept = caption.encode("utf-8")[:MAX - 1].decode("utf-8")
    _, nll, n = _hand(ex, _byt5_ids(kept))
    assert feats.extras["predicted_tokens"] == n and feats.extras["text_bytes"] == MAX - 1
    assert feats.extras["bits_per_byte"] == pytest.approx(nll / math.log(2) / (MAX - 1), rel=1e-6)


def test_without_a_prompt_a_fast_tokenizer_counts_the_bytes_its_kept_tokens_cover():
    """WordPiece (all-MiniLM's uncased vocabulary): one token per common word, [CLS] and [SEP]
    around, so MAX - 2 words are kept; their text is those words joined by spaces."""
    words = ("the cat sat on the mat and the dog ran to the park " * 8).split()
    caption = " ".join(words)
    ex = load_extractor(_spec(None, pooling="avg", tokenizer=MINILM), device="cpu")
    assert len(ex.tokenizer(caption)["input_ids"]) == len(words) + 2 > MAX  # one token per word
    assert ex.text_bytes([caption, "the cat"]) == [len(" ".join(words[:MAX - 2]).encode("utf-8")), 7]


def test_each_caption_is_fitted_once_per_truncation_side(monkeypatch):
    """Sorting, preparing and counting bytes each fitted every caption again: the shortening search
    (a tokenizer call per step) ran three times per long caption."""
    import tasks.extract.hf_language as hf_language

    calls = []
    original = hf_language.shortened_caption

    def counted(tokenizer, spec, caption):
        if caption.startswith(LONG):  # not the load probe's captions
            calls.append(caption)
        return original(tokenizer, spec, caption)

    monkeypatch.setattr(hf_language, "shortened_caption", counted)
    ex = load_extractor(_spec(PROMPT), device="cpu")
    first = extract_all(ex, [SHORT, LONG, LONG + " again"], batch_size=2)
    assert sorted(calls) == sorted([LONG, LONG + " again"])
    again = extract_all(ex, [LONG, SHORT], batch_size=2)
    assert len(calls) == 2 and np.array_equal(again.layers[-1][0], first.layers[-1][1])
    ex.tokenizer.truncation_side = "left"
    extract_all(ex, [LONG], batch_size=1)
    assert calls[2:] == [LONG]  # the other side keeps another cut


def test_the_fits_kept_are_bounded_and_change_no_result(monkeypatch):
    """Every fitted caption was kept for the extractor's life: memory grew with each caption of a
    run (one `extract_all` call per shard). Now at most ``fit_cache_size`` (least recently used
    dropped), more only while one call needs its own: each caption is still fitted once per call,
    and a caption fitted again after it was dropped gives the same features."""
    import tasks.extract.hf_language as hf_language

    calls = []
    original = hf_language.shortened_caption

    def counted(tokenizer, spec, caption):
        calls.append(caption)
        return original(tokenizer, spec, caption)

    monkeypatch.setattr(hf_language, "shortened_caption", counted)
    ex = load_extractor(_spec(PROMPT), device="cpu")
    ex.fit_cache_size = 4
    captions = [f"{LONG} {i}" if i % 2 else f"{SHORT} {i}" for i in range(14)]  # odd rows are cut
    shards = [captions[:6], captions[6:9], captions[9:14]]
    outs = []
    for shard in shards:
        calls.clear()
        outs.append(extract_all(ex, shard, batch_size=2))
        assert sorted(calls) == sorted(c for c in shard if c.startswith(LONG))  # once each, also in a call of 6 > 4
        assert len(ex._fits) <= max(4, len(shard))
    extract_all(ex, [SHORT], batch_size=1)
    assert len(ex._fits) == 4  # trimmed at the next call that fits a new caption
    calls.clear()
    again = extract_all(ex, shards[0], batch_size=2)  # dropped long ago: fitted again, same result
    assert sorted(calls) == sorted(c for c in shards[0] if c.startswith(LONG))
    for a, b in zip(again.layers, outs[0].layers):
        np.testing.assert_array_equal(a, b)
    assert again.extras == outs[0].extras

    ex.fit_cache_size = 10**6  # everything kept: the same features and byte counts in one call
    ex._fits.clear()
    whole = extract_all(ex, captions, batch_size=2)
    for i, layer in enumerate(whole.layers):
        np.testing.assert_allclose(np.concatenate([o.layers[i] for o in outs]), layer, rtol=0, atol=1e-6)
    for key in ("text_bytes", "truncated_texts", "predicted_tokens"):
        assert whole.extras[key] == sum(o.extras[key] for o in outs)
    assert whole.extras["text_bytes"] == sum(len(t.encode("utf-8")) for t in ex.fitted(captions).texts)
