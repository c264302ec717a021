/* magnet._C.Trainer: MAGNET adaptation steps on a magnet._C.Model; steps release the GIL. */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL MAGNET_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <limits.h>
#include <numpy/arrayobject.h>
#include <string.h>

#include "../core/alloc.h"
#include "../model/trainer.h"
#include "bindings.h"
#include "dict_args.h"
#include "errors.h"

typedef struct {
    PyObject_HEAD mg_trainer *trainer;
    PyObject *model; /* the MgpyModel, kept alive while the trainer exists */
    int busy;        /* set (under the GIL) while a method runs, which may release it */
} MgpyTrainer;

static int parse_masking(PyObject *cfg, mg_masking_config *m) {
    const int one = 1, three = 3, eight = 8, l32 = 32, neg = -1;
    if (mgpy_dict_float(cfg, "mask_rate", 0.2f, &m->mask_rate) ||
        mgpy_dict_float(cfg, "mask_token_frac", 0.8f, &m->mask_token_frac) ||
        mgpy_dict_float(cfg, "random_token_frac", 0.1f, &m->random_token_frac) ||
        mgpy_dict_int(cfg, "mask_token_id", &neg, &m->mask_token_id) ||
        mgpy_dict_int(cfg, "use_spans", &one, &m->use_spans) ||
        mgpy_dict_int(cfg, "spans_min", &one, &m->spans_min) ||
        mgpy_dict_int(cfg, "spans_max", &three, &m->spans_max) ||
        mgpy_dict_int(cfg, "span_len_min", &eight, &m->span_len_min) ||
        mgpy_dict_int(cfg, "span_len_max", &l32, &m->span_len_max) ||
        mgpy_dict_float(cfg, "span_max_frac", 0.3f, &m->span_max_frac) ||
        mgpy_dict_float(cfg, "all_span_frac", 0.25f, &m->all_span_frac))
        return -1;
    if (!(m->mask_rate >= 0.0f && m->mask_rate <= 1.0f) || !(m->mask_token_frac >= 0.0f) ||
        !(m->random_token_frac >= 0.0f) || m->mask_token_frac + m->random_token_frac > 1.0f ||
        m->spans_min < 0 || m->spans_max < m->spans_min || m->spans_max > MG_MAX_SPANS ||
        m->span_len_min < 1 || m->span_len_max < m->span_len_min || !(m->span_max_frac >= 0.0f) ||
        !(m->all_span_frac >= 0.0f && m->all_span_frac <= 1.0f)) {
        PyErr_Format(PyExc_ValueError,
                     "invalid masking settings (rates must lie in [0, 1], mask + random <= 1, "
                     "min <= max for spans and span lengths, at most %d spans)",
                     MG_MAX_SPANS);
        return -1;
    }
    return 0;
}

