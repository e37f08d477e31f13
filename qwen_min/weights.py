"""Load and save models in the Hugging Face layout: config.json plus model.safetensors (or shards),
tokenizer.json beside them; or make a preset's model, config and tokenizer on the fly. A name is
resolved once, by `open_model`, into a `ModelSource` that answers everything else."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from data.files import atomic_write, files_digest, read_json_object, write_text

from .config import QwenConfig
from .continuous import QwenForValueForecasting, ValueSpec
from .errors import LoadError
from .hub import resolve_dir
from .model import QwenForCausalLM
from .presets import PRESETS, default_encoding, is_preset, preset_config, preset_model, preset_spec, preset_tokenizer
from .tokenizer import Tokenizer, read_tokenizer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LoadError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' as a torch.device, checked against this machine and its torch."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise LoadError(f"unknown device {name!r}; expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {name!r}: this torch ({torch.__version__}) has no CUDA device to use")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LoadError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_and_dtype(device: str, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Checked device and dtype; with no dtype given, bf16 on CUDA and fp32 elsewhere."""
    dev = parse_device(device)
    return dev, parse_dtype(dtype or ("bf16" if dev.type == "cuda" else "fp32"))


VALUE_ARCHITECTURE = "QwenForValueForecasting"  # config.json's `architectures` of a continuous model


class ModelSource:
    """A model named once (`open_model`): a preset, made on the fly in any encoding, or a directory
    in the Hugging Face layout (a local path, or a hub snapshot fetched once). Every later question
    is answered here without resolving the name again: the config (`config.json` read and checked
    once, when first asked), the continuous head it was saved with, the encoding it reads, its
    tokenizer, its digest, and its weights (`load`) or its shape alone (`empty`)."""

    def __init__(self, name: str, directory: Path | None = None):
        self.name, self.directory = str(name), directory

    @property
    def preset(self) -> bool:
        return self.directory is None

    @property
    def config_path(self) -> Path | None:
        return None if self.preset else self.directory / CONFIG_FILE

    @functools.cached_property
    def _hf_config(self) -> dict:
        return read_json_object(self.config_path, LoadError, what="config file")

    def config(self, encoding: str | None = None) -> QwenConfig:
        """The network's config: a preset's in `encoding` (default its own); a directory's own."""
        if self.preset:
            return preset_config(self.name, encoding or default_encoding(self.name))
        return self._directory_config

    @functools.cached_property
    def _directory_config(self) -> QwenConfig:
        return QwenConfig.from_dict(self._hf_config, source=str(self.config_path))

    @functools.cached_property
    def spec(self) -> ValueSpec | None:
        """The head of a continuous model saved in the directory (config.json's value_components,
        value_space, value_steps and value_inputs; one saved before the space was a choice is linear,
        before the steps were, a next-step head, before the inputs were, of levels); None for a language model,
        and for a preset (continuous only when asked for)."""
        if self.preset:
            return None
        raw, path = self._hf_config, self.config_path  # read and checked (a JSON object) first
        architectures = raw.get("architectures") or []
        if not isinstance(architectures, list):
            raise LoadError(f"{path}: architectures must be a list of class names, got {architectures!r}")
        if VALUE_ARCHITECTURE not in architectures:
            return None
        try:
            return ValueSpec.read(raw)
        except ValueError as e:
            raise LoadError(f"{path}: {e}") from None

    @property
    def encoding(self) -> str:
        """The encoding the model reads by itself: a directory's (continuous from config.json, bins
        from a tokenizer of value tokens, else digits); a preset's default."""
        if self.preset:
            return default_encoding(self.name)
        if self.spec is not None:
            return "continuous"
        return "bins" if self.tokenizer().value_words else "digits"

    def tokenizer(self, encoding: str | None = None) -> Tokenizer:
        """A preset's tokenizer in `encoding` (default its own), or the directory's tokenizer.json."""
        if self.preset:
            return preset_tokenizer(self.name, encoding or default_encoding(self.name))
        return self._directory_tokenizer

    @functools.cached_property
    def _directory_tokenizer(self) -> Tokenizer:
        return read_tokenizer(self.directory, self.name)

    @functools.cached_property
    def digest(self) -> str:
        """What identifies the model's computation: a preset's name, else the SHA-256 of its config
        and weights files."""
        if self.preset:
            return self.name
        self._hf_config  # a config.json that is no JSON object is refused before it is hashed
        return files_digest([self.config_path, *sorted(self.directory.glob("*.safetensors"))])

    def load(self, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu",
             encoding: str | None = None, spec: ValueSpec | None = None) -> QwenForCausalLM | QwenForValueForecasting:
        """The model with its weights, in eval mode. A preset is made in `encoding` (default its own)
        with `spec`'s head when continuous; a directory's config.json says its own kind.

        A directory's model is built on the meta device, then the checked tensors are assigned: no
        memory is spent on a random initialisation, and any error (missing file, unknown key, wrong
        shape) is raised before a model exists."""
        dtype = parse_dtype(dtype)
        device = parse_device(str(device))  # 'cuda' on a CPU-only torch: one LoadError line, not an AssertionError
        if self.preset:
            return preset_model(self.name, encoding=encoding or default_encoding(self.name),
                                spec=spec).to(device=device, dtype=dtype)
        config, spec = self.config(), self.spec
        state = load_state(self.directory, config, dtype, device, spec)
        model = empty_model(config, spec)
        model.load_state_dict(state, strict=spec is not None or not config.tie_word_embeddings, assign=True)
        if spec is None:
            model.tie_weights()
        return model.eval()

    def empty(self, encoding: str | None = None, spec: ValueSpec | None = None):
        """The network `load` would return, on the meta device: its shape and FLOPs, no memory, no weights read."""
        if self.preset:
            encoding = encoding or default_encoding(self.name)
            return empty_model(self.config(encoding), preset_spec(encoding, spec))
        return empty_model(self.config(), self.spec)


