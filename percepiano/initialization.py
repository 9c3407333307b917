"""Parameter initialisation schemes.

``pytorch_default`` is the original: PyTorch's own LSTM/Linear inits and context vectors U(-1, 1), nothing
else (docs/original.md#initialization). The others are named deviations, kept so that a replication that used them
(the prior replication attempt did) can be reproduced and is reported as such by the parity suite.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ContextAttention


def _orthogonal_lstm(model: nn.Module) -> None:
    """Orthogonal recurrent weights, Xavier input weights, zero biases with forget-gate bias 1 (NOT original)."""
    for module in model.modules():
        if not isinstance(module, nn.LSTM):
            continue
        hidden = module.hidden_size
        for name, param in module.named_parameters():
            if name.startswith("weight_hh"):
                for gate in range(4):  # one orthogonal block per gate (i, f, g, o)
                    nn.init.orthogonal_(param.data[gate * hidden : (gate + 1) * hidden])
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param.data)
            elif name.startswith("bias"):
                param.data.zero_()
                param.data[hidden : 2 * hidden] = 1.0  # forget gate; both bias vectors, as the prior log did


def _xavier_attention(model: nn.Module) -> None:
    """Xavier attention projections, zero bias, wider N(0, 1) context vectors (NOT original)."""
    for module in model.modules():
        if isinstance(module, ContextAttention):
            nn.init.xavier_uniform_(module.attention_net.weight)
            nn.init.zeros_(module.attention_net.bias)
            nn.init.normal_(module.context_vector, mean=0.0, std=1.0)


INITIALIZERS = {
    "pytorch_default": lambda model: None,  # the original: modules keep their constructor inits
    "orthogonal_lstm": _orthogonal_lstm,
    "xavier_attention": _xavier_attention,
}


@torch.no_grad()
def apply_init(model: nn.Module, scheme: str) -> None:
    if scheme not in INITIALIZERS:
        raise ValueError(f"init: expected one of {sorted(INITIALIZERS)}, got {scheme!r}")
    INITIALIZERS[scheme](model)
