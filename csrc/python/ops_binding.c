/* Test-oriented entry points to single ops (forward and backward on NumPy arrays), used by the
 * gradient checks. They are reachable by users, so every shape and dtype is checked here. Each
 * returns fresh arrays; gradients start from zero, so an accumulating backward returns the
 * gradient itself. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <omp.h>
#include <string.h>
#undef I /* <complex.h>, through NumPy, defines I; the op headers name a dimension I */

#include "../core/alloc.h"
#include "../core/rng.h"
#include "../core/threads.h"
#include "../ops/activation.h"
#include "../ops/adamw.h"
#include "../ops/attention.h"
#include "../ops/dropout.h"
#include "../ops/embedding.h"
#include "../ops/loss.h"
#include "../ops/matmul.h"
#include "../ops/norm.h"
#include "../ops/rope.h"
#include "bindings.h"
#include "errors.h"

/* Every array a call creates or converts, released together on every exit path. */
typedef struct {
    PyObject *objs[24];
    int n;
} held;

static void release(held *h) {
    for (int i = 0; i < h->n; i++)
        Py_XDECREF(h->objs[i]);
    h->n = 0;
}

static PyObject *keep(held *h, PyObject *o) {
    if (o != NULL) h->objs[h->n++] = o;
    return o;
}

static const char *type_name(int type) {
    switch (type) {
    case NPY_FLOAT32:
        return "float32";
    case NPY_INT32:
        return "int32";
    case NPY_UINT8:
        return "uint8";
    default:
        return "?";
    }
}

/* obj as a C-contiguous array of exactly this dtype and ndim (ndim < 0: any); a contiguous copy
 * is made of strided input. NULL with TypeError/ValueError. */
static PyArrayObject *arg_array(held *h, PyObject *obj, const char *name, int type, int ndim) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != type) {
        PyErr_Format(PyExc_TypeError, "%s must be a %s numpy array", name, type_name(type));
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM((PyArrayObject *)obj) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     PyArray_NDIM((PyArrayObject *)obj));
        return NULL;
    }
    return (PyArrayObject *)keep(h, mgpy_as_c_array(obj, type));
}

/* Requires a.shape[axis] == want. */
static int expect_dim(PyArrayObject *a, const char *name, int axis, npy_intp want) {
    if (PyArray_DIM(a, axis) == want) return 0;
    PyErr_Format(PyExc_ValueError, "%s has size %zd along axis %d, expected %zd", name,
                 (Py_ssize_t)PyArray_DIM(a, axis), axis, (Py_ssize_t)want);
    return -1;
}

static int expect_same_shape(PyArrayObject *a, PyArrayObject *b, const char *an, const char *bn) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        memcmp(PyArray_DIMS(a), PyArray_DIMS(b), sizeof(npy_intp) * PyArray_NDIM(a)) == 0)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s and %s must have the same shape", bn, an);
    return -1;
}

/* Sizes the ops take as int. */
static int expect_int_range(npy_intp x, const char *what) {
    if (x >= 0 && x < (1L << 31)) return 0;
    PyErr_Format(PyExc_ValueError, "%s of %zd is too large", what, (Py_ssize_t)x);
    return -1;
}

static float *f32(PyArrayObject *a) {
    return a ? (float *)PyArray_DATA(a) : NULL;
}

/* A new zeroed float32 array shaped like a. */
static PyArrayObject *zeros_like(held *h, PyArrayObject *a) {
    return (PyArrayObject *)keep(h,
                                 PyArray_ZEROS(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32, 0));
}

static PyArrayObject *copy_of(held *h, PyArrayObject *a) {
    return (PyArrayObject *)keep(h, PyArray_NewCopy(a, NPY_CORDER));
}

