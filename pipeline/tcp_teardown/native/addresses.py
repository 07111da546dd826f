"""IP addresses as tshark prints them, formatted once per distinct address.

Every NumPy-to-Arrow step goes through `tcp_teardown.arrays` (buffers), so that pyarrow
never imports pandas here."""

from __future__ import annotations

import socket

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.arrays import from_numpy, scalar, strings, to_numpy
from tcp_teardown.codes import factorize

_OCTETS = strings([str(i) for i in range(256)])
_DOT = scalar(".", pa.string())


def ip_text(version: np.ndarray, hi: np.ndarray | None, lo: np.ndarray) -> pa.DictionaryArray:
    """Text of each address, dictionary-encoded (each distinct address written once).

    IPv4 as a dotted quad; IPv6 as glibc's inet_ntop writes it, which is what tshark
    prints (RFC 5952 compression, and a dotted quad for the last 32 bits of IPv4-mapped
    and IPv4-compatible addresses). `hi` None: every address is IPv4."""
    if hi is None:
        encoded = pc.dictionary_encode(from_numpy(lo))  # int32 indices, as the schema's
        # (safe=False: indices from dictionary_encode need no range check)
        return pa.DictionaryArray.from_arrays(encoded.indices, _dotted(to_numpy(encoded.dictionary)), safe=False)
    v4 = version == 4
    index = np.empty(len(version), dtype=np.int32)
    four_index, four = factorize(lo[v4])
    index[v4] = four_index
    six_hi_index, six_hi = factorize(hi[~v4])
    six_lo_index, six_lo = factorize(lo[~v4])
    six_index, six = factorize(six_hi_index * max(len(six_lo), 1) + six_lo_index)
    index[~v4] = len(four) + six_index
    six_text = [
        socket.inet_ntop(socket.AF_INET6, int(a).to_bytes(8, "big") + int(b).to_bytes(8, "big"))
        for a, b in zip(
            six_hi[six // max(len(six_lo), 1)].tolist(),
            six_lo[six % max(len(six_lo), 1)].tolist(),
            strict=True,
        )
    ]
    dictionary = pa.concat_arrays([_dotted(four), strings(six_text)])
    return pa.DictionaryArray.from_arrays(from_numpy(index), dictionary)


def _dotted(addresses: np.ndarray) -> pa.Array:
    """Dotted quads of uint32 addresses, built column-wise by Arrow."""
    parts = [
        _OCTETS.take(from_numpy(((addresses >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64)))
        for shift in (24, 16, 8, 0)
    ]
    return pc.binary_join_element_wise(*parts, _DOT)
