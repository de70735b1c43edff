""":func:`load_result`: the set to export, a :class:`~autoselmatch.synset.SyntheticSet` with class names and mean/std."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from ..errors import DataError
from ..runtime import LOG
from ..synset import SyntheticSet


def load_result(result: str | os.PathLike | Mapping[str, Any] | SyntheticSet) -> SyntheticSet:
    """A distillation result (a set file written by ``distill``/``tune``, its dict, or the set itself), checked.

    The file format is :mod:`autoselmatch.synset`'s; an export also needs the
    ``dataset`` name, and reads ``classes``, ``mean`` and ``std`` from the
    dataset (``autoselmatch.data.load_dataset``) when the result lacks them.
    The returned set's tensors are on the CPU.

    Args:
        result: Path of a set file, its dict, or a :class:`~autoselmatch.synset.SyntheticSet`.
    """
    if isinstance(result, SyntheticSet):
        s = SyntheticSet.from_dict(result.to_dict(), source="result")
    elif isinstance(result, Mapping):
        s = SyntheticSet.from_dict(result, source="result")
    else:
        s = SyntheticSet.load(result, what="result file")
    if s.dataset is None:
        raise DataError("result has no 'dataset': the dataset name is needed to export it")
    if not (s.classes and s.mean and s.std):
        s = _with_dataset_constants(s)
        s.check("result")
    return s


def _with_dataset_constants(s: SyntheticSet) -> SyntheticSet:
    """``s`` with missing class names and normalisation constants read from its dataset."""
    from ..data import load_dataset

    LOG.info("reading class names and mean/std of %s (not stored in the result)", s.dataset)
    ds = load_dataset(s.dataset, val_fraction=0.0)
    return dataclasses.replace(s, classes=s.classes or tuple(ds.classes), mean=s.mean or tuple(ds.mean),
                               std=s.std or tuple(ds.std))
