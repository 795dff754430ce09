"""Policy and fallback planning: allow/deny with wildcards, admin bypass vs strict, fallback hops
and the model map."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.config import DEFAULT_FALLBACK_CHAIN, PolicyConfig, _model_map
from tldw_Server_API.app.core.Embeddings.policy import EmbeddingPolicy, Hop, matches
from tldw_Server_API.app.core.errors import PermissionDenied


def policy(**overrides: Any) -> EmbeddingPolicy:
    values: dict[str, Any] = {
        "enforce": True, "strict": False, "allowed_providers": (), "allowed_models": (),
        "denied_providers": (), "denied_models": (), "fallback_chain": DEFAULT_FALLBACK_CHAIN,
        "fallback_model_map": {}, "allow_fallback_with_header": False,
    }
    values.update(overrides)
    return EmbeddingPolicy(PolicyConfig(**values))


def test_wildcards() -> None:
    assert matches("text-embedding-3-small", ["text-embedding-*"])
    assert not matches("ada", ["text-embedding-*"])
    assert matches("anything", ["*"])
    assert matches("exact", ["exact"]) and not matches("exact2", ["exact"])


@given(st.text(), st.text())
def test_prefix_pattern_matches_iff_prefix(prefix: str, rest: str) -> None:
    assert matches(prefix + rest, [prefix + "*"])


def test_deny_lists_refuse_with_403_error() -> None:
    p = policy(denied_providers=("openai",), denied_models=("bad-*",))
    with pytest.raises(PermissionDenied, match="provider 'openai'"):
        p.check("openai", "text-embedding-3-small", is_admin=False)
    with pytest.raises(PermissionDenied, match="model 'bad-model'"):
        p.check("huggingface", "bad-model", is_admin=False)
    p.check("huggingface", "good", is_admin=False)


def test_allow_lists_accept_bare_or_qualified_patterns() -> None:
    p = policy(allowed_providers=("huggingface", "onnx"), allowed_models=("onnx:sentence-*", "intfloat/*"))
    p.check("onnx", "sentence-transformers/x", is_admin=False)
    p.check("huggingface", "intfloat/e5", is_admin=False)
    with pytest.raises(PermissionDenied):
        p.check("huggingface", "sentence-transformers/x", is_admin=False)   # qualified pattern is onnx-only
    with pytest.raises(PermissionDenied):
        p.check("openai", "intfloat/e5", is_admin=False)


def test_admin_bypass_only_when_not_strict() -> None:
    loose = policy(denied_providers=("openai",))
    loose.check("openai", "m", is_admin=True)
    strict = policy(denied_providers=("openai",), strict=True)
    with pytest.raises(PermissionDenied):
        strict.check("openai", "m", is_admin=True)


def test_not_enforced_allows_everything() -> None:
    p = policy(enforce=False, denied_providers=("openai",))
    p.check("openai", "m", is_admin=False)
    assert p.allowed("openai", "m", is_admin=False)


def test_fallback_plan_follows_chain_without_repeats() -> None:
    p = policy(fallback_chain={"openai": ["huggingface", "openai", "onnx", "huggingface"]})
    hops = p.fallback_plan("openai", "text-embedding-3-small", pinned_by_header=False)
    assert [h.provider for h in hops] == ["openai", "huggingface", "onnx"]
    assert hops[0] == Hop("openai", "text-embedding-3-small")
    assert hops[1].model is None


def test_header_pin_disables_fallback_unless_allowed() -> None:
    assert len(policy().fallback_plan("openai", "m", pinned_by_header=True)) == 1
    allowed = policy(allow_fallback_with_header=True)
    assert len(allowed.fallback_plan("openai", "m", pinned_by_header=True)) > 1


def test_model_map_per_target_and_for_all() -> None:
    mapping = _model_map({
        "openai:text-embedding-3-small": {"huggingface": "sentence-transformers/all-MiniLM-L6-v2"},
        "local_api:nomic": "nomic-embed-text",
    })
    p = policy(fallback_model_map=mapping, fallback_chain={"openai": ["huggingface", "onnx"],
                                                            "local_api": ["huggingface"]})
    hops = p.fallback_plan("openai", "text-embedding-3-small", pinned_by_header=False)
    assert hops[1] == Hop("huggingface", "sentence-transformers/all-MiniLM-L6-v2")
    assert hops[2] == Hop("onnx", None)
    assert p.fallback_plan("local_api", "nomic", pinned_by_header=False)[1] == Hop("huggingface", "nomic-embed-text")


def test_empty_chain_means_no_fallback() -> None:
    assert policy(fallback_chain={}).fallback_plan("openai", "m", pinned_by_header=False) == [Hop("openai", "m")]
