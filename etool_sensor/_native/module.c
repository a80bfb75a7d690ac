/* etool_sensor._fastpath: the compiled twins of etool's hot Python functions, one extension so an install
 * builds one thing. One file per twin:
 *
 *   - capture.c, the capture reader (Engine): a port of capture/ (linklayer, ip, tcp, conntrack; native.py
 *     is the glue), checked by tests/test_fastpath.py on every shared capture;
 *   - flow_frame.c: zeek/wire.py's text decoder of an ETooL::flow frame (tests/test_zeekws_fast.py);
 *   - mask_chunk.c: masking.py's name masking of one payload chunk (tests/test_masking_fast.py);
 *   - encode_arrays.c: features.py's model input arrays (tests/test_features_fast.py);
 *   - hello_key.c: fingerprints.py's packed hello fields (tests/test_hello_fields.py);
 *   - tsv_row.c: zeeklog.py's TSV row (tests/test_zeeklog.py); uid_text.c: flows.py's uid text;
 *   - this file: the module (its functions, ABI and init) and make(), which capture.c and flow_frame.c use
 *     to build flows.Packet and flows.Chunk objects.
 *
 * Each Python function stays the reference and the fallback; compiled.py hands the twins out, and
 * ETOOL_PURE_PYTHON=1 turns all of them off.
 */
#include "fastpath.h"

/* Record objects. flows.Packet and flows.Chunk are dataclasses with __slots__ whose generated __init__
 * only stores its arguments in the slots, in field order; calling it (a Python function) was most of the
 * cost of a packet in the capture reader. For such a class make() allocates the instance and fills the
 * slots directly; any other class (no __slots__, a __post_init__, other fields, a custom __init__) is called
 * as before.
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
PyObject *etool_make(PyObject *cls, PyObject *const *args, int n) {
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

static PyMethodDef module_methods[] = {
    {"uid_text", etool_uid_text, METH_O, "uid_text(digest12) -> the Zeek-format uid text of flows.make_uid"},
    {"hello_key", etool_hello_key, METH_O,
     "hello_key(data) -> bytes | None: fingerprints._hello_key_py (a TLS hello's sorted suites and types, packed)"},
    {"flow_frame", (PyCFunction)(void (*)(void))etool_flow_frame, METH_FASTCALL,
     "flow_frame(text, Packet, Chunk) -> (topic, uid, ts, orig_h, orig_p, resp_h, resp_p, packets, chunks, "
     "final, reply_topic, metadata key, metadata ts) | None: zeek.wire._flow_text's grammar"},
    {"mask_chunk", (PyCFunction)(void (*)(void))etool_mask_chunk, METH_FASTCALL,
     "mask_chunk(data, proto (0 tcp, 1 udp, 2 other), orig_p, resp_p, normalize) -> bytes: "
     "masking.mask_payload, then masking.normalize_random when normalize"},
    {"tsv_row", (PyCFunction)(void (*)(void))etool_tsv_row, METH_FASTCALL,
     "tsv_row(codes, row) -> str | None: zeeklog.ascii_row_formatter's plain rows; None = let Python write it"},
    {"encode_arrays", (PyCFunction)(void (*)(void))etool_encode_arrays, METH_FASTCALL,
     "encode_arrays(records, contexts|None, n, m, bb, k, sizes, mask, normalize, pkt, byt, seg, ctx, meta"
     "[, f, flt, fscale, cscale]) -> "
     "bool: features._arrays_py into the given zeroed arrays; False = declined, use the Python version"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastpath", "Compiled twins of etool_sensor's hot Python functions", -1,
                                      module_methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (etool_capture_init() < 0) return NULL;
    if (etool_encode_init() < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    /* capture/native.py's _FASTPATH_ABI: a module left from an older build (a failed optional rebuild keeps the old
       file) is not used with a newer capture/ */
    if (PyModule_AddIntConstant(m, "ABI", 7) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&etool_EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&etool_EngineType) < 0) {
        Py_DECREF(&etool_EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
