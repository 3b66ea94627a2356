/*
 * A per-thread bump arena for jansson's allocations while one document is parsed and read.
 *
 * A usage page is a tree of tens of thousands of small jansson values that live exactly as long
 * as one call of stack_usage_page_parse(). Taking them from malloc and giving them back one by
 * one costs more than a tenth of the daemon's time (the allocator's bookkeeping and heap
 * consolidation). Between jsonarena_begin() and jsonarena_end() the calling thread's jansson
 * allocations come from a few large chunks instead, freeing them does nothing, and
 * jsonarena_end() forgets them all at once, keeping the chunks for the next document.
 *
 * jansson's allocator is process-wide: jsonarena_install() sets hooks that take memory from the
 * calling thread's arena while it is active and from malloc() otherwise, so every other use of
 * jansson (on any thread) is unchanged. Nothing allocated inside the arena may be used after
 * jsonarena_end(): copy what is kept into ordinary memory first. Memory that jansson hands to
 * its caller (json_dumps) is released with jsonarena_free(), never free().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define JSONARENA_CHUNK (256 * 1024)      /* bytes of one ordinary chunk */
#define JSONARENA_KEEP  (4 * 1024 * 1024) /* chunk bytes kept between documents, at most */

/* Install the allocation hooks in jansson, once per process (any thread, any number of times). */
void jsonarena_install(void);

/*
 * Make the calling thread's arena active (installing the hooks if needed). -EBUSY when it is
 * already active on this thread: arenas do not nest, and the caller then works with malloc.
 */
int jsonarena_begin(void);

/* Forget everything allocated since jsonarena_begin() and make the arena inactive. */
void jsonarena_end(void);

/* A point of the calling thread's active arena to come back to (see jsonarena_rewind). */
struct jsonarena_mark {
	bool active;       /* the arena was active: else rewinding does nothing */
	const void *chunk; /* the newest chunk in use */
	void *p, *end;     /* the free part of the chunk being filled */
	size_t used;
};

/* Take a mark in the calling thread's arena. */
struct jsonarena_mark jsonarena_mark(void);

/*
 * Forget what the arena handed out since mark, taken in the same jsonarena_begin(), so that a
 * short-lived tree inside a long-lived one (a record's instanceData) does not grow the arena.
 */
void jsonarena_rewind(const struct jsonarena_mark *mark);

static inline void
jsonarena_rewindp(const struct jsonarena_mark *mark)
{
	jsonarena_rewind(mark);
}

/* Whether the calling thread's arena is active. */
bool jsonarena_active(void);

/* Release memory that jansson allocated (arena memory is left to jsonarena_end). */
void jsonarena_free(void *p);

static inline void
jsonarena_freep(void *p)
{
	jsonarena_free(*(void **)p);
}

/* Bytes handed out since jsonarena_begin() (0 when inactive), for tests and measurement. */
size_t jsonarena_used(void);

/* Bytes of chunks the calling thread holds (kept between documents or in use). */
size_t jsonarena_held(void);

/* Give back the calling thread's chunks; the arena must be inactive. Done at thread exit too. */
void jsonarena_release(void);
