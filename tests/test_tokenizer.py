"""Tokenizers: the real Qwen vocabulary gives Hugging Face's ids; the tiny one splits digits the same way."""

from __future__ import annotations

import pytest

from qwen_min import LoadError, load_tokenizer
from qwen_min.tokenizer import tiny_tokenizer

from .conftest import QWEN_TOKENIZER, needs_qwen_tokenizer

KNOWN = {"1.23": [16, 13, 17, 18], "1 . 2 3": [16, 659, 220, 17, 220, 18],
         "0.25,1.50;": [15, 13, 17, 20, 11, 16, 13, 20, 15, 26], "<|endoftext|>": [151643]}


@needs_qwen_tokenizer
@pytest.mark.parametrize("text", KNOWN)
def test_qwen_ids_as_hugging_face_gives_them(text):
    assert load_tokenizer(QWEN_TOKENIZER).encode(text) == KNOWN[text]


@needs_qwen_tokenizer
def test_qwen_vocabulary_and_special_tokens():
    tok = load_tokenizer(QWEN_TOKENIZER)
    assert tok.vocab_size == 151665
    assert tok.eos_id == tok.pad_id == 151643
    assert [tok.token_id(str(d)) for d in range(10)] == list(range(15, 25))
    assert tok.decode(tok.encode("0.68,0.75;0.53,0.56;")) == "0.68,0.75;0.53,0.56;"


@needs_qwen_tokenizer
def test_qwen_matches_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(QWEN_TOKENIZER / "tokenizer.json"))
    text = "Forecast: 0.68,0.75;0.53,0.56;10.00,1.2; done.\n"
    assert load_tokenizer(QWEN_TOKENIZER).encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


def test_tiny_tokenizer_one_token_per_character():
    tok = tiny_tokenizer()
    text = "0.68,0.75;0.53,0.56;"
    ids = tok.encode(text)
    assert len(ids) == len(text) and ids == [ord(c) for c in text]
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
    with pytest.raises(LoadError, match="is 2 tokens, expected exactly one"):
        tok.token_id("12")


def test_missing_tokenizer_file(model_dir):
    _, directory = model_dir
    with pytest.raises(LoadError, match="no tokenizer.json"):
        load_tokenizer(directory)
    (directory / "tokenizer.json").write_text("{broken")
    with pytest.raises(LoadError, match="tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(directory)
