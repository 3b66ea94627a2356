/*
 * Unit tests for lib/jsonarena.c: jansson values made inside and outside an arena and freed on
 * either side, nesting refused, the reset and the bound on what is kept, blocks bigger than a
 * chunk, memory jansson hands back (json_dumps) inside an arena, and threads with arenas of their
 * own beside a thread without one. Under AddressSanitizer, the bytes after a block and a block
 * after jsonarena_end() are poisoned.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "jsonarena.h"
#include "macro.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define DOC "{\"a\":[1,2.5,\"three\",{\"b\":null,\"c\":true}],\"d\":\"e\"}"

static void *thread_parse(void *arg);

/* A value made with malloc is freed with free() inside an arena; arena values are not. */
static void
test_jsonarena_mixed_with_malloc(void **state)
{
	json_t *outside, *inside;
	char *text, *copy;

	(void)state;
	jsonarena_install();
	outside = json_loads(DOC, 0, NULL);
	assert_non_null(outside);
	assert_int_equal(jsonarena_used(), 0);

	assert_int_equal(jsonarena_begin(), 0);
	assert_true(jsonarena_active());
	inside = json_loads(DOC, 0, NULL);
	assert_non_null(inside);
	assert_true(jsonarena_used() > 0);
	/* the tree from malloc goes back to malloc (a leak or a bad free shows under ASan) */
	json_decref(outside);
	text = json_dumps(inside, JSON_COMPACT);
	assert_non_null(text);
	copy = strdup(text); /* what outlives the arena is copied into ordinary memory */
	assert_non_null(copy);
	jsonarena_free(text);
	json_decref(inside);
	jsonarena_end();
	assert_false(jsonarena_active());
	assert_string_equal(copy, DOC);
	free(copy);

	/* outside an arena, jansson's memory is malloc's */
	outside = json_loads(DOC, 0, NULL);
	assert_non_null(outside);
	text = json_dumps(outside, JSON_COMPACT);
	assert_non_null(text);
	assert_string_equal(text, DOC);
	free(text);
	json_decref(outside);
	jsonarena_release();
	assert_int_equal(jsonarena_held(), 0);
}

/* A second jsonarena_begin() on the same thread is refused and leaves the first one active. */
static void
test_jsonarena_begin_nested_refused(void **state)
{
	json_t *v;

	(void)state;
	assert_int_equal(jsonarena_begin(), 0);
	v = json_loads(DOC, 0, NULL);
	assert_non_null(v);
	assert_int_equal(jsonarena_begin(), -EBUSY);
	assert_true(jsonarena_active());
	assert_true(jsonarena_used() > 0);
	json_decref(v);
	jsonarena_end();
	assert_false(jsonarena_active());
	jsonarena_release();
}

/* jsonarena_end() forgets everything, keeps chunks for the next document, at most the bound. */
static void
test_jsonarena_end_reuses_and_bounds(void **state)
{
	size_t held;
	json_t *a;

	(void)state;
	assert_int_equal(jsonarena_begin(), 0);
	assert_non_null(json_loads(DOC, 0, NULL));
	jsonarena_end();
	held = jsonarena_held();
	assert_int_equal(held, JSONARENA_CHUNK);

	/* the same document again takes no new chunk */
	assert_int_equal(jsonarena_begin(), 0);
	assert_int_equal(jsonarena_used(), 0);
	assert_non_null(json_loads(DOC, 0, NULL));
	assert_int_equal(jsonarena_held(), held);
	jsonarena_end();

	/* many more values than JSONARENA_KEEP: the chunks beyond it are given back */
	assert_int_equal(jsonarena_begin(), 0);
	a = json_array();
	assert_non_null(a);
	for (int i = 0; jsonarena_used() < 3 * JSONARENA_KEEP; i++)
		assert_int_equal(json_array_append_new(a, json_integer(i)), 0);
	assert_true(jsonarena_held() >= 3 * JSONARENA_KEEP);
	json_decref(a);
	jsonarena_end();
	assert_true(jsonarena_held() <= JSONARENA_KEEP);
	assert_true(jsonarena_held() > 0);
	jsonarena_release();
	assert_int_equal(jsonarena_held(), 0);
}

