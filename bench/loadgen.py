"""A lean stand-in for Zeek's WebSocket server, for load generation (used by bench_daemon.py; not a test).

tests/support/zeek_peer.ZeekPeer is the conformance peer: it checks every message the daemons send the way Zeek and
Broker do, and forwards it to other subscribers. That cost it 65-90 us of CPU per flow at 6,000-10,000 flows/s
on the same two cores the daemon runs on, which capped what bench_daemon.py could offer (~6,900 flows/s) and
took CPU the daemon needed; LeanPeer costs 27-38 us (docs/performance.md, "serve"). Zeek does that work in C++ on its own cores on a sensor.

LeanPeer speaks the same v1 protocol on the wire (websockets' Sans-I/O ServerProtocol: the RFC 6455
handshake and framing; the subscription array, then the ack Zeek sends, then data-messages), but:
- frames to publish arrive as already encoded bytes and go out in one transport write per call;
- a verdict is matched to its flow by its uid, found in the raw frame with a regular expression. Every
  ``check_every``-th verdict is decoded in full with the daemon's own decoders (zeek.messages.parse_message and
  zeek.wire.verdict_from_event) as a sanity check; ``bad`` counts the ones that failed.
- writes respect flow control: ``publish`` waits while the transport's buffer is over its high-water mark,
  as Zeek's buffer would fill when a client falls behind.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from etool_sensor.zeek import broker_json as bj, messages, wire

# the verdict's first field, the uid: {"@data-type":"string","data":"<uid>"} right after the record opens
_UID = re.compile(rb'"data":\[\{"@data-type":"vector","data":\[\{"@data-type":"string","data":"([^"\\]*)"')


class _Conn(asyncio.Protocol):
    def __init__(self, peer: "LeanPeer") -> None:
        self.peer = peer
        self.ws = ServerProtocol(max_size=16 << 20)
        self.subs: tuple[str, ...] | None = None
        self.transport: asyncio.Transport | None = None
        self.paused: asyncio.Future | None = None
        self.cid = next(peer._ids)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=4 << 20)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.conns.pop(self.cid, None)
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        peer = self.peer
        t = time.perf_counter()
        for ev in ws.events_received():
            if type(ev) is Frame:
                if ev.opcode is not Opcode.TEXT:
                    continue  # control frames are answered by the protocol object; no binary in v1 JSON
                if self.subs is None:
                    self._subscribe(bytes(ev.data))
                    continue
                m = _UID.search(ev.data)
                if m is None:
                    peer.bad += 1
                    continue
                peer.verdicts.append((m.group(1), t))
                peer.n_received += 1
                if peer.n_received % peer.check_every == 0:
                    peer.check(bytes(ev.data), m.group(1))
            elif isinstance(ev, Request):
                if ev.path != bj.V1_PATH:
                    ws.send_response(ws.reject(404, "unknown path\n"))
                else:
                    ws.send_response(ws.accept(ev))
        self._flush()

    def _subscribe(self, data: bytes) -> None:
        try:
            subs = bj.loads(data.decode())
        except (UnicodeDecodeError, bj.WireError):
            subs = None
        if type(subs) is not list or not all(type(s) is str for s in subs):
            err = messages.error_message("invalid_json", "subscriptions must be an array of strings")
            self.ws.send_text(err.encode())
            self.ws.send_close(1008, "")
            return
        self.subs = tuple(subs)
        self.ws.send_text(messages.ack_message(f"{self.peer.node_id}-websocket-{self.cid}", "8.0.0").encode())
        self.peer.conns[self.cid] = self

    def _flush(self) -> None:
        out = self.ws.data_to_send()
        if out and self.transport is not None:
            if out[-1] == b"":  # the protocol asks for EOF
                self.transport.close()
                return
            self.transport.write(b"".join(out))


class LeanPeer:
    """``peer = await LeanPeer().start()``; ``peer.url``; ``await peer.publish_many([(topic, frame_bytes)])``."""

    def __init__(self, host: str = "127.0.0.1", check_every: int = 64) -> None:
        self.host, self.port = host, 0
        self.check_every = check_every
        self.node_id = str(uuid.uuid4())
        self.conns: dict[int, _Conn] = {}
        self.verdicts: list[tuple[bytes, float]] = []  # (uid, receive time)
        self.n_received = 0
        self.checked = 0
        self.bad = 0
        self._ids = iter(range(1, 1 << 30))
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> "LeanPeer":
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{bj.V1_PATH}"

    async def stop(self) -> None:
        for c in list(self.conns.values()):
            try:
                c.ws.send_close(1001, "Terminating")
                c._flush()
            except Exception:  # noqa: BLE001 - already closing
                pass
        if self.server is not None:
            self.server.close()
            await asyncio.sleep(0.2)  # let the close frames go out before the transports do
            for c in list(self.conns.values()):
                if c.transport is not None:
                    c.transport.close()
            self.server = None

    async def wait_connected(self, n: int, timeout: float = 90.0) -> bool:
        t_end = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > t_end:
                return False
            await asyncio.sleep(0.05)
        return True

    async def publish_many(self, frames: list[tuple[str, bytes]]) -> int:
        """Send each (topic, encoded data-message) to the clients subscribed to a prefix of its topic, in one
        write per client; waits while a client's buffer is full. Returns the number of frames sent."""
        n = 0
        conns = list(self.conns.values())
        for c in conns:
            subs = c.subs or ()
            send = c.ws.send_text
            for topic, data in frames:
                for s in subs:
                    if topic.startswith(s):
                        send(data)
                        n += 1
                        break
            c._flush()
        for c in conns:
            if c.paused is not None:
                await c.paused
        return n

    def check(self, data: bytes, uid: bytes) -> None:
        """Decode one verdict in full, as the daemon's own tests do; count a failure in ``bad``."""
        self.checked += 1
        try:
            m = messages.parse_message(data.decode())
            v = wire.verdict_from_event(messages.event_from_data(m))
            ok = v.uid.encode() == uid and m.topic.startswith("etool/verdicts/")
        except Exception:  # noqa: BLE001 - counted, not fatal: the bench reports it
            ok = False
        if not ok:
            self.bad += 1

    def summary(self) -> dict[str, Any]:
        return {"received": self.n_received, "checked": self.checked, "bad": self.bad}
