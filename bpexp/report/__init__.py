"""Sweep reports: which λ and which stop threshold work, what failed and where, what to run next.

The pipeline runs in one direction: an Optuna study and its MLflow runs become
plain records (:mod:`bpexp.report.records`, :mod:`bpexp.report.load`); the records
become each figure's data (:mod:`bpexp.report.data`); the data is drawn
(:mod:`bpexp.report.figures`) and rendered into one self-contained HTML page and a
Markdown summary (:mod:`bpexp.report.html`); :mod:`bpexp.report.build` writes the
files and logs them on the sweep's parent run.

matplotlib, Jinja2, Optuna and MLflow are imported only inside the functions
that need them.
"""

from bpexp.report.build import ReportFiles, log_report, write_report
from bpexp.report.records import SweepRecord, TrialRecord, record_from_result

__all__ = ["ReportFiles", "SweepRecord", "TrialRecord", "log_report", "record_from_result", "write_report"]
