"""Rejection filtering of teacher traces with the R1 recipe's rules.

  distill-filter --config=configs/filter_default.py \\
      --config.input.path=artifacts/traces/gsm8k --config.output_dir=artifacts/curated/gsm8k

Filters run in `filters.order`; the first rejection decides. Parameters of
each filter live under `filters.<name>` (see distill_jax/filters/text_quality.py).
"""
from distill_jax.filters.config import default_config


def get_config():
    return default_config()
