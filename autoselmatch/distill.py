"""The distillation core: trajectory matching with SelMatch's selection init and partial update.

A synthetic set D_syn = D_select ∪ D_distill is trained so that a student
network, started from an expert's parameters theta*_t and trained for N
steps on D_syn, lands near the expert's parameters M epochs later (MTT,
Cazenavette et al. 2022, eq. 1 of SelMatch):

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

Only the D_distill rows and the student learning rate eta receive updates;
the D_select rows are frozen real images, but every student minibatch is
drawn from the whole D_syn (SelMatch eq. 2).

    result = selmatch(ds, cfg, ipc=10, alpha=0.5, beta=0.2)   # window init, experts from the cache
    result.save("studies/distill/digits/result.pt")

Lower level: :func:`distill` runs the loop on any initial set,
:class:`TrajectoryMatcher` computes one iteration's loss and gradients with
one of three memory modes:

- ``exact``: one autograd graph through all N steps (what the reference
  code does); memory grows with N.
- ``checkpoint``: exact gradients with memory per segment: a graph-free
  pass keeps theta at segment boundaries, then each segment is recomputed
  with its graph, last to first, and its vector-Jacobian product taken.
  Batches and augmentation draws are fixed before the first pass, so a
  recomputed segment sees exactly the same inputs.
- ``tesla``: the constant-memory approximation of Cui et al. (ICML 2023).
  With theta_N = theta_0 - eta * sum_i g_i and v = dL/dtheta_N, it uses
  dL/dX_i ~ -eta * d(v . g_i)/dX_i and dL/deta ~ -v . sum_i g_i: it drops
  the dependence of theta_{i+1..N} (and so of every later g_j) on batch i
  and on eta, i.e. the Hessian-vector terms that ``exact`` backpropagates
  through. A graph-free pass gives theta_N and v; a replay accumulates the
  per-step contributions, holding one step's graph at a time. (TESLA's
  soft-label part does not apply: labels are fixed hard labels here.)

Student minibatches have a constant size b, cut from consecutive random
permutations of the rows (the reference code's last chunk of a permutation
may be smaller). Run control: all randomness comes from one CPU generator
(plus per-step re-seeded DSA generators), and a checkpoint holds the
:class:`RunState` (D_distill, eta, both optimizers' momentum and that
generator's state), so ``resume`` continues bit for bit on CPU. The result
is a :class:`~autoselmatch.synset.SyntheticSet`. Experts trained with ZCA whitening are
refused (synthetic sets live in the dataset's normalised space).

``torch.compile`` is not offered: the inner gradient needs a double
backward (``create_graph=True``), which compiled autograd graphs do not
support.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import DSA_STRATEGIES, dsa
from .choices import MEMORY_MODES
from .config import DistillConfig, RunConfig, to_dict
from .data import ImageDataset
from .errors import DataError, InvalidArgument, TrainingDiverged
from .fileio import load_torch, save_torch, stable_hash
from .models import FlatModel
from .runtime import LOG, fault_point, progress, resolve_device
from .selection import Window, select_window
from .synset import SyntheticSet

RESULT_FILE = "result.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
DistillResult = SyntheticSet  # what distill() and selmatch() return; the name this module always exported

Evaluator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]


class ExpertSource(Protocol):
    """What the core needs from an expert store (see :mod:`autoselmatch.experts`)."""

    num_experts: int
    num_params: int
    num_epochs: int
    manifest: Mapping[str, Any]

    def sample(self, generator: torch.Generator, *, max_start_epoch: int,
               expert_epochs: int) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class DistillStep:
    """What the per-iteration callback receives.

    Args:
        iteration: Iterations completed so far (1 after the first).
        loss: Matching loss (1) of this iteration, before the update.
        eta: The learnable student learning rate after the update.
        accuracy: Quick validation accuracy of the current set, when one was
            measured at this iteration (every ``distill.eval_every``), else None.
    """

    iteration: int
    loss: float
    eta: float
    accuracy: float | None = None


Callback = Callable[[DistillStep], None]


# --------------------------------------------------------------------------------------------
# One iteration: loss (1) and its gradient w.r.t. the synthetic pixels and eta
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentPlan:
    """The random draws of one matching call: what every pass over the N student steps replays.

    Attributes:
        batches: int64 (N, b) row indices of each step's minibatch, on the labels' device.
        seeds: N seeds of the per-step DSA generator.
        strategies: N DSA strategy names ("" for no augmentation).
    """

    batches: torch.Tensor
    seeds: list[int]
    strategies: list[str]

    def augment(self, x: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """DSA of step ``step`` on x (b, C, H, W), with ``generator`` re-seeded to that step's seed."""
        if not self.strategies[step]:
            return x
        return dsa(x, generator=generator.manual_seed(self.seeds[step]), strategy=self.strategies[step])


