"""Name masking: server names are replaced before the model sees the bytes.

nDPI's labels come from names (TLS SNI, certificates, HTTP Host, DNS queries). A model that reads them
learns the labeller, not the traffic, and fails once names are hidden (ECH, DoH, a new domain). Names are
overwritten in place with '*' so that lengths and framing, which real traffic keeps, stay intact.
Parsers here are tolerant: payload chunks are truncated prefixes, and anything unparsable is left as is.
QUIC v1/v2 Initial packets carry the SNI encrypted, so nothing is visible to mask there; gQUIC's
cleartext CHLO SNI tag is masked.

`normalize_random` (applied after masking when FeatureSpec.normalize_random is set) zeroes per-session
random fields; it is not a privacy measure but keeps the model from memorising per-connection noise.
"""

from __future__ import annotations

from .compiled import compiled
from .tls import CLIENT_HELLO, HANDSHAKE, hello_kind

_mask_chunk_c = compiled("mask_chunk")  # the compiled port of mask_chunk_py, or None

STAR = 0x2A
_STRING_TAGS = {0x0C, 0x13, 0x14, 0x16, 0x1E, 0x1C, 0x12}
_OID_CN = bytes.fromhex("0603550403")
_OID_SAN = bytes.fromhex("0603551d11")
_DNS_PORTS = {53, 5353, 5355}


def _fill(buf: bytearray, start: int, end: int) -> None:
    end = min(end, len(buf))
    if start < end:
        buf[start:end] = b"*" * (end - start)


def _u16(b: bytearray, i: int) -> int:
    return (b[i] << 8) | b[i + 1]


def mask_tls_client_hello(buf: bytearray) -> bool:
    """Mask the server_name extension of a (possibly truncated) TLS ClientHello. True if masked."""
    if hello_kind(buf) != CLIENT_HELLO:
        return False
    i = 5 + 4 + 2 + 32  # record hdr, handshake hdr, version, random
    try:
        i += 1 + buf[i]  # session id
        i += 2 + _u16(buf, i)  # cipher suites
        i += 1 + buf[i]  # compression methods
        ext_end = i + 2 + _u16(buf, i)
        i += 2
    except IndexError:
        return False
    masked = False
    while i + 4 <= min(ext_end, len(buf)):
        etype, elen = _u16(buf, i), _u16(buf, i + 2)
        body = i + 4
        if etype == 0:  # server_name: list_len(2) then entries type(1) len(2) name
            j = body + 2
            while j + 3 <= min(body + elen, len(buf)):
                nlen = _u16(buf, j + 1)
                _fill(buf, j + 3, j + 3 + nlen)
                masked = True
                j += 3 + nlen
            # A truncated name: mask what is there.
            if not masked and body + 5 < len(buf):
                _fill(buf, body + 5, body + elen)
                masked = True
        i = body + elen
    return masked  # False also when the extensions were cut off before server_name


def mask_cert_names(buf: bytearray) -> bool:
    """Mask X.509 commonName and subjectAltName dNSName values wherever they appear in the chunk."""
    masked = False
    start = 0
    while (k := buf.find(_OID_CN, start)) >= 0:
        v = k + len(_OID_CN)
        if v + 2 <= len(buf) and buf[v] in _STRING_TAGS and buf[v + 1] < 0x80:
            _fill(buf, v + 2, v + 2 + buf[v + 1])
            masked = True
        start = v
    start = 0
    while (k := buf.find(_OID_SAN, start)) >= 0:
        j = k + len(_OID_SAN)
        if j < len(buf) and buf[j] == 0x01:  # critical flag
            j += 3
        # OCTET STRING { SEQUENCE { GeneralName* } }: skip the two headers (short or long form).
        for _ in range(2):
            if j + 2 > len(buf):
                break
            ln = buf[j + 1]
            j += 2 + (ln & 0x7F if ln & 0x80 else 0)
        while j + 2 <= len(buf) and buf[j] in (0x82, 0x81, 0x87, 0x86, 0xA0, 0xA4):
            ln = buf[j + 1]
            if ln & 0x80:
                break
            if buf[j] in (0x82, 0x81, 0x86):
                _fill(buf, j + 2, j + 2 + ln)
                masked = True
            j += 2 + ln
        start = k + len(_OID_SAN)
    return masked


_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.*")
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _name_like(buf: bytearray, i: int, j: int) -> bool:
    """Whether buf[i:j], a maximal run of name characters, reads as a DNS name: four or more characters, a
    dot, two or more letters, and a last label of two or more letters (a TLD; fewer where the chunk ends in
    it). Digits after the TLD are allowed: a DER tag that follows a name reads as '0' or '1'.
    Version strings ('OpenSSH_5.3', '8.8.7') and addresses have no letters in their last label and stay."""
    if j - i < 4:
        return False
    dot = buf.rfind(b".", i, j)
    if dot < 0 or sum(1 for x in buf[i:j] if x in _LETTERS) < 2:
        return False
    e = j
    while e > dot + 1 and 0x30 <= buf[e - 1] <= 0x39:
        e -= 1
    tld = buf[dot + 1:e]
    cut = j == len(buf) and e == j  # the chunk ends inside the name: its TLD may be cut short or missing
    return len(tld) >= (0 if cut else 2) and all(x in _LETTERS for x in tld)


