#include "error.h"

#include <stdarg.h>
#include <stdio.h>

mg_code mg_fail(mg_error *err, mg_code code, const char *fmt, ...) {
    if (err == NULL || err->code != MG_OK) return err ? err->code : code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}