/* op_matmul(inp[N,I], weight[O,I], bias[O] or None, dout[N,O]) -> (out, dinp, dweight, dbias) */
PyObject *mgpy_op_matmul(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_inp, *o_w, *o_b, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOOO", &o_inp, &o_w, &o_b, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *inp, *w, *b = NULL, *dout, *out, *dinp, *dw, *db = NULL;
    if (!(inp = arg_array(&h, o_inp, "inp", NPY_FLOAT32, 2)) ||
        !(w = arg_array(&h, o_w, "weight", NPY_FLOAT32, 2)) ||
        (o_b != Py_None && !(b = arg_array(&h, o_b, "bias", NPY_FLOAT32, 1))) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, 2)))
        goto done;
    const npy_intp N = PyArray_DIM(inp, 0), I = PyArray_DIM(inp, 1), O = PyArray_DIM(w, 0);
    if (expect_dim(w, "weight", 1, I) || (b && expect_dim(b, "bias", 0, O)) ||
        expect_dim(dout, "dout", 0, N) || expect_dim(dout, "dout", 1, O) ||
        expect_int_range(N, "rows") || expect_int_range(I, "inputs") ||
        expect_int_range(O, "outputs"))
        goto done;
    if (!(out = zeros_like(&h, dout)) || !(dinp = zeros_like(&h, inp)) ||
        !(dw = zeros_like(&h, w)) || (b && !(db = zeros_like(&h, b))))
        goto done;
    MGPY_BEGIN_C_WORK
    matmul_forward(f32(out), f32(inp), f32(w), f32(b), (int)N, (int)I, (int)O, false);
    matmul_backward(f32(dinp), f32(dw), f32(db), f32(dout), f32(inp), f32(w), (int)N, (int)I,
                    (int)O);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OOOO)", out, dinp, dw, db ? (PyObject *)db : Py_None);
done:
    release(&h);
    return res;
}

/* Shared by op_rmsnorm / op_layernorm: (inp[N,D], weight[D], bias[D] or absent, eps, dout[N,D]) */
static PyObject *norm_op(PyObject *args, int layer) {
    PyObject *o_inp, *o_w, *o_b = Py_None, *o_dout, *res = NULL;
    float eps;
    if (layer ? !PyArg_ParseTuple(args, "OOOfO", &o_inp, &o_w, &o_b, &eps, &o_dout)
              : !PyArg_ParseTuple(args, "OOfO", &o_inp, &o_w, &eps, &o_dout))
        return NULL;
    held h = {{0}, 0};
    PyArrayObject *inp, *w, *b = NULL, *dout, *out, *dinp, *dw, *db = NULL;
    if (!(inp = arg_array(&h, o_inp, "inp", NPY_FLOAT32, 2)) ||
        !(w = arg_array(&h, o_w, "weight", NPY_FLOAT32, 1)) ||
        (layer && !(b = arg_array(&h, o_b, "bias", NPY_FLOAT32, 1))) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, 2)))
        goto done;
    const npy_intp N = PyArray_DIM(inp, 0), D = PyArray_DIM(inp, 1);
    if (expect_dim(w, "weight", 0, D) || (b && expect_dim(b, "bias", 0, D)) ||
        expect_same_shape(inp, dout, "inp", "dout") || expect_int_range(N, "rows") ||
        expect_int_range(D, "dim"))
        goto done;
    if (!(eps > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "eps must be > 0");
        goto done;
    }
    if (!(out = zeros_like(&h, inp)) || !(dinp = zeros_like(&h, inp)) ||
        !(dw = zeros_like(&h, w)) || (b && !(db = zeros_like(&h, b))))
        goto done;
    MGPY_BEGIN_C_WORK
    if (layer) {
        layernorm_forward(f32(out), f32(inp), f32(w), f32(b), (int)N, (int)D, eps);
        layernorm_backward(f32(dinp), f32(dw), f32(db), f32(dout), f32(inp), f32(w), (int)N, (int)D,
                           eps);
    } else {
        rmsnorm_forward(f32(out), f32(inp), f32(w), (int)N, (int)D, eps);
        rmsnorm_backward(f32(dinp), f32(dw), f32(dout), f32(inp), f32(w), (int)N, (int)D, eps);
    }
    MGPY_END_C_WORK;
    res =
        layer ? Py_BuildValue("(OOOO)", out, dinp, dw, db) : Py_BuildValue("(OOO)", out, dinp, dw);
