"""What `soft-dist predict` was asked to label: files, folders and glob patterns -> one ordered path list.

Every path named on the command line gets a row, whatever it is (a missing file or a text file gets a
row that says so). Folders are walked recursively for files with an image suffix; the other files in
them are counted, so the console can say how many were left out, never dropped silently.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from soft_dist.shard.layouts import IMAGE_SUFFIXES as SHARD_IMAGE_SUFFIXES

# The suffixes the sharder reads in image folders, plus the netpbm files PIL also reads; lower case.
IMAGE_SUFFIXES = frozenset(SHARD_IMAGE_SUFFIXES | {".ppm", ".pgm"})
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputList:
    """``paths``: each gets one output row, in this order (duplicates removed). ``ignored``: files inside
    the given folders left out because their suffix is not an image's."""

    paths: list[str]
    ignored: int = 0


def _folder_images(folder: Path) -> tuple[list[str], int]:
    images, ignored = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(str(Path(root) / name))
            else:
                ignored += 1
    return images, ignored


def collect_inputs(args: list[str]) -> InputList:
    """Expand ``args`` (files, folders, glob patterns) in the order given. A pattern that matches nothing
    and a path that does not exist are kept as paths, so that their rows say 'missing'."""
    paths: list[str] = []
    ignored = 0
    for arg in args:
        is_pattern = any(c in GLOB_CHARS for c in arg) and not os.path.exists(arg)
        matches = (sorted(glob.glob(arg, recursive=True)) or [arg]) if is_pattern else [arg]
        for path in matches:
            if os.path.isdir(path):
                found, skipped = _folder_images(Path(path))
                paths += found
                ignored += skipped
            else:
                paths.append(path)
    return InputList(list(dict.fromkeys(paths)), ignored)
