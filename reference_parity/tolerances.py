"""Tolerances of the parity comparisons: named, each with why it is that size (recorded side, no original needed)."""
from __future__ import annotations

import torch

# float64: both implementations compute the same formulas; only the order of floating-point operations differs
# (einsum vs bmm for the similarity, one-hot matmuls vs slice sums for pooling, one packed run vs a loop over
# voices). Observed differences are <= 2.3e-16 (a few ulps of O(1) values); 1e-12 leaves ~4 orders of magnitude
# of headroom for longer sequences and still catches any formula difference (a wrong mask, a temperature, a
# missing bias are >= 1e-4).
FLOAT64_ATOL = 1e-12
FLOAT64_RTOL = 1e-10
# float32: the same reorderings cost a few ulps (eps = 1.2e-7) per op; through ~10 stacked LSTM/attention
# layers on O(1) activations they accumulate (observed <= 2.4e-7 on the fixtures, more on longer live batches).
# 1e-5 absolute is the usual float32 budget for such a depth and is still 10x below the smallest genuine
# difference above.
FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-4
# Gradients are sums over the batch and over time steps, so their float32 error is larger in absolute terms
# than the activations' (grad magnitudes up to ~1e-1 here); relative 1e-3 / absolute 1e-6 (of O(1e-2) grads).
FLOAT32_GRAD_ATOL = 1e-6
FLOAT32_GRAD_RTOL = 1e-3
# Parameters after Adam steps: an update is lr * m / (sqrt(v) + eps) ~ lr per step, independent of the gradient's
# scale, so an element whose gradient is tiny (~eps = 1e-8) turns a float32 gradient difference of ~1e-10 into an
# update difference of up to ~lr * 1e-2. Observed 6.5e-7 after one step at lr 1e-3 (the clip case); 5e-6
# absolute bounds <= 6 steps of lr <= 1e-3 and is still far below one update (~lr).
FLOAT32_PARAM_ATOL = 5e-6
FLOAT32_PARAM_RTOL = 1e-5
FLOAT64_PARAM_ATOL = 1e-12
# Integer outputs (boundaries, lengths) must be equal.
EXACT = 0.0

TOLERANCES = {
    "float64": {"act": (FLOAT64_ATOL, FLOAT64_RTOL), "grad": (FLOAT64_ATOL, FLOAT64_RTOL),
                "param": (FLOAT64_PARAM_ATOL, FLOAT64_RTOL)},
    "float32": {"act": (FLOAT32_ATOL, FLOAT32_RTOL), "grad": (FLOAT32_GRAD_ATOL, FLOAT32_GRAD_RTOL),
                "param": (FLOAT32_PARAM_ATOL, FLOAT32_PARAM_RTOL)},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # the dtypes the fixtures are recorded in
