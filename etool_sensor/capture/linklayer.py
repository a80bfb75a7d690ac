"""Link layers: the link-layer types a capture may hold, and their decoding down to IPv4/IPv6 (Ethernet with
VLAN tags, MPLS, PPPoE, VN-Tag, PBB and FabricPath; Linux cooked v1/v2; raw IP; BSD loopback; PPP; 802.11
and radiotap)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ip import _IPLayer


#: link-layer types (LINKTYPE_* of pcap and pcapng)
LT_NULL, LT_EN10MB, LT_PPP, LT_RAW1, LT_RAW2, LT_PPP_SERIAL, LT_RAW, LT_LOOP = 0, 1, 9, 12, 14, 50, 101, 108
LT_IEEE802_11, LT_SLL, LT_RADIOTAP, LT_IPV4, LT_IPV6, LT_SLL2 = 105, 113, 127, 228, 229, 276
SUPPORTED_LINKTYPES = frozenset(
    {LT_NULL, LT_EN10MB, LT_PPP, LT_RAW1, LT_RAW2, LT_PPP_SERIAL, LT_RAW, LT_LOOP, LT_IEEE802_11, LT_SLL,
     LT_RADIOTAP, LT_IPV4, LT_IPV6, LT_SLL2}
)

_u32 = struct.Struct(">I").unpack_from
_u16le = struct.Struct("<H").unpack_from
_u32le = struct.Struct("<I").unpack_from


def _dispatch(tr: _IPLayer, lt: int, ts: float, buf, o: int, end: int, wire: int) -> None:
    """Decode the link layer and hand IPv4/IPv6 to the tracker. wire = original length of the frame."""
    st = tr.stats
    base = o
    if lt == LT_EN10MB:
        if end - o < 14:
            st.malformed += 1
            return
        et = (buf[o + 12] << 8) | buf[o + 13]
        if et == 0x8903:  # Cisco FabricPath: 16-byte outer header, then a full Ethernet frame
            if end - o < 30:
                st.malformed += 1
                return
            o += 16
            base = o
            wire -= 16
            et = (buf[o + 12] << 8) | buf[o + 13]
        o += 14
        while True:
            if et == 0x0800:
                tr.ip4(ts, buf, o, end, wire - (o - base))
                return
            if et == 0x86DD:
                tr.ip6(ts, buf, o, end, wire - (o - base))
                return
            if et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
                if end - o < 4:
                    st.malformed += 1
                    return
                et = (buf[o + 2] << 8) | buf[o + 3]
                o += 4
                continue
            if et == 0x8847 or et == 0x8848:  # MPLS
                while True:
                    if end - o < 4:
                        st.malformed += 1
                        return
                    bos = buf[o + 2] & 1
                    o += 4
                    if bos:
                        break
                if o >= end:
                    st.malformed += 1
                    return
                v = buf[o] >> 4
                if v == 4:
                    tr.ip4(ts, buf, o, end, wire - (o - base))
                elif v == 6:
                    tr.ip6(ts, buf, o, end, wire - (o - base))
                else:
                    st.non_ip += 1
                return
            if et == 0x8864:  # PPPoE session
                if end - o < 8:
                    st.malformed += 1
                    return
                pp = (buf[o + 6] << 8) | buf[o + 7]
                o += 8
                if pp == 0x0021:
                    et = 0x0800
                elif pp == 0x0057:
                    et = 0x86DD
                else:
                    st.non_ip += 1
                    return
                continue
            if et == 0x8926:  # VN-Tag
                if end - o < 6:
                    st.malformed += 1
                    return
                et = (buf[o + 4] << 8) | buf[o + 5]
                o += 6
                continue
            if et == 0x88E7:  # 802.1ah PBB: I-TAG (4) + inner Ethernet header (14)
                if end - o < 18:
                    st.malformed += 1
                    return
                et = (buf[o + 16] << 8) | buf[o + 17]
                o += 18
                continue
            if et == 0x8903:  # Cisco FabricPath is below Ethernet; handled at frame start
                st.non_ip += 1
                return
            st.non_ip += 1
            return
    if lt == LT_SLL or lt == LT_SLL2:
        hl = 16 if lt == LT_SLL else 20
        if end - o < hl:
            st.malformed += 1
            return
        et = (buf[o + 14] << 8) | buf[o + 15] if lt == LT_SLL else (buf[o] << 8) | buf[o + 1]
        o += hl
        if et == 0x0800:
            tr.ip4(ts, buf, o, end, wire - hl)
        elif et == 0x86DD:
            tr.ip6(ts, buf, o, end, wire - hl)
        elif et == 0x8100 and end - o >= 4:
            et = (buf[o + 2] << 8) | buf[o + 3]
            if et == 0x0800:
                tr.ip4(ts, buf, o + 4, end, wire - hl - 4)
            elif et == 0x86DD:
                tr.ip6(ts, buf, o + 4, end, wire - hl - 4)
            else:
                st.non_ip += 1
        else:
            st.non_ip += 1
        return
    if lt in (LT_RAW, LT_RAW1, LT_RAW2, LT_IPV4, LT_IPV6):
        if end <= o:
            st.malformed += 1
            return
        v = buf[o] >> 4
        if v == 4 and lt != LT_IPV6:
            tr.ip4(ts, buf, o, end, wire)
        elif v == 6 and lt != LT_IPV4:
            tr.ip6(ts, buf, o, end, wire)
        else:
            st.non_ip += 1
        return
    if lt == LT_NULL or lt == LT_LOOP:
        if end - o < 4:
            st.malformed += 1
            return
        fam = _u32(buf, o)[0] if lt == LT_LOOP else _u32le(buf, o)[0]
        if fam > 0xFFFF:
            fam = _u32(buf, o)[0] if lt != LT_LOOP else _u32le(buf, o)[0]
        o += 4
        if fam == 2:
            tr.ip4(ts, buf, o, end, wire - 4)
        elif fam in (10, 24, 28, 30):
            tr.ip6(ts, buf, o, end, wire - 4)
        else:
            st.non_ip += 1
        return
    if lt == LT_PPP or lt == LT_PPP_SERIAL:
        if end - o < 2:
            st.malformed += 1
            return
        if buf[o] == 0xFF and end - o >= 4:
            o += 2
        pp = (buf[o] << 8) | buf[o + 1]
        o += 2
        if pp == 0x0021:
            tr.ip4(ts, buf, o, end, wire - (o - base))
        elif pp == 0x0057:
            tr.ip6(ts, buf, o, end, wire - (o - base))
        else:
            st.non_ip += 1
        return
    if lt == LT_RADIOTAP or lt == LT_IEEE802_11:
        if lt == LT_RADIOTAP:
            if end - o < 4:
                st.malformed += 1
                return
            o += _u16le(buf, o + 2)[0]
        if end - o < 24:
            st.malformed += 1
            return
        fc0, fc1 = buf[o], buf[o + 1]
        if (fc0 >> 2) & 3 != 2:  # not a data frame
            st.non_ip += 1
            return
        if fc1 & 0x40:  # protected
            st.non_ip += 1
            return
        hl = 30 if (fc1 & 3) == 3 else 24
        if fc0 & 0x80:  # QoS data
            hl += 2
            if fc1 & 0x80:
                hl += 4
        o += hl
        if end - o < 8 or buf[o] != 0xAA or buf[o + 1] != 0xAA or buf[o + 2] != 3:
            st.non_ip += 1
            return
        et = (buf[o + 6] << 8) | buf[o + 7]
        o += 8
        if et == 0x0800:
            tr.ip4(ts, buf, o, end, wire - (o - base))
        elif et == 0x86DD:
            tr.ip6(ts, buf, o, end, wire - (o - base))
        else:
            st.non_ip += 1
        return
    st.skip_linktype(lt)
