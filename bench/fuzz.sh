#!/usr/bin/env bash
# The long property-based fuzz of every route (the test command runs the same test with 12 examples
# per route): FUZZ_EXAMPLES examples per route (default 300), a fresh random seed per run (FUZZ_SEED
# unset: derandomized, the same examples as the test command). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-300}" FUZZ_SEED="${FUZZ_SEED:-$RANDOM}"
echo "[fuzz] $FUZZ_EXAMPLES examples per route, seed $FUZZ_SEED" >&2
exec .venv/bin/python -m pytest -q tests/test_api_fuzz.py "$@"
