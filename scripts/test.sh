#!/usr/bin/env bash
# Installs what is needed (first run only), then runs ruff, mypy on core/, and the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k embeddings -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/mypy tldw_Server_API/app/core
.venv/bin/python -m pytest "$@"
