"""Layers shared by every level of the model."""
from __future__ import annotations

import torch
from torch import nn

# Score given to padded rows before the softmax (original: ``similarity[x.sum(-1) == 0] = -1e10``).
PADDING_SCORE = -1e10


class ContextAttention(nn.Module):
    """Multi-head context attention (original ``module.ContextAttention``).

    ``a = tanh(x W^T + b)`` is split into ``num_heads`` contiguous chunks; head h scores a row by
    ``a_h . c_h`` with a learned context vector ``c_h`` initialised U(-1, 1). There is no scaling and no
    temperature in the original (``temperature`` != 1 is a named deviation). Pooling weights each head's
    own contiguous chunk of ``x`` (not of ``a``). Rows whose features sum to exactly 0 are treated as
    padding: that is the original's only mask, so rows that are padding but do not sum to 0 (a Linear's
    bias, say) take part in the softmax, as they do in the original.
    """

    def __init__(self, size: int, num_heads: int, temperature: float = 1.0):
        super().__init__()
        if size % num_heads:
            raise ValueError(f"ContextAttention: size {size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_size = size // num_heads
        self.temperature = float(temperature)
        self.attention_net = nn.Linear(size, size)
        self.context_vector = nn.Parameter(torch.empty(num_heads, self.head_size, 1))
        nn.init.uniform_(self.context_vector, a=-1.0, b=1.0)

    def similarity(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, H) raw scores (original ``get_attention``; the temperature is applied by callers).

        ``rows`` (B, T) bool: score only these rows, the others get 0. For callers that drop the other
        rows' scores anyway (segment softmax over real notes); on a CPU it skips the padding's matmul.
        """
        if rows is not None:
            scores = x.new_zeros(*x.shape[:2], self.num_heads)  # (B, T, H)
            scores[rows] = self.similarity(x[rows][None])[0]  # (M, H) for the M chosen rows
            return scores
        batch, length, _ = x.shape
        activated = torch.tanh(self.attention_net(x))  # (B, T, D)
        activated = activated.view(batch, length, self.num_heads, self.head_size)  # (B, T, H, d)
        return torch.einsum("bthd,hd->bth", activated, self.context_vector[..., 0])  # (B, T, H)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool (B, T, D) -> (B, D); also returns the attention weights (B, T, H)."""
        batch, length, width = x.shape
        scores = self.similarity(x)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        scores = scores.masked_fill((x.sum(-1) == 0)[:, :, None], PADDING_SCORE)
        weights = torch.softmax(scores, dim=1)  # (B, T, H)
        chunks = x.view(batch, length, self.num_heads, self.head_size)  # (B, T, H, d)
        pooled = (chunks * weights[..., None]).sum(dim=1)  # (B, H, d)
        return pooled.reshape(batch, width), weights  # (B, D)
