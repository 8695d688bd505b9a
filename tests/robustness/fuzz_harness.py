"""Seeded mutation fuzzing of the container reader through `runtime.Session` and of the model
loader through `compress`, and bomb memory.

Shared by tests/robustness/test_container_fuzz.py (a few hundred cases) and
benchmarks/fuzz_container.py (tens of thousands). Case i mutates one of the seed containers with
a generator seeded by (seed, i), loads the bytes with `Session` and runs it on fixed inputs:

    refused   an onnxcompress error, at load or at run (a clean refusal)
    same      accepted, outputs identical to the unmutated container's
    changed   accepted with other outputs after a mutation whose CRCs were recomputed (a valid
              container of another model: the reader cannot know)
    FAILURE:  crash (the process died), hang (no answer within the timeout), error (any other
              exception type), silent (outputs changed though the CRCs were left as they were:
              a corruption the reader missed)

The model target (`--target model`) mutates ONNX seed models (bytes anywhere, or the parsed
model: dims, types, external data, attributes, names) and runs each through the whole job
(load, check, normalize, prune, cluster, container, a session on the result): a case is
`refused` (an onnxcompress error naming the file), `accepted` (compressed and run), or a
FAILURE (crash, hang, error).

Cases run in a child process (`python -m tests.robustness.fuzz_harness child ...`), so that a
crash or hang costs one case: the parent records it and restarts the child after it. The
memory of crafted "bombs" is measured by bombs.py.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import resource
import selectors
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FAILURES = ("crash", "hang", "error", "silent")
CLASSES = ("refused", "same", "changed", "accepted", *FAILURES)
CHILD_MEMORY = 8 << 30  # address-space cap of the child: a runaway allocation fails, not the host
INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64 - 1)


# ----------------------------------------------------------------------------- seeds


def write_seeds(folder: Path) -> list[Path]:
    """The seed containers: every codec (stored, zlib, codebook, sparse, their rANS forms,
    bitgroups, and an LZMA graph or tensor where the writer picks one) and XnorConv nodes,
    with their input arrays."""
    import onnx

    from onnxcompress.container import write_container
    from tests.container.models import KINDS, net, structured_net
    from tests.passes.binary_nets import binarize, float_net

    folder.mkdir(parents=True, exist_ok=True)
    binary, _ = binarize(float_net(), mode="xnor", target="native", layers="all")
    # randomly pruned weights come out codebook and codebook-rans, channel-pruned ones sparse
    # and sparse-rans
    seeds = [("net", net(), KINDS), ("structured", structured_net(), KINDS), ("xnor", binary, None)]
    paths = []
    for name, model, kinds in seeds:
        path = folder / f"{name}.onnxc"
        write_container(model, path, tensor_kinds=kinds)
        feeds = {}
        for i in model.graph.input:
            shape = [d.dim_value or 2 for d in i.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            feeds[i.name] = np.random.default_rng(7).normal(size=shape).astype(dtype)
        np.savez(folder / f"{name}.npz", **feeds)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- mutations


@dataclass
class Layout:
    """A container split into its parts (format.py), to rebuild with fresh CRCs and offsets."""

    graph_codec: int
    graph: bytes  # the graph section's bytes as stored
    tensors: list[tuple[int, int, bytes]] = field(default_factory=list)  # (codec, index, bytes)


def split(data: bytes) -> Layout:
    from onnxcompress.container.format import ENTRY, HEADER

    count = struct.unpack_from("<I", data, 12)[0]
    rows = [ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size) for i in range(count)]
    parts = [(r[1], r[3], data[r[4] : r[4] + r[5]]) for r in rows]
    return Layout(parts[0][0], parts[0][2], [(c, i, b) for c, i, b in parts[1:]])


def join(layout: Layout) -> bytes:
    from onnxcompress.container.format import Entry, SectionKind, crc32, pack_header, prefix_size

    parts = [(SectionKind.GRAPH, layout.graph_codec, 0, layout.graph)]
    parts += [(SectionKind.TENSOR, c, i, b) for c, i, b in layout.tensors]
    entries, offset = [], prefix_size(len(parts))
    for kind, codec, index, payload in parts:
        entries.append(Entry(kind, codec, index, offset, len(payload), crc32(payload)))
        offset += len(payload)
    return pack_header(entries) + b"".join(p[3] for p in parts)


def _poke(rng: np.random.Generator, buf: bytearray) -> str:
    """One byte-level change in place; returns its name."""
    if not buf:
        buf.extend(rng.integers(0, 256, 4, dtype=np.uint8).tobytes())
        return "grow"
    op = int(rng.integers(0, 6))
    at = int(rng.integers(0, len(buf)))
    if op == 0:
        for _ in range(int(rng.integers(1, 5))):
            j = int(rng.integers(0, len(buf)))
            buf[j] ^= 1 << int(rng.integers(0, 8))
        return "bitflip"
    if op == 1:
        buf[at] = int(rng.integers(0, 256))
        return "byte"
    if op == 2:  # an interesting integer over a field-sized window
        width = int(rng.choice([1, 2, 4, 8]))
        value = int(rng.choice(INTERESTING)) & ((1 << (8 * width)) - 1)
        raw = value.to_bytes(width, "little")
        buf[at : at + width] = raw[: max(0, len(buf) - at)]
        return f"int{width}={value}"
    if op == 3:  # a varint-shaped run (Huffman counts are LEB128)
        buf[at : at + 5] = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])[: max(0, len(buf) - at)]
        return "varint"
    if op == 4:
        del buf[at : at + int(rng.integers(1, 9))]
        return "delete"
    buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    return "insert"


def _raw_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """Bytes changed anywhere, CRCs left as they were: the reader must refuse or be unaffected."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        cut = int(rng.integers(0, len(data)))
        return data[:cut], f"truncate@{cut}"
    if kind == 1:
        return data + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes(), \
            "append"
    buf = bytearray(data)
    what = _poke(rng, buf)
    return bytes(buf), f"raw-{what}"


