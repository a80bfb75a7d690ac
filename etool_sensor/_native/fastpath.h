/* What the files of the etool_sensor._fastpath extension share: one module built from one .c file per
 * compiled twin (module.c lists them). Names defined in one file and used in another carry the etool_ prefix
 * and stay inside the shared object (hidden visibility): only PyInit__fastpath is exported.
 */
#ifndef ETOOL_FASTPATH_H
#define ETOOL_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define ETOOL_INTERNAL __attribute__((visibility("hidden")))
#else
#define ETOOL_INTERNAL
#endif

/* module.c: cls(*args) for flows.Packet and flows.Chunk, filling their slots without running __init__ */
ETOOL_INTERNAL PyObject *etool_make(PyObject *cls, PyObject *const *args, int n);

/* capture.c: the capture reader's type (Engine) and its one-time set-up (CRC table, PyType_Ready) */
extern ETOOL_INTERNAL PyTypeObject etool_EngineType;
ETOOL_INTERNAL int etool_capture_init(void);

/* flow_frame.c */
ETOOL_INTERNAL PyObject *etool_flow_frame(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

/* mask_chunk.c; etool_mask_buf masks b[0:n] in place (encode_arrays.c masks its chunks with it): -1 when out
   of memory */
ETOOL_INTERNAL PyObject *etool_mask_chunk(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
ETOOL_INTERNAL int etool_mask_buf(uint8_t *b, Py_ssize_t n, int proto, long orig_p, long resp_p, int normalize);

/* encode_arrays.c; etool_encode_init interns the attribute names it reads */
ETOOL_INTERNAL PyObject *etool_encode_arrays(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
ETOOL_INTERNAL int etool_encode_init(void);

/* hello_key.c, tsv_row.c, uid_text.c */
ETOOL_INTERNAL PyObject *etool_hello_key(PyObject *m, PyObject *arg);
ETOOL_INTERNAL PyObject *etool_tsv_row(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
ETOOL_INTERNAL PyObject *etool_uid_text(PyObject *m, PyObject *arg);

#endif
