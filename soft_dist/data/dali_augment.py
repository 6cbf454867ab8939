"""DALI graph pieces: one augmented training view, one deterministic evaluation view.

Random parameters come from a :class:`Draws`: either uniforms fed per sample from Python (the loaders do
this, so every parameter is a pure function of (seed, epoch, rank, batch) and one pipeline serves every
epoch), or DALI's own RNG operators (seeded once per pipeline; used by the reader variant).

Shapes: decoded images are uint8 HWC [h, w, 3] of any size; views are float32 [3, S, S] (layout "CHW") or
[S, S, 3] ("HWC", used on GPU), S = data.image_size, RGB, normalised with data.mean / data.std.
"""

from __future__ import annotations

import math

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from soft_dist.config import AugmentConfig, DataConfig
from soft_dist.data.loader import ERASE_RATIO

# Uniform numbers fed per sample and view; train_view uses at most this many.
DRAWS_PER_VIEW = 16


class Draws:
    """Per-sample random numbers for one view, from ``fed`` (a float32 [DRAWS_PER_VIEW] input holding
    U[0, 1) numbers, consumed column by column) or, when ``fed`` is None, from DALI's RNG operators."""

    def __init__(self, fed=None):
        self.fed = fed
        self.used = 0

    def uniform(self, lo: float, hi: float):
        if self.fed is None:
            return fn.random.uniform(range=[float(lo), float(hi)])
        if self.used >= DRAWS_PER_VIEW:
            raise ValueError(f"train_view needs more than DRAWS_PER_VIEW={DRAWS_PER_VIEW} random numbers")
        u = self.fed[self.used]
        self.used += 1
        return u * float(hi - lo) + float(lo)

    def coin(self, probability: float):
        """0 or 1 (int32), 1 with ``probability``."""
        if self.fed is None:
            return fn.random.coin_flip(probability=probability)
        return fn.cast(self.uniform(0.0, 1.0) < probability, dtype=types.INT32)


def _random_resized_crop(images, shape, a: AugmentConfig, size: int, draws: Draws):
    """A box of area fraction U(scale_min, scale_max) and aspect ratio log-U(ratio_min, ratio_max) at a
    uniform position, resized (antialiased) to size x size. ``shape`` is the image's [h, w, c].

    Where the box would leave the image it is clipped (torchvision retries instead; for the near-square
    faces and ratios near 1 used here the two agree almost always)."""
    h_img = fn.cast(shape[0], dtype=types.FLOAT)
    w_img = fn.cast(shape[1], dtype=types.FLOAT)
    area = h_img * w_img * draws.uniform(a.scale_min, a.scale_max)
    ratio = dmath.exp(draws.uniform(math.log(a.ratio_min), math.log(a.ratio_max)))  # width / height
    w = dmath.min(dmath.sqrt(area * ratio), w_img)
    h = dmath.min(dmath.sqrt(area / ratio), h_img)
    y0 = draws.uniform(0.0, 1.0) * (h_img - h)
    x0 = draws.uniform(0.0, 1.0) * (w_img - w)
    return fn.resize(
        images, size=[size, size], roi_start=fn.stack(y0, x0), roi_end=fn.stack(y0 + h, x0 + w),
        antialias=True,
    )


def _random_erase(images, a: AugmentConfig, draws: Draws):
    """With probability ``a.erasing_prob`` set one random box (area fraction in [erasing_scale_min,
    erasing_scale_max]) of each normalised image to 0, i.e. to the mean colour."""
    apply = draws.coin(a.erasing_prob)
    area = draws.uniform(a.erasing_scale_min, a.erasing_scale_max)
    ratio = dmath.exp(draws.uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
    # A box of zero size leaves the image unchanged: that is how "not this time" is expressed per sample.
    h = dmath.min(dmath.sqrt(area * ratio), 1.0) * apply
    w = dmath.min(dmath.sqrt(area / ratio), 1.0) * apply
    anchor = fn.stack(draws.uniform(0.0, 1.0) * (1.0 - h), draws.uniform(0.0, 1.0) * (1.0 - w))
    return fn.erase(
        images, anchor=anchor, shape=fn.stack(h, w), axis_names="HW",
        normalized_anchor=True, normalized_shape=True, fill_value=0.0,
    )


def _normalize(images, data_cfg: DataConfig, layout: str, mirror=0, crop=None):
    """uint8 HWC -> float32 in ``layout``, (x/255 - mean) / std; optional horizontal flip and centre crop."""
    kwargs = {"crop": crop} if crop else {}
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout=layout, mirror=mirror,
        mean=[255.0 * m for m in data_cfg.mean], std=[255.0 * s for s in data_cfg.std], **kwargs,
    )


def train_view(images, shape, data_cfg: DataConfig, layout: str, draws: Draws):
    """One augmented view of decoded images (``shape``: their [h, w, c], e.g. fn.peek_image_shape).

    Order: random resized crop, rotation, colour jitter (brightness, contrast, saturation), flip +
    normalise, random erasing. Two calls with two Draws give two independent views."""
    a = data_cfg.augment
    out = _random_resized_crop(images, shape, a, data_cfg.image_size, draws)
    if a.rotate_degrees > 0:
        interp = types.INTERP_NN if a.rotate_interpolation == "nearest" else types.INTERP_LINEAR
        out = fn.rotate(
            out, angle=draws.uniform(-a.rotate_degrees, a.rotate_degrees), keep_size=True, fill_value=0,
            interp_type=interp,
        )
    if a.color_jitter > 0:
        j = a.color_jitter
        out = fn.color_twist(
            out, brightness=draws.uniform(1 - j, 1 + j), contrast=draws.uniform(1 - j, 1 + j),
            saturation=draws.uniform(1 - j, 1 + j),
        )
    out = _normalize(out, data_cfg, layout, mirror=draws.coin(0.5) if a.flip else 0)
    if a.erasing_prob > 0:
        out = _random_erase(out, a, draws)
    return out


def eval_view(images, data_cfg: DataConfig, layout: str):
    """Deterministic view: resize the shorter side to image_size / eval_crop_fraction, centre crop."""
    size = data_cfg.image_size
    out = fn.resize(images, resize_shorter=size / data_cfg.eval_crop_fraction, antialias=True)
    return _normalize(out, data_cfg, layout, crop=(size, size))
