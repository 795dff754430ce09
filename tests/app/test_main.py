"""The app factory's process-wide defaults: HF tokenizers' thread pool is off unless the operator
set TOKENIZERS_PARALLELISM (requests are tokenised a few texts at a time), and oneDNN's primitive
cache holds 256 primitives unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set."""

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
    """oneDNN's default (1,024, one per matmul shape) grew the server's RSS ~200 MB/min under load
    (bench/soak.py); none at all JIT-compiled every product of every pass. 256 holds the unpadded
    encoder's padded shapes (`token_rows`); an operator's value wins."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
