"""The pool of best past teachers (soft_dist.method.teacher_pool) and the soft_pool preset's step."""

import copy

import pytest
import torch
from torch import nn

from soft_dist.config import load_config
from soft_dist.data.batches import TwoViewBatch
from soft_dist.method.model import build_student
from soft_dist.method.teacher import module_digest
from soft_dist.method.teacher_pool import TeacherPool
from soft_dist.train.step import SoftLearner


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))


def test_the_pool_keeps_the_best_scores_and_the_newer_of_equal_ones():
    pool = TeacherPool(2)
    teacher = _net(0)
    assert pool.consider(1, 0.5, teacher) and pool.consider(2, 0.7, teacher)
    assert not pool.consider(3, 0.4, teacher)  # worse than both: not copied
    assert pool.consider(4, 0.5, teacher)  # ties the worst: the newer wins
    assert pool.summary() == [{"epoch": 2, "score": 0.7}, {"epoch": 4, "score": 0.5}]
    assert not pool.consider(5, 0.45, teacher)


def test_members_are_frozen_copies_in_eval_mode():
    pool = TeacherPool(1)
    teacher = _net(0).train()
    pool.consider(1, 0.5, teacher)
    before = module_digest(pool.members[0].network)
    with torch.no_grad():
        teacher[0].weight.add_(1.0)  # the live teacher moves on ...
    teacher(torch.randn(5, 4))  # ... and its BatchNorm statistics too
    member = pool.members[0].network
    assert module_digest(member) == before  # ... the snapshot does not
    assert not member.training and not any(p.requires_grad for p in member.parameters())
    member(torch.randn(5, 4))  # eval mode: a forward pass leaves the statistics alone
    assert module_digest(member) == before


def test_the_source_is_the_log_of_the_averaged_softmaxes():
    pool = TeacherPool(2)
    a, b = _net(1), _net(2)
    pool.consider(1, 0.6, a)
    pool.consider(2, 0.8, b)
    view = torch.randn(6, 4)
    current = torch.randn(6, 3)
    out = pool.source_logits(current, view)
    expected = (torch.softmax(current, -1) + torch.softmax(a.eval()(view), -1) + torch.softmax(b.eval()(view), -1)) / 3
    assert torch.allclose(torch.softmax(out, -1), expected, atol=1e-6)
    assert torch.allclose(TeacherPool(3).source_logits(current, view).softmax(-1), current.softmax(-1), atol=1e-6)


def test_state_round_trip_rebuilds_the_same_members():
    pool = TeacherPool(2)
    pool.consider(3, 0.9, _net(1))
    pool.consider(5, 0.8, _net(2))
    again = TeacherPool(2)
    again.load_state_dict(copy.deepcopy(pool.state_dict()), template=_net(7))
    assert again.summary() == pool.summary()
    assert [module_digest(m.network) for m in again.members] == [module_digest(m.network) for m in pool.members]
    assert not again.members[0].network.training


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        TeacherPool(0)


def _learner(method: str) -> SoftLearner:
    cfg = load_config(None, [f"method.name={method}", "method.stage1_epochs=0", "method.rampup_epochs=0",
                             "data.image_size=16", "model.width=16"])
    torch.manual_seed(0)
    student, _ = build_student("resnet18", 4, 16, small_stem=True, pretrained=None, width=16,
                               uncertainty=cfg.preset.head)
    learner = SoftLearner(cfg, student)
    learner.start_epoch(0)
    return learner


def _batch(seed: int) -> TwoViewBatch:
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return TwoViewBatch(x, x.flip(-1), torch.arange(8) % 4, torch.arange(8), torch.ones(8, dtype=torch.bool))


def test_soft_pool_steps_alike_soft_until_the_pool_fills_then_its_source_changes():
    pooled, plain = _learner("soft_pool"), _learner("soft")
    assert pooled.teacher_pool.size == 3 and plain.teacher_pool is None
    for seed in range(3):  # an empty pool: the same source as SOFT, so the same losses
        assert torch.equal(pooled.train_step(_batch(seed), 1.0)["loss"], plain.train_step(_batch(seed), 1.0)["loss"])
    val = {"student": {"accuracy": 0.4, "mean_class_accuracy": 0.4},
           "teacher": {"accuracy": 0.5, "mean_class_accuracy": 0.5}}
    assert pooled.end_epoch(1, val, "accuracy") == [{"epoch": 1, "score": 0.5}]
    assert plain.end_epoch(1, val, "accuracy") is None
    for seed in range(3, 6):  # the teacher moves on; the snapshot of epoch 1 now joins the source
        pooled.train_step(_batch(seed), 1.0)
    view = _batch(9).view_t
    alone = pooled.teacher.teacher(view)
    assert not torch.allclose(pooled._source_logits(None, view).softmax(-1), alone.softmax(-1), atol=1e-4)


def test_the_pool_rides_in_the_learners_state():
    learner = _learner("soft_pool")
    learner.train_step(_batch(0), 1.0)
    learner.end_epoch(1, {"student": {"accuracy": 0.1}, "teacher": {"accuracy": 0.3}}, "accuracy")
    state = copy.deepcopy(learner.state_dict())
    again = _learner("soft_pool")
    again.load_state_dict(state)
    assert again.teacher_pool.summary() == [{"epoch": 1, "score": 0.3}]
    assert module_digest(again.teacher_pool.members[0].network) == module_digest(learner.teacher_pool.members[0].network)
    assert "teacher_pool" not in _learner("soft").state_dict()
