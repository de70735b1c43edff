"""Seconds per distillation iteration and peak memory of each base method (``distill.method``).

One iteration of each method's objective (:data:`autoselmatch.distill.METHODS`) on a synthetic set of
``--ipc`` rows per class at a dataset's geometry, all rows learning (alpha = 1), with that preset's
settings (``--set`` overrides them):

- ``mtt``: N student steps against a random expert pair (the preset's ``syn_steps``, ``batch_syn``,
  ``memory``); the time does not depend on the experts' values.
- ``dsa``: a fresh network, ``gm_outer_loop`` matching updates over every class (``gm_batch_real`` random
  real images per class) with ``gm_inner_loop`` epochs of training in between.
- ``sre2l``: one recover step over the whole set in batches of ``sre2l_batch`` against a teacher
  (``experts.model``) whose BatchNorm running statistics come from one pass over real images (untrained:
  the cost does not depend on its weights).

Images are random uint8 pixels of the geometry (``max(ipc, gm_batch_real)`` per class), so nothing is
downloaded. Each (geometry, method) runs in a fresh subprocess: after setup the peak counter is reset
(CPU: the kernel's RSS high-water mark via ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``),
then ``--warmup`` + ``--iterations`` iterations run; peak memory is above the post-setup level, time is
the median of the timed iterations (``torch.cuda.synchronize`` around each on a GPU), as wall time and
as the process's CPU time (with one thread, the work itself even when other jobs share the cores).

    python bench/method_speed.py                                   # both geometries, all methods, CPU
    python bench/method_speed.py --geometry cifar100 --methods dsa --set distill.gm_outer_loop=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from autoselmatch.config import apply_overrides, load_preset, parse_assignment
from autoselmatch.data import ImageDataset
from autoselmatch.distill import METHODS, RunState, TrajectoryMatcher, dsa_strategies, student_network
from autoselmatch.distill._methods import _RecoverObjective, _TrajectoryObjective
from autoselmatch.distill._sre2l import RecoverLoss, teacher_network
from autoselmatch.models import FlatModel
from distill_speed import _peak, _reset_peak  # bench/ is on the path of a script run from it

#: (preset, channels, side, classes, default IPC): Fashion-MNIST at 5 % of its training set, CIFAR-100 at IPC 50.
GEOMETRIES = {"fashion-mnist": ("fashion-mnist", 1, 28, 10, 300), "cifar100": ("cifar100", 3, 32, 100, 50)}


def fake_dataset(channels: int, side: int, classes: int, per_class: int, seed: int) -> ImageDataset:
    """Random uint8 images of the geometry, ``per_class`` per class, all in the training pool."""
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    images = torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageDataset(name="bench", train_images=images, train_labels=labels, test_images=images[:classes],
                        test_labels=labels[:classes], classes=tuple(str(c) for c in range(classes)),
                        mean=(0.5,) * channels, std=(0.25,) * channels, train_index=torch.arange(n),
                        val_index=torch.zeros(0, dtype=torch.long))


class RandomExperts:
    """An expert source of random (start, target) pairs: what MTT's timing needs."""

    def __init__(self, num_params: int) -> None:
        self.num_params = num_params

    def sample(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int,
               min_start_epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randn(self.num_params, generator=generator) * 0.05
        return start, start + torch.randn(self.num_params, generator=generator) * 0.01


def build(method: str, cfg: Any, ds: ImageDataset, labels: torch.Tensor, device: torch.device) -> Any:
    if method == "mtt":
        dc = cfg.distill
        flat = FlatModel(student_network(cfg, ds).to(device))
        matcher = TrajectoryMatcher(flat, labels, syn_steps=dc.syn_steps, batch_syn=dc.batch_syn, memory=dc.memory,
                                    segment=dc.segment, strategies=dsa_strategies(cfg), precision=dc.precision)
        return _TrajectoryObjective(matcher, RandomExperts(flat.num_params), dc, device)
    if method == "sre2l":
        teacher = teacher_network(cfg, ds).to(device).train()
        with torch.no_grad():  # running statistics of one pass over real images
            for m in teacher.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None  # cumulative average
            teacher(ds.normalize(ds.train_images[:512].to(device)))
        return _RecoverObjective(RecoverLoss(teacher, cfg.distill.sre2l_r_bn), labels, cfg.distill, device)
    return METHODS.get(method).build(ds, cfg, labels, device, None)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One (geometry, method) in this process."""
    preset, channels, side, classes, default_ipc = GEOMETRIES[args.geometry]
    ipc = args.ipc or default_ipc
    overrides = dict(parse_assignment(a) for a in args.set)
    cfg = apply_overrides(load_preset(preset), {"device": args.device, "distill.method": args.methods[0],
                                                "distill.iterations": args.warmup + args.iterations, **overrides})
    device = torch.device(args.device)
    torch.manual_seed(0)
    ds = fake_dataset(channels, side, classes, max(ipc, cfg.distill.gm_batch_real), seed=0).to(device)
    rows = torch.cat([torch.nonzero(ds.train_labels == c).flatten()[:ipc] for c in range(classes)])
    labels = ds.train_labels[rows].to(device)
    images = ds.normalize(ds.train_images[rows]).to(device)
    method = METHODS.get(args.methods[0])
    objective = build(args.methods[0], cfg, ds, labels, device)
    state = RunState(images, torch.arange(len(rows), device=device), cfg.distill, cfg.seed,
                     image_optimizer=lambda pixels: method.optimizer(pixels, cfg.distill))
    base = _reset_peak(device)
    times, cpu_times = [], []
    for i in range(args.warmup + args.iterations):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        objective(state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {"geometry": args.geometry, "method": args.methods[0], "ipc": ipc, "images": len(rows),
            "s_per_iteration": statistics.median(times), "times": times,
            "cpu_s_per_iteration": statistics.median(cpu_times), "peak_above_base_mib": _peak(device) - base,
            "settings": overrides, "device": args.device, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", nargs="+", choices=sorted(GEOMETRIES), default=sorted(GEOMETRIES))
    parser.add_argument("--methods", nargs="+", choices=METHODS.names(), default=["mtt", "dsa", "sre2l"])
    parser.add_argument("--ipc", type=int, default=None, help="Images per class (default: the geometry's).")
    parser.add_argument("--iterations", type=int, default=2, help="Timed iterations.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="A setting over the preset's, e.g. distill.gm_outer_loop=2 (repeatable).")
    parser.add_argument("--json", default=None, help="Also write the rows to this file.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.geometry = args.geometry[0]
        print(json.dumps(measure(args)))
        return
    rows = []
    for geometry in args.geometry:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", "--geometry", geometry, "--methods", method,
                   "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--device", args.device]
            cmd += ["--ipc", str(args.ipc)] if args.ipc else []
            for item in args.set:
                cmd += ["--set", item]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{geometry} {method} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{geometry:14s} {method:6s} ipc {row['ipc']:4d}  {row['s_per_iteration']:8.3f} s/iteration "
                  f"(CPU time {row['cpu_s_per_iteration']:8.3f} s)  peak +{row['peak_above_base_mib']:8.1f} MiB",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
