"""Adapter files in the PEFT layout (adapter_config.json + adapter_model.safetensors), and merged export.

A continuous model's adapter also holds its new input and output layers in full (`embed_values`,
`value_head`: PEFT's `modules_to_save`, stored as base_model.model.embed_values.weight and so on), and
its value space, head steps and inputs in the safetensors header's metadata (`value_space`,
`value_steps`, `value_inputs`, beside PEFT's `format`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from data.files import atomic_write, files_digest, read_json_object, write_text
from qwen_min.continuous import SAVED_KEYS, SPECIES, ValueSpec
from qwen_min.errors import LoadError
from qwen_min.weights import save_state

from .inject import TARGETS, check_config, inject, lora_config, lora_layers, part_of

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # what peft puts before the base model's own module names
PEFT_DEFAULT_ALPHA = 8  # peft's LoraConfig.lora_alpha when a config leaves it out
VALUE_LAYERS = ("embed_values", "value_head")  # a continuous model's layers, trained in full beside LoRA


def adapter_state(model) -> dict[str, torch.Tensor]:
    """PEFT keys -> LoRA weights, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous().cpu()
        state[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    for name in saved_modules(model):
        for leaf, p in getattr(model, name).named_parameters():
            state[f"{PREFIX}{name}.{leaf}"] = p.detach().contiguous().cpu()
    return state


def saved_modules(model) -> list[str]:
    """The layers an adapter of this model stores in full: a continuous model's value layers."""
    return [name for name in VALUE_LAYERS if hasattr(model, name)]


def save_adapter(model, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors, loadable by peft.PeftModel.from_pretrained."""
    cfg = lora_config(model)
    if cfg is None:
        raise LoadError("this model has no LoRA layers to save (inject or load an adapter first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
              "lora_dropout": cfg["lora_dropout"], "target_modules": cfg["target_modules"], "bias": "none",
              "base_model_name_or_path": base_model_name_or_path,
              "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": saved_modules(model) or None,
              "use_rslora": False,
              "use_dora": False, "init_lora_weights": True, "layers_to_transform": None, "rank_pattern": {},
              "alpha_pattern": {}}
    metadata = {"format": "pt"}
    if getattr(model, "spec", None) is not None:
        components = SAVED_KEYS["components"]  # the head's shape says it
        metadata.update({key: str(v) for key, v in model.spec.saved().items() if key != components})
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(adapter_state(model), p, metadata=metadata))
    write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise LoadError(f"{directory}: no such adapter directory")
    if not path.is_file():
        raise LoadError(f"{path}: missing (an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg = read_json_object(path, LoadError)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise LoadError(f"{path}: peft_type is {cfg.get('peft_type')!r}, expected 'LORA'")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LoadError(f"{path}: r must be a positive integer, got {r!r}")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise LoadError(f"{path}: target_modules must be a list of module names, got {cfg.get('target_modules')!r}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise LoadError(f"{path}: target module {unknown[0]!r} is not a projection of this model "
                        f"(expected some of {', '.join(TARGETS)})")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or saved and sorted(map(str, saved)) != sorted(VALUE_LAYERS):
        raise LoadError(f"{path}: modules_to_save={saved!r} is not supported (only {list(VALUE_LAYERS)}, the layers "
                        f"of a continuous model)")
    cfg["modules_to_save"] = saved
    for key, fine in (("use_dora", False), ("layers_to_transform", None)):
        if cfg.get(key) not in (fine, [], {}) and cfg.get(key) != fine:
            raise LoadError(f"{path}: {key}={cfg[key]!r} is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_rslora"):
        raise LoadError(f"{path}: rank_pattern, alpha_pattern and use_rslora are not supported")
    if cfg.get("bias", "none") != "none":
        raise LoadError(f"{path}: bias={cfg['bias']!r} is not supported, expected 'none'")
    cfg["target_modules"] = targets
    cfg["lora_alpha"] = cfg.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    cfg["lora_dropout"] = cfg.get("lora_dropout") or 0.0
    try:
        check_config(r, cfg["lora_alpha"], cfg["lora_dropout"], name=lambda key: f"lora_{key}")
    except LoadError as e:
        raise LoadError(f"{path}: {e}") from None
    return cfg


def load_adapter(model, directory: str | Path):
    """Load a PEFT-layout LoRA adapter (ours or peft's), injecting LoRA layers if the model has none.

    Refuses, before changing any weight, an adapter whose rank, targets, keys, shapes or values
    (NaN or infinite) don't fit.
    """
    directory = Path(directory)
    cfg, renamed = check_adapter(model, directory)
    if lora_config(model) is None:  # everything checked: only now is the model changed
        inject(model, rank=cfg["r"], alpha=cfg["lora_alpha"], dropout=float(cfg["lora_dropout"]),
               targets=cfg["target_modules"], verbose=False)
    params = {f"{PREFIX}{name}": p for name, p in model.named_parameters()}
    with safe_open(directory / WEIGHTS_FILE, framework="pt") as f, torch.no_grad():
        for key, raw_key in renamed.items():
            params[key].copy_(f.get_tensor(raw_key).to(params[key].dtype))
    return model


def check_adapter(model, directory: str | Path) -> tuple[dict, dict[str, str]]:
    """Everything `load_adapter` checks, changing nothing (the model may be on the meta device):
    returns the adapter's config and {PEFT key: key as stored}."""
    directory = Path(directory)
    cfg = read_adapter_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise LoadError(f"{weights}: missing (an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        with safe_open(weights, framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LoadError(f"{weights}: not a readable safetensors file ({e})") from None
    present = lora_config(model)
    if present is not None and (present["r"] != cfg["r"] or set(present["target_modules"]) != set(cfg["target_modules"])):
        raise LoadError(f"{directory}: adapter has r={cfg['r']} on {', '.join(cfg['target_modules'])}, but the "
                        f"model's LoRA layers have r={present['r']} on {', '.join(present['target_modules'])}")
    if saved_modules(model) and not cfg["modules_to_save"]:
        raise LoadError(f"{directory}: a language model's adapter (no value layers); this model is continuous")
    expected = expected_shapes(model, cfg["r"], cfg["target_modules"], cfg["modules_to_save"])
    renamed = {k.replace(".default.weight", ".weight"): k for k in stored}  # some peft versions keep the name
    if len(renamed) < len(stored):
        twice = sorted(k for k in stored if k.endswith(".default.weight"))
        twice = [k for k in twice if k.replace(".default.weight", ".weight") in stored]
        raise LoadError(f"{weights}: holds both {twice[0]} and {twice[0].replace('.default.weight', '.weight')} "
                        f"(one weight under two names); keep one")
    for key in sorted(set(expected) - set(renamed)):
        raise LoadError(f"{weights}: missing key {key} (the adapter doesn't cover this model's layers)")
    for key in sorted(set(renamed) - set(expected)):
        raise LoadError(f"{weights}: unknown key {key} (not a LoRA weight of this model with r={cfg['r']} "
                        f"on {', '.join(cfg['target_modules'])})")
    for key in sorted(expected):
        if stored[renamed[key]] != expected[key]:
            raise LoadError(f"{weights}: {key} has shape {stored[renamed[key]]}, expected {expected[key]} (r={cfg['r']})")
    with safe_open(weights, framework="pt") as f:
        for key, raw_key in sorted(renamed.items()):
            if not torch.isfinite(f.get_tensor(raw_key)).all():
                raise LoadError(f"{weights}: {key} holds NaN or infinite values; refusing to load it")
    return cfg, renamed


class Adapter:
    """An adapter folder, its adapter_config.json read and checked once: `config` (r, lora_alpha,
    lora_dropout, target_modules, modules_to_save), `spec` (the head of the continuous model it was
    trained on, None for a language model's) and `digest` (what identifies its computation)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config = read_adapter_config(self.directory)

    @functools.cached_property
    def spec(self) -> ValueSpec | None:
        """The space, the head's steps and the inputs from the file's metadata (as `ValueSpec.read`
        reads them: an adapter from before one was a choice reads as it was then), the components
        from the value head's shape; None without value layers."""
        if not self.config["modules_to_save"]:
            return None
        weights, key = self.directory / WEIGHTS_FILE, f"{PREFIX}value_head.bias"
        try:
            with safe_open(weights, framework="pt") as f:
                width = f.get_slice(key).get_shape()[0] if key in f.keys() else None
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise LoadError(f"{weights}: not a readable safetensors file ({e})") from None
        try:
            spec = ValueSpec.read(metadata, components=1, text=True)  # the components once the width is known
        except ValueError as e:
            raise LoadError(f"{weights}: {e}") from None
        per_component = spec.steps * SPECIES * 3  # a weight, a mean and a scale per step and species
        if width is None or width % per_component:
            raise LoadError(f"{weights}: {key} is missing or not {per_component} x components wide")
        return dataclasses.replace(spec, components=width // per_component)

    @functools.cached_property
    def digest(self) -> str:
        return files_digest([self.directory / CONFIG_FILE, self.directory / WEIGHTS_FILE])

    def check(self, model) -> None:
        """Refuse a model this adapter does not fit (see `check_adapter`); the model may be on the meta device."""
        check_adapter(model, self.directory)


def expected_shapes(model, rank: int, targets, saved=()) -> dict[str, tuple[int, int]]:
    """PEFT key -> shape of every LoRA matrix an adapter of this rank and these targets must hold, and
    of the layers it keeps in full (`saved`, a continuous model's)."""
    shapes = {}
    for name in saved:
        if not hasattr(model, name):
            raise LoadError(f"the adapter holds {name}, a layer of a continuous model; this model has none "
                            f"(load the adapter onto a continuous model)")
        for leaf, p in getattr(model, name).named_parameters():
            shapes[f"{PREFIX}{name}.{leaf}"] = tuple(p.shape)
    for i, block in enumerate(model.model.layers):
        for name in TARGETS:
            if name not in targets:
                continue
            part = part_of(name)
            base = getattr(getattr(block, part), name)
            prefix = f"{PREFIX}model.layers.{i}.{part}.{name}"
            shapes[f"{prefix}.lora_A.weight"] = (rank, base.in_features)
            shapes[f"{prefix}.lora_B.weight"] = (base.out_features, rank)
    return shapes


@torch.no_grad()
def merged_state(model) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter folded into its weight; the model is not changed."""
    layers = lora_layers(model)
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        module_name, leaf = key.rsplit(".", 1)
        layer = layers.get(module_name)
        if layer is not None and leaf == "weight" and not layer.merged:
            value = value + layer.delta_weight().to(value.dtype)
        state[key] = value
    return state


def export_merged(model, directory: str | Path, tokenizer) -> Path:
    """A full model directory with the adapter merged and the tokenizer beside it (config.json,
    model.safetensors, tokenizer.json, tokenizer_config.json): what `python -m qwen_min --model`,
    `qwen_min.load_pretrained` and transformers' `AutoModelForCausalLM`/`AutoTokenizer` load."""
    return save_state(model.config, merged_state(model), directory, tokenizer, getattr(model, "spec", None))
