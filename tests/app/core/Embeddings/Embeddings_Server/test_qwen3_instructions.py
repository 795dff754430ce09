"""Qwen3 embedding input formatting: which models, query detection, the instruction template from
the prompts file, documents as they are, and no double instruction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.config import DEFAULT_PROMPTS_FILE
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.qwen3_instructions import (
    DEFAULT_TASK,
    InstructionPrompts,
    format_text,
    format_texts,
    has_instruction,
    is_qwen3_embedding,
    load_prompts,
    looks_like_query,
)

PROMPTS = InstructionPrompts()


@pytest.mark.parametrize(("model_id", "expected"), [
    ("Qwen/Qwen3-Embedding-0.6B", True),
    ("qwen/qwen3-embedding-8b@int8", True),
    ("./models/my-QWEN3-finetuned-EMBEDDING", True),
    ("Qwen/Qwen3-8B", False),
    ("Qwen/Qwen2-Embedding", False),
    ("sentence-transformers/all-MiniLM-L6-v2", False),
])
def test_which_models_are_qwen3_embedding(model_id: str, expected: bool) -> None:
    assert is_qwen3_embedding(model_id) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("What is the capital of France", True),
    ("  how do magnets work", True),
    ("Is water wet", True),
    ("the capital of France?", True),
    ("Explain gravity?  ", True),
    ("Why?", True),
    ("The capital of France is Paris.", False),
    ("Whatever happens, stay calm.", False),        # a word starting with an interrogative is not one
    ("Howard Carter found the tomb.", False),
    ("", False),
    ("42 is the answer", False),
])
def test_query_detection(text: str, expected: bool) -> None:
    assert looks_like_query(text) is expected


def test_queries_get_the_documented_instruction_and_documents_stay_as_they_are() -> None:
    assert format_text("What is the capital of China?", PROMPTS) == (
        f"Instruct: {DEFAULT_TASK}\nQuery:What is the capital of China?")
    assert format_text("The capital of China is Beijing.", PROMPTS) == "The capital of China is Beijing."
    assert format_text("explain gravity?", PROMPTS, task="Find physics answers") == (
        "Instruct: Find physics answers\nQuery:explain gravity?")


def test_text_with_an_instruction_is_left_alone() -> None:
    already = "Instruct: Given a claim, find evidence\nQuery:what is the boiling point of water?"
    assert format_text(already, PROMPTS) == already
    assert has_instruction("  Instruct: x\nQuery:y") and not has_instruction("Instructions: read this")


@given(st.text(max_size=80))
def test_formatting_is_idempotent_and_never_doubles_the_instruction(text: str) -> None:
    once = format_text(text, PROMPTS)
    assert format_text(once, PROMPTS) == once
    assert once.count("Instruct:") <= text.count("Instruct:") + 1
    assert once.endswith(text) or once == text


def test_placeholders_inside_texts_are_not_expanded() -> None:
    text = "what does {task} mean in {text}?"
    assert format_text(text, PROMPTS).endswith("Query:" + text)


def test_each_text_is_classified_on_its_own() -> None:
    texts = ["Who wrote Hamlet?", "Hamlet is a tragedy by Shakespeare.", "Instruct: t\nQuery:q"]
    out = format_texts(texts, PROMPTS)
    assert out[0].startswith("Instruct: ") and out[1:] == texts[1:]


def test_the_shipped_prompts_file_holds_qwens_format() -> None:
    prompts = load_prompts(DEFAULT_PROMPTS_FILE)
    assert DEFAULT_PROMPTS_FILE.is_file()
    assert prompts.query_template == "Instruct: {task}\nQuery:{text}"
    assert prompts.document_template == "{text}"
    assert prompts.default_task == DEFAULT_TASK
    assert "what" in prompts.interrogatives and "how" in prompts.interrogatives


def test_prompts_file_overrides_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("qwen3_embedding:\n  default_task: Find code\n  query_template: 'Q[{task}] {text}'\n"
                    "  interrogatives: [define]\n", encoding="utf-8")
    prompts = load_prompts(path)
    assert format_text("define monad", prompts) == "Q[Find code] define monad"
    assert format_text("what is a monad", prompts) == "what is a monad"          # not a listed word
    assert format_text("a monad?", prompts) == "Q[Find code] a monad?"
    assert load_prompts(tmp_path / "missing.yaml") == InstructionPrompts()
    (tmp_path / "bad.yaml").write_text("- just a list\n", encoding="utf-8")
    assert load_prompts(tmp_path / "bad.yaml") == InstructionPrompts()
    assert load_prompts(None) == InstructionPrompts()
