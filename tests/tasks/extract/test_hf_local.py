"""The 'hf' loader on local checkpoint directories (saved tiny random models): processors through
the PIL backend, dual-tower checkpoints, causal-LM detection from `architectures`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_local_vit_directory(vit_dir, images):
    assert any(vit_dir.glob("*.safetensors"))
    spec = ModelSpec(name="vit-local", loader="hf", id=str(vit_dir), modality="vision", pooling="cls")
    ex = load_extractor(spec, device="cpu")
    assert type(ex.processor).__name__.endswith("Pil")  # no torchvision
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    feats = extract_all(ex, images)
    assert feats.layers[-1].shape == (len(images), 32)
    # resized input: positions interpolated, still 32-wide features
    big = load_extractor(spec.model_copy(update={"image_size": 48}), device="cpu")
    assert big.prepare(images[:1]).pixel_values.shape[-1] == 48
    assert np.isfinite(big.extract_batch(images[:1])[-1]).all()


def test_the_models_view_names_the_content_of_a_local_checkpoint(vit_dir, tmp_path):
    """A local folder has no hub commit: the catalog's ``source_digest`` pins its weights (the
    digest its feature version hashes), so lineage tells two contents of one folder apart."""
    from storage.catalog import connect, query
    from tasks.dataset_task import publish_dataset
    from tasks.extract import sources
    from tasks.extract_task import extract_to_store
    from tasks.params import DatasetParams

    store = str(tmp_path / "store")
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=6, image_size=32), store)
    local = ModelSpec(name="vit-local", loader="hf", id=str(vit_dir), modality="vision", pooling="cls")
    extract_to_store(store, dataset, local)
    extract_to_store(store, dataset, ModelSpec(name="vit-random", loader="random_hf", id="ViTConfig", modality="vision",
                                               config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                       "intermediate_size": 64, "image_size": 32, "patch_size": 8}))
    rows = query(connect(store), "select model, commit, source_digest from models order by model").to_pylist()
    assert rows == [{"model": "vit-local", "commit": None, "source_digest": "sha256:" + sources.directory_digest(vit_dir)},
                    {"model": "vit-random", "commit": None, "source_digest": None}]


def test_dual_tower_checkpoint_uses_the_vision_tower(tmp_path, images):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=16,
    )
    full = CLIPModel(config)
    full.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    ex = load_extractor(ModelSpec(name="clip-v", loader="hf", id=str(tmp_path), modality="vision"), device="cpu")
    assert type(ex.model).__name__.startswith("CLIPVision")
    assert ex.param_count == sum(p.numel() for p in full.vision_model.parameters()) < sum(p.numel() for p in full.parameters())
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    assert extract_all(ex, images).layers[0].shape == (len(images), 32)


_VLM_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                 max_position_embeddings=128, head_dim=8, vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102)
_VLM_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)


def _save_vision_language_checkpoint(path, kind: str):
    """A tiny Llava (CLIP vision tower, Llama) or Gemma 3 (SigLIP tower, Gemma 3 text: the 4B-27B
    checkpoints' layout) saved as ``*ForConditionalGeneration`` with MiniLM's tokenizer and a PIL
    processor; returns the model read back from the folder."""
    import transformers
    from transformers import AutoModelForImageTextToText, ViTImageProcessorPil

    if kind == "llava":
        config = transformers.LlavaConfig(text_config=dict(_VLM_TEXT, model_type="llama"), image_token_index=30521,
                                          vision_config=dict(_VLM_VISION, model_type="clip_vision_model"))
    else:
        config = transformers.Gemma3Config(text_config=dict(_VLM_TEXT, sliding_window=4, query_pre_attn_scalar=8),
                                           vision_config=_VLM_VISION, mm_tokens_per_image=4, image_token_index=30521,
                                           boi_token_index=30520, eoi_token_index=30519)
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(path)
    _with_minilm_tokenizer(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return AutoModelForImageTextToText.from_pretrained(path).eval()


def _count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


@pytest.mark.parametrize("kind, prefix", [("llava", 1), ("gemma3", 0)])
def test_a_vision_language_checkpoint_as_vision_runs_its_vision_tower(tmp_path, images, kind, prefix):
    """LLaVA and Gemma 3 keep their image encoder as ``vision_tower`` (CLIP, SigLIP); the whole model's
    forward wants token ids too ("You must specify exactly one of input_ids or inputs_embeds" at the
    probe). A vision spec runs the tower: its hidden states, averaged by hand after its CLS token."""
    full = _save_vision_language_checkpoint(tmp_path, kind)
    ex = load_extractor(ModelSpec(name=kind, loader="hf", id=str(tmp_path), modality="vision"), device="cpu")
    tower = full.model.vision_tower
    assert ex.param_count == _count(tower) < _count(full)
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    pixels = ex.prepare(images[:2]).pixel_values
    with torch.inference_mode():
        states = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    for got, h in zip(ex.extract_batch(images[:2]), states, strict=True):
        np.testing.assert_allclose(got, h[:, prefix:].mean(dim=1).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "gemma3"])
def test_a_vision_language_checkpoint_as_language_runs_its_language_model(tmp_path, kind):
    """A language spec runs the language model alone: its parameters are counted, not the vision
    tower's. Gemma 3's ``Gemma3ForConditionalGeneration`` is the causal-LM class transformers maps
    its type to: a causal LM with bits per byte (it was an encoder, without them); LLaVA's is not."""
    from tests.tasks.extract.test_bits_per_byte import _hand_bpb

    full = _save_vision_language_checkpoint(tmp_path, kind)
    spec = ModelSpec(name=kind, loader="hf", id=str(tmp_path), modality="language", max_length=96)
    ex = load_extractor(spec, device="cpu")
    text = full.model.language_model
    assert ex.is_causal_lm == (kind == "gemma3")
    assert ex.param_count == (_count(text, full.lm_head) if kind == "gemma3" else _count(text)) < _count(full)
    feats = extract_all(ex, CAPTIONS, batch_size=8)
    for i, caption in enumerate(CAPTIONS):
        ids = ex.tokenizer(caption, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            states = full(input_ids=ids, output_hidden_states=True).hidden_states
        for layer, h in zip(feats.layers, states, strict=True):
            np.testing.assert_allclose(layer[i], h[0].mean(dim=0).numpy(), atol=1e-5)
    if kind == "gemma3":
        assert feats.extras["bits_per_byte"] == pytest.approx(_hand_bpb(ex, CAPTIONS)[0], rel=1e-6)


def test_local_causal_lm_is_detected_from_architectures(tmp_path):
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=384, n_positions=128)).save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)
    spec = ModelSpec(name="gpt-local", loader="hf", id=str(tmp_path), modality="language", pooling="last")
    ex = load_extractor(spec, device="cpu")
    assert ex.is_causal_lm and type(ex.lm).__name__ == "GPT2LMHeadModel"
    feats = extract_all(ex, CAPTIONS)
    assert feats.extras["bits_per_byte"] > 0
    assert spec.fingerprint()["source"]["local_digest"]


