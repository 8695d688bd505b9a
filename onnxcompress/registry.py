"""The passes there are: every module of `onnxcompress.passes` that keeps the `Pass` protocol.

Adding a pass is adding `passes/NAME.py` (and its tests): the pipeline, recipe validation, the
report's stage names, budget handling and the known-op list all come from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from . import passes
from .errors import RecipeError
from .passes.base import Pass


@cache
def all_passes() -> dict[str, Pass]:
    """Pass name -> module, in module-name order."""
    found: dict[str, Pass] = {}
    for info in sorted(pkgutil.iter_modules(passes.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{passes.__name__}.{info.name}")
        if isinstance(module, Pass):
            if module.NAME in found:
                raise RuntimeError(f"two passes are named '{module.NAME}'")
            found[module.NAME] = module
    return found


def names() -> list[str]:
    return list(all_passes())


def get(name: str) -> Pass:
    """The pass called `name`; RecipeError listing the valid names otherwise."""
    table = all_passes()
    if name not in table:
        raise RecipeError(f"unknown pass '{name}'; valid passes: {', '.join(table)}")
    return table[name]


def known_ops() -> frozenset[str]:
    """Op types some pass emits (beyond graph.SAFE_OPS): not 'unknown' in reports."""
    return frozenset().union(*(p.EMITS_OPS for p in all_passes().values()))
