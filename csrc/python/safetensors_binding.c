/* Interim: replaced by the safetensors reader's binding. */
#include "bindings.h"
PyObject *mgpy_read_safetensors(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_NotImplementedError, "read_safetensors is not built yet");
    return NULL;
}
