/* Errors travel as a code plus a message, up to the Python binding, which raises. */
#ifndef MG_CORE_ERROR_H
#define MG_CORE_ERROR_H

/* C linkage for the CUDA backend's C++ (.cu) files, which include this header. */
#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MG_OK = 0,
    MG_ERR_VALUE,       /* bad argument value or shape -> ValueError */
    MG_ERR_TYPE,        /* wrong dtype or kind -> TypeError */
    MG_ERR_FORMAT,      /* malformed or truncated file -> ValueError */
    MG_ERR_NOT_FOUND,   /* missing file -> FileNotFoundError */
    MG_ERR_IO,          /* read failure -> OSError */
    MG_ERR_NOMEM,       /* allocation failed or too large -> MemoryError */
    MG_ERR_UNSUPPORTED, /* valid but not supported (dtype, architecture) -> ValueError */
} mg_code;

typedef struct {
    mg_code code;
    char msg[512];
} mg_error;

/* Records the first failure (later ones keep the original cause) and returns its code. */
mg_code mg_fail(mg_error *err, mg_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void mg_error_clear(mg_error *err) {
    err->code = MG_OK;
    err->msg[0] = '\0';
}

#ifdef __cplusplus
}
#endif

#endif
