"""Install/uninstall, the launcher, the "TCP teardown" profile and `open`, against real tshark."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcp_teardown import wireshark
from tcp_teardown.annotate import ALL_LABELS, label_filter
from tcp_teardown.errors import TeardownError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEEDS = SHARED / "corpus" / "seeds"
CLI = Path(sys.executable).with_name("tcp-teardown")
PROFILE = wireshark.PROFILE_NAME

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="shared seed corpus not present")

FOLDERS_4_0 = """Temp:\t/tmp
Personal configuration:\t/home/u/.config/wireshark
Global configuration:\t/usr/share/wireshark
Extcap path:\t/usr/lib/x86_64-linux-gnu/wireshark/extcap
"""
FOLDERS_4_2 = """Personal configuration:\t/home/u/.config/wireshark
Personal Extcap path:\t/home/u/.local/lib/wireshark/extcap
Global Extcap path:\t/usr/lib/x86_64-linux-gnu/wireshark/extcap
"""


def test_personal_extcap_folder_per_version() -> None:
    f40 = wireshark.parse_folders(FOLDERS_4_0)
    assert wireshark.personal_extcap_dir(f40, (4, 0, 17)) == Path(
        "/home/u/.config/wireshark/extcap"
    )
    f42 = wireshark.parse_folders(FOLDERS_4_2)
    assert wireshark.personal_extcap_dir(f42, (4, 2, 0)) == Path(
        "/home/u/.local/lib/wireshark/extcap"
    )
    # A 4.1+ that does not print the line still gets its documented folder.
    assert wireshark.personal_extcap_dir(f40, (4, 4, 0), home=Path("/h")) == Path(
        "/h/.local/lib/wireshark/extcap"
    )


@pytest.mark.skipif(os.name != "posix", reason="POSIX shell launcher")
def test_launcher_passes_arguments_verbatim_and_quotes_its_paths(tmp_path: Path) -> None:
    odd = tmp_path / "dir with 'quotes' and $HOME"
    odd.mkdir()
    fake_python = odd / "py thon"
    fake_python.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n'
                           'printf "PYTHONPATH=%s\\n" "$PYTHONPATH"\n')  # fmt: skip
    fake_python.chmod(0o755)
    launcher = tmp_path / "launcher"
    launcher.write_text(wireshark.launcher_text(str(fake_python), odd))
    launcher.chmod(0o755)
    tricky = ["$(touch pwned)", "a b", "--x=y;z", "`id`", '"q"']
    env = {**os.environ, "PYTHONPATH": "/earlier"}
    out = subprocess.run([str(launcher), *tricky], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True, timeout=30).stdout.splitlines()  # fmt: skip
    assert out == ["-m", "tcp_teardown.extcap", *tricky, f"PYTHONPATH={odd}:/earlier"]
    assert not (tmp_path / "pwned").exists()
    assert wireshark.LAUNCHER_MARKER in launcher.read_text()
    assert "PYTHONPATH" not in wireshark.launcher_text("/usr/bin/python3", None)
    bat = wireshark.launcher_text(r"C:\Py\python.exe", None, windows=True)
    assert bat.endswith('"C:\\Py\\python.exe" -m tcp_teardown.extcap %*\r\n')


def test_uat_strings_escape_quotes_as_wireshark_does() -> None:
    assert wireshark._uat_string('a "b" \\c') == '"a \\x22b\\x22 \\x5cc"'


@needs_tshark
def test_a_filter_that_does_not_compile_is_refused() -> None:
    wireshark.check_expressions([label_filter("fin_by_client")])
    with pytest.raises(TeardownError, match="no_such_field"):
        wireshark.check_expressions([label_filter("idle_close"), "no_such_field == 1"])


# --- the installed profile ---------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A HOME of its own (XDG_CONFIG_HOME unset) with `wireshark install` run in it."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "WIRESHARK_CONFIG_DIR")}
    env["HOME"] = str(home)
    proc = subprocess.run([str(CLI), "wireshark", "install"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "interface: tcpteardown (listed)" in proc.stdout
    return home, env


def tshark(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tshark", "-n", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)  # fmt: skip


def complaints(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "Running as user" not in line]


def unescape_uat(field: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), field)


def buttons(profile_dir: Path) -> list[tuple[str, str]]:
    """(label, expression) of each filter button, read the way Wireshark's UAT reads them."""
    out = []
    for line in (profile_dir / "dfilter_buttons").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = [unescape_uat(f) for f in re.findall(r'"((?:[^"\\]|\\.)*)"', line)]
        assert len(fields) == 4 and fields[0] == "TRUE", line
        out.append((fields[1], fields[2]))
    return out


