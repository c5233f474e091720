"""Process helpers shared by the multi-process tests."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any, Optional

import pytest


def child_pid(parent: int, rank: int) -> Optional[int]:
    """The pid of the child of ``parent`` whose environment has RANK=rank (Linux /proc)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry)
    return None


def wait_for(condition: Callable[[], Any], proc: subprocess.Popen, what: str, timeout: float = 180, poll: float = 0.01) -> Any:
    """condition()'s first true value, polled every ``poll`` s; the test fails if ``proc`` exits first
    or ``timeout`` s pass (then ``proc`` is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.returncode} before {what}")
        time.sleep(poll)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")
