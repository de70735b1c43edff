"""Base distillation methods (``distill.method``): what one iteration of the loop does to the set.

SelMatch's two components do not depend on the base method: the initial set
(:func:`~autoselmatch.distill.initial_set`, the window or random real rows)
and the partial update (:class:`~autoselmatch.distill.RunState` moves only
the D_distill rows; D_select rows stay real, bit for bit, and still enter
the method's objective wherever it uses the synthetic set) are written once,
in the loop. A method supplies the rest:

- ``needs``: what it reads besides the dataset: ``experts`` (MTT's expert
  trajectories), ``nothing`` (DSA) or ``teacher`` (SRe2L's, trained and cached on first use);
- ``labels``: the set's labels: ``hard`` (one class per row: MTT, DSA) or
  ``soft`` (SRe2L: the teacher's outputs on each augmented image, at evaluation);
- ``evaluation``: how its sets are evaluated: ``hard-labels`` = a fresh network trains on the
  set's images and hard labels (:func:`autoselmatch.evaluate.evaluate_set`); ``teacher-kd`` =
  it trains against the teacher's soft outputs (:func:`~autoselmatch.distill._sre2l.kd_evaluate`);
  ``evaluate`` runs the latter (None: the hard-label one);
- ``optimizer``: the pixels' optimizer, from the ``distill`` settings;
- ``build``: its per-run :class:`Objective`, one call of which is one iteration;
- ``settings``: the ``distill`` settings it reads that not every method reads (MTT's expert
  segment and unrolling, DSA's ``gm_*``, SRe2L's ``sre2l_*``, ...). :func:`method_settings`
  drops the other methods' ones, so a tune study of one method is not refused because a
  setting only another method reads has changed (:func:`expert_settings` does the same
  for the ``experts`` section).

    method = METHODS.get(cfg.distill.method)
    objective = method.build(ds, cfg, labels, device, experts)
    loss, eta = objective(state)        # one iteration: state's D_distill rows (and eta) moved
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from ..config import DistillConfig, RunConfig, key_dict, to_dict
from ..data import ImageDataset
from ..errors import InvalidArgument
from ..models import FlatModel
from ..registry import Registry
from ..runtime import fault_point
from ._gradmatch import GradientMatcher
from ._sre2l import RECOVER_STRATEGIES, RecoverLoss, kd_evaluate, recover_augment, recover_batches, train_teacher
from ._student import ExpertSource, check_experts, dsa_strategies, student_network
from ._trajectory import TrajectoryMatcher

if TYPE_CHECKING:
    from ..evaluate import EvalResult
    from ._run import RunState


class Objective(Protocol):
    """One iteration of a base method on the run state.

    ``atomic``: True if the call changes ``state`` only in its last step (MTT: one update), so an
    interrupted call leaves ``state`` as it was except for generator draws; False (several image
    updates per iteration) makes the loop snapshot ``state`` first.
    """

    atomic: bool

    def __call__(self, state: RunState) -> tuple[float, float]:
        """Run one iteration, update ``state`` (its pixels, eta, generator, iteration count); return (loss, eta)."""
        ...


Builder = Callable[[ImageDataset, RunConfig, torch.Tensor, torch.device, "ExpertSource | None"], Objective]


@dataclass(frozen=True)
class Method:
    """A base distillation method (see the module docstring).

    Attributes:
        needs: ``experts``, ``nothing`` or ``teacher``.
        labels: ``hard`` or ``soft``.
        evaluation: ``hard-labels`` or ``teacher-kd``.
        optimizer: ``(pixels (d, C, H, W), distill settings) -> the pixels' optimizer``.
        build: ``(ds, cfg, labels (n,) on device, device, experts) -> Objective``.
        settings: The ``distill`` settings this method reads that some other method does not.
        evaluate: ``(ds, images, labels, cfg, distill_mask=, split=, runs=, fraction=, seed=, cached=) -> EvalResult``
            of ``teacher-kd`` (``cached``: use only what is cached, e.g. the teacher; a one-line error
            names what to run otherwise); None for ``hard-labels`` (:func:`autoselmatch.evaluate.evaluate_set`).
        revision: Raised when what the method computes from the same settings changes (:func:`method_revision`).
    """

    needs: str
    labels: str
    evaluation: str
    optimizer: Callable[[torch.Tensor, DistillConfig], torch.optim.Optimizer]
    build: Builder
    settings: tuple[str, ...] = ()
    evaluate: Callable[..., EvalResult] | None = None
    revision: int = 0


def _sgd(lr: Callable[[DistillConfig], float]) -> Callable[[torch.Tensor, DistillConfig], torch.optim.Optimizer]:
    """SGD with momentum ``distill.momentum`` at the learning rate ``lr(distill settings)``."""
    return lambda pixels, dc: torch.optim.SGD([pixels], lr=lr(dc), momentum=dc.momentum)


METHODS: Registry[Method] = Registry("distillation method")


def method_settings(dc: DistillConfig) -> dict[str, Any]:
    """The ``distill`` settings that shape a run of ``dc.method``: all of them (``to_dict``) but those that
    only other methods read (their :attr:`Method.settings`). ``method`` itself is always among them."""
    own = set(METHODS.get(dc.method).settings)
    others = {key for name in METHODS.names() for key in METHODS.get(name).settings} - own
    return {key: value for key, value in to_dict(dc).items() if key not in others}


def method_revision(dc: DistillConfig) -> dict[str, int]:
    """``{"revision": n}`` if ``dc.method`` has changed what it computes since its first release, else ``{}``.

    It enters every key of what the method makes (cached sets and reproduce cells, distillation
    checkpoints, tune studies' settings), so those made before the change are recomputed, not reused;
    a method at revision 0 keeps the keys it always had. DSA is at 1: its pixels step along the summed
    class losses and its network's SGD has momentum 0.5, as in the DC/DSA reference code (revision 0
    stepped along their mean, num_classes times smaller, without momentum).
    """
    revision = METHODS.get(dc.method).revision
    return {"revision": revision} if revision else {}


def method_key(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """``{"experts": ..., "distill": ...}``: the settings a cache key of a set distilled by
    ``cfg.distill.method`` hashes, those of :func:`expert_settings` and :func:`method_settings` less the
    ones older versions did not have while they hold the value those versions used
    (:func:`~autoselmatch.config.key_dict`), so a key made before either existed stays the same; and the
    method's :func:`method_revision`."""
    own = {"experts": expert_settings(cfg), "distill": method_settings(cfg.distill)}
    key = {section: {name: value for name, value in key_dict(section, getattr(cfg, section)).items()
                     if name in own[section]} for section in own}
    key["distill"].update(method_revision(cfg.distill))
    return key


