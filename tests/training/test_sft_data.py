"""The SFT input pipeline: completion masks per template, packing, overlong examples,
host sharding and resumable iterator state."""
import json

import grain
import jax
import numpy as np
import pytest

from distill_jax import models
from distill_jax.chat import ChatFormat, missing_chat_markers
from distill_jax.data import sft
from distill_jax.data.sft import SFTPipeline, encode_example
from distill_jax.data.sources import JsonlSource
from distill_jax.tokenizer import BUILTIN_CHAT_TEMPLATES
from distill_jax.training import losses
from tests.training.conftest import write_traces

RESPONSE = "<think>\n3 + 4 = 7.\n</think>\nThe answer is \\boxed{7}."
TAILS = {"chatml": "<|im_end|>\n", "qwen2.5": "<|im_end|>\n", "llama3": "<|eot_id|>",
         "deepseek-r1": "<｜end▁of▁sentence｜>"}


@pytest.mark.parametrize("template", sorted(BUILTIN_CHAT_TEMPLATES))
def test_loss_mask_covers_exactly_the_response(tokenizer, template):
    # The demo tokenizer has the ChatML markers; the others' are added as training's
    # data.add_chat_tokens does.
    tokenizer = tokenizer.with_special_tokens(missing_chat_markers(tokenizer, template))
    fmt = ChatFormat.create(tokenizer, template)
    assert fmt.tail == TAILS[template]
    ex = encode_example({"prompt": "Ada has 3 apples and gets 4.", "response": RESPONSE}, fmt)
    ids, mask = ex["ids"], ex["loss_mask"].astype(bool)
    assert mask.any() and not mask[0]
    first = int(np.argmax(mask))
    assert mask[first:].all()                       # one contiguous completion span
    assert ids[mask].tolist() == tokenizer.encode(RESPONSE + TAILS[template])
    # (SentencePiece decodes its word-boundary mark "▁" as a space.)
    assert tokenizer.decode(ids[mask].tolist()) == (RESPONSE + TAILS[template]).replace("▁", " ")
    head = tokenizer.decode(ids[~mask].tolist())
    assert "Ada has 3 apples" in head and RESPONSE not in head
    # The whole sequence is the template's own rendering of the conversation.
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Ada has 3 apples and gets 4."},
         {"role": "assistant", "content": RESPONSE}], add_generation_prompt=False,
        template=template)
    if template != "llama3":   # llama3 trims message content; our response keeps it verbatim
        assert tokenizer.decode(ids.tolist()) == tokenizer.decode(tokenizer.encode(full))


def _batches(pipe, n=None):
    out = []
    for b in pipe:
        out.append(b)
        if n and len(out) == n:
            break
    return out


def test_packed_rows_keep_examples_apart(tokenizer, tmp_path):
    write_traces(tmp_path / "t.jsonl", 12)
    pipe = SFTPipeline(JsonlSource(str(tmp_path / "t.jsonl")), tokenizer, seq_len=256,
                       batch_size=2, packing=True)
    for b in _batches(pipe):
        for row in range(2):
            seg, pos = b["segment_ids"][row], b["positions"][row]
            for s in set(seg.tolist()) - {0}:
                idx = np.nonzero(seg == s)[0]
                assert (np.diff(idx) == 1).all() and (pos[idx] == np.arange(len(idx))).all()
            assert not b["loss_mask"][row][seg == 0].any()
    assert max(int(b["segment_ids"].max()) for b in _batches(pipe)) >= 2   # really packed


def test_packing_on_and_off_give_the_same_per_token_loss(tokenizer, tmp_path):
    write_traces(tmp_path / "t.jsonl", 6)
    source = JsonlSource(str(tmp_path / "t.jsonl"))
    cfg = models.get_config("tiny-llama", vocab_size=tokenizer.vocab_size, dtype="float32")
    params = models.init_params(cfg, jax.random.key(0))
    model = models.Transformer(cfg)

    @jax.jit            # one program for every [1, 200] batch of both runs
    def token_losses(inputs, positions, segment_ids, targets):
        logits = model.apply({"params": params}, inputs, positions=positions,
                             segment_ids=segment_ids)
        return losses.token_cross_entropy(logits, targets)

    def per_example_losses(packing):
        pipe = SFTPipeline(source, tokenizer, seq_len=200, batch_size=1, packing=packing,
                           num_epochs=1)
        found = {}
        for b in _batches(pipe):
            tok = np.asarray(token_losses(b["inputs"], b["positions"], b["segment_ids"],
                                          b["targets"]))[0]
            seg = b["segment_ids"][0]
            for s in set(seg.tolist()) - {0}:
                sel = (seg == s) & (b["loss_mask"][0] > 0)
                key = tuple(b["inputs"][0][seg == s][:12].tolist())
                found[key] = tok[sel]
        return found

    padded, packed = per_example_losses(False), per_example_losses(True)
    assert len(padded) == 6 and padded.keys() == packed.keys()
    for key in padded:
        np.testing.assert_allclose(packed[key], padded[key], rtol=1e-5, atol=1e-5)


