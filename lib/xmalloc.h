/*
 * Allocation that aborts on out-of-memory. The durable queue and systemd's Restart= make dying
 * safe, and it keeps every caller free of impossible error paths. NULL from a library is still
 * checked where it is returned (and becomes -ENOMEM).
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>

#include "macro.h"

void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
void *xreallocarray(void *p, size_t n, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t size);
char *xasprintf(const char *format, ...) _printf_(1, 2);
char *xvasprintf(const char *format, va_list ap) _printf_(1, 0);
