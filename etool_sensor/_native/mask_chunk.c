/* masking.mask_payload followed by masking.normalize_random, on one payload chunk: a line-by-line port of
 * masking.py, which stays the reference (tests/test_masking_fast.py compares both on every chunk of the
 * shared captures and on mutated ones). features.encode calls it once per chunk; in Python the two passes
 * cost about as much as the rest of encode together. Buffers are bounded by the chunk's length everywhere
 * (Python's slices clamp, its index errors end a parse; here every read is checked against n).
 */
#include "fastpath.h"

typedef struct {
    uint8_t *b;
    Py_ssize_t n;
} Buf;

static inline int u16(const Buf *s, Py_ssize_t i) { return (s->b[i] << 8) | s->b[i + 1]; }

static void fill(Buf *s, Py_ssize_t start, Py_ssize_t end, uint8_t v) {
    if (end > s->n) end = s->n;
    if (start < 0) start = 0;
    if (start < end) memset(s->b + start, v, (size_t)(end - start));
}

static Py_ssize_t find(const uint8_t *b, Py_ssize_t n, const char *pat, Py_ssize_t m, Py_ssize_t start) {
    if (start < 0) start = 0;
    for (Py_ssize_t k = start; k + m <= n; k++)
        if (b[k] == (uint8_t)pat[0] && memcmp(b + k, pat, (size_t)m) == 0) return k;
    return -1;
}

static int mask_tls_client_hello_c(Buf *s) {
    const Py_ssize_t n = s->n;
    /* tls.hello_kind(...) == CLIENT_HELLO */
    if (n < 6 || s->b[0] != 0x16 || s->b[1] != 3 || s->b[5] != 1) return 0;
    Py_ssize_t i = 5 + 4 + 2 + 32;
    if (i >= n) return 0;
    i += 1 + s->b[i]; /* session id */
    if (i + 1 >= n) return 0;
    i += 2 + u16(s, i); /* cipher suites */
    if (i >= n) return 0;
    i += 1 + s->b[i]; /* compression methods */
    if (i + 1 >= n) return 0;
    Py_ssize_t ext_end = i + 2 + u16(s, i);
    i += 2;
    int masked = 0;
    while (i + 4 <= (ext_end < n ? ext_end : n)) {
        int etype = u16(s, i), elen = u16(s, i + 2);
        Py_ssize_t body = i + 4;
        if (etype == 0) {
            Py_ssize_t j = body + 2, lim = body + elen < n ? body + elen : n;
            while (j + 3 <= lim) {
                int nlen = u16(s, j + 1);
                fill(s, j + 3, j + 3 + nlen, '*');
                masked = 1;
                j += 3 + nlen;
            }
            if (!masked && body + 5 < n) {
                fill(s, body + 5, body + elen, '*');
                masked = 1;
            }
        }
        i = body + elen;
    }
    return masked;
}

static int string_tag(uint8_t t) { /* masking._STRING_TAGS */
    return t == 0x0C || t == 0x13 || t == 0x14 || t == 0x16 || t == 0x1E || t == 0x1C || t == 0x12;
}

static int mask_cert_names_c(Buf *s) {
    static const char cn[] = "\x06\x03\x55\x04\x03", san[] = "\x06\x03\x55\x1d\x11";
    const Py_ssize_t n = s->n;
    int masked = 0;
    Py_ssize_t start = 0, k;
    while ((k = find(s->b, n, cn, 5, start)) >= 0) {
        Py_ssize_t v = k + 5;
        if (v + 2 <= n && string_tag(s->b[v]) && s->b[v + 1] < 0x80) {
            fill(s, v + 2, v + 2 + s->b[v + 1], '*');
            masked = 1;
        }
        start = v;
    }
    start = 0;
    while ((k = find(s->b, n, san, 5, start)) >= 0) {
        Py_ssize_t j = k + 5;
        if (j < n && s->b[j] == 0x01) j += 3;
        for (int t = 0; t < 2; t++) {
            if (j + 2 > n) break;
            int ln = s->b[j + 1];
            j += 2 + ((ln & 0x80) ? (ln & 0x7F) : 0);
        }
        while (j + 2 <= n) {
            uint8_t tag = s->b[j];
            if (!(tag == 0x82 || tag == 0x81 || tag == 0x87 || tag == 0x86 || tag == 0xA0 || tag == 0xA4)) break;
            int ln = s->b[j + 1];
            if (ln & 0x80) break;
            if (tag == 0x82 || tag == 0x81 || tag == 0x86) {
                fill(s, j + 2, j + 2 + ln, '*');
                masked = 1;
            }
            j += 2 + ln;
        }
        start = k + 5;
    }
    return masked;
}

