"""Rewrite the README's configuration table from the settings (tests/test_readme.py checks it)."""

from pathlib import Path

from tldw_Server_API.app.core.config import env_var_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
start, end = "<!-- env-table:start -->", "<!-- env-table:end -->"
head, rest = text.split(start, 1)
readme.write_text(f"{head}{start}\n{env_var_markdown()}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
