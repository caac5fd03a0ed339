"""The report's selection of a run's alignment versions (``tasks.report_source.alignment_selection``)."""

from __future__ import annotations

from tasks.report_source import alignment_selection


def test_a_key_listed_twice_is_selected_once() -> None:
    keys = ["alignment/d/vit__lm/v1", "alignment/d/vit__gpt/v2", "alignment/d/vit__lm/v1"]
    table = alignment_selection({"run_id": "r", "alignment_versions": keys})
    assert table.to_pylist() == [{"alignment_version": "v1", "model_a": "vit", "model_b": "lm"},
                                 {"alignment_version": "v2", "model_a": "vit", "model_b": "gpt"}]