static int Trainer_init(MgpyTrainer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"model", "config", NULL};
    PyObject *model, *cfg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!", kwlist, &MgpyModelType, &model,
                                     &PyDict_Type, &cfg))
        return -1;
    /* a second __init__ would free a trainer another thread may be stepping */
    if (self->trainer != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Trainer already initialised");
        return -1;
    }
    MgpyModel *pm = (MgpyModel *)model;
    if (pm->model == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "magnet._C.Model was not initialised");
        return -1;
    }
    mg_train_config c;
    memset(&c, 0, sizeof(c));
    const int zero = 0, thousand = 1000;
    if (parse_masking(cfg, &c.masking) ||
        mgpy_dict_float(cfg, "temperature", 0.05f, &c.temperature) ||
        mgpy_dict_float(cfg, "resid_dropout", 0.0f, &c.resid_dropout) ||
        mgpy_dict_float(cfg, "lora_dropout", 0.05f, &c.lora_dropout) ||
        mgpy_dict_int(cfg, "full_finetune", &zero, &c.full_finetune) ||
        mgpy_dict_float(cfg, "lr", 2e-4f, &c.lr) || mgpy_dict_float(cfg, "beta1", 0.9f, &c.beta1) ||
        mgpy_dict_float(cfg, "beta2", 0.999f, &c.beta2) ||
        mgpy_dict_float(cfg, "eps", 1e-8f, &c.eps) ||
        mgpy_dict_float(cfg, "weight_decay", 0.0f, &c.weight_decay) ||
        mgpy_dict_float(cfg, "clip_norm", 1.0f, &c.clip_norm) ||
        mgpy_dict_int(cfg, "warmup_steps", &zero, &c.warmup_steps) ||
        mgpy_dict_int(cfg, "total_steps", &thousand, &c.total_steps) ||
        mgpy_dict_float(cfg, "min_lr_ratio", 0.0f, &c.min_lr_ratio))
        return -1;
    c.masking.vocab_size = pm->model->config.vocab_size;
    if (c.masking.mask_token_id < 0 || c.masking.mask_token_id >= c.masking.vocab_size) {
        PyErr_Format(PyExc_ValueError, "mask_token_id %d is outside the vocabulary",
                     c.masking.mask_token_id);
        return -1;
    }
    mg_error err;
    mg_error_clear(&err);
    mg_trainer *t;
    /* the read lock: an adapter attached by another thread meanwhile is seen whole or not */
    MGPY_LOCKED_READ(pm->model, t = mg_trainer_create(pm->model, &c, &err));
    if (t == NULL) {
        mgpy_raise(&err);
        return -1;
    }
    if (self->trainer != NULL) { /* another thread's __init__ of this object finished first */
        mg_trainer_free(t);
        PyErr_SetString(PyExc_RuntimeError, "Trainer already initialised");
        return -1;
    }
    self->trainer = t;
    Py_INCREF(model);
    self->model = model;
    return 0;
}

static void Trainer_dealloc(MgpyTrainer *self) {
    mg_trainer_free(self->trainer);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An optional [rows, T] int32 token array with its int32 lengths (and pool starts). */
static int rows_arg(PyObject *tok, PyObject *len, PyObject *pool, const char *what,
                    mg_token_rows *out, const int32_t **pool_out) {
    memset(out, 0, sizeof(*out));
    if (pool_out) *pool_out = NULL;
    if (tok == Py_None) return 0;
    if (!mgpy_is_c_array(tok, NPY_INT32) || PyArray_NDIM((PyArrayObject *)tok) != 2) {
        PyErr_Format(PyExc_TypeError, "%s tokens must be a C-contiguous 2-D int32 array", what);
        return -1;
    }
    const npy_intp rows = PyArray_DIM((PyArrayObject *)tok, 0);
    PyObject *vecs[2] = {len, pool};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && (pool == Py_None || pool_out == NULL)) break;
        PyObject *v = vecs[i];
        if (!mgpy_is_c_array(v, NPY_INT32) || PyArray_NDIM((PyArrayObject *)v) != 1 ||
            PyArray_DIM((PyArrayObject *)v, 0) != rows) {
            PyErr_Format(PyExc_TypeError, "%s %s must be a 1-D int32 array of %zd values", what,
                         i ? "pool starts" : "lengths", (Py_ssize_t)rows);
            return -1;
        }
    }
    if (rows > (1 << 20) || PyArray_DIM((PyArrayObject *)tok, 1) > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "%s batch is too large", what);
        return -1;
    }
    out->tokens = PyArray_DATA((PyArrayObject *)tok);
    out->lengths = PyArray_DATA((PyArrayObject *)len);
    out->rows = (int)rows;
    out->T = (int)PyArray_DIM((PyArrayObject *)tok, 1);
    if (pool_out && pool != Py_None) *pool_out = PyArray_DATA((PyArrayObject *)pool);
    return 0;
}

/* micro_step(masked, masked_len, a, a_len, a_pool, b, b_len, b_pool, w_mntp, w_sscl, w_msg,
 *            pooling, grad_scale, seed, train) -> dict of losses */
