/*
 * The per-thread bump arena behind jansson's allocator (see jsonarena.h).
 *
 * Each thread has its own arena in thread-local storage, so no lock is taken. An active arena
 * hands out memory from its current chunk, 16-byte aligned; a request too large for a chunk
 * gets a chunk of its own ("big", given back at the end). The hooks recognise arena memory by
 * address: only the calling thread's chunks in use are searched, first against the bounds of
 * all of them, so memory from malloc is passed to free() after two comparisons. Under
 * AddressSanitizer every byte of a chunk not handed out is poisoned, with a red zone after each
 * block, so an overflow or a use after jsonarena_end() is still reported.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <jansson.h>

#include "jsonarena.h"
#include "macro.h"

#if defined(__SANITIZE_ADDRESS__)
#define JSONARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JSONARENA_ASAN 1
#endif
#endif

#ifdef JSONARENA_ASAN
#include <sanitizer/asan_interface.h>
#define REDZONE 16
#else
#define ASAN_POISON_MEMORY_REGION(addr, size)   ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define REDZONE                                 0
#endif

#define ALIGNMENT 16
#define BIG       (JSONARENA_CHUNK / 4) /* larger requests get a chunk of their own */

struct chunk {
	struct chunk *next;
	size_t size; /* bytes of data */
	bool big;
	alignas(ALIGNMENT) unsigned char data[];
};

struct arena {
	struct chunk *chunks;   /* in use, newest first */
	struct chunk *spare;    /* ordinary chunks kept for the next document */
	unsigned char *p, *end; /* the free part of the current chunk */
	uintptr_t lo, hi;       /* bounds of the chunks in use */
	size_t used;            /* bytes handed out */
	size_t held;            /* bytes of all chunks, in use and spare */
	size_t spare_size;      /* bytes of spare chunks */
	bool active;
	bool registered; /* the thread-exit destructor knows this arena */
};

static void install_once(void);
static void *hook_malloc(size_t size);
static void *hook_malloc_slow(size_t size) __attribute__((noinline));
static void hook_free(void *p);
static struct chunk *chunk_get(struct arena *a, size_t size, bool big);
static void chunk_put(struct arena *a, struct chunk *c);
static bool arena_owns(const struct arena *a, const void *p);
static void arena_release(void *userdata);

static pthread_once_t install_control = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static _Thread_local struct arena arena;

/* Install the allocation hooks in jansson, once per process. */
void
jsonarena_install(void)
{
	int r = pthread_once(&install_control, install_once);

	assert(r == 0);
	(void)r;
}

/* Make the calling thread's arena active; -EBUSY when it already is. */
int
jsonarena_begin(void)
{
	struct arena *a = &arena;

	jsonarena_install();
	if (a->active)
		return -EBUSY;
	a->active = true;
	a->chunks = NULL;
	a->p = a->end = NULL;
	a->lo = UINTPTR_MAX;
	a->hi = 0;
	a->used = 0;
	return 0;
}

/* Forget what the arena handed out; keep ordinary chunks up to JSONARENA_KEEP. */
void
jsonarena_end(void)
{
	struct arena *a = &arena;
	struct chunk *c, *next;

	assert(a->active);
	for (c = a->chunks; c; c = next) {
		next = c->next;
		chunk_put(a, c);
	}
	a->chunks = NULL;
	a->p = a->end = NULL;
	a->lo = UINTPTR_MAX;
	a->hi = 0;
	a->used = 0;
	a->active = false;
}

/* Take a mark in the calling thread's arena. */
struct jsonarena_mark
jsonarena_mark(void)
{
	const struct arena *a = &arena;

	if (!a->active)
		return (struct jsonarena_mark){0};
	return (struct jsonarena_mark){
	        .active = true, .chunk = a->chunks, .p = a->p, .end = a->end, .used = a->used};
}

/* Forget what the arena handed out since mark; the chunks taken since go back to the spares. */
void
jsonarena_rewind(const struct jsonarena_mark *mark)
{
	struct arena *a = &arena;

	if (!mark->active || !a->active)
		return;
	while (a->chunks && a->chunks != mark->chunk) {
		struct chunk *c = a->chunks;

		a->chunks = c->next;
		chunk_put(a, c);
	}
	a->p = mark->p;
	a->end = mark->end;
	a->used = mark->used;
	if (a->p)
		ASAN_POISON_MEMORY_REGION(a->p, (size_t)(a->end - a->p));
}

/* Whether the calling thread's arena is active. */
bool
jsonarena_active(void)
{
	return arena.active;
}

/* Release memory that jansson allocated: arena memory is left to jsonarena_end(). */
void
jsonarena_free(void *p)
{
	hook_free(p);
}

/* Bytes handed out since jsonarena_begin(). */
size_t
jsonarena_used(void)
{
	return arena.active ? arena.used : 0;
}

/* Bytes of chunks the calling thread holds. */
size_t
jsonarena_held(void)
{
	return arena.held;
}

