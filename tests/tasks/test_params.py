"""Pipeline configs: every malformed YAML and out-of-range parameter gets an error naming the
file, the field path and its line; valid configs (the demo included) load."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from flows.cli import DEMO_CONFIG
from tasks import metrics
from tasks.metrics import METRICS
from tasks.params import AlignmentParams, ConfigError, PipelineConfig, load_config

VIT = "{name: vit, loader: random_hf, id: ViTConfig, modality: vision}"
BERT = "{name: bert, loader: random_hf, id: BertConfig, modality: language}"
MODELS = f"models:\n  - {VIT}\n  - {BERT}\n"  # lines 1-3


def write(tmp_path: Path, text: str | bytes, name: str = "zoo.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def alignment(body: str) -> str:
    return MODELS + "alignment:\n" + "".join(f"  {line}\n" for line in body.splitlines())  # alignment on line 4


# (config text, the message after "config <file>: ", as a regex)
CASES = {
    # YAML itself
    "syntax error": ("models: [\n  - {name: a\n", r"not valid YAML: line 2, column 3: expected the node content, but found '-'"),
    "tab indentation": ("models:\n\t- a\n", r"not valid YAML: line 2, column 1: found character '\\t' that cannot start any token"),
    "duplicate key": (MODELS + "models: []\n", r"not valid YAML: line 4, column 1: found duplicate key 'models' \(first given on line 1\)"),
    "duplicate key in a flow mapping": ("models: [{name: a, name: b}]\n", r"line 1, column 20: found duplicate key 'name'"),
    "python tag": ("models: !!python/object/apply:os.system ['true']\n", r"not valid YAML: line 1, column 9: could not determine a constructor"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcd", "bcde"))
        + MODELS,
        r"more than 100,000 YAML nodes once aliases are expanded",
    ),
    "not UTF-8": (b"models: [\xff]\n", r"not UTF-8 text \(byte 9, line 1: invalid start byte\)"),
    # a NUL or other control character: YAML's reader raised a bare yaml.reader.ReaderError ("position 174")
    "NUL character": (MODELS + "\x00\n", r"^not valid YAML: line 4, column 1: character U\+0000 is not allowed in YAML"),
    "escape character": ("models:\n  - {name: \x1b[31mvit}\n", r"^not valid YAML: line 2, column 12: character U\+001B is not allowed"),
    # "\ud83d" (half an emoji) passed validation and --check, then failed the run: UnicodeEncodeError
    # hashing the model's fingerprint, the tokenizer's TextEncodeInput error in the check
    "lone surrogate in a prompt": (f"models:\n  - {VIT}\n  - {BERT[:-1]}, prompt: \"a photo of {{text}} \\ud83d\"}}\n",
                                   r"^models\[1\] \(model 'bert'\)\.prompt \(line 3\): text with a lone UTF-16 surrogate U\+D83D at character 19 "
                                   r"\(an escaped emoji"),
    "lone surrogates in two places": (MODELS + 'dataset: {name: "\\ud83d\\ude00"}\nalignment: {"\\udc00": 1}\n',
                                      r"^2 problems:\n  - dataset\.name \(line 4\): text with a lone UTF-16 surrogate U\+D83D at "
                                      r"character 1 .*\n  - alignment\.\\udc00 \(line 5\): text with a lone UTF-16 surrogate U\+DC00"),
    "empty file": ("", r"is empty; expected a mapping with keys dataset, models, alignment"),
    "list at the top": ("- a\n- b\n", r"is a list at the top level; expected a mapping"),
    # structure
    "models missing": ("dataset: {kind: openmoji}\n", r"^models \(line 1\): required, but missing$"),
    "models empty": ("models: []\n", r"^models \(line 1\): List should have at least 1 item"),
    "models as a mapping": (f"models:\n  vit: {VIT}\n", r"^models \(line 2\): expected a list \(got a mapping\)$"),
    "model as a list": ("models:\n  - [vit, ViTConfig]\n", r"^models\[0\] \(line 2\): expected a mapping \(got a list\)$"),
    "duplicate model names": (f"models:\n  - {VIT}\n  - {BERT}\n  - {VIT}\n",
                              r"^models \(line 2\): model names must be unique; repeated: 'vit' at models\[0, 2\]$"),
    "model names differing only in case": (f"models:\n  - {VIT}\n  - {BERT}\n  - {VIT.replace('name: vit', 'name: ViT')}\n",
                                           r"^models \(line 2\): model names must differ in more than case .*'vit' \(models\[0\]\) and "
                                           r"'ViT' \(models\[2\]\)$"),
    "pair folder name too long": (f"models:\n  - {VIT.replace('name: vit', 'name: ' + 'v' * 70)}\n  - {BERT.replace('name: bert', 'name: ' + 'b' * 70)}\n",
                                  r"^models \(line 2\): 1 model pair\(s\) would get an alignment folder name longer than 128 "
                                  r"characters .*\(142\): shorten the names"),
    "bad model field": (f"models:\n  - {VIT}\n  - {{name: bert, loader: random_hf, id: BertConfig, modality: language, pooling: cls}}\n",
                        r"^models\[1\] \(model 'bert'\)\.pooling \(line 3\): 'cls' is not valid for a language model"),
    "'__' in a model name": (f"models:\n  - {VIT}\n  - {{name: bert__base, loader: random_hf, id: BertConfig, modality: language}}\n",
                             r"^models\[1\] \(model 'bert__base'\)\.name \(line 3\): model name 'bert__base' contains '__', which "
                             r"separates the two model names of a pair's alignment folder"),
    "model name ending in '_'": (f"models:\n  - {{name: vit_, loader: random_hf, id: ViTConfig, modality: vision}}\n  - {BERT}\n",
                                 r"^models\[0\] \(model 'vit_'\)\.name \(line 2\): model name 'vit_' ends with '_'"),
    "misspelt model key": ("models:\n  - name: vit\n    loader: random_hf\n    id: ViTConfig\n    modality: vision\n    poolng: avg\n",
                           r"^models\[0\] \(model 'vit'\)\.poolng \(line 6\): unknown key \(did you mean 'pooling'\?\); valid keys here: name, loader"),
    "unknown top-level key": (MODELS + "modles: 1\n", r"^modles \(line 4\): unknown key \(did you mean 'models'\?\); valid keys here: dataset, models, alignment$"),
    "dataset as a list": (MODELS + "dataset: [openmoji]\n", r"^dataset \(line 4\): expected a mapping \(got a list\)$"),
    "alignment as a list": (MODELS + "alignment: [cka]\n", r"^alignment \(line 4\): expected a mapping \(got a list\)$"),
    "alignment left empty": (MODELS + "alignment:\n", r"^alignment \(line 4\): expected a mapping \(got null\)$"),
    "path dataset without a path": (MODELS + "dataset: {kind: path}\n", r"^dataset\.path: dataset\.kind 'path' needs dataset\.path"),
    "hub dataset without a path": (MODELS + "dataset: {kind: huggingface, revision: wit_1024}\n",
                                   r"^dataset\.path: dataset\.kind 'huggingface' needs dataset\.path \(a hub dataset id or a dataset folder\)"),
    "hub option on a table": (MODELS + "dataset: {kind: path, path: x.csv, revision: main}\n",
                              r"^dataset\.revision \(line 4\): dataset\.revision applies to kind 'huggingface' only \(kind is 'path'\)"),
    "split of the demo": (MODELS + "dataset: {split: test}\n",
                          r"^dataset\.split \(line 4\): dataset\.split applies to kind 'huggingface' and 'path' \(kind is 'openmoji'\)"),
    "unknown dataset kind": (MODELS + "dataset: {kind: imagenet}\n", r"^dataset\.kind \(line 4\): Input should be 'openmoji', 'path' or 'huggingface' \(got 'imagenet'\)$"),
    # alignment parameters
    "unknown alignment key": (alignment("topkk: 3"), r"^alignment\.topkk \(line 5\): unknown key \(did you mean 'topk'\?\); valid keys here: metrics, topk,"),
    "alpha is not a parameter": (alignment("alpha: 1.5"), r"^alignment\.alpha \(line 5\): unknown key; valid keys here: "),
    "topk as text": (alignment("topk: ten"), r"^alignment\.topk \(line 5\): Input should be a valid integer \(got 'ten'\)$"),
    "topk true": (alignment("topk: true"), r"^alignment\.topk \(line 5\): Input should be a valid integer \(got true\)$"),
    "topk fractional": (alignment("topk: 2.5"), r"^alignment\.topk \(line 5\): Input should be a valid integer \(got 2\.5\)$"),
    "topk 0": (alignment("topk: 0"), r"^alignment\.topk \(line 5\): Input should be greater than or equal to 1 \(got 0\)$"),
    "topk 1 with cknna": (alignment("metrics: [mutual_knn, cknna]\ntopk: 1"), r"^alignment\.topk \(line 6\): cknna needs topk >= 2, got 1$"),
    "negative permutations": (alignment("permutations: -1"), r"^alignment\.permutations \(line 5\): Input should be greater than or equal to 0 \(got -1\)$"),
    "too many permutations": (alignment("permutations: 1000000"), r"^alignment\.permutations \(line 5\): Input should be less than or equal to 100000"),
    "negative bootstrap": (alignment("bootstrap: -5"), r"^alignment\.bootstrap \(line 5\): Input should be greater than or equal to 0 \(got -5\)$"),
    "quantile 0": (alignment("outlier_quantile: 0"), r"^alignment\.outlier_quantile \(line 5\): Input should be greater than 0 \(got 0\)$"),
    "quantile above 1": (alignment("outlier_quantile: 1.01"), r"^alignment\.outlier_quantile \(line 5\): Input should be less than or equal to 1 \(got 1\.01\)$"),
    "quantile true (read as 1: no clamp)": (alignment("outlier_quantile: yes"),
                                            r"^alignment\.outlier_quantile \(line 5\): Input should be a valid number \(got true\)$"),
    "quantile as text": (alignment("outlier_quantile: 0.9x"), r"^alignment\.outlier_quantile \(line 5\): Input should be a valid number \(got '0\.9x'\)$"),
    "rbf_sigma true": (alignment("kernel_metric: rbf\nrbf_sigma: on"), r"^alignment\.rbf_sigma \(line 6\): Input should be a valid number \(got true\)$"),
    "outlier_exact 0": (alignment("outlier_exact: 0"), r"^alignment\.outlier_exact \(line 5\): Input should be a valid boolean \(got 0\)$"),
    "quantile NaN": (alignment("outlier_quantile: .nan"), r"^alignment\.outlier_quantile \(line 5\): Input should be a finite number \(got nan\)$"),
    "infinite rbf_sigma": (alignment("kernel_metric: rbf\nrbf_sigma: .inf"), r"^alignment\.rbf_sigma \(line 6\): Input should be a finite number \(got inf\)$"),
    "rbf_sigma 0": (alignment("rbf_sigma: 0"), r"^alignment\.rbf_sigma \(line 5\): Input should be greater than 0 \(got 0\)$"),
    "cca_dim 0": (alignment("cca_dim: 0"), r"^alignment\.cca_dim \(line 5\): Input should be greater than or equal to 1"),
    "unknown kernel": (alignment("kernel_metric: cosine"), r"^alignment\.kernel_metric \(line 5\): Input should be 'ip' or 'rbf' \(got 'cosine'\)$"),
    "unknown pairs": (alignment("pairs: some"), r"^alignment\.pairs \(line 5\): Input should be 'cross_modal' or 'all'"),
    "unknown device": (alignment("device: gpu"), r"^alignment\.device \(line 5\): must be 'cpu', 'cuda', 'cuda:N' \(a GPU's index\) "
                       r"or 'auto' \(a GPU where the aligning process sees one, else the CPU\); got 'gpu'$"),
    "device index as a number": (alignment("device: 0"), r"^alignment\.device \(line 5\): Input should be a valid string \(got 0\)$"),
    "unknown metric": (alignment("metrics: [mutual_kn]"), r"^alignment\.metrics \(line 5\): unknown metric 'mutual_kn' \(did you mean 'mutual_knn'\?\); registered: cka, "),
    "metrics as text": (alignment("metrics: cka"), r"^alignment\.metrics \(line 5\): expected a list \(got 'cka'\)$"),
    "metrics empty": (alignment("metrics: []"), r"^alignment\.metrics \(line 5\): List should have at least 1 item"),
    "metric listed twice": (alignment("metrics: [cka, cka]"), r"^alignment\.metrics \(line 5\): metrics listed more than once: \['cka'\]$"),
    # dataset parameters
    "n 1": (MODELS + "dataset: {n: 1}\n", r"^dataset\.n \(line 4\): Input should be greater than or equal to 2 \(got 1\)$"),
    "topk >= n": (MODELS + "dataset: {n: 10}\nalignment: {topk: 10}\n",
                  r"^dataset\.n \(line 4\): the OpenMoji sample \(dataset\.n\) has 10 sample\(s\), too few: alignment\.topk=10 \(mutual_knn, cknna\) needs topk \+ 2 = 12$"),
    "n below topk + 2": (MODELS + "dataset: {n: 10}\nalignment: {topk: 9, metrics: [cycle_knn]}\n",
                         r"too few: alignment\.topk=9 \(cycle_knn\) needs topk \+ 2 = 11"),
    "huge topk with the default n": (alignment("topk: 1000000000000"), r"^dataset\.n: the OpenMoji sample \(dataset\.n\) has 1024 sample\(s\), too few: alignment\.topk=1000000000000"),
    "huge topk with a bootstrap": (alignment("topk: 1000000000000\nbootstrap: 200"),
                                   r"^dataset\.n: the OpenMoji sample \(dataset\.n\) has 1024 sample\(s\), too few: alignment\.bootstrap=200 .* 2000000000002$"),
    # a table's or hub dataset's row limit: n rows give at most n samples (one caption per row) and at
    # most n images, so a limit below what the metrics need fails the run, which found out only in its dataset task
    "table n below topk + 2": (MODELS + "dataset: {kind: path, path: pairs.csv, n: 5}\nalignment: {topk: 10, metrics: [mutual_knn]}\n",
                               r"^dataset\.n \(line 4\): dataset\.n=5 reads at most 5 row\(s\) of the dataset, so at most 5 "
                               r"sample\(s\), too few: alignment\.topk=10 \(mutual_knn\) needs topk \+ 2 = 12 \(raise dataset\.n, "
                               r"or set it to null to read every row\)$"),
    "hub n below cca_dim": (MODELS + "dataset: {kind: huggingface, path: org/pairs, n: 8}\nalignment: {metrics: [svcca], cca_dim: 9}\n",
                            r"^dataset\.n \(line 4\): dataset\.n=8 reads at most 8 row\(s\).* svcca with alignment\.cca_dim=9 needs "
                            r"cca_dim \+ 1 = 10 \(raise"),
    "all captions of n rows, aligned per image": (
        MODELS + "dataset: {kind: path, path: pairs.csv, n: 5, captions: all}\nalignment: {topk: 4, unit: image}\n",
        r"^dataset\.n \(line 4\): dataset\.n=5 reads at most 5 row\(s\) of the dataset, so at most 5 image\(s\) "
        r"\(alignment\.unit 'image'\), too few: alignment\.topk=4 \(mutual_knn, cknna\) needs topk \+ 2 = 6"),
    "n below cca_dim": (MODELS + "dataset: {n: 8}\nalignment: {metrics: [svcca], cca_dim: 9}\n", r"svcca with alignment\.cca_dim=9 needs cca_dim \+ 1 = 10$"),
    "dataset path a URL": (MODELS + "dataset: {kind: path, path: 's3://bucket/pairs.parquet'}\n",
                           r"^dataset\.path \(line 4\): dataset\.path 's3://bucket/pairs\.parquet' is a URL: kind 'path' reads a table or "
                           r"folder on this machine"),
    "a number as a key": (MODELS + "dataset:\n  1: 5\n", r"^dataset \(line 5\): key 1 is not a string \(YAML reads an unquoted number, "
                          r"date, true/false or null as one: quote it\)$"),
    "null as a key": (alignment("~: 3"), r"^alignment \(line 5\): key ~ is not a string"),
    "a date as a key": (MODELS + "dataset:\n  2020-01-01: 5\n", r"^dataset \(line 5\): key 2020-01-01 is not a string"),
    "true as a model's key": ("models:\n  - {name: vit, loader: random_hf, id: ViTConfig, modality: vision, yes: 2}\n",
                              r"^models\[0\] \(line 2\): key yes is not a string"),
    # a key of a mapping field (a model's config) read as a number or boolean: shown as "config[5].[key]:
    # Input should be a valid string" (true as "config[1]"), a path that reads as a list index, with no line
    "a number as a key of a model's config": ("models:\n  - {name: vit, loader: random_hf, id: ViTConfig, modality: vision, "
                                              "config: {5: 2}}\n",
                                              r"^models\[0\] \(model 'vit'\)\.config \(line 2\): key 5 is not a string \(YAML reads"),
    "true as a key of a model's config": ("models:\n  - name: vit\n    loader: random_hf\n    id: ViTConfig\n    modality: vision\n"
                                          "    config:\n      yes: 2\n",
                                          r"^models\[0\] \(model 'vit'\)\.config \(line 7\): key yes is not a string \(YAML reads"),
    # a value its explicit tag cannot read: PyYAML's bare ValueError / KeyError / AttributeError, which
    # `prh run` printed as "invalid literal for int() with base 10: 'ten'" (no file, field or line)
    "!!int tag on text": (alignment("topk: !!int ten"), r"^not valid YAML: line 5, column 9: 'ten' cannot be read as !!int, the type its tag names"),
    "!!float tag on text": (alignment("rbf_sigma: !!float wide"), r"^not valid YAML: line 5, column 14: 'wide' cannot be read as !!float"),
    "!!bool tag on text": (alignment("outlier_exact: !!bool maybe"), r"^not valid YAML: line 5, column 18: 'maybe' cannot be read as !!bool"),
    "!!timestamp tag on text": (MODELS + "dataset: {name: !!timestamp soon}\n", r"^not valid YAML: line 4, column 17: 'soon' cannot be read as !!timestamp"),
    # an integer past the 4,300 digits Python converts: PyYAML's bare ValueError ("Exceeds the limit")
    "an integer of 5,000 digits": (alignment("topk: " + "9" * 5000), r"^not valid YAML: line 5, column 9: '9+\.\.\. cannot be read as "
                                   r"!!int: .*4300 digits"),
    "!!int tag on a key": (MODELS + "dataset: {!!int x: 1}\n", r"^not valid YAML: line 4, column 11: 'x' cannot be read as !!int"),
    "image_size too small": (MODELS + "dataset: {image_size: 8}\n", r"^dataset\.image_size \(line 4\): Input should be greater than or equal to 16 \(got 8\)$"),
}


@pytest.mark.parametrize(("text", "message"), list(CASES.values()), ids=list(CASES))
def test_bad_config_names_file_field_and_line(tmp_path: Path, text: str | bytes, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    prefix = f"config {path}: "
    assert str(caught.value).startswith(prefix), str(caught.value)
    assert re.search(message, str(caught.value)[len(prefix):]), str(caught.value)
    assert isinstance(caught.value, ValueError)  # the CLI reports ValueErrors as usage errors


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = "models:\n  - {name: vit, loader: random_hf, id: ViTConfig, modality: vision, batch_size: 0}\nalignment:\n  topk: 0\n  metrics: [cka, nope]\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    lines = str(caught.value).splitlines()
    assert lines[0].endswith(": 3 problems:")
    assert sorted(lines[1:]) == sorted([
        "  - models[0] (model 'vit').batch_size (line 2): Input should be greater than 0 (got 0)",
        "  - alignment.topk (line 4): Input should be greater than or equal to 1 (got 0)",
        "  - alignment.metrics (line 5): unknown metric 'nope'; registered: " + ", ".join(sorted(METRICS))
        + " (your own metrics: register them in a module named in $PRH_METRIC_MODULES)",
    ])


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"folder\.yaml: cannot be read"):
        load_config(tmp_path / "folder.yaml")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(write(tmp_path, "models: " + "[" * 3000 + "]" * 3000 + "\n"))
    # the hunt for untrusted input: --config /dev/zero was read until memory ran out, a 400 MB file
    # of comments parsed for minutes; a file is now read up to the limit and refused past it (not
    # tried on /dev/zero here: without the limit that test would eat the machine's memory)
    big = tmp_path / "big.yaml"
    with open(big, "w") as handle:
        handle.write("# a comment\n" * (1 << 21))  # 24 MB
    with pytest.raises(ConfigError, match=r"big\.yaml: more than 16,777,216 bytes, more than a config can need"):
        load_config(big)


def test_valid_configs_load(tmp_path: Path) -> None:
    demo = load_config(DEMO_CONFIG)
    assert len(demo.models) == 6 and demo.alignment.topk == 10

    anchors = (
        "models:\n  - &vit {name: vit-a, loader: random_hf, id: ViTConfig, modality: vision}\n"
        "  - {<<: *vit, name: vit-b, seed: 1}\nalignment: {pairs: all}\n"
    )
    config = load_config(write(tmp_path, anchors, "anchors.yaml"))  # merge keys are not duplicates
    assert [(m.name, m.seed) for m in config.models] == [("vit-a", 0), ("vit-b", 1)]
    assert len(config.model_pairs()) == 1

    edge = MODELS + "dataset: {n: 12}\nalignment: {topk: 10, metrics: [mutual_knn, cknna, svcca], cca_dim: 11, rbf_sigma: 2}\n"
    config = load_config(write(tmp_path, edge, "edge.yaml"))  # n == topk + 2 == cca_dim + 1: exactly enough
    assert config.alignment.min_samples() == 12 and config.alignment.rbf_sigma == 2.0
    # PyYAML (YAML 1.1) reads 1e-3 (no dot) as a string: still the number once numbers became strict
    sci = load_config(write(tmp_path, MODELS + "alignment: {kernel_metric: rbf, rbf_sigma: 1e-3, outlier_quantile: 9e-1}\n", "sci.yaml"))
    assert (sci.alignment.rbf_sigma, sci.alignment.outlier_quantile) == (0.001, 0.9)
    unset = load_config(write(tmp_path, MODELS + "dataset: {n: null}\nalignment: {topk: 100}\n", "unset.yaml")).dataset
    assert unset.n is None and unset.sample_n() == 1024  # null stays null; the demo draws its default sample
    with pytest.raises(ConfigError, match=r"dataset.n \(line 4\): the OpenMoji sample \(dataset\.n\) has 1024 sample\(s\), too few"):
        load_config(write(tmp_path, MODELS + "dataset: {n: null}\nalignment: {topk: 5000}\n", "all.yaml"))
    path = load_config(write(tmp_path, MODELS + "dataset: {kind: path, path: pairs.csv}\n", "path.yaml"))
    assert path.dataset.path == "pairs.csv"  # only the loader knows the size: checked at publish time
    # n rows with every caption of each give an unknown number of samples (several per row): not refused
    every = load_config(write(tmp_path, MODELS + "dataset: {kind: path, path: pairs.csv, n: 5, captions: all}\n", "every.yaml"))
    assert every.dataset.n == 5 and every.alignment.min_samples() == 12
    exact = load_config(write(tmp_path, MODELS + "dataset: {kind: path, path: pairs.csv, n: 12}\n", "exact.yaml"))
    assert exact.dataset.n == exact.alignment.min_samples() == 12  # exactly enough rows, if all are valid


@pytest.mark.parametrize("name, params", [
    ("mutual_knn", {"topk": 5}), ("cknna", {"topk": 4}), ("cycle_knn", {"topk": 6}), ("edit_distance_knn", {"topk": 3}),
    ("unbiased_cka", {}), ("svcca", {"cca_dim": 4}), ("svcca", {"cca_dim": 7}), ("cka", {}), ("rsa_spearman", {}),
])
def test_the_sample_requirements_are_the_engines_own(name, params) -> None:
    """``min_samples`` is exact, with and without a bootstrap: the engine scores that many random
    samples (each half-size resample too), and refuses one fewer (a bootstrap at topk 30 with
    48 samples passed the check, then every resample was refused and the run had no interval)."""
    rng = np.random.default_rng(0)
    for bootstrap in (0, 20):
        config = AlignmentParams(metrics=[name], bootstrap=bootstrap, **params)
        n = config.min_samples()
        xs, ys = [rng.normal(size=(n, 16)).astype(np.float32)], [rng.normal(size=(n, 12)).astype(np.float32)]
        kwargs = config.metric_params(name)

        def run(rows: int) -> None:
            if bootstrap:
                metrics.bootstrap_ci(name, [x[:rows] for x in xs], [y[:rows] for y in ys], n_boot=bootstrap, seed=0, **kwargs)
            else:
                metrics.score(name, xs[0][:rows], ys[0][:rows], **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a degenerate interval of tiny resamples
            run(n)
            # one fewer: the engine refuses (the alignment stage keeps one sample in reserve for
            # the k-NN metrics, and refuses 2 samples, which lie on one line, for every metric:
            # there the check asks one more than a score alone needs)
            if not (bootstrap == 0 and ("topk" in params or n == 3)):
                with pytest.raises(ValueError):
                    run(n - 1)


def test_sample_requirements() -> None:
    assert AlignmentParams().min_samples() == 12  # mutual_knn, cka, cknna with topk 10
    assert AlignmentParams(metrics=["cka"]).min_samples() == 3  # 2 samples lie on one line: every layer excluded
    assert AlignmentParams(metrics=["rsa_spearman"], bootstrap=50).min_samples() == 6  # 3 rows in each resample
    huge = AlignmentParams(topk=10**12, bootstrap=200)  # one zero too many: refused at once (the count used to step up to 2e12)
    assert huge.min_samples() == 2 * 10**12 + 2
    assert AlignmentParams(metrics=["unbiased_cka"]).min_samples() == 4
    assert AlignmentParams(metrics=["cknna"], topk=2).min_samples() == 4
    assert AlignmentParams(metrics=["svcca", "cka"], cca_dim=30).min_samples() == 31  # centred: rank <= N - 1
    # bootstrap resamples hold half the rows: topk=30 needs 31 in each, so 62 samples
    knn = AlignmentParams(metrics=["mutual_knn", "cknna"], topk=30, bootstrap=40)
    assert knn.min_samples() == 62 and AlignmentParams(metrics=["mutual_knn", "cknna"], topk=30).min_samples() == 32
    with pytest.raises(ValueError, match=r"^the dataset has 48 sample\(s\), too few: alignment\.bootstrap=40 scores half the rows "
                                         r"per resample, where alignment\.topk=30 \(mutual_knn, cknna\) needs topk \+ 1 = 31, "
                                         r"so it needs at least 62$"):
        knn.check_sample_count(48)
    AlignmentParams(topk=3).check_sample_count(5)
    with pytest.raises(ValueError, match=r"^pair x has 4 sample\(s\), too few: alignment\.topk=3 \(mutual_knn, cknna\) needs topk \+ 2 = 5$"):
        AlignmentParams(topk=3).check_sample_count(4, "pair x")
    with pytest.raises(ValueError, match=r"has 1 sample\(s\), too few: alignment needs at least 3"):
        AlignmentParams(metrics=["cka"]).check_sample_count(1)


def test_constructed_configs_are_checked_too() -> None:
    """The Prefect UI's form and Python callers build configs without YAML: same rules."""
    models = [{"name": "vit", "loader": "random_hf", "id": "ViTConfig", "modality": "vision"}]
    with pytest.raises(ValueError, match="topk"):
        PipelineConfig.model_validate({"models": models, "dataset": {"n": 5}, "alignment": {"topk": 4}})
    with pytest.raises(ValueError, match="valid integer"):
        AlignmentParams(permutations=True)
    with pytest.raises(ValueError, match=r"models\[0\]\.config\.label: text with a lone UTF-16 surrogate U\+D83D"):
        PipelineConfig.model_validate({"models": [{**models[0], "config": {"label": "\ud83d"}}]})
    assert PipelineConfig.model_json_schema()["properties"]["alignment"]  # the UI form still renders


