"""Byte layout of the onnxcompress container (.onnxc); docs/FORMAT.md documents every byte.

A file is a 24-byte header, a section table (32 bytes per section) and the sections, back to
back, all little-endian. Section 0 holds the ONNX graph whose big initializers were stripped of
their data; every other section holds one initializer, encoded by one of the codecs of
`codecs.py` (raw, codebook, or Deep Compression's sparse relative-index form with Huffman coding,
Han et al., "Deep Compression", ICLR 2016; or those two with rANS coding in place of Huffman).
The header, the table and each section carry a CRC-32 so that a damaged file names the part
that is damaged.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"\x89OXC\r\n\x1a\n"  # PNG-style: high bit, CR-LF and ^Z catch text-mode mangling
VERSION = 1

HEADER = struct.Struct("<8sHHIII")  # magic, version, flags, section count, table CRC, header CRC
ENTRY = struct.Struct("<BBHIQQII")  # kind, codec, reserved, index, offset, length, CRC, reserved

# The graph section states no decompressed size, so its inflation is bounded by the section's
# own length: at most GRAPH_MAX_RATIO times it (zlib cannot exceed 1032:1; the writer keeps a
# graph codec only within this ratio), or GRAPH_MIN_LIMIT for small sections, and never past
# protobuf's 2 GiB message limit. A small file cannot make the reader allocate much more.
GRAPH_MAX_RATIO = 1100
GRAPH_MIN_LIMIT = 64 << 20
PROTOBUF_MAX_BYTES = (2 << 30) - 1

HEADER_SECTION = "header"
TABLE_SECTION = "section table"
GRAPH_SECTION = "graph"


class SectionKind(enum.IntEnum):
    """What a section holds."""

    GRAPH = 1
    TENSOR = 2


class Codec(enum.IntEnum):
    """How a section's bytes are encoded (graph sections use only the first three)."""

    STORED = 0
    ZLIB = 1
    LZMA = 2
    CODEBOOK = 3
    SPARSE = 4
    BITGROUPS = 5
    CODEBOOK_RANS = 6  # codebook with an rANS stream instead of the Huffman one
    SPARSE_RANS = 7  # sparse with rANS gap and value streams


class PayloadError(ValueError):
    """A section's bytes do not parse; the reader adds the section and file names."""


@dataclass(frozen=True)
class Entry:
    """One row of the section table."""

    kind: SectionKind
    codec: Codec
    index: int  # tensor sections: position of the initializer in graph.initializer
    offset: int
    length: int
    crc: int


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def tensor_section(name: str) -> str:
    """The section name errors use for an initializer's payload."""
    return f"tensor '{name}'"


def pack_header(entries: list[Entry]) -> bytes:
    """Header and section table bytes for the given entries."""
    table = b"".join(
        ENTRY.pack(e.kind, e.codec, 0, e.index, e.offset, e.length, e.crc, 0) for e in entries
    )
    head = HEADER.pack(MAGIC, VERSION, 0, len(entries), crc32(table), 0)
    head = head[:-4] + struct.pack("<I", crc32(head[:-4]))
    return head + table


def graph_limit(section_length: int) -> int:
    """Most bytes a graph section of this length may inflate to (see GRAPH_MAX_RATIO)."""
    return min(PROTOBUF_MAX_BYTES, max(GRAPH_MIN_LIMIT, GRAPH_MAX_RATIO * section_length))


def prefix_size(n_sections: int) -> int:
    """Bytes before the first section."""
    return HEADER.size + ENTRY.size * n_sections


class Cursor:
    """Reads little-endian fields from a section, raising PayloadError past its end."""

    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise PayloadError(
                f"needs {n} bytes at offset {self.pos}, only {len(self.buf) - self.pos} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise PayloadError(f"{len(self.buf) - self.pos} unexpected bytes after the payload")
