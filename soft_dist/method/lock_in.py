"""Two guards of SLS, each one console line: lock-in (targets collapsing into hard pseudo-labels) and a
teacher still unsure at the end of the run (where SLS targets measured as a cost against a plain MT).

Lock-in.

SLS keeps every class above tau in the target (k of them). While the teacher is unsure, most samples
have k > 1; as it grows confident the share falls. On noisy digits with tau above uniform, the share
fell from 0.74 to 0.26 and SOFT ended below a plain mean teacher: its targets had become the teacher's
own arg-max, mistakes included (docs/experiments.md, "SOFT against MT"). The guard watches the
per-epoch share and says so the first time it falls below a fixed fraction of its peak.

From random weights the share starts near 1 (a uniform teacher puts every class above tau) and falls
as the teacher learns anything at all; that fall is not lock-in, so the guard watches only the epochs
after the consistency weight's ramp-up (and after SLS started).

An unsure teacher. With 50% symmetric noise from random weights on the harder digits, MT with SLS targets
ended 3.6 points below plain MT (1 win in 5 folds; MT with the uncertainty head was level with MT, so the
cost is the target) and SOFT 4.2 below (0 wins in 5); there the teacher stayed unsure to the end: the k > 1
share of the last epoch was 0.79-0.90. Where SOFT was level with MT or above it (30% noise at 10 and at 7
classes; 50% on the easy digits, 40 epochs) it had fallen to 0.36-0.63 (docs/experiments.md, "Half the
labels wrong"). So the guard warns after the last epoch when the mean share of the last UNSURE_EPOCHS
epochs is at least UNSURE_SHARE, in a run that watched the share for at least UNSURE_MIN_EPOCHS epochs
after the ramp-up (a short run ends before any teacher is sure: the 50% runs watched 18). The share
depends on tau as much as on the teacher (a lower tau keeps more classes above it: 0.90 at the end of a
30%-noise run with tau at half of uniform, where the teacher was sure), and these thresholds were measured
at the default tau = 0.875 / C; below that the guard stays silent. Measured on digits only; the note says so.

Both are pure functions of per-epoch values, so a resumed run (which replays its earlier epochs' records)
warns at the same epoch as an uninterrupted one, and only once.
"""

from __future__ import annotations

# The share must fall below this fraction of its peak so far ...
COLLAPSE_RATIO = 0.5
# ... from a peak at least this high (a run whose targets were mostly hard from the start has nothing
# to collapse from).
MIN_PEAK = 0.2
# At the end of the run, the k > 1 share still at least this high (0.79-0.90 where SLS cost, 0.36-0.63 where
# it did not) ...
UNSURE_SHARE = 0.75
# ... on average over the last this many epochs ...
UNSURE_EPOCHS = 3
# ... of a run with at least this many epochs after the ramp-up, and tau at least this share of uniform.
UNSURE_MIN_EPOCHS = 10
UNSURE_MIN_TAU_RELATIVE = 0.875


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


def unsure_teacher_note(shares: list[float | None], epochs: int, tau: float, num_classes: int,
                        watch_from: int = 0) -> str | None:
    """The warning to print after the last epoch of ``shares`` (share of samples with k > 1 per epoch, None
    where SLS was off), or None: only after epoch ``epochs`` (the run's last), in a run with at least
    UNSURE_MIN_EPOCHS epochs from ``watch_from`` (the ramp-up's end) on and ``tau`` at least
    UNSURE_MIN_TAU_RELATIVE / ``num_classes``, and only when the mean of the last UNSURE_EPOCHS shares is at
    least UNSURE_SHARE."""
    window = shares[-UNSURE_EPOCHS:]
    if len(shares) != epochs or epochs - watch_from < UNSURE_MIN_EPOCHS or any(s is None for s in window):
        return None
    if tau * num_classes < UNSURE_MIN_TAU_RELATIVE - 1e-9:
        return None
    mean = sum(window) / len(window)
    if mean < UNSURE_SHARE:
        return None
    return (f"unsure-teacher warning: {mean:.2f} of the SLS targets still kept more than one class over the last "
            f"{UNSURE_EPOCHS} epochs (at least {UNSURE_SHARE}): the teacher stayed unsure, as with half of the "
            f"labels wrong. Where that was measured (digits, 50% symmetric noise, from random weights) SLS "
            f"targets cost 3-4 points against a plain mean teacher: compare with method.name=mt before trusting "
            f"this run (docs/experiments.md, \"Half the labels wrong\").")
