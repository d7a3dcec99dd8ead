"""The memory planner: exact terms against real arrays, estimates against measured
peaks, and refusals that say what would fit."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from distill_jax import models, planning, sharding
from distill_jax.models import attention
from distill_jax.sampling import engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_param_bytes_equal_the_shards_on_a_device(shape):
    cfg = models.get_config("tiny-qwen3", vocab_size=512, num_kv_heads=4)
    mesh = sharding.make_mesh(shape)
    params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
    device = jax.devices()[0]
    on_device = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(params)
                    for s in x.addressable_shards if s.device == device)
    assert planning.param_bytes_per_device(cfg, dict(zip(("data", "fsdp", "tensor"), shape))) \
        == on_device


def test_a_mesh_that_does_not_divide_the_params_is_refused():
    cfg = models.get_config("tiny-qwen3")                   # 2 kv heads
    with pytest.raises(planning.PlanError, match=r"mesh axes tensor \(x4\) do not divide"):
        planning.param_bytes_per_device(cfg, {"data": 1, "fsdp": 2, "tensor": 4})


def test_sampler_terms_equal_the_hand_arithmetic():
    """Slots [slots, kv_heads, slot_len, head_dim] per layer, k and v, sharded over
    data x fsdp (slots) and tensor (kv heads); a prefill's own cache; K steps of outputs."""
    cfg = models.get_config("tiny-llama", dtype="bfloat16")      # 2 layers, 2 kv heads x 16
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    plan = planning.plan_sampling(cfg, mesh, slots=8, prompt_len=32, max_new_tokens=96,
                                  top_k_out=5, backend="cpu")
    # 8 slots over data x fsdp = 4: 2 per device; 1 kv head per device; 32 + 96 positions,
    # rounded up to whole decode blocks (the engine's slot length).
    slot_len = attention.DECODE_BLOCK
    assert plan.terms["kv_cache"] == 2 * 2 * 2 * slot_len * 1 * 16 * 2
    assert plan.terms["outputs"] == 2 * engine.DECODE_STEPS * (4 + 4 + 5 * (4 + 4))
    assert plan.terms["logits"] == 2 * cfg.vocab_size * 4 * 3
    assert plan.slots == 8 and plan.as_dict()["slots"] == 8
    assert f"8 slots (2 per device) of {slot_len} positions" in plan.table()
    # The prefill's own cache: prefill_rows prompts x prompt_len, sharded like the slots;
    # by default one prompt per data-parallel shard (the engine's prefill_batch).
    more = planning.plan_sampling(cfg, mesh, slots=8, prompt_len=32, max_new_tokens=96,
                                  top_k_out=5, backend="cpu", prefill_rows=8)
    one_row = planning.plan_sampling(cfg, mesh, slots=8, prompt_len=32, max_new_tokens=96,
                                     top_k_out=5, backend="cpu", prefill_rows=1)
    cache_row = 2 * 2 * 32 * 1 * 16 * 2
    layer_row = 32 * planning.saved_per_token(cfg, "none", 2) * 2
    # 8 prompts are 2 per device, 4 one, and 1 rounds up to one: one row more is its
    # layer working set (+ xla scores and probabilities, 2 heads per device) and cache.
    assert more.terms["prefill"] - plan.terms["prefill"] == pytest.approx(
        cache_row + layer_row + 2 * 2 * 32 ** 2 * 4, abs=1)
    assert one_row.terms == plan.terms
    assert {k: v for k, v in more.terms.items() if k != "prefill"} == \
        {k: v for k, v in plan.terms.items() if k != "prefill"}
    with pytest.raises(planning.PlanError, match="num_slots=6 .* data-parallel size 4"):
        planning.plan_sampling(cfg, mesh, slots=6, prompt_len=32, max_new_tokens=96)


@pytest.mark.parametrize("mesh,multiple", [({"data": 1, "fsdp": 1, "tensor": 1}, 1),
                                           ({"data": 2, "fsdp": 2, "tensor": 1}, 3),
                                           ({"data": 4, "fsdp": 1, "tensor": 2}, 2)])
