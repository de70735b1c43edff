"""Difficulty scores of the training samples, oriented higher = harder.

Every score is a float32 tensor (N,) aligned with the dataset's original
training order (``ds.train_images``), whatever its source:

- ``cscore``: the published C-scores of CIFAR-10/100 (Jiang et al. 2021),
  downloaded once from pluskid.github.io/structural-regularity, checked by
  sha256 and cached. A low C-score means a hard sample, so it is negated.
- ``el2n``: the error L2 norm (Paul et al. 2021), ``||softmax(f(x)) - onehot(y)||_2``
  averaged over ``networks`` networks trained ``epochs`` epochs on the pool.
- ``forgetting``: forgetting events (Toneva et al. 2019): how often a
  sample goes from correctly to incorrectly classified between consecutive
  epochs; a sample never classified correctly counts E events (E epochs),
  more than any learned sample can reach, as in the paper.
- ``learning-speed``: the mean correctness over the E epochs (cumulative
  training accuracy), Jiang et al. (2021)'s cheap proxy of the C-score. Low
  is hard, so it is negated, like the C-score.

``forgetting`` and ``learning-speed`` come from the expert trajectories'
by-product: per epoch, whether each pool sample's training forward pass
(augmented, in train mode, as in Toneva et al.) classified it correctly
(:meth:`autoselmatch.experts.ExpertStore.correctness`). They are averaged
over the run's ``experts.num_experts`` experts, read from the cache when the
run's experts exist (no extra training) and trained through
:func:`autoselmatch.experts.train_experts` when they do not; they need the
run's settings (``get_scores(..., run=cfg)``). Validation samples, which
experts never see, score NaN (selection reads only the pool).

The rule for a name that also has published files: ``ScoreConfig.file``
(``.npz`` with ``scores`` and optionally ``labels``, or ``.npy``) always wins,
so the published forgetting counts of CIFAR-10/100 and Tiny ImageNet are used
when passed (``--scores-file``); without a file, ``cscore`` is downloaded
(CIFAR-10/100 only) and every other score is computed. A file is checked
against the dataset (length, labels, NaNs). EL2N is cached under
``cache_dir/scores`` per dataset, settings, validation split and seed, and
reused; processes sharing a cache compute each entry once.

    scores = get_scores(ds, ScoreConfig(name="el2n", epochs=3, networks=2), cache_dir=Path("cache"), seed=0)
    hardest = scores.argsort(descending=True)[:10]
    forgetting = get_scores(ds, cfg.scores, cache_dir=cfg.cache_path, seed=cfg.seed, run=cfg)  # name="forgetting"
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ScoreConfig, to_dict
from .data import ImageDataset
from .errors import DataError, InvalidArgument, TrainingDiverged
from .fileio import atomic_write, file_lock, load_torch, save_torch, sha256_file, stable_hash
from .registry import Registry
from .runtime import LOG, progress, resolve_device

if TYPE_CHECKING:
    from .config import RunConfig

ScoreFn = Callable[..., torch.Tensor]
SCORES: Registry[ScoreFn] = Registry("score")

# Scores whose published form has low = hard; they are negated on load.
LOW_IS_HARD = frozenset({"cscore", "learning-speed"})

CSCORE_URL = "https://pluskid.github.io/structural-regularity/cscores/{file}"
CSCORE_FILES = {
    "cifar10": ("cifar10-cscores-orig-order.npz", "0f8b3e219fd37867fc1ef532335b6169f8109d137275ae53b802bb8177556ac8"),
    "cifar100": ("cifar100-cscores-orig-order.npz", "8e1f3cfc7075052ae2ff4d4b66441dfe399b0d0e125394675cb52b5cc3c18a3a"),
}

PREDICT_BATCH = 1024


def get_scores(
    ds: ImageDataset,
    cfg: ScoreConfig,
    *,
    cache_dir: Path,
    seed: int,
    device: torch.device | str | None = None,
    run: RunConfig | None = None,
) -> torch.Tensor:
    """Difficulty of every training sample: float32 (N,) on the CPU, higher = harder.

    Args:
        ds: The dataset; scores follow ``ds.train_images``' order.
        cfg: Which score and how to compute it; ``cfg.file`` loads a file instead.
        cache_dir: Root of the cache (downloads and computed scores go to ``cache_dir/scores``).
        seed: Seed of the computed scores' networks.
        device: Where networks train (default: the dataset's device).
        run: The run whose expert trajectories ``forgetting`` and ``learning-speed``
            are derived from (its ``experts``, ``distill``, ``seed``, ``cache_dir``);
            needed only by those two, without a file.
    """
    score_fn = SCORES.get(cfg.name)
    if cfg.file is not None:
        return load_score_file(cfg.file, ds, name=cfg.name)
    return score_fn(ds, cfg, cache_dir=Path(cache_dir).expanduser(), seed=seed, device=device, run=run)


# --------------------------------------------------------------------------------------------
# Score files
# --------------------------------------------------------------------------------------------


def load_score_file(path: str | Path, ds: ImageDataset, *, name: str) -> torch.Tensor:
    """Read a ``.npz`` (key ``scores``, optional ``labels``) or ``.npy`` score file, check it, orient it.

    Args:
        path: The file.
        ds: The dataset it must belong to.
        name: The score it holds; ``cscore`` files (low = hard) are negated.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"score file {path} does not exist")
    values, labels = _read_score_arrays(path)
    check_score_file(values, labels, ds, source=str(path))
    scores = torch.from_numpy(values.astype(np.float32))
    return -scores if name in LOW_IS_HARD else scores


