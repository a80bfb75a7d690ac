"""Zeek's TCP endpoint analysis (analyzer::tcp::TCP_Endpoint, TCPSessionAdapter) for the connection tracker.

Holds a connection's state (_Conn: conntrack's table entry), Zeek's timeouts, the endpoint states and their
state machine, and what conn.log says of the endpoints (sizes, conn_state). _TCPEndpoints is the half of
conntrack._Tracker that follows one TCP connection's two endpoints; it keeps no state outside the _Conn."""

from __future__ import annotations

from dataclasses import dataclass

from ..flows import ACK, FIN, RST, SYN


@dataclass(frozen=True, slots=True)
class ZeekTimeouts:
    """Zeek's defaults (base/init-bare.zeek), seconds."""

    tcp_inactivity: float = 300.0
    udp_inactivity: float = 60.0
    tcp_attempt_delay: float = 5.0
    tcp_close_delay: float = 5.0
    tcp_SYN_timeout: float = 5.0
    tcp_session_timer: float = 6.0
    tcp_connection_linger: float = 5.0


_TO = ZeekTimeouts()


# TCP endpoint states (analyzer::tcp::TCP_Endpoint)
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_STATE_CLOSE_FLAGS = SYN | FIN | RST


class _Conn:
    """One connection of the tracker's table: addresses, counters, history, the two TCP endpoints (o_/r_),
    its FlowCollector and the due times of Zeek's timers."""

    __slots__ = (
        "uid", "proto", "ts0", "last", "pkt_t", "okey", "oh", "op", "rh", "rp", "o_pkts", "o_ipb", "r_pkts",
        "r_ipb", "o_pl", "r_pl", "hist", "hist_o", "hist_r", "coll", "emitted", "o_state", "r_state", "o_prev",
        "r_prev", "o_start", "r_start", "o_last", "r_last", "o_ack", "r_ack", "o_fin", "r_fin", "o_closed",
        "r_closed", "o_seen", "r_seen", "active", "attempt_at", "expire_at", "delete_at", "timeout", "keys",
    )


def _seq_delta(a: int, b: int) -> int:
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


