"""Codecs 6 and 7 (codebook-rans, sparse-rans) in containers: round trips through the writer and
the reader, which codec the writer keeps, the sizes it prices, and the reader's checks."""

from __future__ import annotations

import dataclasses
import itertools
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcompress.container import (
    codecs,
    container_bytes,
    ort_session,
    rans,
    read_container_bytes,
    write_container,
)
from onnxcompress.container.codecs import coded_size
from onnxcompress.container.format import Codec, PayloadError
from onnxcompress.container.huffman import varint
from onnxcompress.container.reader import _parse
from onnxcompress.errors import ContainerError
from tests.robustness.fuzz_harness import join, split

from .models import KINDS, initializer_bits, structured_net
from .test_golden import runs
from .test_limits import _container, _peak
from .test_rans import gaussian_indices

LEVELS = np.linspace(-1, 1, 256).astype(np.float32)


def as_floats(idx: np.ndarray) -> np.ndarray:
    """float32 weights taking the values LEVELS[idx] (index 128 is the middle one)."""
    return LEVELS[idx]


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    skewed = np.full(30_000, 128, np.uint8)
    rare = rng.random(skewed.size) < 0.005
    skewed[rare] = rng.integers(0, 256, int(rare.sum()))
    return {
        "uniform": as_floats(rng.integers(100, 127, 20_000).astype(np.uint8)),
        "skewed": as_floats(skewed),
        "two symbols": as_floats(np.where(rng.random(5000) < 0.3, 3, 200).astype(np.uint8)),
        "one symbol": np.full(4000, 0.25, np.float32),
        "256 symbols": rng.integers(0, 256, 50_000).astype(np.uint8),
        "channel pruned": runs(64, 32, 6, 4, 4),
        "all fill": np.zeros(3000, np.float32),
        "large": as_floats(gaussian_indices(rng, 1_000_000) + 115),
    }


def model_of(array: np.ndarray, name: str = "t") -> onnx.ModelProto:
    return onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], [], [numpy_helper.from_array(array, name)]))


def every_candidate(array: np.ndarray, gap_bits: int | None = None
                    ) -> dict[Codec, codecs._Candidate]:
    """Each index codec's candidate for the array, every one priced."""
    flat = array.reshape(-1)
    elements = flat.view(f"u{flat.itemsize}")
    book, idx = codecs._cnative.codebook_index(elements)
    found = codecs._index_candidates(elements.size, book, idx, gap_bits, price_all=True)
    return {c.codec: c for c in found}


def forced(array: np.ndarray, codec: Codec) -> bytes:
    """A container of the one tensor, stored with `codec` whatever the writer would pick."""
    layout = split(container_bytes(model_of(array)))
    payload = every_candidate(array)[codec].build().payload
    layout.tensors = [(int(codec), 0, payload)]
    return join(layout)


@pytest.mark.parametrize("name", list(tensors()))
def test_round_trips_through_the_writer_and_the_reader(name: str) -> None:
    array = tensors()[name]
    model = model_of(array)
    assert initializer_bits(read_container_bytes(container_bytes(model))) == initializer_bits(model)
    found = every_candidate(array)
    assert Codec.CODEBOOK_RANS in found  # each form is offered with rANS as with Huffman
    assert (Codec.SPARSE_RANS in found) == (Codec.SPARSE in found)
    for codec in (Codec.CODEBOOK_RANS, Codec.SPARSE_RANS):
        if codec in found:
            back = read_container_bytes(forced(array, codec))
            assert initializer_bits(back) == initializer_bits(model), codec


def test_an_empty_tensor_round_trips() -> None:
    model = model_of(np.zeros((3, 0, 4), np.float32))
    assert initializer_bits(read_container_bytes(container_bytes(model))) == initializer_bits(model)


