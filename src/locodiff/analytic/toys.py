"""The CPC <-> LCS equivalence checked numerically, on distributions with an exact score.

The paper's central claim: a conditional distribution is a *conditional projective composition*
(CPC: disjoint pixel regions ``M_j``, one per conditioner, with
``p(x | c_J) = p(x_rest | empty) * prod_j p(x_{M_j} | c_j)``) exactly when its score is a *local
conditional score* (LCS: the score at pixel i depends only on nearby pixels and nearby
conditioners). Trained networks only approximate either side, so this module builds tiny
distributions where both sides can be computed exactly and compared:

- ``RegionMixtureToy`` over small 1-channel images. Conditioner j owns the region ``R_j``: the
  pixels within ``radius_px`` (Chebyshev) of its location. On ``R_j`` the image is an "object", a
  two-component mixture ``+-amp * bump(l_j)`` (a Gaussian profile centred on the location, so the
  density moves smoothly with the location); every other pixel is an independent two-component
  background mixture ``+-background``. With no options this *is* CPC. Two options break it:
  ``global_shift`` (every pixel is shifted by ``global_shift * sum_j (x_j + y_j - 1)``: a
  conditioner with a global effect) and ``shared_sign`` (all objects take the same mixture
  component: the regions are no longer independent).
- Its score is in closed form (the posterior of each mixture is a ``tanh``), checked against
  autograd of the exact log-density in the tests. The noisy marginal of a distribution that
  factorises over disjoint pixel blocks factorises over the same blocks (the noise is independent
  per pixel), so the closed form holds at every sigma.
- ``CountCoupledToy``: Gaussian objects on the same regions whose amplitude shrinks once there
  are more than ``count_limit`` conditioners. CPC (and LCS) for k <= count_limit; beyond, every
  object depends on how many conditioners there are anywhere, which moving one cannot reveal.
  Its denoiser is affine in ``x``, so the extrapolation probe's statistics have closed forms.
- ``measure_locality`` runs the project's Jacobian engine on any denoiser and reports both halves
  of LCS: conditioner Jacobians outside each conditioner's region, and pixel Jacobians across
  independent blocks. ``compose_single_scores`` is the composition ``s_b + sum_j (s_j - s_b)``.

``squares_dataset`` (coloured squares at known locations) is toy *image data* for the LCS machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch, score
from ..errors import ConfigError, InputError
from ..locality.jacobian import conditioner_jacobian, full_pixel_jacobian


@dataclass(frozen=True)
class ToyOptions:
    """The shape of a ``RegionMixtureToy``'s distribution."""

    height: int = 8
    width: int = 8
    radius_px: float = 1.0  # region of a conditioner: pixels within this Chebyshev distance
    amp: float = 0.8  # object amplitude at the location
    bump_px: float = 1.0  # width of the object's Gaussian profile
    object_var: float = 0.05  # per-pixel variance of each object component
    background: float = 0.3  # background pixels are +-background ...
    background_var: float = 0.05  # ... with this variance
    global_shift: float = 0.0  # != 0 breaks CPC: conditioners shift every pixel
    shared_sign: bool = False  # True breaks CPC: all objects share one mixture component

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"image size {self.height}x{self.width}: expected positive sides")
        for name in ("radius_px", "bump_px", "object_var", "background_var"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected > 0")


class RegionMixtureToy(nn.Module):
    """An exact conditional distribution over ``[B, 1, H, W]`` images (see the module doc).

    It is a ``Denoiser`` (``forward`` = the exact posterior mean ``x + sigma^2 * score``), so
    samplers, composition wrappers and the locality probe run on it unchanged.
    """

    def __init__(self, options: ToyOptions = ToyOptions()) -> None:
        super().__init__()
        self.options = options
        for f in fields(options):  # the distribution's numbers, read as the toy's own attributes
            setattr(self, f.name, getattr(options, f.name))

    @property
    def is_cpc(self) -> bool:
        """Whether the distribution is a conditional projective composition."""
        return self.global_shift == 0 and not self.shared_sign

    # ----- geometry ---------------------------------------------------------------------------
    def regions(self, cond: Conditioning) -> Tensor:
        """[B, N, H, W] bool: the pixels each present conditioner owns. Raises if two overlap."""
        d = self._offsets(cond)  # [B, N, H, W, 2]
        inside = (d.abs().amax(-1) <= self.radius_px) & cond.mask[..., None, None]
        if (inside.sum(1) > 1).any():
            raise InputError(
                "conditioner regions overlap; the toy needs locations more than "
                f"2 * radius_px = {2 * self.radius_px} px apart"
            )
        return inside

    def blocks(self, cond: Conditioning) -> Tensor:
        """[B, H, W] long: independent pixel blocks of the CPC toy (region j -> j, background
        pixel p -> N + p), i.e. the sets the score may couple under LCS."""
        reg = self.regions(cond)
        n = reg.shape[1]
        own = (reg.long() * torch.arange(n, device=reg.device)[None, :, None, None]).sum(1)
        pixel = n + torch.arange(self.height * self.width, device=reg.device).reshape(
            self.height, self.width
        )
        return torch.where(reg.any(1), own, pixel[None])

    def _offsets(self, cond: Conditioning) -> Tensor:
        """[B, N, H, W, 2]: pixel centre minus location, in pixels (x, y)."""
        ys = torch.arange(self.height, dtype=cond.locations.dtype, device=cond.device) + 0.5
        xs = torch.arange(self.width, dtype=cond.locations.dtype, device=cond.device) + 0.5
        lx = cond.locations[..., 0, None, None] * self.width
        ly = cond.locations[..., 1, None, None] * self.height
        dx = xs[None, None, None, :] - lx
        dy = ys[None, None, :, None] - ly
        return torch.stack(torch.broadcast_tensors(dx, dy), -1)

    def object_means(self, cond: Conditioning, regions: Tensor) -> Tensor:
        """[B, N, H, W]: each object's profile on its region, 0 elsewhere."""
        d = self._offsets(cond)
        bump = self.amp * torch.exp(-d.square().sum(-1) / (2 * self.bump_px**2))
        return bump * regions

    def _shift(self, cond: Conditioning) -> Tensor:
        """[B, 1, 1, 1]: the global brightness shift (0 for the CPC toy)."""
        centred = (cond.locations.sum(-1) - 1) * cond.mask  # [B, N]
        return (self.global_shift * centred.sum(1)).reshape(-1, 1, 1, 1)

    # ----- exact score, denoiser, density -----------------------------------------------------
    def score(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """``grad_x log p_sigma(x | c)`` in closed form."""
        self._check(x, cond)
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1, 1).square()
        z = x - self._shift(cond)
        t_bg, t_obj = self.background_var + s2, self.object_var + s2
        # background pixel: posterior of the +-background component is sigmoid(2 z b / t)
        s_bg = (self.background * torch.tanh(z * self.background / t_bg) - z) / t_bg
        reg = self.regions(cond)  # [B, N, H, W]
        mu = self.object_means(cond, reg)  # [B, N, H, W]
        agreement = (z[:, 0, None] * mu).flatten(2).sum(-1)  # [B, N] = <z, mu_j>
        if self.shared_sign:
            agreement = agreement.sum(1, keepdim=True).expand_as(agreement)
        sign = torch.tanh(agreement / t_obj.reshape(-1, 1))  # E[component sign | x]
        s_obj = (sign[..., None, None] * mu - z[:, :1] * reg) / t_obj  # [B, N, H, W]
        owned = reg.any(1, keepdim=True)
        return torch.where(owned, s_obj.sum(1, keepdim=True), s_bg)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1, 1).square()
        return x + s2 * self.score(x, sigma, cond)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """``log p_sigma(x | c)`` [B], written independently of ``score`` to cross-check it."""
        self._check(x, cond)
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1, 1).square()
        z = (x - self._shift(cond))[:, 0]  # [B, H, W]
        t_bg, t_obj = (self.background_var + s2)[:, 0], (self.object_var + s2)[:, 0]
        reg = self.regions(cond)
        mu = self.object_means(cond, reg)
        owned = reg.any(1)

        def log_normal(v: Tensor, mean: Tensor, var: Tensor) -> Tensor:
            return -0.5 * ((v - mean).square() / var + torch.log(2 * math.pi * var))

        half = math.log(0.5)
        bg = torch.logaddexp(
            log_normal(z, self.background, t_bg), log_normal(z, -self.background, t_bg)
        ) + half
        total = (bg * ~owned).flatten(1).sum(1)
        # per object: log sum_k 1/2 prod_{p in R_j} N(z_p; k mu_p, t)
        plus = (log_normal(z[:, None], mu, t_obj[:, None]) * reg).flatten(2).sum(-1)  # [B, N]
        minus = (log_normal(z[:, None], -mu, t_obj[:, None]) * reg).flatten(2).sum(-1)
        present = cond.mask.to(z.dtype)
        if self.shared_sign:
            both = torch.logaddexp((plus * present).sum(1), (minus * present).sum(1)) + half
            return total + both
        per_object = (torch.logaddexp(plus, minus) + half) * present
        return total + per_object.sum(1)

    def _check(self, x: Tensor, cond: Conditioning) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.height, self.width):
            raise InputError(
                f"x must have shape [B, 1, {self.height}, {self.width}], got {tuple(x.shape)}"
            )
        if cond.batch_size != x.shape[0]:
            raise InputError(f"conditioning has batch {cond.batch_size} but x has {x.shape[0]}")


