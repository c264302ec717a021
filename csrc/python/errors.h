/* The binding's bridge from the core's error codes to Python exceptions, and small shared
 * conversions every binding file needs. */
#ifndef MG_PYTHON_ERRORS_H
#define MG_PYTHON_ERRORS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "../backend/backend.h"
#include "../core/error.h"

/* Raises the Python exception matching err->code with err->msg; returns NULL. */
PyObject *mgpy_raise(const mg_error *err);

/* A new float32 ndarray of the given shape that takes ownership of data (allocated with
 * mg_alloc); on failure frees data and returns NULL with an exception set. */
PyObject *mgpy_array_take(int ndim, const int64_t *shape, float *data);

struct mg_param_slot_s;
/* A dict of float32 array copies of the slots of a parameter block. */
PyObject *mgpy_slots_to_dict(const mg_backend *be, const struct mg_param_slot_s *slots, int n_slots,
                             const float *block);
/* A new dict with dict's items under exact-str keys (a str subclass's value is copied): looking
 * names up in it runs no Python code of the user's (a key's __eq__), so it may be read while a
 * model's lock is held. NULL with TypeError when dict is not a dict or a key is not a str. */
PyObject *mgpy_plain_dict(PyObject *dict, const char *what);
/* Copies every slot's array from dict (exact names and sizes required); -1 with an exception.
 * Under a model's lock, dict comes from mgpy_plain_dict. */
int mgpy_dict_to_slots(const mg_backend *be, PyObject *dict, const struct mg_param_slot_s *slots,
                       int n_slots, float *block);

/* 1 when obj is an ndarray of dtype `type` whose memory the C core may read as C values: native
 * byte order, aligned and C-contiguous (a '>f4' array has float32's type number too). */
int mgpy_is_c_array(PyObject *obj, int type);
/* obj, an ndarray of dtype `type`, as such an array (new reference): obj itself when it is one,
 * else a copy in native byte order, aligned and contiguous. NULL with an exception. */
PyObject *mgpy_as_c_array(PyObject *obj, int type);

#endif
