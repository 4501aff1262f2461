"""Turning a model's token bytes into text: incremental UTF-8 and stop sequences held back until sure."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes in; get out text that is safe to show, and whether a stop sequence was hit."""

    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._held, self.stopped = self._held[:cut], "", True
            return out
        keep = self._partial_stop_len()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the held text that begins some stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """What remains at the end of generation (a held partial stop was not one after all)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out
