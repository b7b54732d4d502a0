"""The cost prediction: its scheduling arithmetic, and a fresh study predicts work in every
predicted stage (a finished one predicts none: tests/test_study.py)."""

from locodiff.stages.jobs import longest_first_makespan
from locodiff.stages.predict import predict
from locodiff.stages.plan import STAGES
from locodiff.stages.config import load_study_config


def test_longest_first_fills_the_workers():
    assert longest_first_makespan([4, 3, 3, 2], 2) == 6  # 4 + 2 and 3 + 3
    assert longest_first_makespan([5, 1, 1], 2) == 5  # one long job sets the time
    assert longest_first_makespan([2, 2], 1) == 4 and longest_first_makespan([], 2) == 0


def test_a_fresh_study_predicts_every_stage_but_the_report(tmp_path):
    p = predict(load_study_config("micro", sets=[f"out_dir={tmp_path}"]))
    assert list(p.notes) == list(STAGES)
    assert all(p.seconds[s] > 0 for s in ("data", "train", "evaluate", "locality"))
    assert p.notes["locality"].startswith("5 subjects to probe")
    assert p.seconds["emergence"] == 0 and "report" not in p.seconds and "not predicted" in p.notes["report"]
    lines = p.lines({"train": 12.0})
    assert len(lines) == len(STAGES) and "measured     12 s" in lines[1] and "  measured" not in lines[0]


def test_emergence_counts_the_checkpoints_a_run_will_keep(tmp_path):
    """A run not trained yet keeps min(keep_checkpoints, total / checkpoint_every) checkpoints."""
    sets = [f"out_dir={tmp_path}", "emergence.models=['exp1']", "models.exp1.train.total_images=96",
            "models.exp1.train.checkpoint_every_images=32"]
    for keep, measured in ((2, 2), (5, 3)):
        p = predict(load_study_config("micro", sets=sets + [f"models.exp1.train.keep_checkpoints={keep}"]))
        assert p.notes["emergence"].startswith(f"{measured} checkpoints to measure") and p.seconds["emergence"] > 0


def test_networks_too_large_to_time_leave_the_probes_unpredicted(tmp_path):
    from locodiff.stages.plan import too_large_to_time

    cfg = load_study_config("micro", sets=[f"out_dir={tmp_path}"])
    assert too_large_to_time(cfg, rate=1e15) is None
    assert too_large_to_time(cfg, rate=1e3).startswith("exp1 (~")  # the first enabled network
