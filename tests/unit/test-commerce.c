/*
 * Unit tests for lib/commerce.c. Encoding: every body is parsed back with jansson and compared
 * member by member with the records; ordinary events are byte for byte what json_pack +
 * json_dumps(JSON_COMPACT | JSON_PRESERVE_ORDER) writes, and random strings (control characters,
 * quotes, every UTF-8 length) give the same JSON values as jansson's encoding. Parsing: every row
 * of the outcome table of ARCHITECTURE.md section 6, results missing, reordered, unknown,
 * repeated and malformed, unparsable answers, and the Commerce answer in the test data.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "commerce.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#define BATCH_ID "0d7c5a4e-8f7b-4d38-9c61-2b1f0e9a6d55"
#define REG_ID                                                                                     \
	"/subscriptions/dd8597b4-8739-4467-8b10-f8679f62bfbf/resourcegroups/azurestack/providers/" \
	"microsoft.azurestack/registrations/testregistration"
#define T_START     INT64_C(1793523600) /* 2026-11-01T09:00:00Z */
#define EVENT_KEYS  15
#define RANDOM_RUNS 40

/* The four event ids of commerce-batch-response.json, in its order. */
static const char *const testdata_keys[] = {
        "3f1c0a9e8b7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b",
        "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
};

static const char *const event_keys[EVENT_KEYS] = {
        "usageEventId",
        "subscriptionId",
        "chargeReason",
        "tenantId",
        "sourceSubscriptionId",
        "registration",
        "meterId",
        "quantity",
        "usageStartTime",
        "usageEndTime",
        "reportedStartTime",
        "resourceUri",
        "location",
        "tags",
        "additionalInfo",
};

/* A batch of records whose strings the test owns. */
struct batch {
	struct store_record *records;
	size_t n;
};

static struct store_record ordinary_record(size_t i);
static struct batch batch_new(size_t n);
static void batch_free(struct batch *b);
static char *lower_dup(const char *s);
static json_t *parse_body(const struct commerce_request *req);
static json_t *reference_event(const struct store_record *r);
static void assert_event_matches(json_t *event, const struct store_record *r);
static void assert_string_member(json_t *o, const char *key, const char *expected);
static void assert_json_member(json_t *o, const char *key, const char *text);
static char *inflate_gzip(const char *data, size_t size, size_t *ret_size);
static char *read_file(const char *path, size_t *ret_size);
static uint64_t rng_next(uint64_t *state);
static char *random_text(uint64_t *state, size_t max_chars);
static struct commerce_response parse_ok(const struct store_record *records, size_t n, int status,
                                         const char *body);

static const struct commerce_options options_plain = {.registration = NULL, .gzip = false};

/* A batch of ordinary events parses back to the records, member by member. */
static void
test_commerce_request_build_round_trip(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(5);
	struct commerce_request req;
	json_t *root, *list;

	(void)state;
	free(b.records[1].tenant_id);
	b.records[1].tenant_id = NULL; /* charged to the default subscription */
	b.records[2].tags = xstrdup("{\"env\":\"prod\",\"owner\":\"ops\",\"n\":3}");
	free(b.records[3].additional_info);
	b.records[3].additional_info = xstrdup("{\"ServiceType\":\"Standard_D2_v2\"}");
	free(b.records[4].resource_uri);
	free(b.records[4].location);
	b.records[4].resource_uri = NULL;
	b.records[4].location = NULL;

	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	assert_false(req.gzip);
	assert_int_equal(req.body_size, req.json_size);
	assert_int_equal(strlen(req.body), req.body_size);
	assert_string_equal(req.correlation_id, BATCH_ID);

	root = parse_body(&req);
	assert_int_equal(json_object_size(root), 1);
	list = json_object_get(root, "request");
	assert_true(json_is_array(list));
	assert_int_equal(json_array_size(list), b.n);
	for (size_t i = 0; i < b.n; i++)
		assert_event_matches(json_array_get(list, i), &b.records[i]);
	json_decref(root);
	commerce_request_done(&req);
	assert_null(req.body);
}

/* Ordinary events are byte for byte what jansson writes for the same values. */
static void
test_commerce_request_build_matches_jansson_bytes(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(20);
	_cleanup_free_ char *expected = NULL;
	json_t *list = json_array(), *root;
	struct commerce_request req;

	(void)state;
	free(b.records[3].tags);
	b.records[3].tags = xstrdup("{\"a\":\"x\\ty\",\"b\":[1,2,{\"c\":null}],\"d\":true}");
	free(b.records[4].tenant_id);
	b.records[4].tenant_id = NULL;
	free(b.records[5].additional_info);
	b.records[5].additional_info = xstrdup("{\"é\":\"日本\"}");
	for (size_t i = 0; i < b.n; i++)
		json_array_append_new(list, reference_event(&b.records[i]));
	root = json_pack("{s:o}", "request", list);
	expected = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);

	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	assert_string_equal(req.body, expected);
	commerce_request_done(&req);
}

/* Random text (control characters, quotes, backslashes, every UTF-8 length) in every string
 * member gives the values jansson gives. */
static void
test_commerce_request_build_random_strings_equal_jansson(void **state)
{
	uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);

	(void)state;
	for (int run = 0; run < RANDOM_RUNS; run++) {
		_cleanup_(batch_free) struct batch b = batch_new(50);
		struct commerce_request req;
		json_t *root, *list;

		for (size_t i = 0; i < b.n; i++) {
			struct store_record *r = &b.records[i];
			/* every string member but chargeReason, which has three values */
			char **fields[] = {&r->key,          &r->charged_subscription,
			                   &r->tenant_id,    &r->subscription_id,
			                   &r->meter_id,     &r->quantity,
			                   &r->resource_uri, &r->location,
			                   &r->registration};
			_cleanup_free_ char *text = random_text(&seed, 16);
			json_t *o = json_pack("{s:s}", "k", text);

			for (size_t f = 0; f < ARRAY_SIZE(fields); f++) {
				free(*fields[f]);
				*fields[f] = random_text(&seed, 24);
				if (**fields[f] == '\0') { /* required members are not empty */
					free(*fields[f]);
					*fields[f] = xstrdup("x");
				}
			}
			/* tags: a random string value inside an object, written by jansson */
			free(r->tags);
			r->tags = json_dumps(o, JSON_COMPACT);
			json_decref(o);
		}
		assert_int_equal(
		        commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
		root = parse_body(&req);
		list = json_object_get(root, "request");
		assert_int_equal(json_array_size(list), b.n);
		for (size_t i = 0; i < b.n; i++) {
			json_t *expected = reference_event(&b.records[i]);

			assert_true(json_equal(json_array_get(list, i), expected));
			json_decref(expected);
		}
		json_decref(root);
		commerce_request_done(&req);
	}
}

/* Tags and additionalInfo of any JSON shape are embedded as they are stored. */
static void
test_commerce_request_build_exotic_tags(void **state)
{
	static const char *const texts[] = {
	        "{}",
	        "[]",
	        "null",
	        "{\"a\":{\"b\":{\"c\":[[[[{}]]]]}}}",
	        " { \"spaced\" : [ 1 , 2.5e-3 , -0 , 1E+2 ] , \"t\" : true , \"f\" : false } ",
	        "{\"quote\":\"\\\"\",\"backslash\":\"\\\\\",\"slash\":\"\\/\",\"ctl\":\"\\b\\f\\n\\r\\t\"}",
	        "{\"u\":\"\\u00e9\\u65e5\\ud83d\\ude00\",\"raw\":\"é日😀\"}",
	        "{\"line-sep\":\"\xe2\x80\xa8\xe2\x80\xa9\",\"del\":\"\x7f\"}",
	        "{\"big\":1234567890123456789,\"neg\":-1.5,\"tiny\":1e-300}",
	        "[-9223372036854775808,9223372036854775807,1e-400,1.7976931348623157e308]",
	        "{\"dup\":1,\"dup\":2}",
	        "\"just a string\"",
	        "42",
	};
	_cleanup_(batch_free) struct batch b = batch_new(ARRAY_SIZE(texts));
	struct commerce_request req;
	json_t *root, *list;

	(void)state;
	for (size_t i = 0; i < b.n; i++) {
		free(b.records[i].tags);
		free(b.records[i].additional_info);
		b.records[i].tags = xstrdup(texts[i]);
		b.records[i].additional_info = xstrdup(texts[b.n - 1 - i]);
	}
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	root = parse_body(&req);
	list = json_object_get(root, "request");
	for (size_t i = 0; i < b.n; i++) {
		json_t *e = json_array_get(list, i);

		/* "dup" twice: jansson keeps the last one either way */
		assert_json_member(e, "tags", texts[i]);
		assert_json_member(e, "additionalInfo", texts[b.n - 1 - i]);
	}
	/* the stored text is copied, not written again: spacing and escapes stay */
	assert_non_null(strstr(req.body, "\"tags\":{ \"spaced\" : [ 1 , 2.5e-3 , -0 , 1E+2 ]"));
	assert_non_null(strstr(req.body, "\"\\u00e9\\u65e5\\ud83d\\ude00\""));
	json_decref(root);
	commerce_request_done(&req);
}