def _read_score_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, labels or None) from a .npz/.npy file, without unpickling anything."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "scores" not in archive.files:
                    raise DataError(f"score file {path} has no 'scores' array (it holds: {', '.join(archive.files)})")
                labels = archive["labels"] if "labels" in archive.files else None
                return archive["scores"], labels
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                if handle.read(6) != b"\x93NUMPY":  # else numpy takes it for a pickle and advises allow_pickle
                    raise DataError(f"score file {path} is not a NumPy array file (no .npy header); "
                                    f"write it with numpy.save")
            return np.load(path, allow_pickle=False), None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOFError: an empty .npy
        raise DataError(f"cannot read score file {path}: {exc}") from None
    raise DataError(f"score file {path} must be .npz (keys scores[, labels]) or .npy")


def check_score_file(values: np.ndarray, labels_in_file: np.ndarray | None, ds: ImageDataset, *,
                     source: str = "score file") -> None:
    """Check that a score array belongs to ``ds``; raise :class:`DataError` naming the mismatch.

    Args:
        values: Scores, one per training sample of ``ds`` in its original order.
        labels_in_file: Labels stored with the scores (None when the file has none);
            they must equal ``ds.train_labels``.
        ds: The dataset.
        source: What to call the file in messages.
    """
    n = len(ds.train_labels)
    if values.ndim != 1 or len(values) != n:
        raise DataError(f"{source} holds scores of shape {values.shape}; {ds.name} has {n} training samples")
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{source} holds {values.dtype} scores; expected numbers")
    nan = int(np.isnan(values.astype(np.float64)).sum())
    if nan:
        raise DataError(f"{source} holds {nan} NaN scores; every score must be a number")
    if labels_in_file is None:
        return
    expected = ds.train_labels.cpu().numpy()
    if labels_in_file.shape != expected.shape:
        raise DataError(f"{source} holds labels of shape {labels_in_file.shape}; {ds.name} has {expected.shape}")
    mismatched = int((labels_in_file != expected).sum())
    if mismatched:
        first = int(np.flatnonzero(labels_in_file != expected)[0])
        raise DataError(
            f"{source} does not belong to {ds.name}: {mismatched} of {n} labels differ "
            f"(first at index {first}: file {labels_in_file[first]}, dataset {expected[first]})"
        )


