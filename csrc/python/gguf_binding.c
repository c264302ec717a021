/* Interim: replaced by the gguf reader's binding. */
#include "bindings.h"
PyObject *mgpy_read_gguf(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_NotImplementedError, "read_gguf is not built yet");
    return NULL;
}
