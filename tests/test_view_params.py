"""Augmentation parameters drawn in numpy (soft_dist.data.view_params) and JPEG frame sizes read from
headers (soft_dist.data.jpeg_header): the DALI loader's crop boxes depend on both."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from soft_dist.config import AugmentConfig
from soft_dist.data.jpeg_header import JpegHeaderError, jpeg_size
from soft_dist.data.view_params import (
    ERASE_RATIO, FIELD_DTYPES, draw_view_params, scale_rotate_matrices, used_fields,
)

SIZE = 64


def encode(height: int, width: int, **save) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", **save)
    return buf.getvalue()


# ----------------------------------------------------------------------------- JPEG header


@pytest.mark.parametrize(
    "height, width, save",
    [
        (37, 53, {}),
        (256, 256, {"quality": 95}),
        (300, 17, {"progressive": True}),  # SOF2
        (64, 80, {"exif": b"Exif\x00\x00" + b"\x00" * 300, "icc_profile": b"\x01" * 5000}),  # APP1 + APP2 first
    ],
)
def test_jpeg_size_reads_the_frame_header(height, width, save):
    data = encode(height, width, **save)
    assert jpeg_size(data) == (height, width)
    assert jpeg_size(np.frombuffer(data, dtype=np.uint8)) == (height, width)  # as the SampleTable hands it


def test_jpeg_size_rejects_what_is_not_a_jpeg():
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with pytest.raises(JpegHeaderError, match="SOI"):
        jpeg_size(png.getvalue())
    with pytest.raises(JpegHeaderError, match="frame header"):
        jpeg_size(encode(8, 8)[:20])  # cut before the SOF segment


# ----------------------------------------------------------------------------- view parameters


def draw(a: AugmentConfig, image_hw, seed=0):
    return draw_view_params(np.random.default_rng(seed), np.asarray(image_hw), a, SIZE)


def test_fields_have_the_documented_dtypes_and_shapes():
    p = draw(AugmentConfig(), [[40, 50]] * 7)
    assert set(p) == set(FIELD_DTYPES)
    for name, dtype in FIELD_DTYPES.items():
        assert p[name].dtype == dtype and len(p[name]) == 7, name
    assert p["matrix"].shape == (7, 2, 3) and p["crop_start"].shape == p["erase_shape"].shape == (7, 2)
    # Only what the graph reads is fed.
    assert used_fields(AugmentConfig(rotate_degrees=0, flip=False, erasing_prob=0)) == ("crop_start", "crop_shape")
    assert set(used_fields(AugmentConfig(color_jitter=0.2))) == set(FIELD_DTYPES)


def test_crop_boxes_lie_inside_images_of_any_shape_with_the_drawn_area():
    a = AugmentConfig(scale_min=0.5, scale_max=0.9, ratio_min=0.75, ratio_max=1.33)
    hw = np.array([[120, 80], [80, 120], [33, 33], [2, 5]] * 500)
    p = draw(a, hw)
    start, shape = p["crop_start"], p["crop_shape"]
    assert (start >= 0).all() and (shape >= 1).all() and (start + shape <= hw).all()
    big = hw[:, 0] >= 33
    area = shape[big].prod(1) / hw[big].prod(1)
    assert area.min() > 0.45 and area.max() < 0.95 and abs(area.mean() - 0.7) < 0.03
    # Positions spread over the whole free range (both edges are reached).
    free = hw - shape
    assert (start[free[:, 0] > 0, 0] == 0).any() and (start == free).all(1).any()


def test_matrices_map_the_crop_box_onto_the_view_and_rotate_about_its_centre():
    crop = np.array([[40, 50], [64, 64]])
    m = scale_rotate_matrices(crop, np.array([0.0, 90.0]), SIZE)

    def apply(mat, x, y):
        return mat @ np.array([x, y, 1.0])

    # No rotation: the box corners (x, y) = (0, 0) and (w, h) land on the view's corners.
    np.testing.assert_allclose(apply(m[0], 0, 0), [0, 0], atol=1e-5)
    np.testing.assert_allclose(apply(m[0], 50, 40), [SIZE, SIZE], atol=1e-4)
    # 90 degrees counter-clockwise on screen (y down): the centre stays, the right edge moves to the top.
    c = SIZE / 2
    np.testing.assert_allclose(apply(m[1], c, c), [c, c], atol=1e-4)
    np.testing.assert_allclose(apply(m[1], SIZE, c), [c, 0], atol=1e-4)


def test_random_draws_follow_the_config():
    n = 4000
    a = AugmentConfig(rotate_degrees=15, color_jitter=0.3, erasing_prob=0.25)
    p = draw(a, [[64, 64]] * n)
    theta = np.degrees(np.arctan2(-p["matrix"][:, 1, 0], p["matrix"][:, 0, 0]))  # first column: sx (cos, -sin)
    assert np.abs(theta).max() <= 15 + 1e-3 and np.abs(theta).max() > 14 and abs(theta.mean()) < 0.5
    for name in ("brightness", "contrast", "saturation"):
        assert p[name].min() >= 0.7 and p[name].max() <= 1.3
    assert abs(p["mirror"].mean() - 0.5) < 0.03
    erased = p["erase_shape"].prod(1) > 0
    assert abs(erased.mean() - 0.25) < 0.03
    area = p["erase_shape"][erased].prod(1)
    assert area.max() <= 0.25 + 1e-6 and area.min() >= 0.02 * 0.5  # clipping to the view only shrinks it
    ratio = p["erase_shape"][erased, 0] / p["erase_shape"][erased, 1]
    assert ratio.min() >= ERASE_RATIO[0] - 1e-3
    assert (p["erase_anchor"] + p["erase_shape"] <= 1 + 1e-6).all() and (p["erase_anchor"] >= 0).all()
    # Switched off: no flip, no erasing, factors of 1, no rotation.
    off = draw(AugmentConfig(rotate_degrees=0, flip=False, erasing_prob=0, color_jitter=0), [[64, 64]] * n)
    assert not off["mirror"].any() and not off["erase_shape"].any() and (off["brightness"] == 1).all()
    np.testing.assert_allclose(off["matrix"][:, 0, 1], 0, atol=1e-6)


def test_draws_are_reproducible_and_independent_of_other_switches():
    hw = [[50, 70]] * 16
    a, b = draw(AugmentConfig(), hw, seed=3), draw(AugmentConfig(), hw, seed=3)
    for name in FIELD_DTYPES:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["crop_start"], draw(AugmentConfig(), hw, seed=4)["crop_start"])
    # Turning colour jitter on changes the colour factors only: the boxes and flips stay.
    jitter = draw(AugmentConfig(color_jitter=0.4), hw, seed=3)
    for name in ("crop_start", "crop_shape", "matrix", "mirror", "erase_anchor", "erase_shape"):
        np.testing.assert_array_equal(a[name], jitter[name])
