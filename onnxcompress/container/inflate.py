"""Bounded decompression of the container's zlib and LZMA-alone streams: the output is produced
a chunk at a time and refused past the size the file declares, so a compression bomb costs at
most that size and one chunk."""

from __future__ import annotations

import lzma
import zlib

from .format import Codec, PayloadError

INFLATE_CHUNK = 256 << 10  # decompression output per step


def inflate(codec: Codec, data: memoryview | bytes, limit: int, exact: bool = False
            ) -> bytearray:
    """Decompress a zlib or LZMA-alone stream whose output must end within `limit` bytes (with
    `exact`, at exactly `limit`: the buffer is then allocated once, at that size).

    The output is produced a chunk at a time, so a bomb costs at most the limit and a chunk;
    the one-call forms (zlib.decompress ...) join their output blocks at the end, twice the
    output at the peak, and stop at no limit."""
    name = codec.name.lower()
    if codec == Codec.ZLIB:
        step, ended, rest = _zlib_steps(data)
    elif codec == Codec.LZMA:
        step, ended, rest = _lzma_steps(data)
    else:
        raise PayloadError(f"codec {codec.name} is not a compressor")
    out = bytearray(limit) if exact else bytearray()
    size = 0
    try:
        while not ended():
            chunk = step()
            if not chunk:
                raise PayloadError(f"{name} data ends early (truncated stream)")
            if size + len(chunk) > limit:
                raise PayloadError(f"{name} data inflates past the {limit} bytes declared")
            out[size : size + len(chunk)] = chunk
            size += len(chunk)
    except (zlib.error, lzma.LZMAError) as e:
        raise PayloadError(f"{name} data does not decompress: {e}") from e
    if rest():
        raise PayloadError(f"{len(rest())} bytes after the end of the {name} stream")
    if exact and size != limit:
        raise PayloadError(f"{name} data holds {size} bytes, its header says {limit}")
    return out


def _zlib_steps(data: memoryview | bytes):
    z = zlib.decompressobj()
    pending = [data]

    def step() -> bytes:
        chunk = z.decompress(pending[0], INFLATE_CHUNK)
        pending[0] = z.unconsumed_tail
        return chunk

    return step, lambda: z.eof, lambda: z.unused_data


# An LZMA stream states its dictionary size, which the decoder allocates; the writer's preset 9
# uses 64 MiB, so a stream asking for more (up to 4 GiB) is refused before the allocation.
LZMA_MEMLIMIT = (64 << 20) + (1 << 20)


def _lzma_steps(data: memoryview | bytes):
    x = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=LZMA_MEMLIMIT)
    pending = [data]

    def step() -> bytes:
        chunk = x.decompress(pending[0], max_length=INFLATE_CHUNK)
        pending[0] = b""  # the decompressor keeps what it has not used yet
        return chunk

    return step, lambda: x.eof, lambda: x.unused_data
