"""The continuous-batching engine: same bits whatever the schedule, slots refilled,
bounded compilation, its device functions callable alone. Pure JAX: no torch."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import models, sampling, sharding
from distill_jax.sampling import engine
from distill_jax.sampling.sampler import engine_compiles

CFG = models.get_config("tiny-llama")


@pytest.fixture(scope="module")
def params():
    return models.init_params(CFG, jax.random.key(3))


def _mixed_requests():
    """Prompts of two length buckets, with per-request settings: greedy and sampled
    rows, n from 1 to 3, lengths 1..40 and one of 280, stop ids on some, top-k
    logprobs out."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, CFG.vocab_size, size=int(n)).tolist()
               for n in rng.integers(1, 30, size=9)]
    kinds = [dict(temperature=0.0), dict(temperature=0.8, top_p=0.9),
             dict(temperature=1.0, top_k=5), dict(temperature=0.7, min_p=0.1)]
    per_prompt = [sampling.SamplingParams(
        n=1 + i % 3, max_new_tokens=int(rng.integers(1, 41)), seed=11 + i, return_top_k=3,
        stop_token_ids=(5, 6) if i % 4 == 3 else (), **kinds[i % 4]) for i in range(len(prompts))]
    # One long sample: slots of two cache blocks, read through windows of one block or
    # two depending on what else is running, a different mix under each schedule.
    per_prompt[1] = dataclasses.replace(per_prompt[1], max_new_tokens=280)
    return prompts, per_prompt


def _flat(outs):
    return [(s.token_ids, s.logprobs, s.top_k_ids, s.top_k_logprobs, s.finish_reason)
            for samples in outs for s in samples]


def test_static_and_continuous_give_the_same_bits_with_per_request_settings(params):
    prompts, per_prompt = _mixed_requests()
    keys = [1000 + i for i in range(len(prompts))]
    runs = {}
    for scheduler in ("static", "continuous"):
        sampler = sampling.Sampler(CFG, params, num_slots=4, scheduler=scheduler,
                                   length_buckets=(16, 32))
        runs[scheduler] = (sampler.generate(prompts, per_prompt, prompt_keys=keys),
                           dict(sampler.stats))
    (static, static_stats), (continuous, continuous_stats) = runs["static"], runs["continuous"]
    assert continuous_stats["slot_len"] == 512
    assert _flat(static) == _flat(continuous)          # tokens, logprobs, top-k: exact
    assert continuous_stats["decode_steps"] < static_stats["decode_steps"]
    for i, (samples, p) in enumerate(zip(continuous, per_prompt)):
        assert len(samples) == p.n
        for s in samples:
            assert 1 <= len(s.token_ids) <= p.max_new_tokens
            assert len(s.logprobs) == len(s.top_k_ids) == len(s.token_ids)
            assert s.finish_reason == ("stop" if s.token_ids[-1] in p.stop_token_ids
                                       else "length")
    # A request alone gets what it got among the others (the same prompt key).
    alone = sampling.Sampler(CFG, params, num_slots=4, length_buckets=(16, 32)).generate(
        [prompts[2]], per_prompt[2], prompt_keys=[keys[2]])
    assert _flat(alone) == _flat([continuous[2]])
    assert len({tuple(s.token_ids) for s in continuous[2]}) == per_prompt[2].n > 1


def test_continuous_refills_slots_while_static_waits_for_the_longest(params):
    """Known lengths (no stop ids): 12 requests on 4 slots, two of 40 tokens among
    3-token ones. Static decodes each group of 4 until its longest ends; continuous
    keeps the other slots busy, so it needs about total / slots steps plus the tail;
    admitting the longest caps first removes the tail."""
    lengths = [40, 3, 3, 3, 3, 3, 3, 40, 3, 3, 3, 3]
    prompts = [[7 + i, 8, 9] for i in range(len(lengths))]
    per_prompt = [sampling.SamplingParams(temperature=0.0, max_new_tokens=m) for m in lengths]
    steps, utilization = {}, {}
    for scheduler, order in (("static", "arrival"), ("continuous", "arrival"),
                             ("continuous", "longest_first")):
        sampler = sampling.Sampler(CFG, params, num_slots=4, scheduler=scheduler, order=order)
        outs = sampler.generate(prompts, per_prompt)
        assert [len(o[0].token_ids) for o in outs] == lengths
        steps[scheduler, order] = sampler.stats["decode_steps"]
        utilization[scheduler, order] = sampler.stats["utilization"]
    # The first token comes from the prefill, so a sample takes m - 1 decode steps.
    groups = [lengths[g:g + 4] for g in range(0, len(lengths), 4)]
    assert steps["static", "arrival"] == sum(max(g) - 1 for g in groups) == 80
    # The second 40 starts once the 3-token samples ahead of it leave (step ~8).
    total = sum(m - 1 for m in lengths)
    assert total / 4 <= steps["continuous", "arrival"] <= 50 < steps["static", "arrival"]
    assert utilization["continuous", "arrival"] == pytest.approx(
        total / (4 * steps["continuous", "arrival"]))
    # Both 40s from the start, the 3s through the other two slots: the longest bounds it.
    assert steps["continuous", "longest_first"] == max(lengths) - 1