class CountCoupledToy(nn.Module):
    """Gaussian objects on ``RegionMixtureToy``'s regions, coupled through their number.

    On conditioner j's region the clean image is ``a(n) * bump(l_j)`` plus Gaussian noise of
    variance ``var``; every other pixel is ``N(0, var)``. ``n`` is the number of conditioners and
    ``a(n) = amp * min(1, count_limit / n)``: up to ``count_limit`` objects this is a conditional
    projective composition; beyond, each object fades with the number of others, however far
    away they are (``count_limit=None``: never). The exact denoiser is the Gaussian posterior
    mean ``(var * x + sigma^2 * mean) / (var + sigma^2)``.
    """

    def __init__(self, height: int = 24, width: int = 24, radius_px: float = 1.0, amp: float = 0.8,
                 bump_px: float = 1.0, var: float = 0.05, count_limit: int | None = 3) -> None:
        super().__init__()
        if not var > 0 or (count_limit is not None and count_limit < 1):
            raise ConfigError(f"var={var} / count_limit={count_limit}: expected var > 0 and a limit >= 1")
        self.geometry = RegionMixtureToy(ToyOptions(height, width, radius_px, amp, bump_px))
        self.var, self.count_limit = var, count_limit

    def amplitude(self, n: Tensor) -> Tensor:
        """``a(n) / amp``: 1 up to ``count_limit`` conditioners, ``count_limit / n`` beyond."""
        if self.count_limit is None:
            return torch.ones_like(n, dtype=torch.float32)
        return (self.count_limit / n.float().clamp_min(1)).clamp(max=1.0)

    def clean_mean(self, cond: Conditioning) -> Tensor:
        """[B, 1, H, W]: the mean of the clean image given ``cond``."""
        objects = self.geometry.object_means(cond, self.geometry.regions(cond)).sum(1, keepdim=True)
        return objects * self.amplitude(cond.counts()).to(objects)[:, None, None, None]

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1, 1).square()
        return (self.var * x + s2 * self.clean_mean(cond).to(x)) / (self.var + s2)


