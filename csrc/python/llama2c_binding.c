/* read_llama2c / read_llama2c_tokenizer: the llama2.c readers (csrc/io/llama2c.c) for Python. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../io/llama2c.h"
#include "bindings.h"
#include "errors.h"

static PyObject *header_dict(const mg_llama2c_header *h) {
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:O}", "dim", h->dim, "hidden_dim",
                         h->hidden_dim, "n_layers", h->n_layers, "n_heads", h->n_heads,
                         "n_kv_heads", h->n_kv_heads, "vocab_size", h->vocab_size, "seq_len",
                         h->seq_len, "shared_classifier",
                         h->shared_classifier ? Py_True : Py_False);
}

/* read_llama2c(path) -> (header dict, dict[str, float32 ndarray]) in magnet's parameter names,
 * wq/wk already in the rotate-half RoPE layout. */
PyObject *mgpy_read_llama2c(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path_obj)) return NULL;
    const char *path = PyBytes_AS_STRING(path_obj);
    mg_llama2c_checkpoint ckpt;
    mg_error err;
    mg_error_clear(&err);
    int rc;
    MGPY_BEGIN_C_WORK
    rc = mg_llama2c_read(path, &ckpt, &err);
    MGPY_END_C_WORK Py_DECREF(path_obj);
    if (rc != MG_OK) return mgpy_raise(&err);

    PyObject *header = header_dict(&ckpt.header);
    PyObject *tensors = PyDict_New();
    if (header == NULL || tensors == NULL) goto fail;
    for (int i = 0; i < ckpt.n_tensors; i++) {
        mg_llama2c_tensor *t = &ckpt.tensors[i];
        float *data = t->tensor.data;
        t->tensor.data = NULL; /* the array owns it from here, even if creating it fails */
        PyObject *arr = mgpy_array_take(t->tensor.ndim, t->tensor.shape, data);
        if (arr == NULL) goto fail;
        int set = PyDict_SetItemString(tensors, t->name, arr);
        Py_DECREF(arr);
        if (set != 0) goto fail;
    }
    mg_llama2c_free(&ckpt);
    return Py_BuildValue("(NN)", header, tensors);
fail:
    Py_XDECREF(header);
    Py_XDECREF(tensors);
    mg_llama2c_free(&ckpt);
    return NULL;
}

/* read_llama2c_tokenizer(path, vocab_size) -> (list[bytes], list[float], max_token_length) */
PyObject *mgpy_read_llama2c_tokenizer(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_obj;
    int vocab_size;
    if (!PyArg_ParseTuple(args, "O&i", PyUnicode_FSConverter, &path_obj, &vocab_size)) return NULL;
    const char *path = PyBytes_AS_STRING(path_obj);
    mg_llama2c_vocab vocab;
    mg_error err;
    mg_error_clear(&err);
    int rc;
    MGPY_BEGIN_C_WORK
    rc = mg_llama2c_read_vocab(path, vocab_size, &vocab, &err);
    MGPY_END_C_WORK Py_DECREF(path_obj);
    if (rc != MG_OK) return mgpy_raise(&err);

    PyObject *pieces = PyList_New(vocab.vocab_size);
    PyObject *scores = PyList_New(vocab.vocab_size);
    if (pieces == NULL || scores == NULL) goto fail;
    for (int i = 0; i < vocab.vocab_size; i++) {
        const size_t a = vocab.offsets[i], b = vocab.offsets[i + 1];
        PyObject *piece = PyBytes_FromStringAndSize(vocab.bytes + a, (Py_ssize_t)(b - a));
        if (piece == NULL) goto fail;
        PyList_SET_ITEM(pieces, i, piece);
        PyObject *score = PyFloat_FromDouble((double)vocab.scores[i]);
        if (score == NULL) goto fail;
        PyList_SET_ITEM(scores, i, score);
    }
    const int max_len = vocab.max_token_length;
    mg_llama2c_vocab_free(&vocab);
    return Py_BuildValue("(NNi)", pieces, scores, max_len);
fail:
    Py_XDECREF(pieces);
    Py_XDECREF(scores);
    mg_llama2c_vocab_free(&vocab);
    return NULL;
}
