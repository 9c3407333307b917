"""The LSTM engine: the unpacked BiLSTM (whole batch or in length groups) equals the original's packed run."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from percepiano.lstm import length_groups, run_lstm, run_lstm_packed

# float64 through a few LSTM layers: agreement to ~1e-15 is routine; 1e-10 leaves room for BLAS order.
F64 = {"rtol": 1e-10, "atol": 1e-10}


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("layers, dropout", [(1, 0.0), (2, 0.0), (2, 0.3)])
def test_unpacked_bilstm_equals_packed(layers, dropout, group_by_length):
    """run_lstm computes the packed result without packing: outputs and gradients agree in float64."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 3, layers, batch_first=True, bidirectional=True, dropout=dropout).double().eval()
    x = torch.randn(4, 9, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 4, 1, 6])
    if group_by_length:
        assert len(length_groups(lengths.tolist())) > 1  # the rows do run in several groups
    ours, ref = run_lstm(lstm, x, lengths, group_by_length), run_lstm_packed(lstm, x, lengths)
    torch.testing.assert_close(ours, ref, **F64)
    (g_ours,) = torch.autograd.grad((ours * torch.linspace(-1, 1, 6)).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * torch.linspace(-1, 1, 6)).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, **F64)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=40), st.integers(1, 5), st.integers(0, 8))
def test_length_groups_partition_rows_by_length(lengths, max_groups, step_cost):
    groups = length_groups(lengths, max_groups, step_cost)
    assert 1 <= len(groups) <= max_groups
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    # groups hold contiguous length ranges, longest first, so each group runs only to its own longest row
    for earlier, later in zip(groups, groups[1:]):
        assert min(lengths[i] for i in earlier) >= max(lengths[i] for i in later)
    cost = lambda gs: sum((len(g) + step_cost) * max(lengths[i] for i in g) for g in gs)  # noqa: E731
    assert cost(groups) <= cost([list(range(len(lengths)))])
