"""Per-client BURST context: ETooL's traffic relation graph, built the same way offline and online.

Flows of one client (orig_h) that start within `window` seconds of each other form a BURST; a flow's
context is the flows of its own BURST and of the preceding `bursts - 1` BURSTs (adjacent BURSTs are
linked in the paper's graph). Only flows already observed are used, so the daemon, which sees flows
one at a time, and `classify`, which reads a whole file, build identical contexts in arrival order.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .flows import FlowRecord


@dataclass(slots=True)
class Neighbour:
    """What a flow's context keeps of another flow of the same client: no addresses, no payload."""

    dt: float  # neighbour start minus this flow's start (<= 0: it started earlier)
    burst_gap: int  # 0 = same BURST, 1 = previous BURST, ...
    proto: str
    sizes: tuple[int, ...]  # signed payload sizes of its first packets (+ orig, - resp)


@dataclass(slots=True)
class Context:
    burst_id: int
    position: int  # index of this flow inside its BURST
    neighbours: list[Neighbour] = field(default_factory=list)


CONTEXT_SIZES = 8  # packet sizes kept per neighbour


def signed_sizes(record: FlowRecord, n: int = CONTEXT_SIZES) -> tuple[int, ...]:
    """Payload sizes of the first n packets that carry payload, signed by direction."""
    out = []
    for p in record.packets:
        if p.payload_len:
            out.append(p.payload_len if p.is_orig else -p.payload_len)
            if len(out) == n:
                break
    return tuple(out)


@dataclass(slots=True)
class _Burst:
    bid: int
    start: float
    last: float
    flows: list[tuple[float, str, tuple[int, ...]]]


class _Client:
    __slots__ = ("bursts", "next_id")

    def __init__(self, keep: int) -> None:
        self.bursts: deque[_Burst] = deque(maxlen=keep)
        self.next_id = 0


class ContextTracker:
    """Keeps the last `bursts` BURSTs of each recent client; bounded in clients and flows."""

    def __init__(self, window: float = 1.0, bursts: int = 3, max_neighbours: int = 8,
                 max_clients: int = 100_000, max_burst_flows: int = 64) -> None:
        if window <= 0 or bursts < 1 or max_neighbours < 0:
            raise ValueError("window must be > 0, bursts >= 1, max_neighbours >= 0")
        self.window = window
        self.bursts = bursts
        self.max_neighbours = max_neighbours
        self.max_clients = max_clients
        self.max_burst_flows = max_burst_flows
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def observe(self, record: FlowRecord) -> Context:
        """Return the context of `record` (from flows seen before it) and remember the record."""
        c = self._clients.get(record.orig_h)
        if c is None:
            c = self._clients[record.orig_h] = _Client(self.bursts)
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(record.orig_h)
        ts = record.ts
        cur = c.bursts[-1] if c.bursts else None
        # A flow joins the current BURST when it starts within `window` of that BURST's latest flow.
        # Out-of-order arrivals (ts earlier than the BURST) join it too rather than opening an older one.
        if cur is None or ts - cur.last > self.window:
            cur = _Burst(c.next_id, ts, ts, [])
            c.next_id += 1
            c.bursts.append(cur)
        neighbours: list[Neighbour] = []
        for b in reversed(c.bursts):
            room = self.max_neighbours - len(neighbours)
            if room <= 0:
                break
            gap = cur.bid - b.bid
            for fts, proto, sizes in reversed(b.flows[-room:]):
                neighbours.append(Neighbour(fts - ts, gap, proto, sizes))
        ctx = Context(cur.bid, len(cur.flows), neighbours)
        if len(cur.flows) < self.max_burst_flows:
            cur.flows.append((ts, record.proto, signed_sizes(record)))
        cur.last = max(cur.last, ts)
        return ctx
