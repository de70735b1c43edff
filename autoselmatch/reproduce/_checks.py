"""Up-front checks: every argument of a plan that can be checked before any data is read."""

from __future__ import annotations

from typing import Sequence

from ..choices import DISTILL_METHODS, REPRODUCE_METHODS
from ..data import ImageDataset
from ..errors import InvalidArgument
from ..models import MODELS, list_models
from ._plan import BASE_LAYOUTS, BASE_SETS, ReproducePlan
from ._sets import METHODS


def parse_ipc_tokens(text: str) -> tuple[str, ...]:
    """``"60,300"`` or ``"1%,5%"`` -> checked tokens; each is a positive integer or a percentage."""
    tokens = tuple(t.strip() for t in text.split(","))
    if not tokens or any(not t for t in tokens):
        raise InvalidArgument(f"--ipc must be a comma list of integers or percentages such as 60,300 or 1%,5%, got {text!r}")
    for token in tokens:
        _token_value(token)
    return tokens


def _token_value(token: str) -> int | float:
    """An IPC (int) or a ratio (float in (0, 1]) from one ``--ipc`` token."""
    if token.endswith("%"):
        try:
            percent = float(token[:-1])
        except ValueError:
            raise InvalidArgument(f"--ipc ratio must be a number followed by %, got {token!r}") from None
        if not 0.0 < percent <= 100.0:
            raise InvalidArgument(f"--ipc ratio must be in (0%, 100%], got {token}")
        return percent / 100.0
    try:
        value = int(token)
    except ValueError:
        raise InvalidArgument(f"--ipc values must be integers or percentages such as 60 or 1%, got {token!r}") from None
    if value < 1:
        raise InvalidArgument(f"--ipc values must be >= 1, got {value}")
    return value


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.6,0.4"`` -> (0.6, 0.4), each in [0, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise InvalidArgument(f"{option} must be a number in [0, 1] or a comma list of them, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"{option} values must be in [0, 1], got {value}")
        values.append(value)
    return tuple(values)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"random,selmatch"`` -> checked method names (an unknown one lists the known ones)."""
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    if not names:
        raise InvalidArgument(f"--methods must name at least one of: {', '.join(REPRODUCE_METHODS)}")
    for name in names:
        METHODS.get(name)
    return names


def parse_base_method(text: str) -> str:
    """``--method``: the base distillation method (``distill.method``) whose table the run fills."""
    name = text.strip().lower()
    if name not in DISTILL_METHODS:
        raise InvalidArgument(f"--method must be one of {', '.join(DISTILL_METHODS)} (the base distillation "
                              f"method), got {text!r}")
    return name


def parse_models(text: str) -> tuple[str, ...]:
    """``"convnet,resnet18"`` -> checked names of registered models, in order, without repeats."""
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    if not names:
        raise InvalidArgument(f"--models must name at least one of: {', '.join(list_models())}")
    _check_models(names)
    return names


def _check_models(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in MODELS:
            raise InvalidArgument(f"--models: unknown model {name!r}; known: {', '.join(list_models())}")


def _check_plan(plan: ReproducePlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every argument check that needs no data; returns (ipc tokens, methods)."""
    tokens = plan.ipcs or tuple(f"{100 * r:g}%" for r in plan.cfg.reproduce.ratios)
    for token in tokens:
        _token_value(token)
    layout = BASE_LAYOUTS.get(plan.cfg.distill.method)
    if layout is not None and plan.methods:
        raise InvalidArgument(f"--methods picks rows of MTT's table; under --method {plan.cfg.distill.method} the "
                              f"rows are those of the paper's Table {layout.table}: leave out --methods")
    methods = tuple(name for name, _ in layout.rows) if layout is not None else \
        (plan.methods or plan.cfg.reproduce.methods)
    for name in methods:
        if name not in BASE_SETS:
            METHODS.get(name)
    _check_models(plan.models)
    if plan.runs < 1:
        raise InvalidArgument(f"--runs must be >= 1, got {plan.runs}")
    if plan.cfg.distill.precision != "fp32":  # before any set is built, not at the first distillation
        from ..distill import check_precision
        from ..runtime import resolve_device

        check_precision(plan.cfg.distill.precision, resolve_device(plan.cfg.device))
    for option, values in (("--alpha", plan.alphas), ("--beta", plan.betas)):
        if len(values) not in (0, 1, len(tokens)):
            raise InvalidArgument(f"{option} takes one value or one per IPC ({len(tokens)}), got {len(values)}")
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{option} values must be in [0, 1], got {value}")
    return tokens, tuple(dict.fromkeys(methods))


def resolve_ipcs(tokens: Sequence[str], ds: ImageDataset) -> list[int]:
    """IPCs of ``tokens`` on ``ds`` (ratios: round(ratio * training samples per class)), checked against the pool."""
    per_class = len(ds.train_labels) / ds.num_classes
    smallest = int(ds.class_counts().min())
    ipcs = []
    for token in tokens:
        value = _token_value(token)
        ipc = max(1, round(value * per_class)) if isinstance(value, float) else value
        if ipc > smallest:
            raise InvalidArgument(f"--ipc {token} is {ipc} images per class, more than the smallest class of "
                                  f"{ds.name}'s training pool ({smallest}); use at most {smallest}")
        ipcs.append(ipc)
    return ipcs
