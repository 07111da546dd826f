"""The native reader never imports pandas (pyarrow does, ~0.2 s, when it converts NumPy
arrays or Python values itself) nor numpy.ma (np.unique/np.isin do on some paths)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CAPTURES = Path(__file__).parent / "captures" / "real"

# Run in a fresh interpreter: a module imported by an earlier test would hide the import.
SCRIPT = """
import sys
from pathlib import Path


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name == "numpy.ma" or name.startswith("numpy.ma."):
            raise ImportError(f"the native reader imported {name}")
        return None


sys.meta_path.insert(0, Refuse())
from tcp_teardown import native

rows = 0
for path in sys.argv[1:]:
    try:
        rows += sum(batch.num_rows for batch in native.read_packets(Path(path), chunk_packets=7))
    except (native.NativeUnsupported, native.TruncatedCapture):
        pass
print(rows)
"""


def test_reading_imports_neither_pandas_nor_numpy_ma() -> None:
    captures = sorted(str(p) for p in CAPTURES.glob("*.pcap*"))
    assert captures, "no test captures"
    done = subprocess.run([sys.executable, "-c", SCRIPT, *captures], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0
