"""The cost prediction: its scheduling arithmetic, and a fresh study predicts work in every
predicted stage (a finished one predicts none: tests/test_study.py)."""

from locodiff.jobs import longest_first_makespan
from locodiff.predict import predict
from locodiff.study import STAGES
from locodiff.study_config import load_study_config


def test_longest_first_fills_the_workers():
    assert longest_first_makespan([4, 3, 3, 2], 2) == 6  # 4 + 2 and 3 + 3
    assert longest_first_makespan([5, 1, 1], 2) == 5  # one long job sets the time
    assert longest_first_makespan([2, 2], 1) == 4 and longest_first_makespan([], 2) == 0


def test_a_fresh_study_predicts_its_data_training_and_evaluation(tmp_path):
    p = predict(load_study_config("micro", sets=[f"out_dir={tmp_path}"]))
    assert list(p.notes) == list(STAGES)
    assert all(p.seconds[s] > 0 for s in ("data", "train", "evaluate"))
    assert "locality" not in p.seconds and "not predicted" in p.notes["locality"]
    lines = p.lines({"train": 12.0})
    assert len(lines) == len(STAGES) and "measured     12 s" in lines[1] and "  measured" not in lines[0]
