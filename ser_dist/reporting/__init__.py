"""Reports of training runs and evaluations: report.json, report.xlsx (summary, per_fold, per_class,
confusion, config, skipped), confusion.png and curves.png; the protocol heads every report.

    write_run_report(run_dir)              a finished k-fold run folder -> its report (and the files)
    write_report(out_dir, report, ...)     any report dict (runs, cross-corpus evaluations) -> files
    heatmap_png(path, matrix, title=...)   a source x target matrix (e.g. cross-corpus UAR) as a PNG
"""

from ser_dist.reporting.plots import heatmap_png
from ser_dist.reporting.report import write_report, write_run_report

__all__ = ["heatmap_png", "write_report", "write_run_report"]
