/* The capture reader (Engine): pcap/pcapng records -> Zeek-like connections -> flow records, a port of
 * capture/ (linklayer, ip, tcp, conntrack; native.py is the glue), checked by tests/test_fastpath.py on every
 * shared capture. Python keeps what is rare or cheap per flow: IP fragment reassembly (the engine stops at a
 * fragment, capture/ip.py reassembles it and hands the packet back), uids, address strings.
 * One file because it is one unit: every layer reads and writes the one Engine and its connections, and the
 * per-packet path (link layer -> IP -> transport -> connection state) stays in one translation unit so the
 * compiler can inline across it. Why C: per packet the Python reader spends ~5 us building bytes keys, struct
 * tuples and dict lookups; here a packet costs well under a microsecond.
 */
#include "fastpath.h"

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
        if (args[0] && args[2] && args[3] && args[4]) o = etool_make(e->packet_cls, args, 5);
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
        PyObject *o = args[1] ? etool_make(e->chunk_cls, args, 2) : NULL;
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
    /* a PARTIAL endpoint (seen mid-stream) is inactive to Zeek's conn_state() */
    if (os_ == INACTIVE) {
        if (rs == INACTIVE) return "OTH";
        if (rs == CLOSED) return "SHR";
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
        return os_ == PARTIAL ? "RSTRH" : "RSTR";
    }
    if (os_ == CLOSED && rs == CLOSED) return "SF";
    if (os_ == CLOSED) return rs == PARTIAL ? "SH" : "S2";
    if (rs == CLOSED) return os_ == PARTIAL ? "SHR" : "S3";
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
    /* Zeek creates a connection whose first packet came from the server side flipped (FlipRoles), which
       writes '^' to its history */
    if (flip && hist_add(c, '^') < 0) {
        conn_free(c);
        PyErr_NoMemory();
        return NULL;
    }
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

static PyMethodDef Engine_methods[] = {
    {"feed", (PyCFunction)Engine_feed, METH_O,
     "feed(bytes) -> (events, fragment|None): process every complete record buffered so far."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS,
     "close() -> (events, leftover): end of file; flush live connections."},
    {"inject", (PyCFunction)Engine_inject, METH_VARARGS, "inject(ver, ts, packet[, offset, next]) -> events"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "counters so far"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject etool_EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "etool_sensor._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Compiled capture reader for pcap and pcapng (see etool_sensor/capture/)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

int etool_capture_init(void) {
    crc_init();
    return PyType_Ready(&etool_EngineType);
}
