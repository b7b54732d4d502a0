"""Long work reports its progress in a log as well as at a terminal: one plain line a minute with
the rate and the time left, and a last line when it ends; nothing when switched off."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from locodiff.progress import LineProgress, progress_bar, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_rate_and_time_left():
    log = io.StringIO()
    bar = LineProgress(400, "evaluate", "img", stream=log, every_s=0.0)
    bar.update(100)
    bar.set_postfix(k=3)
    bar.update(100)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3  # one per update here (every_s = 0), one at the end
    assert lines[0].startswith("evaluate: 100/400 img (25%), ") and "img/s" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("evaluate: 200/400 img (50%)") and lines[1].endswith("(k=3)")
    assert "\r" not in log.getvalue()


def test_a_minute_between_lines_and_a_last_line_at_the_end():
    log = io.StringIO()
    with progress_bar(10, "render", "img", stream=log) as bar:  # not a terminal: lines, at most one a minute
        assert isinstance(bar, LineProgress)
        for _ in range(10):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 1  # within a minute: only the last line
    assert "render: 10/10 img (100%)" in log.getvalue() and "done in" in log.getvalue()


def test_a_terminal_gets_a_bar_and_disabled_progress_writes_nothing():
    assert isinstance(progress_bar(5, "x", stream=Terminal()), tqdm)
    quiet = io.StringIO()
    with progress_bar(5, "x", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
    assert list(track(range(3), "steps", enabled=False)) == [0, 1, 2]


def test_rendering_a_data_set_logs_its_progress(tmp_path, capsys):
    from locodiff.scenes.config import DataConfig
    from locodiff.scenes.dataset import build_dataset

    cfg = DataConfig(resolution=16, supersample=1, train_images=10, test_images_per_count=2, test_counts=(0, 1),
                     shard_size=4)
    build_dataset(cfg, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "render: " in err and "(100%)" in err and "\r" not in err
