"""Native reader vs tshark EK on a large synthetic capture: packets/s and peak RSS.

    python bench/native_vs_tshark.py [--packets 2000000] [--tshark-packets 500000]
                                     [--snaplen 0] [--workdir /tmp]

The capture is built from the shared corpus's Ethernet pcaps, repeated with shifted
timestamps and with TCP/UDP ports shifted per repetition, so that every repetition is a
set of new connections. tshark runs the tshark engine's own EK command line on the first
`--tshark-packets` packets (it is slow); both are measured in child processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "zeek" / "traces"
SOURCES = [
    "contentline/rsh-long-client-user-no-nul.pcapng.gz",
    "ftp/cwd-navigation.pcap",
    "irc-dcc-send.pcapng",
    "ssh/ssh.client-side-half-duplex.pcap",
    "postgresql/greenhouse-app.pcap",
    "http/m57-long-49583-80.pcap",
    "ldap/missing_ldap_logs.pcapng",
    "wikipedia.pcap",
]


def source_frames(workdir: Path) -> list[bytes]:
    frames = []
    for name in SOURCES:
        plain = workdir / "bench-source.pcap"
        subprocess.run(["editcap", "-F", "pcap", str(CORPUS / name), str(plain)], check=True)
        data = plain.read_bytes()
        little = data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        order = "<" if little else ">"
        at = 24
        while at + 16 <= len(data):
            caplen = struct.unpack_from(order + "I", data, at + 8)[0]
            frames.append(data[at + 16 : at + 16 + caplen])
            at += 16 + caplen
        plain.unlink()
    return frames


def build(path: Path, count: int, snaplen: int, workdir: Path) -> None:
    frames = source_frames(workdir)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        written, repetition = 0, 0
        while written < count:
            for frame in frames:
                data = bytearray(frame)
                if len(data) >= 38 and data[12:14] == b"\x08\x00" and data[14] >> 4 == 4:
                    l4 = 14 + (data[14] & 15) * 4
                    if len(data) >= l4 + 4:  # new ports: new connections every repetition
                        sport, dport = struct.unpack_from("!HH", data, l4)
                        shift = repetition * 7
                        struct.pack_into("!HH", data, l4, (sport + shift) & 0xFFFF, (dport + shift) & 0xFFFF)
                micros = written * 50
                kept = data[:snaplen] if snaplen else data
                out.write(struct.pack("<IIII", 1_600_000_000 + micros // 10**6, micros % 10**6, len(kept), len(data)))
                out.write(kept)
                written += 1
                if written == count:
                    break
            repetition += 1


def run_native(path: Path) -> dict[str, float]:
    code = (
        "import json,sys,time,resource;from pathlib import Path;"
        "from tcp_teardown.native import read_packets;"
        "t=time.process_time();w=time.perf_counter();"
        "n=sum(b.num_rows for b in read_packets(Path(sys.argv[1])));"
        "print(json.dumps({'rows':n,'cpu':time.process_time()-t,'wall':time.perf_counter()-w,"
        "'rss_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run_tshark(path: Path) -> dict[str, float]:
    from tcp_teardown import tshark

    command = tshark.ek_command(tshark.find_tshark(), str(path))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tshark.tshark_env(), check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"cpu": cpu, "wall": wall, "rss_mb": after.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--tshark-packets", type=int, default=500_000)
    parser.add_argument("--snaplen", type=int, default=0, help="cut frames to this many bytes (0: whole)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    big = args.workdir / f"native-bench-{args.packets}-{args.snaplen}.pcap"
    if not big.exists():
        build(big, args.packets, args.snaplen, args.workdir)
    prefix = args.workdir / f"native-bench-{args.tshark_packets}-{args.snaplen}.pcap"
    if not prefix.exists():
        subprocess.run(["editcap", "-r", str(big), str(prefix), f"1-{args.tshark_packets}"], check=True)

    # tshark first: children's peak RSS is a maximum over all children so far
    ts = run_tshark(prefix)
    for label, path, packets in (("full", big, args.packets), ("prefix", prefix, args.tshark_packets)):
        native = run_native(path)
        print(
            f"native  {label:6} {packets:>9} packets: {native['cpu']:.2f} s CPU in the reader, "
            f"{packets / native['cpu']:,.0f} packets/s, peak RSS {native['rss_mb']:.0f} MB"
        )
    print(
        f"tshark  prefix {args.tshark_packets:>9} packets: {ts['cpu']:.2f} s CPU, "
        f"{args.tshark_packets / ts['cpu']:,.0f} packets/s, peak RSS {ts['rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
