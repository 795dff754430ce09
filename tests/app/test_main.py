"""The app factory's process-wide defaults: HF tokenizers' thread pool is off unless the operator
set TOKENIZERS_PARALLELISM (requests are tokenised a few texts at a time), and oneDNN's primitive
cache holds 1,024 primitives unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import make_settings

from tldw_Server_API.app.main import create_app


def test_tokenizer_parallelism_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    create_app(make_settings(tmp_path))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_an_operators_tokenizer_parallelism_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    create_app(make_settings(tmp_path))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_onednn_primitive_cache_is_bounded_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stated, not left to the torch build: 1,024 holds the unpadded encoder's primitives (40 sizes
    x 4 products x 2 pass widths, made at warm-up) with room to spare; 256 did not (evictions,
    RSS rising 13 MB/min in bench/soak.py); none at all JIT-compiled every product of every pass.
    An operator's value wins."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
