"""Defaults of every `distill-train` config; experiment files in configs/ start
from `base_config()` and change what they need. (They live in the package, not
in configs/, so a config file loads the same way from any directory.)

Sections: data (what to read and how to batch it), model (the student), train
(optimizer, schedule, checkpoints, logging), kd (optional soft targets), mesh.
"""
import ml_collections

from distill_jax.data.prompts import prompt_section
from distill_jax.models.from_config import model_section


def base_config():
    c = ml_collections.ConfigDict()
    c.workdir = "runs/student"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.path = "artifacts/curated/gsm8k/tfds"   # tfds data dir of distill-filter, or .jsonl
    #                                               (unused when data.sources is set)
    c.data.tokenizer_path = ""
    c.data.chat_template = ""        # "" = the tokenizer's own; or chatml/qwen2.5/llama3/deepseek-r1
    c.data.system_prompt = ""
    # True: chat markers of the template that are not single tokens of the tokenizer
    # (e.g. DeepSeek's <｜User｜> on a Qwen or Llama base) become new special tokens;
    # their embedding and LM-head rows start at the mean of the existing rows, and the
    # export carries the extended tokenizer. False: such a template is refused.
    c.data.add_chat_tokens = False
    c.data.seq_len = 4096
    c.data.packing = True
    c.data.num_packing_bins = 16
    c.data.overlong = "drop"         # drop | truncate (counted either way)
    c.data.host_split = "rows"       # several hosts: rows (same run on any host count) | examples
    # A weighted mixture instead of data.path: a list (stored as a tuple) of dicts, each
    #   {"path": ..., "weight": 3.0, "name": "math", "chat_template": "", "system_prompt": "",
    #    "seq_len": 0}
    # path (.jsonl or a tfds data dir) is required; weight (default 1) is the source's share of
    # the *target tokens*; name (default: from the path) names its tokens/<name> metric;
    # chat_template / system_prompt ("" = the data.* ones) render its examples; seq_len
    # (0 = data.seq_len, at most data.seq_len) is its longest example (longer ones follow
    # data.overlong). Empty: data.path alone. On the command line, a tuple literal:
    #   --config.data.sources="({'path': 'a.jsonl', 'weight': 3}, {'path': 'b.jsonl'})"
    c.data.sources = ()
    # Per-example lengths (and the JSONL line index), computed once and reused by
    # later runs and resumes; "" = workdir/data_cache.
    c.data.cache_dir = ""
    # Threads reading (and tokenizing) examples ahead of the packer: -1 none in a process
    # that may use at most 2 cores (they would only compete with the step), else
    # grain's 16; 0 none. The batches are the same either way (data/sft.py, read_options).
    c.data.read_threads = -1

    # The student: checkpoint or preset, overrides, init_seed, and every ModelConfig
    # field no checkpoint fixes (dtype, param_dtype, remat_policy, scan_unroll,
    # attention_impl; see models/from_config.py).
    # remat_policy: none | full | dots | dots_with_no_batch_dims | save_qkv_proj
    c.model = model_section(dtype="bfloat16",        # compute
                            param_dtype="float32")   # params, gradients, optimizer state

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64          # global rows per optimizer step
    c.train.microbatches = 1         # gradient accumulation
    # The loss runs the LM head on this many positions per row at a time (never the
    # whole [tokens, vocab] float32 logits); 0 = all at once. Not dividing the row
    # length is fine: the last chunk is padded.
    c.train.loss_chunk_size = 2048
    c.train.num_epochs = 2
    c.train.num_steps = 0            # 0 = epochs x batches per epoch; > 0 cycles the data
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 0
    c.train.final_lr_fraction = 0.1  # cosine to 1/10 of the peak (R1-Distill)
    c.train.weight_decay = 0.0
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.eps = 1e-8
    c.train.max_grad_norm = 1.0
    c.train.log_every = 10
    c.train.checkpoint_every = 500
    c.train.checkpoint_dir = ""      # "" = workdir/checkpoints; several hosts: a shared path
    c.train.keep_checkpoints = 3
    c.train.async_checkpointing = True
    c.train.tensorboard = True
    c.train.peak_tflops = 0.0        # per device, for MFU; 0 = known accelerators only
    c.train.check_memory = True      # refuse, before loading, a run distill-plan says won't fit
    c.train.device_memory_gib = 0.0  # for that check; 0 = what the accelerator reports
    c.train.export_dir = ""          # HF safetensors export of the final student
    c.train.export_dtype = "bfloat16"

    c.kd = ml_collections.ConfigDict()
    c.kd.mode = "none"               # none | online | offline | on_policy (see c.on_policy)
    c.kd.alpha = 0.5                 # loss = alpha * KD + (1 - alpha) * CE (not on_policy)
    c.kd.temperature = 1.0
    # forward_kl | reverse_kl | jsd; on_policy also sampled_token (the policy-gradient
    # estimator; reverse_kl there is GKD's full-vocabulary on-policy reverse KL)
    c.kd.kind = "forward_kl"
    c.kd.beta = 0.5                  # jsd mixture weight
    c.kd.topk = 0                    # offline: top-k width to use from the stored logprobs
    # online: the teacher, a tokenizer that agrees with the student's over their shared
    # ids (padded vocabularies may differ: KD runs over the shared real vocabulary)
    c.kd.teacher = model_section(dtype="bfloat16", param_dtype="bfloat16")
    c.kd.teacher.tokenizer_path = ""  # "" = the teacher checkpoint's directory, else the student's

    # kd.mode="on_policy" (training/on_policy.py): every step the student samples
    # completions of a batch of prompts with its current params, the teacher (kd.teacher)
    # scores every sampled token, and the loss is kd.kind on those tokens. The
    # train.batch_size rows of a step are prompts_per_step x n samples; each row holds
    # a prompt and its completion within data.seq_len tokens. train.num_steps, or
    # train.num_epochs passes over the prompts. data.path is read only for off-policy
    # steps.
    c.on_policy = ml_collections.ConfigDict()
    c.on_policy.prompts = prompt_section()
    c.on_policy.assistant_prefix = "<think>\n"   # opens the assistant turn, as distill-generate
    c.on_policy.n = 1                # samples per prompt
    c.on_policy.max_new_tokens = 1024
    # 1.0 and no truncation: the samples are the student's own distribution, which the
    # estimators assume (sampled_token requires it); lower values train on a sharpened
    # policy.
    c.on_policy.temperature = 1.0
    c.on_policy.top_p = 1.0
    c.on_policy.num_slots = 0        # decode slots; 0 = the step's rows (all at once)
    # GKD's 1 - lambda: this fraction of the steps (spread evenly) trains instead on a
    # batch of data.path with the online-KD loss (kd.kind, or reverse_kl for
    # sampled_token; kd.alpha mixes in CE on those traces).
    c.on_policy.off_policy_fraction = 0.0
    # Held-out prompts: every eval_every steps the student samples them (fixed seed) and
    # the teacher scores them; their mean reverse KL etc. go to the metrics as eval/*.
    c.on_policy.eval_prompts = prompt_section()
    c.on_policy.eval_every = 0       # 0 = before the first step and at the end only

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "expert": 1, "tensor": 1})
    return c


