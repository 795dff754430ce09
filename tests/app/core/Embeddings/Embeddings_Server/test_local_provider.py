"""Model management in the local providers, on real models: idle unload of the real MiniLM by
the sweeper (injected clock and sleep) and an identical reload, LRU count cap, memory cap with
two real MiniLM copies, in-use models kept, warmup/unload, and trust_remote_code refusal."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig, ModelManagerConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
from tldw_Server_API.app.core.errors import InvalidInput

BATCHING = BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                          max_padded_tokens=1024, max_batch_rows=16)
TEXTS = ["The cat sat on the mat.", "Interest rates rose by a quarter point.", "short"]
TINY = ["org/tiny-a", "org/tiny-b", "org/tiny-c"]
COPY = "org/minilm-copy"
DEFAULT_MODELS = ModelManagerConfig(max_models_in_memory=3, max_memory_mb=0, unload_timeout_s=0, revisions={},
                                    trusted_remote_code=(), auto_download=False, preload=())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Callable[..., Path], bundled_model_path: Path) -> Path:
    root = tmp_path_factory.mktemp("models")
    for seed, model_id in enumerate(TINY):
        tiny_qwen3(root / model_id.replace("/", "--"), seed=seed)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)          # a second real MiniLM without copying 90 MB
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(bundled_model_path, root / COPY.replace("/", "--"), copy_function=link_or_copy)
    return root


def _provider(root: Path, *, max_models: int = 3, max_mb: int = 0, idle_s: float = 0,
              trusted: tuple[str, ...] = (), **kwargs: Any) -> HuggingFaceProvider:
    models = ModelManagerConfig(max_models_in_memory=max_models, max_memory_mb=max_mb, unload_timeout_s=idle_s,
                                revisions={}, trusted_remote_code=trusted, auto_download=False, preload=())
    resolver = ModelResolver.from_config(root, models)
    return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), resolver, BATCHING, models, **kwargs)


def test_idle_minilm_is_unloaded_by_the_sweeper_and_reloads_identically(root: Path) -> None:
    clock = FakeClock()

    async def run() -> tuple[Any, Any]:
        entered: asyncio.Queue[None] = asyncio.Queue()
        ticks: asyncio.Queue[None] = asyncio.Queue()

        async def sleep(_seconds: float) -> None:     # each call: the previous sweep has finished
            entered.put_nowait(None)
            await ticks.get()

        async def sweep_once() -> None:
            ticks.put_nowait(None)
            await entered.get()

        provider = _provider(root, idle_s=30, clock=clock, sweep_sleep=sleep)
        try:
            await provider.count_tokens(MODEL, TEXTS)
            first = await provider.embed(MODEL, TEXTS)
            await entered.get()                        # the sweeper started with the first request
            health = await provider.health()
            assert provider.loaded_models() == [MODEL] and MODEL in health["batchers"]
            assert health["counting_tokenizers"] == [MODEL] and health["inline_tokenizers"] == [MODEL]
            clock.now += 29
            await sweep_once()
            assert provider.loaded_models() == [MODEL]   # idle 29 s < 30 s
            clock.now += 2
            await sweep_once()
            health = await provider.health()
            assert provider.loaded_models() == [] and health["batchers"] == {}
            assert health["counting_tokenizers"] == [] and health["model_cache"]["loaded"] == 0
            assert health["inline_tokenizers"] == []
            second = await provider.embed(MODEL, TEXTS)   # loads again
            assert provider.loaded_models() == [MODEL]
            return first, second
        finally:
            await provider.aclose()

    first, second = asyncio.run(run())
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.token_counts == second.token_counts


def test_no_unload_when_the_timeout_is_zero(root: Path) -> None:
    clock = FakeClock()
    provider = _provider(root, idle_s=0, clock=clock)

    async def run() -> list[str]:
        await provider.embed(TINY[0], TEXTS)
        clock.now += 10**6
        return await provider.evict_idle()

    assert asyncio.run(run()) == [] and provider.loaded_models() == [TINY[0]]
    asyncio.run(provider.aclose())


def test_count_cap_evicts_the_least_recently_used_model(root: Path) -> None:
    clock = FakeClock()
    provider = _provider(root, max_models=2, clock=clock)

    async def run() -> dict[str, Any]:
        vectors = {}
        for model_id in (TINY[0], TINY[1], TINY[0], TINY[2]):   # a is used again, so b is the LRU one
            clock.now += 1
            vectors[model_id] = (await provider.embed(model_id, TEXTS)).vectors
        assert provider.loaded_models() == [TINY[0], TINY[2]]
        assert set((await provider.health())["batchers"]) == {TINY[0], TINY[2]}
        again = (await provider.embed(TINY[1], TEXTS)).vectors        # b reloads, a goes
        np.testing.assert_array_equal(again, vectors[TINY[1]])
        assert provider.loaded_models() == [TINY[2], TINY[1]]
        return vectors

    try:
        vectors = asyncio.run(run())
    finally:
        asyncio.run(provider.aclose())
    assert not np.allclose(vectors[TINY[0]], vectors[TINY[1]])       # really different models


def test_memory_cap_with_two_real_minilm_copies(root: Path) -> None:
    provider = _provider(root, max_models=5, max_mb=150)            # one MiniLM (~87 MB) fits, two do not

    async def run() -> None:
        await provider.embed(MODEL, TEXTS)
        await provider.embed(TINY[0], TEXTS)                         # tiny: fits beside it
        assert provider.loaded_models() == [MODEL, TINY[0]]
        await provider.embed(COPY, TEXTS)
        assert provider.loaded_models() == [TINY[0], COPY]
        stats = (await provider.health())["model_cache"]
        assert 80 < stats["estimated_mb"] <= 150 and stats["max_memory_mb"] == 150

    try:
        asyncio.run(run())
    finally:
        asyncio.run(provider.aclose())


def test_a_model_in_use_is_never_evicted(root: Path) -> None:
    provider = _provider(root, max_models=1)

    async def run() -> None:
        async with provider.use(TINY[0]):
            await provider.load(TINY[0])
            async with provider.use(TINY[1]):
                await provider.load(TINY[1])                         # over the cap: both in use
                assert provider.loaded_models() == [TINY[0], TINY[1]]
            assert provider.loaded_models() == [TINY[0]]             # b idle again: back within the cap
            assert not await provider.unload(TINY[0])                # in use: not even on request
            await provider.embed(TINY[2], TEXTS)
            assert provider.loaded_models() == [TINY[0]]
        assert provider.loaded_models() == [TINY[0]]
        await provider.embed(TINY[2], TEXTS)
        assert provider.loaded_models() == [TINY[2]]

    try:
        asyncio.run(run())
    finally:
        asyncio.run(provider.aclose())


def test_concurrent_requests_for_more_models_than_the_cap(root: Path) -> None:
    provider = _provider(root, max_models=1)
    sequential = _provider(root, max_models=3)

    async def run(p: HuggingFaceProvider, concurrent: bool) -> list[np.ndarray]:
        jobs = [p.embed(model_id, TEXTS) for model_id in TINY * 2]
        results = await asyncio.gather(*jobs) if concurrent else [await job for job in jobs]
        return [r.vectors for r in results]

    try:
        got = asyncio.run(run(provider, True))
        want = asyncio.run(run(sequential, False))
        assert len(provider.loaded_models()) == 1
    finally:
        asyncio.run(provider.aclose())
        asyncio.run(sequential.aclose())
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_warmup_loads_and_unload_frees(root: Path) -> None:
    provider = _provider(root)

    async def run() -> None:
        info = await provider.warmup(TINY[0])
        assert (info.model_id, info.dimension) == (TINY[0], 32)
        assert provider.loaded_models() == [TINY[0]]
        assert await provider.unload(TINY[0]) and provider.loaded_models() == []
        assert not await provider.unload(TINY[0])

    try:
        asyncio.run(run())
    finally:
        asyncio.run(provider.aclose())


def test_remote_code_runs_only_for_trusted_ids(root: Path, tmp_path: Path) -> None:
    model_dir = root / "org--custom-code"
    model_dir.mkdir(exist_ok=True)
    marker = tmp_path / "executed"
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "tldw-custom-test", "hidden_size": 8,
        "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"},
    }))
    (model_dir / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    provider = _provider(root, trusted=("org/other*",))
    assert not provider.trust_remote_code("org/custom-code")
    assert _provider(root, trusted=("org/custom*",)).trust_remote_code("org/custom-code")
    for attempt in (provider.warmup("org/custom-code"), provider.count_tokens("org/custom-code", ["x"])):
        with pytest.raises(InvalidInput) as info:
            asyncio.run(attempt)
        assert info.value.code == "remote_code_not_trusted"
        assert "TRUSTED_HF_REMOTE_CODE_MODELS" in info.value.message
    assert not marker.exists()
    asyncio.run(provider.aclose())


def test_short_requests_are_tokenised_on_the_event_loop(root: Path) -> None:
    """A query-sized request never waits for the counting thread; a long one still goes there
    (held busy here), and both count exactly as the tokenizer does."""
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import INLINE_TOKENIZE_CHARS

    long_text = "word " * (INLINE_TOKENIZE_CHARS // 5 + 10)

    async def run() -> None:
        provider = _provider(root)
        try:
            expected = await provider.count_tokens(COPY, [*TEXTS, long_text])   # loads both tokenizers
            gate = asyncio.Event()
            loop = asyncio.get_running_loop()
            blocker = loop.run_in_executor(provider._count_executor,
                                           lambda: asyncio.run_coroutine_threadsafe(gate.wait(), loop).result())
            assert await asyncio.wait_for(provider.count_tokens(COPY, TEXTS), 5) == expected[:3]
            rows = await asyncio.wait_for(provider.embed(COPY, TEXTS[:1]), 30)   # tokenised inline too
            assert rows.vectors.shape == (1, 384)
            waiting = asyncio.ensure_future(provider.count_tokens(COPY, [long_text]))
            await asyncio.sleep(0.2)
            assert not waiting.done()                       # behind the busy counting thread
            gate.set()
            await blocker
            assert await waiting == expected[3:]
        finally:
            await provider.aclose()

    asyncio.run(run())


class _CountingTokenizer:
    """Delegates to a real tokenizer and records the texts of each call, through transformers'
    call or straight to its Rust backend."""

    def __init__(self, real: Any, calls: list[list[str]]) -> None:
        self._real, self._calls = real, calls

    def __call__(self, texts: list[str], **kwargs: Any) -> Any:
        self._calls.append(list(texts))
        return self._real(texts, **kwargs)

    @property
    def backend_tokenizer(self) -> Any:
        return _CountingBackend(self._real.backend_tokenizer, self._calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _CountingBackend:
    def __init__(self, real: Any, calls: list[list[str]]) -> None:
        self._real, self._calls = real, calls

    def encode_batch(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self._calls.append(list(texts))
        return self._real.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_counted_rows_are_not_tokenised_again(root: Path) -> None:
    """A request's misses are tokenised once, for counting; the batcher reuses those rows. A
    text that truncation shortens is tokenised again, truncated, and both give the vectors of a
    provider that never counted."""
    too_long = "word " * 600    # over MiniLM's 512 tokens

    async def run() -> None:
        provider, plain = _provider(root), _provider(root)
        try:
            await provider.count_tokens(COPY, ["load the tokenizers"])
            calls: list[list[str]] = []
            for tokenizers in (provider._inline_tokenizers, provider._count_tokenizers):
                tokenizers[COPY] = _CountingTokenizer(tokenizers[COPY], calls)
            counts = await provider.count_tokens(COPY, TEXTS)
            assert calls == [TEXTS]
            vectors = (await provider.embed(COPY, TEXTS)).vectors
            assert calls == [TEXTS]                          # no second tokenisation
            assert [text for _, text in provider._pending_rows] == ["load the tokenizers"]   # taken
            expected = await plain.embed(COPY, TEXTS)
            np.testing.assert_allclose(vectors, expected.vectors, atol=1e-6)
            assert counts == expected.token_counts

            calls.clear()
            assert (await provider.count_tokens(COPY, [TEXTS[0], too_long]))[1] > 512
            long_rows = await provider.embed(COPY, [TEXTS[0], too_long])
            assert calls == [[TEXTS[0], too_long], [too_long]]   # only the truncated one again
            np.testing.assert_allclose(long_rows.vectors, (await plain.embed(COPY, [TEXTS[0], too_long])).vectors,
                                       atol=1e-6)
        finally:
            await provider.aclose()
            await plain.aclose()

    asyncio.run(run())


def test_counted_rows_never_embedded_are_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of requests refused after counting (limits, rate) do not pile up."""
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server import local_provider

    monkeypatch.setattr(local_provider, "PENDING_ROWS_MAX", 5)

    async def run() -> None:
        provider = _provider(root)
        try:
            await provider.count_tokens(COPY, [f"text number {i}" for i in range(12)])
            assert [text for _, text in provider._pending_rows] == [f"text number {i}" for i in range(7, 12)]
        finally:
            await provider.aclose()

    asyncio.run(run())


