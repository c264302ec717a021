/* magnet._C.read_gguf(path) -> (metadata dict, {name: float32 ndarray}). Parsing and
 * dequantization run without the GIL; only the Python objects are built with it. */
#include "errors.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../core/alloc.h"
#include "../io/dequantize.h"
#include "../io/gguf.h"
#include "bindings.h"

static PyObject *str_to_py(mg_gguf_str s) {
    /* "replace": a vocabulary with a stray invalid byte should still load */
    return PyUnicode_DecodeUTF8(s.ptr, (Py_ssize_t)s.len, "replace");
}

static PyObject *scalar_to_py(const mg_gguf_value *v) {
    switch (v->type) {
    case MG_GGUF_UINT8:
    case MG_GGUF_UINT16:
    case MG_GGUF_UINT32:
    case MG_GGUF_UINT64:
        return PyLong_FromUnsignedLongLong(v->u64);
    case MG_GGUF_INT8:
    case MG_GGUF_INT16:
    case MG_GGUF_INT32:
    case MG_GGUF_INT64:
        return PyLong_FromLongLong(v->i64);
    case MG_GGUF_FLOAT32:
    case MG_GGUF_FLOAT64:
        return PyFloat_FromDouble(v->f64);
    case MG_GGUF_BOOL:
        return PyBool_FromLong(v->boolean);
    default:
        break;
    }
    PyErr_Format(PyExc_ValueError, "GGUF value of unknown type %u", v->type);
    return NULL;
}

