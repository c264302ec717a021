/* magnet._C.probe_train / probe_predict: the evaluation suite's linear probes
 * (csrc/model/probe.h), on NumPy arrays, with the GIL released while they run. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../core/alloc.h"
#include "../model/probe.h"
#include "bindings.h"
#include "dict_args.h"
#include "errors.h"

/* obj as a C-contiguous array of dtype `type` with `ndim` dimensions (new reference), or NULL. */
static PyArrayObject *probe_array(PyObject *obj, const char *name, int type, int ndim) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != type) {
        PyErr_Format(PyExc_TypeError, "%s must be a %s numpy array", name,
                     type == NPY_FLOAT32 ? "float32" : "int32");
        return NULL;
    }
    if (PyArray_NDIM((PyArrayObject *)obj) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     PyArray_NDIM((PyArrayObject *)obj));
        return NULL;
    }
    return (PyArrayObject *)mgpy_as_c_array(obj, type);
}

/* cfg["seed"] (default 0) as a uint64: any integer 0 <= seed < 2**64, as the other seeded
 * entry points take. 0, or -1 with an exception naming the seed. */
static int parse_probe_seed(PyObject *cfg, uint64_t *out) {
    PyObject *v = mgpy_dict_get(cfg, "seed");
    *out = 0;
    if (v == NULL && PyErr_Occurred()) return -1;
    if (v == NULL || v == Py_None) return 0;
    if (PyBool_Check(v) || !PyIndex_Check(v)) {
        PyErr_Format(PyExc_TypeError, "config 'seed' must be an int, got %s", Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *n = PyNumber_Index(v); /* numpy integers too */
    if (n == NULL) return -1;
    const unsigned long long x = PyLong_AsUnsignedLongLong(n);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "config 'seed' must be an integer in [0, 2**64), got %S", n);
        Py_DECREF(n);
        return -1;
    }
    Py_DECREF(n);
    *out = (uint64_t)x;
    return 0;
}

static int parse_probe_config(PyObject *cfg, mg_probe_config *c) {
    const int epochs = 10, batch = 256, one = 1;
    if (mgpy_dict_int(cfg, "epochs", &epochs, &c->epochs) ||
        mgpy_dict_int(cfg, "batch_size", &batch, &c->batch_size) ||
        mgpy_dict_float(cfg, "lr", 1e-3f, &c->lr) ||
        mgpy_dict_float(cfg, "weight_decay", 0.0f, &c->weight_decay) ||
        mgpy_dict_float(cfg, "beta1", 0.9f, &c->beta1) ||
        mgpy_dict_float(cfg, "beta2", 0.999f, &c->beta2) ||
        mgpy_dict_float(cfg, "eps", 1e-8f, &c->eps) ||
        mgpy_dict_int(cfg, "standardize", &one, &c->standardize))
        return -1;
    return parse_probe_seed(cfg, &c->seed);
}

/* probe_train(X float32[N, D], y int32[N], num_classes, config dict) -> (W[C, D], b[C],
 * epoch_loss[epochs]) */
PyObject *mgpy_probe_train(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_y, *cfg, *res = NULL;
    int C;
    if (!PyArg_ParseTuple(args, "OOiO!", &o_x, &o_y, &C, &PyDict_Type, &cfg)) return NULL;
    mg_probe_config c;
    if (parse_probe_config(cfg, &c)) return NULL;
    PyArrayObject *x = NULL, *y = NULL;
    PyObject *w_arr = NULL, *b_arr = NULL, *l_arr = NULL;
    if (!(x = probe_array(o_x, "X", NPY_FLOAT32, 2)) || !(y = probe_array(o_y, "y", NPY_INT32, 1)))
        goto done;
    const npy_intp N = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1);
    if (PyArray_DIM(y, 0) != N) {
        PyErr_Format(PyExc_ValueError, "y has %zd labels for %zd rows of X",
                     (Py_ssize_t)PyArray_DIM(y, 0), (Py_ssize_t)N);
        goto done;
    }
    if (N < 1) {
        PyErr_SetString(PyExc_ValueError, "probe_train: no training rows (X has 0 rows)");
        goto done;
    }
    if (D < 1 || D > (1 << 30)) {
        PyErr_Format(PyExc_ValueError, "probe_train: X needs 1 to 2**30 features, got %zd",
                     (Py_ssize_t)D);
        goto done;
    }
    if (C < 1 || C > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "probe_train: num_classes must be in [1, 2**20], got %d", C);
        goto done;
    }
    if (c.epochs < 1) {
        PyErr_Format(PyExc_ValueError, "probe_train: epochs must be >= 1, got %d", c.epochs);
        goto done;
    }
    npy_intp wd[2] = {C, D}, bd[1] = {C}, ld[1] = {c.epochs};
    if (!(w_arr = PyArray_ZEROS(2, wd, NPY_FLOAT32, 0)) ||
        !(b_arr = PyArray_ZEROS(1, bd, NPY_FLOAT32, 0)) ||
        !(l_arr = PyArray_ZEROS(1, ld, NPY_FLOAT32, 0)))
        goto done;
    mg_error err;
    mg_error_clear(&err);
    MGPY_BEGIN_C_WORK
    mg_probe_train((const float *)PyArray_DATA(x), (const int32_t *)PyArray_DATA(y), (long)N,
                   (int)D, C, &c, (float *)PyArray_DATA((PyArrayObject *)w_arr),
                   (float *)PyArray_DATA((PyArrayObject *)b_arr),
                   (float *)PyArray_DATA((PyArrayObject *)l_arr), &err);
    MGPY_END_C_WORK;
    if (err.code != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    res = Py_BuildValue("(OOO)", w_arr, b_arr, l_arr);
done:
    Py_XDECREF(x);
    Py_XDECREF(y);
    Py_XDECREF(w_arr);
    Py_XDECREF(b_arr);
    Py_XDECREF(l_arr);
    return res;
}

/* probe_predict(X float32[N, D], W float32[C, D], b float32[C]) -> int32[N] */
PyObject *mgpy_probe_predict(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_w, *o_b, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOO", &o_x, &o_w, &o_b)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL;
    PyObject *out = NULL;
    if (!(x = probe_array(o_x, "X", NPY_FLOAT32, 2)) ||
        !(w = probe_array(o_w, "W", NPY_FLOAT32, 2)) ||
        !(b = probe_array(o_b, "b", NPY_FLOAT32, 1)))
        goto done;
    const npy_intp N = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1), C = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != D || PyArray_DIM(b, 0) != C || C > (1 << 20) || D > (1 << 30)) {
        PyErr_Format(PyExc_ValueError, "W must be [C, %zd] and b [C] (got W %zdx%zd, b %zd)",
                     (Py_ssize_t)D, (Py_ssize_t)C, (Py_ssize_t)PyArray_DIM(w, 1),
                     (Py_ssize_t)PyArray_DIM(b, 0));
        goto done;
    }
    npy_intp od[1] = {N};
    if (!(out = PyArray_ZEROS(1, od, NPY_INT32, 0))) goto done;
    if (N == 0) {
        res = out;
        out = NULL;
        goto done;
    }
    mg_error err;
    mg_error_clear(&err);
    MGPY_BEGIN_C_WORK
    mg_probe_predict((const float *)PyArray_DATA(x), (long)N, (int)D, (int)C,
                     (const float *)PyArray_DATA(w), (const float *)PyArray_DATA(b),
                     (int32_t *)PyArray_DATA((PyArrayObject *)out), &err);
    MGPY_END_C_WORK;
    if (err.code != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    res = out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(out);
    return res;
}