def expert_settings(cfg: RunConfig) -> dict[str, Any]:
    """The ``experts`` settings that shape a run of ``cfg.distill.method``: all of them when the run reads
    experts (``mtt``; ``sre2l`` with ``distill.sre2l_teacher = "expert"``), else only ``model`` (the
    architecture of DSA's student networks and of SRe2L's trained teacher)."""
    needs = METHODS.get(cfg.distill.method).needs
    if needs == "experts" or (needs == "teacher" and cfg.distill.sre2l_teacher == "expert"):
        return to_dict(cfg.experts)
    return {"model": to_dict(cfg.experts.model)}


# --------------------------------------------------------------------------------------------
# mtt: trajectory matching against experts
# --------------------------------------------------------------------------------------------


class _TrajectoryObjective:
    """Draw an expert segment, compute loss (1) and its gradients, take one step on pixels and eta."""

    atomic = True

    def __init__(self, matcher: TrajectoryMatcher, experts: ExpertSource, dc: DistillConfig,
                 device: torch.device) -> None:
        self.matcher, self.experts, self.dc, self.device = matcher, experts, dc, device

    def __call__(self, state: RunState) -> tuple[float, float]:
        start, target = self.experts.sample(state.generator, max_start_epoch=self.dc.max_start_epoch,
                                            expert_epochs=self.dc.expert_epochs,
                                            min_start_epoch=self.dc.min_start_epoch)
        out = self.matcher(state.images(), state.lr, start.to(self.device, torch.float32),
                           target.to(self.device, torch.float32), state.generator)
        fault_point("distill.iteration")
        return state.step(out)