def open_model(name_or_path: str | Path) -> ModelSource:
    """The model a name stands for: a preset (`tiny-random`, `scratch-1m`, `scratch-5m`,
    `scratch-20m`), a local directory, or a hub id (its snapshot fetched once, then cached). The
    name is resolved here and only here."""
    if is_preset(name_or_path):
        return ModelSource(str(name_or_path))
    return ModelSource(str(name_or_path), resolve_dir(name_or_path, alternatives=PRESETS))


def load_config(name_or_path: str | Path, encoding: str | None = None) -> QwenConfig:
    """The config alone (no weights read). `encoding` picks a preset's vocabulary (default: the
    preset's own); a directory's config says its own."""
    return open_model(name_or_path).config(encoding)


def load_tokenizer(name_or_path: str | Path, encoding: str | None = None) -> Tokenizer:
    """Qwen's tokenizer from a directory holding tokenizer.json, a hub id, or a preset's tokenizer
    (in `encoding`, default the preset's own)."""
    return open_model(name_or_path).tokenizer(encoding)


def empty_model(config: QwenConfig, spec: ValueSpec | None = None):
    """The network of `config` on the meta device: a language model, or with `spec` a continuous one."""
    with torch.device("meta"):
        return QwenForCausalLM(config) if spec is None else QwenForValueForecasting(config, spec)


