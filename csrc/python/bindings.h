/* Every function the extension module exports, one binding file per area. */
#ifndef MG_PYTHON_BINDINGS_H
#define MG_PYTHON_BINDINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../core/threads.h"

/* model_binding.c */
struct mg_model_s;
typedef struct {
    PyObject_HEAD struct mg_model_s *model;
} MgpyModel;
extern PyTypeObject MgpyModelType;

/* Opens a block that releases the GIL for C work, closed by MGPY_END_C_WORK: applies the process's
 * thread count to this thread first and enters the fork gate (core/threads.h), which a thread
 * about to fork waits on. Every binding enters the C core this way. */
#define MGPY_BEGIN_C_WORK Py_BEGIN_ALLOW_THREADS mg_threads_enter();
#define MGPY_END_C_WORK                                                                            \
    mg_threads_leave();                                                                            \
    Py_END_ALLOW_THREADS

/* Runs `stmt` holding the model's lock (read or write). The lock is taken with the GIL released,
 * so a thread waiting for it never blocks threads that hold it; `stmt` runs with the GIL held
 * and may use the Python API. The thread stays inside the fork gate until the lock is released:
 * a fork never leaves a child the lock held.
 * No Python code of the user's may run in `stmt`: code that called the same model again would
 * take its lock a second time on this thread (a deadlock, or a swap under the caller's feet).
 * So the garbage collector, which runs finalizers when `stmt` allocates, is paused, and what
 * `stmt` reads from user objects was taken out of them first (mgpy_plain_dict, numbers parsed
 * before). */
#define MGPY_CAT2(a, b) a##b
#define MGPY_CAT(a, b) MGPY_CAT2(a, b)
#define MGPY_LOCKED(model, lockfn, stmt)                                                           \
    MGPY_BEGIN_C_WORK                                                                              \
    lockfn(model);                                                                                 \
    Py_END_ALLOW_THREADS const int MGPY_CAT(mgpy_gc_on_, __LINE__) = PyGC_Disable();               \
    stmt;                                                                                          \
    if (MGPY_CAT(mgpy_gc_on_, __LINE__)) PyGC_Enable();                                            \
    mg_model_unlock(model);                                                                        \
    mg_threads_leave()
#define MGPY_LOCKED_READ(model, stmt) MGPY_LOCKED(model, mg_model_lock_read, stmt)
#define MGPY_LOCKED_WRITE(model, stmt) MGPY_LOCKED(model, mg_model_lock_write, stmt)

/* Defines fn_guarded(self, arg): fn, for an object whose __init__ completed (self->field set),
 * else RuntimeError. Method tables list the guarded functions: a method reached through the type
 * (magnet._C.Model.forward(obj, ...)) skips the instance's attribute lookup, so only the method
 * itself can refuse an object that was made with __new__ alone or whose __init__ failed. */
#define MGPY_GUARDED(Type, field, fn)                                                              \
    static PyObject *fn##_guarded(PyObject *self, PyObject *arg) {                                 \
        if (((Type *)self)->field == NULL) {                                                       \
            PyErr_Format(PyExc_RuntimeError, "%s was not initialised", Py_TYPE(self)->tp_name);    \
            return NULL;                                                                           \
        }                                                                                          \
        return fn((Type *)self, arg);                                                              \
    }

/* trainer_binding.c */
extern PyTypeObject MgpyTrainerType;
/* masked_view(tokens, config, seed, stream) -> (tokens, roles, mntp_labels, msg_labels) */
PyObject *mgpy_masked_view(PyObject *self, PyObject *args);

/* safetensors_binding.c: read_safetensors(path) -> dict[str, float32 ndarray] */
PyObject *mgpy_read_safetensors(PyObject *self, PyObject *args);
/* gguf_binding.c: read_gguf(path) -> (metadata dict, dict[str, float32 ndarray]) */
PyObject *mgpy_read_gguf(PyObject *self, PyObject *args);
/* llama2c_binding.c: read_llama2c(path) -> (header dict, dict[str, float32 ndarray]) and
 * read_llama2c_tokenizer(path, vocab_size) -> (list[bytes], list[float], max_token_length) */
PyObject *mgpy_read_llama2c(PyObject *self, PyObject *args);
PyObject *mgpy_read_llama2c_tokenizer(PyObject *self, PyObject *args);
/* generate_binding.c: the Generator type (decoding sessions) and embed(model, tokens, segments,
 * start, end, mode, normalize) -> float32[B, D] */
extern PyTypeObject MgpyGeneratorType;
PyObject *mgpy_embed(PyObject *self, PyObject *args);

/* ops_binding.c: single ops, forward and backward on NumPy arrays, for the gradient checks */
PyObject *mgpy_op_matmul(PyObject *self, PyObject *args);
PyObject *mgpy_op_rmsnorm(PyObject *self, PyObject *args);
PyObject *mgpy_op_layernorm(PyObject *self, PyObject *args);
PyObject *mgpy_op_rope(PyObject *self, PyObject *args);
PyObject *mgpy_op_attention(PyObject *self, PyObject *args);
PyObject *mgpy_op_swiglu(PyObject *self, PyObject *args);
PyObject *mgpy_op_gelu_tanh(PyObject *self, PyObject *args);
PyObject *mgpy_op_embedding(PyObject *self, PyObject *args);
PyObject *mgpy_op_cross_entropy(PyObject *self, PyObject *args);
PyObject *mgpy_op_infonce(PyObject *self, PyObject *args);
PyObject *mgpy_op_dropout(PyObject *self, PyObject *args);
PyObject *mgpy_op_adamw(PyObject *self, PyObject *args);
PyObject *mgpy_op_grad_global_norm(PyObject *self, PyObject *arg);
PyObject *mgpy_op_rng(PyObject *self, PyObject *args);

/* probe_binding.c: linear probes (softmax regression with AdamW) for magnet.eval */
PyObject *mgpy_probe_train(PyObject *self, PyObject *args);
PyObject *mgpy_probe_predict(PyObject *self, PyObject *args);

#endif
