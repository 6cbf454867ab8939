"""The console's one line per epoch (soft_dist.train.runlog.epoch_summary_line)."""

from soft_dist.train.runlog import epoch_summary_line

TRAIN = {"loss": 2.5, "loss_ce": 2.0, "lambda": 0.5, "loss_cons": 1.0, "share_k_gt_1": 0.9, "teacher_agrees": 0.4,
         "images_per_s": 178.4}
VAL = {"student": {"accuracy": 0.3}, "teacher": {"accuracy": 0.25}}


def test_the_epoch_line_reads_as_a_sentence_part_by_part():
    line = epoch_summary_line(1, 20, TRAIN, VAL, workers=1, val_labels="noisy")
    assert line == ("epoch 1/20 | loss 2.500 = ce 2.000 + 0.50 x cons 1.000 | k>1 0.90 | teacher=label 0.40 | "
                    "val on noisy labels: student 0.300, teacher 0.250 | 178 img/s x 1 worker")
    assert epoch_summary_line(1, 20, TRAIN, VAL, workers=2, val_labels="noisy").endswith("178 img/s x 2 workers")
    assert epoch_summary_line(1, 20, TRAIN, VAL, val_labels="noisy").endswith("| 178 img/s")
