"""scripts/publish_report.py: the report's markdown, its links rewritten, and only the figures it shows."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish_report.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_publishing_copies_the_shown_figures_and_rewrites_their_links(tmp_path):
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    for name in ("a.png", "b.png", "unshown.png"):
        (report / "figures" / name).write_bytes(name.encode())
    (report / "report.md").write_text("# R\n![A](figures/a.png)\ntext\n![B](figures/b.png) ![A](figures/a.png)\n")
    target = tmp_path / "docs" / "results" / "full.md"
    target.parent.mkdir(parents=True)
    res = run(str(report), str(target))
    assert res.returncode == 0 and "2 figures" in res.stdout
    assert target.read_text() == "# R\n![A](full/a.png)\ntext\n![B](full/b.png) ![A](full/a.png)\n"
    assert sorted(p.name for p in (target.parent / "full").iterdir()) == ["a.png", "b.png"]
    assert (target.parent / "full" / "b.png").read_bytes() == b"b.png"


def test_a_folder_without_a_report_is_one_usage_line(tmp_path):
    res = run(str(tmp_path), str(tmp_path / "x.md"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "usage" in res.stderr
