/* zeek/wire.py's _flow_text in C: one ETooL::flow frame exactly as Broker's JSON writer lays it out -> its fields,
 * the Packet and Chunk objects built. The grammar is wire._FLOW_TEXT_RE's, element by element (the
 * regular expression skims the packet and chunk vectors and counts exact records; here every element must
 * be an exact record). Anything else, and timespans beyond 15 digits (where int * float might round
 * differently than double * double), returns None and wire.py goes on to the regular expression, which stays
 * the reference: tests/test_zeekws_fast.py checks that whatever this accepts decodes the same there.
 * Why: the frame is ~4 KB of typed JSON per flow, and the regex + per-packet Python cost ~50-90 us of the
 * daemon's ~150-190 us of own CPU per flow (docs/performance.md).
 */
#include "fastpath.h"

typedef struct {
    const char *p, *end;
} Cur;

static int lit(Cur *c, const char *s, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0) return 0;
    c->p += n;
    return 1;
}
#define LIT(c, s) lit((c), (s), sizeof(s) - 1)

static int cls_tstr(unsigned char ch) { return ch >= 0x20 && ch <= 0x7e && ch != '"' && ch != '\\'; }
static int cls_time(unsigned char ch) { return (ch >= '0' && ch <= '9') || ch == '-' || ch == 'T' || ch == ':' || ch == '.'; }
static int cls_addr(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == ':' || ch == '.';
}
static int cls_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

/* a run of class characters of length lo..hi, then the closing quote; the run becomes a str */
static PyObject *quoted(Cur *c, int (*ok)(unsigned char), Py_ssize_t lo, Py_ssize_t hi) {
    const char *q = c->p;
    while (q < c->end && ok((unsigned char)*q)) q++;
    Py_ssize_t n = q - c->p;
    if (n < lo || n > hi || q >= c->end || *q != '"') return NULL;
    PyObject *r = PyUnicode_FromStringAndSize(c->p, n);
    c->p = q + 1;
    return r;
}

static int boolean(Cur *c, int *v) {
    if (LIT(c, "true")) return (*v = 1), 1;
    if (LIT(c, "false")) return (*v = 0), 1;
    return 0;
}

/* (0|[1-9][0-9]{0,18}) */
static int count(Cur *c, unsigned long long *v) {
    const char *q = c->p;
    while (q < c->end && cls_digit((unsigned char)*q)) q++;
    Py_ssize_t n = q - c->p;
    if (n < 1 || n > 19 || (n > 1 && *c->p == '0')) return 0;
    unsigned long long x = 0;
    for (const char *d = c->p; d < q; d++) x = x * 10 + (unsigned long long)(*d - '0');
    *v = x;
    c->p = q;
    return 1;
}

static const char PKT_HEAD[] = "{\"@data-type\":\"vector\",\"data\":[{\"@data-type\":\"timespan\",\"data\":\"";
static const char CNT_HEAD[] = "},{\"@data-type\":\"count\",\"data\":";
static const char VEC_OPEN[] = "{\"@data-type\":\"vector\",\"data\":[";

