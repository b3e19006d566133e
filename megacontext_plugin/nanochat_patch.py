"""Apply, verify and revert our patches to an upstream nanochat tree (``patches/``).

Two upstream commits are supported, each with its own patch series and manifest: the pin
(``patches/``, nanochat ``a91743c``) and master (``patches/master/``, ``92d63d4``). The files of DIR
decide which one it holds (:func:`detect`): the upstream whose manifest recognises the most touched
files, pristine or patched; a tree that neither recognises is refused in one line naming both.

The patches of a series are unified diffs against its commit, applied in the order that its
``manifest.json`` lists them, with ``git apply`` (which also works on a plain directory,
e.g. a ``git archive`` extract), one patch at a time, to a scratch copy of the touched files; the
results are moved into the tree only once the whole series applied and hashes as the manifest says.
The manifest records, for every file the patches touch, the sha256 of the pristine file and of the
fully patched file; every operation checks those first:

- all touched files pristine: ``apply`` patches them; ``revert`` has nothing to do;
- all touched files patched: ``apply`` has nothing to do; ``revert`` restores them;
- anything else (local edits, a half-applied series, a missing file): a :class:`PatchError`,
  and nothing is written.

The files decide, never git: a checkout whose HEAD is not the upstream's commit (a user who committed
the patched tree, or cherry-picked something unrelated) is patched or reverted when every touched file
hashes as that commit's pristine or patched file, exactly as a ``git archive`` extract is, and
``Status.note`` says so. After writing, the files are hashed again to confirm the result.

``apply`` also records where this very plugin came from in ``DIR/.megacontext-plugin-source`` (one
line: what ``uv pip install`` takes, see :func:`plugin_source`): the patched recipes (the pin's
``speedrun.sh`` and ``run1000.sh``, master's ``runs/speedrun.sh`` and ``runs/runcpu.sh``) install it
when given arguments (``MEGACONTEXT_PLUGIN`` overrides), so a recipe never installs a package of the
same name from an index. ``revert`` removes the record; ``verify`` shows it.

API: ``apply(dir) -> bool`` (True if it wrote), ``revert(dir) -> bool``, ``verify(dir) -> Status``,
``detect(dir) -> Manifest``, ``load_manifest()``, ``build_manifest(pristine_dir, pin, patches, patches_dir)``
(to regenerate a ``manifest.json`` after editing a patch). Each takes ``patches_dir=`` to use that one patch
series instead of detecting (tests do). CLI:
``megacontext nanochat apply|verify|revert DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

PACKAGE_DIR = Path(__file__).resolve().parent
PATCHES_DIR = PACKAGE_DIR / "patches"
UPSTREAMS = (("pin", "."), ("master", "master"))
"""The supported upstreams: name and patch-series folder under :data:`PATCHES_DIR` (the pin first: it wins a tie)."""
DISTRIBUTION = "megacontext-plugin"
SOURCE_FILE = ".megacontext-plugin-source"  # read by the patched speedrun.sh and run1000.sh
MANIFEST_NAME = "manifest.json"
PRISTINE, PATCHED, MODIFIED, MISSING = "pristine", "patched", "modified", "missing"
MARKER_FILE = "nanochat/gpt.py"  # a directory without it is not a nanochat tree


class PatchError(Exception):
    """A user-facing problem (bad directory, wrong commit, local changes, no git): one-line message."""


@dataclass(frozen=True)
class Manifest:
    pin: str
    """The upstream commit the series patches."""
    patches: tuple[str, ...]
    files: Mapping[str, Mapping[str, str]]  # path -> {"pristine": sha256, "patched": sha256}
    patches_dir: Path
    name: str = "pin"
    """Which supported upstream: ``pin`` or ``master``."""

    @property
    def label(self) -> str:
        return f"{self.pin[:7]} ({self.name})"

    @property
    def patch_paths(self) -> list[Path]:
        return [self.patches_dir / name for name in self.patches]


@dataclass(frozen=True)
class Status:
    dir: Path
    pin: str
    head: str | None  # HEAD of a git checkout, None for a plain directory
    files: Mapping[str, str]  # path -> pristine | patched | modified | missing
    source: str | None = None  # the plugin source recorded in DIR/SOURCE_FILE, None if there is none
    upstream: str = "pin"  # which supported upstream DIR holds (Manifest.name)

    @property
    def state(self) -> str:
        """``patched`` / ``pristine`` when every file agrees, else ``mixed``."""
        states = set(self.files.values())
        return states.pop() if len(states) == 1 and states <= {PATCHED, PRISTINE} else "mixed"

    @property
    def ok(self) -> bool:
        return self.state == PATCHED

    @property
    def note(self) -> str | None:
        """A line for a git checkout whose HEAD is not the upstream's commit (the files' hashes decided)."""
        if self.head is None or self.head == self.pin:
            return None
        return (f"note: {self.dir} is a git checkout at {self.head[:7]}, not the {self.upstream} {self.pin[:7]}; "
                f"its touched files were checked by their hashes against the {self.upstream}'s")

    @property
    def recipes(self) -> str:
        return "speedrun.sh/run1000.sh" if self.upstream == "pin" else "runs/speedrun.sh and runs/runcpu.sh"

    def describe(self) -> list[str]:
        width = max(len(p) for p in self.files)
        lines = [f"{path.ljust(width)}  {state}" for path, state in self.files.items()]
        if self.source is not None:
            lines.append(f"plugin source for {self.recipes} ({SOURCE_FILE}): {self.source}")
        elif self.state == PATCHED:
            lines.append(f"no plugin source recorded ({SOURCE_FILE}): {self.recipes} with arguments need "
                         f"MEGACONTEXT_PLUGIN, or run 'megacontext nanochat apply {self.dir}' again")
        where = f"git checkout at {self.head[:12]}" if self.head else "plain directory"
        lines.append(f"{self.dir} ({where}, nanochat {self.pin[:7]}, the {self.upstream}): {self.state}")
        return lines + ([self.note] if self.note else [])


def load_manifest(patches_dir: Path | str | None = None) -> Manifest:
    """The manifest of the series in PATCHES_DIR (default: the pin's)."""
    pdir = Path(patches_dir) if patches_dir is not None else PATCHES_DIR
    raw = json.loads((pdir / MANIFEST_NAME).read_text())
    return Manifest(pin=raw["pin"], patches=tuple(raw["patches"]), files=raw["files"], patches_dir=pdir,
                    name=raw.get("name", "pin"))


def supported() -> list[Manifest]:
    """The manifests of the supported upstreams that this install ships, the pin first."""
    dirs = [(PATCHES_DIR / sub).resolve() for _, sub in UPSTREAMS]
    return [load_manifest(d) for d in dirs if (d / MANIFEST_NAME).is_file()]


def _recognised(root: Path, manifest: Manifest) -> int:
    """How many of the manifest's files DIR holds pristine or patched."""
    known = 0
    for rel, sums in manifest.files.items():
        path = root / rel
        known += path.is_file() and _sha256(path) in (sums["pristine"], sums["patched"])
    return known


def detect(root: Path | str, patches_dir: Path | str | None = None) -> Manifest:
    """The series for DIR: PATCHES_DIR's if given, else the supported upstream that recognises most of
    DIR's touched files (pristine or patched). PatchError when none recognises any."""
    if patches_dir is not None:
        return load_manifest(patches_dir)
    root = Path(root)
    manifests = supported()
    scores = [_recognised(root, m) for m in manifests]
    if not scores or max(scores) == 0:
        names = " or ".join(m.label for m in manifests)
        raise PatchError(f"{root} is not a nanochat commit this plugin supports ({names}): none of the files our "
                         f"patches touch hashes as either commit's; use a checkout of one of them")
    return manifests[scores.index(max(scores))]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git() -> str:
    exe = shutil.which("git")
    if exe is None:
        raise PatchError("git is not installed or not on PATH; it is needed to apply the nanochat patches")
    return exe


def _env(root: Path) -> dict[str, str]:
    # Stop git from finding an enclosing repository: a plain DIR inside another checkout must be
    # patched as a plain directory, with paths relative to DIR.
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(root.parent)}