class _TCPEndpoints:
    """Zeek's TCP endpoint state machine on a _Conn, and conn.log's view of the endpoints (a mixin of
    conntrack._Tracker)."""

    @staticmethod
    def _tcp_size(c: _Conn, orig: bool) -> int:
        if orig:
            state, start, last, ack, fin = c.o_state, c.o_start, c.o_last, c.o_ack, c.o_fin
            prev, peer = c.o_prev, c.r_state
        else:
            state, start, last, ack, fin = c.r_state, c.r_start, c.r_last, c.r_ack, c.r_fin
            prev, peer = c.r_prev, c.o_state
        if state == INACTIVE:
            return 0
        if prev == SYN_SENT and state == RESET and peer == INACTIVE:
            return 0
        size = max(_seq_delta(last, start), _seq_delta(ack, start))
        if size > 0:
            size -= 1
        if fin and size > 0:
            size -= 1
        return max(size, 0)

    @staticmethod
    def _conn_state(c: _Conn) -> str:
        # base/protocols/conn/main.zeek conn_state(); a PARTIAL endpoint (seen mid-stream) is inactive to it
        os_, rs = c.o_state, c.r_state
        hist = "".join(c.hist)
        if os_ == INACTIVE:
            if rs == INACTIVE:
                return "OTH"
            if rs == CLOSED:
                return "SHR"
            return "SHR" if rs in (SYN_SENT, SYN_ACK_SENT) else "OTH" if rs != RESET else "RSTRH"
        if rs == INACTIVE:
            if os_ == SYN_SENT:
                return "S0"
            if os_ == RESET:
                return "RSTOS0" if "S" in hist or "H" in hist else "OTH"
            if os_ == CLOSED:
                return "SH"
            return "OTH"
        if os_ == RESET:
            if rs in (SYN_SENT, SYN_ACK_SENT) and "h" not in hist:
                return "RSTOS0"
            return "RSTO"
        if rs == RESET:
            if os_ == SYN_SENT:
                return "REJ"
            return "RSTRH" if os_ == PARTIAL else "RSTR"
        if os_ == CLOSED and rs == CLOSED:
            return "SF"
        if os_ == CLOSED:
            return "SH" if rs == PARTIAL else "S2"
        if rs == CLOSED:
            return "SHR" if os_ == PARTIAL else "S3"
        if os_ == SYN_SENT and rs == SYN_ACK_SENT or rs == ESTABLISHED and os_ == ESTABLISHED:
            return "S1"
        return "OTH"

    def _is_reuse(self, c: _Conn, key: bytes, flags: int, seq: int) -> bool:
        # TCPSessionAdapter::IsReuse (called for SYN packets only)
        o_state, o_start = c.o_state, c.o_start
        if flags & ACK:
            if c.o_state != INACTIVE:
                return False
            o_state, o_start = c.r_state, c.r_start
        if not (c.o_closed or c.r_closed):
            if seq == o_start:
                return False
            if not flags & ACK and o_state == SYN_ACK_SENT and c.r_state == INACTIVE and seq == c.r_start:
                return False
        return True

    def _flip(self, c: _Conn) -> None:
        c.okey = c.keys[1] if c.okey == c.keys[0] else c.keys[0]
        c.oh, c.op, c.rh, c.rp = c.rh, c.rp, c.oh, c.op
        c.o_pkts, c.r_pkts = c.r_pkts, c.o_pkts
        c.o_ipb, c.r_ipb = c.r_ipb, c.o_ipb
        c.o_pl, c.r_pl = c.r_pl, c.o_pl
        for a, b in (("o_state", "r_state"), ("o_prev", "r_prev"), ("o_start", "r_start"), ("o_last", "r_last"),
                     ("o_ack", "r_ack"), ("o_fin", "r_fin"), ("o_closed", "r_closed"), ("o_seen", "r_seen"),
                     ("hist_o", "hist_r")):
            x, y = getattr(c, a), getattr(c, b)
            setattr(c, a, y)
            setattr(c, b, x)
        c.hist.append("^")
        if not c.emitted:
            for p in c.coll.packets:
                p.is_orig = not p.is_orig
            for ch in c.coll.payload:
                ch.is_orig = not ch.is_orig

    def _hist(self, c: _Conn, is_orig: bool, bit: int, code: str) -> None:
        if is_orig:
            if not c.hist_o & bit:
                c.hist_o |= bit
                c.hist.append(code)
        elif not c.hist_r & bit:
            c.hist_r |= bit
            c.hist.append(code.lower())

    def _tcp(self, c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int) -> None:
        syn, fin, rst = flags & SYN, flags & FIN, flags & RST
        seg = plen + (1 if syn else 0) + (1 if fin else 0) - (plen if rst else 0)
        if is_orig:
            state, prev, peer = c.o_state, c.o_prev, c.r_state
        else:
            state, prev, peer = c.r_state, c.r_prev, c.o_state
        last_seq_new = (seq + seg) & 0xFFFFFFFF
        # init_endpoint
        if state == INACTIVE:
            start = seq if syn else (seq - 1) & 0xFFFFFFFF
            lastv = last_seq_new if syn else seq
            self._set(c, is_orig, start=start, last=lastv, ack=start)
        elif syn and state in (SYN_SENT, SYN_ACK_SENT, ESTABLISHED, PARTIAL):
            if state in (ESTABLISHED, PARTIAL) or seq != (c.o_start if is_orig else c.r_start):
                self._set(c, is_orig, start=seq, last=last_seq_new, ack=seq)
        elif syn and state == RESET and prev == INACTIVE:
            self._set(c, is_orig, start=seq, last=last_seq_new, ack=seq)
        # history
        nbits = (1 if syn else 0) + (1 if fin else 0) + (1 if rst else 0)
        if nbits > 1:
            if fin and rst:
                self._hist(c, is_orig, 1 << 8, "I")
            else:
                self._hist(c, is_orig, 1 << 9, "Q")
        elif nbits == 1:
            if syn:
                self._hist(c, is_orig, 1 << 1 if not flags & ACK else 1 << 2, "H" if flags & ACK else "S")
            if fin:
                self._hist(c, is_orig, 1 << 3, "F")
            if rst:
                self._hist(c, is_orig, 1 << 4, "R")
        elif plen:
            self._hist(c, is_orig, 1, "D")
        elif flags & ACK:
            self._hist(c, is_orig, 1 << 5, "A")
        if not (c.o_closed and c.r_closed):
            c.last = ts
        if fin:
            if is_orig:
                c.o_fin += 1
            else:
                c.r_fin += 1
        if flags & ACK:
            if peer == INACTIVE:
                v = (ack - 1) & 0xFFFFFFFF
                self._set(c, not is_orig, start=v, last=v, ack=v)
            elif not rst:
                pa = c.r_ack if is_orig else c.o_ack
                d = _seq_delta(ack, pa)
                if d > 0 and not (ack == 0 and d > 1048576):
                    if is_orig:
                        c.r_ack = ack
                    else:
                        c.o_ack = ack
        # update_last_seq
        cur_last = c.o_last if is_orig else c.r_last
        dl = _seq_delta(last_seq_new, cur_last)
        cur_state = c.o_state if is_orig else c.r_state
        cur_start = c.o_start if is_orig else c.r_start
        if (syn or rst) and (dl > 1048576 or dl < -1048576):
            pass
        elif fin and cur_last == (cur_start + 1) & 0xFFFFFFFF:
            self._set(c, is_orig, last=last_seq_new)
        elif cur_state == RESET:
            pass
        elif dl > 0:
            self._set(c, is_orig, last=last_seq_new)
        if flags & _STATE_CLOSE_FLAGS or state == INACTIVE:
            self._state_machine(c, is_orig, ts, flags, seq, ack, plen, dl)

    @staticmethod
    def _tcp_plain(c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int) -> None:
        """_tcp for a segment without SYN/FIN/RST from an endpoint that is not INACTIVE (most packets).

        Same effects as _tcp for that case, inlined: no endpoint (re)initialisation, no state-machine
        step; history D/A, last activity, the peer's ACK and this endpoint's last sequence number."""
        if plen:
            bit, code = 1, "D"
        elif flags & ACK:
            bit, code = 32, "A"
        else:
            bit = 0
        if bit:
            if is_orig:
                if not c.hist_o & bit:
                    c.hist_o |= bit
                    c.hist.append(code)
            elif not c.hist_r & bit:
                c.hist_r |= bit
                c.hist.append(code.lower())
        if not (c.o_closed and c.r_closed):
            c.last = ts
        if flags & ACK:
            if is_orig:
                if c.r_state == INACTIVE:
                    c.r_start = c.r_last = c.r_ack = (ack - 1) & 0xFFFFFFFF
                else:
                    d = (ack - c.r_ack) & 0xFFFFFFFF
                    if 0 < d < 0x80000000 and not (ack == 0 and d > 1048576):
                        c.r_ack = ack
            else:
                if c.o_state == INACTIVE:
                    c.o_start = c.o_last = c.o_ack = (ack - 1) & 0xFFFFFFFF
                else:
                    d = (ack - c.o_ack) & 0xFFFFFFFF
                    if 0 < d < 0x80000000 and not (ack == 0 and d > 1048576):
                        c.o_ack = ack
        last_seq_new = (seq + plen) & 0xFFFFFFFF
        if is_orig:
            if c.o_state != RESET:
                d = (last_seq_new - c.o_last) & 0xFFFFFFFF
                if 0 < d < 0x80000000:
                    c.o_last = last_seq_new
        elif c.r_state != RESET:
            d = (last_seq_new - c.r_last) & 0xFFFFFFFF
            if 0 < d < 0x80000000:
                c.r_last = last_seq_new

    @staticmethod
    def _set(c: _Conn, is_orig: bool, start=None, last=None, ack=None) -> None:
        if is_orig:
            if start is not None:
                c.o_start = start
            if last is not None:
                c.o_last = last
            if ack is not None:
                c.o_ack = ack
        else:
            if start is not None:
                c.r_start = start
            if last is not None:
                c.r_last = last
            if ack is not None:
                c.r_ack = ack

    @staticmethod
    def _setstate(c: _Conn, is_orig: bool, s: int) -> None:
        if is_orig:
            c.o_prev, c.o_state = c.o_state, s
        else:
            c.r_prev, c.r_state = c.r_state, s

    def _state_machine(self, c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int,
                       delta_last: int) -> None:
        syn, fin, rst, ackf = flags & SYN, flags & FIN, flags & RST, flags & ACK
        st = self._setstate
        state = c.o_state if is_orig else c.r_state
        peer = c.r_state if is_orig else c.o_state
        do_close = False
        if state == INACTIVE:
            if syn:
                if is_orig:
                    st(c, True, SYN_ACK_SENT if ackf else SYN_SENT)
                    if c.attempt_at is None:
                        c.attempt_at = ts + _TO.tcp_attempt_delay
                else:
                    if ackf:
                        pass
                    elif peer == SYN_ACK_SENT and seq == c.r_start:
                        # SYN/SYN-ACK reversal: flip the endpoints and establish
                        self._flip(c)
                        is_orig = True
                        st(c, False, ESTABLISHED)
                        c.r_seen = True
                        peer = c.r_state
                    if peer == SYN_SENT:
                        st(c, not is_orig, ESTABLISHED)
                    st(c, is_orig, ESTABLISHED)
            if fin:
                st(c, is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
            if (c.o_state if is_orig else c.r_state) == INACTIVE:
                if not is_orig and plen == 0 and c.o_state == SYN_SENT:
                    pass
                elif ackf and peer == ESTABLISHED:
                    st(c, is_orig, ESTABLISHED)
                else:
                    st(c, is_orig, PARTIAL)
        elif state in (SYN_SENT, SYN_ACK_SENT):
            if fin:
                st(c, is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
        elif state in (ESTABLISHED, PARTIAL):
            if syn and state == PARTIAL and peer == INACTIVE and not ackf:
                st(c, is_orig, SYN_SENT)
            if fin and not rst:
                st(c, is_orig, CLOSED)
                pprev = c.r_prev if is_orig else c.o_prev
                if peer == RESET and pprev == CLOSED:
                    st(c, not is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
        elif state == CLOSED:
            if rst and peer != CLOSED:
                st(c, is_orig, RESET)
                if not (c.o_closed if is_orig else c.r_closed):
                    do_close = True
        if do_close:
            self._closed(c, is_orig)

    def _closed(self, c: _Conn, is_orig: bool) -> None:
        if is_orig:
            if c.o_closed:
                return
            c.o_closed = True
            state, peer_closed, peer = c.o_state, c.r_closed, c.r_state
            prev = c.o_prev
        else:
            if c.r_closed:
                return
            c.r_closed = True
            state, peer_closed, peer = c.r_state, c.o_closed, c.o_state
            prev = c.r_prev
        if state == RESET or peer_closed or peer == INACTIVE:
            if prev != INACTIVE or peer != INACTIVE:
                c.active = False  # connection_finished / half_finished
            # CancelTimers(); ConnDeleteTimer at LastTime + tcp_close_delay
            c.attempt_at = None
            c.expire_at = None
            c.delete_at = c.last + _TO.tcp_close_delay
        elif prev != INACTIVE:
            nf = c.last + _TO.tcp_session_timer
            if c.expire_at is None or nf < c.expire_at:
                c.expire_at = nf
        if state == RESET:
            c.active = False
