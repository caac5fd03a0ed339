"""Errors of the extraction package that name the model and what is wrong with it.

`ModelInputError`: a model cannot be used as the spec describes it (unknown id, missing local path,
bad revision, wrong modality, no hidden states, ...); raised before any extraction work.
`NonFiniteFeaturesError`: extracted features hold NaN or Inf; they are never published.
"""

from __future__ import annotations

from typing import Sequence


class ModelInputError(ValueError):
    """A model spec points at something that cannot be extracted; the message says what and why.

    Attributes: ``model`` (the spec's name), ``model_id`` (its id), ``problem`` (the reason).
    """

    def __init__(self, model: str, model_id: str, problem: str) -> None:
        super().__init__(f"model {model!r} (id {model_id!r}): {problem}")
        self.model = model
        self.model_id = model_id
        self.problem = problem


class NonFiniteFeaturesError(ValueError):
    """Features of a model have NaN/Inf values in some rows of a layer.

    Attributes: ``model``, ``layer`` (the first bad layer's name), ``bad_rows`` (rows with any
    non-finite value in that layer), ``total_rows``, ``sample_ids`` (up to 5 of them),
    ``bad_layers`` (name -> bad row count, every bad layer).
    """

    def __init__(self, model: str, layer: str, bad_rows: int, total_rows: int, sample_ids: Sequence[str],
                 bad_layers: dict[str, int]) -> None:
        others = {k: v for k, v in bad_layers.items() if k != layer}
        more = f"; also {len(others)} other layer(s): {_short(others)}" if others else ""
        super().__init__(
            f"model {model!r}: layer {layer!r} has NaN/Inf values in {bad_rows} of {total_rows} rows "
            f"(e.g. sample ids {list(sample_ids)}){more}. The features are not published. "
            "Overflow in float16 is the usual cause: use dtype 'bfloat16' or 'float32'."
        )
        self.model = model
        self.layer = layer
        self.bad_rows = bad_rows
        self.total_rows = total_rows
        self.sample_ids = list(sample_ids)
        self.bad_layers = dict(bad_layers)


def _short(counts: dict[str, int], limit: int = 5) -> str:
    items = [f"{k} ({v} rows)" for k, v in list(counts.items())[:limit]]
    return ", ".join(items) + (", ..." if len(counts) > limit else "")
