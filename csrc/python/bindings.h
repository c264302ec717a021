/* Every function the extension module exports, one binding file per area. */
#ifndef MG_PYTHON_BINDINGS_H
#define MG_PYTHON_BINDINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* model_binding.c */
extern PyTypeObject MgpyModelType;

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

#endif
