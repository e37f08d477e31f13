"""Models made on the fly, with no weights to download: `tiny-random` (random weights, a byte
tokenizer) for trying every command offline, and the `scratch-*` presets, small models of the same
architecture with a 13-symbol number vocabulary, meant to be trained from scratch (`train.py --full`).

Each preset comes in the three encodings of `data.encodings`: `digits` (the vocabularies above),
`bins` (the 1,000 value tokens of `bins_tokenizer`) and `continuous` (QwenForValueForecasting: a
linear input layer and a mixture head, the token embedding kept at the number vocabulary's 16 rows).
Weights depend only on the seed, so an adapter trained on a preset loads onto it again later.
"""

from __future__ import annotations

from data.encodings import ENCODINGS

from .config import QwenConfig
from .continuous import QwenForValueForecasting, ValueSpec
from .errors import LoadError
from .model import QwenForCausalLM, init_weights
from .tokenizer import Tokenizer, bins_tokenizer, number_tokenizer, tiny_tokenizer

TINY_RANDOM = "tiny-random"

# name -> (hidden, intermediate, layers, query heads, key/value heads); about 1M, 5M and 20M parameters
SCRATCH = {
    "scratch-1m": (128, 512, 4, 4, 2),
    "scratch-5m": (256, 1024, 6, 8, 2),
    "scratch-20m": (384, 1536, 10, 6, 2),
}
PRESETS = (TINY_RANDOM, *SCRATCH)


def is_preset(name) -> bool:
    return str(name) in PRESETS


def default_encoding(name) -> str:
    """The encoding a model is trained and read in when none is asked for: continuous for the scratch
    presets (the lowest forecast error per training FLOP here, see the README), digits for the rest."""
    return "continuous" if str(name) in SCRATCH else "digits"


# encoding -> (the preset's tokenizer, by preset name; the head its model has: None for a language
# model). The vocabulary a series is read in is a fact of the model, so it is kept here.
KINDS = {
    "digits": (lambda name: tiny_tokenizer(TINY_RANDOM) if name == TINY_RANDOM else number_tokenizer(), None),
    "bins": (lambda name: bins_tokenizer(), None),
    "continuous": (lambda name: number_tokenizer(), ValueSpec()),  # token embedding kept at 16 rows, unused
}


def kind(encoding: str):
    if encoding not in KINDS:
        raise LoadError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return KINDS[encoding]


def preset_tokenizer(name: str, encoding: str = "digits") -> Tokenizer:
    return kind(encoding)[0](name)


def preset_config(name: str, encoding: str = "digits") -> QwenConfig:
    tok = preset_tokenizer(name, encoding)
    vocab = -(-tok.vocab_size // 16) * 16  # round up, as Qwen's own embedding is wider than its tokenizer
    if name == TINY_RANDOM:  # 2 blocks of width 64, 4 query heads sharing 2 key/value heads
        d, f, layers, heads, kv = 64, 176, 2, 4, 2
    else:
        d, f, layers, heads, kv = SCRATCH[name]
    return QwenConfig(vocab_size=vocab, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      rope_theta=10000.0 if name != TINY_RANDOM else 1000000.0,
                      bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)


def preset_spec(encoding: str, spec: ValueSpec | None = None) -> ValueSpec | None:
    """The head of a preset's model in `encoding`: `spec` (default its own) for a value model, None
    for a language model (which has no head to choose)."""
    head = kind(encoding)[1]
    return (spec or head) if head is not None else None


def preset_model(name: str, seed: int = 0, encoding: str = "digits",
                 spec: ValueSpec | None = None) -> QwenForCausalLM | QwenForValueForecasting:
    """The preset's network in `encoding` with fixed random weights (normal(0, 0.02) matrices);
    `spec`: a continuous model's head (default `ValueSpec()`)."""
    config = preset_config(name, encoding)
    spec = preset_spec(encoding, spec)
    model = QwenForCausalLM(config) if spec is None else QwenForValueForecasting(config, spec)
    return init_weights(model, seed=seed).eval()
