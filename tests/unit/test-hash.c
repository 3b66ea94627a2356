/*
 * Unit tests for lib/hash.c: SHA-256 against published vectors, the shape and randomness of
 * version-4 UUIDs, and the record key of ARCHITECTURE.md section 4 rebuilt by hand from the usage
 * pages in the test data and checked against every row of record-keys.tsv.
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
#include <jansson.h>

#include "hash.h"
#include "macro.h"
#include "timeutil.h"

#define KEY_ROWS_MAX 16

struct key_row {
	char file[64];
	char hour[32];
	char subscription[64];
	char meter[64];
	char key[HASH_SHA256_HEX_LEN + 1];
	bool seen;
};

static void lower(char *s);
static char *normalize_time(const char *s, char out[static TIME_RFC3339_LEN + 1]);
static char *record_key_text(const char *hour, json_t *properties);
static size_t read_key_rows(struct key_row rows[static KEY_ROWS_MAX]);
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

/* The key text of one record is exactly the fields of section 4 joined by newlines. */
static void
test_hash_record_key_text_shape(void **state)
{
	_cleanup_(json_decrefp) json_t *page = NULL;
	_cleanup_free_ char *text = NULL;
	json_error_t error;

	(void)state;
	page = json_load_file(TESTDATA_DIR "/usage-page-1.json", 0, &error);
	if (!page)
		fail_msg("usage-page-1.json: %s", error.text);
	text = record_key_text(
	        "2026-11-01T10:00:00Z",
	        json_object_get(json_array_get(json_object_get(page, "value"), 0), "properties"));
	assert_string_equal(text,
	                    "2026-11-01T10:00:00Z\n"
	                    "c79389af-4480-48cc-8fa2-ee8ced8e843d\n"
	                    "fab6eb84500b4a09a8ca7358f8bbaea5\n"
	                    "2026-11-01T09:00:00Z\n"
	                    "2026-11-01T10:00:00Z\n"
	                    "/subscriptions/c79389af-4480-48cc-8fa2-ee8ced8e843d/resourcegroups/"
	                    "web/providers/microsoft.compute/virtualmachines/web01");
}

