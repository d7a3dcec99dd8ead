"""distill-plan: per-device memory of a training or generation config, before
anything is allocated; refuses (exit status 1) what cannot fit and says what would.

  distill-plan --config=configs/r1_distill_llama_8b.py --num_devices=8 --device_memory_gib=95 \\
      --backend=tpu --config.model.checkpoint= --config.model.preset=llama-3.1-8b

--backend (tpu | gpu | cpu) is the platform of the run, default this machine's: it
picks the attention kernel of attention_impl='auto' (splash on TPU, cudnn on GPU,
blockwise on CPU above 1024 tokens), so a plan made on a laptop for a TPU slice
needs --backend=tpu.

A generate config is planned for the sampler's decode slots at --prompt_len (the
prompt-length bucket) + sampling.max_new_tokens: config.num_slots, or with
num_slots=0 the most that fit the device memory (64 where none is known); the
table's first note names the slot count and the rule that chose it.

  distill-plan --config=configs/generate_gsm8k.py --num_devices=8 --device_memory_gib=16 \\
      --config.teacher.checkpoint= --config.teacher.preset=qwen2.5-7b --prompt_len=512

For a generate config with a mixture-of-experts teacher (configs/generate_qwen3_*.py,
configs/generate_deepseek_r1.py) it then states the weights in param_dtype, that
FP8-resident weights are not supported (an FP8 checkpoint is dequantised on load)
and what they would take, and the smallest TPU slice and GPU box per accelerator
on which some mesh holds at least 32 slots of --prompt_len + max_new_tokens
(--hardware=yes for any generate config, no to skip):

  distill-plan --config=configs/generate_deepseek_r1.py --backend=gpu --num_devices=32 \\
      --device_memory_gib=140.4 --config.teacher.checkpoint= --config.teacher.preset=deepseek-r1
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from distill_jax import planning

CONFIG = config_flags.DEFINE_config_file("config", None, "A distill-train or distill-generate "
                                         "config file.", lock_config=False)
NUM_DEVICES = flags.DEFINE_integer("num_devices", None,
                                   "Devices of the run; default: this machine's (all hosts).")
DEVICE_MEMORY_GIB = flags.DEFINE_float(
    "device_memory_gib", None, "Memory per device; default: what the accelerator reports "
    "(CPU reports none: then no verdict, only the estimate).")
HEADROOM = flags.DEFINE_float("headroom", planning.DEFAULT_HEADROOM,
                              "Fraction of device memory kept free.")
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 1024,
                                  "Generation plans: the prompt-length bucket to plan for.")
BACKEND = flags.DEFINE_enum("backend", None, list(planning.BACKENDS),
                            "Platform of the run: it picks the kernel of attention_impl='auto'; "
                            "default: this machine's.")
JSON_OUT = flags.DEFINE_string("json", None, "Also write the plan here as JSON.")
HARDWARE = flags.DEFINE_enum("hardware", "auto", ["auto", "yes", "no"],
                             "Generate configs: also state the smallest TPU slice / GPU box "
                             "holding the teacher's weights and 32 slots (auto: for a "
                             "mixture-of-experts teacher).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    import jax
    num_devices = NUM_DEVICES.value or jax.device_count()
    memory = (int(DEVICE_MEMORY_GIB.value * planning.GIB) if DEVICE_MEMORY_GIB.value
              else planning.device_memory_bytes())
    try:
        plan = planning.plan_from_config(CONFIG.value, num_devices, memory, HEADROOM.value,
                                         PROMPT_LEN.value, BACKEND.value)
    except planning.PlanError as e:
        print(f"distill-plan: {e}", file=sys.stderr)
        _hardware(sys.stderr)
        sys.exit(1)
    print(plan.table())
    _hardware(sys.stdout)
    if JSON_OUT.value:
        with open(JSON_OUT.value, "w") as f:
            json.dump(plan.as_dict(), f, indent=1)


def _hardware(out):
    if HARDWARE.value == "no":
        return
    try:
        report = planning.config_hardware_report(CONFIG.value, PROMPT_LEN.value,
                                                 moe_only=HARDWARE.value == "auto")
    except planning.PlanError as e:
        report = f"no hardware report: {e}"
    if report:
        print(report, file=out)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
