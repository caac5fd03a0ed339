"""The run report: figures and a self-contained HTML page, built from catalog tables.

Pure code: every function takes Arrow tables (or numpy arrays) and returns matplotlib figures,
bytes or HTML text. Nothing here imports Prefect or the store; ``tasks.report_source`` reads the
tables from a store and ``flows.report`` writes the result.

- ``tables``: the rows a report shows (``ReportInput``) and small pivots over them.
- ``figures``: matplotlib figures without pyplot, rendered to PNG/SVG.
- ``heatmaps``: model × model and layer × layer heatmaps.
- ``scaling``: alignment against language-model quality (1 − bits per byte) and parameter count.
- ``neighbours``: nearest-neighbour examples that agree and disagree between two models.
- ``html``: the page; ``build``: everything composed into a ``Report``.
"""

from tasks.report.build import Report, build_report
from tasks.report.tables import ReportInput

__all__ = ["Report", "ReportInput", "build_report"]
