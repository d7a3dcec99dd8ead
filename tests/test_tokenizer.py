"""Tokenizer backends, chat templates, and parity with transformers' rendering."""
import json
import os

import pytest
import tokenizers
import transformers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from distill_jax.tokenizer import (BUILTIN_CHAT_TEMPLATES, load_tokenizer,
                                   train_sentencepiece)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 * 7?\nShow your work."},
    {"role": "assistant", "content": "<think>\n12 * 7 = 84\n</think>\n\\boxed{84}"},
    {"role": "user", "content": "And 3^4?"},
]


def _corpus(shared_data, n=1500):
    with open(shared_data / "gsm8k_train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [r["question"] + "\n" + r["answer"] for r in rows]


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory, shared_data):
    """A byte-level BPE tokenizer.json + tokenizer_config.json with a jinja chat template."""
    path = tmp_path_factory.mktemp("hf_tok")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = tokenizers.Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(shared_data), trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens(["<think>", "</think>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": BUILTIN_CHAT_TEMPLATES["qwen2.5"],
    }))
    return path


def test_hf_chat_template_and_ids_match_transformers(hf_tokenizer_dir):
    ours = load_tokenizer(hf_tokenizer_dir)
    ref = transformers.AutoTokenizer.from_pretrained(str(hf_tokenizer_dir))
    for messages in (MESSAGES, MESSAGES[1:2]):
        for gen in (True, False):
            text = ours.apply_chat_template(messages, add_generation_prompt=gen)
            assert text == ref.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=gen)
            ids = ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
            ref_ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                              return_dict=False)
            assert ids == list(ref_ids)
            assert ours.decode(ids) == text
    assert ours.eos_id == ref.eos_token_id and ours.pad_id == ref.pad_token_id
    assert ours.token_to_id("<|im_start|>") in ours.special_ids()
    assert ours.decode(ours.encode("<think>\nhi</think>")) == "<think>\nhi</think>"


def test_chat_template_jinja_file_is_used(tmp_path, hf_tokenizer_dir):
    for name in ("tokenizer.json",):
        (tmp_path / name).write_bytes((hf_tokenizer_dir / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text(BUILTIN_CHAT_TEMPLATES["chatml"])
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.apply_chat_template(MESSAGES[1:2]) == (
        "<|im_start|>user\nWhat is 12 * 7?\nShow your work.<|im_end|>\n<|im_start|>assistant\n")


def test_builtin_templates_render_expected_text(hf_tokenizer_dir):
    tok = load_tokenizer(hf_tokenizer_dir)
    user = [{"role": "user", "content": " 2+2? "}]
    tok.bos_token = "<|begin_of_text|>"
    assert tok.apply_chat_template(user, template="llama3") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    tok.bos_token = "<｜begin▁of▁sentence｜>"
    assert tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], template="deepseek-r1") == (
        "<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n")
    assert tok.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}],
        template="deepseek-r1", add_generation_prompt=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>r</think>a<｜end▁of▁sentence｜>")
    assert tok.apply_chat_template(user, template="chatml", assistant_prefix="<think>\n").endswith(
        "<|im_start|>assistant\n<think>\n")
    assert tok.apply_chat_template(user, template="qwen2.5").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_sentencepiece_backend_round_trips_and_keeps_specials(tmp_path, shared_data):
    model = train_sentencepiece(_corpus(shared_data), str(tmp_path / "sp"), vocab_size=500)
    tok = load_tokenizer(model)
    text = tok.apply_chat_template(MESSAGES, assistant_prefix="<think>\n")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.token_to_id(special) in ids  # one token each, never split
    assert tok.eos_id == tok.token_to_id("<|im_end|>")
    assert tok.bos_id == 2 and tok.pad_id == 0
    assert tok.encode("x", add_special_tokens=True)[0] == tok.bos_id
    assert tok.decode(tok.encode("non-ascii: é ✓ 日本")) == "non-ascii: é ✓ 日本"
    assert "<|im_start|>" not in tok.decode(ids, skip_special_tokens=True)
    assert tok.token_to_id("<never-seen-token>") is None
    assert sorted(os.listdir(tmp_path)) == ["sp.model", "sp.vocab"]    # no scratch left


def test_sentencepiece_training_that_stops_midway_leaves_no_model(tmp_path, monkeypatch):
    """The trainer wrote half a .model and died: the prefix gets nothing, so a demo
    rerun (which takes the .model as the tokenizer stage's output) trains again. The
    trainer never writes at the prefix itself, and the .model lands after the .vocab."""
    import sentencepiece as spm
    prefix = str(tmp_path / "sp")
    os.makedirs(tmp_path / ".sp.training" / "left by a killed attempt")
    trained_to = []

    def dies_writing(model_prefix, **_):
        trained_to.append(model_prefix)
        with open(model_prefix + ".model", "wb") as f:
            f.write(b"half a model")
        raise RuntimeError("killed")
    monkeypatch.setattr(spm.SentencePieceTrainer, "Train", dies_writing)
    with pytest.raises(RuntimeError, match="killed"):
        train_sentencepiece(["1 + 1 = 2"], prefix, vocab_size=64)
    assert os.listdir(tmp_path) == []
    assert trained_to == [str(tmp_path / ".sp.training" / "sp")]

    def writes_both(model_prefix, **_):
        for suffix in (".model", ".vocab"):
            with open(model_prefix + suffix, "w") as f:
                f.write(suffix)
    renamed = []
    replace = os.replace
    monkeypatch.setattr(spm.SentencePieceTrainer, "Train", writes_both)
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(b), replace(a, b)))
    assert train_sentencepiece(["1 + 1 = 2"], prefix, vocab_size=64) == prefix + ".model"
    assert renamed == [prefix + ".vocab", prefix + ".model"]
    assert sorted(os.listdir(tmp_path)) == ["sp.model", "sp.vocab"]


