"""qwen_min: Qwen2.5 in pure PyTorch, named like the official checkpoint.

config (QwenConfig), model (the modules), weights (load/save in the Hugging Face layout),
tokenizer (Qwen's BPE and the tiny byte tokenizer), generate (KV-cache decoding).
Imports nothing of the project's other packages but `flops` primitives.
"""

from .config import QwenConfig
from .errors import LoadError
from .generate import generate
from .hub import TINY_RANDOM
from .model import KVCache, QwenForCausalLM, init_weights
from .tokenizer import Tokenizer, load_tokenizer
from .weights import load_config, load_pretrained, parse_dtype, save_pretrained, tiny_random_model

__all__ = ["QwenConfig", "LoadError", "generate", "TINY_RANDOM", "KVCache", "QwenForCausalLM", "init_weights",
           "Tokenizer", "load_tokenizer", "load_config", "load_pretrained", "parse_dtype", "save_pretrained", "tiny_random_model"]
