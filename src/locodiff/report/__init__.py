"""Report stage: one Markdown and one self-contained HTML report of the whole study.

- ``build``: ``write_report(cfg, out_dir)`` gathers what every stage wrote and writes the report;
- ``document``: the small section/table/figure model rendered to both formats;
- ``figures``: figures comparing models (success against k).
"""

from .build import write_report

__all__ = ["write_report"]
