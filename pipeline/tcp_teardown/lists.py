"""Per-group lists built from offsets, without a Python loop over groups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tcp_teardown.arrays import from_numpy, strings


@dataclass(frozen=True)
class Grouped:
    """Values with the group (connection) each belongs to, groups sorted: a list per group, kept flat."""

    groups: np.ndarray
    values: np.ndarray

    @staticmethod
    def empty(dtype: type) -> Grouped:
        return Grouped(np.zeros(0, np.int64), np.zeros(0, dtype))

    def sizes(self, count: int) -> np.ndarray:
        return np.bincount(self.groups, minlength=count) if len(self.groups) else np.zeros(count, np.int64)

    def where(self, keep: np.ndarray) -> Grouped:
        """Only the values whose group is selected by the per-group mask `keep`."""
        mask = keep[self.groups] if len(self.groups) else np.zeros(0, bool)
        return Grouped(self.groups[mask], self.values[mask])

    def without_first(self) -> Grouped:
        """Each group's values but its first."""
        later = np.r_[False, self.groups[1:] == self.groups[:-1]] if len(self.groups) else np.zeros(0, bool)
        return Grouped(self.groups[later], self.values[later])

    def permuted(self, order: np.ndarray) -> Grouped:
        """The groups renumbered so that new group i is old group order[i] (values follow)."""
        new_sizes, take = self._moved(order)
        return Grouped(np.repeat(np.arange(len(order)), new_sizes), self.values[take])

    def _moved(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For `permuted`: each new group's size, and where each value in the new order was.

        Each group's values are one contiguous block, so the blocks are moved, not sorted.
        """
        sizes = self.sizes(len(order))
        starts = np.cumsum(sizes) - sizes
        new_sizes = sizes[order]
        new_starts = np.cumsum(new_sizes) - new_sizes
        return new_sizes, np.repeat(starts[order] - new_starts, new_sizes) + np.arange(int(new_sizes.sum()))

    @staticmethod
    def concat(parts: list[Grouped], offsets: list[int] | np.ndarray) -> Grouped:
        """Consecutive groupings as one, the groups of part i shifted by offsets[i]."""
        if not parts:
            return Grouped.empty(np.int64)
        return Grouped(np.concatenate([p.groups + o for p, o in zip(parts, offsets, strict=False)]),
                       np.concatenate([p.values for p in parts]))

    def to_arrow(self, count: int, value_type: pa.DataType) -> pa.ListArray:
        return grouped_list(self.groups, self.values, count, value_type)

    def named_in_order(self, order: np.ndarray, names: list[str] | tuple[str, ...]) -> pa.ListArray:
        """`self.permuted(order).named(...)` in one move: the values are gathered straight
        into their new places and named by taking from the few `names`."""
        new_sizes, take = self._moved(order)
        offsets = np.zeros(len(order) + 1, dtype=np.int32)
        np.cumsum(new_sizes, out=offsets[1:])
        return pa.ListArray.from_arrays(from_numpy(offsets), _name(self.values[take], names))

    def named(self, count: int, names: list[str] | tuple[str, ...]) -> pa.ListArray:
        """Lists of text from lists of codes into `names`."""
        return grouped_list(self.groups, _name(self.values, names), count)


def _name(codes: np.ndarray, names: list[str] | tuple[str, ...]) -> pa.StringArray:
    return strings(list(names)).take(from_numpy(codes.astype(np.int32)))


def grouped_list(groups: np.ndarray, values: np.ndarray | pa.Array, count: int,
                 value_type: pa.DataType | None = None) -> pa.ListArray:
    """A list per group 0..count-1 of its `values`; `groups` must be sorted (stable order kept)."""
    groups = np.asarray(groups, dtype=np.int64)
    sizes = np.bincount(groups, minlength=count) if len(groups) else np.zeros(count, np.int64)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = values if isinstance(values, pa.Array) else from_numpy(values, value_type)
    if value_type is not None and flat.type != value_type:
        flat = flat.cast(value_type)
    return pa.ListArray.from_arrays(from_numpy(offsets), flat)