/* jsonarena_rewind() takes back what came after the mark, over chunks and big blocks. */
static void
test_jsonarena_rewind(void **state)
{
	struct jsonarena_mark mark;
	json_t *keep, *a, *first;
	size_t used, held;

	(void)state;
	mark = jsonarena_mark(); /* inactive: rewinding it does nothing */
	assert_false(mark.active);
	jsonarena_rewind(&mark);

	assert_int_equal(jsonarena_begin(), 0);
	keep = json_loads(DOC, 0, NULL);
	assert_non_null(keep);
	used = jsonarena_used();
	mark = jsonarena_mark();
	a = json_array();
	for (int i = 0; jsonarena_used() < used + 3 * JSONARENA_CHUNK; i++)
		assert_int_equal(json_array_append_new(a, json_integer(i)), 0);
	assert_int_equal(json_array_append_new(a, json_sprintf("%*s", JSONARENA_CHUNK, "y")), 0);
	first = json_array_get(a, 0);
	held = jsonarena_held();
	jsonarena_rewind(&mark);
	assert_int_equal(jsonarena_used(), used);
	assert_true(jsonarena_held() < held); /* the big block is gone, the chunks are spares */
	(void)first;
#ifdef TEST_ASAN
	assert_true(__asan_address_is_poisoned(first));
#endif
	/* what came before the mark is untouched, and the arena goes on after it */
	assert_string_equal(json_string_value(json_object_get(keep, "d")), "e");
	held = jsonarena_held();
	for (int i = 0; i < 10000; i++)
		assert_non_null(json_integer(i));
	assert_int_equal(jsonarena_held(), held);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(keep, "a"), 0)), 1);
	jsonarena_end();
	jsonarena_release();
}

/* A string bigger than a chunk gets a block of its own, given back at the end. */
static void
test_jsonarena_big_block(void **state)
{
	size_t n = 3 * JSONARENA_CHUNK;
	char *doc = malloc(n + 3);
	json_t *v;

	(void)state;
	assert_non_null(doc);
	doc[0] = '"';
	memset(doc + 1, 'x', n);
	doc[n + 1] = '"';
	doc[n + 2] = '\0';
	assert_int_equal(jsonarena_begin(), 0);
	v = json_loads(doc, JSON_DECODE_ANY, NULL);
	assert_non_null(v);
	assert_int_equal(json_string_length(v), n);
	assert_true(json_string_value(v)[n - 1] == 'x' && json_string_value(v)[n] == '\0');
	assert_true(jsonarena_used() > n);
	json_decref(v);
	jsonarena_end();
	assert_true(jsonarena_held() <= JSONARENA_KEEP);
	free(doc);
	jsonarena_release();
}

#ifdef TEST_ASAN
/* The bytes after a block are poisoned, and so is a block after jsonarena_end(). */
static void
test_jsonarena_asan_poison(void **state)
{
	json_t *v;
	const char *s;

	(void)state;
	assert_int_equal(jsonarena_begin(), 0);
	v = json_string("abc");
	s = json_string_value(v);
	assert_false(__asan_address_is_poisoned(s + 3));
	assert_true(__asan_address_is_poisoned(s + 4));
	jsonarena_end();
	assert_true(__asan_address_is_poisoned(s));
	jsonarena_release();
}
#endif

/* Threads parsing in their own arenas while this thread uses malloc all get the right values. */
static void
test_jsonarena_threads(void **state)
{
	pthread_t threads[3];
	bool ok[ARRAY_SIZE(threads)];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(threads); i++)
		assert_int_equal(pthread_create(&threads[i], NULL, thread_parse, &ok[i]), 0);
	for (int i = 0; i < 2000; i++) {
		json_t *v = json_loads(DOC, 0, NULL);

		assert_non_null(v);
		json_decref(v);
	}
	for (size_t i = 0; i < ARRAY_SIZE(threads); i++) {
		assert_int_equal(pthread_join(threads[i], NULL), 0);
		assert_true(ok[i]);
	}
	assert_int_equal(jsonarena_held(), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_jsonarena_mixed_with_malloc),
	        cmocka_unit_test(test_jsonarena_begin_nested_refused),
	        cmocka_unit_test(test_jsonarena_end_reuses_and_bounds),
	        cmocka_unit_test(test_jsonarena_rewind),
	        cmocka_unit_test(test_jsonarena_big_block),
#ifdef TEST_ASAN
	        cmocka_unit_test(test_jsonarena_asan_poison),
#endif
	        cmocka_unit_test(test_jsonarena_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Parse and read a document many times in this thread's arena; the chunks go at thread exit. */
static void *
thread_parse(void *arg)
{
	bool *ok = arg;

	*ok = true;
	for (int i = 0; i < 2000 && *ok; i++) {
		json_t *v;

		if (jsonarena_begin() < 0) {
			*ok = false;
			break;
		}
		v = json_loads(DOC, 0, NULL);
		*ok = v && json_integer_value(json_array_get(json_object_get(v, "a"), 0)) == 1 &&
		      strcmp(json_string_value(json_object_get(v, "d")), "e") == 0;
		json_decref(v);
		jsonarena_end();
	}
	return NULL;
}
