"""One tokenizer interface over SentencePiece `.model` files and HF `tokenizer.json`.

`load_tokenizer(path)` picks the backend from what is on disk. Chat templates
are jinja2, rendered in a sandbox with the same conventions transformers uses
(`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`), so the
`chat_template` in a model's `tokenizer_config.json` (or `chat_template.jinja`)
renders identically. Built-in templates cover models or tokenizers that ship
without one: "chatml", "qwen2.5", "llama3", "deepseek-r1".

`encode` never adds BOS/EOS unless asked (`add_special_tokens=True`): chat
templates that need BOS put it in the text themselves, as in transformers.

Every path may be a bucket URL (`gs://...`, any path `storage` takes): tokenizer
files are small, so they are read into memory whole (neither SentencePiece nor
`tokenizers` needs a file name) and written as whole objects.
"""
from __future__ import annotations

import abc
import datetime
import functools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

from distill_jax import storage
from distill_jax.fileio import atomic_open, write_text_atomic

# Special tokens of the ChatML / R1 conventions; the demo's SentencePiece model
# reserves them so they are single tokens.
CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
THINK_TOKENS = ("<think>", "</think>")

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

_QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{% endif %}" + _CHATML)

# Llama 3 (not the 3.1 tool-use preamble): header, blank line, trimmed content, <|eot_id|>.
_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")

# DeepSeek-R1 distill: system text bare after BOS, the assistant turn opened with
# "<think>\n". Unlike the hub template, earlier assistant turns keep their
# reasoning: SFT renders whole traces through this template.
_DEEPSEEK_R1 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% else %}{{ raise_exception('unsupported role ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")

BUILTIN_CHAT_TEMPLATES = {
    "chatml": _CHATML,
    "qwen2.5": _QWEN25,
    "llama3": _LLAMA3,
    "deepseek-r1": _DEEPSEEK_R1,
}


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=64)
def compile_chat_template(source: str) -> jinja2.Template:
    """The compiled template of `source`, compiled once per process: rendering a
    template passed by name or source (`apply_chat_template(template=...)`, what
    ChatFormat does for every example it formats) reuses it. Compiling is ~3 ms of
    jinja parsing and code generation (the render itself was not timed); per example
    of an SFT epoch that was most of the data pipeline's time (BENCHMARKS.md, "Chat template: compiled once").
    Compiled templates are immutable; rendering them from several threads is safe."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class Tokenizer(abc.ABC):
    """What every stage uses: ids in and out, special tokens, chat rendering."""

    def __init__(self, chat_template: str | None, bos_token: str | None, eos_token: str | None,
                 pad_token: str | None, name: str):
        self.name = name
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template_source = chat_template
        self._chat_template = compile_chat_template(chat_template) if chat_template else None

    # Backend-specific.
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str | None: ...

    @abc.abstractmethod
    def special_ids(self) -> frozenset[int]: ...

    @abc.abstractmethod
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...

    # Shared.
    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        pad = self._id(self.pad_token)
        return pad if pad is not None else self.eos_id

    def stop_token_ids(self) -> tuple[int, ...]:
        """EOS plus the end-of-turn tokens of the chat formats this vocabulary has."""
        ids = []
        for token in (self.eos_token, "<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
                      "<｜end▁of▁sentence｜>"):
            token_id = self._id(token)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        return tuple(ids)

    def apply_chat_template(self, messages: Sequence[dict[str, str]],
                            add_generation_prompt: bool = True, tokenize: bool = False,
                            template: str | None = None, assistant_prefix: str = "",
                            **template_kwargs) -> str | list[int]:
        """Renders a conversation. `template` is a built-in name or jinja source and
        overrides the tokenizer's own. `assistant_prefix` opens the assistant turn
        after the generation prompt (e.g. "<think>\\n" to open the reasoning); it is
        added only when the rendered prompt does not already end with it, since
        templates such as DeepSeek-R1's open the reasoning themselves. This is the one
        place that decides it: generation, SFT and evaluation all render through here."""
        if template is not None:
            compiled = compile_chat_template(BUILTIN_CHAT_TEMPLATES.get(template, template))
        elif self._chat_template is not None:
            compiled = self._chat_template
        else:
            raise ValueError(f"tokenizer {self.name} has no chat template; pass template= one of "
                             f"{sorted(BUILTIN_CHAT_TEMPLATES)} or jinja source")
        for i, message in enumerate(messages):
            if "role" not in message or "content" not in message:
                raise ValueError(f"message {i} needs 'role' and 'content': {message!r}")
        text = compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                               **template_kwargs)
        if add_generation_prompt and assistant_prefix and not text.endswith(assistant_prefix):
            text += assistant_prefix
        return self.encode(text) if tokenize else text

    # Vocabulary extension and export.
    def with_special_tokens(self, tokens: Sequence[str]) -> "Tokenizer":
        """A new tokenizer in which every token of `tokens` always encodes as one id.

        Chat markers of a template the base tokenizer does not know (e.g. DeepSeek-R1's
        on a Qwen vocabulary) would otherwise be split into pieces that the model can
        confuse with ordinary text. Tokens that already are single tokens keep their
        id; the others become special tokens at the next free ids, in order (a
        backend may reuse the id of an existing vocabulary entry instead). The chat
        template and the bos/eos/pad names carry over; `self` is not changed, and is
        returned as is when there is nothing to add. Grow the model's embedding to
        the new `vocab_size` with `models.resize_vocabulary`.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot add special tokens")

    def save_pretrained(self, directory: str, chat_template: str | None = None) -> list[str]:
        """Writes the files `load_tokenizer(directory)` (and, for tokenizer.json,
        transformers' AutoTokenizer) needs; returns their names.

        `chat_template` (a built-in name or jinja source) is stored instead of the
        tokenizer's own, so an exported model renders prompts the way it was trained.
        Every file is written atomically (on a bucket: as a whole object).
        """
        directory = os.fspath(directory)
        storage.makedirs(directory)
        return self._save_files(directory, self._template_source(chat_template))

    def _save_files(self, directory: str, chat_template: str | None) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def _template_source(self, chat_template: str | None) -> str | None:
        if chat_template is None:
            return self.chat_template_source
        return BUILTIN_CHAT_TEMPLATES.get(chat_template, chat_template)

    def _special_token_names(self) -> dict[str, str]:
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                 "pad_token": self.pad_token}
        return {key: token for key, token in named.items() if token is not None}

    def _base_tokenizer_config(self, chat_template: str | None) -> dict[str, Any]:
        # Absent names are written as null, so a loader does not fall back to defaults.
        config: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                                  "pad_token": self.pad_token,
                                  "clean_up_tokenization_spaces": False}
        if chat_template is not None:
            config["chat_template"] = chat_template
        return config


