"""`autoselmatch distill`: distil one SelMatch set (window init at beta, partial update of alpha).

The result goes to ``OUT/result.pt`` (the set-file format that ``evaluate``
and ``export`` read: normalised ``images``, ``uint8`` pixels, ``labels``,
``distill_mask``, ``eta``, ``settings``, loss and quick-eval history, and
the activity record: whether the distillation moved the set) and the run's
checkpoint to ``OUT/checkpoint.pt``. The default OUT is
``studies/distill/<dataset>-ipc<N>-a<alpha>-b<beta>-<init>-<mode>-s<seed>``
under the current directory. Experts must exist already (``autoselmatch
experts`` with the same preset and ``--set`` options).

    autoselmatch experts --dataset digits
    autoselmatch distill --dataset digits --ipc 10 --alpha 0.5 --beta 0.2
    autoselmatch evaluate studies/distill/digits-ipc10-a0.5-b0.2-window-selmatch-s0/result.pt
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ..choices import DISTILL_INITS, DISTILL_METHODS, DISTILL_MODES, DISTILL_PRECISIONS, MEMORY_MODES
from ._common import (check_writable, emit, format_accuracy, global_options, out_option, output_option, ready,
                      resolve_config, run_options)


@click.command()
@run_options
@click.option("--ipc", type=click.IntRange(min=1), required=True, help="Images per class of the synthetic set.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), required=True,
              help="Distillation portion: the easier alpha of each window is distilled, the rest stays real.")
@click.option("--beta", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Window start: the hardest beta fraction of each class is skipped (init window only).")
@click.option("--iterations", type=click.IntRange(min=0), default=None, help="Distillation iterations (default: preset).")
@click.option("--memory", type=click.Choice(MEMORY_MODES), default=None,
              help="Unrolled-graph memory mode (default: preset): exact, checkpoint (exact, less memory), tesla (approx).")
@click.option("--precision", type=click.Choice(DISTILL_PRECISIONS), default=None,
              help="Student-step arithmetic (default: preset): fp32, tf32 (CUDA, compute capability 8.0+), "
                   "bf16 (autocast; gradients stay fp32).")
@click.option("--init", "init", type=click.Choice(DISTILL_INITS), default=None,
              help="Initial set: the difficulty window, or random real samples (alpha 1 + random = MTT), or "
                   "noise (D_distill rows start as Gaussian noise, as SRe2L does).")
@click.option("--mode", type=click.Choice(DISTILL_MODES), default=None,
              help="selmatch: students train on the whole set; merge: distil D_distill alone, then concatenate.")
@click.option("--method", type=click.Choice(DISTILL_METHODS), default=None,
              help="Base distillation method (default: preset): mtt (trajectory matching, needs experts), dsa "
                   "(gradient matching with DSA, no experts) or sre2l (recover against one teacher, trained and "
                   "cached on first use; evaluated by distillation from it).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt (without one: start, and say so).")
@click.option("--overwrite", is_flag=True, help="Start over even if OUT already holds a checkpoint.")
@out_option(file=False, metavar="DIR", help="Output folder for result.pt and checkpoint.pt",
            default_text="studies/distill/<run name>")
@output_option
@global_options
@click.pass_context
def distill(ctx: click.Context, ipc: int, alpha: float, beta: float, iterations: int | None, memory: str | None,
            precision: str | None, init: str | None, mode: str | None, method: str | None, out: str | None,
            resume: bool, overwrite: bool, output: str, print_config: bool, **run: Any) -> None:
    """Distil one synthetic set with SelMatch (selection init at beta, partial update of a fraction alpha).

    Shows progress (iteration, loss, eta, last quick validation accuracy),
    ends with whether the distillation did anything (final matching loss over
    the initial one, eta, mean pixel change of D_distill in units of the
    data's std; coverage of easy/hard test halves with distill.coverage_every),
    writes OUT/result.pt, and checkpoints every distill.checkpoint_every
    iterations so that --resume continues an interrupted run.

    \b
    Examples:
      autoselmatch distill --dataset digits --ipc 10 --alpha 0.5 --beta 0.2
      autoselmatch distill -d fashion-mnist --ipc 60 --alpha 1 --init random --memory checkpoint
      autoselmatch distill --dataset digits --ipc 10 --alpha 0.5 --beta 0.2 --method dsa
      autoselmatch distill --dataset digits --ipc 10 --alpha 0.5 --beta 0.2 --method sre2l
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    cfg = resolve_config(ctx, **run, overrides={
        "distill.iterations": iterations,
        "distill.memory": memory,
        "distill.precision": precision,
        "distill.init": init,
        "distill.mode": mode,
        "distill.method": method,
    })
    ready(cfg, print_config)
    from ..data import load_configured
    from ..distill import CHECKPOINT_FILE, RESULT_FILE, check_precision, selmatch
    from ..errors import InvalidArgument
    from ..runtime import LOG, resolve_device

    folder = Path(out) if out is not None else default_out_dir(cfg.data.name, ipc, alpha, beta, cfg.distill.init,
                                                                cfg.distill.mode, cfg.seed, cfg.distill.method)
    if (folder / CHECKPOINT_FILE).is_file() and not (resume or overwrite):
        raise InvalidArgument(f"{folder} already holds a distillation checkpoint; pass --resume to continue it, "
                              f"--overwrite to start over, or choose another --out")
    if resume and not (folder / CHECKPOINT_FILE).exists():  # the same command reruns after a crash at any point
        LOG.info("--resume: %s holds no %s yet; starting a new run there", folder, CHECKPOINT_FILE)
    check_writable(folder, "--out", folder=True)
    device = resolve_device(cfg.device)
    check_precision(cfg.distill.precision, device)  # before scores and experts are read or computed
    ds = load_configured(cfg.data, device=device)
    check_batch_fits(cfg, ds.num_classes, ipc=ipc, alpha=alpha)
    result = selmatch(ds, cfg, ipc=ipc, alpha=alpha, beta=beta, checkpoint_dir=folder, resume=resume)
    path = result.save(folder / RESULT_FILE)

    last_eval = result.evals[-1] if result.evals else None
    emit({
        "result": str(path),
        "images": f"{len(result.labels)} ({int(result.distill_mask.sum())} distilled, "
                  f"{int((~result.distill_mask).sum())} real)",
        "iterations": result.iterations,
        "final_loss": round(result.loss_history[-1], 6) if result.loss_history else None,
        "eta": result.eta,
        "quick_val_accuracy": (None if last_eval is None else
                               round(last_eval[1], 4) if output == "json" else format_accuracy(last_eval[1])),
        "activity": (result.activity[-1] if result.activity else None) if output == "json" else
                    activity_line(result.activity[-1] if result.activity else {}),
    }, output)


def activity_line(point: dict[str, Any]) -> str:
    """One line of an activity-record entry (:mod:`autoselmatch.synset`): did the distillation move the set?"""
    if point.get("loss_ratio") is None:
        return "nothing distilled"
    text = (f"loss ratio {point['loss_ratio']:.3f} (end / start), eta {point['eta']:.4g}, "
            f"pixel change {point['pixel_change']:.4f} std")
    if point.get("coverage_easy") is not None:
        text += f", coverage easy {point['coverage_easy']:.3f} / hard {point['coverage_hard']:.3f}"
    return text


def check_batch_fits(cfg: Any, classes: int, *, ipc: int, alpha: float) -> None:
    """distill.batch_syn must fit in the rows students train on (the whole set, or D_distill under
    ``merge``); checked before scores and experts are computed."""
    from ..errors import InvalidArgument
    from ..selection import select_count

    distilled = classes * (ipc - select_count(ipc, alpha))
    if distilled == 0 or cfg.distill.method != "mtt":  # alpha = 0, or a method without student minibatches
        return
    if cfg.distill.mode == "merge":
        rows, part = distilled, f"D_distill ({distilled} images at ipc={ipc}, alpha={alpha:g})"
    else:
        rows, part = classes * ipc, f"the synthetic set ({classes * ipc} images at ipc={ipc})"
    if cfg.distill.batch_syn > rows:
        raise InvalidArgument(f"distill.batch_syn ({cfg.distill.batch_syn}) is larger than {part}; "
                              f"lower it with --set distill.batch_syn=N")


def default_out_dir(dataset: str, ipc: int, alpha: float, beta: float, init: str, mode: str, seed: int,
                    method: str = "mtt") -> Path:
    """``studies/distill/<dataset>-ipc<N>-a<alpha>-b<beta>-<init>-<mode>[-<method>]-s<seed>`` (dataset name
    made path-safe; the method is named unless it is ``mtt``, so MTT runs keep their folders)."""
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", dataset).strip("-") or "dataset"
    tag = "" if method == "mtt" else f"-{method}"
    return Path("studies") / "distill" / f"{name}-ipc{ipc}-a{alpha:g}-b{beta:g}-{init}-{mode}{tag}-s{seed}"