def mask_name_runs(buf: bytearray) -> bool:
    """Mask every run of name characters that reads as a DNS name (_name_like), wherever it is.

    The structured parsers need the start of a structure; a payload chunk often begins in the middle of one
    (the rest of a certificate's subjectAltName list, an authorityInfoAccess URL such as
    http://pki.google.com/..., a server banner, another protocol's name field). A DER length byte or tag
    that reads as a name character right before a name is masked with it."""
    n = len(buf)
    masked = False
    i = 0
    while i < n:
        if buf[i] not in _NAME_CHARS:
            i += 1
            continue
        j = i + 1
        while j < n and buf[j] in _NAME_CHARS:
            j += 1
        if _name_like(buf, i, j):
            _fill(buf, i, j)
            masked = True
        i = j
    return masked


def _http_request(buf: bytearray) -> bool:
    return any(buf.startswith(m) for m in (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"CONNECT ", b"OPTIONS ",
                                           b"DELETE ", b"PATCH "))


def mask_http_host(buf: bytearray) -> bool:
    """Mask HTTP/1.x Host header values (also in continuation segments) and request authorities."""
    head = bytes(buf[:8])
    is_request = _http_request(buf)
    low = bytes(buf).lower()
    masked = False
    start = 0
    while (k := low.find(b"\nhost:", start)) >= 0:
        v = k + 6
        end = low.find(b"\r", v)
        end = end if end >= 0 else len(buf)
        _fill(buf, v, end)
        masked = True
        start = end
    if not is_request:
        return masked
    sp = low.find(b" ")
    for scheme in (b"http://", b"https://"):
        if low.startswith(scheme, sp + 1):
            a = sp + 1 + len(scheme)
            e = min([x for x in (low.find(b"/", a), low.find(b" ", a)) if x >= 0] or [len(buf)])
            _fill(buf, a, e)
            masked = True
    if head.startswith(b"CONNECT "):
        e = low.find(b" ", 8)
        _fill(buf, 8, e if e >= 0 else len(buf))
        masked = True
    return masked


