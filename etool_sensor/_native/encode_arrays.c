/* features._arrays_py in C: flow records (+ BURST contexts) -> the model's pkt, byt, seg, ctx and meta
 * arrays, written into zeroed numpy arrays the caller made. Same numbers, conversion by conversion: the
 * Python version converts every value with float() into float64 (numpy), and casts to int64 or float32
 * after; so does this. Anything outside the plain shapes (a sequence that is not a list or tuple, a value
 * float() rejects, a name that is not str, data that is not bytes) makes it decline (False, no error
 * set) and the caller runs the Python version, which gives the same result or raises the same error.
 */
#include "fastpath.h"

static PyObject *S_packets, *S_payload, *S_data, *S_is_orig, *S_dt, *S_payload_len, *S_tcp_flags, *S_proto,
    *S_orig_p, *S_resp_p, *S_final, *S_neighbours, *S_sizes, *S_burst_gap, *S_position;

int etool_encode_init(void) {
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
            if (etool_mask_buf(o->tmp, len, proto, orig_p, resp_p, o->norm) < 0) goto done;
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
PyObject *etool_encode_arrays(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
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

