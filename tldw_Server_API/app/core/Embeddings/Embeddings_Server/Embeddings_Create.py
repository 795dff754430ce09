"""Engine entry point: the registry that maps `provider:model` names to a provider, and
`create_provider_registry`, which builds the providers from config. The provider protocol and its
value types live in `provider_types.py` (adapters import them from there, not from here, so no
adapter and this module import each other) and are re-exported here.

Adapters live in sibling modules (one class each) and are imported lazily, so importing this
module pulls in neither torch nor transformers. Adding a provider = one adapter class plus one
line in `_PROVIDER_FACTORIES`.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.cpu_capabilities import CpuCapabilities
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import EngineChooser

# Every provider family the seeds document. Those without a factory answer 501 until built.
KNOWN_PROVIDERS: tuple[str, ...] = ("huggingface", "onnx", "openai", "local_api")
LOCAL_ENGINES: tuple[str, ...] = ("huggingface", "onnx")


class ProviderRegistry:
    """Name -> provider, plus the catalog of models offered by default."""

    def __init__(
        self,
        providers: Mapping[str, EmbeddingProvider],
        catalog: Sequence[str],
        default_model: str,
        default_provider: str = "huggingface",
        chooser: EngineChooser | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._chooser = chooser
        self._default_provider = default_provider
        self._catalog: list[tuple[str, str]] = []
        for entry in catalog:
            parsed = parse_model_name(entry)
            self._catalog.append((parsed.provider or default_provider, parsed.model_id))
        default = parse_model_name(default_model)   # a bare id or `provider:model`
        self._default_model = default.model_id
        # the catalog card marked default; a bare default is resolved as a client's bare id is (`route`)
        self._default_card = f"{default.provider or self.provider_for(default.model_id)}:{default.model_id}"
        self._default_name = f"{default.provider}:{default.model_id}" if default.provider else default.model_id

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
        """The default model as configured, `provider:model` or a bare id (what `resolve` takes: a
        bare local id runs on its engine choice, as when a client names it)."""
        return self._default_name

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
        """`provider:model` or a bare id -> provider + model info; ModelNotFound when absent. A
        bare id of a local model runs on the engine the chooser picked for it."""
        parsed = parse_model_name(model)
        name, model_id = (parsed.provider, parsed.model_id) if parsed.provider else self.route(parsed.model_id)
        provider = self.get(name)
        return ResolvedModel(provider=provider, info=provider.model_info(model_id))

    def route(self, model_id: str) -> tuple[str, str]:
        """(provider, model id) a bare id runs as: the engine choice for a local model, else the
        catalog's provider. The one rule for bare ids (requests, fallback plans, stored vectors)."""
        chosen = self.bare_engine(model_id)
        if chosen is None:
            return self.provider_for(model_id), model_id
        provider, _, concrete = chosen.partition(":")
        return provider, concrete

    @property
    def chooser(self) -> EngineChooser | None:
        return self._chooser

    def bare_engine(self, model_id: str) -> str | None:
        """`provider:model` a bare local id runs on (None: no choice applies, e.g. a remote model,
        a variant, or a model with no local copy, which resolves and fails as before)."""
        if self._chooser is None or "@" in model_id or self.provider_for(model_id) not in LOCAL_ENGINES:
            return None
        try:
            choice = self._chooser.choice(model_id)
        except TLDWError:
            return None
        provider: Any = self._providers.get(choice.chosen.partition(":")[0])
        if choice.variant is not None and provider is not None:
            provider.run_as(model_id, choice.variant)   # idempotent: a dict lookup once set
        return choice.chosen

    def bare_local_models(self) -> list[str]:
        """The catalog's local models by their bare ids (what `measure_engines` looks at)."""
        return list(dict.fromkeys(without_variant(model_id)
                                  for name, model_id in self._catalog if name in LOCAL_ENGINES))

    async def measure_engines(self, model_ids: Iterable[str]) -> None:
        """Measure the candidate engines of each bare id not measured yet on this machine and record
        the choice; models that lose are unloaded again. Failures are logged (the rule stays)."""
        for model_id in dict.fromkeys(model_ids):
            try:
                if self._chooser is None or self.bare_engine(model_id) is None \
                        or not self._chooser.needs_measuring(model_id):
                    continue
                await self._measure(self._chooser, model_id)
            except TLDWError as exc:
                from loguru import logger

                logger.warning("engine choice: {} not measured: {}", model_id, exc.message)

    async def _measure(self, chooser: EngineChooser, model_id: str) -> None:
        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import Candidate, measure

        options = chooser.options(model_id)
        encoders: dict[str, Any] = {}
        failures: dict[str, Exception] = {}
        async with AsyncExitStack() as held:
            for candidate in options:
                provider: Any = self.get(candidate.provider)
                try:
                    await held.enter_async_context(provider.use(candidate.explicit_id))
                    encoders[candidate.spec] = await provider.loaded_encoder(candidate.explicit_id)
                except TLDWError as exc:
                    failures[candidate.spec] = exc

            def encode(candidate: Candidate, texts: Sequence[str]) -> Any:
                if candidate.spec in failures:
                    raise failures[candidate.spec]
                return encoders[candidate.spec].encode(texts).vectors

            results = await asyncio.to_thread(measure, options, encode, chooser.bar)
        choice = chooser.decide(model_id, results)
        for candidate in options:
            if candidate.engine != choice.engine:
                loser: Any = self.get(candidate.provider)
                await loser.unload(candidate.explicit_id)

    def engine_report(self) -> dict[str, Any] | None:
        return None if self._chooser is None else self._chooser.report()

    def listings(self) -> list[ModelListing]:
        rows = []
        for provider_name, model_id in self._catalog:
            provider = self._providers.get(provider_name)
            loaded = provider is not None and _is_loaded(provider, model_id)
            try:
                info = self.get(provider_name).model_info(model_id)
                available = True
            except TLDWError:
                info = ModelInfo(provider=provider_name, model_id=model_id, dimension=None, max_tokens=None)
                available = False
            is_default = f"{provider_name}:{model_id}" == self._default_card
            rows.append(ModelListing(info, available, loaded, default=is_default))
        return rows

    def listing(self, model: str) -> ModelListing:
        parsed = parse_model_name(model)
        for row in self.listings():
            if row.info.model_id == parsed.model_id and parsed.provider in (None, row.info.provider):
                return row
        resolved = self.resolve(model)  # a model outside the catalog that resolves locally
        loaded = _is_loaded(resolved.provider, resolved.info.model_id)
        return ModelListing(resolved.info, True, loaded, default=False)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


