#!/usr/bin/env bash
# Installs what the project needs into ./.venv, once: torch (CPU wheel, pinned) first, then the
# package (with the `dev` extra when called with `dev`), then the tiktoken cl100k_base file.
# A second run with unchanged inputs finishes in well under a second (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION="2.13.0"
LITELLM_VERSION="1.109.1"   # its wheel carries tiktoken's cl100k_base file (no download of it here)
CL100K_FILE="9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
CL100K_SHA256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
TIKTOKEN_DIR=".cache/tiktoken"

stamp_for() { printf '%s' "$(cat pyproject.toml scripts/install.sh; echo "$1")" | sha256sum | cut -c1-16; }
stamp=".venv/.installed-${extra:-base}-$(stamp_for "$extra")"
dev_stamp=".venv/.installed-dev-$(stamp_for dev)"   # a dev install holds everything the base needs
if [[ -f "$TIKTOKEN_DIR/$CL100K_FILE" && ( -f "$stamp" || ( -z "$extra" && -f "$dev_stamp" ) ) ]]; then
  exit 0
fi

echo "[install] creating the environment in .venv (first run takes a few minutes)" >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip wheel setuptools
"${PIP[@]}" "torch==${TORCH_VERSION}"
if [[ -n "$extra" ]]; then "${PIP[@]}" -e ".[${extra}]"; else "${PIP[@]}" -e .; fi

if [[ ! -f "$TIKTOKEN_DIR/$CL100K_FILE" ]]; then
  echo "[install] provisioning tiktoken cl100k_base into $TIKTOKEN_DIR" >&2
  tmp="$(mktemp -d)"
  .venv/bin/python -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" "litellm==${LITELLM_VERSION}"
  mkdir -p "$TIKTOKEN_DIR"
  .venv/bin/python - "$tmp" "$TIKTOKEN_DIR" "$CL100K_FILE" "$CL100K_SHA256" <<'PYEOF'
import glob, hashlib, sys, zipfile
tmp, out, name, sha = sys.argv[1:5]
wheel = glob.glob(f"{tmp}/litellm-*.whl")[0]
data = zipfile.ZipFile(wheel).read(f"litellm/litellm_core_utils/tokenizers/{name}")
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit("cl100k_base file has an unexpected hash")
open(f"{out}/{name}", "wb").write(data)
PYEOF
  rm -rf "$tmp"
fi
rm -f .venv/.installed-"${extra:-base}"-*
touch "$stamp"
