"""SRe2L (Yin, Xing & Shen, NeurIPS 2023): squeeze, recover, relabel.

- **Squeeze**: one teacher network with BatchNorm (``experts.model``) trained on
  the real training split (:func:`train_teacher`; or a cached expert's last
  snapshot, :func:`expert_teacher`), cached under
  ``CACHE/teachers/<dataset>-<key>/teacher.pt``. Training writes
  ``state.pt`` after every epoch (atomically) and draws each epoch's batches
  and augmentation from generators seeded by (seed, epoch), so a run killed
  at any point (SIGKILL included) resumes from its last epoch and ends with
  the same weights as an uninterrupted one.
- **Recover** (:class:`RecoverLoss`): the synthetic images are optimised so
  that the teacher (in eval mode) classifies them as their labels and the
  statistics of each BatchNorm layer's input over a batch match that
  layer's running statistics:
  ``CE(teacher(A(x)), y) + r_bn * sum_l (||mu_l(A(x)) - mu_l||_2 + ||var_l(A(x)) - var_l||_2)``,
  A a random crop / scale / flip (DSA's, the nearest to SRe2L's
  RandomResizedCrop + flip). The set streams through the teacher in
  batches of ``sre2l_batch`` rows that mix the classes, so activation memory
  depends on the batch, not on the set; pixels use Adam (betas 0.5, 0.9) with
  a cosine-decayed lr, as SRe2L does. D_select rows are in the batches (their
  statistics count) but do not move.
- **Relabel** (:func:`kd_evaluate`): the set's labels are the teacher's soft
  outputs on each augmented image, computed as the student trains: the
  student minimises ``T^2 * KL(softmax(teacher(x)/T) || softmax(student(x)/T))``
  on the augmented set images (temperature ``sre2l_temperature``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import dsa, get_augmentation, simple_augment
from ..config import EvalConfig, RunConfig, key_dict
from ..data import ImageDataset
from ..errors import DataError, InvalidArgument, TrainingDiverged
from ..fileio import file_lock, load_torch, save_torch, stable_hash
from ..models import FlatModel
from ..runtime import LOG, fault_point, progress

if TYPE_CHECKING:
    from ..evaluate import EvalResult

TEACHER_FILE = "teacher.pt"
STATE_FILE = "state.pt"
TEACHER_BATCH = 128
TEACHER_MOMENTUM = 0.9
TEACHER_WEIGHT_DECAY = 5e-4
RECOVER_STRATEGIES = ("crop", "scale", "flip")


# --------------------------------------------------------------------------------------------
# Squeeze: the teacher and its cache
# --------------------------------------------------------------------------------------------


def teacher_network(cfg: RunConfig, ds: ImageDataset) -> nn.Module:
    """A fresh ``experts.model`` for ``ds`` initialised from ``cfg.seed``; refused (one line) unless it has
    BatchNorm layers."""
    channels, size, _ = ds.image_shape
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        net = cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise InvalidArgument(f"distill.method 'sre2l' needs a teacher with BatchNorm, but experts.model "
                              f"{cfg.experts.model.name} {dict(cfg.experts.model.options)} has none; "
                              f"use e.g. --set experts.model.norm=batch")
    return net


def teacher_key(ds: ImageDataset, cfg: RunConfig) -> dict[str, Any]:
    """What the teacher's weights depend on (its cache key)."""
    dc = cfg.distill
    return {"dataset": ds.name, "data": {k: v for k, v in key_dict("data", cfg.data).items()
                                         if k not in ("root", "download")},
            "train": len(ds.train_index), "model": cfg.experts.model.to_dict(), "epochs": dc.sre2l_teacher_epochs,
            "lr": dc.sre2l_teacher_lr, "batch_size": TEACHER_BATCH, "momentum": TEACHER_MOMENTUM,
            "weight_decay": TEACHER_WEIGHT_DECAY, "augment": "simple", "seed": cfg.seed}


