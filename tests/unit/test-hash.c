/*
 * Unit tests for lib/hash.c: SHA-256 against published vectors and the shape and randomness of
 * version-4 UUIDs. The record key of ARCHITECTURE.md section 4, which hashes with it, is tested
 * with lib/stack, which builds it (tests/unit/test-stack.c, against record-keys.tsv).
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hash.h"
#include "macro.h"

static void *hash_abc_many(void *arg);

/* Threads hashing at once, the first call included (this test runs first), all get the digest. */
static void
test_hash_sha256_hex_concurrent_first_use(void **state)
{
	pthread_t threads[4];
	bool ok[ARRAY_SIZE(threads)];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(threads); i++)
		assert_int_equal(pthread_create(&threads[i], NULL, hash_abc_many, &ok[i]), 0);
	for (size_t i = 0; i < ARRAY_SIZE(threads); i++) {
		assert_int_equal(pthread_join(threads[i], NULL), 0);
		assert_true(ok[i]);
	}
}

/* SHA-256 of the empty string, "abc" and the two-block FIPS 180-2 message. */
static void
test_hash_sha256_hex_known_vectors(void **state)
{
	static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	char out[HASH_SHA256_HEX_LEN + 1];

	(void)state;
	hash_sha256_hex("", 0, out);
	assert_string_equal(out,
	                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	hash_sha256_hex("abc", 3, out);
	assert_string_equal(out,
	                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	hash_sha256_hex(two_blocks, strlen(two_blocks), out);
	assert_string_equal(out,
	                    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	/* size is honoured: "abc" with its terminator is a different message */
	hash_sha256_hex("abc", 4, out);
	assert_string_not_equal(out,
	                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(strlen(out), HASH_SHA256_HEX_LEN);
}

/* UUIDs are lower-case 8-4-4-4-12 hex with version 4 and the RFC 4122 variant. */
static void
test_hash_uuid4_shape(void **state)
{
	char u[HASH_UUID_LEN + 1];

	(void)state;
	for (int n = 0; n < 1000; n++) {
		assert_int_equal(hash_uuid4(u), 0);
		assert_int_equal(strlen(u), HASH_UUID_LEN);
		for (size_t i = 0; i < HASH_UUID_LEN; i++) {
			if (i == 8 || i == 13 || i == 18 || i == 23)
				assert_int_equal(u[i], '-');
			else if (!isdigit((unsigned char)u[i]) && (u[i] < 'a' || u[i] > 'f'))
				fail_msg("uuid %s: bad character at %zu", u, i);
		}
		assert_int_equal(u[14], '4');
		assert_non_null(strchr("89ab", u[19]));
	}
}

/* Compare two UUID strings for qsort. */
static int
uuid_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Ten thousand UUIDs are all different, and the random bits are not stuck. */
static void
test_hash_uuid4_unique(void **state)
{
	enum { N = 10000 };
	static const char variants[] = "89ab";
	char(*u)[HASH_UUID_LEN + 1] = calloc(N, sizeof(*u));
	bool variant_seen[4] = {false};

	(void)state;
	assert_non_null(u);
	for (size_t i = 0; i < N; i++) {
		assert_int_equal(hash_uuid4(u[i]), 0);
		variant_seen[strchr(variants, u[i][19]) - variants] = true;
	}
	qsort(u, N, sizeof(*u), uuid_cmp);
	for (size_t i = 1; i < N; i++)
		if (strcmp(u[i - 1], u[i]) == 0)
			fail_msg("duplicate uuid %s", u[i]);
	for (size_t i = 0; i < ARRAY_SIZE(variant_seen); i++)
		assert_true(variant_seen[i]);
	free(u);
}

/* Thread body: hash "abc" a thousand times; *arg says whether every digest was right. */
static void *
hash_abc_many(void *arg)
{
	bool *ok = arg;
	char out[HASH_SHA256_HEX_LEN + 1];

	*ok = true;
	for (int n = 0; n < 1000; n++) {
		hash_sha256_hex("abc", 3, out);
		if (!streq(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
			*ok = false;
	}
	return NULL;
}

/* Run the hash tests. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_hash_sha256_hex_concurrent_first_use),
	        cmocka_unit_test(test_hash_sha256_hex_known_vectors),
	        cmocka_unit_test(test_hash_uuid4_shape),
	        cmocka_unit_test(test_hash_uuid4_unique),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