def _write_json(path: str, obj: Any) -> None:
    # Unescaped UTF-8, as transformers writes it: exported chat templates stay readable.
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _unique_tokens(tokens: Sequence[str]) -> list[str]:
    """`tokens` without repeats, in order; rejects what cannot be a token."""
    if isinstance(tokens, str):
        raise TypeError(f"expected a sequence of tokens, got the string {tokens!r}")
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    return list(dict.fromkeys(tokens))


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str, chat_template: str | None = "chatml"):
        import sentencepiece as spm
        self._sp = spm.SentencePieceProcessor()
        model_path = os.fspath(model_path)
        try:
            if storage.is_local(model_path):
                self._sp.Load(model_path)
            else:
                self._sp.LoadFromSerializedProto(storage.read_bytes(model_path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot load SentencePiece model {model_path}: {e}") from e

        def piece(i):
            return self._sp.IdToPiece(i) if 0 <= i < self._sp.GetPieceSize() else None
        eos = "<|im_end|>" if self._sp.PieceToId("<|im_end|>") != self._sp.unk_id() else None
        super().__init__(BUILTIN_CHAT_TEMPLATES.get(chat_template, chat_template)
                         if chat_template else None,
                         bos_token=piece(self._sp.bos_id()),
                         eos_token=eos or piece(self._sp.eos_id()),
                         pad_token=piece(self._sp.pad_id()), name=str(model_path))
        self._special = self._control_and_user_defined_ids()

    @classmethod
    def _from_serialized_proto(cls, proto: bytes, chat_template: str | None,
                               bos_token: str | None, eos_token: str | None,
                               pad_token: str | None, name: str) -> "SentencePieceTokenizer":
        """A tokenizer over an in-memory ModelProto, with the given template and names."""
        import sentencepiece as spm
        tokenizer = cls.__new__(cls)
        tokenizer._sp = spm.SentencePieceProcessor()
        tokenizer._sp.LoadFromSerializedProto(proto)
        Tokenizer.__init__(tokenizer, chat_template, bos_token=bos_token, eos_token=eos_token,
                           pad_token=pad_token, name=name)
        tokenizer._special = tokenizer._control_and_user_defined_ids()
        return tokenizer

    def _control_and_user_defined_ids(self) -> frozenset[int]:
        return frozenset(
            i for i in range(self._sp.GetPieceSize()) if self._sp.IsControl(i)
        ) | self._user_defined_ids()

    def _model_proto(self):
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self._sp.serialized_model_proto())
        return proto

    def _user_defined_ids(self) -> frozenset[int]:
        from sentencepiece import sentencepiece_model_pb2
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        return frozenset(i for i, p in enumerate(self._model_proto().pieces)
                         if p.type == user_defined)

    def with_special_tokens(self, tokens):
        """User-defined pieces are what SentencePiece matches whole before segmenting,
        so each token becomes one: appended when new, retyped in place (same id) when
        it is an ordinary or control piece."""
        from sentencepiece import sentencepiece_model_pb2
        piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
        proto = self._model_proto()
        by_text = {piece.piece: piece for piece in proto.pieces}
        changed = False
        for token in _unique_tokens(tokens):
            piece = by_text.get(token)
            if piece is None:
                # Score 0 like the trainer's own user-defined symbols; unused by matching.
                by_text[token] = proto.pieces.add(piece=token, score=0.0,
                                                  type=piece_type.USER_DEFINED)
            elif piece.type == piece_type.USER_DEFINED:
                continue
            elif piece.type in (piece_type.UNKNOWN, piece_type.BYTE):
                raise ValueError(f"{self.name}: {token!r} is the unknown or a byte-fallback "
                                 "piece and cannot become a special token")
            else:
                piece.type = piece_type.USER_DEFINED
            changed = True
        if not changed:
            return self
        return self._from_serialized_proto(
            proto.SerializeToString(), self.chat_template_source, self.bos_token,
            self.eos_token, self.pad_token, self.name)

    def _save_files(self, directory, chat_template):
        with atomic_open(storage.join(directory, "tokenizer.model"), "wb") as f:
            f.write(self._sp.serialized_model_proto())
        _write_json(storage.join(directory, "tokenizer_config.json"),
                    self._base_tokenizer_config(chat_template))
        return ["tokenizer.model", "tokenizer_config.json"]

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def token_to_id(self, token):
        token_id = self._sp.PieceToId(token)
        if token_id == self._sp.unk_id() and token != self._sp.IdToPiece(self._sp.unk_id()):
            return None
        return token_id

    def id_to_token(self, token_id):
        return self._sp.IdToPiece(token_id) if 0 <= token_id < self.vocab_size else None

    def special_ids(self):
        return self._special

    def encode(self, text, add_special_tokens=False):
        ids = list(self._sp.EncodeAsIds(text))
        if add_special_tokens and self._sp.bos_id() >= 0:
            ids = [self._sp.bos_id()] + ids
        return ids

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        # Decode runs between special tokens separately so user-defined symbols keep
        # their exact text and surrounding whitespace is not collapsed.
        return self._sp.DecodeIds(ids)


def _token_content(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content")
    raise ValueError(f"unreadable special token entry {value!r}")


# tokenizer_config.json settings that say nothing about the vocabulary, so an export
# keeps them.
_KEPT_CONFIG_KEYS = ("model_max_length", "padding_side", "truncation_side")


class HFTokenizer(Tokenizer):
    """`tokenizer.json` through the `tokenizers` library, with `tokenizer_config.json`."""

    def __init__(self, tokenizer_json: str, tokenizer_config: dict[str, Any] | None = None,
                 chat_template: str | None = None):
        import tokenizers
        tokenizer_json = os.fspath(tokenizer_json)
        try:
            if storage.is_local(tokenizer_json):
                self._tok = tokenizers.Tokenizer.from_file(tokenizer_json)
            else:
                self._tok = tokenizers.Tokenizer.from_str(storage.read_text(tokenizer_json))
        except Exception as e:  # the Rust side raises a plain Exception
            raise ValueError(f"cannot load {tokenizer_json}: {e}") from e
        config = tokenizer_config or {}
        template = chat_template or config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        super().__init__(template, bos_token=_token_content(config.get("bos_token")),
                         eos_token=_token_content(config.get("eos_token")),
                         pad_token=_token_content(config.get("pad_token")),
                         name=str(tokenizer_json))
        self._special = self._added_special_ids()
        self._kept_config = {key: config[key] for key in _KEPT_CONFIG_KEYS if key in config}

    @classmethod
    def _from_tokenizers(cls, tok, chat_template: str | None, bos_token: str | None,
                         eos_token: str | None, pad_token: str | None, name: str,
                         kept_config: dict[str, Any]) -> "HFTokenizer":
        """A tokenizer over an in-memory `tokenizers.Tokenizer`."""
        tokenizer = cls.__new__(cls)
        tokenizer._tok = tok
        Tokenizer.__init__(tokenizer, chat_template, bos_token=bos_token, eos_token=eos_token,
                           pad_token=pad_token, name=name)
        tokenizer._special = tokenizer._added_special_ids()
        tokenizer._kept_config = dict(kept_config)
        return tokenizer

    def _added_special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    def with_special_tokens(self, tokens):
        """Added tokens (special or not) are matched whole before pre-tokenization, so
        they are left as they are; any other token becomes a special added token. One
        already in the model's vocabulary keeps its id (the `tokenizers` library reuses
        it); a new one is appended."""
        import tokenizers
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        new = [token for token in _unique_tokens(tokens) if token not in added]
        if not new:
            return self
        # A copy through its JSON form: the original must not change.
        tok = tokenizers.Tokenizer.from_str(self._tok.to_str())
        # normalized=False: match the raw text, so a normalizer cannot break a marker.
        tok.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)
                                for token in new])
        return self._from_tokenizers(tok, self.chat_template_source, self.bos_token,
                                     self.eos_token, self.pad_token, self.name,
                                     self._kept_config)

    def _save_files(self, directory, chat_template):
        write_text_atomic(storage.join(directory, "tokenizer.json"),
                          self._tok.to_str(pretty=True))
        _write_json(storage.join(directory, "tokenizer_config.json"),
                    self._transformers_config(chat_template))
        _write_json(storage.join(directory, "special_tokens_map.json"),
                    self._special_token_names())
        return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

    def _transformers_config(self, chat_template: str | None) -> dict[str, Any]:
        """tokenizer_config.json as transformers' PreTrainedTokenizerFast reads it."""
        config = {**self._kept_config, **self._base_tokenizer_config(chat_template),
                  **self._bos_eos_flags(), "tokenizer_class": "PreTrainedTokenizerFast"}
        config["added_tokens_decoder"] = {
            str(token_id): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                            "normalized": t.normalized, "single_word": t.single_word,
                            "special": t.special}
            for token_id, t in sorted(self._tok.get_added_tokens_decoder().items())}
        return config

    def _bos_eos_flags(self) -> dict[str, bool]:
        """add_bos_token/add_eos_token describing what tokenizer.json's post-processor
        adds. transformers rebuilds the post-processor from these flags when they are
        present, so they are written only when BOS/EOS explain it entirely; otherwise
        the post-processor in tokenizer.json stays authoritative."""
        ids = self._tok.encode("", add_special_tokens=True).ids
        add_bos = self.bos_id is not None and ids[:1] == [self.bos_id]
        add_eos = self.eos_id is not None and ids[int(add_bos):] == [self.eos_id]
        if ids != [self.bos_id] * int(add_bos) + [self.eos_id] * int(add_eos):
            return {}
        return {"add_bos_token": add_bos, "add_eos_token": add_eos}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id):
        return self._tok.id_to_token(token_id)

    def special_ids(self):
        return self._special

    def encode(self, text, add_special_tokens=False):
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load_tokenizer(path: str, chat_template: str | None = None) -> Tokenizer:
    """A SentencePiece `.model` file, a `tokenizer.json` file, or a directory holding either.

    `chat_template` (a built-in name or jinja source) overrides the tokenizer's own.
    """
    path = os.fspath(path)
    storage.check_path(path, "tokenizer path")
    if not storage.exists(path):
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    if storage.isdir(path):
        directory = path
        if storage.exists(storage.join(path, "tokenizer.json")):
            json_file = storage.join(path, "tokenizer.json")
        elif storage.exists(storage.join(path, "tokenizer.model")):
            return _sentencepiece_from_directory(path, chat_template)
        else:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
    elif path.endswith(".model"):
        return SentencePieceTokenizer(path, chat_template or "chatml")
    elif path.endswith(".json"):
        directory, json_file = storage.dirname(path), path
    else:
        raise ValueError(f"{path}: expected a SentencePiece .model, a tokenizer.json, or a "
                         "directory holding one")
    config = _read_tokenizer_config(directory, chat_template)
    if chat_template in BUILTIN_CHAT_TEMPLATES:
        chat_template = BUILTIN_CHAT_TEMPLATES[chat_template]
    return HFTokenizer(json_file, config, chat_template)


