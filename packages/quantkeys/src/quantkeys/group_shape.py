"""How many elements share one scale: per tensor, per token, per channel, 1xG groups, RxC blocks.

Shapes are stated in the tensor's canonical orientation: activations are ``[tokens, K]`` and
weights are ``[N, K]`` (``nn.Linear``: output features x input features), with K the reduction
dimension. Per-token (one scale per activation row) and per-channel (one scale per weight output
row) have the same geometry but are distinct values here, because they mean different things.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Granularity(enum.Enum):
    """What one scale covers."""

    TENSOR = "tensor"
    TOKEN = "token"  # one scale per activation row
    CHANNEL = "channel"  # one scale per weight output row
    GROUP = "group"  # 1 x G contiguous elements along K
    BLOCK = "block"  # R x C tile (R > 1)


@dataclass(frozen=True)
class GroupShape:
    """The extent of one scale. Build with the class methods, not the constructor.

    ``rows`` and ``cols`` are the tile extent; ``-1`` means the full extent of that dimension.
    """

    granularity: Granularity
    rows: int
    cols: int

    def __post_init__(self) -> None:
        expected = {
            Granularity.TENSOR: (-1, -1),
            Granularity.TOKEN: (1, -1),
            Granularity.CHANNEL: (1, -1),
        }.get(self.granularity)
        if expected is not None and (self.rows, self.cols) != expected:
            raise ValueError(f"{self.granularity.value} group shape must be {expected}, got {(self.rows, self.cols)}")
        if self.granularity is Granularity.GROUP and (self.rows != 1 or self.cols < 1):
            raise ValueError(f"a group shape is 1 x G with G >= 1, got {self.rows} x {self.cols}")
        if self.granularity is Granularity.BLOCK and (self.rows < 2 or self.cols < 1):
            raise ValueError(f"a block shape is R x C with R >= 2 and C >= 1, got {self.rows} x {self.cols}")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def per_tensor(cls) -> GroupShape:
        return cls(Granularity.TENSOR, -1, -1)

    @classmethod
    def per_token(cls) -> GroupShape:
        return cls(Granularity.TOKEN, 1, -1)

    @classmethod
    def per_channel(cls) -> GroupShape:
        return cls(Granularity.CHANNEL, 1, -1)

    @classmethod
    def group(cls, size: int) -> GroupShape:
        """``1 x size`` elements along K share a scale."""
        return cls(Granularity.GROUP, 1, int(size))

    @classmethod
    def block(cls, rows: int, cols: int) -> GroupShape:
        """``rows x cols`` tiles share a scale; a 1-row block is a group."""
        if rows == 1:
            return cls.group(cols)
        return cls(Granularity.BLOCK, int(rows), int(cols))

    # -- queries ------------------------------------------------------------------------------
    @property
    def group_size(self) -> int | None:
        """Elements along K per scale, or None when a scale spans the whole row (tensor/token/channel)."""
        return self.cols if self.cols > 0 else None

    def scale_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """Canonical 2-D scale shape for a tensor of shape ``[rows, cols]`` (ceil division)."""
        g = self.granularity
        if g is Granularity.TENSOR:
            return (1, 1)
        if g in (Granularity.TOKEN, Granularity.CHANNEL):
            return (rows, 1)
        return (math.ceil(rows / self.rows), math.ceil(cols / self.cols))

    def __str__(self) -> str:
        if self.granularity in (Granularity.GROUP, Granularity.BLOCK):
            return f"{self.rows}x{self.cols}"
        return str(self.granularity.value)


PER_TENSOR = GroupShape.per_tensor()
PER_TOKEN = GroupShape.per_token()
PER_CHANNEL = GroupShape.per_channel()
