#!/usr/bin/env bash
# Installs what is needed (first run only), then runs ruff, mypy on core/, and the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k embeddings -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The browser tests (admin console, /docs) drive Debian's chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi
.venv/bin/ruff check .
.venv/bin/mypy tldw_Server_API/app/core
.venv/bin/python -m pytest "$@"