/* Quantities go out exactly as stored, up to 38 significant digits, as JSON strings. */
static void
test_commerce_request_build_quantity_exact(void **state)
{
	static const char *const quantities[] = {
	        "2.4000000000",
	        "12345678901234567890123456789012345678",
	        "0.00000000000000000000000000000000000001",
	        "1234567890123456789.0123456789012345678",
	        "99999999999999999999999999999999999999",
	        "0.12345678901234567",
	        "0",
	        "0.0000000000",
	        "1000",
	};
	_cleanup_(batch_free) struct batch b = batch_new(ARRAY_SIZE(quantities));
	struct commerce_request req;
	json_t *root, *list;

	(void)state;
	for (size_t i = 0; i < b.n; i++) {
		free(b.records[i].quantity);
		b.records[i].quantity = xstrdup(quantities[i]);
	}
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	root = parse_body(&req);
	list = json_object_get(root, "request");
	for (size_t i = 0; i < b.n; i++) {
		json_t *q = json_object_get(json_array_get(list, i), "quantity");
		_cleanup_free_ char *literal = xasprintf("\"quantity\":\"%s\"", quantities[i]);

		assert_true(json_is_string(q));
		assert_string_equal(json_string_value(q), quantities[i]);
		assert_non_null(strstr(req.body, literal));
	}
	json_decref(root);
	commerce_request_done(&req);
}

/* Non-ASCII text passes through as UTF-8, not as \u escapes. */
static void
test_commerce_request_build_non_ascii(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct commerce_request req;
	json_t *root, *e;

	(void)state;
	free(b.records[0].resource_uri);
	free(b.records[0].location);
	b.records[0].resource_uri = xstrdup("/subscriptions/x/resourceGroups/"
	                                    "Grüße-日本-😀/providers/Microsoft.Compute/"
	                                    "virtualMachines/vm");
	b.records[0].location = xstrdup("région-Ω");
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &req), 0);
	assert_non_null(strstr(req.body, "Grüße-日本-😀"));
	assert_non_null(strstr(req.body, "\"région-Ω\""));
	root = parse_body(&req);
	e = json_array_get(json_object_get(root, "request"), 0);
	assert_event_matches(e, &b.records[0]);
	json_decref(root);
	commerce_request_done(&req);
}

/* Control characters, quotes and backslashes are escaped the way jansson escapes them. */
static void
test_commerce_request_build_control_characters(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct commerce_request req;
	json_t *root, *e;

	(void)state;
	free(b.records[0].location);
	b.records[0].location = xstrdup("a\"b\\c/d\x01\x1f\b\f\n\r\t\x7f"
	                                "e");
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &req), 0);
	assert_non_null(strstr(req.body, "\"location\":\"a\\\"b\\\\c/d\\u0001\\u001F\\b\\f\\n\\r\\t"
	                                 "\x7f"
	                                 "e\""));
	root = parse_body(&req);
	e = json_array_get(json_object_get(root, "request"), 0);
	assert_string_member(e, "location", b.records[0].location);
	json_decref(root);
	commerce_request_done(&req);
}

/* The GUIDs the daemon writes go out in lower case; meterId and the key as they are. */
static void
test_commerce_request_build_lower_cases_guids(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct store_record *r = &b.records[0];
	struct commerce_request req;
	json_t *root, *e;

	(void)state;
	free(r->charged_subscription);
	free(r->tenant_id);
	free(r->subscription_id);
	free(r->meter_id);
	free(r->registration);
	r->charged_subscription = xstrdup("E09A4E93-29A7-4EBA-A6D4-76202383F07F");
	r->tenant_id = xstrdup("104EDF09-AAAA-BBBB-CCCC-DDDDEEEEFFFF");
	r->subscription_id = xstrdup("C79389AF-1111-2222-3333-444455556666");
	r->meter_id = xstrdup("FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	r->registration = xstrdup("/subscriptions/DD8597B4-8739-4467-8B10-F8679F62BFBF/"
	                          "resourceGroups/AzureStack/providers/Microsoft.AzureStack/"
	                          "registrations/TestRegistration");
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &req), 0);
	root = parse_body(&req);
	e = json_array_get(json_object_get(root, "request"), 0);
	assert_string_member(e, "subscriptionId", "e09a4e93-29a7-4eba-a6d4-76202383f07f");
	assert_string_member(e, "tenantId", "104edf09-aaaa-bbbb-cccc-ddddeeeeffff");
	assert_string_member(e, "sourceSubscriptionId", "c79389af-1111-2222-3333-444455556666");
	assert_string_member(e, "registration", REG_ID);
	assert_string_member(e, "meterId", "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	assert_string_member(e, "usageEventId", r->key);
	json_decref(root);
	commerce_request_done(&req);
}

/* Times are written YYYY-MM-DDTHH:MM:SSZ. */
static void
test_commerce_request_build_times(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct commerce_request req;
	json_t *root, *e;

	(void)state;
	b.records[0].usage_start = T_START;
	b.records[0].usage_end = T_START + 3600;
	b.records[0].reported_hour = T_START + 3600;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &req), 0);
	root = parse_body(&req);
	e = json_array_get(json_object_get(root, "request"), 0);
	assert_string_member(e, "usageStartTime", "2026-11-01T09:00:00Z");
	assert_string_member(e, "usageEndTime", "2026-11-01T10:00:00Z");
	assert_string_member(e, "reportedStartTime", "2026-11-01T10:00:00Z");
	json_decref(root);
	commerce_request_done(&req);
}

/* With gzip the body inflates to exactly the JSON sent without it. */
static void
test_commerce_request_build_gzip_inflates_to_json(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(300);
	struct commerce_options gz = {.gzip = true};
	struct commerce_request plain, packed;
	_cleanup_free_ char *inflated = NULL;
	size_t size = 0;

	(void)state;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &plain),
	                 0);
	assert_int_equal(commerce_request_build(&gz, BATCH_ID, b.records, b.n, &packed), 0);
	assert_true(packed.gzip);
	assert_int_equal(packed.json_size, plain.body_size);
	assert_true(packed.body_size < plain.body_size / 4);
	assert_int_equal((unsigned char)packed.body[0], 0x1f); /* the gzip magic */
	assert_int_equal((unsigned char)packed.body[1], 0x8b);
	inflated = inflate_gzip(packed.body, packed.body_size, &size);
	assert_non_null(inflated);
	assert_int_equal(size, plain.body_size);
	assert_memory_equal(inflated, plain.body, size);
	commerce_request_done(&plain);
	commerce_request_done(&packed);
}

/*
 * Builds that share a scratch give the same bodies as builds without one, whatever came before:
 * batches of several sizes, one that failed half-way (its buffer stays for the next) and a plain
 * body, which does not use the scratch.
 */
static void
test_commerce_request_build_scratch_reused(void **state)
{
	static const size_t sizes[] = {300, 2, COMMERCE_BATCH_MAX, 0 /* fails */, 40, 300};
	_cleanup_(batch_free) struct batch b = batch_new(COMMERCE_BATCH_MAX);
	struct commerce_options gz = {.gzip = true};
	struct commerce_options gz_scratch = {.gzip = true, .scratch = commerce_scratch_new()};
	struct commerce_options plain_scratch = {.scratch = gz_scratch.scratch};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		struct commerce_request want, got;

		if (sizes[i] == 0) {
			char *uri = b.records[500].resource_uri;

			b.records[500].resource_uri = (char *)"bad \xff";
			assert_int_equal(commerce_request_build(&gz_scratch, BATCH_ID, b.records,
			                                        COMMERCE_BATCH_MAX, &got),
			                 -EBADMSG);
			b.records[500].resource_uri = uri;
			continue;
		}
		assert_int_equal(commerce_request_build(&gz, BATCH_ID, b.records, sizes[i], &want),
		                 0);
		assert_int_equal(
		        commerce_request_build(&gz_scratch, BATCH_ID, b.records, sizes[i], &got),
		        0);
		assert_true(got.gzip);
		assert_int_equal(got.json_size, want.json_size);
		assert_int_equal(got.body_size, want.body_size);
		assert_memory_equal(got.body, want.body, want.body_size);
		commerce_request_done(&got);
		commerce_request_done(&want);
		assert_int_equal(
		        commerce_request_build(&plain_scratch, BATCH_ID, b.records, sizes[i], &got),
		        0);
		assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records,
		                                        sizes[i], &want),
		                 0);
		assert_false(got.gzip);
		assert_int_equal(got.body_size, want.body_size);
		assert_memory_equal(got.body, want.body, want.body_size);
		commerce_request_done(&got);
		commerce_request_done(&want);
	}
	commerce_scratch_free(gz_scratch.scratch);
}

/* Every build has a new version-4 request id; the correlation id is the batch id. */
static void
test_commerce_request_build_request_ids(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct commerce_request a, c;
	char again[COMMERCE_ID_LEN + 1];
	const char *ids[3];

	(void)state;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &a), 0);
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 1, &c), 0);
	assert_int_equal(commerce_request_id_new(again), 0);
	assert_string_not_equal(a.request_id, c.request_id);
	assert_string_not_equal(again, a.request_id);
	assert_string_not_equal(again, c.request_id);
	assert_string_equal(a.correlation_id, BATCH_ID);
	assert_string_equal(c.correlation_id, BATCH_ID);
	ids[0] = a.request_id;
	ids[1] = c.request_id;
	ids[2] = again;
	for (size_t k = 0; k < ARRAY_SIZE(ids); k++) {
		const char *id = ids[k];

		assert_int_equal(strlen(id), COMMERCE_ID_LEN);
		assert_int_equal(id[14], '4');
		assert_non_null(strchr("89ab", id[19]));
		for (size_t i = 0; i < COMMERCE_ID_LEN; i++)
			assert_non_null(strchr(
			        i == 8 || i == 13 || i == 18 || i == 23 ? "-" : "0123456789abcdef",
			        id[i]));
	}
	commerce_request_done(&a);
	commerce_request_done(&c);
}

