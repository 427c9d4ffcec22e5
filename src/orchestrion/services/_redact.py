"""Run a command with secrets masked in its output: `python -m orchestrion.services._redact CMD...`.

`tiled serve` prints its URL with `?api_key=...` when the key comes from the
environment (it does here: on a command line `ps` would show it), and its output goes
to a log file.  This wrapper runs the command as its child, copies its output line by
line with API keys masked, forwards SIGTERM and SIGINT, and exits with its status.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from types import FrameType

SECRET = re.compile(r"(api_key=)[^\s&]+", re.IGNORECASE)


def redact(line: str) -> str:
    return SECRET.sub(r"\1****", line)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m orchestrion.services._redact COMMAND [ARGS...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(redact(line))
        sys.stdout.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
