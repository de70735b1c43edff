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

``--precision fp32 tf32 bf16`` times every memory mode in each
``distill.precision`` (the naive loop runs in strict fp32 only, as the fp32
core does). The same process also reports, per mode and precision:

- agreement with fp32: the warm-up iterations of all variants start from the
  same pixels, expert pair, minibatches and DSA draws, so their gradients are
  comparable. Cosine similarity of dL/dpixels to the same mode in fp32 and to
  ``exact`` in fp32, and the relative error of dL/deta;
- FLOPs of one iteration, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls and convolutions of the forward, backward and double backward;
  elementwise ops are not counted), once per mode: the count does not depend
  on the precision. Achieved TFLOP/s is that count over the median time, and
  is given as a fraction of the card's dense TF32 peak and of the peak of the
  precision itself (:data:`PEAK_TFLOPS`, or ``--peak-tflops``);
- on CUDA, the peak memory allocated during the warm-up, above the allocation
  before it (the per-variant fresh-process measurement above is skipped with
  ``--no-memory``, which the GPU check uses to stay short).

A precision the device cannot run (tf32 on a CPU) is reported as refused.

    python bench/distill_speed.py                      # CPU: ConvNet w32, 16x16, N = 20 and 40, b = 100
    python bench/distill_speed.py --device cuda --width 128 --image-size 32 --classes 100 --ipc 100 \\
        --syn-steps 55 --batch 125 --iterations 3      # CIFAR-100 geometry on a GPU
    python bench/distill_speed.py --device cuda --width 128 --image-size 32 --classes 100 --ipc 100 \\
        --syn-steps 55 --batch 125 --iterations 3 --modes exact checkpoint tesla \\
        --precision fp32 tf32 bf16 --no-memory        # precisions x memory modes (bench/gpu_checks.sh precision)
