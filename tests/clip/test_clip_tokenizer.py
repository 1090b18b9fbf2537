"""Our BPE tokenizer gives exactly open_clip's ids (open_clip's tokenizer module as the oracle)."""

import gzip
import hashlib
import importlib.util
import pathlib

import numpy as np
import pytest

from zegot_jax.clip import tokenizer
from zegot_jax.data import class_names

TEMPLATES = (
    "a photo of a {}.",
    "a portrait of a {}.",
    "a part of a {}.",
    "a segment of a {}.",
    "a photo of small {}.",
    "a photo of medium {}.",
    "a photo of large {}.",
    "a background of a {}.",
)


def _open_clip_tokenizer_module():
    """Imports only open_clip/tokenizer.py (the package itself would import torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "The tokenizer oracle is missing: install it with "
            "`pip install --no-deps open_clip_torch` (a test dependency)."
        )
    folder = pathlib.Path(list(spec.submodule_search_locations)[0])
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, folder


@pytest.fixture(scope="module")
def oracle():
    module, folder = _open_clip_tokenizer_module()
    return module.SimpleTokenizer(), folder


def _generated_strings(count=300, seed=0):
    rng = np.random.default_rng(seed)
    pieces = [
        "cat",
        "Dog",
        "TV-monitor",
        "person's",
        "don't",
        "we'll",
        "they're",
        "i'm",
        "you've",
        "he'd",
        "potted plant",
        "3",
        "1984",
        "3.14",
        "2nd",
        "#1",
        "&amp;",
        "&lt;b&gt;",
        "&amp;amp;",
        "naïve",
        "café",
        "Straße",
        "ﬁsh",
        "Ångström",
        "São Paulo",
        "東京",
        "猫",
        "кошка",
        "γάτα",
        "قطة",
        "🐱",
        "👍🏽",
        "🇫🇷",
        "😀😀",
        "…",
        "—",
        "“quoted”",
        "‘single’",
        "!!!",
        "?!",
        "(brackets)",
        "[x]",
        "{y}",
        "a_b",
        "e-mail@x.com",
        "http://x.org/a?b=c",
        "50%",
        "$100",
        "\t",
        "\n",
        "   ",
        "ALL CAPS",
        "MiXeD",
        "x" * 33,
        "supercalifragilisticexpialidocious",
        "fi\u0301ne",
        "zero\u200bwidth",
        "Â©",
        "mojibake: Ã©tÃ©",
    ]
    texts = []
    for _ in range(count):
        n = int(rng.integers(1, 12))
        separators = rng.choice([" ", "", ", ", "  ", "\t", "-", "."], size=n)
        words = rng.choice(pieces, size=n)
        texts.append("".join(w + s for w, s in zip(words, separators, strict=True)))
    texts.append(" ".join(pieces) * 3)  # longer than 77 tokens: truncation
    return texts


def test_bundled_vocabulary_is_openai_file(oracle):
    _, folder = oracle
    ours = hashlib.sha256(tokenizer.VOCAB_PATH.read_bytes()).hexdigest()
    theirs = hashlib.sha256((folder / "bpe_simple_vocab_16e6.txt.gz").read_bytes()).hexdigest()
    assert ours == theirs
    assert len(tokenizer.default_tokenizer().encoder) == 49408


@pytest.mark.parametrize("names", ["VOC20", "CONTEXT59", "COCO_STUFF171", "ADE150"])
def test_class_names_and_templates_match(oracle, names):
    reference, _ = oracle
    texts = list(getattr(class_names, names))
    texts += [t.format(name) for t in TEMPLATES for name in texts]
    np.testing.assert_array_equal(tokenizer.tokenize(texts), reference(texts).numpy())


def test_generated_strings_match(oracle):
    reference, _ = oracle
    texts = _generated_strings()
    for context_length in (77, 16):
        ours = tokenizer.tokenize(texts, context_length)
        np.testing.assert_array_equal(ours, reference(texts, context_length).numpy())
    assert ours.dtype == np.int32 and ours.shape == (len(texts), 16)
    for text in texts[:50]:
        assert tokenizer.encode(text) == reference.encode(text)


def test_layout_and_truncation():
    rows = tokenizer.tokenize(["a cat", "word " * 100], context_length=8)
    cat = tokenizer.encode("a cat")
    assert rows[0].tolist() == [tokenizer.SOS, *cat, tokenizer.EOT] + [0] * (6 - len(cat))
    assert rows[1, 0] == tokenizer.SOS and rows[1, -1] == tokenizer.EOT
    assert (rows[1, 1:-1] == tokenizer.encode("word")[0]).all()
    assert tokenizer.tokenize("A  Cat!").tolist() == tokenizer.tokenize(["a cat!"]).tolist()
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.EOT]  # OpenAI's special strings
    assert tokenizer.decode(tokenizer.encode("a photo of a cat.")) == "a photo of a cat ."
    with pytest.raises(TypeError, match="strings"):
        tokenizer.tokenize(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.tokenize("a", context_length=1)


def test_corrupt_vocabulary_is_refused(tmp_path):
    lines = gzip.decompress(tokenizer.VOCAB_PATH.read_bytes()).decode().split("\n")
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress("\n".join(lines[:1000]).encode()))
    with pytest.raises(ValueError, match="CLIP needs 49408"):
        tokenizer.BPETokenizer(short)