/* A batch id that is not a plain header value is refused. */
static void
test_commerce_request_build_bad_batch_id(void **state)
{
	static const char *const bad[] = {
	        "", "0d7c5a4e-8f7b-4d38-9c61-2b1f0e9a6d55x", "a b", "a\r\nX-Evil: 1", "a:b", "é",
	};
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct commerce_request req;

	(void)state;
	assert_int_equal(commerce_request_build(&options_plain, NULL, b.records, 1, &req), -EINVAL);
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(commerce_request_build(&options_plain, bad[i], b.records, 1, &req),
		                 -EINVAL);
	assert_int_equal(commerce_request_build(&options_plain, "b1", b.records, 1, &req), 0);
	assert_string_equal(req.correlation_id, "b1");
	commerce_request_done(&req);
}

/* No records is -EINVAL, more than COMMERCE_BATCH_MAX -E2BIG; the maximum works. */
static void
test_commerce_request_build_batch_size(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(COMMERCE_BATCH_MAX + 1);
	struct commerce_request req;
	json_t *root;

	(void)state;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 0, &req),
	                 -EINVAL);
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, NULL, 1, &req), -EINVAL);
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req),
	                 -E2BIG);
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records,
	                                        COMMERCE_BATCH_MAX, &req),
	                 0);
	root = parse_body(&req);
	assert_int_equal(json_array_size(json_object_get(root, "request")), COMMERCE_BATCH_MAX);
	json_decref(root);
	commerce_request_done(&req);
}

/* Large embedded JSON and strings that escape to six times their size make the buffer grow. */
static void
test_commerce_request_build_large_records(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(40);
	struct commerce_request req;
	json_t *root, *list;

	(void)state;
	for (size_t i = 0; i < b.n; i++) {
		size_t len = 16384 + i;
		char *tags = xmalloc(len + 1);

		/* {"k":"xxxx...","n":1}, len bytes of JSON */
		memset(tags, 'x', len);
		memcpy(tags, "{\"k\":\"", 6);
		memcpy(tags + len - 8, "\",\"n\":1}", 8);
		tags[len] = '\0';
		free(b.records[i].tags);
		b.records[i].tags = tags;
		free(b.records[i].location);
		b.records[i].location = xmalloc(2001);
		memset(b.records[i].location, '\x01', 2000);
		b.records[i].location[2000] = '\0';
	}
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	root = parse_body(&req);
	list = json_object_get(root, "request");
	for (size_t i = 0; i < b.n; i++)
		assert_event_matches(json_array_get(list, i), &b.records[i]);
	json_decref(root);
	commerce_request_done(&req);
}

/* A record without a registration takes the configured one; with neither it is refused. */
static void
test_commerce_request_build_registration_fallback(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(2);
	struct commerce_options o = {.registration = "/subscriptions/X/resourceGroups/RG/"
	                                             "providers/Microsoft.AzureStack/"
	                                             "registrations/Configured"};
	struct commerce_request req;
	const char *why = NULL;
	json_t *root, *list;

	(void)state;
	free(b.records[1].registration);
	b.records[1].registration = NULL;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, 2, &req),
	                 -EINVAL);
	assert_int_equal(commerce_check_record(&options_plain, &b.records[1], &why), -EINVAL);
	assert_string_equal(why, "no registration");
	assert_int_equal(commerce_request_build(&o, BATCH_ID, b.records, 2, &req), 0);
	root = parse_body(&req);
	list = json_object_get(root, "request");
	assert_string_member(json_array_get(list, 0), "registration", REG_ID);
	assert_string_member(json_array_get(list, 1), "registration",
	                     "/subscriptions/x/resourcegroups/rg/providers/microsoft.azurestack/"
	                     "registrations/configured");
	json_decref(root);
	commerce_request_done(&req);
}

/* Text that is not UTF-8 cannot be encoded; check_record names the reason. */
static void
test_commerce_request_build_invalid_utf8(void **state)
{
	static const char *const bad[] = {
	        "\xff",             /* never in UTF-8 */
	        "a\x80",            /* a lone continuation byte */
	        "\xc3",             /* cut short */
	        "\xc3z",            /* continuation missing */
	        "\xc0\xaf",         /* overlong '/' */
	        "\xe0\x80\xaf",     /* overlong, three bytes */
	        "\xed\xa0\x80",     /* a surrogate */
	        "\xf4\x90\x80\x80", /* above U+10FFFF */
	        "\xf8\x88\x80\x80\x80",
	};
	_cleanup_(batch_free) struct batch b = batch_new(3);
	struct commerce_request req = {.body_size = 12345};
	const char *why = NULL;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		free(b.records[2].resource_uri);
		b.records[2].resource_uri = xstrdup(bad[i]);
		assert_int_equal(
		        commerce_request_build(&options_plain, BATCH_ID, b.records, 3, &req),
		        -EBADMSG);
		assert_int_equal(req.body_size, 12345); /* untouched */
		assert_int_equal(commerce_check_record(&options_plain, &b.records[2], &why),
		                 -EBADMSG);
		assert_string_equal(why, "text is not valid UTF-8");
		assert_int_equal(commerce_check_record(&options_plain, &b.records[1], NULL), 0);
	}
}

/* Tags that are not exactly one JSON value are refused, each for the right reason. */
static void
test_commerce_check_record_invalid_json(void **state)
{
	static const char *const bad[] = {
	        "",
	        "   ",
	        "{",
	        "}",
	        "{\"a\":1,}",
	        "[1,]",
	        "[,1]",
	        "{\"a\" 1}",
	        "{a:1}",
	        "{\"a\":1} x",
	        "{} {}",
	        "'single'",
	        "01",
	        "1.",
	        ".5",
	        "-",
	        "1e",
	        "+1",
	        "NaN",
	        "Infinity",
	        "tru",
	        "nul",
	        "\"unterminated",
	        "\"ctl \x01 in string\"",
	        "\"tab \t in string\"",
	        "\"bad escape \\x\"",
	        "\"short \\u12\"",
	        "\"lone high \\ud83d\"",
	        "\"lone low \\ude00\"",
	        "\"high then other \\ud83d\\u0041\"",
	        "\"bad utf-8 \xff\"",
	        "{\"k\":\"\xc3\"}",
	        "[[[[[[[[[[",
	        "\"nul \\u0000\"",     /* jansson refuses it too */
	        "9223372036854775808", /* beyond int64, as jansson */
	        "-9223372036854775809",
	        "1e400", /* overflows a double */
	        "-2E+308",
	        "10000000000000000000", /* 20 digits */
	};
	_cleanup_(batch_free) struct batch b = batch_new(1);
	const char *why = NULL;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		free(b.records[0].tags);
		b.records[0].tags = xstrdup(bad[i]);
		assert_int_equal(commerce_check_record(&options_plain, &b.records[0], &why),
		                 -EBADMSG);
		assert_string_equal(why, "tags is not one JSON value");
	}
	free(b.records[0].tags);
	b.records[0].tags = NULL;
	free(b.records[0].additional_info);
	b.records[0].additional_info = xstrdup("{\"a\":");
	assert_int_equal(commerce_check_record(&options_plain, &b.records[0], &why), -EBADMSG);
	assert_string_equal(why, "additionalInfo is not one JSON value");
}

/* Nesting is accepted up to jansson's limit (2048) and refused beyond it, as jansson does. */
static void
test_commerce_check_record_json_depth(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	_cleanup_free_ char *deep = xmalloc(2 * 2049 + 1);

	(void)state;
	for (size_t depth = 2048; depth <= 2049; depth++) {
		json_error_t error;
		json_t *parsed;

		memset(deep, '[', depth);
		memset(deep + depth, ']', depth);
		deep[2 * depth] = '\0';
		free(b.records[0].tags);
		b.records[0].tags = xstrdup(deep);
		parsed = json_loads(deep, 0, &error);
		assert_true(depth == 2048 ? parsed != NULL : parsed == NULL);
		assert_int_equal(commerce_check_record(&options_plain, &b.records[0], NULL),
		                 parsed ? 0 : -EBADMSG);
		json_decref(parsed);
	}
}

/* A record without a required member is refused; the optional ones become null. */
static void
test_commerce_check_record_missing_members(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	struct store_record *r = &b.records[0];
	char **required[] = {&r->key,           &r->charged_subscription,
	                     &r->charge_reason, &r->subscription_id,
	                     &r->meter_id,      &r->quantity};
	struct commerce_request req;
	json_t *root, *e;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(required); i++) {
		char *saved = *required[i];
		char empty[1] = "";

		*required[i] = NULL;
		assert_int_equal(commerce_check_record(&options_plain, r, NULL), -EINVAL);
		*required[i] = empty;
		assert_int_equal(commerce_check_record(&options_plain, r, NULL), -EINVAL);
		*required[i] = saved;
	}
	free(r->tenant_id);
	free(r->resource_uri);
	free(r->location);
	r->tenant_id = r->resource_uri = r->location = NULL;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, r, 1, &req), 0);
	root = parse_body(&req);
	e = json_array_get(json_object_get(root, "request"), 0);
	assert_true(json_is_null(json_object_get(e, "tenantId")));
	assert_true(json_is_null(json_object_get(e, "resourceUri")));
	assert_true(json_is_null(json_object_get(e, "location")));
	json_decref(root);
	commerce_request_done(&req);
}

