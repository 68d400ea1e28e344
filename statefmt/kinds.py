"""The state kinds of modern recurrent models (format 2.1), in one table beside the classic cells.

Each kind lists its tensors in the file's checksum order, each tensor by its axes: named sizes
(*dims*) that the document records, the first axis always `batch`, the stream axis, so that
stream ids, `rows` and `select` work as for LSTMs. One canonical layout per kind, whatever the
implementation that produced it (an adapter converts):

- a convolution window is `[batch, channels, K-1]`, channels before time, oldest column first:
  K-1 is what every implementation can fill (those that keep K columns never read the oldest);
- matrix states are `[batch, heads, key, value]` (K x V, as fla and Hugging Face hold them);
- attention keys and values are `[batch, kv_heads, length, head_dim]`, oldest first, the last
  of them at position `tokens - 1`; `window` is a setting, null for full attention.

No framework is imported: these are names only.

>>> KINDS_2_1["mamba2"].dims
('conv_channels', 'conv_window', 'heads', 'head_dim', 'state_size')
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = "batch"


@dataclass(frozen=True)
class StateKind:
    """One modern state kind: its tensors by axes, and the sizes that may be 0 (an absent convolution)."""

    kind: str
    family: str
    tensors: tuple[tuple[str, tuple[str, ...]], ...]  # (name, axes), in checksum order; axes[0] is BATCH
    zero: tuple[str, ...] = ()  # dims that may be 0
    settings: tuple[str, ...] = ()  # sizes no shape tells: attention's window (null: full attention)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tensors)

    @property
    def dims(self) -> tuple[str, ...]:
        """The named sizes the document records, in the order they first appear."""
        return tuple(dict.fromkeys(axis for _, axes in self.tensors for axis in axes if axis != BATCH))

    def axes(self, name: str) -> tuple[str, ...]:
        return dict(self.tensors)[name]


_CONV = ("conv", (BATCH, "conv_channels", "conv_window"))
_MATRIX = (BATCH, "heads", "key_dim", "value_dim")

KINDS_2_1: dict[str, StateKind] = {kind.kind: kind for kind in (
    StateKind("mamba", "selective SSM (Mamba-1)",
              (("conv", (BATCH, "channels", "conv_window")), ("ssm", (BATCH, "channels", "state_size"))),
              zero=("conv_window",)),
    StateKind("mamba2", "selective SSM (Mamba-2)",
              (_CONV, ("ssm", (BATCH, "heads", "head_dim", "state_size"))), zero=("conv_window",)),
    StateKind("gated_deltanet", "gated delta rule / linear attention (Gated DeltaNet, Qwen3-Next)",
              (_CONV, ("recurrent", _MATRIX)), zero=("conv_window",)),
    StateKind("rwkv4", "RWKV-4",
              tuple((name, (BATCH, "channels")) for name in ("att_x", "att_num", "att_den", "att_max", "ffn_x"))),
    StateKind("rwkv7", "RWKV-7", (("att_x", (BATCH, "channels")), ("wkv", _MATRIX), ("ffn_x", (BATCH, "channels")))),
    StateKind("rglru", "RG-LRU (Griffin, RecurrentGemma)",
              (("conv", (BATCH, "channels", "conv_window")), ("rg_lru", (BATCH, "channels"))), zero=("conv_window",)),
    StateKind("mlstm", "mLSTM (xLSTM)",
              (("C", _MATRIX), ("n", (BATCH, "heads", "key_dim")), ("m", (BATCH, "heads")), _CONV),
              zero=("conv_channels", "conv_window")),
    StateKind("slstm", "sLSTM (xLSTM)",
              (*((name, (BATCH, "units")) for name in ("h", "c", "n", "m")), _CONV),
              zero=("conv_channels", "conv_window")),
    StateKind("attention", "attention KV of hybrid models (full or sliding window)",
              (("keys", (BATCH, "kv_heads", "length", "head_dim")),
               ("values", (BATCH, "kv_heads", "length", "value_dim"))),
              zero=("length",), settings=("window",)),
)}
