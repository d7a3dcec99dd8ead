"""The R1 recipes' hardware claims against the memory planner.

Each configs/r1_distill_*.py states, as data (`HARDWARE`), the smallest hardware
on which it fits at 32k tokens x batch 64 (mesh, microbatches, remat), and the
next smaller option (`smaller`) on which nothing fits; `NEEDS_SEQUENCE_SHARDING`
names platforms where no mesh fits without sharding the sequence. Here every
claim is planned: in process through `planning.plan_from_config` for the claim's
backend, device count and memory, and once through the `distill-plan` CLI.
"""
import os
import subprocess
import sys

import pytest

from distill_jax import models, planning
from tests.config_files import REPO, load_config_module

CONFIGS = ("r1_distill_qwen_1p5b", "r1_distill_qwen_7b", "r1_distill_qwen_14b",
           "r1_distill_qwen_32b", "r1_distill_llama_8b", "r1_distill_llama_70b")
KERNEL = {"tpu": "splash", "gpu": "cudnn"}


MODULES = {name: load_config_module(name) for name in CONFIGS}
CLAIMS = [(name, claim) for name in CONFIGS for claim in MODULES[name].HARDWARE]
SMALLER = [(name, claim) for name, claim in CLAIMS if claim["smaller"]]
NO_FIT = [(name, entry) for name in CONFIGS for entry in MODULES[name].NEEDS_SEQUENCE_SHARDING]


def _id(item):
    name, claim = item
    return f"{name}-{claim['hardware']}".replace(" ", "")


def _config(name, claim=None):
    """The config as distill-plan sees it without the checkpoint, set to `claim`."""
    module = MODULES[name]
    c = module.get_config()
    c.model.checkpoint = ""
    c.model.preset = module.PRESET
    if claim is not None:
        for axis, size in claim["mesh"].items():
            c.mesh[axis] = size
        c.train.microbatches = claim["microbatches"]
        c.model.remat_policy = claim["remat_policy"]
    return c


def _memory(entry):
    return int(entry["device_memory_gib"] * planning.GIB)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_recipe_is_r1s_and_its_own_settings_are_its_first_claim(name):
    c = _config(name)
    assert (c.data.seq_len, c.train.batch_size) == (32768, 64)
    assert c.model.attention_impl == "auto" and c.train.loss_chunk_size > 0
    first = MODULES[name].HARDWARE[0]
    assert planning.resolve_mesh(dict(c.mesh), first["chips"]) == first["mesh"]
    assert c.train.microbatches == first["microbatches"]
    assert c.model.remat_policy == first["remat_policy"]
    assert MODULES[name].PRESET in models.PRESETS


@pytest.mark.parametrize("item", CLAIMS, ids=_id)
def test_each_stated_hardware_fits(item):
    name, claim = item
    plan = planning.plan_from_config(_config(name, claim), claim["chips"], _memory(claim),
                                     backend=claim["platform"])
    assert plan.fits, plan.table()
    assert plan.mesh == claim["mesh"]
    assert plan.attention == KERNEL[claim["platform"]]       # auto: flash on TPU and GPU


@pytest.mark.parametrize("item", SMALLER, ids=_id)
def test_the_next_smaller_option_does_not_fit(item):
    """So each claim is the smallest: on the next smaller slice or box no mesh, remat
    policy or microbatch count up to 16 fits."""
    name, claim = item
    smaller = claim["smaller"]
    c = _config(name)
    cfg = models.config_from_section(c.model)
    assert planning.suggest_training(
        cfg, smaller["chips"], c.train.batch_size, c.data.seq_len, 1, _memory(smaller),
        loss_chunk_size=c.train.loss_chunk_size, backend=claim["platform"]) == []


@pytest.mark.parametrize("item", NO_FIT, ids=_id)
def test_where_no_mesh_fits_the_refusal_names_sequence_sharding(item):
    name, entry = item
    c = _config(name, {"mesh": {"data": 1, "fsdp": 64, "tensor": 8}, "microbatches": 1,
                       "remat_policy": "full"})                 # one row per device
    cfg = models.config_from_section(c.model)
    assert planning.sequence_floor(cfg, c.data.seq_len) > 0.9 * _memory(entry)
    with pytest.raises(planning.PlanError, match="context parallelism"):
        planning.plan_from_config(c, 512, _memory(entry), backend=entry["platform"])


def test_distill_plan_cli_agrees_for_one_claim(tmp_path):
    claim = MODULES["r1_distill_qwen_7b"].HARDWARE[0]
    cmd = [sys.executable, "-m", "distill_jax.cli.plan",
           f"--config={REPO}/configs/r1_distill_qwen_7b.py", f"--backend={claim['platform']}",
           f"--num_devices={claim['chips']}", f"--device_memory_gib={claim['device_memory_gib']}",
           "--config.model.checkpoint=",
           f"--config.model.preset={MODULES['r1_distill_qwen_7b'].PRESET}",
           f"--json={tmp_path / 'plan.json'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["fits"] is True and plan["attention"] == "splash" and plan["backend"] == "tpu"
    assert plan["mesh"] == claim["mesh"]
