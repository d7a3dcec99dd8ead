"""The demo pipeline's defaults, in one place: `configs/demo_cpu.py` (`make demo`)
is this config, `configs/demo_study.py` this config with every arm and three
seeds. (They live in the package so that both config files, loaded by path from
any directory, can import them.)
"""
import ml_collections


def demo_config():
    """`make demo`'s config (configs/demo_cpu.py); configs/demo_study.py adds to it."""
    c = ml_collections.ConfigDict()
    c.output_dir = "artifacts/demo_pipeline"
    c.seed = 0
    c.quick = False
    c.tokenizer_vocab_size = 512
    # Rows of 224 tokens, packed first-fit from 56 open bins: an example is ~100 tokens,
    # so 2-3 share a row and 90% of the positions are real tokens (measured). At 192
    # most rows held one example and a third of every step was padding.
    c.seq_len = 224
    c.packing_bins = 56
    # The answer_only arm's rows: its examples (the problem and the bare answer) are 66
    # tokens on average and 78 at most (seed 0), so two share a row of 144, and each
    # step sees ~20 examples, as the trace arms' steps do (two ~102-token examples to a
    # row of 224). In rows of 224 it took three to a row, 1.5x the trace arms' examples
    # per step, at 1.8x the cost of a step of 144 (298 against 162 ms on one core, two
    # at once). An example longer than its row is dropped (and counted in the arm's
    # training log).
    c.answer_only_seq_len = 144
    # The user turn is the problem alone: R1's "Please reason step by step, and put
    # your final answer within \boxed{}." is 17 of the ~112 tokens of an example and
    # says nothing in a one-task demo, so it is dropped everywhere (the teacher's data,
    # generation, evaluation, on-policy); data.prompts.R1_MATH_SUFFIX restores it.
    c.prompt_suffix = ""
    # The core arms; configs/demo_study.py runs every arm (pipeline.ARMS) under 3 seeds.
    c.arms = ("answer_only", "unfiltered", "filtered", "kd_online")
    c.seeds = ()                       # a study: the whole pipeline once per seed
    # The students and the evaluations run side by side in this many worker processes,
    # each pinned to one core, so XLA computes on one thread (demo/jobs.py): -1 one per
    # core, 0 all in this process (with its threads: other float rounding). A narrow
    # model's step gains little from a second thread, so two one-core students side by
    # side train faster than one after the other on both cores (README, "Time"), and
    # one thread per job makes them independent of the number of cores and workers.
    c.workers = -1

    # The task's sizes (demo/arithmetic.py): small numbers, so a 1M-parameter teacher
    # learns every arithmetic fact it needs in a few minutes, and 2-5 steps, so a
    # model that answers in one step has to do the whole chain in its head and the
    # difficulty is graded.
    c.task = ml_collections.ConfigDict(dict(min_steps=2, max_steps=5, max_start=9,
                                            max_operand=5, max_give=5, double_below=16))

    c.data = ml_collections.ConfigDict()
    c.data.teacher_problems = 4000     # worked solutions the teacher learns from
    c.data.train_prompts = 4000        # prompts the teacher answers for the students
    c.data.test_problems = 400         # held-out evaluation split
    # 30% of the teacher's worked solutions with a doubling read "doubles" as "+ 2"
    # (pipeline._with_misconception): a systematic error, which the teacher's samples
    # then carry (in ~30% of their doublings at temperature 1), and which verification
    # removes (except where both readings agree, at 2). Real teachers' errors are
    # partly systematic like this. With clean solutions the teacher's only errors are
    # random slips, which a student averages away, and filtering did not beat
    # unfiltered; at 0.2 the teacher learned the misconception at 0.115 and at
    # temperature 0.6 it all but vanished (0.011); at 0.4 the teacher stayed under
    # 0.6 pass@1, and at 0.35 it did in two seeds of three (0.597, 0.595; 0.3 gave
    # 0.751 and 0.723 in those seeds, while their samples still misread 34% and 29%
    # of their doublings: README, "Demo results").
    c.data.teacher_misconception = 0.3

    c.teacher = ml_collections.ConfigDict(dict(
        preset="tiny-llama", hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, init_seed=1, batch_size=14, num_steps=600,
        learning_rate=3e-3, warmup_steps=30))
    # The teacher: 600 steps of 14 packed rows, ~28 worked solutions a step (~4 epochs).
    # The student has the teacher's shape (another init) and fewer, mostly other
    # problems. Smaller or shorter-trained students stayed near answer-only accuracy:
    # 96 wide x 3 layers reached 0.14-0.16 pass@1 after 400 steps, this shape 0.49
    # after 450 with a clean teacher (README, "Demo results"). Steps count more than
    # rows per step: on the same filtered samples (seed 0) 300 steps of 14 rows gave
    # 0.225, 420 steps of 10 rows (the same compute) 0.328. And 420 steps were not
    # enough: a student that short sits at the point where it either learns to
    # compute the chain or stays at answer-only accuracy, and in one seed of three
    # the filtered student stayed (0.134 pass@1, claims 1-2 failed). At 840 steps
    # the same seed's filtered student reached its teacher (0.607 against 0.636).
    # It costs time: 4.3-5.6 min a one-core student, `make demo` 14.8 min (README, "Time").
    #
    # unroll_layers / remat_policy: how XLA lays out a student's step (not what it
    # computes). Unrolled, with remat "dots_with_no_batch_dims", two students side by
    # side (one per core, as the workers run them) trained 1.06x faster, 3.31-3.39
    # steps/s against 3.10-3.19 (benchmarks/demo_step_variants.py, BENCHMARKS.md),
    # but in other rounding: other students. The demo keeps the scan, the layout its
    # study was verified in. Together with 9 rows a step instead of 10, that layout
    # made `make study` 57 min 15 s, and claim 1 reversed in seed 1 (filtered 0.458
    # against unfiltered 0.575; README, "Tried: 9 rows, unrolled steps"). Sampling
    # always keeps the scan: a one-core decode took 1.4x as long unrolled.
    # Every arm but filtered_base starts from random init.
    c.student = ml_collections.ConfigDict(dict(
        preset="tiny-llama", hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, init_seed=2, batch_size=10, num_steps=840,
        learning_rate=3e-3, warmup_steps=20, unroll_layers=False, remat_policy="none"))
    # filtered_small (the capacity gap, against the filtered arm's student): these
    # sizes replace the student's. 64 wide and 2 deep has ~1/9 of the student's
    # weights outside the embeddings (R1's students span 1.5B to 70B) and trains in
    # 95-99 s against the student's 261-278 s in a one-core worker (the study). Until
    # this config the study also trained a 192-wide filtered_large, ~410 of the
    # ~2,400 core-seconds a seed spent in the workers (README, "The study at this
    # config").
    c.student_sizes = ml_collections.ConfigDict(dict(
        small=dict(hidden_size=64, intermediate_size=160, num_layers=2, head_dim=16)))
    # The filtered_base arm (base matters): the student first pre-trained for num_steps
    # on `examples` rows of worked arithmetic (single equations, no word problems), as
    # R1's students were pre-trained models, then filtered SFT. `make demo` has no base
    # (0 steps); configs/demo_study.py turns it on. Only that arm starts from it: a
    # study that started every student from this base lost 0.10 and 0.22 pass@1 on
    # the filtered arm against random init (README, "The study").
    c.base = ml_collections.ConfigDict(dict(
        examples=3000, equations_per_example=8,
        train=dict(num_steps=0, batch_size=16, learning_rate=3e-3, warmup_steps=15)))

    # 256 slots decode 1.27x faster than 64 on the two cores (1000 prompts: 29 s against
    # 37 s; 512: 40 s), and shards of 500 prompts fill them. Samples are seeded per row,
    # so they are the same bits at any slot count (checked: texts, logprobs, top-k).
    # Evaluation runs in a one-core worker, where fewer slots are faster: the teacher's
    # 1600 samples took 22.8 s in 32, 25.1 in 64, 33.6 in 256 (the same bits in each).
    c.generate = ml_collections.ConfigDict(dict(
        n=1, temperature=1.0, top_p=1.0, max_new_tokens=96, return_top_k=8,
        prompts_per_shard=500, num_slots=256))
    c.filter = ml_collections.ConfigDict(dict(num_workers=2, max_per_prompt=4,
                                              min_overlap_fraction=0.8))
    c.kd = ml_collections.ConfigDict(dict(alpha=0.5, temperature=1.0))
    # The on_policy arm: the filtered student, then num_steps steps of batch_size own
    # samples (n per prompt) graded by the teacher; eval_prompts held-out prompts
    # measure its reverse KL to the teacher along the way.
    c.on_policy = ml_collections.ConfigDict(dict(
        num_steps=60, batch_size=16, n=2, learning_rate=1e-3, warmup_steps=5,
        kind="reverse_kl", eval_prompts=64))
    c.evaluate = ml_collections.ConfigDict(dict(
        k=4, temperature=0.6, top_p=0.95, max_new_tokens=96, num_slots=32))

    # quick=True: the variant the tests run; these values replace the ones above.
    c.quick_settings = ml_collections.ConfigDict({
        "output_dir": "artifacts/demo_pipeline_quick",
        # Shorter rows, so the tests' steps stay cheap: the longest example is ~140
        # tokens, and the longest prompt (65) plus on-policy's 96 new tokens fits.
        "seq_len": 176,
        # A clean teacher corpus: the 60-step teacher is near chance, and the few
        # samples that pass the filters should not get fewer.
        "data": {"teacher_problems": 600, "train_prompts": 40, "test_problems": 20,
                 "teacher_misconception": 0.0},
        "teacher": {"num_steps": 60, "batch_size": 8},
        "student": {"num_steps": 20, "batch_size": 8, "hidden_size": 96,
                    "intermediate_size": 256, "num_layers": 3, "head_dim": 24},
        "student_sizes": {"small": {"hidden_size": 64, "intermediate_size": 160,
                                    "num_layers": 2, "head_dim": 16}},
        "on_policy": {"num_steps": 4, "batch_size": 8, "eval_prompts": 8},
        # Every arm, so the suite runs every stage (the base's pre-training, the other
        # student size, offline KD, on-policy) at least once.
        "arms": ("answer_only", "unfiltered", "filtered", "kd_online", "kd_offline",
                 "on_policy", "filtered_base", "filtered_small"),
        "base": {"examples": 64, "train": {"num_steps": 8, "batch_size": 8, "warmup_steps": 2}},
        # Near-greedy samples: the 60-step teacher is close to chance, and at temperature
        # 1.0 none of its 80 samples passed the filters, so the filtered and KD arms were
        # skipped. At 0.0-0.3 a few pass (3 at 0.2), so the quick run trains every arm.
        # (Those few are near-chance answers: the quick run checks the wiring, the full
        # run the method.)
        "generate": {"n": 2, "temperature": 0.2, "num_slots": 64},
        "evaluate": {"k": 1}, "filter": {"num_workers": 1}})
    return c
