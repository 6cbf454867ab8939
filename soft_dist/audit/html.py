"""audit.html: a contact sheet of the most suspicious training images, one self-contained file (the
JPEGs are embedded as base64 data URIs, read straight from the shards), viewable offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from soft_dist.audit.report import Audit
from soft_dist.data.format import SplitSelection

_STYLE = """
body { font-family: sans-serif; margin: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 150px; border: 1px solid #ccc; padding: 4px; font-size: 12px; }
figure img { width: 142px; height: 142px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.given { color: #b00; } .suggested { color: #070; } .meta { color: #555; }
"""


def jpeg_bytes(shards_dir: str | Path, selection: SplitSelection, idx: np.ndarray) -> dict[int, bytes]:
    """idx -> the JPEG bytes of those samples of ``selection`` (random access through the tar index)."""
    from soft_dist.data.tarindex import load_sample_table

    wanted = SplitSelection(selection.name, selection.sources, np.sort(np.asarray(idx, dtype=np.int64)))
    table = load_sample_table(shards_dir, wanted)
    try:
        return {int(table.idx[p]): table.jpeg(p).tobytes() for p in range(len(table))}
    finally:
        table.close()


def write_html(audit: Audit, classes: tuple[str, ...], images: dict[int, bytes], sources: dict[int, str],
               path: Path, title: str, top: int) -> Path:
    """The top ``top`` rows of ``audit`` as figures: image, given and suggested class, score, rank."""
    cards = []
    for r in range(min(top, len(audit))):
        i, g, s = int(audit.idx[r]), int(audit.given[r]), int(audit.suggested[r])
        data = base64.b64encode(images[i]).decode("ascii")
        truth = ""
        if audit.clean is not None:
            c = int(audit.clean[r])
            truth = f"<br><span class=meta>truth: {html.escape(classes[c])} ({'wrong' if c != g else 'right'} label)</span>"
        cards.append(
            f"<figure><img src=\"data:image/jpeg;base64,{data}\" alt=\"idx {i}\">"
            f"<figcaption>#{r + 1} idx {i}<br><span class=given>given: {html.escape(classes[g])}</span><br>"
            f"<span class=suggested>suggested: {html.escape(classes[s])}</span><br>"
            f"<span class=meta>score {audit.score[r]:.3f}<br>{html.escape(sources.get(i, ''))}</span>{truth}"
            "</figcaption></figure>")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>The {len(cards)} training images whose given label is most likely wrong (score "
            f"<code>{html.escape(audit.score_name)}</code>, higher = more suspicious), most suspicious first. "
            f"Suggestions are the {html.escape(audit.source)}'s most probable class.</p>"
            f"<div class=grid>{''.join(cards)}</div></body></html>\n")
    path.write_text(page)
    return path
