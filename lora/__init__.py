"""LoRA written by hand: the layer (layer), injection and structural freezing (inject), adapter files in
the PEFT layout and merged export (adapter). Builds on qwen_min; peft is used only in the tests."""

from .adapter import (VALUE_LAYERS, Adapter, adapter_state, check_adapter, export_merged, load_adapter,
                      merged_state, save_adapter)
from .inject import (DEFAULT_TARGETS, TARGETS, check_config, inject, lora_config, lora_layers, parse_targets, summary,
                     trainable_parameters)
from .layer import LoRALinear

__all__ = ["VALUE_LAYERS", "Adapter", "adapter_state", "check_adapter", "export_merged", "load_adapter", "merged_state", "save_adapter", "DEFAULT_TARGETS",
           "TARGETS", "check_config", "inject", "lora_config", "lora_layers", "parse_targets", "summary", "trainable_parameters", "LoRALinear"]