static PyObject *Trainer_micro_step(MgpyTrainer *self, PyObject *args) {
    PyObject *mt, *ml, *at, *al, *ap, *bt, *bl, *bp;
    mg_micro_batch mb;
    memset(&mb, 0, sizeof(mb));
    int pooling, train;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOOOOOfffifKp", &mt, &ml, &at, &al, &ap, &bt, &bl, &bp,
                          &mb.w_mntp, &mb.w_sscl, &mb.w_msg, &pooling, &mb.grad_scale, &seed,
                          &train))
        return NULL;
    /* Private copies of the arrays: the C side checks the ids and lengths once and then uses
     * them with the GIL released, when another thread could change the caller's arrays. */
    PyObject *arg[8] = {mt, ml, at, al, ap, bt, bl, bp}, *res = NULL;
    int copied = 0;
    for (; copied < 8; copied++) {
        PyObject *a = arg[copied];
        arg[copied] = PyArray_Check(a) ? PyArray_NewCopy((PyArrayObject *)a, NPY_CORDER) : a;
        if (arg[copied] == NULL) goto done;
        if (arg[copied] == a) Py_INCREF(a);
    }
    if (rows_arg(arg[0], arg[1], Py_None, "masked-view", &mb.masked, NULL) ||
        rows_arg(arg[2], arg[3], arg[4], "SSCL", &mb.sscl_a, &mb.pool_start_a) ||
        rows_arg(arg[5], arg[6], arg[7], "SSCL positive", &mb.sscl_b, &mb.pool_start_b))
        goto done;
    if (pooling != MG_POOL_LAST && pooling != MG_POOL_MEAN) {
        PyErr_SetString(PyExc_ValueError, "pooling must be 0 (last) or 1 (mean)");
        goto done;
    }
    mb.pooling = (mg_pooling)pooling;
    mb.seed = seed;
    mg_losses losses;
    mg_error err;
    mg_error_clear(&err);
    MGPY_BEGIN_C_WORK
    mg_model_lock_read(self->trainer->model);
    mg_trainer_micro_step(self->trainer, &mb, train, &losses, &err);
    mg_model_unlock(self->trainer->model);
    MGPY_END_C_WORK if (err.code != MG_OK) {
        mgpy_raise(&err);
        goto done;
    }
    res = Py_BuildValue("{s:d,s:d,s:d,s:l,s:l,s:l,s:l}", "mntp", losses.mntp, "msg", losses.msg,
                        "sscl", losses.sscl, "mntp_count", losses.mntp_count, "msg_count",
                        losses.msg_count, "sscl_count", losses.sscl_count, "tokens", losses.tokens);
done:
    for (int i = 0; i < copied; i++)
        Py_DECREF(arg[i]);
    return res;
}

/* apply() -> (grad_norm, lr): clip, AdamW step, zero gradients. */
static PyObject *Trainer_apply(MgpyTrainer *self, PyObject *unused) {
    (void)unused;
    double norm = 0.0;
    float lr = 0.0f;
    mg_error err;
    mg_error_clear(&err);
    MGPY_BEGIN_C_WORK
    mg_model_lock_write(self->trainer->model);
    mg_trainer_apply(self->trainer, &norm, &lr, &err);
    mg_model_unlock(self->trainer->model);
    MGPY_END_C_WORK if (err.code != MG_OK) return mgpy_raise(&err);
    return Py_BuildValue("(dd)", norm, (double)lr);
}

static PyObject *Trainer_lr(MgpyTrainer *self, PyObject *arg) {
    const long step = PyLong_AsLong(arg);
    if (step == -1 && PyErr_Occurred()) return NULL;
    if (step < 0 || step > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "step must lie in [0, %d], got %ld", INT_MAX, step);
        return NULL;
    }
    return PyFloat_FromDouble(mg_trainer_lr(&self->trainer->cfg, (int)step));
}

