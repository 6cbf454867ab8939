"""SLS (Eq. 3-4) against values worked by hand, its edge rules, and the LSR baselines."""

import math

import pytest
import torch

from soft_dist.method.presets import LOW_MASS_RULES
from soft_dist.method.sls import (
    entropy_scaled_epsilon,
    label_smoothing,
    label_smoothing_top1,
    soft_label_smoothing,
    soft_label_smoothing_with_k,
)


def logits_for(probs):
    """Logits whose softmax is exactly ``probs`` (log of a distribution)."""
    return torch.log(torch.tensor([probs], dtype=torch.float64)).float()


def test_two_high_classes_worked_by_hand():
    # q = (0.5, 0.3, 0.1, 0.1), tau = 0.2 -> high = {0, 1}, k = 2, high mass 0.8, eps = 0.2
    # y0 = 0.8 * 0.5 / 0.8 = 0.5; y1 = 0.8 * 0.3 / 0.8 = 0.3; low = 0.2 / 2 = 0.1
    out = soft_label_smoothing_with_k(logits_for([0.5, 0.3, 0.1, 0.1]), tau=0.2, epsilon=0.2, low_mass="total")
    torch.testing.assert_close(out.target, torch.tensor([[0.5, 0.3, 0.1, 0.1]]), atol=1e-6, rtol=0)
    assert out.k.tolist() == [2]


def test_one_high_class_is_lsr_worked_by_hand():
    # q = (0.7, 0.2, 0.1), tau = 0.25 -> k = 1: y0 = 1 - eps = 0.7, others eps / 2 = 0.15
    out = soft_label_smoothing(logits_for([0.7, 0.2, 0.1]), tau=0.25, epsilon=0.3, low_mass="total")
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.15, 0.15]]), atol=1e-6, rtol=0)


def test_three_of_five_high_worked_by_hand():
    # q = (0.3, 0.25, 0.2, 0.15, 0.1), tau = 0.18 -> high = {0,1,2}, mass 0.75, eps = 0.4
    # high: 0.6 * q / 0.75 -> 0.24, 0.2, 0.16 ; low: 0.4 / 2 = 0.2
    out = soft_label_smoothing(logits_for([0.3, 0.25, 0.2, 0.15, 0.1]), tau=0.18, epsilon=0.4, low_mass="total")
    torch.testing.assert_close(out, torch.tensor([[0.24, 0.2, 0.16, 0.2, 0.2]]), atol=1e-6, rtol=0)


def test_k_zero_promotes_argmax():
    # all q = 0.25 < tau = 0.3: the official code divides by zero; our rule makes the arg-max high.
    q = [0.4, 0.2, 0.2, 0.2]
    out = soft_label_smoothing_with_k(logits_for(q), tau=0.45, epsilon=0.3, low_mass="total")
    assert out.k.tolist() == [1]
    torch.testing.assert_close(out.target, torch.tensor([[0.7, 0.1, 0.1, 0.1]]), atol=1e-6, rtol=0)


def test_k_equals_c_returns_q():
    q = [0.4, 0.35, 0.25]
    out = soft_label_smoothing_with_k(logits_for(q), tau=0.1, epsilon=0.3, low_mass="total")
    assert out.k.tolist() == [3]
    torch.testing.assert_close(out.target, torch.tensor([q]), atol=1e-6, rtol=0)


def test_per_class_low_mass_worked_by_hand():
    # the example above, per_class: m = eps (C - k) / (C - 1) = 0.4 * 2 / 4 = 0.2
    # high: 0.8 * q / 0.75 -> 0.32, 0.26667, 0.21333 ; low: 0.2 / 2 = 0.1 = eps / (C - 1)
    # "total" gave the rejected classes 0.2 each, more than the kept class 2 (0.16): an inverted target
    logits = logits_for([0.3, 0.25, 0.2, 0.15, 0.1])
    out = soft_label_smoothing_with_k(logits, tau=0.18, epsilon=0.4, low_mass="per_class")
    torch.testing.assert_close(out.target, torch.tensor([[0.32, 0.8 / 3, 0.16 / 0.75, 0.1, 0.1]]), atol=1e-6, rtol=0)
    assert out.inverted.tolist() == [False]
    assert soft_label_smoothing_with_k(logits, tau=0.18, epsilon=0.4, low_mass="total").inverted.tolist() == [True]


def test_per_class_equals_the_paper_at_one_high_class():
    logits = logits_for([0.7, 0.2, 0.1])
    torch.testing.assert_close(soft_label_smoothing(logits, tau=0.25, epsilon=0.3, low_mass="per_class"),
                               soft_label_smoothing(logits, tau=0.25, epsilon=0.3, low_mass="total"))


