"""Published noise lists <-> noise tables (``noise.kind: file`` with ``noise.file_format``).

Papers publish their noisy label splits as lists of image names and labels. soft-dist reads three kinds
of list besides its own noise table (``table``, soft_dist.noise.NoiseTable's CSV):

* ``rafdb``: RAF-DB's list format, ``train_00001.jpg 5`` per line, labels 1..7 in RAF-DB's own order
  (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral). RAF-DB shards only.
* ``soft``: the SOFT authors' files (github.com/toharl/soft, ``rafdb_noisy/inject0.3noise.txt``): a
  ``name label`` row for every train AND test image. Their loader subtracts 1 from the label after
  reading, so the file holds RAF-DB's own numbering 1..7, not soft-dist's class indices. soft-dist reads
  a ``soft`` label in the dataset's own numbering, as the manifest's ``label_map`` keys it (RAF-DB 1..7,
  AffectNet 0..7, FERPlus 0..7, digits 0..9); a dataset whose own labels are not integers (imagefolder,
  csv with class names) is numbered 0-based in the shards' class order.
* ``paths``: ``path label`` or ``path,label`` rows: an absolute or relative image path and a 0-based
  label in the shards' class order (``manifest.json`` ``classes``).

Rows are mapped onto shard samples through the ``source`` each sample's ``.json`` member records (the
image's path relative to the dataset root, soft_dist.shard.encode): by basename for ``rafdb`` and
``soft``, ignoring RAF-DB's ``_aligned`` suffix on both sides (``train_00001.jpg`` names the sample of
``Image/aligned/train_00001_aligned.jpg``), and by whole path components for ``paths`` (a row matches a
sample whose source its path ends with, or the reverse: ``/data/raf/Image/aligned/x.jpg`` and
``aligned/x.jpg`` both match ``Image/aligned/x.jpg``).

The noise table covers the run's training and validation samples (the splits
soft_dist.data.splits.run_splits gives, carved or not), exactly as for synthetic noise. Rows that name a
test sample (or one of a shard split the run does not use) are counted and ignored: noise never reaches
the test split. Training and validation samples the list does not name keep their clean label (counted).
The counts travel in the table's ``info`` and so in the first line of the run's noise_table.csv.

No Ray, DALI or torch here: the training driver and `soft-dist noise export` both use this module.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soft_dist.shard.layouts import RAFDB_LABELS
from soft_dist.data.format import (INDEX_EXT, LABEL_EXT, META_EXT, Manifest, ManifestError, SplitSelection,
                                   decode_int64)
from soft_dist.noise.table import NoiseTable

LIST_FORMATS = ("rafdb", "soft", "paths")
FILE_FORMATS = ("table", *LIST_FORMATS)  # the choices of noise.file_format and of `noise export --format`
NOISE_ROLES = ("train", "val")  # the run's splits a noise table covers; never test
_SHOW = 5  # how many offending rows an error message lists


class NoiseListError(ValueError):
    """A noise list that cannot be used; the message names the file and line (or the dataset).

    ``field`` is the config field at fault when the list comes from a config: the file, or its format."""

    def __init__(self, message: str, field: str = "noise.file"):
        super().__init__(message)
        self.field = field


# ----------------------------------------------------------------------------- the shards' samples


@dataclass
class SampleIndex:
    """Every sample of a shard set, sorted by idx: what a list row can name.

    ``role`` is the run split a sample belongs to (train / val / test) or "" for a sample of a shard split
    the run does not use."""

    root: str
    dataset: str
    classes: tuple[str, ...]
    label_map: dict  # manifest.json's label_map: the dataset's own label -> canonical class name
    idx: np.ndarray  # [N] int64
    clean: np.ndarray  # [N] int64, the shards' label (class index in ``classes``)
    source: list[str]  # [N] the json member's source: path relative to the dataset root
    role: list[str]  # [N] train | val | test | ""

    def __len__(self) -> int:
        return len(self.idx)

    def in_table(self) -> np.ndarray:
        """Boolean mask [N]: samples a noise table covers (the run's train and validation splits)."""
        return np.array([r in NOISE_ROLES for r in self.role], dtype=bool)

    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Positions [M] of the sample indices ``idx`` [M]; an idx the shards do not have is an error."""
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(self.idx, idx)
        found = (pos < len(self.idx)) & (self.idx[np.minimum(pos, len(self.idx) - 1)] == idx)
        if not found.all():
            missing = idx[~found]
            raise NoiseListError(f"{len(missing)} sample indices are not in the shards at {self.root} "
                                 f"(first: {missing[:_SHOW].tolist()}); the noise table belongs to other shards")
        return pos


def read_sample_index(manifest: Manifest, roles: dict[str, str | SplitSelection]) -> SampleIndex:
    """Read idx, label and source of every sample in every split of ``manifest`` (no image is decoded),
    and tag each with its run split from ``roles`` (soft_dist.data.splits.run_splits)."""
    idx, clean, source, split_of = [], [], [], []
    for split in manifest.splits:
        for path in manifest.shard_paths(split):
            if not path.is_file():
                raise ManifestError(f"{path}: shard listed in the manifest is missing")
            members: dict[str, dict] = {}
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext in (LABEL_EXT, INDEX_EXT):
                        members.setdefault(key, {})[ext] = decode_int64(tar.extractfile(member).read())
                    elif ext == META_EXT:
                        members.setdefault(key, {})[ext] = json.loads(tar.extractfile(member).read())
            for key, m in members.items():
                src = (m.get(META_EXT) or {}).get("source")
                if INDEX_EXT not in m or LABEL_EXT not in m or not src:
                    raise ManifestError(f"{path}: sample {key} lacks its .idx, .cls or a 'source' in its .json; "
                                        "noise lists are matched by source")
                idx.append(m[INDEX_EXT])
                clean.append(m[LABEL_EXT])
                source.append(str(src))
                split_of.append(split)
    idx_arr = np.array(idx, dtype=np.int64)
    if len(np.unique(idx_arr)) != len(idx_arr):
        raise ManifestError(f"{manifest.root}: sample indices repeat across shards")
    role = [""] * len(idx_arr)
    for name, selection in roles.items():
        if isinstance(selection, SplitSelection):
            hit = selection.keep(idx_arr)
        else:
            manifest.split(selection)  # a split the manifest lacks is a clear ManifestError
            hit = np.array([s == selection for s in split_of], dtype=bool)
        for p in np.flatnonzero(hit):
            role[p] = name
    order = np.argsort(idx_arr, kind="stable")
    return SampleIndex(
        root=str(manifest.root), dataset=manifest.dataset, classes=tuple(manifest.classes),
        label_map=dict(manifest.raw.get("label_map") or {}), idx=idx_arr[order],
        clean=np.array(clean, dtype=np.int64)[order], source=[source[p] for p in order],
        role=[role[p] for p in order])


# ----------------------------------------------------------------------------- labels


def label_numbering(file_format: str, index: SampleIndex) -> tuple[dict[int, int], str]:
    """(list label -> class index in the shards, a description of the numbering for messages)."""
    classes = index.classes
    if file_format == "paths":
        return {i: i for i in range(len(classes))}, f"0..{len(classes) - 1} in the shards' class order"
    if file_format == "rafdb":
        if index.dataset != "rafdb":
            raise NoiseListError(f"the rafdb format is RAF-DB's list format, but the shards at {index.root} "
                                 f"hold dataset '{index.dataset}'; use soft or paths", "noise.file_format")
        numbering = {n: classes.index(name) for n, name in RAFDB_LABELS.items() if name in classes}
        return numbering, "1..7 in RAF-DB's order (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, " \
                          "6 Anger, 7 Neutral)"
    if file_format == "soft":
        own = index.label_map
        if own and all(str(k).lstrip("-").isdigit() for k in own):
            # The dataset's own integer labels (RAF-DB 1..7, AffectNet 0..10, ...); those whose class is
            # not in the shards (AffectNet's non-expressions, contempt in 7-class shards) are no label.
            numbering = {int(k): classes.index(v) for k, v in own.items() if v in classes}
            what = f"the dataset's own numbering ({index.dataset}: " + ", ".join(
                f"{k} {classes[v]}" for k, v in sorted(numbering.items())) + ")"
            return numbering, what
        return {i: i for i in range(len(classes))}, f"0..{len(classes) - 1} in the shards' class order"
    raise NoiseListError(f"unknown noise list format {file_format!r}; choose one of {list(LIST_FORMATS)}",
                         "noise.file_format")


# ----------------------------------------------------------------------------- names


def list_name(source: str) -> str:
    """The name a rafdb / soft list uses for a sample: the basename without RAF-DB's ``_aligned`` suffix
    (``Image/aligned/train_00001_aligned.jpg`` -> ``train_00001.jpg``)."""
    base = source.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if stem.endswith("_aligned"):
        stem = stem[: -len("_aligned")]
    return f"{stem}.{ext}" if dot else stem


def _path_parts(path: str) -> tuple[str, ...]:
    text = posixpath.normpath(path.replace("\\", "/"))
    return tuple(p for p in text.split("/") if p not in ("", "."))


class _Matcher:
    """Finds the sample positions a list row names (see the module docstring for the rules)."""

    def __init__(self, index: SampleIndex, file_format: str):
        self.by_path = file_format == "paths"
        self.full: dict = {}
        self.suffixes: dict = {}
        for pos, src in enumerate(index.source):
            if self.by_path:
                parts = _path_parts(src)
                self.full.setdefault(parts, []).append(pos)
                for i in range(len(parts)):
                    self.suffixes.setdefault(parts[i:], []).append(pos)
            else:
                self.full.setdefault(list_name(src), []).append(pos)

    def __call__(self, name: str) -> list[int]:
        if not self.by_path:
            return self.full.get(list_name(name), [])
        parts = _path_parts(name)
        hits = set(self.suffixes.get(parts, []))  # the sample's source ends with the row's path
        for i in range(1, len(parts)):  # the row's path ends with the sample's source
            hits.update(self.full.get(parts[i:], []))
        return sorted(hits)


# ----------------------------------------------------------------------------- reading


@dataclass
class ListRow:
    line: int  # 1-based line number in the file
    name: str
    label: int


def parse_list(text: str, file_format: str, source: str) -> list[ListRow]:
    """Rows of a noise list; blank lines and ``#`` comments are skipped. ``paths`` rows may be
    ``path label`` or ``path,label`` (the path may hold spaces), and a first ``path,label`` header is
    skipped. Errors name ``source`` and the line."""
    if file_format not in LIST_FORMATS:
        raise NoiseListError(f"unknown noise list format {file_format!r}; choose one of {list(LIST_FORMATS)}",
                             "noise.file_format")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if file_format == "paths":
            parts = stripped.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                parts = [p.strip() for p in stripped.rsplit(",", 1)]
            if not rows and len(parts) == 2 and parts[1].lower() == "label":
                continue  # a CSV header
            expected = "'path label' or 'path,label'"
        else:
            parts = stripped.split()
            expected = "'name label'"
        if len(parts) != 2 or not parts[0]:
            raise NoiseListError(f"{source}:{number}: expected {expected}, got {line!r}")
        try:
            label = int(parts[1])
        except ValueError as err:
            raise NoiseListError(f"{source}:{number}: label {parts[1]!r} is not an integer") from err
        rows.append(ListRow(number, parts[0], label))
    return rows


def table_from_list(text: str, file_format: str, index: SampleIndex, source: str) -> NoiseTable:
    """The noise table (kind "file") that the list ``text`` (read from ``source``) gives over the run's
    training and validation samples of ``index``: idx [N] and clean [N] from the shards, noisy [N] from
    the list where it names the sample, else the clean label. See the module docstring for the rules."""
    rows = parse_list(text, file_format, source)
    numbering, numbering_text = label_numbering(file_format, index)
    match = _Matcher(index, file_format)
    in_table = index.in_table()
    noisy = index.clean.copy()
    listed: dict[int, ListRow] = {}  # sample position -> the row that labelled it
    unmatched: list[ListRow] = []
    ignored = 0
    for row in rows:
        if row.label not in numbering:
            raise NoiseListError(f"{source}:{row.line}: label {row.label} is out of range for the "
                                 f"{file_format} format: labels are {numbering_text}")
        hits = match(row.name)
        if not hits:
            unmatched.append(row)
            continue
        if len(hits) > 1:
            shown = ", ".join(index.source[p] for p in hits[:_SHOW])
            hint = "give longer paths" if file_format == "paths" else "use the paths format"
            raise NoiseListError(f"{source}:{row.line}: {row.name!r} matches {len(hits)} samples ({shown}); "
                                 f"{hint}")
        pos = hits[0]
        label = numbering[row.label]
        earlier = listed.get(pos)
        if earlier is not None:
            if numbering[earlier.label] != label:
                raise NoiseListError(
                    f"{source}:{row.line}: {row.name!r} names the same sample ({index.source[pos]}) as line "
                    f"{earlier.line} ({earlier.name!r}) with another label ({row.label}, there {earlier.label})")
            continue
        listed[pos] = row
        if in_table[pos]:
            noisy[pos] = label
        else:
            ignored += 1  # a test sample (or one outside the run's splits): never noised
    if unmatched:
        shown = "; ".join(f"line {r.line} {r.name!r}" for r in unmatched[:_SHOW])
        more = f" (first {_SHOW} shown)" if len(unmatched) > _SHOW else ""
        raise NoiseListError(
            f"{source}: {len(unmatched)} of {len(rows)} rows name no sample of the shards at {index.root} "
            f"(dataset {index.dataset}, {len(index)} samples): {shown}{more}. Names are matched by "
            + ("path suffix" if file_format == "paths" else "basename, with or without '_aligned'")
            + " against the 'source' in each sample's .json; samples the sharder left out are listed in "
            "manifest.json's input problems")
    applied = len(listed) - ignored
    if applied == 0:
        raise NoiseListError(f"{source}: none of its {len(rows)} rows names a training or validation sample "
                             f"of the run ({ignored} name test samples)")
    table_pos = np.flatnonzero(in_table)
    flipped = int((noisy[table_pos] != index.clean[table_pos]).sum())
    return NoiseTable(
        idx=index.idx[table_pos], clean=index.clean[table_pos], noisy=noisy[table_pos], kind="file",
        rate=round(flipped / len(table_pos), 6), seed=0,
        info={"format": file_format, "rows": len(rows), "applied": applied, "flipped": flipped,
              "ignored_outside_train_val": ignored, "unlisted_kept_clean": len(table_pos) - applied})


def read_noise_list(path: str | Path, file_format: str, manifest: Manifest,
                    roles: dict[str, str | SplitSelection]) -> NoiseTable:
    """`table_from_list` for a list file and the shards of ``manifest`` split into the run's ``roles``."""
    path = Path(path)
    if not path.is_file():
        raise NoiseListError(f"{path}: noise list not found")
    return table_from_list(path.read_text(), file_format, read_sample_index(manifest, roles), str(path))


def describe(table: NoiseTable) -> str:
    """One line about a table made from a list (its ``info``), for the run's console."""
    i = table.info
    return (f"noise list ({i.get('format')}): {i.get('rows')} rows; {i.get('applied')} label training/validation "
            f"samples ({i.get('flipped')} differ from the clean label), {i.get('ignored_outside_train_val')} "
            f"name test samples (ignored); {i.get('unlisted_kept_clean')} training/validation samples are "
            "not listed and keep their clean label")


# ----------------------------------------------------------------------------- writing


def list_text(table: NoiseTable, index: SampleIndex, file_format: str) -> str:
    """``table`` written as a list in ``file_format`` (``table``: its own CSV), rows in idx order.

    rafdb and paths hold the table's samples (the run's training and validation samples) with their
    noisy labels; soft also holds the run's test samples with their clean labels, as the SOFT authors'
    files hold every image. Reading the result back (same shards, same data config) gives the same noisy
    labels."""
    if file_format == "table":
        return table.to_csv()
    numbering, _ = label_numbering(file_format, index)
    number_of = {}
    for number, cls in sorted(numbering.items(), reverse=True):
        number_of[cls] = number  # the smallest number when two name the same class
    missing = [index.classes[c] for c in range(len(index.classes)) if c not in number_of]
    if missing:
        raise NoiseListError(f"the {file_format} format has no number for classes {missing} of {index.dataset}")
    pos = index.positions(table.idx)
    labels = np.asarray(table.noisy, dtype=np.int64)
    if file_format == "soft":
        in_table = set(pos.tolist())
        test = np.array([p for p, r in enumerate(index.role) if r == "test" and p not in in_table], dtype=np.int64)
        pos = np.concatenate([pos, test])
        labels = np.concatenate([labels, index.clean[test]])
    order = np.argsort(index.idx[pos], kind="stable")
    pos, labels = pos[order], labels[order]
    if file_format == "paths":
        names = [index.source[p] for p in pos]
    else:
        names = [list_name(index.source[p]) for p in pos]
        match = _Matcher(index, file_format)
        for name, p in zip(names, pos):
            if match(name) != [p]:
                raise NoiseListError(f"{index.source[p]}: its list name {name!r} is shared by other samples of "
                                     f"{index.dataset}; export with --format paths")
    return "".join(f"{name} {number_of[int(label)]}\n" for name, label in zip(names, labels))
