"""Data files (.npz feeds with optional labels), their validation, and scoring a model on them.

An .npz holds one array per model input, keyed by the input's name, first axis = samples, and
optionally `labels` (top-1 class ids) or `targets` (the outputs the model should give, for the
psnr metric). `.npy` is accepted for single-input models.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import BadInputError

LABELS_KEY = "labels"
TARGETS_KEY = "targets"
NPY_MAGIC = b"\x93NUMPY"
BATCH = 256  # samples per ONNX Runtime run, unless the model fixes its own

InputSpec = tuple[str, list, np.dtype]  # (name, shape with None for symbolic dims, dtype)


# ONNX Runtime's type strings for the input dtypes a data file can hold
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """(name, shape with None for symbolic dims, numpy dtype) for each real graph input."""
    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        specs.append((vi.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def session_specs(sess) -> list[InputSpec]:
    """Input specs from a loaded session, so a model need not be read a second time."""
    specs = []
    for i in sess.get_inputs():
        if i.type not in _ORT_TYPES:
            raise BadInputError(f"input '{i.name}' has type {i.type}, which data files cannot "
                                f"hold (supported: {', '.join(_ORT_TYPES)})")
        specs.append((i.name, [d if isinstance(d, int) else None for d in i.shape],
                      np.dtype(_ORT_TYPES[i.type])))
    return specs


@dataclass
class Dataset:
    """Feeds keyed by input name (first axis = samples), optional labels, and a key naming
    this set of samples within a run ("all", "fit", "held" …) for caches."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    key: str = "all"
    batch: int = BATCH  # samples per run; a model with a fixed batch size takes exactly that
    targets: np.ndarray | None = None  # the outputs the model should give (psnr), if known

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def subset(self, index: slice | np.ndarray, key: str) -> Dataset:
        cut = lambda a: None if a is None else a[index]
        return Dataset({k: v[index] for k, v in self.feeds.items()}, cut(self.labels), key,
                       self.batch, cut(self.targets))

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), self.batch):
            yield {k: v[start:start + self.batch] for k, v in self.feeds.items()}

    def head(self, n: int) -> Dataset:
        return self.subset(slice(0, n), f"{self.key}[:{n}]")


def load_dataset(path: str | Path, specs: list[InputSpec], *, what: str = "data") -> Dataset:
    """Read and validate an .npz (or .npy for one input) against the model's inputs."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} file {path}: no such file")
    arrays = _read_arrays(path, specs, what)
    labels = arrays.pop(LABELS_KEY, None)
    targets = arrays.pop(TARGETS_KEY, None)
    names = [s[0] for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(
            f"{what} file {path}: missing input(s) {missing}; the model's inputs are {names} "
            f"(found keys {sorted(arrays) + ([LABELS_KEY] if labels is not None else [])})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise BadInputError(f"{what} file {path}: unknown key(s) {extra}; expected {names}"
                            f" and optionally '{LABELS_KEY}' or '{TARGETS_KEY}'")
    feeds = {name: _check_array(arrays[name], shape, dtype, f"{what} file {path}, input '{name}'")
             for name, shape, dtype in specs}
    for name, arr in feeds.items():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind == "f" else 0
        if bad:
            raise BadInputError(f"{what} file {path}, input '{name}': {bad:,} NaN or infinite "
                                f"values of {arr.size:,}; the data must be finite")
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1:
        raise BadInputError(f"{what} file {path}: inputs have different sample counts {counts}")
    n = counts.pop()
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise BadInputError(f"{what} file {path}: '{LABELS_KEY}' must be a 1-D integer array "
                                f"with one class id per sample, got {labels.dtype}{labels.shape}")
        if labels.size and labels.min() < 0:
            raise BadInputError(f"{what} file {path}: '{LABELS_KEY}' holds negative class ids "
                                f"(smallest {labels.min()})")
    if targets is not None and (len(targets) != n or targets.dtype.kind != "f"
                                or not np.isfinite(targets).all()):
        raise BadInputError(f"{what} file {path}: '{TARGETS_KEY}' must be finite floats with one "
                            f"row per sample, got {targets.dtype}{targets.shape}")
    return Dataset(feeds, labels, batch=_fixed_batch(specs, n, f"{what} file {path}"),
                   targets=targets)


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size the model's inputs fix, or None when the batch is free."""
    fixed = {shape[0] for _, shape, _ in specs if shape and shape[0] not in (None, 0)}
    return fixed.pop() if fixed else None


