"""Small tokenizer.json tokenizers shaped like the real ones the R1 recipe meets:
a Qwen-like base (ChatML markers, no DeepSeek markers) and an R1-Distill-like one
(the same vocabulary with DeepSeek's markers added after it, as DeepSeek did)."""
import json
import pathlib

import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from distill_jax.demo import arithmetic
from distill_jax.tokenizer import BUILTIN_CHAT_TEMPLATES

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
R1_MARKERS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]

# The hub template of DeepSeek-R1-Distill models, reduced to what matters here: BOS,
# the markers, earlier answers without their reasoning, and a generation prompt that
# already opens the reasoning.
R1_HUB_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")


# Qwen2's pre-tokenizer (its tokenizer.json): digits split one by one. transformers
# rebuilds a qwen2 model's tokenizer with it, so the toy vocabulary must use it too.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_bpe(vocab_size: int) -> tokenizers.Tokenizer:
    corpus = [p.question + "\n" + p.solution for p in arithmetic.make_split(0, 0, 400)]
    tok = tokenizers.Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=QWEN_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens(["<think>", "</think>"])
    return tok


def write_qwen_like(path: pathlib.Path, vocab_size: int = 400) -> pathlib.Path:
    """A base tokenizer like Qwen2.5's: ChatML special tokens, <think> as added tokens."""
    path.mkdir(parents=True, exist_ok=True)
    _train_bpe(vocab_size).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "chat_template": BUILTIN_CHAT_TEMPLATES["qwen2.5"]}))
    return path


def write_r1_like(path: pathlib.Path, vocab_size: int = 400,
                  chat_template: str = R1_HUB_TEMPLATE) -> pathlib.Path:
    """The same vocabulary with DeepSeek's markers appended as special tokens."""
    path.mkdir(parents=True, exist_ok=True)
    tok = _train_bpe(vocab_size)
    tok.add_special_tokens([tokenizers.AddedToken(m, special=True, normalized=False)
                            for m in R1_MARKERS])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": R1_MARKERS[0],
        "eos_token": R1_MARKERS[1], "pad_token": "<|endoftext|>",
        "chat_template": chat_template}))
    return path
