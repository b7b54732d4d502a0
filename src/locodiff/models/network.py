"""What every locodiff network declares: how it becomes a Denoiser and what it reads.

A network is trained, checkpointed and EMA-averaged as itself; the analyses see only its
Denoiser, ``net.as_denoiser()``. Locations networks (UNets, the local network) output the EDM
network term and are wrapped in ``EDMPrecond``; the caption model preconditions inside its
diffusers adapter and is its own Denoiser. What a probe or the report must know about a model
(``conditioned_on``) is declared here, never read off a class or an architecture name.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..denoiser import ConditionedOn, Denoiser
from ..diffusion.precond import EDMPrecond


class Network(nn.Module):
    conditioned_on: ClassVar[ConditionedOn] = "locations"

    def as_denoiser(self, caller: nn.Module | None = None) -> Denoiser:
        """The Denoiser around this network (sharing its parameters), calling it through
        ``caller`` when given: a data-parallel wrapper of it, whose forward syncs gradients."""
        return EDMPrecond(caller if caller is not None else self)
