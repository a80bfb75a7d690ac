"""bench/loadgen.LeanPeer, the benchmark's Zeek stand-in, against the real daemon (stand-in model).

The bench's numbers are only worth something if the lean peer is a faithful v1 server: the daemon must
connect, subscribe and be acked by it, decode every frame it sends, and each verdict must come back matched
to its flow. Every verdict is also decoded in full here (check_every=1)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from bench.loadgen import LeanPeer
from etool_sensor import zeekws as z
from etool_sensor.daemon import Daemon, ServeSettings
from tests.stub_daemon import StubModel
from tests.zeek_peer import flows_from_captures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def flows():
    fl = flows_from_captures(limit=200)
    if len(fl) < 50:
        pytest.skip("real captures (../shared/data/ndpi/pcap) are not present")
    return fl


def test_lean_peer_serves_the_daemon_and_matches_every_verdict(flows) -> None:
    async def main() -> None:
        peer = await LeanPeer(check_every=1).start()
        s = ServeSettings(zeek_url=peer.url, metrics_port=_free_port(), batch_size=32, topics=["etool/flows/"])
        d = Daemon(s, StubModel())
        task = asyncio.create_task(d.run())
        try:
            assert await peer.wait_connected(1, 20)
            recs = [dataclasses.replace(r, uid=f"L{i:017d}") for i, r in enumerate(flows)]
            frames = [("etool/flows/", z.encode_flow("etool/flows/", r, "etool/verdicts/").encode()) for r in recs]
            # a topic nobody subscribed to is not delivered, as in Zeek
            assert await peer.publish_many(frames[:100] + [("other/", frames[0][1])]) == 100
            assert await peer.publish_many(frames[100:]) == len(frames) - 100
            for _ in range(400):
                if len(peer.verdicts) >= len(recs):
                    break
                await asyncio.sleep(0.05)
            assert sorted(u for u, _ in peer.verdicts) == sorted(r.uid.encode() for r in recs)
            assert peer.summary() == {"received": len(recs), "checked": len(recs), "bad": 0}
            assert d.counts()["verdicts_out"] == len(recs)
        finally:
            d.request_stop()
            await asyncio.wait_for(task, 30)
            await peer.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_lean_peer_counts_a_verdict_that_does_not_decode() -> None:
    peer = LeanPeer()
    peer.check(b'{"type":"data-message","topic":"etool/verdicts/"}', b"x")
    good = z.encode_verdict("etool/verdicts/", StubModel().classify([_Rec()])[0]).encode()
    peer.check(good, b"U1")
    peer.check(good, b"U2")  # decodes, but is another flow's verdict
    assert peer.summary() == {"received": 0, "checked": 3, "bad": 2}


@dataclasses.dataclass
class _Rec:
    uid: str = "U1"