@pytest.mark.parametrize(("name", "codec"), [
    ("uniform", Codec.CODEBOOK_RANS), ("large", Codec.CODEBOOK_RANS),
    ("skewed", Codec.CODEBOOK_RANS), ("channel pruned", Codec.SPARSE_RANS)])
def test_the_writer_keeps_rans_where_it_is_smaller(name: str, codec: Codec) -> None:
    array = tensors()[name]
    found = every_candidate(array)
    huffman_twin = {Codec.CODEBOOK_RANS: Codec.CODEBOOK, Codec.SPARSE_RANS: Codec.SPARSE}[codec]
    assert found[codec].nbytes < found[huffman_twin].nbytes
    enc = codecs.encode(array.tobytes(), array.itemsize)
    assert enc.codec == codec and len(enc.payload) == min(c.nbytes for c in found.values())
    assert enc.n_symbols and enc.coded_bits <= 1.002 * enc.entropy_bits + 64


def first_tie(make, codecs_tied: tuple[Codec, Codec], seeds) -> np.ndarray:
    """The first array from make(rng) on which both codecs tie for the smallest index form."""
    for seed in seeds:
        array = make(np.random.default_rng(seed))
        sizes = {c: x.nbytes for c, x in every_candidate(array).items()}
        if all(c in sizes and sizes[c] == min(sizes.values()) for c in codecs_tied):
            return array
    raise AssertionError("no tie found")


def dense(rng: np.random.Generator) -> np.ndarray:
    n, a = int(rng.integers(20, 400)), int(rng.integers(2, 9))
    return rng.choice(a, n, p=rng.dirichlet(np.ones(a) * 0.7)).astype(np.uint8)


