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


_TEXT = dict(H, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=384)
_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
#: Every model type whose causal-LM class transformers names neither ``*ForCausalLM`` nor
#: ``*LMHeadModel``: a checkpoint saved from that class is read as a causal LM when its config
#: reads left to right (`is_causal_config`), so each is judged here against the class itself
#: (tiny config), or says why it cannot be built here.
_UNUSUAL_CAUSAL_CLASSES = {
    "bert-generation": lambda: _config("bert-generation-decoder"),
    "reformer": lambda: config_class("ReformerConfig")(  # local attention: chunks in order
        attn_layers=["local", "local"], hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
        axial_pos_embds=False, max_position_embeddings=64, local_attn_chunk_length=4, local_num_chunks_after=0,
        is_decoder=True, vocab_size=384, pad_token_id=0),
    "gemma3": lambda: config_class("Gemma3Config")(text_config=dict(_TEXT, sliding_window=4, query_pre_attn_scalar=8),
                                                   vision_config=_VISION, mm_tokens_per_image=4),
    "gemma4": lambda: config_class("Gemma4Config")(
        text_config=dict(_TEXT, sliding_window=4, global_head_dim=8, vocab_size_per_layer_input=384,
                         hidden_size_per_layer_input=8), vision_config=None),
    "got_ocr2": lambda: config_class("GotOcr2Config")(text_config=_TEXT),
    "moss_transcribe_diarize": lambda: config_class("MossTranscribeDiarizeConfig")(
        text_config=_TEXT, audio_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                             max_source_positions=16)),
    "gemma4_unified": lambda: config_class("Gemma4UnifiedConfig")(
        text_config=dict(_TEXT, sliding_window=4, global_head_dim=8, vocab_size_per_layer_input=384,
                         hidden_size_per_layer_input=8), vision_config=None, audio_config=None),
    "gemma3n": None,  # its vision tower (TimmWrapper) needs timm, not installed here: not built
}


def test_every_causal_lm_class_not_named_like_one_is_judged():
    """A transformers release that maps a new type to such a class (a ``*ForConditionalGeneration``)
    makes it a causal LM for checkpoints saved from it: it must be judged here first."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    unusual = {t for t, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if not name.endswith(("ForCausalLM", "LMHeadModel"))}
    assert unusual <= set(_UNUSUAL_CAUSAL_CLASSES), f"judge these types: {sorted(unusual - set(_UNUSUAL_CAUSAL_CLASSES))}"


@pytest.mark.parametrize("model_type", sorted(t for t, build in _UNUSUAL_CAUSAL_CLASSES.items() if build is not None))
def test_a_checkpoint_of_a_causal_lm_class_not_named_like_one_is_causal_only_when_left_to_right(model_type):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:  # an older transformers (>= 5.20 is supported)
        pytest.skip(f"transformers has no {model_type!r}")
    config = _UNUSUAL_CAUSAL_CLASSES[model_type]()
    assert config.model_type == model_type
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    assert is_causal_config(config, from_architectures=True) == (not _sees_later_tokens(config))
    assert is_causal_config(config, from_architectures=True)  # all left to right as built here: none a false "encoder"


_BOTH_WAYS = {
    "reformer-lsh": lambda: config_class("ReformerConfig")(
        attn_layers=["lsh", "lsh"], hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
        axial_pos_embds=False, max_position_embeddings=64, lsh_attn_chunk_length=2, num_buckets=4, num_hashes=1,
        lsh_num_chunks_after=0, hash_seed=0, is_decoder=True, vocab_size=384, pad_token_id=0),
    "gemma4-all": lambda: config_class("Gemma4Config")(
        text_config=dict(_TEXT, sliding_window=4, global_head_dim=8, vocab_size_per_layer_input=384,
                         hidden_size_per_layer_input=8, use_bidirectional_attention="all"), vision_config=None),
    "gemma3-text-bidirectional": lambda: config_class("Gemma3TextConfig")(
        **_TEXT, sliding_window=4, query_pre_attn_scalar=8, use_bidirectional_attention=True),
}


@pytest.mark.parametrize("variant", sorted(_BOTH_WAYS))
def test_a_causal_lm_class_configured_to_attend_both_ways_is_no_causal_lm(variant):
    """Reformer's LSH layers (which earlier tokens a position sees depends on every token's bucket) and
    Gemma's ``use_bidirectional_attention`` (EmbeddingGemma; Gemma 4's ``"all"``) let a later token
    change earlier logits: no bits per byte, for a random config or a checkpoint of the class."""
    config = _BOTH_WAYS[variant]()
    assert _sees_later_tokens(config)
    assert not is_causal_config(config, from_architectures=False)
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    assert not is_causal_config(config, from_architectures=True)
