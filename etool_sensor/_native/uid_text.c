/* flows.make_uid's text: "C" + the 96-bit digest in 17 base-62 digits (the Python loop's divmods, in C) */
#include "fastpath.h"

PyObject *etool_uid_text(PyObject *Py_UNUSED(m), PyObject *arg) {
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