def test_per_class_never_inverts_at_the_default_tau_and_epsilon():
    # tau = 0.875 / C, eps = 0.3: a rejected class gets eps / (C - 1) < (1 - eps) tau, below every kept one
    g = torch.Generator().manual_seed(0)
    for num_classes in (2, 3, 7, 10, 100):
        logits = torch.randn(512, num_classes, generator=g) * torch.rand(512, 1, generator=g) * 4
        tau = 0.875 / num_classes
        assert not soft_label_smoothing_with_k(logits, tau, 0.3, low_mass="per_class").inverted.any()
        if num_classes >= 7:  # unsure rows keep many classes, and "total" hands their few rejected ones eps
            assert soft_label_smoothing_with_k(logits, tau, 0.3, low_mass="total").inverted.any()


def test_an_unknown_low_mass_rule_is_refused():
    with pytest.raises(ValueError, match="low_mass"):
        soft_label_smoothing(logits_for([0.5, 0.5]), tau=0.2, epsilon=0.1, low_mass="paper")


def test_epsilon_zero_zeroes_low_classes():
    out = soft_label_smoothing(logits_for([0.5, 0.3, 0.1, 0.1]), tau=0.2, epsilon=0.0, low_mass="total")
    torch.testing.assert_close(out, torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "logits",
    [
        torch.tensor([[1e4, -1e4, 0.0, 5.0]]),
        torch.tensor([[-1e4, -1e4, -1e4, -1e4]]),
        torch.tensor([[3.0, 3.0, 3.0, 3.0]]),
        torch.tensor([[1e4, 1e4, -1e4, -1e4]]),
        torch.randn(64, 7) * 30,
    ],
)
@pytest.mark.parametrize("tau", [1e-6, 0.125, 0.5, 0.999])
@pytest.mark.parametrize("eps", [0.0, 0.3, 0.99])
@pytest.mark.parametrize("low_mass", LOW_MASS_RULES)
def test_rows_sum_to_one_and_finite(logits, tau, eps, low_mass):
    out = soft_label_smoothing(logits, tau, eps, low_mass=low_mass)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(len(logits)), atol=1e-5, rtol=0)


def test_bf16_logits_are_computed_in_float32():
    logits = torch.randn(8, 7).bfloat16()
    out = soft_label_smoothing(logits, 0.125, 0.3, low_mass="total")
    assert out.dtype == torch.float32


def test_lsr_and_lsr_star():
    y = label_smoothing(torch.tensor([2, 0]), 4, 0.3)
    torch.testing.assert_close(y, torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]]))
    star = label_smoothing_top1(torch.tensor([[0.1, 5.0, 0.2, 4.9]]), 0.3)
    torch.testing.assert_close(star, torch.tensor([[0.1, 0.7, 0.1, 0.1]]))
    assert math.isclose(float(star.sum()), 1.0, rel_tol=1e-6)


def test_tau_above_uniform_note_names_the_ratio_of_the_paper():
    from soft_dist.method.sls import tau_above_uniform_note

    assert tau_above_uniform_note(0.125, 7, 0.875) is None  # the paper: 1/8 for 7 classes
    assert tau_above_uniform_note(0.125, 8, 0.875) is None  # exactly uniform is not above it
    note = tau_above_uniform_note(0.125, 10, 0.875)
    assert note and "1/10" in note and "0.0875" in note
    assert tau_above_uniform_note(0.0875, 10, 0.875) is None


def test_entropy_scaled_epsilon_worked_by_hand():
    # uniform over 4 classes: entropy log 4, the whole epsilon; one-hot: none; two equal classes: half
    logits = torch.log(torch.tensor([[0.25] * 4, [1.0, 1e-30, 1e-30, 1e-30], [0.5, 0.5, 1e-30, 1e-30]]))
    eps = entropy_scaled_epsilon(logits, 0.4)
    assert eps.shape == (3, 1)
    assert torch.allclose(eps.squeeze(-1), torch.tensor([0.4, 0.0, 0.2]), atol=1e-5)


def test_sls_with_one_epsilon_per_sample_is_sls_row_by_row():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))
    eps = torch.tensor([[0.0], [0.1], [0.3], [0.5], [0.9]])
    batch = soft_label_smoothing_with_k(logits, 0.125, eps, low_mass="total")
    for row in range(5):
        alone = soft_label_smoothing_with_k(logits[row:row + 1], 0.125, float(eps[row]), low_mass="total")
        assert torch.allclose(batch.target[row:row + 1], alone.target) and batch.k[row] == alone.k[0]
    assert torch.allclose(batch.target.sum(-1), torch.ones(5))
