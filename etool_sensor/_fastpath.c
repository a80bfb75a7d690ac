/* The compiled twins of etool's hot Python functions, one extension so an install builds one thing.
 *
 *   - the capture reader (Engine): pcap/pcapng records -> Zeek-like connections -> flow records, a port of
 *     capture/ (linklayer, ip, tcp, conntrack; native.py is the glue), checked by tests/test_fastpath.py on
 *     every shared capture. Python keeps what is rare or cheap per flow: IP fragment reassembly (the engine
 *     stops at a fragment, capture/ip.py reassembles it and hands the packet back), uids, address strings;
 *   - flow_frame: zeek/wire.py's text decoder of an ETooL::flow frame (tests/test_zeekws_fast.py);
 *   - mask_chunk: masking.py's name masking of one payload chunk (tests/test_masking_fast.py);
 *   - encode_arrays: features.py's model input arrays (tests/test_features_fast.py);
 *   - hello_key: fingerprints.py's packed hello fields (tests/test_hello_fields.py);
 *   - tsv_row: zeeklog.py's TSV row (tests/test_zeeklog.py); uid_text: flows.py's uid text.
 *
 * Each Python function stays the reference and the fallback; compiled.py hands the twins out, and
 * ETOOL_PURE_PYTHON=1 turns all of them off. Why C: per packet the Python reader spends ~5 us building
 * bytes keys, struct tuples and dict lookups; here a packet costs well under a microsecond.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET };
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define CLOSE_FLAGS (F_SYN | F_FIN | F_RST)

/* ZeekTimeouts defaults (capture/) */
#define TCP_INACTIVITY 300.0
#define UDP_INACTIVITY 60.0
#define TCP_ATTEMPT_DELAY 5.0
#define TCP_CLOSE_DELAY 5.0
#define TCP_SYN_TIMEOUT 5.0
#define TCP_SESSION_TIMER 6.0
#define TCP_CONNECTION_LINGER 5.0

#define KEYMAX 37
#define NONE NAN
#define IS_NONE(x) isnan(x)

typedef struct {
    double dt;
    uint32_t ip_len, plen;
    uint8_t is_orig, flags;
} Pkt;

typedef struct Conn {
    struct Conn *prev, *next; /* live connections in creation order (capture/'s dict order) */
    uint64_t ordinal;
    int tcp;
    double ts0, last, pkt_t;
    uint8_t keys[2][KEYMAX];
    int klen, okey; /* okey: index into keys of the originator's key */
    uint8_t oh[16], rh[16];
    int alen;
    int op, rp;
    long long o_pkts, o_ipb, r_pkts, r_ipb, o_pl, r_pl;
    char *hist;
    int hist_len, hist_cap;
    unsigned hist_o, hist_r;
    Pkt *pk;
    int npk;
    uint8_t *pay; /* M chunks of B bytes */
    int *paylen;
    uint8_t *payorig;
    int npay;
    int emitted;
    int o_state, r_state, o_prev, r_prev;
    uint32_t o_start, r_start, o_last, r_last, o_ack, r_ack;
    long long o_fin, r_fin;
    int o_closed, r_closed, o_seen, r_seen, active;
    double attempt_at, expire_at, delete_at, timeout;
} Conn;

typedef struct Ent {
    struct Ent *next;
    Conn *c;
    uint64_t h;
    int klen;
    uint8_t key[KEYMAX];
} Ent;

typedef struct {
    PyObject_HEAD
    /* parameters */
    int n_packets, pay_bytes, pay_packets, checksums, want_summaries;
    int hello_bytes, pay_stride; /* H (flows.chunk_length), bytes per chunk slot: max(B, H) */
    uint8_t lsp_tcp[8192], lsp_udp[8192];
    PyObject *packet_cls, *chunk_cls;
    /* pcap */
    int swap, started, linktype;
    /* pcapng: per-section interfaces (all Ethernet: capture/ checks with a scan first), SPB timestamps */
    int ng, scan_only, scan_bad, ng_section;
    struct Iface { double scale, toff; uint32_t snap; int lt; } *ifaces;
    int n_ifaces, cap_ifaces;
    double last_ts;
    double scale;
    uint32_t limit;
    uint8_t *buf;
    size_t len, pos, cap;
    int stopped, truncated;
    /* sweep */
    int have_next_sweep, pending;
    double next_sweep, pending_ts;
    /* connections */
    Ent **tab;
    size_t tab_size, tab_count;
    Conn *head, *tail;
    uint64_t ordinal;
    /* counters */
    long long packets, bytes, non_ip, malformed, fragments, bad_checksums;
    /* counters of this shard's packets (ReadStats of read_shard's shard_stats; the same object unsharded) */
    long long s_flows, s_malformed, s_bad_checksums, s_non_tcp_udp;
    /* sharded reading (capture.reader.read_shard): keep connections whose shard_owner is me; gi = global packet index */
    int shard_n, shard_me;
    long long gi;
    int phase; /* of the events being emitted: 0 packet, 1 sweep after it, 2 end of file */
    /* output */
    PyObject *events; /* list, while a call runs */
    PyObject *frag;   /* pending fragment tuple or NULL */
    int error;
} Engine;

/* ------------------------------------------------------------------------------------------ */
/* helpers */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t rd32(const Engine *e, const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return e->swap ? __builtin_bswap32(v) : v;
}
static inline long long seq_delta(uint32_t a, uint32_t b) { return (long long)(int32_t)(a - b); }