def _build_mtt(ds: ImageDataset, cfg: RunConfig, labels: torch.Tensor, device: torch.device,
               experts: ExpertSource | None) -> Objective:
    dc = cfg.distill
    if dc.batch_syn > len(labels):
        raise InvalidArgument(f"distill.batch_syn ({dc.batch_syn}) must be at most the synthetic set's size "
                              f"{len(labels)}; lower it with --set distill.batch_syn=N")
    flat = FlatModel(student_network(cfg, ds).to(device))
    check_experts(experts, ds, cfg, flat.num_params)
    matcher = TrajectoryMatcher(flat, labels, syn_steps=dc.syn_steps, batch_syn=dc.batch_syn, memory=dc.memory,
                                segment=dc.segment, strategies=dsa_strategies(cfg), precision=dc.precision)
    return _TrajectoryObjective(matcher, experts, dc, device)  # type: ignore[arg-type]  # checked above


METHODS.register("mtt")(Method(needs="experts", labels="hard", evaluation="hard-labels",
                               optimizer=_sgd(lambda dc: dc.lr_img), build=_build_mtt,
                               settings=("syn_steps", "expert_epochs", "max_start_epoch", "min_start_epoch",
                                         "batch_syn", "lr_img", "lr_lr", "lr_teacher", "memory", "segment",
                                         "precision", "momentum", "dsa", "dsa_strategies")))


# --------------------------------------------------------------------------------------------
# dsa: gradient matching with Siamese augmentation
# --------------------------------------------------------------------------------------------

GM_NET_MOMENTUM = 0.5  # the inner-loop network's SGD momentum in the DC/DSA reference code


class _GradientObjective:
    """A fresh network (seeded from the run's generator), then ``gm_outer_loop`` image updates, each but the
    last followed by ``gm_inner_loop`` epochs of training that network on the set (SGD at ``gm_lr_net``, momentum
    :data:`GM_NET_MOMENTUM`). Loss: mean over updates."""

    atomic = False

    def __init__(self, matcher: GradientMatcher, ds: ImageDataset, cfg: RunConfig, device: torch.device) -> None:
        self.matcher, self.ds, self.cfg, self.device = matcher, ds, cfg, device

    def __call__(self, state: RunState) -> tuple[float, float]:
        dc = self.cfg.distill
        seed = int(torch.randint(0, 2**62, (), generator=state.generator))
        with torch.random.fork_rng(devices=[]):  # the network's init from the run's generator, not the global RNG
            torch.manual_seed(seed)
            net = student_network(self.cfg, self.ds)
        net = net.to(self.device)
        optimizer = torch.optim.SGD(net.parameters(), lr=dc.gm_lr_net, momentum=GM_NET_MOMENTUM)
        losses = []
        for outer in range(dc.gm_outer_loop):
            loss, grad = self.matcher.loss_and_grad(net, state.images(), state.generator)  # (), (n, C, H, W)
            state.move(grad)
            losses.append(loss)
            if outer < dc.gm_outer_loop - 1:
                self.matcher.train_network(net, optimizer, state.images(), state.generator)
        fault_point("distill.iteration")
        return state.finish(torch.stack(losses).mean())


def _build_dsa(ds: ImageDataset, cfg: RunConfig, labels: torch.Tensor, device: torch.device,
               experts: ExpertSource | None) -> Objective:
    return _GradientObjective(GradientMatcher(ds, labels, cfg.distill, dsa_strategies(cfg)), ds, cfg, device)


