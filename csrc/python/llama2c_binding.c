/* Interim: replaced by the llama2c reader's binding. */
#include "bindings.h"
PyObject *mgpy_read_llama2c(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_NotImplementedError, "read_llama2c is not built yet");
    return NULL;
}
PyObject *mgpy_read_llama2c_tokenizer(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_NotImplementedError, "read_llama2c_tokenizer is not built yet");
    return NULL;
}