def test_a_lone_small_pass_runs_on_the_event_loop_thread(root: Path) -> None:
    """EMBEDDINGS_INLINE_PASS_TOKENS: once the model's small passes are timed (the first runs on a
    pass thread), a lone pass of a query-sized text runs on the event loop's thread (no thread
    hand-off); a pass over the limit, every pass with the limit at 0, and every pass of a model
    whose small passes take longer than INLINE_PASS_MAX_S run on a pass thread; the vectors are
    the same either way. (torch with one intra-op thread: see the next test for more.)"""
    import threading
    import time
    from dataclasses import replace

    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import INLINE_PASS_MAX_S

    long_text = "word " * 40   # 42 tokens with [CLS]/[SEP]

    async def run() -> None:
        # single-threaded torch: with more intra-op threads no pass runs inline (its own test)
        inline = HuggingFaceProvider(HuggingFaceConfig(torch_threads=1, device="cpu"),
                                     ModelResolver.from_config(root, DEFAULT_MODELS),
                                     replace(BATCHING, inline_pass_tokens=32), DEFAULT_MODELS)
        threaded = _provider(root)
        try:
            threads: list[int] = []
            for provider in (inline, threaded):
                await provider.load(COPY)
                encoder = await provider.loaded_encoder(COPY)
                forward = encoder.forward
                encoder.forward = lambda encoded, forward=forward: (threads.append(threading.get_ident()),
                                                                    forward(encoded))[1]
            encoder_of_inline = await inline.loaded_encoder(COPY)
            loop_thread = threading.get_ident()
            first = (await inline.embed(COPY, TEXTS[:1])).vectors       # not timed yet: a pass thread
            assert threads[0] != loop_thread and inline.inline_passes == 0
            for text in ("warm one", "warm two", "warm three"):          # past a slow first pass
                await inline.embed(COPY, [text])
            threads.clear()
            passes = inline.inline_passes
            short = (await inline.embed(COPY, TEXTS[1:2])).vectors
            assert threads == [loop_thread] and inline.inline_passes == passes + 1
            long = (await inline.embed(COPY, [long_text])).vectors
            assert threads[1] != loop_thread and inline.inline_passes == passes + 1
            np.testing.assert_allclose(first, (await threaded.embed(COPY, TEXTS[:1])).vectors, atol=1e-6)
            np.testing.assert_allclose(short, (await threaded.embed(COPY, TEXTS[1:2])).vectors, atol=1e-6)
            np.testing.assert_allclose(long, (await threaded.embed(COPY, [long_text])).vectors, atol=1e-6)
            assert loop_thread not in threads[2:] and threaded.inline_passes == 0
            assert (await inline.health())["inline_passes"] == passes + 1

            slow_forward = encoder_of_inline.forward            # a model whose small passes are slow
            encoder_of_inline.forward = lambda encoded: (time.sleep(INLINE_PASS_MAX_S * 1.5),
                                                         slow_forward(encoded))[1]
            for text in ("slow one", "slow two", "slow three", "slow four"):   # the median passes the limit
                await inline.embed(COPY, [text])
            before = inline.inline_passes
            for text in ("slow five", "slow six"):
                await inline.embed(COPY, [text])
            assert inline.inline_passes == before
        finally:
            await inline.aclose()
            await threaded.aclose()

    asyncio.run(run())
