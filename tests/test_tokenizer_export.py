"""Extending a tokenizer with chat markers and exporting it: our loader and
transformers' AutoTokenizer must read back the same ids and the same prompts."""
import json
import os

import pytest
import tokenizers
import transformers
from tokenizers import decoders, models as tok_models, pre_tokenizers, processors, trainers

from distill_jax.tokenizer import BUILTIN_CHAT_TEMPLATES, load_tokenizer, train_sentencepiece

R1_MARKERS = ["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>",
              "<think>", "</think>"]
BOS, EOS = R1_MARKERS[0], R1_MARKERS[3]

SYSTEM_USER = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "What is 12 * 7?\nShow your work."}]
USER_ASSISTANT = [{"role": "user", "content": "And 3^4?"},
                  {"role": "assistant", "content": "<think>\n3^4 = 81\n</think>\n\\boxed{81}"}]
MARKER_TEXT = ("<｜begin▁of▁sentence｜>sys<｜User｜>q 1+1?<｜Assistant｜><think>\nr</think>"
               " a 2<｜end▁of▁sentence｜>")


def _corpus():
    return [f"Question {i}: what is {i} times {i + 3}? Show your work. The answer is "
            f"{i * (i + 3)}, so the final answer is \\boxed{{{i * (i + 3)}}}." for i in range(2000)]


def _bpe_tokenizer(post_processor_bos=False):
    """A tiny byte-level BPE like Qwen's: ChatML specials, no R1 markers."""
    tok = tokenizers.Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if post_processor_bos:  # Llama-style: encode(add_special_tokens=True) prepends BOS
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
            special_tokens=[("<|endoftext|>", 0)])
    return tok


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    _bpe_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": 4096,
        "chat_template": BUILTIN_CHAT_TEMPLATES["qwen2.5"]}))
    return path


@pytest.fixture(scope="module")
def r1_export(bpe_dir, tmp_path_factory):
    """The BPE extended with the R1 markers, saved with the deepseek-r1 template."""
    tok = load_tokenizer(bpe_dir).with_special_tokens(R1_MARKERS)
    tok.bos_token, tok.eos_token = BOS, EOS
    out = tmp_path_factory.mktemp("r1_export")
    written = tok.save_pretrained(str(out), chat_template="deepseek-r1")
    return tok, out, written


def _assert_same_as_transformers(ours, ref, conversation, add_generation_prompt):
    text = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                    template=None)
    assert text == ref.apply_chat_template(conversation, tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
    ids = ours.encode(text)
    assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                    tokenize=True) == ids
    ref_ids = ref.apply_chat_template(conversation, tokenize=True, return_dict=False,
                                      add_generation_prompt=add_generation_prompt)
    assert list(ref_ids) == ids
    assert ours.decode(ids) == text == ref.decode(ids)
    return text, ids


def test_deepseek_r1_export_renders_and_tokenizes_like_transformers(r1_export):
    tok, out, written = r1_export
    assert sorted(written) == ["special_tokens_map.json", "tokenizer.json",
                               "tokenizer_config.json"]
    assert sorted(os.listdir(out)) == sorted(written)  # no temp files left behind
    ours = load_tokenizer(out)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    assert ours.vocab_size == tok.vocab_size == len(ref)
    bos = ours.token_to_id(BOS)

    text, ids = _assert_same_as_transformers(ours, ref, SYSTEM_USER, True)
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 12 * 7?\nShow your work."
                    "<｜Assistant｜><think>\n")
    # BOS comes from the template text, once: transformers must not add a second.
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[-2:] == [ours.token_to_id("<think>"), ours.encode("\n")[0]]

    text, ids = _assert_same_as_transformers(ours, ref, USER_ASSISTANT, False)
    assert text.endswith("\\boxed{81}<｜end▁of▁sentence｜>")
    assert ids[0] == bos and ids.count(bos) == 1 and ids[-1] == ours.eos_id
    for marker in ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"):
        assert ours.token_to_id(marker) in ids

    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.encode("x y", add_special_tokens=True) == ref.encode("x y")


