/* magnet._C.Generator (a decoding session: KV cache, next-token logits, sampler) and
 * magnet._C.embed (bidirectional forward + pooling). Every computation releases the GIL. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <limits.h>
#include <numpy/arrayobject.h>
#include <string.h>

#include "../core/alloc.h"
#include "../model/embed.h"
#include "../model/generate.h"
#include "bindings.h"
#include "errors.h"

static mg_model *model_of(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &MgpyModelType)) {
        PyErr_SetString(PyExc_TypeError, "expected a magnet._C.Model");
        return NULL;
    }
    mg_model *m = ((MgpyModel *)obj)->model;
    if (m == NULL) PyErr_SetString(PyExc_RuntimeError, "magnet._C.Model was not initialised");
    return m;
}

/* Runs `stmt` without the GIL, holding the model's read lock (weights cannot change under it;
 * a session's cache does not survive a weight update between its calls, which is the caller's
 * business). */
#define RUN_READING(model, stmt)                                                                   \
    MGPY_BEGIN_C_WORK                                                                              \
    mg_model_lock_read(model);                                                                     \
    stmt;                                                                                          \
    mg_model_unlock(model);                                                                        \
    MGPY_END_C_WORK

/* A private C-contiguous copy of obj as `type` with `ndim` dims (new reference); dims[i] >= 0
 * are required sizes. A copy always: the C side checks the ids and positions once and uses them
 * with the GIL released, when another thread could change the caller's array. */
static PyArrayObject *as_array(PyObject *obj, const char *name, int type, int ndim,
                               const npy_intp *dims) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(
        obj, type, ndim, ndim,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST | NPY_ARRAY_ENSURECOPY);
    if (a == NULL) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) return NULL; /* the copy, not the input */
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a %d-D integer array", name, ndim);
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (dims[i] >= 0 && PyArray_DIM(a, i) != dims[i]) {
            PyErr_Format(PyExc_ValueError, "%s has size %zd in dimension %d, expected %zd", name,
                         (Py_ssize_t)PyArray_DIM(a, i), i, (Py_ssize_t)dims[i]);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

typedef struct {
    PyObject_HEAD PyObject *model_obj; /* keeps the model alive */
    mg_model *model;
    mg_generator gen;
    int ready;
    int busy; /* set (under the GIL) while a call runs without it */
} MgpyGenerator;

static int claim(MgpyGenerator *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "magnet._C.Generator was not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this Generator is in use by another thread");
        return -1;
    }
    self->busy = 1;
    return 0;
}

/* eos_id: None, an int (-1: none) or a sequence of ints, the ids that end a row: into *ids
 * (PyMem_Malloc'ed, NULL when there are none; the caller frees it) and *n. */
static int eos_ids_from(PyObject *obj, int **ids, int *n) {
    *n = 0;
    *ids = NULL;
    if (obj == NULL || obj == Py_None) return 0;
    if (PyLong_Check(obj)) {
        long v = PyLong_AsLong(obj);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v == -1) return 0;
        *ids = PyMem_Malloc(sizeof(int));
        if (*ids == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        (*ids)[(*n)++] = v > INT_MAX ? INT_MAX : (v < INT_MIN ? INT_MIN : (int)v);
        return 0;
    }
    if (PyUnicode_Check(obj) || PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "eos_id must be an int or a sequence of ints");
        return -1;
    }
    PyObject *seq = PySequence_Fast(obj, "eos_id must be an int or a sequence of ints");
    if (seq == NULL) return -1;
    const Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len == 0) {
        Py_DECREF(seq);
        return 0;
    }
    *ids = PyMem_Malloc((size_t)len * sizeof(int));
    if (*ids == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long v = PyLong_Check(item) ? PyLong_AsLong(item) : -1;
        if (!PyLong_Check(item) || (v == -1 && PyErr_Occurred()) || v < 0 || v > INT_MAX) {
            Py_DECREF(seq);
            PyMem_Free(*ids);
            *ids = NULL;
            *n = 0;
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "eos ids must be non-negative token ids");
            }
            return -1;
        }
        (*ids)[(*n)++] = (int)v;
    }
    Py_DECREF(seq);
    return 0;
}

