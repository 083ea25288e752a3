"""``BUNDLE/predict.sh``: the one command a bundle runs on the target.

``bash predict.sh QUESTIONS OUT_DIR [sciqa infer options...]``:

1. checks the bundle against ``manifest.json`` (every file there, at its size; its sha256
   too with ``SCIQA_CHECK_SHA256=1``) with the target's own Python, before anything else;
2. installs sciqa from ``wheels/`` with ``--no-index`` when Python cannot import it, or
   a package these members need (e.g. gguf) is missing; the host's pip configuration is
   ignored, only the bundle's wheels count;
3. runs ``sciqa infer`` from the bundle root, so the members and ``config.toml`` are named
   relative to it.

Nothing is written inside the bundle: Kaggle mounts datasets read-only. Outputs go to
OUT_DIR; caches (the GGUF conversion of ``llm:`` members) to ``$XDG_CACHE_HOME`` or
``~/.cache``, or a temporary folder when neither is writable.
"""

from __future__ import annotations

import shlex

PREDICT = "predict.sh"

_CHECK = r"""
import hashlib, json, os, sys
bundle = sys.argv[1]
if sys.version_info < (3, 11):
    sys.exit(f"error: sciqa needs Python >= 3.11 and {sys.executable} is "
             f"{sys.version.split()[0]}; set PYTHON=/path/to/python3.11+")
try:
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
except (OSError, ValueError) as exc:
    sys.exit(f"error: {bundle}/manifest.json: cannot read it ({exc}); upload the whole bundle")
hashing = os.environ.get("SCIQA_CHECK_SHA256") == "1"
for entry in manifest["files"]:
    path = os.path.join(bundle, entry["path"])
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: missing from the bundle (listed in manifest.json); "
                 "upload the whole bundle again, or re-run sciqa pack")
    if os.path.getsize(path) != entry["bytes"]:
        sys.exit(f"error: {path}: {os.path.getsize(path)} bytes but manifest.json says "
                 f"{entry['bytes']}; the upload is damaged, upload it again")
    if hashing:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if "sha256:" + digest.hexdigest() != entry["sha256"]:
            sys.exit(f"error: {path}: sha256 differs from manifest.json; upload it again")
want = manifest["wheels"]["python"]
here = "%d.%d" % sys.version_info[:2]
if here != want:
    print(f"predict.sh: warning: Python {here} here, the bundled wheels are for {want}",
          file=sys.stderr)
""".strip()

TEMPLATE = r"""#!/usr/bin/env bash
# predict.sh QUESTIONS OUT_DIR [sciqa infer options]: this bundle's ensemble, offline.
# Made by `sciqa pack` (sciqa @VERSION@, @CREATED@); see manifest.json and docs/kaggle.md.
# Checks the bundle, installs sciqa from wheels/ (no index) when Python cannot import it,
# then runs `sciqa infer` on the bundled members with config.toml. It writes nothing inside
# the bundle: outputs go to OUT_DIR, caches outside (the bundle may be read-only).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 QUESTIONS OUT_DIR [sciqa infer options, e.g. --set infer.tta=2]" >&2
  exit 2
fi
BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
PYTHON="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"  # absolute: we cd
QUESTIONS="$("$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1")"
OUT_DIR="$("$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$2")"
shift 2

"$PYTHON" - "$BUNDLE" <<'CHECK'
@CHECK@
CHECK

# sciqa, and the packages these members need that the target may lack (e.g. gguf); -P:
# a sciqa folder in the current directory does not count.
if ! "$PYTHON" -P -c "import sciqa" >/dev/null 2>&1 || ! "$PYTHON" -P -c \
  'import importlib.metadata as m, sys; [m.distribution(n) for n in sys.argv[1:]]' \
  @NEEDED@ >/dev/null 2>&1; then
  echo "predict.sh: installing from $BUNDLE/wheels (no index): @INSTALL@" >&2
  env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PYTHON" -m pip install --quiet --no-cache-dir --no-index \
    --find-links "$BUNDLE/wheels" @INSTALL@
fi
"$PYTHON" -P -c 'import sciqa, sys
if sciqa.__version__ != sys.argv[1]:
    print(f"predict.sh: warning: using the installed sciqa {sciqa.__version__}; "
          f"the bundle was made with {sys.argv[1]}", file=sys.stderr)' @VERSION@

# Caches (e.g. a GGUF member's one-off conversion) go where they can be written.
CACHE="${HOME:-/nonexistent}/.cache"
if [ -z "${XDG_CACHE_HOME:-}" ]; then
  if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
    XDG_CACHE_HOME="$(mktemp -d)"
    export XDG_CACHE_HOME
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# From the bundle root: members and config.toml are named relative to it. -P keeps the
# bundle off sys.path, so Python neither imports from it nor writes there.
cd "$BUNDLE"
MEMBERS=(
@MEMBERS@
)
exec "$PYTHON" -P -m sciqa infer "$QUESTIONS" "${MEMBERS[@]}" --out "$OUT_DIR" \
  -c config.toml "$@"
"""


def render(
    *, version: str, created: str, install: list[str], needed: list[str], members: list[str]
) -> str:
    """The script for these pip requirements (``needed``: their distribution names other
    than sciqa's) and bundled member arguments."""
    return (
        TEMPLATE.replace("@VERSION@", version)
        .replace("@CREATED@", created)
        .replace("@CHECK@", _CHECK)
        .replace("@INSTALL@", " ".join(shlex.quote(r) for r in install))
        .replace("@NEEDED@", " ".join(shlex.quote(n) for n in needed))
        .replace("@MEMBERS@", "\n".join(f"  {shlex.quote(m)}" for m in members))
    )