def _section_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """One tensor section's payload changed, CRCs and offsets recomputed: reaches the decoders."""
    layout = split(data)
    k = int(rng.integers(0, len(layout.tensors)))
    codec, index, payload = layout.tensors[k]
    buf = bytearray(payload)
    what = _poke(rng, buf)
    if rng.random() < 0.2:  # and maybe another codec id for the same bytes
        codec = int(rng.integers(0, 9))  # every codec id, and one no reader knows
        what += f"+codec{codec}"
    layout.tensors[k] = (codec, index, bytes(buf))
    return join(layout), f"section{k}-{what}"


def _table_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """A section table field changed with the table and header CRCs recomputed."""
    from onnxcompress.container.format import ENTRY, HEADER, crc32

    buf = bytearray(data)
    count = struct.unpack_from("<I", buf, 12)[0]
    row = HEADER.size + int(rng.integers(0, count)) * ENTRY.size
    field_at = int(rng.choice([0, 1, 4, 8, 16]))  # kind, codec, index, offset, length
    width = {0: 1, 1: 1, 4: 4, 8: 8, 16: 8}[field_at]
    value = int(rng.choice(INTERESTING)) & ((1 << (8 * width)) - 1)
    buf[row + field_at : row + field_at + width] = value.to_bytes(width, "little")
    end = HEADER.size + count * ENTRY.size
    struct.pack_into("<I", buf, 16, crc32(bytes(buf[HEADER.size : end])))
    struct.pack_into("<I", buf, 20, crc32(bytes(buf[:20])))
    return bytes(buf), f"table@{row}+{field_at}={value}"


def _graph_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """The model inside changed (dims, types, external data, XnorConv attributes ...), written
    back with the graph's codec and fresh CRCs: reaches the declared-size checks and the op."""
    layout = split(data)
    model = graph_model(layout)
    what = _edit_model(rng, model)
    set_graph_model(layout, model)
    return join(layout), f"graph-{what}"


# (decode, encode) of each codec a graph section may use (docs/FORMAT.md)
GRAPH_CODECS = {0: (bytes, bytes), 1: (zlib.decompress, zlib.compress),
                2: (lambda b: lzma.decompress(b, format=lzma.FORMAT_ALONE),
                    lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE))}