static int Generator_init(MgpyGenerator *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {
        "model", "rows",  "capacity",           "keep_hidden", "do_sample", "temperature", "top_k",
        "top_p", "min_p", "repetition_penalty", "seed",        "eos_id",    NULL};
    PyObject *model_obj;
    int B, capacity, keep_hidden = 0, do_sample = 0, top_k = 0;
    double temperature = 1.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    unsigned long long seed = 0;
    PyObject *eos_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oii|$ppdidddKO", kwlist, &model_obj, &B,
                                     &capacity, &keep_hidden, &do_sample, &temperature, &top_k,
                                     &top_p, &min_p, &rep, &seed, &eos_obj))
        return -1;
    mg_model *m = model_of(model_obj);
    if (m == NULL) return -1;
    int *eos_ids = NULL, n_eos = 0;
    if (eos_ids_from(eos_obj, &eos_ids, &n_eos) != 0) return -1;
    /* checked after the ids (their conversion can run Python code) and claimed before the GIL
     * goes: two threads' __init__ built one session into the same struct (a segfault later) */
    if (self->ready || self->busy) {
        PyMem_Free(eos_ids);
        PyErr_SetString(PyExc_RuntimeError, "Generator already initialised");
        return -1;
    }
    self->busy = 1;
    const sampling_params p = {do_sample, temperature, top_k, top_p, min_p, rep};
    mg_error err;
    mg_error_clear(&err);
    int rc;
    MGPY_BEGIN_C_WORK
    rc = mg_generator_init(&self->gen, m, B, capacity, keep_hidden, &p, (uint64_t)seed, eos_ids,
                           n_eos, &err);
    MGPY_END_C_WORK PyMem_Free(eos_ids);
    self->busy = 0;
    if (rc != MG_OK) {
        mgpy_raise(&err);
        return -1;
    }
    Py_INCREF(model_obj);
    self->model_obj = model_obj;
    self->model = m;
    self->ready = 1;
    return 0;
}

static void Generator_dealloc(MgpyGenerator *self) {
    if (self->ready) mg_generator_release(&self->gen);
    Py_XDECREF(self->model_obj);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* append(tokens int32[B,T], roles uint8[B,T], segments int32[B,T], positions int32[B,T]) */
static PyObject *Generator_append(MgpyGenerator *self, PyObject *args) {
    PyObject *o_tok, *o_role, *o_seg, *o_pos;
    if (!PyArg_ParseTuple(args, "OOOO", &o_tok, &o_role, &o_seg, &o_pos)) return NULL;
    npy_intp dims[2] = {self->gen.B, -1};
    PyArrayObject *tok = as_array(o_tok, "tokens", NPY_INT32, 2, dims);
    if (tok == NULL) return NULL;
    dims[1] = PyArray_DIM(tok, 1);
    PyArrayObject *role = as_array(o_role, "roles", NPY_UINT8, 2, dims);
    PyArrayObject *seg = role ? as_array(o_seg, "segments", NPY_INT32, 2, dims) : NULL;
    PyArrayObject *pos = seg ? as_array(o_pos, "positions", NPY_INT32, 2, dims) : NULL;
    PyObject *result = NULL;
    if (pos != NULL && claim(self) == 0) {
        mg_error err;
        mg_error_clear(&err);
        int rc;
        RUN_READING(self->model, rc = mg_generator_append(&self->gen, PyArray_DATA(tok),
                                                          PyArray_DATA(role), PyArray_DATA(seg),
                                                          PyArray_DATA(pos), (int)dims[1], &err));
        self->busy = 0;
        if (rc != MG_OK)
            mgpy_raise(&err);
        else
            result = Py_NewRef(Py_None);
    }
    Py_DECREF(tok);
    Py_XDECREF(role);
    Py_XDECREF(seg);
    Py_XDECREF(pos);
    return result;
}

/* logits_at(index int32[B]): each row's logits from the state at that cache index (-1: keep). */
static PyObject *Generator_logits_at(MgpyGenerator *self, PyObject *arg) {
    npy_intp dims[1] = {self->gen.B};
    PyArrayObject *idx = as_array(arg, "index", NPY_INT32, 1, dims);
    if (idx == NULL) return NULL;
    PyObject *result = NULL;
    if (claim(self) == 0) {
        mg_error err;
        mg_error_clear(&err);
        int rc;
        RUN_READING(self->model, rc = mg_generator_logits_at(&self->gen, PyArray_DATA(idx), &err));
        self->busy = 0;
        result = rc != MG_OK ? mgpy_raise(&err) : Py_NewRef(Py_None);
    }
    Py_DECREF(idx);
    return result;
}

/* Runs decode_step (positions NULL) or span_step into fresh arrays -> (tokens, logprobs). */
static PyObject *run_sampling_step(MgpyGenerator *self, PyArrayObject *positions) {
    if (claim(self) != 0) return NULL;
    npy_intp n = self->gen.B;
    PyObject *t = PyArray_SimpleNew(1, &n, NPY_INT32);
    PyObject *l = t ? PyArray_SimpleNew(1, &n, NPY_FLOAT32) : NULL;
    PyObject *result = NULL;
    if (l != NULL) {
        mg_error err;
        mg_error_clear(&err);
        int32_t *tok = PyArray_DATA((PyArrayObject *)t);
        float *lp = PyArray_DATA((PyArrayObject *)l);
        int rc;
        RUN_READING(
            self->model,
            rc = positions == NULL
                     ? mg_generator_decode_step(&self->gen, tok, lp, &err)
                     : mg_generator_span_step(&self->gen, PyArray_DATA(positions), tok, lp, &err));
        if (rc != MG_OK)
            mgpy_raise(&err);
        else
            result = Py_BuildValue("(OO)", t, l);
    }
    self->busy = 0;
    Py_XDECREF(t);
    Py_XDECREF(l);
    return result;
}

/* decode_step() -> (tokens int32[B] (-1: finished row), raw log-probabilities float32[B]) */
static PyObject *Generator_decode_step(MgpyGenerator *self, PyObject *unused) {
    (void)unused;
    return run_sampling_step(self, NULL);
}

/* span_step(positions int32[B]) -> (tokens int32[B], raw log-probabilities float32[B]) */
static PyObject *Generator_span_step(MgpyGenerator *self, PyObject *arg) {
    npy_intp dims[1] = {self->gen.B};
    PyArrayObject *pos = as_array(arg, "positions", NPY_INT32, 1, dims);
    if (pos == NULL) return NULL;
    PyObject *result = run_sampling_step(self, pos);
    Py_DECREF(pos);
    return result;
}

/* logprob(tokens int32[B]) -> float32[B]: raw log-probability of each row's token (-1: 0).
 * It claims the generator like a step does: a step running in another thread rewrites the
 * logits this reads, and a greedy GPU session copies them off the device under the model's
 * lock. */
static PyObject *Generator_logprob(MgpyGenerator *self, PyObject *arg) {
    if (!self->ready) return PyErr_Format(PyExc_RuntimeError, "Generator not initialised");
    npy_intp dims[1] = {self->gen.B};
    PyArrayObject *tok = as_array(arg, "tokens", NPY_INT32, 1, dims);
    if (tok == NULL) return NULL;
    PyObject *out = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (out != NULL && claim(self) != 0) Py_CLEAR(out);
    if (out != NULL) {
        mg_error err;
        mg_error_clear(&err);
        int rc;
        RUN_READING(self->model,
                    rc = mg_generator_logprob(&self->gen, PyArray_DATA(tok),
                                              PyArray_DATA((PyArrayObject *)out), &err));
        self->busy = 0;
        if (rc != MG_OK) {
            Py_CLEAR(out);
            mgpy_raise(&err);
        }
    }
    Py_DECREF(tok);
    return out;
}

/* logits() -> float32[B, V]: a copy of each row's current next-token logits. */
static PyObject *Generator_logits(MgpyGenerator *self, PyObject *unused) {
    (void)unused;
    if (!self->ready) return PyErr_Format(PyExc_RuntimeError, "Generator not initialised");
    npy_intp dims[2] = {self->gen.B, self->gen.V};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out == NULL || claim(self) != 0) {
        Py_XDECREF(out);
        return NULL;
    }
    /* through mg_generator_logits: a greedy GPU session keeps its logits on the device */
    const float *logits = NULL;
    RUN_READING(self->model, logits = mg_generator_logits(&self->gen));
    self->busy = 0;
    memcpy(PyArray_DATA((PyArrayObject *)out), logits, sizeof(float) * (size_t)dims[0] * dims[1]);
    return out;
}