/* zlib.crc32 (IEEE 802.3), for capture.shard.shard_owner */
static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_2(const uint8_t *a, int na, const uint8_t *b, int nb) {
    uint32_t c = 0xFFFFFFFFu;
    for (int i = 0; i < na; i++) c = crc_table[(c ^ a[i]) & 0xFF] ^ (c >> 8);
    for (int i = 0; i < nb; i++) c = crc_table[(c ^ b[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}
static int private_addr(const uint8_t *a, int n) {
    if (n == 4) return a[0] == 10 || (a[0] == 192 && a[1] == 168) || (a[0] == 172 && a[1] >= 16 && a[1] <= 31);
    return (a[0] & 0xFE) == 0xFC || (a[0] == 0xFE && (a[1] & 0xC0) == 0x80);
}

/* sum of big-endian 16-bit words (odd length: padded with a zero byte), as int.from_bytes() % 65535 sees it */
static uint64_t wsum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 1 < n; i += 2) s += ((uint32_t)p[i] << 8) | p[i + 1];
    if (i < n) s += (uint32_t)p[i] << 8;
    return s;
}

static uint64_t hkey(const uint8_t *k, int n) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) {
        h ^= k[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static Conn *tab_get(Engine *e, const uint8_t *k, int n, uint64_t h) {
    for (Ent *x = e->tab[h & (e->tab_size - 1)]; x; x = x->next)
        if (x->h == h && x->klen == n && memcmp(x->key, k, n) == 0) return x->c;
    return NULL;
}

static int tab_grow(Engine *e) {
    size_t ns = e->tab_size * 2;
    Ent **nt = PyMem_Calloc(ns, sizeof(Ent *));
    if (!nt) return -1;
    for (size_t i = 0; i < e->tab_size; i++) {
        Ent *x = e->tab[i];
        while (x) {
            Ent *nx = x->next;
            x->next = nt[x->h & (ns - 1)];
            nt[x->h & (ns - 1)] = x;
            x = nx;
        }
    }
    PyMem_Free(e->tab);
    e->tab = nt;
    e->tab_size = ns;
    return 0;
}

static int tab_put(Engine *e, const uint8_t *k, int n, Conn *c) {
    uint64_t h = hkey(k, n);
    for (Ent *x = e->tab[h & (e->tab_size - 1)]; x; x = x->next)
        if (x->h == h && x->klen == n && memcmp(x->key, k, n) == 0) {
            x->c = c; /* dict assignment keeps the slot */
            return 0;
        }
    if (e->tab_count + 1 > e->tab_size - e->tab_size / 4 && tab_grow(e) < 0) return -1;
    Ent *x = PyMem_Malloc(sizeof(Ent));
    if (!x) return -1;
    x->h = h;
    x->klen = n;
    memcpy(x->key, k, n);
    x->c = c;
    x->next = e->tab[h & (e->tab_size - 1)];
    e->tab[h & (e->tab_size - 1)] = x;
    e->tab_count++;
    return 0;
}

static void tab_del_if(Engine *e, const uint8_t *k, int n, Conn *c) {
    uint64_t h = hkey(k, n);
    Ent **pp = &e->tab[h & (e->tab_size - 1)];
    for (Ent *x = *pp; x; pp = &x->next, x = x->next)
        if (x->h == h && x->klen == n && memcmp(x->key, k, n) == 0) {
            if (x->c == c) {
                *pp = x->next;
                PyMem_Free(x);
                e->tab_count--;
            }
            return;
        }
}

static void conn_free(Conn *c) {
    PyMem_Free(c->hist);
    PyMem_Free(c->pk);
    PyMem_Free(c->pay);
    PyMem_Free(c->paylen);
    PyMem_Free(c->payorig);
    PyMem_Free(c);
}

static int hist_add(Conn *c, char ch) {
    if (c->hist_len + 1 >= c->hist_cap) {
        int nc = c->hist_cap ? c->hist_cap * 2 : 16;
        char *nh = PyMem_Realloc(c->hist, nc);
        if (!nh) return -1;
        c->hist = nh;
        c->hist_cap = nc;
    }
    c->hist[c->hist_len++] = ch;
    return 0;
}

static int hist_has(const Conn *c, char ch) { return c->hist_len && memchr(c->hist, ch, c->hist_len) != NULL; }

/* ------------------------------------------------------------------------------------------ */
/* ------------------------------------------------------------------------------------------------
 * Record objects. flows.Packet and flows.Chunk are dataclasses with __slots__ whose generated __init__
 * only stores its arguments in the slots, in field order; calling it (a Python function) was most of the
 * cost of a packet here. For such a class make() allocates the instance and fills the slots directly; any
 * other class (no __slots__, a __post_init__, other fields, a custom __init__) is called as before.
 */
typedef struct {
    PyObject *type; /* strong reference; NULL = free entry */
    int n;          /* fields; -1 = call the class */
    Py_ssize_t off[8];
} SlotCls;

static SlotCls slot_cache[8];

static int slots_of(PyObject *cls, SlotCls *s) {
    s->n = -1;
    if (!PyType_Check(cls)) return 0;
    PyObject *fields = NULL, *params = NULL, *flag = NULL, *post = NULL;
    int ok = 0;
    if (!(fields = PyObject_GetAttrString(cls, "__dataclass_fields__")) || !PyDict_Check(fields)) goto done;
    if (!(params = PyObject_GetAttrString(cls, "__dataclass_params__"))) goto done;
    if (!(flag = PyObject_GetAttrString(params, "init")) || flag != Py_True) goto done;
    if (PyObject_HasAttrString(cls, "__post_init__")) goto done;
    /* the generated __init__ of this class, not an inherited or hand-written one */
    if (!(post = PyObject_GetAttrString(cls, "__init__")) || !PyFunction_Check(post)) goto done;
    PyObject *qn = ((PyFunctionObject *)post)->func_qualname, *want = PyUnicode_FromFormat(
        "%U.__init__", ((PyHeapTypeObject *)cls)->ht_qualname);
    if (!want) goto done;
    int same = PyUnicode_Check(qn) && PyUnicode_Compare(qn, want) == 0;
    Py_DECREF(want);
    if (!same || PyDict_GET_SIZE(fields) > 8) goto done;
    Py_ssize_t pos = 0, i = 0;
    PyObject *name, *fld;
    while (PyDict_Next(fields, &pos, &name, &fld)) {
        PyObject *d = PyObject_GetAttr(cls, name);
        if (!d) goto done;
        int good = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                   !(((PyMemberDescrObject *)d)->d_member->flags & READONLY) &&
                   ((PyMemberDescrObject *)d)->d_common.d_type == (PyTypeObject *)cls;
        if (good) s->off[i++] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!good) goto done;
        /* a field __init__ does not take (init=False) or a pseudo-field (ClassVar, InitVar) */
        PyObject *fi = PyObject_GetAttrString(fld, "init"), *ft = PyObject_GetAttrString(fld, "_field_type");
        PyObject *fname = ft ? PyObject_GetAttrString(ft, "name") : NULL;
        PyObject *kw = PyObject_GetAttrString(fld, "kw_only"); /* True: not positional */
        good = fi == Py_True && kw != Py_True && fname && PyUnicode_Check(fname) &&
               PyUnicode_CompareWithASCIIString(fname, "_FIELD") == 0;
        Py_XDECREF(kw);
        Py_XDECREF(fi);
        Py_XDECREF(ft);
        Py_XDECREF(fname);
        if (!good) goto done;
    }
    s->n = (int)i;
    ok = 1;
done:
    Py_XDECREF(fields);
    Py_XDECREF(params);
    Py_XDECREF(flag);
    Py_XDECREF(post);
    if (!ok) s->n = -1;
    PyErr_Clear();
    return 0;
}

/* cls(*args) (args borrowed), for the classes above without running __init__ */
static PyObject *make(PyObject *cls, PyObject *const *args, int n) {
    SlotCls *s = NULL;
    for (int k = 0; k < 8; k++) {
        if (slot_cache[k].type == cls) {
            s = &slot_cache[k];
            break;
        }
        if (!slot_cache[k].type) {
            /* worked out aside and published whole: another thread may get the GIL meanwhile */
            SlotCls found = {NULL, -1, {0}};
            slots_of(cls, &found);
            if (slot_cache[k].type) break; /* taken meanwhile: call the class this time */
            found.type = Py_NewRef(cls);
            slot_cache[k] = found;
            s = &slot_cache[k];
            break;
        }
    }
    if (!s || s->n != n) return PyObject_Vectorcall(cls, args, (size_t)n, NULL);
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *o = tp->tp_alloc(tp, 0);
    if (!o) return NULL;
    for (int i = 0; i < n; i++) {
        Py_INCREF(args[i]);
        *(PyObject **)((char *)o + s->off[i]) = args[i];
    }
    return o;
}

/* events */

static PyObject *addr_bytes(const uint8_t *a, int n) { return PyBytes_FromStringAndSize((const char *)a, n); }

static int emit_record(Engine *e, Conn *c, int final) {
    PyObject *pl = PyList_New(c->npk), *cl = NULL, *t;
    if (!pl) return -1;
    for (int i = 0; i < c->npk; i++) {
        Pkt *p = &c->pk[i];
        PyObject *args[5];
        args[0] = PyFloat_FromDouble(p->dt);
        args[1] = p->is_orig ? Py_True : Py_False;
        Py_INCREF(args[1]);
        args[2] = PyLong_FromUnsignedLong(p->ip_len);
        args[3] = PyLong_FromUnsignedLong(p->plen);
        args[4] = PyLong_FromLong(p->flags);
        PyObject *o = NULL;
        if (args[0] && args[2] && args[3] && args[4]) o = make(e->packet_cls, args, 5);
        for (int j = 0; j < 5; j++) Py_XDECREF(args[j]);
        if (!o) goto fail;
        PyList_SET_ITEM(pl, i, o);
    }
    cl = PyList_New(c->npay);
    if (!cl) goto fail;
    for (int i = 0; i < c->npay; i++) {
        PyObject *args[2];
        args[0] = c->payorig[i] ? Py_True : Py_False;
        Py_INCREF(args[0]);
        args[1] = PyBytes_FromStringAndSize((const char *)c->pay + (size_t)i * e->pay_stride, c->paylen[i]);
        PyObject *o = args[1] ? make(e->chunk_cls, args, 2) : NULL;
        Py_DECREF(args[0]);
        Py_XDECREF(args[1]);
        if (!o) goto fail;
        PyList_SET_ITEM(cl, i, o);
    }
    t = Py_BuildValue("(iKiidNiNiNNLi)", 0, (unsigned long long)c->ordinal, final, c->tcp, c->ts0,
                      addr_bytes(c->oh, c->alen), c->op, addr_bytes(c->rh, c->alen), c->rp, pl, cl, e->gi, e->phase);
    pl = cl = NULL; /* stolen (also on failure) */
    if (!t) return -1;
    int r = PyList_Append(e->events, t);
    Py_DECREF(t);
    return r;
fail:
    Py_XDECREF(pl);
    Py_XDECREF(cl);
    return -1;
}

static long long tcp_size(const Conn *c, int orig) {
    int state, prev, peer;
    uint32_t start, last, ack;
    long long fin;
    if (orig) {
        state = c->o_state; start = c->o_start; last = c->o_last; ack = c->o_ack; fin = c->o_fin;
        prev = c->o_prev; peer = c->r_state;
    } else {
        state = c->r_state; start = c->r_start; last = c->r_last; ack = c->r_ack; fin = c->r_fin;
        prev = c->r_prev; peer = c->o_state;
    }
    if (state == INACTIVE) return 0;
    if (prev == SYN_SENT && state == RESET && peer == INACTIVE) return 0;
    long long a = seq_delta(last, start), b = seq_delta(ack, start);
    long long size = a > b ? a : b;
    if (size > 0) size -= 1;
    if (fin && size > 0) size -= 1;
    return size > 0 ? size : 0;
}

static const char *conn_state(const Conn *c) {
    int os_ = c->o_state, rs = c->r_state;
    if (os_ == INACTIVE) {
        if (rs == INACTIVE) return "OTH";
        return (rs == SYN_SENT || rs == SYN_ACK_SENT) ? "SHR" : (rs != RESET ? "OTH" : "RSTRH");
    }
    if (rs == INACTIVE) {
        if (os_ == SYN_SENT) return "S0";
        if (os_ == RESET) return (hist_has(c, 'S') || hist_has(c, 'H')) ? "RSTOS0" : "OTH";
        if (os_ == CLOSED) return "SH";
        return "OTH";
    }
    if (os_ == RESET) {
        if ((rs == SYN_SENT || rs == SYN_ACK_SENT) && !hist_has(c, 'h')) return "RSTOS0";
        return "RSTO";
    }
    if (rs == RESET) {
        if (os_ == SYN_SENT) return "REJ";
        return "RSTR";
    }
    if (os_ == CLOSED && rs == CLOSED) return "SF";
    if (os_ == CLOSED) return "S2";
    if (rs == CLOSED) return "S3";
    if ((os_ == SYN_SENT && rs == SYN_ACK_SENT) || (rs == ESTABLISHED && os_ == ESTABLISHED)) return "S1";
    return "OTH";
}

static int emit_summary(Engine *e, Conn *c) {
    long long ob, rb;
    const char *state;
    if (c->tcp) {
        ob = tcp_size(c, 1);
        rb = tcp_size(c, 0);
        state = conn_state(c);
    } else {
        ob = c->o_pl;
        rb = c->r_pl;
        state = (c->o_pkts && c->r_pkts) ? "SF" : c->o_pkts ? "S0" : c->r_pkts ? "SHR" : "OTH";
    }
    double dur = c->last - c->ts0;
    if (!(dur > 0.0)) dur = 0.0; /* max(0.0, x) */
    PyObject *t = Py_BuildValue("(iKdNiNiidLLss#LLLLLi)", 1, (unsigned long long)c->ordinal, c->ts0,
                                addr_bytes(c->oh, c->alen), c->op, addr_bytes(c->rh, c->alen), c->rp, c->tcp, dur,
                                ob, rb, state, c->hist ? c->hist : "", (Py_ssize_t)c->hist_len, c->o_pkts,
                                c->o_ipb, c->r_pkts, c->r_ipb, e->gi, e->phase);
    if (!t) return -1;
    int r = PyList_Append(e->events, t);
    Py_DECREF(t);
    return r;
}

/* _Tracker._finish: unlink, final record, summary, free */
static int finish(Engine *e, Conn *c) {
    tab_del_if(e, c->keys[0], c->klen, c);
    tab_del_if(e, c->keys[1], c->klen, c);
    if (c->prev) c->prev->next = c->next; else e->head = c->next;
    if (c->next) c->next->prev = c->prev; else e->tail = c->prev;
    int r = 0;
    if (!c->emitted) {
        if (c->npk) r = emit_record(e, c, 1);
        c->emitted = 1;
    }
    if (r == 0 && e->want_summaries) r = emit_summary(e, c);
    conn_free(c);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* connection lifecycle (capture/ _Tracker) */

static Conn *new_conn(Engine *e, const uint8_t *key, const uint8_t *rkey, int klen, int tcp, double ts,
                      const uint8_t *src, int sp, const uint8_t *dst, int dp, int alen, int flip) {
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (!c) return NULL;
    c->pk = PyMem_Malloc(sizeof(Pkt) * (size_t)e->n_packets);
    if (!c->pk) {
        PyMem_Free(c);
        return NULL;
    }
    e->ordinal++;
    e->s_flows++;
    c->ordinal = e->shard_n ? (uint64_t)e->gi : e->ordinal;
    if (e->shard_n) {
        PyObject *t = Py_BuildValue("(iKLi)", 2, (unsigned long long)c->ordinal, e->gi, e->phase);
        if (!t || PyList_Append(e->events, t) < 0) {
            Py_XDECREF(t);
            PyMem_Free(c->pk);
            PyMem_Free(c);
            return NULL;
        }
        Py_DECREF(t);
    }
    c->tcp = tcp;
    c->ts0 = c->last = c->pkt_t = ts;
    memcpy(c->keys[0], key, klen);
    memcpy(c->keys[1], rkey, klen);
    c->klen = klen;
    c->alen = alen;
    if (flip) {
        c->okey = 1;
        memcpy(c->oh, dst, alen); c->op = dp;
        memcpy(c->rh, src, alen); c->rp = sp;
    } else {
        c->okey = 0;
        memcpy(c->oh, src, alen); c->op = sp;
        memcpy(c->rh, dst, alen); c->rp = dp;
    }
    c->o_state = c->r_state = c->o_prev = c->r_prev = INACTIVE;
    c->active = 1;
    c->attempt_at = NONE;
    c->expire_at = tcp ? ts + TCP_SYN_TIMEOUT : NONE;
    c->delete_at = NONE;
    c->timeout = tcp ? TCP_INACTIVITY : UDP_INACTIVITY;
    if (tab_put(e, key, klen, c) < 0 || tab_put(e, rkey, klen, c) < 0) {
        tab_del_if(e, key, klen, c);
        tab_del_if(e, rkey, klen, c);
        conn_free(c);
        PyErr_NoMemory();
        return NULL;
    }
    c->prev = e->tail;
    c->next = NULL;
    if (e->tail) e->tail->next = c; else e->head = c;
    e->tail = c;
    return c;
}

static int due(Conn *c, double t) {
    if (!IS_NONE(c->delete_at) && c->delete_at <= t) return 1;
    if (c->last + c->timeout <= t) return 1;
    if (!c->tcp) return 0;
    if (!IS_NONE(c->attempt_at) && c->attempt_at <= t) {
        c->attempt_at = NONE;
        if (c->active && (c->o_state == SYN_SENT || c->o_state == SYN_ACK_SENT) && c->r_state == INACTIVE) return 1;
    }
    double f = c->expire_at;
    if (!IS_NONE(f) && f <= t && c->active) {
        int over = 0;
        if (c->o_closed || c->r_closed) {
            if ((c->o_closed && c->r_closed) || c->o_state == RESET || c->r_state == RESET ||
                c->o_state == INACTIVE || c->r_state == INACTIVE)
                over = 1;
        }
        if (c->o_state == INACTIVE && c->r_state == INACTIVE) over = 1;
        double per = TCP_SESSION_TIMER;
        if (over) {
            double lim = c->last + TCP_CONNECTION_LINGER;
            if (f <= lim) {
                f += per * (double)((long long)((lim - f) / per) + 1);
                while (f <= lim) f += per;
            }
            if (f <= t) return 1;
        }
        if (f <= t) f += per * (double)((long long)((t - f) / per) + 1);
        c->expire_at = f;
    }
    return 0;
}

static int sweep(Engine *e, double t) {
    Conn *c = e->head;
    while (c) {
        Conn *nx = c->next;
        if (due(c, t) && finish(e, c) < 0) return -1;
        c = nx;
    }
    return 0;
}

static void setst(Conn *c, int orig, int s) {
    if (orig) { c->o_prev = c->o_state; c->o_state = s; }
    else { c->r_prev = c->r_state; c->r_state = s; }
}

static int hist(Conn *c, int orig, unsigned bit, char code) {
    if (orig) {
        if (!(c->hist_o & bit)) { c->hist_o |= bit; return hist_add(c, code); }
    } else if (!(c->hist_r & bit)) {
        c->hist_r |= bit;
        return hist_add(c, (char)(code >= 'A' && code <= 'Z' ? code + 32 : code));
    }
    return 0;
}

static void set3(Conn *c, int orig, int hs, uint32_t start, int hl, uint32_t last, int ha, uint32_t ack) {
    if (orig) {
        if (hs) c->o_start = start;
        if (hl) c->o_last = last;
        if (ha) c->o_ack = ack;
    } else {
        if (hs) c->r_start = start;
        if (hl) c->r_last = last;
        if (ha) c->r_ack = ack;
    }
}

#define SWAP(T, a, b) do { T _t = (a); (a) = (b); (b) = _t; } while (0)

static int flip_conn(Conn *c) {
    c->okey = 1 - c->okey;
    uint8_t tmp[16];
    memcpy(tmp, c->oh, 16); memcpy(c->oh, c->rh, 16); memcpy(c->rh, tmp, 16);
    SWAP(int, c->op, c->rp);
    SWAP(long long, c->o_pkts, c->r_pkts);
    SWAP(long long, c->o_ipb, c->r_ipb);
    SWAP(long long, c->o_pl, c->r_pl);
    SWAP(int, c->o_state, c->r_state);
    SWAP(int, c->o_prev, c->r_prev);
    SWAP(uint32_t, c->o_start, c->r_start);
    SWAP(uint32_t, c->o_last, c->r_last);
    SWAP(uint32_t, c->o_ack, c->r_ack);
    SWAP(long long, c->o_fin, c->r_fin);
    SWAP(int, c->o_closed, c->r_closed);
    SWAP(int, c->o_seen, c->r_seen);
    SWAP(unsigned, c->hist_o, c->hist_r);
    if (hist_add(c, '^') < 0) return -1;
    if (!c->emitted) {
        for (int i = 0; i < c->npk; i++) c->pk[i].is_orig = !c->pk[i].is_orig;
        for (int i = 0; i < c->npay; i++) c->payorig[i] = !c->payorig[i];
    }
    return 0;
}

static void closed(Conn *c, int orig) {
    int state, peer_closed, peer, prev;
    if (orig) {
        if (c->o_closed) return;
        c->o_closed = 1;
        state = c->o_state; peer_closed = c->r_closed; peer = c->r_state; prev = c->o_prev;
    } else {
        if (c->r_closed) return;
        c->r_closed = 1;
        state = c->r_state; peer_closed = c->o_closed; peer = c->o_state; prev = c->r_prev;
    }
    if (state == RESET || peer_closed || peer == INACTIVE) {
        if (prev != INACTIVE || peer != INACTIVE) c->active = 0;
        c->attempt_at = NONE;
        c->expire_at = NONE;
        c->delete_at = c->last + TCP_CLOSE_DELAY;
    } else if (prev != INACTIVE) {
        double nf = c->last + TCP_SESSION_TIMER;
        if (IS_NONE(c->expire_at) || nf < c->expire_at) c->expire_at = nf;
    }
    if (state == RESET) c->active = 0;
}

static int state_machine(Conn *c, int is_orig, double ts, int flags, uint32_t seq, int plen) {
    int syn = flags & F_SYN, fin = flags & F_FIN, rst = flags & F_RST, ackf = flags & F_ACK;
    int state = is_orig ? c->o_state : c->r_state;
    int peer = is_orig ? c->r_state : c->o_state;
    int do_close = 0;
    if (state == INACTIVE) {
        if (syn) {
            if (is_orig) {
                setst(c, 1, ackf ? SYN_ACK_SENT : SYN_SENT);
                if (IS_NONE(c->attempt_at)) c->attempt_at = ts + TCP_ATTEMPT_DELAY;
            } else {
                if (ackf) {
                } else if (peer == SYN_ACK_SENT && seq == c->r_start) {
                    if (flip_conn(c) < 0) return -1;
                    is_orig = 1;
                    setst(c, 0, ESTABLISHED);
                    c->r_seen = 1;
                    peer = c->r_state;
                }
                if (peer == SYN_SENT) setst(c, !is_orig, ESTABLISHED);
                setst(c, is_orig, ESTABLISHED);
            }
        }
        if (fin) { setst(c, is_orig, CLOSED); do_close = 1; }
        if (rst) { setst(c, is_orig, RESET); do_close = 1; }
        if ((is_orig ? c->o_state : c->r_state) == INACTIVE) {
            if (!is_orig && plen == 0 && c->o_state == SYN_SENT) {
            } else if (ackf && peer == ESTABLISHED) {
                setst(c, is_orig, ESTABLISHED);
            } else {
                setst(c, is_orig, PARTIAL);
            }
        }
    } else if (state == SYN_SENT || state == SYN_ACK_SENT) {
        if (fin) { setst(c, is_orig, CLOSED); do_close = 1; }
        if (rst) { setst(c, is_orig, RESET); do_close = 1; }
    } else if (state == ESTABLISHED || state == PARTIAL) {
        if (syn && state == PARTIAL && peer == INACTIVE && !ackf) setst(c, is_orig, SYN_SENT);
        if (fin && !rst) {
            setst(c, is_orig, CLOSED);
            int pprev = is_orig ? c->r_prev : c->o_prev;
            if (peer == RESET && pprev == CLOSED) setst(c, !is_orig, CLOSED);
            do_close = 1;
        }
        if (rst) { setst(c, is_orig, RESET); do_close = 1; }
    } else if (state == CLOSED) {
        if (rst && peer != CLOSED) {
            setst(c, is_orig, RESET);
            if (!(is_orig ? c->o_closed : c->r_closed)) do_close = 1;
        }
    }
    if (do_close) closed(c, is_orig);
    return 0;
}

static int tcp_full(Conn *c, int is_orig, double ts, int flags, uint32_t seq, uint32_t ack, int plen) {
    int syn = flags & F_SYN, fin = flags & F_FIN, rst = flags & F_RST;
    long long seg = (long long)plen + (syn ? 1 : 0) + (fin ? 1 : 0) - (rst ? plen : 0);
    int state, prev, peer;
    if (is_orig) { state = c->o_state; prev = c->o_prev; peer = c->r_state; }
    else { state = c->r_state; prev = c->r_prev; peer = c->o_state; }
    uint32_t last_seq_new = (uint32_t)(seq + (uint32_t)seg);
    if (state == INACTIVE) {
        uint32_t start = syn ? seq : seq - 1;
        uint32_t lastv = syn ? last_seq_new : seq;
        set3(c, is_orig, 1, start, 1, lastv, 1, start);
    } else if (syn && (state == SYN_SENT || state == SYN_ACK_SENT || state == ESTABLISHED || state == PARTIAL)) {
        if (state == ESTABLISHED || state == PARTIAL || seq != (is_orig ? c->o_start : c->r_start))
            set3(c, is_orig, 1, seq, 1, last_seq_new, 1, seq);
    } else if (syn && state == RESET && prev == INACTIVE) {
        set3(c, is_orig, 1, seq, 1, last_seq_new, 1, seq);
    }
    int nbits = (syn ? 1 : 0) + (fin ? 1 : 0) + (rst ? 1 : 0);
    int r = 0;
    if (nbits > 1) {
        r = (fin && rst) ? hist(c, is_orig, 1u << 8, 'I') : hist(c, is_orig, 1u << 9, 'Q');
    } else if (nbits == 1) {
        if (syn) r = hist(c, is_orig, (flags & F_ACK) ? 1u << 2 : 1u << 1, (flags & F_ACK) ? 'H' : 'S');
        if (fin) r |= hist(c, is_orig, 1u << 3, 'F');
        if (rst) r |= hist(c, is_orig, 1u << 4, 'R');
    } else if (plen) {
        r = hist(c, is_orig, 1, 'D');
    } else if (flags & F_ACK) {
        r = hist(c, is_orig, 1u << 5, 'A');
    }
    if (r < 0) return -1;
    if (!(c->o_closed && c->r_closed)) c->last = ts;
    if (fin) {
        if (is_orig) c->o_fin++; else c->r_fin++;
    }
    if (flags & F_ACK) {
        if (peer == INACTIVE) {
            uint32_t v = ack - 1;
            set3(c, !is_orig, 1, v, 1, v, 1, v);
        } else if (!rst) {
            uint32_t pa = is_orig ? c->r_ack : c->o_ack;
            long long d = seq_delta(ack, pa);
            if (d > 0 && !(ack == 0 && d > 1048576)) {
                if (is_orig) c->r_ack = ack; else c->o_ack = ack;
            }
        }
    }
    uint32_t cur_last = is_orig ? c->o_last : c->r_last;
    long long dl = seq_delta(last_seq_new, cur_last);
    int cur_state = is_orig ? c->o_state : c->r_state;
    uint32_t cur_start = is_orig ? c->o_start : c->r_start;
    if ((syn || rst) && (dl > 1048576 || dl < -1048576)) {
    } else if (fin && cur_last == (uint32_t)(cur_start + 1)) {
        set3(c, is_orig, 0, 0, 1, last_seq_new, 0, 0);
    } else if (cur_state == RESET) {
    } else if (dl > 0) {
        set3(c, is_orig, 0, 0, 1, last_seq_new, 0, 0);
    }
    if ((flags & CLOSE_FLAGS) || state == INACTIVE) return state_machine(c, is_orig, ts, flags, seq, plen);
    return 0;
}

static int tcp_plain(Conn *c, int is_orig, double ts, int flags, uint32_t seq, uint32_t ack, int plen) {
    unsigned bit = 0;
    char code = 0;
    if (plen) { bit = 1; code = 'D'; }
    else if (flags & F_ACK) { bit = 32; code = 'A'; }
    if (bit && hist(c, is_orig, bit, code) < 0) return -1;
    if (!(c->o_closed && c->r_closed)) c->last = ts;
    if (flags & F_ACK) {
        if (is_orig) {
            if (c->r_state == INACTIVE) c->r_start = c->r_last = c->r_ack = ack - 1;
            else {
                uint32_t d = ack - c->r_ack;
                if (0 < d && d < 0x80000000u && !(ack == 0 && d > 1048576)) c->r_ack = ack;
            }
        } else {
            if (c->o_state == INACTIVE) c->o_start = c->o_last = c->o_ack = ack - 1;
            else {
                uint32_t d = ack - c->o_ack;
                if (0 < d && d < 0x80000000u && !(ack == 0 && d > 1048576)) c->o_ack = ack;
            }
        }
    }
    uint32_t last_seq_new = seq + (uint32_t)plen;
    if (is_orig) {
        if (c->o_state != RESET) {
            uint32_t d = last_seq_new - c->o_last;
            if (0 < d && d < 0x80000000u) c->o_last = last_seq_new;
        }
    } else if (c->r_state != RESET) {
        uint32_t d = last_seq_new - c->r_last;
        if (0 < d && d < 0x80000000u) c->r_last = last_seq_new;
    }
    return 0;
}

static int is_reuse(const Conn *c, int flags, uint32_t seq) {
    int o_state = c->o_state;
    uint32_t o_start = c->o_start;
    if (flags & F_ACK) {
        if (c->o_state != INACTIVE) return 0;
        o_state = c->r_state;
        o_start = c->r_start;
    }
    if (!(c->o_closed || c->r_closed)) {
        if (seq == o_start) return 0;
        if (!(flags & F_ACK) && o_state == SYN_ACK_SENT && c->r_state == INACTIVE && seq == c->r_start) return 0;
    }
    return 1;
}

static int bad_checksum(Engine *e, Conn *c, int is_orig, double ts) {
    e->s_bad_checksums++;
    unsigned bit = 1u << 10;
    int r = 0;
    if (is_orig) {
        if (!(c->hist_o & bit)) { c->hist_o |= bit; r = hist_add(c, 'C'); }
    } else if (!(c->hist_r & bit)) {
        c->hist_r |= bit;
        r = hist_add(c, 'c');
    }
    c->pkt_t = ts;
    return r;
}

static int collect(Engine *e, Conn *c, double ts, int is_orig, uint32_t ip_len, const uint8_t *pay, size_t avail,
                   int plen, int flags) {
    if (c->npk >= e->n_packets) return 0;
    Pkt *p = &c->pk[c->npk++];
    double dt = ts - c->ts0;
    p->dt = dt > 0.0 ? dt : 0.0; /* max(0.0, dt): 0.0 also for -0.0 and NaN-free input */
    p->is_orig = (uint8_t)is_orig;
    p->ip_len = ip_len;
    p->plen = (uint32_t)plen;
    p->flags = (uint8_t)flags;
    if (plen > 0 && c->npay < e->pay_packets) {
        if (!c->pay) {
            c->pay = PyMem_Malloc((size_t)e->pay_packets * (size_t)(e->pay_stride ? e->pay_stride : 1));
            c->paylen = PyMem_Malloc(sizeof(int) * (size_t)e->pay_packets);
            c->payorig = PyMem_Malloc((size_t)e->pay_packets);
            if (!c->pay || !c->paylen || !c->payorig) {
                PyErr_NoMemory();
                return -1;
            }
        }
        size_t lim = (size_t)e->pay_bytes;
        /* flows.chunk_length: a chunk that starts a TLS ClientHello/ServerHello (tls.hello_end) keeps it whole,
         * up to H */
        if (e->hello_bytes > e->pay_bytes && avail >= 9 && pay[0] == 0x16 && pay[1] == 0x03 &&
            (pay[5] == 1 || pay[5] == 2)) {
            size_t end = 9 + (((size_t)pay[6] << 16) | ((size_t)pay[7] << 8) | pay[8]);
            if (end > (size_t)e->hello_bytes) end = (size_t)e->hello_bytes;
            if (end > lim) lim = end;
        }
        size_t n = avail < lim ? avail : lim;
        if (n) memcpy(c->pay + (size_t)c->npay * e->pay_stride, pay, n);
        c->paylen[c->npay] = (int)n;
        c->payorig[c->npay] = (uint8_t)is_orig;
        c->npay++;
    }
    if (c->npk >= e->n_packets) {
        c->emitted = 1;
        return emit_record(e, c, 0);
    }
    return 0;
}

/* capture.shard.shard_owner(...) == me for a packet (sharded reading only; _Tracker._mine) */
static int mine(const Engine *e, int proto, const uint8_t *src, const uint8_t *dst, int alen, const uint8_t *buf,
                size_t t, size_t cap_end) {
    uint32_t h;
    int lt = memcmp(src, dst, alen) < 0;
    if ((proto == 6 || proto == 17) && cap_end >= t + 4) {
        int sp = be16(buf + t), dp = be16(buf + t + 2);
        const uint8_t *lsp = proto == 6 ? e->lsp_tcp : e->lsp_udp;
        int s = private_addr(src, alen);
        if (s != private_addr(dst, alen)) {
            h = crc32_2(s ? src : dst, alen, NULL, 0);
        } else {
            int ls = (lsp[sp >> 3] >> (sp & 7)) & 1, ld = (lsp[dp >> 3] >> (dp & 7)) & 1;
            if (ls != ld) h = crc32_2(ls ? dst : src, alen, NULL, 0);
            else if (sp != dp) h = crc32_2(sp > dp ? src : dst, alen, NULL, 0);
            else h = crc32_2(lt ? src : dst, alen, NULL, 0);
        }
    } else {
        h = lt ? crc32_2(src, alen, dst, alen) : crc32_2(dst, alen, src, alen);
    }
    return (int)(h % (uint32_t)e->shard_n) == e->shard_me;
}

/* _Tracker.transport: buf[t:cap_end] captured transport bytes, ip_end = end per the IP header */
static int transport(Engine *e, double ts, const uint8_t *buf, size_t t, size_t cap_end, size_t ip_end, int proto,
                     const uint8_t *src, const uint8_t *dst, int alen, uint32_t ip_len, int ver) {
    size_t seg_len = ip_end - t;
    int sp, dp, flags = 0, hl;
    uint32_t seq = 0, ack = 0;
    long long plen;
    if (proto == 6) {
        if (cap_end < t + 20 || seg_len < 20) { e->s_malformed++; return 0; }
        sp = be16(buf + t); dp = be16(buf + t + 2);
        seq = be32(buf + t + 4); ack = be32(buf + t + 8);
        hl = (buf[t + 12] >> 4) << 2;
        flags = buf[t + 13];
        plen = (long long)seg_len - hl;
    } else {
        if (cap_end < t + 8 || seg_len < 8) { e->s_malformed++; return 0; }
        sp = be16(buf + t); dp = be16(buf + t + 2);
        int ulen = be16(buf + t + 4);
        if (ulen < 8) { e->s_malformed++; return 0; }
        hl = 8;
        plen = (long long)seg_len - 8;
    }
    uint8_t key[KEYMAX], rkey[KEYMAX];
    int klen = 2 * alen + 5;
    memcpy(key, src, alen); memcpy(key + alen, dst, alen); memcpy(key + 2 * alen, buf + t, 4);
    key[klen - 1] = proto == 6 ? 't' : 'u';
    uint64_t h = hkey(key, klen);
    Conn *c = tab_get(e, key, klen, h);
    if (c) {
        int d;
        if (IS_NONE(c->delete_at) && IS_NONE(c->attempt_at) && c->last + c->timeout > ts &&
            (IS_NONE(c->expire_at) || c->expire_at > ts))
            d = 0;
        else
            d = due(c, ts);
        if (d || (proto == 6 && (flags & F_SYN) && is_reuse(c, flags, seq))) {
            if (finish(e, c) < 0) return -1;
            c = NULL;
        }
    }
    if (!c) {
        memcpy(rkey, dst, alen); memcpy(rkey + alen, src, alen);
        rkey[2 * alen] = buf[t + 2]; rkey[2 * alen + 1] = buf[t + 3];
        rkey[2 * alen + 2] = buf[t]; rkey[2 * alen + 3] = buf[t + 1];
        rkey[klen - 1] = key[klen - 1];
        int flip = 0;
        if (proto == 6) {
            if (!(flags & F_SYN) || (flags & F_ACK)) {
                if (e->lsp_tcp[sp >> 3] & (1 << (sp & 7)))
                    flip = (e->lsp_tcp[dp >> 3] & (1 << (dp & 7))) ? (!(flags & F_SYN) && sp < dp) : 1;
            }
        } else {
            flip = (e->lsp_udp[sp >> 3] & (1 << (sp & 7))) && !(e->lsp_udp[dp >> 3] & (1 << (dp & 7)));
        }
        c = new_conn(e, key, rkey, klen, proto == 6, ts, src, sp, dst, dp, alen, flip);
        if (!c) return -1;
    }
    int is_orig = memcmp(key, c->keys[c->okey], klen) == 0;
    if (proto == 6 && (hl < 20 || (size_t)hl > seg_len || t + hl > cap_end)) {
        e->s_malformed++;
        c->pkt_t = ts;
        return 0;
    }
    if (e->checksums && cap_end >= ip_end) {
        if (ver == 4 && proto == 17 && be16(buf + t + 6) == 0) {
        } else {
            uint64_t s = wsum(buf + t, seg_len) + wsum(src, alen) + wsum(dst, alen) + (uint64_t)proto + seg_len;
            if (s % 65535 || (ver == 6 && proto == 17 && be16(buf + t + 6) == 0))
                return bad_checksum(e, c, is_orig, ts);
        }
    }
    if (proto == 6) {
        int r;
        if ((flags & CLOSE_FLAGS) || (is_orig ? c->o_state : c->r_state) == INACTIVE)
            r = tcp_full(c, is_orig, ts, flags, seq, ack, (int)plen);
        else
            r = tcp_plain(c, is_orig, ts, flags, seq, ack, (int)plen);
        if (r < 0) return -1;
    } else {
        c->last = ts;
        if (is_orig) {
            if (!(c->hist_o & 1)) { c->hist_o |= 1; if (hist_add(c, 'D') < 0) return -1; }
            c->o_pl += plen;
        } else {
            if (!(c->hist_r & 1)) { c->hist_r |= 1; if (hist_add(c, 'd') < 0) return -1; }
            c->r_pl += plen;
        }
    }
    c->pkt_t = ts;
    if (is_orig) { c->o_pkts++; c->o_ipb += ip_len; }
    else { c->r_pkts++; c->r_ipb += ip_len; }
    if (!c->emitted) {
        size_t pstart = t + hl, pe = cap_end < ip_end ? cap_end : ip_end;
        size_t avail = (plen && pe > pstart) ? pe - pstart : 0;
        int o2 = memcmp(key, c->keys[c->okey], klen) == 0;
        return collect(e, c, ts, o2, ip_len, buf + pstart, avail, (int)plen, flags);
    }
    return 0;
}

/* fragments go back to capture/'s reassembly; the engine records the pending one and returns */
static int frag4(Engine *e, double ts, const uint8_t *buf, size_t o, size_t end, int ihl, int tot, size_t cap_end,
                 int ident, int frag, int proto) {
    e->frag = Py_BuildValue("(idy#iiniiiy#y#)", 4, ts, buf + o, (Py_ssize_t)(end - o), ihl, tot,
                            (Py_ssize_t)(cap_end - o), ident, frag, proto, buf + o + 12, (Py_ssize_t)4,
                            buf + o + 16, (Py_ssize_t)4);
    return e->frag ? 1 : -1;
}

/* _Tracker.ip4; returns 1 when a fragment is pending for Python */
static int ip4(Engine *e, double ts, const uint8_t *buf, size_t o, size_t end, int reassembled) {
    if (end < o + 20) { e->malformed++; return 0; }
    int vhl = buf[o], tot = be16(buf + o + 2), ident = be16(buf + o + 4), frag = be16(buf + o + 6), proto = buf[o + 9];
    int ihl = (vhl & 15) << 2;
    if ((vhl >> 4) != 4 || ihl < 20 || tot < ihl || end < o + ihl) { e->malformed++; return 0; }
    size_t ip_end = o + tot;
    size_t cap_end = ip_end > end ? end : ip_end;
    if (frag & 0x3FFF) {
        if (e->checksums && !reassembled && wsum(buf + o, ihl) % 65535 != 0) { e->bad_checksums++; return 0; }
        e->fragments++;
        return frag4(e, ts, buf, o, end, ihl, tot, cap_end, ident, frag, proto);
    }
    size_t t = o + ihl;
    if (e->shard_n && !mine(e, proto, buf + o + 12, buf + o + 16, 4, buf, t, cap_end)) return 0;
    if (e->checksums && !reassembled && wsum(buf + o, ihl) % 65535 != 0) { e->s_bad_checksums++; return 0; }
    if (proto == 6 || proto == 17)
        return transport(e, ts, buf, t, cap_end, ip_end, proto, buf + o + 12, buf + o + 16, 4, (uint32_t)tot, 4);
    e->s_non_tcp_udp++;
    return 0;
}

static int ip6(Engine *e, double ts, const uint8_t *buf, size_t o, size_t end) {
    if (end < o + 40) { e->malformed++; return 0; }
    if ((buf[o] >> 4) != 6) { e->malformed++; return 0; }
    int plen = be16(buf + o + 4), nxt = buf[o + 6];
    const uint8_t *src = buf + o + 8, *dst = buf + o + 24;
    size_t ip_end = o + 40 + plen;
    size_t cap_end = ip_end <= end ? ip_end : end;
    size_t p = o + 40;
    for (int i = 0; i < 16; i++) {
        if (nxt == 6 || nxt == 17) {
            if (e->shard_n && !mine(e, nxt, src, dst, 16, buf, p, cap_end)) return 0;
            return transport(e, ts, buf, p, cap_end, ip_end, nxt, src, dst, 16, (uint32_t)(plen + 40), 6);
        }
        if (nxt == 0 || nxt == 43 || nxt == 60 || nxt == 135 || nxt == 139 || nxt == 140 || nxt == 253 || nxt == 254) {
            if (p + 2 > cap_end) { e->malformed++; return 0; }
            int nn = buf[p];
            p += (size_t)(buf[p + 1] + 1) << 3;
            nxt = nn;
        } else if (nxt == 51) {
            if (p + 2 > cap_end) { e->malformed++; return 0; }
            int nn = buf[p];
            p += (size_t)(buf[p + 1] + 2) << 2;
            nxt = nn;
        } else if (nxt == 44) {
            if (p + 8 > cap_end) { e->malformed++; return 0; }
            e->fragments++;
            int nn = buf[p];
            int fo = be16(buf + p + 2);
            uint32_t ident = be32(buf + p + 4);
            int off = fo & 0xFFF8, more = fo & 1;
            if (off == 0 && !more) {
                nxt = nn;
                p += 8;
                continue;
            }
            if (cap_end < ip_end) { e->malformed++; return 0; }
            e->frag = Py_BuildValue("(idy#y#y#iIiiy#)", 6, ts, buf + o, (Py_ssize_t)(p - o), src, (Py_ssize_t)16,
                                    dst, (Py_ssize_t)16, nn, (unsigned int)ident, off, more, buf + p + 8,
                                    (Py_ssize_t)(ip_end - (p + 8)));
            return e->frag ? 1 : -1;
        } else {
            if (!e->shard_n || mine(e, nxt, src, dst, 16, buf, p, cap_end)) e->s_non_tcp_udp++;
            return 0;
        }
        if (p > cap_end) { e->malformed++; return 0; }
    }
    e->malformed++;
    return 0;
}

/* capture/ _dispatch for LT_EN10MB */
static int ether(Engine *e, double ts, const uint8_t *buf, size_t o, size_t end) {
    if (end < o + 14) { e->malformed++; return 0; }
    int et = (buf[o + 12] << 8) | buf[o + 13];
    if (et == 0x8903) {
        if (end < o + 30) { e->malformed++; return 0; }
        o += 16;
        et = (buf[o + 12] << 8) | buf[o + 13];
    }
    o += 14;
    for (;;) {
        if (et == 0x0800) return ip4(e, ts, buf, o, end, 0);
        if (et == 0x86DD) return ip6(e, ts, buf, o, end);
        if (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200) {
            if (end < o + 4) { e->malformed++; return 0; }
            et = (buf[o + 2] << 8) | buf[o + 3];
            o += 4;
            continue;
        }
        if (et == 0x8847 || et == 0x8848) {
            for (;;) {
                if (end < o + 4) { e->malformed++; return 0; }
                int bos = buf[o + 2] & 1;
                o += 4;
                if (bos) break;
            }
            if (o >= end) { e->malformed++; return 0; }
            int v = buf[o] >> 4;
            if (v == 4) return ip4(e, ts, buf, o, end, 0);
            if (v == 6) return ip6(e, ts, buf, o, end);
            e->non_ip++;
            return 0;
        }
        if (et == 0x8864) {
            if (end < o + 8) { e->malformed++; return 0; }
            int pp = (buf[o + 6] << 8) | buf[o + 7];
            o += 8;
            if (pp == 0x0021) et = 0x0800;
            else if (pp == 0x0057) et = 0x86DD;
            else { e->non_ip++; return 0; }
            continue;
        }
        if (et == 0x8926) {
            if (end < o + 6) { e->malformed++; return 0; }
            et = (buf[o + 4] << 8) | buf[o + 5];
            o += 6;
            continue;
        }
        if (et == 0x88E7) {
            if (end < o + 18) { e->malformed++; return 0; }
            et = (buf[o + 16] << 8) | buf[o + 17];
            o += 18;
            continue;
        }
        e->non_ip++;
        return 0;
    }
}

/* every link type of capture/ _dispatch (SUPPORTED_LINKTYPES): Ethernet, Linux cooked (SLL, SLL2), raw IP,
   BSD loopback (NULL, LOOP), PPP, 802.11 and radiotap */
static int link_supported(int lt) {
    return lt == 1 || lt == 113 || lt == 276 || lt == 101 || lt == 12 || lt == 14 || lt == 228 || lt == 229 ||
           lt == 0 || lt == 108 || lt == 9 || lt == 50 || lt == 105 || lt == 127;
}

static int link_layer(Engine *e, int lt, double ts, const uint8_t *buf, size_t o, size_t end) {
    if (lt == 1) return ether(e, ts, buf, o, end);
    if (lt == 113 || lt == 276) {
        size_t hl = lt == 113 ? 16 : 20;
        if (end < o + hl) { e->malformed++; return 0; }
        int et = lt == 113 ? (buf[o + 14] << 8) | buf[o + 15] : (buf[o] << 8) | buf[o + 1];
        o += hl;
        if (et == 0x0800) return ip4(e, ts, buf, o, end, 0);
        if (et == 0x86DD) return ip6(e, ts, buf, o, end);
        if (et == 0x8100 && end >= o + 4) {
            et = (buf[o + 2] << 8) | buf[o + 3];
            if (et == 0x0800) return ip4(e, ts, buf, o + 4, end, 0);
            if (et == 0x86DD) return ip6(e, ts, buf, o + 4, end);
        }
        e->non_ip++;
        return 0;
    }
    if (lt == 101 || lt == 12 || lt == 14 || lt == 228 || lt == 229) {
        if (end <= o) { e->malformed++; return 0; }
        int v = buf[o] >> 4;
        if (v == 4 && lt != 229) return ip4(e, ts, buf, o, end, 0);
        if (v == 6 && lt != 228) return ip6(e, ts, buf, o, end);
        e->non_ip++;
        return 0;
    }
    if (lt == 9 || lt == 50) { /* PPP: optional address/control (FF 03), then the protocol */
        if (end < o + 2) { e->malformed++; return 0; }
        if (buf[o] == 0xFF && end >= o + 4) o += 2;
        int pp = (buf[o] << 8) | buf[o + 1];
        o += 2;
        if (pp == 0x0021) return ip4(e, ts, buf, o, end, 0);
        if (pp == 0x0057) return ip6(e, ts, buf, o, end);
        e->non_ip++;
        return 0;
    }
    if (lt == 127 || lt == 105) { /* (radiotap +) 802.11 data frame, unprotected, LLC/SNAP */
        if (lt == 127) {
            if (end < o + 4) { e->malformed++; return 0; }
            o += (size_t)buf[o + 2] | ((size_t)buf[o + 3] << 8);
        }
        if (end < o + 24) { e->malformed++; return 0; }
        int fc0 = buf[o], fc1 = buf[o + 1];
        if (((fc0 >> 2) & 3) != 2 || (fc1 & 0x40)) { e->non_ip++; return 0; }
        size_t hl = (fc1 & 3) == 3 ? 30 : 24;
        if (fc0 & 0x80) {
            hl += 2;
            if (fc1 & 0x80) hl += 4;
        }
        o += hl;
        if (end < o + 8 || buf[o] != 0xAA || buf[o + 1] != 0xAA || buf[o + 2] != 3) { e->non_ip++; return 0; }
        int et = (buf[o + 6] << 8) | buf[o + 7];
        o += 8;
        if (et == 0x0800) return ip4(e, ts, buf, o, end, 0);
        if (et == 0x86DD) return ip6(e, ts, buf, o, end);
        e->non_ip++;
        return 0;
    }
    /* NULL (host byte order, written little-endian here) / LOOP (network byte order) */
    if (end < o + 4) { e->malformed++; return 0; }
    uint32_t le = (uint32_t)buf[o] | ((uint32_t)buf[o + 1] << 8) | ((uint32_t)buf[o + 2] << 16) | ((uint32_t)buf[o + 3] << 24);
    uint32_t be = be32(buf + o);
    uint32_t fam = lt == 108 ? be : le;
    if (fam > 0xFFFF) fam = lt != 108 ? be : le;
    o += 4;
    if (fam == 2) return ip4(e, ts, buf, o, end, 0);
    if (fam == 10 || fam == 24 || fam == 28 || fam == 30) return ip6(e, ts, buf, o, end);
    e->non_ip++;
    return 0;
}

static int post_packet(Engine *e, double ts) {
    if (!e->have_next_sweep) {
        e->have_next_sweep = 1;
        e->next_sweep = ts + 10.0;
    } else if (ts >= e->next_sweep) {
        e->phase = 1;
        int r = sweep(e, ts);
        e->phase = 0;
        if (r < 0) return -1;
        e->next_sweep = ts + 10.0;
    }
    return 0;
}

/* walk complete records; 0 = needs more data / stopped, 1 = fragment pending, -1 = error */
static inline uint16_t rd16(const Engine *e, const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return e->swap ? __builtin_bswap16(v) : v;
}

/* one captured packet of a pcapng file: capture/ _read_one's loop body */
static int ng_packet(Engine *e, int lt, double ts, size_t d, size_t end) {
    e->gi++;
    e->last_ts = ts;
    int r = link_layer(e, lt, ts, e->buf, d, end);
    if (r == 1) {
        e->pending = 1;
        e->pending_ts = ts;
        return 1;
    }
    if (r < 0) return -1;
    return post_packet(e, ts);
}

/* capture/ _iter_pcapng. scan_only: walk the blocks and note (scan_bad) anything this port does not do
   exactly as capture/ does: an interface of another link type, interface options past their block */
static int run_ng(Engine *e) {
    while (!e->stopped && e->len - e->pos >= 12) {
        const uint8_t *h = e->buf + e->pos;
        if (memcmp(h, "\x0a\x0d\x0d\x0a", 4) == 0) {
            if (memcmp(h + 8, "\x4d\x3c\x2b\x1a", 4) == 0) e->swap = 0;
            else if (memcmp(h + 8, "\x1a\x2b\x3c\x4d", 4) == 0) e->swap = 1;
            else {
                if (!e->ng_section) e->scan_bad = 1; /* capture/ raises PcapError: let it */
                e->truncated = 1;
                e->stopped = 1;
                return 0;
            }
            e->ng_section = 1;
            e->n_ifaces = 0;
        }
        if (!e->ng_section) {
            e->scan_bad = 1;
            e->stopped = 1;
            return 0;
        }
        uint32_t btype = rd32(e, h), blen = rd32(e, h + 4);
        if (blen < 12 || (blen & 3) || blen > (1u << 24)) {
            e->truncated = 1;
            e->malformed++;
            e->stopped = 1;
            return 0;
        }
        size_t end = e->pos + blen;
        if (end > e->len) return 0;
        size_t body = e->pos + 8, bend = end - 4;
        const uint8_t *b = e->buf + body;
        int r = 0;
        if (btype == 6 || btype == 2) {
            if (bend - body >= 20) {
                uint32_t iface, hi, lo, caplen;
                if (btype == 6) {
                    iface = rd32(e, b); hi = rd32(e, b + 4); lo = rd32(e, b + 8); caplen = rd32(e, b + 12);
                } else {
                    iface = rd16(e, b); hi = rd32(e, b + 4); lo = rd32(e, b + 8); caplen = rd32(e, b + 12);
                }
                size_t d = body + 20;
                e->packets++;
                if (iface < (uint32_t)e->n_ifaces && d + caplen <= bend) {
                    struct Iface *f = &e->ifaces[iface];
                    e->bytes += caplen;
                    double ts = (double)(((uint64_t)hi << 32) | lo) * f->scale + f->toff;
                    if (!e->scan_only) r = ng_packet(e, f->lt, ts, d, d + caplen);
                } else {
                    e->malformed++;
                }
            } else {
                e->malformed++;
            }
        } else if (btype == 3) {
            if (e->n_ifaces && bend - body >= 4) {
                uint32_t olen = rd32(e, b);
                struct Iface *f = &e->ifaces[0];
                size_t caplen = olen;
                if (bend - body - 4 < caplen) caplen = bend - body - 4;
                if ((f->snap ? f->snap : olen) < caplen) caplen = f->snap ? f->snap : olen;
                e->packets++;
                e->bytes += caplen;
                if (!e->scan_only) r = ng_packet(e, f->lt, e->last_ts, body + 4, body + 4 + caplen);
            } else {
                e->malformed++;
            }
        } else if (btype == 1) {
            if (bend - body >= 8) {
                struct Iface f = {1e-6, 0.0, rd32(e, b + 4), rd16(e, b)};
                size_t q = body + 8;
                while (q + 4 <= bend) {
                    int code = rd16(e, e->buf + q), olen = rd16(e, e->buf + q + 2);
                    if (code == 0) break;
                    size_t v = q + 4;
                    if ((code == 9 && olen >= 1 && v + 1 > bend) || (code == 14 && olen >= 8 && v + 8 > bend))
                        e->scan_bad = 1; /* capture/ would read the next block's bytes here */
                    else if (code == 9 && olen >= 1) {
                        int rr = e->buf[v];
                        f.scale = rr & 0x80 ? ldexp(1.0, -(rr & 0x7F)) : pow(10.0, -(double)rr);
                    } else if (code == 14 && olen >= 8) {
                        int64_t off;
                        memcpy(&off, e->buf + v, 8);
                        if (e->swap) off = (int64_t)__builtin_bswap64((uint64_t)off);
                        f.toff = (double)off;
                    }
                    q = v + (((size_t)olen + 3) & ~(size_t)3);
                }
                if (!link_supported(f.lt)) e->scan_bad = 1;
                if (e->n_ifaces == e->cap_ifaces) {
                    int nc = e->cap_ifaces ? 2 * e->cap_ifaces : 8;
                    struct Iface *ni = PyMem_Realloc(e->ifaces, sizeof(struct Iface) * (size_t)nc);
                    if (!ni) {
                        PyErr_NoMemory();
                        return -1;
                    }
                    e->ifaces = ni;
                    e->cap_ifaces = nc;
                }
                e->ifaces[e->n_ifaces++] = f;
            } else {
                e->malformed++;
            }
        }
        e->pos = end;
        if (r < 0) return -1;
        if (r == 1) return 1;
    }
    return 0;
}

static int run(Engine *e) {
    if (e->pending) {
        e->pending = 0;
        if (post_packet(e, e->pending_ts) < 0) return -1;
    }
    if (e->ng) return run_ng(e);
    while (!e->stopped && e->len - e->pos >= 16) {
        const uint8_t *h = e->buf + e->pos;
        uint32_t sec = rd32(e, h), frac = rd32(e, h + 4), incl = rd32(e, h + 8), orig = rd32(e, h + 12);
        (void)orig;
        if (incl > e->limit) {
            e->truncated = 1;
            e->malformed++;
            e->stopped = 1;
            return 0;
        }
        size_t end = e->pos + 16 + (size_t)incl;
        if (end > e->len) return 0;
        e->packets++;
        e->bytes += incl;
        e->gi++;
        double ts = (double)sec + (double)frac * e->scale;
        int r = link_layer(e, e->linktype, ts, e->buf, e->pos + 16, end);
        e->pos = end;
        if (r < 0) return -1;
        if (r == 1) {
            e->pending = 1;
            e->pending_ts = ts;
            return 1;
        }
        if (post_packet(e, ts) < 0) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Python interface */

static PyObject *take_events(Engine *e) {
    PyObject *ev = e->events;
    e->events = NULL;
    return ev;
}

static int begin(Engine *e) {
    if (e->events) {
        PyErr_SetString(PyExc_RuntimeError, "engine is busy");
        return -1;
    }
    e->events = PyList_New(0);
    return e->events ? 0 : -1;
}

static PyObject *finish_call(Engine *e, int r) {
    PyObject *ev = take_events(e);
    if (r < 0) {
        Py_XDECREF(ev);
        Py_CLEAR(e->frag);
        return NULL;
    }
    PyObject *fr = e->frag ? e->frag : Py_None;
    if (!e->frag) Py_INCREF(Py_None);
    e->frag = NULL;
    return Py_BuildValue("(NN)", ev, fr);
}

static PyObject *Engine_feed(Engine *e, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if (e->stopped) {
        PyBuffer_Release(&b);
        return Py_BuildValue("([]O)", Py_None);
    }
    size_t need = e->len - e->pos + (size_t)b.len;
    if (e->pos) {
        memmove(e->buf, e->buf + e->pos, e->len - e->pos);
        e->len -= e->pos;
        e->pos = 0;
    }
    if (need > e->cap) {
        size_t nc = e->cap ? e->cap : 1 << 20;
        while (nc < need) nc *= 2;
        uint8_t *nb = PyMem_Realloc(e->buf, nc);
        if (!nb) {
            PyBuffer_Release(&b);
            return PyErr_NoMemory();
        }
        e->buf = nb;
        e->cap = nc;
    }
    memcpy(e->buf + e->len, b.buf, b.len);
    e->len += b.len;
    PyBuffer_Release(&b);
    if (begin(e) < 0) return NULL;
    return finish_call(e, run(e));
}

static PyObject *Engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    /* end of file: flush every live connection in creation order; returns (events, leftover bytes) */
    if (begin(e) < 0) return NULL;
    int r = 0;
    if (e->pending) {
        e->pending = 0;
        r = post_packet(e, e->pending_ts);
    }
    e->phase = 2;
    while (r == 0 && e->head) r = finish(e, e->head);
    e->phase = 0;
    PyObject *ev = take_events(e);
    if (r < 0) {
        Py_XDECREF(ev);
        return NULL;
    }
    return Py_BuildValue("(Nn)", ev, (Py_ssize_t)(e->stopped ? 0 : e->len - e->pos));
}

static PyObject *Engine_inject(Engine *e, PyObject *args) {
    /* a reassembled packet: (4, ts, ip packet) or (6, ts, packet, transport offset, next header) */
    int ver, p = 0, nxt = 0;
    double ts;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "idy*|ii", &ver, &ts, &b, &p, &nxt)) return NULL;
    if (begin(e) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    const uint8_t *buf = b.buf;
    size_t n = (size_t)b.len;
    int r;
    if (ver == 4) {
        r = ip4(e, ts, buf, 0, n, 1);
    } else if (n < 40 || p < 40 || (size_t)p > n) {
        r = 0; /* not a reassembled IPv6 packet (callers pass capture/'s) */
    } else if (e->shard_n && !mine(e, nxt, buf + 8, buf + 24, 16, buf, (size_t)p, n)) {
        r = 0;
    } else if (nxt == 6 || nxt == 17) {
        r = transport(e, ts, buf, (size_t)p, n, n, nxt, buf + 8, buf + 24, 16, (uint32_t)n, 6);
    } else {
        e->s_non_tcp_udp++;
        r = 0;
    }
    PyBuffer_Release(&b);
    if (r == 1) { /* cannot happen: a reassembled packet has no fragment bits */
        Py_CLEAR(e->frag);
        r = 0;
    }
    PyObject *ev = take_events(e);
    if (r < 0) {
        Py_XDECREF(ev);
        return NULL;
    }
    return ev;
}

static PyObject *Engine_stats(Engine *e, PyObject *Py_UNUSED(ignored)) {
    /* shared: what every shard sees alike (read_shard's `stats`); shard: this shard's packets (`shard_stats`) */
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsLsLsisLsi}", "packets", e->packets, "bytes", e->bytes, "non_ip",
                         e->non_ip, "malformed", e->malformed, "fragments", e->fragments, "bad_checksums",
                         e->bad_checksums, "s_flows", e->s_flows, "s_malformed", e->s_malformed, "s_bad_checksums",
                         e->s_bad_checksums, "s_non_tcp_udp", e->s_non_tcp_udp, "truncated", e->truncated, "gi", e->gi,
                         "scan_ok", e->ng_section && !e->scan_bad);
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"header", "packets", "payload_bytes", "payload_packets", "checksums", "summaries",
                             "lsp_tcp", "lsp_udp", "packet_cls", "chunk_cls", "shard_n", "shard_me", "gi", "pcapng",
                             "scan", "hello_bytes", NULL};
    Py_buffer hdr, lt, lu;
    PyObject *pc, *cc;
    if (e->tab) {
        PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ called twice");
        return -1;
    }
    e->gi = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*iiipiy*y*OO|iiLppi", kwlist, &hdr, &e->n_packets, &e->pay_bytes,
                                     &e->pay_packets, &e->checksums, &e->want_summaries, &lt, &lu, &pc, &cc,
                                     &e->shard_n, &e->shard_me, &e->gi, &e->ng, &e->scan_only, &e->hello_bytes))
        return -1;
    e->pay_stride = e->hello_bytes > e->pay_bytes ? e->hello_bytes : e->pay_bytes;
    int ok = hdr.len == (e->ng ? 0 : 24) && lt.len == 8192 && lu.len == 8192 && e->n_packets >= 1 && e->pay_bytes >= 0 && e->hello_bytes >= 0 &&
             e->pay_packets >= 0 && e->shard_n >= 0 && (e->shard_n == 0 || (e->shard_me >= 0 && e->shard_me < e->shard_n));
    if (ok && !e->ng) {
        const uint8_t *h = hdr.buf;
        uint32_t magic;
        memcpy(&magic, h, 4);
        e->swap = 0;
        if (magic == 0xA1B2C3D4u) e->scale = 1e-6;
        else if (magic == 0xA1B23C4Du) e->scale = 1e-9;
        else if (magic == 0xD4C3B2A1u) { e->scale = 1e-6; e->swap = 1; }
        else if (magic == 0x4D3CB2A1u) { e->scale = 1e-9; e->swap = 1; }
        else ok = 0;
        if (ok) {
            uint32_t snaplen = rd32(e, h + 16), linktype = rd32(e, h + 20) & 0x0FFFFFFF;
            uint32_t limit = snaplen > 262144 ? snaplen : 262144;
            e->limit = limit > (1u << 24) ? (1u << 24) : limit;
            e->linktype = (int)linktype;
            ok = link_supported((int)linktype);
        }
    }
    if (ok) {
        memcpy(e->lsp_tcp, lt.buf, 8192);
        memcpy(e->lsp_udp, lu.buf, 8192);
    }
    PyBuffer_Release(&hdr);
    PyBuffer_Release(&lt);
    PyBuffer_Release(&lu);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "Engine: an Ethernet classic-pcap header (or b'' with pcapng=True) and "
                                          "8192-byte port maps");
        return -1;
    }
    Py_INCREF(pc);
    Py_INCREF(cc);
    e->packet_cls = pc;
    e->chunk_cls = cc;
    e->tab_size = 1024;
    e->tab = PyMem_Calloc(e->tab_size, sizeof(Ent *));
    if (!e->tab) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Engine_dealloc(Engine *e) {
    Conn *c = e->head;
    while (c) {
        Conn *nx = c->next;
        conn_free(c);
        c = nx;
    }
    if (e->tab) {
        for (size_t i = 0; i < e->tab_size; i++) {
            Ent *x = e->tab[i];
            while (x) {
                Ent *nx = x->next;
                PyMem_Free(x);
                x = nx;
            }
        }
        PyMem_Free(e->tab);
    }
    PyMem_Free(e->buf);
    PyMem_Free(e->ifaces);
    Py_XDECREF(e->packet_cls);
    Py_XDECREF(e->chunk_cls);
    Py_XDECREF(e->events);
    Py_XDECREF(e->frag);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/* flows.make_uid's text: "C" + the 96-bit digest in 17 base-62 digits (the Python loop's divmods, in C) */
static PyObject *uid_text(PyObject *Py_UNUSED(m), PyObject *arg) {
    static const char B62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if (b.len != 12) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "uid_text needs a 12-byte digest");
        return NULL;
    }
    unsigned __int128 v = 0;
    for (int i = 0; i < 12; i++) v = (v << 8) | ((const uint8_t *)b.buf)[i];
    PyBuffer_Release(&b);
    char out[18];
    out[0] = 'C';
    for (int i = 17; i >= 1; i--) {
        out[i] = B62[(int)(v % 62)];
        v /= 62;
    }
    return PyUnicode_FromStringAndSize(out, 18);
}