@dataclass(frozen=True)
class MatchOutput:
    """Loss (1) (scalar), dL/dimages (n, C, H, W) for every row of D_syn, and dL/deta (scalar)."""

    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor


class TrajectoryMatcher:
    """Computes the matching loss (1) and its gradients for one (start, target) expert pair.

    The student is ``flat`` (a network as a function of one flat parameter
    vector, BatchNorm on batch statistics). Per call, N minibatches of size
    ``batch_syn`` are drawn from all rows of the synthetic set (consecutive
    random permutations, so every row is used before any repeats) together
    with one DSA strategy and one seed per step, all from ``generator`` on
    the CPU (no device sync); step i's per-sample DSA parameters come from a
    device generator re-seeded with seed i, so every pass over the steps
    replays exactly the same batches and augmentations.

    Args:
        flat: The student network.
        labels: int64 (n,) hard labels of the synthetic rows.
        syn_steps: N, student steps per call.
        batch_syn: b, student minibatch size (at most n).
        memory: ``exact``, ``checkpoint`` or ``tesla`` (see the module docstring).
        segment: Steps per recomputed segment in ``checkpoint`` mode; 0 means ceil(sqrt(N)).
        strategies: DSA strategies drawn from per step (:func:`autoselmatch.augment.dsa`);
            empty for no augmentation.

    Example::

        matcher = TrajectoryMatcher(flat, labels, syn_steps=10, batch_syn=50, memory="checkpoint")
        out = matcher(images, lr, start, target, torch.Generator().manual_seed(0))
        out.loss, out.grad_images, out.grad_lr
    """

    def __init__(self, flat: FlatModel, labels: torch.Tensor, *, syn_steps: int, batch_syn: int,
                 memory: str = "exact", segment: int = 0, strategies: Sequence[str] = DSA_STRATEGIES) -> None:
        if memory not in MEMORY_MODES:
            raise InvalidArgument(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        if syn_steps < 1:
            raise InvalidArgument(f"syn_steps must be >= 1, got {syn_steps}")
        if not 1 <= batch_syn <= len(labels):
            raise InvalidArgument(f"batch_syn must be in [1, {len(labels)}] (the synthetic set's size), got {batch_syn}")
        if segment < 0:
            raise InvalidArgument(f"segment must be >= 0, got {segment}")
        unknown = [s for s in strategies if s not in DSA_STRATEGIES]
        if unknown:
            raise InvalidArgument(f"DSA strategies must be among {', '.join(DSA_STRATEGIES)}, got {unknown[0]!r}")
        self.flat = flat
        self.labels = labels
        self.syn_steps = syn_steps
        self.batch_syn = batch_syn
        self.memory = memory
        self.segment = min(segment or math.ceil(math.sqrt(syn_steps)), syn_steps)
        self.strategies = tuple(strategies)
        self._aug_generator = torch.Generator(device=labels.device)

    def __call__(self, images: torch.Tensor, lr: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator) -> MatchOutput:
        """images (n, C, H, W), lr (), start (P,), target (P,) -> :class:`MatchOutput`.

        ``generator`` (CPU) is advanced by the batch and augmentation draws.
        """
        plan = self.draw(len(images), generator)
        images = images.detach().requires_grad_(True)
        lr = lr.detach().requires_grad_(True)
        start, target = start.detach(), target.detach()
        denominator = (start - target).square().sum()
        if self.memory == "exact":
            return self._exact(images, lr, start, target, denominator, plan)
        if self.memory == "checkpoint":
            return self._checkpoint(images, lr, start, target, denominator, plan)
        return self._tesla(images, lr, start, target, denominator, plan)

    def draw(self, n: int, generator: torch.Generator) -> StudentPlan:
        """The draws of one call on a set of ``n`` rows, from the CPU ``generator`` (no device sync)."""
        needed = self.syn_steps * self.batch_syn
        perms = [torch.randperm(n, generator=generator) for _ in range(math.ceil(needed / n))]
        batches = torch.cat(perms)[:needed].view(self.syn_steps, self.batch_syn)
        seeds = torch.randint(0, 2**62, (self.syn_steps,), generator=generator).tolist()
        picks = torch.randint(max(len(self.strategies), 1), (self.syn_steps,), generator=generator).tolist()
        strategies = [self.strategies[k] if self.strategies else "" for k in picks]
        return StudentPlan(batches.to(self.labels.device, non_blocking=True), seeds, strategies)

    # -- the student -----------------------------------------------------------------------------

    def _step_grad(self, theta: torch.Tensor, images: torch.Tensor, plan: StudentPlan, step: int,
                   create_graph: bool) -> torch.Tensor:
        """g = dCE(A(images[batch]); theta)/dtheta (P,) for step ``step`` of ``plan``."""
        batch = plan.batches[step]  # (b,)
        x = plan.augment(images[batch], step, self._aug_generator)  # (b, C, H, W)
        loss = F.cross_entropy(self.flat(theta, x), self.labels[batch])
        (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return grad

    def _unroll(self, theta: torch.Tensor, images: torch.Tensor, lr: torch.Tensor, plan: StudentPlan,
                steps: range) -> torch.Tensor:
        """theta after ``steps`` student steps, with the whole graph kept (differentiable)."""
        for i in steps:
            theta = theta - lr * self._step_grad(theta, images, plan, i, create_graph=True)
        return theta

    def _advance(self, theta: torch.Tensor, images: torch.Tensor, lr: torch.Tensor, plan: StudentPlan,
                 steps: range) -> torch.Tensor:
        """theta after ``steps`` student steps without keeping a graph (values only)."""
        images, lr = images.detach(), lr.detach()
        for i in steps:
            theta = theta.detach().requires_grad_(True)
            grad = self._step_grad(theta, images, plan, i, create_graph=False)
            theta = theta.detach() - lr * grad
        return theta.detach()

    # -- memory modes --------------------------------------------------------------------------

    def _exact(self, images: torch.Tensor, lr: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
               denominator: torch.Tensor, plan: StudentPlan) -> MatchOutput:
        theta = start.clone().requires_grad_(True)
        end = self._unroll(theta, images, lr, plan, range(self.syn_steps))
        loss = (end - target).square().sum() / denominator
        grad_images, grad_lr = torch.autograd.grad(loss, (images, lr))
        return MatchOutput(loss.detach(), grad_images, grad_lr)

    def _checkpoint(self, images: torch.Tensor, lr: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                    denominator: torch.Tensor, plan: StudentPlan) -> MatchOutput:
        bounds = list(range(0, self.syn_steps, self.segment)) + [self.syn_steps]
        segments = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        boundary = [start]  # theta at the start of each segment: (num_segments, P) in all
        for steps in segments[:-1]:
            boundary.append(self._advance(boundary[-1], images, lr, plan, steps))

        theta = boundary[-1].clone().requires_grad_(True)
        end = self._unroll(theta, images, lr, plan, segments[-1])
        loss = (end - target).square().sum() / denominator
        wants_theta = len(segments) > 1
        grads = torch.autograd.grad(loss, (images, lr, theta) if wants_theta else (images, lr))
        grad_images, grad_lr = grads[0], grads[1]
        adjoint = grads[2] if wants_theta else None  # dL/dtheta at the current segment's start

        for k in range(len(segments) - 2, -1, -1):
            theta = boundary[k].clone().requires_grad_(True)
            end = self._unroll(theta, images, lr, plan, segments[k])
            inputs = (images, lr, theta) if k > 0 else (images, lr)
            grads = torch.autograd.grad(end, inputs, grad_outputs=adjoint)
            grad_images = grad_images + grads[0]
            grad_lr = grad_lr + grads[1]
            adjoint = grads[2] if k > 0 else None
        return MatchOutput(loss.detach(), grad_images, grad_lr)

    def _tesla(self, images: torch.Tensor, lr: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
               denominator: torch.Tensor, plan: StudentPlan) -> MatchOutput:
        theta = start
        grad_sum = torch.zeros_like(start)  # G = sum_i g_i (P,)
        for i in range(self.syn_steps):
            grad = self._step_grad(theta.detach().requires_grad_(True), images.detach(), plan, i, create_graph=False)
            grad_sum += grad
            theta = theta.detach() - lr.detach() * grad
        loss = (theta - target).square().sum() / denominator
        v = 2.0 * (theta - target) / denominator  # dL/dtheta_N (P,)
        grad_lr = -(v * grad_sum).sum()

        grad_images = torch.zeros_like(images)
        theta = start
        for i in range(self.syn_steps):
            theta = theta.detach().requires_grad_(True)
            grad = self._step_grad(theta, images, plan, i, create_graph=True)
            (contribution,) = torch.autograd.grad(grad, images, grad_outputs=-lr.detach() * v)
            grad_images += contribution
            theta = theta.detach() - lr.detach() * grad.detach()
        return MatchOutput(loss.detach(), grad_images, grad_lr.detach())


# --------------------------------------------------------------------------------------------
# The run state: what an iteration changes, and its checkpoint
# --------------------------------------------------------------------------------------------


class RunState:
    """Everything a distillation run changes as it goes (after nanoGPT's train.py: state_dicts in one dict).

    The D_distill pixels and eta with their SGD-with-momentum optimizers,
    the CPU generator that every random draw comes from, the iteration count
    and the history. :meth:`state_dict` is what a checkpoint holds, so a run
    restored with :meth:`load_state_dict` continues bit for bit on CPU.

    Args:
        images: float32 (n, C, H, W), the initial set in normalised space on the
            run's device; rows outside ``rows`` (D_select) are only read.
        rows: int64 (d,) positions of the D_distill rows in ``images``.
        dc: The ``distill`` settings (``lr_teacher`` starts eta; ``lr_img``,
            ``lr_lr`` and ``momentum`` set the optimizers).
        seed: Seed of the generator.
    """

    def __init__(self, images: torch.Tensor, rows: torch.Tensor, dc: DistillConfig, seed: int) -> None:
        self.base = images
        self.rows = rows
        self.pixels = images[rows].clone().requires_grad_(True)  # (d, C, H, W): the only pixels that learn
        self.lr = torch.tensor(dc.lr_teacher, device=images.device, requires_grad=True)  # eta ()
        self.opt_img = torch.optim.SGD([self.pixels], lr=dc.lr_img, momentum=dc.momentum)
        self.opt_lr = torch.optim.SGD([self.lr], lr=dc.lr_lr, momentum=dc.momentum)
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.losses: list[float] = []
        self.evals: list[tuple[int, float]] = []

    def images(self) -> torch.Tensor:
        """float32 (n, C, H, W): the current set, D_select rows as given and D_distill rows as learned."""
        return self.base.index_put((self.rows,), self.pixels.detach())

    def step(self, out: MatchOutput) -> tuple[float, float]:
        """Apply one iteration's gradients to the pixels and eta; return (loss, eta after the update).

        Sync point: reads the loss and eta from the device.
        """
        self.pixels.grad = out.grad_images[self.rows]
        self.lr.grad = out.grad_lr.reshape(())
        self.opt_img.step()
        self.opt_lr.step()
        self.iteration += 1
        loss, eta = torch.stack([out.loss.float(), self.lr.detach().float()]).tolist()
        self.losses.append(loss)
        return loss, eta

    def state_dict(self) -> dict[str, Any]:
        """Tensors (CPU), numbers and lists: loads with ``weights_only=True``.

        As with torch's own state_dicts, the tensors may be the live ones: save
        the dict (or deep-copy it) before the run takes another step.
        """
        return {
            "iteration": self.iteration,
            "pixels": self.pixels.detach().cpu(),
            "lr": self.lr.detach().cpu(),
            "opt_img": self.opt_img.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "generator": self.generator.get_state(),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "evals": [[i, a] for i, a in self.evals],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a run on the same initial set."""
        with torch.no_grad():
            self.pixels.copy_(state["pixels"].to(self.pixels.device))
            self.lr.copy_(state["lr"].to(self.lr.device))
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.losses = [float(v) for v in state["losses"].tolist()]
        self.evals = [(int(i), float(a)) for i, a in state["evals"]]


@dataclass(frozen=True)
class Checkpoint:
    """``checkpoint.pt``: ``{"version", "fingerprint", **RunState.state_dict()}``, written atomically.

    Args:
        path: The file; None: a run without checkpoints (:meth:`save` does nothing).
        fingerprint: What the run shares with any run that may resume it (:func:`_fingerprint`).
    """

    path: Path | None
    fingerprint: str

    def save(self, state: RunState) -> None:
        if self.path is not None:
            blob = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, **state.state_dict()}
            save_torch(blob, self.path)

    def restore(self, state: RunState) -> bool:
        """Load the file into ``state`` if it exists (True); refuse one made with other settings."""
        if self.path is None or not self.path.is_file():
            return False
        blob = load_torch(self.path, what="distillation checkpoint", remedy="delete it to start over")
        if blob.get("version") != CHECKPOINT_VERSION or blob.get("fingerprint") != self.fingerprint:
            raise InvalidArgument(f"checkpoint {self.path} was made with other settings (dataset, seed, distill "
                                  f"settings, experts or initial set differ); use another output folder or start "
                                  f"without --resume")
        state.load_state_dict(blob)
        return True


# --------------------------------------------------------------------------------------------
# The distillation loop
# --------------------------------------------------------------------------------------------


def student_network(cfg: RunConfig, ds: ImageDataset) -> nn.Module:
    """The experts' architecture (``cfg.experts.model``) for ``ds``, as a student (see :func:`batch_stats_only`)."""
    channels, size, _ = ds.image_shape
    return batch_stats_only(cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size))


def batch_stats_only(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``module`` use batch statistics only, and put it in training mode.

    Running statistics are removed (not tracked, no buffers): the student
    only ever runs in training mode, and without buffer updates it is a
    pure function of theta, so recomputed segments and replays see the same
    network and nothing is written per step.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.track_running_stats = False
            layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    return module.train()


def dsa_strategies(cfg: RunConfig) -> tuple[str, ...]:
    """The DSA strategies of ``cfg.distill`` (empty when ``distill.dsa`` is off)."""
    if not cfg.distill.dsa:
        return ()
    strategies = tuple(s for s in cfg.distill.dsa_strategies.split("_") if s)
    unknown = [s for s in strategies if s not in DSA_STRATEGIES]
    if unknown or not strategies:
        raise InvalidArgument(f"distill.dsa_strategies must join names from {', '.join(DSA_STRATEGIES)} with '_', "
                              f"got {cfg.distill.dsa_strategies!r}")
    return strategies


def quick_evaluator(ds: ImageDataset, cfg: RunConfig, *, runs: int = 1) -> Evaluator:
    """Mean validation accuracy of ``runs`` networks (seeds ``cfg.seed``, ``cfg.seed + 1``, ...) trained
    on the set for ``evaluate.quick_fraction`` of the budget."""
    from .evaluate import evaluate_set

    def evaluate(images: torch.Tensor, labels: torch.Tensor, distill_mask: torch.Tensor) -> float:
        result = evaluate_set(ds, images, labels, cfg=cfg.evaluate, distill_mask=distill_mask, split="val",
                              runs=runs, fraction=cfg.evaluate.quick_fraction, seed=cfg.seed)
        return float(result.mean)

    return evaluate


def distill(
    ds: ImageDataset,
    *,
    cfg: RunConfig,
    experts: ExpertSource | None,
    init_images: torch.Tensor,
    labels: torch.Tensor,
    distill_mask: torch.Tensor,
    indices: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    evaluator: Evaluator | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SyntheticSet:
    """Run trajectory matching on an initial synthetic set; update only the ``distill_mask`` rows.

    Each iteration draws an expert and a start epoch t < T+ (``experts.sample``),
    runs N student steps from theta*_t on minibatches of the whole set with
    DSA, and takes one SGD-with-momentum step on the D_distill pixels
    and on eta against loss (1). All randomness comes from one generator
    seeded with ``cfg.seed`` (batches, augmentation seeds, expert draws), so
    a run is reproducible and a resumed run continues bit for bit on CPU.

    Args:
        ds: The dataset (names, classes, normalisation, image shape).
        cfg: Run settings; ``cfg.distill`` drives the loop, ``cfg.experts.model``
            is the student architecture, ``cfg.seed`` and ``cfg.device`` apply.
        experts: Expert trajectories for ``cfg.experts`` on ``ds``; may be
            None only when nothing is to be distilled (no True in the mask).
        init_images: float (n, C, H, W) in normalised space.
        labels: int64 (n,) hard labels.
        distill_mask: bool (n,): rows that are updated (D_distill).
        indices: Optional int64 (n,) training-set indices the rows came from (kept in the result).
        checkpoint_dir: Where ``checkpoint.pt`` is written every
            ``distill.checkpoint_every`` iterations (None: no checkpoints).
        resume: Continue from ``checkpoint_dir/checkpoint.pt`` if present; its
            settings must match (``distill.iterations`` may differ, to extend a run).
        callback: Called after every iteration with a :class:`DistillStep`;
            an exception it raises (e.g. ``optuna.TrialPruned``) propagates
            after a checkpoint of the finished iteration is written.
        evaluator: ``(images, labels, distill_mask) -> accuracy``, run every
            ``distill.eval_every`` iterations and at the end; None uses
            :func:`quick_evaluator` when ``eval_every > 0``.
        settings: Extra settings stored with the result (ipc, alpha, beta, ...).

    Raises:
        InvalidArgument: Bad shapes, batch larger than the set, experts too short.
        DataError: Experts missing or made for another dataset or model.
        TrainingDiverged: The loss became NaN/inf or eta became <= 0.
    """
    device = resolve_device(cfg.device)
    dc = cfg.distill
    if resume and checkpoint_dir is None:
        raise InvalidArgument("resume=True needs the checkpoint_dir to resume from")
    _check_set(ds, init_images, labels, distill_mask)
    n = len(labels)
    provenance = {"dataset": ds.name, "classes": tuple(ds.classes), "mean": tuple(ds.mean), "std": tuple(ds.std),
                  "settings": _settings(ds, cfg, settings), "indices": indices.cpu() if indices is not None else None}
    rows = torch.nonzero(distill_mask.cpu()).flatten()
    if len(rows) == 0:  # nothing to learn: the initial set is the answer (alpha = 0)
        return SyntheticSet(init_images.detach().cpu().float().clone(), labels.cpu().clone(),
                            distill_mask.cpu().clone(), eta=dc.lr_teacher, **provenance)
    if dc.batch_syn > n:
        raise InvalidArgument(f"distill.batch_syn ({dc.batch_syn}) must be at most the synthetic set's size {n}; "
                              f"lower it with --set distill.batch_syn=N")
    flat = FlatModel(student_network(cfg, ds).to(device))
    check_experts(experts, ds, cfg, flat.num_params)
    if evaluator is None and dc.eval_every > 0:
        evaluator = quick_evaluator(ds, cfg)
    matcher = TrajectoryMatcher(flat, labels.to(device).long(), syn_steps=dc.syn_steps, batch_syn=dc.batch_syn,
                                memory=dc.memory, segment=dc.segment, strategies=dsa_strategies(cfg))

    state = RunState(init_images.detach().to(device, torch.float32).clone(), rows.to(device), dc, cfg.seed)
    checkpoint = Checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None,
                            _fingerprint(ds, cfg, experts, init_images, labels, distill_mask))
    if resume and checkpoint.restore(state):
        LOG.info("resuming distillation from %s at iteration %d", checkpoint.path, state.iteration)

    bar: Any = progress(range(state.iteration, dc.iterations), desc="distill", total=dc.iterations - state.iteration)
    draws = None
    try:  # whatever stops the run (Ctrl-C, a callback's exception) leaves a checkpoint of the last finished iteration
        for _ in bar:
            draws = state.generator.get_state()  # an unfinished iteration reruns from the same draws
            start, target = experts.sample(state.generator, max_start_epoch=dc.max_start_epoch,
                                           expert_epochs=dc.expert_epochs)
            out = matcher(state.images(), state.lr, start.to(device, torch.float32), target.to(device, torch.float32),
                          state.generator)
            fault_point("distill.iteration")
            draws = None
            loss, eta = state.step(out)
            _check_diverged(loss, eta, state.iteration, dc)

            accuracy = None
            if evaluator is not None and dc.eval_every > 0 and (state.iteration % dc.eval_every == 0
                                                                or state.iteration == dc.iterations):
                accuracy = float(evaluator(state.images(), matcher.labels, distill_mask.to(device)))
                state.evals.append((state.iteration, accuracy))
                LOG.info("iteration %d: loss %.4f, eta %.4g, quick validation accuracy %.2f %%", state.iteration,
                         loss, eta, 100 * accuracy)
            shown = {"loss": f"{loss:.4f}", "eta": f"{eta:.3g}"}
            if state.evals:  # no val column before the first evaluation
                shown["val"] = f"{100 * state.evals[-1][1]:.2f} %"
            bar.set_postfix(refresh=False, **shown)
            if dc.checkpoint_every > 0 and state.iteration % dc.checkpoint_every == 0:
                checkpoint.save(state)
            if callback is not None:
                callback(DistillStep(state.iteration, loss, eta, accuracy))
    except TrainingDiverged:
        raise  # the state holds the diverged step: no checkpoint of it
    except BaseException:
        if draws is not None:
            state.generator.set_state(draws)
        checkpoint.save(state)
        raise
    checkpoint.save(state)
    return SyntheticSet(state.images().cpu(), labels.cpu().long(), distill_mask.cpu().bool(),
                        eta=float(state.lr.detach()), loss_history=list(state.losses), evals=list(state.evals),
                        iterations=state.iteration, **provenance)


def _check_diverged(loss: float, eta: float, iteration: int, dc: DistillConfig) -> None:
    """Raise :class:`TrainingDiverged` when the matching loss is not finite or eta is not positive."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"distillation diverged at iteration {iteration}: matching loss is {loss}; "
                               f"lower distill.lr_img ({dc.lr_img}) or distill.lr_lr ({dc.lr_lr})")
    if not eta > 0:
        raise TrainingDiverged(f"distillation diverged at iteration {iteration}: learned lr eta became {eta:.3g}; "
                               f"lower distill.lr_lr ({dc.lr_lr})")


def _check_set(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != ds.image_shape:
        raise InvalidArgument(f"init_images must be (n, {', '.join(map(str, ds.image_shape))}) for {ds.name}, "
                              f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InvalidArgument(f"init_images must be float in normalised space (see ds.normalize), got {images.dtype}")
    if labels.shape != (len(images),):
        raise InvalidArgument(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ds.num_classes):
        raise InvalidArgument(f"labels must be in [0, {ds.num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")
    if mask.shape != (len(images),) or mask.dtype != torch.bool:
        raise InvalidArgument(f"distill_mask must be bool of shape ({len(images)},), got {mask.dtype} {tuple(mask.shape)}")


def check_experts(experts: ExpertSource | None, ds: ImageDataset, cfg: RunConfig, num_params: int) -> None:
    """Refuse experts that are missing, were made for another dataset or model, or are too short."""
    make = f"make them with `autoselmatch experts --dataset {ds.name}` (same preset and --set options)"
    if experts is None:
        raise DataError(f"no expert trajectories for {ds.name}; {make}")
    key = experts.manifest.get("key", {})
    trained_on = key.get("dataset", {}).get("name")
    if trained_on != ds.name:
        raise DataError(f"experts were trained on {trained_on!r}, not {ds.name!r}; {make}")
    student = {"name": cfg.experts.model.name, "options": dict(sorted(cfg.experts.model.options.items()))}
    if _plain(key.get("model")) != _plain(student):
        raise DataError(f"experts were trained with model {key.get('model')}, but the student is {student}; {make}")
    if experts.num_params != num_params:
        raise DataError(f"experts have {experts.num_params} parameters but the student {cfg.experts.model.name} has "
                        f"{num_params}; they belong to another model; {make}")
    if getattr(experts, "zca", None) is not None:
        raise InvalidArgument("experts trained with ZCA whitening cannot be matched: synthetic sets live in the "
                              "normalised space; use experts with experts.zca = false")
    needed = cfg.distill.max_start_epoch + cfg.distill.expert_epochs
    if needed > experts.num_epochs:
        raise InvalidArgument(f"distill.max_start_epoch + distill.expert_epochs = {needed} exceeds the "
                              f"{experts.num_epochs} epochs stored per expert; lower them or retrain with "
                              f"`autoselmatch experts --dataset {ds.name} --epochs {needed}`")


def _plain(model: Any) -> Any:
    """A model spec in a comparable form (JSON round trip: tuples and lists compare equal)."""
    return json.loads(json.dumps(model, sort_keys=True, default=str))


def _settings(ds: ImageDataset, cfg: RunConfig, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    values: dict[str, Any] = {"dataset": ds.name, "seed": cfg.seed, "config": to_dict(cfg)}
    values.update(extra or {})
    return values


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(ds: ImageDataset, cfg: RunConfig, experts: ExpertSource, images: torch.Tensor,
                 labels: torch.Tensor, mask: torch.Tensor) -> str:
    """What a checkpoint must share with the run that resumes it (the iteration budget may differ)."""
    dc = to_dict(cfg.distill)
    for key in ("iterations", "eval_every", "checkpoint_every"):
        dc.pop(key)
    return stable_hash({
        "dataset": ds.name, "seed": cfg.seed, "distill": dc, "model": cfg.experts.model.to_dict(),
        "experts": {"key": experts.manifest.get("key"), "num_experts": experts.num_experts,
                    "num_params": experts.num_params},
        "init": _tensor_digest(images, labels, mask),
    })


# --------------------------------------------------------------------------------------------
# SelMatch: the initial set from the window (or random real samples), then distillation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialSet:
    """An initial synthetic set of real training samples, ``ipc`` per class, class by class.

    Attributes:
        indices: int64 (n,) indices into ``ds.train_images``.
        images: float32 (n, C, H, W) in normalised space.
        labels: int64 (n,).
        distill_mask: bool (n,): True for D_distill rows (the easier
            ``ipc - ceil((1 - alpha) * ipc)`` of each class), False for D_select.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor


def initial_set(ds: ImageDataset, cfg: RunConfig, *, ipc: int, alpha: float, beta: float,
                scores: torch.Tensor | None = None) -> InitialSet:
    """D_syn's starting point per ``cfg.distill.init``.

    ``window``: SelMatch's selection-based init: per class, skip the hardest
    ``beta`` fraction and take the next ``ipc`` samples by difficulty
    (:func:`autoselmatch.selection.select_window`); the harder
    ``ceil((1 - alpha) * ipc)`` form D_select. ``random``: ``ipc`` random
    real samples per class (seeded by ``cfg.seed``), the first
    ``ceil((1 - alpha) * ipc)`` of each class forming D_select.

    Args:
        ds: The dataset; samples come from ``ds.train_index`` only.
        cfg: Settings (``distill.init``, ``scores``, ``seed``, ``cache_dir``).
        ipc: Images per class.
        alpha: Distillation portion in [0, 1].
        beta: Window start as a fraction of each class (``window`` only).
        scores: float (N,) difficulty per training sample, higher = harder;
            None loads or computes them per ``cfg.scores`` (``window`` only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
    counts = ds.class_counts()
    smallest = int(counts.min())
    if not 1 <= ipc <= smallest:
        raise InvalidArgument(f"ipc must be in [1, {smallest}] for {ds.name} (its smallest class in the training "
                              f"pool has {smallest} samples), got {ipc}")
    if cfg.distill.init == "window":
        if scores is None:
            from .scores import get_scores

            scores = get_scores(ds, cfg.scores, cache_dir=cfg.cache_path, seed=cfg.seed, run=cfg)
        window = select_window(scores, ds.train_labels, ds.train_index, ipc=ipc, beta=beta, alpha=alpha)
    else:
        window = _random_window(ds, ipc=ipc, alpha=alpha, seed=cfg.seed)
    indices = window.indices.cpu().long()
    mask = window.distill_mask.cpu().bool()
    return InitialSet(indices, ds.normalize(ds.train_images[indices.to(ds.device)]).cpu(),
                      ds.train_labels[indices.to(ds.device)].cpu(), mask)


def _random_window(ds: ImageDataset, *, ipc: int, alpha: float, seed: int) -> Window:
    """Class-balanced random real samples: the window at beta 0 over seeded uniform noise scores.

    The draw is the one ``select("random", ..., seed=seed)`` makes, so an
    alpha = 0 random init equals the random-selection baseline of the same seed.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(ds.train_labels), generator=generator, dtype=torch.float64)  # (N,)
    return select_window(noise.to(ds.train_labels.device), ds.train_labels, ds.train_index, ipc=ipc, beta=0.0,
                         alpha=alpha)


def selmatch(
    ds: ImageDataset,
    cfg: RunConfig,
    *,
    ipc: int,
    alpha: float,
    beta: float = 0.0,
    scores: torch.Tensor | None = None,
    experts: ExpertSource | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    evaluator: Evaluator | None = None,
) -> SyntheticSet:
    """Distil one SelMatch set: init from the window at ``beta``, update the easier ``alpha`` of it.

    ``cfg.distill.init`` chooses the init (``window``, or ``random``: with
    alpha = 1 this is plain MTT); ``cfg.distill.mode`` is ``selmatch``
    (students train on D_select ∪ D_distill, eq. 2) or ``merge`` (the paper's
    ablation: distil D_distill on its own, then concatenate D_select).
    alpha = 0 returns the initial set itself without any compute.

    Args:
        ds: The dataset.
        cfg: Run settings.
        ipc: Images per class.
        alpha: Distillation portion in [0, 1].
        beta: Window start, a fraction of each class in [0, 1 - ipc/n_c].
        scores: Difficulty scores (N,), higher = harder; None: per ``cfg.scores``.
        experts: Expert trajectories; None loads them per ``cfg.experts``
            (never trains them: a missing set is an error naming the command).
        checkpoint_dir, resume, callback, evaluator: As in :func:`distill`.

    Example::

        cfg = apply_overrides(load_preset("digits"), {"distill.iterations": 20, "distill.eval_every": 0})
        result = selmatch(load_dataset("digits"), cfg, ipc=10, alpha=0.5, beta=0.1)
    """
    start = initial_set(ds, cfg, ipc=ipc, alpha=alpha, beta=beta, scores=scores)
    settings = {"ipc": ipc, "alpha": alpha, "beta": beta, "init": cfg.distill.init, "mode": cfg.distill.mode,
                "memory": cfg.distill.memory, "score": cfg.scores.name}
    rows = start.distill_mask if cfg.distill.mode == "merge" else torch.ones_like(start.distill_mask)
    if bool(start.distill_mask.any()):
        if cfg.distill.batch_syn > int(rows.sum()):
            part = "D_distill" if cfg.distill.mode == "merge" else "D_syn"
            raise InvalidArgument(f"distill.batch_syn ({cfg.distill.batch_syn}) must be at most the size of {part} "
                                  f"({int(rows.sum())} images at ipc={ipc}, alpha={alpha}); lower it with "
                                  f"--set distill.batch_syn=N")
        if experts is None:
            from .experts import load_experts

            experts = load_experts(ds, cfg)
    if cfg.distill.mode == "merge" and cfg.distill.eval_every > 0:
        evaluator = _merged_evaluator(evaluator or quick_evaluator(ds, cfg), start)
    result = distill(ds, cfg=cfg, experts=experts, init_images=start.images[rows], labels=start.labels[rows],
                     distill_mask=start.distill_mask[rows], indices=start.indices[rows],
                     checkpoint_dir=checkpoint_dir, resume=resume, callback=callback, evaluator=evaluator,
                     settings=settings)
    if cfg.distill.mode == "merge":
        images = start.images.clone()
        images[rows] = result.images
        result.images, result.labels = images, start.labels.clone()
        result.distill_mask, result.indices = start.distill_mask.clone(), start.indices.clone()
    return result


def _merged_evaluator(evaluate: Evaluator, start: InitialSet) -> Evaluator:
    """In ``merge`` mode, evaluate D_distill's current pixels together with the frozen D_select rows."""

    def run(images: torch.Tensor, labels: torch.Tensor, distill_mask: torch.Tensor) -> float:
        full = start.images.to(images.device).clone()
        full[start.distill_mask.to(images.device)] = images
        return evaluate(full, start.labels.to(images.device), start.distill_mask.to(images.device))

    return run


__all__ = [
    "CHECKPOINT_FILE",
    "RESULT_FILE",
    "Checkpoint",
    "DistillResult",
    "DistillStep",
    "ExpertSource",
    "InitialSet",
    "MatchOutput",
    "RunState",
    "StudentPlan",
    "TrajectoryMatcher",
    "batch_stats_only",
    "check_experts",
    "dsa_strategies",
    "distill",
    "initial_set",
    "quick_evaluator",
    "selmatch",
    "student_network",
]