static PyObject *flat_copy(const mg_backend *be, const float *src, size_t n) {
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *arr = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (arr) be->download(be, PyArray_DATA((PyArrayObject *)arr), src, n * sizeof(float));
    return arr;
}

/* The gradients, by parameter name (LoRA or full, whichever is trained). */
static PyObject *Trainer_grad_dict(MgpyTrainer *self, PyObject *unused) {
    (void)unused;
    const mg_trainer *t = self->trainer;
    PyObject *out = NULL;
    mg_error err;
    mg_error_clear(&err);
    MGPY_LOCKED_READ(t->model, if (mg_trainer_check_adapters(t, &err) != MG_OK);
                     else if (t->cfg.full_finetune) out =
                         mgpy_slots_to_dict(t->model->be, t->model->params.slots,
                                            t->model->params.n_slots, t->grads.params);
                     else out = mgpy_slots_to_dict(t->model->be, t->model->lora->slots,
                                                   t->model->lora->n_slots, t->grads.lora));
    return err.code != MG_OK ? mgpy_raise(&err) : out;
}

/* state() -> {"params", "m", "v": flat float32 copies, "step": int}: all that resuming needs. */
static PyObject *Trainer_state(MgpyTrainer *self, PyObject *unused) {
    (void)unused;
    const mg_trainer *t = self->trainer;
    const float *m = t->cfg.full_finetune ? t->m_params : t->m_lora;
    const float *v = t->cfg.full_finetune ? t->v_params : t->v_lora;
    PyObject *out = NULL;
    mg_error err;
    mg_error_clear(&err);
    MGPY_LOCKED_READ(
        t->model, if (mg_trainer_check_adapters(t, &err) == MG_OK) {
            const size_t n = mg_trainer_numel(t);
            out = Py_BuildValue("{s:N,s:N,s:N,s:i}", "params",
                                flat_copy(t->model->be, mg_trainer_params(t), n), "m",
                                flat_copy(t->model->be, m, n), "v", flat_copy(t->model->be, v, n),
                                "step", t->step);
        });
    return err.code != MG_OK ? mgpy_raise(&err) : out;
}

/* The work of load_state, with the model locked for writing by the caller. */
/* state: from mgpy_plain_dict; step: parsed before the lock (its __index__ is Python code). */
static PyObject *load_state_locked(mg_trainer *t, PyObject *state, int step, mg_error *err) {
    if (mg_trainer_check_adapters(t, err) != MG_OK) return NULL;
    const size_t n = mg_trainer_numel(t);
    float *dst[3] = {mg_trainer_params(t), t->cfg.full_finetune ? t->m_params : t->m_lora,
                     t->cfg.full_finetune ? t->v_params : t->v_lora};
    const char *keys[3] = {"params", "m", "v"};
    PyObject *arrays[3];
    for (int i = 0; i < 3; i++) {
        PyObject *a = arrays[i] = mgpy_dict_get(state, keys[i]);
        if (a == NULL && PyErr_Occurred()) return NULL;
        if (a == NULL || !mgpy_is_c_array(a, NPY_FLOAT32) ||
            (size_t)PyArray_SIZE((PyArrayObject *)a) != n) {
            PyErr_Format(PyExc_ValueError,
                         "trainer state '%s' must be a float32 array of %zu values (a checkpoint "
                         "of another model or configuration?)",
                         keys[i], n);
            return NULL;
        }
    }
    const mg_backend *be = t->model->be;
    for (int i = 0; i < 3; i++)
        be->upload(be, dst[i], PyArray_DATA((PyArrayObject *)arrays[i]), n * sizeof(float));
    be->zero(be, mg_trainer_grads(t), n * sizeof(float));
    t->step = step;
    Py_RETURN_NONE;
}

