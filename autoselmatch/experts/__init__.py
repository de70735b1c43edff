"""Expert trajectories: train once, cache on disk, resume after a crash, load lazily.

Trajectory matching (eq. 1 in DESIGN.md) compares a student with an expert
network trained on the real training split, at epochs ``t`` and ``t + M``.
This package trains ``K`` such experts and stores, per expert, the flat
parameter vector (:class:`autoselmatch.models.FlatModel` order) at
initialisation and after every epoch, or every ``experts.snapshot_every`` SGD
steps when that is set (then ``distill.expert_epochs`` and
``distill.max_start_epoch`` count these snapshots). It also records, per
epoch, which training samples the training forward passes classified
correctly: the by-product that forgetting and learning-speed scores are
derived from (:mod:`autoselmatch.scores`).

Storage (one folder per setting, ``<cache>/experts/<dataset>-<hash>/``)::

    manifest.json       the hash inputs ("key"), parameter count, stored rows - 1 ("num_epochs"),
                        and per finished expert: file, bytes, sha256, validation accuracy, correctness file
    expert_000.npy      float32 (R, P); row r = parameters after r epochs (R = E + 1), or after
                        r * snapshot_every SGD steps (R = E * steps per epoch // snapshot_every + 1)
    expert_000.correct.npy  uint8 (E, N): 1 where the training forward pass of epoch e classified
                        training sample n (``ds.split("train")`` order) correctly; augmentation on
    expert_001.npy      ...
    zca.pt              the whitening transform (only with experts.zca)
                        (imported experts: manifest "imported" names the source folder and each
                        source file's sha256; their records have "imported" instead of a seed)
    .expert_000.lock    present while a process trains expert 0 (or left by one that was killed)

The folder name hashes :func:`expert_manifest`, i.e. everything that decides
a trajectory, so a distillation asking for other settings never reuses
mismatched experts. ``.npy`` files are memory-mapped or read one row at a
time, so a (start, target) pair costs 2 x P x 4 bytes of memory, not the
whole buffer (see bench/experts_memory.py).

Crash safety and resume: while expert ``i`` trains, its rows go into
``expert_00i.partial.npy`` (written in place, fsynced, as each snapshot is
reached) and, after each epoch, ``expert_00i.state.pt`` (model, optimizer,
epoch count and the correctness record so far) is replaced atomically with
the sha256 of every row so far. Rows beyond the recorded epoch are never
trusted. The correctness record is written atomically, then the finished
file is hashed, recorded in the manifest and only then renamed to
``expert_00i.npy``. Opening a store checks
each file's header, shape and size against the manifest; ``train_experts``
and :meth:`ExpertStore.verify` also compare sha256 checksums. A bad file is
reported and retrained, never loaded. The data order and augmentation of epoch ``e`` come from
a generator seeded by (expert seed, e), so on the CPU a resumed expert is
bit-identical to an uninterrupted one (on CUDA, non-deterministic cuDNN
kernels already make two uninterrupted runs differ in the last bits).
Expert ``i`` is seeded with ``seed * 1000 + i``; ZCA, when enabled, is
fitted on the normalised training split and stored as ``zca.pt``.

Several processes may train into one folder at once (``tune`` workers on
several machines over a shared cache, two commands started together). Each
expert is trained under its own lock file (:func:`autoselmatch.fileio.file_lock`):
a process skips the experts others are training, and at the end waits for
them, taking over (and resuming) any whose trainer died. Every manifest
change re-reads the manifest under ``.manifest.lock`` and merges into it, so
no process drops another's record. Expert ``i``'s file depends on ``i`` and
the settings only, not on which process trained it.

    cfg = load_preset("digits")
    ds = load_dataset("digits")
    store = train_experts(ds, cfg)                 # trains, or reuses what is cached
    start, target = store.pair(0, start_epoch=2, expert_epochs=2)   # (P,), (P,)

Modules::

    _key      what decides a trajectory (the hashed key, epochs, seeds), its cache folder, ZCA whitening
    _store    ExpertStore, load_experts, the manifest, .npy header checks and row reads and writes
    _train    train_experts: per-expert locks, crash-safe resume, the correctness record
    _import   import_mtt_experts: MTT's replay_buffer_<n>.pt folders into this layout (and back)
"""

from ._key import (
    EXPERT_SEED_STRIDE,
    TRAJECTORY_VERSION,
    ZCAWhitening,
    expert_cache_dir,
    expert_epochs_for,
    expert_manifest,
    expert_seed,
    snapshot_steps,
    steps_per_epoch,
)
from ._import import import_mtt_experts, mtt_buffer_files, mtt_model_norm, write_mtt_buffer
from ._store import DTYPE, FORMAT, ExpertStore, load_experts, read_manifest, trajectory_file_problem
from ._train import train_experts

__all__ = [
    "DTYPE",
    "EXPERT_SEED_STRIDE",
    "FORMAT",
    "TRAJECTORY_VERSION",
    "ExpertStore",
    "ZCAWhitening",
    "expert_cache_dir",
    "expert_epochs_for",
    "expert_manifest",
    "expert_seed",
    "import_mtt_experts",
    "load_experts",
    "mtt_buffer_files",
    "mtt_model_norm",
    "read_manifest",
    "snapshot_steps",
    "steps_per_epoch",
    "train_experts",
    "trajectory_file_problem",
    "write_mtt_buffer",
]