def _with_minilm_tokenizer(path) -> None:
    from transformers import AutoTokenizer

    from tasks.extract.sources import resolve_source
    from tests.tasks.extract.helpers import MINILM

    AutoTokenizer.from_pretrained(resolve_source(MINILM)).save_pretrained(path)


def test_t5_encoder_checkpoint_uses_its_encoder(tmp_path):
    """transformers 5 saves a T5EncoderModel's config with is_encoder_decoder false; AutoModel then
    built the whole T5Model, whose forward wants decoder inputs ("You must specify exactly one of
    input_ids or inputs_embeds"). The encoder is used, as for every encoder-decoder."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=30522, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)).eval()
    encoder.save_pretrained(tmp_path)
    _with_minilm_tokenizer(tmp_path)
    ex = load_extractor(ModelSpec(name="t5-enc", loader="hf", id=str(tmp_path), modality="language"), device="cpu")
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"] and not ex.is_causal_lm
    enc = ex.tokenizer([CAPTIONS[1]], return_tensors="pt")
    with torch.inference_mode():
        states = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states
    for layer, h in zip(ex.extract_batch([CAPTIONS[1]]), states):
        np.testing.assert_allclose(layer[0], h[0].mean(0).numpy(), atol=1e-5)


def test_a_random_two_tower_config_reads_its_towers_settings(images):
    """random_hf CLIPConfig: the image size is vision_config's (the processor made 224 px images
    for a 32 px model), and the tokenizer's vocabulary sizes text_config (49,408 rows were kept)."""
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    vision = load_extractor(ModelSpec(name="clip-v", loader="random_hf", id="CLIPConfig", modality="vision",
                                      config={"vision_config": {**tower, "image_size": 32, "patch_size": 8}}), device="cpu")
    assert vision.prepare(images[:1]).pixel_values.shape[-1] == 32
    assert extract_all(vision, images).layers[-1].shape == (len(images), 32)
    text = load_extractor(ModelSpec(name="clip-t", loader="random_hf", id="CLIPConfig", modality="language",
                                    config={"text_config": tower}), device="cpu")
    assert text.model.get_input_embeddings().weight.shape[0] == len(text.tokenizer)  # the byte-level tokenizer's 384
    assert extract_all(text, CAPTIONS).layers[-1].shape == (len(CAPTIONS), 32)


