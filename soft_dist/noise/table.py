"""Synthetic label noise (paper 4.1) and noise tables.

Exactly round(rate * n_c) samples of every class c are flipped, chosen by numpy's PCG64 generator
(the same stream on every machine and numpy version that has it). Symmetric noise moves a label to
a uniformly chosen OTHER class; asymmetric noise moves it to the class it is most confused with
(``class_map``, e.g. from :func:`class_map_from_confusion`).

A noise table records, per global sample index, the clean and the noisy label; it is saved in the
run directory and is what every rank and every restart uses. Published noise lists (RAF-DB's, the SOFT
authors', lists of image paths) are turned into noise tables, and back, by soft_dist.noise.lists.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOISE_KINDS = ("symmetric", "asymmetric")


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding; "round(rate * n)" is meant in the usual sense.
    return int(np.floor(x + 0.5))


def inject_noise(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    kind: str,
    seed: int,
    class_map: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy labels [N] int64, flipped mask [N] bool) for clean ``labels`` [N]."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a 1-D integer array")
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    if num_classes < 2:
        raise ValueError("noise needs at least 2 classes")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    if kind == "asymmetric":
        if not class_map:
            raise ValueError("asymmetric noise needs class_map (source class -> target class)")
        class_map = {int(k): int(v) for k, v in class_map.items()}
        for src, dst in class_map.items():
            if src == dst or not 0 <= dst < num_classes:
                raise ValueError(f"class_map {src} -> {dst} is not a flip to another valid class")

    rng = np.random.Generator(np.random.PCG64(seed))
    noisy = labels.astype(np.int64).copy()
    flipped = np.zeros(len(labels), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        n_flip = _round_half_up(rate * len(members))
        if n_flip == 0:
            continue
        chosen = members[rng.permutation(len(members))[:n_flip]]
        if kind == "symmetric":
            targets = rng.integers(0, num_classes - 1, size=n_flip)
            targets = targets + (targets >= c)  # skip the true class: uniform over the others
        else:
            if c not in class_map:
                raise ValueError(f"class_map has no target for class {c}, which has samples to flip")
            targets = np.full(n_flip, class_map[c])
        noisy[chosen] = targets
        flipped[chosen] = True
    return noisy, flipped


def class_map_from_confusion(confusion: np.ndarray) -> dict[int, int]:
    """Asymmetric map: each true class (row) -> its most frequent OTHER predicted class (column)."""
    cm = np.asarray(confusion, dtype=np.float64).copy()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    np.fill_diagonal(cm, -np.inf)
    return {i: int(np.argmax(cm[i])) for i in range(cm.shape[0])}


@dataclass
class NoiseTable:
    """Per-sample clean and noisy labels, keyed by global sample index.

    ``info`` holds counts about where the table came from (e.g. how many rows of a published noise list
    named training samples, soft_dist.noise.lists); it is written into the CSV's first line as extra
    ``key=value`` tokens and read back, and does not enter :meth:`digest`."""

    idx: np.ndarray  # [N] int64
    clean: np.ndarray  # [N] int64
    noisy: np.ndarray  # [N] int64
    kind: str = "none"
    rate: float = 0.0
    seed: int = 0
    info: dict = field(default_factory=dict)  # {key: int | str}, values without whitespace

    @property
    def flipped(self) -> np.ndarray:
        return self.clean != self.noisy

    def lookup(self, size: int | None = None) -> np.ndarray:
        """Dense array noisy[idx] of length max(idx) + 1 (or ``size``); -1 where no sample."""
        size = size or (int(self.idx.max()) + 1 if len(self.idx) else 0)
        dense = np.full(size, -1, dtype=np.int64)
        dense[self.idx] = self.noisy
        return dense

    def to_csv(self) -> str:
        """The table as CSV text: a ``# kind=.. rate=.. seed=..`` line (then any ``info`` as more
        ``key=value`` tokens), then ``idx,clean,noisy`` rows."""
        tokens = [f"kind={self.kind}", f"rate={self.rate}", f"seed={self.seed}"]
        for key, value in self.info.items():
            token = f"{key}={value}"
            if any(ch.isspace() for ch in token) or key in ("kind", "rate", "seed"):
                # The header is split on whitespace when read back; such a token would not survive.
                raise ValueError(f"noise table info {key!r}={value!r}: keys and values must be single tokens "
                                 "and not kind/rate/seed")
            tokens.append(token)
        out = io.StringIO(newline="")
        out.write("# " + " ".join(tokens) + "\n")
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["idx", "clean", "noisy"])
        w.writerows(zip(self.idx.tolist(), self.clean.tolist(), self.noisy.tolist()))
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str, source: str = "noise table") -> "NoiseTable":
        lines = text.splitlines()
        first = lines[0] if lines else ""
        meta = dict(kv.split("=", 1) for kv in first.lstrip("# ").split() if "=" in kv) if first.startswith("#") else {}
        rows = list(csv.DictReader(lines[1:] if first.startswith("#") else lines))
        try:
            arr = {k: np.array([int(r[k]) for r in rows], dtype=np.int64) for k in ("idx", "clean", "noisy")}
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{source}: a noise table needs integer columns idx, clean, noisy ({err})") from err
        info = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in meta.items()
                if k not in ("kind", "rate", "seed")}
        return cls(**arr, kind=meta.get("kind", "file"), rate=float(meta.get("rate", 0)),
                   seed=int(meta.get("seed", 0)), info=info)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_csv())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NoiseTable":
        return cls.from_csv(Path(path).read_text(), str(path))

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.idx, self.clean, self.noisy):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()


def build_noise_table(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    kind: str,
    rate: float,
    seed: int,
    class_map: dict | None = None,
) -> NoiseTable:
    """Noise over several splits at once: ``splits`` maps name -> (idx [N], clean labels [N]).

    Each split gets exactly round(rate * n_c) flips per class, from its own seeded stream (seed + its
    position in sorted split order), so adding a split never changes another split's noise. Pass the
    training split and the validation split carved from it; never the test split. ``kind`` 'none'
    (or rate 0) gives a table with no flips."""
    idx_parts, clean_parts, noisy_parts = [], [], []
    for offset, name in enumerate(sorted(splits)):
        idx, clean = (np.asarray(a, dtype=np.int64) for a in splits[name])
        if kind == "none" or rate == 0.0:
            noisy = clean.copy()
        else:
            noisy, _ = inject_noise(clean, num_classes, rate, kind, seed + offset, class_map)
        idx_parts.append(idx)
        clean_parts.append(clean)
        noisy_parts.append(noisy)
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    if (np.diff(idx) == 0).any():  # sorted: a repeat sits next to its twin (one sort, not two)
        raise ValueError("sample indices repeat across splits; a noise table needs unique idx")
    return NoiseTable(
        idx=idx,
        clean=np.concatenate(clean_parts)[order],
        noisy=np.concatenate(noisy_parts)[order],
        kind=kind,
        rate=rate,
        seed=seed,
    )