def test_generate_stream_yields_each_prompt_when_its_samples_are_done(params):
    """Short prompts come back while long ones still decode; every prompt once, with
    all its samples, equal to `generate`'s; a sample done at its first token (cap 1)
    frees its slot at once."""
    caps = [30, 1, 2, 30, 3]
    prompts = [[9 + i, 4, 5] for i in range(len(caps))]
    per_prompt = [sampling.SamplingParams(n=2, temperature=0.0, max_new_tokens=m) for m in caps]
    sampler = sampling.Sampler(CFG, params, num_slots=4, order="arrival")
    streamed = list(sampler.generate_stream(prompts, per_prompt))
    order = [i for i, _ in streamed]
    assert sorted(order) == list(range(len(caps)))
    assert order.index(1) < order.index(0) and order.index(2) < order.index(3)
    whole = sampler.generate(prompts, per_prompt)
    assert [_flat([samples]) for _, samples in sorted(streamed)] == [_flat([w]) for w in whole]
    assert [[len(s.token_ids) for s in w] for w in whole] == [[m, m] for m in caps]


def test_compilations_are_bounded_and_settings_never_recompile(params):
    """Counted from XLA's compile events: at most one state init, one decode program
    and one prefill_insert per length bucket (fewer when an earlier test of the
    process compiled the same shapes: the programs are shared); new settings (n and
    seeds too) compile nothing, and neither does a second sampler of the teacher."""
    sampler = sampling.Sampler(CFG, params, num_slots=4, length_buckets=(8, 16), slot_len=256)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 200, size=int(rng.integers(1, 16))).tolist() for _ in range(30)]
    before = engine_compiles()
    sampler.generate(prompts, sampling.SamplingParams(n=2, temperature=1.0, max_new_tokens=4))
    first = engine_compiles() - before
    assert first <= 2 + 2 and sampler.stats["compiles"] == first
    assert len(sampler._programs) == 2 + 2
    others = [sampling.SamplingParams(n=1 + i % 3, temperature=0.3 * (i % 4), top_p=0.5,
                                      top_k=i % 5, min_p=0.05 * (i % 2), max_new_tokens=2 + i % 9,
                                      seed=i, stop_token_ids=(4,)) for i in range(len(prompts))]
    sampler.generate(prompts, others)
    again = sampling.Sampler(CFG, params, num_slots=4, length_buckets=(8, 16), slot_len=256)
    again.generate(prompts[:3], others[:3])
    assert engine_compiles() - before == first


def test_insert_and_decode_steps_run_alone(params):
    """The device functions, called directly: a prompt prefilled into slot 1 of 2,
    three steps, then the rest; the tokens are the greedy ones."""
    model = models.Transformer(CFG)
    prompt = [5, 17, 99, 3, 41]
    tokens = np.zeros((1, 8), np.int32)
    tokens[0, 3:] = prompt
    settings = engine.SlotSettings.from_params(
        [sampling.SamplingParams(temperature=0.0, max_new_tokens=6)], stops=1)
    batch = engine.InsertBatch(
        tokens=tokens, segment_ids=(tokens > 0).astype(np.int32), source=np.asarray([0]),
        slot=np.asarray([1]), seed=np.zeros(1, np.uint32), prompt_key=np.zeros(1, np.uint32),
        sample_index=np.zeros(1, np.uint32), settings=settings)
    insert = jax.jit(functools.partial(engine.prefill_insert, model, top_k_out=0))
    decode = jax.jit(functools.partial(engine.decode_steps, model, num_steps=3, top_k_out=0))
    state = engine.DecodeState.init(CFG, num_slots=2, slot_len=256, stops=1)
    state, first = insert(params, state, batch)
    assert np.asarray(first.emitted)[:, 0].tolist() == [False, True]
    no_refill = jnp.zeros((2,), bool)
    state, out, steps = decode(params, state, no_refill, 1)
    assert int(steps) == 3 and np.asarray(out.emitted).tolist() == [[False] * 3, [True] * 3]
    assert int(state.generated[1]) == 4 and bool(state.active[1])
    state, rest, steps = decode(params, state, no_refill, 1)
    assert int(steps) == 2 and not bool(state.active[1]) and not bool(state.stopped[1])
    drawn = [int(first.tokens[1, 0])] + np.asarray(out.tokens[1]).tolist() + \
        np.asarray(rest.tokens[1, :2]).tolist()
    seq = list(prompt)
    for _ in range(6):
        logits = model.apply({"params": params}, jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert drawn == seq[len(prompt):]
    # A free slot with work waiting stops the loop before any step.
    state, _, steps = decode(params, state, jnp.ones((2,), bool), 1)
    assert int(steps) == 0


def test_bad_requests_are_refused_before_work(params):
    with pytest.raises(ValueError, match="num_slots=3 must be a positive multiple of the "
                                         "data-parallel size 2"):
        sampling.Sampler(CFG, params, mesh=sharding.make_mesh((2, 1, 4)), num_slots=3)
    with pytest.raises(ValueError, match="scheduler 'fifo'"):
        sampling.Sampler(CFG, params, scheduler="fifo")
    sampler = sampling.Sampler(CFG, params, num_slots=2, slot_len=256, length_buckets=(8, 32))
    sp = sampling.SamplingParams(max_new_tokens=240)
    with pytest.raises(ValueError, match=r"prompt 1 has 30 tokens \(length bucket 32\); with "
                                         "max_new_tokens=240 it needs 272 cache slots, more "
                                         "than slot_len=256"):
        sampler.generate([[1, 2], [3] * 30], sp)
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        sampler.generate([[1], [2], [3]], [sp, sp])
    assert sampler.stats == {}     # nothing ran


def test_pure_jax_sampler_tests_do_not_import_torch():
    import subprocess
    import sys
    modules = ["tests.sampling.test_engine", "tests.sampling.test_sampler",
               "tests.sampling.test_logits_processing", "distill_jax.sampling"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "assert 'torch' not in sys.modules, 'torch was imported'\n")
    root = __file__.rsplit("/tests/", 1)[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
