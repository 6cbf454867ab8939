"""The values of the fields that shape a distributed run, for the walk in test_field_walk.py.

Every ``train.*`` and ``method.*`` field is walked: each of a discrete field's values (choices, bools),
and for a numeric field the ends of its declared range (a closed end itself; an open end itself, which
must be refused, and a value just inside it), plus null where null is allowed. The values come from
the declarations in soft_dist/config.py, so a new field is walked without touching this file."""

from __future__ import annotations

import types
import typing
from typing import Any, Iterator

from soft_dist.config import Config, _leaf_fields, field_declaration

SECTIONS = ("train.", "method.")
_INSIDE = {int: 1, float: 1e-3}  # how far inside an open range end the "just inside" value lies


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type of ``hint``, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _range_values(kind: type, bounds: tuple) -> Iterator[Any]:
    lo, hi, lo_open, hi_open = bounds
    if lo is not None:
        yield kind(lo)
        if lo_open:
            yield kind(lo) + _INSIDE[kind]
    if hi is not None:
        yield kind(hi)
        if hi_open:
            yield kind(hi) - _INSIDE[kind]


def walked_values() -> list[tuple[str, Any]]:
    """[(dotted key, value)] for every value the walk tries, in declaration order."""
    cases: list[tuple[str, Any]] = []
    for dotted, f, default in _leaf_fields(Config()):
        if not dotted.startswith(SECTIONS):
            continue
        kind, nullable = _base_type(field_declaration(dotted)[1])
        meta = f.metadata
        if "choices" in meta:
            values = list(meta["choices"])
        elif kind is bool:
            values = [True, False]
        elif "range" in meta and kind in _INSIDE:
            values = list(_range_values(kind, meta["range"]))
        else:
            values = []  # free values (a seed): any value shapes the run alike
        if nullable:
            values.append(None)
        seen: list = []
        cases += [(dotted, v) for v in values if not (v in seen or seen.append(v))]
    return cases
