"""Memory and disk a command needs, checked before the work starts: a batch too large for the
device's memory, or samples too many for the disk, is refused with the amount it needs instead of a
failed allocation (or the kernel's out-of-memory killer) part-way through."""
from __future__ import annotations

import math
import shutil
from typing import Optional

import torch

#: Bytes of one float32 value.
FLOAT_BYTES = 4


def format_bytes(n: float) -> str:
    """E.g. ``"8.0 GB"`` (decimal units)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    k = min(int(math.log10(max(n, 1)) // 3), len(units) - 1)
    return f"{n / 1000**k:.1f} {units[k]}"


def available_memory(device: str | torch.device) -> Optional[int]:
    """Free bytes on ``device``: the GPU's free memory, or the host's MemAvailable plus free swap
    (Linux); None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if len(line.split()) >= 2}
    except OSError:
        return None
    return info.get("MemAvailable", 0) + info.get("SwapFree", 0) if "MemAvailable" in info else None


def check_memory(field: str, count: int, shape: tuple[int, ...], device: str | torch.device) -> None:
    """Raise ``ValueError`` if one float32 array of ``count`` items of ``shape`` (``config.<field>``)
    exceeds the free memory of ``device``: every computation on the batch holds at least that one."""
    need = count * math.prod(shape) * FLOAT_BYTES
    free = available_memory(device)
    if free is not None and need > free:
        raise ValueError(
            f"config.{field}={count} needs at least {format_bytes(need)} of memory (a float32 array of {count} × {tuple(shape)}),"
            f" but {device} has {format_bytes(free)} free; lower config.{field}"
        )


def check_disk(field: str, count: int, shape: tuple[int, ...], directory: str, copies: int = 1) -> None:
    """Raise ``ValueError`` if ``copies`` float32 arrays of ``count`` items of ``shape`` do not fit on
    the disk holding ``directory``."""
    need = copies * count * math.prod(shape) * FLOAT_BYTES
    free = shutil.disk_usage(directory).free
    if need > free:
        raise ValueError(
            f"config.{field}={count} needs {format_bytes(need)} of disk for the samples of shape {tuple(shape)},"
            f" but {directory} has {format_bytes(free)} free; lower config.{field}"
        )
