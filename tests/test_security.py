"""What SECURITY.md promises, checked: no shell, names passed verbatim, the extcap's
footprint, and outputs that stay inside their folder."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tcp_teardown.wireshark import launcher_text
from tests.conftest import CLI, ROOT, needs_tshark
from tests.malformed import builders as b

PACKAGE = ROOT / "pipeline" / "tcp_teardown"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "extcap").glob("*.py"), *(ROOT / "tools").glob("*.py")])
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "pty.spawn", "eval", "exec", "compile",
               "pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "yaml.load"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                    "subprocess.check_output", "os.execv", "os.execvp", "os.execvpe", "os.spawnv", "os.spawnvp"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def calls(path: Path) -> list[tuple[int, str, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.lineno, dotted(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def risky_calls(path: Path) -> list[str]:
    """Calls that hand a string to a shell or an interpreter, or start a process from one string."""
    found = []
    for line, name, call in calls(path):
        where = f"{path.name}:{line}"
        if name in SHELL_CALLS:
            found.append(f"{where}: {name}()")
        for keyword in call.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                found.append(f"{where}: {name}(shell=...)")
        one_string = ast.Constant | ast.JoinedStr | ast.BinOp
        if name in SUBPROCESS_CALLS and call.args and isinstance(call.args[0], one_string):
            found.append(f"{where}: {name}({ast.unparse(call.args[0])[:40]})")
    return found


def test_no_shell_eval_or_unpickling_in_the_source() -> None:
    """Nothing we ship passes a string to a shell or an interpreter; commands are argv lists."""
    found = [item for path in SOURCES for item in risky_calls(path)]
    assert not found, found
    assert len(SOURCES) > 20  # the scan saw the package


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nsubprocess.run(cmd, shell=True)\nos.system('x')\n"
                   "subprocess.Popen(f'tshark -r {name}')\neval(text)\nsubprocess.run(['ls'], shell=False)\n")
    assert [item.split(": ")[1] for item in risky_calls(bad)] == [
        "subprocess.run(shell=...)", "os.system()", "subprocess.Popen(f'tshark -r {name}')", "eval()"]


HOSTILE = ["; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "a b", "it's", '"q"', "-r", "--", "\\", "*", "ü"]


def test_file_names_reach_tshark_as_single_arguments(tmp_path: Path) -> None:
    """Shell syntax in a capture name is just a name: tshark gets it as one argv item."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "tshark"
    fake.write_text(f"""#!{sys.executable}
import json, sys
if sys.argv[1:2] == ["--version"]:
    print("TShark (Wireshark) 4.0.99 (stand-in)"); sys.exit(0)
if sys.argv[1:2] == ["-G"]:
    sys.exit(0)
with open({str(record)!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
""")
    fake.chmod(0o755)
    names = [f"cap {i}{text}.pcap" for i, text in enumerate(HOSTILE)] + ["-leading-dash.pcap"]
    for name in names:
        (tmp_path / name).write_bytes(b.pcap_of(b.conversation()))
    result = subprocess.run([str(CLI), "analyze", "--engine", "tshark", "--tshark", str(fake), "--out", "out",
                             "--", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr  # the stand-in prints nothing: "no TCP"
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    read = [argv[argv.index("-r") + 1] for argv in seen]
    assert read == [*names[:-1], "./-leading-dash.pcap"]
    assert not list(tmp_path.rglob("PWNED"))


def test_extcap_launcher_passes_arguments_through_untouched(tmp_path: Path) -> None:
    """The generated sh launcher quotes our paths and forwards Wireshark's arguments as "$@"."""
    odd = tmp_path / "py thon $(touch PWNED) `x` it's"
    odd.mkdir()
    record = tmp_path / "argv.json"
    python = odd / "python"
    python.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv))\n")
    python.chmod(0o755)
    launcher = tmp_path / "launcher"
    launcher.write_text(launcher_text(str(python), odd / "path $(touch PWNED)"))
    launcher.chmod(0o755)
    subprocess.run([str(launcher), *HOSTILE], cwd=tmp_path, check=True, timeout=60)
    argv = json.loads(record.read_text())
    assert argv[1:3] == ["-m", "tcp_teardown.extcap"] and argv[3:] == HOSTILE
    assert not list(tmp_path.rglob("PWNED"))