def test_overlong_examples_are_counted_and_dropped_or_truncated(tokenizer, tmp_path):
    write_traces(tmp_path / "t.jsonl", 10)
    source = JsonlSource(str(tmp_path / "t.jsonl"))
    lengths = [len(encode_example(source[k], ChatFormat.create(tokenizer))["ids"]) - 1
               for k in range(10)]
    cut = sorted(lengths)[5]
    drop = SFTPipeline(source, tokenizer, seq_len=cut, batch_size=1, overlong="drop")
    assert drop.stats.overlong == sum(n > cut for n in lengths) and drop.stats.kept == 10 - \
        drop.stats.overlong
    assert sum(1 for _ in drop) == drop.stats.kept
    trunc = SFTPipeline(source, tokenizer, seq_len=cut, batch_size=1, overlong="truncate",
                        packing=False)
    assert trunc.stats.kept == 10 and sum(1 for _ in trunc) == 10
    with pytest.raises(ValueError, match="all 10 examples are longer than seq_len=8"):
        SFTPipeline(source, tokenizer, seq_len=8, batch_size=1)


def test_empty_and_malformed_datasets_fail_clearly(tokenizer, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        SFTPipeline(JsonlSource(str(tmp_path / "empty.jsonl")), tokenizer, seq_len=64,
                    batch_size=1)
    # Lines are parsed when read (the source holds no records): the first run's length
    # pass reads them all, so a bad line stops the pipeline's construction, by file:line.
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n'
                                        '{"prompt": \n')
    source = JsonlSource(str(tmp_path / "bad.jsonl"))
    assert len(source) == 3 and source[0]["response"] == "b"
    with pytest.raises(ValueError, match=r"bad.jsonl:3: missing field 'response'"):
        source[1]
    with pytest.raises(ValueError, match=r"bad.jsonl:4: malformed JSON"):
        source[2]
    with pytest.raises(ValueError, match=r"bad.jsonl:3: missing field 'response'"):
        SFTPipeline(source, tokenizer, seq_len=64, batch_size=1)