# --------------------------------------------------------------------------------------------
# C-score: published files only
# --------------------------------------------------------------------------------------------


@SCORES.register("cscore")
def cscore(ds: ImageDataset, cfg: ScoreConfig, *, cache_dir: Path, seed: int,
           device: torch.device | str | None = None, run: RunConfig | None = None) -> torch.Tensor:
    """Published C-scores of CIFAR-10/100, negated (higher = harder)."""
    if ds.name not in CSCORE_FILES:
        raise InvalidArgument(
            f"cscore is published only for {', '.join(CSCORE_FILES)}, not {ds.name!r}; "
            "pass --scores-file PATH or use --score el2n"
        )
    file, sha = CSCORE_FILES[ds.name]
    path = download_checked(CSCORE_URL.format(file=file), cache_dir / "scores" / file, sha256=sha)
    return load_score_file(path, ds, name="cscore")


def download_checked(url: str, path: Path, *, sha256: str) -> Path:
    """Download ``url`` to ``path`` (atomically) unless a copy with the right sha256 is there."""
    if path.is_file() and sha256_file(path) == sha256:
        return path
    LOG.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_write(path) as f:
            digest = hashlib.sha256()
            while block := response.read(1 << 20):
                digest.update(block)
                f.write(block)
            if digest.hexdigest() != sha256:
                raise DataError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                                "retry, or pass the file with --scores-file")
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot download {url} ({exc}); download it by hand and pass --scores-file PATH") from None
    return path


# --------------------------------------------------------------------------------------------
# Scores from the experts' correctness records: forgetting events and learning speed
# --------------------------------------------------------------------------------------------


