/* magnet._C.Model: owns an mg_model; forward passes release the GIL. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <string.h>

#include "../core/alloc.h"
#include "../model/model.h"
#include "bindings.h"
#include "dict_args.h"
#include "errors.h"

static int config_choice(PyObject *cfg, const char *key, const char *const *names, int n, int dflt,
                         int *out) {
    PyObject *v = mgpy_dict_get(cfg, key);
    if (v == NULL && PyErr_Occurred()) return -1;
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    for (int i = 0; s && i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "model config '%s' has unsupported value %R", key, v);
    return -1;
}

static int parse_config(PyObject *cfg, mg_config *c) {
    static const char *const archs[] = {"llama", "gpt2"};
    static const char *const ropes[] = {"default", "linear", "llama3"};
    const int zero = 0, neg = -1;
    int arch, rope;
    memset(c, 0, sizeof(*c));
    if (config_choice(cfg, "arch", archs, 2, -1, &arch) ||
        mgpy_dict_int(cfg, "vocab_size", NULL, &c->vocab_size) ||
        mgpy_dict_int(cfg, "hidden_size", NULL, &c->dim) ||
        mgpy_dict_int(cfg, "num_layers", NULL, &c->n_layers) ||
        mgpy_dict_int(cfg, "num_heads", NULL, &c->n_heads) ||
        mgpy_dict_int(cfg, "num_kv_heads", NULL, &c->n_kv_heads) ||
        mgpy_dict_int(cfg, "head_dim", NULL, &c->head_dim) ||
        mgpy_dict_int(cfg, "intermediate_size", NULL, &c->hidden_dim) ||
        mgpy_dict_int(cfg, "max_positions", &neg, &c->max_positions) ||
        mgpy_dict_float(cfg, "norm_eps", 1e-5f, &c->norm_eps) ||
        mgpy_dict_float(cfg, "rope_theta", 10000.0f, &c->rope_theta) ||
        config_choice(cfg, "rope_type", ropes, 3, 0, &rope) ||
        mgpy_dict_float(cfg, "rope_factor", 1.0f, &c->rope_factor) ||
        mgpy_dict_float(cfg, "rope_low_freq_factor", 1.0f, &c->rope_low_freq_factor) ||
        mgpy_dict_float(cfg, "rope_high_freq_factor", 4.0f, &c->rope_high_freq_factor) ||
        mgpy_dict_int(cfg, "rope_original_max_positions", &zero, &c->rope_original_max_positions) ||
        mgpy_dict_int(cfg, "sliding_window", &zero, &c->sliding_window))
        return -1;
    if (arch < 0) {
        PyErr_SetString(PyExc_ValueError, "model config is missing 'arch'");
        return -1;
    }
    c->arch = (mg_arch)arch;
    c->rope_type = (mg_rope_type)rope;
    return 0;
}

static int Model_init(MgpyModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "tensors", NULL};
    PyObject *cfg, *tensors;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!", kwlist, &PyDict_Type, &cfg, &PyDict_Type,
                                     &tensors))
        return -1;
    /* a second __init__ would free a model that generators, trainers or other threads use */
    if (self->model != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Model already initialised");
        return -1;
    }
    mg_config config;
    if (parse_config(cfg, &config) != 0) return -1;

    /* The names and data are read with the GIL released: the items are held (a new list of new
     * tuples) so that another thread changing the dict cannot free them meanwhile. */
    PyObject *items = PyDict_Items(tensors);
    if (items == NULL) return -1;
    const Py_ssize_t count = PyList_GET_SIZE(items);
    mg_error err;
    mg_error_clear(&err);
    mg_named_tensor *named = mg_alloc((size_t)count, sizeof(mg_named_tensor), "tensor list", &err);
    if (named == NULL) {
        mgpy_raise(&err);
        goto fail;
    }
    int i = 0;
    for (Py_ssize_t at = 0; at < count; at++) {
        PyObject *key = PyTuple_GET_ITEM(PyList_GET_ITEM(items, at), 0);
        PyObject *value = PyTuple_GET_ITEM(PyList_GET_ITEM(items, at), 1);
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "tensor names must be str");
            goto fail;
        }
        if (!mgpy_is_c_array(value, NPY_FLOAT32)) {
            PyErr_Format(PyExc_TypeError,
                         "tensor %R must be a C-contiguous float32 ndarray (aligned, native byte "
                         "order: np.require(a, np.float32, 'CA') makes one)",
                         key);
            goto fail;
        }
        PyArrayObject *arr = (PyArrayObject *)value;
        if (PyArray_NDIM(arr) > MG_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "tensor %R has too many dimensions", key);
            goto fail;
        }
        named[i].name = PyUnicode_AsUTF8(key);
        if (named[i].name == NULL) goto fail;
        named[i].tensor.ndim = PyArray_NDIM(arr);
        for (int d = 0; d < PyArray_NDIM(arr); d++)
            named[i].tensor.shape[d] = PyArray_DIM(arr, d);
        named[i].tensor.data = (float *)PyArray_DATA(arr);
        i++;
    }
    mg_model *model;
    MGPY_BEGIN_C_WORK
    model = mg_model_create(&config, named, i, &err);
    MGPY_END_C_WORK if (model == NULL) {
        mgpy_raise(&err);
        goto fail;
    }
    if (self->model != NULL) { /* another thread's __init__ of this object finished first */
        mg_model_free(model);
        PyErr_SetString(PyExc_RuntimeError, "Model already initialised");
        goto fail;
    }
    self->model = model;
    Py_DECREF(items);
    mg_free(named);
    return 0;
