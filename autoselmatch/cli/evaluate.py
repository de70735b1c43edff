"""`autoselmatch evaluate`: train fresh networks on a distilled set or a subset and report accuracy.

Three inputs:

* ``autoselmatch evaluate SET.pt`` -- a set file (what ``distill``, ``tune``
  and ``export`` write; the format is specified in :mod:`autoselmatch.synset`:
  ``images`` and ``labels`` at least, ``distill_mask`` and ``dataset`` read
  when present, other keys ignored), an export folder or its ``dataset.npz``
  (see :func:`autoselmatch.export.load_set`);
* ``autoselmatch evaluate --indices FILE --dataset NAME`` -- a plain subset of
  the training set: a ``.npy`` (integer array) or ``.txt`` (one index per
  line) of indices into the full training set in its original order;
* ``autoselmatch evaluate --from-reference FOLDER`` (or ``IMAGES.pt LABELS.pt
  [LR.pt]``) -- a set saved by MTT, FTD or DATM (``images_best.pt``,
  ``labels_best.pt``, optional ``lr_best.pt``; see :mod:`autoselmatch.reference`),
  hard or soft labels, ``--zca`` when its images were saved whitened.

    autoselmatch evaluate exports/cifar100-ipc100 --model resnet18 --runs 5 --split test
    autoselmatch evaluate --indices subset.npy -d digits --runs 2 --output json
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..choices import AUGMENTATIONS
from ._common import (check_writable, emit, format_accuracy, global_options, out_option, output_option, plural,
                      ready, resolve_config, run_options)

if TYPE_CHECKING:
    from ..synset import SyntheticSet


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True), metavar="[PATH]...")
@run_options
@click.option("--indices", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate a plain subset: .npy or .txt of training-set indices (instead of PATH).")
@click.option("--from-reference", "from_reference", is_flag=True,
              help="PATH is a set saved by MTT/FTD/DATM: a folder with images_best.pt and labels_best.pt "
                   "(optional lr_best.pt), or the files IMAGES.pt LABELS.pt [LR.pt]; needs --dataset.")
@click.option("--zca", is_flag=True,
              help="With --from-reference: the images were saved ZCA-whitened (the evaluation split is whitened "
                   "with a transform fitted on the training split, eps experts.zca_eps).")
@click.option("--learned-lr", "learned_lr", is_flag=True,
              help="With --from-reference: train with the set's learned lr (lr_best.pt) instead of evaluate.lr.")
@click.option("--model", default=None, metavar="NAME", help="Evaluation network (default: the preset's), e.g. resnet18.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Networks trained from scratch (default: preset).")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Where accuracy is measured; test only for final reports.")
@click.option("--augment", type=click.Choice(AUGMENTATIONS), default=None, help="Training augmentation (default: preset).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Budget in passes over the set (default: preset).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Budget in optimizer steps (wins over --epochs).")
@out_option(file=True, metavar="FILE.json", name="save_path", aliases=("--save",),
            help="Also write the result, with its settings, to this JSON file.")
@output_option
@global_options
@click.pass_context
def evaluate(ctx: click.Context, paths: tuple[str, ...], indices: str | None, from_reference: bool, zca: bool,
             learned_lr: bool, model: str | None, runs: int | None, split: str, augment: str | None,
             epochs: int | None, steps: int | None, save_path: str | None, output: str, dataset: str | None,
             print_config: bool, **run_opts: Any) -> None:
    """Train fresh networks on a distilled set (PATH) or a subset (--indices) and report accuracy.

    Prints the mean ± std accuracy over --runs networks (population std).

    \b
    PATH is an export folder (autoselmatch export), its dataset.npz, or a set
    file, a torch file holding a dict (format: autoselmatch.synset):
      images        float (n, C, H, W) normalised, or uint8 pixels
                    (uint8 'pixels' is read when 'images' is absent)
      labels        int64 (n,), every class present
      distill_mask  optional bool (n,): True rows get DSA under combined augmentation
      dataset       optional dataset name (else --dataset)
    A set made with --method sre2l is scored as SRe2L scores it: students
    learn the soft outputs of its cached teacher (KD at the set's
    distill.sre2l_temperature); other sets train on their hard labels.
    --indices FILE lists indices into the full training set (original order).
    --from-reference reads sets saved by MTT/FTD/DATM (float images in
    normalised or, with --zca, whitened space; int64 or soft (n, K) labels,
    trained with the soft cross-entropy); every row counts as distilled.

    \b
    Examples:
      autoselmatch evaluate studies/distill/digits-ipc10-a0.5-b0.2-window-selmatch-s0/result.pt
      autoselmatch evaluate exports/digits-ipc10 --runs 5 --split test -o eval.json
      autoselmatch evaluate --indices subset.npy -d digits --runs 2 --output json
      autoselmatch evaluate --from-reference logged_files/CIFAR10/run -d cifar10 --zca --split test
      autoselmatch evaluate --from-reference images_best.pt labels_best.pt -d cifar100 --learned-lr
    """
    if bool(paths) == (indices is not None):
        raise click.UsageError("give either a set file PATH or --indices FILE (exactly one)")
    if len(paths) > 1 and not from_reference:
        raise click.UsageError("several PATHs are read only with --from-reference (IMAGES.pt LABELS.pt [LR.pt])")
    if (zca or learned_lr) and not from_reference:
        raise click.UsageError("--zca and --learned-lr describe reference sets; they need --from-reference")
    if from_reference:
        _evaluate_reference(ctx, paths, zca=zca, learned_lr=learned_lr, model=model, split=split, save_path=save_path,
                            output=output, dataset=dataset, print_config=print_config,
                            overrides={"evaluate.runs": runs, "evaluate.augment": augment, "evaluate.epochs": epochs,
                                       "evaluate.steps": steps}, run_opts=run_opts)
        return
    path = paths[0] if paths else None
    from ..config import to_dict
    from ..data import load_configured
    from ..distill import METHODS, evaluate_distilled, saved_set_config
    from ..evaluate import evaluate_set
    from ..export import load_set
    from ..runtime import resolve_device

    synset = load_set(path) if path is not None else None
    dataset = _dataset_name(synset, dataset)
    overrides: dict[str, Any] = {"evaluate.runs": runs, "evaluate.augment": augment,
                                 "evaluate.epochs": epochs, "evaluate.steps": steps}
    cfg = resolve_config(ctx, dataset=dataset, overrides=overrides, **run_opts)
    if model is not None and model != cfg.evaluate.model.name:  # a new model drops the preset's builder options
        cfg = resolve_config(ctx, dataset=dataset, overrides={**overrides, "evaluate.model": {"name": model}}, **run_opts)
    ready(cfg, print_config)
    if save_path is not None:
        check_writable(save_path, "--out")  # before training, not after it

    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    if synset is None:
        index = _read_indices(Path(indices), ds, split)
        result = evaluate_set(ds, ds.train_images[index], ds.train_labels[index], cfg=cfg.evaluate, split=split,
                              seed=cfg.seed, device=device)
        _report({"source": f"{indices} ({len(index)} training indices)", "dataset": ds.name, **result.to_dict(),
                 "config": to_dict(cfg)}, result, split, save_path, output)
        return
    # the protocol of the base method that made the set (an sre2l set: KD from its cached teacher)
    set_cfg = saved_set_config(cfg, synset.settings)
    protocol = METHODS.get(set_cfg.distill.method).evaluation
    result = evaluate_distilled(ds, synset.images.to(device), synset.labels.to(device), set_cfg,
                                distill_mask=synset.distill_mask, split=split, seed=cfg.seed, cached=True)
    extra = {} if protocol == "hard-labels" else {"protocol": f"{protocol} ({set_cfg.distill.method})"}
    _report({"source": str(path), "dataset": ds.name, "method": set_cfg.distill.method, "protocol": protocol,
             **result.to_dict(), "config": to_dict(set_cfg)}, result, split, save_path, output, extra=extra)


def _report(record: dict[str, Any], result, split: str, save_path: str | None, output: str,
            extra: dict[str, str] | None = None) -> None:
    """Save ``record`` to --out when given, and print it (json) or the result's summary (text)."""
    from ..fileio import save_json

    if save_path is not None:
        save_json(record, save_path)
    if output == "json":
        emit(record, "json")
        return
    emit({
        "set": f"{record['source']}: {result.n_images} images ({result.n_distill} distilled) of {record['dataset']}",
        **(extra or {}),
        "accuracy": f"{format_accuracy(result.mean, result.std if result.runs > 1 else None)} on {split} "
                    f"({plural(result.runs, 'run')} of {result.model}, {result.steps} steps, "
                    f"{result.augment} augmentation)",
        "runs": ", ".join(format_accuracy(a) for a in result.accuracies),
        "seconds": f"{result.seconds:.1f}",
    }, "text")


