/* The magnet._C extension module: threads, file readers and the Model type. */
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#undef I /* <complex.h>, through NumPy, defines I; packed_matmul.h names a dimension I */

#include "../backend/backend.h"
#include "../backend/cpu/blas.h"
#include "../core/alloc.h"
#include "../core/threads.h"
#include "../model/objectives.h"
#include "../ops/packed_matmul.h"
#include "../ops/skinny_matmul.h"
#include "bindings.h"

static PyObject *set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyLong_Check(arg) || PyBool_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "num_threads must be an int");
        return NULL;
    }
    int overflow = 0;
    long n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (overflow) {
        PyErr_SetString(PyExc_ValueError, "num_threads must be between 1 and 4096");
        return NULL;
    }
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "num_threads must be between 1 and 4096, got %ld", n);
        return NULL;
    }
    if (mg_set_num_threads((int)n) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "num_threads=%ld: this process was forked from one that had other threads "
                     "(OpenMP workers started by magnet's calls or by another library's, such as "
                     "PyTorch's, among them), and OpenMP's workers do not survive fork, so magnet "
                     "runs one thread here; for more, start worker processes with the 'spawn' "
                     "method (multiprocessing.get_context('spawn')) or fork them before the "
                     "parent starts any parallel work",
                     n);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(mg_get_num_threads());
}

#ifdef MG_FAULT_INJECTION
static PyObject *fail_allocation_after(PyObject *self, PyObject *arg) {
    (void)self;
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(mg_fail_allocation_after(n));
}
#endif

static PyObject *cpu_count(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(mg_cpu_count());
}

/* cuda_device_count() -> (count, reason): reason says why there is none (no CUDA in this build,
 * no driver, no device). */
static PyObject *cuda_device_count(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    char why[512] = "";
    int n;
    MGPY_BEGIN_C_WORK
    n = mg_cuda_device_count(why, sizeof(why));
    MGPY_END_C_WORK return Py_BuildValue("(is)", n, why);
}

/* _fork_prepare() / _fork_parent(): os.register_at_fork's before and after_in_parent hooks
 * (magnet/__init__.py). The wait runs with the GIL released: the calls it waits for may need the
 * GIL to finish (a locked binding's last statement runs with it). */