def test_slots_that_fit_is_the_largest_multiple_that_fits(mesh, multiple):
    cfg = models.get_config("qwen2.5-0.5b", dtype="bfloat16", param_dtype="bfloat16")
    memory = 4 * planning.GIB
    step = planning.slot_multiple(mesh, multiple)
    assert step == int(np.lcm(multiple, mesh["data"] * mesh["fsdp"]))
    n = planning.slots_that_fit(cfg, mesh, 1024, 2048, memory, top_k_out=4, backend="tpu",
                                multiple=multiple)
    assert 0 < n < planning.MAX_SLOTS and n % step == 0

    def plan(slots):
        return planning.plan_sampling(cfg, mesh, slots, 1024, 2048, memory, top_k_out=4,
                                      backend="tpu")
    assert plan(n).fits and plan(n + step).fits is False


def test_slots_that_fit_is_zero_when_one_group_does_not_and_capped_when_all_do():
    cfg = models.get_config("qwen2.5-0.5b", dtype="bfloat16", param_dtype="bfloat16")
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    assert planning.slots_that_fit(cfg, mesh, 1024, 2048, planning.GIB, backend="tpu") == 0
    tiny = models.get_config("tiny-llama")
    assert planning.slots_that_fit(tiny, {"data": 3, "fsdp": 1, "tensor": 1}, 16, 16,
                                   100 * planning.GIB, backend="cpu") == 4095   # 4096 // 3 x 3


def _generate_config(num_slots=0, mesh=None, max_new_tokens=2048):
    from distill_jax.sampling.config import default_config
    c = default_config()
    c.teacher.checkpoint, c.teacher.preset, c.tokenizer.path = "", "qwen2.5-0.5b", ""
    c.sampling.max_new_tokens, c.sampling.return_top_k = max_new_tokens, 4
    c.num_slots = num_slots
    if mesh is not None:
        c.mesh = mesh
    return c


def test_resolve_num_slots_rules():
    assert _generate_config().num_slots == 0              # the default is the planner's count
    # Given: used as is, when a multiple of data x fsdp (8 here) and of the hosts.
    assert planning.resolve_num_slots(_generate_config(48), 1024, num_devices=8,
                                      num_hosts=2) == (48, "num_slots=48, as configured")
    # 0 with known memory: the most that fit, for the teacher and this prompt bucket.
    memory = 4 * planning.GIB
    slots, rule = planning.resolve_num_slots(_generate_config(), 1024, num_devices=8,
                                             device_memory=memory, backend="tpu", num_hosts=2)
    cfg = models.config_from_section(_generate_config().teacher)
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    assert slots == planning.slots_that_fit(cfg, mesh, 1024, 2048, memory, top_k_out=4,
                                            backend="tpu", multiple=2) > 0
    assert rule.startswith("num_slots=0: the most that fit") and f"({slots}," in rule
    # 0 where the device reports no memory (CPU): 64, rounded down to the multiple.
    assert planning.device_memory_bytes() is None
    assert planning.resolve_num_slots(_generate_config(), 1024, num_devices=8)[0] == 64
    slots, rule = planning.resolve_num_slots(_generate_config(), 1024, num_devices=8,
                                             num_hosts=3)
    assert slots == 48 and "no memory" in rule and "multiple of 24" in rule
    assert planning.resolve_num_slots(
        _generate_config(mesh={"data": 1, "fsdp": 1, "tensor": 2}), 1024, num_devices=2,
        device_memory=None)[0] == planning.DEFAULT_NUM_SLOTS
    assert planning.resolve_num_slots(_generate_config(mesh=None), 1024, num_devices=5)[0] == 60


def test_resolve_num_slots_refuses_a_bad_multiple_and_a_device_nothing_fits():
    with pytest.raises(ValueError, match=r"num_slots=12 is not a multiple of the "
                                         r"data-parallel size 8 \(mesh data 4 x fsdp 2\)"):
        planning.resolve_num_slots(_generate_config(12, {"data": 4, "fsdp": 2, "tensor": 1}),
                                   1024, num_devices=8)
    with pytest.raises(ValueError, match=r"num_slots=16 .* data-parallel size 8 .* 3 hosts"):
        planning.resolve_num_slots(_generate_config(16), 1024, num_devices=8, num_hosts=3)
    # Not even 8 slots of 0.5b fit 1 GiB with every device on data; sharding the params does.
    with pytest.raises(planning.PlanError, match="not even 8 slots") as e:
        planning.resolve_num_slots(_generate_config(), 1024, num_devices=8,
                                   device_memory=planning.GIB, backend="tpu")
    assert "these fit" in str(e.value) and "num_slots=" in str(e.value)


