"""Next-token loss without materialising the vocabulary-wide logits of every position at once.

`lm_loss` runs the LM head only on positions that have a label, and `linear_cross_entropy` computes
head, log-softmax and the gradient together, a chunk of positions at a time: peak memory holds one
chunk's logits (at most 256 MB) instead of positions x vocabulary x 4 bytes several times over, and
the softmax is computed in place, once. Each chunk reads the whole head weight twice (545 MB at full
size, fp32), so chunks are as large as that bound allows and of equal size: 511 positions are two
chunks of 256, not 441 and 70.
"""

from __future__ import annotations

import torch

from data.windows import IGNORE  # the label value the loss skips (padding)

CHUNK_ELEMENTS = 2 ** 26  # logits per chunk at most: 64M floats, 256 MB


class LinearCrossEntropy(torch.autograd.Function):
    """mean over rows of cross_entropy(hidden @ weight.T, targets), gradients computed in the forward.

    hidden (N, D), weight (V, D), targets (N,). The gradient of the loss with respect to the logits
    is softmax - onehot, so each chunk's input gradient (and weight gradient, when the head trains)
    is one more matmul while its logits are at hand; backward only scales what was stored.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        n = hidden.shape[0]
        most = max(1, CHUNK_ELEMENTS // weight.shape[0])  # rows per chunk allowed
        chunk = -(-n // -(-n // most)) if n else 1  # ceil(n / chunks) for the fewest chunks: equal sizes
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        w = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits = (h @ w.T).float()  # (c, V)
            rows = torch.arange(len(t), device=t.device)
            target_logit = logits[rows, t]
            top = logits.max(dim=-1).values
            exp = logits.sub_(top[:, None]).exp_()  # in place: no second (c, V) buffer
            norm = exp.sum(dim=-1)
            total += (top + norm.log() - target_logit).sum()  # logsumexp - target logit
            if need_h or need_w:
                probs = exp.div_(norm[:, None])  # softmax
                probs[rows, t] -= 1.0  # d loss_i / d logits_i, before the 1/n of the mean
                if need_h:
                    grad_h[s:s + chunk] = (probs.to(w.dtype) @ w).to(hidden.dtype)
                if need_w:
                    grad_w += probs.T @ h.float()
            logits = exp = probs = None  # free this chunk's (c, V) buffer before the next one is allocated
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.weight_dtype = n, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else (grad_w * scale).to(ctx.weight_dtype),
                None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return LinearCrossEntropy.apply(hidden, weight, targets)


def lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the positions whose next label is not IGNORE; the LM head
    runs only there. Returns (loss, positions scored).

    No attention mask is passed: windows are padded on the right, so causal attention alone keeps
    every real token from seeing padding, and the fast causal kernel runs.
    """
    hidden = model.model(input_ids)[:, :-1]  # (B, T-1, D)
    targets = labels[:, 1:]
    scored = targets != IGNORE
    loss = linear_cross_entropy(hidden[scored], model.lm_head.weight, targets[scored])
    return loss, int(scored.sum())
