"""Damaged files raise ContainerError naming the damaged section and the file."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from onnxcompress.container import container_bytes, read_container, read_container_bytes
from onnxcompress.container.format import HEADER, crc32
from onnxcompress.container.reader import _parse
from onnxcompress.errors import ContainerError

from .models import KINDS, net


@pytest.fixture(scope="module")
def data() -> bytes:
    return container_bytes(net(), tensor_kinds=KINDS)


def sections(data: bytes) -> list[tuple[str, int, int]]:
    """(name, start, end) of every part of the file, header and table included."""
    p = _parse(memoryview(data), "<test>")
    names = [t.name for t in read_container_bytes(data).graph.initializer]
    out = [
        ("header", 0, HEADER.size),
        ("section table", HEADER.size, p.graph.offset),
        ("graph", p.graph.offset, p.graph.offset + p.graph.length),
    ]
    out += [
        (f"tensor '{names[e.index]}'", e.offset, e.offset + e.length) for e in p.tensors if e.length
    ]
    return out


def read_damaged(tmp_path: Path, data: bytes) -> ContainerError:
    path = tmp_path / "bad.onnxc"
    path.write_bytes(data)
    with pytest.raises(ContainerError) as e:
        read_container(path)
    assert str(path) in str(e.value)
    return e.value


def test_every_section_is_covered(data: bytes) -> None:
    parts = sections(data)
    assert len(parts) == 3 + 15
    assert parts[-1][2] == len(data)


def test_flipped_byte_names_its_section(tmp_path: Path, data: bytes) -> None:
    for name, start, end in sections(data):
        for at in {start, (start + end) // 2, end - 1}:
            bad = bytearray(data)
            bad[at] ^= 0x10
            err = read_damaged(tmp_path, bytes(bad))
            assert err.section == name, (name, at, str(err))
            assert "CRC" in str(err) or "magic" in str(err)


def test_truncation_names_the_cut_section(tmp_path: Path, data: bytes) -> None:
    for name, start, end in sections(data):
        for cut in {start + 1, (start + end) // 2, end - 1}:
            err = read_damaged(tmp_path, data[:cut])
            assert err.section == name, (name, cut, str(err))
    assert read_damaged(tmp_path, b"").section == "header"


def test_wrong_magic(tmp_path: Path) -> None:
    err = read_damaged(tmp_path, net().SerializeToString())
    assert err.section == "header" and "magic" in str(err)


def test_unknown_version(tmp_path: Path, data: bytes) -> None:
    head = bytearray(data[: HEADER.size])
    struct.pack_into("<H", head, 8, 2)
    struct.pack_into("<I", head, HEADER.size - 4, crc32(bytes(head[:-4])))
    err = read_damaged(tmp_path, bytes(head) + data[HEADER.size :])
    assert err.section == "header" and "version 2" in str(err)


def test_trailing_bytes(data: bytes) -> None:
    with pytest.raises(ContainerError, match="after the last section"):
        read_container_bytes(data + b"\0")


def test_missing_file_is_a_container_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="cannot read"):
        read_container(tmp_path / "nope.onnxc")