@pytest.mark.slow
def test_estimates_are_within_20_percent_of_measured_peaks():
    """Fresh processes run real steps (see benchmarks/memory_plan_vs_measured.py):
    remat none and full on the benchmark's model, and dots with 2 microbatches on
    its second (wider) shape, at smaller batch x seq than the benchmark's own cases
    (a process's cost is mostly its start and compile; the ratios stay near 1)."""
    import memory_plan_vs_measured as bench
    cases = [("remat none", {"remat_policy": "none"}, 4, 128, 1),
             ("remat full", {"remat_policy": "full"}, 4, 128, 1),
             ("wider model, dots, 2 microbatches", dict(bench.WIDE, remat_policy="dots"),
              8, 256, 2)]
    rows = bench.run_cases(cases)
    assert len(rows) == 3
    for row in rows:
        assert 0.8 <= row["planned/measured"] <= 1.2, row


def test_remat_and_microbatches_lower_the_estimate():
    cfg = models.get_config("qwen2.5-1.5b", dtype="bfloat16")
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    by_policy = {p: planning.plan_training(cfg.replace(remat_policy=p), mesh, 64, 4096).total
                 for p in ("none", "dots", "save_qkv_proj", "full")}
    assert by_policy["none"] > by_policy["dots"] > by_policy["save_qkv_proj"] > by_policy["full"]
    one = planning.plan_training(cfg, mesh, 64, 4096, microbatches=1)
    four = planning.plan_training(cfg, mesh, 64, 4096, microbatches=4)
    assert four.terms["activations"] * 4 == one.terms["activations"]
    assert four.terms["params"] == one.terms["params"]