def _check_dir(root: Path) -> Path:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise PatchError(f"{root} is not a directory")
    if not (root / MARKER_FILE).is_file():
        raise PatchError(f"{root} does not look like a nanochat tree (no {MARKER_FILE})")
    return root


def _head(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    out = subprocess.run([_git(), "rev-parse", "HEAD"], cwd=root, env=_env(root),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise PatchError(f"{root} is a git checkout but its HEAD cannot be read: {out.stderr.strip()}")
    return out.stdout.strip()


def _status(root: Path, manifest: Manifest) -> Status:
    files: dict[str, str] = {}
    for rel, sums in manifest.files.items():
        path = root / rel
        if not path.is_file():
            files[rel] = MISSING
            continue
        digest = _sha256(path)
        files[rel] = PATCHED if digest == sums["patched"] else PRISTINE if digest == sums["pristine"] else MODIFIED
    record = root / SOURCE_FILE
    source = record.read_text().strip() if record.is_file() else None
    return Status(dir=root, pin=manifest.pin, head=_head(root), files=files, source=source, upstream=manifest.name)


def verify(root: Path | str, *, patches_dir: Path | str | None = None) -> Status:
    """Per-file state of DIR; ``status.ok`` only when every touched file is fully patched."""
    root = _check_dir(Path(root))
    return _status(root, detect(root, patches_dir))


def _checked_status(root: Path, manifest: Manifest) -> Status:
    status = _status(root, manifest)
    if status.state == "mixed":
        modified = [p for p, s in status.files.items() if s == MODIFIED]
        missing = [p for p, s in status.files.items() if s == MISSING]
        tail = "revert them or use a fresh checkout"
        if modified:
            raise PatchError(f"{root} has local changes to {', '.join(modified)} "
                             f"(neither pristine nor patched at {manifest.pin[:7]}); {tail}")
        if missing:
            raise PatchError(f"{root} is missing {', '.join(missing)} (expected at {manifest.pin[:7]}); "
                             "use a fresh checkout")
        half = ", ".join(f"{p} {s}" for p, s in status.files.items())
        raise PatchError(f"{root} is partly patched ({half}); {tail}")
    return status


def _git_apply(work: Path, patches: list[Path], *, reverse: bool, what: str) -> None:
    """Apply PATCHES one at a time (reversed: in reverse order) inside the plain directory WORK."""
    for patch in reversed(patches) if reverse else patches:
        cmd = [_git(), "apply", *(["-R"] if reverse else []), str(patch)]
        out = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True)
        if out.returncode != 0:
            detail = out.stderr.strip().splitlines()
            verb = "reverting" if reverse else "applying"
            raise PatchError(f"git apply failed {verb} {patch.name} to {what}: "
                             f"{detail[0] if detail else out.returncode}")


def _run_apply(root: Path, manifest: Manifest, *, reverse: bool) -> None:
    """Patch a scratch copy of the touched files, check its hashes, then move the results into ROOT.

    Nothing in ROOT is written unless the whole series applies and gives the expected files.
    """
    goal = "pristine" if reverse else "patched"
    with tempfile.TemporaryDirectory(prefix="mc-nanochat-") as tmp:
        work = Path(tmp) / "tree"
        for rel in manifest.files:
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, work / rel)
        _git_apply(work, manifest.patch_paths, reverse=reverse, what=str(root))
        wrong = [rel for rel, sums in manifest.files.items() if _sha256(work / rel) != sums[goal]]
        if wrong:
            raise PatchError(f"the patch series does not give the {goal} files recorded in the manifest "
                             f"({', '.join(wrong)}); the manifest and patches disagree")
        staged: list[tuple[Path, Path]] = []
        try:
            for rel in manifest.files:
                dst = root / rel
                staged.append((dst.with_name(f".{dst.name}.mc-tmp"), dst))
                shutil.copyfile(work / rel, staged[-1][0])
                shutil.copymode(dst, staged[-1][0])
            for tmp_dst, dst in staged:
                os.replace(tmp_dst, dst)
        finally:
            for tmp_dst, _ in staged:
                tmp_dst.unlink(missing_ok=True)


