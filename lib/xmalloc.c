/*
 * Allocation that aborts on out-of-memory (see xmalloc.h for why).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xmalloc.h"

static _noreturn_ void oom(void);

/* Allocate size bytes. */
void *
xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
		oom();
	return p;
}

/* Allocate n zeroed elements. */
void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom();
	return p;
}

/* Resize an allocation. */
void *
xrealloc(void *p, size_t size)
{
	p = realloc(p, size ? size : 1);
	if (!p)
		oom();
	return p;
}

/* Resize an array allocation, checking the multiplication. */
void *
xreallocarray(void *p, size_t n, size_t size)
{
	p = reallocarray(p, n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

/* Duplicate a string; NULL stays NULL. */
char *
xstrdup(const char *s)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		oom();
	return d;
}

/* Duplicate at most n bytes of a string. */
char *
xstrndup(const char *s, size_t n)
{
	char *d = strndup(s, n);

	if (!d)
		oom();
	return d;
}

/* Duplicate a block of memory. */
void *
xmemdup(const void *p, size_t size)
{
	void *d = xmalloc(size);

	memcpy(d, p, size);
	return d;
}

/* Format into a new string. */
char *
xasprintf(const char *format, ...)
{
	va_list ap;
	char *s;

	va_start(ap, format);
	s = xvasprintf(format, ap);
	va_end(ap);
	return s;
}

/* Format into a new string from a va_list. */
char *
xvasprintf(const char *format, va_list ap)
{
	char *s;

	if (vasprintf(&s, format, ap) < 0)
		oom();
	return s;
}

static void
oom(void)
{
	static const char msg[] = "azs-usaged: out of memory\n";

	(void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
	abort();
}
