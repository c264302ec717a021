/* magnet._C.read_safetensors(path) -> dict[str, float32 ndarray]; the file is read and
 * converted without the GIL, then each tensor's buffer moves into its array without a copy. */
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
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path_bytes)) return NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    mg_safetensors st;
    mg_error err;
    mg_error_clear(&err);
    mg_code rc;
    MGPY_BEGIN_C_WORK
    rc = mg_safetensors_read(path, &st, &err);
    MGPY_END_C_WORK Py_DECREF(path_bytes);
    if (rc != MG_OK) return mgpy_raise(&err);

    PyObject *out = PyDict_New();
    if (out == NULL) goto fail;
    for (int i = 0; i < st.count; i++) {
        mg_st_entry *e = &st.entries[i];
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
}
