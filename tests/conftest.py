"""Shared fixtures. Tests run on CPU, on tiny budgets, without network access."""

import os

# One thread per process, children included: the test networks are tiny, and
# on a 2-core machine a second OpenMP thread costs more than it gains.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("AUTOSELMATCH_NO_PROGRESS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset (CPU tensors, 10 % validation split, seed 0)."""
    from autoselmatch.data import load_dataset

    return load_dataset("digits", val_fraction=0.1, split_seed=0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache and data root so tests never touch ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTOSELMATCH_DATA", str(tmp_path / "data"))
    return path
