"""Publish a study's report into the docs: the markdown and only the figures it shows.

    python scripts/publish_report.py runs/full/report docs/results/full.md

writes ``docs/results/full.md`` (the report's ``report.md`` with its figure links pointing at
``full/``) and copies each figure it links into ``docs/results/full/``; figures the report drew
but does not show stay behind. Re-running replaces both.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

LINK = re.compile(r"\]\(figures/([^)\s]+)\)")


def publish(report_dir: Path, target: Path) -> list[str]:
    """Write ``target`` and its figure folder from ``report_dir``; returns the figures copied."""
    text = (report_dir / "report.md").read_text()
    figures = sorted(set(LINK.findall(text)))
    folder = target.with_suffix("")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in figures:
        shutil.copy2(report_dir / "figures" / name, folder / name)
    target.write_text(LINK.sub(lambda m: f"]({folder.name}/{m.group(1)})", text))
    return figures


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not (Path(argv[0]) / "report.md").is_file() or not argv[1].endswith(".md"):
        print("usage: publish_report.py REPORT_DIR (holding report.md) TARGET.md", file=sys.stderr)
        return 2
    figures = publish(Path(argv[0]), Path(argv[1]))
    print(f"{argv[1]}: {len(figures)} figures in {Path(argv[1]).with_suffix('')}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
