"""pool(): masked mean, CLS and last-token pooling over real torch tensors."""

from __future__ import annotations

import pytest
import torch

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

# Two texts: 3 real tokens and 1 real token, hidden width 2.
REAL = [
    [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]],
    [[7.0, -1.0]],
]
PAD = [100.0, -100.0]


def _batch(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(rows) for rows in REAL)
    hidden, mask = [], []
    for rows in REAL:
        pad = [PAD] * (width - len(rows))
        hidden.append(pad + rows if left else rows + pad)
        bits = [1] * len(rows)
        zeros = [0] * (width - len(rows))
        mask.append(zeros + bits if left else bits + zeros)
    return torch.tensor(hidden), torch.tensor(mask)


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_mean_ignores_padding(left: bool) -> None:
    hidden, mask = _batch(left)
    out = pool(hidden, mask, "mean")
    torch.testing.assert_close(out, torch.tensor([[3.0, 5.0], [7.0, -1.0]]))


def test_mean_equals_unpadded_mean_for_random_states() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 4, generator=generator)
    lengths = [6, 2, 4]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    out = pool(hidden, mask, "mean")
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i], hidden[i, :n].mean(dim=0))
    garbage = hidden.clone()
    garbage[mask == 0] = 1e6
    torch.testing.assert_close(pool(garbage, mask, "mean"), out)


def test_cls_takes_the_first_token() -> None:
    hidden, mask = _batch(left=False)
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [7.0, -1.0]]))


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_lasttoken_takes_the_last_real_token(left: bool) -> None:
    hidden, mask = _batch(left)
    torch.testing.assert_close(pool(hidden, mask, "lasttoken"), torch.tensor([[5.0, 9.0], [7.0, -1.0]]))


def test_lasttoken_without_padding() -> None:
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    out = pool(hidden, torch.ones(2, 3, dtype=torch.long), "lasttoken")
    torch.testing.assert_close(out, hidden[:, -1])


def test_pooling_keeps_dtype_and_shape() -> None:
    hidden = torch.ones(4, 5, 3, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.long)
    for mode in ("mean", "cls", "lasttoken"):
        out = pool(hidden, mask, mode)
        assert out.shape == (4, 3) and out.dtype == torch.float64


@pytest.mark.parametrize("mode", ["max", "", "MEAN", "last_token"])
def test_unknown_mode_raises(mode: str) -> None:
    hidden, mask = _batch(left=False)
    with pytest.raises(ValueError, match="pooling mode"):
        pool(hidden, mask, mode)
