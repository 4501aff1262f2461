"""llama.cpp's process-wide start: the backend initialised once, its log chatter filtered (errors
only, everything with CORRAL_DEBUG). Every user of llama_cpp calls ``init_backend`` first."""

from __future__ import annotations

import ctypes
import os
from typing import Any

_backend_ready = False
_log_callback: Any = None  # keeps the ctypes callback alive for the process


def init_backend(llama: Any) -> None:
    """Start llama.cpp once per process, with its log routed through Corral's filter."""
    global _backend_ready, _log_callback
    if _backend_ready:
        return
    verbose = os.environ.get("CORRAL_DEBUG", "") not in ("", "0", "false")

    @llama.llama_log_callback
    def log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        # llama.cpp chatters on stderr during every load; keep errors, and all of it with --debug.
        if verbose or level == 4:  # ggml: 3 is WARN, 4 is ERROR
            os.write(2, text)

    _log_callback = log
    llama.llama_log_set(log, ctypes.c_void_p(0))
    llama.llama_backend_init()
    _backend_ready = True
