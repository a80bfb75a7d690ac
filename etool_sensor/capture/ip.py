"""IPv4/IPv6 decoding for the connection tracker: header checks, the IPv4 header checksum, fragment reassembly
(IPv4 and IPv6, a bounded number of buffers) and the IPv6 extension header chain; in sharded reading, whether
a packet is this shard's. _IPLayer is the lower half of conntrack._Tracker: it hands TCP and UDP to
``self.transport``."""

from __future__ import annotations

import struct

from .shard import shard_owner


_MAX_FRAG_BUFFERS = 4096

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_ip4hdr = struct.Struct(">BBHHHBBH4s4s").unpack_from  # vhl tos len id frag ttl proto csum src dst
_ports = struct.Struct(">HH").unpack_from


class _IPLayer:
    """IPv4/IPv6 packets -> transport(). Uses the tracker's stats, sstats, checksums, frags, shard, lsp_tcp,
    lsp_udp and its transport() (conntrack._Tracker)."""

    def ip4(self, ts: float, buf, o: int, end: int, wirelen_rem: int, reassembled: bool = False,
            owned: bool = False) -> None:
        """IPv4 packet at buf[o:end]; wirelen_rem = bytes of the packet on the wire from o.

        owned: sharded reading has already decided that this packet belongs to this shard."""
        st = self.stats
        if end - o < 20:
            st.malformed += 1
            return
        vhl, _tos, tot, ident, frag, _ttl, proto, _cs, src, dst = _ip4hdr(buf, o)
        ihl = (vhl & 15) << 2
        if vhl >> 4 != 4 or ihl < 20 or tot < ihl or end - o < ihl:
            st.malformed += 1
            return
        ip_end = o + tot
        if ip_end > end:
            cap_end = end  # snaplen cut the packet: no payload checksum
        else:
            cap_end = ip_end
        if frag & 0x3FFF:
            # Fragments are reassembled in every shard; the shard key applies to the reassembled packet.
            if self.checksums and not reassembled and int.from_bytes(buf[o:o + ihl], "big") % 65535 != 0:
                st.bad_checksums += 1
                return
            st.fragments += 1
            self._frag4(ts, buf, o, ihl, tot, cap_end, ident, frag, proto, src, dst)
            return
        t = o + ihl
        if self.shard is not None:
            if not owned and not self._mine(proto, src, dst, buf, t, cap_end):
                return
            st = self.sstats
        if self.checksums and not reassembled and int.from_bytes(buf[o:o + ihl], "big") % 65535 != 0:
            st.bad_checksums += 1
            return
        if proto == 6 or proto == 17:
            self.transport(ts, buf, t, cap_end, ip_end, proto, src, dst, tot, 4)
        else:
            st.non_tcp_udp += 1

    def _frag4(self, ts, buf, o, ihl, tot, cap_end, ident, frag, proto, src, dst) -> None:
        if cap_end < o + tot:
            self.stats.malformed += 1
            return
        key = (src, dst, ident, proto)
        off = (frag & 0x1FFF) << 3
        more = bool(frag & 0x2000)
        ent = self._frag_entry(key, ts)
        if ent is None:
            return
        if off == 0:
            ent[0] = bytes(buf[o:o + ihl])
        self._frag_add(key, ent, off, bytes(buf[o + ihl:o + tot]), more, ts, 4)

    def _frag_entry(self, key, ts):
        ent = self.frags.get(key)
        if ent is None:
            if len(self.frags) >= _MAX_FRAG_BUFFERS:
                self.frags.pop(next(iter(self.frags)))
            ent = self.frags[key] = [None, {}, None, 0]  # header, {off: data}, total, bytes
        return ent

    def _frag_add(self, key, ent, off, data, more, ts, ver) -> None:
        pieces = ent[1]
        if off not in pieces:
            pieces[off] = data
            ent[3] += len(data)
        if ent[3] > 65535 + 65535:
            del self.frags[key]
            self.stats.malformed += 1
            return
        if not more:
            ent[2] = off + len(data)
        if ent[0] is None or ent[2] is None:
            return
        # complete?
        pos = 0
        for po in sorted(pieces):
            if po > pos:
                return
            pos = max(pos, po + len(pieces[po]))
        if pos < ent[2]:
            return
        del self.frags[key]
        payload = bytearray(ent[2])
        for po in sorted(pieces):
            d = pieces[po]
            payload[po:po + len(d)] = d[: max(0, ent[2] - po)]
        hdr = ent[0]
        if ver == 4:
            n = len(hdr) + len(payload)
            if n > 65535:
                self.stats.malformed += 1
                return
            pkt = bytearray(hdr) + payload
            struct.pack_into(">H", pkt, 2, n)
            struct.pack_into(">H", pkt, 6, 0)
            self.ip4(ts, bytes(pkt), 0, n, n, reassembled=True)
        else:
            hdr, nxt = hdr
            pkt = bytes(hdr) + bytes(payload)
            self._ip6_upper(ts, pkt, len(hdr), len(pkt), len(pkt), nxt, pkt[8:24], pkt[24:40],
                            len(pkt) - 40 if len(pkt) >= 40 else 0)

    def ip6(self, ts: float, buf, o: int, end: int, wirelen_rem: int) -> None:
        st = self.stats
        if end - o < 40:
            st.malformed += 1
            return
        if buf[o] >> 4 != 6:
            st.malformed += 1
            return
        plen = _u16(buf, o + 4)[0]
        nxt = buf[o + 6]
        src = bytes(buf[o + 8:o + 24])
        dst = bytes(buf[o + 24:o + 40])
        ip_end = o + 40 + plen
        cap_end = ip_end if ip_end <= end else end
        p = o + 40
        # extension header chain
        for _ in range(16):
            if nxt == 6 or nxt == 17:
                if self.shard is None or self._mine(nxt, src, dst, buf, p, cap_end):
                    self.transport(ts, buf, p, cap_end, ip_end, nxt, src, dst, plen + 40, 6)
                return
            if nxt in (0, 43, 60, 135, 139, 140, 253, 254):
                if p + 2 > cap_end:
                    st.malformed += 1
                    return
                nn = buf[p]
                p += (buf[p + 1] + 1) << 3
                nxt = nn
            elif nxt == 51:  # AH
                if p + 2 > cap_end:
                    st.malformed += 1
                    return
                nn = buf[p]
                p += (buf[p + 1] + 2) << 2
                nxt = nn
            elif nxt == 44:  # fragment
                if p + 8 > cap_end:
                    st.malformed += 1
                    return
                st.fragments += 1
                nn = buf[p]
                fo = _u16(buf, p + 2)[0]
                ident = _u32(buf, p + 4)[0]
                off = fo & 0xFFF8
                more = bool(fo & 1)
                if off == 0 and not more:  # atomic fragment
                    nxt = nn
                    p += 8
                    continue
                if cap_end < ip_end:
                    st.malformed += 1
                    return
                key = (src, dst, ident, 6)
                ent = self._frag_entry(key, ts)
                if off == 0:
                    # unfragmentable part = everything before the fragment header
                    h = bytearray(buf[o:p])
                    ent[0] = (h, nn)
                self._frag_add(key, ent, off, bytes(buf[p + 8:ip_end]), more, ts, 6)
                return
            else:
                if self.shard is None:
                    st.non_tcp_udp += 1  # ESP (50), ICMPv6 (58), no next header (59), ...
                elif self._mine(nxt, src, dst, buf, p, cap_end):
                    self.sstats.non_tcp_udp += 1
                return
            if p > cap_end:
                st.malformed += 1
                return
        st.malformed += 1

    def _ip6_upper(self, ts, pkt, p, cap_end, ip_end, nxt, src, dst, _plen) -> None:
        # after IPv6 reassembly: the reassembled packet's IP length is its full length
        if self.shard is not None and not self._mine(nxt, src, dst, pkt, p, cap_end):
            return
        if nxt == 6 or nxt == 17:
            self.transport(ts, pkt, p, cap_end, ip_end, nxt, src, dst, ip_end, 6)
        else:
            self.sstats.non_tcp_udp += 1

    def _mine(self, proto: int, src: bytes, dst: bytes, buf, t: int, cap_end: int) -> bool:
        """Whether a packet belongs to this shard (sharded reading only); see shard_owner."""
        n, me = self.shard
        if (proto == 6 or proto == 17) and cap_end - t >= 4:
            sp, dp = _ports(buf, t)
            return shard_owner(src, dst, sp, dp, self.lsp_tcp if proto == 6 else self.lsp_udp, n) == me
        return shard_owner(src, dst, -1, -1, (), n) == me