/* Only the three charge reasons of the contract go out; a held ("ambiguous") record never. */
static void
test_commerce_check_record_charge_reason(void **state)
{
	static const char *const bad[] = {"ambiguous", "Registered", "default ", "held"};
	static const char *const good[] = {"registered", "default", "unknown-subscription"};
	_cleanup_(batch_free) struct batch b = batch_new(2);
	struct commerce_request req;
	const char *why = NULL;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		free(b.records[1].charge_reason);
		b.records[1].charge_reason = xstrdup(good[i]);
		assert_int_equal(commerce_check_record(&options_plain, &b.records[1], NULL), 0);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		free(b.records[1].charge_reason);
		b.records[1].charge_reason = xstrdup(bad[i]);
		assert_int_equal(commerce_check_record(&options_plain, &b.records[1], &why),
		                 -EINVAL);
		assert_string_equal(
		        why,
		        "the charge reason is not registered, default or unknown-subscription");
		assert_int_equal(
		        commerce_request_build(&options_plain, BATCH_ID, b.records, 2, &req),
		        -EINVAL);
	}
}

/* A time outside the years 0000 to 9999 cannot be written. */
static void
test_commerce_check_record_time_out_of_range(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	const char *why = NULL;

	(void)state;
	b.records[0].usage_end = INT64_C(253402300800); /* 10000-01-01 */
	assert_int_equal(commerce_check_record(&options_plain, &b.records[0], &why), -EINVAL);
	assert_string_equal(why, "a time is outside the years 0000 to 9999");
	b.records[0].usage_end = T_START + 3600;
	b.records[0].reported_hour = INT64_C(-62167219201); /* before 0000-01-01 */
	assert_int_equal(commerce_check_record(&options_plain, &b.records[0], NULL), -EINVAL);
	b.records[0].reported_hour = INT64_C(-62167219200);
	assert_int_equal(commerce_check_record(&options_plain, &b.records[0], NULL), 0);
}

/* commerce-batch-response.json: Accepted and Duplicate forwarded, InvalidQuantity dead, Error
 * retried. */
static void
test_commerce_parse_response_testdata(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(4);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;
	size_t size = 0;

	(void)state;
	for (size_t i = 0; i < 4; i++) {
		free(b.records[i].key);
		b.records[i].key = xstrdup(testdata_keys[i]);
	}
	body = read_file(TESTDATA_DIR "/commerce-batch-response.json", &size);
	assert_int_equal(commerce_parse_response(b.records, 4, 200, body, size, &resp), 0);
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.n_outcomes, 4);
	assert_int_equal(resp.n_results, 4);
	assert_int_equal(resp.outcomes[0].id, b.records[0].id);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[0].status, "Accepted");
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[1].status, "Duplicate");
	assert_int_equal(resp.outcomes[2].kind, STORE_OUTCOME_DEAD);
	assert_string_equal(resp.outcomes[2].error_code, "InvalidQuantity");
	assert_string_equal(resp.outcomes[2].error_message, "The quantity passed is lower than 0.");
	assert_int_equal(resp.outcomes[3].kind, STORE_OUTCOME_RETRY);
	assert_string_equal(resp.outcomes[3].error_code, "InternalError");
	assert_string_equal(resp.outcomes[3].error_message, "Try again.");
	assert_int_equal(resp.outcomes[3].next_attempt_at, 0);
	assert_null(resp.outcomes[3].new_batch_id);
	assert_int_equal(resp.n_forwarded, 2);
	assert_int_equal(resp.n_dead, 1);
	assert_int_equal(resp.n_retry, 1);
	assert_int_equal(resp.n_missing + resp.n_unknown + resp.n_duplicate + resp.n_malformed +
	                         resp.n_unknown_status,
	                 0);
	assert_null(resp.error_code);
	assert_false(resp.throttle);
	commerce_response_done(&resp);
	assert_null(resp.outcomes);
}

/* Every per-event status of the outcome table, in any case. */
static void
test_commerce_parse_response_every_status(void **state)
{
	static const struct {
		const char *status;
		enum store_outcome_kind kind;
		const char *expect; /* forwarded: status; dead: code */
	} rows[] = {
	        {"Accepted", STORE_OUTCOME_FORWARDED, "Accepted"},
	        {"Duplicate", STORE_OUTCOME_FORWARDED, "Duplicate"},
	        {"accepted", STORE_OUTCOME_FORWARDED, "Accepted"},
	        {"DUPLICATE", STORE_OUTCOME_FORWARDED, "Duplicate"},
	        {"Expired", STORE_OUTCOME_DEAD, "Expired"},
	        {"ResourceNotFound", STORE_OUTCOME_DEAD, "ResourceNotFound"},
	        {"ResourceNotAuthorized", STORE_OUTCOME_DEAD, "ResourceNotAuthorized"},
	        {"ResourceNotActive", STORE_OUTCOME_DEAD, "ResourceNotActive"},
	        {"InvalidQuantity", STORE_OUTCOME_DEAD, "InvalidQuantity"},
	        {"InvalidDimension", STORE_OUTCOME_DEAD, "InvalidDimension"},
	        {"BadArgument", STORE_OUTCOME_DEAD, "BadArgument"},
	        {"badargument", STORE_OUTCOME_DEAD, "BadArgument"},
	        {"Error", STORE_OUTCOME_RETRY, NULL},
	        {"Throttled", STORE_OUTCOME_RETRY, NULL}, /* not in the table: sent again */
	        {"", STORE_OUTCOME_RETRY, NULL},
	};
	_cleanup_(batch_free) struct batch b = batch_new(ARRAY_SIZE(rows));
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;
	size_t unknown = 0;
	json_t *list = json_array(), *root;

	(void)state;
	for (size_t i = 0; i < b.n; i++) {
		json_array_append_new(list,
		                      json_pack("{s:s,s:s,s:{s:s,s:s}}", "usageEventId",
		                                b.records[i].key, "status", rows[i].status, "error",
		                                "code", rows[i].status, "message", "m"));
		unknown += !streq(rows[i].status, "Error") && rows[i].kind == STORE_OUTCOME_RETRY;
	}
	root = json_pack("{s:i,s:o}", "count", (int)b.n, "result", list);
	body = json_dumps(root, 0);
	json_decref(root);

	resp = parse_ok(b.records, b.n, 200, body);
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	for (size_t i = 0; i < b.n; i++) {
		const struct store_outcome *o = &resp.outcomes[i];

		assert_int_equal(o->id, b.records[i].id);
		assert_int_equal(o->kind, rows[i].kind);
		switch (o->kind) {
		case STORE_OUTCOME_FORWARDED:
			assert_string_equal(o->status, rows[i].expect);
			assert_null(o->error_code);
			break;
		case STORE_OUTCOME_DEAD:
			assert_null(o->status);
			assert_string_equal(o->error_code, rows[i].expect);
			/* the answer's code differs in case only: no prefix */
			assert_string_equal(o->error_message, "m");
			break;
		case STORE_OUTCOME_RETRY:
			assert_null(o->status);
			break;
		}
	}
	assert_int_equal(resp.n_unknown_status, unknown);
	assert_int_equal(resp.n_forwarded, 4);
	assert_int_equal(resp.n_dead, 8);
	assert_int_equal(resp.n_retry, 3);
	commerce_response_done(&resp);
}

/* A dead record keeps the status as its code and the answer's own code in the message. */
static void
test_commerce_parse_response_dead_code_and_message(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(3);
	_cleanup_free_ char *body = xasprintf(
	        "{\"result\":["
	        "{\"usageEventId\":\"%s\",\"status\":\"BadArgument\",\"error\":{\"code\":"
	        "\"InvalidUsageEventId\",\"message\":\"The id is too long.\"}},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Expired\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"ResourceNotFound\",\"error\":{\"code\":"
	        "\"SubscriptionNotFound\"}}]}",
	        b.records[0].key, b.records[1].key, b.records[2].key);
	struct commerce_response resp = parse_ok(b.records, 3, 200, body);

	(void)state;
	assert_string_equal(resp.outcomes[0].error_code, "BadArgument");
	assert_string_equal(resp.outcomes[0].error_message,
	                    "InvalidUsageEventId: The id is too long.");
	assert_string_equal(resp.outcomes[1].error_code, "Expired");
	assert_null(resp.outcomes[1].error_message);
	assert_string_equal(resp.outcomes[2].error_code, "ResourceNotFound");
	assert_string_equal(resp.outcomes[2].error_message, "SubscriptionNotFound");
	assert_int_equal(resp.n_dead, 3);
	commerce_response_done(&resp);
}

/* Records the answer says nothing about are retried and counted. */
static void
test_commerce_parse_response_missing_results(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(5);
	_cleanup_free_ char *body = xasprintf(
	        "{\"count\":5,\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}]}",
	        b.records[1].key, b.records[3].key);
	struct commerce_response resp = parse_ok(b.records, 5, 200, body);

	(void)state;
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.n_missing, 3);
	assert_int_equal(resp.n_forwarded, 2);
	assert_int_equal(resp.n_retry, 3);
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(resp.outcomes[i].kind,
		                 i == 1 || i == 3 ? STORE_OUTCOME_FORWARDED : STORE_OUTCOME_RETRY);
	assert_string_equal(resp.outcomes[0].error_code, "missing-result");
	commerce_response_done(&resp);

	/* an empty list: every record again */
	resp = parse_ok(b.records, 5, 200, "{\"count\":0,\"result\":[]}");
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.n_missing, 5);
	assert_int_equal(resp.n_retry, 5);
	commerce_response_done(&resp);
}

