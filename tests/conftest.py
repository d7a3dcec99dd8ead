"""Test setup: 8 fake CPU devices for mesh tests, and shared fixtures."""
import os

# Must happen before jax is imported anywhere: multi-device tests run on CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared_data(path: pathlib.Path = SHARED_DATA) -> pathlib.Path:
    """`path` if it is a folder. Otherwise skip -- but fail under CI=true: a CI run
    whose real-data tests all skip would pass without having tested anything."""
    if path.is_dir():
        return path
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"shared evaluation data not found at {path}; CI=true, so the tests that "
                    "need it must not skip: provide the folder", pytrace=False)
    pytest.skip(f"shared evaluation data not found at {path}")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return require_shared_data()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A fresh fake bucket (distill_jax/fake_bucket.py), shared with subprocesses
    through the environment; a test that leaves an upload unfinished fails."""
    from distill_jax.fake_bucket import ROOT_ENV, FakeBucket
    root = tmp_path / "bucket_root"
    root.mkdir()
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.setattr(FakeBucket, "moves", 0)      # renames this test made
    yield "fakebucket://test-bucket"
    staging = root / ".staging"      # the fake store's uploads in progress
    assert not staging.exists() or not os.listdir(staging), "an upload was left unfinished"


@pytest.fixture(scope="module")
def module_bucket_root(tmp_path_factory):
    """The fake bucket's root for a whole module (its runs are module fixtures)."""
    from distill_jax.fake_bucket import ROOT_ENV
    root = tmp_path_factory.mktemp("fakebucket")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ROOT_ENV, str(root))
        yield root
