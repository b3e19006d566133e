"""The nanochat patch machinery: unit tests on a made-up tree and patch series, and integration
tests (``-m integration``, need NANOCHAT_DIR) on a copy of the pinned upstream tree."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin import cli, nanochat_patch
from megacontext_plugin.nanochat_patch import PatchError

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

FAKE_PIN = "0123456789abcdef0123456789abcdef01234567"
PRISTINE = {
    "nanochat/gpt.py": "def loss(t):\n    return t.view(-1)\n\n\nX = 1\n",
    "tests/test_engine.py": 'DEVICE = "cpu"\n',
    "README.md": "untouched\n",
}
STEP1 = {"nanochat/gpt.py": "def loss(t):\n    return t.reshape(-1)\n\n\nX = 1\n"}
STEP2 = {"nanochat/gpt.py": "def loss(t):\n    return t.reshape(-1)\n\n\nX = 2\n",
         "tests/test_engine.py": 'DEVICE = torch.device("cpu")\n'}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _diff(old: dict[str, str], new: dict[str, str]) -> str:
    out = []
    for rel, text in new.items():
        out += difflib.unified_diff(old[rel].splitlines(keepends=True), text.splitlines(keepends=True),
                                    fromfile=f"a/{rel}", tofile=f"b/{rel}")
    return "".join(out)


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def series(tmp_path: Path) -> Path:
    """Two patches applied in order (the second touches a file the first already changed)."""
    pdir = tmp_path / "patches"
    pdir.mkdir()
    after1 = {**PRISTINE, **STEP1}
    final = {**after1, **STEP2}
    (pdir / "0001-a.patch").write_text("Header text is ignored by git apply.\n\n" + _diff(PRISTINE, STEP1))
    (pdir / "0002-b.patch").write_text(_diff(after1, STEP2))
    touched = ["nanochat/gpt.py", "tests/test_engine.py"]
    manifest = {"pin": FAKE_PIN, "patches": ["0001-a.patch", "0002-b.patch"],
                "files": {rel: {"pristine": _sha(PRISTINE[rel]), "patched": _sha(final[rel])} for rel in touched}}
    (pdir / "manifest.json").write_text(json.dumps(manifest))
    return pdir


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "nanochat-tree", PRISTINE)


def _contents(root: Path) -> dict[str, str]:
    return {rel: (root / rel).read_text() for rel in PRISTINE}


def _git(root: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def _pin_manifest(pdir: Path, pin: str) -> None:
    raw = json.loads((pdir / "manifest.json").read_text())
    raw["pin"] = pin
    (pdir / "manifest.json").write_text(json.dumps(raw))


# ---------------------------------------------------------------- unit: made-up tree and patches


@needs_git
def test_apply_verify_revert_roundtrip(tree: Path, series: Path) -> None:
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.state == "pristine" and not status.ok and status.head is None
    assert nanochat_patch.apply(tree, patches_dir=series) is True
    assert (tree / "nanochat/gpt.py").read_text() == STEP2["nanochat/gpt.py"]
    assert (tree / "tests/test_engine.py").read_text() == STEP2["tests/test_engine.py"]
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.ok and set(status.files.values()) == {"patched"}
    assert status.describe()[-1].endswith(": patched")
    assert nanochat_patch.revert(tree, patches_dir=series) is True
    assert _contents(tree) == PRISTINE
    assert nanochat_patch.verify(tree, patches_dir=series).state == "pristine"


@needs_git
def test_apply_and_revert_are_idempotent(tree: Path, series: Path) -> None:
    assert nanochat_patch.revert(tree, patches_dir=series) is False  # already pristine
    assert _contents(tree) == PRISTINE
    nanochat_patch.apply(tree, patches_dir=series)
    patched = _contents(tree)
    mtimes = {rel: (tree / rel).stat().st_mtime_ns for rel in PRISTINE}
    assert nanochat_patch.apply(tree, patches_dir=series) is False
    assert _contents(tree) == patched
    assert {rel: (tree / rel).stat().st_mtime_ns for rel in PRISTINE} == mtimes


@needs_git
@pytest.mark.parametrize("start", ["pristine", "patched"])
@pytest.mark.parametrize("op", ["apply", "revert"])
def test_local_changes_are_refused_and_nothing_is_written(tree: Path, series: Path, start: str, op: str) -> None:
    if start == "patched":
        nanochat_patch.apply(tree, patches_dir=series)
    (tree / "tests/test_engine.py").write_text("local edit\n")
    before = _contents(tree)
    with pytest.raises(PatchError, match=r"has local changes to tests/test_engine\.py \(neither pristine nor "
                                         r"patched at 0123456\); revert them or use a fresh checkout"):
        getattr(nanochat_patch, op)(tree, patches_dir=series)
    assert _contents(tree) == before
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.files["tests/test_engine.py"] == "modified" and status.state == "mixed" and not status.ok


@needs_git
def test_half_patched_and_missing_files_are_refused(tree: Path, series: Path) -> None:
    (tree / "nanochat/gpt.py").write_text(STEP2["nanochat/gpt.py"])  # patched; test_engine.py still pristine
    with pytest.raises(PatchError, match="partly patched"):
        nanochat_patch.apply(tree, patches_dir=series)
    (tree / "tests/test_engine.py").unlink()
    assert nanochat_patch.verify(tree, patches_dir=series).files["tests/test_engine.py"] == "missing"
    with pytest.raises(PatchError, match=r"is missing tests/test_engine\.py"):
        nanochat_patch.revert(tree, patches_dir=series)


@needs_git
def test_apply_records_the_plugin_source_verify_shows_it_revert_removes_it(tree: Path, series: Path) -> None:
    record = tree / nanochat_patch.SOURCE_FILE
    assert nanochat_patch.apply(tree, patches_dir=series, source="/opt/mc plugin") is True
    assert record.read_text() == "/opt/mc plugin\n"
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.ok and status.source == "/opt/mc plugin"
    line = f"plugin source for speedrun.sh/run1000.sh ({nanochat_patch.SOURCE_FILE}): /opt/mc plugin"
    assert line in status.describe()
    patched = _contents(tree)
    # applied again by another install of the plugin: the files stay, the record follows the plugin
    assert nanochat_patch.apply(tree, patches_dir=series, source="megacontext-plugin==0.2.0") is False
    assert record.read_text() == "megacontext-plugin==0.2.0\n" and _contents(tree) == patched
    record.unlink()  # a tree patched before records existed: verify says what the recipes then need
    assert any("no plugin source recorded" in line and "MEGACONTEXT_PLUGIN" in line
               for line in nanochat_patch.verify(tree, patches_dir=series).describe())
    nanochat_patch.apply(tree, patches_dir=series)  # the default: this plugin, here run from its source tree
    assert record.read_text() == f"{Path(__file__).resolve().parents[1]}\n"
    assert nanochat_patch.revert(tree, patches_dir=series) is True
    assert not record.exists() and _contents(tree) == PRISTINE
    record.write_text("stale\n")  # a pristine tree with a leftover record: revert still cleans it up
    assert nanochat_patch.revert(tree, patches_dir=series) is True
    assert not record.exists()
    assert nanochat_patch.revert(tree, patches_dir=series) is False


def test_a_source_that_cannot_be_told_fails_before_anything_is_written(tree: Path, series: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown() -> str:
        raise PatchError("cannot tell how to install the running plugin")

    monkeypatch.setattr(nanochat_patch, "plugin_source", unknown)
    with pytest.raises(PatchError, match="cannot tell"):
        nanochat_patch.apply(tree, patches_dir=series)
    assert _contents(tree) == PRISTINE and not (tree / nanochat_patch.SOURCE_FILE).exists()


def test_not_a_nanochat_dir(tmp_path: Path, series: Path) -> None:
    with pytest.raises(PatchError, match=r"does not look like a nanochat tree \(no nanochat/gpt\.py\)"):
        nanochat_patch.apply(tmp_path, patches_dir=series)
    with pytest.raises(PatchError, match="is not a directory"):
        nanochat_patch.verify(tmp_path / "nope", patches_dir=series)


@needs_git
def test_a_checkout_off_the_pin_is_judged_by_its_files(tree: Path, series: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A user who committed the patched tree can still revert: the files' hashes decide, not HEAD."""
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "pristine")
    head = _git(tree, "rev-parse", "HEAD")
    assert head != FAKE_PIN
    assert nanochat_patch.apply(tree, patches_dir=series) is True
    _git(tree, "commit", "-qam", "patched")  # HEAD moves on; the files are the pin's patched files
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.ok and status.note is not None and FAKE_PIN[:7] in status.note
    assert nanochat_patch.revert(tree, patches_dir=series) is True
    assert _contents(tree) == PRISTINE
    (tree / "nanochat" / "gpt.py").write_text("a local edit\n")  # files that are neither: refused, as always
    with pytest.raises(PatchError, match="local changes"):
        nanochat_patch.apply(tree, patches_dir=series)
    _git(tree, "reset", "-q", "--hard", head)  # back at the pristine commit: now make it the pin
    _pin_manifest(series, head)
    assert nanochat_patch.apply(tree, patches_dir=series) is True
    status = nanochat_patch.verify(tree, patches_dir=series)
    assert status.ok and status.head == head
    assert nanochat_patch.revert(tree, patches_dir=series) is True
    assert _git(tree, "status", "--porcelain") == ""