/* Results in another order than the records are matched by id. */
static void
test_commerce_parse_response_reordered(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(4);
	_cleanup_free_ char *body =
	        xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Expired\"},"
	                  "{\"usageEventId\":\"%s\",\"status\":\"Duplicate\"},"
	                  "{\"usageEventId\":\"%s\",\"status\":\"Error\"},"
	                  "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}]}",
	                  b.records[3].key, b.records[0].key, b.records[2].key, b.records[1].key);
	struct commerce_response resp = parse_ok(b.records, 4, 200, body);

	(void)state;
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[0].status, "Duplicate");
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[1].status, "Accepted");
	assert_int_equal(resp.outcomes[2].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.outcomes[3].kind, STORE_OUTCOME_DEAD);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(resp.outcomes[i].id, b.records[i].id);
	assert_int_equal(resp.n_missing, 0);
	commerce_response_done(&resp);
}

/* Results naming ids that were not sent are ignored, counted, and the first is reported. */
static void
test_commerce_parse_response_unknown_ids(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(2);
	_cleanup_free_ char *body =
	        xasprintf("{\"result\":[{\"usageEventId\":\"not-sent-1\",\"status\":\"Accepted\"},"
	                  "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	                  "{\"usageEventId\":\"not-sent-2\",\"status\":\"InvalidQuantity\"},"
	                  "{\"usageEventId\":\"%.63s\",\"status\":\"Accepted\"}]}",
	                  b.records[0].key, b.records[1].key);
	struct commerce_response resp = parse_ok(b.records, 2, 200, body);

	(void)state;
	assert_int_equal(resp.n_unknown, 3); /* a prefix of a key is not that key */
	assert_string_equal(resp.unknown_id, "not-sent-1");
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_FORWARDED);
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.n_missing, 1);
	assert_int_equal(resp.n_dead, 0);
	commerce_response_done(&resp);
}

/* Ids are matched without regard to case. */
static void
test_commerce_parse_response_ids_case_insensitive(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(2);
	_cleanup_free_ char *upper = xstrdup(b.records[1].key);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;

	(void)state;
	for (char *p = upper; *p; p++)
		if (*p >= 'a' && *p <= 'z')
			*p -= 'a' - 'A';
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	                 "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}]}",
	                 b.records[0].key, upper);
	resp = parse_ok(b.records, 2, 200, body);
	assert_int_equal(resp.n_forwarded, 2);
	assert_int_equal(resp.n_unknown, 0);
	commerce_response_done(&resp);
}

/* Keys that differ only in their first 24 digits are told apart (the index hashes the end). */
static void
test_commerce_parse_response_keys_with_common_prefix(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(4);
	_cleanup_free_ char *body = NULL, *other = NULL;
	struct commerce_response resp;

	(void)state;
	for (size_t i = 1; i < 4; i++) {
		memcpy(b.records[i].key + 24, b.records[0].key + 24, 40);
		b.records[i].key[0] = (char)('a' + i);
	}
	other = xstrdup(b.records[0].key);
	other[0] = 'f';
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Expired\"},"
	                 "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	                 "{\"usageEventId\":\"%s\",\"status\":\"Error\"},"
	                 "{\"usageEventId\":\"%s\",\"status\":\"Duplicate\"}]}",
	                 b.records[2].key, b.records[3].key, other, b.records[0].key);
	resp = parse_ok(b.records, 4, 200, body);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[0].status, "Duplicate");
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.outcomes[2].kind, STORE_OUTCOME_DEAD);
	assert_int_equal(resp.outcomes[3].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[3].status, "Accepted");
	assert_int_equal(resp.n_missing, 1); /* records[1]: no result named it */
	assert_int_equal(resp.n_unknown, 1); /* other: a key but for its first digit */
	assert_string_equal(resp.unknown_id, other);
	commerce_response_done(&resp);
}

/* Several results for one record that agree keep the first; disagreeing ones retry it. */
static void
test_commerce_parse_response_duplicate_results(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(5);
	const char *k0 = b.records[0].key, *k1 = b.records[1].key, *k2 = b.records[2].key;
	const char *k3 = b.records[3].key, *k4 = b.records[4].key;
	_cleanup_free_ char *body = xasprintf(
	        "{\"result\":["
	        /* 0: Accepted then Duplicate: forwarded, the first status */
	        "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Duplicate\"},"
	        /* 1: Accepted then InvalidQuantity: retried */
	        "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"InvalidQuantity\"},"
	        /* 2: two dead codes: dead, the first code */
	        "{\"usageEventId\":\"%s\",\"status\":\"Expired\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"BadArgument\"},"
	        /* 3: Error, Accepted, Accepted: retried (settled at the first contradiction) */
	        "{\"usageEventId\":\"%s\",\"status\":\"Error\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	        /* 4: dead then forwarded: retried */
	        "{\"usageEventId\":\"%s\",\"status\":\"ResourceNotFound\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Duplicate\"}]}",
	        k0, k0, k1, k1, k2, k2, k3, k3, k3, k4, k4);
	struct commerce_response resp = parse_ok(b.records, 5, 200, body);

	(void)state;
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[0].status, "Accepted");
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_RETRY);
	assert_string_equal(resp.outcomes[1].error_code, "contradicting-results");
	assert_int_equal(resp.outcomes[2].kind, STORE_OUTCOME_DEAD);
	assert_string_equal(resp.outcomes[2].error_code, "Expired");
	assert_int_equal(resp.outcomes[3].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.outcomes[4].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.n_duplicate, 6);
	assert_int_equal(resp.n_contradicting, 3);
	assert_int_equal(resp.n_results, 11);
	commerce_response_done(&resp);
}

/* A key sent twice (the store never does) gives both records the key's outcome. */
static void
test_commerce_parse_response_repeated_key_in_batch(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(3);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;

	(void)state;
	free(b.records[2].key);
	b.records[2].key = xstrdup(b.records[0].key);
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"},"
	                 "{\"usageEventId\":\"%s\",\"status\":\"Duplicate\"}]}",
	                 b.records[0].key, b.records[1].key);
	resp = parse_ok(b.records, 3, 200, body);
	assert_int_equal(resp.n_forwarded, 3);
	assert_string_equal(resp.outcomes[2].status, "Accepted");
	assert_int_equal(resp.outcomes[2].id, b.records[2].id);
	assert_int_equal(resp.n_duplicate, 0);
	commerce_response_done(&resp);
}

/* Results that are not objects or carry no id are ignored; a record whose result has no status
 * is retried. */
static void
test_commerce_parse_response_malformed_results(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(3);
	_cleanup_free_ char *body = xasprintf(
	        "{\"result\":[1,\"x\",null,[],{},{\"usageEventId\":7,\"status\":\"Accepted\"},"
	        "{\"usageEventId\":null},"
	        "{\"usageEventId\":\"%s\"},"
	        "{\"usageEventId\":\"%s\",\"status\":42,\"error\":\"not an object\"},"
	        "{\"usageEventId\":\"%s\",\"status\":\"Expired\",\"error\":{\"code\":5,"
	        "\"message\":[]}}]}",
	        b.records[0].key, b.records[1].key, b.records[2].key);
	struct commerce_response resp = parse_ok(b.records, 3, 200, body);

	(void)state;
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.n_malformed, 7);
	assert_int_equal(resp.n_unknown_status, 2);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_RETRY);
	assert_int_equal(resp.outcomes[2].kind, STORE_OUTCOME_DEAD);
	assert_string_equal(resp.outcomes[2].error_code, "Expired");
	assert_null(resp.outcomes[2].error_message);
	commerce_response_done(&resp);
}

/* A 2xx answer without a result list is transient for the whole batch. */
static void
test_commerce_parse_response_unparsable_2xx(void **state)
{
	static const char *const bodies[] = {
	        "",
	        "not json",
	        "{\"result\":[",
	        "[]",
	        "{}",
	        "{\"result\":{}}",
	        "{\"result\":null}",
	        "{\"count\":1}",
	        "\"result\"",
	        "{\"result\":[]} trailing",
	        "{\"result\":[],\"x\":\"\xff\"}",
	};
	_cleanup_(batch_free) struct batch b = batch_new(2);
	struct commerce_response resp;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
		resp = parse_ok(b.records, 2, 200, bodies[i]);
		assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
		assert_null(resp.outcomes);
		assert_int_equal(resp.n_outcomes, 0);
		assert_string_equal(resp.error_code, "unparsable-answer");
		assert_non_null(resp.error_message);
		/* jansson's message may quote the body: only a position is given */
		assert_null(strstr(resp.error_message, "not json"));
		commerce_response_done(&resp);
	}
	/* a NULL body is an empty one */
	assert_int_equal(commerce_parse_response(b.records, 2, 200, NULL, 10, &resp), 0);
	assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
	assert_string_equal(resp.error_message, "the answer has no body");
	commerce_response_done(&resp);
	/* an error object in a 200 is its error */
	resp = parse_ok(b.records, 2, 200,
	                "{\"error\":{\"code\":\"Busy\",\"message\":\"Come back later.\"}}");
	assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
	assert_string_equal(resp.error_code, "Busy");
	assert_string_equal(resp.error_message, "Come back later.");
	commerce_response_done(&resp);
	/* any 2xx with a result list is read as the 200 is */
	resp = parse_ok(b.records, 2, 202, "{\"result\":[]}");
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.n_missing, 2);
	commerce_response_done(&resp);
}