static inline int is_letter(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static inline int name_char(uint8_t c) { /* masking._NAME_CHARS */
    return is_letter(c) || is_digit(c) || c == '-' || c == '_' || c == '.' || c == '*';
}

/* masking._name_like */
static int name_like(const Buf *s, Py_ssize_t i, Py_ssize_t j) {
    if (j - i < 4) return 0;
    Py_ssize_t dot = -1, letters = 0;
    for (Py_ssize_t k = i; k < j; k++) {
        if (s->b[k] == '.') dot = k;
        letters += is_letter(s->b[k]);
    }
    if (dot < 0 || letters < 2) return 0;
    Py_ssize_t e = j;
    while (e > dot + 1 && is_digit(s->b[e - 1])) e--;
    int cut = j == s->n && e == j;
    if (e - (dot + 1) < (cut ? 0 : 2)) return 0;
    for (Py_ssize_t k = dot + 1; k < e; k++)
        if (!is_letter(s->b[k])) return 0;
    return 1;
}

/* masking.mask_name_runs */
static int mask_name_runs_c(Buf *s) {
    const Py_ssize_t n = s->n;
    int masked = 0;
    Py_ssize_t i = 0;
    while (i < n) {
        if (!name_char(s->b[i])) {
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < n && name_char(s->b[j])) j++;
        if (name_like(s, i, j)) {
            fill(s, i, j, '*');
            masked = 1;
        }
        i = j;
    }
    return masked;
}

static int starts_with(const uint8_t *b, Py_ssize_t n, Py_ssize_t at, const char *p) {
    Py_ssize_t m = (Py_ssize_t)strlen(p);
    return at >= 0 && at + m <= n && memcmp(b + at, p, (size_t)m) == 0;
}

/* masking._http_request */
static int http_request(const Buf *s) {
    static const char *methods[] = {"GET ", "POST ", "HEAD ", "PUT ", "CONNECT ", "OPTIONS ", "DELETE ",
                                    "PATCH "};
    Py_ssize_t hn = s->n < 8 ? s->n : 8;
    for (int t = 0; t < 8; t++)
        if (starts_with(s->b, hn, 0, methods[t])) return 1;
    return 0;
}

/* returns -1 on memory error */
static int mask_http_host_c(Buf *s) {
    const Py_ssize_t n = s->n;
    Py_ssize_t hn = n < 8 ? n : 8;
    int is_request = http_request(s);
    int connect = starts_with(s->b, hn, 0, "CONNECT ");
    uint8_t *low = PyMem_Malloc(n ? (size_t)n : 1);
    if (!low) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = s->b[i];
        low[i] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
    }
    int masked = 0;
    Py_ssize_t start = 0, k;
    while ((k = find(low, n, "\nhost:", 6, start)) >= 0) {
        Py_ssize_t v = k + 6, end = find(low, n, "\r", 1, v);
        if (end < 0) end = n;
        fill(s, v, end, '*');
        masked = 1;
        start = end;
    }
    if (is_request) {
        Py_ssize_t sp = find(low, n, " ", 1, 0);
        static const char *schemes[] = {"http://", "https://"};
        for (int t = 0; t < 2; t++) {
            if (starts_with(low, n, sp + 1, schemes[t])) {
                Py_ssize_t a = sp + 1 + (Py_ssize_t)strlen(schemes[t]);
                Py_ssize_t x = find(low, n, "/", 1, a), y = find(low, n, " ", 1, a), e = n;
                if (x >= 0) e = x;
                if (y >= 0 && (x < 0 || y < x)) e = y;
                fill(s, a, e, '*');
                masked = 1;
            }
        }
        if (connect) {
            Py_ssize_t e = find(low, n, " ", 1, 8);
            fill(s, 8, e >= 0 ? e : n, '*');
            masked = 1;
        }
    }
    PyMem_Free(low);
    return masked;
}

static Py_ssize_t mask_name_c(Buf *s, Py_ssize_t i) {
    while (i < s->n) {
        int ln = s->b[i];
        if (ln == 0) return i + 1;
        if (ln & 0xC0) return i + 2;
        fill(s, i + 1, i + 1 + ln, '*');
        i += 1 + ln;
    }
    return i;
}

static int name_rdata(int rtype) { /* masking._NAME_RDATA; -1 for none */
    switch (rtype) {
    case 2: case 5: case 6: case 12: case 39: case 47: return 0;
    case 15: return 2;
    case 33: return 6;
    case 46: return 18;
    default: return -1;
    }
}

static void mask_dns_c(Buf *s, Py_ssize_t offset) {
    const Py_ssize_t n = s->n;
    if (n < offset + 12) return;
    int qd = u16(s, offset + 4);
    long rr = (long)u16(s, offset + 6) + u16(s, offset + 8) + u16(s, offset + 10);
    if (qd < 1) qd = 1;
    Py_ssize_t i = offset + 12;
    for (int t = 0; t < (qd < 64 ? qd : 64); t++) {
        if (i >= n) break;
        i = mask_name_c(s, i) + 4;
    }
    for (long t = 0; t < (rr < 256 ? rr : 256); t++) {
        if (i >= n) break;
        i = mask_name_c(s, i);
        if (i + 10 > n) break;
        int rtype = u16(s, i), rdlen = u16(s, i + 8);
        i += 10;
        int off = name_rdata(rtype);
        if (off >= 0) {
            Py_ssize_t j = mask_name_c(s, i + off);
            if (rtype == 6) mask_name_c(s, j);
        }
        i += rdlen;
    }
}

