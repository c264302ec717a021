/* magnet._C.read_safetensors(path, skip=None) -> dict[str, float32 ndarray]; the file is read
 * and converted without the GIL, then each tensor's buffer moves into its array without a copy.
 * Tensors named in skip are left out (and may have any dtype). */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../io/safetensors.h"
#include "bindings.h"
#include "errors.h"

PyObject *mgpy_read_safetensors(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_bytes; /* str, bytes or os.PathLike, encoded for the file system */
    PyObject *skip_obj = NULL;
    if (!PyArg_ParseTuple(args, "O&|O", PyUnicode_FSConverter, &path_bytes, &skip_obj)) return NULL;
    /* skip: names of tensors not to read (an iterable of str); their UTF-8 stays owned by the
     * str objects, which a tuple of our own keeps alive through the read (PySequence_Fast would
     * return a list itself, whose items another thread could replace while the GIL is out) */
    PyObject *skip_seq = NULL;
    const char **names = NULL;
    size_t *lens = NULL;
    mg_st_skip skip = {NULL, NULL, 0};
    if (skip_obj != NULL && skip_obj != Py_None) {
        skip_seq = PySequence_Tuple(skip_obj); /* any iterable, as a private tuple */
        if (skip_seq == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "skip must be an iterable of str");
        }
        if (skip_seq == NULL) {
            Py_DECREF(path_bytes);
            return NULL;
        }
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(skip_seq);
        names = PyMem_Calloc((size_t)n + 1, sizeof(char *));
        lens = PyMem_Calloc((size_t)n + 1, sizeof(size_t));
        if (names == NULL || lens == NULL) {
            PyErr_NoMemory();
            goto fail_skip;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t len;
            names[i] = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(skip_seq, i), &len);
            if (names[i] == NULL) goto fail_skip;
            lens[i] = (size_t)len;
        }
        skip = (mg_st_skip){names, lens, (int)n};
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    mg_safetensors st;
    mg_error err;
    mg_error_clear(&err);
    mg_code rc;
    MGPY_BEGIN_C_WORK
    rc = mg_safetensors_read(path, &skip, &st, &err);
    MGPY_END_C_WORK Py_DECREF(path_bytes);
    PyMem_Free(names);
    PyMem_Free(lens);
    Py_XDECREF(skip_seq);
    if (rc != MG_OK) return mgpy_raise(&err);

    PyObject *out = PyDict_New();
    if (out == NULL) goto fail;
    for (int i = 0; i < st.count; i++) {
        mg_st_entry *e = &st.entries[i];
        if (e->skipped) continue;
        PyObject *key = PyUnicode_DecodeUTF8(e->name, (Py_ssize_t)e->name_len, "strict");
        if (key == NULL) goto fail;
        /* The array owns the buffer from here, whether or not it was created. */
        PyObject *arr = mgpy_array_take(e->tensor.ndim, e->tensor.shape, e->tensor.data);
        e->tensor.data = NULL;
        if (arr == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int set = PyDict_SetItem(out, key, arr);
        Py_DECREF(key);
        Py_DECREF(arr);
        if (set != 0) goto fail;
    }
    mg_safetensors_free(&st);
    return out;
fail:
    Py_XDECREF(out);
    mg_safetensors_free(&st);
    return NULL;
fail_skip:
    PyMem_Free(names);
    PyMem_Free(lens);
    Py_DECREF(skip_seq);
    Py_DECREF(path_bytes);
    return NULL;
}
