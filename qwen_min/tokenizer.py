"""Tokenizers behind one small interface: Qwen's byte-level BPE from tokenizer.json, a tiny byte
tokenizer, the 13-symbol number vocabulary, and the bins vocabulary of value tokens.

All but the last split every digit into its own token, which is what the LLMTIME (digits) encoding
relies on; the bins vocabulary reads the same text a whole value per token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from data.encodings import bin_words
from data.files import atomic_write, read_json_object, write_text

from .errors import LoadError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>")
VALUE_WORD = re.compile(r"^\d\.\d+$")  # a value token of the bins vocabulary, e.g. '0.68'


class Tokenizer:
    """Text <-> token ids. `eos_id` ends a document and doubles as the padding id."""

    def __init__(self, tok: HFTokenizer, name: str, eos_token: str | None = None):
        self.tok, self.name = tok, name
        eos_token = eos_token or next((t for t in EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
        self.eos_id = tok.token_to_id(eos_token) if eos_token else None
        self.pad_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def value_words(self) -> dict[str, int]:
        """{value text: id} when whole numbers such as '0.68' are single tokens (the bins vocabulary),
        else {} (digit-level tokenizers: Qwen's, the byte and number vocabularies)."""
        vocab = self.tok.get_vocab(with_added_tokens=False)
        if "0.00" not in vocab and "0.0" not in vocab:
            return {}
        return {w: i for w, i in vocab.items() if VALUE_WORD.match(w)}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of one token given as text, e.g. '7' or ';'; refuses text that is several tokens."""
        ids = self.encode(token)
        if len(ids) != 1:
            raise LoadError(f"tokenizer {self.name}: {token!r} is {len(ids)} tokens, expected exactly one")
        return ids[0]

    def save(self, directory: str | Path) -> None:
        """tokenizer.json, and a tokenizer_config.json naming its end-of-text token, so that this
        project, transformers' AutoTokenizer and the tokenizers library all read the folder."""
        directory = Path(directory)
        eos = self.tok.id_to_token(self.eos_id) if self.eos_id is not None else None
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos,
                  "clean_up_tokenization_spaces": False}
        atomic_write(directory / "tokenizer.json", lambda tmp: self.tok.save(str(tmp)))
        write_text(directory / "tokenizer_config.json", json.dumps(config, indent=1) + "\n")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (printable ASCII maps to itself)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_tokenizer(name: str = "tiny-random") -> Tokenizer:
    """A byte tokenizer: one token per byte (id = byte value) plus `<|endoftext|>` at 256. No merges,
    so like Qwen's every digit and punctuation mark is its own token."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tok, name)


NUMBER_SYMBOLS = "0123456789.,;"  # every character of number text (data.text's format), each one token


def number_tokenizer() -> Tokenizer:
    """The compact vocabulary of number text: `0`-`9` (ids 0-9), `.` 10, `,` 11, `;` 12, then
    `<|endoftext|>` 13 and `<unk>` 14 for any other character. One token per character."""
    vocab = {ch: i for i, ch in enumerate(NUMBER_SYMBOLS)}
    vocab.update({"<|endoftext|>": len(vocab), "<unk>": len(vocab) + 1})
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tok, "numbers")


def bins_tokenizer(decimals: int = 2) -> Tokenizer:
    """The bins vocabulary: one token per value '0.00' ... '9.99' (ids 0-999 at 2 decimals, a bin's
    index is its value times 100), then ',' , ';' , `<|endoftext|>` and `<unk>`. It reads and writes
    the same text as the digits: "0.68,0.75;" is the four tokens 0.68 , 0.75 ;"""
    words = bin_words(decimals)
    vocab = {w: i for i, w in enumerate(words)}
    for extra in (",", ";", "<|endoftext|>", "<unk>"):
        vocab[extra] = len(vocab)
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(rf"\d\.\d{{{decimals}}}|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tok, f"bins-{decimals}")


def read_tokenizer(directory: Path, name: str) -> Tokenizer:
    """Qwen's tokenizer from `directory`/tokenizer.json, its end-of-text token from tokenizer_config.json."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise LoadError(f"{directory}: no tokenizer.json (the tokenizer must be saved beside the model)")
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for malformed files
        raise LoadError(f"{path}: not a readable tokenizer.json ({e})") from None
    eos = None
    config = directory / "tokenizer_config.json"
    if config.is_file():  # its pad token is the document separator Qwen trains with
        eos = read_json_object(config, LoadError).get("pad_token")
        eos = eos if isinstance(eos, str) and tok.token_to_id(eos) is not None else None
    return Tokenizer(tok, name, eos)