def test_a_path_holding_a_byte_that_is_not_utf8_is_named_as_such() -> None:
    """The environment hunt: `--dataset` of a folder named in Latin-1 (`imgs-\\xe9`), or any
    non-ASCII path under `LC_ALL=C PYTHONUTF8=0`, reaches Python as U+DCE9 (surrogateescape); it
    was refused as "a lone UTF-16 surrogate (an escaped emoji ... is two halves)", which sent the
    user looking for an emoji. It names the byte and the two ways out."""
    import os

    models = [{"name": "vit", "loader": "random_hf", "id": "ViTConfig", "modality": "vision"}]
    path = os.fsdecode(b"/data/imgs-\xe9")  # what sys.argv or os.listdir gives for that name
    with pytest.raises(ValueError, match=r"dataset\.path: text holding the byte 0xE9 at character 12, which is not UTF-8: "
                                         r"a file or folder named in another encoding .* rename it to UTF-8, or run with "
                                         r"a UTF-8 locale \(LC_ALL=C\.UTF-8 or PYTHONUTF8=1\)"):
        PipelineConfig.model_validate({"models": models, "dataset": {"kind": "path", "path": path}})


def test_knn_precision_reaches_the_list_metrics_only():
    from tasks.alignment import MetricRequest, align_layers, prepare_layers
    from tasks.params import AlignmentParams

    default = AlignmentParams(metrics=["mutual_knn", "cknna"])
    assert default.metric_params("mutual_knn") == {"topk": 10}  # unchanged labels and version ids
    refine = AlignmentParams(metrics=["mutual_knn", "cknna"], knn_precision="bf16-refine", topk=5)
    assert refine.metric_params("mutual_knn") == {"topk": 5, "knn_precision": "bf16-refine"}
    assert refine.metric_params("cknna") == {"topk": 5}
    with pytest.raises(ValueError, match="knn_precision"):
        AlignmentParams(knn_precision="fp8")

    rng = np.random.default_rng(0)
    base = rng.standard_normal((200, 8))
    xs = prepare_layers([base @ rng.standard_normal((8, 64)) + 0.1 * rng.standard_normal((200, 64)) for _ in range(2)])
    ys = prepare_layers([base @ rng.standard_normal((8, 32)) for _ in range(2)])
    exact = align_layers(xs, ys, [MetricRequest("mutual_knn", default.metric_params("mutual_knn"))])[0]
    refined = align_layers(xs, ys, [MetricRequest("mutual_knn", {**refine.metric_params("mutual_knn"), "topk": 10})])[0]
    np.testing.assert_array_equal(refined.matrix, exact.matrix)