done:
    release(&h);
    return res;
}

/* op_rmsnorm(inp[N,D], weight[D], eps, dout[N,D]) -> (out, dinp, dweight) */
PyObject *mgpy_op_rmsnorm(PyObject *self, PyObject *args) {
    (void)self;
    return norm_op(args, 0);
}

/* op_layernorm(inp, weight, bias, eps, dout) -> (out, dinp, dweight, dbias) */
PyObject *mgpy_op_layernorm(PyObject *self, PyObject *args) {
    (void)self;
    return norm_op(args, 1);
}

/* op_rope(x[N,H,hd], pos int32[N], inv_freq[hd/2], dout[N,H,hd]) -> (out, dx) */
PyObject *mgpy_op_rope(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_pos, *o_f, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOOO", &o_x, &o_pos, &o_f, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *x, *pos, *fr, *dout, *out, *dx;
    if (!(x = arg_array(&h, o_x, "x", NPY_FLOAT32, 3)) ||
        !(pos = arg_array(&h, o_pos, "pos", NPY_INT32, 1)) ||
        !(fr = arg_array(&h, o_f, "inv_freq", NPY_FLOAT32, 1)) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, 3)))
        goto done;
    const npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 1), hd = PyArray_DIM(x, 2);
    if (hd % 2 != 0 || hd / 2 > 512) {
        PyErr_Format(PyExc_ValueError, "head size must be even and at most 1024, got %zd",
                     (Py_ssize_t)hd);
        goto done;
    }
    if (expect_dim(pos, "pos", 0, N) || expect_dim(fr, "inv_freq", 0, hd / 2) ||
        expect_same_shape(x, dout, "x", "dout") || expect_int_range(N, "rows") ||
        expect_int_range(H, "heads"))
        goto done;
    if (!(out = copy_of(&h, x)) || !(dx = copy_of(&h, dout))) goto done;
    const int *p = (const int *)PyArray_DATA(pos);
    MGPY_BEGIN_C_WORK
    rope_forward(f32(out), p, f32(fr), (int)N, (int)H, (int)hd);
    rope_backward(f32(dx), p, f32(fr), (int)N, (int)H, (int)hd);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OO)", out, dx);
done:
    release(&h);
    return res;
}

/* op_attention(q[B,T,Hq,hd], k[B,T,Hkv,hd], v[B,T,Hkv,hd], roles uint8[B,T],
 *              segments int32[B,T], dout[B,T,Hq,hd]) -> (out, dq, dk, dv) */