def _read_tokenizer_config(directory: str, chat_template: str | None) -> dict[str, Any]:
    """tokenizer_config.json of `directory` ({} when absent), with the template of
    chat_template.jinja when the config has none and none was passed."""
    config: dict[str, Any] = {}
    config_path = storage.join(directory, "tokenizer_config.json")
    if storage.exists(config_path):
        try:
            config = json.loads(storage.read_text(config_path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: invalid JSON ({e})") from e
    jinja_path = storage.join(directory, "chat_template.jinja")
    if chat_template is None and "chat_template" not in config and storage.exists(jinja_path):
        config["chat_template"] = storage.read_text(jinja_path)
    return config


def _sentencepiece_from_directory(directory: str,
                                  chat_template: str | None) -> SentencePieceTokenizer:
    """tokenizer.model plus what `save_pretrained` wrote beside it: the chat template
    and special-token names, so an exported tokenizer loads as it was saved."""
    config = _read_tokenizer_config(directory, chat_template)
    template = chat_template or config.get("chat_template") or "chatml"
    tokenizer = SentencePieceTokenizer(storage.join(directory, "tokenizer.model"), template)
    for key in ("bos_token", "eos_token", "pad_token"):
        if key in config:
            setattr(tokenizer, key, _token_content(config[key]))
    return tokenizer


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        extra_special_tokens: Sequence[str] = CHATML_SPECIAL_TOKENS + THINK_TOKENS,
                        model_type: str = "bpe") -> str:
    """Trains a small SentencePiece model (used by the demo). Returns the .model path.

    Ids: 0 pad, 1 unk, 2 bos, 3 eos; `extra_special_tokens` are user-defined
    symbols, so they always encode as one token. Byte fallback keeps any text encodable.
    A bucket `model_prefix` gets the .vocab, then the .model uploaded as whole
    objects. Locally the trainer writes both into a scratch directory next to
    them (`.<name>.training/`, cleared first: a killed attempt's is not left to
    grow), and they are renamed into place .vocab first: a .model at
    `model_prefix` is whole, and its .vocab is too (the demo pipeline takes the
    .model as the sign that the stage is done), whenever the run stopped. The
    scratch path is fixed by `model_prefix`, so the .model, which records the
    path it was trained to, is the same bytes from one run to the next.
    """
    if not storage.is_local(model_prefix):
        return _train_sentencepiece_to_bucket(texts, model_prefix, vocab_size,
                                              extra_special_tokens, model_type)
    import sentencepiece as spm
    directory, name = os.path.split(os.path.abspath(model_prefix))
    scratch = os.path.join(directory, f".{name}.training")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(texts), model_prefix=os.path.join(scratch, name),
            vocab_size=vocab_size, model_type=model_type,
            user_defined_symbols=list(extra_special_tokens), pad_id=0, unk_id=1, bos_id=2,
            eos_id=3, byte_fallback=True, character_coverage=1.0, split_digits=True,
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            normalization_rule_name="identity", allow_whitespace_only_pieces=True,
            minloglevel=2, num_threads=2)
        for suffix in (".vocab", ".model"):
            os.replace(os.path.join(scratch, name + suffix), model_prefix + suffix)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model_prefix + ".model"


def _train_sentencepiece_to_bucket(texts: Iterable[str], model_prefix: str, vocab_size: int,
                                   extra_special_tokens: Sequence[str], model_type: str) -> str:
    """The trainer writes only local files: train in a temporary directory, then upload."""
    storage.check_path(model_prefix, "SentencePiece model prefix")
    local_dir = tempfile.mkdtemp(prefix="distill_jax-spm-")
    try:
        local_prefix = os.path.join(local_dir, "model")
        train_sentencepiece(texts, local_prefix, vocab_size, extra_special_tokens, model_type)
        for suffix in (".vocab", ".model"):
            with open(local_prefix + suffix, "rb") as f:
                storage.write_bytes_atomic(model_prefix + suffix, f.read())
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
    return model_prefix + ".model"