@pytest.fixture(scope="module")
def annotated(home: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SEEDS.is_dir():
        pytest.skip("shared seed corpus not present")
    out = tmp_path_factory.mktemp("annotated") / "all.pcapng"
    proc = subprocess.run([str(CLI), "annotate", str(SEEDS / "seed_all_in_one.pcap"), "--out",
                           str(out)], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@needs_tshark
def test_profile_loads_in_tshark_without_complaints(
    home: tuple[Path, dict[str, str]], annotated: Path
) -> None:
    root, env = home
    profile_dir = root / ".config" / "wireshark" / "profiles" / PROFILE
    assert {p.name for p in profile_dir.iterdir()} >= {"dfilter_buttons", "dfilters",
                                                       "colorfilters", "preferences"}  # fmt: skip
    # --color reads the coloring rules, the default output uses the profile's columns.
    proc = tshark(env, "-C", PROFILE, "--color", "-r", str(annotated))
    assert proc.returncode == 0 and complaints(proc.stderr) == [], proc.stderr
    assert "tcp-teardown: handshake (SYN)" in proc.stdout  # the comment column is there
    # A profile that does not exist is an error, so the run above really used ours.
    assert tshark(env, "-C", "No such profile", "-r", str(annotated)).returncode != 0


@needs_tshark
@needs_seeds
def test_every_button_compiles_and_selects_its_label_key_frames(
    home: tuple[Path, dict[str, str]], annotated: Path
) -> None:
    from tcp_teardown import api

    root, env = home
    frames = api.analyze([SEEDS / "seed_all_in_one.pcap"]).frames
    entries = buttons(root / ".config" / "wireshark" / "profiles" / PROFILE)
    assert [label for label, _ in entries[1:]] == list(ALL_LABELS)
    for label, expression in entries:
        proc = tshark(env, "-C", PROFILE, "-r", str(annotated), "-Y", expression,
                      "-T", "fields", "-e", "frame.number")  # fmt: skip
        assert proc.returncode == 0 and complaints(proc.stderr) == [], (label, proc.stderr)
        got = {int(n) for n in proc.stdout.split()}
        if label in ALL_LABELS:
            want = {int(n) for n, labels in zip(frames["frame_number"], frames["labels"],
                                                 strict=True) if label in list(labels)}  # fmt: skip
        else:  # the "all" button
            want = set(frames["frame_number"].astype(int))
        assert got == want, label


@needs_tshark
def test_saved_filters_and_coloring_rules_compile(home: tuple[Path, dict[str, str]]) -> None:
    root, _env = home
    profile_dir = root / ".config" / "wireshark" / "profiles" / PROFILE
    expressions = []
    for line in (profile_dir / "dfilters").read_text().splitlines():
        match = re.fullmatch(r'"([^"]*)" (.+)', line)
        assert match, line
        expressions.append(match[2])
    rules = [line.split("@") for line in (profile_dir / "colorfilters").read_text().splitlines()
             if line.startswith("@tcp-teardown: ")]  # fmt: skip
    assert [r[1] for r in rules] == [f"tcp-teardown: {label}" for label in ALL_LABELS]
    expressions += [r[2] for r in rules]
    wireshark.check_expressions(expressions)  # raises naming any that does not compile


@needs_tshark
@needs_seeds
def test_open_builds_a_filter_for_a_flow_and_a_label(home: tuple[Path, dict[str, str]]) -> None:
    from tcp_teardown import api

    _root, env = home
    capture = SEEDS / "seed004_time_wait_port_reuse.pcap"
    conns = api.analyze([capture]).connections
    second = conns.iloc[1]
    proc = subprocess.run([str(CLI), "open", str(capture), "--flow", str(second["flow_id"])[:10],
                           "--print"], capture_output=True, text=True, env=env, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout.strip())
    assert argv[1:5] == ["-r", str(capture), "-C", PROFILE] and argv[5] == "-Y"
    shown = tshark(env, "-r", str(capture), "-Y", argv[6], "-T", "fields", "-e", "frame.number")
    assert len(shown.stdout.split()) == second["packets_c2s"] + second["packets_s2c"]
    proc = subprocess.run([str(CLI), "open", str(capture), "--label", "time_wait_challenge",
                           "--print"], capture_output=True, text=True, env=env, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tcp.stream in {" in proc.stdout
    proc = subprocess.run([str(CLI), "open", str(capture), "--label", "nonsense", "--print"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1


@needs_tshark
def test_uninstall_removes_only_our_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "WIRESHARK_CONFIG_DIR")}
    env["HOME"] = str(tmp_path)
    run = [str(CLI), "wireshark"]
    assert subprocess.run([*run, "install", "--no-check"], env=env, capture_output=True,
                          timeout=300, check=False).returncode == 0  # fmt: skip
    extcap_dir = tmp_path / ".config" / "wireshark" / "extcap"
    mine = extcap_dir / "my_own_extcap"
    mine.write_text("#!/bin/sh\n")
    profile_dir = tmp_path / ".config" / "wireshark" / "profiles" / PROFILE
    (profile_dir / "recent").write_text("# written by Wireshark\n")
    proc = subprocess.run([*run, "uninstall"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (extcap_dir / wireshark.LAUNCHER_STEM).exists()
    assert mine.exists()
    assert [p.name for p in profile_dir.iterdir()] == ["recent"]  # Wireshark's own file stays
    listed = subprocess.run(["tshark", "-D"], env=env, capture_output=True, text=True,
                            timeout=120, check=False).stdout  # fmt: skip
    assert "tcpteardown" not in listed
