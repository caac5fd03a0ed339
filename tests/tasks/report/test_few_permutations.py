"""A run with fewer than 19 permutations (quick runs use 9; allowed, with one warning in the run's
log) can have no calibrated score above 0 and no p-value below 1/(K+1) > 0.05, whatever the data
(docs/config.md, `permutations`). Its report showed a calibrated heatmap of zeros captioned
"0 = not above the null's 1−α quantile", and p = 0.1 for every pair, without a word that nothing
else was possible: a reader took it for "no pair is above chance"."""

from __future__ import annotations

from tasks.report import ReportInput, build_report
from tests.tasks.report.synthetic import best_rows, model_rows, score_rows, table

RUN = {"run_id": "run-1", "status": "COMPLETED", "started_at": "2026-01-01T00:00:00+00:00", "store": "file:///x",
       "dataset_version": "ds0"}


def _report(permutations: dict[str, int]):
    rows = []
    for r in best_rows():
        k = permutations.get(r["metric"], 19)
        # as the calibration makes them: with K < 19 the threshold is the largest of the K + 1 values
        rows.append({**r, "permutations": k, **({"calibrated_score": 0.0, "p_value": 1 / (k + 1)} if k < 19 else {})})
    return build_report(ReportInput(RUN, table(rows), table(score_rows()), table(model_rows()), None, []),
                        formats=("png",), pairs=[])


def test_a_metric_with_fewer_than_19_permutations_gets_a_note_that_its_calibration_could_not_pass():
    report = _report({"cka": 9})
    [note] = [n for n in report.notes if "permutations" in n and "calibrated" in n]
    assert note.startswith("cka: 9 permutations")
    assert "every calibrated score is 0" in note and "0.1" in note and "19" in note  # 1/(9+1); the fewest that can
    assert not any(n.startswith("mutual_knn: ") and "permutations" in n for n in report.notes)


def test_enough_permutations_get_no_such_note():
    report = _report({})
    assert not any("every calibrated score is 0" in n for n in report.notes)


def test_the_report_fewest_permutations_are_the_pipelines():
    """The report reads the count without importing the engine; the pipeline's warning computes it
    from the calibration's alpha."""
    from tasks.align_task import min_calibrating_permutations
    from tasks.report.build import MIN_CALIBRATING_PERMUTATIONS

    assert MIN_CALIBRATING_PERMUTATIONS == min_calibrating_permutations()
