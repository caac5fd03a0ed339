"""Seeds in a pipeline config (0 to 2**32 - 1, the seeds torch's generator tells apart: refused when the config is
read, not after extraction) and docs/config.md's list of a model entry's fields."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tasks.params import ConfigError, load_config
from tests.tasks.test_params import BERT, alignment, write

SEED_CASES = {
    "negative seed": (alignment("seed: -1"), r"^alignment\.seed \(line 5\): Input should be greater than or equal to 0 \(got -1\)$"),
    "seed of 2**32": (alignment(f"seed: {2**32}"),
                      rf"^alignment\.seed \(line 5\): Input should be less than or equal to {2**32 - 1} \(got {2**32}\)$"),
    "model seed of 2**32": (f"models:\n  - {{name: vit, loader: random_hf, id: ViTConfig, modality: vision, seed: {2**32}}}\n  - {BERT}\n",
                            rf"^models\[0\] \(model 'vit'\)\.seed \(line 2\): Input should be less than or equal to {2**32 - 1} "
                            rf"\(got {2**32}\)$"),
    "negative model seed": (f"models:\n  - {{name: vit, loader: random_hf, id: ViTConfig, modality: vision, seed: -3}}\n  - {BERT}\n",
                            r"^models\[0\] \(model 'vit'\)\.seed \(line 2\): Input should be greater than or equal to 0 \(got -3\)$"),
}


@pytest.mark.parametrize(("text", "message"), list(SEED_CASES.values()), ids=list(SEED_CASES))
def test_seeds_out_of_range_are_refused_when_the_config_is_read(tmp_path: Path, text: str, message: str) -> None:
    """`alignment.seed: -1` and a model `seed: 2**64` were accepted and failed only after
    extraction (the alignment's check_seed) or at it (torch: "Overflow when unpacking long long",
    the seed not named)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    prefix = f"config {path}: "
    assert str(caught.value).startswith(prefix) and re.search(message, str(caught.value)[len(prefix):]), str(caught.value)


def test_the_largest_seed_works_wherever_a_seed_is_used(tmp_path: Path) -> None:
    """The bound is the last seed torch's generator tells apart: it keeps the low 32 bits of a
    seed (2**32 drew seed 0's permutations and weights). 2**32 - 1 seeds torch's global RNG
    and a Generator (random_hf weights, permutations) and numpy (bootstrap, the report's query
    sample), and is its own stream; the API refuses 2**32 with the reason."""
    import torch

    from tasks import metrics
    from tasks.extract.spec import SEED_MAX
    from tasks.metrics.stats import TORCH_SEED_MAX

    config = load_config(write(tmp_path, f"models:\n  - {{name: vit, loader: random_hf, id: ViTConfig, modality: vision, "
                                         f"seed: {SEED_MAX}}}\n  - {BERT}\nalignment: {{seed: {SEED_MAX}}}\n"))
    assert config.alignment.seed == config.models[0].seed == SEED_MAX == TORCH_SEED_MAX == 2**32 - 1
    draw = lambda seed: torch.randperm(20, generator=torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    assert draw(2**32) == draw(0) and draw(2**32 + 5) == draw(5)  # why the bound is 32 bits
    assert draw(SEED_MAX) not in (draw(0), draw(1))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
    calibrated = metrics.calibrate("cka", [x], [y], permutations=3, seed=config.alignment.seed)
    interval = metrics.bootstrap_ci("cka", [x], [y], n_boot=3, seed=config.alignment.seed)
    assert calibrated is not None and interval is not None
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 2\*\*32 - 1, got 4294967296: .* what seed 0 draws"):
        metrics.calibrate("cka", [x], [y], permutations=3, seed=2**32)


def test_config_reference_names_every_model_field() -> None:
    """docs/config.md's `models:` section lists every field of a model entry (it lacked
    crop_pct and resample); their rules are in docs/extraction.md."""
    from tasks.extract.spec import ModelSpec

    page = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    section = page.split("## `models:`", 1)[1].split("\n## ", 1)[0]
    listed = re.search(r"Every field of an entry \(([^)]*)\)", section.replace("\n", " "))
    assert listed is not None
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == sorted(ModelSpec.model_fields)
