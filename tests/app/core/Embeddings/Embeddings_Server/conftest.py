"""Fixtures of the local-provider tests: `tiny_qwen3`, a factory that builds a tiny, randomly
initialised Qwen3 embedding model with a small word-level tokenizer (EOS `<|endoftext|>`, a
separate pad token, left padding), saved like a hub model, for the Qwen3 path without a download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.qwen3_instructions import DEFAULT_TASK

CORPUS = [
    "what is the capital of france ?", "paris is the capital of france .", "how do magnets work ?",
    "magnets attract iron because of aligned electron spins .", "Instruct : Query : " + DEFAULT_TASK,
    "the cat sat on the mat while the dog slept by the door", "who wrote hamlet ? shakespeare wrote hamlet",
    "a short note", "gravity pulls objects toward each other and gives them weight",
]
END = "<|endoftext|>"


def build_tiny_qwen3(target: Path, *, padding_side: str = "left", eos_post_processor: bool = False,
                     seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", END]))
    if eos_post_processor:   # like the current Qwen3-Embedding tokenizers, which append the end token
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {END}", special_tokens=[(END, backend.token_to_id(END))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token=END, padding_side=padding_side, model_max_length=64)
    torch.manual_seed(seed)
    config = Qwen3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen3Model(config).eval().save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def tiny_qwen3() -> Callable[..., Path]:
    return build_tiny_qwen3
