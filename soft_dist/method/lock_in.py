"""The lock-in guard of SLS: one console line when its targets collapse into hard pseudo-labels.

SLS keeps every class above tau in the target (k of them). While the teacher is unsure, most samples
have k > 1; as it grows confident the share falls. On noisy digits with tau above uniform, the share
fell from 0.74 to 0.26 and SOFT ended below a plain mean teacher: its targets had become the teacher's
own arg-max, mistakes included (docs/experiments.md, "SOFT against MT"). The guard watches the
per-epoch share and says so the first time it falls below a fixed fraction of its peak.

From random weights the share starts near 1 (a uniform teacher puts every class above tau) and falls
as the teacher learns anything at all; that fall is not lock-in, so the guard watches only the epochs
after the consistency weight's ramp-up (and after SLS started).

The opposite, a share that stays high, is no warning sign: an "unsure-teacher" guard (share >= 0.75 at the
end) fired on all 5 runs at 50% symmetric noise, where SOFT lost to MT, and on all 5 at 30% asymmetric
noise, where SOFT beat MT (+1.0 points, 3 of 5 folds): a teacher torn between a digit and its look-alike
keeps k = 2 as an unsure one does. It was removed (docs/experiments.md, "tau at half of uniform").

It is a pure function of per-epoch values, so a resumed run (which replays its earlier epochs' records)
warns at the same epoch as an uninterrupted one, and only once.
"""

from __future__ import annotations

# The share must fall below this fraction of its peak so far ...
COLLAPSE_RATIO = 0.5
# ... from a peak at least this high (a run whose targets were mostly hard from the start has nothing
# to collapse from).
MIN_PEAK = 0.2


def _collapsed(shares: list[float | None], watch_from: int) -> tuple[int, int] | None:
    """(epoch of the peak, epoch of the collapse) at the first epoch where the share is below
    COLLAPSE_RATIO x the peak before it, else None. ``shares``: one per epoch, None where SLS was off;
    epochs before ``watch_from`` are not looked at."""
    peak, peak_at = None, None
    for epoch, share in enumerate(shares):
        if share is None or epoch < watch_from:
            continue
        if peak is not None and peak >= MIN_PEAK and share < COLLAPSE_RATIO * peak:
            return peak_at, epoch
        if peak is None or share > peak:
            peak, peak_at = share, epoch
    return None


def lock_in_note(shares: list[float | None], tau: float, num_classes: int, watch_from: int = 0) -> str | None:
    """The warning to print after the last epoch of ``shares`` (share of samples with k > 1 per epoch, in
    order from the first, None where SLS was off), or None: only at the epoch where the collapse first shows. Epochs
    before ``watch_from`` (the ramp-up) neither set the peak nor warn."""
    found = _collapsed(shares, watch_from)
    if found is None or found[1] != len(shares) - 1:
        return None
    peak_at, now = found
    return (f"lock-in warning: the share of SLS targets with k > 1 fell from {shares[peak_at]:.2f} (epoch "
            f"{peak_at + 1}) to {shares[now]:.2f}; the teacher's targets are becoming hard pseudo-labels and "
            f"SOFT may be learning its own mistakes. If the labels are noisy, try a lower method.tau_relative "
            f"(tau now {tau:.4g} = {tau * num_classes:.3g} / {num_classes} classes), a higher method.epsilon, or "
            f"fewer epochs; `teacher_agrees` in metrics.jsonl tracks the teacher against the given labels.")
