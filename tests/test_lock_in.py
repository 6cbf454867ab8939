"""The lock-in guard (soft_dist.method.lock_in): when it warns, that it warns once, and what it says."""

from soft_dist.method.lock_in import lock_in_note, unsure_teacher_note


def test_warns_once_at_the_epoch_the_share_halves():
    shares = [0.80, 0.74, 0.60, 0.45, 0.36, 0.30]  # 0.36 < 0.5 x 0.80 at epoch index 4
    notes = [lock_in_note(shares[:n + 1], 0.125, 10) for n in range(len(shares))]
    assert [n is not None for n in notes] == [False, False, False, False, True, False]
    assert "0.80 (epoch 1) to 0.36" in notes[4] and "method.tau_relative" in notes[4]
    assert "tau now 0.125 = 1.25 / 10 classes" in notes[4]


def test_a_slow_decline_or_a_low_start_is_not_lock_in():
    assert lock_in_note([0.86, 0.80, 0.70, 0.60, 0.50, 0.47], 0.0875, 10) is None  # above half of its peak
    assert lock_in_note([0.15, 0.10, 0.05, 0.02], 0.0875, 10) is None  # never had k > 1 to lose


def test_the_ramp_up_and_epochs_without_sls_are_not_watched():
    # From random weights the share starts near 1 and falls while the teacher learns anything at all.
    falling_from_random = [0.99, 0.70, 0.40, 0.38, 0.36]
    assert lock_in_note(falling_from_random[:3], 0.0875, 10) is not None  # it would warn if watched
    assert lock_in_note(falling_from_random, 0.0875, 10, watch_from=2) is None
    assert lock_in_note([None, None, 0.8, 0.3], 0.0875, 10) is not None  # epochs before SLS do not count
    assert lock_in_note([None, None, 0.8, 0.3], 0.0875, 10, watch_from=3) is None


def _record(share, note=None):
    train = {"loss": 1.0, "share_k_gt_1": share, "teacher_agrees": 0.6, "images_per_s": 100.0}
    return {"train": train, "val": {"student": {"accuracy": 0.5}}, **({"note": note} if note else {})}


def test_the_note_follows_its_epoch_line_in_the_run_log_and_on_the_ray_driver(tmp_path):
    from soft_dist.storage import RunStore
    from soft_dist.train.ray_trainer import EpochPrinter
    from soft_dist.train.runlog import RunLog

    store, said, printed = RunStore(tmp_path), [], []
    printer = EpochPrinter(store, 2, printed.append)  # the driver of a Ray run prints from metrics.jsonl
    log = RunLog(store, 2, said.append, tensorboard=False)
    log.start(0)
    log.record(1, _record(0.8))  # epochs are numbered from 1
    log.record(2, _record(0.3, note="lock-in warning: ..."))
    assert [line.split(" | ")[0] for line in said] == ["epoch 1/2", "epoch 2/2", "lock-in warning: ..."]
    assert "teacher=label 0.60" in said[0] and "k>1 0.80" in said[0]
    printer._print_new()
    assert printed == said


# the k > 1 shares of two measured runs (harder digits, 20 epochs, 2-epoch ramp-up; docs/experiments.md):
# SOFT at 50% symmetric noise, which lost to MT, and at 30% on 7 classes, level with MT
UNSURE_AT_50 = [0.97, 0.95, 0.92, 0.90, 0.89, 0.87, 0.86, 0.85, 0.85, 0.84, 0.84, 0.83, 0.83, 0.82, 0.81, 0.81,
                0.79, 0.80, 0.78, 0.79]
SURE_AT_30 = [0.80, 0.71, 0.66, 0.59, 0.56, 0.55, 0.52, 0.53, 0.50, 0.49, 0.46, 0.49, 0.45, 0.46, 0.43, 0.43,
              0.40, 0.41, 0.39, 0.38]


def test_a_teacher_unsure_at_the_end_of_the_run_is_reported_once_after_the_last_epoch():
    notes = [unsure_teacher_note(UNSURE_AT_50[:n + 1], 20, 0.0875, 10, watch_from=2) for n in range(20)]
    assert [n is not None for n in notes] == [False] * 19 + [True]
    assert "0.79 of the SLS targets" in notes[-1] and "method.name=mt" in notes[-1]
    assert all(unsure_teacher_note(SURE_AT_30[:n + 1], 20, 0.125, 7, watch_from=2) is None for n in range(20))


def test_a_short_run_or_one_without_sls_at_the_end_gets_no_unsure_note():
    assert unsure_teacher_note(UNSURE_AT_50[:6], 6, 0.0875, 10, watch_from=2) is None  # too short to judge
    assert unsure_teacher_note(UNSURE_AT_50[:12], 12, 0.0875, 10, watch_from=2) is not None
    assert unsure_teacher_note(UNSURE_AT_50[:-1] + [None], 20, 0.0875, 10, watch_from=2) is None
    assert unsure_teacher_note([None] * 20, 20, 0.0875, 10) is None  # a method without SLS


def test_below_the_default_tau_the_share_says_nothing_about_the_teacher():
    # tau at half of uniform kept 0.90 of the targets above one class at 30% noise, with a sure teacher
    assert unsure_teacher_note(UNSURE_AT_50, 20, 0.05, 10, watch_from=2) is None
    assert unsure_teacher_note(UNSURE_AT_50, 20, 0.2, 10, watch_from=2) is not None  # a higher tau still warns
