"""What a study will cost on this machine, said before it runs and checked after.

``locodiff study`` prints the prediction first and, at the end, the prediction beside the measured
wall time of each stage (``--dry-run`` prints it and stops). The prediction is the study's plan
(``stages.plan``: every job of every stage, whether it is done, and its cost, by the cost model
stated there) summed per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import StudyConfig
from .plan import STAGES, plan_stage


@dataclass
class Prediction:
    seconds: dict[str, float] = field(default_factory=dict)  # predicted wall time per stage
    notes: dict[str, str] = field(default_factory=dict)  # how, or why not predicted

    def lines(self, measured: dict[str, float] | None = None) -> list[str]:
        out = []
        for stage, note in self.notes.items():
            guess = duration(self.seconds[stage]) if stage in self.seconds else "-"
            real = "" if measured is None or stage not in measured else f"  measured {duration(measured[stage]):>8}"
            out.append(f"  {stage:<9} predicted {guess:>8}{real}  ({note})")
        return out


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def predict(cfg: StudyConfig) -> Prediction:
    """The predicted wall time per stage of ``cfg`` on this machine (a few seconds per network)."""
    p = Prediction()
    for stage in STAGES:
        plan = plan_stage(cfg, stage)
        if plan.wall is not None:
            p.seconds[stage] = plan.wall
        p.notes[stage] = plan.note
    return p
