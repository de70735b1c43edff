"""alpha and beta of each IPC: given, read from finished tune studies, or tuned into the output folder."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ..errors import DataError
from ..records import ALPHA, BETA, FinalRecord, study_name
from ..runtime import LOG
from ..storage import close_storage, open_existing_storage, safe_name
from ._plan import DEFAULT_PREFIX, Knobs, ReproducePlan


def given_knobs(ipcs: Sequence[int], alphas: Sequence[float], betas: Sequence[float]) -> dict[int, Knobs]:
    """Knobs from ``--alpha``/``--beta`` (one value, or one per IPC in the order of ``ipcs``)."""

    def pick(values: Sequence[float], i: int) -> float | None:
        if not values:
            return None
        return values[0] if len(values) == 1 else values[i]

    knobs = {}
    for i, ipc in enumerate(ipcs):
        alpha, beta = pick(alphas, i), pick(betas, i)
        knobs[ipc] = Knobs(ipc, alpha, beta, "given" if alpha is not None else None,
                           "given" if beta is not None else None)
    return knobs


def study_knobs(storage: str, prefix: str, ipcs: Sequence[int]) -> dict[int, Knobs]:
    """alpha and beta of each IPC from finished tune studies (the alpha study's ``final`` record), read only."""
    import optuna

    spec, source = open_existing_storage(storage)
    try:
        names = set(optuna.get_all_study_names(source))
        knobs = {}
        for ipc in ipcs:
            alpha_name, beta_name = study_name(prefix, ipc, ALPHA), study_name(prefix, ipc, BETA)
            if alpha_name not in names:
                raise DataError(f"storage {spec.display()} has no study {alpha_name}; tune ipc={ipc} first, pass "
                                f"--alpha/--beta, or leave out --storage to tune into the output folder")
            final = FinalRecord.from_attrs(optuna.load_study(study_name=alpha_name, storage=source).user_attrs)
            if final is None:
                raise DataError(f"study {alpha_name} in {spec.display()} is not finished (no final set yet); "
                                f"finish the tune run, pass --alpha/--beta, or leave out --storage")
            point = final.selmatch or {ALPHA: final.alpha, BETA: final.beta}  # SelMatch's, even if a baseline won
            knobs[ipc] = Knobs(ipc, point[ALPHA], point[BETA],
                               f"study {alpha_name} ({spec.display()})", f"study {beta_name} ({spec.display()})")
    finally:
        close_storage(source)
    return knobs


def resolve_knobs(plan: ReproducePlan, ipcs: Sequence[int], needed: bool, classes: int) -> dict[int, Knobs]:
    """Given values first; the rest from ``plan.storage``, else tuned into ``OUT/studies.db``.

    ``classes`` (the dataset's) sizes the synthetic sets of a tune run here: see :func:`_tuned_knobs`.
    """
    knobs = given_knobs(ipcs, plan.alphas, plan.betas)
    missing = [ipc for ipc in ipcs if knobs[ipc].alpha is None or knobs[ipc].beta is None]
    if not needed or not missing:
        return knobs
    if plan.storage is not None:
        prefix = plan.study_prefix or safe_name(plan.cfg.data.name)
        found = study_knobs(plan.storage, prefix, missing)
    else:
        found = _tuned_knobs(plan, missing, classes)
    for ipc in missing:
        have, new = knobs[ipc], found[ipc]
        knobs[ipc] = Knobs(ipc, have.alpha if have.alpha is not None else new.alpha,
                           have.beta if have.beta is not None else new.beta,
                           have.alpha_source or new.alpha_source, have.beta_source or new.beta_source)
    return knobs


def _tuned_knobs(plan: ReproducePlan, ipcs: Sequence[int], classes: int) -> dict[int, Knobs]:
    """Run (or resume) ``autoselmatch tune`` into ``OUT/studies.db`` and read its optima.

    As for the sets this benchmark distils, an IPC whose synthetic set (``classes * ipc`` images) is smaller
    than ``distill.batch_syn`` is tuned with the whole set as the student batch (so ``--ipc 1%,10%`` runs with
    one preset); the tune records the batch it used.
    """
    from ..tune import tune

    storage = f"sqlite:///{(plan.out / 'studies.db').resolve()}"
    prefix = plan.study_prefix or DEFAULT_PREFIX
    LOG.info("no alpha/beta given for ipc %s: tuning into %s (prefix %s)", ",".join(map(str, ipcs)), storage, prefix)
    by_batch: dict[int, list[int]] = {}
    for ipc in ipcs:
        by_batch.setdefault(min(plan.cfg.distill.batch_syn, classes * ipc), []).append(ipc)
    for batch, group in by_batch.items():
        cfg = dataclasses.replace(plan.cfg, distill=dataclasses.replace(plan.cfg.distill, batch_syn=batch))
        result = tune(cfg, group, storage=storage, study_prefix=prefix)
        if not result.complete:
            raise DataError(f"tuning into {storage} did not finish; rerun the same command to resume it")
    knobs = study_knobs(storage, prefix, ipcs)
    return {ipc: dataclasses.replace(k, alpha_source=f"tuned: {k.alpha_source}", beta_source=f"tuned: {k.beta_source}")
            for ipc, k in knobs.items()}