def test_plain_encode_of_marker_text_matches_transformers(r1_export):
    tok, out, _ = r1_export
    ours = load_tokenizer(out)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = ours.encode(MARKER_TEXT)
    assert ids == tok.encode(MARKER_TEXT) == ref.encode(MARKER_TEXT, add_special_tokens=False)
    for marker in R1_MARKERS:
        assert ids.count(ours.token_to_id(marker)) == 1  # each marker one id, never split
        assert ours.token_to_id(marker) in ours.special_ids()
    assert ours.decode(ids) == MARKER_TEXT
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_exported_tokenizer_config_is_what_transformers_expects(r1_export, bpe_dir):
    tok, out, _ = r1_export
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == BUILTIN_CHAT_TEMPLATES["deepseek-r1"]
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["clean_up_tokenization_spaces"] is False
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        BOS, EOS, "<|endoftext|>")
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["model_max_length"] == 4096  # carried over from the source config
    base_size = load_tokenizer(bpe_dir).vocab_size
    for offset, marker in enumerate(R1_MARKERS):
        entry = config["added_tokens_decoder"][str(base_size + offset)]
        assert entry["content"] == marker and entry["special"] and not entry["normalized"]
    assert json.loads((out / "special_tokens_map.json").read_text(encoding="utf-8")) == {
        "bos_token": BOS, "eos_token": EOS, "pad_token": "<|endoftext|>"}


def test_chatml_export_matches_transformers(bpe_dir, tmp_path):
    tok = load_tokenizer(bpe_dir).with_special_tokens(["<think>", "</think>"])
    tok.save_pretrained(str(tmp_path), chat_template="chatml")
    ours = load_tokenizer(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text, ids = _assert_same_as_transformers(ours, ref, SYSTEM_USER + USER_ASSISTANT, True)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    _assert_same_as_transformers(ours, ref, USER_ASSISTANT, False)
    assert ours.token_to_id("<think>") in ids and ours.eos_id == ref.eos_token_id


def test_without_a_template_argument_the_tokenizer_keeps_its_own(bpe_dir, tmp_path):
    tok = load_tokenizer(bpe_dir)
    tok.save_pretrained(str(tmp_path))
    ours = load_tokenizer(tmp_path)
    assert ours.chat_template_source == BUILTIN_CHAT_TEMPLATES["qwen2.5"]
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    _assert_same_as_transformers(ours, ref, SYSTEM_USER[1:], True)


def test_a_post_processor_bos_is_not_added_twice(tmp_path):
    """A Llama-style tokenizer.json prepends BOS on encode(add_special_tokens=True);
    the export says so (add_bos_token), and a chat template that writes BOS itself
    still gets exactly one."""
    source = tmp_path / "source"
    source.mkdir()
    _bpe_tokenizer(post_processor_bos=True).save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}))
    tok = load_tokenizer(source).with_special_tokens(R1_MARKERS[1:])
    out = tmp_path / "out"
    tok.save_pretrained(str(out), chat_template="deepseek-r1")
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True
    ours = load_tokenizer(out)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    assert ours.encode("x", add_special_tokens=True) == ref.encode("x") == [0] + ours.encode("x")
    _, ids = _assert_same_as_transformers(ours, ref, SYSTEM_USER, True)
    assert ids.count(ours.bos_id) == 1


def test_sentencepiece_export_round_trips(tmp_path):
    model = train_sentencepiece(_corpus(), str(tmp_path / "sp"), vocab_size=380)
    base = load_tokenizer(model)
    tok = base.with_special_tokens(R1_MARKERS)
    assert tok.vocab_size == base.vocab_size + 4  # <think>, </think> were already single
    out = tmp_path / "export"
    assert sorted(tok.save_pretrained(str(out), chat_template="deepseek-r1")) == [
        "tokenizer.model", "tokenizer_config.json"]
    assert sorted(os.listdir(out)) == ["tokenizer.model", "tokenizer_config.json"]
    back = load_tokenizer(out)
    assert back.vocab_size == tok.vocab_size
    assert back.encode(MARKER_TEXT) == tok.encode(MARKER_TEXT)
    for marker in R1_MARKERS:
        assert back.encode(marker) == [tok.token_to_id(marker)]
        assert back.token_to_id(marker) in back.special_ids()
    assert (back.bos_token, back.eos_token, back.pad_token) == (
        tok.bos_token, tok.eos_token, tok.pad_token)
    assert back.chat_template_source == BUILTIN_CHAT_TEMPLATES["deepseek-r1"]
    for conversation, gen in ((SYSTEM_USER, True), (USER_ASSISTANT, False)):
        expected = tok.apply_chat_template(conversation, add_generation_prompt=gen,
                                           template="deepseek-r1")
        assert back.apply_chat_template(conversation, add_generation_prompt=gen) == expected
        assert back.apply_chat_template(conversation, add_generation_prompt=gen,
                                        tokenize=True) == tok.encode(expected)
    # Saved without a template argument, the tokenizer's own (chatml) comes back.
    tok.save_pretrained(str(tmp_path / "own"))
    assert load_tokenizer(tmp_path / "own").apply_chat_template(SYSTEM_USER) == (
        tok.apply_chat_template(SYSTEM_USER))
