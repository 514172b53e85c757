"""How much memory a new buffer can get, and a check that refuses one that cannot fit before allocating it
(used by Lanczos and SLQ for their Krylov bases: a basis that cannot fit is an error that names the arguments
that set its size, not an allocator crash)."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

__all__ = ["available_memory", "format_bytes", "require_memory"]


def _host_available_bytes() -> Optional[int]:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``SC_AVPHYS_PAGES · SC_PAGE_SIZE``; else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024          # the value is in kiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory(device: "torch.device | str") -> Optional[int]:
    """Bytes a new allocation on ``device`` can get now, or None when it cannot be known.

    CPU: the kernel's ``MemAvailable`` (free memory plus what can be reclaimed without swapping), from
    ``/proc/meminfo``, else ``os.sysconf``. CUDA: the device's free memory (``torch.cuda.mem_get_info``) plus
    what torch's caching allocator holds reserved but unused. Other device types: None (no check).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _host_available_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))
    return None


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in binary units for messages: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def require_memory(nbytes: int, device: "torch.device | str", what: str,
                   advice: Callable[[int], str]) -> None:
    """Refuse, before allocating, a buffer of ``nbytes`` that does not fit in ``device``'s available memory
    (:func:`available_memory`; nothing is checked where that is unknown).

    Raises ``ValueError("{what} needs N bytes (…), but only M bytes (…) are available on {device}:
    {advice(M)}")``: ``what`` names the arguments that set the size, ``advice(M)`` says what to pass instead.
    """
    avail = available_memory(device)
    if avail is None or nbytes <= avail:
        return
    raise ValueError(f"{what} needs {nbytes:,} bytes ({format_bytes(nbytes)}), but only {avail:,} bytes "
                     f"({format_bytes(avail)}) are available on {torch.device(device)}: {advice(avail)}")
