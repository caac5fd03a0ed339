"""Language extraction on tiny random models: padding invariance, layers, determinism, order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS, CAUSAL_KINDS, MINILM, TINY_LANGUAGE, assert_rows_close, tiny_language_spec

_CACHE: dict[tuple, object] = {}


def _extractor(kind: str, pooling: str = "avg", **kw):
    key = (kind, pooling, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = load_extractor(tiny_language_spec(kind, pooling, **kw), device="cpu")
    return _CACHE[key]


@pytest.mark.parametrize("kind", sorted(TINY_LANGUAGE))
@pytest.mark.parametrize("pooling", ["avg", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_features(kind, pooling, side):
    """Each caption alone == the same caption batched with longer ones (fp32, 1e-5)."""
    ex = _extractor(kind, pooling)
    ex.tokenizer.padding_side = side
    try:
        batched = ex.extract_batch(CAPTIONS)
        ids = ex.prepare(CAPTIONS)
        assert (ids.attention_mask == 0).any(), "the batch must actually be padded"
        assert bool((ids.attention_mask[:, 0] == 0).any()) == (side == "left")
        for i, caption in enumerate(CAPTIONS):
            alone = ex.extract_batch([caption])
            for layer_alone, layer_batched in zip(alone, batched):
                assert_rows_close(layer_alone[0:1], layer_batched[i:i + 1], atol=1e-5)
    finally:
        ex.tokenizer.padding_side = "right"


@pytest.mark.parametrize("kind", sorted(TINY_LANGUAGE))
def test_layers_and_widths(kind):
    ex = _extractor(kind)
    config = TINY_LANGUAGE[kind][1]
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    assert ex.layer_names == ["embeddings"] + [f"layer.{i:02d}" for i in range(1, n_layers + 1)]
    assert ex.layer_dims == [32] * (n_layers + 1)
    assert ex.is_causal_lm == (kind in CAUSAL_KINDS)
    feats = extract_all(ex, CAPTIONS, batch_size=2)
    assert feats.layer_names == ex.layer_names
    assert [a.shape for a in feats.layers] == [(len(CAPTIONS), 32)] * (n_layers + 1)
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in feats.layers)
    assert feats.param_count == sum(p.numel() for p in (ex.lm or ex.model).parameters()) > 0


def test_pooling_matches_manual_computation():
    """avg = mean of the hidden states over real tokens; last = the last real token's state."""
    ex_avg, ex_last = _extractor("llama", "avg"), _extractor("llama", "last")
    caption = CAPTIONS[3]  # shorter than max_length
    ids = ex_avg.tokenizer([caption], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        states = ex_avg.model(input_ids=ids, output_hidden_states=True).hidden_states
    avg, last = ex_avg.extract_batch([caption]), ex_last.extract_batch([caption])
    for layer, h in enumerate(states):
        np.testing.assert_allclose(avg[layer][0], h[0].mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(last[layer][0], h[0, -1].numpy(), atol=1e-5)


def test_extract_all_returns_input_order_and_reports_progress():
    ex = _extractor("gpt2")
    calls: list[tuple[int, int]] = []
    feats = extract_all(ex, CAPTIONS, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    for i, caption in enumerate(CAPTIONS):
        alone = ex.extract_batch([caption])
        for a, b in zip(alone, feats.layers):
            assert_rows_close(a, b[i:i + 1])
    # sorting is by token length, longest first
    lengths = ex.sort_lengths(CAPTIONS)
    assert lengths[1] > lengths[0] > lengths[2]


def test_extract_all_empty_and_batch_size():
    ex = _extractor("bert")
    feats = extract_all(ex, [])
    assert [a.shape for a in feats.layers] == [(0, 32)] * 3 and feats.extras == {"truncated_texts": 0}
    with pytest.raises(ValueError, match="causal"):
        extract_all(ex, CAPTIONS, bits_per_byte=True)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = load_extractor(tiny_language_spec("gpt2", seed=7), device="cpu")
    assert torch.equal(state, torch.get_rng_state())
    b = load_extractor(tiny_language_spec("gpt2", seed=7), device="cpu")
    c = load_extractor(tiny_language_spec("gpt2", seed=8), device="cpu")
    fa, fb, fc = (x.extract_batch(CAPTIONS[:2]) for x in (a, b, c))
    for la, lb in zip(fa, fb):
        np.testing.assert_array_equal(la, lb)
    assert not np.allclose(fa[-1], fc[-1])


def test_random_model_vocab_follows_tokenizer():
    spec = ModelSpec(name="g", loader="random_hf", id="GPT2Config", modality="language", tokenizer=MINILM,
                     config=dict(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    ex = load_extractor(spec, device="cpu")
    assert ex.lm.config.vocab_size == len(ex.tokenizer) == 30522
    assert ex.extract_batch(["a cat"])[0].shape == (1, 16)
    byte_level = _extractor("gpt2")  # tokenizer None -> ByT5 bytes
    assert byte_level.lm.config.vocab_size == len(byte_level.tokenizer) == 384


def test_prompt_is_applied():
    plain = _extractor("bert")
    prompted = load_extractor(tiny_language_spec("bert", prompt="A caption: {text}"), device="cpu")
    np.testing.assert_allclose(prompted.extract_batch(["a cat"])[-1], plain.extract_batch(["A caption: a cat"])[-1],
                               atol=1e-6)


def test_truncation_to_max_length_is_counted():
    ex = load_extractor(tiny_language_spec("gpt2", max_length=8), device="cpu")
    feats = extract_all(ex, CAPTIONS)
    assert feats.extras["bpb_truncated_texts"] == feats.extras["truncated_texts"] == 4  # all but "ok"
    encoder = load_extractor(tiny_language_spec("bert", max_length=8), device="cpu")  # an encoder counts them too
    assert extract_all(encoder, CAPTIONS).extras == {"truncated_texts": 4}


def test_trust_remote_code_is_passed_through(monkeypatch, tmp_path):
    """Defaults to False; the spec's value reaches every from_pretrained call."""
    import transformers

    from tasks.extract import hf_models

    seen: list[tuple[str, object]] = []

    class Stop(Exception):
        pass

    def fake(kind):
        def from_pretrained(*args, **kwargs):
            seen.append((kind, kwargs.get("trust_remote_code")))
            raise Stop

        return from_pretrained

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer"))
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", fake("processor"))
    for flag in (False, True):
        kw = {} if flag is False else {"trust_remote_code": True}
        (tmp_path / "config.json").write_text("{}")
        spec = ModelSpec(name="x", loader="hf", id=str(tmp_path), modality="language", **kw)
        for call in (lambda: hf_models.load_pretrained(spec, torch.device("cpu")),
                     lambda: hf_models.load_tokenizer(spec),
                     lambda: hf_models.load_image_processor(spec.model_copy(update={"modality": "vision"}), None)):
            with pytest.raises(Stop):
                call()
    assert seen == [("config", False), ("tokenizer", False), ("processor", False),
                    ("config", True), ("tokenizer", True), ("processor", True)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_features_are_float32_and_close(dtype):
    ex = load_extractor(tiny_language_spec("gpt2", dtype=dtype), device="cpu")
    assert next(ex.model.parameters()).dtype == getattr(torch, dtype)
    half, full = extract_all(ex, CAPTIONS), extract_all(_extractor("gpt2"), CAPTIONS)
    for a, b in zip(half.layers, full.layers):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=0.05 * float(np.abs(b).max()))
    assert half.extras["bits_per_byte"] == pytest.approx(full.extras["bits_per_byte"], rel=0.01)


def test_prepared_batches_are_prefetched_in_order_on_accelerators():
    """In threads (as on a GPU) the next batches are prepared ahead; the order of batches never changes."""
    import threading
    from types import SimpleNamespace

    from tasks.extract.extractor import PreparePlan, _prepared

    threads: list[str] = []

    def prepare(chunk):
        threads.append(threading.current_thread().name)
        return list(chunk)

    batches = [np.array([0, 1]), np.array([2, 3]), np.array([4]), np.array([5, 6]), np.array([7])]
    items = list("abcdefgh")
    expected = [["a", "b"], ["c", "d"], ["e"], ["f", "g"], ["h"]]
    for plan, in_thread in [(PreparePlan("threads", 1), True), (PreparePlan("threads", 3), True),
                            (PreparePlan("inline"), False)]:
        threads.clear()
        fake = SimpleNamespace(device=torch.device("cpu"), prepare=prepare)
        assert list(_prepared(fake, items, batches, plan)) == expected
        assert all(name.startswith("prh-prepare") == in_thread for name in threads) and len(threads) == 5


def test_segment_ids_only_for_models_with_a_segment_embedding():
    """A BERT tokenizer makes token_type_ids; GPT-2's forward takes them and adds wte(0) to every
    position (no segment embedding), which shifted the demo's random GPT-2 features. Now GPT-2 gets
    input ids and mask only (equal to a plain forward); BERT still gets its segment ids."""
    gpt2 = _extractor("gpt2", "avg", tokenizer=MINILM)
    caption = CAPTIONS[1]
    enc = gpt2.tokenizer([caption], return_tensors="pt")
    assert "token_type_ids" in enc and "token_type_ids" not in gpt2.prepare([caption]).extra
    with torch.inference_mode():
        states = gpt2.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states
    for layer, h in zip(gpt2.extract_batch([caption]), states):
        np.testing.assert_allclose(layer[0], h[0].mean(0).numpy(), atol=1e-5)
    bert = _extractor("bert", "avg", tokenizer=MINILM)
    assert "token_type_ids" in bert.prepare([caption]).extra
