"""The plan of a reproduce run and its pieces: knobs, set specs, cells, and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig

#: Sets of the ablation only: random init with the partial update (selection init off, partial update on).
ABLATION_SETS = ("mtt", "mtt-init", "partial", "selmatch")
#: (selection-based init, partial update) -> the set that has them (paper Table 3).
ABLATION_GRID = {(False, False): "mtt", (True, False): "mtt-init", (False, True): "partial", (True, True): "selmatch"}
NEEDS_ALPHA = frozenset({"merge", "selmatch", "partial"})
#: Sets of a base table only (:data:`BASE_LAYOUTS`): SRe2L's noise init at alpha 1.
BASE_SETS = ("noise",)
NEEDS_BETA = frozenset({"window", "mtt-init", "merge", "selmatch"})
#: Sets of real images only, with no D_distill: the main table scores them with DSA (paper Table 1).
SELECTION_ONLY = frozenset({"random", "hardest", "window"})
DEFAULT_PREFIX = "reproduce"


@dataclass(frozen=True)
class BaseLayout:
    """The main table of ``bench reproduce --method`` for a base method other than MTT (paper App. D.2).

    Attributes:
        table: The paper's table number (7: DSA, 8: SRe2L).
        rows: (set, row label) from top to bottom: the method's own baseline(s) at alpha 1, then
            select init (the window at the IPC's beta, alpha 1), then SelMatch (window and partial update).
    """

    table: int
    rows: tuple[tuple[str, str], ...]


_SELECT_ROWS = (("mtt-init", "select init (window at beta, alpha 1)"),
                ("selmatch", "SelMatch (window at beta, partial update of alpha)"))
#: ``distill.method`` -> its table; MTT's is the main table of every method (paper Table 1).
BASE_LAYOUTS = {
    "dsa": BaseLayout(7, (("mtt", "DSA baseline (random real init, alpha 1)"), *_SELECT_ROWS)),
    "sre2l": BaseLayout(8, (("noise", "SRe2L baseline (noise init, alpha 1)"),
                            ("mtt", "SRe2L baseline (random real init, alpha 1)"), *_SELECT_ROWS)),
}


def set_label(name: str, method: str) -> str:
    """What the tables call set ``name`` under base method ``method``: MTT's two alpha-1 sets take the base
    method's name (``mtt`` -> ``dsa``, ``mtt-init`` -> ``dsa-init``); every other name stays."""
    return method + name[len("mtt"):] if name in ("mtt", "mtt-init") else name


@dataclass(frozen=True)
class ReproducePlan:
    """What one ``bench reproduce`` run computes.

    Args:
        cfg: Run settings; ``evaluate`` is the protocol of every cell, ``reproduce``
            the defaults (ratios, methods, full-data epochs, ablation IPC).
        out: Output folder (cells, sets, tables).
        ipcs: IPCs as integers (``"60"``) or shares of each class of the whole
            training split (``"1%"``); empty: ``cfg.reproduce.ratios``.
        methods: Methods of the main table (empty: ``cfg.reproduce.methods``).
        runs: Seeds per (method, IPC): ``cfg.seed, cfg.seed + 1, ...``.
        alphas: Given alpha: one value for every IPC, or one per IPC in the
            order of ``ipcs`` (empty: read from ``storage`` or tuned).
        betas: Given beta, same rules.
        storage: Optuna storage URL holding finished tune studies (read only).
        study_prefix: Studies are ``{prefix}-ipc{N}-beta|alpha`` (default: the
            dataset name for ``storage``, ``reproduce`` for the studies tuned into OUT).
        ablation: Also compute the ablation table.
        coverage: Also compute the coverage table and figure.
        only: Compute just this cell (recomputed even if it is saved).
        models: Evaluation networks of the cross-architecture table (paper Table 2):
            every main-table set is also scored with each of these registered
            models (empty: no such table). A name equal to ``cfg.evaluate.model``'s
            uses its options and shares the main table's cells; the others are
            built with their builder's defaults under the same protocol.
        preset: The preset as given on the command line (for the rerun commands;
            default ``cfg.preset``).
        extras: (name, folder) of sets made elsewhere (MTT/FTD/DATM's images_best.pt and
            labels_best.pt), each an extra row of the main table (``--extra NAME=PATH``).
    """

    cfg: RunConfig
    out: Path
    ipcs: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    runs: int = 3
    alphas: tuple[float, ...] = ()
    betas: tuple[float, ...] = ()
    storage: str | None = None
    study_prefix: str | None = None
    ablation: bool = True
    coverage: bool = True
    only: str | None = None
    preset: str | None = None
    extras: tuple[tuple[str, str], ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Knobs:
    """alpha and beta of one IPC, and where each came from (``given``, a study, or ``tuned``)."""

    ipc: int
    alpha: float | None = None
    beta: float | None = None
    alpha_source: str | None = None
    beta_source: str | None = None


@dataclass(frozen=True)
class SetSpec:
    """One set to build: a method (or ``partial``) at one IPC with its knobs (``ipc`` None: ``full``).

    ``source`` (and the sha256 of its files): the folder of a set made elsewhere (``--extra``), read, not built.
    """

    name: str
    ipc: int | None
    knobs: Knobs | None = None
    source: str | None = None
    source_sha256: str | None = None

    @property
    def alpha(self) -> float | None:
        return self.knobs.alpha if self.knobs is not None and self.name in NEEDS_ALPHA else None

    @property
    def beta(self) -> float | None:
        return self.knobs.beta if self.knobs is not None and self.name in NEEDS_BETA else None

    @property
    def label(self) -> str:
        return self.name if self.ipc is None else f"{self.name}-ipc{self.ipc}"


@dataclass(frozen=True)
class Cell:
    """One saved number: an evaluation (``kind`` ``eval``) or a coverage measurement (``coverage``).

    ``model``: the evaluation network of a cross-architecture cell (a registered name, built with its
    defaults); None: ``cfg.evaluate.model``.
    """

    id: str
    kind: str
    set: SetSpec
    seed: int
    augment: str | None = None
    model: str | None = None


@dataclass
class ReproduceResult:
    """What :func:`reproduce` wrote, and how much it computed.

    Attributes:
        out: The output folder.
        table_md: The main table in Markdown.
        files: Name -> path of every output file.
        computed: Cells computed by this call.
        reused: Cells found finished on disk.
        results: The content of ``results.json``.
        cross_arch_md: The cross-architecture table in Markdown (empty without ``plan.models``).
    """

    out: Path
    table_md: str
    files: dict[str, Path]
    computed: int
    reused: int
    results: dict[str, Any] = field(default_factory=dict)
    cross_arch_md: str = ""
