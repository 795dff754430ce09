"""Instruction-aware input formatting of Qwen3 embedding models: queries (end with `?` or start
with an interrogative word) get Qwen's documented `Instruct: {task}\nQuery:{text}`, documents stay
as they are, and a text already starting with `Instruct:` is left alone. Templates come from
`Config_Files/Prompts/embeddings.prompts.yaml` (path passed in). Pure functions plus one YAML read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_QUERY_TEMPLATE = "Instruct: {task}\nQuery:{text}"
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_INTERROGATIVES = (
    "what", "who", "whom", "whose", "which", "when", "where", "why", "how",
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will",
    "shall", "may", "might", "must", "has", "have", "had",
)
INSTRUCTION_PREFIX = "Instruct:"
_FIRST_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_FIELD = re.compile(r"\{(task|text)\}")


@dataclass(frozen=True)
class InstructionPrompts:
    query_template: str = DEFAULT_QUERY_TEMPLATE      # {task} and {text}
    document_template: str = "{text}"                 # documents: as they are
    default_task: str = DEFAULT_TASK
    interrogatives: tuple[str, ...] = DEFAULT_INTERROGATIVES


def is_qwen3_embedding(model_id: str) -> bool:
    lowered = model_id.lower()
    return "qwen3" in lowered and "embedding" in lowered


def load_prompts(path: Path | None) -> InstructionPrompts:
    """The `qwen3_embedding` section of the prompts file; built-in defaults for anything missing."""
    data: Any = None
    if path is not None and path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    section = data.get("qwen3_embedding") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return InstructionPrompts()
    defaults = InstructionPrompts()
    words = section.get("interrogatives")
    return InstructionPrompts(
        query_template=str(section.get("query_template") or defaults.query_template),
        document_template=str(section.get("document_template") or defaults.document_template),
        default_task=str(section.get("default_task") or defaults.default_task),
        interrogatives=tuple(str(w).lower() for w in words) if isinstance(words, list) else defaults.interrogatives,
    )


def looks_like_query(text: str, interrogatives: Sequence[str] = DEFAULT_INTERROGATIVES) -> bool:
    stripped = text.strip()
    if stripped.endswith("?"):
        return True
    first = _FIRST_WORD.match(stripped)
    return first is not None and first.group(0).lower() in interrogatives


def has_instruction(text: str) -> bool:
    return text.lstrip().startswith(INSTRUCTION_PREFIX)


def format_text(text: str, prompts: InstructionPrompts, task: str | None = None) -> str:
    """One input as the model expects it: instructed query, untouched instruction, or document."""
    if has_instruction(text):
        return text
    values = {"task": task or prompts.default_task, "text": text}
    template = prompts.query_template if looks_like_query(text, prompts.interrogatives) else prompts.document_template
    return _FIELD.sub(lambda match: values[match.group(1)], template)  # one pass: values never re-expanded


def format_texts(texts: Sequence[str], prompts: InstructionPrompts, task: str | None = None) -> list[str]:
    return [format_text(text, prompts, task) for text in texts]