def compose_single_scores(
    denoiser: Denoiser, x: Tensor, sigma: Tensor | float, cond: Conditioning
) -> Tensor:
    """``s_b + sum_j (s_j - s_b)``: the k-conditioner score assembled from single-conditioner
    scores ``s_j`` and the null (empty-set) background ``s_b``; exact for CPC distributions."""
    null = cond.drop(torch.zeros(cond.batch_size, dtype=torch.bool, device=cond.device))
    s_b = score(denoiser, x, sigma, null)
    total = s_b
    for j in range(cond.slots):
        present = cond.mask[:, j].to(x.dtype).reshape(-1, 1, 1, 1)
        total = total + present * (score(denoiser, x, sigma, cond.single(j)) - s_b)
    return total


@dataclass
class LocalityCheck:
    """Both halves of a local conditional score, measured by exact Jacobians of the score."""

    off_region_conditioner: Tensor  # [B, N] max |d s_i / d l_j| over pixels i outside R_j
    in_region_conditioner: Tensor  # [B, N] the same inside R_j (shows the probe sees something)
    cross_block_pixel: Tensor  # [B] max |d s_i / d x_k| over pixels i, k in different blocks
    within_block_pixel: Tensor  # [B] the same for i, k in one block (including i = k)


def measure_locality(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    regions: Tensor,
    blocks: Tensor,
) -> LocalityCheck:
    """Conditional and pixel locality of ``denoiser``'s score at ``x``.

    ``regions`` [B, N, H, W] bool: where each conditioner may act; ``blocks`` [B, H, W] long:
    pixels with different labels must not influence each other's score. Uses the locality
    engine (forward-mode conditioner Jacobian, full pixel Jacobian), so any denoiser works,
    provided it is differentiable with ``torch.func``. Channels are summed in absolute value.
    """
    b, _, h, w = x.shape
    if tuple(regions.shape) != (b, cond.slots, h, w) or tuple(blocks.shape) != (b, h, w):
        raise InputError(
            f"regions must be [{b}, {cond.slots}, {h}, {w}] and blocks [{b}, {h}, {w}], got "
            f"{tuple(regions.shape)} and {tuple(blocks.shape)}"
        )
    cj = conditioner_jacobian(denoiser, x, sigma, cond, target="score")  # [B, N, 2, C, H, W]
    cj = cj.abs().sum((2, 3))  # [B, N, H, W]
    present = cond.mask
    off = torch.where(regions, 0.0, cj).flatten(2).amax(-1) * present
    inside = torch.where(regions, cj, 0.0).flatten(2).amax(-1) * present
    pj = full_pixel_jacobian(denoiser, x, sigma, cond, target="score")  # [B,Co,H,W,Ci,H,W]
    pj = pj.abs().sum((1, 4)).reshape(b, h * w, h * w)
    labels = blocks.reshape(b, h * w)
    same = labels[:, :, None] == labels[:, None, :]
    return LocalityCheck(
        off_region_conditioner=off,
        in_region_conditioner=inside,
        cross_block_pixel=torch.where(same, 0.0, pj).flatten(1).amax(-1),
        within_block_pixel=torch.where(same, pj, 0.0).flatten(1).amax(-1),
    )


