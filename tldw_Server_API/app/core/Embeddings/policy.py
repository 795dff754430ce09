"""Provider/model policy and the fallback plan of the embeddings API, as pure logic.

`EmbeddingPolicy.check` applies the allow/deny lists (trailing `*` wildcards) and raises
`PermissionDenied` (403); admins bypass it unless the policy is strict. `fallback_plan` lists the
(provider, model) hops one request may try, in order: the requested one first, then the chain
configured for its provider, each with the model the model map names for it. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tldw_Server_API.app.core.config import PolicyConfig
from tldw_Server_API.app.core.errors import PermissionDenied


def matches(value: str, patterns: Iterable[str]) -> bool:
    """Exact match, or prefix match for a pattern ending in `*` (`*` alone matches everything)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if value.startswith(pattern[:-1]):
                return True
        elif value == pattern:
            return True
    return False


@dataclass(frozen=True)
class Hop:
    provider: str
    model: str | None    # None: the fallback provider's default model


class EmbeddingPolicy:
    def __init__(self, config: PolicyConfig) -> None:
        self._config = config

    @property
    def config(self) -> PolicyConfig:
        return self._config

    def denial(self, provider: str, model: str) -> str | None:
        """Why `provider:model` is refused, or None when allowed (ignores enforcement flags)."""
        c = self._config
        qualified = f"{provider}:{model}"
        if matches(provider, c.denied_providers):
            return f"provider '{provider}' is denied by policy"
        if matches(model, c.denied_models) or matches(qualified, c.denied_models):
            return f"model '{model}' is denied by policy"
        if c.allowed_providers and not matches(provider, c.allowed_providers):
            return f"provider '{provider}' is not in the allowed providers"
        if c.allowed_models and not (matches(model, c.allowed_models) or matches(qualified, c.allowed_models)):
            return f"model '{model}' is not in the allowed models"
        return None

    def applies_to(self, is_admin: bool) -> bool:
        return self._config.enforce and (self._config.strict or not is_admin)

    def check(self, provider: str, model: str, *, is_admin: bool) -> None:
        if not self.applies_to(is_admin):
            return
        reason = self.denial(provider, model)
        if reason is not None:
            raise PermissionDenied(reason, param="model", code="model_not_allowed")

    def allowed(self, provider: str, model: str, *, is_admin: bool) -> bool:
        return not self.applies_to(is_admin) or self.denial(provider, model) is None

    def fallback_plan(self, provider: str, model: str, *, pinned_by_header: bool) -> list[Hop]:
        """The requested hop, then the configured chain unless a pinning header turned it off."""
        hops = [Hop(provider, model)]
        if pinned_by_header and not self._config.allow_fallback_with_header:
            return hops
        for target in self._config.fallback_chain.get(provider, []):
            if target != provider and all(h.provider != target for h in hops):
                hops.append(Hop(target, self.fallback_model(provider, model, target)))
        return hops

    def fallback_model(self, provider: str, model: str, target: str) -> str | None:
        """Model map lookup: `{"provider:model": {"target": "model"}}` or `{"provider:model": "model"}`
        (the same model on every fallback provider); None: the target's default model."""
        entry = self._config.fallback_model_map.get(f"{provider}:{model}")
        if entry is None:
            return None
        return entry.get(target, entry.get("*"))
