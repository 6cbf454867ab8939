"""MTCNN alignment on real face photos: the landmarks of the aligned output sit on the template."""

import numpy as np
import pytest
from PIL import Image

from soft_dist.shard.align import FaceDetector, apply_matrix, centre_crop, similarity_matrix, template, warp


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(batch_size=4)


def _photos():
    import matplotlib.cbook
    import skimage.data

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return {"astronaut": Image.fromarray(skimage.data.astronaut()), "grace_hopper": hopper}


def test_similarity_matrix_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_matrix(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    np.testing.assert_allclose(apply_matrix(m, src), dst, atol=1e-9)


def test_template_scales_with_size_and_margin():
    t112, t224 = template(112), template(224)
    np.testing.assert_allclose(t224, 2 * t112)
    wide = template(112, margin=0.5)
    # more margin: the face gets smaller around the same centre
    assert np.ptp(wide[:, 0]) == pytest.approx(np.ptp(t112[:, 0]) / 1.5)
    assert centre_crop(Image.new("RGB", (60, 40)), 16).size == (16, 16)


@pytest.mark.parametrize("size,margin", [(112, 0.2), (160, 0.3)])
def test_real_faces_align_onto_the_template(detector, size, margin):
    photos = _photos()
    found = detector.detect(list(photos.values()))
    target = template(size, margin)
    for (name, photo), det in zip(photos.items(), found):
        assert det is not None and det.score > 0.95, name
        # eyes above nose above mouth: the detector saw an upright face
        assert det.landmarks[0, 1] < det.landmarks[2, 1] < det.landmarks[3, 1], name
        aligned = warp(photo, det.landmarks, size, margin)
        assert aligned.size == (size, size)
        again = detector.detect([aligned])[0]
        assert again is not None, f"{name}: no face in the aligned output"
        # the warp put the face where the fitted transform says (detector noise only) ...
        mapped = apply_matrix(similarity_matrix(det.landmarks, target), det.landmarks)
        drift = np.linalg.norm(again.landmarks - mapped, axis=1)
        assert drift.mean() < 0.025 * size, (name, drift)
        # ... and within a few pixels of the template: a real face is not the template (a smile
        # widens the mouth corners), so a few pixels of residual remain
        error = np.linalg.norm(again.landmarks - target, axis=1)
        assert error.mean() < 0.05 * size and error.max() < 0.08 * size, (name, error)
        # and the eyes are level after alignment
        assert abs(again.landmarks[0, 1] - again.landmarks[1, 1]) < 0.03 * size, name


def test_tiny_lfw_faces_are_found_after_upscaling(detector):
    import skimage.data

    faces = skimage.data.lfw_subset()[:8]  # real 25x25 faces: MTCNN alone would miss them
    images = [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in faces]
    found = detector.detect(images)
    assert sum(d is not None for d in found) >= 6
    for d in found:
        if d is not None:  # coordinates come back in the 25x25 input's pixels
            assert (d.landmarks >= -5).all() and (d.landmarks <= 30).all()


def test_no_face_gives_none(detector):
    flat = Image.new("RGB", (120, 100), (128, 128, 128))
    assert detector.detect([flat]) == [None]


def test_a_photos_face_does_not_depend_on_its_batch_mates(detector):
    """Same-size LFW photos, in one batch and one at a time: the same boxes and landmarks to the 1/100 px
    (with facenet-pytorch's batch-wide suppression, the third photo's box moved by 1.7 px in this batch), and
    photos of different sizes are never padded into one batch (the pyramid follows the padded size)."""
    import tempfile
    from pathlib import Path

    from soft_dist.bench.shard import make_face_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_face_folder(Path(tmp) / "faces", 6, 160)
        faces = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))]
    mixed = [*faces, *_photos().values()]  # two larger photos of other sizes in the same call
    together = FaceDetector(batch_size=8).detect(mixed)
    for photo, det in zip(mixed, together):
        [alone] = detector.detect([photo])
        np.testing.assert_array_equal(det.box, alone.box)
        np.testing.assert_array_equal(det.landmarks, alone.landmarks)
        assert det.score == alone.score
