"""NumPy arrays to Arrow and back through their buffers, without importing pandas.

pyarrow imports pandas (about 0.2 s) the first time it converts a NumPy array or a Python
object (`pa.array`, `pa.scalar`, `Array.to_numpy`, a compute function given a plain
value), to check whether the value is a pandas object. Our bulk path never uses pandas,
so it converts through buffers instead: the same zero-copy views, none of that import.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY_OF = {
    pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
    pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
    pa.float32(): np.float32, pa.float64(): np.float64,
}
_ARROW_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items()}


def from_numpy(values: np.ndarray, type: pa.DataType | None = None,
               mask: np.ndarray | None = None) -> pa.Array:
    """A numeric or boolean Arrow array of `values` (cast to `type` when given); `mask`
    True marks nulls."""
    values = np.asarray(values)
    if type is None:
        type = pa.bool_() if values.dtype == np.bool_ else _ARROW_OF[values.dtype]
    if pa.types.is_boolean(type):
        data = pa.py_buffer(np.packbits(values.astype(np.bool_, copy=False), bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=_NUMPY_OF[type]))
    validity, nulls = _validity(mask, len(values))
    return pa.Array.from_buffers(type, len(values), [validity, data], null_count=nulls)


def _validity(mask: np.ndarray | None, length: int) -> tuple[pa.Buffer | None, int]:
    if mask is None:
        return None, 0
    nulls = int(np.count_nonzero(mask))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(~np.asarray(mask, dtype=np.bool_), bitorder="little")), nulls


def strings(texts: list[str] | tuple[str, ...]) -> pa.StringArray:
    """A string array of a (short) list of Python strings."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def fixed_text(values: np.ndarray) -> pa.StringArray:
    """A string array of a NumPy fixed-width bytes array (`S<n>`) of ASCII text; trailing
    NUL bytes are not part of a value, as NumPy reads them."""
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize
    count = len(values)
    cells = values.view(np.uint8).reshape(count, width)
    if width and cells[:, -1].all():  # every value fills the width (ids of fixed length)
        offsets = np.arange(0, (count + 1) * width, width, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(cells)])
    lengths = width - np.argmax(cells[:, ::-1] != 0, axis=1) if width else np.zeros(count, np.int64)
    lengths[~cells.any(axis=1)] = 0
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = cells.reshape(-1) if (lengths == width).all() else cells[np.arange(width) < lengths[:, None]]
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def repeat_text(text: str, count: int) -> pa.StringArray:
    """`text` `count` times."""
    return pa.repeat(strings([text])[0], count)


def scalar(value: int | float | bool | str | None, type: pa.DataType) -> pa.Scalar:
    """An Arrow scalar, for compute functions (a plain Python value would be converted by
    pyarrow, importing pandas)."""
    if value is None:
        return pa.nulls(1, type)[0]
    if pa.types.is_string(type):
        return strings([str(value)])[0]
    return from_numpy(np.array([value]), type)[0]


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a numeric or boolean array without nulls (zero-copy where Arrow's
    buffer allows; booleans are unpacked)."""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 1:
            array = array.chunk(0)
        elif array.num_chunks == 0:
            return np.zeros(0, dtype=_dtype(array.type))
        else:
            return np.concatenate([to_numpy(chunk) for chunk in array.chunks])
    if array.null_count:
        raise ValueError("to_numpy: the array has nulls (fill them first)")
    if isinstance(array, pa.DictionaryArray):
        raise TypeError("to_numpy: a dictionary array (convert its indices and dictionary)")
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        if data is None:
            return np.zeros(len(array), dtype=np.bool_)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[array.offset:array.offset + len(array)].astype(np.bool_)
    dtype = _dtype(array.type)
    if data is None:
        return np.zeros(len(array), dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _dtype(type: pa.DataType) -> np.dtype:
    if pa.types.is_boolean(type):
        return np.dtype(np.bool_)
    try:
        return np.dtype(_NUMPY_OF[type])
    except KeyError:
        raise TypeError(f"to_numpy: {type} is not a numeric type") from None


def table(columns: dict[str, pa.Array | pa.ChunkedArray | np.ndarray], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from Arrow or NumPy columns (NumPy ones converted to the field's type)."""
    return pa.Table.from_arrays([from_numpy(columns[f.name], f.type) if isinstance(columns[f.name], np.ndarray)
                                 else columns[f.name] for f in schema], schema=schema)