def graph_model(layout: Layout):
    """The model held in a container's graph section (its tensors' data are sections apart)."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(GRAPH_CODECS[layout.graph_codec][0](layout.graph))
    return model


def set_graph_model(layout: Layout, model) -> None:
    """Store `model` as the graph section, in the section's codec."""
    layout.graph = GRAPH_CODECS[layout.graph_codec][1](model.SerializeToString())


def _edit_model(rng: np.random.Generator, model) -> str:
    from onnx import TensorProto

    inits = list(model.graph.initializer)
    xnor = [n for n in model.graph.node if n.op_type == "XnorConv"]
    op = int(rng.integers(0, 6 if xnor else 5))
    if op == 5:
        node = xnor[int(rng.integers(0, len(xnor)))]
        name = "mode" if rng.random() < 0.3 else "conv_attrs"
        attr = next(a for a in node.attribute if a.name == name)
        text = bytearray(attr.s)
        _poke(rng, text)
        attr.s = bytes(text)
        return f"xnor-{attr.name}={bytes(text)[:60]!r}"
    t = inits[int(rng.integers(0, len(inits)))]
    if op == 0 and t.dims:
        i = int(rng.integers(0, len(t.dims)))
        t.dims[i] = int(rng.choice([0, -1, t.dims[i] * 2, t.dims[i] + 1, 2**20, 2**31, 2**40]))
        return f"dims:{t.name}={list(t.dims)}"
    if op == 1:
        t.data_type = int(rng.integers(0, 30))
        return f"dtype:{t.name}={t.data_type}"
    if op == 2:
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", str(rng.choice(["w.bin", "/etc/passwd", "../w.bin"]))
        return f"external:{t.name}"
    if op == 3:
        t.name = inits[int(rng.integers(0, len(inits)))].name
        return f"rename:{t.name}"
    t.dims.extend([int(rng.integers(1, 5))])
    return f"rank:{t.name}={list(t.dims)}"


MUTATORS = (_raw_mutation, _section_mutation, _section_mutation, _table_mutation, _graph_mutation)
CRC_KEPT = {_raw_mutation}  # these leave the CRCs alone: changed outputs would be a failure


def mutate(seed: int, case: int, originals: list[bytes]) -> tuple[int, bytes, str, bool]:
    """(seed container index, mutated bytes, description, crcs_recomputed) of one case."""
    rng = np.random.default_rng([seed, case])
    which = int(rng.integers(0, len(originals)))
    mutator = MUTATORS[int(rng.integers(0, len(MUTATORS)))]
    data, what = mutator(rng, originals[which])
    return which, data, what, mutator not in CRC_KEPT


# ----------------------------------------------------------------------------- one case


def run_model(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnxcompress.runtime import Session

    return Session(data, threads=1).run(None, feeds)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b)
    )


def classify(data: bytes, feeds: dict, want: list[np.ndarray], crcs_recomputed: bool
             ) -> tuple[str, str]:
    """(class, detail) of one mutated container (crash and hang are the parent's to see)."""
    from onnxcompress.errors import OnnxCompressError

    try:
        got = run_model(data, feeds)
    except OnnxCompressError as e:
        return "refused", f"{type(e).__name__}: {str(e)[:160]}"
    except Exception as e:  # noqa: BLE001 -- exactly what the fuzzer looks for
        return "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
    if _same(got, want):
        return "same", ""
    return ("changed", "") if crcs_recomputed else ("silent", "outputs differ")


# ----------------------------------------------------------------------------- model target


def write_model_seeds(folder: Path) -> list[Path]:
    """Seed ONNX models (Conv+BN+Gemm, Conv/Gemm/MatMul, an embedding with a tied head)."""
    import onnx

    from tests.conftest import tiny_cnn
    from tests.passes import small_nets
    from tests.passes.test_embeddings import lm

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"tiny_cnn": tiny_cnn(), "small_net": small_nets.net(), "tied_lm": lm()}
    paths = []
    for name, model in seeds.items():
        onnx.save(model, str(folder / f"{name}.onnx"))
        paths.append(folder / f"{name}.onnx")
    return paths


