"""The test setup itself: real-data tests cannot pass silently in CI."""
import re

import pytest

from tests.conftest import require_shared_data


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    """The `shared_data` fixture's logic (tests/conftest.py): under CI=true the tests
    that need ../shared/data must fail when it is missing, not skip silently."""
    missing = tmp_path / "shared" / "data"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(missing))):
        require_shared_data(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=re.escape(str(missing))):
        require_shared_data(missing)
    missing.mkdir(parents=True)
    assert require_shared_data(missing) == missing