def teacher_dir(ds: ImageDataset, cfg: RunConfig) -> Path:
    """``CACHE/teachers/<dataset>-<hash of the key>``."""
    return cfg.cache_path / "teachers" / f"{ds.name.replace('/', '-').replace(':', '-')}-{stable_hash(teacher_key(ds, cfg))}"


def train_teacher(ds: ImageDataset, cfg: RunConfig, device: torch.device, *, train: bool = True) -> nn.Module:
    """The cached teacher of ``ds`` (trained first if missing, resumed if a run was cut short), in eval mode;
    with ``distill.sre2l_teacher = "expert"``, :func:`expert_teacher` instead.

    Plain SGD (momentum 0.9, weight decay 5e-4, batch 128, cosine lr from ``distill.sre2l_teacher_lr``) for
    ``distill.sre2l_teacher_epochs`` epochs with random crop + flip, on ``ds.train_index``.

    Args:
        train: False: only load a cached teacher; a missing one raises a one-line :class:`DataError` that
            names the command that trains it (nothing is written).
    """
    if cfg.distill.sre2l_teacher == "expert":
        return expert_teacher(ds, cfg, device)
    folder = teacher_dir(ds, cfg)
    if not train and not (folder / TEACHER_FILE).is_file():
        raise DataError(f"no SRe2L teacher for these settings in {folder}; train it with `autoselmatch distill "
                        f"--dataset {ds.name} --method sre2l --seed {cfg.seed}` and the settings the set was made "
                        f"with (experts.model, distill.sre2l_teacher_*), or pass the --cache-dir that holds it")
    folder.mkdir(parents=True, exist_ok=True)
    key = teacher_key(ds, cfg)
    net = teacher_network(cfg, ds)
    with file_lock(folder / ".teacher.lock"):  # one process trains; the others wait and load its result
        final = folder / TEACHER_FILE
        if final.is_file():
            blob = load_torch(final, what="teacher", remedy="delete it to retrain")
            if blob.get("key") != key:
                raise InvalidArgument(f"teacher {final} was made with other settings; delete it to retrain")
            net.load_state_dict(blob["model"])
            return net.to(device).eval()
        _train(net, ds, cfg, folder, key, device)
        save_torch({"key": key, "model": net.state_dict()}, final)
        (folder / STATE_FILE).unlink(missing_ok=True)
        LOG.info("saved the SRe2L teacher to %s", final)
    return net.to(device).eval()


def expert_teacher(ds: ImageDataset, cfg: RunConfig, device: torch.device) -> nn.Module:
    """The first cached expert's last stored snapshot as the teacher (``experts.model``, which must have
    BatchNorm), in eval mode. Experts store parameters only, so the BatchNorm running statistics are
    measured in one pass over the training split (train mode, cumulative average, no augmentation).

    Raises:
        DataError: No cached experts for these settings (the message names the command), or their
            parameter count does not fit the model.
        InvalidArgument: The experts were trained with ZCA whitening (the teacher must see normalised images).
    """
    from ..experts import load_experts

    store = load_experts(ds, cfg)
    if store.zca is not None:
        raise InvalidArgument("experts trained with ZCA whitening cannot serve as the SRe2L teacher; use "
                              "distill.sre2l_teacher = \"train\" or experts with experts.zca = false")
    net = teacher_network(cfg, ds)
    flat = FlatModel(net)
    if flat.num_params != store.num_params:
        raise DataError(f"experts have {store.num_params} parameters but the teacher {cfg.experts.model.name} has "
                        f"{flat.num_params}; use distill.sre2l_teacher = \"train\"")
    views = flat.unflatten(store.epoch(0, store.num_epochs))
    net.to(device).train()
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(views[name])
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the pass
        x_all = ds.split("train")[0]
        for start in range(0, len(x_all), TEACHER_BATCH):
            net(ds.normalize(x_all[start:start + TEACHER_BATCH].to(device)))
    LOG.info("SRe2L teacher: expert 0 of %s after %d stored snapshots", store.directory, store.num_epochs)
    return net.eval()


