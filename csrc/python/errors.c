#include "errors.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <string.h>

#include "../core/alloc.h"

int mgpy_is_c_array(PyObject *obj, int type) {
    if (!PyArray_Check(obj)) return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    return PyArray_TYPE(a) == type && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
           PyArray_ISNOTSWAPPED(a);
}

PyObject *mgpy_as_c_array(PyObject *obj, int type) {
    /* the descriptor of the type number is the native one: a swapped array is converted */
    return (PyObject *)PyArray_FromArray((PyArrayObject *)obj, PyArray_DescrFromType(type),
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

PyObject *mgpy_plain_dict(PyObject *dict, const char *what) {
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", what);
        return NULL;
    }
    PyObject *out = PyDict_New();
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (out != NULL && PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, "the keys of %s must be str, got %.80s", what,
                         Py_TYPE(key)->tp_name);
            Py_CLEAR(out);
            break;
        }
        PyObject *plain = PyUnicode_FromObject(key); /* an exact str; no __str__ runs */
        if (plain == NULL || PyDict_SetItem(out, plain, value) != 0) Py_CLEAR(out);
        Py_XDECREF(plain);
    }
    return out;
}

PyObject *mgpy_raise(const mg_error *err) {
    PyObject *type;
    switch (err->code) {
    case MG_ERR_TYPE:
        type = PyExc_TypeError;
        break;
    case MG_ERR_NOT_FOUND:
        type = PyExc_FileNotFoundError;
        break;
    case MG_ERR_IO:
        type = PyExc_OSError;
        break;
    case MG_ERR_NOMEM:
        type = PyExc_MemoryError;
        break;
    default:
        type = PyExc_ValueError;
        break;
    }
    /* a message may quote bytes from a corrupt file: never let decoding it raise instead */
    PyObject *msg = PyUnicode_DecodeUTF8(
        err->msg[0] ? err->msg : "magnet: unknown error",
        (Py_ssize_t)strlen(err->msg[0] ? err->msg : "magnet: unknown error"), "replace");
    if (msg == NULL) return NULL;
    PyErr_SetObject(type, msg);
    Py_DECREF(msg);
    return NULL;
}

/* The capsule frees the buffer when the array (and every view of it) is gone. */
static void free_capsule(PyObject *capsule) {
    mg_free(PyCapsule_GetPointer(capsule, "magnet.buffer"));
}

PyObject *mgpy_array_take(int ndim, const int64_t *shape, float *data) {
    npy_intp dims[8];
    for (int i = 0; i < ndim && i < 8; i++)
        dims[i] = (npy_intp)shape[i];
    PyObject *arr = PyArray_SimpleNewFromData(ndim, dims, NPY_FLOAT32, data);
    if (arr == NULL) {
        mg_free(data);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(data, "magnet.buffer", free_capsule);
    if (capsule == NULL) {
        Py_DECREF(arr);
        mg_free(data);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, capsule) != 0) {
        Py_DECREF(arr); /* the capsule reference was stolen and is released with arr */
        return NULL;
    }
    return arr;
}
