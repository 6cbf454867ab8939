"""EMA teacher: decay extremes, name pairing with the student's head, warm-up, buffers, no gradients."""

import pytest
import torch
from torch import nn

from soft_dist.config import MethodConfig
from soft_dist.method.model import ExpressionNet
from soft_dist.method.teacher import EmaTeacher, module_digest


def tiny_student(seed=0, head=True):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return ExpressionNet(backbone, 4, 3, uncertainty=head)


def teacher_args(**changes):
    """The default config's teacher settings (method.ema_decay, ema_warmup, teacher_buffers), with the
    ``changes`` a test is about."""
    m = MethodConfig()
    return {"decay": m.ema_decay, "warmup": m.ema_warmup, "buffer_policy": m.teacher_buffers, **changes}


def perturb(module, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def test_decay_zero_copies_student():
    student = tiny_student()
    ema = EmaTeacher.from_student(student, **teacher_args(decay=0.0, warmup=False))
    perturb(student)
    ema.update()
    for name, p in ema.teacher.named_parameters():
        torch.testing.assert_close(p, dict(student.named_parameters())[name], rtol=0, atol=0)


def test_decay_one_keeps_teacher():
    student = tiny_student()
    ema = EmaTeacher.from_student(student, **teacher_args(decay=1.0, warmup=False))
    before = module_digest(ema.teacher)
    perturb(student)
    ema.update()
    assert module_digest(ema.teacher) == before


def test_pairs_by_name_with_head_present():
    student = tiny_student()
    ema = EmaTeacher.from_student(student, **teacher_args(decay=0.5, warmup=False))
    assert ema.student_only == ["uncertainty.bias", "uncertainty.weight"]
    assert ema.teacher.uncertainty is None and student.uncertainty is not None
    t0 = {n: p.clone() for n, p in ema.teacher.named_parameters()}
    perturb(student)
    ema.update()
    s = dict(student.named_parameters())
    for name, p in ema.teacher.named_parameters():
        torch.testing.assert_close(p, 0.5 * t0[name] + 0.5 * s[name])


def test_unknown_student_only_parameter_is_an_error():
    student = tiny_student()
    teacher = student.without_head()
    student.extra = nn.Linear(2, 2)  # not a known head: must not be silently ignored
    with pytest.raises(ValueError, match="extra"):
        EmaTeacher(student, teacher, **teacher_args())


def test_mismatched_shapes_are_an_error():
    student = tiny_student()
    teacher = ExpressionNet(tiny_student().backbone, 4, 5, uncertainty=False)  # 5 classes, not 3
    with pytest.raises(ValueError, match="shape mismatch for .classifier"):
        EmaTeacher(student, teacher, **teacher_args())


def test_warmup_schedule():
    ema = EmaTeacher.from_student(tiny_student(), **teacher_args(decay=0.999, warmup=True))
    used = [ema.update() for _ in range(4)]
    assert used == pytest.approx([0.0, 0.5, 2 / 3, 0.75])
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_teacher_gets_no_gradient():
    student = tiny_student()
    ema = EmaTeacher.from_student(student, **teacher_args())
    assert not any(p.requires_grad for p in ema.teacher.parameters())
    x = torch.randn(2, 3, 8, 8)
    loss = student(x).sum() + ema.teacher(x).sum()
    loss.backward()
    assert all(p.grad is None for p in ema.teacher.parameters())
    assert student.classifier.weight.grad is not None


@pytest.mark.parametrize("policy", ["own", "copy", "ema"])
def test_buffer_policies(policy):
    student = tiny_student()
    ema = EmaTeacher.from_student(student, decay=0.5, warmup=False, buffer_policy=policy)
    student.train()
    student(torch.randn(4, 3, 8, 8) + 3.0)  # moves the student's BN running stats
    t_mean = ema.teacher.backbone[1].running_mean.clone()
    s_mean = student.backbone[1].running_mean.clone()
    ema.update()
    got = ema.teacher.backbone[1].running_mean
    expected = {"own": t_mean, "copy": s_mean, "ema": 0.5 * t_mean + 0.5 * s_mean}[policy]
    torch.testing.assert_close(got, expected)
    if policy != "own":
        assert ema.teacher.backbone[1].num_batches_tracked.item() == student.backbone[1].num_batches_tracked.item()


def test_sync_batchnorm_converts_the_student_only_and_the_ema_still_follows_it():
    from soft_dist.config import load_config
    from soft_dist.method.model import build_student
    from soft_dist.train.step import SoftLearner

    cfg = load_config(None, ["data.image_size=16", "model.width=16"])
    student, _ = build_student("resnet18", 4, 16, True, None, width=16, uncertainty=True)
    learner = SoftLearner(cfg, student, sync_batchnorm=True)
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert "SyncBatchNorm" in kinds(learner.student) and "BatchNorm2d" not in kinds(learner.student)
    assert "SyncBatchNorm" not in kinds(learner.teacher.teacher)  # no collective in the teacher's forward
    # the converted layers kept the tensors the EMA reads: a change to the student reaches the teacher
    bn = next(m for m in learner.student.modules() if type(m).__name__ == "SyncBatchNorm")
    with torch.no_grad():
        bn.weight.add_(1.0)
    before = sum(float(p.sum()) for p in learner.teacher.teacher.parameters())
    learner.teacher.update()
    assert sum(float(p.sum()) for p in learner.teacher.teacher.parameters()) > before
