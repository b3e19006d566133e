"""What a stranger installing the package meets: metadata, `megacontext --version`, help texts without
markup, a README whose links work on a package index, and where `megacontext nanochat apply` tells the
patched recipes to install this very plugin from (``plugin_source``)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from megacontext_plugin import cli, nanochat_patch
from megacontext_plugin.nanochat_patch import SOURCE_FILE, PatchError

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "megacontext_plugin" / "patches" / "0002-megacontext-hooks.patch"


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _all_parsers(sub)


def test_no_help_text_shows_markup() -> None:
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) >= 11  # megacontext, its 6 commands, eval's 2, nanochat's 3
    for parser in parsers:
        text = parser.format_help()
        assert "`" not in text and ":class:" not in text, parser.prog


def test_plain_turns_inline_markup_into_quotes() -> None:
    text = "The ``megacontext`` command, `eval x`, :class:`Tree`."
    assert cli.plain(text) == "The 'megacontext' command, 'eval x', Tree."


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out == f"megacontext-plugin {metadata.version('megacontext-plugin')} from {nanochat_patch.PACKAGE_DIR}\n"


def test_metadata_spdx_license_file_and_urls() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "megacontext-plugin contributors" in license_text
    assert project["authors"] and project["classifiers"]
    assert all(url.startswith("https://") for url in project["urls"].values())


def test_readme_links_work_on_a_package_index() -> None:
    """The README is the long description: a relative link or an in-page anchor breaks on the index page."""
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links and all(link.startswith("https://") for link in links), [x for x in links if "://" not in x]


# ---------------------------------------------------------------- plugin_source


def test_a_source_tree_records_its_directory() -> None:
    assert nanochat_patch.plugin_source() == str(ROOT)


def _site(tmp_path: Path, direct_url: dict | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed copy of the package in a made-up site-packages, with its dist-info."""
    site = tmp_path / "site"
    (site / "megacontext_plugin").mkdir(parents=True)
    (site / "megacontext_plugin" / "__init__.py").write_text("")
    info = site / "megacontext_plugin-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: megacontext-plugin\nVersion: 9.8.7\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    monkeypatch.setattr(nanochat_patch, "PACKAGE_DIR", (site / "megacontext_plugin").resolve())
    monkeypatch.setattr(nanochat_patch.metadata, "distribution", lambda name: metadata.PathDistribution(info))


def test_an_index_install_records_a_pinned_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _site(tmp_path, None, monkeypatch)
    assert nanochat_patch.plugin_source() == "megacontext-plugin==9.8.7"


def test_a_wheel_install_records_the_wheel_while_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "dist dir" / "megacontext_plugin-9.8.7-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")
    _site(tmp_path, {"url": wheel.as_uri(), "archive_info": {}}, monkeypatch)
    assert nanochat_patch.plugin_source() == str(wheel)
    wheel.unlink()  # gone: the pinned version is the next best thing
    assert nanochat_patch.plugin_source() == "megacontext-plugin==9.8.7"


def test_url_and_vcs_installs_record_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _site(tmp_path, {"url": "https://example.org/mc.whl", "archive_info": {}}, monkeypatch)
    assert nanochat_patch.plugin_source() == "https://example.org/mc.whl"
    _site(tmp_path / "b", {"url": "https://example.org/mc.git",
                           "vcs_info": {"vcs": "git", "commit_id": "abc123"}}, monkeypatch)
    assert nanochat_patch.plugin_source() == "git+https://example.org/mc.git@abc123"


def test_code_that_is_not_the_installed_distribution_is_an_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _site(tmp_path, None, monkeypatch)
    monkeypatch.setattr(nanochat_patch, "PACKAGE_DIR", tmp_path / "elsewhere" / "megacontext_plugin")
    with pytest.raises(PatchError, match="cannot tell how to install the running plugin"):
        nanochat_patch.plugin_source()


# ---------------------------------------------------------------- the patched recipes' install line


def _install_line(script: str) -> str:
    """The line the patch adds to SCRIPT (speedrun.sh or run1000.sh) that installs the plugin."""
    text = PATCH.read_text()
    part = text[text.index(f"diff --git a/{script} "):]
    part = part[:part.find("\ndiff --git", 1)]
    (line,) = [x[1:] for x in part.splitlines() if x.startswith("+") and "MEGACONTEXT_PLUGIN" in x]
    return line


@pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash")
@pytest.mark.parametrize("script", ["speedrun.sh", "run1000.sh"])
def test_the_recipes_install_the_recorded_plugin_unless_told_otherwise(tmp_path: Path, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text('#!/usr/bin/env bash\necho "uv $*" >> "$UV_LOG"\n')
    (bin_dir / "uv").chmod(0o755)
    body = _install_line(script) + "\necho after\n"

    def run(*args: str, record: str | None = None, env: dict[str, str] | None = None):
        tree = tmp_path / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        if record is not None:
            (tree / SOURCE_FILE).write_text(record + "\n")
        log = tmp_path / "uv.log"
        log.write_text("")
        proc = subprocess.run(["bash", "-c", body, script, *args], cwd=tree, capture_output=True, text=True,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin", "UV_LOG": str(log), **(env or {})})
        return proc, log.read_text()

    proc, uv = run(record="/src/megacontext plugin")
    assert proc.stdout == "after\n" and uv == ""  # no arguments: upstream's recipe, nothing installed
    proc, uv = run("--mc", record="/src/megacontext plugin")
    assert uv == "uv pip install /src/megacontext plugin\n"
    assert f"{script}: installing the MegaContext plugin from /src/megacontext plugin" in proc.stdout
    proc, uv = run("--mc", record="/src/mc", env={"MEGACONTEXT_PLUGIN": "megacontext-plugin==1.2.3"})
    assert uv == "uv pip install megacontext-plugin==1.2.3\n"  # the user's choice wins
    proc, uv = run("--mc")
    assert proc.returncode == 1 and uv == "" and "after" not in proc.stdout
    assert proc.stderr.count("\n") == 1 and "set MEGACONTEXT_PLUGIN, or run megacontext nanochat apply" in proc.stderr
