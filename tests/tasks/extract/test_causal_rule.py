"""Bits per byte only for left-to-right LMs: the causal rule (`hf_models.is_causal_config`) agrees
with what each tiny random causal-LM class does (an earlier position's logits must not change when
a later token changes), and non-causal "LM heads" (XLNet, XLM masked LM, CPM-Ant, BERT-like
without ``is_decoder``) load as encoders with no bits per byte."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, ByT5Tokenizer

from tasks.extract import extract_all, load_extractor
from tasks.extract.hf_models import config_class, is_causal_config
from tasks.extract.spec import ModelSpec

H = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
CASES = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)),
    "llama": ("LlamaConfig", dict(H, num_key_value_heads=2)),
    "xlnet": ("XLNetConfig", dict(d_model=32, n_layer=2, n_head=2, d_inner=64)),
    "xlm-mlm": ("XLMConfig", dict(emb_dim=32, n_layers=2, n_heads=2, causal=False)),
    "xlm-clm": ("XLMConfig", dict(emb_dim=32, n_layers=2, n_heads=2, causal=True)),
    "cpmant": ("CpmAntConfig", dict(hidden_size=32, num_attention_heads=2, dim_head=16, dim_ff=64, num_hidden_layers=2,
                                    prompt_length=4, prompt_types=4, segment_types=4)),
    "bert": ("BertConfig", dict(H)),
    "bert-decoder": ("BertConfig", dict(H, is_decoder=True)),
    "roberta": ("RobertaConfig", dict(H, max_position_embeddings=66)),
    "roberta-decoder": ("RobertaConfig", dict(H, max_position_embeddings=66, is_decoder=True)),
    "bert-generation": ("BertGenerationConfig", dict(H)),
    "bert-generation-decoder": ("BertGenerationConfig", dict(H, is_decoder=True)),
}


def _config(case: str):
    cls, kwargs = CASES[case]
    return config_class(cls)(vocab_size=384, pad_token_id=0, **kwargs)


def _sees_later_tokens(config) -> bool:
    """Ground truth from the class itself: change the last of 8 tokens, compare the logits at the
    7 positions before it (independent of the rule under test)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    a = torch.tensor([[5, 17, 42, 99, 7, 64, 30, 12]])
    b = a.clone()
    b[0, -1] = 13
    with torch.no_grad():
        la, lb = model(input_ids=a).logits, model(input_ids=b).logits
    return float((la[0, :-1] - lb[0, :-1]).abs().max()) > 1e-6


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_rule_admits_exactly_the_left_to_right_lm_heads(case):
    config = _config(case)
    causal = not _sees_later_tokens(config)
    assert is_causal_config(config, from_architectures=False) == causal  # random_hf
    name = AutoModelForCausalLM._model_mapping[type(config)].__name__
    config.architectures = [name]  # a checkpoint saved from that class (hf)
    # the type's causal-LM class is read as one whatever its name (BertGenerationDecoder, as Gemma 3's
    # Gemma3ForConditionalGeneration), and only where it reads left to right: never a false "causal"
    assert is_causal_config(config, from_architectures=True) == causal


def test_expected_ground_truth():
    """The cases above cover both verdicts: the rule is not trivially right."""
    assert {case: not _sees_later_tokens(_config(case)) for case in ("xlnet", "xlm-mlm", "xlm-clm", "cpmant",
                                                                       "bert", "bert-decoder", "gpt2")} == {
        "xlnet": False, "xlm-mlm": False, "xlm-clm": True, "cpmant": False, "bert": False, "bert-decoder": True, "gpt2": True}


def test_random_xlnet_has_no_bits_per_byte():
    spec = ModelSpec(name="xlnet", loader="random_hf", id="XLNetConfig", modality="language", config=CASES["xlnet"][1])
    ex = load_extractor(spec, device="cpu")
    assert not ex.is_causal_lm and ex.lm is None
    feats = extract_all(ex, ["a red apple", "ok"])
    assert "bits_per_byte" not in feats.extras and len(feats.layers) == 3


@pytest.mark.parametrize("causal", [False, True])
def test_saved_xlm_lm_head_is_causal_only_when_its_config_says_so(tmp_path, causal):
    from transformers import XLMConfig, XLMWithLMHeadModel

    XLMWithLMHeadModel(XLMConfig(vocab_size=384, emb_dim=32, n_layers=2, n_heads=2, causal=causal, pad_index=0)
                       ).save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)
    ex = load_extractor(ModelSpec(name="xlm", loader="hf", id=str(tmp_path), modality="language"), device="cpu")
    assert ex.is_causal_lm == causal
    bpb = extract_all(ex, ["a red apple"]).extras.get("bits_per_byte")
    assert (bpb is not None and bpb > 0) if causal else bpb is None