# ----- toy image data -------------------------------------------------------------------------

SQUARE_COLOURS = torch.tensor(
    [[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0],
     [-1.0, 1.0, 1.0], [1.0, -1.0, 1.0]]
)  # saturated red, green, blue, yellow, cyan, magenta in [-1, 1]


def squares_dataset(
    n: int,
    size: int = 8,
    counts: tuple[int, ...] = (1, 2),
    side: int = 2,
    background: float = -0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Conditioning]:
    """``n`` images [n, 3, size, size] of ``side``-px coloured squares on a grey background, with
    their centres as conditioners; the object count of each image is drawn from ``counts``.

    Squares sit on the pixel grid and never touch (a 1 px gap), so the conditioners are exact
    and a patch shows each object whole or cut by the window only. Cheap to make in any number,
    which is what tests and benchmarks of the LCS machine need.
    """
    if n < 1 or side < 1 or size < side or not counts or min(counts) < 0:
        raise ConfigError(
            f"squares_dataset(n={n}, size={size}, side={side}, counts={counts}): expected n >= 1, "
            "1 <= side <= size and non-negative counts"
        )
    k_max = max(max(counts), 1)
    images = torch.full((n, 3, size, size), float(background))
    locations = torch.zeros(n, k_max, 2)
    mask = torch.zeros(n, k_max, dtype=torch.bool)
    table = torch.tensor(counts)
    spots = size - side + 1  # possible top-left corners per axis
    for i in range(n):
        k = int(table[torch.randint(len(table), (1,), generator=generator)])
        taken = torch.zeros(size, size, dtype=torch.bool)
        placed = 0
        for _ in range(100 * max(k, 1)):
            if placed == k:
                break
            r, c = torch.randint(spots, (2,), generator=generator).tolist()
            lo_r, lo_c = max(r - 1, 0), max(c - 1, 0)
            if taken[lo_r : r + side + 1, lo_c : c + side + 1].any():
                continue
            taken[r : r + side, c : c + side] = True
            colour = SQUARE_COLOURS[torch.randint(len(SQUARE_COLOURS), (1,), generator=generator)]
            images[i, :, r : r + side, c : c + side] = colour.reshape(3, 1, 1)
            locations[i, placed] = torch.tensor([(c + side / 2) / size, (r + side / 2) / size])
            mask[i, placed] = True
            placed += 1
        if placed < k:
            raise ConfigError(f"could not place {k} squares of side {side} in a {size}px image")
    return images, Conditioning(locations, mask)
