"""BURST context: flows of one client within γ form a BURST; context = this and the previous BURSTs."""

from __future__ import annotations

from etool_sensor.context import ContextTracker
from etool_sensor.flows import FlowRecord, Packet, make_uid


def rec(ts: float, client: str = "10.0.0.1", sizes=(100, -200)) -> FlowRecord:
    pk = [Packet(0.01 * i, s > 0, abs(s) + 40, abs(s), 0x18) for i, s in enumerate(sizes)]
    return FlowRecord(make_uid(client, ts), ts, client, 40000, "192.0.2.1", 443, "tcp", pk, [])


def test_bursts_split_on_window_and_link_adjacent():
    t = ContextTracker(window=1.0, bursts=2)
    a = t.observe(rec(0.0))
    b = t.observe(rec(0.5))
    c = t.observe(rec(1.2))  # within 1 s of the latest flow (0.5): same BURST
    d = t.observe(rec(5.0))  # new BURST, linked to the previous one
    e = t.observe(rec(20.0))  # new BURST; the first BURST has dropped out (bursts=2)
    assert (a.burst_id, b.burst_id, c.burst_id, d.burst_id, e.burst_id) == (0, 0, 0, 1, 2)
    assert a.neighbours == [] and [n.burst_gap for n in c.neighbours] == [0, 0]
    assert [n.burst_gap for n in d.neighbours] == [1, 1, 1]
    assert [round(n.dt, 3) for n in d.neighbours] == [-3.8, -4.5, -5.0]
    assert len(e.neighbours) == 1 and e.neighbours[0].burst_gap == 1
    assert c.neighbours[0].sizes == (100, -200)


def test_clients_are_separate_and_bounded():
    t = ContextTracker(max_clients=3)
    for i in range(10):
        t.observe(rec(0.0, client=f"10.0.0.{i}"))
    assert len(t) == 3
    assert t.observe(rec(0.1, client="10.0.0.9")).neighbours  # recent client kept
    assert not t.observe(rec(0.1, client="10.0.0.0")).neighbours  # evicted client starts afresh
