"""`eptk analyze`, by stage: read.py (runs, statistics, vocabularies), columns.py (what each summary column
is and how it is computed), measure.py (rows, details, PCA panels, task clusters), findings.py (the
findings table), write.py (files and figures, with plots.py and report.py), analyze.py (all of it)."""
from .analyze import AnalysisResult, analyze_runs
from .columns import FRECHET_COLUMNS, SUMMARY_COLUMNS, SUMMARY_COLUMNS_MARKDOWN, TASK_COLUMNS
from .findings import FINDINGS_COLUMNS, findings
from .measure import AnalysisOptions
from .read import TaskActivations, Vocabulary, load_stats

__all__ = ["AnalysisOptions", "AnalysisResult", "FINDINGS_COLUMNS", "FRECHET_COLUMNS", "SUMMARY_COLUMNS",
           "SUMMARY_COLUMNS_MARKDOWN", "TASK_COLUMNS", "TaskActivations", "Vocabulary", "analyze_runs", "findings",
           "load_stats"]
