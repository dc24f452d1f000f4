"""Where WebSocket frames begin and end in a byte stream (RFC 6455 5.2), pure.

The proxy tunnels WebSocket bytes untouched; the one thing it needs to know about them is
where a frame ends, so that on shutdown it can slip a Close frame in between two frames
instead of into the middle of one. Only the 2-14 byte frame headers are read; payloads are
skipped by arithmetic, never copied or unmasked.
"""

from __future__ import annotations

import os

CLOSE_GOING_AWAY = 1001


def header_size(head: bytes) -> int | None:
    """Bytes in the frame header that ``head`` begins, or None before its second byte."""
    if len(head) < 2:
        return None
    second = head[1]
    length = second & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


def payload_size(head: bytes) -> int:
    """The payload length a complete frame header announces."""
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length


class FrameTracker:
    """Follows one direction of a WebSocket byte stream, frame by frame."""

    __slots__ = ("head", "remaining")

    def __init__(self) -> None:
        self.head = b""  # a frame header seen only in part
        self.remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self.head and not self.remaining

    def feed(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Account for ``data``; returns how many of its bytes were taken. With
        ``stop_at_boundary``, stops at the first frame boundary reached (0 when already at
        one), so the caller can hold back what follows."""
        taken, size = 0, len(data)
        while taken < size:
            if stop_at_boundary and self.at_boundary:
                return taken
            if self.remaining:
                step = min(self.remaining, size - taken)
                self.remaining -= step
                taken += step
                continue
            head = self.head + data[taken : taken + 14 - len(self.head)]
            needed = header_size(head)
            if needed is None or len(head) < needed:
                self.head = head  # the rest of data was all header
                return size
            taken += needed - len(self.head)
            self.head = b""
            self.remaining = payload_size(head)
        return taken


def close_frame(masked: bool, code: int = CLOSE_GOING_AWAY) -> bytes:
    """A Close frame with ``code`` and no reason; frames toward a server must be masked
    (RFC 6455 5.3), frames toward a client must not be."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return b"\x88\x02" + payload
    key = os.urandom(4)
    return b"\x88\x82" + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
