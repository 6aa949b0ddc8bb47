"""Mixing a batch: interpolation mixup, stitch (spatial) mixup and tile mixup.

Every mix is described by a plan: S source orderings of the batch (the batch
itself and its partners), S per-pixel masks that sum to 1 at every pixel, and
S label weights that sum to 1. Then

    x_mixed = sum_s mask_s * x[orders_s],   y_mixed = sum_s weight_s * y[orders_s].

- interpolation (Zhang et al.; Bag of Tricks 5.4): masks lam and 1 - lam everywhere;
- stitch (the follow-up paper, after Liang et al. 2018): the first int(L*lam) rows
  (`stitch_height`, a top/bottom seam) or columns (`stitch_width`, a left/right
  seam) come from the image, the rest from its partner; 0/1 masks, so the result
  is exactly the concatenation. Labels weigh lam and 1 - lam (the papers), or the
  cut's real area fractions with label_weight = "area";
- tile (the follow-up's future work): a 2x2 grid cut at int(H*lh), int(W*lw) with
  lh, lw ~ Beta(alpha, alpha), its four cells from four images, labels weighted
  by cell areas.

Naming: the follow-up paper's code calls the top/bottom split "horizontal"
stitching and Liang et al. (2018) call it "vertical"; we name the axis that is
split (`height` or `width`) to avoid both. Partners are the reversed batch (the
follow-up's and GluonCV's code) or a random permutation (Liang et al.).

Plans are drawn on the host (pure numpy, tested against the formulas); the
arithmetic runs on the device in the hybridized `MixBlock`. `Mixer.mix` does both:
the training step hands it a batch and gets the mixed batch back.
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock


@dataclass
class MixPlan:
    kind: str
    lam: float
    orders: np.ndarray  # (S, N) int: source s's ordering of the batch
    masks: np.ndarray  # (S, H, W) float32, summing to 1 over s at every pixel
    weights: np.ndarray  # (S,) float32, summing to 1

    @property
    def sources(self) -> int:
        return len(self.weights)

    def padded(self, sources: int) -> "MixPlan":
        """The same mix with extra zero-weight sources (a hybridized block has a fixed S)."""
        extra = sources - self.sources
        if extra <= 0:
            return self
        n, (h, w) = self.orders.shape[1], self.masks.shape[1:]
        return MixPlan(self.kind, self.lam,
                       np.concatenate([self.orders, np.tile(np.arange(n), (extra, 1))]),
                       np.concatenate([self.masks, np.zeros((extra, h, w), np.float32)]),
                       np.concatenate([self.weights, np.zeros(extra, np.float32)]))


def partners(n: int, how: str, rng: np.random.Generator, count: int = 1) -> list[np.ndarray]:
    """Orderings of a batch of n to mix with: reversed (and its half-rolls for more) or random."""
    if how == "random":
        return [rng.permutation(n) for _ in range(count)]
    base = np.arange(n)[::-1]
    rolled = np.roll(np.arange(n), n // 2)
    return [base, rolled, rolled[::-1]][:count]


def interpolation_plan(n: int, h: int, w: int, lam: float, partner: np.ndarray) -> MixPlan:
    masks = np.stack([np.full((h, w), lam, np.float32), np.full((h, w), 1 - lam, np.float32)])
    return MixPlan("interpolation", lam, np.stack([np.arange(n), partner]), masks,
                   np.array([lam, 1 - lam], np.float32))


def stitch_plan(n: int, h: int, w: int, lam: float, partner: np.ndarray, axis: str,
                label_weight: str = "lambda") -> MixPlan:
    size = h if axis == "height" else w
    cut = int(size * lam)
    own = np.zeros((h, w), np.float32)
    if axis == "height":
        own[:cut, :] = 1
    elif axis == "width":
        own[:, :cut] = 1
    else:
        raise ValueError(f"stitch axis must be height or width, got {axis!r}")
    wt = lam if label_weight == "lambda" else cut / size
    return MixPlan(f"stitch_{axis}", lam, np.stack([np.arange(n), partner]), np.stack([own, 1 - own]),
                   np.array([wt, 1 - wt], np.float32))


def tile_partners(n: int, how: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Three orderings for a tile's other cells such that each image's three partners
    differ from each other and from the image (for n >= 4), and each ordering is a
    permutation (every image fills each cell exactly once per batch).

    The reversed batch and its half-rolls have this property only when n % 4 == 0
    (for n = 6 image 1 gets partner 4 twice), so other sizes, and random partners, use
    shifts by three distinct non-zero offsets along a cycle of the batch: the identity
    order for `reversed`, a random order for `random`."""
    if how != "random" and n % 4 == 0:
        return partners(n, how, rng, 3)
    if how == "random":
        order = rng.permutation(n)
        offsets = rng.choice(np.arange(1, n), size=3, replace=False) if n >= 4 else np.arange(1, 4) % max(n, 1)
    else:
        order = np.arange(n)
        offsets = np.array([n // 2, n // 4, n // 2 + n // 4]) if n >= 4 else np.arange(1, 4) % max(n, 1)
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)
    return [order[(position + d) % n] for d in offsets]


def tile_plan(n: int, h: int, w: int, lam_h: float, lam_w: float, others: list[np.ndarray]) -> MixPlan:
    ch, cw = int(h * lam_h), int(w * lam_w)
    masks = np.zeros((4, h, w), np.float32)
    masks[0, :ch, :cw] = 1
    masks[1, :ch, cw:] = 1
    masks[2, ch:, :cw] = 1
    masks[3, ch:, cw:] = 1
    fh, fw = ch / h, cw / w
    weights = np.array([fh * fw, fh * (1 - fw), (1 - fh) * fw, (1 - fh) * (1 - fw)], np.float32)
    return MixPlan("tile", lam_h * lam_w, np.stack([np.arange(n)] + list(others)), masks, weights)


def mix_numpy(x: np.ndarray, y: np.ndarray, plan: MixPlan) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation of a plan (NCHW images, (N, K) soft labels)."""
    xm = sum(plan.masks[s][None, None] * x[plan.orders[s]] for s in range(plan.sources))
    ym = sum(plan.weights[s] * y[plan.orders[s]] for s in range(plan.sources))
    return xm.astype(x.dtype), ym.astype(y.dtype)


class Mixer:
    """A recipe's [mixup] section: draws one plan per batch and applies it on the devices."""

    def __init__(self, spec, epochs: int):
        self.spec, self.epochs = spec, epochs
        kinds = spec.choices if spec.kind == "random" else [spec.kind]
        self.sources = 4 if "tile" in kinds else 2
        self.block = None  # the MixBlock, built once: a recipe that never mixes builds none
        if self.enabled:
            self.block = MixBlock(self.sources)
            self.block.hybridize(static_alloc=True, static_shape=True)

    @property
    def enabled(self) -> bool:
        return self.spec.kind != "none"

    def active(self, epoch: int) -> bool:
        """Off for the first `off_first_epochs` and the last `off_last_epochs` epochs."""
        s = self.spec
        return self.enabled and s.off_first_epochs <= epoch < self.epochs - s.off_last_epochs

    def plan(self, n: int, h: int, w: int, epoch: int, rng: np.random.Generator) -> MixPlan | None:
        mix = self.draw(epoch, rng)
        return None if mix is None else self.plan_for(mix, n, h, w, rng)

    def draw(self, epoch: int, rng: np.random.Generator) -> tuple | None:
        """A batch's mix: (kind, lambda, lambda_w), lambda_w for tile only; None: no mixing."""
        if not self.active(epoch):
            return None
        s = self.spec
        kind = s.kind if s.kind != "random" else s.choices[rng.integers(len(s.choices))]
        lam = float(rng.beta(s.alpha, s.alpha))
        if kind == "tile":
            return kind, lam, float(rng.beta(s.alpha, s.alpha))
        if kind in s.min_lambda_kinds and lam < s.min_lambda:
            lam = 1.0  # the follow-up's stitch code: a tiny lambda means "do not mix"
        return kind, lam, None

    def plan_for(self, mix: tuple, n: int, h: int, w: int, rng: np.random.Generator) -> MixPlan:
        """The plan of a drawn mix for a slice of n images (its partners drawn from `rng`)."""
        s = self.spec
        kind, lam, lam_w = mix
        if kind == "tile":
            plan = tile_plan(n, h, w, lam, lam_w, tile_partners(n, s.partner, rng))
        else:
            partner = partners(n, s.partner, rng)[0]
            if kind == "interpolation":
                plan = interpolation_plan(n, h, w, lam, partner)
            else:
                plan = stitch_plan(n, h, w, lam, partner, kind.split("_", 1)[1], s.label_weight)
        return plan.padded(self.sources)

    def mix(self, images: list, targets: list, epoch: int, rng: np.random.Generator) -> tuple[list, list]:
        """Each device's slice of a batch (NCHW images, (N, K) soft targets) mixed within itself
        by one mix drawn from `rng` (one kind and lambda per batch); unchanged in an epoch without
        mixing. Slices of one size share one plan; an uneven split (22, 21, 21 images) has a plan
        per size, the first size's drawn first, so an even split draws exactly one plan."""
        _, _, h, w = images[0].shape
        mix = self.draw(epoch, rng)
        if mix is None:
            return images, targets
        plans = {}
        for x in images:
            if x.shape[0] not in plans:
                plans[x.shape[0]] = self.plan_for(mix, x.shape[0], h, w, rng)
        mixed = []
        for x, y in zip(images, targets):
            plan = plans[x.shape[0]]
            mixed.append(self.block(x, y, mx.nd.array(plan.orders, ctx=x.context),
                                    mx.nd.array(plan.masks, ctx=x.context), mx.nd.array(plan.weights, ctx=x.context)))
        return [m[0] for m in mixed], [m[1] for m in mixed]


class MixBlock(HybridBlock):
    """A plan applied on the device: (x, y, orders, masks, weights) -> (mixed x, mixed y).
    `sources` is fixed because a hybridized graph has a fixed number of splits."""

    def __init__(self, sources: int, **kwargs):
        super().__init__(**kwargs)
        self.sources = sources

    def hybrid_forward(self, F, x, y, orders, masks, weights):
        order = F.split(orders, num_outputs=self.sources, axis=0, squeeze_axis=True)  # (N,) each
        ms = F.split(masks, num_outputs=self.sources, axis=0, squeeze_axis=False)  # (1, H, W) each
        ws = F.split(weights, num_outputs=self.sources, axis=0, squeeze_axis=False)  # (1,) each
        x_out, y_out = None, None
        for s in range(self.sources):
            xi = F.broadcast_mul(F.take(x, order[s]), F.expand_dims(ms[s], axis=0))
            yi = F.broadcast_mul(F.take(y, order[s]), ws[s])
            x_out = xi if x_out is None else x_out + xi
            y_out = yi if y_out is None else y_out + yi
        return x_out, y_out