/* The whole-batch rows of the outcome table, with no body, with HTML and with an ARM error. */
static void
test_commerce_parse_response_http_statuses(void **state)
{
	static const struct {
		int status;
		enum commerce_result result;
		bool throttle;
		const char *code;
	} rows[] = {
	        {400, COMMERCE_RESULT_SPLIT, false, "http-400"},
	        {401, COMMERCE_RESULT_AUTH, false, "http-401"},
	        {403, COMMERCE_RESULT_AUTH, false, "http-403"},
	        {409, COMMERCE_RESULT_CONFLICT, false, "http-409"},
	        {413, COMMERCE_RESULT_TOO_LARGE, false, "http-413"},
	        {408, COMMERCE_RESULT_TRANSIENT, false, "http-408"},
	        {429, COMMERCE_RESULT_TRANSIENT, true, "http-429"},
	        {500, COMMERCE_RESULT_TRANSIENT, false, "http-500"},
	        {502, COMMERCE_RESULT_TRANSIENT, false, "http-502"},
	        {503, COMMERCE_RESULT_TRANSIENT, true, "http-503"},
	        {504, COMMERCE_RESULT_TRANSIENT, false, "http-504"},
	        {0, COMMERCE_RESULT_TRANSIENT, false, "no-answer"},
	        {-1, COMMERCE_RESULT_TRANSIENT, false, "no-answer"},
	        {404, COMMERCE_RESULT_TRANSIENT, false, "http-404"},
	        {302, COMMERCE_RESULT_TRANSIENT, false, "http-302"},
	        {100, COMMERCE_RESULT_TRANSIENT, false, "http-100"},
	        {600, COMMERCE_RESULT_TRANSIENT, false, "http-600"},
	};
	static const char *const bodies[] = {
	        "",
	        "<html>Bad Gateway</html>",
	        "{\"error\":{\"code\":\"C\",\"message\":\"M\"}}",
	};
	_cleanup_(batch_free) struct batch b = batch_new(3);
	struct commerce_response resp;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++)
		for (size_t v = 0; v < ARRAY_SIZE(bodies); v++) {
			resp = parse_ok(b.records, 3, rows[i].status, bodies[v]);
			assert_int_equal(resp.result, rows[i].result);
			assert_int_equal(resp.http_status, rows[i].status);
			assert_int_equal(resp.throttle, rows[i].throttle);
			assert_string_equal(resp.error_code, v == 2 ? "C" : rows[i].code);
			if (v == 2)
				assert_string_equal(resp.error_message, "M");
			else
				assert_null(resp.error_message);
			if (rows[i].result == COMMERCE_RESULT_CONFLICT) {
				assert_int_equal(resp.n_outcomes, 3);
				assert_int_equal(resp.n_forwarded, 3);
				for (size_t j = 0; j < 3; j++) {
					assert_int_equal(resp.outcomes[j].kind,
					                 STORE_OUTCOME_FORWARDED);
					assert_string_equal(resp.outcomes[j].status, "Conflict");
					assert_int_equal(resp.outcomes[j].id, b.records[j].id);
				}
			} else {
				assert_null(resp.outcomes);
				assert_int_equal(resp.n_outcomes, 0);
			}
			commerce_response_done(&resp);
		}
}

/* The answer's error in either ARM shape; long texts are cut at a character boundary. */
static void
test_commerce_parse_response_batch_error_shapes(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	_cleanup_free_ char *long_text = xmalloc(3 * 1000 + 1);
	_cleanup_free_ char *body = NULL, *event_body = NULL;
	struct commerce_response resp;

	(void)state;
	resp = parse_ok(b.records, 1, 400, "{\"code\":\"BadRequest\",\"message\":\"Bad.\"}");
	assert_string_equal(resp.error_code, "BadRequest");
	assert_string_equal(resp.error_message, "Bad.");
	commerce_response_done(&resp);

	resp = parse_ok(b.records, 1, 413, "{\"error\":{\"code\":\"\",\"message\":5}}");
	assert_string_equal(resp.error_code, "http-413");
	assert_null(resp.error_message);
	commerce_response_done(&resp);

	for (size_t i = 0; i < 1000; i++)
		memcpy(long_text + 3 * i, "日", 3);
	long_text[3000] = '\0';
	body = xasprintf("{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", long_text, long_text);
	resp = parse_ok(b.records, 1, 400, body);
	assert_true(strlen(resp.error_code) <= COMMERCE_ERROR_CODE_MAX);
	assert_true(strlen(resp.error_code) > COMMERCE_ERROR_CODE_MAX - 3);
	assert_int_equal(strlen(resp.error_code) % 3, 0);
	assert_true(strlen(resp.error_message) <= COMMERCE_ERROR_MESSAGE_MAX);
	assert_true(strlen(resp.error_message) > COMMERCE_ERROR_MESSAGE_MAX - 3);
	assert_int_equal(strlen(resp.error_message) % 3, 0);
	commerce_response_done(&resp);

	/* per-event texts are cut too */
	event_body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Expired\","
	                       "\"error\":{\"code\":\"Expired\",\"message\":\"%s\"}}]}",
	                       b.records[0].key, long_text);
	resp = parse_ok(b.records, 1, 200, event_body);
	assert_true(strlen(resp.outcomes[0].error_message) <= COMMERCE_ERROR_MESSAGE_MAX);
	assert_int_equal(strlen(resp.outcomes[0].error_message) % 3, 0);
	commerce_response_done(&resp);
}

/* Long unknown ids are cut for the log. */
static void
test_commerce_parse_response_long_unknown_id(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(1);
	_cleanup_free_ char *id = xmalloc(5001);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;

	(void)state;
	memset(id, 'z', 5000);
	id[5000] = '\0';
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}]}", id);
	resp = parse_ok(b.records, 1, 200, body);
	assert_int_equal(strlen(resp.unknown_id), COMMERCE_ERROR_CODE_MAX);
	assert_int_equal(resp.n_missing, 1);
	commerce_response_done(&resp);
}

/* Escaped ids, statuses, codes and messages are decoded; escaped member names are names. */
static void
test_commerce_parse_response_escaped_strings(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(2);
	_cleanup_free_ char *escaped = xstrdup(b.records[0].key);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;

	(void)state;
	/* the key's first character as \u00XX, the second as an escaped solidus-free hex */
	body = xasprintf("{\"res\\u0075lt\":[{\"usage\\u0045ventId\":\"\\u00%02x%s\","
	                 "\"status\":\"Invalid\\u0051uantity\",\"error\":{\"code\":\"Bad\\/Code\","
	                 "\"message\":\"line\\nnext \\u00e9\\u65e5 \\ud83d\\ude00 \\\"q\\\" "
	                 "\\\\ \\t\"}},{\"usageEventId\":\"%s\",\"status\":\"\\u0041ccepted\"}]}",
	                 (unsigned char)escaped[0], escaped + 1, b.records[1].key);
	resp = parse_ok(b.records, 2, 200, body);
	assert_int_equal(resp.result, COMMERCE_RESULT_OUTCOMES);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_DEAD);
	assert_string_equal(resp.outcomes[0].error_code, "InvalidQuantity");
	assert_string_equal(resp.outcomes[0].error_message,
	                    "Bad/Code: line\nnext é日 😀 \"q\" \\ \t");
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[1].status, "Accepted");
	commerce_response_done(&resp);
}

/* Repeated members: the last one counts, as jansson has it. */
static void
test_commerce_parse_response_repeated_members(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(2);
	_cleanup_free_ char *body = NULL;
	struct commerce_response resp;

	(void)state;
	/* the first result list is replaced by the second */
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}],"
	                 "\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Expired\","
	                 "\"status\":\"Duplicate\",\"usageEventId\":\"%s\","
	                 "\"error\":{\"code\":\"X\",\"message\":\"gone\"},\"error\":null}]}",
	                 b.records[0].key, b.records[0].key, b.records[1].key);
	resp = parse_ok(b.records, 2, 200, body);
	assert_int_equal(resp.n_results, 1);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_RETRY); /* missing */
	assert_int_equal(resp.outcomes[1].kind, STORE_OUTCOME_FORWARDED);
	assert_string_equal(resp.outcomes[1].status, "Duplicate");
	commerce_response_done(&resp);

	/* a later "result" that is not a list makes the answer unparsable */
	free(body);
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\"}],"
	                 "\"result\":null}",
	                 b.records[0].key);
	resp = parse_ok(b.records, 2, 200, body);
	assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
	commerce_response_done(&resp);

	/* a status that is not a string after one that is: no status */
	free(body);
	body = xasprintf("{\"result\":[{\"usageEventId\":\"%s\",\"status\":\"Accepted\","
	                 "\"status\":1,\"error\":{\"message\":\"m\",\"message\":[]}}]}",
	                 b.records[0].key);
	resp = parse_ok(b.records, 2, 200, body);
	assert_int_equal(resp.outcomes[0].kind, STORE_OUTCOME_RETRY);
	assert_string_equal(resp.outcomes[0].error_code, "no-status");
	assert_null(resp.outcomes[0].error_message);
	assert_int_equal(resp.n_unknown_status, 1);
	commerce_response_done(&resp);
}

