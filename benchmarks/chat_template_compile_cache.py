"""The SFT data pipeline with the chat template compiled once per process against
compiling it for every rendered example (what `apply_chat_template(template=...)`
did before `tokenizer.compile_chat_template` was cached).

The data is `make demo`'s teacher corpus read as `make demo`'s students read theirs
(`common.time_demo_batches`: rendered through the "chatml" template by name,
tokenized, packed into rows of 224 tokens, batches of 10 rows, 16 read threads).
Each variant builds a fresh pipeline and times `--batches` batches after `--warmup`;
variants alternate round by round. Reports wall and process CPU milliseconds per
batch and checks that both variants produce the same batches, bit for bit.

  python benchmarks/chat_template_compile_cache.py [--rounds 3] [--batches 100] [--write]
"""
from __future__ import annotations

import argparse

from common import report_demo_batches, time_demo_batches

from distill_jax import tokenizer as tokenizer_module
from distill_jax.demo.config import demo_config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per run")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    cached = tokenizer_module.compile_chat_template

    def uses(compile_fn):
        def set_up(config):
            # grain's 16 read threads, as when the rows in BENCHMARKS.md were measured
            # (the default now reads inline on 1-2 cores: benchmarks/sft_read_threads.py).
            config.data.read_threads = 16
            tokenizer_module.compile_chat_template = compile_fn

            def undo():
                tokenizer_module.compile_chat_template = cached
            return undo
        return set_up
    med, same = time_demo_batches({"compiled once": uses(cached),
                                   "compiled per example": uses(cached.__wrapped__)},
                                  args.rounds, args.batches, args.warmup)
    demo = demo_config()
    report_demo_batches(med, same, "compiled once", "compiled per example",
                        f"demo SFT batches ({demo.student.batch_size} rows of {demo.seq_len}), "
                        f"median of {args.rounds} x {args.batches}", args.write)

if __name__ == "__main__":
    main()
