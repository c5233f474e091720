"""Process helpers shared by the multi-process tests (Linux /proc)."""
from __future__ import annotations

import os
from typing import Optional


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
