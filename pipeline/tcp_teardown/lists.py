"""Per-group lists built from offsets, without a Python loop over groups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Packing a list of codes into one int64: 6 bits a code (+1, so 0 ends the list), 10 codes.
_BITS = 6
_DIGIT = 1 << _BITS
_DIGITS = 63 // _BITS


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
        """The groups renumbered so that new group i is old group order[i] (values follow).

        Each group's values are one contiguous block, so the blocks are moved, not sorted.
        """
        count = len(order)
        sizes = np.bincount(self.groups, minlength=count)
        starts = np.cumsum(sizes) - sizes
        new_sizes = sizes[order]
        new_starts = np.cumsum(new_sizes) - new_sizes
        take = np.repeat(starts[order] - new_starts, new_sizes) + np.arange(int(new_sizes.sum()))
        return Grouped(np.repeat(np.arange(count), new_sizes), self.values[take])

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
        """`self.permuted(order).named(...)` for short lists of few distinct combinations
        (the roles and labels of key frames): each group's list is packed into one integer,
        the distinct lists are named once, and rows take theirs, with no per-value work."""
        count = len(order)
        sizes = self.sizes(count)
        starts = np.cumsum(sizes) - sizes
        position = np.arange(len(self.groups)) - starts[self.groups]
        if len(names) >= _DIGIT or (len(position) and position.max() >= _DIGITS) or (sizes == 0).any():
            return self.permuted(order).named(count, names)
        digits = (self.values.astype(np.int64) + 1) << (position * _BITS)
        packed = np.add.reduceat(digits, starts) if count else np.zeros(0, np.int64)
        combination = pc.dictionary_encode(pa.array(packed[order]))
        distinct = combination.dictionary.to_numpy()
        lists = [[names[(int(code) >> (i * _BITS)) % _DIGIT - 1] for i in range(_DIGITS)
                  if (int(code) >> (i * _BITS)) % _DIGIT] for code in distinct]
        return pa.array(lists, pa.list_(pa.string())).take(combination.indices)

    def named(self, count: int, names: list[str] | tuple[str, ...]) -> pa.ListArray:
        """Lists of text from lists of codes into `names`."""
        text = pa.DictionaryArray.from_arrays(pa.array(self.values.astype(np.int32)),
                                              pa.array(names, pa.string())).cast(pa.string())
        return grouped_list(self.groups, text, count)


def grouped_list(groups: np.ndarray, values: np.ndarray | pa.Array, count: int,
                 value_type: pa.DataType | None = None) -> pa.ListArray:
    """A list per group 0..count-1 of its `values`; `groups` must be sorted (stable order kept)."""
    groups = np.asarray(groups, dtype=np.int64)
    sizes = np.bincount(groups, minlength=count) if len(groups) else np.zeros(count, np.int64)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = values if isinstance(values, pa.Array) else pa.array(np.asarray(values), type=value_type)
    if value_type is not None and flat.type != value_type:
        flat = flat.cast(value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)
