"""A persistent XLA compilation cache for the single-process subprocesses one test
starts (a run and its resume, a pipeline's stages that train one model shape): the
second process to compile a program loads it instead. Compiling is most of what
these subprocesses spend on CPU, and a loaded executable is the very binary the
first compile produced, so results stay bitwise the same.

Not for jax.distributed runs (tests/test_multihost.py): tried there, a resumed
2-process train run hung (one process loading a program its peer compiled afresh)."""
import os


def compile_cache_env(directory) -> dict[str, str]:
    """Environment variables that give subprocesses the cache under `directory` (one
    per test: tests stay independent), for every program however quick to compile."""
    os.makedirs(directory, exist_ok=True)
    return {"JAX_COMPILATION_CACHE_DIR": str(directory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
