/* hello_key: fingerprints._hello_key_py in C. tls.parse_hello of one chunk (the same walk, cut hellos
 * included), GREASE values dropped, cipher suites and extension types sorted, packed big-endian as
 * struct.pack(">BHH{n}HH{m}H", kind, version, n, *suites, m, *types); None when the chunk does not start a
 * ClientHello or ServerHello. tests/test_hello_fields.py compares both on every chunk of the shared captures
 * and on cut and mutated hellos.
 */
#include "fastpath.h"

static int cmp_u16(const void *a, const void *b) {
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static Py_ssize_t drop_grease(uint16_t *v, Py_ssize_t n) {
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((v[i] & 0x0F0F) != 0x0A0A) v[k++] = v[i];
    return k;
}

PyObject *etool_hello_key(PyObject *Py_UNUSED(mod), PyObject *arg) {
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