/* Give back the calling thread's spare chunks. */
void
jsonarena_release(void)
{
	assert(!arena.active);
	arena_release(&arena);
}

static void
install_once(void)
{
	int r = pthread_key_create(&exit_key, arena_release);

	assert(r == 0);
	(void)r;
	json_set_alloc_funcs(hook_malloc, hook_free);
}

/*
 * jansson's malloc: from the active arena of this thread, else malloc(). The usual case, a small
 * block that fits the current chunk, is a few instructions here; the rest is hook_malloc_slow().
 */
static void *
hook_malloc(size_t size)
{
	struct arena *a = &arena;

	if (_likely_(a->active && size <= BIG)) {
		size_t need =
		        ((size ? size : 1) + REDZONE + ALIGNMENT - 1) & ~(size_t)(ALIGNMENT - 1);

		if (_likely_(need <= (size_t)(a->end - a->p))) {
			void *ret = a->p;

			a->p += need;
			a->used += size;
			ASAN_UNPOISON_MEMORY_REGION(ret, size);
			return ret;
		}
	}
	return hook_malloc_slow(size);
}

/* hook_malloc() without a fitting chunk: malloc(), a big chunk or a new current chunk. */
static void *
hook_malloc_slow(size_t size)
{
	struct arena *a = &arena;
	size_t need;
	void *ret;

	if (!a->active)
		return malloc(size);
	if (size > BIG) {
		struct chunk *c = chunk_get(a, size, true);

		if (!c)
			return NULL;
		ASAN_UNPOISON_MEMORY_REGION(c->data, size);
		a->used += size;
		return c->data;
	}
	need = ((size ? size : 1) + REDZONE + ALIGNMENT - 1) & ~(size_t)(ALIGNMENT - 1);
	if (need > (size_t)(a->end - a->p)) {
		struct chunk *c = chunk_get(a, JSONARENA_CHUNK, false);

		if (!c)
			return NULL;
		a->p = c->data;
		a->end = c->data + c->size;
	}
	ret = a->p;
	a->p += need;
	a->used += size;
	ASAN_UNPOISON_MEMORY_REGION(ret, size);
	return ret;
}

/* jansson's free: nothing for this thread's arena memory, free() for the rest. */
static void
hook_free(void *p)
{
	if (arena.active && arena_owns(&arena, p))
		return;
	free(p);
}

/* A chunk put in use: a spare one when size fits, else a new one (poisoned, counted). */
static struct chunk *
chunk_get(struct arena *a, size_t size, bool big)
{
	struct chunk *c;

	if (!big && a->spare) {
		c = a->spare;
		a->spare = c->next;
		a->spare_size -= c->size;
	} else {
		if (size > SIZE_MAX - sizeof(struct chunk))
			return NULL;
		c = malloc(sizeof(struct chunk) + size);
		if (!c)
			return NULL;
		c->size = size;
		c->big = big;
		ASAN_POISON_MEMORY_REGION(c->data, size);
		a->held += size;
		if (!a->registered) {
			/* give the chunks back when this thread ends */
			if (pthread_setspecific(exit_key, a) == 0)
				a->registered = true;
		}
	}
	c->next = a->chunks;
	a->chunks = c;
	if ((uintptr_t)c->data < a->lo)
		a->lo = (uintptr_t)c->data;
	if ((uintptr_t)(c->data + c->size) > a->hi)
		a->hi = (uintptr_t)(c->data + c->size);
	return c;
}

/* A chunk out of use: kept as a spare while they stay within JSONARENA_KEEP, else freed. */
static void
chunk_put(struct arena *a, struct chunk *c)
{
	if (c->big || a->spare_size + c->size > JSONARENA_KEEP) {
		a->held -= c->size;
		ASAN_UNPOISON_MEMORY_REGION(c->data, c->size);
		free(c);
		return;
	}
	ASAN_POISON_MEMORY_REGION(c->data, c->size);
	c->next = a->spare;
	a->spare = c;
	a->spare_size += c->size;
}

/* Whether p lies in one of the arena's chunks in use. */
static bool
arena_owns(const struct arena *a, const void *p)
{
	uintptr_t u = (uintptr_t)p;

	if (u < a->lo || u >= a->hi)
		return false;
	for (const struct chunk *c = a->chunks; c; c = c->next)
		if (u >= (uintptr_t)c->data && u < (uintptr_t)(c->data + c->size))
			return true;
	return false;
}

/* Free the spare chunks (and, at thread exit, any still in use). */
static void
arena_release(void *userdata)
{
	struct arena *a = userdata;
	struct chunk *c, *next;

	if (a->active)
		jsonarena_end();
	for (c = a->spare; c; c = next) {
		next = c->next;
		ASAN_UNPOISON_MEMORY_REGION(c->data, c->size);
		free(c);
	}
	a->spare = NULL;
	a->spare_size = 0;
	a->held = 0;
}
