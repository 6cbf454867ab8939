"""Layout readers: turn a dataset folder into a list of :class:`Record` (one per image) in one canonical
class order, keeping the dataset's own label beside it.

Readers never load pixels from disk (that happens in the workers, soft_dist.shard.encode); they check
that the root looks like the named layout (:class:`LayoutError` otherwise) and collect per-file
problems (missing files, unknown labels, bad rows) into ``Dataset.problems`` instead of raising.
Every reader returns splits named ``train``/``val``/``test``; a missing ``val`` is carved from
``train`` later (:func:`carve_val`), before any noise is injected.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Canonical order for facial-expression datasets; 7-class datasets use the first seven.
FER_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

# RAF-DB list files number classes 1..7 in this order.
RAFDB_LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
# AffectNet's expression column: 0..7 are expressions, 8..10 (None, Uncertain, Non-Face) are not.
AFFECTNET_LABELS = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust",
                    6: "anger", 7: "contempt"}
AFFECTNET_NON_EXPRESSION = {8: "none", 9: "uncertain", 10: "non-face"}
# fer2013new.csv vote columns, in file order after "Usage" and "Image name".
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                 "unknown", "NF")
FERPLUS_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


class LayoutError(ValueError):
    """The root does not look like the named layout; the message says what was expected."""


@dataclass(slots=True)  # no __dict__ per record: ~100 bytes less each, a million records in the driver
class Record:
    """One input image.

    ``source`` names it uniquely inside the dataset (path relative to the root, or a pseudo path such as
    ``fer2013.csv#00042``); ``path`` is the file to read, or None when ``pixels`` (uint8 [H, W] or
    [H, W, 3]) hold the image. ``box`` is a face box (x0, y0, x1, y1) in source pixels when the dataset
    gives one."""

    source: str
    split: str
    label: int
    orig_label: str
    orig_index: int | None = None
    path: str | None = None
    pixels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    classes: tuple[str, ...]
    records: list[Record]
    label_map: dict  # the dataset's own labels -> canonical class name (written to the manifest)
    problems: list[dict] = field(default_factory=list)  # {"source", "reason"} for inputs left out
    default_align: str = "mtcnn"
    notes: dict = field(default_factory=dict)


def _problem(source, reason: str) -> dict:
    return {"source": str(source), "reason": reason}


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise LayoutError(f"{layout} layout: expected {what} at '{path}', which does not exist")
    return path


# --------------------------------------------------------------------------------------------- rafdb


def read_rafdb(root: Path, align: str = "mtcnn", image_dir: str = "auto", **_) -> Dataset:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` ("train_00001.jpg 5" per line) and images in
    ``Image/original/train_00001.jpg`` or ``Image/aligned/train_00001_aligned.jpg``. The split is the name
    prefix (train_/test_). ``image_dir`` auto: original for MTCNN alignment, aligned otherwise."""
    root = Path(root)
    listing = _require(root / "EmoLabel" / "list_patition_label.txt", "the label list EmoLabel/list_patition_label.txt", "rafdb")
    have = {d: (root / "Image" / d).is_dir() for d in ("original", "aligned")}
    if not any(have.values()):
        raise LayoutError(f"rafdb layout: expected images under '{root / 'Image' / 'original'}' or "
                          f"'{root / 'Image' / 'aligned'}'; neither exists")
    if image_dir == "auto":
        prefer = ("original", "aligned") if align == "mtcnn" else ("aligned", "original")
        image_dir = next(d for d in prefer if have[d])
    if not have.get(image_dir):
        raise LayoutError(f"rafdb layout: --image-dir {image_dir}: '{root / 'Image' / image_dir}' does not exist")
    classes = FER_CLASSES[:7]
    records, problems = [], []
    for line_no, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{listing.name}:{line_no}"
        if len(parts) != 2 or not parts[1].isdigit():
            problems.append(_problem(where, f"expected '<name>.jpg <1..7>', got {line!r}"))
            continue
        name, number = parts[0], int(parts[1])
        split = "train" if name.startswith("train_") else "test" if name.startswith("test_") else None
        if split is None:
            problems.append(_problem(where, f"name {name!r} starts with neither train_ nor test_"))
            continue
        if number not in RAFDB_LABELS:
            problems.append(_problem(name, f"unknown label {number} (RAF-DB labels are 1..7)"))
            continue
        file = name if image_dir == "original" else f"{Path(name).stem}_aligned{Path(name).suffix}"
        path = root / "Image" / image_dir / file
        if not path.is_file():
            problems.append(_problem(f"Image/{image_dir}/{file}", "listed but missing"))
            continue
        records.append(Record(source=f"Image/{image_dir}/{file}", split=split, path=str(path),
                              label=classes.index(RAFDB_LABELS[number]), orig_label=RAFDB_LABELS[number],
                              orig_index=number))
    label_map = {str(k): v for k, v in RAFDB_LABELS.items()}
    return Dataset("rafdb", classes, records, label_map, problems,
                   default_align="mtcnn" if image_dir == "original" else "none", notes={"image_dir": image_dir})


