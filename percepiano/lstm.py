"""The LSTM execution engine: how the model's BiLSTMs run on a padded batch, with the same results as the
original's packed runs (``model_m2pf.py``: ``run_hierarchy_lstm_with_pack``, ``HanEncoder.run_voice_net``).

- :func:`run_lstm`: a BiLSTM over padded rows without packing (the backward direction reads each row reversed
  within its length), optionally in groups of similar length (a CPU shortcut);
- :func:`run_lstm_packed`: the original's pack → LSTM → unpack, the reference :func:`run_lstm` is tested against;
- :func:`run_voice_lstm`: every (sample, voice) as its own sequence, all in one LSTM batch, by index lookups.

The CPU/GPU strategy is an argument (``group_by_length``), decided by the caller (:func:`host_shortcuts`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import hierarchy as hier


def bilstm(input_size: int, hidden: int, layers: int, dropout: float) -> nn.LSTM:
    return nn.LSTM(input_size, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0)


# On a CPU the recurrence costs about (rows + STEP_COST_ROWS) per time step: splitting the rows into a few
# groups of similar length (each run to its own longest) saves the work spent on padding.
STEP_COST_ROWS = 4
MAX_LENGTH_GROUPS = 4


def host_shortcuts(enabled: bool, t: torch.Tensor) -> bool:
    """Whether to take the CPU-only shortcuts for ``t``: they read tensor values on the host (length groups,
    real-row masks), which is free on a CPU and a device synchronisation elsewhere."""
    return enabled and t.device.type == "cpu"


def length_groups(lengths: list[int], max_groups: int = MAX_LENGTH_GROUPS, step_cost: int = STEP_COST_ROWS) -> list[list[int]]:
    """Partition row indices, sorted by decreasing length, into at most ``max_groups`` contiguous groups that
    minimise sum over groups of (rows + step_cost) * longest (dynamic programming over <= a few dozen rows)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]  # best[k][i]: first i rows in k groups
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for k in range(1, max_groups + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):  # group = rows j..i-1, its longest is sorted_len[j]
                cost = best[k - 1][j] + (i - j + step_cost) * sorted_len[j]
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    k = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    groups, i = [], n
    while k > 0:
        j = cut[k][i]
        groups.append(order[j:i])
        i, k = j, k - 1
    return groups[::-1]


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, group_by_length: bool = False,
             dropout_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Run a bidirectional ``lstm`` on the first ``lengths[b]`` rows of each sample; padded rows are 0.

    With ``group_by_length`` (a CPU shortcut: it reads ``lengths`` on the host) the rows run in a few groups of
    similar length (:func:`length_groups`); each group's result is the same as running the whole batch (rows
    are independent sequences).

    ``dropout_masks``: one scaled mask (B, N, 2H) per gap between layers, multiplied into the next layer's input
    instead of drawing ``nn.LSTM``'s own dropout (the seed-exact replay, :mod:`percepiano.replay`).
    """
    if dropout_masks is not None:
        dropout_masks = tuple(dropout_masks)
        if len(dropout_masks) != lstm.num_layers - 1 or any(m.shape != (*x.shape[:2], 2 * lstm.hidden_size)
                                                            for m in dropout_masks):
            raise ValueError(
                f"dropout_masks: expected {lstm.num_layers - 1} mask(s) of shape {(*x.shape[:2], 2 * lstm.hidden_size)} "
                f"(one per gap between the LSTM's {lstm.num_layers} layers), got {[tuple(m.shape) for m in dropout_masks]}")
    if not group_by_length or x.shape[0] < 2:
        return _run_lstm_unpacked(lstm, x, lengths, dropout_masks)
    groups = length_groups(lengths.tolist())
    if len(groups) == 1:
        return _run_lstm_unpacked(lstm, x, lengths, dropout_masks)
    out = x.new_zeros(x.shape[0], x.shape[1], 2 * lstm.hidden_size)  # (B, N, 2H)
    for rows in groups:
        index = torch.tensor(rows, device=x.device)
        longest = int(lengths[index].max())
        masks = None if dropout_masks is None else [m[index, :longest] for m in dropout_masks]
        out[index, :longest] = _run_lstm_unpacked(lstm, x[index, :longest], lengths[index], masks)  # (b, L, 2H)
    return out


def _run_lstm_unpacked(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor,
                       dropout_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Run a bidirectional ``lstm`` on the first ``lengths[b]`` rows of each sample; padded rows are 0.

    Same result as packing (the original's ``pack_padded_sequence`` → LSTM → ``pad_packed_sequence``),
    computed without packing, which on CPU runs the recurrence about twice as fast: the forward direction
    reads the padded batch as is (padding comes after every real row, so it cannot reach them), and the
    backward direction reads each sample reversed within its own length. Layers run one at a time with the
    LSTM's own weights; dropout between layers as in ``nn.LSTM`` (or ``dropout_masks``, see :func:`run_lstm`).
    Samples of length 0 stay 0.
    """
    batch, length, _ = x.shape
    valid = (torch.arange(length, device=x.device)[None, :] < lengths[:, None])[:, :, None]  # (B, N, 1)
    # reversal within each length; an involution, so the same index maps outputs back
    reverse = (lengths[:, None] - 1 - torch.arange(length, device=x.device)[None, :])  # (B, N)
    reverse = torch.where(reverse >= 0, reverse, torch.arange(length, device=x.device)[None, :].expand(batch, -1))
    reverse = reverse[:, :, None]  # (B, N, 1)
    hidden = lstm.hidden_size
    out = x
    for layer in range(lstm.num_layers):
        if layer > 0 and dropout_masks is not None:
            out = out * dropout_masks[layer - 1]  # as ATen's dropout: input * (bernoulli mask / (1 - p))
        elif layer > 0 and lstm.dropout > 0 and lstm.training:
            out = torch.nn.functional.dropout(out, lstm.dropout, training=True)
        directions = []
        for suffix in ("", "_reverse"):
            weights = [getattr(lstm, f"{kind}_l{layer}{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            inp = out if not suffix else out.gather(1, reverse.expand(-1, -1, out.shape[-1]))  # (B, N, C)
            state = inp.new_zeros(1, batch, hidden)
            res = torch._VF.lstm(inp, (state, state), weights, True, 1, 0.0, lstm.training, False, True)[0]  # (B, N, H)
            directions.append(res if not suffix else res.gather(1, reverse.expand(-1, -1, hidden)))
        out = torch.cat(directions, dim=-1) * valid  # (B, N, 2H), zero at padding
    return out


def run_lstm_packed(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor,
                    dropout_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The original's way: pack, run, unpack (``model_utils.py: run_hierarchy_lstm_with_pack``); padded rows 0.

    The reference :func:`run_lstm` is tested against, and the engine of the seed-exact replay
    (``PercePianoModel.exact_lstm``): on a CPU with one thread its results are the original's to the last bit,
    because ATen runs the same packed kernels in the same order. ``dropout_masks`` (the padded layout of
    :func:`run_lstm`) are taken back to the packed rows and multiplied into each layer's packed input, as
    ATen's multi-layer LSTM drops out the packed data between layers; the layers then run one at a time.
    """
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    if dropout_masks is None or lstm.num_layers == 1:
        hidden, _ = lstm(packed)
    else:
        if len(dropout_masks) != lstm.num_layers - 1:
            raise ValueError(f"dropout_masks: expected {lstm.num_layers - 1} mask(s), got {len(dropout_masks)}")
        rows = hier.packed_rows(lengths.cpu(), x.shape[1])  # (P,) into the B * N rows, in packed order
        width = 2 * lstm.hidden_size
        data = packed.data  # (P, C)
        state = data.new_zeros(2, int(packed.batch_sizes[0]), lstm.hidden_size)  # (directions, B, H)
        for layer in range(lstm.num_layers):
            if layer > 0:
                data = data * dropout_masks[layer - 1].reshape(-1, width).index_select(0, rows)  # (P, 2H)
            weights = [getattr(lstm, f"{kind}_l{layer}{suffix}") for suffix in ("", "_reverse")
                       for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            data = torch._VF.lstm(data, packed.batch_sizes, (state, state), weights, True, 1, 0.0, lstm.training,
                                  True)[0]  # (P, 2H)
        hidden = packed._replace(data=data)
    hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=x.shape[1])  # (B, N, 2H)
    return hidden


def run_voice_lstm(
    lstm: nn.LSTM,
    x: torch.Tensor,
    voice: torch.Tensor,
    valid: torch.Tensor,
    shape: tuple[int, int, int] | None = None,
    group_by_length: bool = False,
    dropout_masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mirror of ``HanEncoder.run_voice_net``: each (sample, voice) is its own sequence, in note order.

    All non-empty (sample, voice) sequences run as one LSTM batch. Voice-0 notes (performance notes
    inserted without a score note) and padding get an all-zero output. ``shape`` is
    :func:`hierarchy.voice_shapes` when the caller knows it on the host; otherwise it is read from the
    device. Notes move in and out by index lookups (no ``nonzero``), so with ``shape`` given nothing here
    waits for the device. ``group_by_length``, ``dropout_masks`` (over the K sequences, in (sample, voice)
    order): see :func:`run_lstm`. Returns (B, N, 2 * hidden).
    """
    batch, length, width = x.shape
    num_voices, num_sequences, longest = hier.voice_shapes(voice, valid) if shape is None else shape
    if num_voices < 1:
        return x.new_zeros(batch, length, 2 * lstm.hidden_size)  # (B, N, 2Hv)
    in_voice = (voice[:, :, None] == torch.arange(1, num_voices + 1, device=voice.device)) & valid[:, :, None]  # (B, N, V)
    counts = in_voice.sum(dim=1).flatten()  # (B*V,) notes per (sample, voice)
    sequence_of = torch.cumsum(counts > 0, dim=0) - 1  # (B*V,) row among the non-empty sequences
    voice_index = (voice - 1).clamp(0, num_voices - 1)  # (B, N) 0-based; clamped rows are masked below
    seq = sequence_of.view(batch, num_voices).gather(1, voice_index)  # (B, N) the note's sequence
    pos = (torch.cumsum(in_voice.long(), dim=1) - 1).gather(2, voice_index[:, :, None])[:, :, 0]  # (B, N) rank in it
    has_voice = valid & (voice > 0)  # (B, N)
    dustbin = num_sequences * longest
    slot = torch.where(has_voice, seq * longest + pos, torch.full_like(seq, dustbin)).flatten()  # (B*N,)
    # source[s]: 1 + the flat note index that fills sequence slot s, 0 for padding (slots are unique per
    # note; the accumulated dustbin entry is dropped)
    notes = torch.arange(1, batch * length + 1, device=x.device)  # (B*N,)
    source = torch.zeros(dustbin + 1, dtype=torch.long, device=x.device).index_put_((slot,), notes, accumulate=True)
    padded_x = torch.cat([x.new_zeros(1, width), x.reshape(batch * length, width)])  # (1 + B*N, H)
    sequences = padded_x[source[:dustbin]].view(num_sequences, longest, width)  # (K, L, H)
    target = torch.where(counts > 0, sequence_of, torch.full_like(sequence_of, num_sequences))  # (B*V,)
    seq_lengths = torch.zeros(num_sequences + 1, dtype=torch.long, device=x.device)
    seq_lengths = seq_lengths.index_put_((target,), counts, accumulate=True)[:num_sequences]  # (K,)
    hidden = run_lstm(lstm, sequences, seq_lengths, group_by_length, dropout_masks)  # (K, L, 2Hv)
    hidden = torch.cat([hidden.reshape(dustbin, -1), hidden.new_zeros(1, hidden.shape[-1])])  # (K*L + 1, 2Hv)
    return hidden[slot].view(batch, length, -1)  # (B, N, 2Hv)