def test_iterator_state_resumes_exactly_and_hosts_split_the_data(tokenizer, tmp_path):
    write_traces(tmp_path / "t.jsonl", 16)
    source = JsonlSource(str(tmp_path / "t.jsonl"))
    pipe = SFTPipeline(source, tokenizer, seq_len=128, batch_size=2, num_epochs=2, seed=3)
    full = _batches(pipe)
    it = iter(pipe.dataset())
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = pipe.dataset().__iter__()
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b in zip(rest, full[3:]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # Two hosts, host_split="examples": each reads half of the examples, none twice.
    seen = []
    for host in range(2):
        p = SFTPipeline(source, tokenizer, seq_len=256, batch_size=2, num_epochs=1,
                        packing=False, process_index=host, process_count=2,
                        host_split="examples")
        assert p.local_batch == 1 and p.stats.overlong == 0
        seen += [tuple(b["inputs"][0].tolist()) for b in p]
    assert len(seen) == 16 and len(set(seen)) == 16


@pytest.mark.parametrize("packing", [False, True])
def test_hosts_split_rows_of_the_one_host_batches(tokenizer, tmp_path, packing):
    """host_split="rows" (the default): host i's batches are rows [2i, 2i+2) of the
    one-host run's global batches, so the global batch does not depend on the host
    count; "examples" gives other batches."""
    write_traces(tmp_path / "t.jsonl", 24)
    source = JsonlSource(str(tmp_path / "t.jsonl"))
    common = dict(seq_len=128, batch_size=4, num_epochs=1, seed=5, packing=packing)
    one_host = _batches(SFTPipeline(source, tokenizer, **common))
    per_host = [_batches(SFTPipeline(source, tokenizer, process_index=h, process_count=2,
                                     **common)) for h in range(2)]
    assert len(one_host) > 1 and all(len(b) == len(one_host) for b in per_host)
    for step, full in enumerate(one_host):
        for k in full:
            np.testing.assert_array_equal(
                np.concatenate([per_host[0][step][k], per_host[1][step][k]]), full[k])
    strided = _batches(SFTPipeline(source, tokenizer, process_index=0, process_count=2,
                                   host_split="examples", **common))
    assert not np.array_equal(strided[0]["inputs"], per_host[0][0]["inputs"])
    with pytest.raises(ValueError, match="host_split must be 'rows' or 'examples'"):
        SFTPipeline(source, tokenizer, host_split="hosts", **common)


def test_offline_kd_rows_line_up_with_teacher_tokens(tokenizer, tmp_path):
    rows = write_traces(tmp_path / "t.jsonl", 3, tokenizer=tokenizer, topk=3)
    fmt = ChatFormat.create(tokenizer)
    ex = encode_example(JsonlSource(str(tmp_path / "t.jsonl"))[0], fmt, topk=2)
    kd = ex["kd_mask"].astype(bool)
    assert ex["ids"][kd].tolist() == rows[0]["token_ids"]      # the teacher's own tokens
    assert ex["topk_ids"][kd].tolist() == [r[:2] for r in rows[0]["top_k_ids"]]
    assert not kd[:int(np.argmax(ex["loss_mask"]))].any()      # nothing on the prompt
    with pytest.raises(ValueError, match="top-3 logprobs, the config asks for top-5"):
        encode_example(JsonlSource(str(tmp_path / "t.jsonl"))[0], fmt, topk=5)


def test_offline_kd_reads_a_binary_sidecar_like_inline_lists(tokenizer, tmp_path):
    """A curated JSONL whose records point at a top-k sidecar (data/topk_store.py, what
    distill-filter writes under topk/) encodes to the same examples as inline lists."""
    from distill_jax.data.topk_store import TopKWriter
    rows = write_traces(tmp_path / "inline.jsonl", 3, tokenizer=tokenizer, topk=3)
    (tmp_path / "curated" / "topk").mkdir(parents=True)
    writer = TopKWriter(str(tmp_path / "curated" / "topk"), "00000", k=3, dtype="float32")
    with open(tmp_path / "curated" / "curated.jsonl", "w") as f:
        for r in rows:
            ref = writer.add(np.asarray(r.pop("top_k_ids")), np.asarray(r.pop("top_k_logprobs")))
            f.write(json.dumps(dict(r, top_k=dict(ref, file="topk/00000"))) + "\n")
    writer.commit()
    fmt = ChatFormat.create(tokenizer)
    inline = JsonlSource(str(tmp_path / "inline.jsonl"))
    sidecar = JsonlSource(str(tmp_path / "curated" / "curated.jsonl"))
    for k in range(3):
        a, b = encode_example(inline[k], fmt, topk=2), encode_example(sidecar[k], fmt, topk=2)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_read_threads_change_the_cpu_cost_not_the_batches(tokenizer, tmp_path, monkeypatch):
    write_traces(tmp_path / "t.jsonl", 12)
    source = JsonlSource(str(tmp_path / "t.jsonl"))
    pipes = {threads: SFTPipeline(source, tokenizer, seq_len=256, batch_size=2, num_epochs=2,
                                  read_threads=threads) for threads in (0, 4)}
    assert [pipes[t].read_options.num_threads for t in (0, 4)] == [0, 4]
    # The options reach grain: each run reads with its own.
    used, to_iter = [], grain.MapDataset.to_iter_dataset

    def recording(self, read_options=None, **kw):
        used.append(read_options and read_options.num_threads)
        return to_iter(self, read_options, **kw)
    monkeypatch.setattr(grain.MapDataset, "to_iter_dataset", recording)
    runs = {threads: _batches(pipe) for threads, pipe in pipes.items()}
    assert used == [0, 4]
    monkeypatch.undo()
    assert len(runs[0]) == len(runs[4]) > 2
    for a, b in zip(runs[0], runs[4]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # -1 reads inline where the process may use at most 2 cores, else with grain's threads.
    monkeypatch.setattr(sft, "available_cores", lambda: 2)
    assert sft.read_options(-1).num_threads == 0
    monkeypatch.setattr(sft, "available_cores", lambda: 8)
    assert sft.read_options(-1) is None and sft.read_options(3).num_threads == 3
    with pytest.raises(ValueError, match="data.read_threads: -2"):
        sft.read_options(-2)