@pytest.mark.parametrize("case, message", [
    ("tokenizer larger than the embeddings", r"has 30522 tokens for a model with 512 embedding rows: ids 512..30521 would fail"),
    ("random model smaller than its tokenizer", r"has 30522 tokens for a model with 512 embedding rows.*leave config.vocab_size"),
    ("max_length past the positions", r"max_length 512 is more than the 128 positions the model takes"),
    ("max_length without room", r"max_length 2 leaves no caption token: the tokenizer adds 2 special token\(s\)"),
    # a two-tower checkpoint keeps these sizes in text_config: unchecked, a ValueError mid-run ("Sequence length must be
    # less than max_position_embeddings"), or an index out of range
    ("two-tower max_length past the positions", r"max_length 24 is more than the 16 positions the model takes"),
    ("two-tower tokenizer larger than the embeddings", r"has 30522 tokens for a model with 512 embedding rows"),
])
def test_language_settings_that_fail_mid_run_are_refused_at_the_check(tmp_path, case, message):
    """Each of these failed only inside the forward, at the first caption that reached the bad id or
    position (index out of range, a size mismatch), or silently did not truncate."""
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, GPT2Config, GPT2Model

    from tasks.extract.errors import ModelInputError
    from tests.tasks.extract.helpers import MINILM

    if case == "random model smaller than its tokenizer":
        spec = ModelSpec(name="m", loader="random_hf", id="GPT2Config", modality="language", tokenizer=MINILM,
                         config={"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 512})
    else:
        torch.manual_seed(0)
        if case == "tokenizer larger than the embeddings":
            GPT2Model(GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=2, n_positions=128)).save_pretrained(tmp_path)
        elif case.startswith("two-tower"):
            tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
            text = dict(tower, max_position_embeddings=16, vocab_size=512 if "tokenizer" in case else 30522)
            CLIPModel(CLIPConfig(vision_config=dict(tower, image_size=32, patch_size=8), text_config=text)).save_pretrained(tmp_path)
        else:
            BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=128)).save_pretrained(tmp_path)
        _with_minilm_tokenizer(tmp_path)
        spec = ModelSpec(name="m", loader="hf", id=str(tmp_path), modality="language",
                         max_length={"max_length past the positions": 512, "max_length without room": 2,
                                     "two-tower max_length past the positions": 24,
                                     "two-tower tokenizer larger than the embeddings": 16}.get(case, 64))
    with pytest.raises(ModelInputError, match=message):
        load_extractor(spec, device="cpu")


