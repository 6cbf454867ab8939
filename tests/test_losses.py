import math

import torch

from soft_dist.method.losses import consistency_kl, masked_mean, sigmoid_rampup, weighted_cross_entropy


def test_kl_matches_torch_and_handles_zero_targets():
    target = torch.softmax(torch.randn(5, 7), -1)
    student = torch.log_softmax(torch.randn(5, 7), -1)
    expected = torch.nn.functional.kl_div(student, target, reduction="none").sum(-1)
    torch.testing.assert_close(consistency_kl(target, student), expected)
    zero = torch.tensor([[1.0, 0.0, 0.0]])
    out = consistency_kl(zero, torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1))
    assert torch.isfinite(out).all() and out.item() > 0


def test_weighted_ce_scales_logits():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    alpha = torch.full((4, 1), 0.5)
    expected = torch.nn.functional.cross_entropy(logits * 0.5, labels, reduction="none")
    torch.testing.assert_close(weighted_cross_entropy(logits, alpha, labels), expected)
    soft = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(weighted_cross_entropy(logits, alpha, soft), expected)


def test_rampup_shape():
    assert math.isclose(sigmoid_rampup(0, 5), math.exp(-5))
    assert sigmoid_rampup(2.5, 5) < sigmoid_rampup(4, 5) < 1.0
    assert sigmoid_rampup(5, 5) == 1.0 and sigmoid_rampup(9, 5) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0


def test_masked_mean_ignores_padding():
    values = torch.tensor([1.0, 3.0, 100.0])
    assert masked_mean(values, torch.tensor([True, True, False])).item() == 2.0
    assert masked_mean(values, None).item() == values.mean().item()