/* The answer must be JSON as jansson reads it; other members may be anything valid. */
static void
test_commerce_parse_response_strict_json(void **state)
{
	static const char *const invalid[] = {
	        "{\"result\":[],\"n\":9223372036854775808}",
	        "{\"result\":[],\"n\":-9223372036854775809}",
	        "{\"result\":[],\"n\":1e400}",
	        "{\"result\":[],\"n\":-1.5E+309}",
	        "{\"result\":[],\"s\":\"\\u0000\"}",
	        "{\"result\":[],\"n\":01}",
	        "{\"result\":[],}",
	        "{\"result\":[,]}",
	        "{\"result\":[{\"usageEventId\":\"x\",}]}",
	        "{\"result\":[]",
	        "{\"result\" []}",
	        " {\"result\":[]} x",
	        "\xef\xbb\xbf{\"result\":[]}",
	};
	static const char *const valid[] = {
	        " \t\r\n{ \"result\" : [ ] , \"n\" : -9223372036854775808 , \"r\" : 1e-400 } \n",
	        "{\"result\":[],\"n\":[1.7976931348623157e308,-0,0.5E-3,{\"deep\":[[{}]]}]}",
	        "{\"x\":{\"result\":5},\"result\":[]}",
	};
	_cleanup_(batch_free) struct batch b = batch_new(1);
	_cleanup_free_ char *deep = xmalloc(2 * 2049 + 64);
	struct commerce_response resp;
	char nul_body[] = "{\"result\":[],\"n\":1\0}";

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(invalid); i++) {
		resp = parse_ok(b.records, 1, 200, invalid[i]);
		if (resp.result != COMMERCE_RESULT_TRANSIENT)
			fail_msg("accepted: %s", invalid[i]);
		commerce_response_done(&resp);
	}
	for (size_t i = 0; i < ARRAY_SIZE(valid); i++) {
		resp = parse_ok(b.records, 1, 200, valid[i]);
		if (resp.result != COMMERCE_RESULT_OUTCOMES)
			fail_msg("refused: %s", valid[i]);
		assert_int_equal(resp.n_missing, 1);
		commerce_response_done(&resp);
	}
	/* a NUL byte is never JSON (jansson drops one after a number; the parser does not) */
	assert_int_equal(
	        commerce_parse_response(b.records, 1, 200, nul_body, sizeof(nul_body) - 1, &resp),
	        0);
	assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
	commerce_response_done(&resp);

	/* nesting: 2048 containers deep in all (root and member included) is jansson's limit */
	for (size_t depth = 2048; depth <= 2049; depth++) {
		size_t inner = depth - 1; /* the root object is one */
		char *p = deep;

		p += sprintf(p, "{\"result\":[],\"d\":");
		memset(p, '[', inner);
		memset(p + inner, ']', inner);
		strcpy(p + 2 * inner, "}");
		resp = parse_ok(b.records, 1, 200, deep);
		assert_int_equal(resp.result, depth == 2048 ? COMMERCE_RESULT_OUTCOMES
		                                            : COMMERCE_RESULT_TRANSIENT);
		commerce_response_done(&resp);
	}
}

/* Arguments the forwarder never passes. */
static void
test_commerce_parse_response_invalid_arguments(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(COMMERCE_BATCH_MAX + 1);
	struct commerce_response resp = {.http_status = 12345};

	(void)state;
	assert_int_equal(commerce_parse_response(b.records, 0, 200, "{}", 2, &resp), -EINVAL);
	assert_int_equal(commerce_parse_response(NULL, 1, 200, "{}", 2, &resp), -EINVAL);
	assert_int_equal(commerce_parse_response(b.records, b.n, 200, "{}", 2, &resp), -EINVAL);
	assert_int_equal(resp.http_status, 12345);
	assert_int_equal(
	        commerce_parse_response(b.records, COMMERCE_BATCH_MAX, 503, NULL, 0, &resp), 0);
	assert_int_equal(resp.result, COMMERCE_RESULT_TRANSIENT);
	commerce_response_done(&resp);
}

/* A whole batch answered Accepted in reverse order: build and parse agree on every record. */
static void
test_commerce_parse_response_full_batch(void **state)
{
	_cleanup_(batch_free) struct batch b = batch_new(COMMERCE_BATCH_MAX);
	json_t *root, *list, *result = json_array(), *answer;
	_cleanup_free_ char *text = NULL;
	struct commerce_response resp;
	struct commerce_request req;

	(void)state;
	assert_int_equal(commerce_request_build(&options_plain, BATCH_ID, b.records, b.n, &req), 0);
	root = parse_body(&req);
	list = json_object_get(root, "request");
	for (size_t i = json_array_size(list); i-- > 0;) {
		json_t *e = json_array_get(list, i);

		json_array_append_new(result, json_pack("{s:O,s:s,s:s}", "usageEventId",
		                                        json_object_get(e, "usageEventId"),
		                                        "status", "Accepted", "messageTime",
		                                        "2026-11-01T11:02:03.4567890Z"));
	}
	answer = json_pack("{s:i,s:o}", "count", (int)b.n, "result", result);
	text = json_dumps(answer, JSON_COMPACT);
	resp = parse_ok(b.records, b.n, 200, text);
	assert_int_equal(resp.n_forwarded, b.n);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(resp.outcomes[i].id, b.records[i].id);
		assert_string_equal(resp.outcomes[i].status, "Accepted");
	}
	commerce_response_done(&resp);
	json_decref(answer);
	json_decref(root);
	commerce_request_done(&req);
}

/* Result names for logs and metrics. */
static void
test_commerce_result_to_string_names(void **state)
{
	(void)state;
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_OUTCOMES), "outcomes");
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_CONFLICT), "conflict");
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_SPLIT), "split");
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_TOO_LARGE), "too-large");
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_AUTH), "auth");
	assert_string_equal(commerce_result_to_string(COMMERCE_RESULT_TRANSIENT), "transient");
	assert_string_equal(commerce_result_to_string(_COMMERCE_RESULT_MAX), "invalid");
	assert_string_equal(commerce_result_to_string((enum commerce_result) - 1), "invalid");
}

/* An ordinary record number i: distinct key and id, realistic members. */
static struct store_record
ordinary_record(size_t i)
{
	struct store_record r = {
	        .id = (int64_t)i + 100,
	        .state = STORE_INFLIGHT,
	        .reported_hour = T_START + 3600,
	        .usage_start = T_START,
	        .usage_end = T_START + 3600,
	};

	r.key = xasprintf("%064zx", i * 2654435761u + 17);
	r.subscription_id = xstrdup("c79389af-8e0e-4a05-9b22-3b4a1b7d0e11");
	r.meter_id = xstrdup("FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	r.quantity = xasprintf("%zu.%010zu", i % 7, i * 7919 % 10000000000u);
	r.resource_uri = xasprintf("/subscriptions/c79389af-8e0e-4a05-9b22-3b4a1b7d0e11/"
	                           "resourceGroups/web/providers/Microsoft.Compute/"
	                           "virtualMachines/web%02zu",
	                           i % 100);
	r.location = xstrdup("local");
	r.tags = i % 3 == 0 ? xstrdup("null") : NULL;
	r.additional_info = i % 4 == 1 ? xstrdup("{\"ServiceType\":\"Standard_A1\"}") : NULL;
	r.tenant_id = xstrdup("104edf09-1d6a-4c2b-a1f2-0f6f5d3c2b1a");
	r.charged_subscription = xstrdup("e09a4e93-29a7-4eba-a6d4-76202383f07f");
	r.charge_reason = xstrdup(i % 2 ? "registered" : "default");
	r.registration = xstrdup(REG_ID);
	r.batch_id = xstrdup(BATCH_ID);
	return r;
}

/* n ordinary records. */
static struct batch
batch_new(size_t n)
{
	struct batch b = {.records = xcalloc(n, sizeof(struct store_record)), .n = n};

	for (size_t i = 0; i < n; i++)
		b.records[i] = ordinary_record(i);
	return b;
}

/* Free a batch's records. */
static void
batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		struct store_record *r = &b->records[i];
		char *strings[] = {r->key,
		                   r->subscription_id,
		                   r->meter_id,
		                   r->quantity,
		                   r->resource_uri,
		                   r->location,
		                   r->tags,
		                   r->additional_info,
		                   r->raw,
		                   r->tenant_id,
		                   r->charged_subscription,
		                   r->charge_reason,
		                   r->registration,
		                   r->batch_id,
		                   r->error_code,
		                   r->error_message,
		                   r->forward_status};

		for (size_t s = 0; s < ARRAY_SIZE(strings); s++)
			free(strings[s]);
	}
	free(b->records);
	b->records = NULL;
	b->n = 0;
}

