"""The methods a run can train (``method.name``): SOFT and the rows of the paper's Tables 1 and 3.

Each method is a :class:`MethodPreset`, a small typed record of how the student is supervised. The
objective (soft_dist.method.objective) reads only these switches, so adding an ablation is one entry here.
No torch here: the config system imports this module to validate ``method.name``.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("none", "softmax", "sls", "lsr_star")
SLS_BRANCHES = ("teacher", "student", "both")
CE_TARGETS = ("onehot", "lsr")


# How SLS gives its smoothing mass to the classes below tau (method.sls_low_mass):
#   total     the paper's Eq. 4: the low classes share eps, eps / (C - k) each, whatever their number;
#   per_class each low class gets eps / (C - 1), LSR's share per class, so the low part totals
#             eps (C - k) / (C - 1): the same as "total" at k = 1, less as k grows.
# Why per_class exists: with "total" and an unsure teacher (many classes above tau, few below) the few low
# classes get more of the target than the classes the teacher keeps, e.g. C = 10, k = 9: the one class the
# teacher rejects gets 0.3, each kept class about 0.08. Under per_class a low class gets
# eps / (C - 1) < (1 - eps) tau whenever eps / (1 - eps) < tau (C - 1), true for the defaults at any C >= 2.
LOW_MASS_RULES = ("total", "per_class")


@dataclass(frozen=True)
class MethodPreset:
    """How one method supervises the student.

    teacher: an EMA teacher exists; its logits are the source of the consistency target.
    target: how the consistency target is made from the source logits: none (no consistency loss),
        softmax (plain mean teacher), sls (soft label smoothing, Eq. 3-5), lsr_star (label smoothing of the
        source's top-1 class).
    sls_on: with target sls, whose logits are smoothed: teacher, student or both.
    head: the uncertainty head weights the cross-entropy after stage 1 (paper Sec. 3.3).
    ce_target: the classification target: onehot, or lsr (label smoothing of the given label, Eq. 1-2).
    epsilon_per_sample: with target sls, each sample's smoothing mass is method.epsilon times the source's
        normalised entropy on it (0 for a one-hot source, method.epsilon for a uniform one), so samples the
        teacher is unsure of are smoothed more; off: method.epsilon for every sample (the paper).
    teacher_pool: how many of the best past teachers (by validation score, frozen at the end of their
        epoch) are averaged with the current teacher as the consistency source; 0: the current teacher alone.
    pinned: method fields this preset fixes whatever the config says, as (field, value) pairs; the
        resolved config (and the run's saved config.yaml) shows the pinned value.
    summary: one line for the docs.
    """

    teacher: bool
    target: str
    summary: str
    sls_on: str = "teacher"
    head: bool = False
    ce_target: str = "onehot"
    epsilon_per_sample: bool = False
    teacher_pool: int = 0
    pinned: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        for name, value, allowed in (("target", self.target, TARGETS), ("sls_on", self.sls_on, SLS_BRANCHES),
                                     ("ce_target", self.ce_target, CE_TARGETS)):
            if value not in allowed:
                raise ValueError(f"MethodPreset.{name} must be one of {allowed}, got {value!r}")
        if self.target == "none" and self.teacher:
            raise ValueError("a preset with a teacher needs a consistency target")
        if self.epsilon_per_sample and self.target != "sls":
            raise ValueError("epsilon_per_sample smooths SLS targets: it needs target 'sls'")
        if self.teacher_pool < 0 or (self.teacher_pool and not self.teacher):
            raise ValueError(f"teacher_pool must be >= 0 and needs a teacher, got {self.teacher_pool}")


METHOD_PRESETS: dict[str, MethodPreset] = {
    # Table 1
    "ce": MethodPreset(teacher=False, target="none", summary="plain cross-entropy, no teacher"),
    "mt": MethodPreset(teacher=True, target="softmax", summary="mean teacher: KL to the EMA teacher's softmax"),
    "mt_sls": MethodPreset(teacher=True, target="sls", summary="mean teacher with SLS targets, no uncertainty head"),
    "soft": MethodPreset(teacher=True, target="sls", head=True,
                         summary="SOFT: SLS targets from the teacher plus the uncertainty-weighted CE"),
    # Table 1 row "SLS" on a vanilla network: the student's own detached logits, smoothed, as target.
    "sls_self": MethodPreset(teacher=False, target="sls", sls_on="student",
                             summary="no teacher: the student's own detached logits, smoothed, as target"),
    # Table 3 (all with the uncertainty head): its first row, the smoothing variants and the SLS targets.
    "mt_unc": MethodPreset(teacher=True, target="softmax", head=True,
                           summary="mean teacher plus the uncertainty head (Table 3, first row)"),
    "lsr": MethodPreset(teacher=True, target="softmax", head=True, ce_target="lsr",
                        summary="label smoothing (epsilon) of the given label in the CE"),
    "lsr_star": MethodPreset(teacher=True, target="lsr_star", head=True,
                             summary="label smoothing of the teacher's top-1 class as consistency target"),
    "sls0": MethodPreset(teacher=True, target="sls", head=True, pinned=(("epsilon", 0.0),),
                         summary="SLS with epsilon pinned at 0: the high classes renormalised, zero on the rest"),
    "sls_student": MethodPreset(teacher=True, target="sls", sls_on="student", head=True,
                                summary="SLS applied to the student's distribution instead of the teacher's"),
    # Past the paper (issue 24): SOFT whose smoothing follows the teacher's uncertainty per sample.
    "soft_eps": MethodPreset(teacher=True, target="sls", head=True, epsilon_per_sample=True,
                             summary="SOFT with a per-sample epsilon: method.epsilon times the teacher's "
                                     "normalised entropy on the sample"),
    # ... and SOFT whose SLS source is the current teacher averaged with the 3 best past ones.
    "soft_pool": MethodPreset(teacher=True, target="sls", head=True, teacher_pool=3,
                              summary="SOFT with the SLS source averaged over the teacher and the 3 best past "
                                      "teachers on validation"),
    "sls_both": MethodPreset(teacher=True, target="sls", sls_on="both", head=True,
                             summary="SLS applied to both the teacher's and the student's distributions"),
}
