"""Sweeps and arrays: one submit that becomes many jobs (pure).

`sweep: {lr: [0.001, 0.01], batch: [64, 128]}` is the cartesian product of the values,
each member getting them as params; `array: "1-100"` (or "0,3,7") gives each member its
index in SENTINELS_ARRAY_INDEX, like a Slurm array. Both at once multiply. Members get
ids derived from the request's CloudEvent id and their index, so a retried request
creates nothing twice. The size is checked before anything is expanded or written.
"""

import itertools
import math
import re

from .errors import InvalidSpec

ARRAY = re.compile(r"^\s*(\d{1,7})\s*-\s*(\d{1,7})\s*$")
SWEEP_PREFIX = "sw-"


def array_indexes(raw) -> "list[int] | range":
    """"1-100" (inclusive) or "0,3,7" or a list of whole numbers (a range is never expanded here)."""
    if isinstance(raw, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw):
        out = raw
    elif isinstance(raw, str) and (m := ARRAY.match(raw)):
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise InvalidSpec(f"array: {raw!r} ends before it starts", "array")
        return range(lo, hi + 1)
    elif isinstance(raw, str) and re.fullmatch(r"\s*\d{1,7}(\s*,\s*\d{1,7})*\s*", raw):
        out = [int(p) for p in raw.split(",")]
    else:
        raise InvalidSpec(f"array: {raw!r} is not a range such as 1-100 or a list such as 0,3,7", "array")
    if len(set(out)) != len(out) or not out:
        raise InvalidSpec("array: indexes must be distinct and at least one", "array")
    return list(out)


def sweep_axes(raw) -> list[tuple[str, list]]:
    if not isinstance(raw, dict) or not raw:
        raise InvalidSpec("sweep: expected a mapping of param name to a list of values", "sweep")
    axes = []
    for key, values in raw.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", key):
            raise InvalidSpec(f"sweep: {key!r} is not a param name", "sweep")
        if not isinstance(values, list) or not values:
            raise InvalidSpec(f"sweep.{key}: expected a non-empty list of values", "sweep")
        if any(isinstance(v, (dict, list)) for v in values):
            raise InvalidSpec(f"sweep.{key}: values must be numbers or strings", "sweep")
        axes.append((key, values))
    return axes


def size(axes: list[tuple[str, list]], indexes) -> int:
    return math.prod(len(v) for _, v in axes) * (len(indexes) if indexes is not None else 1)


def members(data: dict, max_size: int) -> list[dict] | None:
    """The members of a sweep/array request as [{"index", "values", "array_index"}], None for a
    plain submit; a request over `max_size` is refused here, before anything is written."""
    if not isinstance(data, dict) or ("sweep" not in data and "array" not in data):
        return None
    axes = sweep_axes(data["sweep"]) if data.get("sweep") is not None else []
    indexes = array_indexes(data["array"]) if data.get("array") is not None else None
    if not axes and indexes is None:
        raise InvalidSpec("sweep: give sweep values or an array range", "sweep")
    n = size(axes, indexes)
    if n > max_size:
        raise InvalidSpec(f"sweep of {n} jobs is over the maximum of {max_size} (configuration sweeps.max_size); "
                          "nothing was submitted", "sweep")
    combos = list(itertools.product(*(v for _, v in axes))) if axes else [()]
    out: list[dict] = []
    for combo in combos:
        for a in (indexes if indexes is not None else [None]):
            out.append({"index": len(out), "values": dict(zip((k for k, _ in axes), combo)), "array_index": a})
    return out


def member_spec(raw: dict, member: dict) -> dict:
    """The member's raw spec: the sweep values as params, a name that tells members apart."""
    spec = dict(raw)
    if member["values"]:
        spec["params"] = {**(raw.get("params") or {}), **member["values"]} if isinstance(raw.get("params") or {}, dict) \
            else raw.get("params")
    return spec


def member_name(name: str, index: int) -> str:
    suffix = f"-{index}"
    return name[: 50 - len(suffix)].rstrip("-") + suffix
