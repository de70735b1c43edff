"""Trajectory matching (MTT): one iteration's loss (1) and its gradients w.r.t. the synthetic pixels and eta.

The student steps run in one of three precisions (``distill.precision``):

- ``fp32``: strict fp32; on CUDA, TF32 is switched off for the student
  steps (torch's default lets cuDNN convolutions use TF32);
- ``tf32``: fp32 tensors, with TF32 tensor cores for matmuls and
  convolutions (CUDA, compute capability 8.0+);
- ``bf16``: each student forward pass runs under bfloat16 autocast (its
  backward and double backward follow in the dtypes autocast chose). theta,
  the step ``theta - eta * g``, the matching loss and the gradients w.r.t.
  the pixels and eta stay fp32: autocast casts theta's views to bf16 inside
  the forward, so every gradient that reaches an fp32 tensor is fp32, and
  ``checkpoint`` and ``tesla`` accumulate their per-segment / per-step
  contributions in fp32. DSA runs outside autocast, in fp32.

The TF32 switches are process-wide; :func:`student_precision` sets them for
one matcher call and restores them after it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..augment import DSA_STRATEGIES, dsa
from ..choices import DISTILL_PRECISIONS, MEMORY_MODES
from ..errors import InvalidArgument
from ..models import FlatModel


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
        precision: ``fp32``, ``tf32`` or ``bf16`` (see the module docstring); refused on a device
            that cannot run it (:func:`check_precision`, on the labels' device).

    Example::

        matcher = TrajectoryMatcher(flat, labels, syn_steps=10, batch_syn=50, memory="checkpoint")
        out = matcher(images, lr, start, target, torch.Generator().manual_seed(0))
        out.loss, out.grad_images, out.grad_lr
    """

    def __init__(self, flat: FlatModel, labels: torch.Tensor, *, syn_steps: int, batch_syn: int,
                 memory: str = "exact", segment: int = 0, strategies: Sequence[str] = DSA_STRATEGIES,
                 precision: str = "fp32") -> None:
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
        check_precision(precision, labels.device)
        self.flat = flat
        self.labels = labels
        self.syn_steps = syn_steps
        self.batch_syn = batch_syn
        self.memory = memory
        self.segment = min(segment or math.ceil(math.sqrt(syn_steps)), syn_steps)
        self.strategies = tuple(strategies)
        self.precision = precision
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
        run = {"exact": self._exact, "checkpoint": self._checkpoint, "tesla": self._tesla}[self.memory]
        with student_precision(self.precision, images.device):
            return run(images, lr, start, target, denominator, plan)

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
        bf16 = self.precision == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = self.flat(theta, x)  # (b, classes); bf16 under autocast
        loss = F.cross_entropy(logits.to(theta.dtype), self.labels[batch])  # the loss in theta's precision
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
# Precision of the student steps
# --------------------------------------------------------------------------------------------


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse (one-line ``InvalidArgument``) a ``distill.precision`` that ``device`` cannot run.

    ``fp32`` runs anywhere; ``tf32`` needs a CUDA GPU of compute capability 8.0+ (Ampere and later);
    ``bf16`` runs on a CPU (emulated where the CPU has no bf16 instructions: correct but slow) or on
    a CUDA GPU of compute capability 8.0+ (earlier GPUs have no bf16 tensor cores).
    """
    if precision not in DISTILL_PRECISIONS:
        raise InvalidArgument(f"distill.precision must be one of {', '.join(DISTILL_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    capable = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if precision == "tf32" and not capable:
        raise InvalidArgument(f"distill.precision 'tf32' needs a CUDA GPU of compute capability 8.0 or later (TF32 "
                              f"tensor cores); device {_describe(device)} cannot run it; use --set distill.precision=fp32 (or bf16)")
    if precision == "bf16" and not (capable or device.type == "cpu"):
        raise InvalidArgument(f"distill.precision 'bf16' runs on a CPU or a CUDA GPU of compute capability 8.0 or "
                              f"later; device {_describe(device)} cannot run it; use fp32")


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"


@contextlib.contextmanager
def student_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Within the block, CUDA matmuls and cuDNN convolutions use TF32 if ``precision`` is ``tf32`` and
    full fp32 otherwise; the process's previous settings come back on exit. Nothing changes on other devices.

    (bf16 autocast is applied per forward pass by the matcher, not here.) Uses the
    ``fp32_precision`` settings where torch has them (2.9+), else ``allow_tf32``: torch refuses
    to mix the two APIs.
    """
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    tf32 = precision == "tf32"
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        switches = [(owner, "fp32_precision", "tf32" if tf32 else "ieee")  # rnn too: legacy readers see one value
                    for owner in (matmul, cudnn.conv, getattr(cudnn, "rnn", None)) if owner is not None]
    else:
        switches = [(matmul, "allow_tf32", tf32), (cudnn, "allow_tf32", tf32)]
    saved = [getattr(owner, name) for owner, name, _ in switches]
    try:
        for owner, name, value in switches:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved):
            setattr(owner, name, value)
