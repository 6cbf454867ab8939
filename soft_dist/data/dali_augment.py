"""DALI graph pieces: one augmented training view, one deterministic evaluation view.

The training view only carries out parameters drawn beforehand in numpy (soft_dist.data.view_params) and
fed per row through external_source: no DALI RNG and no arithmetic operators in the graph.

Shapes: decoded images are uint8 HWC [h, w, 3] of any size; views are float32 [3, S, S] (layout "CHW") or
[S, S, 3] ("HWC", used on GPU), S = data.image_size, RGB, normalised with data.mean / data.std.
"""

from __future__ import annotations

from nvidia.dali import fn, types

from soft_dist.config import DataConfig


def _normalize(images, data_cfg: DataConfig, layout: str, mirror=0, crop=None):
    """uint8 HWC -> float32 in ``layout``, (x/255 - mean) / std; optional horizontal flip and centre crop."""
    kwargs = {"crop": crop} if crop else {}
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout=layout, mirror=mirror,
        mean=[255.0 * m for m in data_cfg.mean], std=[255.0 * s for s in data_cfg.std], **kwargs,
    )


def mean_colour_uint8(data_cfg: DataConfig) -> list[float]:
    """data.mean in uint8 units, rounded: the colour that normalises to (almost) 0."""
    return [float(round(255.0 * m)) for m in data_cfg.mean]


def train_view(images, params: dict, data_cfg: DataConfig, layout: str):
    """One augmented view of decoded images; ``params`` maps the names of view_params.used_fields to the
    external_source nodes carrying them.

    Order (as the torch loader): crop box, resized to S x S with rotation, colour factors, random erasing,
    flip + normalise. Differences from the torch loader, chosen for speed on CPU:

    * With rotation, the crop is scaled and rotated by one warp_affine (one resampling, with the
      rotation's interpolation) instead of an antialiased resize followed by a rotation. Without rotation
      it is an antialiased resize, as torchvision's RandomResizedCrop.
    * Erasing fills the uint8 image with the mean colour before normalisation (about 4x less memory to
      write than the float view), so erased pixels are 0 to within uint8 rounding (|x| < 0.01) rather
      than exactly 0; it comes before the flip, which does not change its distribution."""
    a, size = data_cfg.augment, data_cfg.image_size
    out = fn.slice(
        images, start=params["crop_start"], shape=params["crop_shape"], axis_names="HW", out_of_bounds_policy="error"
    )
    if a.rotate_degrees > 0:
        interp = types.INTERP_NN if a.rotate_interpolation == "nearest" else types.INTERP_LINEAR
        out = fn.warp_affine(
            out, matrix=params["matrix"], size=[size, size], inverse_map=False, fill_value=0, interp_type=interp
        )
    else:
        out = fn.resize(out, size=[size, size], antialias=True)
    if a.color_jitter > 0:
        out = fn.color_twist(
            out, brightness=params["brightness"], contrast=params["contrast"], saturation=params["saturation"]
        )
    if a.erasing_prob > 0:
        out = fn.erase(
            out, anchor=params["erase_anchor"], shape=params["erase_shape"], axis_names="HW",
            normalized_anchor=True, normalized_shape=True, fill_value=mean_colour_uint8(data_cfg),
        )
    return _normalize(out, data_cfg, layout, mirror=params["mirror"] if a.flip else 0)


def eval_view(images, data_cfg: DataConfig, layout: str):
    """Deterministic view: resize the shorter side to image_size / eval_crop_fraction, centre crop."""
    size = data_cfg.image_size
    out = fn.resize(images, resize_shorter=size / data_cfg.eval_crop_fraction, antialias=True)
    return _normalize(out, data_cfg, layout, crop=(size, size))