AUDIT = r"""
import json, os, sys
log = open(sys.argv[1], "w")
WATCH = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.chmod",
         "os.truncate", "os.symlink", "os.link", "shutil.rmtree", "shutil.move", "subprocess.Popen",
         "os.system", "os.posix_spawn", "os.exec", "socket.connect", "socket.bind", "tempfile.mkstemp",
         "tempfile.mkdtemp"}
def text(value):
    return os.fsdecode(value) if isinstance(value, bytes) else value if isinstance(value, (str, int)) else repr(value)
def hook(event, args):
    if event in WATCH:
        log.write(json.dumps([event, [text(a) if not isinstance(a, (list, tuple)) else [text(x) for x in a]
                                      for a in args]]) + "\n")
        log.flush()
sys.addaudithook(hook)
from tcp_teardown.extcap import main
sys.exit(main(sys.argv[2:]))
"""


def code_roots() -> list[str]:
    """Where the interpreter, the libraries and the package are: reading those is running Python."""
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(PACKAGE), *site.getsitepackages(),
             *sysconfig.get_paths().values(), "/usr/share/zoneinfo", "/etc/localtime", "/dev/urandom", "/proc/"}
    return sorted({os.path.realpath(r) for r in roots if r})


@needs_tshark
def test_extcap_opens_nothing_but_its_capture_file_and_the_fifo(tmp_path: Path) -> None:
    capture = tmp_path / "capture.pcap"
    capture.write_bytes(b.pcap_of(b.conversation("fin_by_server")))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(fifo.read_bytes()), daemon=True)
    reader.start()
    events_file = tmp_path / "events.jsonl"
    result = subprocess.run([sys.executable, "-c", AUDIT, str(events_file), "--extcap-interface", "tcpteardown",
                             "--capture", "--fifo", str(fifo), "--capture-file", str(capture)],
                            capture_output=True, text=True, timeout=120, check=False, cwd="/")
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert received[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng came out of the fifo
    roots = code_roots()
    writes, reads, other = set(), set(), []
    for event, args in (json.loads(line) for line in events_file.read_text().splitlines()):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                continue  # an already open descriptor
            real = os.path.realpath(path)
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            (writes if writing else reads).add(real)
        elif event == "subprocess.Popen":
            argv = args[1]
            assert isinstance(argv, list) and Path(argv[0]).name == "tshark", argv  # only tshark, as a list
            assert "-r" not in argv or str(capture) in argv
        else:
            other.append((event, args))
    assert writes == {os.path.realpath(fifo)}
    foreign = {p for p in reads if p != os.path.realpath(capture) and not any(p.startswith(r) for r in roots)}
    assert not foreign, foreign
    assert not other, other  # no file created, moved, removed; no socket


# --- batch: a manifest cannot steer deletions or reads outside the dataset ----------------------
try:
    import tcp_teardown.batch  # noqa: F401
except ImportError:
    HAVE_BATCH = False
else:
    HAVE_BATCH = True


@pytest.mark.skipif(not HAVE_BATCH, reason="tcp-teardown batch is not available")
def test_manifest_paths_cannot_reach_outside_the_dataset(tmp_path: Path) -> None:
    archive, dataset = tmp_path / "archive", tmp_path / "dataset"
    archive.mkdir()
    (archive / "a.pcap").write_bytes(b.pcap_of(b.conversation()))
    command = [str(CLI), "batch", str(archive), "--out", str(dataset), "--quiet", "--jobs", "1"]
    assert subprocess.run(command, capture_output=True, timeout=300, check=False).returncode == 0
    outside = tmp_path / "outside.txt"
    absolute = tmp_path / "absolute.txt"
    for victim in (outside, absolute):
        victim.write_text("not the dataset's")
    manifest = dataset / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for record in records:  # a tampered (or foreign) dataset
        record["parts"] += [{"path": "../outside.txt", "rows": 1, "bytes": 17},
                            {"path": str(absolute), "rows": 1, "bytes": 17}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    subprocess.run([*command, "--force"], capture_output=True, timeout=300, check=False)
    assert outside.read_text() == "not the dataset's"
    assert absolute.read_text() == "not the dataset's"


def test_outputs_stay_in_the_out_folder(tmp_path: Path) -> None:
    """Whatever a capture is called, analyze writes only its fixed file names into --out."""
    from typer.testing import CliRunner

    from tcp_teardown.cli import app

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    name = tmp_path / "..%2F..%2Fescape\n## fake section.pcap"
    name.write_bytes(b.pcap_of(b.conversation()))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(name), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["connections.parquet", "frames.parquet", "endpoints.parquet", "hosts.parquet", "filters.txt",
         "filters.json", "summary.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name.name, "out"])
    assert "\n## fake section" not in (out / "filters.txt").read_text()  # the newline is escaped
