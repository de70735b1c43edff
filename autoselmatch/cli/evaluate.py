"""`autoselmatch evaluate`: train fresh networks on a distilled set or a subset and report accuracy.

Two inputs:

* ``autoselmatch evaluate SET.pt`` -- a synthetic set in the interchange
  format below (what ``distill`` and ``export`` write);
* ``autoselmatch evaluate --indices FILE --dataset NAME`` -- a plain subset of
  the training set: a ``.npy`` (integer array) or ``.txt`` (one index per
  line) of indices into the full training set in its original order.

Interchange format of a set file (``torch.save`` of a dict, loaded with
``weights_only=True``, so only tensors, strings and numbers):

    {
        "images": float32 (n, C, H, W) in the dataset's normalised space,
                  or uint8 (n, C, H, W) pixels,
        "pixels": uint8 (n, C, H, W), read only when "images" is absent
                  (the ``export`` dataset.pt layout),
        "labels": int64 (n,), every class of the dataset present,
        "distill_mask": bool (n,), optional: True for D_distill rows (get DSA
                  under combined augmentation), False for D_select rows,
        "dataset": str, optional: the dataset name (else --dataset is required),
    }

Other keys (e.g. ``alpha``, ``beta``, ``config``) are allowed and ignored.

    autoselmatch evaluate studies/cifar100-ipc100/best.pt --model resnet18 --runs 5 --split test
    autoselmatch evaluate --indices subset.npy -d digits --runs 2 --output json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import emit, output_option, print_config_and_exit, resolve_config, run_options

AUGMENT_CHOICES = ("none", "simple", "dsa", "combined")


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--indices", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate a plain subset: .npy or .txt of training-set indices (instead of PATH).")
@click.option("--model", default=None, metavar="NAME", help="Evaluation network (default: the preset's), e.g. resnet18.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Networks trained from scratch (default: preset).")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Where accuracy is measured; test only for final reports.")
@click.option("--augment", type=click.Choice(AUGMENT_CHOICES), default=None, help="Training augmentation (default: preset).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Budget in passes over the set (default: preset).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Budget in optimizer steps (wins over --epochs).")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the result, with its settings, to this JSON file.")
@output_option
@run_options
@click.pass_context
def evaluate(ctx: click.Context, path: str | None, indices: str | None, model: str | None, runs: int | None,
             split: str, augment: str | None, epochs: int | None, steps: int | None, save_path: str | None,
             output: str, dataset: str | None, print_config: bool, **run_opts: Any) -> None:
    """Train fresh networks on a distilled set (PATH) or a subset (--indices) and report accuracy.

    Prints the mean ± std accuracy over --runs networks (population std).

    \b
    PATH is a torch file holding a dict:
      images        float (n, C, H, W) normalised, or uint8 pixels
                    (uint8 'pixels' is read when 'images' is absent)
      labels        int64 (n,), every class present
      distill_mask  optional bool (n,): True rows get DSA under combined augmentation
      dataset       optional dataset name (else --dataset)
    --indices FILE lists indices into the full training set (original order).
    """
    if (path is None) == (indices is None):
        raise click.UsageError("give either a set file PATH or --indices FILE (exactly one)")
    from ..config import to_dict
    from ..data import load_configured
    from ..evaluate import evaluate_set
    from ..fileio import save_json
    from ..runtime import resolve_device

    payload = _load_set_file(Path(path)) if path is not None else None
    dataset = _dataset_name(payload, dataset)
    overrides: dict[str, Any] = {"evaluate.runs": runs, "evaluate.augment": augment,
                                 "evaluate.epochs": epochs, "evaluate.steps": steps}
    cfg = resolve_config(ctx, dataset=dataset, overrides=overrides, **run_opts)
    if model is not None and model != cfg.evaluate.model.name:  # a new model drops the preset's builder options
        cfg = resolve_config(ctx, dataset=dataset, overrides={**overrides, "evaluate.model": {"name": model}}, **run_opts)
    if print_config:
        print_config_and_exit(cfg)

    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    if payload is not None:
        images, labels, mask = payload["images"], payload["labels"], payload.get("distill_mask")
        source = str(path)
    else:
        index = _read_indices(Path(indices), ds, split)
        images, labels, mask = ds.train_images[index], ds.train_labels[index], None
        source = f"{indices} ({len(index)} training indices)"
    result = evaluate_set(ds, images.to(device), labels.to(device), cfg=cfg.evaluate, distill_mask=mask, split=split,
                          seed=cfg.seed, device=device)

    record = {"source": source, "dataset": ds.name, **result.to_dict(), "config": to_dict(cfg)}
    if save_path is not None:
        save_json(record, save_path)
    if output == "json":
        emit(record, "json")
    else:
        emit({
            "set": f"{source}: {result.n_images} images ({result.n_distill} distilled) of {ds.name}",
            "accuracy": f"{100 * result.mean:.2f} ± {100 * result.std:.2f} % on {split} "
                        f"({result.runs} x {result.model}, {result.steps} steps, {result.augment} augmentation)",
            "runs": ", ".join(f"{100 * a:.2f}" for a in result.accuracies),
            "seconds": f"{result.seconds:.1f}",
        }, "text")


def _load_set_file(path: Path) -> dict[str, Any]:
    """Read and check the interchange dict (see the module docstring)."""
    import torch

    from ..errors import DataError
    from ..fileio import load_torch

    payload = load_torch(path, what="set file")
    if not isinstance(payload, dict):
        raise DataError(f"set file {path} must hold a dict with 'images' and 'labels', got {type(payload).__name__}")
    if "images" not in payload and isinstance(payload.get("pixels"), torch.Tensor):
        payload = {**payload, "images": payload["pixels"]}
    for key in ("images", "labels"):
        if not isinstance(payload.get(key), torch.Tensor):
            raise DataError(f"set file {path} must hold a tensor under {key!r}")
    mask = payload.get("distill_mask")
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise DataError(f"set file {path}: 'distill_mask' must be a bool tensor, got {type(mask).__name__}")
    name = payload.get("dataset")
    if name is not None and not isinstance(name, str):
        raise DataError(f"set file {path}: 'dataset' must be a string, got {type(name).__name__}")
    return payload


def _dataset_name(payload: dict[str, Any] | None, flag: str | None) -> str | None:
    """The dataset named by the set file, checked against --dataset."""
    from ..errors import InvalidArgument

    if payload is None:  # --indices: the dataset of --dataset, else the preset's
        return flag
    stored = payload.get("dataset")
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
