"""MTCNN's non-maximum suppression, one photo at a time, so that a photo's face does not depend on the
photos it was batched with.

facenet-pytorch suppresses the candidate boxes of a whole batch in one call, keeping photos apart by
shifting each photo's boxes by (its index in the batch) x (the largest coordinate in the batch). The
shifted coordinates are rounded differently than the photo's own, and the largest coordinate depends on
the batch-mates, so a box near the overlap threshold could survive in one batch and not in another: a
real face's box moved by 1.7 px between a batch of 6 LFW photos and the same photo alone. `soft-dist
serve` batches whatever requests arrive together, and its answer must equal `soft-dist predict`'s for the
same file; the shard, predict and serve paths therefore all run this per-photo suppression, which gives
each photo exactly the boxes it gets alone (checked on 32 LFW photos, in batches of 6 and of 32). Cost:
detection of 32 same-size LFW photos in one call went from 156 to 149 photos/s (medians of 5, interleaved,
2-core AMD EPYC).
"""

from __future__ import annotations

import numpy as np
import torch


def _per_photo(idxs: torch.Tensor, suppress) -> torch.Tensor:
    """Indices kept by ``suppress(positions)`` run on each photo's own candidates, in the caller's order."""
    kept = [where[suppress(where)] for where in
            (torch.nonzero(idxs == photo).flatten() for photo in torch.unique(idxs))]
    return torch.cat(kept) if kept else torch.empty((0,), dtype=torch.int64, device=idxs.device)


def install() -> None:
    """Replace facenet-pytorch's batch-wide suppression (torch and numpy variants) with per-photo calls
    of the same algorithms. Idempotent."""
    from facenet_pytorch.models.utils import detect_face
    from torchvision.ops import nms

    if getattr(detect_face, "_soft_dist_per_photo_nms", False):
        return

    def batched_nms(boxes, scores, idxs, threshold):
        return _per_photo(idxs, lambda where: nms(boxes[where], scores[where], threshold))

    def batched_nms_numpy(boxes, scores, idxs, threshold, method):
        def one_photo(where):
            keep = detect_face.nms_numpy(boxes[where].cpu().numpy(), scores[where].cpu().numpy(), threshold, method)
            return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)

        return _per_photo(idxs, one_photo)

    detect_face.batched_nms = batched_nms
    detect_face.batched_nms_numpy = batched_nms_numpy
    detect_face._soft_dist_per_photo_nms = True
