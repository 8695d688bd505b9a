"""Recipes: TOML or YAML files naming passes and their settings, plus built-in defaults.

    # recipe.toml                       # recipe.yaml
    [[steps]]                           steps:
    pass = "prune"                        - pass: prune
    mode = "global"                         mode: global
    sparsity = 0.8                          sparsity: 0.8
    [[steps]]                             - pass: cluster
    pass = "cluster"                        bits_fc: 4
    bits_fc = 4

Unknown passes and keys are errors that list the valid ones.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import tomllib
import yaml

from . import registry
from .errors import RecipeError
from .pipeline import Step

BUILTIN: dict[str, list[dict[str, Any]]] = {
    # Deep Compression without retraining: sensitivity-allocated pruning, then k-means sharing
    # (8 bits conv / 5 bits fc); the container adds Huffman coding when the output is .onnxc.
    "deep-compression": [{"pass": "prune"}, {"pass": "cluster"}],
    "prune-only": [{"pass": "prune"}],
    "cluster-only": [{"pass": "cluster"}],
}


def load_recipe(source: str | Path) -> list[Step]:
    """A built-in recipe name, or the path of a .toml/.yaml/.yml recipe file."""
    if str(source) in BUILTIN:
        return steps_from_dicts(BUILTIN[str(source)], where=f"built-in recipe '{source}'")
    path = Path(source)
    if not path.is_file():
        raise RecipeError(f"recipe '{source}': not a built-in recipe ({', '.join(BUILTIN)}) "
                          "and no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") \
            from e
    except OSError as e:
        raise RecipeError(f"recipe {path}: cannot read it: {e.strerror}") from e
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise RecipeError(f"recipe {path}: cannot parse: {e}") from e
    if not isinstance(doc, dict) or set(doc) != {"steps"} or not isinstance(doc["steps"], list):
        raise RecipeError(f"recipe {path}: expected exactly one top-level key 'steps' holding a "
                          f"list of steps, found {sorted(doc) if isinstance(doc, dict) else doc!r}")
    return steps_from_dicts(doc["steps"], where=f"recipe {path}")


def steps_from_dicts(entries: list[dict[str, Any]], where: str) -> list[Step]:
    steps = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "pass" not in entry:
            raise RecipeError(f"{where}, step {i}: each step needs a 'pass' key "
                              f"(one of {', '.join(registry.names())})")
        settings = dict(entry)
        name = settings.pop("pass")
        if name not in registry.names():
            raise RecipeError(f"{where}, step {i}: unknown pass '{name}'; valid passes: "
                              f"{', '.join(registry.names())}")
        steps.append(Step(name, make_config(name, settings, where=f"{where}, step {i} ({name})")))
    return steps


def make_config(name: str, settings: dict[str, Any], where: str = "") -> Any:
    """Build the pass's frozen Config from plain values; str values become the field's enum."""
    cls = registry.get(name).Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise RecipeError(f"{where or name}: unknown key(s) {unknown}; valid keys: "
                          f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints.get(k), f"{where or name}: key '{k}'") for k, v in settings.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where or name}: {e}") from e


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as the field's type: str -> enum member; anything not of the type -> RecipeError
    naming the type expected."""
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, enum.Enum) and isinstance(value, str):
            try:
                return t(value)
            except ValueError:
                raise RecipeError(f"{where}: '{value}' is not one of "
                                  f"{', '.join(m.value for m in t)}") from None
    if hint is not None and not _conforms(value, hint):
        raise RecipeError(f"{where}: expected {_describe(hint)}, got {type(value).__name__} "
                          f"{value!r}")
    return value


def _conforms(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_conforms(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and all(
            isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    return True  # a type this checker does not know: the Config validates it


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "nothing (leave the key out)"
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin in (dict, collections.abc.Mapping):
        return f"a table of names to {_describe(args[1])}"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(m.value for m in hint)
    return {bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}.get(hint, str(hint))