/* finish(row): the row samples nothing more and is appended as padding from now on. */
static PyObject *Generator_finish(MgpyGenerator *self, PyObject *arg) {
    if (!self->ready) return PyErr_Format(PyExc_RuntimeError, "Generator not initialised");
    long row = PyLong_AsLong(arg);
    if (row == -1 && PyErr_Occurred()) return NULL;
    if (row < 0 || row >= self->gen.B)
        return PyErr_Format(PyExc_IndexError, "row %ld out of range", row);
    if (claim(self) != 0) return NULL; /* a step in another thread reads the flags */
    self->gen.finished[row] = 1;
    self->busy = 0;
    Py_RETURN_NONE;
}

/* One of the cache's counts, read while no step runs: a step in another thread grows them. */
static PyObject *cache_count(MgpyGenerator *self, int capacity) {
    if (!self->ready) return PyLong_FromLong(0);
    if (claim(self) != 0) return NULL;
    const int n = capacity ? self->gen.cache.capacity : self->gen.cache.length;
    self->busy = 0;
    return PyLong_FromLong(n);
}

static PyObject *Generator_length(MgpyGenerator *self, void *closure) {
    (void)closure;
    return cache_count(self, 0);
}

static PyObject *Generator_capacity(MgpyGenerator *self, void *closure) {
    (void)closure;
    return cache_count(self, 1);
}

