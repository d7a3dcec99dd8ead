"""Where the assistant turn starts and ends: one answer for every stage.

A trace is generated from a prompt rendered with a chat template, then trained
on as `head + response + tail`, then evaluated from a prompt rendered again. The
three must agree byte for byte on what the assistant turn starts with, or the
student trains on one format and is sampled in another (the classic symptom:
`<think>\\n<think>\\n` in the prompt, because the template already opened the
reasoning and the stage opened it again). `ChatFormat` is the one place that
decides:

  head(prompt)               the conversation up to where the assistant's content
                             starts (what SFT puts before the response);
  generation_prompt(prompt)  what generation and evaluation feed the model: the
                             template's generation prompt, opened with
                             `assistant_prefix` unless the template already ends
                             with it (`Tokenizer.apply_chat_template` decides that);
  opener                     generation_prompt minus head: the part of the
                             assistant turn the prompt already holds (e.g.
                             "<think>\\n"). Generation records it as the trace's
                             `assistant_prefix`, and SFT puts it back in front of
                             the response, so head + opener + text is exactly the
                             prompt the teacher continued.
  tail                       what the template writes after the content (the
                             end-of-turn marker the student learns to stop with).

`ChatFormat.create` refuses a template whose generation prompt does not extend
its rendering of a finished assistant turn (SFT and generation would then
disagree), and a template whose chat markers (`<|im_start|>`, `<｜User｜>`, ...)
are not single tokens of the tokenizer: such markers split into ordinary
tokens, the student never sees its stop token as one id, and generation never
stops. `missing_chat_markers` names them so training can add them
(`data.add_chat_tokens`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from distill_jax.tokenizer import BUILTIN_CHAT_TEMPLATES, Tokenizer

DEFAULT_ASSISTANT_PREFIX = "<think>\n"

_CONTENT = "\x00DISTILL_RESPONSE\x00"
_PROBE_USER = "\x00DISTILL_USER\x00"
# Chat markers as the common formats spell them: ChatML/Llama 3 `<|...|>` and
# DeepSeek's full-width `<｜...｜>`.
_MARKER_PATTERN = re.compile(r"<\|[^|<>\s]+\|>|<｜[^｜<>\s]+｜>")


class ChatFormatError(ValueError):
    """A chat template that cannot be used with this tokenizer as configured."""


def template_name(template: str | None, tokenizer: Tokenizer) -> str:
    if template is None:
        return f"the chat template of {tokenizer.name}"
    return f"chat template {template!r}" if template in BUILTIN_CHAT_TEMPLATES else \
        "the configured jinja chat template"


def chat_markers(tokenizer: Tokenizer, template: str | None = None,
                 system_prompt: str | None = None) -> list[str]:
    """The marker strings a template writes around a user and an assistant turn
    (and its generation prompt), in order of first appearance."""
    rendered = tokenizer.apply_chat_template(
        ChatFormat._messages(system_prompt, _PROBE_USER)
        + [{"role": "assistant", "content": _CONTENT}, {"role": "user", "content": _PROBE_USER}],
        add_generation_prompt=True, template=template)
    found = []
    for marker in _MARKER_PATTERN.findall(rendered):
        if marker not in found:
            found.append(marker)
    if tokenizer.bos_token and rendered.startswith(tokenizer.bos_token) \
            and tokenizer.bos_token not in found:
        found.insert(0, tokenizer.bos_token)
    return found


def missing_chat_markers(tokenizer: Tokenizer, template: str | None = None,
                         system_prompt: str | None = None) -> list[str]:
    """Markers of the template that the tokenizer does not encode as one token."""
    return [m for m in chat_markers(tokenizer, template, system_prompt)
            if len(tokenizer.encode(m)) != 1]


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    tokenizer: Tokenizer
    template: str | None            # a built-in name, jinja source, or None (the tokenizer's)
    system_prompt: str | None
    assistant_prefix: str
    tail: str
    opener: str = ""                # see the module docstring; the same for every prompt

    @classmethod
    def create(cls, tokenizer: Tokenizer, template: str | None = None,
               system_prompt: str | None = None,
               assistant_prefix: str = DEFAULT_ASSISTANT_PREFIX,
               check_markers: bool = True) -> "ChatFormat":
        template = template or None
        system_prompt = system_prompt or None
        if check_markers:
            missing = missing_chat_markers(tokenizer, template, system_prompt)
            if missing:
                marker = missing[0]
                raise ChatFormatError(
                    f"{template_name(template, tokenizer)}: marker {marker!r} is not a single "
                    f"token of tokenizer {tokenizer.name} (it encodes to "
                    f"{len(tokenizer.encode(marker))} tokens; all missing: {missing}). The "
                    "student would never see its end-of-turn as one id. Use a template whose "
                    "markers this tokenizer has (e.g. 'qwen2.5' or 'chatml' for a Qwen "
                    "tokenizer, 'llama3' for Llama 3), or set data.add_chat_tokens=True to add "
                    "them as new special tokens (training grows the embedding and LM head)")
        probe = tokenizer.apply_chat_template(
            cls._messages(system_prompt, _PROBE_USER) + [{"role": "assistant",
                                                           "content": _CONTENT}],
            add_generation_prompt=False, template=template)
        if probe.count(_CONTENT) != 1:
            raise ChatFormatError(f"{template_name(template, tokenizer)} does not render the "
                                  "assistant's content verbatim; cannot locate the response")
        fmt = cls(tokenizer, template, system_prompt, assistant_prefix,
                  probe.split(_CONTENT)[1])
        head, prompt = fmt.head(_PROBE_USER), fmt.generation_prompt(_PROBE_USER)
        if _PROBE_USER in prompt[len(head):]:
            raise ChatFormatError(f"{template_name(template, tokenizer)} renders the user's "
                                  "message after the assistant turn opens")
        if not prompt.startswith(head):
            raise ChatFormatError(
                f"{template_name(template, tokenizer)} opens the assistant turn differently "
                f"when generating ({prompt[len(head) - 40:]!r}...) than when rendering a "
                f"finished turn ({head[-40:]!r}); training on its rendering would teach a "
                "format generation never shows. Use a template that renders both alike")
        return dataclasses.replace(fmt, opener=prompt[len(head):])

    @staticmethod
    def _messages(system_prompt: str | None, user_message: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + [{"role": "user", "content": user_message}]

    def head(self, user_message: str) -> str:
        text = self.tokenizer.apply_chat_template(
            self._messages(self.system_prompt, user_message)
            + [{"role": "assistant", "content": _CONTENT}],
            add_generation_prompt=False, template=self.template)
        return text.split(_CONTENT)[0]

    def generation_prompt(self, user_message: str) -> str:
        return self.tokenizer.apply_chat_template(
            self._messages(self.system_prompt, user_message), add_generation_prompt=True,
            template=self.template, assistant_prefix=self.assistant_prefix)

    def stop_token_ids(self) -> tuple[int, ...]:
        """The template's end-of-turn token (the first token of its tail, when it is a
        special token) first, then the tokenizer's EOS and known end-of-turn tokens:
        what generation stops on and what an export's generation_config lists."""
        ids = []
        tail_ids = self.tokenizer.encode(self.tail)
        if tail_ids and tail_ids[0] in self.tokenizer.special_ids():
            ids.append(tail_ids[0])
        ids += [i for i in self.tokenizer.stop_token_ids() if i not in ids]
        return tuple(ids)

    def generation_prompt_ids(self, user_messages: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(self.generation_prompt(m)) for m in user_messages]
