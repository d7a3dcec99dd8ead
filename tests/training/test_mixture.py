"""Weighted data mixtures and startup from the length cache (data.sources)."""
import json
import pickle

import numpy as np
import pytest

from distill_jax.chat import ChatFormat
from distill_jax.data.sft import MixtureSource, SFTPipeline, encode_example
from distill_jax.data.sources import JsonlSource, parse_sources, source_name

STEP = "3 + 4 = 7. "


def _write(path, count, reps, prompt="2 + 2", seed=0):
    """`count` records whose responses repeat a short step `reps` (low, high) times:
    sources with different mean lengths."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for k in range(count):
            n = int(rng.integers(reps[0], reps[1] + 1))
            f.write(json.dumps({"prompt": prompt, "response": STEP * n + f"#{k}"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return (_write(root / "short.jsonl", 24, (0, 1)),
            _write(root / "long.jsonl", 16, (2, 4), prompt="5 + 3", seed=1))


def _mixture(tokenizer, paths, weights, fmt_b=None, **kw):
    fmt = ChatFormat.create(tokenizer)
    specs = [MixtureSource(JsonlSource(p), name=n, weight=w, path=p, chat_format=f)
             for p, n, w, f in zip(paths, ("short", "long"), weights, (fmt, fmt_b or fmt))]
    return SFTPipeline(specs, tokenizer, chat_format=fmt, **kw)


def _tokens(batch):
    mask = (batch["loss_mask"] > 0) & (batch["segment_ids"] > 0)
    return np.bincount(batch["source_ids"][mask], minlength=3)[1:]


def test_weights_are_shares_of_target_tokens(tokenizer, two_sources, tmp_path):
    pipe = _mixture(tokenizer, two_sources, (3.0, 1.0), seq_len=64, batch_size=2,
                    num_epochs=None, seed=1, cache_dir=str(tmp_path))
    short, long = pipe.source_stats
    mean_short, mean_long = (s.target_tokens / s.kept for s in (short, long))
    assert mean_long > 2 * mean_short            # the token weighting matters
    # Per example, the short source is drawn 3 * (mean_long / mean_short) times as often.
    assert short.probability / long.probability == pytest.approx(
        3 * mean_long / mean_short, rel=5e-3)
    totals = np.zeros(2, np.int64)
    it = iter(pipe.dataset())
    for _ in range(1000):
        totals += _tokens(next(it))
    assert totals[0] / totals[1] == pytest.approx(3.0, rel=0.02), totals


def test_mixture_resumes_exactly_with_its_token_counts(tokenizer, two_sources, tmp_path):
    kw = dict(seq_len=64, batch_size=2, num_epochs=2, seed=4, cache_dir=str(tmp_path))
    full = list(_mixture(tokenizer, two_sources, (1.0, 2.0), **kw).iterator())
    assert len(full) > 12
    it = _mixture(tokenizer, two_sources, (1.0, 2.0), **kw).iterator()
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(it.get_state()))        # as the checkpoint stores it
    assert set(state["target_tokens"]) == {"short", "long"}
    resumed = _mixture(tokenizer, two_sources, (1.0, 2.0), **kw).iterator()
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 6
    for a, b in zip(rest, full[6:]):
        assert a.keys() == b.keys() and "source_ids" not in a
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    straight = _mixture(tokenizer, two_sources, (1.0, 2.0), **kw).iterator()
    for _ in straight:
        pass
    assert resumed.tokens_by_source() == straight.tokens_by_source()
    assert sum(resumed.tokens_by_source().values()) == sum(
        int(b["loss_mask"][b["segment_ids"] > 0].sum()) for b in full)


def test_bad_sources_are_refused_naming_the_entry(tmp_path):
    a = _write(tmp_path / "a.jsonl", 2, (1, 1))
    b = _write(tmp_path / "b.jsonl", 2, (1, 1))
    cases = [
        ([{"path": a, "weight": 0}], r"data.sources\[0\] \(.*a.jsonl\): weight must be a finite"),
        ([{"path": a}, {"path": b, "weight": -1.0}], r"data.sources\[1\] .*weight must be"),
        ([{"path": a, "weight": float("nan")}], r"data.sources\[0\] .*weight must be"),
        ([{"path": a}, {}], r"data.sources\[1\] is empty"),
        ([{"path": a}, {"path": a}], r"data.sources\[1\] .*name 'a' is already data.sources\[0\]"),
        ([{"path": a, "name": "x"}, {"path": b, "name": "x"}], r"data.sources\[1\] .*'x'"),
        ([{"path": str(tmp_path / "gone.jsonl")}], r"data.sources\[0\] .*gone.jsonl does not exist"),
        ([{"path": a, "seq_len": 128}], r"data.sources\[0\] .*seq_len=128 exceeds data.seq_len=64"),
        ([{"path": a, "wieght": 2}], r"data.sources\[0\] .*unknown keys \['wieght'\]"),
    ]
    for entries, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_sources(entries, seq_len=64)
    parsed = parse_sources([{"path": a, "weight": 3}, {"path": b, "name": "gen", "seq_len": 32}],
                           seq_len=64)
    assert [(s.name, s.weight, s.seq_len) for s in parsed] == [("a", 3.0, 0), ("gen", 1.0, 32)]
    assert source_name("/data/math/tfds/") == "math"


def test_pipeline_refuses_bad_components(tokenizer, tmp_path):
    a = JsonlSource(_write(tmp_path / "a.jsonl", 2, (1, 1)))
    for specs, message in [
            ([MixtureSource(a, "a", 0.0), MixtureSource(a, "b")], "weight must be"),
            ([MixtureSource(a, "a"), MixtureSource(a, "a")], "duplicate source name 'a'"),
            ([MixtureSource(a, "a", seq_len=99), MixtureSource(a, "b")], "seq_len=99 exceeds")]:
        with pytest.raises(ValueError, match=message):
            SFTPipeline(specs, tokenizer, seq_len=64, batch_size=1)


def test_each_source_renders_with_its_own_format(tokenizer, two_sources):
    fmt_a = ChatFormat.create(tokenizer)
    fmt_b = ChatFormat.create(tokenizer, system_prompt="Add.")
    pipe = _mixture(tokenizer, two_sources, (1.0, 1.0), fmt_b=fmt_b, seq_len=96, batch_size=2,
                    num_epochs=1, packing=False)
    heads = {1: tokenizer.encode(fmt_a.head("2 + 2")), 2: tokenizer.encode(fmt_b.head("5 + 3"))}
    assert heads[1] != heads[2][-len(heads[1]):]
    seen = set()
    for b in pipe:
        for row in range(2):
            s = int(b["source_ids"][row][0])
            head = heads[s]
            assert b["inputs"][row][:len(head)].tolist() == head
            assert not b["loss_mask"][row][:len(head) - 1].any()
            seen.add(s)
    assert seen == {1, 2}
    # A per-source seq_len drops (or truncates) that source's longer examples only.
    long = JsonlSource(two_sources[1])
    cut = sorted(len(encode_example(long[k], fmt_a)["ids"]) - 1 for k in range(len(long)))[8]
    drop, trunc = [SFTPipeline([MixtureSource(JsonlSource(p), n, seq_len=L)
                                for p, n, L in zip(two_sources, "ab", (0, cut))], tokenizer,
                               seq_len=64, batch_size=1, overlong=o).source_stats
                   for o in ("drop", "truncate")]
    assert drop[0].overlong == 0 and drop[1].overlong > 0
    assert drop[1].kept == drop[1].examples - drop[1].overlong and trunc[1].kept == 16


def test_startup_from_the_length_cache(tokenizer, tmp_path, monkeypatch):
    """A second construction tokenises nothing; count_batches equals the full pass."""
    path = _write(tmp_path / "d.jsonl", 30, (0, 4))
    fmt = ChatFormat.create(tokenizer)
    calls = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    cache = str(tmp_path / "cache")
    for packing in (True, False):
        kw = dict(seq_len=48, batch_size=2, num_epochs=2, seed=2, packing=packing,
                  chat_format=fmt, cache_dir=cache)
        first = SFTPipeline(JsonlSource(path, cache), tokenizer, **kw)
        assert bool(calls) == packing     # the one length pass: the first construction only
        expected = sum(1 for _ in first.dataset())      # the whole pipeline, tokenising
        calls.clear()
        again = SFTPipeline(JsonlSource(path, cache), tokenizer, **kw)
        assert again.stats == first.stats and again.stats.overlong > 0
        assert again.count_batches() == expected
        assert not calls, "a second construction must not tokenise"
        if packing:    # the count is cached too, keyed by what it depends on
            assert SFTPipeline(JsonlSource(path, cache), tokenizer, **kw).count_batches() \
                == expected
            three = SFTPipeline(JsonlSource(path, cache), tokenizer, **{**kw, "batch_size": 3})
            assert three.count_batches() == sum(1 for _ in three.dataset()) != expected
            calls.clear()
    # The cache follows the file: one more line is a new fingerprint and a new pass.
    with open(path, "a") as f:
        f.write(json.dumps({"prompt": "2 + 2", "response": STEP}) + "\n")
    changed = SFTPipeline(JsonlSource(path, cache), tokenizer, seq_len=48, batch_size=2,
                          chat_format=fmt, cache_dir=cache)
    assert changed.stats.examples == 31 and calls


def test_jsonl_source_holds_offsets_not_records(tmp_path):
    path = _write(tmp_path / "d.jsonl", 5, (1, 2))
    source = JsonlSource(path)
    assert not hasattr(source, "records")
    assert {k: type(v) for k, v in vars(source).items() if isinstance(v, list)} == {}
    assert source._starts.dtype == np.int64 and len(source) == 5
    copy = pickle.loads(pickle.dumps(source))
    assert copy[4] == source[4] and source[-1] == source[4]


def test_hosts_splitting_examples_read_disjoint_shares_of_each_source(tokenizer, two_sources):
    hosts = [_mixture(tokenizer, two_sources, (1.0, 1.0), seq_len=64, batch_size=4,
                      num_epochs=1, packing=False, process_index=h, process_count=2,
                      host_split="examples", progress=False) for h in range(2)]
    seen = []
    for pipe in hosts:
        assert pipe.local_batch == 2
        seen.append({tuple(row[row > 0].tolist()) for b in pipe for row in b["inputs"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