def expected_shapes(config: QwenConfig, spec: ValueSpec | None = None) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, built on the meta device (no memory)."""
    return {k: tuple(v.shape) for k, v in empty_model(config, spec).state_dict().items()}


def _checkpoint_files(directory: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file that holds it, from the single file or the shard index."""
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.is_file():
        return {key: single for key in _keys_of(single)}
    if not index.is_file():
        raise LoadError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise LoadError(f"{index}: not a safetensors index (expected a JSON object with 'weight_map': {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LoadError(f"{index}: weight_map must map each key to a shard file name, got {str(weight_map)[:80]}")
    where: dict[str, Path] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = directory / shard
        if not shard_path.is_file():
            raise LoadError(f"{shard_path}: shard named in {INDEX_FILE} is missing")
        in_shard = set(_keys_of(shard_path))
        for key, name in weight_map.items():
            if name == shard:
                if key not in in_shard:
                    raise LoadError(f"{shard_path}: key {key} listed in {INDEX_FILE} is not in this shard")
                where[key] = shard_path
    return where


def _keys_of(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise LoadError(f"{path}: not a readable safetensors file ({e})") from None


def _shape_of(path: Path, key: str) -> tuple[int, ...]:
    with safe_open(path, framework="pt") as f:
        return tuple(f.get_slice(key).get_shape())


def load_state(directory: Path, config: QwenConfig, dtype: torch.dtype, device,
               spec: ValueSpec | None = None) -> dict[str, torch.Tensor]:
    """Read every checkpoint tensor after checking keys and shapes, so a bad file never half-loads;
    a tensor that holds NaN or infinite values in `dtype` is refused."""
    expected = expected_shapes(config, spec)
    where = _checkpoint_files(directory)
    optional = {"lm_head.weight"} if config.tie_word_embeddings and spec is None else set()
    for key, path in sorted(where.items()):
        if key not in expected:
            raise LoadError(f"{path}: unknown key {key} (not a parameter of this Qwen2 config)")
        shape = _shape_of(path, key)
        if shape != expected[key]:
            raise LoadError(f"{path}: {key} has shape {shape}, expected {expected[key]} from config.json")
    for key in sorted(set(expected) - set(where) - optional):
        raise LoadError(f"{directory}: missing key {key} (expected shape {expected[key]})")
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key, path in where.items():
        if key not in optional:  # a tied head, if stored, is the embedding again
            by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in keys:
                state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
                if not torch.isfinite(state[key]).all():  # NaN in the file, or a value past the dtype's range
                    raise LoadError(f"{path}: {key} holds NaN or infinite values (as {str(dtype).removeprefix('torch.')}); "
                                    f"refusing to load it")
    return state


def load_pretrained(name_or_path: str | Path, dtype: str | torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", encoding: str | None = None,
                    spec: ValueSpec | None = None) -> QwenForCausalLM | QwenForValueForecasting:
    """A Qwen2-architecture model from a local Hugging Face directory, a hub id, or a preset
    (`tiny-random`, `scratch-1m`, `scratch-5m`, `scratch-20m`: see `presets`; `encoding`, default
    the preset's own, and `spec` (a continuous head) choose a preset's kind; a directory's config.json
    says its own). Returned in eval mode; see `ModelSource.load`."""
    return open_model(name_or_path).load(dtype, device, encoding, spec)


def save_pretrained(model: QwenForCausalLM | QwenForValueForecasting, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json and model.safetensors (the tied head left out, as in the official file)."""
    return save_state(model.config, model.state_dict(), directory, tokenizer, getattr(model, "spec", None))


def save_state(config: QwenConfig, state: dict[str, torch.Tensor], directory: str | Path, tokenizer=None,
               spec: ValueSpec | None = None) -> Path:
    """Write a checkpoint-keyed state dict in the Hugging Face layout; each file replaced atomically.
    With `spec`, a continuous model: config.json says so (architectures, value_components, value_space,
    value_steps, value_inputs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if config.tie_word_embeddings and spec is None:
        state.pop("lm_head.weight", None)
    hf_config = config.to_hf_dict()
    if spec is not None:
        hf_config.update(architectures=[VALUE_ARCHITECTURE], **spec.saved())
    hf_config["torch_dtype"] = str(state["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    atomic_write(directory / SINGLE_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
    write_text(directory / CONFIG_FILE, json.dumps(hf_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