"""

from __future__ import annotations

import argparse
import json
import math
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
from torch.utils.flop_counter import FlopCounterMode

from autoselmatch.choices import DISTILL_PRECISIONS
from autoselmatch.distill import MatchOutput, StudentPlan, TrajectoryMatcher, batch_stats_only, student_precision
from autoselmatch.errors import InvalidArgument
from autoselmatch.models import FlatModel, build_model

MODES = ("naive", "exact", "checkpoint", "tesla")

#: Dense peak TFLOP/s per precision: fp32 on CUDA cores, tf32 and bf16 on tensor cores. From NVIDIA's
#: datasheets (H100, H200 and A100 Tensor Core GPU datasheets, nvidia.com), whose tensor-core figures
#: for Hopper are "with sparsity" and halved here; A100's dense figures are given as such. The first
#: entry whose key is in ``torch.cuda.get_device_name()`` applies ("NVIDIA H100 80GB HBM3" is the SXM5 card).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}),
    ("H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)

Variant = tuple[str, str]  # (memory mode or "naive", precision)


def variant_name(variant: Variant) -> str:
    return f"{variant[0]}/{variant[1]}"


def parse_variant(name: str) -> Variant:
    mode, _, precision = name.partition("/")
    return mode, precision


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


def build_iteration(args: argparse.Namespace, variant: Variant, syn_steps: int
                    ) -> Callable[[], MatchOutput | None]:
    """One distillation iteration of ``variant`` as a closure (network, set and optimizers built once).

    The closure returns the matcher's output (None for the naive loop). Every variant is built from
    the same seeds, so the first calls of any two variants see the same inputs.

    Raises:
        InvalidArgument: The device cannot run the variant's precision.
    """
    mode, precision = variant
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

        def naive() -> None:
            with student_precision(precision, device):  # the same arithmetic as the core in this precision
                naive_iteration(student, pixels, labels, lr, start, target, opt_img, opt_lr,
                                plan=planner.draw(n, control), generator=generator)
        return naive

    matcher = TrajectoryMatcher(FlatModel(batch_stats_only(module)), labels, syn_steps=syn_steps,
                                batch_syn=args.batch, memory=mode, segment=args.segment, precision=precision)

    def iteration() -> MatchOutput:
        out = matcher(pixels.detach(), lr, start, target, control)
        pixels.grad, lr.grad = out.grad_images, out.grad_lr
        opt_img.step()
        opt_lr.step()
        out.loss.item()  # the loop logs the loss every iteration
        return out
    return iteration


def measure_memory(args: argparse.Namespace, variant: Variant, syn_steps: int) -> dict[str, Any]:
    """Peak memory of two iterations (run alone in a fresh process)."""
    device = torch.device(args.device)
    try:
        iteration = build_iteration(args, variant, syn_steps)
    except InvalidArgument as exc:
        return {"refused": str(exc)}
    base = _reset_peak(device)  # after setup; before the first iteration, whose memory the allocator keeps
    try:
        iteration()
        iteration()
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    peak = _peak(device)
    return {"peak_mib": peak, "base_mib": base, "peak_above_base_mib": peak - base}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs() / b.detach().double().abs().clamp_min(1e-300))


def count_flops(iteration: Callable[[], Any]) -> int:
    """FLOPs of one call of ``iteration`` as ``FlopCounterMode`` counts them (matmuls, convolutions and
    their backward and double backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        iteration()
    return int(counter.get_total_flops())


def measure_time(args: argparse.Namespace, syn_steps: int) -> dict[str, Any]:
    """Seconds per iteration of every variant, interleaved round-robin in one process, and what the warm-up
    iterations show: gradient agreement with fp32, peak memory (CUDA), and each mode's FLOPs.

    On a shared machine the load drifts over minutes; taking turns gives
    every variant the same conditions. A variant that runs out of GPU memory maps to None,
    one whose precision the device cannot run is listed under ``refused``.
    """
    device = torch.device(args.device)
    iterations: dict[str, Callable[[], MatchOutput | None]] = {}
    refused: dict[str, str] = {}
    agreement: dict[str, dict[str, float]] = {}
    warmup_peak: dict[str, float] = {}
    reference: dict[str, MatchOutput] = {}  # each mode's fp32 warm-up output
    for variant in variants(args):
        name = variant_name(variant)
        try:
            iteration = build_iteration(args, variant, syn_steps)
        except InvalidArgument as exc:
            refused[name] = str(exc)
            print(f"  {name:<16} N={syn_steps:<3} refused: {exc}", file=sys.stderr, flush=True)
            continue
        try:
            base = _reset_peak(device) if device.type == "cuda" else 0.0
            out = iteration()  # warm-up
            if device.type == "cuda":
                warmup_peak[name] = _peak(device) - base
            iterations[name] = iteration
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        if out is not None:
            mode, precision = variant
            if precision == "fp32":
                reference[mode] = out
            same, exact = reference.get(mode), reference.get("exact")
            agreement[name] = {
                **({"cos_vs_fp32": _cosine(out.grad_images, same.grad_images),
                    "eta_grad_rel_err_vs_fp32": _relative(out.grad_lr, same.grad_lr),
                    "loss_rel_err_vs_fp32": _relative(out.loss, same.loss)} if same is not None else {}),
                **({"cos_vs_exact_fp32": _cosine(out.grad_images, exact.grad_images)} if exact is not None else {}),
            }
    reference.clear()
    times: dict[str, list[float] | None] = {variant_name(v): ([] if variant_name(v) in iterations else None)
                                            for v in variants(args) if variant_name(v) not in refused}
    for r in range(args.iterations):
        order = list(iterations)[r % len(iterations):] + list(iterations)[:r % len(iterations)]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            iterations[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    flops: dict[str, int] = {}
    if args.flops:
        for name, iteration in iterations.items():  # once per mode: the count does not depend on the precision
            mode = parse_variant(name)[0]
            if mode not in flops:
                flops[mode] = count_flops(iteration)
    return {"times": times, "refused": refused, "agreement": agreement, "warmup_peak_mib": warmup_peak,
            "flops": flops}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[Variant]:
    """(mode, precision) pairs in measuring order: precisions in ``DISTILL_PRECISIONS`` order (fp32 first,
    the reference of the others), the naive loop in fp32 only."""
    precisions = [p for p in DISTILL_PRECISIONS if p in args.precision]
    return [(mode, precision) for mode in args.modes for precision in precisions
            if mode != "naive" or precision == "fp32"]


def peak_tflops(args: argparse.Namespace, device_name: str) -> dict[str, float]:
    """The card's dense peaks: ``--peak-tflops`` entries over the :data:`PEAK_TFLOPS` row of ``device_name``."""
    table = next((dict(peaks) for key, peaks in PEAK_TFLOPS if key in device_name), {}) \
        if args.device.startswith("cuda") else {}
    for item in args.peak_tflops:
        key, _, value = item.partition("=")
        table[key] = float(value)
    return table


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
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=DISTILL_PRECISIONS,
                   help="distill.precision values to time every mode in (the naive loop: fp32 only).")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="Measure each variant's peak memory in a fresh process (--no-memory: only the in-process "
                        "warm-up peak on CUDA).")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                   help="Count each mode's FLOPs per iteration with FlopCounterMode (one extra iteration per mode).")
    p.add_argument("--peak-tflops", nargs="+", default=[], metavar="PRECISION=TFLOPS",
                   help="The card's dense peaks (e.g. tf32=494.5 bf16=989.5 fp32=67), over the built-in table.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--json", default=None, help="Also write all measurements and settings here.")
    p.add_argument("--profile", default=None, metavar="MODE/PRECISION",
                   help="Instead of the tables: profile one iteration of this variant (e.g. exact/tf32) after a "
                        "warm-up, at the first --syn-steps, and print where its time goes.")
    p.add_argument("--worker", nargs=2, metavar=("WHAT", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for item in args.peak_tflops:
        key, _, value = item.partition("=")
        try:
            ok = key in DISTILL_PRECISIONS and float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            p.error(f"--peak-tflops: expected PRECISION=TFLOPS with PRECISION in {', '.join(DISTILL_PRECISIONS)} "
                    f"and TFLOPS > 0, got {item!r}")
    return args


def _worker(args: argparse.Namespace, what: str, steps: int, forwarded: list[str]) -> Any:
    """Run one measurement in a fresh interpreter and return its JSON answer."""
    done = subprocess.run([sys.executable, __file__, *forwarded, "--worker", what, str(steps)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} N={steps} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_iteration(args: argparse.Namespace, variant: Variant, syn_steps: int) -> dict[str, Any]:
    """Where one iteration's time goes: torch.profiler over one iteration of ``variant`` after a warm-up.

    Prints the wall time, the summed device-kernel time (on CUDA; a sum well
    below the wall time means the GPU waits for the host to launch), the number
    of kernels per student step, and the operators with the most device (else
    host) time. Returns the same as a dict.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    iteration = build_iteration(args, variant, syn_steps)
    iteration()  # warm-up: cuDNN autotuning, allocator
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        iteration()
        sync()
        wall = time.perf_counter() - started
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_seconds = sum(e.device_time_total for e in kernels) / 1e6 if kernels else None
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=25)
    print(f"{variant_name(variant)}, N = {syn_steps}: wall {wall:.3f} s per iteration"
          + (f", device kernels {kernel_seconds:.3f} s ({kernel_seconds / wall:.0%} of wall), "
             f"{len(kernels) / syn_steps:.0f} kernels per student step" if kernels else "") + f"\n{table}", flush=True)
    return {"variant": variant_name(variant), "syn_steps": syn_steps, "wall_s": wall, "kernel_s": kernel_seconds,
            "kernels_per_step": len(kernels) / syn_steps if kernels else None, "table": table,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        result = profile_iteration(args, parse_variant(args.profile), args.syn_steps[0])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return
    if args.worker:
        what, steps = args.worker[0], int(args.worker[1])
        answer = measure_time(args, steps) if what == "time" else measure_memory(args, parse_variant(what), steps)
        print(json.dumps(answer))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    if "--json" in forwarded:
        at = forwarded.index("--json")
        del forwarded[at:at + 2]
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu")
    peaks = peak_tflops(args, device_name)
    rows = []
    for steps in args.syn_steps:
        timing = _worker(args, "time", steps, forwarded)
        for variant in variants(args):
            name = variant_name(variant)
            mode, precision = variant
            row: dict[str, Any] = {"mode": mode, "precision": precision, "syn_steps": steps}
            if name in timing["refused"]:
                rows.append({**row, "refused": timing["refused"][name]})
                continue
            memory = _worker(args, name, steps, forwarded) if args.memory else {}
            t = timing["times"][name]
            row.update(times=t, **memory, **timing["agreement"].get(name, {}))
            if name in timing["warmup_peak_mib"]:
                row["warmup_peak_mib"] = timing["warmup_peak_mib"][name]
            if t:
                row.update(seconds=statistics.mean(t), seconds_std=statistics.stdev(t) if len(t) > 1 else 0.0,
                           seconds_median=statistics.median(t))
                if mode in timing["flops"]:
                    row["flops"] = timing["flops"][mode]
                    row["tflops_per_s"] = row["flops"] / row["seconds_median"] / 1e12
                    for key in ("tf32", precision):
                        if key in peaks:
                            row[f"fraction_of_{key}_peak"] = row["tflops_per_s"] / peaks[key]
            rows.append(row)
            peak = row.get("peak_mib", row.get("warmup_peak_mib"))
            print(f"  {name:<16} N={steps:<3} " + (f"{row['seconds_median']:.3f} s/it (median)" if t else "OOM")
                  + ("" if peak is None else f", peak {peak:.0f} MiB")
                  + ("" if "cos_vs_fp32" not in row else f", cos vs fp32 {row['cos_vs_fp32']:.6f}"),
                  file=sys.stderr, flush=True)

    print(f"\n{device_name}, torch {torch.__version__}, ConvNet-BN depth {args.depth} width {args.width}, "
          f"{args.channels}x{args.image_size}x{args.image_size}, {args.classes * args.ipc} synthetic images, "
          f"b = {args.batch}, {args.iterations} timed iterations per variant (interleaved), {args.threads} thread(s)\n")
    print_speed_table(args, rows, cuda)
    if len(args.precision) > 1 or args.precision != ["fp32"] or args.flops:
        print_precision_table(args, rows, peaks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "device": device_name, "torch": torch.__version__,
                       "peak_tflops": peaks, "rows": rows}, f, indent=2, default=str)


def print_speed_table(args: argparse.Namespace, rows: list[dict[str, Any]], cuda: bool) -> None:
    """Time and memory per variant, against the naive loop."""
    if args.memory:
        memory_label = "max_memory_allocated MiB (above start)" if cuda else "peak RSS MiB above setup"
    else:
        memory_label = "warm-up max_memory_allocated MiB above its start" if cuda else "memory (not measured)"
    print(f"| N | mode | precision | s / iteration (mean ± std) | median | median vs naive | {memory_label} "
          "| vs naive |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.syn_steps:
        naive = next((r for r in rows if r["mode"] == "naive" and r["syn_steps"] == steps and r.get("times")), None)
        for r in (r for r in rows if r["syn_steps"] == steps):
            head = f"| {steps} | {r['mode']} | {r['precision']} |"
            if "refused" in r:
                print(f"{head} refused: {r['refused']} | | | | |")
                continue
            if r.get("times"):
                timing = f"{r['seconds']:.3f} ± {r['seconds_std']:.3f} | {r['seconds_median']:.3f} | " + (
                    "" if naive is None else f"{r['seconds_median'] / naive['seconds_median']:.2f}x")
            else:
                timing = "OOM | | "
            if r.get("oom"):
                memory = "OOM | "
            elif args.memory:
                mem = r["peak_mib"] if cuda else r["peak_above_base_mib"]
                naive_mem = None if naive is None or naive.get("oom") else (
                    naive["peak_mib"] if cuda else naive["peak_above_base_mib"])
                memory = (f"{mem:.0f}" + (f" ({r['peak_above_base_mib']:.0f})" if cuda else "") + " | "
                          + ("" if not naive_mem else f"{100 * mem / naive_mem:.0f} %"))
            else:
                mem, naive_mem = r.get("warmup_peak_mib"), (naive or {}).get("warmup_peak_mib")
                share = "" if not mem or not naive_mem else f"{100 * mem / naive_mem:.0f} %"
                memory = _fmt(mem, ".0f") + " | " + share
            print(f"{head} {timing} | {memory} |")


def print_precision_table(args: argparse.Namespace, rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """FLOPs, achieved TFLOP/s against the card's peaks, and agreement of the gradients with fp32."""
    shown = ", ".join(f"{k} {v:g}" for k, v in peaks.items()) or "none known for this device (--peak-tflops)"
    print(f"\nDense peak TFLOP/s used: {shown}. FLOPs counted by FlopCounterMode over one iteration.\n")
    print("| N | mode | precision | GFLOP / iteration | TFLOP/s | % of TF32 peak | % of own peak "
          "| cos(dL/dpixels, same mode fp32) | cos(dL/dpixels, exact fp32) | dL/deta rel. error vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "refused" in r:
            continue
        gflops = r["flops"] / 1e9 if "flops" in r else None
        own = _pct(r.get("fraction_of_" + r["precision"] + "_peak"))
        print(f"| {r['syn_steps']} | {r['mode']} | {r['precision']} | {_fmt(gflops, '.1f')} | "
              f"{_fmt(r.get('tflops_per_s'), '.3f')} | {_fmt(_pct(r.get('fraction_of_tf32_peak')), '.1f', ' %')} | "
              f"{_fmt(own, '.1f', ' %')} | "
              f"{_fmt(r.get('cos_vs_fp32'), '.6f')} | {_fmt(r.get('cos_vs_exact_fp32'), '.6f')} | "
              f"{_fmt(r.get('eta_grad_rel_err_vs_fp32'), '.2e')} |")


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


if __name__ == "__main__":
    main()