/* ------------------------------------------------------------------------------------------------------
 * zeek/wire.py's _flow_text in C: one ETooL::flow frame exactly as Broker's JSON writer lays it out -> its fields,
 * the Packet and Chunk objects built. The grammar is wire._FLOW_TEXT_RE's, element by element (the
 * regular expression skims the packet and chunk vectors and counts exact records; here every element must
 * be an exact record). Anything else, and timespans beyond 15 digits (where int * float might round
 * differently than double * double), returns None and wire.py goes on to the regular expression, which stays
 * the reference: tests/test_zeekws_fast.py checks that whatever this accepts decodes the same there.
 * Why: the frame is ~4 KB of typed JSON per flow, and the regex + per-packet Python cost ~50-90 us of the
 * daemon's ~150-190 us of own CPU per flow (docs/performance.md).
 */
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
    if (a[0] && a[2] && a[3] && a[4]) r = make(cls, a, 5);
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
    PyObject *r = make(cls, a, 2);
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

static PyObject *flow_frame(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
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

/* ------------------------------------------------------------------------------------------------------
 * masking.mask_payload followed by masking.normalize_random, on one payload chunk: a line-by-line port of
 * masking.py, which stays the reference (tests/test_masking_fast.py compares both on every chunk of the
 * shared captures and on mutated ones). features.encode calls it once per chunk; in Python the two passes
 * cost about as much as the rest of encode together. Buffers are bounded by the chunk's length everywhere
 * (Python's slices clamp, its index errors end a parse; here every read is checked against n).
 */
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

/* masking.mask_chunk_py on s->b[0:n] in place (the same length); -1 when out of memory */
static int mask_buf(Buf *sp, int proto, long orig_p, long resp_p, int normalize) {
    Buf s = *sp;
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
static PyObject *mask_chunk(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
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
    Buf s = {(uint8_t *)PyBytes_AS_STRING(out), n};
    if (mask_buf(&s, (int)proto, orig_p, resp_p, normalize) < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}


/* ------------------------------------------------------------------------------------------------
 * features._arrays_py in C: flow records (+ BURST contexts) -> the model's pkt, byt, seg, ctx and meta
 * arrays, written into zeroed numpy arrays the caller made. Same numbers, conversion by conversion: the
 * Python version converts every value with float() into float64 (numpy), and casts to int64 or float32
 * after; so does this. Anything outside the plain shapes (a sequence that is not a list or tuple, a value
 * float() rejects, a name that is not str, data that is not bytes) makes it decline (False, no error
 * set) and the caller runs the Python version, which gives the same result or raises the same error.
 */
static PyObject *S_packets, *S_payload, *S_data, *S_is_orig, *S_dt, *S_payload_len, *S_tcp_flags, *S_proto,
    *S_orig_p, *S_resp_p, *S_final, *S_neighbours, *S_sizes, *S_burst_gap, *S_position;

static int intern_names(void) {
#define NAME(v, t) if (!(v = PyUnicode_InternFromString(t))) return -1;
    NAME(S_packets, "packets") NAME(S_payload, "payload") NAME(S_data, "data") NAME(S_is_orig, "is_orig")
    NAME(S_dt, "dt") NAME(S_payload_len, "payload_len") NAME(S_tcp_flags, "tcp_flags") NAME(S_proto, "proto")
    NAME(S_orig_p, "orig_p") NAME(S_resp_p, "resp_p") NAME(S_final, "final") NAME(S_neighbours, "neighbours")
    NAME(S_sizes, "sizes") NAME(S_burst_gap, "burst_gap") NAME(S_position, "position")
#undef NAME
    return 0;
}

/* float(v) as numpy's float64 conversion does it; -1 with an error set when float() would raise */
static int as_double(PyObject *v, double *out) {
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    *out = d;
    return 0;
}

static int attr_double(PyObject *o, PyObject *name, double *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    int r = as_double(v, out);
    Py_DECREF(v);
    return r;
}

/* numpy's float64 -> int64 cast on x86-64 (cvttsd2si): truncation, INT64_MIN when out of range or NaN */
static int64_t f2i(double d) {
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return INT64_MIN;
    return (int64_t)d;
}

/* seq[:n] of a list or tuple, as a new reference whose items stay put (a list is copied, as Python's
   slice copies it), or NULL without an error: declined. *len = its length */
static PyObject *head(PyObject *seq, Py_ssize_t n, Py_ssize_t *len) {
    PyObject *h;
    if (PyList_CheckExact(seq))
        h = PyList_GetSlice(seq, 0, n);
    else if (PyTuple_CheckExact(seq))
        h = Py_NewRef(seq);
    else
        return NULL;
    if (!h) return NULL;
    Py_ssize_t l = PySequence_Fast_GET_SIZE(h);
    *len = l < n ? l : n;
    return h;
}

/* head(getattr(o, name), n, len) */
static PyObject *attr_head(PyObject *o, PyObject *name, Py_ssize_t n, Py_ssize_t *len) {
    PyObject *a = PyObject_GetAttr(o, name);
    if (!a) return NULL;
    PyObject *h = head(a, n, len);
    Py_DECREF(a);
    return h;
}

/* 0 tcp, 1 udp, 2 other str; -1 not a str (declined) */
static int proto_code(PyObject *v) {
    if (!PyUnicode_CheckExact(v)) return -1;
    if (PyUnicode_CompareWithASCIIString(v, "tcp") == 0) return 0;
    if (PyUnicode_CompareWithASCIIString(v, "udp") == 0) return 1;
    return 2;
}

typedef struct {
    int64_t *pkt, *byt, *seg;
    float *ctx, *meta, *flt;
    Py_ssize_t n, m, bb, k, sz, f;
    int mask, norm;
    double fscale, cscale; /* flt: log1p(65535), log1p(N) */
    double *fsum;          /* 2 * f scratch: byte and packet totals of the flights */
    uint8_t *tmp;          /* bb bytes */
} EncOut;

/* features._flight_array for one record, fed packet by packet (encode_one's packet loop, then the packets
 * beyond the model's window): runs of payload-carrying packets in one direction, the first o->f of them */
typedef struct {
    Py_ssize_t j; /* the current flight, -1 before the first */
    int last;     /* its direction (1 originator), -1 before the first */
    int full;     /* a packet opened flight f + 1: the rest cannot change the row */
} Flights;

static void flight_add(EncOut *o, Flights *fl, double orig, double plen) {
    if (fl->full || !(plen > 0)) return;
    int ob = orig != 0.0;
    if (ob != fl->last) {
        if (fl->j == o->f - 1) {
            fl->full = 1;
            return;
        }
        fl->j++;
        fl->last = ob;
    }
    o->fsum[fl->j] += ob ? plen : -plen;
    o->fsum[o->f + fl->j] += 1.0;
}

static void flight_row(EncOut *o, Py_ssize_t i) {
    const double *sz = o->fsum, *ct = o->fsum + o->f;
    float *row = o->flt + i * 2 * o->f;
    for (Py_ssize_t t = 0; t < o->f; t++) {
        row[2 * t] = (float)copysign(log1p(fabs(sz[t])) / o->fscale, sz[t]);
        row[2 * t + 1] = (float)(log1p(ct[t]) / o->cscale);
    }
}

/* getattr(o, name) is truthy: 1/0, -1 on error */
static int attr_true(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* getattr(o, name) == "udp": 1/0, -1 declined (not a str, or an error) */
static int attr_udp(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    int c = proto_code(v);
    Py_DECREF(v);
    return c < 0 ? -1 : c == 1;
}

/* one record (and its context, NULL or None for none); 1 done, 0 declined (an error may be set) */
static int encode_one(EncOut *o, Py_ssize_t i, PyObject *r, PyObject *cx) {
    int ok = 0, proto = -1;
    long orig_p = 0, resp_p = 0;
    PyObject *pall = NULL, *pk = NULL, *pay = NULL, *data = NULL, *nbs = NULL, *sizes = NULL, *a = NULL;
    Py_ssize_t nc, cnt;
    Flights fl = {-1, -1, 0};
    if (o->f > 0) memset(o->fsum, 0, (size_t)(2 * o->f) * sizeof(double));
    /* packet tokens (and the flights of the same packets) */
    if (!(pall = PyObject_GetAttr(r, S_packets)) || !(pk = head(pall, o->n, &cnt))) goto done;
    PyObject **ps = PySequence_Fast_ITEMS(pk);
    double prev = 0.0;
    for (Py_ssize_t j = 0; j < cnt; j++) {
        double dt, orig, plen, flags;
        if (attr_double(ps[j], S_dt, &dt) < 0 || attr_double(ps[j], S_is_orig, &orig) < 0 ||
            attr_double(ps[j], S_payload_len, &plen) < 0 || attr_double(ps[j], S_tcp_flags, &flags) < 0)
            goto done;
        int64_t *t = o->pkt + (i * o->n + j) * 4;
        t[0] = orig > 0 ? 1 : 2;
        int64_t size = f2i(plen) >> 4;
        t[1] = size < 95 ? size : 95; /* SIZE_BUCKETS - 1 */
        double us = (dt - prev) * 1e6;
        int64_t gap = f2i(trunc(us));
        if (gap > 0) {
            int e;
            frexp((double)gap, &e);
            t[2] = e < 31 ? e : 31; /* IAT_BUCKETS - 1 */
        }
        t[3] = f2i(flags) & 0xFF;
        prev = dt;
        if (o->f > 0) flight_add(o, &fl, orig, plen);
    }
    if (o->f > 0) { /* flights over every packet of the record, as features.flights() */
        PyObject **all = PySequence_Fast_ITEMS(pall); /* a list or tuple: head() took it */
        for (Py_ssize_t q = cnt; q < PySequence_Fast_GET_SIZE(pall) && !fl.full; q++) {
            double orig, plen;
            if (attr_double(all[q], S_payload_len, &plen) < 0 || attr_double(all[q], S_is_orig, &orig) < 0)
                goto done;
            flight_add(o, &fl, orig, plen);
        }
        flight_row(o, i);
    }
    /* payload bytes, names masked */
    if (!(pay = attr_head(r, S_payload, o->m, &nc))) goto done;
    PyObject **cs = PySequence_Fast_ITEMS(pay);
    for (Py_ssize_t c = 0; c < nc; c++) {
        Py_CLEAR(data);
        if (!(data = PyObject_GetAttr(cs[c], S_data))) goto done;
        if (!PyBytes_CheckExact(data)) goto done;
        Py_ssize_t len = PyBytes_GET_SIZE(data);
        if (len > o->bb) len = o->bb;
        if (!len) continue;
        memcpy(o->tmp, PyBytes_AS_STRING(data), (size_t)len);
        if (o->mask) {
            if (proto < 0) {
                if (!(a = PyObject_GetAttr(r, S_proto))) goto done;
                proto = proto_code(a);
                Py_CLEAR(a);
                if (proto < 0) goto done;
                if (!(a = PyObject_GetAttr(r, S_orig_p))) goto done;
                orig_p = PyLong_AsLong(a);
                Py_CLEAR(a);
                if (!(a = PyObject_GetAttr(r, S_resp_p))) goto done;
                resp_p = PyLong_AsLong(a);
                Py_CLEAR(a);
                if (PyErr_Occurred()) goto done;
            }
            Buf b = {o->tmp, len};
            if (mask_buf(&b, proto, orig_p, resp_p, o->norm) < 0) goto done;
        }
        int is_orig = attr_true(cs[c], S_is_orig);
        if (is_orig < 0) goto done;
        int64_t sg = 1 + 2 * c + (is_orig ? 0 : 1);
        int64_t *bt = o->byt + i * o->m * o->bb + c * o->bb, *st = o->seg + i * o->m * o->bb + c * o->bb;
        for (Py_ssize_t t = 0; t < len; t++) {
            bt[t] = (int64_t)o->tmp[t] + 1;
            st[t] = sg;
        }
    }
    /* BURST neighbours and the position in the BURST */
    double position = 0.0;
    if (cx && cx != Py_None) {
        Py_ssize_t nn;
        if (!(nbs = attr_head(cx, S_neighbours, o->k, &nn))) goto done;
        PyObject **ns = PySequence_Fast_ITEMS(nbs);
        for (Py_ssize_t j = 0; j < nn; j++) {
            double dt, gap;
            if (!(a = PyObject_GetAttr(ns[j], S_dt)) || as_double(a, &dt) < 0) goto done;
            /* Python negates an int before float(): -0 is 0, so an int 0 gives -log1p(0.0) = -0.0 */
            double neg = PyLong_Check(a) && dt == 0.0 ? 0.0 : -dt;
            Py_CLEAR(a);
            if (attr_double(ns[j], S_burst_gap, &gap) < 0) goto done;
            int udp = attr_udp(ns[j], S_proto);
            if (udp < 0) goto done;
            Py_CLEAR(sizes);
            Py_ssize_t nz;
            if (!(sizes = attr_head(ns[j], S_sizes, o->sz, &nz))) goto done;
            PyObject **zs = PySequence_Fast_ITEMS(sizes);
            float *row = o->ctx + (i * o->k + j) * (3 + o->sz);
            row[0] = (float)(dt <= 0 ? -log1p(neg) : log1p(dt));
            row[1] = (float)gap;
            row[2] = udp ? 1.0f : 0.0f;
            for (Py_ssize_t t = 0; t < nz; t++) {
                double z;
                if (as_double(zs[t], &z) < 0) goto done;
                row[3 + t] = (float)z / 1500.0f;
            }
        }
        double pos;
        if (attr_double(cx, S_position, &pos) < 0 || !(pos > -1.0)) goto done; /* math.log1p raises */
        position = log1p(pos);
    }
    /* meta: is_udp, packets / N, final, log1p(position) */
    double fin;
    int udp = attr_udp(r, S_proto);
    if (udp < 0) goto done;
    if (!(a = PyObject_GetAttr(r, S_final))) goto done;
    if (as_double(a, &fin) < 0) goto done;
    float *mt = o->meta + i * 4;
    mt[0] = udp ? 1.0f : 0.0f;
    mt[1] = (float)((double)cnt / (double)o->n);
    mt[2] = (float)fin;
    mt[3] = (float)position;
    ok = 1;
done:
    Py_XDECREF(a);
    Py_XDECREF(sizes);
    Py_XDECREF(data);
    Py_XDECREF(nbs);
    Py_XDECREF(pay);
    Py_XDECREF(pk);
    Py_XDECREF(pall);
    return ok;
}

/* a writable C-contiguous buffer of exactly `bytes` bytes, else -1 (declined) */
static int out_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t bytes, Py_ssize_t itemsize) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len != bytes || view->itemsize != itemsize) {
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

/* encode_arrays(records, contexts|None, n, m, bb, k, sizes, mask, normalize, pkt, byt, seg, ctx, meta
 *               [, f, flt, fscale, cscale]) -> bool */
static PyObject *encode_arrays(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14 && nargs != 18) {
        PyErr_SetString(PyExc_TypeError, "encode_arrays takes 14 or 18 arguments");
        return NULL;
    }
    EncOut o = {0};
    Py_buffer vb[6];
    int nviews = 0, ok = 0;
    Py_ssize_t nr, nx = 0;
    PyObject *recs = NULL, *ctxs = NULL;
    o.n = PyLong_AsSsize_t(args[2]);
    o.m = PyLong_AsSsize_t(args[3]);
    o.bb = PyLong_AsSsize_t(args[4]);
    o.k = PyLong_AsSsize_t(args[5]);
    o.sz = PyLong_AsSsize_t(args[6]);
    o.mask = PyObject_IsTrue(args[7]);
    o.norm = PyObject_IsTrue(args[8]);
    if (nargs == 18) {
        o.f = PyLong_AsSsize_t(args[14]);
        o.fscale = PyFloat_AsDouble(args[16]);
        o.cscale = PyFloat_AsDouble(args[17]);
    }
    if (PyErr_Occurred() || o.mask < 0 || o.norm < 0) return NULL;
    if (o.n < 1 || o.m < 0 || o.bb < 0 || o.k < 0 || o.sz < 0 || o.f < 0) Py_RETURN_FALSE;
    if (!(recs = head(args[0], PY_SSIZE_T_MAX, &nr))) goto done;
    if (args[1] != Py_None && (!(ctxs = head(args[1], PY_SSIZE_T_MAX, &nx)) || nx < nr)) goto done;
    const Py_ssize_t sizes[5] = {nr * o.n * 4 * 8, nr * o.m * o.bb * 8, nr * o.m * o.bb * 8,
                                 nr * o.k * (3 + o.sz) * 4, nr * 4 * 4};
    const Py_ssize_t isz[5] = {8, 8, 8, 4, 4};
    for (; nviews < 5; nviews++)
        if (out_buffer(args[9 + nviews], &vb[nviews], sizes[nviews], isz[nviews]) < 0) goto done;
    if (o.f > 0) {
        if (out_buffer(args[15], &vb[nviews], nr * 2 * o.f * 4, 4) < 0) goto done;
        o.flt = vb[nviews++].buf;
        if (!(o.fsum = PyMem_Malloc((size_t)(2 * o.f) * sizeof(double)))) goto done;
    }
    o.pkt = vb[0].buf;
    o.byt = vb[1].buf;
    o.seg = vb[2].buf;
    o.ctx = vb[3].buf;
    o.meta = vb[4].buf;
    if (!(o.tmp = PyMem_Malloc(o.bb ? (size_t)o.bb : 1))) goto done;
    PyObject **rs = PySequence_Fast_ITEMS(recs), **xs = ctxs ? PySequence_Fast_ITEMS(ctxs) : NULL;
    ok = 1;
    for (Py_ssize_t i = 0; i < nr && ok; i++) ok = encode_one(&o, i, rs[i], xs ? xs[i] : NULL);
done:
    PyMem_Free(o.tmp);
    PyMem_Free(o.fsum);
    for (int v = 0; v < nviews; v++) PyBuffer_Release(&vb[v]);
    Py_XDECREF(recs);
    Py_XDECREF(ctxs);
    if (!ok) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL; /* KeyboardInterrupt */
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}


/* ------------------------------------------------------------------------------------------------
 * zeeklog.ascii_row_formatter's common case in C: one TSV row from values in field order, each field by a
 * type code: t time/interval ('%.6f'), d double (format_double), b bool, c count/int/port, a addr/subnet,
 * s string/enum, v container of string/enum. Only values whose text needs no escaping and no conversion
 * beyond float()/str(int) are written here; for anything else it returns None and the generated Python
 * formatter writes the row (the same text: tests/test_zeeklog.py compares both with format_ascii).
 */
static int plain_ascii(PyObject *v, int in_container) {
    if (!PyUnicode_CheckExact(v) || PyUnicode_READY(v) < 0 || PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    const Py_UCS1 *b = PyUnicode_1BYTE_DATA(v);
    if (n == 0) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS1 ch = b[i];
        if (ch < 0x20 || ch > 0x7E || ch == '\\' || (in_container && ch == ',')) return 0;
    }
    if ((n == 1 && b[0] == '-') || (n == 7 && memcmp(b, "(empty)", 7) == 0)) return 0;
    return 1;
}

/* a growing ASCII text */
typedef struct {
    char *b;
    Py_ssize_t n, cap;
    char small[1024];
} Text;

static int text_put(Text *t, const char *s, Py_ssize_t n) {
    if (t->n + n > t->cap) {
        Py_ssize_t cap = (t->n + n) * 2;
        char *nb = t->b == t->small ? PyMem_Malloc((size_t)cap) : PyMem_Realloc(t->b, (size_t)cap);
        if (!nb) return -1;
        if (t->b == t->small) memcpy(nb, t->small, (size_t)t->n);
        t->b = nb;
        t->cap = cap;
    }
    memcpy(t->b + t->n, s, (size_t)n);
    t->n += n;
    return 0;
}

static int text_str(Text *t, PyObject *v) { /* an ASCII str's characters */
    return text_put(t, (const char *)PyUnicode_1BYTE_DATA(v), PyUnicode_GET_LENGTH(v));
}

static int ascii_str(PyObject *v) {
    return PyUnicode_CheckExact(v) && PyUnicode_READY(v) == 0 && PyUnicode_IS_ASCII(v);
}

static PyObject *tsv_row(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "tsv_row(codes: bytes, row: list)");
        return NULL;
    }
    const char *codes = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *row;
    /* the values as they are now (Python's formatter unpacks them first; bool(v) could change a list) */
    if (PyList_CheckExact(args[1])) row = PyList_AsTuple(args[1]);
    else if (PyTuple_CheckExact(args[1])) row = Py_NewRef(args[1]);
    else Py_RETURN_NONE;
    if (!row) return NULL;
    if (PyTuple_GET_SIZE(row) != n) {
        Py_DECREF(row);
        Py_RETURN_NONE;
    }
    Text t = {NULL, 0, sizeof t.small, {0}};
    t.b = t.small;
    int bad = 0; /* 1 declined, -1 error */
    char num[32];
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        PyObject *v = PyTuple_GET_ITEM(row, i);
        if (i && text_put(&t, "\t", 1) < 0) { bad = -1; break; }
        if (v == Py_None) {
            bad = text_put(&t, "-", 1);
            continue;
        }
        switch (codes[i]) {
        case 't':
        case 'd': {
            double d;
            if (PyFloat_CheckExact(v)) d = PyFloat_AS_DOUBLE(v);
            else if (PyLong_CheckExact(v) || PyBool_Check(v)) {
                d = PyLong_AsDouble(v);
                if (d == -1.0 && PyErr_Occurred()) { bad = 1; break; }
            } else { bad = 1; break; }
            if (isnan(d)) { bad = text_put(&t, "nan", 3); break; }
            if (isinf(d)) { bad = d > 0 ? text_put(&t, "inf", 3) : text_put(&t, "-inf", 4); break; }
            char *txt = PyOS_double_to_string(d, 'f', 6, 0, NULL); /* what '%.6f' % d uses */
            if (!txt) { bad = -1; break; }
            size_t L = strlen(txt);
            if (codes[i] == 'd') { /* format_double: trailing zeros off, at least one decimal, no -0.0 */
                while (L > 0 && txt[L - 1] == '0') L--;
                if (L > 0 && txt[L - 1] == '.') txt[L++] = '0';
                if (L == 4 && memcmp(txt, "-0.0", 4) == 0) { bad = text_put(&t, "0.0", 3); PyMem_Free(txt); break; }
            }
            bad = text_put(&t, txt, (Py_ssize_t)L);
            PyMem_Free(txt);
            break;
        }
        case 'b': {
            int tr = PyObject_IsTrue(v);
            bad = tr < 0 ? -1 : text_put(&t, tr ? "T" : "F", 1);
            break;
        }
        case 'c':
            if (PyBool_Check(v)) bad = text_put(&t, v == Py_True ? "1" : "0", 1);
            else if (PyLong_CheckExact(v)) {
                int of;
                long long x = PyLong_AsLongLongAndOverflow(v, &of);
                if (of || (x == -1 && PyErr_Occurred())) { bad = 1; break; } /* beyond 64 bits: Python writes it */
                int k = snprintf(num, sizeof num, "%lld", x);
                bad = text_put(&t, num, k);
            } else bad = 1;
            break;
        case 'a':
            bad = ascii_str(v) ? text_str(&t, v) : 1; /* a non-ASCII address text: Python writes it as is */
            break;
        case 's':
            bad = plain_ascii(v, 0) ? text_str(&t, v) : 1;
            break;
        case 'v': {
            if (!PyList_CheckExact(v)) { bad = 1; break; }
            Py_ssize_t k = PyList_GET_SIZE(v);
            if (k == 0) { bad = text_put(&t, "(empty)", 7); break; }
            for (Py_ssize_t j = 0; j < k && !bad; j++) {
                PyObject *x = PyList_GET_ITEM(v, j);
                if (!plain_ascii(x, 1)) bad = 1;
                else bad = (j && text_put(&t, ",", 1) < 0) ? -1 : text_str(&t, x);
            }
            break;
        }
        default:
            bad = 1;
        }
    }
    PyObject *res = NULL;
    if (!bad) res = PyUnicode_DecodeASCII(t.b, t.n, NULL);
    if (t.b != t.small) PyMem_Free(t.b);
    Py_DECREF(row);
    if (bad < 0) return NULL;
    if (bad > 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return res;
}

