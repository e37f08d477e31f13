"""Models made on the fly, with no weights to download: `tiny-random` (random weights, a byte
tokenizer) for trying every command offline, and the `scratch-*` presets, small models of the same
architecture with a 13-symbol number vocabulary, meant to be trained from scratch (`train.py --full`).

Weights depend only on the seed, so an adapter trained on a preset loads onto it again later.
"""

from __future__ import annotations

from .config import QwenConfig
from .model import QwenForCausalLM, init_weights
from .tokenizer import Tokenizer, number_tokenizer, tiny_tokenizer

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


def preset_tokenizer(name: str) -> Tokenizer:
    return tiny_tokenizer(TINY_RANDOM) if name == TINY_RANDOM else number_tokenizer()


def preset_config(name: str) -> QwenConfig:
    tok = preset_tokenizer(name)
    vocab = -(-tok.vocab_size // 16) * 16  # round up, as Qwen's own embedding is wider than its tokenizer
    if name == TINY_RANDOM:  # 2 blocks of width 64, 4 query heads sharing 2 key/value heads
        d, f, layers, heads, kv = 64, 176, 2, 4, 2
    else:
        d, f, layers, heads, kv = SCRATCH[name]
    return QwenConfig(vocab_size=vocab, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      rope_theta=10000.0 if name != TINY_RANDOM else 1000000.0,
                      bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)


def preset_model(name: str, seed: int = 0) -> QwenForCausalLM:
    """The preset's network with fixed random weights (normal(0, 0.02) matrices)."""
    return init_weights(QwenForCausalLM(preset_config(name)), seed=seed).eval()


def tiny_random_model(seed: int = 0) -> QwenForCausalLM:
    return preset_model(TINY_RANDOM, seed)