static PyObject *Generator_finished(MgpyGenerator *self, void *closure) {
    (void)closure;
    npy_intp n = self->ready ? self->gen.B : 0;
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_BOOL);
    if (a == NULL || n == 0) return a;
    if (claim(self) != 0) { /* a step in another thread writes the flags */
        Py_DECREF(a);
        return NULL;
    }
    memcpy(PyArray_DATA((PyArrayObject *)a), self->gen.finished, n);
    self->busy = 0;
    return a;
}

static PyMethodDef Generator_methods[] = {
    {"append", (PyCFunction)Generator_append, METH_VARARGS,
     "append(tokens, roles, segments, positions): [B, T] arrays through the model"},
    {"logits_at", (PyCFunction)Generator_logits_at, METH_O,
     "logits_at(index int32[B]): logits from the state at a cache index (-1: keep)"},
    {"decode_step", (PyCFunction)Generator_decode_step, METH_NOARGS,
     "decode_step() -> (tokens int32[B], logprobs float32[B]); -1 marks a finished row"},
    {"span_step", (PyCFunction)Generator_span_step, METH_O,
     "span_step(positions int32[B]) -> (tokens, logprobs): sample, append as SPAN there"},
    {"logprob", (PyCFunction)Generator_logprob, METH_O,
     "logprob(tokens int32[B]) -> float32[B] under the current logits"},
    {"logits", (PyCFunction)Generator_logits, METH_NOARGS, "logits() -> float32[B, V] (copy)"},
    {"finish", (PyCFunction)Generator_finish, METH_O, "finish(row): stop sampling that row"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Generator_getset[] = {
    {"length", (getter)Generator_length, NULL, "tokens per row appended so far", NULL},
    {"capacity", (getter)Generator_capacity, NULL,
     "tokens per row allocated now (grows on demand up to the session's capacity)", NULL},
    {"finished", (getter)Generator_finished, NULL, "bool[B]: rows that are done", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MgpyGeneratorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "magnet._C.Generator",
    .tp_basicsize = sizeof(MgpyGenerator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Generator(model, rows, capacity, *, keep_hidden, do_sample, temperature, top_k, "
              "top_p, min_p, repetition_penalty, seed, eos_id): a decoding session.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Generator_init,
    .tp_dealloc = (destructor)Generator_dealloc,
    .tp_methods = Generator_methods,
    .tp_getset = Generator_getset,
};

/* embed(model, tokens int32[B,T], segments int32[B,T], start int32[B], end int32[B], mode,
 * normalize) -> float32[B, D]; mode 0 = last token of the range, 1 = mean over it. */
PyObject *mgpy_embed(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_model, *o_tok, *o_seg, *o_start, *o_end;
    int mode, normalize;
    if (!PyArg_ParseTuple(args, "OOOOOip", &o_model, &o_tok, &o_seg, &o_start, &o_end, &mode,
                          &normalize))
        return NULL;
    mg_model *m = model_of(o_model);
    if (m == NULL) return NULL;
    npy_intp dims[2] = {-1, -1};
    PyArrayObject *tok = as_array(o_tok, "tokens", NPY_INT32, 2, dims);
    if (tok == NULL) return NULL;
    dims[0] = PyArray_DIM(tok, 0);
    dims[1] = PyArray_DIM(tok, 1);
    PyArrayObject *seg = as_array(o_seg, "segments", NPY_INT32, 2, dims);
    PyArrayObject *start = seg ? as_array(o_start, "start", NPY_INT32, 1, dims) : NULL;
    PyArrayObject *end = start ? as_array(o_end, "end", NPY_INT32, 1, dims) : NULL;
    PyObject *result = NULL;
    if (end != NULL) {
        mg_error err;
        mg_error_clear(&err);
        const int B = (int)dims[0], T = (int)dims[1], D = m->config.dim;
        float *out = NULL;
        if (dims[0] <= 0 || dims[1] <= 0 || dims[0] > (1 << 24) || dims[1] > (1 << 24))
            mg_fail(&err, MG_ERR_VALUE, "tokens has empty or absurd shape");
        else
            out = mg_alloc_uninit((size_t)B * D, sizeof(float), "embeddings", &err);
        if (out != NULL) {
            RUN_READING(m, mg_model_embed(m, PyArray_DATA(tok), PyArray_DATA(seg),
                                          PyArray_DATA(start), PyArray_DATA(end), B, T,
                                          (mg_pooling)mode, normalize, out, &err));
        }
        if (err.code != MG_OK) {
            mg_free(out);
            mgpy_raise(&err);
        } else {
            int64_t shape[2] = {B, D};
            result = mgpy_array_take(2, shape, out);
        }
    }
    Py_DECREF(tok);
    Py_XDECREF(seg);
    Py_XDECREF(start);
    Py_XDECREF(end);
    return result;
}