def without_variant(model_id: str) -> str:
    """A model id without its `@<variant>` (`<id>@fp32` -> `<id>`): the id clients name it by."""
    return model_id.rpartition("@")[0] or model_id


def same_vectors(model_a: str, model_b: str) -> bool:
    """Whether two resolved model ids store interchangeable vectors: equal, or one is the other's
    `@fp32` (the reference precision; a bare id's exact engine is stored under the bare id). Other
    variants (`@int8`, a configured `@bf16`) are models of their own."""
    def reference(model_id: str) -> str:
        return model_id.removesuffix("@fp32")

    return reference(model_a) == reference(model_b)


def _is_loaded(provider: EmbeddingProvider, model_id: str) -> bool:
    """Whether what runs `model_id` is loaded (`<id>` and `<id>@fp32` name one onnx session)."""
    engine_id: Callable[[str], str] = getattr(provider, "engine_id", lambda m: m)
    return engine_id(model_id) in provider.loaded_models()


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


def _engine_chooser(config: EngineConfig, providers: Mapping[str, EmbeddingProvider],
                    caps: CpuCapabilities | None) -> EngineChooser:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server import cpu_capabilities
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import (
        ChoiceStore,
        EngineChooser,
        EngineFacts,
    )

    reference: Any = providers["huggingface"]
    onnx_available = importlib.util.find_spec("onnxruntime") is not None

    def facts(model_id: str) -> EngineFacts:
        profile = reference.profile(model_id)   # ModelNotFound & co. for a model with no local copy
        encoder = profile.padding_side is None and not profile.instructions
        return EngineFacts(config.huggingface.device, onnx_available, config.onnx.quantize, encoder)

    batching = config.batching
    tag = (f"torch_threads={config.huggingface.torch_threads},onnx_threads={config.onnx.threads},"
           f"passes={batching.parallel_passes},tokens={batching.max_padded_tokens},rows={batching.max_batch_rows},"
           f"unpadded={config.huggingface.unpadded}")
    return EngineChooser(config.selection, caps or cpu_capabilities.detect(),
                         ChoiceStore(config.catalog.model_dir / "engine_choice.json"), facts,
                         reference.model_revision, settings_tag=tag)


def create_provider_registry(config: EngineConfig, caps: CpuCapabilities | None = None) -> ProviderRegistry:
    """The providers of `config` and the engine chooser of bare ids; `caps`: the CPU's
    capabilities (detected when None)."""
    providers = {name: factory(config) for name, factory in _PROVIDER_FACTORIES.items()}
    return ProviderRegistry(providers, config.catalog.models, config.catalog.default_model,
                            chooser=_engine_chooser(config, providers, caps))


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
