"""The README stays true: the two commands lead it, and its configuration table is the one
generated from the settings (so every env var is documented with its real default)."""

from __future__ import annotations

from pathlib import Path

from tldw_Server_API.app.core.config import env_var_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_env_table_matches_settings() -> None:
    start = README.index("<!-- env-table:start -->") + len("<!-- env-table:start -->")
    table = README[start:README.index("<!-- env-table:end -->")].strip()
    assert table == env_var_markdown(), "regenerate with: .venv/bin/python scripts/update_readme_env.py"


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "scripts/serve.sh" in first_block and "scripts/test.sh" in first_block
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "REQUIRE_SERVICES=1" in ci and "scripts/test.sh" in ci
