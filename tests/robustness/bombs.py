"""Containers whose sections are tiny but claim a lot ("bombs"), and the peak memory of loading
each with `runtime.Session` in a child process of its own.

The peak is the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs after the
imports and a warm-up load) minus the RSS at the start, so it counts every allocation: the
reader's, numpy's, liblzma's and ONNX Runtime's (which copies the initializers it is given).

    python -m tests.robustness.bombs PATH    # one measurement, a JSON line
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from .fuzz_harness import CHILD_MEMORY, REPO, Layout, join, run_model


def _bomb_graph(n_floats: int, used: bool = True, dtype: int = 1):
    """A model with a float32 initializer W of n_floats elements (its data: section 1) that a
    Gather consumes (so ONNX Runtime cannot fold it away at load), or that nothing uses."""
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto(name="W", data_type=dtype, dims=[n_floats])
    v = helper.make_tensor("V", dtype, [1], [0.0])
    node = helper.make_node("Gather", ["W" if used else "V", "i"], ["y"])
    graph = helper.make_graph(
        [node], "bomb", [helper.make_tensor_value_info("i", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", dtype, [1])], [w, v])
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def _varint(x: int) -> bytes:
    from onnxcompress.container.huffman import varint

    return varint(x)


def bombs(declared: int, only: set[str] | None = None) -> dict[str, bytes]:
    """Containers whose sections are tiny but claim a lot, for a float32 tensor of `declared`
    bytes (valid CRCs everywhere): name -> bytes, all of them or those named in `only`."""
    import lzma

    from onnx import TensorProto

    n = declared // 4
    graph = _bomb_graph(n).SerializeToString()
    one_symbol = _varint(1) + bytes([0x10]) + _varint(0)  # alphabet 1, length token 1, m = 0
    size = struct.pack("<Q", declared)

    def container(codec: int, payload: bytes, graph_bytes: bytes = graph, gcodec: int = 0):
        return join(Layout(gcodec, graph_bytes, [(codec, 0, payload)]))

    def codebook(count: int, width: int = 4) -> bytes:  # every element the one entry
        return struct.pack("<BH", width, 1) + bytes(width) + _varint(count) + one_symbol

    def lzma_zeros(nbytes: int) -> bytes:
        return _zeros_compressed(lzma.LZMACompressor(format=lzma.FORMAT_ALONE), nbytes)

    makers = {
        # honest: a small stream of zeros that inflates to exactly the tensor
        "zlib-honest": lambda: container(1, size + _zeros_compressed(zlib.compressobj(9),
                                                                     declared)),
        # lying: the stream inflates to 4x what the header and the dims say
        "zlib-4x": lambda: container(1, size + _zeros_compressed(zlib.compressobj(9),
                                                                 4 * declared)),
        "lzma-4x": lambda: container(2, size + lzma_zeros(4 * declared)),
        # codebook: the one entry everywhere; then streams that claim 2^28 and 2^32 symbols
        "codebook-honest": lambda: container(3, codebook(n)),
        "codebook-2^28": lambda: container(3, codebook(2**28)),
        "codebook-2^32": lambda: container(3, codebook(2**32)),
        "codebook-unused": lambda: container(
            3, codebook(n), _bomb_graph(n, used=False).SerializeToString()),
        "codebook-bfloat16": lambda: container(
            3, codebook(2 * n, 2), _bomb_graph(2 * n, dtype=TensorProto.BFLOAT16)
            .SerializeToString()),
        # sparse: n entries of gap 0 (one-symbol streams), all values the one codebook entry
        "sparse-honest": lambda: container(4, struct.pack("<BBQ", 4, 8, n) + bytes(4)
                                           + struct.pack("<H", 1) + bytes([0, 0, 128, 63])
                                           + _varint(n) + one_symbol + _varint(n) + one_symbol),
        "sparse-2^40": lambda: container(4, struct.pack("<BBQ", 4, 8, 2**40) + bytes(4)
                                         + struct.pack("<H", 0) + _varint(0) * 6),
        # bitgroups keeping no bit: an all-zero tensor from a 16-byte payload
        "bitgroups-honest": lambda: container(5, struct.pack("<IIQ", 0, 64, declared // 8)),
        # the graph: an LZMA stream of 4x the tensor in zeros, which no header bounds
        "graph-lzma": lambda: container(0, size, lzma_zeros(4 * declared), gcodec=2),
    }
    return {name: make() for name, make in makers.items() if only is None or name in only}



def _zeros_compressed(compressor, nbytes: int, chunk: int = 1 << 20) -> bytes:
    """`nbytes` zero bytes through a zlib/LZMA compressor, a chunk at a time (no big buffer)."""
    zeros, parts = bytes(chunk), []
    for start in range(0, nbytes, chunk):
        parts.append(compressor.compress(zeros[: min(chunk, nbytes - start)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def _rss(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def bomb_child(path: Path) -> None:
    """Load one bomb with Session (and run it when accepted); print the outcome and the peak
    memory above the RSS at the start, measured with the kernel's high-water mark reset."""
    from onnxcompress.errors import OnnxCompressError

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY * 2, CHILD_MEMORY * 2))
    data = path.read_bytes()
    run_model(join(Layout(0, _bomb_graph(4).SerializeToString(), [(0, 0, struct.pack("<Q", 16)
                                                                   + bytes(16))])),
              {"i": np.zeros(1, np.int64)})  # warm up every import and ORT
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss("VmRSS")
    try:
        run_model(data, {"i": np.zeros(1, np.int64)})
        outcome = "accepted"
    except OnnxCompressError as e:
        outcome = f"refused: {str(e)[:120]}"
    print(json.dumps({"peak": _rss("VmHWM") - before, "outcome": outcome}), flush=True)


def measure_bombs(folder: Path, declared: int, timeout: float = 300.0,
                  only: set[str] | None = None) -> dict[str, dict]:
    """name -> {"peak": bytes above the start, "ratio": peak / declared, "outcome": ...}, each
    bomb loaded (and run when accepted) by Session in a child process of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, data in bombs(declared, only).items():
        path = folder / f"bomb-{name}.onnxc"
        path.write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "tests.robustness.bombs", str(path)],
                           cwd=REPO, capture_output=True, text=True,
                           timeout=timeout, check=False)
        if r.returncode != 0:
            results[name] = {"peak": None, "ratio": None,
                             "outcome": f"FAILURE exit {r.returncode}: {r.stderr[-300:]}"}
            continue
        msg = json.loads(r.stdout.strip().splitlines()[-1])
        results[name] = {**msg, "ratio": msg["peak"] / declared, "file_bytes": len(data)}
        path.unlink()
    return results


if __name__ == "__main__":
    bomb_child(Path(sys.argv[1]))