static void mask_gquic_sni_c(Buf *s) {
    const Py_ssize_t n = s->n;
    Py_ssize_t k = find(s->b, n, "CHLO", 4, 0);
    if (k < 0 || k + 8 > n) return;
    int ntags = s->b[k + 4] | (s->b[k + 5] << 8);
    if (ntags > 64) return;
    Py_ssize_t tags = k + 8, values = tags + 8 * (Py_ssize_t)ntags;
    long long prev = 0;
    for (int t = 0; t < ntags; t++) {
        Py_ssize_t e = tags + 8 * (Py_ssize_t)t;
        if (e + 8 > n) break;
        long long end = (long long)s->b[e + 4] | ((long long)s->b[e + 5] << 8) | ((long long)s->b[e + 6] << 16) |
                        ((long long)s->b[e + 7] << 24);
        if (memcmp(s->b + e, "SNI\0", 4) == 0) {
            long long a = values + prev, z = values + end;
            if (z > n) z = n;
            if (a < z) memset(s->b + a, '*', (size_t)(z - a));
            return;
        }
        prev = end;
    }
}

static void normalize_tls_hello_c(Buf *s) {
    const Py_ssize_t n = s->n;
    /* masking.normalize_tls_hello: at least 10 bytes and tls.hello_kind */
    if (n < 10 || s->b[0] != 0x16 || s->b[1] != 3 || (s->b[5] != 1 && s->b[5] != 2)) return;
    fill(s, 11, n < 43 ? n : 43, 0);
    if (n > 43) fill(s, 44, 44 + s->b[43], 0);
}

static void normalize_quic_cids_c(Buf *s) {
    const Py_ssize_t n = s->n;
    if (n < 7 || (s->b[0] & 0xC0) != 0xC0 || (s->b[1] == 0 && s->b[2] == 0 && s->b[3] == 0 && s->b[4] == 0))
        return;
    Py_ssize_t i = 5;
    for (int t = 0; t < 2; t++) {
        if (i >= n || s->b[i] > 20) return;
        int ln = s->b[i];
        fill(s, i + 1, i + 1 + ln, 0);
        i += 1 + ln;
    }
}

static int dns_port(long p) { return p == 53 || p == 5353 || p == 5355; }

/* masking.mask_chunk_py on b[0:n] in place (the same length); -1 when out of memory */
int etool_mask_buf(uint8_t *b, Py_ssize_t n, int proto, long orig_p, long resp_p, int normalize) {
    Buf s = {b, n};
    const int tcp = proto == 0, udp = proto == 1;
    if (udp && (dns_port(resp_p) || dns_port(orig_p)))
        mask_dns_c(&s, 0);
    else if (tcp && (resp_p == 53 || orig_p == 53))
        mask_dns_c(&s, 2);
    else if (s.b[0] == 0x16) {
        mask_tls_client_hello_c(&s);
        mask_cert_names_c(&s);
        mask_name_runs_c(&s);
    } else if (tcp) {
        int r = mask_http_host_c(&s);
        if (r < 0) return -1;
        if (!r) {
            mask_cert_names_c(&s);
            if (!http_request(&s)) mask_name_runs_c(&s);
        }
    } else if (udp) {
        mask_gquic_sni_c(&s);
        mask_name_runs_c(&s);
    }
    if (normalize) {
        if (dns_port(resp_p) || dns_port(orig_p) || (tcp && (resp_p == 53 || orig_p == 53))) {
            Py_ssize_t off = tcp ? 2 : 0;
            fill(&s, off, off + 2, 0);
        } else if (s.b[0] == 0x16)
            normalize_tls_hello_c(&s);
        else if (udp)
            normalize_quic_cids_c(&s);
    }
    return 0;
}

/* mask_chunk(data: bytes, proto: int (0 tcp, 1 udp, 2 other), orig_p: int, resp_p: int, normalize: bool) */
PyObject *etool_mask_chunk(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "mask_chunk(data: bytes, proto: int, orig_p: int, resp_p: int, normalize: bool)");
        return NULL;
    }
    long proto = PyLong_AsLong(args[1]), orig_p = PyLong_AsLong(args[2]), resp_p = PyLong_AsLong(args[3]);
    int normalize = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred() || normalize < 0) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (n == 0) return Py_NewRef(args[0]);
    /* a fresh object to write into (with a source pointer, CPython may hand out its shared 1-byte object) */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (!out) return NULL;
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(args[0]), (size_t)n);
    if (etool_mask_buf((uint8_t *)PyBytes_AS_STRING(out), n, (int)proto, orig_p, resp_p, normalize) < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}
