"""distill-demo: the foundation demo (tokenizer, random model on a mesh, export round trip)."""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.demo.foundation_demo", "run")


if __name__ == "__main__":
    run()
