"""HTML reports (per trial and per sweep root) and the console summary table."""

from evaluator.report.summary_table import print_summary_table
from evaluator.report.sweep_index import write_sweep_index
from evaluator.report.trial_page import write_trial_report

__all__ = ["print_summary_table", "write_sweep_index", "write_trial_report"]
