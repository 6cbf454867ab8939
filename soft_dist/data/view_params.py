"""The random parameters of one augmented training view, drawn in numpy for a batch of rows.

The DALI loader draws every parameter here (crop box, rotation, colour factors, flip, erasing box) and
feeds the arrays to its pipeline next to the JPEG bytes; the DALI operators only carry them out
(soft_dist.data.dali_augment). Two reasons:

* Determinism: the parameters are a pure function of the generator, which the loader seeds from
  (seed, epoch, rank, batch), so one pipeline serves every epoch and a restarted job reproduces them.
* Speed: computing the crop box inside the pipeline took some 40 arithmetic operators per view, each a
  pass of DALI's executor over the batch; the same graph ran at 496 images/s that way and at 757 images/s
  with the parameters fed from numpy (224 px, two views, 2 CPU threads; docs/pipelines.md).

Conventions: image sizes are (height, width) in pixels; boxes are integer pixel boxes inside the image;
the affine matrix works in (x, y) pixel coordinates whose pixel centres sit at +0.5 (DALI's convention:
a square image rotated by 90 degrees about (S/2, S/2) maps exactly onto its pixel grid).
"""

from __future__ import annotations

import math

import numpy as np

from soft_dist.config import AugmentConfig

# Random erasing draws the aspect ratio (height / width) of its box log-uniformly in this range,
# torchvision's default; both loaders use it.
ERASE_RATIO = (0.3, 3.3)

# Every field of a view's parameters: dtype and shape per row (B rows).
FIELD_DTYPES = {
    "crop_start": np.int32,  # [B, 2] (y, x): top-left corner of the crop box in the decoded image
    "crop_shape": np.int32,  # [B, 2] (h, w): size of the crop box, >= 1 and inside the image
    "matrix": np.float32,  # [B, 2, 3] forward affine map, crop box pixels -> output pixels (see below)
    "brightness": np.float32,  # [B] colour factors, 1 = unchanged
    "contrast": np.float32,  # [B]
    "saturation": np.float32,  # [B]
    "mirror": np.int32,  # [B] 1 = flip horizontally
    "erase_anchor": np.float32,  # [B, 2] (y, x) top-left corner of the erased box, fraction of the view
    "erase_shape": np.float32,  # [B, 2] (h, w) fraction of the view; (0, 0) = nothing erased
}


def used_fields(a: AugmentConfig) -> tuple[str, ...]:
    """The fields the DALI graph reads for this augmentation config (an augmentation that is switched off
    needs none)."""
    fields = ["crop_start", "crop_shape"]
    if a.rotate_degrees > 0:
        fields.append("matrix")
    if a.color_jitter > 0:
        fields += ["brightness", "contrast", "saturation"]
    if a.flip:
        fields.append("mirror")
    if a.erasing_prob > 0:
        fields += ["erase_anchor", "erase_shape"]
    return tuple(fields)


def _crop_boxes(rng: np.random.Generator, image_hw: np.ndarray, a: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Random resized crop boxes: area fraction U(scale_min, scale_max), aspect ratio (w / h) log-uniform in
    (ratio_min, ratio_max), clipped to the image, at a uniform integer position.

    torchvision redraws a box that does not fit (up to ten times); clipping differs from that only for
    boxes near the image size with ratios far from 1, which the face settings do not use."""
    n = len(image_hw)
    height, width = image_hw[:, 0].astype(np.float64), image_hw[:, 1].astype(np.float64)
    area = height * width * rng.uniform(a.scale_min, a.scale_max, n)
    ratio = np.exp(rng.uniform(math.log(a.ratio_min), math.log(a.ratio_max), n))
    w = np.clip(np.rint(np.sqrt(area * ratio)), 1, width)
    h = np.clip(np.rint(np.sqrt(area / ratio)), 1, height)
    # Uniform over the h_free + 1 possible integer positions, as torch.randint(0, h_free + 1) would be.
    y = np.minimum(np.floor(rng.random(n) * (height - h + 1)), height - h)
    x = np.minimum(np.floor(rng.random(n) * (width - w + 1)), width - w)
    return np.stack([y, x], 1).astype(np.int32), np.stack([h, w], 1).astype(np.int32)


def scale_rotate_matrices(crop_shape: np.ndarray, degrees: np.ndarray, size: int) -> np.ndarray:
    """Forward affine maps [B, 2, 3] that scale each crop box (h, w) to size x size and then rotate it by
    ``degrees`` counter-clockwise (as seen on screen, as torchvision's rotate) about the view's centre.

    In (x, y) pixel coordinates: out = R (D p - c) + c, D = diag(size / w, size / h), c = (size/2, size/2),
    R = [[cos, sin], [-sin, cos]] (y points down)."""
    theta = np.deg2rad(degrees.astype(np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    sx = size / crop_shape[:, 1].astype(np.float64)
    sy = size / crop_shape[:, 0].astype(np.float64)
    c = size / 2.0
    matrices = np.empty((len(theta), 2, 3), dtype=np.float64)
    matrices[:, 0, 0], matrices[:, 0, 1] = cos * sx, sin * sy
    matrices[:, 1, 0], matrices[:, 1, 1] = -sin * sx, cos * sy
    matrices[:, 0, 2] = c - (cos + sin) * c
    matrices[:, 1, 2] = c - (cos - sin) * c
    return matrices.astype(np.float32)


def _erase_boxes(rng: np.random.Generator, n: int, a: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """With probability erasing_prob a box of area fraction U(erasing_scale_min, erasing_scale_max) and
    aspect ratio (h / w) log-uniform in ERASE_RATIO, clipped to the view; otherwise a box of size 0."""
    apply = rng.random(n) < a.erasing_prob
    area = rng.uniform(a.erasing_scale_min, a.erasing_scale_max, n)
    ratio = np.exp(rng.uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), n))
    h = np.minimum(np.sqrt(area * ratio), 1.0) * apply
    w = np.minimum(np.sqrt(area / ratio), 1.0) * apply
    y = rng.random(n) * (1.0 - h)
    x = rng.random(n) * (1.0 - w)
    return np.stack([y, x], 1).astype(np.float32), np.stack([h, w], 1).astype(np.float32)


def draw_view_params(
    rng: np.random.Generator, image_hw: np.ndarray, a: AugmentConfig, size: int
) -> dict[str, np.ndarray]:
    """Every field of FIELD_DTYPES for B rows whose images have sizes ``image_hw`` (int [B, 2], (h, w)),
    for views of ``size`` x ``size`` pixels.

    All fields are drawn whatever the config (a switched-off augmentation gets no rotation, factors of 1,
    no flip and empty boxes), always in the same order, so turning one augmentation on or off does not
    change the others' draws."""
    n = len(image_hw)
    crop_start, crop_shape = _crop_boxes(rng, image_hw, a)
    degrees = rng.uniform(-1.0, 1.0, n) * a.rotate_degrees
    j = a.color_jitter
    factors = rng.uniform(1.0 - j, 1.0 + j, (3, n)).astype(np.float32)
    mirror = (rng.random(n) < 0.5) & a.flip
    erase_anchor, erase_shape = _erase_boxes(rng, n, a)
    return {
        "crop_start": crop_start,
        "crop_shape": crop_shape,
        "matrix": scale_rotate_matrices(crop_shape, degrees, size),
        "brightness": factors[0],
        "contrast": factors[1],
        "saturation": factors[2],
        "mirror": mirror.astype(np.int32),
        "erase_anchor": erase_anchor,
        "erase_shape": erase_shape,
    }