def forgetting_counts(correct: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Forgetting events (Toneva et al. 2019) of a correctness record; higher = harder.

    Args:
        correct: bool or 0/1 (E, N): whether sample n was classified correctly in epoch e.

    Returns:
        float32 (N,): correct -> incorrect transitions between consecutive epochs;
        E for a sample never classified correctly (more than a learned one can reach).
    """
    correct = torch.as_tensor(correct).bool()  # (E, N)
    events = (correct[:-1] & ~correct[1:]).sum(0).float()  # (N,)
    return events.masked_fill(~correct.any(0), float(len(correct)))


def learning_speed(correct: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Cumulative training accuracy (Jiang et al. 2021's C-score proxy): float32 (N,) in [0, 1]; low = hard.

    Args:
        correct: bool or 0/1 (E, N): whether sample n was classified correctly in epoch e.
    """
    return torch.as_tensor(correct).float().mean(0)


@SCORES.register("forgetting")
def forgetting(ds: ImageDataset, cfg: ScoreConfig, *, cache_dir: Path, seed: int,
               device: torch.device | str | None = None, run: RunConfig | None = None) -> torch.Tensor:
    """Forgetting events of the run's experts, averaged over them (higher = harder)."""
    return _from_experts(ds, cfg, run, device, forgetting_counts)


@SCORES.register("learning-speed")
def learning_speed_score(ds: ImageDataset, cfg: ScoreConfig, *, cache_dir: Path, seed: int,
                         device: torch.device | str | None = None, run: RunConfig | None = None) -> torch.Tensor:
    """Negated learning speed of the run's experts, averaged over them (higher = harder)."""
    return -_from_experts(ds, cfg, run, device, learning_speed)


def _from_experts(ds: ImageDataset, cfg: ScoreConfig, run: RunConfig | None, device: torch.device | str | None,
                  derive: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
    """Mean over the run's experts of ``derive(correctness record)``, scattered to (N,); NaN outside the pool.

    The cached experts are used as they are; missing ones are trained first.
    """
    from .experts import load_experts, train_experts

    if run is None:
        raise InvalidArgument(f"scores.name={cfg.name!r} is derived from expert trajectories; pass the run's "
                              "settings (run=cfg), or a score file")
    try:
        store = load_experts(ds, run)
    except DataError:  # none (or not enough, or damaged) with these settings: train or repair them
        LOG.info("no finished experts for %s scores; training them", cfg.name)
        store = train_experts(ds, run, device=device)
    pool = ds.train_index.cpu()
    total = torch.zeros(len(pool), dtype=torch.float32)
    for i in range(store.num_experts):
        record = store.correctness(i)  # (E, pool size)
        if record.shape[1] != len(pool):
            raise DataError(f"the correctness record of expert {i} in {store.directory} covers {record.shape[1]} "
                            f"samples, the pool of {ds.name} has {len(pool)}")
        total += derive(record)
    scores = torch.full((len(ds.train_labels),), float("nan"), dtype=torch.float32)
    scores[pool] = total / store.num_experts
    return scores


# --------------------------------------------------------------------------------------------
# EL2N: its own networks, cached
# --------------------------------------------------------------------------------------------


@SCORES.register("el2n")
def el2n(ds: ImageDataset, cfg: ScoreConfig, *, cache_dir: Path, seed: int,
         device: torch.device | str | None = None, run: RunConfig | None = None) -> torch.Tensor:
    """Mean over ``cfg.networks`` networks of ``||softmax - onehot||_2`` after ``cfg.epochs`` epochs."""
    return _cached(ds, cfg, cache_dir, seed, lambda: _compute(ds, cfg, seed, device, _el2n_run))


def cache_path(ds: ImageDataset, cfg: ScoreConfig, cache_dir: Path, seed: int) -> Path:
    """Where a computed score lives: one file per dataset, score, settings, validation split and seed."""
    settings = score_settings(ds, cfg, seed)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds.name).strip("_")
    return Path(cache_dir) / "scores" / f"{slug}-{cfg.name}-{stable_hash(settings)}.pt"


def score_settings(ds: ImageDataset, cfg: ScoreConfig, seed: int) -> dict:
    """Everything a computed score depends on (stored with it)."""
    split = hashlib.sha256(ds.val_index.cpu().numpy().tobytes()).hexdigest()[:16]
    training = {k: v for k, v in to_dict(cfg).items() if k != "file"}
    settings = {"dataset": ds.name, "n_train": len(ds.train_labels), "val_split": split, "seed": seed, "score": training}
    if ds.image_size is not None:  # resized at load (data.image_size); keys of native-size data stay as they were
        settings["image_size"] = ds.image_size
    return settings


def _cached(ds: ImageDataset, cfg: ScoreConfig, cache_dir: Path, seed: int,
            compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The cached scores, else ``compute()`` stored in the cache.

    Computing happens under a lock file beside the cache entry: a second
    process asking for the same scores (``tune`` workers sharing a cache)
    waits for the first and reuses its result instead of training the same
    networks again.
    """
    path = cache_path(ds, cfg, cache_dir, seed)
    scores = _read_cached(path, ds, cfg)
    if scores is not None:
        return scores
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.parent / f".{path.name}.lock"):
        scores = _read_cached(path, ds, cfg)  # stored by another process while this one waited?
        if scores is None:
            scores = compute()
            save_torch({"scores": scores, "settings": json.dumps(score_settings(ds, cfg, seed))}, path)
            LOG.info("saved %s scores to %s", cfg.name, path)
    return scores


def _read_cached(path: Path, ds: ImageDataset, cfg: ScoreConfig) -> torch.Tensor | None:
    """The scores cached at ``path`` if present and fitting ``ds``; None means compute them."""
    if not path.is_file():
        return None
    stored = load_torch(path, what="cached scores", remedy="delete it to recompute")
    if not isinstance(stored, dict) or not isinstance(stored.get("scores"), torch.Tensor):
        raise DataError(f"cached scores {path} hold no 'scores' tensor; delete the file to recompute")
    scores = stored["scores"]
    if len(scores) == len(ds.train_labels) and not torch.isnan(scores).any():
        LOG.info("using cached %s scores %s", cfg.name, path)
        return scores
    LOG.warning("cached scores %s do not fit %s; recomputing", path, ds.name)
    return None


RunFn = Callable[[ImageDataset, ScoreConfig, int, torch.device, str], torch.Tensor]


def _compute(ds: ImageDataset, cfg: ScoreConfig, seed: int, device: torch.device | str | None,
             run: RunFn) -> torch.Tensor:
    """Average ``run`` over ``cfg.networks`` seeds; float32 (N,) on the CPU."""
    device = resolve_device(str(device)) if device is not None else ds.device
    ds = ds.to(device)
    total = torch.zeros(len(ds.train_labels), dtype=torch.float32, device=device)
    for k in range(cfg.networks):
        total += run(ds, cfg, seed * 1009 + k, device, f"{cfg.name} network {k + 1}/{cfg.networks}")
    return (total / cfg.networks).cpu()


def _el2n_run(ds: ImageDataset, cfg: ScoreConfig, seed: int, device: torch.device, desc: str) -> torch.Tensor:
    model = train_pool_network(ds, cfg, seed=seed, device=device, desc=desc)
    probs = predict_proba(model, ds)  # (N, K)
    onehot = F.one_hot(ds.train_labels, ds.num_classes).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)  # (N,)


def train_pool_network(
    ds: ImageDataset,
    cfg: ScoreConfig,
    *,
    seed: int,
    device: torch.device,
    desc: str = "score network",
) -> nn.Module:
    """Train ``cfg.model`` on the pool (``ds.train_index``) for ``cfg.epochs`` epochs, plain SGD.

    Args:
        ds: The dataset, on ``device``.
        cfg: Model and optimizer settings.
        seed: Seed of the initialisation and of the batch order.
        device: Where the network trains.
        desc: Progress bar label.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    c, h, _ = ds.image_shape
    model = cfg.model.build(channels=c, num_classes=ds.num_classes, image_size=h).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    pool = ds.train_index.to(device)
    for epoch in progress(range(cfg.epochs), desc=desc, total=cfg.epochs):
        model.train()
        order = pool[torch.randperm(len(pool), generator=generator).to(device)]
        for batch in order.split(cfg.batch_size):
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            x = ds.normalize(ds.train_images[batch])  # (B, C, H, W)
            loss = F.cross_entropy(model(x), ds.train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if not torch.isfinite(loss):  # sync point: once per epoch
            raise TrainingDiverged(f"score network diverged in epoch {epoch + 1} (loss {loss.item()}); "
                                   f"lower scores.lr (now {cfg.lr})")
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: nn.Module, ds: ImageDataset) -> torch.Tensor:
    """float32 (N, K) softmax of ``model`` (eval mode) on every training sample."""
    model.eval()
    out = [F.softmax(model(ds.normalize(ds.train_images[i : i + PREDICT_BATCH])).float(), dim=1)
           for i in range(0, len(ds.train_images), PREDICT_BATCH)]
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize(scores: torch.Tensor, ds: ImageDataset) -> list[dict]:
    """Per class over the pool: ``{"class", "name", "n", "mean", "min", "max"}`` of the scores."""
    pool = ds.train_index.cpu()
    values, labels = scores.cpu()[pool].double(), ds.train_labels.cpu()[pool]
    rows = []
    for k, name in enumerate(ds.classes):
        v = values[labels == k]
        if len(v) == 0:
            rows.append({"class": k, "name": name, "n": 0, "mean": None, "min": None, "max": None})
            continue
        rows.append({"class": k, "name": name, "n": len(v), "mean": float(v.mean()),
                     "min": float(v.min()), "max": float(v.max())})
    return rows


__all__ = [
    "CSCORE_FILES",
    "SCORES",
    "cache_path",
    "check_score_file",
    "cscore",
    "download_checked",
    "el2n",
    "forgetting",
    "forgetting_counts",
    "get_scores",
    "learning_speed",
    "load_score_file",
    "predict_proba",
    "summarize",
    "train_pool_network",
]