METHODS.register("dsa")(Method(needs="nothing", labels="hard", evaluation="hard-labels",
                               optimizer=_sgd(lambda dc: dc.gm_lr_img), build=_build_dsa,
                               settings=("gm_outer_loop", "gm_inner_loop", "gm_batch_real", "gm_lr_img", "gm_lr_net",
                                         "momentum", "dsa", "dsa_strategies"), revision=1))


# --------------------------------------------------------------------------------------------
# sre2l: recover against a teacher's BatchNorm statistics, relabel with its outputs
# --------------------------------------------------------------------------------------------


class _RecoverObjective:
    """One Adam step on the whole set: the recover loss of every batch (streamed, one graph at a time),
    each batch with its own crop / scale / flip draw; the lr follows a cosine over ``distill.iterations``."""

    atomic = True

    def __init__(self, loss: RecoverLoss, labels: torch.Tensor, dc: DistillConfig, device: torch.device) -> None:
        self.loss, self.labels, self.dc = loss, labels, dc
        self.batches = recover_batches(labels, dc.sre2l_batch)
        self._aug_generator = torch.Generator(device=device)

    def __call__(self, state: RunState) -> tuple[float, float]:
        images = state.images()  # (n, C, H, W)
        grad = torch.zeros_like(images)
        total = images.new_zeros(())
        for batch in self.batches:
            seed = int(torch.randint(0, 2**62, (), generator=state.generator))
            strategy = RECOVER_STRATEGIES[int(torch.randint(len(RECOVER_STRATEGIES), (), generator=state.generator))]
            x = images[batch].requires_grad_(True)  # (b, C, H, W): only this batch's graph is alive
            loss, _ = self.loss(recover_augment(x, seed, strategy, self._aug_generator), self.labels[batch])
            (grad[batch],) = torch.autograd.grad(loss, x)
            total = total + loss.detach() * len(batch)
        fault_point("distill.iteration")
        for group in state.opt_img.param_groups:
            group["lr"] = 0.5 * self.dc.sre2l_lr_img * (1 + math.cos(math.pi * state.iteration / self.dc.iterations))
        state.move(grad)
        return state.finish(total / len(images))


def _build_sre2l(ds: ImageDataset, cfg: RunConfig, labels: torch.Tensor, device: torch.device,
                 experts: ExpertSource | None) -> Objective:
    teacher = train_teacher(ds, cfg, device)
    return _RecoverObjective(RecoverLoss(teacher, cfg.distill.sre2l_r_bn), labels, cfg.distill, device)


def _kd_evaluate(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor, cfg: RunConfig, *,
                 distill_mask: torch.Tensor | None, split: str, runs: int, fraction: float, seed: int,
                 cached: bool = False) -> EvalResult:
    """The set evaluated by distillation from the teacher (``cached``: only a cached one, never trained here);
    ``labels`` are not used; uint8 ``images`` are normalised with ``ds``."""
    teacher = train_teacher(ds, cfg, images.device, train=not cached)
    if not images.is_floating_point():
        images = ds.normalize(images)
    return kd_evaluate(ds, images, teacher, cfg=cfg.evaluate, temperature=cfg.distill.sre2l_temperature,
                       distill_mask=distill_mask, split=split, runs=runs, fraction=fraction, seed=seed)


METHODS.register("sre2l")(Method(
    needs="teacher", labels="soft", evaluation="teacher-kd",
    optimizer=lambda pixels, dc: torch.optim.Adam([pixels], lr=dc.sre2l_lr_img, betas=(0.5, 0.9)),
    build=_build_sre2l, evaluate=_kd_evaluate,
    settings=("sre2l_teacher_epochs", "sre2l_teacher_lr", "sre2l_lr_img", "sre2l_r_bn", "sre2l_batch",
              "sre2l_temperature", "sre2l_teacher")))