def mutate_model(seed: int, case: int, originals: list[bytes]) -> tuple[int, bytes, str]:
    """(seed model index, mutated bytes, description) of one model case."""
    import onnx

    rng = np.random.default_rng([seed, case])
    which = int(rng.integers(0, len(originals)))
    if rng.random() < 0.4:
        data, what = _raw_mutation(rng, originals[which])
        return which, data, what
    model = onnx.ModelProto()
    model.ParseFromString(originals[which])
    if rng.random() < 0.3:
        what = _edit_node(rng, model)
    else:
        what = _edit_model(rng, model)
    return which, model.SerializeToString(), f"model-{what}"


def _edit_node(rng: np.random.Generator, model) -> str:
    """A node's attribute, input or op type changed, or the graph's inputs/outputs."""
    nodes = list(model.graph.node)
    node = nodes[int(rng.integers(0, len(nodes)))]
    op = int(rng.integers(0, 5))
    if op == 0 and node.attribute:
        a = node.attribute[int(rng.integers(0, len(node.attribute)))]
        if a.ints:
            a.ints[int(rng.integers(0, len(a.ints)))] = int(rng.choice(INTERESTING) % 2**62)
        else:
            a.i = int(rng.choice([0, -1, 2, 2**31]))
        return f"attr:{node.name or node.op_type}.{a.name}"
    if op == 1 and node.input:
        node.input[int(rng.integers(0, len(node.input)))] = str(rng.choice(["", "missing",
                                                                            node.output[0]]))
        return f"input:{node.op_type}"
    if op == 2:
        node.op_type = str(rng.choice(["Conv", "Gemm", "MatMul", "Gather", "Nonexistent"]))
        return f"op:{node.op_type}"
    if op == 3:
        del model.graph.input[:]
        return "no-inputs"
    d = model.graph.output[0].type.tensor_type.shape.dim
    if d:
        d[-1].dim_value = int(rng.choice([0, 1, 3, 2**31]))
    return "output-shape"


def classify_model(data: bytes, work: Path) -> tuple[str, str]:
    """(class, detail) of one mutated model through the whole compress job."""
    from onnxcompress.compress import compress
    from onnxcompress.errors import OnnxCompressError
    from onnxcompress.passes import cluster, prune
    from onnxcompress.pipeline import Step

    src, out = work / "model.onnx", work / "out.onnxc"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    steps = [Step("prune", prune.Config(sparsity=0.5)), Step("cluster", cluster.Config())]
    try:
        compress(src, out, recipe=steps, measure_latency=False)
        from onnxcompress.runtime import Session

        Session(out).get_outputs()
    except OnnxCompressError as e:
        if out.exists():
            return "error", f"refused but wrote {out.name}: {e}"
        return "refused", f"{type(e).__name__}: {str(e)[:160]}"
    except Exception as e:  # noqa: BLE001 -- exactly what the fuzzer looks for
        return "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
    return "accepted", ""


def _warm_up(names: list[str], originals: list[bytes], work: Path) -> None:
    """Compress every seed once, unmutated, before the first case is announced (as the
    container child runs its seeds first): the imports and ONNX Runtime's first sessions then
    count against no case's deadline, and a seed the job refuses is a broken setup, not a
    finding."""
    for name, data in zip(names, originals):
        cls, detail = classify_model(data, work)
        if cls != "accepted":
            raise RuntimeError(f"seed model {name} is not compressed cleanly: {cls} {detail}")


def model_child(folder: Path, seed: int, start: int, end: int) -> None:
    import tempfile

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    names = sorted(p.stem for p in folder.glob("*.onnx"))
    originals = [(folder / f"{n}.onnx").read_bytes() for n in names]
    with tempfile.TemporaryDirectory(prefix="fuzz-model-") as tmp:
        _warm_up(names, originals, Path(tmp))
        for case in range(start, end):
            print(json.dumps({"case": case, "begin": True}), flush=True)
            which, data, what = mutate_model(seed, case, originals)
            cls, detail = classify_model(data, Path(tmp))
            print(json.dumps({"case": case, "class": cls, "what": f"{names[which]}:{what}",
                              "detail": detail}), flush=True)


