"""The extcap: its protocol answers, its errors, and a real tshark capturing through it.

The final proof drives the installed tshark: after `tcp-teardown wireshark install` into
a temporary HOME, `tshark -i tcpteardown` replays each seed capture with comments on
exactly the key frames the shared analysis lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tcp_teardown.annotate import ALL_LABELS, build_annotations
from tcp_teardown.errors import ExitCode
from tcp_teardown.pcapng_writer import BT_SHB, PCAPNG_BYTE_ORDER_MAGIC

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEEDS = SHARED / "corpus" / "seeds"
IFACE = "tcpteardown"

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="shared seed corpus not present")
posix_only = pytest.mark.skipif(os.name != "posix", reason="uses a POSIX fifo")


def seed_captures() -> list[Path]:
    return sorted(SEEDS.glob("*.pcap")) if SEEDS.is_dir() else []


def extcap(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcp_teardown.extcap", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


# --- protocol answers --------------------------------------------------------------------
def test_interfaces_tolerates_extra_arguments() -> None:
    proc = extcap("--extcap-interfaces", "--extcap-version=4.0", "--some-future-flag", "x")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("extcap {version=") and "{help=" in lines[0]
    assert lines[1] == f"interface {{value={IFACE}}}{{display=TCP teardown (annotated replay)}}"
    assert proc.stderr == ""


def test_dlts_is_one_line_and_follows_the_capture(tmp_path: Path) -> None:
    proc = extcap("--extcap-interface", IFACE, "--extcap-dlts", "--extcap-version=4.0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["dlt {number=1}{name=EN10MB}{display=Ethernet}"]
    raw = tmp_path / "raw.pcap"
    raw.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000065000000"))
    proc = extcap("--extcap-interface", IFACE, "--extcap-dlts", "--capture-file", str(raw))
    assert proc.stdout.splitlines() == ["dlt {number=101}{name=RAW}{display=Raw IP}"]


def test_config_lists_every_option_and_label() -> None:
    proc = extcap("--extcap-interface", IFACE, "--extcap-config", "--unknown=1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    args = {line.split("{call=")[1].split("}")[0]: line for line in lines if line.startswith("arg ")}
    assert set(args) == {"--capture-file", "--labels", "--idle-threshold", "--msl", "--all-frames"}
    assert "{type=fileselect}" in args["--capture-file"] and "{mustexist=true}" in args["--capture-file"]
    assert "{type=multicheck}" in args["--labels"]
    assert "{type=double}{default=5}" in args["--idle-threshold"]
    assert "{type=double}{default=30}" in args["--msl"]
    assert "{type=boolflag}" in args["--all-frames"]
    values = [line.split("{value=")[1].split("}")[0] for line in lines if line.startswith("value ")]
    assert values == list(ALL_LABELS)


def test_unknown_interface_and_no_action_are_usage_errors() -> None:
    proc = extcap("--extcap-interface", "nope", "--extcap-config")
    assert proc.returncode == ExitCode.USAGE
    assert len(proc.stderr.splitlines()) == 1 and "nope" in proc.stderr
    proc = extcap("--extcap-version=4.0")
    assert proc.returncode == ExitCode.USAGE and len(proc.stderr.splitlines()) == 1


# --- errors with a real fifo -------------------------------------------------------------
def read_fifo(fifo: Path, sink: list[bytes]) -> threading.Thread:
    """Read the fifo to its end in a thread, as dumpcap would."""

    def reader() -> None:
        with fifo.open("rb") as fh:
            sink.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def is_empty_pcapng(data: bytes) -> bool:
    """A section header block and nothing after it."""
    return (
        len(data) >= 28
        and int.from_bytes(data[:4], "little") == BT_SHB
        and int.from_bytes(data[8:12], "little") == PCAPNG_BYTE_ORDER_MAGIC
        and int.from_bytes(data[4:8], "little") == len(data)
    )


@posix_only
@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (["--capture-file", "/nonexistent/x.pcap"], ExitCode.INPUT_MISSING, "no such file"),
        ([], ExitCode.USAGE, "capture file"),
        (["--capture-file", "{seed}", "--idle-threshold", "soon"], ExitCode.USAGE, "idle"),
        (["--capture-file", "{seed}", "--labels", "bogus"], ExitCode.USAGE, "bogus"),
        (["--capture-file", "{text}"], ExitCode.NOT_A_CAPTURE, "not a capture"),
    ],
    ids=["missing-file", "no-file", "bad-number", "bad-label", "not-a-capture"],
)
def test_capture_error_is_one_line_and_closes_the_fifo(
    tmp_path: Path, extra: list[str], code: ExitCode, says: str
) -> None:
    text = tmp_path / "text.pcap"
    text.write_text("this is not a capture file\n")
    seed = next(iter(seed_captures()), text)
    extra = [a.format(seed=seed, text=text) for a in extra]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    proc = extcap("--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
                  "--extcap-capture-filter", "tcp", *extra, timeout=60)  # fmt: skip
    thread.join(timeout=30)
    assert not thread.is_alive(), "the fifo was never closed"
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and says in proc.stderr
    assert is_empty_pcapng(got[0])


# --- the real tshark ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def wireshark_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A HOME of its own with the extcap installed by the real `install` command."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "WIRESHARK_CONFIG_DIR")}
    env["HOME"] = str(home)
    cli = Path(sys.executable).with_name("tcp-teardown")
    proc = subprocess.run([str(cli), "wireshark", "install"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (home / ".config" / "wireshark" / "extcap" / "tcp_teardown_extcap").is_file()
    return env


def tshark(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tshark", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)  # fmt: skip


@needs_tshark
def test_tshark_lists_the_interface(wireshark_home: dict[str, str]) -> None:
    proc = tshark(wireshark_home, "-D")
    assert proc.returncode == 0, proc.stderr
    assert any(line.split(". ", 1)[-1].startswith(f"{IFACE} (TCP teardown (annotated replay))")
               for line in proc.stdout.splitlines()), proc.stdout  # fmt: skip


@needs_tshark
@needs_seeds
@pytest.mark.slow
@pytest.mark.parametrize("capture", seed_captures(), ids=lambda p: p.stem)
def test_tshark_capture_comments_exactly_the_key_frames(
    wireshark_home: dict[str, str], capture: Path
) -> None:
    from tcp_teardown import api

    proc = tshark(wireshark_home, "-i", IFACE, "-o", f"extcap.{IFACE}.capturefile:{capture}",
                  "-T", "fields", "-e", "frame.number", "-e", "frame.time_epoch",
                  "-e", "frame.len", "-e", "frame.comment")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    original = subprocess.run(["tshark", "-r", str(capture), "-T", "fields", "-e", "frame.number",
                               "-e", "frame.time_epoch", "-e", "frame.len"],
                              capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert [r[:3] for r in rows] == [line.split("\t") for line in original.splitlines()]
    comments = {int(r[0]): r[3] for r in rows if r[3]}
    frames = api.analyze([capture]).frames
    assert set(comments) == set(frames["frame_number"].astype(int))
    assert comments == build_annotations(frames).key


@needs_tshark
@needs_seeds
def test_tshark_passes_options_labels_and_all_frames(wireshark_home: dict[str, str]) -> None:
    capture = SEEDS / "seed_all_in_one.pcap"
    proc = tshark(wireshark_home, "-i", IFACE, "-o", f"extcap.{IFACE}.capturefile:{capture}",
                  "-o", f"extcap.{IFACE}.labels:three_way_close,idle_close",
                  "-o", f"extcap.{IFACE}.allframes:true",
                  "-T", "fields", "-e", "frame.number", "-e", "frame.comment")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    comments = [line.split("\t")[1] for line in proc.stdout.splitlines() if "\t" in line]
    keyed = [c for c in comments if "tcp-teardown: " in c]
    assert keyed and all("three_way_close (" in c or "idle_close (" in c for c in keyed)
    # Every frame of the three selected connections (one idle, two three-way closes).
    flows = {c.split("tcp-teardown flow ")[1].split(":")[0] for c in comments if "flow " in c}
    assert len(flows) == 3


@needs_tshark
def test_tshark_ends_when_the_capture_file_is_bad(
    wireshark_home: dict[str, str], tmp_path: Path
) -> None:
    proc = tshark(wireshark_home, "-i", IFACE,
                  "-o", f"extcap.{IFACE}.capturefile:{tmp_path / 'missing.pcap'}",
                  timeout=60)  # fmt: skip
    assert "tcp-teardown extcap:" in proc.stderr and "no such file" in proc.stderr
    assert "0 packets captured" in proc.stderr


@posix_only
@needs_seeds
def test_capture_of_a_cut_file_replays_up_to_the_cut(tmp_path: Path) -> None:
    from tcp_teardown.pcapng_writer import CaptureReader, Packet

    cut = tmp_path / "cut.pcap"
    cut.write_bytes((SEEDS / "seed_all_in_one.pcap").read_bytes()[:1500])  # ends in frame 14
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    proc = extcap("--capture", "--extcap-interface", IFACE, "--fifo", str(fifo),
                  "--capture-file", str(cut), timeout=120)  # fmt: skip
    thread.join(timeout=30)
    assert proc.returncode == ExitCode.TRUNCATED, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "frame 14" in proc.stderr
    replayed = tmp_path / "replayed.pcapng"
    replayed.write_bytes(got[0])
    with CaptureReader(replayed) as reader:
        assert sum(isinstance(e, Packet) for e in reader) == 13
