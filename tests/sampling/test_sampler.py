"""The KV-cache sampler: cache vs recompute, filters, reproducibility, mesh. Pure JAX
(the transformers parity is in test_sampler_parity.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import models, sampling, sharding

PROMPTS = [[5, 17, 99, 3, 41, 8, 77, 120, 9], [11, 250, 4], [60, 61, 62, 63, 64, 65]]
# Slots of the tiny-llama samplers that do not test slot counts themselves: one count,
# so the engine's programs (shared by every Sampler of the process) compile once.
SLOTS = 16


@functools.cache
def _init(cfg):
    """init_params as one jitted function per config (one compile serves every seed)."""
    return jax.jit(lambda key: models.init_params(cfg, key))


def init_params(cfg, seed):
    return _init(cfg)(jax.random.key(seed))


@functools.cache
def _forward(cfg):
    model = models.Transformer(cfg)
    return jax.jit(lambda p, tokens: model.apply({"params": p}, tokens))


def recompute_greedy(cfg, params, prompt, max_new_tokens, total=None):
    """Test-only slow path: a full forward over the whole sequence at every step, no
    cache. The sequence is right-padded to `total` (default: its final length; pass
    the longest prompt's so one compiled forward serves every prompt and step --
    causal attention: the padding after position t cannot change the logits at t)."""
    forward = _forward(cfg)
    total = total or len(prompt) + max_new_tokens
    seq = list(prompt)
    for _ in range(max_new_tokens):
        logits = forward(params, jnp.asarray([seq + [0] * (total - len(seq))]))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_kv_cache_decoding_equals_full_recompute():
    cfg = models.get_config("tiny-qwen3")
    params = init_params(cfg, 4)
    outs = sampling.Sampler(cfg, params, num_slots=4).generate(
        PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=24))
    total = max(map(len, PROMPTS)) + 24
    for prompt, out in zip(PROMPTS, outs):
        assert out[0].token_ids == recompute_greedy(cfg, params, prompt, 24, total)


def test_decoding_past_one_cache_block_equals_full_recompute():
    """270 new tokens: slots of 512 cache positions read in two blocks of 256 once the
    fill passes the first; every token still equals the no-cache recompute."""
    cfg = models.get_config("tiny-llama")
    params = init_params(cfg, 9)
    sampler = sampling.Sampler(cfg, params, num_slots=2)
    outs = sampler.generate(PROMPTS[:2], sampling.SamplingParams(temperature=0.0,
                                                                 max_new_tokens=270))
    assert sampler.stats["slot_len"] == 512
    for prompt, out in zip(PROMPTS[:2], outs):
        assert len(out[0].token_ids) == 270
        assert out[0].token_ids == recompute_greedy(cfg, params, prompt, 270, 9 + 270)


def test_logprobs_are_the_raw_model_distribution():
    cfg = models.get_config("tiny-llama")
    params = init_params(cfg, 0)
    out = sampling.Sampler(cfg, params, num_slots=SLOTS).generate(
        [PROMPTS[1]], sampling.SamplingParams(temperature=0.7, top_k=5, max_new_tokens=6,
                                              return_top_k=4))[0][0]
    seq = PROMPTS[1] + out.token_ids
    logits = _forward(cfg)(params, jnp.asarray([seq]))[0]
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1))
    for t, token in enumerate(out.token_ids):
        row = log_probs[len(PROMPTS[1]) - 1 + t]
        assert out.logprobs[t] == pytest.approx(row[token], abs=1e-5)
        assert out.top_k_ids[t] == np.argsort(-row)[:4].tolist()
        np.testing.assert_allclose(out.top_k_logprobs[t], np.sort(row)[::-1][:4], atol=1e-5)
        assert token in np.argsort(-row)[:5]  # top_k=5 was respected


LOGITS = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], np.float32))


@pytest.mark.parametrize("kw,support", [
    (dict(), [0, 1, 2, 3, 4, 5]),
    (dict(top_k=3), [0, 1, 2]),
    (dict(top_p=0.65), [0, 1]),          # 0.4 < 0.65, 0.4 + 0.25 reaches it
    (dict(top_p=0.66), [0, 1, 2]),
    (dict(min_p=0.3), [0, 1, 2]),        # >= 0.12
    # Top-p runs on the top-4 renormalized: .4/.9 + .25/.9 = .722 < .75, so a third token.
    (dict(top_k=4, top_p=0.75), [0, 1, 2]),
    (dict(top_k=2, min_p=0.7), [0]),
])
def test_filters_leave_exact_support(kw, support):
    settings = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) | kw
    out = sampling.filter_logits(jnp.asarray(LOGITS[None]), **settings)
    assert np.flatnonzero(np.isfinite(np.asarray(out[0]))).tolist() == support


def test_temperature_scales_before_filtering():
    # At T=0.5 the distribution sharpens: p ∝ p0^2 -> top_p=0.65 keeps only token 0? 0.4^2
    # normalized: .16/.2734 = .585 < .65 -> tokens 0 and 1.
    out = sampling.filter_logits(jnp.asarray(LOGITS[None]), temperature=0.5, top_k=0, top_p=0.65,
                                 min_p=0.0)
    assert np.flatnonzero(np.isfinite(np.asarray(out[0]))).tolist() == [0, 1]
    np.testing.assert_allclose(np.asarray(out[0, :2]), LOGITS[:2] / 0.5)


def test_empirical_distribution_matches_renormalized_target():
    draws = 40_000
    keys = jax.random.split(jax.random.key(123), draws)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (draws, LOGITS.size))
    tokens = np.asarray(sampling.choose_tokens(keys, logits, 1.0, 4, 1.0, 0.0))
    target = np.exp(LOGITS[:4]) / np.exp(LOGITS[:4]).sum()
    freq = np.bincount(tokens, minlength=6) / draws
    assert freq[4:].sum() == 0
    # Tolerance: 4 standard errors of a binomial proportion at 40k draws (<= 0.01).
    tol = 4 * np.sqrt(target * (1 - target) / draws)
    assert np.all(np.abs(freq[:4] - target) < tol), (freq, target, tol)


def test_greedy_rows_ignore_filters():
    keys = jax.random.split(jax.random.key(0), 2)
    logits = jnp.asarray([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    np.testing.assert_array_equal(sampling.choose_tokens(keys, logits, 0.0, 1, 0.1, 0.5), [1, 0])


def test_samples_reproducible_across_slot_counts_order_and_buckets():
    cfg = models.get_config("tiny-llama")
    params = init_params(cfg, 0)
    sp = sampling.SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)
    all_at_once = sampling.Sampler(cfg, params, num_slots=SLOTS).generate(
        PROMPTS, sp, prompt_keys=[100, 101, 102])
    few_slots = sampling.Sampler(cfg, params, num_slots=2, length_buckets=(16, 64)).generate(
        PROMPTS, sp, prompt_keys=[100, 101, 102])
    # Arrival order (a fresh sampler, same slot count as all_at_once: the slot counts
    # are few_slots' comparison).
    reordered = sampling.Sampler(cfg, params, num_slots=SLOTS).generate(
        [PROMPTS[2], PROMPTS[0]], sp, prompt_keys=[102, 100])
    for i in range(3):
        assert [s.token_ids for s in all_at_once[i]] == [s.token_ids for s in few_slots[i]]
    assert [s.token_ids for s in reordered[0]] == [s.token_ids for s in all_at_once[2]]
    assert [s.token_ids for s in reordered[1]] == [s.token_ids for s in all_at_once[0]]
    # The n samples of a prompt differ from each other, and another seed changes them.
    assert len({tuple(s.token_ids) for s in all_at_once[0]}) == 3
    other = sampling.Sampler(cfg, params, num_slots=SLOTS).generate(
        PROMPTS[:1], sampling.SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12,
                                             seed=8), prompt_keys=[100])
    assert [s.token_ids for s in other[0]] != [s.token_ids for s in all_at_once[0]]


def test_stop_tokens_end_samples():
    cfg = models.get_config("tiny-llama")
    params = init_params(cfg, 0)
    sampler = sampling.Sampler(cfg, params, num_slots=SLOTS)
    greedy = sampler.generate([PROMPTS[0]], sampling.SamplingParams(temperature=0.0,
                                                                     max_new_tokens=10))[0][0]
    stop = greedy.token_ids[4]
    first = greedy.token_ids.index(stop)
    out = sampler.generate([PROMPTS[0]], sampling.SamplingParams(
        temperature=0.0, max_new_tokens=10, stop_token_ids=(stop,)))[0][0]
    assert out.finish_reason == "stop"
    assert out.token_ids == greedy.token_ids[:first + 1]
    assert len(out.logprobs) == len(out.token_ids)


def test_stop_strings_cut_text(tmp_path):
    from distill_jax.tokenizer import train_sentencepiece, load_tokenizer
    from distill_jax.demo import arithmetic
    corpus = [p.question + "\n" + p.solution for p in arithmetic.make_split(0, 0, 300)]
    tok = load_tokenizer(train_sentencepiece(corpus, str(tmp_path / "sp"), vocab_size=400))
    cfg = models.get_config("tiny-llama", vocab_size=tok.vocab_size)
    params = init_params(cfg, 0)
    sampler = sampling.Sampler(cfg, params, tokenizer=tok, num_slots=SLOTS)
    full = sampler.generate([tok.encode("Ada has")], sampling.SamplingParams(
        temperature=1.0, max_new_tokens=30, seed=1))[0][0]
    assert full.text == tok.decode(full.token_ids)
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    assert stop.strip(), "pick a visible stop string"
    cut = sampler.generate([tok.encode("Ada has")], sampling.SamplingParams(
        temperature=1.0, max_new_tokens=30, seed=1, stop_strings=(stop,)))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text.endswith(stop) and full.text.startswith(cut.text)
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)]
    assert stop not in tok.decode(cut.token_ids[:-1])


def test_bad_prompts_are_refused_before_work():
    cfg = models.get_config("tiny-llama")
    params = init_params(cfg, 0)
    sampler = sampling.Sampler(cfg, params, length_buckets=(8, 16), num_slots=4)
    with pytest.raises(ValueError, match="prompt 1 has 17 tokens; with max_new_tokens=4 at most 16"):
        sampler.generate([[1], [1] * 17], sampling.SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside \[0, 256\): \[300\]"):
        sampler.generate([[1, 300]], sampling.SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sampler.generate([[]], sampling.SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match=r"prompt 0: stop_token_ids \[999\] are not in the vocab"):
        sampler.generate([[1]], sampling.SamplingParams(max_new_tokens=4, stop_token_ids=(2, 999)))
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling.SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        sampling.SamplingParams(n=0)


def test_mesh_2_1_4_gives_single_device_greedy_tokens():
    cfg = models.get_config("tiny-qwen2").replace(num_heads=8, num_kv_heads=4, head_dim=8,
                                                  vocab_size=512)
    params = init_params(cfg, 0)
    # One call each way (per-request settings): the greedy requests, and sampled (not
    # greedy) ones, whose tokens agree too -- randomness is per row, not per device.
    greedy = sampling.SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    sampled = sampling.SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3,
                                      return_top_k=2)
    prompts, sp = PROMPTS + PROMPTS, [greedy] * len(PROMPTS) + [sampled] * len(PROMPTS)
    keys = list(range(2 * len(PROMPTS)))
    single = sampling.Sampler(cfg, params, num_slots=8).generate(prompts, sp, prompt_keys=keys)
    mesh = sharding.make_mesh((2, 1, 4))
    sampler = sampling.Sampler(cfg, params, mesh=mesh, num_slots=8)
    assert sampler.params["layers"]["attn"]["k_kernel"].sharding.spec[2] == "tensor"
    sharded = sampler.generate(prompts, sp, prompt_keys=keys)
    for a, b in zip(single[:len(PROMPTS)], sharded[:len(PROMPTS)]):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
    a, b = single[len(PROMPTS):], sharded[len(PROMPTS):]
    assert [[s.token_ids for s in r] for r in a] == [[s.token_ids for s in r] for r in b]
    assert [[s.top_k_ids for s in r] for r in a] == [[s.top_k_ids for s in r] for r in b]