_OFFSET_MODELS = {  # RoBERTa-style positions: ids start after the padding index (MPNet's is fixed at 1)
    "mpnet": ("MPNetConfig", "MPNetModel", {}, 18),
    "data2vec-text": ("Data2VecTextConfig", "Data2VecTextModel", {}, 19),
    "xmod": ("XmodConfig", "XmodModel", {"languages": ["en_XX"], "default_language": "en_XX"}, 19),
    "roberta-prelayernorm": ("RobertaPreLayerNormConfig", "RobertaPreLayerNormModel", {}, 19),
}


@pytest.mark.parametrize("kind", list(_OFFSET_MODELS))
def test_max_length_counts_the_padding_offset_of_every_roberta_style_model(tmp_path, kind):
    """20 position rows; the embeddings' padding_idx (0 here, MPNet's own 1) takes padding_idx + 1 of
    them. max_length past the usable positions passed the pre-check for these model types (only
    RoBERTa, XLM-R, CamemBERT, Longformer were listed) and failed mid-run with 'index out of range'."""
    import transformers

    from tasks.extract.errors import ModelInputError

    config_cls, model_cls, extra, limit = _OFFSET_MODELS[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=20, pad_token_id=0, **extra)
    getattr(transformers, model_cls)(config).save_pretrained(tmp_path)
    _with_minilm_tokenizer(tmp_path)
    spec = ModelSpec(name=kind, loader="hf", id=str(tmp_path), modality="language", max_length=limit + 1)
    with pytest.raises(ModelInputError, match=rf"max_length {limit + 1} is more than the {limit} positions the model "
                                              rf"takes: set max_length: {limit} or less"):
        load_extractor(spec, device="cpu")

    ex = load_extractor(spec.model_copy(update={"max_length": limit}), device="cpu")
    from tasks.extract.hf_models import position_offset

    assert position_offset(ex.model) == 20 - limit and ex._own_positions  # one rule for the check and the extractor
    long = " ".join(["a red apple on a table"] * 8)
    feats = extract_all(ex, [long, "a cat"])
    assert feats.extras["truncated_texts"] == 1 and np.isfinite(feats.layers[-1]).all()
    ids = ex.tokenizer([long], truncation=True, max_length=limit + 1, return_tensors="pt")["input_ids"]
    with pytest.raises((IndexError, RuntimeError)), torch.inference_mode():  # the limit is the real one: one more fails
        ex.model(input_ids=ids)


def test_max_length_falls_back_to_the_model_type_list_when_the_model_cannot_be_probed(monkeypatch):
    from transformers import MPNetConfig, XLMRobertaConfig

    from tasks.extract import hf_models

    assert hf_models.position_limit(MPNetConfig(max_position_embeddings=514)) == 512  # pad_token_id 1
    assert hf_models.position_limit(XLMRobertaConfig(max_position_embeddings=514), offset=2) == 512
    spec = ModelSpec(name="m", loader="random_hf", id="MPNetConfig", modality="language", max_length=64)
    assert hf_models.probe_position_offset(spec, MPNetConfig(), causal=False) == 2
    monkeypatch.setattr("transformers.AutoModel.from_config", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    assert hf_models.probe_position_offset(spec, MPNetConfig(), causal=False) is None


def test_a_vision_language_model_whose_language_model_is_an_encoder_decoder_runs_its_encoder():
    """Florence-2's ``language_model`` is a BART encoder-decoder: a language spec runs its encoder,
    as the encoder-decoder rule does (the whole BartModel returns no ``hidden_states``)."""
    spec = ModelSpec(name="florence2", loader="random_hf", id="Florence2Config", modality="language",
                     config=dict(text_config=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                                  decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                  max_position_embeddings=128, vocab_size=384)))
    ex = load_extractor(spec, device="cpu")
    assert type(ex.model).__name__ == "BartEncoder"
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    enc = ex.tokenizer([CAPTIONS[3]], return_tensors="pt")
    with torch.inference_mode():
        states = ex.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states
    for layer, h in zip(ex.extract_batch([CAPTIONS[3]]), states, strict=True):
        np.testing.assert_allclose(layer[0], h[0].mean(0).numpy(), atol=1e-5)
