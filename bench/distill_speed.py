"""Seconds per distillation iteration and peak memory: exact / checkpoint / tesla vs. a naive reference loop.

The naive loop is written the way the public MTT/SelMatch code does it: the
student is an ``nn.Module`` re-parameterised per step from a flat vector
(``ReparamModule`` style: views set as module attributes, BatchNorm keeping
running statistics), every intermediate parameter vector is kept in a list,
``torch.autograd.grad(..., create_graph=True)`` is taken at every step, and
one ``backward()`` of the matching loss reaches the pixels and the learnable
lr. The core's modes run :class:`autoselmatch.distill.TrajectoryMatcher` plus
the same two SGD steps. Same network, data, N and batch, and the very same
minibatches and DSA draws (the naive loop replays the matcher's
``StudentPlan``), so every mode does the same work; alpha = 1 (all rows learn).

Peak memory is measured per (mode, N) in a fresh subprocess, so that peaks do not mix:

- CPU: peak resident memory above the post-setup level. The kernel's RSS
  high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after
  setup (data, model, optimizers built), then read after two iterations.
  (Resetting after a first iteration would hide the peak: the allocator
  keeps freed memory resident.)
- CUDA: ``torch.cuda.max_memory_allocated`` over the same span (after
  ``reset_peak_memory_stats``), absolute and above the allocation at the start.

Time per iteration is wall time (``torch.cuda.synchronize`` around it on a GPU),
measured in one process per N where the modes take turns (round-robin, after
one warm-up each), so drifting load from other processes hits every mode
alike; mean ± std and median over the timed iterations.

    python bench/distill_speed.py                      # CPU: ConvNet w32, 16x16, N = 20 and 40, b = 100
    python bench/distill_speed.py --device cuda --width 128 --image-size 32 --classes 100 --ipc 100 \\
        --syn-steps 55 --batch 125 --iterations 3      # CIFAR-100 geometry on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoselmatch.distill import StudentPlan, TrajectoryMatcher, batch_stats_only
from autoselmatch.models import FlatModel, build_model

MODES = ("naive", "exact", "checkpoint", "tesla")


# --------------------------------------------------------------------------------------------
# The naive reference loop (MTT's distill.py structure)
# --------------------------------------------------------------------------------------------


class ReparamStudent:
    """An nn.Module driven by a flat parameter vector, MTT ``ReparamModule`` style.

    Parameters are deleted from their modules once; each forward sets views
    of the flat vector as plain attributes of the modules, then calls the module.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.slots = []  # (owner module, attribute name, shape, numel)
        for name, param in list(module.named_parameters()):
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            self.slots.append((owner, attr, param.shape, param.numel()))
        for owner, attr, _, _ in self.slots:
            delattr(owner, attr)

    def __call__(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        offset = 0
        for owner, attr, shape, numel in self.slots:
            setattr(owner, attr, flat_param[offset:offset + numel].view(shape))
            offset += numel
        return self.module(x)


def naive_iteration(student: ReparamStudent, image_syn: torch.Tensor, label_syn: torch.Tensor, syn_lr: torch.Tensor,
                    start: torch.Tensor, target: torch.Tensor, opt_img: torch.optim.Optimizer,
                    opt_lr: torch.optim.Optimizer, *, plan: StudentPlan, generator: torch.Generator) -> float:
    """One MTT iteration; minibatches and DSA draws come from ``plan``, so it does the core's exact work."""
    student_params = [start.clone().requires_grad_(True)]
    for step, these in enumerate(plan.batches):
        x = plan.augment(image_syn[these], step, generator)
        ce = F.cross_entropy(student(x, flat_param=student_params[-1]), label_syn[these])
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    param_loss = F.mse_loss(student_params[-1], target, reduction="sum")
    param_dist = F.mse_loss(start, target, reduction="sum")
    grand_loss = param_loss / param_dist
    opt_img.zero_grad()
    opt_lr.zero_grad()
    grand_loss.backward()
    opt_img.step()
    opt_lr.step()
    return grand_loss.item()


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def _rss_kib() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def _reset_peak(device: torch.device) -> float:
    """Reset the peak counter; return the current level in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    return _rss_kib()["VmRSS"] / 1024


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_kib()["VmHWM"] / 1024


def build_iteration(args: argparse.Namespace, mode: str, syn_steps: int) -> Callable[[], None]:
    """One distillation iteration of ``mode`` as a closure (network, set and optimizers built once)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = build_model("convnet", channels=args.channels, num_classes=args.classes, image_size=args.image_size,
                         depth=args.depth, width=args.width, norm="batch").to(device).train()
    n = args.classes * args.ipc
    images = torch.randn(n, args.channels, args.image_size, args.image_size, device=device)
    labels = (torch.arange(n, device=device) % args.classes).long()
    start = FlatModel(module).flatten()
    target = start + 0.01 * torch.randn_like(start)
    generator = torch.Generator(device=device)  # re-seeded per step from the plan
    control = torch.Generator().manual_seed(0)  # batches and DSA draws: the same sequence in every mode
    pixels = images.clone().requires_grad_(True)
    lr = torch.tensor(0.01, device=device, requires_grad=True)
    opt_img = torch.optim.SGD([pixels], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([lr], lr=1e-5, momentum=0.5)

    if mode == "naive":
        planner = TrajectoryMatcher(FlatModel(module), labels, syn_steps=syn_steps, batch_syn=args.batch)
        student = ReparamStudent(module)

        def iteration() -> None:
            naive_iteration(student, pixels, labels, lr, start, target, opt_img, opt_lr,
                            plan=planner.draw(n, control), generator=generator)
        return iteration

    matcher = TrajectoryMatcher(FlatModel(batch_stats_only(module)), labels, syn_steps=syn_steps,
                                batch_syn=args.batch, memory=mode, segment=args.segment)

    def iteration() -> None:
        out = matcher(pixels.detach(), lr, start, target, control)
        pixels.grad, lr.grad = out.grad_images, out.grad_lr
        opt_img.step()
        opt_lr.step()
        out.loss.item()  # the loop logs the loss every iteration
    return iteration


def measure_memory(args: argparse.Namespace, mode: str, syn_steps: int) -> dict[str, Any]:
    """Peak memory of two iterations (run alone in a fresh process)."""
    device = torch.device(args.device)
    iteration = build_iteration(args, mode, syn_steps)
    base = _reset_peak(device)  # after setup; before the first iteration, whose memory the allocator keeps
    try:
        iteration()
        iteration()
    except torch.cuda.OutOfMemoryError:
        return {"mode": mode, "syn_steps": syn_steps, "oom": True}
    peak = _peak(device)
    return {"mode": mode, "syn_steps": syn_steps, "peak_mib": peak, "base_mib": base, "peak_above_base_mib": peak - base}


def measure_time(args: argparse.Namespace, syn_steps: int) -> dict[str, list[float] | None]:
    """Seconds per iteration of every mode, interleaved round-robin in one process.

    On a shared machine the load drifts over minutes; taking turns gives
    every mode the same conditions. A mode that runs out of GPU memory maps to None.
    """
    device = torch.device(args.device)
    iterations: dict[str, Callable[[], None]] = {}
    for mode in args.modes:
        iteration = build_iteration(args, mode, syn_steps)
        try:
            iteration()  # warm-up
            iterations[mode] = iteration
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    times: dict[str, list[float] | None] = {mode: ([] if mode in iterations else None) for mode in args.modes}
    for r in range(args.iterations):
        order = list(iterations)[r % len(iterations):] + list(iterations)[:r % len(iterations)]
        for mode in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            iterations[mode]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=20)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--syn-steps", type=int, nargs="+", default=[20, 40])
    p.add_argument("--iterations", type=int, default=3, help="Timed iterations per mode (after one warm-up).")
    p.add_argument("--segment", type=int, default=0, help="checkpoint mode: steps per segment (0: ceil(sqrt(N))).")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--json", default=None, help="Also write all measurements and settings here.")
    p.add_argument("--worker", nargs=2, metavar=("WHAT", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _worker(args: argparse.Namespace, what: str, steps: int, forwarded: list[str]) -> Any:
    """Run one measurement in a fresh interpreter and return its JSON answer."""
    done = subprocess.run([sys.executable, __file__, *forwarded, "--worker", what, str(steps)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} N={steps} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        what, steps = args.worker[0], int(args.worker[1])
        answer = measure_time(args, steps) if what == "time" else measure_memory(args, what, steps)
        print(json.dumps(answer))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    if "--json" in forwarded:
        at = forwarded.index("--json")
        del forwarded[at:at + 2]
    cuda = args.device.startswith("cuda")
    rows = []
    for steps in args.syn_steps:
        times = _worker(args, "time", steps, forwarded)
        for mode in args.modes:
            memory = _worker(args, mode, steps, forwarded)
            t = times[mode]
            row = {"mode": mode, "syn_steps": steps, "times": t, **memory}
            if t:
                row.update(seconds=statistics.mean(t), seconds_std=statistics.stdev(t) if len(t) > 1 else 0.0,
                           seconds_median=statistics.median(t))
            rows.append(row)
            print(f"  {mode:<10} N={steps:<3} " + (f"{row['seconds_median']:.3f} s/it (median)" if t else "OOM")
                  + ("" if memory.get("oom") else f", peak {memory['peak_mib']:.0f} MiB"), file=sys.stderr, flush=True)

    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu")
    memory_label = "max_memory_allocated MiB (above start)" if cuda else "peak RSS MiB above setup"
    print(f"\n{device_name}, torch {torch.__version__}, ConvNet-BN depth {args.depth} width {args.width}, "
          f"{args.channels}x{args.image_size}x{args.image_size}, {args.classes * args.ipc} synthetic images, "
          f"b = {args.batch}, {args.iterations} timed iterations per mode (interleaved), {args.threads} thread(s)\n")
    print(f"| N | mode | s / iteration (mean ± std) | median | median vs naive | {memory_label} | vs naive |")
    print("|---|---|---|---|---|---|---|")
    for steps in args.syn_steps:
        naive = next((r for r in rows if r["mode"] == "naive" and r["syn_steps"] == steps and r.get("times")), None)
        for r in (r for r in rows if r["syn_steps"] == steps):
            if r.get("times"):
                timing = f"{r['seconds']:.3f} ± {r['seconds_std']:.3f} | {r['seconds_median']:.3f} | " + (
                    "" if naive is None else f"{r['seconds_median'] / naive['seconds_median']:.2f}x")
            else:
                timing = "OOM | | "
            if r.get("oom"):
                memory = "OOM | "
            else:
                mem = r["peak_mib"] if cuda else r["peak_above_base_mib"]
                naive_mem = None if naive is None or naive.get("oom") else (
                    naive["peak_mib"] if cuda else naive["peak_above_base_mib"])
                memory = (f"{mem:.0f}" + (f" ({r['peak_above_base_mib']:.0f})" if cuda else "") + " | "
                          + ("" if not naive_mem else f"{100 * mem / naive_mem:.0f} %"))
            print(f"| {steps} | {r['mode']} | {timing} | {memory} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "device": device_name, "torch": torch.__version__, "rows": rows},
                      f, indent=2, default=str)


if __name__ == "__main__":
    main()