static PyObject *Trainer_load_state(MgpyTrainer *self, PyObject *state) {
    mg_trainer *t = self->trainer;
    mg_error err;
    mg_error_clear(&err);
    PyObject *plain = mgpy_plain_dict(state, "trainer state");
    if (plain == NULL) return NULL;
    /* steps the trainer can go on from: apply() refuses to count past INT_MAX */
    PyObject *step_obj = mgpy_dict_get(plain, "step");
    if (step_obj == NULL && PyErr_Occurred()) {
        Py_DECREF(plain);
        return NULL;
    }
    long step = -1; /* an int or a NumPy integer, converted before the lock (__index__ is code) */
    if (step_obj != NULL && !PyBool_Check(step_obj) && PyIndex_Check(step_obj))
        step = PyLong_AsLong(step_obj);
    if (step < 0 || step >= INT_MAX) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "trainer state has no valid 'step' (an int from 0 to %d)",
                     INT_MAX - 1);
        Py_DECREF(plain);
        return NULL;
    }
    /* the check and everything after it under the write lock: no swap can come between */
    MGPY_LOCKED_WRITE(t->model, PyObject *res = load_state_locked(t, plain, (int)step, &err));
    Py_DECREF(plain);
    if (err.code != MG_OK) return mgpy_raise(&err);
    return res; /* NULL with a Python exception set for a malformed state */
}

static PyObject *Trainer_zero_grad(MgpyTrainer *self, PyObject *unused) {
    (void)unused;
    mg_trainer *t = self->trainer;
    const mg_backend *be = t->model->be;
    mg_error err;
    mg_error_clear(&err);
    MGPY_LOCKED_READ(t->model, if (mg_trainer_check_adapters(t, &err) == MG_OK) be->zero(
                                   be, mg_trainer_grads(t), mg_trainer_numel(t) * sizeof(float)));
    if (err.code != MG_OK) return mgpy_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *Trainer_get_step(MgpyTrainer *self, void *closure) {
    (void)closure;
    if (self->trainer == NULL) { /* the getter too is reachable through the type */
        PyErr_SetString(PyExc_RuntimeError, "magnet._C.Trainer was not initialised");
        return NULL;
    }
    int step; /* apply() counts it under the write lock, in another thread perhaps */
    MGPY_LOCKED_READ(self->trainer->model, step = self->trainer->step);
    return PyLong_FromLong(step);
}

/* Defines fn_claimed(self, arg): fn, run by one thread at a time. A trainer's activations,
 * gradients and moments are its own, not the model's, so the model's read lock (which steps take,
 * letting inference run beside them) does not keep two threads' steps apart: a second micro_step
 * re-laid the first one's activations under it, zero_grad tore its gradients. A second caller
 * gets a RuntimeError, as a Generator's does. */
#define TRAINER_CLAIMED(fn)                                                                        \
    static PyObject *fn##_claimed(PyObject *obj, PyObject *arg) {                                  \
        MgpyTrainer *self = (MgpyTrainer *)obj;                                                    \
        if (self->trainer == NULL) {                                                               \
            PyErr_SetString(PyExc_RuntimeError, "magnet._C.Trainer was not initialised");          \
            return NULL;                                                                           \
        }                                                                                          \
        if (self->busy) {                                                                          \
            PyErr_SetString(PyExc_RuntimeError, "this Trainer is in use by another thread");       \
            return NULL;                                                                           \
        }                                                                                          \
        self->busy = 1;                                                                            \
        PyObject *result = fn(self, arg);                                                          \
        self->busy = 0;                                                                            \
        return result;                                                                             \
    }

TRAINER_CLAIMED(Trainer_micro_step)
TRAINER_CLAIMED(Trainer_apply)
MGPY_GUARDED(MgpyTrainer, trainer, Trainer_lr) /* reads the fixed schedule only */
TRAINER_CLAIMED(Trainer_grad_dict)
TRAINER_CLAIMED(Trainer_state)
TRAINER_CLAIMED(Trainer_load_state)
TRAINER_CLAIMED(Trainer_zero_grad)

