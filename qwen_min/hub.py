"""Where a model directory lives: a local path, or a hub id fetched once into the Hugging Face cache."""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import LoadError


# what a model directory needs; *.json also brings tokenizer_config.json and the safetensors index
HUB_PATTERNS = ["*.json", "*.safetensors", "merges.txt"]


def looks_like_hub_id(name: str) -> bool:
    """`Org/name`: one slash, no path-like prefix. A path that exists always wins over a hub id."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def resolve_dir(name_or_path: str | Path, alternatives: tuple[str, ...] = ()) -> Path:
    """A local directory as given, or the hub snapshot of `Org/name` (downloaded once, then cached).
    `alternatives`: other names the caller accepts (presets), listed when the name is none of these."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LoadError(f"{path}: expected a model directory (config.json, model.safetensors), got a file")
        return path
    name = str(name_or_path)
    if not looks_like_hub_id(name):
        close = difflib.get_close_matches(name, alternatives, n=1)
        if close:
            raise LoadError(f"{name}: no such directory or preset; did you mean {close[0]}?")
        others = f", or one of {', '.join(alternatives)}" if alternatives else ""
        raise LoadError(f"{name}: no such directory (expected a local model directory, a hub id such as "
                        f"Qwen/Qwen2.5-0.5B-Instruct{others})")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - it is a runtime dependency
        raise LoadError(f"{name}: huggingface_hub is not installed, so hub ids can't be fetched") from None
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise LoadError(f"{name}: not in the local Hugging Face cache and the hub can't be reached (offline?); "
                        f"download it where there is a network (hf download {name} --local-dir models/{name.split('/')[1].lower()}), "
                        f"then pass that directory") from None
    except RepositoryNotFoundError:
        raise LoadError(f"{name}: no such repository on the Hugging Face hub (or it needs a token)") from None
    except Exception as e:  # network errors come in many types; all mean the same to the user
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise LoadError(f"{name}: could not fetch from the Hugging Face hub ({type(e).__name__}: {first_line})") from None