# ------------------------------------------------------------------------------------------ affectnet


def _find_first(root: Path, names: list[str]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def read_affectnet(root: Path, affectnet_classes: int = 8, **_) -> Dataset:
    """AffectNet: ``training.csv`` and ``validation.csv`` (in the root or ``Manually_Annotated_file_lists/``)
    with columns subDirectory_filePath, face_x, face_y, face_width, face_height, ..., expression; images
    under ``Manually_Annotated_Images/`` (or ``Manually_Annotated/Manually_Annotated_Images/``, or the root).
    training -> train (val carved from it), validation -> test. Labels 8..10 are dropped (counted);
    with 7 classes, contempt (7) is dropped too."""
    root = Path(root)
    if affectnet_classes not in (7, 8):
        raise ValueError(f"--affectnet-classes must be 7 or 8, got {affectnet_classes}")
    lists = {}
    for split, name in (("train", "training.csv"), ("test", "validation.csv")):
        found = _find_first(root, [name, f"Manually_Annotated_file_lists/{name}"])
        if found is None:
            raise LayoutError(f"affectnet layout: expected '{name}' in '{root}' or "
                              f"'{root / 'Manually_Annotated_file_lists'}'")
        lists[split] = found
    images = _find_first(root, ["Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"]) or root
    classes = FER_CLASSES[:affectnet_classes]
    required = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
    records, problems, dropped = [], [], {}
    for split, listing in lists.items():
        with open(listing, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise LayoutError(f"affectnet layout: '{listing}' lacks columns {missing}; expected {list(required)}")
            for row_no, row in enumerate(reader, 2):
                rel = row["subDirectory_filePath"]
                try:
                    number = int(row["expression"])
                    x, y, w, h = (float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
                except ValueError:
                    problems.append(_problem(f"{listing.name}:{row_no}", "non-numeric expression or face box"))
                    continue
                name = AFFECTNET_LABELS.get(number) or AFFECTNET_NON_EXPRESSION.get(number)
                if name is None:
                    problems.append(_problem(rel, f"unknown expression {number} (AffectNet uses 0..10)"))
                    continue
                if name not in classes:  # 8..10, or contempt in 7-class mode: dropped by design
                    dropped[name] = dropped.get(name, 0) + 1
                    continue
                path = images / rel
                if not path.is_file():
                    problems.append(_problem(rel, "listed but missing"))
                    continue
                box = (x, y, x + w, y + h) if w > 0 and h > 0 else None
                records.append(Record(source=rel, split=split, path=str(path), label=classes.index(name),
                                      orig_label=name, orig_index=number, box=box))
    label_map = {str(k): v for k, v in {**AFFECTNET_LABELS, **AFFECTNET_NON_EXPRESSION}.items()}
    return Dataset("affectnet", classes, records, label_map, problems, notes={"dropped_by_label": dropped})


# -------------------------------------------------------------------------------------------- ferplus


def ferplus_majority(votes: list[float]) -> int | None:
    """FERPlus "majority" rule, as in the authors' code: votes of 1 are treated as outliers and zeroed;
    the top class wins only with MORE than half of the remaining votes. A tie (or any split with no
    strict majority) has no label; so do unknown / not-a-face winners. Returns the index into
    FERPLUS_VOTES[:8] or None."""
    kept = [v if v > 1 else 0.0 for v in votes]
    total = sum(kept)
    if total <= 0:
        return None
    top = int(np.argmax(kept))
    if kept[top] <= 0.5 * total or top >= 8:
        return None
    return top


def read_ferplus(root: Path, **_) -> Dataset:
    """FERPlus: ``fer2013.csv`` (emotion, pixels, Usage; 48x48 grey pixels as text) and ``fer2013new.csv``
    (Usage, Image name, 10 vote columns) with rows in the same order. Training/PublicTest/PrivateTest ->
    train/val/test; the label is :func:`ferplus_majority` of the votes."""
    root = Path(root)
    old = _find_first(root, ["fer2013.csv", "fer2013/fer2013.csv"])
    new = _find_first(root, ["fer2013new.csv"])
    if old is None or new is None:
        raise LayoutError(f"ferplus layout: expected 'fer2013.csv' (pixels) and 'fer2013new.csv' (votes) in '{root}'")
    classes = FER_CLASSES
    records, problems, dropped = [], [], {}
    with open(old, newline="") as f_old, open(new, newline="") as f_new:
        old_rows, new_rows = csv.DictReader(f_old), csv.reader(f_new)
        if not {"pixels", "Usage"} <= set(old_rows.fieldnames or []):
            raise LayoutError(f"ferplus layout: '{old}' must have columns 'pixels' and 'Usage'")
        header = next(new_rows, None)
        if not header or len(header) < 12 or header[0] != "Usage":
            raise LayoutError(f"ferplus layout: '{new}' must start with 'Usage,Image name,' and 10 vote columns")
        for row_no, (o, n) in enumerate(zip(old_rows, new_rows)):
            source = f"{old.name}#{row_no:05d}"
            split = FERPLUS_SPLITS.get(o["Usage"])
            if split is None:
                problems.append(_problem(source, f"unknown Usage {o['Usage']!r}"))
                continue
            try:
                votes = [float(v) for v in n[2:12]]
            except ValueError:
                problems.append(_problem(source, f"non-numeric votes in {new.name} row {row_no + 2}"))
                continue
            top = ferplus_majority(votes)
            if top is None:
                reason = "not-a-face" if int(np.argmax(votes)) == 9 else "no majority / unknown"
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            try:
                pixels = np.array(o["pixels"].split(), dtype=np.uint8)
                pixels = pixels.reshape(48, 48)
            except (ValueError, OverflowError):
                problems.append(_problem(source, "pixels are not 2304 integers 0..255"))
                continue
            records.append(Record(source=source, split=split, pixels=pixels, label=top,
                                  orig_label=FERPLUS_VOTES[top], orig_index=top,
                                  extra={"votes": dict(zip(FERPLUS_VOTES, votes)), "image_name": n[1]}))
    label_map = {str(i): v for i, v in enumerate(FERPLUS_VOTES[:8])}
    return Dataset("ferplus", classes, records, label_map, problems, default_align="none",
                   notes={"dropped_by_label": dropped, "tie_rule": "votes of 1 zeroed; strict majority (> half) "
                          "of the remaining votes required; ties and unknown/not-a-face winners dropped"})


# ---------------------------------------------------------------------------------- imagefolder / csv


def _class_order(found: set[str], classes: list[str] | None) -> tuple[str, ...]:
    if classes:
        return tuple(classes)
    if found and all(c.lstrip("-").isdigit() for c in found):
        return tuple(sorted(found, key=int))  # "10" after "9"
    return tuple(sorted(found))


def read_imagefolder(root: Path, classes: list[str] | None = None, **_) -> Dataset:
    """``ROOT/<split>/<class>/<image>`` with splits among train, val, test. Classes in sorted order
    (numerically when all are integers) unless ``classes`` gives the order; other class folders are
    counted as unknown labels."""
    root = Path(root)
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in split_dirs:
        raise LayoutError(f"imagefolder layout: expected '{root}/train/<class>/<image>' (and optionally "
                          f"val/, test/); found {sorted(p.name for p in root.iterdir()) if root.is_dir() else 'no folder'}")
    found = {d.name for s in split_dirs for d in (root / s).iterdir() if d.is_dir()}
    order = _class_order(found, classes)
    records, problems = [], []
    for split in split_dirs:
        for class_dir in sorted(d for d in (root / split).iterdir() if d.is_dir()):
            files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            name = class_dir.name  # one string shared by the class's records (Path.name makes a new one per call)
            label = order.index(name) if name in order else None
            for path in files:
                rel = path.relative_to(root).as_posix()
                if label is None:
                    problems.append(_problem(rel, f"unknown label {name!r} (classes: {list(order)})"))
                    continue
                records.append(Record(source=rel, split=split, path=str(path), label=label, orig_label=name))
    return Dataset("imagefolder", order, records, {c: c for c in order}, problems)


def read_csv_layout(root: Path, csv_file: str | None = None, classes: list[str] | None = None,
                    path_column: str = "path", label_column: str = "label", split_column: str = "split",
                    **_) -> Dataset:
    """A CSV with ``path`` and ``label`` columns and an optional ``split`` column (train/val/test; rows
    without one are train). Paths are relative to the root. Default file: ``ROOT/labels.csv``."""
    root = Path(root)
    listing = Path(csv_file) if csv_file else root / "labels.csv"
    if not listing.is_absolute() and not listing.exists():
        listing = root / listing
    _require(listing, "a CSV file (--csv, default ROOT/labels.csv)", "csv")
    with open(listing, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if path_column not in header or label_column not in header:
            raise LayoutError(f"csv layout: '{listing}' must have columns '{path_column}' and '{label_column}' "
                              f"(header is {header})")
        rows = list(enumerate(reader, 2))
    found = {r[label_column].strip() for _, r in rows if r[label_column] and r[label_column].strip()}
    order = _class_order(found, classes)
    records, problems = [], []
    for row_no, row in rows:
        rel = (row[path_column] or "").strip()
        label = (row[label_column] or "").strip()
        split = (row.get(split_column) or "train").strip() if split_column in header else "train"
        where = rel or f"{listing.name}:{row_no}"
        if split not in SPLITS:
            problems.append(_problem(where, f"unknown split {split!r} (use train, val or test)"))
            continue
        if label not in order:
            problems.append(_problem(where, f"unknown label {label!r} (classes: {list(order)})"))
            continue
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        if not rel or not path.is_file():
            problems.append(_problem(where, "listed but missing"))
            continue
        records.append(Record(source=rel, split=split, path=str(path), label=order.index(label), orig_label=label))
    return Dataset("csv", order, records, {c: c for c in order}, problems)


# --------------------------------------------------------------------------------------------- digits


def read_digits(root=None, digits_fractions=(0.7, 0.1, 0.2), seed: int = 0, hard: bool = False,
                classes: list[str] | None = None, **_) -> Dataset:
    """scikit-learn's bundled digits (1,797 8x8 images), split train/val/test 70/10/20, stratified and
    seeded. Pixels (0..16) are stretched to 0..255; resizing to ``--size`` happens in the encoder.
    ``hard``: partly occluded, noisy copies (soft_dist.shard.digits.harden_digits).
    ``classes``: the digits kept, in this order (e.g. 7 of them, the paper's class count); each kept image
    stays in the split it has in the 10-class set, so a subset's test images are the full set's."""
    from sklearn.datasets import load_digits

    from soft_dist.shard.digits import DIGIT_CLASSES, harden_digits, split_indices

    kept = tuple(classes) if classes else DIGIT_CLASSES
    unknown = [c for c in kept if c not in DIGIT_CLASSES]
    if unknown or len(set(kept)) != len(kept):
        raise LayoutError(f"digits layout: --classes must name distinct digits among 0-9; got {list(kept)}")
    digits = load_digits()
    grey = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    if hard:
        grey = harden_digits(grey, seed=seed)
    labels = digits.target.astype(np.int64)
    parts = split_indices(labels, dict(zip(SPLITS, digits_fractions)), seed=seed)  # on all 10: see above
    label_of = {int(c): i for i, c in enumerate(kept)}
    records = []
    for split, positions in parts.items():
        for i in positions:
            digit = int(labels[i])
            if digit in label_of:
                records.append(Record(source=f"digits#{i:04d}", split=split, pixels=grey[i], label=label_of[digit],
                                      orig_label=str(digit), orig_index=digit))
    left_out = [c for c in DIGIT_CLASSES if c not in kept]
    notes = {"classes_left_out": left_out, "images_left_out": int(len(labels) - len(records))} if left_out else {}
    return Dataset("digits", kept, records, {c: c for c in kept}, default_align="none", notes=notes)


READERS = {
    "rafdb": read_rafdb,
    "affectnet": read_affectnet,
    "ferplus": read_ferplus,
    "imagefolder": read_imagefolder,
    "csv": read_csv_layout,
    "digits": read_digits,
    "digits_hard": functools.partial(read_digits, hard=True),
}
# Layouts that read bundled data and need no --root.
BUNDLED_LAYOUTS = ("digits", "digits_hard")


def read_layout(layout: str, root, **options) -> Dataset:
    if layout not in READERS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {sorted(READERS)}")
    if layout not in BUNDLED_LAYOUTS:
        if root is None:
            raise LayoutError(f"{layout} layout: --root is required")
        if not Path(root).is_dir():
            raise LayoutError(f"{layout} layout: root '{root}' is not a folder")
    return READERS[layout](Path(root) if root is not None else None, **options)


def carve_val(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """When there is no ``val`` split, move a stratified, seeded ``fraction`` of ``train`` into ``val``.

    Deterministic: train records are ordered by source before the split, so the input order of the
    listing does not matter."""
    if any(r.split == "val" for r in records) or fraction <= 0:
        return records
    from soft_dist.shard.digits import split_indices

    train = sorted((r for r in records if r.split == "train"), key=lambda r: r.source)
    if not train:
        return records
    labels = np.array([r.label for r in train])
    parts = split_indices(labels, {"val": fraction, "train": 1.0 - fraction}, seed=seed)
    for i in parts["val"]:
        train[i].split = "val"
    return records
