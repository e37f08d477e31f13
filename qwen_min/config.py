"""The one configuration of the Qwen2 architecture, with Qwen2.5-0.5B's values as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from data.files import read_json_object

from .errors import LoadError


# What transformers' Qwen2Config assumes for a key a config.json leaves out (not Qwen2.5-0.5B's values).
HF_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": None, "max_position_embeddings": 32768,
               "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": None,
               "eos_token_id": None}


def check_types(values: dict, source: str) -> None:
    """Refuse a config value of the wrong JSON type (a string "false", a float layer count...)."""
    for key, value in values.items():
        if key == "tie_word_embeddings":
            ok, want = isinstance(value, bool), "true or false"
        elif key in ("rope_theta", "rms_norm_eps"):
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:  # sizes and token ids
            ok = (value is None and key in ("head_dim", "bos_token_id", "eos_token_id")) or (
                isinstance(value, int) and not isinstance(value, bool))
            want = "an integer"
        if not ok:
            raise LoadError(f"{source}: {key} must be {want}, got {value!r}")


@dataclass(frozen=True)
class QwenConfig:
    """Sizes of a Qwen2-architecture decoder. Defaults are Qwen2.5-0.5B's published config.json."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads, as in transformers
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise LoadError(f"invalid Qwen config: {what}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None:
            need(self.hidden_size % self.num_attention_heads == 0,
                 f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                 f"({self.num_attention_heads}) when head_dim is not given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        need(self.head_dim > 0 and self.head_dim % 2 == 0,
             f"head_dim must be a positive even number for rotary embeddings, got {self.head_dim}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "QwenConfig":
        """Take the fields we know from a Hugging Face config dict; refuse what we can't run."""
        if raw.get("model_type", "qwen2") != "qwen2":
            raise LoadError(f"{source}: model_type is {raw['model_type']!r}, expected 'qwen2'")
        if raw.get("hidden_act", "silu") != "silu":
            raise LoadError(f"{source}: hidden_act is {raw['hidden_act']!r}, only 'silu' is supported")
        rope = raw.get("rope_parameters") or {}  # transformers >= 5 nests rope_theta here
        scaling = raw.get("rope_scaling") or {}
        for key, value in (("rope_parameters", rope), ("rope_scaling", scaling)):
            if not isinstance(value, dict):
                raise LoadError(f"{source}: {key} must be an object or null, got {value!r}")
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise LoadError(f"{source}: rope type {rope_type!r} is not supported, only 'default'")
        if raw.get("use_sliding_window"):
            raise LoadError(f"{source}: use_sliding_window is true; sliding-window attention is not supported")
        known = {f.name for f in fields(cls)}
        kwargs = {**HF_DEFAULTS, **{k: v for k, v in raw.items() if k in known}}
        if "rope_theta" in rope:
            kwargs["rope_theta"] = rope["rope_theta"]
        for key in ("bos_token_id", "eos_token_id"):
            if isinstance(kwargs.get(key), list):  # some configs list several; the first is the main one
                kwargs[key] = kwargs[key][0]
        if kwargs["num_key_value_heads"] is None:  # as transformers: null means one per query head
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        check_types(kwargs, source)
        try:
            return cls(**kwargs)
        except LoadError as e:
            raise LoadError(f"{source}: {e}") from None
        except TypeError as e:
            raise LoadError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "QwenConfig":
        """Read a Hugging Face `config.json` (Qwen2 architecture)."""
        return cls.from_dict(read_json_object(path, LoadError, what="config file"), source=str(path))

    def to_hf_dict(self) -> dict:
        """The config.json that transformers' Qwen2ForCausalLM reads back to the same network."""
        d = asdict(self)
        d.update(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            hidden_act="silu",
            attention_dropout=0.0,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=self.num_hidden_layers,
            rope_scaling=None,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
        )
        return d
