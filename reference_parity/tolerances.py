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

# Seed-exact replay of a whole training run (fixtures/replay/, reference_parity/replay_compare.py). Both sides
# draw the same numbers (batch order, initial weights and every dropout mask are checked exactly), so what is
# left is the order of floating-point operations (the few ulps per op above), carried through every Adam step;
# training amplifies a difference, so a tolerance bounds it over the epoch. Measured on performer fold 0 (README.md,
# "Seed-exact replay"): han float64 loss <= 3.7e-16 and gradient norm <= 1.6e-14 over all 104 steps, float32
# <= 1.5e-7 and 1.3e-5.
# - float64, at every step of the epoch: loss and gradient norm within 1e-9 relative. A wrong mask element, batch
#   or init draw moves them by far more within a step or two (tests/test_replay.py, perturbations).
# - float32, at the last step (ulps of 1.2e-7, amplified the same way): loss and gradient norm within 1e-3
#   relative; the epoch's valid / test R2 within 1e-3 absolute (float64: 1e-9), the valid / test loss as the steps.
REPLAY_RTOL = {"float64": {"loss": 1e-9, "grad_norm": 1e-9}, "float32": {"loss": 1e-3, "grad_norm": 1e-3}}
REPLAY_CHECKED_STEPS = {"float64": "every", "float32": "last"}  # which steps a per-step quantity must meet it at
REPLAY_R2_ATOL = {"float64": 1e-9, "float32": 1e-3}
