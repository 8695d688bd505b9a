"""write_container -> read_container gives back every initializer bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcompress.container import (
    codecs,
    container_bytes,
    is_container,
    load_for_ort,
    ort_session,
    read_container,
    read_container_bytes,
    write_container,
)
from onnxcompress.container.reader import _parse
from onnxcompress.errors import BadInputError

from .models import KINDS, initializer_bits, net, structured_net, weights


def assert_same_initializers(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    for x, y in zip(a.graph.initializer, b.graph.initializer):
        u, v = numpy_helper.to_array(x), numpy_helper.to_array(y)
        assert u.dtype == v.dtype and u.shape == v.shape, x.name
        if u.dtype.itemsize in (1, 2, 4, 8) and u.dtype != np.bool_:
            unsigned = f"u{u.dtype.itemsize}"
            assert np.array_equal(u.view(unsigned), v.view(unsigned)), x.name
        assert u.tobytes() == v.tobytes(), x.name


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    model = net()
    path = tmp_path / "m.onnxc"
    report = write_container(model, path, tensor_kinds=KINDS)
    assert is_container(path) and path.stat().st_size == report.total_bytes
    back = read_container(path)
    assert_same_initializers(model, back)
    stripped = [onnx.ModelProto.FromString(m.SerializeToString()) for m in (model, back)]
    for m in stripped:
        for t in m.graph.initializer:
            t.ClearField("raw_data")
    assert stripped[0] == stripped[1]  # graph, names, dims, metadata untouched
    assert initializer_bits(read_container_bytes(path.read_bytes())) == initializer_bits(model)


def test_codec_choice_and_report(tmp_path: Path) -> None:
    report = write_container(net(), tmp_path / "m.onnxc", tensor_kinds=KINDS)
    rows = {r.name: r for r in report.tensors}
    # pruned at random positions, these are as cheap dense as sparse: the dense rANS stream
    # reaches their order-0 entropy, which Huffman's whole bits (sparse or not) cannot
    assert rows["conv_w"].codec == rows["fc_w"].codec == rows["emb_idx"].codec == "codebook_rans"
    assert rows["bits"].codec == "codebook"
    assert rows["empty"].codec == "stored"
    w = weights()
    for name, row in rows.items():
        assert row.original_bytes == w[name].nbytes
    fc = rows["fc_w"]
    assert fc.stored_bytes < fc.original_bytes / 10
    assert fc.n_symbols > 0 and fc.bits_per_symbol * fc.n_symbols <= 1.005 * fc.entropy_bits
    assert report.total_bytes == sum(
        r.stored_bytes for r in report.tensors
    ) + report.graph_bytes + 24 + 32 * (1 + len(rows))
    assert report.ratio > 5


def sparse_gap_bits(data: bytes, name: str) -> int:
    p = _parse(memoryview(data), "<test>")
    model = read_container_bytes(data)
    entry = next(e for e in p.tensors if model.graph.initializer[e.index].name == name)
    assert entry.codec in (codecs.Codec.SPARSE, codecs.Codec.SPARSE_RANS)  # the same head
    return data[entry.offset + 1]


def test_gap_bits_follow_tensor_kinds_and_are_chosen_otherwise() -> None:
    model = structured_net()  # pruned a channel at a time: the sparse forms win
    pinned = container_bytes(model, tensor_kinds=KINDS)
    assert sparse_gap_bits(pinned, "conv_w") == 8
    assert sparse_gap_bits(pinned, "fc_w") == 5
    chosen = container_bytes(model)  # nothing pinned: each section at its smallest width
    assert len(chosen) < len(pinned)
    assert initializer_bits(read_container_bytes(chosen)) == initializer_bits(model)


@pytest.mark.parametrize("keep", [0.02, 0.1, 0.25])
def test_the_chosen_gap_width_gives_the_smallest_section(keep: float) -> None:
    rng = np.random.default_rng(int(keep * 100))
    w = np.where(rng.random(20000) < keep, rng.integers(1, 9, 20000), 0).astype(np.float32)
    w[3000:3700] = 0.0  # a run longer than any width: fillers
    raw = w.tobytes()
    pinned = {b: codecs.encode(raw, 4, b) for b in codecs.GAP_WIDTHS}
    chosen = codecs.encode(raw, 4)
    assert len(chosen.payload) == min(len(e.payload) for e in pinned.values())
    for enc in [chosen, *pinned.values()]:
        back = codecs.decode(enc.codec, memoryview(enc.payload), len(raw), 4)
        assert back.tobytes() == raw
    # each sparse form on its own, every candidate priced: its free width is its best one
    book, idx = codecs._cnative.codebook_index(w.view(np.uint32))

    def sizes(gap_bits):
        found = codecs._index_candidates(w.size, book, idx, gap_bits, price_all=True)
        return {c.codec: c.nbytes for c in found}

    free, each = sizes(None), [sizes(b) for b in codecs.GAP_WIDTHS]
    for form in (codecs.Codec.SPARSE, codecs.Codec.SPARSE_RANS):
        assert free[form] == min(s[form] for s in each)


def test_fillers_bridge_long_zero_runs() -> None:
    w = weights()["fc_w"].reshape(-1)
    book, idx = codecs._cnative.codebook_index(w.view(np.uint32))
    fill = int(np.argmax(np.bincount(idx)))
    gaps, vals, nz_book = codecs.sparse_entries(idx, book, fill, gap_bits=5)
    fillers = vals == nz_book.size
    assert fillers.sum() >= 400 // 32 and (gaps[fillers] == 31).all() and gaps.max() == 31
    from onnxcompress.container import reference

    dense = reference.sparse_expand(gaps, vals, nz_book.size, nz_book, book[fill], w.size)
    assert np.array_equal(dense, w.view(np.uint32))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(5000, np.float32),  # one value: codebook with a bit-free stream
        np.full(300, -0.0, np.float32),
        np.array([np.nan, -np.nan, 0.0, -0.0, np.inf] * 100, np.float32),
        np.arange(100_000, dtype=np.int64) % 7,
        np.zeros((3, 0, 4), np.int64),
        np.array(7, np.int64),
        np.random.default_rng(1).normal(size=(64, 64)).astype(np.float64),
        np.random.default_rng(2).integers(0, 256, size=10_000).astype(np.uint8),
        np.where(np.random.default_rng(3).random(20_000) < 0.95, 0, 1.5).astype(np.float16),
    ],
)
def test_single_tensor_round_trip(array: np.ndarray) -> None:
    model = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], [], [numpy_helper.from_array(array, "t")])
    )
    back = read_container_bytes(container_bytes(model))
    assert_same_initializers(model, back)


def test_typed_field_tensors_come_back_as_raw_data() -> None:
    t = onnx.helper.make_tensor("t", onnx.TensorProto.FLOAT, [3], [1.0, -0.0, 2.5])
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))
    back = read_container_bytes(container_bytes(model))
    assert_same_initializers(model, back)


def test_string_tensors_stay_in_the_graph() -> None:
    t = onnx.helper.make_tensor("s", onnx.TensorProto.STRING, [2], [b"a", b"bc"])
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))
    back = read_container_bytes(container_bytes(model))
    assert list(back.graph.initializer[0].string_data) == [b"a", b"bc"]


def test_bad_tensor_kinds_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="expected one of"):
        write_container(net(), tmp_path / "m.onnxc", tensor_kinds={"fc_w": "dense"})
    with pytest.raises(BadInputError, match="no initializer"):
        write_container(net(), tmp_path / "m.onnxc", tensor_kinds={"fc_W": "fc"})
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.onnxc"
    path.write_bytes(b"old")

    def boom(fd):  # fail half way through writing
        raise OSError(28, "No space left on device")

    from onnxcompress import files

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(BadInputError, match="no space left"):
        write_container(net(), path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["m.onnxc"]


def test_ort_fast_path_matches_the_original(tmp_path: Path) -> None:
    model = net()
    path = tmp_path / "m.onnxc"
    write_container(model, path, tensor_kinds=KINDS)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})[0]
    model_bytes, arrays = load_for_ort(path)
    assert {"fc_w", "conv_w"} <= set(arrays) and "fc_b" not in arrays
    assert len(model_bytes) < net().ByteSize() // 20  # the big weights are not in it
    assert np.array_equal(ort_session(path).run(None, {"x": x})[0], want)
    via_proto = ort.InferenceSession(
        read_container(path).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    assert np.array_equal(via_proto.run(None, {"x": x})[0], want)


def test_is_container_is_false_for_other_files(tmp_path: Path) -> None:
    onnx.save(net(), str(tmp_path / "m.onnx"))
    assert not is_container(tmp_path / "m.onnx")
    assert not is_container(tmp_path / "missing")


def test_data_that_does_not_match_its_dims_is_refused(tmp_path: Path) -> None:
    t = numpy_helper.from_array(np.zeros(6, np.float32), "t")
    t.dims[:] = [7]
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))
    with pytest.raises(BadInputError, match="dims \\[7\\] of FLOAT need 28"):
        write_container(model, tmp_path / "m.onnxc")
    assert not any(tmp_path.iterdir())


def test_external_data_must_be_loaded(tmp_path: Path) -> None:
    t = numpy_helper.from_array(np.zeros(600, np.float32), "t")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0)
    lazy = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    with pytest.raises(BadInputError, match="external data"):
        container_bytes(lazy)


def test_fast_path_session_outlives_its_locals(tmp_path: Path) -> None:
    import gc

    model = net()
    path = tmp_path / "m.onnxc"
    write_container(model, path, tensor_kinds=KINDS)
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    sess = ort_session(path)
    gc.collect()
    np.zeros(2_000_000, np.float32).fill(7)  # reuse freed memory, if any was freed
    assert np.array_equal(sess.run(None, {"x": x})[0], want)


@pytest.mark.parametrize("group_bits, keep", [(64, 32), (128, 65), (64, 1), (192, 130)])
def test_bitgroups_codec_is_exact_and_stores_only_the_live_bits(group_bits: int, keep: int):
    from onnxcompress.container import codecs
    from onnxcompress.container.format import Codec

    rng = np.random.default_rng(keep)
    bits = np.zeros((90, group_bits), np.uint8)
    bits[:, :keep] = rng.integers(0, 2, size=(90, keep))
    bits[0, keep - 1] = 1  # the highest live bit is set somewhere
    data = np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    enc = codecs.encode(data, 1, group_bits=group_bits)
    assert enc.codec == Codec.BITGROUPS
    assert len(enc.payload) == codecs.BITGROUPS_HEAD.size + (90 * keep + 7) // 8
    assert codecs.decode(enc.codec, memoryview(enc.payload), len(data)).tobytes() == data


def test_bitgroups_codec_is_not_offered_when_every_bit_is_live():
    from onnxcompress.container import codecs
    from onnxcompress.container.format import Codec

    data = np.full(64, 0xFF, np.uint8).tobytes()
    assert codecs.encode(data, 1, group_bits=64).codec != Codec.BITGROUPS
    assert codecs.encode(data[:-1], 1, group_bits=64).codec != Codec.BITGROUPS  # not whole groups


def test_bitgroups_payload_errors_are_specific():
    import struct

    from onnxcompress.container import codecs
    from onnxcompress.container.format import Codec, PayloadError

    bad = struct.pack("<IIQ", 65, 64, 2) + bytes(17)
    with pytest.raises(PayloadError, match="keeping 65: invalid"):
        codecs.decode(Codec.BITGROUPS, memoryview(bad), 16)
    short = struct.pack("<IIQ", 32, 64, 4) + bytes(15)
    with pytest.raises(PayloadError, match="needs 16 bytes"):
        codecs.decode(Codec.BITGROUPS, memoryview(short), 32)
    with pytest.raises(PayloadError, match="the tensor's dims declare 8 bytes"):
        codecs.decode(Codec.BITGROUPS, memoryview(short[:16] + bytes(16)), 8)


def test_container_from_arrays_equals_container_from_the_full_proto(tmp_path: Path) -> None:
    """compress writes from a weights-free proto plus the graph's arrays (no second copy of the
    weights); the bytes must be those written from the full model."""
    from onnxcompress.container import container_bytes
    from onnxcompress.graph import exported_size, to_graph, to_light_model, to_model

    model = net()
    graph = to_graph(model)
    full = to_model(graph, like=model)
    light, arrays = to_light_model(graph, like=model)
    assert arrays and light.ByteSize() < full.ByteSize() // 4
    assert exported_size(graph, like=model) == full.ByteSize()
    assert container_bytes(light, arrays=arrays) == container_bytes(full)
    with pytest.raises(BadInputError, match="held in memory, but no array was given"):
        container_bytes(light)
