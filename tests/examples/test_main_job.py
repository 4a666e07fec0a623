"""The README's main job, run as a user runs it: a subprocess with the default progress bar on.

The command and the line it promises are read from README.md, so the test follows the README.
Its stdout goes to a pipe, to a file and to a pseudo-terminal: the result line must reach all
three (it once went through the progress bar after the bar had closed, and reached none).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TIMEOUT_S = 300  # the full job takes 25–40 s on a 2-core CPU
SHORT_STEPS = 300  # |λ − λ*| ≈ 1.5e-6 there (within 1e-3 from step 142 on)
RESULT = re.compile(
    r"^λ = (?P<lam>\d+\.\d{6})   analytic λ\* = (?P<star>\d+\.\d{6})   "
    r"\|λ − λ\*\| = (?P<err>\d\.\d{2}e[+-]\d{2})$",
    re.MULTILINE,
)


def readme_main_job() -> tuple[list[str], re.Match[str]]:
    """The README's ``lightning-hyperopt fit …`` command (argv) and the result line it shows."""
    text = README.read_text(encoding="utf-8")
    command = re.search(r"^```bash\n.*?&& (lightning-hyperopt fit [^\n]+)\n```", text, re.M)
    promised = RESULT.search(text)
    assert command and promised, "README.md no longer shows the main job and its result line"
    return shlex.split(command.group(1)), promised


def executable(argv: list[str]) -> list[str]:
    """``argv`` with its console script resolved in this interpreter's environment first."""
    script = Path(sys.executable).parent / argv[0]
    found = str(script) if script.is_file() else shutil.which(argv[0])
    assert found, f"{argv[0]} is not installed: pip install -e '.[dev]'"
    return [found, *argv[1:]]


def job_argv(tmp_path: Path, max_steps: int | None = None) -> list[str]:
    argv, _ = readme_main_job()
    # logs go to tmp_path, not into the repository; nothing else is overridden
    extra = [f"--trainer.default_root_dir={tmp_path}"]
    if max_steps is not None:
        extra.append(f"--trainer.max_steps={max_steps}")
    return executable(argv) + extra


def result_of(stdout: str) -> re.Match[str]:
    """The one result line of ``stdout`` (terminal line ends normalized)."""
    lines = stdout.replace("\r\n", "\n")
    found = list(RESULT.finditer(lines))
    assert len(found) == 1, f"{len(found)} result lines on stdout, not one:\n{stdout[-2000:]}"
    lam, star, err = (float(found[0].group(k)) for k in ("lam", "star", "err"))
    # the printed error is |λ − λ*|, up to the rounding of the three numbers as printed
    assert abs(err - abs(lam - star)) <= 1e-6 + 0.01 * err
    return found[0]


def test_the_documented_command_prints_the_promised_line_to_a_pipe(tmp_path):
    """The README's command, unchanged (3000 steps), stdout to a pipe: the README's line."""
    _, promised = readme_main_job()
    proc = subprocess.run(
        job_argv(tmp_path), cwd=ROOT, capture_output=True, timeout=TIMEOUT_S, check=False
    )
    stdout = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, proc.stderr.decode("utf-8")[-3000:]
    assert "Epoch" in stdout  # the progress bar was on, on stdout
    got = result_of(stdout)
    assert got.group("lam") == promised.group("lam")
    assert got.group("star") == promised.group("star")
    # the README shows 9.99e-16: float64 round-off, which may differ in its last digits elsewhere
    assert float(got.group("err")) < 1e-12


def test_the_result_line_reaches_a_file(tmp_path):
    log = tmp_path / "stdout.txt"
    with log.open("wb") as out:
        proc = subprocess.run(
            job_argv(tmp_path, SHORT_STEPS),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT_S,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode("utf-8")[-3000:]
    stdout = log.read_text(encoding="utf-8")
    assert "Epoch" in stdout
    assert float(result_of(stdout).group("err")) < 1e-4


def run_in_terminal(argv: list[str], stderr_path: Path) -> tuple[int, str]:
    """Run ``argv`` with stdin and stdout on a pseudo-terminal of 120×40 (stderr to a file);
    returns the exit code and everything the terminal received."""
    try:
        master, slave = pty.openpty()
    except OSError as e:  # a container without /dev/pts: nothing to test the terminal case on
        pytest.skip(f"no pseudo-terminal on this machine: {e}")
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=slave, stdout=slave, stderr=err)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # drain continuously: a full terminal buffer would block the job's progress bar
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # Linux: EIO once the job has closed its end
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            received += chunk
        else:
            proc.kill()
            pytest.fail(f"the job did not finish within {TIMEOUT_S} s on a terminal")
        return proc.wait(timeout=30), received.decode("utf-8", errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def rendered(received: str) -> str:
    """What a terminal shows after ``received``, scrolled-off lines included: a live progress
    bar (rich's) redraws itself by moving the cursor up and erasing lines, so its escape codes
    are carried out here (cursor up, erase line, carriage return; colours are dropped)."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r\n|\r|\n)", received):
        if token in ("\n", "\r\n"):
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif (code := CSI.fullmatch(token)) is not None:
            count, verb = int(code.group(1) or 1) if code.group(1).isdigit() else 1, code[2]
            if verb == "A":
                row = max(0, row - count)
            elif verb == "K":  # erase the line (2K) or its rest (K, 0K)
                lines[row] = "" if code.group(1) == "2" else lines[row][:col]
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return "\n".join(lines)


def test_rendered_carries_out_a_redraw():
    assert rendered("\x1b[35mbar\x1b[0m 1\r\x1b[2Kλ = x\n") == "λ = x\n"
    assert rendered("a\nbar 1\r\x1b[2K\x1b[1A\x1b[2Kline\nbar 2\n") == "line\nbar 2\n"
    assert rendered("long line\rab\x1b[K") == "ab"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty semantics checked on Linux")
def test_the_result_line_reaches_a_terminal(tmp_path):
    code, stdout = run_in_terminal(job_argv(tmp_path, SHORT_STEPS), tmp_path / "stderr.txt")
    assert code == 0, (tmp_path / "stderr.txt").read_text(encoding="utf-8")[-3000:]
    assert "Epoch" in stdout
    assert float(result_of(rendered(stdout)).group("err")) < 1e-4