PyObject *mgpy_op_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_q, *o_k, *o_v, *o_r, *o_s, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOO", &o_q, &o_k, &o_v, &o_r, &o_s, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *q, *k, *v, *roles, *seg, *dout, *out, *dq, *dk, *dv;
    if (!(q = arg_array(&h, o_q, "q", NPY_FLOAT32, 4)) ||
        !(k = arg_array(&h, o_k, "k", NPY_FLOAT32, 4)) ||
        !(v = arg_array(&h, o_v, "v", NPY_FLOAT32, 4)) ||
        !(roles = arg_array(&h, o_r, "roles", NPY_UINT8, 2)) ||
        !(seg = arg_array(&h, o_s, "segments", NPY_INT32, 2)) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, 4)))
        goto done;
    const npy_intp B = PyArray_DIM(q, 0), T = PyArray_DIM(q, 1), Hq = PyArray_DIM(q, 2);
    const npy_intp hd = PyArray_DIM(q, 3), Hkv = PyArray_DIM(k, 2);
    if (expect_dim(k, "k", 0, B) || expect_dim(k, "k", 1, T) || expect_dim(k, "k", 3, hd) ||
        expect_same_shape(k, v, "k", "v") || expect_same_shape(q, dout, "q", "dout") ||
        expect_dim(roles, "roles", 0, B) || expect_dim(roles, "roles", 1, T) ||
        expect_dim(seg, "segments", 0, B) || expect_dim(seg, "segments", 1, T) ||
        expect_int_range(B, "batch") || expect_int_range(T, "sequence length"))
        goto done;
    if (hd < 1 || hd > MG_ATT_MAX_HD || Hkv < 1 || Hq % Hkv != 0) {
        PyErr_Format(PyExc_ValueError,
                     "need 1 <= head size <= %d and query heads a multiple of kv heads, got "
                     "hd=%zd Hq=%zd Hkv=%zd",
                     MG_ATT_MAX_HD, (Py_ssize_t)hd, (Py_ssize_t)Hq, (Py_ssize_t)Hkv);
        goto done;
    }
    const uint8_t *rl = (const uint8_t *)PyArray_DATA(roles);
    const int32_t *sg = (const int32_t *)PyArray_DATA(seg);
    for (npy_intp i = 0; i < B * T; i++)
        if (rl[i] > MG_ROLE_SPAN || sg[i] < -1) {
            PyErr_SetString(PyExc_ValueError,
                            "roles must be 0 (CONTEXT) or 1 (SPAN) and segments >= -1");
            goto done;
        }
    if (!(out = zeros_like(&h, q)) || !(dq = zeros_like(&h, q)) || !(dk = zeros_like(&h, k)) ||
        !(dv = zeros_like(&h, v)))
        goto done;
    const attention_shape s = {(int)B, (int)T, (int)T, 0, (int)T, (int)Hq, (int)Hkv, (int)hd};
    mg_error err;
    mg_error_clear(&err);
    float *scratch = NULL;
    /* The scratch serves the team this call runs: its count is read inside the fork gate that
     * fixes it for the call, so a set_num_threads from another thread cannot change it between
     * sizing the scratch and using it. */
    MGPY_BEGIN_C_WORK
    const int threads = omp_get_max_threads();
    const size_t fwd = ATTENTION_SCRATCH(B, Hkv, hd, T, threads);
    const size_t bwd = ATTENTION_BACKWARD_SCRATCH(hd, T, threads);
    scratch = mg_alloc_uninit(fwd > bwd ? fwd : bwd, sizeof(float), "attention scratch", &err);
    if (scratch != NULL) {
        attention_forward(f32(out), f32(q), f32(k), f32(v), rl, sg, rl, sg, s, scratch);
        attention_backward(f32(dq), f32(dk), f32(dv), f32(dout), f32(q), f32(k), f32(v), rl, sg, rl,
                           sg, s, scratch);
    }
    MGPY_END_C_WORK;
    if (scratch == NULL) {
        mgpy_raise(&err);
        goto done;
    }
    mg_free(scratch);
    res = Py_BuildValue("(OOOO)", out, dq, dk, dv);
done:
    release(&h);
    return res;
}

/* op_swiglu(gate, up, dout) -> (out, dgate, dup), any one shape */
PyObject *mgpy_op_swiglu(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_g, *o_u, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOO", &o_g, &o_u, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *g, *u, *dout, *out, *dg, *du;
    if (!(g = arg_array(&h, o_g, "gate", NPY_FLOAT32, -1)) ||
        !(u = arg_array(&h, o_u, "up", NPY_FLOAT32, -1)) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, -1)) ||
        expect_same_shape(g, u, "gate", "up") || expect_same_shape(g, dout, "gate", "dout"))
        goto done;
    if (!(out = zeros_like(&h, g)) || !(dg = zeros_like(&h, g)) || !(du = zeros_like(&h, g)))
        goto done;
    const long n = (long)PyArray_SIZE(g);
    MGPY_BEGIN_C_WORK
    swiglu_forward(f32(out), f32(g), f32(u), n);
    swiglu_backward(f32(dg), f32(du), f32(dout), f32(g), f32(u), n);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OOO)", out, dg, du);
done:
    release(&h);
    return res;
}

/* op_gelu_tanh(x, dout) -> (out, dx) */
PyObject *mgpy_op_gelu_tanh(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OO", &o_x, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *x, *dout, *out, *dx;
    if (!(x = arg_array(&h, o_x, "x", NPY_FLOAT32, -1)) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, -1)) ||
        expect_same_shape(x, dout, "x", "dout"))
        goto done;
    if (!(out = copy_of(&h, x)) || !(dx = zeros_like(&h, x))) goto done;
    const long n = (long)PyArray_SIZE(x);
    MGPY_BEGIN_C_WORK
    gelu_tanh_forward(f32(out), n);
    gelu_tanh_backward(f32(dx), f32(dout), f32(x), n);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OO)", out, dx);