def _fixed_batch(specs: list[InputSpec], n: int, where: str) -> int:
    """The model's own batch size when its inputs fix one, else BATCH."""
    size = fixed_batch(specs)
    if size is None:
        return BATCH
    if n % size:
        raise BadInputError(f"{where}: the model takes batches of exactly {size} samples, and "
                            f"{n} samples do not split into them; give a multiple of {size}")
    return size


def check_labels(data: Dataset, classes: int, where: str) -> None:
    """Refuse labels that name no class of a model with `classes` outputs."""
    if data.labels is not None and data.labels.size and data.labels.max() >= classes:
        raise BadInputError(f"{where}: '{LABELS_KEY}' holds class id {data.labels.max()}, but the "
                            f"model scores {classes} classes (ids 0 to {classes - 1})")


def _read_arrays(path: Path, specs: list[InputSpec], what: str) -> dict[str, np.ndarray]:
    where = f"{what} file {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == NPY_MAGIC:
            if len(specs) != 1:
                raise BadInputError(f"{where}: holds one .npy array but the model has "
                                    f"{len(specs)} inputs; use an .npz keyed by input name")
            with open(path, "rb") as f:
                _check_npy_header(f, path.stat().st_size, where)
            return {specs[0][0]: np.load(path, allow_pickle=False)}
        if not zipfile.is_zipfile(path):
            raise BadInputError(f"{where}: neither an .npz archive nor a .npy array (write it "
                                "with np.savez or np.save)")
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as member:
                    _check_npy_header(member, info.file_size, f"{where}, array '{info.filename}'")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, MemoryError) as e:
        raise BadInputError(f"{where}: not a readable .npz/.npy file ({e})") from e


def _check_npy_header(f, stored: int, where: str) -> None:
    """Refuse an array whose header claims more bytes than are stored (before allocating)."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if claimed > stored:
        raise BadInputError(f"{where}: the header claims {claimed:,} bytes of data but only "
                            f"{stored:,} are stored: the file is truncated or corrupt")


def _check_array(arr: np.ndarray, shape: list, dtype: np.dtype, where: str) -> np.ndarray:
    if arr.dtype != dtype:
        raise BadInputError(f"{where}: expected dtype {dtype}, got {arr.dtype} "
                            f"(convert with arr.astype(np.{dtype.name}))")
    if len(shape) and arr.ndim != len(shape):
        raise BadInputError(f"{where}: expected {len(shape)} dimensions {_fmt(shape)}, "
                            f"got shape {arr.shape}")
    for axis, (want, got) in enumerate(zip(shape, arr.shape)):
        if want not in (None, 0) and axis > 0 and want != got:
            raise BadInputError(f"{where}: expected shape {_fmt(shape)}, got {arr.shape} "
                                f"(axis {axis} must be {want})")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise BadInputError(f"{where}: no samples (first axis must count samples)")
    return arr


def _fmt(shape: list) -> str:
    return "(" + ", ".join("N" if d in (None, 0) else str(d) for d in shape) + ")"


# ----------------------------------------------------------------------------- running

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> the scored output


def predict(run: RunFn, data: Dataset) -> np.ndarray:
    """The model's scored output over the whole dataset, in batches."""
    return np.concatenate([np.asarray(run(feeds)) for feeds in data.batches()])


def run_batches(sess, data: Dataset, where: str) -> list[np.ndarray]:
    """Every output of `sess` over all of `data`, one run per batch of `data.batch` samples (a
    model with a fixed batch size takes no other), joined along the batch axis. An output that
    does not follow the batch (a statistic over it, say) cannot be joined: refused."""
    parts = [sess.run(None, feeds) for feeds in data.batches()]
    if len(parts) == 1:
        return parts[0]
    for out, arrays in zip(sess.get_outputs(), zip(*parts)):
        if any(a.ndim == 0 or len(a) != data.batch for a in arrays):
            raise BadInputError(
                f"{where}: the model takes batches of exactly {data.batch} samples and its output "
                f"'{out.name}' {list(arrays[0].shape)} does not follow the batch, so the runs "
                f"over {len(data)} samples cannot be joined; give {data.batch} samples at a time")
    return [np.concatenate(arrays) for arrays in zip(*parts)]


def output_of(sess, name: str | None = None) -> RunFn:
    """feeds -> the output `name` (default: the first) of a session (onnxruntime's or
    runtime.Session)."""
    return lambda feeds: sess.run([name] if name else None, feeds)[0]


def zero_feeds(specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """One sample of each input (zeros; symbolic dims as 1): enough to time a model."""
    return {n: np.zeros([1] + [d or 1 for d in shape[1:]], dtype) for n, shape, dtype in specs}
