"""Driving a real `orchestrion shell` (IPython with the profile) through a pseudo-terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pexpect

ORCHESTRION = str(Path(sys.executable).with_name("orchestrion"))
PROMPT = r"In \[\d+\]: "


class Session:
    """An `orchestrion shell` in a pseudo-terminal: type lines, wait for output."""

    def __init__(
        self,
        home: Path,
        time_scale: float = 0.02,
        devices_dir: Path | None = None,
        display: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """``display``: the X display the session plots on (default: none, no plots);
        ``extra_env``: more environment variables (``ORCHESTRION_*`` settings)."""
        env = os.environ | {
            "ORCHESTRION_HOME": str(home),
            "ORCHESTRION_SIM_TIME_SCALE": str(time_scale),
            "ORCHESTRION_SIM_SEED": "5",
            "TERM": "dumb",
        }
        # Only the display asked for, and matplotlib and Qt left to find it themselves.
        for name in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND", "QT_QPA_PLATFORM"):
            env.pop(name, None)
        if display is not None:
            env["DISPLAY"] = display
        if devices_dir is not None:
            env["ORCHESTRION_DEVICES_DIR"] = str(devices_dir)
        env |= extra_env or {}
        self.child = pexpect.spawn(
            ORCHESTRION,
            ["shell", "--simple-prompt", "--colors=NoColor"],
            env=env,
            encoding="utf-8",
            timeout=90,
            dimensions=(50, 250),
        )
        self.banner = self.wait_prompt()

    def wait_prompt(self) -> str:
        self.child.expect(PROMPT)
        return str(self.child.before)

    def run(self, line: str) -> str:
        """Type a line, return everything printed until the next prompt."""
        self.child.sendline(line)
        return self.wait_prompt()

    def expect(self, pattern: str) -> str:
        self.child.expect(pattern)
        return str(self.child.before) + str(self.child.after)

    def close(self) -> None:
        if self.child.isalive():
            self.child.sendline("exit")
            self.child.expect(pexpect.EOF)
        self.child.close()
