"""pool(): masked mean, CLS and last-token pooling over numpy arrays (what torch and onnxruntime
outputs become), for right and left padding."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

# Two texts: 3 real tokens and 1 real token, hidden width 2.
REAL = [
    [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]],
    [[7.0, -1.0]],
]
PAD = [100.0, -100.0]


def _batch(left: bool) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(rows) for rows in REAL)
    hidden, mask = [], []
    for rows in REAL:
        pad = [PAD] * (width - len(rows))
        hidden.append(pad + rows if left else rows + pad)
        bits = [1] * len(rows)
        zeros = [0] * (width - len(rows))
        mask.append(zeros + bits if left else bits + zeros)
    return np.array(hidden, dtype=np.float32), np.array(mask, dtype=np.int64)


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_mean_ignores_padding(left: bool) -> None:
    hidden, mask = _batch(left)
    assert_allclose(pool(hidden, mask, "mean"), [[3.0, 5.0], [7.0, -1.0]])


def test_mean_equals_unpadded_mean_for_random_states() -> None:
    hidden = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
    lengths = [6, 2, 4]
    mask = np.array([[1] * n + [0] * (6 - n) for n in lengths])
    out = pool(hidden, mask, "mean")
    for i, n in enumerate(lengths):
        assert_allclose(out[i], hidden[i, :n].mean(axis=0), rtol=1e-5, atol=1e-6)
    garbage = hidden.copy()
    garbage[mask == 0] = 1e6
    assert_allclose(pool(garbage, mask, "mean"), out, rtol=1e-5, atol=1e-6)


def test_cls_takes_the_first_token() -> None:
    hidden, mask = _batch(left=False)
    assert_allclose(pool(hidden, mask, "cls"), [[1.0, 2.0], [7.0, -1.0]])


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_lasttoken_takes_the_last_real_token(left: bool) -> None:
    hidden, mask = _batch(left)
    assert_allclose(pool(hidden, mask, "lasttoken"), [[5.0, 9.0], [7.0, -1.0]])


def test_lasttoken_without_padding() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    assert_allclose(pool(hidden, np.ones((2, 3), dtype=np.int64), "lasttoken"), hidden[:, -1])


def test_pooling_returns_float32_rows() -> None:
    hidden = np.ones((4, 5, 3), dtype=np.float64)
    mask = np.ones((4, 5), dtype=np.int64)
    for mode in ("mean", "cls", "lasttoken"):
        out = pool(hidden, mask, mode)
        assert out.shape == (4, 3) and out.dtype == np.float32


@pytest.mark.parametrize("mode", ["max", "", "MEAN", "last_token"])
def test_unknown_mode_raises(mode: str) -> None:
    hidden, mask = _batch(left=False)
    with pytest.raises(ValueError, match="pooling mode"):
        pool(hidden, mask, mode)


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_cls_takes_the_first_real_token(left: bool) -> None:
    hidden, mask = _batch(left)
    assert_allclose(pool(hidden, mask, "cls"), [[1.0, 2.0], [7.0, -1.0]])


def test_lasttoken_in_a_batch_mixing_padding_sides() -> None:
    hidden = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    mask = np.array([[0, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
    assert_allclose(pool(hidden, mask, "lasttoken"), hidden[[0, 1, 2], [3, 1, 2]])
