"""The names a user picks a setting from, each list written once.

:mod:`autoselmatch.config` checks a setting against its list, the CLI's
``click.Choice`` offers it, and the code that acts on the name reads it from
here. This module imports nothing, so the CLI reads it without importing
torch (``config`` does, through ``models``). Where a registry holds one
builder per name (:data:`autoselmatch.augment.AUGMENTATIONS`,
:data:`autoselmatch.reproduce.METHODS`), the tests check that it registers
exactly these names; the order here is the one shown to the user.
"""

from __future__ import annotations

#: Training augmentations of ``evaluate.augment`` (one function each in ``augment.AUGMENTATIONS``).
AUGMENTATIONS = ("none", "simple", "dsa", "combined")
#: Augmentations of ``experts.augment``: experts train on real images, so there is no D_distill for ``combined``.
EXPERT_AUGMENTATIONS = ("none", "simple", "dsa")
#: How ``distill.TrajectoryMatcher`` keeps the unrolled student graph (``distill.memory``).
MEMORY_MODES = ("exact", "checkpoint", "tesla")
#: Arithmetic of the unrolled student steps (``distill.precision``): strict fp32, TF32 tensor cores, bf16 autocast.
DISTILL_PRECISIONS = ("fp32", "tf32", "bf16")
#: Initial synthetic set (``distill.init``): the window, random real samples, or Gaussian noise (SRe2L's own init).
DISTILL_INITS = ("window", "random", "noise")
#: Base distillation method (``distill.method``; one entry each in ``distill.METHODS``): trajectory matching,
#: gradient matching with DSA, SRe2L (squeeze, recover, relabel).
DISTILL_METHODS = ("mtt", "dsa", "sre2l")
#: How each base method is written in labels and tables (the papers' spelling).
DISTILL_METHOD_TITLES = {"mtt": "MTT", "dsa": "DSA", "sre2l": "SRe2L"}
#: Where SRe2L's teacher comes from (``distill.sre2l_teacher``): trained and cached, or a cached expert's last snapshot.
SRE2L_TEACHERS = ("train", "expert")
#: What students train on (``distill.mode``).
DISTILL_MODES = ("selmatch", "merge")
#: ``torch.compile`` modes of ``evaluate.compile_mode``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Trial budgets of ``tune.budget``.
TUNE_BUDGETS = ("quick", "paper")
#: What ``tune.choose_on`` compares the candidates of the final choice by.
TUNE_CHOOSE_ON = ("final", "trials")
#: Methods of ``bench reproduce`` in table order (one set builder each in ``reproduce.METHODS``).
REPRODUCE_METHODS = ("random", "hardest", "window", "mtt", "mtt-init", "merge", "selmatch", "full")
#: File formats of an exported set.
EXPORT_FORMATS = ("pt", "npz", "png")

MAX_SEED = 2**63 - 1  # the largest seed: torch.manual_seed's largest non-negative value

__all__ = [
    "AUGMENTATIONS",
    "COMPILE_MODES",
    "DISTILL_INITS",
    "DISTILL_METHODS",
    "DISTILL_MODES",
    "DISTILL_PRECISIONS",
    "EXPORT_FORMATS",
    "EXPERT_AUGMENTATIONS",
    "MAX_SEED",
    "MEMORY_MODES",
    "REPRODUCE_METHODS",
    "SRE2L_TEACHERS",
    "TUNE_BUDGETS",
    "TUNE_CHOOSE_ON",
]
