"""base_eval with --mc inside real nanochat (needs NANOCHAT_DIR): upstream's CORE on an offline local
bundle, then the MegaContext validation printed and added to the report; without --mc the report
section is upstream's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_nanochat_hooks import MC, _base_train, _env, base_dir, patched  # noqa: F401 (fixtures)

from megacontext_plugin.data.core_bundle import write_core_bundle

pytestmark = pytest.mark.integration


def _nanochat(tree: Path, base: Path, plugins: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=tree, env=_env(tree, base, plugins), capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


@pytest.mark.upstream("pin")  # reads nanochat.report, which master does not have
def test_base_eval_with_mc_prints_the_validation_and_the_report_shows_it(patched: Path, base_dir: Path) -> None:  # noqa: F811
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (the bench extra)")
    _base_train(patched, base_dir, None, [*MC, "--mc_telemetry_every", "1"])
    write_core_bundle(base_dir, examples=4)
    report = base_dir / "report"
    section = report / "base-model-evaluation.md"

    _nanochat(patched, base_dir, None, "nanochat.report", "reset")
    _nanochat(patched, base_dir, None, "scripts.base_eval")  # plugin installed, --mc absent: upstream's
    plain = section.read_text()
    assert "local_passkey" in plain and "MegaContext" not in plain

    out = _nanochat(patched, base_dir, None, "scripts.base_eval", *MC, "--mc_eval_lengths", "2",
                    "--mc_eval_samples", "1").stdout
    assert "CORE" in out and "MegaContext validation: budget W=" in out  # beside upstream's numbers
    for arm in ("truncation", "uniform", "mc", "full"):
        assert re.search(rf"^\s*{arm}\s+2\s", out, flags=re.M), arm
    text = section.read_text()
    assert text.startswith(plain.split("timestamp:")[0]) and "### MegaContext" in text

    _nanochat(patched, base_dir, None, "nanochat.report", "generate")
    md = (report / "report.md").read_text()
    assert "### MegaContext" in md and "| truncation | 2 |" in md
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (report / link).stat().st_size > 10_000, link  # a rendered PNG, not an empty file
    assert {"validation-base.png", "training-curves.png"} <= {p.name for p in (report / "megacontext").iterdir()}
    summary = md.split("## Summary", 1)[1]
    assert "| CORE" in summary  # upstream's summary still finds its own metric
