"""Training throughput of the evaluation engine vs. a straightforward reference loop.

Both train the same freshly initialised model (same seed) for the same number
of SGD steps (momentum 0.9, weight decay 5e-4, lr 0.1, cosine) on the same
set, with SelMatch's combined augmentation (DSA on the D_distill rows, random
crop + flip on the D_select rows):

* engine: :func:`autoselmatch.evaluate.train_networks` (set on the device,
  index-slice batches, one batched augmentation call per group, no syncs in
  the loop; ``--amp``/``--channels-last``/``--compile`` optional; ``--stack K``
  also trains K networks at once, as an evaluation with ``runs`` >= K and
  ``evaluate.stack_runs = K`` does, and counts the images of all K);
* reference: the loop of the public DSA/MTT/SelMatch evaluation code -- a
  ``DataLoader`` over a ``TensorDataset`` (shuffle, ``num_workers=0``),
  torchvision ``RandomCrop(side, padding)`` + ``RandomHorizontalFlip`` applied
  per sample to D_select rows, DSA applied per sample to D_distill rows
  (our batched :func:`~autoselmatch.augment.dsa` called on one-image batches,
  which is no slower than the reference's own implementation), fp32.

Only training is timed (model construction included for both, data loading
excluded): ``time.perf_counter`` on CPU, CUDA events plus ``synchronize`` on
GPU. Each variant gets a short warm-up, then ``--repeats`` timed runs,
interleaved across variants; the result is mean ± std images/s and the
speed-up ratio of the means.

    python bench/evaluate_speed.py                          # CPU: ConvNet-3/32 on 28x28x1, 1,000 images
    python bench/evaluate_speed.py --side 8 --depth 2       # CPU: the digits preset's geometry
    python bench/evaluate_speed.py --gpu --json out.json    # GPU: ResNet-18, 10,000 32x32x3 images (+ all variants)
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader, TensorDataset

from autoselmatch.augment import default_pad, dsa
from autoselmatch.config import COMPILE_MODES, EvalConfig, to_dict
from autoselmatch.evaluate import batch_bounds, train_networks
from autoselmatch.fileio import save_json
from autoselmatch.models import ModelSpec

GPU_PRESET = dict(device="cuda", model="resnet18", images=10000, side=32, channels=3, classes=10, steps=150,
                  repeats=3, amp=True, channels_last=True, compile="default,reduce-overhead", stack=5, warmup_steps=80,
                  profile=20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help=f"GPU geometry: {GPU_PRESET} (explicit flags still win)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--model", default=None, help="convnet or resnet18 (default convnet)")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth")
    p.add_argument("--width", type=int, default=32, help="ConvNet width")
    p.add_argument("--images", type=int, default=None, help="set size (default 1000)")
    p.add_argument("--side", type=int, default=None, help="image side (default 28)")
    p.add_argument("--channels", type=int, default=None, help="image channels (default 1)")
    p.add_argument("--classes", type=int, default=None, help="classes (default 10)")
    p.add_argument("--distill-fraction", type=float, default=0.5, help="share of D_distill rows (DSA)")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--steps", type=int, default=None, help="SGD steps per timed run (default 60)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="untimed steps before the timed runs (default 5; 80 with --gpu, so that torch.compile "
                        "sees a whole epoch, odd last batch included, before timing)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 3)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the engine with bf16 autocast (CUDA, or a CPU with bf16 instructions)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the engine with channels_last")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODES",
                   help="also time the engine with torch.compile in each of these comma-separated modes "
                        f"({', '.join(COMPILE_MODES)}; default: default), plus the amp/channels_last choice; "
                        "the compile happens in the warm-up")
    p.add_argument("--stack", type=int, default=None,
                   help="also time the engine training this many networks at once (evaluate.stack_runs, with the "
                        "amp/channels_last choice); its images/s counts every network's images (default 1: not timed)")
    p.add_argument("--profile", type=int, default=None, metavar="STEPS",
                   help="after timing, profile this many steps of the eager engine and print where the time goes "
                        "(kernels and host time per step; default 0: no profile, 20 with --gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    defaults = dict(device="cpu", model="convnet", images=1000, side=28, channels=1, classes=10, steps=60, repeats=3,
                    amp=False, channels_last=False, compile="", stack=1, warmup_steps=5, profile=0)
    if args.gpu:
        defaults.update(GPU_PRESET)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.compile = [mode for mode in args.compile.split(",") if mode]
    unknown = [mode for mode in args.compile if mode not in COMPILE_MODES]
    if unknown:
        p.error(f"--compile: unknown mode {unknown[0]!r}; known: {', '.join(COMPILE_MODES)}")
    return args


# --------------------------------------------------------------------------------------------
# The two training loops
# --------------------------------------------------------------------------------------------


def model_spec(args: argparse.Namespace) -> ModelSpec:
    options = {"depth": args.depth, "width": args.width} if args.model == "convnet" else {}
    return ModelSpec(args.model, options)


def engine_run(args, images, labels, mask, steps: int, *, amp: bool = False, channels_last: bool = False,
               compile_mode: str | None = None, networks: int = 1) -> None:
    cfg = EvalConfig(model=model_spec(args), batch_size=args.batch, augment="combined", amp=amp,
                     channels_last=channels_last, compile=compile_mode is not None,
                     compile_mode=compile_mode or "default")
    train_networks(images, labels, num_classes=args.classes, cfg=cfg, steps=steps, distill_mask=mask,
                   seeds=range(networks))


def reference_run(args, images, labels, mask, steps: int) -> None:
    import torchvision.transforms as T

    torch.manual_seed(0)
    device = images.device
    model = model_spec(args).build(channels=args.channels, num_classes=args.classes, image_size=args.side).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    simple = T.Compose([T.RandomCrop(args.side, padding=default_pad(args.side)), T.RandomHorizontalFlip()])
    loader = DataLoader(TensorDataset(images, labels, mask), batch_size=args.batch, shuffle=True)
    step = 0
    while step < steps:
        for x, y, m in loader:  # a new DataLoader iterator per epoch, per-sample indexing and collation
            if step == steps:
                break
            flags = m.tolist()  # one read per batch (more generous than testing each GPU flag)
            x = torch.stack([dsa(x[i:i + 1])[0] if flags[i] else simple(x[i]) for i in range(len(x))])
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds taken by ``fn``; CUDA events + synchronize on GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_t = time.perf_counter()
    fn()
    return time.perf_counter() - start_t


def images_per_step(n: int, batch: int, steps: int) -> int:
    """Images processed by ``steps`` steps of epochs cut by :func:`batch_bounds`."""
    bounds = batch_bounds(n, batch)
    sizes = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    return sum(sizes[s % len(sizes)] for s in range(steps))


def measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, args.channels, args.side, args.side, generator=g).to(device)
    labels = (torch.arange(args.images) % args.classes).to(device)
    mask = (torch.rand(args.images, generator=g) < args.distill_fraction).to(device)
    work = images_per_step(args.images, args.batch, args.steps)

    variants: dict[str, Callable] = {"reference": reference_run, "engine": engine_run}
    if args.amp or args.channels_last:
        variants["engine+amp/cl"] = functools.partial(engine_run, amp=args.amp, channels_last=args.channels_last)
    for mode in args.compile:
        variants[f"compile:{mode}"] = functools.partial(engine_run, amp=args.amp, channels_last=args.channels_last,
                                                        compile_mode=mode)
    networks = {name: 1 for name in variants}
    if args.stack > 1:
        variants[f"stack:{args.stack}"] = functools.partial(engine_run, amp=args.amp, channels_last=args.channels_last,
                                                            networks=args.stack)
        networks[f"stack:{args.stack}"] = args.stack
    cudagraph_skips, failed = {}, {}
    for name, run in list(variants.items()):  # warm-up (allocator, cuDNN autotuning, lazy imports, compiling)
        skips_before = counters["inductor"]["cudagraph_skips"]
        started = time.perf_counter()
        try:
            run(args, images, labels, mask, args.warmup_steps)
        except Exception as exc:  # a compile mode this torch/GPU cannot run: report it, time the others
            if not name.startswith("compile:"):
                raise
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            del variants[name]
            print(f"{name:>24}: failed in warm-up ({failed[name]})", flush=True)
            continue
        print(f"{name:>24}: warm-up of {args.warmup_steps} steps took {time.perf_counter() - started:.1f} s",
              flush=True)
        if name.startswith("compile:"):  # CUDA graphs that torch.compile gave up on (0 is what reduce-overhead wants)
            cudagraph_skips[name] = counters["inductor"]["cudagraph_skips"] - skips_before
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):  # interleaved, so that a busy machine slows every variant alike
        for name, run in variants.items():
            seconds[name].append(timed(lambda: run(args, images, labels, mask, args.steps), device))
            print(f"{name:>24}: run {repeat + 1}/{args.repeats}: {networks[name] * work / seconds[name][-1]:.0f} "
                  "images/s", flush=True)  # in the log even if a time limit stops the benchmark
    results = {}
    for name, secs in seconds.items():
        rates = [networks[name] * work / s for s in secs]
        results[name] = dict(seconds=secs, images_per_s_mean=statistics.mean(rates),
                             images_per_s_std=statistics.stdev(rates) if len(rates) > 1 else 0.0)
        mean, std = results[name]["images_per_s_mean"], results[name]["images_per_s_std"]
        print(f"{name:>24}: {mean:10.0f} ± {std:7.0f} images/s ({statistics.mean(secs):.2f} s per {args.steps} steps)",
              flush=True)
    reference = results["reference"]["images_per_s_mean"]
    speedup = {name: r["images_per_s_mean"] / reference for name, r in results.items() if name != "reference"}
    for name, ratio in speedup.items():
        print(f"  speed-up of {name}: {ratio:.1f}x")
    if cudagraph_skips:
        print(f"  CUDA-graph skips while compiling: {cudagraph_skips}")
    profile = profile_engine(args, images, labels, mask, device) if args.profile else None
    return dict(settings=vars(args) | {"json": str(args.json) if args.json else None}, results=results, speedup=speedup,
                cudagraph_skips=cudagraph_skips, failed=failed, profile=profile,
                machine=machine(device), eval_config=to_dict(EvalConfig(model=model_spec(args))))


def profile_engine(args: argparse.Namespace, images, labels, mask, device: torch.device) -> dict:
    """Profile ``args.profile`` steps of the eager engine: operators and device kernels per step, host time per step.

    Where the time of a launch-bound step goes (the top operators are printed); a
    failure is reported, not raised, so that the timings above are still saved.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            engine_run(args, images, labels, mask, args.profile)
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.events()
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        operators = sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    except Exception as exc:  # a profiler this torch/driver cannot run
        print(f"  profile failed: {type(exc).__name__}: {exc}", flush=True)
        return {"failed": f"{type(exc).__name__}: {exc}"}
    steps = args.profile
    print(f"  profile of {steps} eager steps: {operators / steps:.0f} top-level operators and "
          f"{kernels / steps:.0f} device kernels per step\n{table}", flush=True)
    return {"steps": steps, "operators_per_step": operators / steps, "kernels_per_step": kernels / steps,
            "table": table}


def machine(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    info = dict(python=sys.version.split()[0], torch=torch.__version__, platform=platform.platform(),
                threads=torch.get_num_threads(), commit=commit)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{args.model} on {args.images} x {args.channels}x{args.side}x{args.side}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats, device {args.device}, amp={args.amp}, "
          f"channels_last={args.channels_last}", flush=True)
    result = measure(args)
    if args.json is not None:
        save_json(result, args.json)


if __name__ == "__main__":
    main()