/* ---------------------------------------------------------------------------------------------
 * hello_key: fingerprints._hello_key_py in C. tls.parse_hello of one chunk (the same walk, cut hellos
 * included), GREASE values dropped, cipher suites and extension types sorted, packed big-endian as
 * struct.pack(">BHH{n}HH{m}H", kind, version, n, *suites, m, *types); None when the chunk does not start a
 * ClientHello or ServerHello. tests/test_hello_fields.py compares both on every chunk of the shared captures
 * and on cut and mutated hellos.
 */
static int cmp_u16(const void *a, const void *b) {
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static Py_ssize_t drop_grease(uint16_t *v, Py_ssize_t n) {
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((v[i] & 0x0F0F) != 0x0A0A) v[k++] = v[i];
    return k;
}

static PyObject *hello_key(PyObject *Py_UNUSED(mod), PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "hello_key(data: bytes)");
        return NULL;
    }
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n < 44 || d[0] != 0x16 || d[1] != 3 || (d[5] != 1 && d[5] != 2)) Py_RETURN_NONE; /* tls.parse_hello */
    int kind = d[5];
    unsigned version = ((unsigned)d[9] << 8) | d[10];
    Py_ssize_t p = 44 + d[43], ns = 0, ne = 0;
    uint16_t *su = PyMem_Malloc(sizeof(uint16_t) * (size_t)(n / 2 + 1));
    uint16_t *ex = PyMem_Malloc(sizeof(uint16_t) * (size_t)(n / 4 + 2));
    if (!su || !ex) {
        PyMem_Free(su);
        PyMem_Free(ex);
        return PyErr_NoMemory();
    }
    int exts = 1;
    if (kind == 1) {
        if (p + 2 > n) {
            exts = 0; /* parse_hello: (kind, version, [], []) */
        } else {
            Py_ssize_t end = p + 2 + (((Py_ssize_t)d[p] << 8) | d[p + 1]);
            Py_ssize_t lim = end < n ? end : n;
            for (Py_ssize_t i = p + 2; i + 1 < lim; i += 2) su[ns++] = (uint16_t)((d[i] << 8) | d[i + 1]);
            p = end < n ? end + 1 + d[end] : n; /* compression methods */
        }
    } else if (p + 3 <= n) {
        su[ns++] = (uint16_t)((d[p] << 8) | d[p + 1]);
        p += 3;
    } else {
        p = n;
    }
    if (exts && p + 2 <= n) {
        Py_ssize_t end = p + 2 + (((Py_ssize_t)d[p] << 8) | d[p + 1]);
        if (end > n) end = n;
        p += 2;
        while (p + 4 <= end) {
            ex[ne++] = (uint16_t)((d[p] << 8) | d[p + 1]);
            p += 4 + (((Py_ssize_t)d[p + 2] << 8) | d[p + 3]);
        }
    }
    ns = drop_grease(su, ns);
    ne = drop_grease(ex, ne);
    qsort(su, (size_t)ns, sizeof(uint16_t), cmp_u16);
    qsort(ex, (size_t)ne, sizeof(uint16_t), cmp_u16);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 7 + 2 * (ns + ne));
    if (out) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        *o++ = (uint8_t)kind;
        *o++ = (uint8_t)(version >> 8);
        *o++ = (uint8_t)version;
        *o++ = (uint8_t)(ns >> 8);
        *o++ = (uint8_t)ns;
        for (Py_ssize_t i = 0; i < ns; i++) { *o++ = (uint8_t)(su[i] >> 8); *o++ = (uint8_t)su[i]; }
        *o++ = (uint8_t)(ne >> 8);
        *o++ = (uint8_t)ne;
        for (Py_ssize_t i = 0; i < ne; i++) { *o++ = (uint8_t)(ex[i] >> 8); *o++ = (uint8_t)ex[i]; }
    }
    PyMem_Free(su);
    PyMem_Free(ex);
    return out;
}

