"""The audit's maths (soft_dist.audit.scores) and the benchmark's pure parts, on hand-made arrays: no
training, no Ray (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from soft_dist.audit import scores as S


def test_scores_on_a_hand_made_example():
    probs = np.array([[0.7, 0.2, 0.1],   # given 0, agrees
                      [0.1, 0.8, 0.1],   # given 0, another class wins clearly
                      [0.4, 0.5, 0.1]])  # given 2, nobody believes it
    given = np.array([0, 0, 2])
    np.testing.assert_allclose(S.score_probability(probs, given), [0.3, 0.9, 0.9])
    np.testing.assert_allclose(S.score_margin(probs, given), [-0.5, 0.7, 0.4])
    t = S.per_class_thresholds(probs, given)
    # class 0: mean p_0 over samples labelled 0 = (0.7 + 0.1) / 2; class 1: nobody labelled 1 -> 1.0
    np.testing.assert_allclose(t, [0.4, 1.0, 0.1])
    conf = S.score_confident(probs, given, t)
    # sample 1: max over k != 0 of (p_k - t_k) = max(0.8 - 1, 0.1 - 0.1) = 0; own 0.1 - 0.4 = -0.3
    np.testing.assert_allclose(conf, [max(0.2 - 1.0, 0.1 - 0.1) - (0.7 - 0.4), 0.3, (0.4 - 0.4) - 0.0], atol=1e-12)
    assert S.ranking(S.score_margin(probs, given)).tolist() == [1, 2, 0]
    np.testing.assert_allclose(S.score_weight(np.array([[0.9], [0.2]])), [0.1, 0.8])


def test_auroc_precision_recall():
    positive = np.array([True, True, False, False, False])
    assert S.auroc(np.array([5, 4, 3, 2, 1.0]), positive) == 1.0
    assert S.auroc(np.array([1, 2, 3, 4, 5.0]), positive) == 0.0
    assert S.auroc(np.ones(5), positive) == 0.5  # ties count one half
    # one positive above all negatives, the other below two of them: (3 + 1) / 6
    assert S.auroc(np.array([9, 1.5, 3, 2, 1.0]), positive) == pytest.approx(4 / 6)
    assert np.isnan(S.auroc(np.ones(3), np.zeros(3, bool)))
    m = S.measure(np.array([9, 1.5, 3, 2, 1.0]), positive)
    assert m["k"] == 2 and m["precision_at_k"] == 0.5 and m["recall_at_2k"] == 1.0  # top 4 holds both


def test_noise_estimate_recovers_a_known_joint():
    """Confident probabilities of the true class: the estimate must equal the truth exactly."""
    rng = np.random.default_rng(0)
    clean = np.repeat(np.arange(4), 50)
    given = clean.copy()
    flip = rng.permutation(len(clean))[:40]
    given[flip] = (clean[flip] + 1 + rng.integers(0, 3, size=40)) % 4
    probs = np.full((len(clean), 4), 0.05)
    probs[np.arange(len(clean)), clean] = 0.85
    est = S.estimate_noise(probs, given)
    truth = S.noise_from_truth(given, clean, 4)
    np.testing.assert_allclose(est["joint"], truth["joint"])
    assert est["rate"] == pytest.approx(truth["rate"]) == pytest.approx(40 / 200)
    assert est["num_noisy"] == 40
    np.testing.assert_allclose(est["transition"].sum(axis=1), 1.0)
    np.testing.assert_allclose(est["rate_per_class"], truth["rate_per_class"])
    # every score ranks the 40 flipped samples first here
    out = S.NetworkOutputs(idx=np.arange(len(clean)), given=given, student=probs, teacher=probs,
                           alpha=np.where(given != clean, 0.1, 0.9))
    for name, values in S.available_scores(out).items():
        assert S.auroc(values, given != clean) == 1.0, name
    assert set(S.available_scores(out)) == set(S.SCORE_NAMES)
    assert S.DEFAULT_SCORE in S.SCORE_NAMES


def test_scores_a_run_cannot_give_are_left_out():
    out = S.NetworkOutputs(idx=np.arange(2), given=np.array([0, 1]), student=np.eye(2))
    assert sorted(S.available_scores(out)) == ["student_confident", "student_margin", "student_prob"]
    with pytest.raises(ValueError, match="unknown score"):
        S.compute_score("nonsense", out)


def test_contiguous_shares_cover_the_split_once():
    from soft_dist.audit.run import contiguous_shares
    from soft_dist.data.format import SplitSelection

    sel = SplitSelection("train", ("train",), np.array([3, 5, 8, 9, 12, 20, 21]))
    shares = contiguous_shares(sel, 3)
    assert [s.idx.tolist() for s in shares] == [[3, 5, 8], [9, 12], [20, 21]]
    assert all(s.sources == ("train",) for s in shares)
    assert len(contiguous_shares(sel, 20)) == 7  # empty shares are dropped


def test_bench_pure_parts():
    from soft_dist.bench.audit import (DIGITS_CLASS_MAP, cleanlab_ranking_score, markdown_table,
                                       setting_overrides, stratified_folds)
    from soft_dist.config import load_config
    from soft_dist.noise.setup import resolve_class_map

    fold = stratified_folds(np.repeat(np.arange(3), 10), 5, seed=1)
    assert np.bincount(fold).tolist() == [6] * 5
    for c in range(3):  # every class spread over the folds
        assert len(set(fold[c * 10:(c + 1) * 10].tolist())) == 5
    score = cleanlab_ranking_score(np.array([4, 1]), np.array([0.9, 0.8, 0.1, 0.5, 0.7]))
    assert S.ranking(score).tolist() == [4, 1, 2, 3, 0]  # flagged in cleanlab's order, then by quality
    cfg = load_config("digits_cpu", setting_overrides("asym30"))
    assert cfg.noise.kind == "asymmetric" and cfg.noise.rate == 0.3
    classes = tuple(str(i) for i in range(10))
    assert resolve_class_map(cfg, classes) == DIGITS_CLASS_MAP
    row = {"auroc": 0.9, "precision_at_k": 0.8, "recall_at_2k": 0.95, "k": 10, "train_s": 10.0, "inference_s": 2.0,
           "compute_s": 12.0}
    text = markdown_table({"sym30": {"soft_audit": {**row, "score": "teacher_prob"}, "ce_loss": row}})
    assert "| sym30 | soft_audit (teacher_prob) | 0.9000 | 0.8000 | 0.9500 | 10 | 10 | 2.0 | 12 |" in text


def test_bench_reports_the_current_default_score_from_cached_results():
    from soft_dist.bench.audit import scores_table, with_headline

    cells = {"teacher_prob": {"auroc": 0.9, "precision_at_k": 0.8, "recall_at_2k": 1.0, "k": 5},
             "mean_margin": {"auroc": 0.95, "precision_at_k": 0.85, "recall_at_2k": 1.0, "k": 5}}
    cached = {**cells["teacher_prob"], "score": "teacher_prob", "all_scores": cells, "compute_s": 3.0}
    result = with_headline(cached, "mean_margin")
    assert result["score"] == "mean_margin" and result["auroc"] == 0.95 and result["compute_s"] == 3.0
    text = scores_table({"sym30": {"soft_audit": result}, "sym50": {"soft_audit": result}})
    assert "| mean_margin | 0.9500 / 0.8500 | 0.9500 / 0.8500 | 0.9500 |" in text


def test_the_scores_module_needs_only_numpy():
    """The scoring maths stays importable without torch, Ray or DALI (and so does the command's --help)."""
    import subprocess
    import sys

    code = ("import sys, soft_dist.audit.scores, soft_dist.cli.audit; "
            "print(sorted(m for m in ('torch', 'ray', 'nvidia.dali', 'cleanlab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_score_follows_what_the_run_has():
    from soft_dist.audit.main import choose_score
    from soft_dist.config import ConfigError

    assert choose_score(None, has_teacher=True, has_head=True) == S.DEFAULT_SCORE
    assert choose_score(None, has_teacher=False, has_head=False).startswith("student_")
    assert choose_score(None, has_teacher=False, has_head=False) in S.SCORE_NAMES
    assert choose_score("teacher_prob", has_teacher=True, has_head=False) == "teacher_prob"
    with pytest.raises(ConfigError, match="--score.*teacher"):
        choose_score("mean_margin", has_teacher=False, has_head=True)
    with pytest.raises(ConfigError, match="--score.*uncertainty head"):
        choose_score("head_weight", has_teacher=True, has_head=False)


def test_a_negative_relabel_count_is_refused_before_the_run_is_read(tmp_path, capsys):
    from soft_dist.cli import main

    out = tmp_path / "audit"
    assert main(["audit", str(tmp_path / "no-run"), "--out", str(out), "--relabel", "-3"]) == 2
    assert "option '--relabel': must be >= 0, got -3" in capsys.readouterr().err
    assert not out.exists()
