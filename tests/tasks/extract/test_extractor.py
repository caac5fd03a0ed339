"""`extract_all` queues each batch before it stores the previous one (`Extractor.forward_queued`),
and `to_host_queued` gives back what it was handed."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tasks.extract.base import BatchOutput, Extractor, to_host_queued
from tasks.extract.extractor import extract_all
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS, tiny_language_spec


class _Recording(Extractor):
    """Rows are the items' numbers; every queue and finish is logged."""

    modality = "vision"
    layer_names = ["embeddings", "layer.01"]
    layer_dims = [1, 2]
    param_count = 0
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.spec = ModelSpec(name="recording", loader="random_hf", id="ViTConfig", modality="vision", batch_size=2)
        self.log: list[tuple[str, int]] = []

    def prepare(self, items: Sequence[Any]) -> list[float]:
        return [float(x) for x in items]

    def forward(self, prepared: list[float], with_nll: bool = False) -> BatchOutput:
        raise AssertionError("extract_all queues batches (forward_queued)")

    def forward_queued(self, prepared: list[float], with_nll: bool = False):
        first = int(prepared[0])
        self.log.append(("queued", first))

        def finish() -> BatchOutput:
            self.log.append(("finished", first))
            col = np.asarray(prepared, dtype=np.float32)[:, None]
            return BatchOutput([col, np.hstack([col, -col])])

        return finish


def test_each_batch_is_queued_before_the_previous_one_is_finished_and_rows_land_in_place():
    ex = _Recording()
    seen: list[tuple[int, int]] = []
    feats = extract_all(ex, list(range(5)), progress=lambda done, total: seen.append((done, total)))
    assert ex.log == [("queued", 0), ("queued", 2), ("finished", 0), ("queued", 4), ("finished", 2), ("finished", 4)]
    np.testing.assert_array_equal(feats.layers[0][:, 0], np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(feats.layers[1], np.stack([np.arange(5), -np.arange(5)], axis=1).astype(np.float32))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_to_host_queued_gives_the_tensors_as_numpy():
    tensors = [torch.arange(6, dtype=torch.float32).view(2, 3), torch.tensor([1.5, 2.5], dtype=torch.float64),
               torch.tensor([3, 4]), torch.arange(8, dtype=torch.float32).view(2, 4)[:, 1]]  # a strided view too
    arrays = to_host_queued(tensors)()
    for t, a in zip(tensors, arrays):
        assert isinstance(a, np.ndarray) and a.dtype == t.numpy().dtype and a.flags.c_contiguous
        np.testing.assert_array_equal(a, t.numpy())


def test_language_forward_and_queued_forward_agree_with_bits_per_byte():
    from tasks.extract import load_extractor

    ex = load_extractor(tiny_language_spec("llama"), device="cpu")
    prepared = ex.prepare(CAPTIONS)
    direct = ex.forward(prepared, with_nll=True)
    queued = ex.forward_queued(prepared, with_nll=True)()
    for a, b in zip(direct.layers, queued.layers):
        np.testing.assert_array_equal(a, b)
    assert direct.nll_nats == queued.nll_nats and direct.n_targets == queued.n_targets > 0
    assert queued.row_nll.dtype == np.float64 and queued.row_targets.dtype == np.int64
    assert queued.row_targets.sum() == queued.n_targets