def test_a_70b_student_on_8_devices_of_16_gib_is_refused_with_what_would_fit():
    cmd = [sys.executable, "-m", "distill_jax.cli.plan",
           f"--config={REPO}/configs/r1_distill_llama_70b.py", "--num_devices=8",
           "--device_memory_gib=16", "--config.model.checkpoint=",
           "--config.model.preset=llama-3.3-70b", "--config.data.seq_len=4096"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1
    assert "this train run does not fit" in proc.stderr
    assert "no mesh of 8 devices of 16.00 GiB fits it" in proc.stderr
    assert "it fits on 128 such devices" in proc.stderr, proc.stderr
    # The suggestion is itself a plan that fits, and half the devices are not enough.
    cfg = models.get_config("llama-3.3-70b", param_dtype="bfloat16", dtype="bfloat16",
                            remat_policy="full")
    n, plan = planning.devices_needed(cfg, 64, 4096, 16 * planning.GIB)
    assert n == 128 and plan.fits
    assert planning.suggest_training(cfg, 64, 64, 4096, 1, 16 * planning.GIB) == []


def test_a_config_that_fits_on_another_mesh_gets_that_mesh_suggested():
    cfg = models.get_config("qwen2.5-1.5b", dtype="bfloat16", remat_policy="full")
    plain_data = planning.plan_training(cfg, {"data": 8, "fsdp": 1, "tensor": 1}, 64, 2048,
                                        device_memory=16 * planning.GIB)
    assert plain_data.fits is False            # every device holds all fp32 params + Adam
    found = planning.suggest_training(cfg, 8, 64, 2048, 1, 16 * planning.GIB)
    assert found and all(p.fits for p in found)
    assert all(p.mesh["fsdp"] * p.mesh["tensor"] > 1 for p in found)


def test_planner_numbers_are_deterministic_for_presets():
    cfg = models.get_config("llama-3.1-8b")
    p = planning.plan_training(cfg, {"data": 1, "fsdp": 8, "tensor": 1}, 64, 4096)
    assert p.terms["params"] == pytest.approx(8_030_261_248 * 4 / 8, rel=1e-3)
    assert p.terms["optimizer"] == 2 * p.terms["params"]
    assert np.isclose(p.total, sum(p.terms.values()))


def _plan_7b_generate(tmp_path, *flags):
    """distill-plan on the generate config with a Qwen2.5-7B teacher preset, 8 devices
    of 16 GiB, 512-token prompts + 8192 new: (its stdout, the plan JSON)."""
    import json
    cmd = [sys.executable, "-m", "distill_jax.cli.plan",
           f"--config={REPO}/configs/generate_gsm8k.py",
           "--num_devices=8", "--device_memory_gib=16", "--config.teacher.checkpoint=",
           "--config.teacher.preset=qwen2.5-7b", "--config.tokenizer.path=",
           "--config.sampling.max_new_tokens=8192", "--prompt_len=512",
           "--config.mesh.data=1", "--config.mesh.fsdp=-1", f"--json={tmp_path / 'plan.json'}",
           *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads((tmp_path / "plan.json").read_text())


def test_plan_of_a_generate_config_reports_the_kv_cache(tmp_path):
    stdout, plan = _plan_7b_generate(tmp_path, "--config.num_slots=64")
    cfg = models.get_config("qwen2.5-7b")
    # 64 slots over 8 devices, 8704 positions each, 28 layers x 4 kv heads x 128, bf16,
    # k and v.
    assert plan["terms"]["kv_cache"] == 2 * 28 * 8 * (512 + 8192) * 4 * 128 * 2
    assert cfg.num_layers == 28 and cfg.num_kv_heads == 4 and cfg.head_dim == 128
    assert plan["fits"] is True and "kv_cache" in stdout and plan["slots"] == 64
    assert "note: num_slots=64, as configured" in stdout


def test_plan_of_a_generate_config_with_num_slots_0_states_the_fitting_count(tmp_path):
    stdout, plan = _plan_7b_generate(tmp_path, "--backend=gpu")
    cfg = models.get_config("qwen2.5-7b", dtype="bfloat16", param_dtype="bfloat16")
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    expected = planning.slots_that_fit(cfg, mesh, 512, 8192, 16 * planning.GIB, backend="gpu")
    assert plan["slots"] == expected > 0 and plan["fits"] is True
    assert f"note: num_slots=0: the most that fit ({expected}, a multiple of 8)" in stdout
    assert f"{expected} slots ({expected // 8} per device)" in stdout


def test_the_attention_kernel_is_planned_as_it_resolves_on_the_backend():
    cfg = models.get_config("qwen2.5-1.5b", dtype="bfloat16", remat_policy="none",
                            attention_impl="auto")
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    kernels = {b: planning.plan_training(cfg, mesh, 64, 8192, backend=b).attention
               for b in ("tpu", "gpu", "cpu")}
    assert kernels == {"tpu": "splash", "gpu": "cudnn", "cpu": "blockwise"}
    short = attention.AUTO_XLA_MAX_LEN
    assert planning.plan_training(cfg, mesh, 64, short, backend="cpu").attention == "xla"
    with pytest.raises(planning.PlanError, match="runs on TPU only"):
        planning.plan_training(cfg.replace(attention_impl="splash"), mesh, 64, 8192,
                               backend="gpu")


def test_flash_kernels_keep_no_length_squared_matrices():
    cfg = models.get_config("qwen2.5-1.5b", dtype="bfloat16", remat_policy="none")
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    xla = planning.plan_training(cfg.replace(attention_impl="xla"), mesh, 64, 8192)
    flash = planning.plan_training(cfg.replace(attention_impl="blockwise"), mesh, 64, 8192)
    rows, heads, length = 8, cfg.num_heads, 8192
    matrix = rows * heads * length * length * 4
    logsumexp = rows * heads * length * 4
    # none keeps scores and probabilities per layer under xla; a flash kernel its logsumexp.
    assert (xla.terms["activations"] - flash.terms["activations"]
            == cfg.num_layers * (2 * matrix - logsumexp))
    assert any("attention_impl='auto'" in n for n in xla.notes)
    assert not any("attention_impl" in n for n in flash.notes)
    # And the sampler's prefill attends through the same kernels.
    sample = {impl: planning.plan_sampling(cfg.replace(attention_impl=impl), mesh, 64, 8192,
                                           128, backend="gpu", prefill_rows=64).terms["prefill"]
              for impl in ("xla", "cudnn")}
    assert sample["xla"] - sample["cudnn"] > 2 * rows * heads * length * length * 4 * 0.99


def test_a_chunked_loss_holds_one_chunk_of_logits():
    cfg = models.get_config("qwen2.5-1.5b", dtype="bfloat16", remat_policy="full",
                            attention_impl="blockwise")
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}         # no FSDP gathers: the bare terms
    whole = planning.plan_training(cfg, mesh, 64, 8192)
    chunked = planning.plan_training(cfg, mesh, 64, 8192, loss_chunk_size=1024)
    rows, tokens, vocab, d = 8, 8 * 8192, cfg.vocab_size, cfg.hidden_size
    assert whole.terms["working"] == 2 * tokens * vocab * 4       # logits + their gradient
    assert any("loss_chunk_size" in n for n in whole.notes)
    # Chunks are per row (rows x chunk tokens): logits and gradient of one chunk, the
    # float32 gradient of the hidden states and their reordered copy; here one layer's
    # backward is now the larger moment.
    loss = 2 * rows * 1024 * vocab * 4 + tokens * d * (4 + 2)
    assert chunked.terms["working"] >= loss
    assert chunked.terms["working"] < whole.terms["working"] / 3
    assert {k: v for k, v in chunked.terms.items() if k != "working"} == \
        {k: v for k, v in whole.terms.items() if k != "working"}


def test_an_online_teacher_keeps_hidden_states_not_logits_with_a_chunked_loss():
    cfg = models.get_config("qwen2.5-0.5b", dtype="bfloat16", remat_policy="full",
                            attention_impl="blockwise")
    teacher = models.get_config("qwen2.5-1.5b", dtype="bfloat16", param_dtype="bfloat16",
                                attention_impl="blockwise")
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    whole = planning.plan_training(cfg, mesh, 64, 4096, teacher_cfg=teacher)
    chunked = planning.plan_training(cfg, mesh, 64, 4096, teacher_cfg=teacher,
                                     loss_chunk_size=512)
    tokens = 8 * 4096
    assert (whole.terms["teacher"] - chunked.terms["teacher"]
            == tokens * (teacher.vocab_size * 4 - teacher.hidden_size * 2))
    # An xla teacher at this length materializes its scores and probabilities.
    xla_teacher = planning.plan_training(cfg, mesh, 64, 4096,
                                         teacher_cfg=teacher.replace(attention_impl="xla"),
                                         loss_chunk_size=512)
    assert (xla_teacher.terms["teacher"] - chunked.terms["teacher"]
            > 2 * 8 * teacher.num_heads * 4096 ** 2 * 4 * 0.95)


def test_fsdp_gathers_one_layer_and_the_head():
    cfg = models.get_config("tiny-llama")
    per_layer = planning.gathered_layer_params(cfg, 1)
    head = 2 * cfg.vocab_size * cfg.hidden_size + cfg.hidden_size   # embedding, lm_head, norm
    assert per_layer * cfg.num_layers + head == models.count_params(cfg)
    assert planning.gathered_layer_params(cfg, 2) < per_layer


def test_a_sequence_no_mesh_can_hold_is_refused_as_such(tmp_path):
    """Full remat keeps every layer's input for a row; above a device, only sharding
    the sequence would help, and the refusal says so."""
    cfg = models.get_config("llama-3.3-70b", dtype="bfloat16")
    assert planning.sequence_floor(cfg, 32768) == 80 * 32768 * 8192 * 2      # 40 GiB
    cmd = [sys.executable, "-m", "distill_jax.cli.plan",
           f"--config={REPO}/configs/r1_distill_llama_70b.py", "--num_devices=256",
           "--device_memory_gib=32", "--backend=tpu", "--config.model.checkpoint=",
           "--config.model.preset=llama-3.3-70b", "--config.mesh.fsdp=32",
           "--config.mesh.tensor=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1
    assert "attention splash" in proc.stderr
    assert "40.00 GiB of layer inputs" in proc.stderr and "context parallelism" in proc.stderr