def test_a_user_metric_gets_the_configured_values_not_its_own_defaults():
    """A user metric whose defaults differ from the pipeline's defaults: the config's value arrives
    even where it equals the pipeline default (a built-in leaves those out of its label)."""
    from tasks.alignment import MetricRequest, align_layers
    from tasks.metrics import register_metric, unregister_metric
    from tasks.params import AlignmentParams

    seen: dict = {}

    def probe(x, y, topk=3, knn_precision="bf16", kernel_metric="rbf", rbf_sigma=2.0):
        seen.update(topk=topk, knn_precision=knn_precision, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma)
        return 0.0

    name = "prh_test_params_probe"
    register_metric(name, probe, defaults={"topk": 3, "knn_precision": "bf16", "kernel_metric": "rbf", "rbf_sigma": 2.0})
    try:
        params = AlignmentParams(metrics=[name], knn_precision="exact", kernel_metric="ip")
        sent = params.metric_params(name)
        assert sent == {"topk": 10, "knn_precision": "exact", "kernel_metric": "ip", "rbf_sigma": 1.0}
        x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
        align_layers([x], [x], [MetricRequest(name, sent)])  # the pipeline's driver
        assert seen == sent
    finally:
        unregister_metric(name)


def test_cross_modal_pairs_need_both_modalities():
    vision = [{"name": n, "loader": "random_hf", "id": "ViTConfig", "modality": "vision"} for n in ("vit-a", "vit-b")]
    with pytest.raises(ValueError, match=r"all 2 models are vision models, so nothing would be compared; set alignment\.pairs: all"):
        PipelineConfig.model_validate({"models": vision})
    both = PipelineConfig.model_validate({"models": vision, "alignment": {"pairs": "all"}})
    assert [(a.name, b.name) for a, b in both.model_pairs()] == [("vit-a", "vit-b")]
    assert PipelineConfig.model_validate({"models": vision[:1]}).model_pairs() == []  # one model: features only


