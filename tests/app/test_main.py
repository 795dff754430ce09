"""The app factory's process-wide defaults: HF tokenizers' thread pool is off unless the operator
set TOKENIZERS_PARALLELISM (requests are tokenised a few texts at a time), and oneDNN keeps no
primitive cache unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set."""

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


def test_onednn_primitive_cache_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept per matmul shape, it grew the server's RSS ~200 MB/min under load (bench/soak.py)."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    create_app(make_settings(tmp_path))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
