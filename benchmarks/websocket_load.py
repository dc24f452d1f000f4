#!/usr/bin/env python3
"""WebSocket load for benchmarks/run.py: CONNS connections each send a small masked binary
message and wait for its echo, over and over, for SECONDS; prints one JSON line with the
round trips done. Raw sockets and one precomputed frame, so the client costs little.

    python benchmarks/websocket_load.py PORT CONNS SECONDS SIZE ORIGIN
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time


def masked_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + key + body


async def one(port: int, size: int, origin: str, until: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            f"Origin: {origin}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    frame = masked_frame(b"m" * size)
    echo = 2 + size
    done = 0
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        writer.write(frame)
        got = await reader.readexactly(echo)
        assert got[0] == 0x82 and got[1] == size, got[:2]
        done += 1
    writer.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # Close 1000, mask key of zeros
    writer.close()
    return done


async def main() -> None:
    port, conns, seconds, size = (int(a) for a in sys.argv[1:5])
    origin = sys.argv[5]
    started = time.monotonic()
    until = asyncio.get_running_loop().time() + seconds
    counts = await asyncio.gather(*(one(port, size, origin, until) for _ in range(conns)))
    print(json.dumps({"round_trips": sum(counts), "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
