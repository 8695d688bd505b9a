"""The reader's limits: every count a section states is checked against the tensor's declared
dims before anything is allocated, every decompression stops at the declared size, the graph's
inflation is bounded by its section's length, and no tensor may point to external data.

Sections here carry valid CRCs (tests/robustness/fuzz_harness.join): only these checks stand
between them and the allocation.
"""

from __future__ import annotations

import lzma
import struct
import tracemalloc
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.container import (
    _cnative,
    codecs,
    container_bytes,
    read_container_bytes,
    reference,
    write_container,
)
from onnxcompress.container import format as fmt
from onnxcompress.container.huffman import varint
from onnxcompress.errors import ContainerError
from tests.robustness.bombs import bombs
from tests.robustness.fuzz_harness import Layout, join, split

MIB = 1 << 20
ONE_SYMBOL = varint(1) + bytes([0x10]) + varint(0)  # alphabet 1, code length 1, no payload


def _graph(dims, data_type=TensorProto.FLOAT) -> bytes:
    w = TensorProto(name="W", data_type=data_type, dims=dims)
    g = helper.make_graph([helper.make_node("Identity", ["W"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", data_type, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _container(codec: int, payload: bytes, dims=(4,), data_type=TensorProto.FLOAT) -> bytes:
    return join(Layout(0, _graph(list(dims), data_type), [(codec, 0, payload)]))


def _peak(fn) -> int:
    """Peak bytes Python and numpy allocate while fn runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("codebook-2^28", "Huffman stream of 268435456 symbols, the tensor's dims leave room for"),
        ("codebook-2^32", "Huffman stream of 4294967296 symbols"),
        ("sparse-2^40", "sparse payload of 1099511627776 elements, the tensor's dims declare"),
        ("zlib-4x", "zlib data inflates past the 4194304 bytes declared"),
        ("lzma-4x", "lzma data inflates past the 4194304 bytes declared"),
    ],
)
def test_lying_sections_are_refused_within_the_declared_size(name: str, message: str):
    data = bombs(4 * MIB, {name})[name]
    with pytest.raises(ContainerError, match=message) as e:
        read_container_bytes(data)
    assert e.value.section == "tensor 'W'"
    peak = _peak(lambda: pytest.raises(ContainerError, read_container_bytes, data))
    # never more than the tensor plus a chunk (and LZMA's own dictionary: 8 MiB at preset 6,
    # allocated at once but touched only as far as the output goes)
    assert peak < 4 * MIB + 2 * MIB + (8 * MIB if name.startswith("lzma") else 0), peak


@pytest.mark.parametrize("name", ["zlib-honest", "codebook-honest", "sparse-honest",
                                  "bitgroups-honest"])
def test_honest_small_sections_decode_at_about_the_tensors_size(name: str):
    """Tiny sections that legitimately expand (one repeated value) cost the tensor, not more."""
    data = bombs(4 * MIB, {name})[name]
    model = read_container_bytes(data)
    assert len(model.graph.initializer[0].raw_data) == 4 * MIB
    del model
    # the decoded array, then its bytes for the proto: 2x the tensor at the peak, plus indices
    assert _peak(lambda: read_container_bytes(data)) < 2.3 * 4 * MIB


def test_counts_that_disagree_with_the_dims_are_refused_before_decoding():
    cases = [
        (0, struct.pack("<Q", 17) + bytes(17), "raw payload of 17 bytes, the tensor's dims declare 16"),
        (3, struct.pack("<BH", 2, 1) + bytes(2) + varint(8) + ONE_SYMBOL,
         "elements of 2 bytes, the tensor's type has 4-byte ones"),
        (3, struct.pack("<BH", 4, 1) + bytes(4) + varint(3) + ONE_SYMBOL,
         "Huffman stream of 3 symbols, the tensor's dims need 4"),
        (4, struct.pack("<BBQ", 4, 8, 5) + bytes(4) + struct.pack("<H", 0) + bytes(6),
         "sparse payload of 5 elements, the tensor's dims declare 4"),
        (4, struct.pack("<BBQ", 4, 8, 4) + bytes(4) + struct.pack("<H", 1) + bytes(4)
         + varint(5) + ONE_SYMBOL + varint(5) + ONE_SYMBOL, "5 symbols, the tensor's dims leave"),
        (5, struct.pack("<IIQ", 0, 64, 4), "bitgroups of 4 x 64 bits, the tensor's dims declare 16"),
        (3, struct.pack("<BH", 4, 2) + bytes(8) + varint(4) + varint(2) + bytes([0x11]) + varint(0),
         "Huffman stream of 4 symbols in only 0 bytes"),
    ]
    for codec, payload, message in cases:
        with pytest.raises(ContainerError, match=message):
            read_container_bytes(_container(codec, payload))


def test_dims_beyond_this_machines_memory_or_negative_are_refused():
    huge = _container(3, struct.pack("<BH", 4, 1) + bytes(4) + varint(1) + ONE_SYMBOL,
                      dims=(2**32, 2**32))
    with pytest.raises(ContainerError, match="more than this machine's"):
        read_container_bytes(huge)
    with pytest.raises(ContainerError, match="negative dims"):
        read_container_bytes(_container(0, struct.pack("<Q", 0), dims=(-1, 4)))
    with pytest.raises(ContainerError, match="type STRING has no data section"):
        read_container_bytes(_container(0, struct.pack("<Q", 0), dims=(0,),
                                        data_type=TensorProto.STRING))


def test_streams_must_end_exactly():
    payload = zlib.compress(bytes(16))
    with pytest.raises(ContainerError, match="zlib data ends early"):
        read_container_bytes(_container(1, struct.pack("<Q", 16) + payload[:-3]))
    with pytest.raises(ContainerError, match="2 bytes after the end of the zlib stream"):
        read_container_bytes(_container(1, struct.pack("<Q", 16) + payload + b"xx"))
    two = lzma.compress(bytes(8), format=lzma.FORMAT_ALONE) * 2  # lzma.decompress took both
    with pytest.raises(ContainerError, match="after the end of the lzma stream"):
        read_container_bytes(_container(2, struct.pack("<Q", 16) + two))


def test_the_graph_inflates_no_more_than_its_section_allows(monkeypatch):
    monkeypatch.setattr(fmt, "GRAPH_MIN_LIMIT", 1 * MIB)
    graph = lzma.compress(bytes(8 * MIB), format=lzma.FORMAT_ALONE)
    limit = fmt.graph_limit(len(graph))
    assert limit < 8 * MIB
    data = join(Layout(2, graph, []))
    with pytest.raises(ContainerError, match=f"lzma data inflates past the {limit} bytes"):
        read_container_bytes(data)
    peak = _peak(lambda: pytest.raises(ContainerError, read_container_bytes, data))
    assert peak < limit + 2 * MIB + 8 * MIB  # and LZMA's 8 MiB dictionary (preset 6)
    dict_4gib = bytearray(graph)
    dict_4gib[1:5] = struct.pack("<I", 0xFFFFFFFF)  # a stream that asks for a 4 GiB dictionary
    with pytest.raises(ContainerError, match="Memory usage limit"):
        read_container_bytes(join(Layout(2, bytes(dict_4gib), [])))


def test_the_writer_keeps_every_graph_readable(monkeypatch):
    """A graph LZMA compresses beyond GRAPH_MAX_RATIO goes to zlib, which never exceeds it."""
    monkeypatch.setattr(fmt, "GRAPH_MIN_LIMIT", 0)
    big = helper.make_tensor("s", TensorProto.FLOAT, [1 << 20], np.zeros(1 << 20, np.float32))
    node = helper.make_node("Constant", [], ["y"], value=big)  # stays in the graph
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = container_bytes(model)
    layout = split(data)
    assert layout.graph_codec == fmt.Codec.ZLIB
    assert len(zlib.decompress(layout.graph)) <= fmt.graph_limit(len(layout.graph))
    assert read_container_bytes(data).graph.node[0].attribute[0].t.dims == [1 << 20]


def _with_external(model: onnx.ModelProto, tensor: TensorProto) -> None:
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/weights.bin"


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_external_data_is_refused_naming_the_tensor(tmp_path, where: str):
    """A container holds all of its data: `run` must not read, nor `unpack` point to, a file the
    container's author chose."""
    w = numpy_helper.from_array(np.ones(4, np.float32), "W")
    c = numpy_helper.from_array(np.ones(4, np.float32), "C")
    const = helper.make_node("Constant", [], ["c"], value=c)
    body = helper.make_graph([helper.make_node("Constant", [], ["o"], value=c)], "body", [],
                             [helper.make_tensor_value_info("o", 1, None)])
    cond = helper.make_node("If", ["b"], ["z"], then_branch=body, else_branch=body)
    g = helper.make_graph([const, cond, helper.make_node("Add", ["W", "c"], ["y"])], "g",
                          [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", 1, None),
                           helper.make_tensor_value_info("z", 1, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnxc"
    write_container(model, path)
    layout = split(path.read_bytes())
    graph = onnx.ModelProto()
    graph.ParseFromString({0: bytes, 1: zlib.decompress,
                           2: lambda b: lzma.decompress(b, format=lzma.FORMAT_ALONE)}[
        layout.graph_codec](layout.graph))
    target = {"initializer": graph.graph.initializer[0],
              "constant": graph.graph.node[0].attribute[0].t,
              "subgraph": graph.graph.node[1].attribute[0].g.node[0].attribute[0].t}[where]
    _with_external(graph, target)
    layout.graph_codec, layout.graph = 0, graph.SerializeToString()
    path.write_bytes(join(layout))
    with pytest.raises(ContainerError, match=f"tensor '{target.name}': declares external data"):
        read_container_bytes(path.read_bytes())
    from onnxcompress.runtime import Session

    with pytest.raises(ContainerError, match=f"^{path}: tensor '{target.name}'"):
        Session(path)


@pytest.mark.parametrize("e", [1, 2, 4, 8])
def test_fused_sparse_decoder_matches_the_reference(e: int):
    from onnxcompress.container import huffman

    rng = np.random.default_rng(e)
    n, k = 5000, 7
    book = rng.integers(1, 2**(8 * e) - 1, size=k, dtype=np.uint64).astype(f"<u{e}")
    gaps = rng.integers(0, 6, size=700).astype(np.uint8)
    vals = rng.integers(0, k + 1, size=700).astype(np.uint8)  # k = filler
    pg, pv = huffman.plan(huffman.histogram(gaps)), huffman.plan(huffman.histogram(vals))
    out = np.zeros(n, dtype=book.dtype)
    _cnative.sparse_decode(pg.lengths, _cnative.huff_encode(pg.lengths, gaps, (pg.bits + 7) // 8),
                           pv.lengths, _cnative.huff_encode(pv.lengths, vals, (pv.bits + 7) // 8),
                           gaps.size, k, book, out)
    np.testing.assert_array_equal(out, reference.sparse_expand(gaps, vals, k, book, 0, n))
    short = np.zeros(int(gaps.sum()) + gaps.size - 1, dtype=book.dtype)  # last entry past the end
    with pytest.raises(_cnative.NativeError, match="position past the tensor"):
        _cnative.sparse_decode(pg.lengths, _cnative.huff_encode(pg.lengths, gaps,
                                                                 (pg.bits + 7) // 8),
                               pv.lengths, _cnative.huff_encode(pv.lengths, vals,
                                                                (pv.bits + 7) // 8),
                               gaps.size, k, book, short)


@pytest.mark.parametrize(("group_bits", "keep", "groups"), [(64, 3, 40), (13, 13, 8), (9, 0, 8),
                                                          (128, 70, 3), (5, 2, 16)])
def test_bitgroups_expand_matches_numpy(group_bits: int, keep: int, groups: int):
    rng = np.random.default_rng(group_bits)
    bits = np.zeros((groups, group_bits), np.uint8)
    bits[:, :keep] = rng.integers(0, 2, size=(groups, keep))
    want = np.packbits(bits.reshape(-1), bitorder="little")
    kept = np.packbits(bits[:, :keep].reshape(-1), bitorder="little")
    payload = struct.pack("<IIQ", keep, group_bits, groups) + kept.tobytes()
    got = codecs.decode(fmt.Codec.BITGROUPS, memoryview(payload), want.size)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(_cnative.NativeError, match="do not match the bit groups"):
        _cnative.bitgroups_expand(kept, keep, group_bits, groups, np.zeros(want.size + 1, np.uint8))