def test_bad_paths_name_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer path .*missing.model does not exist"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load SentencePiece model .*bad.model"):
        load_tokenizer(bad)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load .*tokenizer.json"):
        load_tokenizer(tmp_path)


def test_missing_role_and_template_errors(hf_tokenizer_dir):
    tok = load_tokenizer(hf_tokenizer_dir)
    with pytest.raises(ValueError, match="message 0 needs 'role' and 'content'"):
        tok.apply_chat_template([{"content": "x"}])
    tok._chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


R1_MARKERS = ["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>",
              "<think>", "</think>"]


def test_hf_with_special_tokens_appends_missing_markers(hf_tokenizer_dir):
    base = load_tokenizer(hf_tokenizer_dir)
    size, think_id = base.vocab_size, base.token_to_id("<think>")
    sample = "q<｜User｜>x<｜Assistant｜><think>y"
    base_ids = base.encode(sample)
    tok = base.with_special_tokens(R1_MARKERS + ["<|im_end|>", "<｜User｜>"])
    # The four new markers take the next ids in order; added tokens keep theirs.
    assert [tok.token_to_id(t) for t in R1_MARKERS] == [size, size + 1, size + 2, size + 3,
                                                         think_id, think_id + 1]
    assert tok.vocab_size == size + 4
    assert tok.token_to_id("<|im_end|>") == base.token_to_id("<|im_end|>")
    assert tok.special_ids() == base.special_ids() | {size, size + 1, size + 2, size + 3}
    assert think_id not in tok.special_ids()  # left alone: still a plain added token
    for marker in R1_MARKERS[:4]:
        ids = tok.encode(f"a{marker}b")
        assert ids.count(tok.token_to_id(marker)) == 1 and tok.decode(ids) == f"a{marker}b"
    assert tok.decode(tok.encode(sample), skip_special_tokens=True) == "qx<think>y"
    # Template and special-token names carry over.
    assert tok.apply_chat_template(MESSAGES) == base.apply_chat_template(MESSAGES)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    # The original is unchanged.
    assert base.vocab_size == size and base.token_to_id("<｜User｜>") is None
    assert base.encode(sample) == base_ids
    # Nothing new to add: the tokenizer itself comes back.
    assert tok.with_special_tokens(R1_MARKERS) is tok


def test_hf_with_special_tokens_reuses_an_existing_vocabulary_entry(hf_tokenizer_dir):
    base = load_tokenizer(hf_tokenizer_dir)
    # A merged word: in the vocabulary, but not one token inside a longer word.
    word = next(t for t in sorted(base._tok.get_vocab()) if len(t) >= 4 and t.isalpha()
                and base.token_to_id(t) not in base.encode(f"x{t}y"))
    tok = base.with_special_tokens([word])
    assert tok.vocab_size == base.vocab_size and tok.token_to_id(word) == base.token_to_id(word)
    assert tok.token_to_id(word) in tok.special_ids()
    assert tok.encode(f"x{word}y").count(tok.token_to_id(word)) == 1


def test_sentencepiece_with_special_tokens(tmp_path, shared_data):
    from sentencepiece import sentencepiece_model_pb2
    base = load_tokenizer(train_sentencepiece(_corpus(shared_data), str(tmp_path / "sp"),
                                              vocab_size=500))
    size = base.vocab_size
    word = next(t for t in ("▁the", "the", "▁is") if base.token_to_id(t) is not None)
    tok = base.with_special_tokens(R1_MARKERS + [word, "<s>"])
    assert [tok.token_to_id(t) for t in R1_MARKERS[:4]] == list(range(size, size + 4))
    assert tok.token_to_id("<think>") == base.token_to_id("<think>")  # already user-defined
    # An ordinary piece and a control piece are retyped in place: same id, now matched whole.
    assert tok.token_to_id(word) == base.token_to_id(word) and tok.vocab_size == size + 4
    assert tok.encode("x<s>y").count(tok.bos_id) == 1 and base.bos_id not in base.encode("x<s>y")
    assert {tok.token_to_id(t) for t in R1_MARKERS + [word, "<s>"]} <= tok.special_ids()
    sample = "<｜User｜>2+2?<｜Assistant｜><think>\n4</think>"
    assert tok.decode(tok.encode(sample)) == sample
    # Encoding is exact for every marker; decoding is not for those holding "▁",
    # SentencePiece's own whitespace symbol, which its decoder turns into a space.
    assert tok.encode("<｜end▁of▁sentence｜>") == [size + 3]
    assert tok.encode("<｜Assistant｜>") == [size + 2]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (base.bos_id, base.eos_id, base.pad_id)
    assert tok.apply_chat_template(MESSAGES) == base.apply_chat_template(MESSAGES)
    assert base.vocab_size == size and base.token_to_id("<｜User｜>") is None
    assert tok.with_special_tokens(R1_MARKERS) is tok
    byte_piece = next(p.piece for p in base._model_proto().pieces
                      if p.type == sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE)
    with pytest.raises(ValueError, match="byte-fallback piece"):
        base.with_special_tokens([byte_piece])


def test_with_special_tokens_rejects_bad_input(hf_tokenizer_dir):
    tok = load_tokenizer(hf_tokenizer_dir)
    with pytest.raises(TypeError, match="sequence of tokens, got the string"):
        tok.with_special_tokens("<think>")
    with pytest.raises(ValueError, match="non-empty strings, got ''"):
        tok.with_special_tokens(["<a>", ""])
