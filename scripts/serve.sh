#!/usr/bin/env bash
# Installs what is needed (first run only) and serves the API on 127.0.0.1:8000 (TLDW_HOST/TLDW_PORT)
# with the embedded defaults: bundled all-MiniLM-L6-v2, single-user API key, data in ./Databases.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}"
exec .venv/bin/python -m tldw_Server_API.cli serve "$@"