fail:
    Py_DECREF(items);
    mg_free(named);
    return -1;
}

static void Model_dealloc(MgpyModel *self) {
    mg_model_free(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Requires an exact dtype and shape [B, T]: the Python layer normalises user input first. */
static PyArrayObject *expect_array(PyObject *obj, const char *name, int type, npy_intp B,
                                   npy_intp T) {
    if (!mgpy_is_c_array(obj, type) || PyArray_NDIM((PyArrayObject *)obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous 2-D %s array", name,
                     type == NPY_UINT8 ? "uint8" : "int32");
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (B >= 0 && (PyArray_DIM(a, 0) != B || PyArray_DIM(a, 1) != T)) {
        PyErr_Format(PyExc_ValueError, "%s has shape (%zd, %zd), expected (%zd, %zd)", name,
                     (Py_ssize_t)PyArray_DIM(a, 0), (Py_ssize_t)PyArray_DIM(a, 1), (Py_ssize_t)B,
                     (Py_ssize_t)T);
        return NULL;
    }
    return a;
}

/* forward(tokens int32[B,T], roles uint8[B,T], segments int32[B,T], hidden: bool, logits: bool)
 * -> (hidden float32[B,T,D] or None, logits float32[B,T,V] or None) */
static PyObject *Model_forward(MgpyModel *self, PyObject *args) {
    PyObject *tok_obj, *role_obj, *seg_obj;
    int want_hidden, want_logits;
    if (!PyArg_ParseTuple(args, "OOOpp", &tok_obj, &role_obj, &seg_obj, &want_hidden, &want_logits))
        return NULL;
    PyArrayObject *tok = expect_array(tok_obj, "input_ids", NPY_INT32, -1, -1);
    if (tok == NULL) return NULL;
    npy_intp B = PyArray_DIM(tok, 0), T = PyArray_DIM(tok, 1);
    PyArrayObject *roles = expect_array(role_obj, "roles", NPY_UINT8, B, T);
    if (roles == NULL) return NULL;
    PyArrayObject *seg = expect_array(seg_obj, "segments", NPY_INT32, B, T);
    if (seg == NULL) return NULL;
    if (B <= 0 || T <= 0 || B > (1 << 24) || T > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "input_ids has empty or absurd shape (%zd, %zd)",
                     (Py_ssize_t)B, (Py_ssize_t)T);
        return NULL;
    }
    const mg_config *c = &self->model->config;
    mg_error err;
    mg_error_clear(&err);
    size_t N = (size_t)B * (size_t)T;
    float *hidden = NULL, *logits = NULL;
    size_t n_hidden = 0, n_logits = 0;
    if (mg_mul_size(N, (size_t)c->dim, &n_hidden) ||
        mg_mul_size(N, (size_t)c->vocab_size, &n_logits))
        mg_fail(&err, MG_ERR_NOMEM, "output of %zu tokens is too large", N);
    if (want_hidden && err.code == MG_OK)
        hidden = mg_alloc_uninit(n_hidden, sizeof(float), "hidden states", &err);
    if (want_logits && err.code == MG_OK)
        logits = mg_alloc_uninit(n_logits, sizeof(float), "logits", &err);
    /* Private copies of the inputs, taken with the GIL held: the forward checks the ids once
     * and then indexes with them, when another thread could change the caller's arrays. */
    int32_t *inputs = NULL;
    if (err.code == MG_OK) inputs = mg_alloc_uninit(2 * N + (N + 3) / 4, 4, "inputs", &err);
    if (inputs != NULL) {
        memcpy(inputs, PyArray_DATA(tok), N * 4);
        memcpy(inputs + N, PyArray_DATA(seg), N * 4);
        memcpy(inputs + 2 * N, PyArray_DATA(roles), N);
        MGPY_BEGIN_C_WORK
        mg_model_lock_read(self->model);
        mg_model_forward(self->model, inputs, (const uint8_t *)(inputs + 2 * N), inputs + N, (int)B,
                         (int)T, hidden, logits, &err);
        mg_model_unlock(self->model);
        MGPY_END_C_WORK
    }
    mg_free(inputs);
    if (err.code != MG_OK) {
        mg_free(hidden);
        mg_free(logits);
        return mgpy_raise(&err);
    }
    PyObject *h = Py_None, *l = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    if (hidden) {
        int64_t shape[3] = {B, T, c->dim};
        Py_DECREF(h);
        h = mgpy_array_take(3, shape, hidden);
    }
    if (logits) {
        int64_t shape[3] = {B, T, c->vocab_size};
        Py_DECREF(l);
        l = mgpy_array_take(3, shape, logits);
    }
    if (h == NULL || l == NULL) {
        Py_XDECREF(h);
        Py_XDECREF(l);
        return NULL;
    }
    return Py_BuildValue("(NN)", h, l);
}

PyObject *mgpy_slots_to_dict(const mg_backend *be, const mg_param_slot *slots, int n_slots,
                             const float *block) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (int s = 0; s < n_slots; s++) {
        const mg_param_slot *slot = &slots[s];
        npy_intp dims[2] = {(npy_intp)slot->shape[0], (npy_intp)slot->shape[1]};
        PyObject *arr = PyArray_SimpleNew(slot->ndim, dims, NPY_FLOAT32);
        if (arr == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        be->download(be, PyArray_DATA((PyArrayObject *)arr), block + slot->offset,
                     slot->numel * sizeof(float));
        int rc = PyDict_SetItemString(out, slot->name, arr);
        Py_DECREF(arr);
        if (rc != 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

int mgpy_dict_to_slots(const mg_backend *be, PyObject *dict, const mg_param_slot *slots,
                       int n_slots, float *block) {
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "expected a dict of float32 arrays");
        return -1;
    }
    /* every value is found and checked before the first is written: a failure leaves the
     * parameters as they were */
    PyObject **values = PyMem_Malloc(sizeof(PyObject *) * (n_slots > 0 ? (size_t)n_slots : 1));
    if (values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int s = 0; s < n_slots; s++) {
        const mg_param_slot *slot = &slots[s];
        PyObject *v = values[s] = mgpy_dict_get(dict, slot->name);
        if (v == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "missing parameter '%s'", slot->name);
            PyMem_Free(values);
            return -1;
        }
        int same_shape = PyArray_Check(v) && PyArray_NDIM((PyArrayObject *)v) == slot->ndim;
        for (int d = 0; same_shape && d < slot->ndim; d++)
            same_shape = PyArray_DIM((PyArrayObject *)v, d) == slot->shape[d];
        if (!same_shape || !mgpy_is_c_array(v, NPY_FLOAT32)) {
            /* the shape too, not only the count: a transposed matrix has the same count */
            if (slot->ndim == 2)
                PyErr_Format(PyExc_ValueError,
                             "parameter '%s' must be a contiguous float32 array of shape "
                             "(%lld, %lld)",
                             slot->name, (long long)slot->shape[0], (long long)slot->shape[1]);
            else
                PyErr_Format(PyExc_ValueError,
                             "parameter '%s' must be a contiguous float32 array of shape (%lld,)",
                             slot->name, (long long)slot->shape[0]);
            PyMem_Free(values);
            return -1;
        }
    }
    if (PyDict_Size(dict) != n_slots) {
        PyErr_Format(PyExc_ValueError, "expected %d parameters, got %zd", n_slots,
                     PyDict_Size(dict));
        PyMem_Free(values);
        return -1;
    }
    for (int s = 0; s < n_slots; s++)
        be->upload(be, block + slots[s].offset, PyArray_DATA((PyArrayObject *)values[s]),
                   slots[s].numel * sizeof(float));
    PyMem_Free(values);
    return 0;
}

/* state_dict() -> dict[str, float32 ndarray] (copies), in magnet's parameter names. */
static PyObject *Model_state_dict(MgpyModel *self, PyObject *unused) {
    (void)unused;
    const mg_params *p = &self->model->params;
    MGPY_LOCKED_READ(self->model, PyObject *out = mgpy_slots_to_dict(self->model->be, p->slots,
                                                                     p->n_slots, p->block));
    return out;
}

/* Values j (numel - 1) / (k - 1), j < k = min(n, numel), of one slot: the slot is read into a
 * host buffer of its own size, so the peak is one tensor, not the model. */
static PyObject *slot_samples(const mg_backend *be, const mg_param_slot *slot, const float *block,
                              long n, float *host) {
    const size_t numel = slot->numel, k = numel < (size_t)n ? numel : (size_t)n;
    npy_intp dims[1] = {(npy_intp)k};
    PyObject *arr = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (arr == NULL) return NULL;
    be->download(be, host, block + slot->offset, numel * sizeof(float));
    float *out = PyArray_DATA((PyArrayObject *)arr);
    for (size_t j = 0; j < k; j++)
        out[j] = host[k > 1 ? (size_t)((unsigned long long)j * (numel - 1) / (k - 1)) : 0];
    return arr;
}

/* weight_samples(n) -> {name: (numel, float32[min(n, numel)])}: evenly spaced values of every
 * parameter, a cheap fingerprint of the weights (adapt's checkpoints record one) that copies
 * one tensor at a time instead of the model. */
static PyObject *Model_weight_samples(MgpyModel *self, PyObject *arg) {
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "weight_samples needs n >= 1");
        return NULL;
    }
    const mg_params *p = &self->model->params;
    size_t largest = 1;
    for (int s = 0; s < p->n_slots; s++)
        if (p->slots[s].numel > largest) largest = p->slots[s].numel;
    mg_error err;
    mg_error_clear(&err);
    float *host = mg_alloc_uninit(largest, sizeof(float), "weight samples", &err);
    if (host == NULL) return mgpy_raise(&err);
    PyObject *out = PyDict_New();
    MGPY_LOCKED_READ(
        self->model, for (int s = 0; s < p->n_slots && out != NULL; s++) {
            PyObject *arr = slot_samples(self->model->be, &p->slots[s], p->block, n, host);
            PyObject *item = arr ? Py_BuildValue("(nN)", (Py_ssize_t)p->slots[s].numel, arr) : NULL;
            if (item == NULL || PyDict_SetItemString(out, p->slots[s].name, item) != 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
        });
    mg_free(host);
    return out;
}

static PyObject *Model_load_state_dict(MgpyModel *self, PyObject *arg) {
    mg_params *p = &self->model->params;
    PyObject *dict = mgpy_plain_dict(arg, "a state dict");
    if (dict == NULL) return NULL;
    MGPY_LOCKED_WRITE(self->model, int rc = mgpy_dict_to_slots(self->model->be, dict, p->slots,
                                                               p->n_slots, p->block));
    Py_DECREF(dict);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* attach_lora(rank, alpha, targets_mask, seed): fresh adapters (B = 0: outputs unchanged). */
static PyObject *Model_attach_lora(MgpyModel *self, PyObject *args) {
    int rank;
    float alpha;
    unsigned int targets;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "ifIK", &rank, &alpha, &targets, &seed)) return NULL;
    mg_error err;
    mg_error_clear(&err);
    mg_lora *l = mg_lora_create(&self->model->config, rank, alpha, targets, seed, &err);
    if (l == NULL) return mgpy_raise(&err);
    MGPY_LOCKED_WRITE(self->model, int rc = mg_model_attach_lora(self->model, l, &err));
    if (rc != MG_OK) return mgpy_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *Model_merge_lora(MgpyModel *self, PyObject *unused) {
    (void)unused;
    MGPY_BEGIN_C_WORK
    mg_model_lock_write(self->model);
    mg_model_merge_lora(self->model);
    mg_model_unlock(self->model);
    MGPY_END_C_WORK Py_RETURN_NONE;
}

static PyObject *Model_detach_lora(MgpyModel *self, PyObject *unused) {
    (void)unused;
    mg_error err;
    mg_error_clear(&err);
    MGPY_LOCKED_WRITE(self->model, mg_model_attach_lora(self->model, NULL, &err));
    Py_RETURN_NONE;
}

/* (rank, alpha, targets_mask) of the adapters, or None; the caller holds the model's lock (a
 * merge in another thread frees the adapters with the GIL released). */
static PyObject *lora_info_of(const mg_lora *l) {
    return l ? Py_BuildValue("(ifI)", l->rank, l->alpha, l->targets) : Py_NewRef(Py_None);
}

/* Copies of the adapters' tensors ({} when none); the caller holds the model's lock. */
static PyObject *adapters_of(const mg_lora *l) {
    return l ? mgpy_slots_to_dict(l->be, l->slots, l->n_slots, l->block) : PyDict_New();
}

static PyObject *Model_lora_info(MgpyModel *self, PyObject *unused) {
    (void)unused;
    MGPY_LOCKED_READ(self->model, PyObject *out = lora_info_of(self->model->lora));
    return out;
}

static PyObject *Model_lora_state_dict(MgpyModel *self, PyObject *unused) {
    (void)unused;
    MGPY_LOCKED_READ(self->model, PyObject *out = adapters_of(self->model->lora));
    return out;
}

/* snapshot() -> (lora_info(), state_dict(), lora_state_dict()) read under one lock, so that a
 * merge or an optimizer step in another thread cannot land between them (save_pretrained wrote
 * merged base weights without their adapters, or the base without the merge, that way). */
static PyObject *Model_snapshot(MgpyModel *self, PyObject *unused) {
    (void)unused;
    const mg_params *p = &self->model->params;
    MGPY_LOCKED_READ(
        self->model, PyObject *info = lora_info_of(self->model->lora);
        PyObject *weights = mgpy_slots_to_dict(self->model->be, p->slots, p->n_slots, p->block);
        PyObject *adapters = adapters_of(self->model->lora);
        PyObject *out =
            (info && weights && adapters) ? PyTuple_Pack(3, info, weights, adapters) : NULL;
        Py_XDECREF(info); Py_XDECREF(weights); Py_XDECREF(adapters));
    return out;
}

static PyObject *Model_load_lora_state_dict(MgpyModel *self, PyObject *arg) {
    PyObject *dict = mgpy_plain_dict(arg, "a LoRA state dict");
    if (dict == NULL) return NULL;
    MGPY_LOCKED_WRITE(
        self->model, mg_lora *l = self->model->lora; int rc = -1;
        if (l == NULL) PyErr_SetString(PyExc_ValueError, "the model has no LoRA adapters attached");
        else rc = mgpy_dict_to_slots(l->be, dict, l->slots, l->n_slots, l->block));
    Py_DECREF(dict);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Model_num_parameters(MgpyModel *self, PyObject *unused) {
    (void)unused;
    size_t total = 0;
    for (int s = 0; s < self->model->params.n_slots; s++)
        total += self->model->params.slots[s].numel;
    return PyLong_FromSize_t(total);
}

/* to_device(kind, index, precision) -> a new Model: this model's parameters and adapters copied
 * into the memory of the CPU ("cpu") or of GPU `index` ("cuda", precision 0 fp32 / 1 bf16). */
static PyObject *Model_to_device(MgpyModel *self, PyObject *args) {
    const char *kind;
    int index = 0, precision = 0;
    if (!PyArg_ParseTuple(args, "sii", &kind, &index, &precision)) return NULL;
    mg_error err;
    mg_error_clear(&err);
    mg_backend *owned = NULL;
    const mg_backend *be = NULL;
    if (strcmp(kind, "cpu") == 0) {
        be = mg_backend_cpu();
    } else if (strcmp(kind, "cuda") == 0) {
        if (precision != MG_PRECISION_FP32 && precision != MG_PRECISION_BF16) {
            PyErr_Format(PyExc_ValueError, "unknown precision %d", precision);
            return NULL;
        }
        MGPY_BEGIN_C_WORK
        owned = mg_backend_cuda_create(index, (mg_precision)precision, &err);
        MGPY_END_C_WORK if (owned == NULL) return mgpy_raise(&err);
        be = owned;
    } else {
        PyErr_Format(PyExc_ValueError, "unknown device '%s' (expected 'cpu' or 'cuda')", kind);
        return NULL;
    }
    mg_model *copy = NULL;
    MGPY_LOCKED_READ(self->model, copy = mg_model_copy_to(self->model, be, owned != NULL, &err));
    if (copy == NULL) return mgpy_raise(&err);
    MgpyModel *out = (MgpyModel *)MgpyModelType.tp_alloc(&MgpyModelType, 0);
    if (out == NULL) {
        mg_model_free(copy);
        return NULL;
    }
    out->model = copy;
    return (PyObject *)out;
}

/* device() -> (kind, name, precision) of the memory and ops this model runs on. */
static PyObject *Model_device(MgpyModel *self, PyObject *unused) {
    (void)unused;
    const mg_backend *be = self->model->be;
    return Py_BuildValue("(ssi)", be->device == MG_DEVICE_CPU ? "cpu" : "cuda", be->name,
                         (int)be->precision);
}

MGPY_GUARDED(MgpyModel, model, Model_to_device)
MGPY_GUARDED(MgpyModel, model, Model_device)
MGPY_GUARDED(MgpyModel, model, Model_forward)
MGPY_GUARDED(MgpyModel, model, Model_state_dict)
MGPY_GUARDED(MgpyModel, model, Model_load_state_dict)
MGPY_GUARDED(MgpyModel, model, Model_attach_lora)
MGPY_GUARDED(MgpyModel, model, Model_merge_lora)
MGPY_GUARDED(MgpyModel, model, Model_detach_lora)
MGPY_GUARDED(MgpyModel, model, Model_lora_info)
MGPY_GUARDED(MgpyModel, model, Model_lora_state_dict)
MGPY_GUARDED(MgpyModel, model, Model_snapshot)
MGPY_GUARDED(MgpyModel, model, Model_load_lora_state_dict)
MGPY_GUARDED(MgpyModel, model, Model_num_parameters)
MGPY_GUARDED(MgpyModel, model, Model_weight_samples)

static PyMethodDef Model_methods[] = {
    {"to_device", (PyCFunction)Model_to_device_guarded, METH_VARARGS,
     "to_device(kind, index, precision) -> Model copy on that device."},
    {"device", (PyCFunction)Model_device_guarded, METH_NOARGS, "(kind, name, precision)."},
    {"forward", (PyCFunction)Model_forward_guarded, METH_VARARGS,
     "forward(input_ids, roles, segments, hidden, logits) -> (hidden, logits)"},
    {"state_dict", (PyCFunction)Model_state_dict_guarded, METH_NOARGS, "Copies of all parameters."},
    {"load_state_dict", (PyCFunction)Model_load_state_dict_guarded, METH_O,
     "Overwrite every parameter from a dict like state_dict()."},
    {"attach_lora", (PyCFunction)Model_attach_lora_guarded, METH_VARARGS,
     "attach_lora(rank, alpha, targets_mask, seed)"},
    {"merge_lora", (PyCFunction)Model_merge_lora_guarded, METH_NOARGS,
     "Fold the adapters into the base weights and detach them."},
    {"detach_lora", (PyCFunction)Model_detach_lora_guarded, METH_NOARGS, "Drop the adapters."},
    {"lora_info", (PyCFunction)Model_lora_info_guarded, METH_NOARGS,
     "None or (rank, alpha, targets)."},
    {"lora_state_dict", (PyCFunction)Model_lora_state_dict_guarded, METH_NOARGS, "Adapter copies."},
    {"snapshot", (PyCFunction)Model_snapshot_guarded, METH_NOARGS,
     "(lora_info(), state_dict(), lora_state_dict()) read under one lock."},
    {"load_lora_state_dict", (PyCFunction)Model_load_lora_state_dict_guarded, METH_O,
     "Overwrite the adapters from a dict like lora_state_dict()."},
    {"num_parameters", (PyCFunction)Model_num_parameters_guarded, METH_NOARGS, "Parameter count."},
    {"weight_samples", (PyCFunction)Model_weight_samples_guarded, METH_O,
     "weight_samples(n) -> {name: (numel, evenly spaced float32 values)}."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Model_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    MgpyModel *self = (MgpyModel *)type->tp_alloc(type, 0);
    if (self) self->model = NULL;
    return (PyObject *)self;
}

PyTypeObject MgpyModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "magnet._C.Model",
    .tp_basicsize = sizeof(MgpyModel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(config: dict, tensors: dict[str, float32 ndarray]): a decoder in C.",
    .tp_new = Model_new,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
};
