"""The training objective of SOFT and its ablations (paper Eq. 9), given the logits of one batch.

    loss = mean_valid L_WCE(alpha * z_s, y) + lambda * ramp(t) * mean_valid KL(target || p_s)

z_s are the student's logits, alpha the uncertainty head's output (None before stage 2 or without a head),
y the (noisy) label or its LSR, and ``target`` the consistency target made from the source logits (the EMA
teacher's, or the student's own detached logits for sls_self) as the method's preset says. Forward passes,
the optimizer and the EMA update are the learner's job (soft_dist.train.step); this module only turns
logits into a loss, so it can be read and tested on its own.
"""

from __future__ import annotations

import torch

from soft_dist.method.losses import consistency_kl, masked_mean, sigmoid_rampup, weighted_cross_entropy
from soft_dist.method.presets import MethodPreset
from soft_dist.method.sls import (
    entropy_scaled_epsilon,
    label_smoothing,
    label_smoothing_top1,
    soft_label_smoothing_with_k,
    SmoothedTarget,
)


def consistency_target(
    preset: MethodPreset,
    source_logits: torch.Tensor,
    student_logits: torch.Tensor,
    *,
    tau: float,
    epsilon: float,
    low_mass: str,
    sls_active: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, SmoothedTarget | None, torch.Tensor | None]:
    """The consistency target and the student's log-probabilities it is compared with.

    source_logits: [B, C] float32 without gradient (teacher, or detached student for a teacherless preset);
    student_logits: [B, C] float32 with gradient;
    low_mass: how SLS shares epsilon among the classes below tau (soft_dist.method.presets.LOW_MASS_RULES);
    sls_active: False during the plain mean-teacher epochs before ``method.sls_start_epoch``.
    Returns target [B, C] (rows sum to 1, no gradient), student log-probs [B, C] (with gradient), the SLS
    that made the target (k [B] and inverted [B]) when SLS made it, else None, and the per-sample epsilon
    [B, 1] when the preset sets one (epsilon_per_sample), else None.
    """
    kind = preset.target
    if kind == "sls" and not sls_active:
        kind = "softmax"
    smooth_source = preset.sls_on in ("teacher", "both") or not preset.teacher
    smooth_student = kind == "sls" and preset.sls_on in ("student", "both") and preset.teacher
    smoothing = None
    sample_epsilon = None
    if kind == "sls" and preset.epsilon_per_sample:
        # the source's uncertainty sets each sample's smoothing, also where the student's side is smoothed
        sample_epsilon = entropy_scaled_epsilon(source_logits, epsilon)
        epsilon = sample_epsilon
    if kind == "lsr_star":
        target = label_smoothing_top1(source_logits, epsilon)
    elif kind == "sls" and smooth_source:
        smoothing = soft_label_smoothing_with_k(source_logits, tau, epsilon, low_mass=low_mass)
        target = smoothing.target
    else:  # softmax, or SLS on the student only: the source's plain softmax is the target
        target = torch.softmax(source_logits, dim=-1)
    if smooth_student:
        student_smoothing = soft_label_smoothing_with_k(student_logits, tau, epsilon, low_mass=low_mass)
        student_log_probs = torch.log(student_smoothing.target.clamp(min=1e-12))
        smoothing = smoothing if smoothing is not None else student_smoothing
    else:
        student_log_probs = torch.log_softmax(student_logits, dim=-1)
    return target, student_log_probs, smoothing, sample_epsilon


def soft_objective(
    preset: MethodPreset,
    method,
    *,
    student_logits: torch.Tensor,
    alpha: torch.Tensor | None,
    labels: torch.Tensor,
    source_logits: torch.Tensor | None,
    valid: torch.Tensor | None,
    epoch: int,
    progress_epochs: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch and its detached parts for logging.

    preset: the method's switches; method: its numbers (soft_dist.config.MethodConfig: tau, epsilon,
        lambda_, rampup_epochs, sls_start_epoch);
    student_logits: [B, C] float32 with gradient; alpha: [B, 1] in (0, 1) or None;
    labels: [B] int64 training labels (noisy); source_logits: [B, C] without gradient, or None when the
        preset has no consistency term; valid: [B] bool (False marks padding rows) or None;
    epoch: the 0-based epoch; progress_epochs: epochs done including the fraction of this one (the ramp).
    Returns (loss scalar with gradient, {loss_ce, loss_cons, lambda, share_k_gt_1, mean_k, share_inverted,
    teacher_agrees: detached scalars}); teacher_agrees is the share of rows whose given label is the
    consistency source's arg-max; share_inverted the share whose SLS target ranks a class below tau above
    one above it.
    """
    num_classes = student_logits.shape[-1]
    ce_target = label_smoothing(labels, num_classes, method.epsilon) if preset.ce_target == "lsr" else labels
    loss_ce = masked_mean(weighted_cross_entropy(student_logits, alpha, ce_target), valid)
    parts = {"loss_ce": loss_ce.detach()}
    if preset.target == "none":
        return loss_ce, parts
    if source_logits is None:
        raise ValueError(f"a preset with target {preset.target!r} needs source_logits")
    target, student_log_probs, smoothing, sample_epsilon = consistency_target(
        preset, source_logits, student_logits, tau=method.tau_for(num_classes), epsilon=method.epsilon,
        low_mass=method.sls_low_mass, sls_active=epoch >= method.sls_start_epoch,
    )
    loss_cons = masked_mean(consistency_kl(target, student_log_probs), valid)
    weight = method.lambda_ * sigmoid_rampup(progress_epochs, method.rampup_epochs)
    parts["loss_cons"] = loss_cons.detach()
    parts["lambda"] = torch.tensor(weight)
    # Lock-in shows here: a teacher that stops agreeing with the given labels while its SLS targets turn
    # hard (share_k_gt_1 falls) is training the student on its own mistakes.
    parts["teacher_agrees"] = masked_mean((source_logits.argmax(dim=-1) == labels).float(), valid).detach()
    if smoothing is not None:
        parts["share_k_gt_1"] = masked_mean((smoothing.k > 1).float(), valid).detach()
        parts["mean_k"] = masked_mean(smoothing.k.float(), valid).detach()
        # an unsure source under low_mass "total" ranks rejected classes above kept ones (presets.LOW_MASS_RULES)
        parts["share_inverted"] = masked_mean(smoothing.inverted.float(), valid).detach()
    if sample_epsilon is not None:
        parts["epsilon_mean"] = masked_mean(sample_epsilon.squeeze(-1), valid).detach()
    return loss_ce + weight * loss_cons, parts
