"""What `soft-dist serve` (and a Serve config for `serve deploy`) can set, checked in one place.

ServeOptions travels to the replicas: plain values only, no model loaded here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from soft_dist.config import ConfigError
from soft_dist.serve.faces import ALIGN_CHOICES, DEFAULT_MAX_PIXELS, NO_FACE_CHOICES
from soft_dist.web.uploads import Limits

BACKENDS = ("torch", "onnxruntime")  # serve.classifier.BACKENDS (kept torch-free here)
AUTO = "auto"


@dataclass(frozen=True)
class ServeOptions:
    """model: a model.pt or run folder (torch), or an export folder / model.onnx (onnxruntime), readable by
    every node that runs a replica (local path on one machine, a shared path or s3:// on a cluster).
    replicas: per deployment (alignment, classification), or "auto" for autoscaling between 1 and
    ``max_replicas``. max_batch_size / batch_wait_ms: the batches each replica forms from waiting requests.
    align / on_no_face / max_pixels: as `soft-dist predict`'s options of the same names.
    replica_cpus: CPUs each alignment or classification replica reserves (and its torch threads); with a
    cuda ``device`` each also reserves half a GPU, so that one alignment and one classification replica share one."""

    model: str
    backend: str = "torch"
    replicas: int | str = 1
    max_replicas: int = max(1, (os.cpu_count() or 2) // 2)
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0
    align: str = "model"
    on_no_face: str = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "cpu"
    replica_cpus: float = 1.0
    max_request_bytes: int = Limits.max_request_bytes
    max_image_pixels: int = Limits.max_image_pixels
    max_batch_photos: int = Limits.max_batch_photos

    def __post_init__(self):
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"--{name.replace('_', '-')}", why)

        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        if self.align not in ALIGN_CHOICES:
            raise bad("align", f"must be one of {ALIGN_CHOICES}, got {self.align!r}")
        if self.on_no_face not in NO_FACE_CHOICES:
            raise bad("on_no_face", f"must be one of {NO_FACE_CHOICES}, got {self.on_no_face!r}")
        if self.replicas != AUTO and (not isinstance(self.replicas, int) or self.replicas < 1):
            raise bad("replicas", f"must be a whole number of at least 1 or {AUTO!r}, got {self.replicas!r}")
        for name in ("max_replicas", "max_batch_size", "max_pixels", "max_request_bytes", "max_image_pixels",
                     "max_batch_photos"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, f"must be a whole number of at least 1, got {getattr(self, name)!r}")
        if self.batch_wait_ms < 0:
            raise bad("batch_wait_ms", f"must be at least 0, got {self.batch_wait_ms}")
        if self.replica_cpus <= 0:
            raise bad("replica_cpus", f"must be more than 0, got {self.replica_cpus}")

    @classmethod
    def from_dict(cls, values: dict) -> "ServeOptions":
        """From a Serve config's ``args`` (YAML): unknown keys are named, "replicas" may be a number or "auto"."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError("args", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "model" not in values:
            raise ConfigError("args.model", "the model to serve is required")
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_request_bytes, self.max_image_pixels, self.max_batch_photos)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.replica_cpus))


def parse_replicas(text: str) -> int | str:
    """--replicas: a whole number or "auto"."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise ConfigError("--replicas", f"must be a whole number or {AUTO!r}, got {text!r}") from None