def _train(net: nn.Module, ds: ImageDataset, cfg: RunConfig, folder: Path, key: dict[str, Any],
           device: torch.device) -> None:
    dc = cfg.distill
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=dc.sre2l_teacher_lr, momentum=TEACHER_MOMENTUM,
                                weight_decay=TEACHER_WEIGHT_DECAY)
    first = 0
    state_path = folder / STATE_FILE
    if state_path.is_file():
        state = load_torch(state_path, what="teacher checkpoint", remedy="delete it to start over")
        if state.get("key") == key:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first = int(state["epoch"])
            LOG.info("resuming the SRe2L teacher at epoch %d of %d", first, dc.sre2l_teacher_epochs)
    x_all, y_all = ds.split("train")
    x_all, y_all = ds.normalize(x_all.to(device)), y_all.to(device)
    steps = math.ceil(len(y_all) / TEACHER_BATCH)
    for epoch in progress(range(first, dc.sre2l_teacher_epochs), desc="teacher", total=dc.sre2l_teacher_epochs - first):
        for group in optimizer.param_groups:  # cosine schedule over the epochs
            group["lr"] = 0.5 * dc.sre2l_teacher_lr * (1 + math.cos(math.pi * epoch / dc.sre2l_teacher_epochs))
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        aug = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(y_all), generator=generator).to(device)
        for step in range(steps):
            batch = order[step * TEACHER_BATCH:(step + 1) * TEACHER_BATCH]
            loss = F.cross_entropy(net(simple_augment(x_all[batch], generator=aug, flip=ds.flip)), y_all[batch])
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the SRe2L teacher diverged in epoch {epoch + 1}; lower "
                                       f"distill.sre2l_teacher_lr ({dc.sre2l_teacher_lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        save_torch({"key": key, "epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict()},
                   state_path)
        fault_point("teacher.epoch")


# --------------------------------------------------------------------------------------------
# Recover: BatchNorm statistics + cross-entropy
# --------------------------------------------------------------------------------------------


class RecoverLoss:
    """SRe2L's recover loss of one batch against ``teacher`` (kept in eval mode).

    Args:
        teacher: A network with BatchNorm layers (their running statistics are the targets).
        r_bn: Weight of the BatchNorm-statistics term.
    """

    def __init__(self, teacher: nn.Module, r_bn: float) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.r_bn = r_bn
        self.layers = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._inputs: list[torch.Tensor] = []
        for layer in self.layers:
            layer.register_forward_hook(lambda module, args, out: self._inputs.append(args[0]))

    def bn_loss(self, x: torch.Tensor) -> torch.Tensor:
        """sum over BatchNorm layers of ||batch mean - running mean||_2 + ||batch var - running var||_2 on x (b, C, H, W)."""
        return self(x, None)[1]

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, BatchNorm-statistics term) of the batch x (b, C, H, W) with labels (b,) (None: no CE)."""
        self._inputs = []
        logits = self.teacher(x)
        terms = []
        for layer, inp in zip(self.layers, self._inputs):
            dims = [0] + list(range(2, inp.dim()))
            mean, var = inp.mean(dims), inp.var(dims, unbiased=False)
            terms.append(torch.norm(mean - layer.running_mean, 2) + torch.norm(var - layer.running_var, 2))
        self._inputs = []
        bn = torch.stack(terms).sum()
        ce = F.cross_entropy(logits, labels) if labels is not None else bn.new_zeros(())
        return ce + self.r_bn * bn, bn.detach()


def recover_batches(labels: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Row indices (on ``labels``' device) of the recover batches: rows ordered by their rank within their class,
    then by class, cut into chunks of ``batch``, so every batch mixes the classes (as SRe2L's do)."""
    n = len(labels)
    rank = torch.zeros(n, dtype=torch.long)
    cpu = labels.cpu()
    for c in cpu.unique():
        rows = torch.nonzero(cpu == c).flatten()
        rank[rows] = torch.arange(len(rows))
    order = sorted(range(n), key=lambda i: (int(rank[i]), int(cpu[i])))
    return [torch.tensor(order[i:i + batch], device=labels.device) for i in range(0, n, batch)]