/* one packet record -> Packet(dt, is_orig, ip_len, payload_len, tcp_flags) */
static PyObject *packet(Cur *c, PyObject *cls) {
    if (!LIT(c, PKT_HEAD)) return NULL;
    const char *q = c->p;
    while (q < c->end && cls_digit((unsigned char)*q)) q++;
    Py_ssize_t n = q - c->p;
    if (n < 1 || n > 20) return NULL;
    const char *d = c->p;
    while (d < q - 1 && *d == '0') d++;
    if (q - d > 15) return NULL; /* exact as a double only below 2**53: leave it to the Python decoder */
    double num = 0;
    for (; d < q; d++) num = num * 10 + (*d - '0');
    c->p = q;
    double unit;
    if (LIT(c, "ns\"")) unit = 1e-9;
    else if (LIT(c, "us\"")) unit = 1e-6;
    else if (LIT(c, "ms\"")) unit = 1e-3;
    else if (LIT(c, "s\"")) unit = 1.0;
    else return NULL;
    int io;
    unsigned long long v[3];
    if (!LIT(c, "},{\"@data-type\":\"boolean\",\"data\":") || !boolean(c, &io)) return NULL;
    for (int i = 0; i < 3; i++)
        if (!LIT(c, CNT_HEAD) || !count(c, &v[i])) return NULL;
    if (!LIT(c, "}]}")) return NULL;
    PyObject *a[5] = {PyFloat_FromDouble(num * unit), PyBool_FromLong(io), PyLong_FromUnsignedLongLong(v[0]),
                      PyLong_FromUnsignedLongLong(v[1]), PyLong_FromUnsignedLongLong(v[2])};
    PyObject *r = NULL;
    if (a[0] && a[2] && a[3] && a[4]) r = etool_make(cls, a, 5);
    for (int i = 0; i < 5; i++) Py_XDECREF(a[i]);
    return r;
}

static int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* one payload chunk record -> Chunk(is_orig, bytes) */
static PyObject *chunk(Cur *c, PyObject *cls) {
    int io;
    if (!LIT(c, "{\"@data-type\":\"vector\",\"data\":[{\"@data-type\":\"boolean\",\"data\":") || !boolean(c, &io))
        return NULL;
    if (!LIT(c, "},{\"@data-type\":\"string\",\"data\":\"")) return NULL;
    const char *q = c->p;
    while (q < c->end && hexval((unsigned char)*q) >= 0) q++;
    Py_ssize_t n = q - c->p;
    Cur t = {q, c->end};
    if (n % 2 || !LIT(&t, "\"}]}")) return NULL;
    PyObject *b = PyBytes_FromStringAndSize(NULL, n / 2);
    if (!b) return NULL;
    char *o = PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n / 2; i++)
        o[i] = (char)(hexval((unsigned char)c->p[2 * i]) << 4 | hexval((unsigned char)c->p[2 * i + 1]));
    c->p = q + 4;
    PyObject *a[2] = {PyBool_FromLong(io), b};
    PyObject *r = etool_make(cls, a, 2);
    Py_DECREF(a[0]);
    Py_DECREF(b);
    return r;
}

