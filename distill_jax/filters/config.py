"""Defaults of `distill-filter` (configs/filter_default.py uses them as they are)."""
import ml_collections

from distill_jax.filters.judge import judge_config


def default_config():
    c = ml_collections.ConfigDict()
    # The traces: a file, a directory (files matching `pattern` in it), a glob, or a
    # comma-separated list of these; JSONL, JSON or Parquet (data/traces.py).
    c.input = ml_collections.ConfigDict()
    c.input.path = "artifacts/traces/gsm8k"  # distill-generate's output directory
    c.input.pattern = "*.jsonl"
    # auto | distill (our shards) | openr1 | sharegpt | messages | vllm
    c.input.format = "auto"
    # Logical name -> column, e.g. {"problem": "question"}; on the command line as one
    # dict: --config.input.fields="{'problem': 'question'}" (keys cannot be added one by one).
    c.input.fields = ml_collections.ConfigDict()
    c.input.kind = "math"                    # math | code | choice, when rows do not say
    c.input.source = ""                      # "" = the rows' own, else the format's name
    c.input.unit_mb = 64.0                   # resume granularity: JSONL byte ranges of this size
    c.output_dir = "artifacts/curated/gsm8k"
    c.num_workers = 0                        # processes; 0 = one per CPU core
    c.max_per_prompt = 4                     # kept samples per prompt after dedup (0 = all)
    c.force = False                          # rebuild even when inputs and config are unchanged
    c.pass_at_k = (1, 2, 4, 8, 16, 32, 64)   # teacher pass@k for every k <= samples per prompt

    c.filters = ml_collections.ConfigDict()
    # Cheap checks first, the verifier (which may run code) last.
    c.filters.order = ("decontaminate", "truncated", "think_format", "length", "language",
                       "repetition", "readability", "correctness")
    c.filters.think_format = ml_collections.ConfigDict(
        {"require_think": True, "require_final_answer": True})
    c.filters.length = ml_collections.ConfigDict({"min_tokens": 8, "max_tokens": 0})
    # Reject > 2% of letters in another script than the prompt's, or any run of it of
    # >= 2 CJK characters / 2 words of >= 3 letters (text_quality.Language says why).
    c.filters.language = ml_collections.ConfigDict(
        {"max_foreign_fraction": 0.02, "min_foreign_run": 2, "min_foreign_word_letters": 3})
    c.filters.repetition = ml_collections.ConfigDict(
        {"ngram_size": 10, "max_duplicate_fraction": 0.3, "max_period_chars": 200,
         "min_loop_repeats": 4, "min_loop_chars": 60})
    c.filters.readability = ml_collections.ConfigDict(
        {"max_paragraph_chars": 3000, "allow_code_in_reasoning": False})
    c.filters.correctness = ml_collections.ConfigDict(
        {"math_timeout_s": 5.0, "math_second_opinion": True, "code_io_compare": "tokens",
         "code_io_case_time_s": 2.0, "code_wall_time_s": 10.0, "code_cpu_time_s": 10.0,
         "code_memory_mb": 1024,
         # A sample whose record has no reference answer at all (public trace sets
         # without gold): "drop" rejects it as `unverifiable`, "keep" lets it pass (it
         # still counts as not correct in the teacher's pass@k).
         "unverifiable": "drop"})

    c.decontamination = ml_collections.ConfigDict()
    c.decontamination.eval_sets = ("gsm8k_test", "math500", "aime24", "humaneval")
    c.decontamination.data_dir = "../shared/data"
    c.decontamination.ngram_size = 8
    c.decontamination.fields = ("problem",)  # add "response" to check the traces too
    c.decontamination.min_overlap_fraction = 0.0   # 0 = any shared n-gram (see decontaminate.py)

    # Exact and near-duplicate responses (Jaccard of word shingles >= the threshold,
    # by MinHash/LSH: filters/dedup.py) against every sample kept before, across the
    # whole dataset ("dataset") or within each prompt only ("prompt").
    c.dedup = ml_collections.ConfigDict({"scope": "dataset", "shingle_size": 5,
                                         "near_duplicate_threshold": 0.9, "num_perm": 128,
                                         "bands": 16})

    # Optional LLM judge for the samples the rules call wrong (filters/judge.py).
    c.judge = judge_config()
    return c