done:
    release(&h);
    return res;
}

/* op_embedding(tokens int32[N], pos int32[N], wte[V,D], wpe[P,D] or None, dout[N,D])
 * -> (out, dwte, dwpe or None); tokens < 0 are skipped by the backward only, so the forward
 * requires ids in range. */
PyObject *mgpy_op_embedding(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_t, *o_p, *o_wte, *o_wpe, *o_dout, *res = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO", &o_t, &o_p, &o_wte, &o_wpe, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *tok, *pos, *wte, *wpe = NULL, *dout, *out, *dwte, *dwpe = NULL;
    if (!(tok = arg_array(&h, o_t, "tokens", NPY_INT32, 1)) ||
        !(pos = arg_array(&h, o_p, "pos", NPY_INT32, 1)) ||
        !(wte = arg_array(&h, o_wte, "wte", NPY_FLOAT32, 2)) ||
        (o_wpe != Py_None && !(wpe = arg_array(&h, o_wpe, "wpe", NPY_FLOAT32, 2))) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, 2)))
        goto done;
    const npy_intp N = PyArray_DIM(tok, 0), V = PyArray_DIM(wte, 0), D = PyArray_DIM(wte, 1);
    const npy_intp P = wpe ? PyArray_DIM(wpe, 0) : 0;
    if (expect_dim(pos, "pos", 0, N) || (wpe && expect_dim(wpe, "wpe", 1, D)) ||
        expect_dim(dout, "dout", 0, N) || expect_dim(dout, "dout", 1, D) ||
        expect_int_range(N, "tokens") || expect_int_range(D, "dim"))
        goto done;
    const int *t = (const int *)PyArray_DATA(tok), *p = (const int *)PyArray_DATA(pos);
    for (npy_intp i = 0; i < N; i++)
        if (t[i] < 0 || t[i] >= V || (wpe && (p[i] < 0 || p[i] >= P))) {
            PyErr_Format(PyExc_ValueError, "token %d or position %d at %zd is out of range", t[i],
                         p[i], (Py_ssize_t)i);
            goto done;
        }
    if (!(out = zeros_like(&h, dout)) || !(dwte = zeros_like(&h, wte)) ||
        (wpe && !(dwpe = zeros_like(&h, wpe))))
        goto done;
    MGPY_BEGIN_C_WORK
    embedding_forward(f32(out), t, p, f32(wte), f32(wpe), (int)N, (int)D);
    embedding_backward(f32(dwte), f32(dwpe), f32(dout), t, p, (int)N, (int)D);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OOO)", out, dwte, dwpe ? (PyObject *)dwpe : Py_None);
done:
    release(&h);
    return res;
}

