"""The chunked LM-head loss: the values and gradients of the plain one, holding one chunk of logits at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qwen_min.loss as loss_module
from qwen_min.loss import IGNORE, linear_cross_entropy, lm_loss

from .conftest import NewBuffers, tiny_model

N, D, V = 37, 16, 1000


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 rows of the 1,000-token vocabulary: 37 rows take five chunks, the last one short."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 8 * V)


def tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen), torch.randn(V, D, generator=gen) * 0.5, torch.randint(0, V, (N,), generator=gen)


@pytest.mark.parametrize("head_trains", [False, True])
def test_equals_cross_entropy_of_full_logits(small_chunks, head_trains):
    h, w, t = tensors()
    ours_h, ref_h = h.clone().requires_grad_(), h.clone().requires_grad_()
    ours_w, ref_w = w.clone().requires_grad_(head_trains), w.clone().requires_grad_(head_trains)
    ours = linear_cross_entropy(ours_h, ours_w, t)
    ref = F.cross_entropy(ref_h @ ref_w.T, t)
    (2 * ours).backward()
    (2 * ref).backward()  # an upstream gradient other than 1 scales what the forward stored
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours_h.grad, ref_h.grad, atol=1e-6, rtol=1e-5)
    if head_trains:
        torch.testing.assert_close(ours_w.grad, ref_w.grad, atol=1e-6, rtol=1e-5)
    else:
        assert ours_w.grad is None


def chunk_logits(rows: int):
    """The (r <= rows, V) logits buffers of the loss (not the transposed (D, V) head weight)."""
    return NewBuffers(lambda t: t.dim() == 2 and t.shape[0] <= rows and t.shape[1] == V and t.is_contiguous())


def test_one_chunk_of_logits_alive_at_a_time(small_chunks):
    """Each chunk's (rows, V) buffer is freed before the next chunk's matmul allocates its own."""
    h, w, t = tensors()
    h.requires_grad_()
    with chunk_logits(rows=8) as watch:
        linear_cross_entropy(h, w, t).backward()
    assert watch.most_alive == 1


def test_lm_loss_scores_only_labelled_positions():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, 5:] = IGNORE  # padding after position 4 of the second row
    loss, scored = lm_loss(model, ids, labels)
    logits = model(ids)[:, :-1]
    targets = labels[:, 1:]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    assert scored == 8 + 4
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-6)


def test_fewest_chunks_of_near_equal_size(monkeypatch):
    """At most 30 rows a chunk: 37 rows are two chunks of 19 and 18, not 30 and 7 (each chunk reads the
    whole head weight, so a short last chunk costs nearly as much as a full one)."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 30 * V)
    h, w, t = tensors()
    with chunk_logits(rows=N) as watch:
        linear_cross_entropy(h.requires_grad_(), w, t)
    assert [rows for rows, _ in watch.shapes] == [19, 18]


def test_padding_label_agrees_with_the_data_layer():
    """data/ stays free of torch and of the model, so it names the padding label itself; the two must agree
    (and match cross_entropy's default ignore_index)."""
    from data.windows import IGNORE as DATA_IGNORE

    assert DATA_IGNORE == IGNORE == torch.nn.CrossEntropyLoss().ignore_index
