"""The study report: Tables 1-3, Figure 3, the defense and control tables and ``report.md``, read from a sweep's
run folders (nothing here trains or scores a model)."""

from medbackdoor.report.build import build_report

__all__ = ["build_report"]