static PyMethodDef Trainer_methods[] = {
    {"micro_step", (PyCFunction)Trainer_micro_step_claimed, METH_VARARGS,
     "One micro-batch: forward, losses and (train) backward."},
    {"apply", (PyCFunction)Trainer_apply_claimed, METH_NOARGS,
     "Optimizer step -> (grad_norm, lr)."},
    {"lr", (PyCFunction)Trainer_lr_guarded, METH_O, "Scheduled learning rate of a step."},
    {"grad_dict", (PyCFunction)Trainer_grad_dict_claimed, METH_NOARGS,
     "Gradients by parameter name."},
    {"state", (PyCFunction)Trainer_state_claimed, METH_NOARGS, "Parameters, moments and step."},
    {"load_state", (PyCFunction)Trainer_load_state_claimed, METH_O, "Restore state()."},
    {"zero_grad", (PyCFunction)Trainer_zero_grad_claimed, METH_NOARGS, "Zero the gradients."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Trainer_getset[] = {
    {"step", (getter)Trainer_get_step, NULL, "optimizer steps taken", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *Trainer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    MgpyTrainer *self = (MgpyTrainer *)type->tp_alloc(type, 0);
    if (self) {
        self->trainer = NULL;
        self->model = NULL;
        self->busy = 0;
    }
    return (PyObject *)self;
}

PyTypeObject MgpyTrainerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "magnet._C.Trainer",
    .tp_basicsize = sizeof(MgpyTrainer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Trainer(model: magnet._C.Model, config: dict): MAGNET adaptation steps.",
    .tp_new = Trainer_new,
    .tp_init = (initproc)Trainer_init,
    .tp_dealloc = (destructor)Trainer_dealloc,
    .tp_methods = Trainer_methods,
    .tp_getset = Trainer_getset,
};

/* masked_view(tokens int32[len], config dict, vocab_size, seed, stream)
 *   -> (tokens, roles, mntp_labels, msg_labels): exposes the objective's sampling for tests. */
PyObject *mgpy_masked_view(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tok, *cfg;
    int vocab;
    unsigned long long seed, stream;
    if (!PyArg_ParseTuple(args, "OO!iKK", &tok, &PyDict_Type, &cfg, &vocab, &seed, &stream))
        return NULL;
    if (!mgpy_is_c_array(tok, NPY_INT32) || PyArray_NDIM((PyArrayObject *)tok) != 1) {
        PyErr_SetString(PyExc_TypeError, "tokens must be a contiguous 1-D int32 array");
        return NULL;
    }
    mg_masking_config m;
    if (parse_masking(cfg, &m)) return NULL;
    m.vocab_size = vocab;
    if (vocab <= 0) {
        PyErr_SetString(PyExc_ValueError, "vocab_size must be positive");
        return NULL;
    }
    npy_intp n = PyArray_DIM((PyArrayObject *)tok, 0);
    PyObject *t = PyArray_SimpleNew(1, &n, NPY_INT32), *r = PyArray_SimpleNew(1, &n, NPY_UINT8);
    PyObject *l1 = PyArray_SimpleNew(1, &n, NPY_INT32), *l2 = PyArray_SimpleNew(1, &n, NPY_INT32);
    if (!t || !r || !l1 || !l2) {
        Py_XDECREF(t);
        Py_XDECREF(r);
        Py_XDECREF(l1);
        Py_XDECREF(l2);
        return NULL;
    }
    mg_masked_view(PyArray_DATA((PyArrayObject *)tok), (int)n, &m, seed, stream,
                   PyArray_DATA((PyArrayObject *)t), PyArray_DATA((PyArrayObject *)r),
                   PyArray_DATA((PyArrayObject *)l1), PyArray_DATA((PyArrayObject *)l2));
    return Py_BuildValue("(NNNN)", t, r, l1, l2);
}
