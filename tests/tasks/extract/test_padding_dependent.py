"""Models whose features would depend on the padding a caption gets in a batch run pad-free (one
forward per group of equal-length captions, no pad column): a forward without ``attention_mask``
(FNet, CPM-Ant), known model types (ConvBERT, Nystromformer, YOSO) and whatever the load-time
probe measures; MRA, inexact only with left padding, is padded on the right. Every caption's
features equal an unpadded forward of it alone (1e-5), bits per byte still works, and models that
mask their pads keep one padded forward per batch. Also: captions with no token, and models that
fail in the probe forward, raise `ModelInputError`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer

from tasks.extract import ModelInputError, extract_all, load_extractor
from tasks.extract import hf_language
from tasks.extract.pooling import pool_tokens
from tasks.extract.spec import ModelSpec

# "ok go" and "a dog" have the same length: one pad-free group of two rows
CAPTIONS = ["ok go", "two cats sleeping on a very long sofa in the sun", "a dog", "a red apple"]
E = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=256)
PAD_DEPENDENT = {
    "FNetConfig": {k: v for k, v in E.items() if k != "num_attention_heads"},  # Fourier mixing: no heads
    "CpmAntConfig": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, dim_head=8, dim_ff=64, prompt_length=4),
    "ConvBertConfig": E,
    "NystromformerConfig": E,
    "YosoConfig": E,
}
GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=128)


@pytest.fixture(scope="module")
def left_tokenizer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("byt5-left")
    ByT5Tokenizer(padding_side="left").save_pretrained(path)
    return str(path)


def _spec(cls: str, config: dict, pooling: str = "avg", **kw) -> ModelSpec:
    return ModelSpec(name="m", loader="random_hf", id=cls, modality="language", config=config, pooling=pooling, **kw)


def _alone(ex, caption: str, pooling: str, module=None) -> tuple[list[np.ndarray], float, int]:
    """The caption alone, unpadded, no mask: every hidden state pooled by hand in float64, and (with
    an LM module) its summed next-token NLL in nats over non-special targets and their count."""
    enc = ex.tokenizer(caption, return_special_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        out = (module or ex.model)(input_ids=ids, output_hidden_states=True)
    feats = [(h[0].double().mean(0) if pooling == "avg" else h[0, -1].double()).numpy() for h in out.hidden_states]
    nll, n = 0.0, 0
    if module is not None:
        logp = torch.log_softmax(out.logits[0].double(), dim=-1)
        for t in range(1, ids.shape[1]):
            if not enc["special_tokens_mask"][t]:
                nll -= float(logp[t - 1, ids[0, t]])
                n += 1
    return feats, nll, n


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _assert_close(row: np.ndarray, ref: np.ndarray) -> None:
    """1e-5, relative to the layer's scale where it exceeds 1 (CPM-Ant's features reach ~200)."""
    np.testing.assert_allclose(row, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _assert_equals_alone(ex, pooling: str, features: list[np.ndarray]) -> None:
    for i, caption in enumerate(CAPTIONS):
        for layer, ref in zip(features, _alone(ex, caption, pooling)[0], strict=True):
            _assert_close(layer[i], ref)


@pytest.mark.parametrize("pooling", ["avg", "last"])
@pytest.mark.parametrize("cls", sorted(PAD_DEPENDENT))
def test_a_padding_dependent_model_gives_each_caption_its_unpadded_features(cls, pooling):
    ex = load_extractor(_spec(cls, PAD_DEPENDENT[cls], pooling), device="cpu")
    assert ex.pad_free_reason is not None
    calls = _count_forwards(ex.model)
    features = extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers
    assert len(calls) == 3  # one forward per distinct caption length
    _assert_equals_alone(ex, pooling, features)


def test_mra_is_padded_on_the_right_where_left_padding_would_move_it(left_tokenizer):
    ex = load_extractor(_spec("MraConfig", E, "last", tokenizer=left_tokenizer), device="cpu")
    assert ex.tokenizer.padding_side == "left" and ex.padding_side == "right" and ex.pad_free_reason is None
    calls = _count_forwards(ex.model)
    features = extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers
    assert len(calls) == 1  # right padding is exact: still one batch
    _assert_equals_alone(ex, "last", features)


@pytest.mark.parametrize("cls,side,dtype", [
    ("ConvBertConfig", "right", "float32"), ("NystromformerConfig", "right", "float32"), ("YosoConfig", "right", "float32"),
    ("MraConfig", "left", "float32"), ("ConvBertConfig", "right", "bfloat16"), ("NystromformerConfig", "left", "bfloat16"),
])
def test_the_load_probe_finds_padding_dependence_without_the_model_type_list(monkeypatch, left_tokenizer, cls, side, dtype):
    monkeypatch.setattr(hf_language, "PADDING_DEPENDENT", {})
    ex = load_extractor(_spec(cls, E, tokenizer=left_tokenizer if side == "left" else None, dtype=dtype), device="cpu")
    assert "at load" in (ex._pad_free_reasons.get(side) or "")
    assert ex.padding_side == ("right" if cls == "MraConfig" else side)  # MRA: right padding is exact
    if dtype == "float32":
        features = extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers
        _assert_equals_alone(ex, "avg", features)


@pytest.mark.parametrize("cls,config", [
    ("BertConfig", dict(E, num_attention_heads=2)),
    ("GPT2Config", GPT2),
    ("LlamaConfig", dict(E, num_key_value_heads=2)),
    ("T5Config", dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)),
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_models_that_mask_their_pads_keep_one_padded_forward_per_batch(left_tokenizer, cls, config, dtype):
    ex = load_extractor(_spec(cls, config, tokenizer=left_tokenizer, dtype=dtype), device="cpu")
    assert getattr(ex, "pad_free_reason", None) is None and not any((getattr(ex, "_pad_free_reasons", None) or {}).values())
    calls = _count_forwards(ex.model)
    extract_all(ex, CAPTIONS, batch_size=2, bits_per_byte=False)
    assert len(calls) == 2


@pytest.mark.parametrize("cls,config,pad_free", [("GPT2Config", GPT2, False), ("ConvBertConfig", E, True)])
def test_a_padding_side_set_after_load_is_probed_at_its_first_batch(cls, config, pad_free):
    ex = load_extractor(_spec(cls, config, "last"), device="cpu")
    assert ex.padding_side == "right" and set(ex._pad_free_reasons) == {"right"}
    ex.tokenizer.padding_side = "left"
    calls = _count_forwards(ex.model)
    features = extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS), bits_per_byte=False).layers
    assert ex.padding_side == "left" and (ex.pad_free_reason is not None) == pad_free
    # GPT-2: the left probe measures (the pair, the short caption alone), then one padded batch;
    # ConvBERT: known type, no measurement, then one forward per caption length (3)
    assert len(calls) == 3
    _assert_equals_alone(ex, "last", features)


def test_pad_free_bits_per_byte_equals_a_caption_at_a_time_computation(monkeypatch, left_tokenizer):
    monkeypatch.setattr(hf_language, "PADDING_DEPENDENT", {"gpt2": ("left", "right")})
    ex = load_extractor(_spec("GPT2Config", GPT2, "last", tokenizer=left_tokenizer), device="cpu")
    assert ex.pad_free_reason is not None and ex.is_causal_lm
    f = extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS))
    per_caption = []
    for i, caption in enumerate(CAPTIONS):
        feats, nll, n = _alone(ex, caption, "last", module=ex.lm)
        for layer, ref in zip(f.layers, feats, strict=True):
            _assert_close(layer[i], ref)
        per_caption.append(nll / math.log(2) / len(caption.encode("utf-8")))
    assert f.extras["bpb_texts"] == len(CAPTIONS)
    assert f.extras["bits_per_byte"] == pytest.approx(float(np.mean(per_caption)), rel=1e-6)


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory) -> str:
    """A word-level tokenizer that adds no special tokens: an empty caption has no token at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "a red apple two cats ok".split() + [f"w{i}" for i in range(300)]  # a vocabulary of a plausible size
    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("plain")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    assert fast("")["input_ids"] == [] and fast("a red")["input_ids"] == [2, 3]
    fast.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("pooling", ["avg", "last"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_a_caption_with_no_token_is_refused_by_name(plain_tokenizer, pooling, empty):
    ex = load_extractor(_spec("GPT2Config", GPT2, pooling, tokenizer=plain_tokenizer), device="cpu")
    with pytest.raises(ModelInputError, match=f"caption {empty!r} tokenizes to no token"):
        extract_all(ex, ["a red apple", empty, "two cats"], batch_size=3)


def test_a_model_failing_in_the_probe_forward_is_a_model_input_error():
    spec = _spec("XmodConfig", dict(E, max_position_embeddings=260))
    with pytest.raises(ModelInputError, match="probe forward pass failed inside the model: ValueError") as info:
        load_extractor(spec, device="cpu")
    assert "model 'm'" in str(info.value) and isinstance(info.value.__cause__, ValueError)


def test_a_model_without_input_embeddings_is_a_model_input_error():
    config = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128)
    with pytest.raises(ModelInputError, match="FSMTEncoder has no input token embeddings") as info:
        load_extractor(_spec("FSMTConfig", config), device="cpu")
    assert isinstance(info.value.__cause__, AttributeError)


def test_probe_errors_wraps_model_errors_only():
    from tasks.extract.base import probe_errors

    spec = _spec("GPT2Config", GPT2)
    with pytest.raises(ModelInputError, match="the probe failed inside the model: RuntimeError") as info:
        with probe_errors(spec, "the probe"):
            torch.zeros(2, 3) @ torch.zeros(2, 3)  # raised inside torch
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="unknown language pooling"):  # raised in prh's own code: unchanged
        with probe_errors(spec, "the probe"):
            pool_tokens(torch.zeros(1, 2, 3), torch.ones(1, 2), "bogus")


def test_a_device_fault_inside_the_model_is_not_read_as_a_model_problem():
    """A CUDA fault (an illegal memory access, an ECC error) is the device's, not the model's:
    it passes unchanged instead of becoming a ModelInputError that says the spec is wrong."""
    from tasks.extract.base import probe_errors

    fault = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(torch.AcceleratorError) as info:
        with probe_errors(_spec("GPT2Config", GPT2), "the probe"):
            raise fault
    assert info.value is fault
