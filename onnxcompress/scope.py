"""Which layers a step touches: names, fnmatch patterns, `'*'`, exclusions, per-layer tables.

One selector for every pass. A layer answers to its node name and its weight's name. An entry
that matches no layer is an error listing the layers there are, so a typo in a recipe or on the
command line is caught instead of silently selecting nothing.

Per-layer tables (Distiller's convention): for each layer, an exact name wins, then the first
pattern in the table's order, then `'*'`; a layer matched by none has no entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BadInputError
from .graph import Weight

T = TypeVar("T")
ALL = "*"


def weight_names(w: Weight) -> tuple[str, ...]:
    return (w.layer, w.tensor.name)


def weight_key(w: Weight) -> str:
    # weights are keyed by their tensor name (unique even when two nodes share a layer name)
    return w.tensor.name


def _hits(names: Iterable[str], pattern: str) -> bool:
    return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names)


def _no_match(entry: str, items: Sequence[T], names: Callable[[T], tuple[str, ...]],
              what: str) -> BadInputError:
    valid = ", ".join(names(x)[0] for x in items) or "(none)"
    return BadInputError(f"{what} '{entry}' matches no layer; layers are: {valid}")


@dataclass(frozen=True)
class Scope:
    """Layers matching any `include` entry and no `exclude` entry."""

    include: tuple[str, ...] = (ALL,)
    exclude: tuple[str, ...] = ()

    def select(self, items: Sequence[T], names: Callable[[T], tuple[str, ...]] = weight_names,
               what: str = "layer pattern") -> list[T]:
        items = list(items)
        for entry in (*self.include, *self.exclude):
            if entry != ALL and not any(_hits(names(x), entry) for x in items):
                raise _no_match(entry, items, names, what)
        return [x for x in items
                if any(_hits(names(x), p) for p in self.include)
                and not any(_hits(names(x), p) for p in self.exclude)]


@dataclass(frozen=True)
class Entry:
    """A layer's value in a per-layer table and whether a key other than '*' gave it."""

    value: Any
    explicit: bool


def resolve_table(items: Sequence[T], table: Mapping[str, Any] | None,
                  names: Callable[[T], tuple[str, ...]] = weight_names,
                  key: Callable[[T], str] = weight_key,
                  what: str = "per_layer") -> dict[str, Entry]:
    """key(item) -> its Entry for every matched item (see the module docstring)."""
    table = dict(table or {})
    for entry in table:
        if entry != ALL and not any(_hits(names(x), entry) for x in items):
            raise _no_match(entry, items, names, what)
    out = {}
    for x in items:
        ns = names(x)
        exact = [k for k in table if k in ns]
        pattern = [k for k in table if k != ALL and _hits(ns, k)]
        chosen = (exact or pattern or ([ALL] if ALL in table else [None]))[0]
        if chosen is not None:
            out[key(x)] = Entry(table[chosen], chosen != ALL)
    return out