def child_main(folder: Path, seed: int, start: int, end: int) -> None:
    """Run cases start..end-1, one JSON line when each begins and one when it ends."""
    if not any(folder.glob("*.onnxc")):
        model_child(folder, seed, start, end)
        return
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    names = sorted(p.stem for p in folder.glob("*.onnxc"))
    originals = [(folder / f"{n}.onnxc").read_bytes() for n in names]
    feeds = [dict(np.load(folder / f"{n}.npz")) for n in names]
    wants = [run_model(o, f) for o, f in zip(originals, feeds)]
    for case in range(start, end):
        print(json.dumps({"case": case, "begin": True}), flush=True)
        which, data, what, recomputed = mutate(seed, case, originals)
        cls, detail = classify(data, feeds[which], wants[which], recomputed)
        print(json.dumps({"case": case, "class": cls, "what": f"{names[which]}:{what}",
                          "detail": detail}), flush=True)


# ----------------------------------------------------------------------------- the parent


@dataclass
class FuzzResult:
    counts: Counter
    failures: list[dict]

    def summary(self) -> str:
        return ", ".join(f"{c} {self.counts.get(c, 0)}" for c in CLASSES)


def _spawn(folder: Path, seed: int, start: int, end: int, stderr) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.robustness.fuzz_harness", "child", str(folder),
           str(seed), str(start), str(end)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, env=env)


def _watch(proc: subprocess.Popen, timeout: float, counts: Counter, failures: list[dict],
           progress) -> tuple[int | None, int | None, str, str]:
    """Read one child's reports until it ends: (last case finished, case in progress when it
    stopped answering or died, class, detail) -- the last three None/'' when it ended cleanly.

    The pipe is read with os.read into our own buffer and every complete line is handled at
    once: a buffered readline after select would leave lines that came in the same chunk unseen
    until the child wrote again, so a hang could name a case that had finished and the next case
    could be timed from an earlier case's start."""
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    pending = b""
    finished, current = None, None
    deadline = time.monotonic() + 4 * timeout  # it imports and warms up before its first case
    while True:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            proc.kill()
            proc.wait()
            return finished, current, "hang", f"no answer within {timeout} s"
        chunk = os.read(fd, 1 << 16)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg.get("begin"):
                current, deadline = msg["case"], time.monotonic() + timeout
                continue
            current, finished = None, msg["case"]
            _record(msg, counts, failures, progress)
        if not chunk:  # end of file: the child exited (a partial last line means it died)
            rc = proc.wait()
            if rc == 0 and current is None:
                return finished, None, "", ""
            return finished, current, "crash", f"exit status {rc}"


def _record(msg: dict, counts: Counter, failures: list[dict], progress) -> None:
    counts[msg["class"]] += 1
    if msg["class"] in FAILURES:
        failures.append(msg)
    if progress:
        progress(msg["case"] + 1, counts)


def fuzz(folder: Path, cases: int, seed: int = 0, timeout: float = 60.0,
         progress=None) -> FuzzResult:
    """Run `cases` cases on the seeds in `folder`; a crash or hang costs one case."""
    import tempfile

    counts: Counter = Counter()
    failures: list[dict] = []
    case = 0
    while case < cases:
        with tempfile.TemporaryFile("w+") as err:
            proc = _spawn(folder, seed, case, cases, err)
            finished, current, cls, detail = _watch(proc, timeout, counts, failures, progress)
            proc.stdout.close()
            err.seek(0)
            tail = err.read()[-1500:]
        if not cls:
            break
        if current is None and finished is None:  # died before its first case: a broken setup
            raise RuntimeError(f"the fuzz child failed before its first case ({detail}): {tail}")
        lost = current if current is not None else finished + 1
        counts[cls] += 1
        failures.append({"case": lost, "class": cls, "what": "", "detail": f"{detail}\n{tail}"})
        case = lost + 1
    return FuzzResult(counts, failures)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("folder", type=Path)
    c.add_argument("seed", type=int)
    c.add_argument("start", type=int)
    c.add_argument("end", type=int)
    one = sub.add_parser("case", help="rerun one case in this process (debugging)")
    one.add_argument("folder", type=Path)
    one.add_argument("seed", type=int)
    one.add_argument("case", type=int)
    a = p.parse_args(argv)
    if a.cmd == "child":
        child_main(a.folder, a.seed, a.start, a.end)
    else:
        child_main(a.folder, a.seed, a.case, a.case + 1)


if __name__ == "__main__":
    main()