@needs_git
def test_plain_dir_inside_another_checkout_is_patched_relative_to_itself(tmp_path: Path, series: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    _git(outer, "init", "-q")
    inner = _write_tree(outer / "vendor" / "nanochat", PRISTINE)
    assert nanochat_patch.apply(inner, patches_dir=series) is True
    assert nanochat_patch.verify(inner, patches_dir=series).ok


@needs_git
def test_build_manifest_matches_series(tree: Path, series: Path) -> None:
    expected = json.loads((series / "manifest.json").read_text())
    built = nanochat_patch.build_manifest(tree, FAKE_PIN, expected["patches"], patches_dir=series)
    assert built["files"] == expected["files"] and built["pin"] == FAKE_PIN
    assert _contents(tree) == PRISTINE


def test_shipped_manifest_is_consistent() -> None:
    manifest = nanochat_patch.load_manifest()
    assert manifest.pin == "a91743c16850097ad4b925ab3c41e234320744cd"
    assert manifest.patches and all(p.is_file() for p in manifest.patch_paths)
    assert {"nanochat/gpt.py", "tests/test_engine.py"} <= set(manifest.files)
    repo_link = Path(__file__).resolve().parents[1] / "patches"
    if repo_link.is_symlink():  # a clone's shortcut; an unpacked sdist has none (it keeps no symlinks)
        assert repo_link.resolve() == nanochat_patch.PATCHES_DIR


def test_missing_git_is_a_clear_error(tree: Path, series: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nanochat_patch.shutil, "which", lambda name: None)
    with pytest.raises(PatchError, match="git is not installed"):
        nanochat_patch.apply(tree, patches_dir=series)


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("action", ["apply", "verify", "revert"])
def test_cli_user_mistakes_exit_2_with_one_line(tmp_path: Path, action: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["nanochat", action, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no nanochat/gpt.py" in err and "Traceback" not in err


@needs_git
@pytest.mark.parametrize("action", ["apply", "verify", "revert"])
def test_cli_unknown_tree_names_both_supported_commits(tree: Path, action: str, capsys: pytest.CaptureFixture) -> None:
    # neither shipped manifest knows these made-up files: a tree at some other commit
    assert cli.main(["nanochat", action, str(tree)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not a nanochat commit this plugin supports (a91743c (pin) or 92d63d4 (master))" in err
    assert _contents(tree) == PRISTINE


MASTER_PRISTINE = {"nanochat/gpt.py": "def loss(t):\n    return t.view(-1)\n\n\nX = 3\n",
                   "runs/speedrun.sh": "echo go\n"}
MASTER_PATCHED = {"nanochat/gpt.py": "def loss(t):\n    return t.view(-1)\n\n\nX = 4\n",
                  "runs/speedrun.sh": "echo go \"$@\"\n"}


@pytest.fixture
def two_upstreams(series: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The made-up series as the pin's, and a second one for another commit in its master/ folder."""
    master = series / "master"
    master.mkdir()
    (master / "0001-hooks.patch").write_text(_diff(MASTER_PRISTINE, MASTER_PATCHED))
    (master / "manifest.json").write_text(json.dumps({
        "name": "master", "pin": "fedcba9876543210fedcba9876543210fedcba98", "patches": ["0001-hooks.patch"],
        "files": {rel: {"pristine": _sha(MASTER_PRISTINE[rel]), "patched": _sha(MASTER_PATCHED[rel])}
                  for rel in MASTER_PRISTINE}}))
    monkeypatch.setattr(nanochat_patch, "PATCHES_DIR", series)
    return series


@needs_git
def test_each_supported_upstream_gets_its_own_series(tmp_path: Path, tree: Path, two_upstreams: Path) -> None:
    other = _write_tree(tmp_path / "master-tree", MASTER_PRISTINE)
    assert nanochat_patch.detect(tree).name == "pin" and nanochat_patch.detect(other).name == "master"
    assert nanochat_patch.apply(other) is True
    assert {rel: (other / rel).read_text() for rel in MASTER_PATCHED} == MASTER_PATCHED
    status = nanochat_patch.verify(other)
    assert status.ok and status.upstream == "master" and status.pin.startswith("fedcba9")
    assert "nanochat fedcba9, the master" in status.describe()[-1]
    assert "runs/speedrun.sh and runs/runcpu.sh" in "\n".join(status.describe())
    nanochat_patch.apply(tree)  # the pin's tree is unaffected by the other series, and the other way round
    assert _contents(tree)["nanochat/gpt.py"] == STEP2["nanochat/gpt.py"]
    (other / "nanochat/gpt.py").write_text("a local edit\n")  # still recognised by runs/speedrun.sh: its own error
    with pytest.raises(PatchError, match=r"local changes to nanochat/gpt\.py \(neither pristine nor patched at "
                                         r"fedcba9\)"):
        nanochat_patch.revert(other)
    with pytest.raises(PatchError, match=r"not a nanochat commit this plugin supports \(0123456 \(pin\) or fedcba9 "
                                         r"\(master\)\)"):
        nanochat_patch.verify(_write_tree(tmp_path / "unknown", {"nanochat/gpt.py": "X = 5\n"}))


def test_cli_verify_exit_status(tree: Path, series: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(nanochat_patch, "PATCHES_DIR", series)
    assert cli.main(["nanochat", "verify", str(tree)]) == 1
    assert "pristine" in capsys.readouterr().out
    if shutil.which("git"):
        assert cli.main(["nanochat", "apply", str(tree)]) == 0
        root = str(Path(__file__).resolve().parents[1])
        assert f"install the plugin from: {root} (recorded in .megacontext-plugin-source" in capsys.readouterr().out
        assert cli.main(["nanochat", "apply", str(tree)]) == 0
        assert "already patched" in capsys.readouterr().out
        assert cli.main(["nanochat", "verify", str(tree)]) == 0


# ---------------------------------------------------------------- integration: the real pin


UPSTREAM_TEST_DEPS = ("torch", "pytest", "regex", "tiktoken", "tokenizers", "rustbpe")


def _pristine_copy(nanochat_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "nanochat"
    shutil.copytree(nanochat_dir, dst, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache"))
    return dst


def _hashes(root: Path, rels) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in rels}


def _run_upstream_tests(root: Path) -> subprocess.CompletedProcess:
    missing = [m for m in UPSTREAM_TEST_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"upstream nanochat's tests need {', '.join(missing)} (pip install {' '.join(missing)})")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.integration
@needs_git
def test_real_upstream_apply_verify_revert(nanochat_dir: Path, tmp_path: Path, upstream: str) -> None:
    root = _pristine_copy(nanochat_dir, tmp_path)
    manifest = nanochat_patch.detect(root)
    assert manifest.name == upstream and manifest.patches_dir == nanochat_patch.PATCHES_DIR / (
        "master" if upstream == "master" else "")
    assert nanochat_patch.verify(root).state == "pristine", f"NANOCHAT_DIR is not a pristine {manifest.label} tree"
    pristine = _hashes(root, manifest.files)
    assert pristine == {rel: sums["pristine"] for rel, sums in manifest.files.items()}
    assert nanochat_patch.apply(root) is True
    assert nanochat_patch.verify(root).ok
    assert _hashes(root, manifest.files) == {rel: sums["patched"] for rel, sums in manifest.files.items()}
    assert nanochat_patch.apply(root) is False
    assert nanochat_patch.revert(root) is True
    assert _hashes(root, manifest.files) == pristine


@pytest.mark.integration
@pytest.mark.upstream("pin")
@needs_git
def test_real_pin_upstream_suite_passes_only_when_patched(nanochat_dir: Path, tmp_path: Path) -> None:
    root = _pristine_copy(nanochat_dir, tmp_path)
    before = _run_upstream_tests(root)
    assert before.returncode != 0 and "test_engine.py" in before.stdout, before.stdout[-2000:]
    nanochat_patch.apply(root)
    after = _run_upstream_tests(root)
    assert after.returncode == 0, after.stdout[-4000:] + after.stderr[-2000:]
    assert " passed" in after.stdout and "failed" not in after.stdout


@pytest.mark.integration
@pytest.mark.upstream("master")
@needs_git
def test_real_master_upstream_suite_passes_patched_as_pristine(nanochat_dir: Path, tmp_path: Path) -> None:
    """Master needs no upstream fix: its own suite passes pristine, and still passes patched."""
    root = _pristine_copy(nanochat_dir, tmp_path)
    before = _run_upstream_tests(root)
    assert before.returncode == 0, before.stdout[-4000:]
    nanochat_patch.apply(root)
    after = _run_upstream_tests(root)
    assert after.returncode == 0, after.stdout[-4000:] + after.stderr[-2000:]
    passed = lambda out: out.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1]  # noqa: E731
    assert passed(after) == passed(before) and "failed" not in after.stdout


@pytest.mark.integration
@pytest.mark.upstream("pin")
@needs_git
def test_real_pin_cpu_loss_takes_non_contiguous_targets(nanochat_dir: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("rustbpe") is None:
        pytest.skip("needs torch and upstream's deps to import nanochat.gpt")
    root = _pristine_copy(nanochat_dir, tmp_path)
    script = (
        "import torch\n"
        "from nanochat.gpt import GPT, GPTConfig\n"
        "cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32,"
        " window_pattern='L')\n"
        "with torch.device('meta'):\n    m = GPT(cfg)\n"
        "m.to_empty(device='cpu'); m.init_weights()\n"
        "batch = torch.randint(0, 64, (2, 9))\n"
        "x, y = batch[:, :-1], batch[:, 1:]  # what upstream's CPU dataloader yields\n"
        "assert not y.is_contiguous()\n"
        "print(float(m(x, y)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = lambda: subprocess.run([sys.executable, "-c", script], cwd=root, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=300)
    before = run()
    assert before.returncode != 0 and "view size is not compatible" in before.stderr, before.stderr[-2000:]
    nanochat_patch.apply(root)
    after = run()
    assert after.returncode == 0, after.stderr[-2000:]


@pytest.mark.parametrize("series", [("0001-upstream-fixes.patch", "0002-megacontext-hooks.patch"),
                                    ("master/0001-megacontext-hooks.patch",)], ids=["pin", "master"])
def test_the_shipped_patches_stay_small(series: tuple[str, ...]) -> None:
    """The issue's budget: under 150 changed lines in upstream files (a changed line counts once), per upstream."""
    from importlib.resources import files

    added = removed = 0
    patches = files("megacontext_plugin") / "patches"
    for name in series:
        for line in (patches / name).read_text().splitlines():
            if line.startswith("+") and not line.startswith("+++"):
                added += 1
            elif line.startswith("-") and not line.startswith("---"):
                removed += 1
    assert removed <= added < 150, (added, removed)


_DUMMY = '''
import pluggy
from megacontext_plugin import hookspecs

hookimpl = pluggy.HookimplMarker("nanochat")


class Plugin:
    hookspecs = hookspecs  # every plugin ships the same contract

    @hookimpl
    def register_arguments(self, parser):
        parser.add_argument("--{flag}")


plugin = Plugin()
'''
_MISSPELT = '''
import pluggy
from megacontext_plugin import hookspecs

hookimpl = pluggy.HookimplMarker("nanochat")


class Plugin:
    hookspecs = hookspecs

    @hookimpl
    def register_argumentz(self, parser):  # no such hook
        parser.add_argument("--misspelt")


plugin = Plugin()
'''


def _installed_plugin(site: Path, name: str, source: str) -> None:
    """A plugin as an installed distribution: a module and a dist-info with its entry point."""
    (site / f"{name}.py").write_text(source)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[nanochat]\n{name} = {name}:plugin\n")


@pytest.mark.integration
@needs_git
def test_real_upstream_host_loads_several_plugins_and_skips_broken_ones(nanochat_dir: Path, tmp_path: Path) -> None:
    root = _pristine_copy(nanochat_dir, tmp_path)
    nanochat_patch.apply(root)
    site = tmp_path / "site"
    site.mkdir()
    _installed_plugin(site, "dummy_a", _DUMMY.replace("{flag}", "dummy-a"))
    _installed_plugin(site, "dummy_b", _DUMMY.replace("{flag}", "dummy-b"))
    _installed_plugin(site, "broken", "raise ImportError('this plugin is broken')\n")
    _installed_plugin(site, "no_contract", "plugin = object()\n")
    _installed_plugin(site, "misspelt", _MISSPELT)
    script = ("import argparse\nfrom nanochat.common import get_plugin_hooks\n"
              "p = argparse.ArgumentParser()\nget_plugin_hooks().register_arguments(parser=p)\n"
              "print(sorted(a.dest for a in p._actions))\n")
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{site}",
           "NANOCHAT_PLUGINS": "dummy_a,dummy_b,broken,no_contract,misspelt"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'dummy_a'" in proc.stdout and "'dummy_b'" in proc.stdout and "misspelt" not in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "nanochat plugin" in line and "not loaded" in line]
    assert len(warnings) == 3, proc.stderr
    for name, why in (("broken", "this plugin is broken"), ("no_contract", "hookspecs"),
                      ("misspelt", "register_argumentz")):
        assert any(f"'{name}'" in w and why in w for w in warnings), (name, warnings)


@pytest.mark.integration
@needs_git
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.upstream("pin"))
                                    for r in ("speedrun.sh", "run1000.sh")]
                         + [pytest.param(r, marks=pytest.mark.upstream("master"))
                            for r in ("runs/speedrun.sh", "runs/runcpu.sh")])
def test_real_upstream_recipes_install_the_plugin_that_patched_them(nanochat_dir: Path, tmp_path: Path,
                                                                    recipe: str) -> None:
    """The patched recipe, run with every tool it calls (uv, python, torchrun, curl) stubbed to log its arguments."""
    if shutil.which("bash") is None:
        pytest.skip("the recipes are bash")
    root = _pristine_copy(nanochat_dir, tmp_path)
    nanochat_patch.apply(root)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "activate").write_text("")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("uv", "python", "torchrun", "curl"):
        (stubs / tool).write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "$STUB_LOG"\n')
        (stubs / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_LOG": str(log)}
    proc = subprocess.run(["bash", recipe, "--mc", "--block_size", "32"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plugin = str(Path(__file__).resolve().parents[1])  # this checkout: the plugin that applied the patch
    calls = log.read_text().splitlines()
    assert f"uv pip install {plugin}" in calls
    assert f"{Path(recipe).name}: installing the MegaContext plugin from {plugin}" in proc.stdout
    extra = "cpu" if recipe.endswith("runcpu.sh") else "gpu"
    assert calls.index(f"uv pip install {plugin}") == calls.index(f"uv sync --extra {extra}") + 1
    # base_eval holds the post-run validation of the base checkpoint (the pin's base_loss runs without the flags)
    stages = ("base_train", "base_eval", "mid_train", "chat_sft", "chat_eval")
    trains = [c for c in calls if c.split()[0] in ("torchrun", "python") and any(f"scripts.{s}" in c for s in stages)]
    expected = {"speedrun.sh": 6, "run1000.sh": 6, "runs/speedrun.sh": 4, "runs/runcpu.sh": 3}[recipe]
    assert len(trains) == expected and all(c.endswith("--mc --block_size 32") for c in trains), calls
