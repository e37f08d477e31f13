"""qwen_min: Qwen2.5 in pure PyTorch, named like the official checkpoint.

config (QwenConfig), model (the modules), weights (load/save in the Hugging Face layout),
tokenizer (Qwen's BPE, a byte tokenizer, the 13-symbol number vocabulary), presets (tiny-random and
scratch-* models made on the fly), generate (KV-cache decoding), loss (fused LM-head cross-entropy),
continuous (the decoder on continuous values: a linear input layer and a Gaussian-mixture head).
Imports nothing of the project's other packages but `flops` primitives, `data.files` (atomic writes) and
`data.encodings` (the encodings' names and value bins).
"""

from .config import QwenConfig
from .continuous import QwenForValueForecasting, ValueSpec
from .errors import LoadError
from .generate import generate
from .presets import PRESETS, TINY_RANDOM, preset_model
from .model import KVCache, QwenForCausalLM, init_weights
from .tokenizer import NUMBER_SYMBOLS, Tokenizer
from .weights import (ModelSource, device_and_dtype, load_config, load_pretrained, load_tokenizer, open_model, parse_device,
                      parse_dtype, save_pretrained)

__all__ = ["QwenConfig", "QwenForValueForecasting", "ValueSpec", "LoadError", "generate", "PRESETS", "TINY_RANDOM", "preset_model",
           "KVCache", "QwenForCausalLM", "init_weights", "NUMBER_SYMBOLS", "device_and_dtype", "Tokenizer", "load_tokenizer", "load_config",
           "load_pretrained", "ModelSource", "open_model", "parse_device", "parse_dtype", "save_pretrained"]