def test_cross_modal_error_names_the_field_in_a_yaml_config(tmp_path):
    config = tmp_path / "zoo.yaml"
    config.write_text("models:\n  - {name: a, loader: random_hf, id: ViTConfig, modality: language}\n"
                      "  - {name: b, loader: random_hf, id: GPT2Config, modality: language}\n")
    with pytest.raises(ConfigError, match=r"alignment\.pairs.*all 2 models are language models"):
        load_config(config)


def _documented_defaults(page: Path, heading: str) -> dict[str, str]:
    """``field -> default cell`` of the table under ``heading`` in ``page`` (backticks removed)."""
    section = page.read_text(encoding="utf-8").split(heading, 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in section.splitlines() if line.startswith("|")]
    header = next(row for row in cells if row[0] == "field")
    column = header.index("default")
    rows = {row[0].strip("`"): row[column].replace("`", "") for row in cells if row[0].startswith("`")}
    assert rows, f"no field table under {heading} in {page.name}"
    return rows


def _as_yaml(field) -> str:
    """A pydantic field's default as the reference writes it: YAML words, ``required`` if none."""
    from pydantic_core import PydanticUndefined

    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "{}" if value == {} else str(value)


@pytest.mark.parametrize("page, heading, model", [
    ("config.md", "## `dataset:`", "DatasetParams"),
    ("config.md", "## `alignment:`", "AlignmentParams"),
    ("extraction.md", "## 2. The zoo: model entries", "ModelSpec"),
])
def test_config_reference_lists_every_field_with_its_default(page, heading, model) -> None:
    """docs/config.md (dataset, alignment) and docs/extraction.md (model entries) name every field
    of the pydantic models with the default the code has, so the reference cannot go stale."""
    import tasks.params as params

    docs = Path(__file__).resolve().parents[2] / "docs"
    documented = _documented_defaults(docs / page, heading)
    fields = getattr(params, model).model_fields
    assert sorted(documented) == sorted(fields)
    assert {name: documented[name] for name in fields} == {name: _as_yaml(f) for name, f in fields.items()}