def _evaluate_reference(ctx: click.Context, paths: tuple[str, ...], *, zca: bool, learned_lr: bool,
                        model: str | None, split: str, save_path: str | None, output: str, dataset: str | None,
                        print_config: bool, overrides: dict[str, Any], run_opts: dict[str, Any]) -> None:
    """``--from-reference``: score a set saved by MTT/FTD/DATM with this tool's evaluation protocol."""
    import torch

    from ..config import to_dict
    from ..data import load_configured
    from ..errors import InvalidArgument
    from ..evaluate import evaluate_set
    from ..reference import load_reference_set, reference_whitening
    from ..runtime import resolve_device

    reference = load_reference_set(paths)
    if dataset is None:
        raise InvalidArgument("reference sets do not name their dataset; pass --dataset NAME")
    if learned_lr and reference.lr is None:
        raise InvalidArgument("--learned-lr: no learned lr beside the set (lr_best.pt); give it as the third file")
    if learned_lr:
        overrides = {**overrides, "evaluate.lr": reference.lr}
    cfg = resolve_config(ctx, dataset=dataset, overrides=overrides, **run_opts)
    if model is not None and model != cfg.evaluate.model.name:
        cfg = resolve_config(ctx, dataset=dataset, overrides={**overrides, "evaluate.model": {"name": model}}, **run_opts)
    ready(cfg, print_config)
    if save_path is not None:
        check_writable(save_path, "--out")

    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    whiten = reference_whitening(ds, reference.images, zca=zca, eps=cfg.experts.zca_eps)
    mask = torch.ones(len(reference.images), dtype=torch.bool)  # every row is distilled: DSA under combined
    result = evaluate_set(ds, reference.images.to(device), reference.labels.to(device), cfg=cfg.evaluate,
                          distill_mask=mask, split=split, seed=cfg.seed, device=device, eval_transform=whiten)
    source = " ".join(str(f) for f in reference.files)
    labels = f"soft ({reference.labels.shape[1]} classes)" if reference.soft else "hard"
    lr = "none saved" if reference.lr is None else f"{reference.lr:.4g} ({'used' if learned_lr else 'not used'})"
    record = {"source": source, "dataset": ds.name, "reference": {"labels": labels, "learned_lr": reference.lr,
              "learned_lr_used": learned_lr, "zca": zca}, **result.to_dict(), "config": to_dict(cfg)}
    _report(record, result, split, save_path, output,
            extra={"labels": labels, "learned lr": lr, "zca": "yes" if zca else "no"})