static PyObject *value_to_py(const mg_gguf_value *v) {
    if (v->type == MG_GGUF_STRING) return str_to_py(v->str);
    if (v->type != MG_GGUF_ARRAY) return scalar_to_py(v);
    if (v->arr.count > (uint64_t)PY_SSIZE_T_MAX) return PyErr_NoMemory();
    PyObject *list = PyList_New((Py_ssize_t)v->arr.count);
    if (list == NULL) return NULL;
    for (uint64_t i = 0; i < v->arr.count; i++) {
        PyObject *item;
        if (v->arr.elem_type == MG_GGUF_STRING) {
            item = str_to_py(v->arr.strs[i]);
        } else if (v->arr.elem_type == MG_GGUF_ARRAY) {
            item = value_to_py(&v->arr.items[i]);
        } else if (v->arr.elem_type == MG_GGUF_FLOAT32 || v->arr.elem_type == MG_GGUF_FLOAT64) {
            item = PyFloat_FromDouble(mg_gguf_array_f64(v, i));
        } else if (v->arr.elem_type == MG_GGUF_BOOL) {
            item = PyBool_FromLong((long)mg_gguf_array_u64(v, i));
        } else if (v->arr.elem_type == MG_GGUF_INT8 || v->arr.elem_type == MG_GGUF_INT16 ||
                   v->arr.elem_type == MG_GGUF_INT32 || v->arr.elem_type == MG_GGUF_INT64) {
            item = PyLong_FromLongLong(mg_gguf_array_i64(v, i));
        } else {
            item = PyLong_FromUnsignedLongLong(mg_gguf_array_u64(v, i));
        }
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *metadata_to_py(const mg_gguf_file *f) {
    PyObject *dict = PyDict_New();
    if (dict == NULL) return NULL;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        PyObject *key = str_to_py(f->kv[i].key);
        if (key == NULL) goto fail;
        int dup = PyDict_Contains(dict, key);
        if (dup != 0) {
            if (dup > 0) PyErr_Format(PyExc_ValueError, "GGUF metadata key %R appears twice", key);
            Py_DECREF(key);
            goto fail;
        }
        PyObject *val = value_to_py(&f->kv[i].value);
        if (val == NULL || PyDict_SetItem(dict, key, val) != 0) {
            Py_DECREF(key);
            Py_XDECREF(val);
            goto fail;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

/* Dequantizes every tensor into its own buffer (threads over tensors); runs without the GIL. */
static mg_code dequantize_all(const mg_gguf_file *f, float **bufs, mg_error *err) {
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const mg_gguf_tensor *t = &f->tensors[i];
        if (!mg_ggml_type_supported(t->type)) {
            int nl = t->name.len > 80 ? 80 : (int)t->name.len;
            return mg_fail(err, MG_ERR_UNSUPPORTED,
                           "GGUF tensor '%.*s' has ggml type %s, which magnet cannot dequantize "
                           "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                           nl, t->name.ptr, mg_ggml_type_name(t->type));
        }
        bufs[i] = mg_alloc((size_t)t->numel, sizeof(float), "GGUF tensor", err);
        if (bufs[i] == NULL) return err->code;
    }
    int failed = 0;
    const long long n = (long long)f->n_tensors;
#pragma omp parallel for schedule(dynamic, 1)
    for (long long i = 0; i < n; i++) {
        mg_error local;
        mg_error_clear(&local);
        if (mg_gguf_read_tensor(f, (uint64_t)i, bufs[i], &local) != MG_OK) {
#pragma omp critical(mg_gguf_dequantize_error)
            {
                if (!failed) mg_fail(err, local.code, "%s", local.msg);
                failed = 1;
            }
        }
    }
    return failed ? err->code : MG_OK;
}

static PyObject *tensors_to_py(const mg_gguf_file *f, float **bufs) {
    PyObject *dict = PyDict_New();
    if (dict == NULL) return NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const mg_gguf_tensor *t = &f->tensors[i];
        PyObject *key = str_to_py(t->name);
        if (key == NULL) goto fail;
        int dup = PyDict_Contains(dict, key);
        if (dup != 0) {
            if (dup > 0) PyErr_Format(PyExc_ValueError, "GGUF tensor %R appears twice", key);
            Py_DECREF(key);
            goto fail;
        }
        /* numpy is row-major: the slowest ggml dimension (last ne) comes first */
        int64_t shape[MG_GGUF_MAX_DIMS];
        for (uint32_t d = 0; d < t->n_dims; d++)
            shape[d] = t->ne[t->n_dims - 1 - d];
        PyObject *arr = mgpy_array_take((int)t->n_dims, shape, bufs[i]);
        bufs[i] = NULL; /* owned by the array now, or already freed */
        if (arr == NULL || PyDict_SetItem(dict, key, arr) != 0) {
            Py_DECREF(key);
            Py_XDECREF(arr);
            goto fail;
        }
        Py_DECREF(key);
        Py_DECREF(arr);
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

PyObject *mgpy_read_gguf(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_bytes = NULL;
    if (!PyArg_ParseTuple(args, "O&:read_gguf", PyUnicode_FSConverter, &path_bytes)) return NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    mg_error err;
    mg_error_clear(&err);
    mg_gguf_file f;
    mg_code rc;
    MGPY_BEGIN_C_WORK
    rc = mg_gguf_open(&f, path, &err);
    MGPY_END_C_WORK Py_DECREF(path_bytes);
    if (rc != MG_OK) return mgpy_raise(&err);

    PyObject *meta = NULL, *tensors = NULL, *result = NULL;
    float **bufs = NULL;
    meta = metadata_to_py(&f);
    if (meta == NULL) goto done;
    bufs = mg_alloc((size_t)f.n_tensors, sizeof(float *), "GGUF tensor table", &err);
    if (bufs == NULL) {
        mgpy_raise(&err);
        goto done;
    }
    MGPY_BEGIN_C_WORK
    rc = dequantize_all(&f, bufs, &err);
    MGPY_END_C_WORK if (rc != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    tensors = tensors_to_py(&f, bufs);
    if (tensors == NULL) goto done;
    result = PyTuple_Pack(2, meta, tensors);
done:
    if (bufs) {
        for (uint64_t i = 0; i < f.n_tensors; i++)
            mg_free(bufs[i]);
        mg_free(bufs);
    }
    Py_XDECREF(meta);
    Py_XDECREF(tensors);
    mg_gguf_close(&f);
    return result;
}