static PyMethodDef module_methods[] = {
    {"uid_text", uid_text, METH_O, "uid_text(digest12) -> the Zeek-format uid text of flows.make_uid"},
    {"hello_key", hello_key, METH_O,
     "hello_key(data) -> bytes | None: fingerprints._hello_key_py (a TLS hello's sorted suites and types, packed)"},
    {"flow_frame", (PyCFunction)(void (*)(void))flow_frame, METH_FASTCALL,
     "flow_frame(text, Packet, Chunk) -> (topic, uid, ts, orig_h, orig_p, resp_h, resp_p, packets, chunks, "
     "final, reply_topic, metadata key, metadata ts) | None: zeek.wire._flow_text's grammar"},
    {"mask_chunk", (PyCFunction)(void (*)(void))mask_chunk, METH_FASTCALL,
     "mask_chunk(data, proto (0 tcp, 1 udp, 2 other), orig_p, resp_p, normalize) -> bytes: "
     "masking.mask_payload, then masking.normalize_random when normalize"},
    {"tsv_row", (PyCFunction)(void (*)(void))tsv_row, METH_FASTCALL,
     "tsv_row(codes, row) -> str | None: zeeklog.ascii_row_formatter's plain rows; None = let Python write it"},
    {"encode_arrays", (PyCFunction)(void (*)(void))encode_arrays, METH_FASTCALL,
     "encode_arrays(records, contexts|None, n, m, bb, k, sizes, mask, normalize, pkt, byt, seg, ctx, meta"
     "[, f, flt, fscale, cscale]) -> "
     "bool: features._arrays_py into the given zeroed arrays; False = declined, use the Python version"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Engine_methods[] = {
    {"feed", (PyCFunction)Engine_feed, METH_O,
     "feed(bytes) -> (events, fragment|None): process every complete record buffered so far."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS,
     "close() -> (events, leftover): end of file; flush live connections."},
    {"inject", (PyCFunction)Engine_inject, METH_VARARGS, "inject(ver, ts, packet[, offset, next]) -> events"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "counters so far"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "etool_sensor._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Compiled capture reader for pcap and pcapng (see etool_sensor/capture/)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastpath", "Compiled twins of etool_sensor's hot Python functions", -1,
                                      module_methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    crc_init();
    if (intern_names() < 0) return NULL;
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    /* capture/'s _FASTPATH_ABI: a module left from an older build (a failed optional rebuild keeps the old
       file) is not used with a newer capture/ */
    if (PyModule_AddIntConstant(m, "ABI", 7) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