/* A lower-case copy (ASCII letters), NULL for NULL. */
static char *
lower_dup(const char *s)
{
	char *d;

	if (!s)
		return NULL;
	d = xstrdup(s);
	for (char *p = d; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p += 'a' - 'A';
	return d;
}

/* Parse a request body (not compressed) with jansson. */
static json_t *
parse_body(const struct commerce_request *req)
{
	json_error_t error;
	json_t *root = json_loadb(req->body, req->body_size, 0, &error);

	if (!root)
		fail_msg("body does not parse: %s at %d", error.text, error.position);
	assert_true(json_is_object(root));
	return root;
}

/* The event as json_pack builds it, the way the daemon could have. */
static json_t *
reference_event(const struct store_record *r)
{
	char start[TIME_RFC3339_LEN + 1], end[TIME_RFC3339_LEN + 1], hour[TIME_RFC3339_LEN + 1];
	_cleanup_free_ char *sub = lower_dup(r->charged_subscription);
	_cleanup_free_ char *tenant = lower_dup(r->tenant_id);
	_cleanup_free_ char *src = lower_dup(r->subscription_id);
	_cleanup_free_ char *reg = lower_dup(r->registration);
	json_t *tags = r->tags ? json_loads(r->tags, JSON_DECODE_ANY, NULL) : NULL;
	json_t *info =
	        r->additional_info ? json_loads(r->additional_info, JSON_DECODE_ANY, NULL) : NULL;
	json_t *e;

	e = json_pack("{s:s,s:s,s:s,s:s?,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s?,s:s?,s:o?,s:o?}",
	              "usageEventId", r->key, "subscriptionId", sub, "chargeReason",
	              r->charge_reason, "tenantId", tenant, "sourceSubscriptionId", src,
	              "registration", reg, "meterId", r->meter_id, "quantity", r->quantity,
	              "usageStartTime", time_format_rfc3339(r->usage_start, start), "usageEndTime",
	              time_format_rfc3339(r->usage_end, end), "reportedStartTime",
	              time_format_rfc3339(r->reported_hour, hour), "resourceUri", r->resource_uri,
	              "location", r->location, "tags", tags, "additionalInfo", info);
	assert_non_null(e);
	return e;
}

/* Every member of a parsed event against its record. */
static void
assert_event_matches(json_t *event, const struct store_record *r)
{
	char t[TIME_RFC3339_LEN + 1];
	_cleanup_free_ char *sub = lower_dup(r->charged_subscription);
	_cleanup_free_ char *tenant = lower_dup(r->tenant_id);
	_cleanup_free_ char *src = lower_dup(r->subscription_id);
	_cleanup_free_ char *reg = lower_dup(r->registration);

	assert_true(json_is_object(event));
	assert_int_equal(json_object_size(event), EVENT_KEYS);
	for (size_t i = 0; i < EVENT_KEYS; i++)
		assert_non_null(json_object_get(event, event_keys[i]));
	assert_string_member(event, "usageEventId", r->key);
	assert_string_member(event, "subscriptionId", sub);
	assert_string_member(event, "chargeReason", r->charge_reason);
	assert_string_member(event, "tenantId", tenant);
	assert_string_member(event, "sourceSubscriptionId", src);
	assert_string_member(event, "registration", reg);
	assert_string_member(event, "meterId", r->meter_id);
	assert_string_member(event, "quantity", r->quantity);
	assert_string_member(event, "usageStartTime", time_format_rfc3339(r->usage_start, t));
	assert_string_member(event, "usageEndTime", time_format_rfc3339(r->usage_end, t));
	assert_string_member(event, "reportedStartTime", time_format_rfc3339(r->reported_hour, t));
	assert_string_member(event, "resourceUri", r->resource_uri);
	assert_string_member(event, "location", r->location);
	assert_json_member(event, "tags", r->tags);
	assert_json_member(event, "additionalInfo", r->additional_info);
}

/* A member is the string expected, or null when expected is NULL. */
static void
assert_string_member(json_t *o, const char *key, const char *expected)
{
	json_t *v = json_object_get(o, key);

	if (!expected) {
		assert_true(json_is_null(v));
		return;
	}
	assert_true(json_is_string(v));
	assert_int_equal(json_string_length(v), strlen(expected));
	assert_string_equal(json_string_value(v), expected);
}

/* A member equals the JSON text (null when text is NULL). */
static void
assert_json_member(json_t *o, const char *key, const char *text)
{
	json_t *v = json_object_get(o, key);
	json_t *expected;
	json_error_t error;

	assert_non_null(v);
	if (!text) {
		assert_true(json_is_null(v));
		return;
	}
	expected = json_loads(text, JSON_DECODE_ANY, &error);
	if (!expected)
		fail_msg("test text %s does not parse: %s", text, error.text);
	assert_true(json_equal(v, expected));
	json_decref(expected);
}

/* Inflate a gzip member; NULL when it is not one. */
static char *
inflate_gzip(const char *data, size_t size, size_t *ret_size)
{
	size_t cap = size * 64 + 1024;
	char *out = xmalloc(cap);
	z_stream z = {0};
	int k;

	if (inflateInit2(&z, 15 + 16) != Z_OK) {
		free(out);
		return NULL;
	}
	z.next_in = (Bytef *)(uintptr_t)data;
	z.avail_in = (uInt)size;
	z.next_out = (Bytef *)out;
	z.avail_out = (uInt)cap;
	k = inflate(&z, Z_FINISH);
	inflateEnd(&z);
	if (k != Z_STREAM_END || z.avail_in != 0) {
		free(out);
		return NULL;
	}
	*ret_size = z.total_out;
	return out;
}

/* Read a whole file. */
static char *
read_file(const char *path, size_t *ret_size)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char *data;
	long size;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size > 0);
	rewind(f);
	data = xmalloc((size_t)size + 1);
	assert_int_equal(fread(data, 1, (size_t)size, f), (size_t)size);
	data[size] = '\0';
	*ret_size = (size_t)size;
	return data;
}

/* xorshift64*: reproducible random numbers. */
static uint64_t
rng_next(uint64_t *state)
{
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return *state * UINT64_C(2685821657736338717);
}

/* Random UTF-8 text of up to max_chars characters of every kind the escaper treats apart. */
static char *
random_text(uint64_t *state, size_t max_chars)
{
	static const char *const pieces[] = {
	        "a",
	        "Z",
	        "0",
	        " ",
	        "/",
	        "\"",
	        "\\",
	        "\x01",
	        "\x08",
	        "\x09",
	        "\x0a",
	        "\x0c",
	        "\x0d",
	        "\x1f",
	        "\x7f",
	        "\xc3\xa9",
	        "\xc2\x80",
	        "\xe6\x97\xa5",
	        "\xe2\x80\xa8",
	        "\xef\xbf\xbd",
	        "\xf0\x9f\x98\x80",
	        "\xf4\x8f\xbf\xbf",
	};
	size_t n = rng_next(state) % (max_chars + 1);
	char *out = xmalloc(4 * n + 1), *p = out;

	for (size_t i = 0; i < n; i++) {
		const char *piece = pieces[rng_next(state) % ARRAY_SIZE(pieces)];
		size_t len = strlen(piece);

		memcpy(p, piece, len);
		p += len;
	}
	*p = '\0';
	return out;
}

/* Parse a text answer; parsing itself must succeed, and the counts add up. */
static struct commerce_response
parse_ok(const struct store_record *records, size_t n, int status, const char *body)
{
	struct commerce_response resp;

	assert_int_equal(commerce_parse_response(records, n, status, body, strlen(body), &resp), 0);
	assert_int_equal(resp.n_forwarded + resp.n_dead + resp.n_retry, resp.n_outcomes);
	return resp;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_commerce_request_build_round_trip),
	        cmocka_unit_test(test_commerce_request_build_matches_jansson_bytes),
	        cmocka_unit_test(test_commerce_request_build_random_strings_equal_jansson),
	        cmocka_unit_test(test_commerce_request_build_exotic_tags),
	        cmocka_unit_test(test_commerce_request_build_quantity_exact),
	        cmocka_unit_test(test_commerce_request_build_non_ascii),
	        cmocka_unit_test(test_commerce_request_build_control_characters),
	        cmocka_unit_test(test_commerce_request_build_lower_cases_guids),
	        cmocka_unit_test(test_commerce_request_build_times),
	        cmocka_unit_test(test_commerce_request_build_gzip_inflates_to_json),
	        cmocka_unit_test(test_commerce_request_build_scratch_reused),
	        cmocka_unit_test(test_commerce_request_build_request_ids),
	        cmocka_unit_test(test_commerce_request_build_bad_batch_id),
	        cmocka_unit_test(test_commerce_request_build_batch_size),
	        cmocka_unit_test(test_commerce_request_build_large_records),
	        cmocka_unit_test(test_commerce_request_build_registration_fallback),
	        cmocka_unit_test(test_commerce_request_build_invalid_utf8),
	        cmocka_unit_test(test_commerce_check_record_invalid_json),
	        cmocka_unit_test(test_commerce_check_record_json_depth),
	        cmocka_unit_test(test_commerce_check_record_missing_members),
	        cmocka_unit_test(test_commerce_check_record_time_out_of_range),
	        cmocka_unit_test(test_commerce_check_record_charge_reason),
	        cmocka_unit_test(test_commerce_parse_response_testdata),
	        cmocka_unit_test(test_commerce_parse_response_every_status),
	        cmocka_unit_test(test_commerce_parse_response_dead_code_and_message),
	        cmocka_unit_test(test_commerce_parse_response_missing_results),
	        cmocka_unit_test(test_commerce_parse_response_reordered),
	        cmocka_unit_test(test_commerce_parse_response_unknown_ids),
	        cmocka_unit_test(test_commerce_parse_response_ids_case_insensitive),
	        cmocka_unit_test(test_commerce_parse_response_keys_with_common_prefix),
	        cmocka_unit_test(test_commerce_parse_response_duplicate_results),
	        cmocka_unit_test(test_commerce_parse_response_repeated_key_in_batch),
	        cmocka_unit_test(test_commerce_parse_response_malformed_results),
	        cmocka_unit_test(test_commerce_parse_response_unparsable_2xx),
	        cmocka_unit_test(test_commerce_parse_response_http_statuses),
	        cmocka_unit_test(test_commerce_parse_response_batch_error_shapes),
	        cmocka_unit_test(test_commerce_parse_response_long_unknown_id),
	        cmocka_unit_test(test_commerce_parse_response_escaped_strings),
	        cmocka_unit_test(test_commerce_parse_response_repeated_members),
	        cmocka_unit_test(test_commerce_parse_response_strict_json),
	        cmocka_unit_test(test_commerce_parse_response_invalid_arguments),
	        cmocka_unit_test(test_commerce_parse_response_full_batch),
	        cmocka_unit_test(test_commerce_result_to_string_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
