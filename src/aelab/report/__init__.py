"""The report: one self-contained HTML page for a run or a sweep.

- `page`: `render_report`, `ReportWriter` (the callback that writes it when a run ends), `find_runs`;
- `table`: the summary table (METRICS, rows, best values, cells);
- `headline`: the headline and what went wrong, in words;
- `figures`: the figures, on `matplotlib.figure.Figure`;
- `loss_curves`: the loss table and curves of `aelab loss`;
- `loss_explorer`: the interactive loss explorer in every report and `aelab loss --html`.
"""

from aelab.report.figures import figure_codes
from aelab.report.headline import failures, headline
from aelab.report.page import ReportWriter, find_runs, render_report
from aelab.report.table import METRICS, Row, build_rows, table_cells

__all__ = [
    "METRICS",
    "ReportWriter",
    "Row",
    "build_rows",
    "failures",
    "figure_codes",
    "find_runs",
    "headline",
    "render_report",
    "table_cells",
]
