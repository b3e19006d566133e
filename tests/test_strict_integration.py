"""MC_REQUIRE_INTEGRATION=1 turns skips of `integration` tests into failures (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest

@pytest.mark.integration
def test_skips_in_the_body():
    pytest.skip("no upstream here")

@pytest.mark.integration
@pytest.mark.skipif(True, reason="a missing dependency")
def test_skips_in_setup():
    pass

@pytest.mark.integration
def test_runs():
    pass

def test_unit_skip():
    pytest.skip("not an integration test")

@pytest.mark.integration
@pytest.mark.xfail(reason="expected")
def test_xfails():
    assert False
'''


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    integration: needs upstream nanochat\n")
    pytester.makepyfile(INNER)
    return pytester


def test_skips_stay_skips_by_default(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MC_REQUIRE_INTEGRATION", raising=False)
    inner.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_strict_mode_fails_integration_skips_only(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_REQUIRE_INTEGRATION", "1")
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    # a skip in setup (skipif, a fixture's importorskip) reports as an error, one in the body as a failure
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*MC_REQUIRE_INTEGRATION=1 and this integration test skipped*a missing dependency",
                                 "*MC_REQUIRE_INTEGRATION=1 and this integration test skipped*no upstream here"])
