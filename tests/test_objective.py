"""The objective (soft_dist.method.objective): which terms each preset has, and their values by hand."""

import math

import pytest
import torch

from soft_dist.config import load_config
from soft_dist.method.objective import consistency_target, soft_objective
from soft_dist.method.presets import METHOD_PRESETS, MethodPreset
from soft_dist.method.sls import soft_label_smoothing


def _batch(seed=0, b=6, c=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g).requires_grad_(), torch.randn(b, c, generator=g),
            torch.randint(0, c, (b,), generator=g))


def _loss(name, epoch=3, progress=10.0, valid=None, alpha=None, **method):
    cfg = load_config(None, [f"method.name={name}", *(f"method.{k}={v}" for k, v in method.items())])
    student, source, labels = _batch()
    loss, parts = soft_objective(cfg.preset, cfg.method, student_logits=student, alpha=alpha, labels=labels,
                                 source_logits=source, valid=valid, epoch=epoch, progress_epochs=progress)
    return loss, parts, (student, source, labels, cfg)


def test_ce_has_no_consistency_term():
    loss, parts, (student, _, labels, _) = _loss("ce")
    assert set(parts) == {"loss_ce"}
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(student, labels))


def test_mean_teacher_adds_lambda_times_kl_to_the_source_softmax():
    loss, parts, (student, source, labels, cfg) = _loss("mt")
    p_t = torch.softmax(source, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student, -1))).sum(-1).mean()
    assert torch.allclose(parts["loss_cons"], kl.detach(), atol=1e-6)
    assert float(parts["lambda"]) == cfg.method.lambda_  # ramp finished at progress 10 > 5 epochs
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(student, labels) + cfg.method.lambda_ * kl)
    assert "share_k_gt_1" not in parts


def test_teacher_agreement_with_the_given_labels_is_logged():
    _, parts, (_, source, labels, _) = _loss("soft", tau=0.3)
    assert float(parts["teacher_agrees"]) == float((source.argmax(-1) == labels).float().mean())
    assert "teacher_agrees" not in _loss("ce")[1]


def test_without_a_given_tau_the_class_count_sets_it():
    # 5 classes from random weights: tau = 0.5 / 5 = 0.1, the value a run resolves and saves
    _, parts, (student, source, _, cfg) = _loss("soft")
    target = soft_label_smoothing(source, 0.5 / 5, cfg.method.epsilon, low_mass="total")
    kl = (torch.xlogy(target, target) - target * torch.log_softmax(student, -1)).sum(-1).mean()
    assert cfg.method.tau is None and torch.allclose(parts["loss_cons"], kl.detach(), atol=1e-6)


def test_the_ramp_scales_the_consistency_weight():
    _, parts, (_, _, _, cfg) = _loss("mt", progress=2.5)
    assert float(parts["lambda"]) == pytest.approx(cfg.method.lambda_ * math.exp(-5 * 0.5 ** 2))


def test_sls_target_and_its_late_start():
    _, parts, (student, source, _, cfg) = _loss("soft", tau=0.3, sls_start_epoch=2)
    target = soft_label_smoothing(source, 0.3, cfg.method.epsilon, low_mass="total")
    kl = (torch.xlogy(target, target) - target * torch.log_softmax(student, -1)).sum(-1).mean()
    assert torch.allclose(parts["loss_cons"], kl.detach(), atol=1e-6)
    assert "share_k_gt_1" in parts
    # before method.sls_start_epoch the same preset is a plain mean teacher
    _, early, _ = _loss("soft", epoch=1, tau=0.3, sls_start_epoch=2)
    _, mt, _ = _loss("mt", epoch=1)
    assert torch.allclose(early["loss_cons"], mt["loss_cons"]) and "share_k_gt_1" not in early


