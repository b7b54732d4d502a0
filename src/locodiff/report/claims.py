"""The paper's claims judged on this run, each computed once from the gathered facts.

Every section that states a claim (the summary, the findings, the claim lines) asks this module,
so one report cannot print two numbers for one claim. The criteria are ``cfg.report``
(``report.config.ReportConfig``); the sections only format what is returned here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluate.metrics import rank_correlation
from .config import ReportConfig
from .facts import ModelFacts, learned_conditioner, recall_beyond


def verdict(ok: bool) -> str:
    return "**supported**" if ok else "**not supported**"


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between a locality statistic and the mean recall beyond training, over
    ``models`` (those that learned their conditioner, were probed and were evaluated there)."""

    rho: float
    models: tuple[str, ...]
    statistic: str

    def supported(self, criteria: ReportConfig) -> bool:
        return self.rho > criteria.claim_rho

    def strength(self, criteria: ReportConfig) -> str:
        """How the summary words it: support, none, or weak."""
        if self.supported(criteria):
            return "the more local models generalize further, as the paper argues."
        if self.rho < criteria.weak_rho:
            return "no clear support for the paper's claim on these models."
        return "weak support for the paper's claim."


def judged_models(cfg, facts: list[ModelFacts]) -> list[ModelFacts]:
    """Models whose locality can be set against their generalization: evaluated beyond training,
    probed, and placing a single requested object (a failure means nothing otherwise)."""
    return [f for f in facts if f.evaluation and f.locality_dir and learned_conditioner(f, cfg.evaluate.threshold)
            and recall_beyond(f)[1] is not None]


def locality_correlation(cfg, facts: list[ModelFacts], statistic: str = "locality_index") -> Correlation | None:
    """The rank correlation of ``statistic`` (``locality_index``: moves; ``presence_index``:
    removal) with the mean recall beyond training; None below three models. A model missing the
    statistic is left out, never counted as zero."""
    models = [f for f in judged_models(cfg, facts) if getattr(f, statistic) is not None]
    if len(models) < 3:
        return None
    rho = rank_correlation([getattr(f, statistic) for f in models], [recall_beyond(f)[1] for f in models])
    return Correlation(rho, tuple(f.name for f in models), statistic)