/* op_cross_entropy(logits[N,V], labels int32[N], grad_scale=1.0) -> (loss_sum, count, dlogits) */
PyObject *mgpy_op_cross_entropy(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_l, *o_y, *res = NULL;
    float grad_scale = 1.0f;
    if (!PyArg_ParseTuple(args, "OO|f", &o_l, &o_y, &grad_scale)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *logits, *labels, *dl;
    if (!(logits = arg_array(&h, o_l, "logits", NPY_FLOAT32, 2)) ||
        !(labels = arg_array(&h, o_y, "labels", NPY_INT32, 1)))
        goto done;
    const npy_intp N = PyArray_DIM(logits, 0), V = PyArray_DIM(logits, 1);
    if (expect_dim(labels, "labels", 0, N) || expect_int_range(V, "classes")) goto done;
    if (V < 1) {
        PyErr_SetString(PyExc_ValueError, "logits need at least one class");
        goto done;
    }
    if (!(dl = copy_of(&h, logits))) goto done;
    double loss = 0.0;
    long count = 0;
    mg_error err;
    mg_error_clear(&err);
    int rc;
    MGPY_BEGIN_C_WORK
    rc = cross_entropy_forward_backward(f32(dl), (const int32_t *)PyArray_DATA(labels), (long)N,
                                        (int)V, grad_scale, &loss, &count, &err);
    MGPY_END_C_WORK;
    if (rc != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    res = Py_BuildValue("(dlO)", loss, count, dl);
done:
    release(&h);
    return res;
}

/* op_infonce(a[n,D], b[n,D], temperature, grad_scale=1.0) -> (loss, da, db) */
PyObject *mgpy_op_infonce(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_a, *o_b, *res = NULL;
    float temperature, grad_scale = 1.0f;
    if (!PyArg_ParseTuple(args, "OOf|f", &o_a, &o_b, &temperature, &grad_scale)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *a, *b, *da, *db;
    if (!(a = arg_array(&h, o_a, "a", NPY_FLOAT32, 2)) ||
        !(b = arg_array(&h, o_b, "b", NPY_FLOAT32, 2)) || expect_same_shape(a, b, "a", "b"))
        goto done;
    const npy_intp n = PyArray_DIM(a, 0), D = PyArray_DIM(a, 1);
    if (expect_int_range(n, "batch") || expect_int_range(D, "dim")) goto done;
    if (n < 1 || D < 1 || !(temperature > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "need a non-empty batch and temperature > 0");
        goto done;
    }
    if (!(da = zeros_like(&h, a)) || !(db = zeros_like(&h, b))) goto done;
    mg_error err;
    mg_error_clear(&err);
    float *scratch = mg_alloc_uninit(INFONCE_SCRATCH(n, D), sizeof(float), "infonce scratch", &err);
    if (scratch == NULL) {
        mgpy_raise(&err);
        goto done;
    }
    float loss;
    MGPY_BEGIN_C_WORK
    infonce_forward_backward(&loss, f32(da), f32(db), f32(a), f32(b), (int)n, (int)D, temperature,
                             grad_scale, scratch);
    MGPY_END_C_WORK;
    mg_free(scratch);
    res = Py_BuildValue("(dOO)", (double)loss, da, db);
done:
    release(&h);
    return res;
}

/* op_dropout(x, p, seed, offset, dout) -> (out, dinp) */
PyObject *mgpy_op_dropout(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_dout, *res = NULL;
    float p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OfKKO", &o_x, &p, &seed, &offset, &o_dout)) return NULL;
    held h = {{0}, 0};
    PyArrayObject *x, *dout, *out, *dx;
    if (!(x = arg_array(&h, o_x, "x", NPY_FLOAT32, -1)) ||
        !(dout = arg_array(&h, o_dout, "dout", NPY_FLOAT32, -1)) ||
        expect_same_shape(x, dout, "x", "dout"))
        goto done;
    if (!(p >= 0.0f && p < 1.0f)) {
        char got[32]; /* PyErr_Format has no %g */
        snprintf(got, sizeof(got), "%g", (double)p);
        PyErr_Format(PyExc_ValueError, "dropout p must be in [0, 1), got %s", got);
        goto done;
    }
    if (!(out = zeros_like(&h, x)) || !(dx = zeros_like(&h, x))) goto done;
    const long n = (long)PyArray_SIZE(x);
    MGPY_BEGIN_C_WORK
    dropout_forward(f32(out), f32(x), n, p, seed, offset);
    dropout_backward(f32(dx), f32(dout), n, p, seed, offset);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OO)", out, dx);
done:
    release(&h);
    return res;
}

/* op_adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> (param, m, v), new
 * arrays (the inputs are not modified) */
PyObject *mgpy_op_adamw(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_p, *o_g, *o_m, *o_v, *res = NULL;
    float lr, b1, b2, eps, wd;
    int step;
    if (!PyArg_ParseTuple(args, "OOOOfffffi", &o_p, &o_g, &o_m, &o_v, &lr, &b1, &b2, &eps, &wd,
                          &step))
        return NULL;
    held h = {{0}, 0};
    PyArrayObject *p, *g, *m, *v, *p2, *m2, *v2;
    if (!(p = arg_array(&h, o_p, "param", NPY_FLOAT32, -1)) ||
        !(g = arg_array(&h, o_g, "grad", NPY_FLOAT32, -1)) ||
        !(m = arg_array(&h, o_m, "m", NPY_FLOAT32, -1)) ||
        !(v = arg_array(&h, o_v, "v", NPY_FLOAT32, -1)) ||
        expect_same_shape(p, g, "param", "grad") || expect_same_shape(p, m, "param", "m") ||
        expect_same_shape(p, v, "param", "v"))
        goto done;
    if (step < 1 || !(b1 >= 0.0f && b1 < 1.0f) || !(b2 >= 0.0f && b2 < 1.0f) || !(eps > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "need step >= 1, betas in [0, 1) and eps > 0");
        goto done;
    }
    if (!(p2 = copy_of(&h, p)) || !(m2 = copy_of(&h, m)) || !(v2 = copy_of(&h, v))) goto done;
    MGPY_BEGIN_C_WORK
    adamw_update(f32(p2), f32(g), f32(m2), f32(v2), (long)PyArray_SIZE(p), lr, b1, b2, eps, wd,
                 step);
    MGPY_END_C_WORK;
    res = Py_BuildValue("(OOO)", p2, m2, v2);
done:
    release(&h);
    return res;
}

/* op_grad_global_norm(sequence of float32 arrays) -> float */
PyObject *mgpy_op_grad_global_norm(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "grad_global_norm takes a sequence of arrays");
    if (seq == NULL) return NULL;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *res = NULL;
    PyArrayObject **arrs = NULL;
    const float **bufs = NULL;
    long *lens = NULL;
    mg_error err;
    mg_error_clear(&err);
    arrs = mg_alloc((size_t)count + 1, sizeof(*arrs), "array list", &err);
    bufs = mg_alloc((size_t)count + 1, sizeof(*bufs), "array list", &err);
    lens = mg_alloc((size_t)count + 1, sizeof(*lens), "array list", &err);
    if (err.code != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT32) {
            PyErr_SetString(PyExc_TypeError, "grad_global_norm takes float32 numpy arrays");
            goto done;
        }
        arrs[i] = (PyArrayObject *)mgpy_as_c_array(o, NPY_FLOAT32);
        if (arrs[i] == NULL) goto done;
        bufs[i] = (const float *)PyArray_DATA(arrs[i]);
        lens[i] = (long)PyArray_SIZE(arrs[i]);
    }
    double norm;
    MGPY_BEGIN_C_WORK
    norm = grad_global_norm(bufs, lens, (int)count);
    MGPY_END_C_WORK;
    res = PyFloat_FromDouble(norm);
done:
    for (Py_ssize_t i = 0; arrs && i < count; i++)
        Py_XDECREF(arrs[i]);
    mg_free(arrs);
    mg_free(bufs);
    mg_free(lens);
    Py_DECREF(seq);
    return res;
}

/* op_rng(seed, stream, first, n, high=0) -> float32[n] uniform in [0, 1) when high == 0, else
 * int64[n] uniform in [0, high) */
PyObject *mgpy_op_rng(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long seed, stream, first, high = 0;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "KKKn|K", &seed, &stream, &first, &n, &high)) return NULL;
    if (n < 0 || high >= (1ULL << 32)) {
        PyErr_SetString(PyExc_ValueError, "need n >= 0 and high < 2**32");
        return NULL;
    }
    npy_intp dims[1] = {n};
    PyObject *out = PyArray_ZEROS(1, dims, high ? NPY_INT64 : NPY_FLOAT32, 0);
    if (out == NULL) return NULL;
    void *data = PyArray_DATA((PyArrayObject *)out);
    MGPY_BEGIN_C_WORK
    if (high == 0)
        mg_rng_fill_uniform((float *)data, (long)n, seed, stream, first);
    else
        for (Py_ssize_t i = 0; i < n; i++)
            ((int64_t *)data)[i] = mg_rng_uniform_int(seed, stream, first + i, (uint32_t)high);
    MGPY_END_C_WORK;
    return out;
}
