#!/usr/bin/env bash
# The release steps: check, build, check the artifacts, and (only with --upload) upload them.
#
#   bash integration/release.sh            # CHANGELOG has a section for the version, a clean tree, ruff,
#                                          # the package check (.ci/package_check), dist/ built and twine-checked
#   bash integration/release.sh --upload   # the same, then `twine upload dist/*` (credentials: twine's own,
#                                          # TWINE_USERNAME/TWINE_PASSWORD or ~/.pypirc; TWINE_REPOSITORY_URL
#                                          # for another index, e.g. https://test.pypi.org/legacy/)
#
# CI never uploads: .ci/run runs .ci/package_check, not this script. The tag is yours to push afterwards
# (the script prints the command). Needs .venv with the `dev` extra (build, twine), as integration/mc_setup
# or .ci/run make it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOL=release
die() { echo "$TOOL: error: $*" >&2; exit 2; }
say() { echo "$TOOL: $*"; }

UPLOAD=0
for arg in "$@"; do
    case "$arg" in
        --upload) UPLOAD=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (expected --upload)" ;;
    esac
done
[ -x .venv/bin/twine ] || die "no .venv/bin/twine: .venv/bin/pip install -e '.[dev]' (build and twine)"
VERSION=$(.venv/bin/python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    pyproject.toml)
grep -q "^## \[\?$VERSION\]\?" CHANGELOG.md || die "CHANGELOG.md has no section for $VERSION (rename Unreleased first)"
[ -z "$(git status --porcelain 2>/dev/null)" ] || die "the working tree has uncommitted changes: commit them first"

say "megacontext-plugin $VERSION: ruff, then the package check"
.venv/bin/ruff check .
bash .ci/package_check
rm -rf dist
.venv/bin/python -m build --outdir dist . >/dev/null
.venv/bin/twine check --strict dist/*
ls -l dist
if [ "$UPLOAD" = 1 ]; then
    .venv/bin/twine upload dist/*
    say "uploaded; tag it: git tag v$VERSION && git push origin v$VERSION"
else
    say "built and checked; upload with: bash integration/release.sh --upload"
fi
