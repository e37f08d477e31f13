"""qwen_min: Qwen2.5 in pure PyTorch, named like the official checkpoint.

config (QwenConfig), model (the modules), weights (load/save in the Hugging Face layout),
tokenizer (Qwen's BPE, a byte tokenizer, the 13-symbol number vocabulary), presets (tiny-random and
scratch-* models made on the fly), generate (KV-cache decoding), loss (fused LM-head cross-entropy).
Imports nothing of the project's other packages but `flops` primitives and `data.files` (atomic writes).
"""

from .config import QwenConfig
from .errors import LoadError
from .generate import generate
from .presets import PRESETS, TINY_RANDOM, preset_model, tiny_random_model
from .model import KVCache, QwenForCausalLM, init_weights
from .tokenizer import NUMBER_SYMBOLS, Tokenizer
from .weights import device_and_dtype, load_config, load_pretrained, load_tokenizer, parse_device, parse_dtype, save_pretrained

__all__ = ["QwenConfig", "LoadError", "generate", "PRESETS", "TINY_RANDOM", "preset_model", "tiny_random_model",
           "KVCache", "QwenForCausalLM", "init_weights", "NUMBER_SYMBOLS", "device_and_dtype", "Tokenizer", "load_tokenizer", "load_config",
           "load_pretrained", "parse_device", "parse_dtype", "save_pretrained"]