def r1_distill_config(name: str, checkpoint: str, learning_rate: float,
                      microbatches: int) -> ml_collections.ConfigDict:
    """The R1-Distill recipe the configs/r1_distill_*.py files share: SFT of a base on
    R1 traces at 32,768 tokens per row, batch 64, 2 epochs, cosine to a tenth of the
    peak lr (R1 paper, distillation details), in R1's own chat format.

    What makes 32k fit: full remat, `attention_impl="auto"` (splash on TPU, cudnn on
    GPU: no [rows, heads, L, L] scores) and the chunked loss (no [tokens, vocab]
    float32 logits); FSDP over every device. R1's chat markers (<｜User｜>,
    <｜Assistant｜>, <｜end▁of▁sentence｜>) are not tokens of the Qwen2.5 or Llama 3
    tokenizers, so they are added as special tokens (new rows at the mean of the
    real ones) and the export carries the extended tokenizer and the template.
    """
    c = base_config()
    c.workdir = f"runs/{name}"
    c.model.checkpoint = checkpoint
    c.data.tokenizer_path = checkpoint
    c.data.chat_template = "deepseek-r1"
    c.data.add_chat_tokens = True
    c.data.seq_len = 32768
    c.model.remat_policy = "full"
    c.model.attention_impl = "auto"
    c.train.batch_size = 64
    c.train.microbatches = microbatches
    c.train.loss_chunk_size = 2048
    c.train.num_epochs = 2
    c.train.learning_rate = learning_rate
    c.train.final_lr_fraction = 0.1
    c.train.export_dir = f"runs/{name}/export"
    c.mesh.fsdp = -1
    return c