def test_config_reference_lists_every_prh_run_flag() -> None:
    """Every option of ``prh run`` is in docs/config.md's flag table."""
    root = Path(__file__).resolve().parents[2]
    flags = re.findall(r'run\.add_argument\("(--[\w-]+)"', (root / "flows" / "cli.py").read_text(encoding="utf-8"))
    table = (root / "docs" / "config.md").read_text(encoding="utf-8").split("## `prh run` flags", 1)[1]
    assert len(flags) >= 10 and [f for f in flags if f"`{f}" not in table] == []


def test_the_rbf_width_is_passed_only_with_the_rbf_kernel():
    """``rbf_sigma`` is the RBF kernel's width (with ``kernel_metric: rbf``): cka gets it then, and
    not with the default ``ip`` kernel (labels and version ids stay as they were)."""
    rbf = AlignmentParams(metrics=["cka"], kernel_metric="rbf", rbf_sigma=2.5).metric_params("cka")
    assert rbf["kernel_metric"] == "rbf" and rbf["rbf_sigma"] == 2.5
    ip = AlignmentParams(metrics=["cka"], kernel_metric="ip", rbf_sigma=2.5).metric_params("cka")
    assert ip["kernel_metric"] == "ip" and "rbf_sigma" not in ip


def test_a_pair_folder_of_exactly_128_characters_is_allowed():
    """Each aligned pair's folder name ``<model_a>__<model_b>`` may be at most 128 characters."""
    def config(a_len: int, b_len: int) -> PipelineConfig:
        return PipelineConfig.model_validate({"models": [
            {"name": "v" * a_len, "loader": "random_hf", "id": "ViTConfig", "modality": "vision"},
            {"name": "b" * b_len, "loader": "random_hf", "id": "BertConfig", "modality": "language"}]})

    assert len(config(63, 63).model_pairs()) == 1  # 63 + 2 + 63 = 128
    with pytest.raises(ValueError, match="longer than 128 characters"):
        config(63, 64)