static PyObject *fork_prepare(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS mg_threads_fork_prepare();
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *fork_parent(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    mg_threads_fork_parent();
    Py_RETURN_NONE;
}

/* _forget_threads_at_import(): magnet/__init__.py found a libgomp loaded before magnet's (see
 * mg_threads_forget_import). */
static PyObject *forget_threads_at_import(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    mg_threads_forget_import();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_fork_prepare", fork_prepare, METH_NOARGS,
     "Before os.fork: wait until no thread is inside a call, and hold new calls back."},
    {"_fork_parent", fork_parent, METH_NOARGS, "After os.fork, in the parent: let calls in."},
    {"_forget_threads_at_import", forget_threads_at_import, METH_NOARGS,
     "The threads at import may be OpenMP workers: every fork child runs one thread."},
    {"cuda_device_count", cuda_device_count, METH_NOARGS,
     "cuda_device_count() -> (count, reason when 0)."},
    {"set_num_threads", set_num_threads, METH_O, "Set the worker threads (OpenMP and OpenBLAS)."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "Worker threads in use."},
    {"cpu_count", cpu_count, METH_NOARGS, "Online CPU cores."},
#ifdef MG_FAULT_INJECTION
    {"_fail_allocation_after", fail_allocation_after, METH_O,
     "Debug builds: the n-th C allocation from now fails (0: none) -> allocations counted."},
#endif
    {"read_safetensors", mgpy_read_safetensors, METH_VARARGS,
     "read_safetensors(path, skip=None) -> dict of float32 arrays (skip: names left unread)"},
    {"read_gguf", mgpy_read_gguf, METH_VARARGS,
     "read_gguf(path) -> (metadata dict, dict of float32 arrays)"},
    {"read_llama2c", mgpy_read_llama2c, METH_VARARGS,
     "read_llama2c(path) -> (header dict, dict of float32 arrays)"},
    {"read_llama2c_tokenizer", mgpy_read_llama2c_tokenizer, METH_VARARGS,
     "read_llama2c_tokenizer(path, vocab_size) -> (pieces, scores, max_token_length)"},
    {"embed", mgpy_embed, METH_VARARGS,
     "embed(model, tokens, segments, start, end, mode, normalize) -> float32[B, D]"},
    {"masked_view", mgpy_masked_view, METH_VARARGS,
     "masked_view(tokens, config, vocab_size, seed, stream) -> (tokens, roles, mntp, msg)"},
    {"op_matmul", mgpy_op_matmul, METH_VARARGS,
     "op_matmul(inp, weight, bias|None, dout) -> (out, dinp, dweight, dbias|None)"},
    {"op_rmsnorm", mgpy_op_rmsnorm, METH_VARARGS,
     "op_rmsnorm(inp, weight, eps, dout) -> (out, dinp, dweight)"},
    {"op_layernorm", mgpy_op_layernorm, METH_VARARGS,
     "op_layernorm(inp, weight, bias, eps, dout) -> (out, dinp, dweight, dbias)"},
    {"op_rope", mgpy_op_rope, METH_VARARGS, "op_rope(x, pos, inv_freq, dout) -> (out, dx)"},
    {"op_attention", mgpy_op_attention, METH_VARARGS,
     "op_attention(q, k, v, roles, segments, dout) -> (out, dq, dk, dv)"},
    {"op_swiglu", mgpy_op_swiglu, METH_VARARGS, "op_swiglu(gate, up, dout) -> (out, dgate, dup)"},
    {"op_gelu_tanh", mgpy_op_gelu_tanh, METH_VARARGS, "op_gelu_tanh(x, dout) -> (out, dx)"},
    {"op_embedding", mgpy_op_embedding, METH_VARARGS,
     "op_embedding(tokens, pos, wte, wpe|None, dout) -> (out, dwte, dwpe|None)"},
    {"op_cross_entropy", mgpy_op_cross_entropy, METH_VARARGS,
     "op_cross_entropy(logits, labels, grad_scale=1.0) -> (loss_sum, count, dlogits)"},
    {"op_infonce", mgpy_op_infonce, METH_VARARGS,
     "op_infonce(a, b, temperature, grad_scale=1.0) -> (loss, da, db)"},
    {"op_dropout", mgpy_op_dropout, METH_VARARGS,
     "op_dropout(x, p, seed, offset, dout) -> (out, dinp)"},
    {"op_adamw", mgpy_op_adamw, METH_VARARGS,
     "op_adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> (param, m, v)"},
    {"op_grad_global_norm", mgpy_op_grad_global_norm, METH_O,
     "op_grad_global_norm(arrays) -> float"},
    {"op_rng", mgpy_op_rng, METH_VARARGS,
     "op_rng(seed, stream, first, n, high=0) -> uniform float32[n], or int64[n] in [0, high)"},
    {"probe_train", mgpy_probe_train, METH_VARARGS,
     "probe_train(X, y, num_classes, config) -> (W, b, epoch_loss)"},
    {"probe_predict", mgpy_probe_predict, METH_VARARGS, "probe_predict(X, W, b) -> int32[N]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "magnet._C",
    "magnet's C core.",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    if (PyType_Ready(&MgpyModelType) < 0 || PyType_Ready(&MgpyTrainerType) < 0 ||
        PyType_Ready(&MgpyGeneratorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&MgpyModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&MgpyModelType) < 0) {
        Py_DECREF(&MgpyModelType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MgpyTrainerType);
    if (PyModule_AddObject(m, "Trainer", (PyObject *)&MgpyTrainerType) < 0) {
        Py_DECREF(&MgpyTrainerType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MgpyGeneratorType);
    if (PyModule_AddObject(m, "Generator", (PyObject *)&MgpyGeneratorType) < 0) {
        Py_DECREF(&MgpyGeneratorType);
        Py_DECREF(m);
        return NULL;
    }
    /* whether linear layers over many rows take our packed GEMM or OpenBLAS (tests read it) */
    if (PyModule_AddIntConstant(m, "HAS_PACKED_MATMUL", MG_HAVE_PACKED_MATMUL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* the most rows that take the weight-streaming kernels (16 with AVX2, 4 without) */
    if (PyModule_AddIntConstant(m, "SKINNY_MAX_ROWS", MG_SKINNY_MAX_ROWS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* the trainer masks row r with stream MASK_STREAM_BASE + r (tests and benchmarks rebuild its
     * masked views with masked_view) */
    if (PyModule_AddObject(m, "MASK_STREAM_BASE", PyLong_FromUnsignedLongLong(MG_MASK_STREAM(0))) <
        0) {
        Py_DECREF(m);
        return NULL;
    }
    mg_blas_init();
    mg_threads_init();
    return m;
}