def test_sls_logs_mean_k_and_the_share_of_inverted_targets():
    # an unsure teacher on 5 classes (tau 0.175): rows 0-1 keep 4 classes, so under "total" the one rejected
    # class gets eps = 0.3, above every kept one; row 2 is sure (k = 1), never inverted
    source = torch.log(torch.tensor([[0.24, 0.24, 0.24, 0.24, 0.04], [0.22, 0.22, 0.22, 0.3, 0.04],
                                     [0.9, 0.025, 0.025, 0.025, 0.025]]))
    student = torch.zeros(3, 5, requires_grad=True)
    for low_mass, inverted in (("total", 2 / 3), ("per_class", 0.0)):
        cfg = load_config(None, ["method.name=soft", f"method.sls_low_mass={low_mass}"])
        _, parts = soft_objective(cfg.preset, cfg.method, student_logits=student, alpha=None,
                                  labels=torch.tensor([0, 1, 2]), source_logits=source, valid=None, epoch=3,
                                  progress_epochs=10.0)
        assert float(parts["mean_k"]) == pytest.approx(3.0)
        assert float(parts["share_inverted"]) == pytest.approx(inverted)


def test_padding_rows_do_not_count():
    valid = torch.tensor([True, True, True, False, False, False])
    loss, _, (student, source, labels, cfg) = _loss("mt", valid=valid)
    cfg_rows = soft_objective(cfg.preset, cfg.method, student_logits=student[:3], alpha=None, labels=labels[:3],
                              source_logits=source[:3], valid=None, epoch=3, progress_epochs=10.0)[0]
    assert torch.allclose(loss, cfg_rows)


def test_sls_on_the_student_smooths_the_student_side_only():
    preset = METHOD_PRESETS["sls_student"]
    student, source, _ = _batch()
    target, log_probs, smoothing, sample_epsilon = consistency_target(preset, source, student, tau=0.3,
                                                                      epsilon=0.3, low_mass="total")
    assert torch.allclose(target, torch.softmax(source, -1))
    student_sls = soft_label_smoothing(student.detach(), 0.3, 0.3, low_mass="total")
    assert torch.allclose(log_probs.exp(), student_sls, atol=1e-6)
    assert smoothing is not None and sample_epsilon is None


def test_a_teacher_preset_needs_source_logits_and_presets_are_checked():
    cfg = load_config(None, ["method.name=mt"])
    student, _, labels = _batch()
    with pytest.raises(ValueError, match="source_logits"):
        soft_objective(cfg.preset, cfg.method, student_logits=student, alpha=None, labels=labels,
                       source_logits=None, valid=None, epoch=0, progress_epochs=0.0)
    with pytest.raises(ValueError, match="target"):
        MethodPreset(teacher=True, target="kl", summary="x")


def test_per_sample_epsilon_follows_the_teachers_entropy():
    """soft_eps: a confident source row keeps its top class almost whole, a uniform-ish one is smoothed by
    nearly the full method.epsilon; the mean epsilon is logged."""
    preset = METHOD_PRESETS["soft_eps"]
    source = torch.tensor([[12.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0, 0.05], [2.0, 1.5, 0.0, 0.0, 0.0]])
    student = torch.zeros(3, 5, requires_grad=True)
    target, _, _, sample_epsilon = consistency_target(preset, source, student, tau=0.175, epsilon=0.3,
                                                      low_mass="total")
    assert sample_epsilon.shape == (3, 1)
    assert float(sample_epsilon[0]) < 0.01 and float(sample_epsilon[1]) > 0.29
    assert 0.01 < float(sample_epsilon[2]) < 0.29
    for row in range(3):  # each row is SLS with its own epsilon
        expected = soft_label_smoothing(source[row:row + 1], 0.175, float(sample_epsilon[row]), low_mass="total")
        assert torch.allclose(target[row:row + 1], expected, atol=1e-6)
    assert torch.allclose(target.sum(-1), torch.ones(3))
    _, parts, (_, source, _, _) = _loss("soft_eps")
    assert 0.0 < float(parts["epsilon_mean"]) < 0.3 and "epsilon_mean" not in _loss("soft")[1]


def test_per_sample_epsilon_needs_sls_targets():
    with pytest.raises(ValueError, match="epsilon_per_sample"):
        MethodPreset(teacher=True, target="softmax", epsilon_per_sample=True, summary="x")
