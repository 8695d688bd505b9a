"""Write the zoo's calibration and evaluation feeds as .npz files.

    python models/make_data.py --out models/data

calib.npz: the first 1,000 TRAIN images; eval.npz: the first 2,000 TEST images. Both hold
`input` float32 (N, 1, 28, 28), normalized as in training, and `labels` int64 (N,).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from fashion_mnist import load

FEEDS = {"calib.npz": ("train", 1000), "eval.npz": ("test", 2000)}


def write_feed(path: Path, split: str, count: int) -> Path:
    """Save the first `count` images of `split` with their labels to `path` (compressed)."""
    images, labels = load(split, limit=count)
    if len(images) != count:
        raise ValueError(f"{split}: asked for {count} images, found {len(images)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, input=images, labels=labels)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args(argv)
    for name, (split, count) in FEEDS.items():
        path = write_feed(args.out / name, split, count)
        print(f"{path}: {count} {split} images, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