def _change(root: Path, manifest: Manifest, *, reverse: bool) -> bool:
    goal = PRISTINE if reverse else PATCHED
    if _checked_status(root, manifest).state == goal:
        return False
    _run_apply(root, manifest, reverse=reverse)
    after = _status(root, manifest)
    if after.state != goal:
        raise PatchError(f"after {'reverting' if reverse else 'applying'} the patches, {root} is not {goal}: "
                         + ", ".join(f"{p} {s}" for p, s in after.files.items() if s != goal))
    return True


def apply(root: Path | str, *, patches_dir: Path | str | None = None, source: str | None = None) -> bool:
    """Patch DIR in place and record the plugin's source (SOURCE, default :func:`plugin_source`).

    Returns False if the files were already patched (then only the record may be rewritten).
    """
    root = _check_dir(Path(root))
    spec = plugin_source() if source is None else source  # before writing anything: it can fail
    changed = _change(root, detect(root, patches_dir), reverse=False)
    record = root / SOURCE_FILE
    if not record.is_file() or record.read_text() != spec + "\n":
        tmp = record.with_name(record.name + ".mc-tmp")
        tmp.write_text(spec + "\n")
        os.replace(tmp, record)
    return changed


def revert(root: Path | str, *, patches_dir: Path | str | None = None) -> bool:
    """Restore DIR's pristine files and remove the source record. Returns False if there was nothing to do."""
    root = _check_dir(Path(root))
    changed = _change(root, detect(root, patches_dir), reverse=True)
    record = root / SOURCE_FILE
    if record.is_file():
        record.unlink()
        changed = True
    return changed


