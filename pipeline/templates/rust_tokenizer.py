"""A tokenizer folder that declares transformers' generic `TokenizersBackend`, loaded with the
`tokenizers` library alone.

The data stages use a dozen read-only parts of a tokenizer: the Rust backend, the special tokens,
the added tokens, the chat template, id/token conversion and decoding. Importing transformers for
them costs about a second of every validate, pack and report (its import pulls huggingface_hub,
httpx and more). `RustTokenizer.load` builds the same parts from the folder's files when the folder
is one that `TokenizersBackend.from_pretrained` (transformers 5.23) loads without changing the
backend: it then only reads tokenizer.json, the config's named and extra special tokens and the
chat template. For any other folder (another class, special tokens the backend lacks, truncation,
padding, bos/eos post-processing, a vocabulary above 100k that transformers may patch, several
templates, legacy token files) `load` returns None and the caller uses transformers.
tests/test_rust_tokenizer.py holds both loaders equal on every folder the tests build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order."""
_INERT_KEYS = frozenset({
    "backend", "tokenizer_class", "chat_template", "model_max_length", "is_local", "local_files_only",
    "padding_side", "truncation_side", "model_input_names", "added_tokens_decoder", "extra_special_tokens",
    "additional_special_tokens", "clean_up_tokenization_spaces", "split_special_tokens", "add_prefix_space",
    "errors", "use_default_system_prompt", "legacy", "spaces_between_special_tokens", "processor_class",
    "name_or_path", "files_loaded",
} | set(NAMED_TOKENS))
"""tokenizer_config.json keys whose effect on the parts above is replicated here (or is none)."""
_LEGACY_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.json", "additional_chat_templates")
_MISTRAL_PATCH_VOCAB = 100_000  # above it, TokenizersBackend may rewrite the pre-tokenizer's regex
_TOKEN_FLAGS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _content(token: Any) -> str | None:
    """A special token's text as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


class RustTokenizer:
    """The read-only parts of a `TokenizersBackend` that sftpack's data stages use."""

    class_name = "TokenizersBackend"
    """The transformers class this stands in for; the tokenizer identity (fingerprint) records it."""
    is_fast = True

    def __init__(self, folder: Path, backend: Tokenizer, special_tokens_map: dict[str, str], extra: list[str],
                 added_tokens_decoder: dict[int, Any], chat_template: str | None):
        self.name_or_path = str(folder)
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special_tokens_map = special_tokens_map
        """Named special tokens (bos_token, ...) that are set, as transformers' special_tokens_map."""
        self._extra = extra
        self.added_tokens_decoder = dict(sorted(added_tokens_decoder.items()))
        self.added_tokens_encoder = {token.content: index for index, token in self.added_tokens_decoder.items()}

    @classmethod
    def load(cls, folder: str | Path) -> "RustTokenizer | None":
        """The folder's tokenizer, or None when loading it takes transformers (see the module docstring).

        A file that cannot be read or parsed also gives None: transformers then says what is wrong.
        """
        folder = Path(folder)
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or config.get("tokenizer_class") != cls.class_name \
                or not (folder / "tokenizer.json").is_file() or any((folder / name).exists() for name in _LEGACY_FILES) \
                or set(config) - _INERT_KEYS or config.get("split_special_tokens") \
                or config.get("clean_up_tokenization_spaces") or not isinstance(config.get("chat_template", ""), str):
            return None
        named = {name: _content(config[name]) for name in NAMED_TOKENS if config.get(name) is not None}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if not isinstance(extra, list):
            return None  # a dict: model-specific named tokens
        extra = [_content(token) for token in extra]
        if None in named.values() or None in extra:
            return None
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception; transformers words the error
            return None
        if backend.truncation is not None or backend.padding is not None or backend.post_processor is None \
                or backend.get_vocab_size() > _MISTRAL_PATCH_VOCAB:
            return None
        decoder = backend.get_added_tokens_decoder()
        added = {token.content: (index, token) for index, token in decoder.items()}
        if any(token not in added for token in [*named.values(), *extra]):
            return None  # transformers would add it to the backend
        for index, token in (config.get("added_tokens_decoder") or {}).items():
            if not isinstance(token, dict) or token.get("content") not in added:
                return None
            known_index, known = added[token["content"]]
            if int(index) != known_index or any(token.get(flag) != getattr(known, flag) for flag in _TOKEN_FLAGS):
                return None
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        backend.no_truncation()
        backend.encode_special_tokens = False
        return cls(folder, backend, named, extra, decoder, template)

    # ------------------------------------------------------------ special tokens

    def __getattr__(self, name: str) -> Any:
        """bos_token, eos_token, ... (None when unset) and their *_id."""
        if name in NAMED_TOKENS:
            return self.special_tokens_map.get(name)
        if name.endswith("_token_id") and name[:-3] in NAMED_TOKENS:
            token = self.special_tokens_map.get(name[:-3])
            return None if token is None else self.backend_tokenizer.token_to_id(token)
        raise AttributeError(name)

    @property
    def all_special_tokens(self) -> list[str]:
        """Named, then extra special tokens, each once (as transformers lists them)."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._extra]))

    def get_chat_template(self) -> str:
        """The folder's chat template.

        Raises:
            ValueError: it has none (transformers' message).
        """
        if self.chat_template is None:
            raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set and no "
                             "template argument was passed!")
        return self.chat_template

    # ------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self.added_tokens_encoder)

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(index)) for index in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        """Ids; a token outside the vocabulary gives the unk token's id (None without one)."""
        if isinstance(tokens, str):
            found = self.backend_tokenizer.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.backend_tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of `ids`; no clean-up of spaces (load declines folders that ask for it)."""
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = False, **_: Any) -> list[str]:
        return self.backend_tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=skip_special_tokens)
