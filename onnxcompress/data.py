"""Data files (.npz feeds with optional labels), their validation, and scoring a model on them.

An .npz holds one array per model input, keyed by the input's name, first axis = samples, and
optionally `labels` (top-1 class ids). `.npy` is accepted for single-input models.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import BadInputError

LABELS_KEY = "labels"

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

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def subset(self, index: slice | np.ndarray, key: str) -> Dataset:
        return Dataset({k: v[index] for k, v in self.feeds.items()},
                       None if self.labels is None else self.labels[index], key)

    def head(self, n: int) -> Dataset:
        return self.subset(slice(0, n), f"{self.key}[:{n}]")


def load_dataset(path: str | Path, specs: list[InputSpec], *, what: str = "data") -> Dataset:
    """Read and validate an .npz (or .npy for one input) against the model's inputs."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} file {path}: no such file")
    arrays = _read_arrays(path, specs, what)
    labels = arrays.pop(LABELS_KEY, None)
    names = [s[0] for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(
            f"{what} file {path}: missing input(s) {missing}; the model's inputs are {names} "
            f"(found keys {sorted(arrays) + ([LABELS_KEY] if labels is not None else [])})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise BadInputError(f"{what} file {path}: unknown key(s) {extra}; expected {names}"
                            f" and optionally '{LABELS_KEY}'")
    feeds = {name: _check_array(arrays[name], shape, dtype, f"{what} file {path}, input '{name}'")
             for name, shape, dtype in specs}
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1:
        raise BadInputError(f"{what} file {path}: inputs have different sample counts {counts}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != counts.pop() or not np.issubdtype(labels.dtype,
                                                                                np.integer):
            raise BadInputError(f"{what} file {path}: '{LABELS_KEY}' must be a 1-D integer array "
                                f"with one class id per sample, got {labels.dtype}{labels.shape}")
    return Dataset(feeds, labels)


def _read_arrays(path: Path, specs: list[InputSpec], what: str) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise BadInputError(f"{what} file {path}: a .npy holds one array but the model has "
                                    f"{len(specs)} inputs; use an .npz keyed by input name")
            return {specs[0][0]: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise BadInputError(f"{what} file {path}: not a readable .npz/.npy file ({e})") from e


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


# ----------------------------------------------------------------------------- scoring

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> first output


def predict(run: RunFn, data: Dataset, batch: int = 256) -> np.ndarray:
    """First output of the model over the whole dataset, in batches."""
    outs = []
    for start in range(0, len(data), batch):
        outs.append(np.asarray(run({k: v[start:start + batch] for k, v in data.feeds.items()})))
    return np.concatenate(outs)


def first_output(sess) -> RunFn:
    """feeds -> the first output of a session (onnxruntime's or runtime.Session)."""
    return lambda feeds: sess.run(None, feeds)[0]


def zero_feeds(specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """One all-zero sample for each input (symbolic dims as 1): enough to time a model."""
    return {n: np.zeros([1] + [d or 1 for d in shape[1:]], dtype) for n, shape, dtype in specs}


def top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


@dataclass
class Fidelity:
    """How a model's outputs compare to the labels and/or to the uncompressed model's outputs."""

    accuracy: float | None  # top-1 against labels, percent
    agreement: float  # top-1 agreement with the reference, percent
    max_abs_diff: float
    mean_abs_diff: float

    def score(self) -> float:
        """Points of top-1 used by the accuracy budget: accuracy if labelled, else agreement."""
        return self.accuracy if self.accuracy is not None else self.agreement


def fidelity(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Fidelity:
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    pred = top1(outputs)
    acc = None if labels is None else float((pred == labels).mean() * 100)
    return Fidelity(acc, float((pred == top1(reference)).mean() * 100),
                    float(diff.max()), float(diff.mean()))