def _local_path(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _is_our_source_tree(path: Path) -> bool:
    pyproject = path / "pyproject.toml"
    return pyproject.is_file() and f'name = "{DISTRIBUTION}"' in pyproject.read_text()


def plugin_source() -> str:
    """How to install exactly the plugin that is running, as one ``uv pip install``/``pip install`` argument.

    - run from a source tree (a clone, an editable install, an unpacked sdist): that directory;
    - installed from a local wheel, sdist or directory that still exists: its path;
    - installed from a URL or a VCS: that URL (a VCS one at the installed commit);
    - otherwise (an index install, or a local file since removed): ``megacontext-plugin==VERSION``.
    """
    if _is_our_source_tree(PACKAGE_DIR.parent):
        return str(PACKAGE_DIR.parent)
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    installed = None if dist is None else Path(str(dist.locate_file("megacontext_plugin/__init__.py"))).resolve()
    if installed != PACKAGE_DIR / "__init__.py":
        raise PatchError(f"cannot tell how to install the running plugin ({PACKAGE_DIR} is neither a source tree "
                         f"nor the installed {DISTRIBUTION}); install it with pip, or run from a clone")
    pinned = f"{DISTRIBUTION}=={dist.version}"
    raw = dist.read_text("direct_url.json")
    if not raw:
        return pinned
    direct = json.loads(raw)
    url = direct["url"]
    if "vcs_info" in direct:
        vcs = direct["vcs_info"]
        return f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
    local = _local_path(url)
    if local is None:
        return url
    return str(local) if local.exists() else pinned


def build_manifest(pristine_dir: Path | str, pin: str, patches: list[str],
                   patches_dir: Path | str | None = None, upstream: str = "pin") -> dict:
    """The manifest for PATCHES (in order) against PRISTINE_DIR, the commit PIN of the supported UPSTREAM
    (``pin`` or ``master``): applies them to a scratch copy and hashes."""
    pdir = Path(patches_dir) if patches_dir is not None else PATCHES_DIR
    src = Path(pristine_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "tree"
        touched: list[str] = []
        for name in patches:
            for line in (pdir / name).read_text().splitlines():
                if line.startswith("+++ b/") or line.startswith("--- a/"):
                    rel = line[6:].strip()
                    if rel not in touched:
                        touched.append(rel)
        for rel in touched:
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, work / rel)
        _git_apply(work, [pdir / n for n in patches], reverse=False, what=str(src))
        files = {rel: {"pristine": _sha256(src / rel), "patched": _sha256(work / rel)} for rel in touched}
    return {"upstream": "https://github.com/karpathy/nanochat", "name": upstream, "pin": pin, "patches": patches,
            "files": files}