/* VEC_OPEN (elem (',' elem)*)? ']}' -> list, or NULL (with or without an exception set) */
static PyObject *records(Cur *c, PyObject *(*elem)(Cur *, PyObject *), PyObject *cls) {
    if (!LIT(c, VEC_OPEN)) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    if (LIT(c, "]}")) return out;
    for (;;) {
        PyObject *x = elem(c, cls);
        if (!x || PyList_Append(out, x) < 0) {
            Py_XDECREF(x);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(x);
        if (LIT(c, "]}")) return out;
        if (!LIT(c, ",")) break;
    }
    Py_DECREF(out);
    return NULL;
}

static PyObject *port_text(Cur *c) {
    const char *q = c->p;
    while (q < c->end && cls_digit((unsigned char)*q)) q++;
    Py_ssize_t n = q - c->p;
    if (n < 1 || n > 5) return NULL;
    Cur t = {q, c->end};
    if (!(LIT(&t, "/tcp\"") || LIT(&t, "/udp\"") || LIT(&t, "/icmp\"") || LIT(&t, "/?\""))) return NULL;
    PyObject *r = PyUnicode_FromStringAndSize(c->p, t.p - 1 - c->p);
    c->p = t.p;
    return r;
}

PyObject *etool_flow_frame(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "flow_frame(text: str, Packet, Chunk)");
        return NULL;
    }
    PyObject *text = args[0], *pcls = args[1], *ccls = args[2];
    if (PyUnicode_READY(text) < 0) return NULL;
    if (!PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    Cur c = {(const char *)PyUnicode_DATA(text), NULL};
    c.end = c.p + PyUnicode_GET_LENGTH(text);
    /* topic, uid, ts, orig_h, orig_p, resp_h, resp_p, packets, chunks, final, reply_topic, md key, md ts */
    PyObject *f[13] = {NULL};
    int fin = 0, ok = 0;
    if (!LIT(&c, "{\"type\":\"data-message\",\"topic\":\"") || !(f[0] = quoted(&c, cls_tstr, 0, PY_SSIZE_T_MAX)))
        goto done;
    if (!LIT(&c, ",\"@data-type\":\"vector\",\"data\":[{\"@data-type\":\"count\",\"data\":1},"
                 "{\"@data-type\":\"count\",\"data\":1},{\"@data-type\":\"vector\",\"data\":["
                 "{\"@data-type\":\"string\",\"data\":\"ETooL::flow\"},{\"@data-type\":\"vector\",\"data\":["
                 "{\"@data-type\":\"vector\",\"data\":[{\"@data-type\":\"string\",\"data\":\"")
        || !(f[1] = quoted(&c, cls_tstr, 0, PY_SSIZE_T_MAX)))
        goto done;
    if (!LIT(&c, "},{\"@data-type\":\"timestamp\",\"data\":\"") || !(f[2] = quoted(&c, cls_time, 1, 40))) goto done;
    if (!LIT(&c, "},{\"@data-type\":\"address\",\"data\":\"") || !(f[3] = quoted(&c, cls_addr, 1, 64))) goto done;
    if (!LIT(&c, "},{\"@data-type\":\"port\",\"data\":\"") || !(f[4] = port_text(&c))) goto done;
    if (!LIT(&c, "},{\"@data-type\":\"address\",\"data\":\"") || !(f[5] = quoted(&c, cls_addr, 1, 64))) goto done;
    if (!LIT(&c, "},{\"@data-type\":\"port\",\"data\":\"") || !(f[6] = port_text(&c))) goto done;
    if (!LIT(&c, "},") || !(f[7] = records(&c, packet, pcls))) goto done;
    if (!LIT(&c, ",") || !(f[8] = records(&c, chunk, ccls))) goto done;
    if (!LIT(&c, ",{\"@data-type\":\"boolean\",\"data\":") || !boolean(&c, &fin)) goto done;
    if (!LIT(&c, "},{\"@data-type\":\"string\",\"data\":\"") || !(f[10] = quoted(&c, cls_tstr, 1, PY_SSIZE_T_MAX)))
        goto done;
    if (!LIT(&c, "}]}]}")) goto done;
    if (LIT(&c, ",{\"@data-type\":\"vector\",\"data\":[")) {
        if (LIT(&c, "{\"@data-type\":\"vector\",\"data\":[{\"@data-type\":\"count\",\"data\":")) {
            const char *k0 = c.p;
            unsigned long long k;
            if (!count(&c, &k) || !(f[11] = PyUnicode_FromStringAndSize(k0, c.p - k0))) goto done;
            if (!LIT(&c, "},{\"@data-type\":\"timestamp\",\"data\":\"") || !(f[12] = quoted(&c, cls_time, 1, 40)))
                goto done;
            if (!LIT(&c, "}]}")) goto done;
        }
        if (!LIT(&c, "]}")) goto done;
    }
    ok = LIT(&c, "]}]}") && c.p == c.end;
done:
    if (PyErr_Occurred()) { /* a Packet/Chunk constructor or an allocation failed: the caller sees it */
        for (int i = 0; i < 13; i++) Py_XDECREF(f[i]);
        return NULL;
    }
    if (!ok) {
        for (int i = 0; i < 13; i++) Py_XDECREF(f[i]);
        Py_RETURN_NONE;
    }
    f[9] = PyBool_FromLong(fin);
    for (int i = 11; i < 13; i++)
        if (!f[i]) f[i] = Py_NewRef(Py_None);
    PyObject *r = PyTuple_New(13);
    if (!r) {
        for (int i = 0; i < 13; i++) Py_XDECREF(f[i]);
        return NULL;
    }
    for (int i = 0; i < 13; i++) PyTuple_SET_ITEM(r, i, f[i]);
    return r;
}
