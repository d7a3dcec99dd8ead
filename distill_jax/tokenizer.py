"""One tokenizer interface over SentencePiece `.model` files and HF `tokenizer.json`.

`load_tokenizer(path)` picks the backend from what is on disk. Chat templates
are jinja2, rendered in a sandbox with the same conventions transformers uses
(`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`), so the
`chat_template` in a model's `tokenizer_config.json` (or `chat_template.jinja`)
renders identically. Built-in templates cover models or tokenizers that ship
without one: "chatml", "qwen2.5", "llama3", "deepseek-r1".

`encode` never adds BOS/EOS unless asked (`add_special_tokens=True`): chat
templates that need BOS put it in the text themselves, as in transformers.
"""
from __future__ import annotations

import abc
import datetime
import json
import os
from typing import Any, Iterable, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

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


def compile_chat_template(source: str) -> jinja2.Template:
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
        overrides the tokenizer's own; `assistant_prefix` is appended after the
        generation prompt (e.g. "<think>\\n" to open the reasoning)."""
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
        if add_generation_prompt:
            text += assistant_prefix
        return self.encode(text) if tokenize else text


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str, chat_template: str | None = "chatml"):
        import sentencepiece as spm
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(model_path))
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
        self._special = frozenset(
            i for i in range(self._sp.GetPieceSize()) if self._sp.IsControl(i)
        ) | self._user_defined_ids()

    def _user_defined_ids(self) -> frozenset[int]:
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self._sp.serialized_model_proto())
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        return frozenset(i for i, p in enumerate(proto.pieces) if p.type == user_defined)

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


class HFTokenizer(Tokenizer):
    """`tokenizer.json` through the `tokenizers` library, with `tokenizer_config.json`."""

    def __init__(self, tokenizer_json: str, tokenizer_config: dict[str, Any] | None = None,
                 chat_template: str | None = None):
        import tokenizers
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
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
        self._special = frozenset(
            i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

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
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    if os.path.isdir(path):
        directory = path
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            json_file = os.path.join(path, "tokenizer.json")
        elif os.path.exists(os.path.join(path, "tokenizer.model")):
            return SentencePieceTokenizer(os.path.join(path, "tokenizer.model"),
                                          chat_template or "chatml")
        else:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
    elif path.endswith(".model"):
        return SentencePieceTokenizer(path, chat_template or "chatml")
    elif path.endswith(".json"):
        directory, json_file = os.path.dirname(path), path
    else:
        raise ValueError(f"{path}: expected a SentencePiece .model, a tokenizer.json, or a "
                         "directory holding one")
    config: dict[str, Any] = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: invalid JSON ({e})") from e
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if chat_template is None and "chat_template" not in config and os.path.exists(jinja_path):
        with open(jinja_path) as f:
            config["chat_template"] = f.read()
    if chat_template in BUILTIN_CHAT_TEMPLATES:
        chat_template = BUILTIN_CHAT_TEMPLATES[chat_template]
    return HFTokenizer(json_file, config, chat_template)


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        extra_special_tokens: Sequence[str] = CHATML_SPECIAL_TOKENS + THINK_TOKENS,
                        model_type: str = "bpe") -> str:
    """Trains a small SentencePiece model (used by the demo). Returns the .model path.

    Ids: 0 pad, 1 unk, 2 bos, 3 eos; `extra_special_tokens` are user-defined
    symbols, so they always encode as one token. Byte fallback keeps any text encodable.
    """
    import sentencepiece as spm
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size,
        model_type=model_type, user_defined_symbols=list(extra_special_tokens),
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, byte_fallback=True, character_coverage=1.0,
        split_digits=True, remove_extra_whitespaces=False, add_dummy_prefix=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, minloglevel=2, num_threads=2)
    return model_prefix + ".model"
