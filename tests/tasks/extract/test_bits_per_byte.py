"""Bits per byte of causal LMs against a hand computation from the logits, one caption at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.bpb import bits_per_byte, mean_bits_per_byte, next_token_nll, next_token_nll_rows, per_text_bits_per_byte
from tests.tasks.extract.helpers import CAPTIONS, tiny_language_spec


def _hand_bpb(ex, captions: list[str]) -> tuple[float, float]:
    """Unpadded, one caption at a time: -sum log softmax(logits)[next token] over non-special
    targets. Returns (the paper's mean over captions of each caption's bits / its bytes, all bits
    over all bytes). A caption with no scored token is left out of the mean (its bytes count in
    the pooled figure)."""
    total_nats, total_bytes, per_caption = 0.0, 0, []
    for caption in captions:
        before, scored = total_nats, 0
        enc = ex.tokenizer(caption, truncation=True, max_length=ex.spec.max_length, return_special_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        special = enc["special_tokens_mask"]
        with torch.inference_mode():
            logits = ex.lm(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, ids.shape[1]):
            if not special[t]:
                total_nats -= float(logp[t - 1, ids[0, t]])
                scored += 1
        total_bytes += len(caption.encode("utf-8"))
        if scored:
            per_caption.append((total_nats - before) / math.log(2) / len(caption.encode("utf-8")))
    return sum(per_caption) / len(per_caption), total_nats / math.log(2) / total_bytes


@pytest.mark.parametrize("kind, side", [("gpt2", "right"), ("llama", "left")])
def test_bits_per_byte_matches_hand_computation(kind, side):
    ex = load_extractor(tiny_language_spec(kind, max_length=128), device="cpu")
    ex.tokenizer.padding_side = side
    feats = extract_all(ex, CAPTIONS, batch_size=3)  # causal -> bpb on by default
    bpb = feats.extras["bits_per_byte"]
    assert math.isfinite(bpb) and bpb > 0
    assert feats.extras["text_bytes"] == sum(len(c.encode()) for c in CAPTIONS)
    paper, pooled = _hand_bpb(ex, CAPTIONS)
    assert abs(paper - pooled) > 1e-3 * pooled  # captions of unequal length: the two definitions differ here
    assert bpb == pytest.approx(paper, rel=1e-5)  # the paper's: mean over captions
    assert feats.extras["bits_per_byte_pooled"] == pytest.approx(pooled, rel=1e-5)
    assert feats.extras["bpb_texts"] == len(CAPTIONS)
    # An untrained byte-level model is near uniform over its 384 ids: ~log2(384) bits per byte.
    assert 6.0 < bpb < 12.0


def test_bits_per_byte_can_be_switched_off():
    ex = load_extractor(tiny_language_spec("gpt2"), device="cpu")
    off = extract_all(ex, CAPTIONS, bits_per_byte=False)
    on = extract_all(ex, CAPTIONS)
    assert set(off.extras) == {"truncated_texts"}  # no bits per byte
    for a, b in zip(off.layers, on.layers):  # the logits path gives the same features
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_next_token_nll_masks():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 0], [0, 4, 1, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right-padded row, left-padded row
    nll, n = next_token_nll(logits, ids, mask)
    logp = torch.log_softmax(logits, -1)
    expected = -(logp[0, 0, 2] + logp[0, 1, 3] + logp[1, 1, 1] + logp[1, 2, 2])
    assert n == 4 and nll == pytest.approx(float(expected), rel=1e-6)
    special = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]]).bool()
    nll2, n2 = next_token_nll(logits, ids, mask, ~special)
    assert n2 == 3 and nll2 == pytest.approx(float(expected + logp[0, 1, 3]), rel=1e-6)
    rows, counts = next_token_nll_rows(logits, ids, mask)
    assert counts.tolist() == [2, 2] and rows.dtype == torch.float64
    assert rows.tolist() == pytest.approx([float(-(logp[0, 0, 2] + logp[0, 1, 3])), float(-(logp[1, 1, 1] + logp[1, 2, 2]))], rel=1e-6)
    assert bits_per_byte(math.log(2) * 8, 4) == pytest.approx(2.0)
    assert per_text_bits_per_byte([math.log(2) * 8, math.log(2) * 3, 5.0], [4, 1, 0], [3, 1, 2]) == (pytest.approx(5.0), 2)  # 2 and 3 bits/byte; a text without bytes left out
    assert per_text_bits_per_byte([math.log(2) * 8, 0.0], [4, 1], [3, 0]) == (pytest.approx(2.0), 1)  # nothing predicted: left out
    with pytest.raises(ValueError):
        per_text_bits_per_byte([1.0, 2.0], [1, 1], [1])
    assert mean_bits_per_byte(5.0, 2) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_nothing_scored_is_no_bits_per_byte_not_zero(tmp_path):
    """max_length=2 with the byte-level tokenizer keeps one byte and the end-of-text token (never
    scored), so no token is predicted: bits per byte is unknown (None), not 0 (which read as a
    perfect language model in the report)."""
    import logging

    from storage.store import Store
    from tasks.dataset_task import publish_dataset
    from tasks.extract_task import extract_to_store
    from tasks.params import DatasetParams

    ex = load_extractor(tiny_language_spec("gpt2", max_length=2), device="cpu")
    feats = extract_all(ex, CAPTIONS)
    assert feats.extras["predicted_tokens"] == 0 and feats.extras["bits_per_byte"] is None
    store = str(tmp_path / "store")
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=8, image_size=32), store)
    logger = logging.getLogger("test.bits_per_byte")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        manifest = extract_to_store(store, dataset, tiny_language_spec("gpt2", max_length=2), logger=logger)
    finally:
        logger.removeHandler(handler)
    assert manifest["catalog"]["bits_per_byte"] is None and any("no caption token was scored" in m for m in messages)
    assert Store(store).manifest(manifest["key"])["extras"]["predicted_tokens"] == 0


def test_a_caption_with_no_predicted_token_is_left_out_of_the_mean():
    """GPT-2's byte-level tokenizer puts no BOS in front: a one-byte caption has no predicted
    token. It says nothing of the model, so it does not enter the mean as 0 bits per byte (which
    halved the figure with two such captions out of four)."""
    ex = load_extractor(tiny_language_spec("gpt2", max_length=128), device="cpu")
    captions = [*CAPTIONS, "x", "y"]
    feats = extract_all(ex, captions, batch_size=3)
    alone = extract_all(ex, CAPTIONS, batch_size=3)
    paper, pooled = _hand_bpb(ex, captions)
    assert feats.extras["bpb_texts"] == len(CAPTIONS)
    assert feats.extras["bits_per_byte"] == pytest.approx(paper, rel=1e-5)
    assert feats.extras["bits_per_byte"] == pytest.approx(alone.extras["bits_per_byte"], rel=1e-5)
    assert feats.extras["bits_per_byte_pooled"] == pytest.approx(pooled, rel=1e-5)
    assert extract_all(ex, ["x", "y"]).extras["bits_per_byte"] is None  # nothing scored: unknown
