"""`soft-dist shard --verify OUT`: re-read every shard and check it against the manifest.

Checks, per shard: the file exists and its sha256 matches; every sample has exactly the members
jpg/cls/idx/json; ``cls`` is a valid class and equals the label in the json; ``idx`` equals the key,
is unique across all splits and below ``num_indices``; the JPEG has start and end markers (``decode``
fully decodes it instead); the sample count matches. Per split: class counts match. The DALI index file
beside each shard matches the tar. Problems are collected, never raised one at a time.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from soft_dist.data.format import SAMPLE_EXTS, decode_int64, load_manifest, sample_key
from soft_dist.shard.writer import index_text, sha256_file


def verify_shards(root: str | Path, decode: bool = False, max_errors: int = 50) -> dict:
    """Return {"ok", "errors" (list of str), "num_samples", "num_shards"}."""
    manifest = load_manifest(root)
    root = Path(root)
    errors: list[str] = []
    num_classes = manifest.num_classes
    limit = manifest.raw.get("num_indices")
    # Which idx were seen: one byte per possible idx (1 MB at a million samples; a set of Python ints
    # held 67 MB), or a set when the manifest does not bound the idx.
    seen_flags = np.zeros(limit, dtype=bool) if limit is not None else None
    seen_idx: set[int] = set()

    def seen_before(idx: int) -> bool:
        if seen_flags is not None:
            before = bool(seen_flags[idx])
            seen_flags[idx] = True
            return before
        before = idx in seen_idx
        seen_idx.add(idx)
        return before
    total = shards = 0

    def err(message: str) -> None:
        errors.append(message)

    for split_name, split in manifest.splits.items():
        counts: dict[str, int] = defaultdict(int)
        for shard in split.shards:
            path = root / shard.name
            shards += 1
            if not path.is_file():
                err(f"{shard.name}: missing")
                continue
            if sha256_file(path) != shard.sha256:
                err(f"{shard.name}: sha256 differs from the manifest")
            members: dict[str, dict[str, bytes]] = {}
            try:
                with tarfile.open(path, mode="r:") as tar:
                    for member in tar:
                        key, _, ext = member.name.partition(".")
                        members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError) as e:
                err(f"{shard.name}: unreadable tar ({e})")
                continue
            if len(members) != shard.num_samples:
                err(f"{shard.name}: {len(members)} samples, manifest says {shard.num_samples}")
            for key, parts in members.items():
                where = f"{shard.name}:{key}"
                if sorted(parts) != sorted(SAMPLE_EXTS):
                    err(f"{where}: members {sorted(parts)}, expected {sorted(SAMPLE_EXTS)}")
                    continue
                try:
                    label, idx = decode_int64(parts["cls"]), decode_int64(parts["idx"])
                    meta = json.loads(parts["json"])
                except ValueError as e:
                    err(f"{where}: bad cls/idx/json ({e})")
                    continue
                if not 0 <= label < num_classes:
                    err(f"{where}: label {label} outside 0..{num_classes - 1}")
                    continue
                if meta.get("label") != label:
                    err(f"{where}: json label {meta.get('label')} != cls {label}")
                if key != sample_key(idx):
                    err(f"{where}: idx {idx} does not match the key")
                if limit is not None and not 0 <= idx < limit:
                    err(f"{where}: idx {idx} outside 0..{limit - 1}")
                elif seen_before(idx):
                    err(f"{where}: idx {idx} appears twice")
                counts[manifest.classes[label]] += 1
                jpeg = parts["jpg"]
                if decode:
                    from PIL import Image

                    try:
                        Image.open(io.BytesIO(jpeg)).load()
                    except Exception as e:
                        err(f"{where}: jpg does not decode ({e})")
                elif not (jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"):
                    err(f"{where}: jpg lacks JPEG start/end markers")
            total += len(members)
            index = path.with_suffix(".idx")
            if not index.is_file():
                err(f"{index.name}: DALI index file missing")
            elif index.read_text() != index_text(path):
                err(f"{index.name}: does not match {shard.name}")
            if len(errors) > max_errors:
                break
        expected = {c: n for c, n in split.class_counts.items() if n}
        if dict(counts) != expected:
            err(f"split '{split_name}': class counts {dict(counts)} != manifest {expected}")
    return {"ok": not errors, "errors": errors[:max_errors], "num_samples": total, "num_shards": shards}
