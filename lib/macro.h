/*
 * Small helpers every module uses: cleanup attributes, ownership transfer, array size, format
 * checking. Modelled on systemd's macro.h, reduced to what this project needs.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f)         __attribute__((cleanup(f)))
#define _printf_(a, b)       __attribute__((format(printf, a, b)))
#define _unused_             __attribute__((unused))
#define _noreturn_           __attribute__((noreturn))
#define _likely_(x)          __builtin_expect(!!(x), 1)
#define _unlikely_(x)        __builtin_expect(!!(x), 0)
#define _warn_unused_result_ __attribute__((warn_unused_result))

#define ARRAY_SIZE(a)        (sizeof(a) / sizeof((a)[0]))

#define MIN(a, b)            ((a) < (b) ? (a) : (b))
#define MAX(a, b)            ((a) > (b) ? (a) : (b))

/* Take ownership of a pointer: returns it and leaves NULL behind so a _cleanup_ does nothing. */
#define TAKE_PTR(p)                      \
	__extension__({                  \
		__typeof__(p) _p_ = (p); \
		(p) = NULL;              \
		_p_;                     \
	})

#define TAKE_FD(fd)              \
	__extension__({          \
		int _fd_ = (fd); \
		(fd) = -1;       \
		_fd_;            \
	})

static inline void
freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void
closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
#define _cleanup_close_ _cleanup_(closep)

static inline void
fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Define a cleanup helper "name##p" that calls func(*p) when *p is not NULL. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func) \
	static inline void func##p(type *p)     \
	{                                       \
		if (*p)                         \
			func(*p);               \
	}

static inline bool
streq(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

static inline bool
streq_ptr(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static inline bool
isempty(const char *s)
{
	return !s || !*s;
}

/* Overwrite memory that held a secret before it is freed; the compiler may not drop this. */
static inline void
explicit_wipe(void *p, size_t n)
{
	if (p)
		explicit_bzero(p, n);
}

static inline void
free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}
