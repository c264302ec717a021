/* Typed reads from a settings dict, with errors naming the key. */
#ifndef MG_PYTHON_DICT_ARGS_H
#define MG_PYTHON_DICT_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* dict[key], borrowed. NULL without an exception when the key is absent, NULL with one when the
 * lookup itself failed (out of memory making the key): PyDict_GetItemString hid such a failure,
 * so it read as "missing", a setting fell back to its default unseen, or NULL was used. */
PyObject *mgpy_dict_get(PyObject *dict, const char *key);
/* An int (required when dflt is NULL; None counts as absent). 0, or -1 with an exception. */
int mgpy_dict_int(PyObject *dict, const char *key, const int *dflt, int *out);
/* A number, dflt when absent. 0, or -1 with an exception. */
int mgpy_dict_float(PyObject *dict, const char *key, float dflt, float *out);

#endif
