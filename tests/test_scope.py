"""The one layer selector: names, patterns, '*', exclusions, per-layer tables."""

from __future__ import annotations

import pytest

from onnxcompress.errors import BadInputError
from onnxcompress.graph import iter_weights
from onnxcompress.scope import Scope, resolve_table
from tests.passes import small_nets as S


def weights():
    return iter_weights(S.graph())  # layers Conv_0 Conv_3 Gemm_6 MatMul_8


def test_select_by_name_pattern_and_exclusion() -> None:
    w = weights()
    pick = lambda scope: [x.layer for x in scope.select(w)]
    assert pick(Scope()) == list(S.LAYERS)
    assert pick(Scope(include=("Conv_*",))) == ["Conv_0", "Conv_3"]
    assert pick(Scope(include=("fc1_w",))) == ["Gemm_6"]  # a weight's name works too
    assert pick(Scope(exclude=("Conv_*", "fc2_w"))) == ["Gemm_6"]


def test_an_entry_matching_nothing_lists_the_layers() -> None:
    with pytest.raises(BadInputError, match="'Gem_6' matches no layer; layers are: Conv_0, "
                                            "Conv_3, Gemm_6, MatMul_8"):
        Scope(exclude=("Gem_6",)).select(weights())


def test_tables_prefer_exact_then_first_pattern_then_star() -> None:
    w = weights()
    table = {"*": 0.1, "Conv_*": 0.5, "Conv_3": 0.9, "C*": 0.7}
    got = resolve_table(w, table)
    assert {k: (e.value, e.explicit) for k, e in got.items()} == {
        "conv1_w": (0.5, True), "conv2_w": (0.9, True), "fc1_w": (0.1, False),
        "fc2_w": (0.1, False)}
    assert resolve_table(w, {"Gemm_6": 2}).keys() == {"fc1_w"}  # no '*': others absent
    with pytest.raises(BadInputError, match="per_layer 'nope' matches no layer"):
        resolve_table(w, {"nope": 1})