def _mask_name(buf: bytearray, i: int) -> int:
    """Mask one (possibly compressed) DNS name starting at i; return the offset after it."""
    while i < len(buf):
        ln = buf[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0:
            return i + 2
        _fill(buf, i + 1, i + 1 + ln)
        i += 1 + ln
    return i


# Offset of the (first) name inside rdata: NS, CNAME, SOA, PTR, MX, SRV, DNAME, RRSIG (signer), NSEC.
_NAME_RDATA = {2: 0, 5: 0, 6: 0, 12: 0, 15: 2, 33: 6, 39: 0, 46: 18, 47: 0}


def mask_dns(buf: bytearray, offset: int = 0) -> bool:
    """Mask the label bytes of every DNS name in the message: questions, record owners, and the names
    inside NS/CNAME/PTR/MX/SRV data. Length bytes stay, so the message keeps its shape."""
    if len(buf) < offset + 12:
        return False
    qd = _u16(buf, offset + 4)
    rr = _u16(buf, offset + 6) + _u16(buf, offset + 8) + _u16(buf, offset + 10)
    qd = max(qd, 1)  # a name right after the header is masked even when the count says none
    i = offset + 12
    # Counts may lie (malformed or hostile messages): walk while there are bytes, within a cap.
    for _ in range(min(qd, 64)):
        if i >= len(buf):
            break
        i = _mask_name(buf, i) + 4
    for _ in range(min(rr, 256)):
        if i >= len(buf):
            break
        i = _mask_name(buf, i)
        if i + 10 > len(buf):
            break
        rtype, rdlen = _u16(buf, i), _u16(buf, i + 8)
        i += 10
        if rtype in _NAME_RDATA:
            j = _mask_name(buf, i + _NAME_RDATA[rtype])
            if rtype == 6:  # SOA: mname then rname
                _mask_name(buf, j)
        i += rdlen
    return True


def mask_gquic_sni(buf: bytearray) -> bool:
    """Mask the SNI value of a cleartext gQUIC CHLO (tag-value map: tags, end offsets, then values)."""
    k = buf.find(b"CHLO")
    if k < 0 or k + 8 > len(buf):
        return False
    ntags = buf[k + 4] | (buf[k + 5] << 8)
    if ntags > 64:
        return False
    tags = k + 8
    values = tags + 8 * ntags
    prev = 0
    for t in range(ntags):
        e = tags + 8 * t
        if e + 8 > len(buf):
            break
        end = int.from_bytes(buf[e + 4:e + 8], "little")
        if bytes(buf[e:e + 4]) == b"SNI\x00":
            _fill(buf, values + prev, values + end)
            return True
        prev = end
    return False


ZERO = 0x00


def normalize_tls_hello(buf: bytearray) -> bool:
    """Overwrite the per-session random fields of a TLS ClientHello/ServerHello with zeros: the 32-byte
    Random and the legacy_session_id (its length byte stays). True if the chunk was a hello."""
    if len(buf) < 10 or not hello_kind(buf):
        return False
    buf[11:min(43, len(buf))] = bytes(min(43, len(buf)) - 11) if len(buf) > 11 else b""
    if len(buf) > 43:
        end = min(44 + buf[43], len(buf))
        buf[44:end] = bytes(end - 44)
    return True


def normalize_quic_cids(buf: bytearray) -> bool:
    """Overwrite the destination and source connection IDs of a QUIC long-header packet (RFC 8999
    invariants: flags, version, DCID len + DCID, SCID len + SCID) with zeros, keeping their lengths."""
    if len(buf) < 7 or (buf[0] & 0xC0) != 0xC0 or buf[1:5] == b"\0\0\0\0":
        return False
    i = 5
    for _ in range(2):
        if i >= len(buf) or buf[i] > 20:
            return False
        ln = buf[i]
        end = min(i + 1 + ln, len(buf))
        buf[i + 1:end] = bytes(end - i - 1)
        i += 1 + ln
    return True


def normalize_random(data: bytes, proto: str, orig_p: int = 0, resp_p: int = 0) -> bytes:
    """Return `data` with per-session random fields (TLS hello Random and session ID, QUIC connection
    IDs, DNS transaction ID) set to zero. They differ on every connection, so a model can only memorise them; the bytes
    that identify a client or server implementation (versions, cipher suites, extensions) are kept."""
    if not data:
        return data
    buf = bytearray(data)
    dns = resp_p in _DNS_PORTS or orig_p in _DNS_PORTS or (proto == "tcp" and 53 in (resp_p, orig_p))
    if dns:
        off = 2 if proto == "tcp" else 0
        end = min(off + 2, len(buf))
        buf[off:end] = bytes(max(0, end - off))
    elif buf[0] == HANDSHAKE:  # a TLS handshake record (hellos, certificates)
        normalize_tls_hello(buf)
    elif proto == "udp":
        normalize_quic_cids(buf)
    return bytes(buf)


def mask_payload(data: bytes, proto: str, orig_p: int, resp_p: int) -> bytes:
    """Return `data` with every server name we know how to find replaced by '*'."""
    if not data:
        return data
    buf = bytearray(data)
    if proto == "udp" and (resp_p in _DNS_PORTS or orig_p in _DNS_PORTS):
        mask_dns(buf)
    elif proto == "tcp" and (resp_p == 53 or orig_p == 53):
        mask_dns(buf, offset=2)
    elif buf[0] == HANDSHAKE:  # a TLS handshake record (hellos, certificates)
        mask_tls_client_hello(buf)
        mask_cert_names(buf)
        mask_name_runs(buf)
    elif proto == "tcp":
        if not mask_http_host(buf):
            mask_cert_names(buf)  # a certificate can start mid-segment
            if not _http_request(buf):  # a request line holds a path (index.php), its names are in Host
                mask_name_runs(buf)  # mid-structure, no OID precedes the names
    elif proto == "udp":
        mask_gquic_sni(buf)
        mask_name_runs(buf)
    return bytes(buf)


def mask_chunk_py(data: bytes, proto: str, orig_p: int, resp_p: int, normalize: bool = True) -> bytes:
    """mask_payload, then normalize_random when `normalize`: what features.encode does to every payload chunk
    the model reads. The reference for the compiled port (_fastpath.mask_chunk)."""
    data = mask_payload(data, proto, orig_p, resp_p)
    return normalize_random(data, proto, orig_p, resp_p) if normalize else data


_PROTO_CODE = {"tcp": 0, "udp": 1}


def mask_chunk(data: bytes, proto: str, orig_p: int, resp_p: int, normalize: bool = True) -> bytes:
    """mask_chunk_py, in C where the extension is built (the same bytes: tests/test_masking_fast.py compares
    both on every chunk of the shared captures and on mutated ones). In Python the two passes cost as much as
    the rest of features.encode together."""
    if _mask_chunk_c is not None and type(data) is bytes:
        return _mask_chunk_c(data, _PROTO_CODE.get(proto, 2), orig_p, resp_p, normalize)
    return mask_chunk_py(data, proto, orig_p, resp_p, normalize)
