"""distill-filter: teacher trace shards -> verified, filtered, deduplicated dataset.

  distill-filter --config=configs/filter_default.py \\
      --config.input.path=artifacts/traces/gsm8k --config.output_dir=artifacts/curated/gsm8k

Any of these paths may be a bucket URL (gs://bucket/curated/gsm8k, with gcsfs
installed); the output then appears, whole, once its commit marker is uploaded.
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.filters.rejection", "filter_traces")


if __name__ == "__main__":
    run()
