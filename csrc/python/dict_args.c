/* Reading typed settings out of the dicts the Python layer passes down. */
#include "dict_args.h"

PyObject *mgpy_dict_get(PyObject *dict, const char *key) {
    PyObject *k = PyUnicode_FromString(key);
    if (k == NULL) return NULL;
    PyObject *v = PyDict_GetItemWithError(dict, k);
    Py_DECREF(k);
    return v;
}

/* Reads an int (required when dflt is NULL) from the config dict. */
int mgpy_dict_int(PyObject *cfg, const char *key, const int *dflt, int *out) {
    PyObject *v = mgpy_dict_get(cfg, key);
    if (v == NULL && PyErr_Occurred()) return -1;
    if (v == NULL || v == Py_None) {
        if (dflt) {
            *out = *dflt;
            return 0;
        }
        PyErr_Format(PyExc_ValueError, "config is missing '%s'", key);
        return -1;
    }
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "config '%s' must be an int", key);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if ((x == -1 && PyErr_Occurred()) || x < -(1L << 30) || x > (1L << 30)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "config '%s' is out of range", key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int mgpy_dict_float(PyObject *cfg, const char *key, float dflt, float *out) {
    PyObject *v = mgpy_dict_get(cfg, key);
    if (v == NULL && PyErr_Occurred()) return -1;
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "config '%s' must be a number", key);
        return -1;
    }
    *out = (float)x;
    return 0;
}