def _dataset_name(synset: SyntheticSet | None, flag: str | None) -> str | None:
    """The dataset named by the set file, checked against --dataset."""
    from ..errors import InvalidArgument

    if synset is None:  # --indices: the dataset of --dataset, else the preset's
        return flag
    stored = synset.dataset
    if stored is not None and flag is not None and stored != flag:
        raise InvalidArgument(f"--dataset {flag} does not match the set file's dataset {stored}")
    name = stored or flag
    if name is None:
        raise InvalidArgument("the dataset is unknown: the set has no 'dataset' entry; pass --dataset NAME")
    return name


def _read_indices(path: Path, ds, split: str):
    """Training-set indices from a .npy or .txt file, checked for range, duplicates and validation leaks."""
    import numpy as np
    import torch

    from ..errors import DataError, InvalidArgument

    try:
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                if handle.read(6) != b"\x93NUMPY":
                    raise InvalidArgument(f"--indices {path} is not a NumPy array file (no .npy header); "
                                          f"write it with numpy.save, or list one index per line in a .txt")
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".txt":
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
        else:
            raise InvalidArgument(f"--indices must be a .npy or .txt file, got {path.name}")
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty .npy
        if isinstance(exc, InvalidArgument):
            raise
        raise DataError(f"cannot read indices from {path}: {str(exc).splitlines()[0]}") from None
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        raise InvalidArgument(f"index file {path} is empty")
    if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)):
        raise InvalidArgument(f"index file {path} must hold integers")
    index = torch.from_numpy(values.astype(np.int64))
    n = len(ds.train_labels)
    if int(index.min()) < 0 or int(index.max()) >= n:
        bad = int(index.min()) if int(index.min()) < 0 else int(index.max())
        raise InvalidArgument(f"indices must be in [0, {n - 1}] for the {ds.name} training set, got {bad}")
    if len(torch.unique(index)) != len(index):
        raise InvalidArgument(f"index file {path} repeats indices; a subset lists each training sample once")
    if split == "val":
        leaked = int(torch.isin(index, ds.val_index.cpu()).sum())
        if leaked:
            raise InvalidArgument(f"{leaked} indices are validation samples; evaluating on val would leak them (use --split test)")
    return index.to(ds.device)
