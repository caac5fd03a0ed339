"""Fixtures for the extraction tests (offline hub; helpers live in helpers.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tasks.extract.helpers import png_bytes  # noqa: E402


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    colors = [(220, 40, 40), (40, 160, 60), (30, 60, 200), (240, 200, 20), (120, 40, 160)]
    return [png_bytes(c, shape=i, size=(96 + 8 * i, 80)) for i, c in enumerate(colors)]
