"""Typed run settings and the presets in ``configs/``.

A run is described by one frozen :class:`RunConfig` made of per-stage
sections. Presets are TOML files (``configs/<name>.toml``) whose tables
mirror the sections; the CLI loads the preset named after the dataset (or
``--preset``), applies flag overrides and ``--set section.key=value``, and
passes the result down. ``to_dict`` gives the plain form stored in study
user attrs and manifests, so a run can be repeated exactly.

    cfg = load_preset("digits")
    cfg = apply_overrides(cfg, {"distill.iterations": 50, "seed": 3})
    print(format_config(cfg))
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .choices import (AUGMENTATIONS, COMPILE_MODES, DISTILL_INITS, DISTILL_METHODS, DISTILL_MODES, DISTILL_PRECISIONS,
                      EXPERT_AUGMENTATIONS, MAX_SEED, MEMORY_MODES, REPRODUCE_METHODS, SRE2L_TEACHERS,
                      TUNE_BUDGETS, TUNE_CHOOSE_ON)
from .data import check_image_size
from .errors import InvalidArgument
from .models import ModelSpec
from .runtime import DEVICES
from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also refuses nan
        raise InvalidArgument(f"{name} must be in [{low}, {high}], got {value}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgument(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how its validation split is carved, and ``image_size``: the square side every image
    is resized to at load, for any dataset (``None``: its own size; see :func:`autoselmatch.data.load_dataset`).

    ``flip``: whether a horizontal mirror keeps an image's class. The simple augmentation (random crop +
    flip: real rows under ``combined``, ``simple`` training, the SRe2L teacher) flips only when it does;
    handwriting (``digits``, MNIST) sets it false. DSA keeps its own strategies (``distill.dsa_strategies``).
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.05
    split_seed: int = 0
    image_size: int | None = None
    flip: bool = True

    def __post_init__(self) -> None:
        _check_range("data.val_fraction", self.val_fraction, 0.0, 0.5)
        check_image_size("data.image_size", self.image_size)


@dataclass(frozen=True)
class ScoreConfig:
    """Difficulty score: ``name`` in {cscore, el2n, forgetting, learning-speed}; ``file`` overrides download/compute.

    ``file`` always wins: a published file (C-scores, the forgetting counts of
    CIFAR or Tiny ImageNet) is used when it is given. Otherwise ``cscore`` is
    downloaded (CIFAR-10/100 only), ``el2n`` is computed by its own networks,
    and ``forgetting`` and ``learning-speed`` are derived from the correctness
    records of the run's expert trajectories (``experts`` settings; trained
    when missing, reused without extra training when cached).
    ``epochs`` and ``networks`` set how EL2N's networks are trained;
    ``model``, ``lr``, ``momentum``, ``weight_decay`` and ``batch_size``
    describe them (plain SGD, no augmentation). They do not apply to the
    expert-derived scores.
    """

    name: str = "el2n"
    file: str | None = None
    epochs: int = 10
    networks: int = 4
    model: ModelSpec = field(default_factory=lambda: ModelSpec("convnet", {"depth": 3, "width": 32, "norm": "batch"}))
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("epochs", "networks", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"scores.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InvalidArgument(f"scores.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ExpertConfig:
    """Expert trajectories: ``num_experts`` networks trained on the real training split.

    ``epochs = None`` means enough epochs to store ``distill.max_start_epoch +
    distill.expert_epochs`` snapshots, the only ones distillation ever reads.
    ``snapshot_every`` is the number of SGD steps between stored parameter
    rows; None (the default) stores one row per epoch, the layout and cache
    key of experts trained before the setting existed. With it set,
    ``distill.expert_epochs`` and ``distill.max_start_epoch`` count stored
    rows (snapshots) instead of epochs. ``augment`` is ``none``, ``simple``
    or ``dsa`` (``combined`` needs a selected/distilled split experts do not
    have). ``zca`` whitens images with a transform fitted on the training split
    (eigenvalue regulariser ``zca_eps``, kornia's default as in MTT).
    """

    model: ModelSpec = field(default_factory=lambda: ModelSpec("convnet", {"depth": 3, "width": 128, "norm": "batch"}))
    num_experts: int = 100
    epochs: int | None = None
    snapshot_every: int | None = None
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augment: str = "dsa"
    zca: bool = False
    zca_eps: float = 0.1

    def __post_init__(self) -> None:
        _check_choice("experts.augment", self.augment, EXPERT_AUGMENTATIONS)
        if self.num_experts < 1:
            raise InvalidArgument(f"experts.num_experts must be >= 1, got {self.num_experts}")
        if self.epochs is not None and self.epochs < 1:
            raise InvalidArgument(f"experts.epochs must be >= 1, got {self.epochs}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise InvalidArgument(f"experts.snapshot_every must be >= 1 SGD steps (or unset: one epoch), "
                                  f"got {self.snapshot_every}")
        if self.lr <= 0:
            raise InvalidArgument(f"experts.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise InvalidArgument(f"experts.batch_size must be >= 1, got {self.batch_size}")
        if self.momentum < 0:
            raise InvalidArgument(f"experts.momentum must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise InvalidArgument(f"experts.weight_decay must be >= 0, got {self.weight_decay}")
        if self.zca_eps <= 0:
            raise InvalidArgument(f"experts.zca_eps must be > 0, got {self.zca_eps}")


@dataclass(frozen=True)
class DistillConfig:
    """Trajectory matching (eq. 1) with SelMatch's selection init and partial update.

    Args:
        syn_steps: N, student steps per iteration.
        expert_epochs: M, expert epochs the student must match (stored snapshots
            when ``experts.snapshot_every`` is set).
        max_start_epoch: T+, start epochs (snapshots when ``experts.snapshot_every``
            is set) are drawn from [T-, T+).
        min_start_epoch: T-, the first start epoch (snapshot) drawn; 0, the paper's, matches from the
            experts' initialisation on. A later T- matches only the later, harder part of the
            trajectories, as DATM (Guo et al. 2024) does for large sets.
        iterations: Distillation iterations.
        batch_syn: Student minibatch size b, drawn from the whole synthetic set.
        lr_img: Pixel learning rate.
        lr_lr: Learning rate of the learnable student lr eta.
        lr_teacher: Initial eta.
        momentum: Momentum of both SGD optimizers.
        memory: ``exact``, ``checkpoint`` or ``tesla`` (see the distillation core).
        precision: Arithmetic of the unrolled student steps: ``fp32`` (strict, no TF32),
            ``tf32`` (TF32 tensor-core matmuls and convolutions; CUDA with compute capability
            8.0+) or ``bf16`` (bfloat16 autocast of the student's forward passes; the student's
            parameters, its steps and the gradients w.r.t. pixels and eta stay fp32).
        eval_every: Iterations between quick validation evaluations (0: never).
        checkpoint_every: Iterations between on-disk checkpoints (0: never).
        segment: Student steps per recomputed segment in ``checkpoint`` mode (0: ceil(sqrt(N))).
        dsa: Apply DSA to every student minibatch (as MTT and SelMatch do).
        dsa_strategies: DSA strategies, joined by ``_``.
        init: ``window`` (SelMatch's selection-based init), ``random`` (class-balanced real samples) or
            ``noise`` (the random init's D_distill rows replaced by standard Gaussian noise in normalised
            space, as SRe2L starts its recover step).
        mode: ``selmatch`` (students train on D_select and D_distill) or ``merge`` (the paper's
            ablation: distil D_distill alone, then concatenate D_select).
        clip: Keep the D_distill pixels inside the data's range ([0, 1] before normalisation) after every
            step, so the set is what its uint8 export holds. Off (the paper's MTT): distilled pixels drift
            out of range, most where real images are black, and an export rounds that drift away.
        coverage_every: Iterations between measurements of the set's coverage of the easy and
            hard test halves (paper Figure 7; 0: never). The first measurement trains a reference
            network on the whole training split (cached; see :mod:`autoselmatch.coverage`).
        method: The base distillation method (``distill.METHODS``): ``mtt`` (trajectory matching
            against experts; the settings above), ``dsa`` (gradient matching with DSA, Zhao &
            Bilen 2021; the ``gm_*`` settings, no experts) or ``sre2l`` (squeeze, recover, relabel,
            Yin et al. 2023; the ``sre2l_*`` settings, one teacher). Selection init and partial
            update apply to all.
        gm_outer_loop: ``dsa``: image updates per iteration; each iteration starts a fresh network.
        gm_inner_loop: ``dsa``: epochs the network trains on the current set between image updates.
        gm_batch_real: ``dsa``: real images per class matched at each update, and the network's
            training minibatch in the inner loop.
        gm_lr_img: ``dsa``: pixel learning rate (``lr_img`` is MTT's).
        gm_lr_net: ``dsa``: learning rate of the network's inner-loop SGD.
        sre2l_teacher_epochs: ``sre2l``: epochs of the teacher's training (``experts.model``, with BatchNorm).
        sre2l_teacher_lr: ``sre2l``: the teacher's initial SGD learning rate (cosine schedule).
        sre2l_lr_img: ``sre2l``: pixel learning rate (Adam, cosine schedule over ``iterations``).
        sre2l_r_bn: ``sre2l``: weight of the BatchNorm-statistics term of the recover loss.
        sre2l_batch: ``sre2l``: rows per recover batch (activation memory depends on it, not on the set).
        sre2l_temperature: ``sre2l``: temperature of the evaluation's distillation from the teacher.
        sre2l_teacher: ``sre2l``: ``train`` (train the teacher once and cache it) or ``expert`` (the last
            stored snapshot of the first cached expert, same ``experts.model``; its BatchNorm running
            statistics are measured in one pass over the training split).
    """

    syn_steps: int = 55
    expert_epochs: int = 2
    max_start_epoch: int = 80
    min_start_epoch: int = 0
    iterations: int = 10000
    batch_syn: int = 125
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.001
    momentum: float = 0.5
    memory: str = "exact"
    precision: str = "fp32"
    eval_every: int = 500
    checkpoint_every: int = 500
    segment: int = 0
    dsa: bool = True
    dsa_strategies: str = "color_crop_cutout_flip_scale_rotate"
    init: str = "window"
    mode: str = "selmatch"
    clip: bool = False
    coverage_every: int = 0
    method: str = "mtt"
    gm_outer_loop: int = 10
    gm_inner_loop: int = 10
    gm_batch_real: int = 256
    gm_lr_img: float = 0.1
    gm_lr_net: float = 0.01
    sre2l_teacher_epochs: int = 20
    sre2l_teacher_lr: float = 0.05
    sre2l_lr_img: float = 0.25
    sre2l_r_bn: float = 0.01
    sre2l_batch: int = 100
    sre2l_temperature: float = 4.0
    sre2l_teacher: str = "train"

    def __post_init__(self) -> None:
        _check_choice("distill.method", self.method, DISTILL_METHODS)
        _check_choice("distill.sre2l_teacher", self.sre2l_teacher, SRE2L_TEACHERS)
        _check_choice("distill.memory", self.memory, MEMORY_MODES)
        _check_choice("distill.precision", self.precision, DISTILL_PRECISIONS)
        _check_choice("distill.init", self.init, DISTILL_INITS)
        _check_choice("distill.mode", self.mode, DISTILL_MODES)
        for name in ("eval_every", "checkpoint_every", "segment", "coverage_every"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"distill.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "gm_outer_loop", "gm_batch_real",
                     "sre2l_teacher_epochs", "sre2l_batch"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"distill.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise InvalidArgument(f"distill.min_start_epoch must be in [0, distill.max_start_epoch = "
                                  f"{self.max_start_epoch}), got {self.min_start_epoch}")
        if self.iterations < 0:
            raise InvalidArgument(f"distill.iterations must be >= 0, got {self.iterations}")
        if self.gm_inner_loop < 0:
            raise InvalidArgument(f"distill.gm_inner_loop must be >= 0, got {self.gm_inner_loop}")
        if self.sre2l_r_bn < 0:
            raise InvalidArgument(f"distill.sre2l_r_bn must be >= 0, got {self.sre2l_r_bn}")
        for name in ("lr_img", "lr_teacher", "gm_lr_img", "gm_lr_net", "sre2l_teacher_lr", "sre2l_lr_img",
                     "sre2l_temperature"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"distill.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalConfig:
    """Training a fresh network on a (synthetic) set and measuring accuracy.

    The budget is ``steps`` if set, else ``epochs`` if set, else
    ``budget_fraction`` of the paper's rule: 25 % of the optimizer steps of
    200 epochs on the full training set (SelMatch Table 1), the default of
    ``bench reproduce`` and of tune's final evaluation. Search objectives
    train for ``quick_fraction`` of that budget (the beta trials' networks
    and the alpha trials' quick scores: 10-20 % of the final budget in the
    paper's Appendix E), so the final budget and the trials' stay tied.
    ``compile`` runs the model through ``torch.compile`` (a one-off compile of
    about a minute; worth it for the long paper-budget evaluations on a GPU)
    in ``compile_mode``: ``default``, ``reduce-overhead`` (CUDA graphs: the
    forward and backward replay as two launches, for GPUs whose step is
    bound by launching kernels; the same as ``default`` on a CPU),
    ``max-autotune`` or ``max-autotune-no-cudagraphs``.
    ``stack_runs`` networks of an evaluation train at once as one network of
    grouped convolutions (the same arithmetic, a launch per layer instead of
    one per network and layer; see :func:`autoselmatch.models.stack_models`).
    It is meant for steps bound by overhead rather than arithmetic (GPUs,
    not yet measured there; on a CPU it gains only at the ``digits``
    geometry, see bench/RESULTS.md); runs whose epochs are reported to a
    pruner still train one at a time.
    ``amp`` trains under bf16 autocast, on CUDA or on CPU; on a CPU it pays
    only where the CPU has bf16 instructions (AVX512-BF16 or AMX: with
    ``channels_last`` it halves a small ConvNet's step there, see
    bench/RESULTS.md) and is much slower elsewhere.
    """

    model: ModelSpec = field(default_factory=lambda: ModelSpec("resnet18", {}))
    epochs: int | None = None
    steps: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: str = "combined"
    runs: int = 5
    budget_fraction: float = 1.0
    quick_fraction: float = 0.15
    channels_last: bool = False
    amp: bool = False
    compile: bool = False
    compile_mode: str = "default"
    stack_runs: int = 1

    def __post_init__(self) -> None:
        _check_choice("evaluate.augment", self.augment, AUGMENTATIONS)
        _check_choice("evaluate.compile_mode", self.compile_mode, COMPILE_MODES)
        _check_range("evaluate.quick_fraction", self.quick_fraction, 0.0, 1.0)
        if not 0.0 < self.budget_fraction <= 1.0:  # also refuses nan
            raise InvalidArgument(f"evaluate.budget_fraction must be in (0, 1] (a share of the paper's budget), "
                                  f"got {self.budget_fraction}")
        if self.runs < 1:
            raise InvalidArgument(f"evaluate.runs must be >= 1, got {self.runs}")
        if self.lr <= 0:
            raise InvalidArgument(f"evaluate.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise InvalidArgument(f"evaluate.batch_size must be >= 1, got {self.batch_size}")
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgument(f"evaluate.{name} must be >= 1, got {value}")
        if self.stack_runs < 1:
            raise InvalidArgument(f"evaluate.stack_runs must be >= 1, got {self.stack_runs}")


@dataclass(frozen=True)
class TuneConfig:
    """The two-stage Optuna search (see :mod:`autoselmatch.tune`).

    Args:
        beta_grid: Candidate window starts (fractions of each class, hardest first).
        alpha_grid: Candidate distillation portions.
        alpha_start: Where the alpha line search starts.
        search: The alpha stage's strategy: ``line`` (unimodal line search), ``grid`` or ``tpe``.
        beta_search: The beta stage's strategy (``search`` is the alpha stage's and the beta
            refinement's, whose trials distil). A beta trial only trains networks on a real
            window, so ``grid`` sweeps every window start for little and, unlike a walk, does not
            rely on stage 1's curve being concave, which it often is not.
        pruner: Optuna pruner of both stages: ``median``, ``successive-halving``, ``hyperband`` or ``none``.
        patience: Drops tolerated by the line search before it stops.
        beta_seeds: Seeds averaged per beta trial.
        beta_augment: Training augmentation of the beta trials' networks on the
            selection-only window (``dsa``: as the paper's sliding-window experiment).
        alpha_seeds: Networks averaged per quick validation accuracy of an alpha
            trial (more cost per evaluation, less noise between alphas).
        alpha_augment: Training augmentation of the networks that score the alpha trials' sets
            (their quick evaluations and values) and of SelMatch's and MTT's final sets (None:
            ``evaluate.augment``, the paper's combined augmentation). ``dsa`` scores the trials as
            ``tune.final_augments`` may train the final set: DSA on the real D_select rows too.
        trial_iterations: Distillation iterations per alpha trial under the ``quick``
            budget (None: distill.iterations).
        beta_start: Where the beta line search starts (None: the previous IPC's
            optimum when the prior applies, else the middle of the grid).
        budget: ``quick`` (alpha trials distil ``trial_iterations``, the best is
            then continued to ``distill.iterations``) or ``paper`` (every alpha
            trial distils the full ``distill.iterations``).
        beta_trials: Most trials of the beta stage (None: until the search ends;
            ``tpe``: half the grid).
        alpha_trials: Most trials of the alpha stage (same default).
        prior: With several IPCs, start each IPC's line search at the previous IPC's optima and
            bound it softly there (it steps past only while the curve still rises); grid and tpe
            searches are cut at that bound.
        pruner_startup_trials: Finished trials before the median pruner prunes.
        pruner_warmup_steps: Steps (epochs / iterations) of a trial never pruned.
        max_failures: Failed runs of one grid point before the search treats it as worst.
        heartbeat_interval: Server databases: seconds between heartbeats of a running trial.
        grace_period: Server databases: seconds without a heartbeat after which a
            running trial counts as crashed; it is failed and its point retried.
        baselines: Per IPC, also score random selection (a beta-stage trial) and plain MTT
            (alpha 1, random init; an alpha-stage trial); the final set is the best of all on validation.
        z: The line search moves to a point only if it beats the best so far by more than ``z``
            standard errors of the paired difference (0: any improvement).
        max_seeds: Replicates (each with its own network seeds, the same at every point) the line
            search may give a point when a comparison is inside the noise (1: never replicate).
        alpha_fraction: Share of the final evaluation budget the networks that score an alpha
            trial's set train for (its value; the quick evaluations before it, for the pruner, keep
            ``evaluate.quick_fraction``). None: the last quick evaluation is the value. Short
            budgets favour easy windows, so the value ranks beta differently from the final test.
        refine_beta: After the alpha stage, search beta again at the chosen alpha (alpha-stage
            trials in the alpha study, walking from stage 1's beta), and take the best (beta,
            alpha) of both searches: stage 1 scores windows alone (alpha 0), where the best
            beta can differ from the best one under distillation.
        choose_on: What the final choice compares (with ``baselines``): ``final``, each
            candidate's final set trained as the test evaluation trains it (``evaluate.runs``
            networks of other seeds, the full budget) and scored on validation, or ``trials``,
            each candidate's trial score (quick evaluations on validation). ``final`` costs one
            more final evaluation per candidate and makes SelMatch's final set even when it
            loses; ``trials`` is cheaper, but quick scores favour easy windows and sets that
            gain little from a longer training (bench/RESULTS.md, "The tuner's final choice").
        final_augments: Under ``choose_on = final``, other augmentations (registered names) that
            SelMatch's final set, when it has both D_select and D_distill rows, is also trained with
            on validation, besides ``evaluate.augment``. The best on validation trains its test
            networks, competes with the other candidates and is what the export records (and
            ``load_distilled(augment=True)`` applies). The paper's combined augmentation trains the
            real D_select rows with crop + flip only; on Fashion-MNIST, DSA on every row scored
            SelMatch's sets 2.0 points higher at 1 %, 0.4 at 10 % and 0.2 at 20 % (bench/RESULTS.md).
            Empty: ``evaluate.augment`` only.
    """

    beta_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    alpha_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    alpha_start: float = 0.5
    search: str = "line"
    beta_search: str = "grid"
    pruner: str = "median"
    patience: int = 1
    beta_seeds: int = 2
    beta_augment: str = "dsa"
    alpha_seeds: int = 1
    alpha_augment: str | None = None
    trial_iterations: int | None = None
    beta_start: float | None = None
    budget: str = "quick"
    beta_trials: int | None = None
    alpha_trials: int | None = None
    prior: bool = True
    pruner_startup_trials: int = 2
    pruner_warmup_steps: int = 0
    max_failures: int = 2
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    baselines: bool = True
    z: float = 1.0
    max_seeds: int = 1
    alpha_fraction: float | None = None
    refine_beta: bool = False
    choose_on: str = "final"
    final_augments: tuple[str, ...] = ("dsa",)

    def __post_init__(self) -> None:
        for name in ("beta_grid", "alpha_grid"):
            if not getattr(self, name):
                raise InvalidArgument(f"tune.{name} must hold at least one value")
            for value in getattr(self, name):
                _check_range(f"tune.{name} values", value, 0.0, 1.0)
        _check_range("tune.alpha_start", self.alpha_start, 0.0, 1.0)
        if self.beta_start is not None:
            _check_range("tune.beta_start", self.beta_start, 0.0, 1.0)
        if self.alpha_fraction is not None and not 0.0 < self.alpha_fraction <= 1.0:  # also refuses nan
            raise InvalidArgument(f"tune.alpha_fraction must be in (0, 1] (a share of the final evaluation "
                                  f"budget) or unset, got {self.alpha_fraction}")
        _check_choice("tune.budget", self.budget, TUNE_BUDGETS)
        _check_choice("tune.beta_augment", self.beta_augment, AUGMENTATIONS)
        if self.alpha_augment is not None:
            _check_choice("tune.alpha_augment", self.alpha_augment, AUGMENTATIONS)
        _check_choice("tune.choose_on", self.choose_on, TUNE_CHOOSE_ON)
        for augment in self.final_augments:
            _check_choice("tune.final_augments values", augment, AUGMENTATIONS)
        for name in ("patience", "pruner_startup_trials", "pruner_warmup_steps"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"tune.{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.z) and self.z >= 0):
            raise InvalidArgument(f"tune.z must be a finite number >= 0, got {self.z}")
        for name in ("beta_seeds", "alpha_seeds", "max_failures", "heartbeat_interval", "max_seeds"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"tune.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("trial_iterations", "beta_trials", "alpha_trials"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgument(f"tune.{name} must be >= 1, got {value}")
        if self.grace_period <= self.heartbeat_interval:
            raise InvalidArgument(f"tune.grace_period must be > tune.heartbeat_interval "
                                  f"({self.heartbeat_interval}), got {self.grace_period}")


@dataclass(frozen=True)
class ReproduceConfig:
    """Defaults of ``autoselmatch bench reproduce`` (see :mod:`autoselmatch.reproduce`).

    Args:
        ratios: IPCs used when none are given, as shares of each class of the
            whole training split (0.01 = 1 %, rounded to whole images).
        methods: Methods of the main table when none are given.
        full_epochs: Epochs of the ``full`` row's networks on the whole training
            split (None: the evaluation budget rule applied to the full split).
        ablation_ipc: IPC of the ablation table (None: the largest IPC of the run).
        barely_moved: A distilled set whose D_distill pixels moved less than this on average
            (mean |x - x0| in units of the data's std, the ``pixel_change`` of its activity) is
            marked "barely distilled" in the tables, whatever its loss ratio: the learned eta
            lowers the loss without the pixels, and a partial update's real rows keep it high
            while its distilled ones move.
        barely_distilled: For a set that did not record its pixel change, the final matching-loss
            ratio (end / start) above which it is marked "barely distilled" instead.
    """

    ratios: tuple[float, ...] = (0.01, 0.05, 0.1)
    methods: tuple[str, ...] = REPRODUCE_METHODS
    full_epochs: int | None = None
    ablation_ipc: int | None = None
    barely_moved: float = 0.05
    barely_distilled: float = 0.8

    def __post_init__(self) -> None:
        for ratio in self.ratios:
            if not 0.0 < ratio <= 1.0:
                raise InvalidArgument(f"reproduce.ratios values must be in (0, 1], got {ratio}")
        for method in self.methods:
            _check_choice("reproduce.methods values", method, REPRODUCE_METHODS)
        if self.full_epochs is not None and self.full_epochs < 1:
            raise InvalidArgument(f"reproduce.full_epochs must be >= 1, got {self.full_epochs}")
        if self.ablation_ipc is not None and self.ablation_ipc < 1:
            raise InvalidArgument(f"reproduce.ablation_ipc must be >= 1, got {self.ablation_ipc}")
        if not 0 <= self.barely_moved < math.inf:  # also refuses nan
            raise InvalidArgument(f"reproduce.barely_moved must be a finite pixel change >= 0 (mean |x - x0| in "
                                  f"units of the data's std), got {self.barely_moved}")
        if not self.barely_distilled > 0:  # also refuses nan
            raise InvalidArgument(f"reproduce.barely_distilled must be > 0 (a ratio of final to initial matching "
                                  f"loss), got {self.barely_distilled}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that shapes a run. ``preset`` names where it came from.

    ``device`` is ``auto``, ``cpu``, ``cuda`` (or ``cuda:N``) or ``mps``;
    ``seed`` is in [0, 2**63 - 1].
    """

    preset: str = "digits"
    seed: int = 0
    device: str = "auto"
    cache_dir: str = "~/.cache/autoselmatch"
    data: DataConfig = field(default_factory=DataConfig)
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)

    def __post_init__(self) -> None:
        base, _, index = self.device.partition(":")
        if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
            raise InvalidArgument(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidArgument(f"seed must be in [0, {MAX_SEED}], got {self.seed}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


# --------------------------------------------------------------------------------------------
# dict <-> dataclass
# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able form of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# Settings added after files keyed by their section were first written (expert caches, checkpoints,
# final sets, reproduce's sets and cells), with the value that older versions implicitly used.
ADDED_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"image_size": None, "flip": True},
    "experts": {"snapshot_every": None},
    "distill": {"precision": "fp32", "coverage_every": 0, "method": "mtt", "gm_outer_loop": 10, "gm_inner_loop": 10,
                "gm_batch_real": 256, "gm_lr_img": 0.1, "gm_lr_net": 0.01, "sre2l_teacher_epochs": 20,
                "sre2l_teacher_lr": 0.05, "sre2l_lr_img": 0.25, "sre2l_r_bn": 0.01, "sre2l_batch": 100,
                "sre2l_temperature": 4.0, "sre2l_teacher": "train", "min_start_epoch": 0,
                "clip": False},
    "evaluate": {"budget_fraction": 1.0},
}


def key_dict(section: str, cfg: Any) -> dict[str, Any]:
    """``to_dict(cfg)`` of config section ``section`` (``"distill"``, ...) as cache keys hash it.

    A setting of :data:`ADDED_SETTINGS` is left out while it holds the value older versions
    implicitly used, so a file keyed before the setting existed keeps its key.
    """
    values = to_dict(cfg)
    for key, legacy in ADDED_SETTINGS.get(section, {}).items():
        if key in values and values[key] == legacy:
            del values[key]
    return values


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise InvalidArgument(f"{where or cls.__name__} must be a table, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgument(f"unknown setting {where + '.' if where else ''}{unknown[0]}; known: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise InvalidArgument(f"{where} must be a table with a 'name', got {value!r}")
        options = dict(value.get("options", {}))
        options.update({k: v for k, v in value.items() if k not in ("name", "options")})
        return ModelSpec(str(value["name"]), options)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(hint, value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InvalidArgument(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise InvalidArgument(f"{where} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise InvalidArgument(f"{where} must be a{'n integer' if hint is int else ' number'}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise InvalidArgument(f"{where} must be an integer, got {value!r}")
        if hint is float and not math.isfinite(number):
            raise InvalidArgument(f"{where} must be a finite number, got {value!r}")
        return number
    if hint is str:
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def preset_dirs() -> list[Path]:
    """Where presets are looked up: the repository's configs/, then the installed copy."""
    return [Path(__file__).resolve().parent.parent / "configs", Path(sys.prefix) / "share" / "autoselmatch" / "configs"]


def list_presets() -> list[str]:
    names = {p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


FOLDER_PRESET = "digits"  # small CPU settings; the ConvNets adapt to any image size
SHARED_PRESETS = {"mnist": "fashion-mnist"}  # same geometry (28x28 grey, 10 classes)


def preset_for_dataset(dataset: str | None) -> str:
    """The preset a dataset gets without ``--preset``: the one named after it (case-insensitive),
    ``fashion-mnist``'s for ``mnist``, and ``digits``'s (small) for ``folder:PATH`` and no dataset."""
    if dataset is None or dataset.startswith("folder:"):
        return FOLDER_PRESET
    name = dataset.lower()
    name = SHARED_PRESETS.get(name, name)
    if name not in list_presets():
        raise InvalidArgument(f"no preset for dataset {dataset!r}; pass --preset NAME|FILE.toml "
                              f"(known: {', '.join(list_presets())})")
    return name


def preset_path(name: str) -> Path:
    """Path of a preset by name, or ``name`` itself when it is a ``.toml`` file."""
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise InvalidArgument(f"preset file {name} does not exist")
        return path
    for folder in preset_dirs():
        path = folder / f"{name.lower()}.toml"
        if path.is_file():
            return path
    raise InvalidArgument(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())} or a .toml path")


def load_preset(name: str) -> RunConfig:
    """Read a preset TOML into a :class:`RunConfig` (unknown keys are errors)."""
    path = preset_path(name)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"preset {path} is not valid TOML: {exc}") from None
    values.setdefault("preset", path.stem)
    return from_dict(RunConfig, values)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with dotted keys replaced: ``{"distill.iterations": 50, "seed": 1}``.

    ``None`` values are ignored, so CLI flags that were not given leave the preset alone.
    """
    values = to_dict(cfg)
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise InvalidArgument(f"unknown setting {key!r}")
            node = node[part]
        if leaf not in node and not (len(parents) and parents[-1] == "model"):
            raise InvalidArgument(f"unknown setting {key!r}; known in {'.'.join(parents) or 'top level'}: "
                                  f"{', '.join(sorted(node))}")
        node[leaf] = value
    return from_dict(RunConfig, values)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (value as TOML when it parses, else a string)."""
    if "=" not in text:
        raise InvalidArgument(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def format_config(cfg: RunConfig) -> str:
    """The resolved config as TOML-like text, for ``--print-config``."""
    lines: list[str] = []

    def emit(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in values.items() if isinstance(v, dict) and k != "options"}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"# {k} is unset" if v is None else f"{k} = {toml_value(v)}")
        if "options" in values:
            for k, v in values["options"].items():
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in tables.items():
            emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", to_dict(cfg))
    return "\n".join(lines).lstrip() + "\n"


def toml_value(value: Any) -> str:
    """A TOML literal of a setting's value (what a preset file and ``--set`` parse)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a model spec: { name = "...", option = value, ... }
        items = {"name": value["name"], **value.get("options", {})}
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in items.items()) + " }"
    return repr(value)


__all__ = [
    "ADDED_SETTINGS",
    "key_dict",
    "AUGMENTATIONS",
    "EXPERT_AUGMENTATIONS",
    "MEMORY_MODES",
    "REPRODUCE_METHODS",
    "TUNE_BUDGETS",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "ExpertConfig",
    "ReproduceConfig",
    "RunConfig",
    "ScoreConfig",
    "TuneConfig",
    "apply_overrides",
    "format_config",
    "from_dict",
    "list_presets",
    "load_preset",
    "preset_for_dataset",
    "parse_assignment",
    "to_dict",
    "toml_value",
]
