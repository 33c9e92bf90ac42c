"""`--profile FILE`: py-spy attached to cgpop for one timed run, summarised as text.

py-spy (pip install py-spy; not a dependency of cgpop or of the harness) samples the server
from outside at 100 Hz and writes collapsed stacks ("frame;frame;frame count" lines). The
summary lists the functions with the most samples on top of the stack (self) and anywhere on
it (inclusive), as percentages of all samples; the raw stacks are kept beside it (.folded) for
a flame graph (e.g. speedscope.app or flamegraph.pl).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Recorder:
    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self.raw = out.with_suffix(".folded")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(self.raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.raw.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        self.out.write_text(summarise(self.raw.read_text()))


def _frame(f: str) -> str:
    # py-spy raw frames look like "func (path/to/file.py:123)"; keep function and file:line.
    f = f.strip()
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# Leaf frames that are a thread or the loop waiting, not work.
IDLE = (
    "_worker (concurrent/futures/thread.py",
    ".select (selectors.py",
    "wait (threading.py",
    "_wait_for_tstate_lock",
    "run_forever (",
)


def summarise(folded: str, top: int = 30) -> str:
    busy = [
        line
        for line in folded.splitlines()
        if not any(m in _frame(line.rpartition(" ")[0].split(";")[-1]) for m in IDLE)
    ]
    return (
        "== busy samples only (leaf frames of idle threads and the loop's select removed) ==\n"
        + _summary("\n".join(busy), top)
        + "\n== all samples ==\n"
        + _summary(folded, top)
    )


def _summary(folded: str, top: int) -> str:
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    file_self: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        # The first frame is the process/thread label py-spy adds; skip non-code frames.
        code = [f for f in frames if "(" in f] or frames
        self_n[code[-1]] += n
        for f in set(code):
            incl_n[f] += n
        leaf_file = code[-1].partition(" (")[2].rsplit(":", 1)[0]
        file_self[leaf_file or code[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"py-spy, {total} samples (100 Hz, all threads)", ""]
    lines.append(f"top {top} by self samples (on top of the stack):")
    for f, n in self_n.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    lines += ["", "top files by self samples:"]
    for f, n in file_self.most_common(15):
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    lines += ["", f"top {top} by inclusive samples (anywhere on the stack):"]
    for f, n in incl_n.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines) + "\n"
