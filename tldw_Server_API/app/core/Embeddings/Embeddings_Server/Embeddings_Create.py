"""Engine entry point: the registry that maps `provider:model` names to a provider, and
`create_provider_registry`, which builds the providers from config. The provider protocol and its
value types live in `provider_types.py` (adapters import them from there, not from here, so no
adapter and this module import each other) and are re-exported here.

Adapters live in sibling modules (one class each) and are imported lazily, so importing this
module pulls in neither torch nor transformers. Adding a provider = one adapter class plus one
line in `_PROVIDER_FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tldw_Server_API.app.core.config import EngineConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import (
    EmbeddingBatch,
    EmbeddingProvider,
    ModelInfo,
    ModelListing,
    ResolvedModel,
)
from tldw_Server_API.app.core.Embeddings.input_processing import parse_model_name
from tldw_Server_API.app.core.errors import ModelNotFound, ProviderNotImplemented, TLDWError, UnknownProvider

# Every provider family the seeds document. Those without a factory answer 501 until built.
KNOWN_PROVIDERS: tuple[str, ...] = ("huggingface", "onnx", "openai", "local_api")


class ProviderRegistry:
    """Name -> provider, plus the catalog of models offered by default."""

    def __init__(
        self,
        providers: Mapping[str, EmbeddingProvider],
        catalog: Sequence[str],
        default_model: str,
        default_provider: str = "huggingface",
    ) -> None:
        self._providers = dict(providers)
        self._default_provider = default_provider
        self._catalog: list[tuple[str, str]] = []
        for entry in catalog:
            parsed = parse_model_name(entry)
            self._catalog.append((parsed.provider or default_provider, parsed.model_id))
        default = parse_model_name(default_model)   # a bare id or `provider:model`
        self._default_model = default.model_id
        self._default_spec = f"{default.provider or self.provider_for(default.model_id)}:{default.model_id}"

    @property
    def providers(self) -> Mapping[str, EmbeddingProvider]:
        return self._providers

    def get(self, name: str) -> EmbeddingProvider:
        if name not in KNOWN_PROVIDERS:
            raise UnknownProvider(
                f"unknown provider '{name}'; known providers: {', '.join(KNOWN_PROVIDERS)}", param="model"
            )
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderNotImplemented(f"provider '{name}' is not available on this server", param="model")
        return provider

    def provider_for(self, model_id: str) -> str:
        for provider_name, catalog_id in self._catalog:
            if catalog_id == model_id:
                return provider_name
        return self._default_provider

    @property
    def default_model(self) -> str:
        """The default model as `provider:model` (what `resolve` takes)."""
        return self._default_spec

    @property
    def default_model_id(self) -> str:
        """The default model's id without its provider (as stored beside vectors)."""
        return self._default_model

    def default_models_for(self, provider: str) -> list[str]:
        """A provider's catalog models, the configured default model first when it is among them."""
        ids = [model_id for name, model_id in self._catalog if name == provider]
        ids.sort(key=lambda model_id: model_id != self._default_model)
        return ids or [self._default_model]

    def resolve(self, model: str) -> ResolvedModel:
        """`provider:model` or a bare id -> provider + model info; ModelNotFound when absent."""
        parsed = parse_model_name(model)
        provider = self.get(parsed.provider or self.provider_for(parsed.model_id))
        return ResolvedModel(provider=provider, info=provider.model_info(parsed.model_id))

    def listings(self) -> list[ModelListing]:
        rows = []
        for provider_name, model_id in self._catalog:
            provider = self._providers.get(provider_name)
            loaded = provider is not None and model_id in provider.loaded_models()
            try:
                info = self.get(provider_name).model_info(model_id)
                available = True
            except TLDWError:
                info = ModelInfo(provider=provider_name, model_id=model_id, dimension=None, max_tokens=None)
                available = False
            is_default = f"{provider_name}:{model_id}" == self._default_spec
            rows.append(ModelListing(info, available, loaded, default=is_default))
        return rows

    def listing(self, model: str) -> ModelListing:
        parsed = parse_model_name(model)
        for row in self.listings():
            if row.info.model_id == parsed.model_id and parsed.provider in (None, row.info.provider):
                return row
        resolved = self.resolve(model)  # a model outside the catalog that resolves locally
        loaded = resolved.info.model_id in resolved.provider.loaded_models()
        return ModelListing(resolved.info, True, loaded, default=False)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


def _huggingface(config: EngineConfig) -> EmbeddingProvider:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver

    resolver = ModelResolver.from_config(config.catalog.model_dir, config.models)
    return HuggingFaceProvider(config.huggingface, resolver, config.batching, config.models, config.prompts_file)


def _onnx(config: EngineConfig) -> EmbeddingProvider:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.onnx_provider import OnnxProvider

    resolver = ModelResolver.from_config(config.catalog.model_dir, config.models)
    return OnnxProvider(config.onnx, resolver, config.batching, config.models, config.prompts_file)


def _openai(config: EngineConfig) -> EmbeddingProvider:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.openai_compatible_provider import (
        create_openai_provider,
    )

    return create_openai_provider(config)


def _local_api(config: EngineConfig) -> EmbeddingProvider:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.openai_compatible_provider import (
        create_local_api_provider,
    )

    return create_local_api_provider(config)


_PROVIDER_FACTORIES: dict[str, Callable[[EngineConfig], EmbeddingProvider]] = {
    "huggingface": _huggingface,
    "onnx": _onnx,
    "openai": _openai,
    "local_api": _local_api,
}


def create_provider_registry(config: EngineConfig) -> ProviderRegistry:
    providers = {name: factory(config) for name, factory in _PROVIDER_FACTORIES.items()}
    return ProviderRegistry(providers, config.catalog.models, config.catalog.default_model)


__all__ = [
    "KNOWN_PROVIDERS",
    "EmbeddingBatch",
    "EmbeddingProvider",
    "ModelInfo",
    "ModelListing",
    "ResolvedModel",
    "ModelNotFound",
    "ProviderRegistry",
    "ResolvedModel",
    "create_provider_registry",
]