def sparse_runs(rng: np.random.Generator) -> np.ndarray:
    n, a = int(rng.integers(50, 600)), int(rng.integers(2, 6))
    v = rng.integers(1, a + 1, n).astype(np.uint8)
    run = int(rng.integers(4, 40))
    v[~np.repeat(rng.random(n // run + 1) < rng.uniform(0.1, 0.4), run)[:n]] = 0
    return v


@pytest.mark.parametrize(("make", "tied", "seeds"), [
    (dense, (Codec.CODEBOOK, Codec.CODEBOOK_RANS), range(400)),
    (sparse_runs, (Codec.SPARSE, Codec.SPARSE_RANS), itertools.chain([3081], range(3000, 3400))),
])
def test_huffman_wins_ties(make, tied: tuple[Codec, Codec], seeds) -> None:
    array = first_tie(make, tied, seeds)
    book, idx = codecs._cnative.codebook_index(array)
    chosen = min(codecs._index_candidates(array.size, book, idx, None),
                 key=lambda c: (c.nbytes, c.codec))
    assert chosen.codec == tied[0]


def test_a_form_that_cannot_win_is_never_encoded() -> None:
    def never(beat):
        raise AssertionError("priced a candidate that could only tie with a lower codec id")

    found = [codecs._Candidate(Codec.CODEBOOK, 100, lambda: None)]
    pending = [codecs._Pending(Codec.CODEBOOK_RANS, 100, never),
               codecs._Pending(Codec.SPARSE_RANS, 101, never)]
    assert codecs._settle(found, pending) == found


@pytest.mark.parametrize("gap_bits", [None, 5])
@pytest.mark.parametrize("name", ["uniform", "skewed", "two symbols", "channel pruned", "large"])
def test_coded_size_is_the_section_the_writer_writes(name: str, gap_bits: int | None) -> None:
    array = tensors()[name]
    elements = array.view(f"u{array.itemsize}")
    book, idx = codecs._cnative.codebook_index(elements)
    enc = codecs.encode(array.tobytes(), array.itemsize, gap_bits)
    assert enc.codec in (Codec.CODEBOOK, Codec.SPARSE, Codec.CODEBOOK_RANS, Codec.SPARSE_RANS)
    assert coded_size(book, idx, gap_bits) == len(enc.payload)
    for codec, c in every_candidate(array, gap_bits).items():  # each form, Huffman and rANS
        built = c.build()
        assert c.nbytes == len(built.payload), codec
        back = codecs.decode(codec, memoryview(built.payload), array.nbytes, array.itemsize)
        assert back.tobytes() == array.tobytes(), codec


def test_a_whole_model_with_rans_sections_runs(tmp_path: Path) -> None:
    model = structured_net()
    path = tmp_path / "m.onnxc"
    rows = {r.name: r.codec for r in write_container(model, path, tensor_kinds=KINDS).tensors}
    assert rows["fc_w"] == "sparse_rans" and rows["emb_idx"] == "codebook_rans"
    data = path.read_bytes()
    assert {6, 7} <= {int(e.codec) for e in _parse(memoryview(data), str(path)).tensors}
    assert initializer_bits(read_container_bytes(data)) == initializer_bits(model)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(ort_session(path).run(None, {"x": x})[0], want)
    from onnxcompress.runtime import Session

    assert np.array_equal(Session(path, threads=1).run(None, {"x": x})[0], want)


# ----------------------------------------------------------------------------- reader checks

IDX = np.random.default_rng(5).integers(0, 3, 400).astype(np.uint8)
BOOK = np.array([0.5, -1.0, 2.0], np.float32)
HEAD = struct.pack("<BH", 4, 3) + BOOK.tobytes()  # codebook head: 4-byte elements, 3 entries
MODEL = rans.plan(np.bincount(IDX, minlength=256))
PAYLOAD = rans.encode_payload(IDX, MODEL)


def flipped(data: bytes, at: int) -> bytes:
    bad = bytearray(data)
    bad[at] ^= 0x40
    return bytes(bad)


def bad_sum(model: rans.Model) -> rans.Model:
    freqs = model.freqs.copy()
    freqs[0] += 1
    return dataclasses.replace(model, freqs=freqs)


DAMAGED = {
    "honest": (rans.stream(MODEL, PAYLOAD), None),
    "truncated": (rans.stream(MODEL, PAYLOAD[:-1]), "ended early"),
    "trailing byte": (rans.stream(MODEL, PAYLOAD + b"\0"), "bytes left over"),
    # here it breaks the decoding; a stream whose symbols all cost whole bits would decode any
    # bytes (rANS adds no redundancy): the CRC in front is what catches damage
    "flipped": (rans.stream(MODEL, flipped(PAYLOAD, len(PAYLOAD) // 2)),
                "ended early|left over|does not end at 2\\^23"),
    "state": (rans.stream(MODEL, bytes(4) + PAYLOAD[4:]), "does not start within"),
    "sum": (rans.stream(bad_sum(MODEL), PAYLOAD), "rANS frequencies sum to"),
    "precision": (rans.stream(dataclasses.replace(MODEL, precision=16), PAYLOAD),
                  "rANS precision of 16"),
    "too few": (rans.stream(dataclasses.replace(MODEL, n=399), PAYLOAD),
                "399 symbols, the tensor's dims need"),
    "too many": (rans.stream(dataclasses.replace(MODEL, n=401), PAYLOAD),
                 "401 symbols, the tensor's dims leave"),
    "alphabet": (varint(400) + varint(4) + bytes([2, 1, 1, 2, 0]) + varint(4) + PAYLOAD[:4],
                 "alphabet of 4 symbols, at most 3"),
    "unused last": (varint(400) + varint(3) + bytes([2, 1, 3, 0]) + varint(4) + PAYLOAD[:4],
                    "past its last used symbol"),
    "no state": (varint(400) + varint(1) + bytes([1, 2]) + varint(3) + bytes(3),
                 "shorter than its state"),
    "empty with bytes": (varint(0) + varint(0) + varint(1) + b"\0", "empty rANS stream"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_codebook_rans_sections_are_refused(case: str) -> None:
    stream, message = DAMAGED[case]
    section = HEAD + stream
    if message is None:
        back = codecs.decode(Codec.CODEBOOK_RANS, memoryview(section), IDX.size * 4, 4)
        assert np.array_equal(back, BOOK[IDX].view(np.uint32))
        return
    with pytest.raises(PayloadError, match=message):  # the codec on its own
        codecs.decode(Codec.CODEBOOK_RANS, memoryview(section), IDX.size * 4, 4)
    with pytest.raises(ContainerError, match=message) as e:  # behind a valid CRC
        read_container_bytes(_container(6, section, dims=(IDX.size,)))
    assert e.value.section == "tensor 'W'"


def test_a_flipped_byte_behind_the_crc_names_the_tensor() -> None:
    data = _container(6, HEAD + rans.stream(MODEL, PAYLOAD), dims=(IDX.size,))
    with pytest.raises(ContainerError, match="CRC") as e:
        read_container_bytes(flipped(data, len(data) - 3))
    assert e.value.section == "tensor 'W'"


def sparse_section(n: int, gaps: bytes, vals: bytes) -> bytes:
    return struct.pack("<BBQ", 4, 3, n) + bytes(4) + struct.pack("<H", 1) + BOOK[:1].tobytes() \
        + gaps + vals


def test_sparse_rans_counts_are_checked_before_decoding() -> None:
    g = np.array([0, 2, 7, 1], np.uint8)
    v = np.array([0, 0, 1, 0], np.uint8)  # 1 = filler
    gs, vs = rans.encode(g), rans.encode(v)
    n = int(g.sum()) + g.size
    back = read_container_bytes(_container(7, sparse_section(n, gs, vs), dims=(n,)))
    want = np.zeros(n, np.float32)
    want[[0, 3, 13]] = BOOK[0]
    assert numpy_helper.to_array(back.graph.initializer[0]).tobytes() == want.tobytes()
    vm = rans.plan(np.bincount(v, minlength=256))
    cases = [
        (n, sparse_section(n, gs, rans.encode(v[:3])), "4 gaps but 3 values"),
        (n, sparse_section(n + 1, gs, vs), f"sparse payload of {n + 1} elements, the tensor's"),
        (n, sparse_section(n, gs, rans.encode(np.array([0, 0, 2, 0], np.uint8))),
         "rANS alphabet of 3 symbols, at most 2"),
        (3, sparse_section(3, rans.encode(np.zeros(4, np.uint8)), rans.encode(np.zeros(4))),
         "4 symbols, the tensor's dims leave room for 3"),
        (n, sparse_section(n, gs, rans.stream(vm, rans.encode_payload(v, vm) + b"\0")),
         "rANS sparse decode: bytes left over"),
        (n, sparse_section(n, gs, rans.stream(bad_sum(vm), rans.encode_payload(v, vm))),
         "rANS frequencies sum to"),
    ]
    for dims, payload, message in cases:
        with pytest.raises(ContainerError, match=message):
            read_container_bytes(_container(7, payload, dims=(dims,)))


def test_lying_counts_are_refused_before_allocating() -> None:
    mib4 = 1 << 20  # float32 elements: a 4 MiB tensor
    lie = HEAD + varint(1 << 28) + varint(1) + bytes([1, 2]) + varint(4) + (1 << 23).to_bytes(4,
                                                                                          "little")
    data = _container(6, lie, dims=(mib4,))
    with pytest.raises(ContainerError, match="rANS stream of 268435456 symbols, the tensor's dims"):
        read_container_bytes(data)
    assert _peak(lambda: pytest.raises(ContainerError, read_container_bytes, data)) < 2 << 20
    honest = HEAD + varint(mib4) + varint(1) + bytes([1, 2]) + varint(4) + (1 << 23).to_bytes(
        4, "little")
    back = read_container_bytes(_container(6, honest, dims=(mib4,)))
    assert len(back.graph.initializer[0].raw_data) == 4 * mib4