/* Every record of the two usage pages hashes to its key in record-keys.tsv. */
static void
test_hash_sha256_hex_record_keys_match_testdata(void **state)
{
	static const char *const pages[] = {"usage-page-1.json", "usage-page-2.json"};
	struct key_row rows[KEY_ROWS_MAX];
	size_t nrows, nrecords = 0;

	(void)state;
	nrows = read_key_rows(rows);
	assert_int_equal(nrows, 4);
	for (size_t p = 0; p < ARRAY_SIZE(pages); p++) {
		_cleanup_(json_decrefp) json_t *page = NULL;
		_cleanup_free_ char *path = NULL;
		json_error_t error;
		json_t *value, *record;
		size_t i;

		assert_true(asprintf(&path, "%s/%s", TESTDATA_DIR, pages[p]) > 0);
		page = json_load_file(path, 0, &error);
		if (!page)
			fail_msg("%s: %s", path, error.text);
		value = json_object_get(page, "value");
		assert_true(json_is_array(value));
		json_array_foreach(value, i, record)
		{
			json_t *props = json_object_get(record, "properties");
			const char *sub, *meter;
			struct key_row *row = NULL;
			char key[HASH_SHA256_HEX_LEN + 1], other[HASH_SHA256_HEX_LEN + 1];

			sub = json_string_value(json_object_get(props, "subscriptionId"));
			meter = json_string_value(json_object_get(props, "meterId"));
			assert_non_null(sub);
			assert_non_null(meter);
			for (size_t r = 0; r < nrows; r++)
				if (streq(rows[r].file, pages[p]) &&
				    streq(rows[r].subscription, sub) && streq(rows[r].meter, meter))
					row = &rows[r];
			if (!row)
				fail_msg("%s: no key row for %s %s", pages[p], sub, meter);

			_cleanup_free_ char *text = record_key_text(row->hour, props);
			hash_sha256_hex(text, strlen(text), key);
			if (!streq(key, row->key))
				fail_msg("%s %s %s: key %s, expected %s\n%s", pages[p], sub, meter,
				         key, row->key, text);
			row->seen = true;
			nrecords++;

			/* the reported hour is part of the key */
			_cleanup_free_ char *later = record_key_text("2026-11-01T11:00:00Z", props);
			hash_sha256_hex(later, strlen(later), other);
			assert_string_not_equal(other, key);
		}
	}
	assert_int_equal(nrecords, nrows);
	for (size_t r = 0; r < nrows; r++)
		assert_true(rows[r].seen);
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

/* Lower-case s in place (ASCII). */
static void
lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

/* Rewrite an RFC 3339 time as YYYY-MM-DDTHH:MM:SSZ. */
static char *
normalize_time(const char *s, char out[static TIME_RFC3339_LEN + 1])
{
	int64_t t;

	assert_non_null(s);
	assert_int_equal(time_parse_rfc3339(s, &t), 0);
	return time_format_rfc3339(t, out);
}

/* Build the record key text of section 4 from a usage record's properties (a new string). */
static char *
record_key_text(const char *hour, json_t *properties)
{
	_cleanup_(json_decrefp) json_t *instance = NULL;
	_cleanup_free_ char *sub = NULL, *meter = NULL, *uri = NULL;
	char start[TIME_RFC3339_LEN + 1], end[TIME_RFC3339_LEN + 1];
	const char *s;
	json_error_t error;
	char *text, *w;

	assert_non_null(properties);
	s = json_string_value(json_object_get(properties, "subscriptionId"));
	assert_non_null(s);
	sub = strdup(s);
	assert_non_null(sub);
	lower(sub);

	s = json_string_value(json_object_get(properties, "meterId"));
	assert_non_null(s);
	meter = strdup(s);
	assert_non_null(meter);
	w = meter;
	for (const char *r = meter; *r; r++)
		if (*r != '-')
			*w++ = (char)tolower((unsigned char)*r);
	*w = '\0';

	s = json_string_value(json_object_get(properties, "instanceData"));
	assert_non_null(s);
	instance = json_loads(s, 0, &error);
	if (!instance)
		fail_msg("instanceData: %s", error.text);
	s = json_string_value(
	        json_object_get(json_object_get(instance, "Microsoft.Resources"), "resourceUri"));
	assert_non_null(s);
	uri = strdup(s);
	assert_non_null(uri);
	lower(uri);

	normalize_time(json_string_value(json_object_get(properties, "usageStartTime")), start);
	normalize_time(json_string_value(json_object_get(properties, "usageEndTime")), end);
	assert_true(asprintf(&text, "%s\n%s\n%s\n%s\n%s\n%s", hour, sub, meter, start, end, uri) >
	            0);
	return text;
}

/* Read record-keys.tsv (header line, then file, hour, subscription, meter, key). */
static size_t
read_key_rows(struct key_row rows[static KEY_ROWS_MAX])
{
	_cleanup_fclose_ FILE *f = fopen(TESTDATA_DIR "/record-keys.tsv", "re");
	char line[512];
	size_t n = 0;

	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	assert_true(strncmp(line, "file\treported_hour\tsubscriptionId\tmeterId\tkey", 44) == 0);
	while (fgets(line, sizeof(line), f)) {
		struct key_row *r = &rows[n];

		if (line[0] == '\n')
			continue;
		assert_true(n < KEY_ROWS_MAX);
		*r = (struct key_row){0};
		if (sscanf(line, "%63[^\t]\t%31[^\t]\t%63[^\t]\t%63[^\t]\t%64[0-9a-f]", r->file,
		           r->hour, r->subscription, r->meter, r->key) != 5)
			fail_msg("record-keys.tsv: bad line: %s", line);
		assert_int_equal(strlen(r->key), HASH_SHA256_HEX_LEN);
		n++;
	}
	return n;
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
	        cmocka_unit_test(test_hash_record_key_text_shape),
	        cmocka_unit_test(test_hash_sha256_hex_record_keys_match_testdata),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
