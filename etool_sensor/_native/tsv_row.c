/* zeeklog.ascii_row_formatter's common case in C: one TSV row from values in field order, each field by a
 * type code: t time/interval ('%.6f'), d double (format_double), b bool, c count/int/port, a addr/subnet,
 * s string/enum, v container of string/enum. Only values whose text needs no escaping and no conversion
 * beyond float()/str(int) are written here; for anything else it returns None and the generated Python
 * formatter writes the row (the same text: tests/test_zeeklog.py compares both with format_ascii).
 */
#include "fastpath.h"

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

PyObject *etool_tsv_row(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
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
