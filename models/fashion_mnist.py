"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package, in pure numpy.

The four IDX files (gzip) live in `/usr/share/datasets/fashion-mnist/`. Images come back as
float32 (N, 1, 28, 28) normalized exactly as the zoo models were trained:
`(pixel / 255 - MEAN) / STD`, with MEAN and STD the train-split pixel statistics.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860  # mean pixel of the 60,000 training images, after scaling to [0, 1]
STD = 0.3530  # their standard deviation
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049


def _file(split: str, kind: str, data_dir: Path) -> Path:
    """Path of one IDX file; raises FileNotFoundError naming the Debian package if absent."""
    if split not in _PREFIX:
        raise ValueError(f"Expected split 'train' or 'test', got {split!r}")
    path = Path(data_dir) / f"{_PREFIX[split]}-{kind}-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file {path} not found; install it with "
            "`apt-get install dataset-fashion-mnist`"
        )
    return path


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Decode a gzip IDX file of unsigned bytes into a uint8 array of `ndim` dimensions."""
    raw = gzip.decompress(path.read_bytes())
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: expected IDX magic {magic}, found {int(header[0])}")
    shape = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) → float32 (N, 1, 28, 28), scaled and standardized."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]


def load_raw(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of `split` ('train' or 'test')."""
    images = _read_idx(_file(split, "images-idx3", data_dir), _IMAGE_MAGIC, 3)
    labels = _read_idx(_file(split, "labels-idx1", data_dir), _LABEL_MAGIC, 1)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def load(
    split: str, limit: int | None = None, data_dir: Path = DATA_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 images (N, 1, 28, 28) and int64 labels (N,); the first `limit` if given."""
    images, labels = load_raw(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return normalize(images), labels
