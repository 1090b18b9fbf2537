"""CLIP's byte-level BPE tokenizer, giving the ids OpenAI's CLIP was trained on.

Text is cleaned as OpenAI does (ftfy `fix_text`, HTML unescaped twice, whitespace runs collapsed,
lower-cased), split by CLIP's regular expression, mapped byte by byte to printable characters,
and merged with the 48,894 BPE merges of `bpe_simple_vocab_16e6.txt.gz` (OpenAI's file, MIT
licensed, see LICENSE-BPE). Sequences are `[SOS] ids [EOT]`, zero padded.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import pathlib
from collections.abc import Sequence

import ftfy
import numpy as np
import regex

VOCAB_PATH = pathlib.Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
VOCAB_SIZE = 49408
SOS = 49406
EOT = 49407
_SPECIAL = {"<|startoftext|>": SOS, "<|endoftext|>": EOT}
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - len(_SPECIAL)
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def byte_alphabet() -> dict[int, str]:
    """Maps the 256 byte values to printable characters (BPE runs on these, never on raw bytes).

    Printable Latin-1 bytes map to themselves; the other 68 take the code points 256, 257, ... in
    byte order. The dict's insertion order is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """OpenAI's text clean-up: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class BPETokenizer:
    """CLIP's byte-level BPE with an LRU cache of merged words."""

    def __init__(self, vocab_path: str | pathlib.Path = VOCAB_PATH, cache_size: int = 1 << 16):
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
        self.byte_encoder = byte_alphabet()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        base = list(self.byte_encoder.values())
        vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + list(_SPECIAL)
        if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
            raise ValueError(
                f"BPE vocabulary {vocab_path} gives {len(vocab)} entries "
                f"({len(set(vocab))} distinct); CLIP needs {VOCAB_SIZE}."
            )
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._merge)

    def _merge(self, word: str) -> tuple[str, ...]:
        """Greedily applies the lowest-ranked merge until none applies; `'</w>'` ends the word."""
        parts = [*word[:-1], word[-1] + "</w>"]
        ranks, unranked = self.ranks, len(self.ranks)
        while len(parts) > 1:
            best = min(itertools.pairwise(parts), key=lambda pair: ranks.get(pair, unranked))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without SOS/EOT."""
        ids = []
        for piece in _PATTERN.findall(clean(text)):
            if piece in _SPECIAL:
                ids.append(_SPECIAL[piece])
                continue
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self._bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Approximate inverse of `encode` (cleaning is lossy); padding zeros should be removed."""
        text = "".join(self.decoder[int(i)] for i in ids)
        text = text.replace("</w>", self.byte_encoder[ord(" ")])
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").strip()


@functools.cache
def default_tokenizer() -> BPETokenizer:
    """The shared tokenizer over the bundled vocabulary (built on first use)."""
    return BPETokenizer()


def encode(text: str) -> list[int]:
    """BPE ids of `text` without SOS/EOT."""
    return default_tokenizer().encode(text)


def decode(ids: Sequence[int]) -> str:
    """Text of BPE ids (SOS/EOT print as their special strings)."""
    return default_tokenizer().decode(ids)


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """Tokenizes texts into CLIP's padded id matrix.

    Each row is `[SOS] encode(text) [EOT] 0 ...`. A text longer than the context is truncated to
    `context_length` ids whose last one is replaced by EOT, so the EOT position always exists.

    Args:
        texts: one string or a sequence of strings.
        context_length: row length L (77 for OpenAI's models; shorter for a truncated tower).

    Returns:
        int32 `[len(texts), context_length]`.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (SOS and EOT); got {context_length}.")
    result = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {row} is {type(text).__name__}.")
        ids = [SOS, *encode(text), EOT][:context_length]
        ids[-1] = EOT
        result[row, : len(ids)] = ids
    return result