def recover_augment(x: torch.Tensor, seed: int, strategy: str, generator: torch.Generator) -> torch.Tensor:
    """The recover step's differentiable augmentation of a batch (one of :data:`RECOVER_STRATEGIES`)."""
    return dsa(x, generator=generator.manual_seed(seed), strategy=strategy)


# --------------------------------------------------------------------------------------------
# Relabel: evaluation by knowledge distillation from the teacher
# --------------------------------------------------------------------------------------------


def kd_evaluate(ds: ImageDataset, images: torch.Tensor, teacher: nn.Module, *, cfg: EvalConfig, temperature: float,
                distill_mask: torch.Tensor | None = None, split: str = "val", runs: int = 1, fraction: float = 1.0,
                seed: int = 0) -> EvalResult:
    """Accuracy on ``split`` of ``runs`` students (seeds ``seed, seed + 1, ...``) trained on the set with the
    teacher's soft labels.

    Each student (``cfg.model``) trains for the budget of :func:`autoselmatch.evaluate.budget_steps` (times
    ``fraction``) with SGD (``cfg.lr``, momentum, weight decay, cosine schedule) on minibatches of the set
    images (n, C, H, W) augmented per ``cfg.augment``; its target is ``softmax(teacher(x) / temperature)``
    on the same augmented batch (SRe2L's relabel). Hard labels are not used.
    """
    from ..evaluate import EvalResult, batch_bounds, budget_steps, hit_rates, hits, paper_share

    started = time.perf_counter()
    device = images.device
    teacher = teacher.to(device).eval()
    augment = get_augmentation(cfg.augment)
    steps = budget_steps(cfg, n_set=len(images), n_full=len(ds.train_labels), fraction=fraction)
    eval_x, eval_y = ds.split(split)
    eval_x, eval_y = ds.normalize(eval_x.to(device)), eval_y.to(device)
    channels, size, _ = ds.image_shape
    mask = None if distill_mask is None else distill_mask.to(device)
    accs, seconds = [], []
    image_hits: torch.Tensor | None = None  # (m,) networks right per evaluation image
    for run in range(runs):
        run_start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + run)
        aug = torch.Generator(device=device).manual_seed(seed + run)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + run)
            student = cfg.model.build(channels=channels, num_classes=ds.num_classes, image_size=size)
        student = student.to(device).train()
        optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        order = torch.empty(0, dtype=torch.long)
        for _ in range(steps):
            if len(order) < min(cfg.batch_size, len(images)):
                order = torch.cat([order, torch.randperm(len(images), generator=generator)])
            batch, order = order[:cfg.batch_size].to(device), order[cfg.batch_size:]
            x = augment(images[batch], None if mask is None else mask[batch], aug, flip=ds.flip)
            with torch.no_grad():
                target = F.softmax(teacher(x) / temperature, dim=1)
            log_p = F.log_softmax(student(x) / temperature, dim=1)
            loss = F.kl_div(log_p, target, reduction="batchmean") * temperature**2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        correct = hits(student, eval_x, eval_y, networks=1)  # (1, m)
        image_hits = correct[0].long() if image_hits is None else image_hits + correct[0]
        accs += hit_rates(correct)
        seconds.append(time.perf_counter() - run_start)
    mean = sum(accs) / runs
    return EvalResult(mean=mean, std=math.sqrt(sum((a - mean) ** 2 for a in accs) / runs), accuracies=accs,
                      split=split, steps=steps, epochs=steps / (len(batch_bounds(len(images), cfg.batch_size)) - 1),
                      seconds=time.perf_counter() - started, runs=runs, n_images=len(images),
                      n_distill=0 if mask is None else int(mask.sum()), model=cfg.model.name,
                      augment=f"{cfg.augment}+kd(T={temperature:g})", seed=seed, train_seconds=seconds,
                      paper_share=paper_share(steps, n_full=len(ds.train_labels), batch_size=cfg.batch_size),
                      image_hits=image_hits.cpu())

