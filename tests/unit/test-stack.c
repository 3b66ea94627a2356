/*
 * Unit tests for lib/stack.c: every stamp payload of ../shared/testdata (usage pages, their record
 * keys against record-keys.tsv, the empty page, usage errors, user subscriptions, metadata
 * endpoints), the exact quantity literal, quarantine of malformed records (missing fields, wrong
 * types, GUID shapes, times, quantities, instanceData, size), pages refused as a whole or "not
 * ready yet", and the URL and nextLink authority helpers.
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

#include "hash.h"
#include "macro.h"
#include "stack.h"
#include "timeutil.h"

#define HOUR      INT64_C(1793527200) /* 2026-11-01T10:00:00Z, the hour of record-keys.tsv */
#define ARM       "https://adminmanagement.local.azurestack.external"
#define PROVIDER  "8158498d-27b1-4ccf-9aa1-de0f925731e6"
#define KEY_ROWS  16
#define SUB_UPPER "\"C79389AF-4480-48CC-8FA2-EE8CED8E843D\""
#define METER     "\"FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5\""
#define INSTANCE                                                                     \
	"{\"Microsoft.Resources\":{\"resourceUri\":\"/subscriptions/c79389af/vm1\"," \
	"\"location\":\"local\",\"tags\":null,\"additionalInfo\":null}}"

/* The properties of one synthetic record: JSON text of each value, NULL to leave it out. */
struct fields {
	const char *subscription;
	const char *meter;
	const char *start;
	const char *end;
	const char *quantity;
	const char *instance;     /* the inner document, written as a JSON string by page_of() */
	const char *instance_raw; /* instead of instance: the value's JSON text as it is */
	const char *extra;        /* more properties members, "name":value,... */
};

static const struct fields good = {
        .subscription = SUB_UPPER,
        .meter = METER,
        .start = "\"2026-11-01T09:00:00+00:00\"",
        .end = "\"2026-11-01T10:00:00+00:00\"",
        .quantity = "2.4000000000",
        .instance = INSTANCE,
};

struct key_row {
	char file[64];
	char subscription[64];
	char meter[64];
	char key[HASH_SHA256_HEX_LEN + 1];
};

static char *read_file(const char *name, size_t *ret_size);
static struct stack_usage_page *parse_file(const char *name);
static char *record_of(const struct fields *f);
static char *page_of(const struct fields *f);
static struct stack_usage_page *parse_one(const struct fields *f);
static void assert_quarantined(const struct stack_usage_page *page, size_t i, const char *why);
static int parse_text(long status, const char *text, struct stack_usage_page **ret,
                      char error[static STACK_ERROR_MAX]);
static size_t read_key_rows(struct key_row rows[static KEY_ROWS]);

/*
 * A page's strings live in blocks of its own, sized from the page's text. Reals written longer
 * than in the page (1e300 as 1.0000000000000001e+300) make a canonical instanceData outgrow them:
 * the text moves to a new block while it is written, and neither it nor the strings of the
 * records before and after are cut or overwritten.
 */
static void
test_stack_usage_page_parse_outgrows_blocks(void **state)
{
	_cleanup_free_ char *inst = NULL, *first = NULL, *big = NULL, *last = NULL, *text = NULL;
	_cleanup_free_ char *want = NULL;
	struct fields f = good, g = good;
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX], key[HASH_SHA256_HEX_LEN + 1];
	size_t n = 0, cap = 10000 * 6 + 64;
	json_error_t jerr;
	json_t *v;

	(void)state;
	inst = malloc(cap);
	assert_non_null(inst);
	n += (size_t)snprintf(inst, cap, "{\"b\":[");
	for (int i = 0; i < 10000; i++)
		n += (size_t)snprintf(inst + n, cap - n, "%s1e300", i ? "," : "");
	n += (size_t)snprintf(inst + n, cap - n, "],\"a\":1}");
	assert_true(n < cap);

	first = record_of(&good);
	f.instance = inst;
	big = record_of(&f);
	g.meter = "\"0ab6eb84-500b-4a09-a8ca-7358f8bbaea5\"";
	last = record_of(&g);
	assert_true(asprintf(&text, "{\"value\":[%s,%s,%s]}", first, big, last) > 0);
	assert_int_equal(parse_text(200, text, &page, error), 0);
	assert_int_equal(page->n_records, 3);
	assert_int_equal(page->n_quarantined, 0);

	v = json_loads(inst, 0, &jerr);
	assert_non_null(v);
	want = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(v);
	assert_non_null(want);
	assert_true(strlen(want) > 2 * strlen(text));
	assert_string_equal(page->records[1].instance_data, want);

	assert_string_equal(page->records[0].raw, first);
	assert_string_equal(page->records[1].raw, big);
	assert_string_equal(page->records[2].raw, last);
	assert_string_equal(page->records[2].meter_id, "0ab6eb84-500b-4a09-a8ca-7358f8bbaea5");
	for (size_t i = 0; i < 3; i++) {
		const struct stack_record *r = &page->records[i];

		assert_string_equal(r->subscription_id, "c79389af-4480-48cc-8fa2-ee8ced8e843d");
		assert_string_equal(r->quantity, "2.4000000000");
		assert_int_equal(stack_record_key(HOUR, r->subscription_id, r->meter_id,
		                                  r->usage_start, r->usage_end, r->instance_data,
		                                  key),
		                 0);
		assert_string_equal(r->key, key);
	}
	assert_string_equal(page->records[0].instance_data, page->records[2].instance_data);
	assert_string_not_equal(page->records[0].key, page->records[2].key);
	stack_usage_page_free(page);
}

/* Two strings of a record equal, both absent or both present. */
static void
assert_same_string(const char *what, size_t i, const char *a, const char *b)
{
	if (!a || !b) {
		if (a != b)
			fail_msg("record %zu: %s: %s against %s", i + 1, what, a ? a : "NULL",
			         b ? b : "NULL");
		return;
	}
	if (strcmp(a, b) != 0)
		fail_msg("record %zu: %s: \"%s\" against \"%s\"", i + 1, what, a, b);
}

/*
 * A page whose records repeat instanceData strings (good ones, ones with a problem, ones that
 * differ only in their text, one first met in a record quarantined for something else): every
 * record reads exactly as the same record alone in a page, reason included.
 */
static void
test_stack_usage_page_parse_repeated_instance_data(void **state)
{
#define INST_B                                                                               \
	"{\"Microsoft.Resources\":{\"resourceUri\":\"/subscriptions/c79389af/disk\\u00e9\"," \
	"\"location\":\"local\",\"tags\":{\"z\":1,\"a\":\"x\\ny\"},\"additionalInfo\":"      \
	"{\"b\":[true,null],\"a\":{}}},\"a\":0}"
#define INST_BAD_RES "{\"Microsoft.Resources\":\"vm1\"}"
#define INST_BAD_URI "{\"Microsoft.Resources\":{\"resourceUri\":7,\"location\":\"local\"}}"
#define INST_A_SPACED                                                                   \
	"{ \"Microsoft.Resources\" : {\"resourceUri\":\"/subscriptions/c79389af/vm1\"," \
	"\"location\":\"local\",\"tags\":null,\"additionalInfo\":null}}"
	static const char *const instances[] = {
	        INSTANCE,     INST_B,       INST_B,       INSTANCE,      INST_BAD_RES,
	        INST_BAD_RES, INST_BAD_URI, INST_BAD_URI, INST_A_SPACED, INSTANCE,
	        "[1]",        "[1]",        INST_B,
	};
	struct fields f[ARRAY_SIZE(instances)];
	_cleanup_free_ char *text = strdup("{\"value\":[");
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX];

	(void)state;
	assert_non_null(text);
	for (size_t i = 0; i < ARRAY_SIZE(instances); i++) {
		_cleanup_free_ char *rec = NULL;
		char *more;

		f[i] = good;
		f[i].instance = instances[i];
		if (i == 1) /* quarantined for its meter, its instanceData met here first */
			f[i].meter = "\"not-a-guid\"";
		if (i == 9) /* another meter: another key */
			f[i].meter = "\"0ab6eb84-500b-4a09-a8ca-7358f8bbaea5\"";
		rec = record_of(&f[i]);
		assert_true(asprintf(&more, "%s%s%s", text, i ? "," : "", rec) > 0);
		free(text);
		text = more;
	}
	{
		char *more;

		assert_true(asprintf(&more, "%s]}", text) > 0);
		free(text);
		text = more;
	}
	assert_int_equal(parse_text(200, text, &page, error), 0);
	assert_int_equal(page->n_records, ARRAY_SIZE(instances));
	assert_int_equal(page->n_quarantined, 7);
	for (size_t i = 0; i < page->n_records; i++) {
		const struct stack_record *r = &page->records[i];
		struct stack_usage_page *alone = parse_one(&f[i]);
		const struct stack_record *a = &alone->records[0];

		assert_same_string("instance_data", i, r->instance_data, a->instance_data);
		assert_same_string("resource_uri", i, r->resource_uri, a->resource_uri);
		assert_same_string("location", i, r->location, a->location);
		assert_same_string("tags", i, r->tags, a->tags);
		assert_same_string("additional_info", i, r->additional_info, a->additional_info);
		assert_same_string("key", i, r->key, a->key);
		/* "record N: ..." against "record 1: ..." */
		assert_same_string("reason", i, r->reason ? strchr(r->reason, ':') : NULL,
		                   a->reason ? strchr(a->reason, ':') : NULL);
		stack_usage_page_free(alone);
	}
	assert_string_equal(page->records[2].tags, "{\"z\":1,\"a\":\"x\\ny\"}");
	assert_string_equal(page->records[2].resource_uri, "/subscriptions/c79389af/disk\xc3\xa9");
	assert_string_equal(page->records[8].instance_data, page->records[0].instance_data);
	assert_string_equal(page->records[12].instance_data, page->records[2].instance_data);
	assert_non_null(page->records[12].key);
	assert_non_null(strstr(page->records[5].reason, "Microsoft.Resources: not an object"));
	assert_non_null(strstr(page->records[7].reason, "resourceUri: not a string"));
	assert_non_null(strstr(page->records[11].reason, "not a JSON object"));
	stack_usage_page_free(page);
#undef INST_B
#undef INST_BAD_RES
#undef INST_BAD_URI
#undef INST_A_SPACED
}

/* Page 1: three valid records with every field as received, and its nextLink verbatim. */
static void
test_stack_usage_page_parse_page1(void **state)
{
	_cleanup_free_ char *text = NULL;
	struct stack_usage_page *page;
	const struct stack_record *r;

	(void)state;
	text = read_file("usage-page-1.json", NULL);
	page = parse_file("usage-page-1.json");
	assert_int_equal(page->n_records, 3);
	assert_int_equal(page->n_quarantined, 0);
	assert_true(page->reported_hour == HOUR);
	assert_string_equal(
	        page->next_link,
	        "https://adminmanagement.local.azurestack.external/subscriptions/"
	        "8158498d-27b1-4ccf-9aa1-de0f925731e6/providers/Microsoft.Commerce.Admin/"
	        "subscriberUsageAggregates?reportedStartTime=2026-11-01T10%3a00%3a00%2b00%3a00"
	        "&reportedEndTime=2026-11-01T11%3a00%3a00%2b00%3a00&aggregationGranularity=Hourly"
	        "&api-version=2015-06-01-preview&continuationToken="
	        "eyJyIjoiMjAyNi0xMS0wMVQxMDowMDowMFoiLCJzIjoiMDJpaklwOD0ifQ%3d%3d");
	assert_true(stack_link_authority_ok(page->next_link, ARM));

	r = &page->records[0];
	assert_null(r->reason);
	assert_string_equal(r->id, "/subscriptions/8158498d-27b1-4ccf-9aa1-de0f925731e6/providers/"
	                           "Microsoft.Commerce.Admin/UsageAggregate/"
	                           "c79389af-4480-48cc-8fa2-ee8ced8e843d-"
	                           "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	assert_string_equal(
	        r->name,
	        "c79389af-4480-48cc-8fa2-ee8ced8e843d-FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	assert_string_equal(r->subscription_id, "c79389af-4480-48cc-8fa2-ee8ced8e843d");
	assert_string_equal(r->meter_id, "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5");
	assert_string_equal(r->quantity, "2.0000000000");
	assert_true(r->usage_start == HOUR - 3600);
	assert_true(r->usage_end == HOUR);
	assert_string_equal(r->resource_uri, "/subscriptions/c79389af-4480-48cc-8fa2-ee8ced8e843d/"
	                                     "resourceGroups/web/providers/Microsoft.Compute/"
	                                     "virtualMachines/web01");
	assert_string_equal(r->location, "local");
	assert_null(r->tags);
	assert_string_equal(
	        r->additional_info,
	        "{\"ServiceType\":\"Standard_D2_v2\",\"ImageType\":\"Windows_Server\"}");
	assert_string_equal(r->instance_data,
	                    "{\"Microsoft.Resources\":{\"additionalInfo\":{\"ImageType\":"
	                    "\"Windows_Server\",\"ServiceType\":\"Standard_D2_v2\"},\"location\":"
	                    "\"local\",\"resourceUri\":\"/subscriptions/"
	                    "c79389af-4480-48cc-8fa2-ee8ced8e843d/resourceGroups/web/providers/"
	                    "Microsoft.Compute/virtualMachines/web01\",\"tags\":null}}");
	assert_string_equal(r->key,
	                    "fb7e3f69febadd7b1cc73232f427fb09e698b3e556e85e0ef964068d36ea2c14");

	r = &page->records[1];
	assert_string_equal(r->tags, "{\"costcenter\":\"4711\"}");
	assert_null(r->additional_info);
	assert_true(r->usage_start == HOUR - 7200);

	/* a meter id without dashes is a GUID too, and is kept as written */
	r = &page->records[2];
	assert_null(r->reason);
	assert_string_equal(r->meter_id, "F271A8A388C44D93956A063E1D2FA80B");
	assert_string_equal(r->quantity, "1.0000000000");

	/* each raw text is the record's own bytes of the page, from '{' to '}' */
	for (size_t i = 0; i < page->n_records; i++) {
		const char *raw = page->records[i].raw;
		const char *at = strstr(text, raw);

		assert_non_null(at);
		assert_int_equal(raw[0], '{');
		assert_int_equal(raw[strlen(raw) - 1], '}');
		assert_null(strstr(at + 1, raw));
	}
	stack_usage_page_free(page);
}

/* The quantity that a double cannot hold arrives exactly as written in the page. */
static void
test_stack_usage_page_parse_exact_quantity(void **state)
{
	struct stack_usage_page *page;
	struct fields f = good;

	(void)state;
	page = parse_file("usage-page-1.json");
	/* 16 significant digits in the test data; the nearest double is 123456.12345678909... */
	assert_string_equal(page->records[1].quantity, "123456.1234567891");
	assert_null(page->records[1].reason);
	stack_usage_page_free(page);

	/* 17 significant digits */
	f.quantity = "1234567.1234567891";
	page = parse_one(&f);
	assert_null(page->records[0].reason);
	assert_string_equal(page->records[0].quantity, "1234567.1234567891");
	stack_usage_page_free(page);

	/* 38 digits: the most a quantity may have, nowhere near a double */
	f.quantity = "12345678901234567890.123456789012345678";
	page = parse_one(&f);
	assert_null(page->records[0].reason);
	assert_string_equal(page->records[0].quantity, "12345678901234567890.123456789012345678");
	stack_usage_page_free(page);
}

/* Page 2 is the last page: no nextLink. */
static void
test_stack_usage_page_parse_page2_last(void **state)
{
	struct stack_usage_page *page;

	(void)state;
	page = parse_file("usage-page-2.json");
	assert_int_equal(page->n_records, 1);
	assert_null(page->next_link);
	assert_string_equal(page->records[0].quantity, "0.0416666667");
	assert_string_equal(page->records[0].key,
	                    "20203ed9e8c1a5b8db63a77d05ade405ebf1df0f4dbeaee76948d4582ef83082");
	stack_usage_page_free(page);
}

/* Every record of every usage page has exactly the key of record-keys.tsv, in page order. */
static void
test_stack_usage_page_parse_keys_match_testdata(void **state)
{
	static const char *const pages[] = {"usage-page-1.json", "usage-page-2.json",
	                                    "usage-page-1-reordered.json", "usage-page-split.json"};
	struct key_row rows[KEY_ROWS];
	size_t nrows, row = 0;

	(void)state;
	nrows = read_key_rows(rows);
	assert_int_equal(nrows, 9);
	for (size_t p = 0; p < ARRAY_SIZE(pages); p++) {
		struct stack_usage_page *page = parse_file(pages[p]);

		for (size_t i = 0; i < page->n_records; i++, row++) {
			const struct stack_record *r = &page->records[i];

			assert_true(row < nrows);
			assert_string_equal(rows[row].file, pages[p]);
			assert_null(r->reason);
			assert_string_equal(r->subscription_id, rows[row].subscription);
			assert_string_equal(r->meter_id, rows[row].meter);
			if (!streq(r->key, rows[row].key))
				fail_msg("%s record %zu: key %s, record-keys.tsv %s", pages[p],
				         i + 1, r->key, rows[row].key);
		}
		stack_usage_page_free(page);
	}
	assert_int_equal(row, nrows);
}

/* Page 1 read again with instanceData reordered and spaced: the same canonical text and keys. */
static void
test_stack_usage_page_parse_reordered_same_keys(void **state)
{
	struct stack_usage_page *a, *b;

	(void)state;
	a = parse_file("usage-page-1.json");
	b = parse_file("usage-page-1-reordered.json");
	assert_int_equal(a->n_records, b->n_records);
	for (size_t i = 0; i < a->n_records; i++) {
		assert_string_equal(a->records[i].key, b->records[i].key);
		assert_string_equal(a->records[i].instance_data, b->records[i].instance_data);
		assert_string_equal(a->records[i].quantity, b->records[i].quantity);
		assert_string_not_equal(a->records[i].raw, b->records[i].raw);
	}
	assert_null(b->next_link);
	stack_usage_page_free(a);
	stack_usage_page_free(b);
}

/* One VM, meter and hour reported twice with other tags and additionalInfo: two keys. */
static void
test_stack_usage_page_parse_split_two_keys(void **state)
{
	struct stack_usage_page *page;

	(void)state;
	page = parse_file("usage-page-split.json");
	assert_int_equal(page->n_records, 2);
	assert_int_equal(page->n_quarantined, 0);
	assert_string_equal(page->records[0].subscription_id, page->records[1].subscription_id);
	assert_string_equal(page->records[0].meter_id, page->records[1].meter_id);
	assert_true(page->records[0].usage_start == page->records[1].usage_start);
	assert_string_equal(page->records[0].resource_uri, page->records[1].resource_uri);
	assert_string_not_equal(page->records[0].key, page->records[1].key);
	/* non-ASCII stays UTF-8 in the canonical text and the tags (no \u escapes) */
	assert_string_equal(page->records[1].tags, "{\"env\":\"prod\",\"owner\":\"Zo\xc3\xab\"}");
	assert_non_null(strstr(page->records[1].instance_data, "\"owner\":\"Zo\xc3\xab\""));
	assert_null(strstr(page->records[1].instance_data, "\\u"));
	stack_usage_page_free(page);
}

/* An hour without usage is an empty page, not "not ready". */
static void
test_stack_usage_page_parse_empty(void **state)
{
	struct stack_usage_page *page;

	(void)state;
	page = parse_file("usage-page-empty.json");
	assert_int_equal(page->n_records, 0);
	assert_int_equal(page->n_quarantined, 0);
	assert_null(page->next_link);
	stack_usage_page_free(page);
}

/* 202, or a 2xx body without a value array, is "not ready yet" (-EAGAIN), never a page. */
static void
test_stack_usage_page_parse_not_ready(void **state)
{
	static const struct {
		long status;
		const char *body;
		const char *message;
	} cases[] = {
	        {202, "{\"error\":{\"code\":\"ProcessingNotComplete\",\"message\":\"later\"}}",
	         "ProcessingNotComplete: later"},
	        {202, "{\"code\":\"ProcessingNotComplete\",\"message\":\"later\"}",
	         "ProcessingNotComplete: later"},
	        {202, "", "HTTP 202"},
	        {202, "{\"value\":[]}", "HTTP 202"},
	        {200, "{}", "without a value array"},
	        {200, "{\"value\":null}", "without a value array"},
	        {200, "{\"value\":{}}", "without a value array"},
	        {200, "{\"code\":\"ProcessingNotComplete\",\"message\":\"later\"}",
	         "ProcessingNotComplete: later"},
	        {200, " \r\n", "empty body"},
	        {204, "", "empty body"},
	};
	char error[STACK_ERROR_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct stack_usage_page *page = NULL;
		int r = parse_text(cases[i].status, cases[i].body, &page, error);

		if (r != -EAGAIN || !strstr(error, cases[i].message))
			fail_msg("case %zu: %d \"%s\"", i, r, error);
		assert_null(page);
		assert_non_null(strstr(error, "not ready"));
	}
}

/* The stamp's error bodies under a 202 name their code in the message. */
static void
test_stack_usage_page_parse_not_ready_testdata(void **state)
{
	static const char *const files[] = {"usage-error-503.json", "usage-error-future.json"};
	static const char *const codes[] = {"ServiceUnavailable", "RequestEndTimeIsInFuture"};
	char error[STACK_ERROR_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		struct stack_usage_page *page = NULL;
		size_t size;
		_cleanup_free_ char *body = read_file(files[i], &size);

		assert_int_equal(stack_usage_page_parse(202, body, size, HOUR, &page, error),
		                 -EAGAIN);
		assert_non_null(strstr(error, codes[i]));
		/* the same body with 200: no value array, so not ready either */
		assert_int_equal(stack_usage_page_parse(200, body, size, HOUR, &page, error),
		                 -EAGAIN);
		assert_null(page);
	}
}

/* What is not a usage page at all is refused as a whole with a clear message. */
static void
test_stack_usage_page_parse_malformed_page(void **state)
{
	static const struct {
		const char *body;
		const char *message;
	} cases[] = {
	        {"not json", "not JSON"},
	        {"{\"value\":[]", "not JSON"},
	        {"{\"value\":[]} trailing", "not JSON"},
	        {"[{\"value\":[]}]", "not a JSON object but an array"},
	        {"\"value\"", "not JSON"},
	        /* not UTF-8 */
	        {"{\"value\":[],\"x\":\"\xff\xfe\"}", "not JSON"},
	        {"{\"value\":[],\"x\":\"\xc3\x28\"}", "not JSON"},
	        /* bare NaN and out-of-range numbers are not JSON to jansson */
	        {"{\"value\":[{\"properties\":{\"quantity\":NaN}}]}", "not JSON"},
	        {"{\"value\":[{\"properties\":{\"quantity\":Infinity}}]}", "not JSON"},
	        {"{\"value\":[{\"properties\":{\"quantity\":1e400}}]}", "not JSON"},
	        {"{\"value\":[],\"nextLink\":42}", "nextLink: not a string but an integer"},
	        {"{\"value\":[],\"nextLink\":\"a\\u0000b\"}", "nextLink"},
	        {"{\"value\":[],\"value\":[]}", "\"value\" appears 2 times"},
	        {"{\"value\":[{}],\"val\\u0075e\":[]}", "\"value\" appears 2 times"},
	        {"{\"value\\u0000\":[]}", "not JSON"},
	};
	/* a raw NUL byte, which jansson would skip after a literal (found by fuzz-usage-page) */
	static const char nul[] = "{\"value\":[null\0,{\"properties\":{\"quantity\":1}}]}";
	struct stack_usage_page *page = NULL;
	char error[STACK_ERROR_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		int r = parse_text(200, cases[i].body, &page, error);

		if (r != -EBADMSG || !strstr(error, cases[i].message))
			fail_msg("case %zu: %d \"%s\"", i, r, error);
		assert_null(page);
	}
	assert_int_equal(stack_usage_page_parse(200, nul, sizeof(nul) - 1, HOUR, &page, error),
	                 -EBADMSG);
	assert_string_equal(error, "not JSON: a NUL byte at byte 14");
	assert_null(page);
}

/* A status outside 2xx or an hour not on the hour is the caller's mistake. */
static void
test_stack_usage_page_parse_bad_arguments(void **state)
{
	struct stack_usage_page *page = NULL;
	char error[STACK_ERROR_MAX];

	(void)state;
	assert_int_equal(parse_text(400, "{\"value\":[]}", &page, error), -EINVAL);
	assert_non_null(strstr(error, "400"));
	assert_int_equal(parse_text(503, "{\"value\":[]}", &page, error), -EINVAL);
	assert_int_equal(stack_usage_page_parse(200, "{\"value\":[]}", 12, HOUR + 60, &page, error),
	                 -EINVAL);
	assert_int_equal(stack_usage_page_parse(200, NULL, 3, HOUR, &page, error), -EINVAL);
	assert_null(page);
}

/* A missing field quarantines the record and says which field. */
static void
test_stack_usage_page_parse_missing_fields(void **state)
{
	static const struct {
		size_t offset;
		const char *why;
	} cases[] = {
	        {offsetof(struct fields, subscription), "record 1: subscriptionId: missing"},
	        {offsetof(struct fields, meter), "record 1: meterId: missing"},
	        {offsetof(struct fields, start), "record 1: usageStartTime: missing"},
	        {offsetof(struct fields, end), "record 1: usageEndTime: missing"},
	        {offsetof(struct fields, quantity), "record 1: quantity: missing"},
	        {offsetof(struct fields, instance), "record 1: instanceData: missing"},
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct fields f = good;
		struct stack_usage_page *page;

		*(const char **)((char *)&f + cases[i].offset) = NULL;
		page = parse_one(&f);
		assert_quarantined(page, 0, cases[i].why);
		stack_usage_page_free(page);
	}
}

/* Wrong types quarantine the record with the type that was found. */
static void
test_stack_usage_page_parse_wrong_types(void **state)
{
	struct stack_usage_page *page;
	struct fields f;

	(void)state;
	f = good;
	f.subscription = "42";
	page = parse_one(&f);
	assert_quarantined(page, 0, "subscriptionId: not a string but an integer");
	stack_usage_page_free(page);

	f = good;
	f.meter = "{\"id\":\"x\"}";
	page = parse_one(&f);
	assert_quarantined(page, 0, "meterId: not a string but an object");
	stack_usage_page_free(page);

	f = good;
	f.start = "1793523600";
	page = parse_one(&f);
	assert_quarantined(page, 0, "usageStartTime: not a string but an integer");
	stack_usage_page_free(page);

	f = good;
	f.quantity = "\"2.5\"";
	page = parse_one(&f);
	assert_quarantined(page, 0, "quantity: a string (\"2.5\"), not a JSON number");
	assert_string_equal(page->records[0].quantity, "2.5");
	stack_usage_page_free(page);

	f = good;
	f.quantity = "null";
	page = parse_one(&f);
	assert_quarantined(page, 0, "quantity: not a number but null");
	stack_usage_page_free(page);

	f = good;
	f.quantity = "[1]";
	page = parse_one(&f);
	assert_quarantined(page, 0, "quantity: not a number but an array");
	stack_usage_page_free(page);

	f = good;
	f.instance = NULL;
	f.instance_raw = "{\"Microsoft.Resources\":{}}";
	page = parse_one(&f);
	assert_quarantined(page, 0, "instanceData: not a string but an object");
	stack_usage_page_free(page);

	/* properties and the record itself */
	char error[STACK_ERROR_MAX];
	assert_int_equal(
	        parse_text(200, "{\"value\":[{\"properties\":[1]},7,\"x\",null]}", &page, error),
	        0);
	assert_int_equal(page->n_records, 4);
	assert_int_equal(page->n_quarantined, 4);
	assert_quarantined(page, 0, "record 1: properties: not an object but an array");
	assert_quarantined(page, 1, "record 2: not a JSON object but an integer");
	assert_quarantined(page, 2, "record 3: not a JSON object but a string");
	assert_quarantined(page, 3, "record 4: not a JSON object but null");
	assert_string_equal(page->records[1].raw, "7");
	assert_string_equal(page->records[2].raw, "\"x\"");
	stack_usage_page_free(page);

	assert_int_equal(parse_text(200, "{\"value\":[{\"id\":\"a\"}]}", &page, error), 0);
	assert_quarantined(page, 0, "record 1: properties: missing");
	assert_string_equal(page->records[0].id, "a");
	stack_usage_page_free(page);
}

/* Subscription ids must be dashed GUIDs; meter ids may also be 32 digits without dashes. */
static void
test_stack_usage_page_parse_guid_shapes(void **state)
{
	static const char *const bad_subscriptions[] = {
	        "\"not-a-guid\"",
	        "\"c79389af44804 8cc8fa2ee8ced8e843d\"",
	        "\"c79389af448048cc8fa2ee8ced8e843d\"",
	        "\"c79389af-4480-48cc-8fa2-ee8ced8e843g\"",
	        "\"{c79389af-4480-48cc-8fa2-ee8ced8e843d}\"",
	        "\"\"",
	        "\"c79389af-4480-48cc-8fa2-ee8ced8e843d \"",
	        "\"c79389af_4480-48cc-8fa2-ee8ced8e843d\""};
	struct stack_usage_page *page;
	struct fields f;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad_subscriptions); i++) {
		f = good;
		f.subscription = bad_subscriptions[i];
		page = parse_one(&f);
		assert_quarantined(page, 0, "subscriptionId: not a GUID (");
		/* kept as received for the operator */
		assert_non_null(page->records[0].subscription_id);
		stack_usage_page_free(page);
	}

	f = good;
	f.meter = "\"FAB6EB84500B4A09A8CA7358F8BBAEA5\"";
	page = parse_one(&f);
	assert_null(page->records[0].reason);
	assert_string_equal(page->records[0].meter_id, "FAB6EB84500B4A09A8CA7358F8BBAEA5");
	stack_usage_page_free(page);

	f = good;
	f.meter = "\"Compute Hours\"";
	page = parse_one(&f);
	assert_quarantined(page, 0, "meterId: not a GUID (\"Compute Hours\")");
	stack_usage_page_free(page);

	/* a GUID subscription id is lower-cased */
	page = parse_one(&good);
	assert_string_equal(page->records[0].subscription_id,
	                    "c79389af-4480-48cc-8fa2-ee8ced8e843d");
	stack_usage_page_free(page);
}

/* Both +00:00 and Z forms parse; times off the hour, unparsable or out of order quarantine. */
static void
test_stack_usage_page_parse_times(void **state)
{
	static const struct {
		const char *start, *end, *why;
	} bad[] = {
	        {"\"2026-11-01T09:30:00Z\"", "\"2026-11-01T10:00:00Z\"",
	         "usageStartTime: not on the hour (\"2026-11-01T09:30:00Z\")"},
	        {"\"2026-11-01T09:00:00Z\"", "\"2026-11-01T10:00:01Z\"",
	         "usageEndTime: not on the hour"},
	        {"\"2026-11-01T09:00:00+00:30\"", "\"2026-11-01T10:00:00Z\"",
	         "usageStartTime: not on the hour"},
	        {"\"2026-11-01 09:00:00\"", "\"2026-11-01T10:00:00Z\"",
	         "usageStartTime: not an RFC 3339 time (\"2026-11-01 09:00:00\")"},
	        {"\"yesterday\"", "\"2026-11-01T10:00:00Z\"", "usageStartTime: not an RFC 3339"},
	        {"\"2026-11-01T10:00:00Z\"", "\"2026-11-01T09:00:00Z\"",
	         "usageEndTime: 2026-11-01T09:00:00Z is not after usageStartTime "
	         "2026-11-01T10:00:00Z"},
	        {"\"2026-11-01T10:00:00Z\"", "\"2026-11-01T10:00:00+00:00\"",
	         "usageEndTime: 2026-11-01T10:00:00Z is not after usageStartTime"},
	        {"\"2026-11-01T09:00:00.5Z\"", "\"2026-11-01T10:00:00Z\"",
	         "usageStartTime: not an RFC 3339"},
	};
	struct stack_usage_page *page, *z;
	struct fields f;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		f = good;
		f.start = bad[i].start;
		f.end = bad[i].end;
		page = parse_one(&f);
		assert_quarantined(page, 0, bad[i].why);
		stack_usage_page_free(page);
	}

	/* the Z form (and an offset) gives the same times and the same key as +00:00 */
	page = parse_one(&good);
	f = good;
	f.start = "\"2026-11-01T09:00:00Z\"";
	f.end = "\"2026-11-01T11:00:00+01:00\"";
	z = parse_one(&f);
	assert_null(z->records[0].reason);
	assert_true(z->records[0].usage_start == HOUR - 3600);
	assert_true(z->records[0].usage_end == HOUR);
	assert_string_equal(z->records[0].key, page->records[0].key);
	stack_usage_page_free(page);
	stack_usage_page_free(z);
}

/* Quantities: negative, NaN, too many digits quarantine; exponents are decimals, kept as written.
 */
static void
test_stack_usage_page_parse_quantities(void **state)
{
	static const struct {
		const char *literal, *why;
	} bad[] = {
	        {"-1", "quantity: negative (\"-1\")"},
	        {"-0.0000000001", "quantity: negative (\"-0.0000000001\")"},
	        {"-2.5E-3", "quantity: negative (\"-2.5E-3\")"},
	        {"\"NaN\"", "record 1: quantity: not a finite decimal (\"NaN\")"},
	        {"\"Infinity\"", "quantity: not a finite decimal (\"Infinity\")"},
	        {"\"-Infinity\"", "quantity: not a finite decimal (\"-Infinity\")"},
	        {"\"\"", "quantity: not a finite decimal (\"\")"},
	        {"1e50", "quantity: more than 38 significant digits or out of range (\"1e50\")"},
	        {"1e-70", "quantity: more than 38 significant digits or out of range"},
	        {"123456789012345678901234567890123456789",
	         "quantity: more than 38 significant digits"},
	        {"1.23456789012345678901234567890123456789",
	         "quantity: more than 38 significant digits"},
	};
	static const char *const good_literals[] = {
	        "1.5E-3",
	        "1e3",
	        "2.5e+2",
	        "3",
	        "0",
	        "0.0",
	        "-0",
	        "1E-64",
	        "0.0416666667",
	        /* beyond 64 bits, which jansson reads only as reals: still the literal */
	        "12345678901234567890",
	        "99999999999999999999999999999999999999",
	};
	struct stack_usage_page *page;
	struct fields f;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		f = good;
		f.quantity = bad[i].literal;
		page = parse_one(&f);
		assert_quarantined(page, 0, bad[i].why);
		assert_null(page->records[0].key);
		stack_usage_page_free(page);
	}
	for (size_t i = 0; i < ARRAY_SIZE(good_literals); i++) {
		f = good;
		f.quantity = good_literals[i];
		page = parse_one(&f);
		if (page->records[0].reason)
			fail_msg("%s: %s", good_literals[i], page->records[0].reason);
		/* the literal exactly: the store formats it without an exponent */
		assert_string_equal(page->records[0].quantity, good_literals[i]);
		stack_usage_page_free(page);
	}
}

/* instanceData must be a JSON object; its Microsoft.Resources members strings or absent. */
static void
test_stack_usage_page_parse_instance_data(void **state)
{
	static const struct {
		const char *instance, *why;
	} bad[] = {
	        {"not json", "instanceData: not JSON: column"},
	        {"", "instanceData: not JSON"},
	        {"{\"a\":1", "instanceData: not JSON"},
	        {"[1,2]", "instanceData: not a JSON object but an array"},
	        {"3", "instanceData: not a JSON object but an integer"},
	        {"\"text\"", "instanceData: not a JSON object but a string"},
	        {"null", "instanceData: not a JSON object but null"},
	        {"{\"Microsoft.Resources\":5}",
	         "instanceData: Microsoft.Resources: not an object but an integer"},
	        {"{\"Microsoft.Resources\":{\"resourceUri\":5}}",
	         "instanceData: Microsoft.Resources.resourceUri: not a string but an integer"},
	        {"{\"Microsoft.Resources\":{\"location\":[]}}",
	         "instanceData: Microsoft.Resources.location: not a string but an array"},
	        {"{\"a\":\"\\u0000\"}", "instanceData: not JSON"},
	        {"{\"a\":\"\\ud800\"}", "instanceData: not JSON"},
	        {"{\"a\":99999999999999999999}", "instanceData: not JSON"},
	};
	struct stack_usage_page *page;
	struct fields f;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		f = good;
		f.instance = bad[i].instance;
		page = parse_one(&f);
		assert_quarantined(page, 0, bad[i].why);
		stack_usage_page_free(page);
	}

	/* without Microsoft.Resources the record is valid, with nothing to keep but the canonical
	 */
	f = good;
	f.instance = "{\"z\":1,\"a\":{\"y\":true,\"b\":null}}";
	page = parse_one(&f);
	assert_null(page->records[0].reason);
	assert_null(page->records[0].resource_uri);
	assert_null(page->records[0].tags);
	assert_string_equal(page->records[0].instance_data,
	                    "{\"a\":{\"b\":null,\"y\":true},\"z\":1}");
	stack_usage_page_free(page);

	/* tags and additionalInfo keep their member order, as compact JSON */
	f = good;
	f.instance = "{\"Microsoft.Resources\":{\"tags\":{\"z\":\"1\", \"a\":[1, 2]},"
	             "\"additionalInfo\":\"plain\",\"resourceUri\":null}}";
	page = parse_one(&f);
	assert_null(page->records[0].reason);
	assert_string_equal(page->records[0].tags, "{\"z\":\"1\",\"a\":[1,2]}");
	assert_string_equal(page->records[0].additional_info, "\"plain\"");
	assert_null(page->records[0].resource_uri);
	stack_usage_page_free(page);
}

/*
 * The canonical instanceData, tags and additionalInfo are written without jansson's writer: the
 * text must still be jansson's byte for byte (the record key depends on it), escapes, member
 * order, numbers and UTF-8 included.
 */
static void
test_stack_usage_page_parse_json_text_as_jansson(void **state)
{
	static const char *const docs[] = {
	        "{}",
	        "{\"b\":1,\"a\":2,\"ab\":3,\"\":4,\"A\":5,\"aa\":[]}",
	        "{\"q\":\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0001 \\u001f \\u007f\"}",
	        "{\"u\":\"\\u00e9 \xc3\xa9 \\u20ac \xe2\x82\xac \\ud83d\\ude00 \xf0\x9f\x98\x80\"}",
	        "{\"n\":[0,-1,9223372036854775807,-9223372036854775808,1.5,-0.0,1e300,2.5e-7,"
	        "0.1,100000000000000000000.0,3.0]}",
	        "{\"l\":[true,false,null,{},[],[[{}]]],\"\\u00e9\":{\"\\u0001\":\"x\"}}",
	        "{\"k\\u0000\":1}",
	        "{\"Microsoft.Resources\":{\"tags\":{\"z\":\"1\",\"a\":{\"y\":[1,{\"b\":2,"
	        "\"a\":\"\\n\"}],\"x\":1.25}},\"additionalInfo\":{\"s\":\"\\u0007\",\"e\":1E2},"
	        "\"resourceUri\":\"/s/\\u00fc\",\"location\":\"l\"}}",
	};
	struct stack_usage_page *page;
	struct fields f;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(docs); i++) {
		_cleanup_(json_decrefp) json_t *inst = json_loads(docs[i], JSON_DECODE_ANY, NULL);
		_cleanup_free_ char *want = NULL, *tags = NULL, *info = NULL;
		json_t *res;

		f = good;
		f.instance = docs[i];
		page = parse_one(&f);
		if (!inst) {
			/* a NUL in a name: refused by jansson as by us */
			assert_non_null(page->records[0].reason);
			stack_usage_page_free(page);
			continue;
		}
		assert_null(page->records[0].reason);
		want = json_dumps(inst, JSON_COMPACT | JSON_SORT_KEYS);
		assert_string_equal(page->records[0].instance_data, want);
		res = json_object_get(inst, "Microsoft.Resources");
		if (json_object_get(res, "tags"))
			tags = json_dumps(json_object_get(res, "tags"),
			                  JSON_COMPACT | JSON_ENCODE_ANY);
		if (json_object_get(res, "additionalInfo"))
			info = json_dumps(json_object_get(res, "additionalInfo"),
			                  JSON_COMPACT | JSON_ENCODE_ANY);
		assert_true(streq_ptr(page->records[0].tags, tags));
		assert_true(streq_ptr(page->records[0].additional_info, info));
		stack_usage_page_free(page);
	}
}

/* A record over 64 KiB (a 1 MiB instanceData) is quarantined whole; the others stay valid. */
static void
test_stack_usage_page_parse_huge_record(void **state)
{
	_cleanup_free_ char *big = NULL, *inner = NULL, *page_text = NULL, *rec = NULL;
	_cleanup_free_ char *small = NULL;
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX];
	struct fields f = good;
	size_t n = 1024 * 1024;

	(void)state;
	big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'x', n);
	big[n] = '\0';
	assert_true(asprintf(&inner,
	                     "{\"Microsoft.Resources\":{\"resourceUri\":\"/r\",\"tags\":"
	                     "{\"big\":\"%s\"}}}",
	                     big) > 0);
	f.instance = inner;
	rec = record_of(&f);
	small = record_of(&good);
	assert_true(asprintf(&page_text, "{\"value\":[%s,%s,%s]}", small, rec, small) > 0);
	assert_int_equal(parse_text(200, page_text, &page, error), 0);
	assert_int_equal(page->n_records, 3);
	assert_int_equal(page->n_quarantined, 1);
	assert_null(page->records[0].reason);
	assert_null(page->records[2].reason);
	assert_quarantined(page, 1, "record 2: ");
	assert_non_null(strstr(page->records[1].reason, "bytes, more than the 65536 allowed"));
	/* the raw text is kept whole, never cut */
	assert_string_equal(page->records[1].raw, rec);
	stack_usage_page_free(page);

	/* exactly 64 KiB is allowed: pad the record with whitespace to the limit */
	_cleanup_free_ char *padded = NULL, *exact = NULL;
	size_t pad = STACK_RECORD_MAX - strlen(small);
	padded = malloc(STACK_RECORD_MAX + 1);
	assert_non_null(padded);
	memcpy(padded, small, strlen(small) - 1);
	memset(padded + strlen(small) - 1, ' ', pad);
	padded[STACK_RECORD_MAX - 1] = '}';
	padded[STACK_RECORD_MAX] = '\0';
	assert_true(asprintf(&exact, "{\"value\":[%s]}", padded) > 0);
	assert_int_equal(parse_text(200, exact, &page, error), 0);
	assert_null(page->records[0].reason);
	assert_int_equal(strlen(page->records[0].raw), STACK_RECORD_MAX);
	stack_usage_page_free(page);
}

/* Only value[i].properties.quantity counts: not a "quantity" in a string, deeper or elsewhere. */
static void
test_stack_usage_page_parse_quantity_literal_recovery(void **state)
{
	static const char *const text =
	        "{\"quantity\":1,\"nextLink\":null,\"value\":[{\"quantity\":7,\"properties\":{"
	        "\"instanceData\":\"{\\\"quantity\\\":9,\\\"Microsoft.Resources\\\":{}}\","
	        "\"extra\":{\"quantity\":8,\"list\":[{\"quantity\":6}],\"s\":\"\\\"quantity\\\":5\"},"
	        "\"subscriptionId\":\"c79389af-4480-48cc-8fa2-ee8ced8e843d\","
	        "\"meterId\":\"FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5\","
	        "\"usageStartTime\":\"2026-11-01T09:00:00Z\",\"usageEndTime\":\"2026-11-01T10:00:00Z\","
	        "\"quan\\u0074ity\" : 0.1000000000000000055511151231257827,"
	        "\"tail\":{\"quantity\":4}},\"after\":{\"properties\":{\"quantity\":3}}},"
	        "{\"properties\":{\"quantity\":2.50,\"x\":\"quantity\\\":1\"}}]}";
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX];

	(void)state;
	if (parse_text(200, text, &page, error) < 0)
		fail_msg("%s", error);
	assert_int_equal(page->n_records, 2);
	assert_null(page->records[0].reason);
	/* a literal with more digits than a double holds, and an escaped member name */
	assert_string_equal(page->records[0].quantity, "0.1000000000000000055511151231257827");
	assert_quarantined(page, 1, "record 2: subscriptionId: missing");
	assert_string_equal(page->records[1].quantity, "2.50");
	stack_usage_page_free(page);
}

/* A member given twice is ambiguous: jansson keeps the last, so the record is quarantined. */
static void
test_stack_usage_page_parse_duplicate_members(void **state)
{
	struct stack_usage_page *page;
	struct fields f = good;

	(void)state;
	f.extra = "\"quantity\":3";
	page = parse_one(&f);
	assert_quarantined(page, 0, "quantity: appears 2 times");
	stack_usage_page_free(page);

	char error[STACK_ERROR_MAX];
	assert_int_equal(parse_text(200,
	                            "{\"value\":[{\"properties\":{\"quantity\":1},"
	                            "\"properties\":{\"quantity\":2}}]}",
	                            &page, error),
	                 0);
	assert_quarantined(page, 0, "properties: appears 2 times");
	stack_usage_page_free(page);

	assert_int_equal(parse_text(200,
	                            "{\"value\":[{\"properties\":{\"quantity\":1},"
	                            "\"properties\":7}]}",
	                            &page, error),
	                 0);
	assert_quarantined(page, 0, "properties: appears 2 times");
	stack_usage_page_free(page);
}

/* A NUL character in a string quarantines that record only; the page is kept. */
static void
test_stack_usage_page_parse_nul_in_string(void **state)
{
	_cleanup_free_ char *one = NULL, *text = NULL;
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX];
	struct fields f = good;

	(void)state;
	f.subscription = "\"c79389af-4480-48cc-8fa2-ee8ced8e843d\\u0000\"";
	one = record_of(&f);
	_cleanup_free_ char *ok = record_of(&good);
	assert_true(asprintf(&text, "{\"value\":[%s,%s]}", one, ok) > 0);
	assert_int_equal(parse_text(200, text, &page, error), 0);
	assert_quarantined(page, 0, "subscriptionId: contains a NUL character");
	assert_null(page->records[1].reason);
	stack_usage_page_free(page);

	/* a string quantity with a NUL is not a decimal */
	f = good;
	f.quantity = "\"1\\u0000\"";
	page = parse_one(&f);
	assert_quarantined(page, 0, "quantity: not a finite decimal (\"1\\x00\")");
	stack_usage_page_free(page);
}

/* Every problem of a record is in its reason; the value quoted in it is short and escaped. */
static void
test_stack_usage_page_parse_reason_lists_all(void **state)
{
	struct stack_usage_page *page;
	struct fields f = good;
	char long_meter[200];

	(void)state;
	f.quantity = "-3";
	f.start = "\"2026-11-01T09:15:00Z\"";
	f.instance = "nope";
	page = parse_one(&f);
	assert_string_equal(page->records[0].reason,
	                    "record 1: usageStartTime: not on the hour (\"2026-11-01T09:15:00Z\"); "
	                    "quantity: negative (\"-3\"); instanceData: not JSON: column 4: "
	                    "invalid token near 'nope'");
	/* what could be read is still there */
	assert_string_equal(page->records[0].quantity, "-3");
	assert_string_equal(page->records[0].subscription_id,
	                    "c79389af-4480-48cc-8fa2-ee8ced8e843d");
	assert_non_null(page->records[0].raw);
	assert_null(page->records[0].key);
	stack_usage_page_free(page);

	memset(long_meter, 'a', sizeof(long_meter));
	long_meter[0] = '"';
	long_meter[1] = '\\';
	long_meter[2] = 't';
	long_meter[sizeof(long_meter) - 2] = '"';
	long_meter[sizeof(long_meter) - 1] = '\0';
	f = good;
	f.meter = long_meter;
	page = parse_one(&f);
	assert_quarantined(page, 0, "meterId: not a GUID (\"\\x09aaaa");
	assert_non_null(strstr(page->records[0].reason, "aaa\"...)"));
	assert_true(strlen(page->records[0].reason) < 150);
	stack_usage_page_free(page);
}

/* The key helper: the example of section 4 and record-keys.tsv; NULL fields refused. */
static void
test_stack_record_key_fields(void **state)
{
	char key[HASH_SHA256_HEX_LEN + 1], other[HASH_SHA256_HEX_LEN + 1];
	static const char inst[] =
	        "{\"Microsoft.Resources\":{\"additionalInfo\":{\"ImageType\":\"Windows_Server\","
	        "\"ServiceType\":\"Standard_D2_v2\"},\"location\":\"local\",\"resourceUri\":"
	        "\"/subscriptions/c79389af-4480-48cc-8fa2-ee8ced8e843d/resourceGroups/web/providers/"
	        "Microsoft.Compute/virtualMachines/web01\",\"tags\":null}}";
	static const char text[] = "2026-11-01T10:00:00Z\nc79389af-4480-48cc-8fa2-ee8ced8e843d\n"
	                           "fab6eb84500b4a09a8ca7358f8bbaea5\n2026-11-01T09:00:00Z\n"
	                           "2026-11-01T10:00:00Z\n";
	_cleanup_free_ char *joined = NULL;

	(void)state;
	assert_int_equal(stack_record_key(HOUR, "C79389AF-4480-48CC-8FA2-EE8CED8E843D",
	                                  "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5", HOUR - 3600, HOUR,
	                                  inst, key),
	                 0);
	assert_string_equal(key,
	                    "fb7e3f69febadd7b1cc73232f427fb09e698b3e556e85e0ef964068d36ea2c14");
	/* the same as hashing the text of section 4 by hand */
	assert_true(asprintf(&joined, "%s%s", text, inst) > 0);
	hash_sha256_hex(joined, strlen(joined), other);
	assert_string_equal(key, other);
	/* the reported hour is part of the key */
	assert_int_equal(stack_record_key(HOUR + 3600, "c79389af-4480-48cc-8fa2-ee8ced8e843d",
	                                  "fab6eb84500b4a09a8ca7358f8bbaea5", HOUR - 3600, HOUR,
	                                  inst, other),
	                 0);
	assert_string_not_equal(key, other);

	memset(other, 'z', sizeof(other));
	assert_int_equal(stack_record_key(HOUR, NULL, "m", 0, 3600, "{}", other), -EINVAL);
	assert_int_equal(stack_record_key(HOUR, "s", "m", 0, 3600, NULL, other), -EINVAL);
	assert_int_equal(stack_record_key(INT64_C(253402300800), "s", "m", 0, 3600, "{}", other),
	                 -EINVAL);
	assert_int_equal(other[0], 'z');
}

/*
 * Keys made one after another with the times changing or not (the key keeps the last texts of
 * the times): each the same as hashing the text of section 4 written by hand.
 */
static void
test_stack_record_key_times_vary(void **state)
{
	static const struct {
		int64_t hour, start, end;
	} rows[] = {
	        {HOUR, HOUR - 3600, HOUR},
	        {HOUR, HOUR - 3600, HOUR},
	        {HOUR, HOUR - 7200, HOUR - 3600},
	        {HOUR, HOUR - 3600, HOUR},
	        {HOUR + 3600, HOUR - 3600, HOUR},
	        {HOUR + 3600, HOUR, HOUR + 3600},
	        {HOUR, HOUR, HOUR + 3600},
	        {0, 0, 3600},
	        {HOUR, 0, 3600},
	        {HOUR, HOUR - 3600, HOUR + 86400},
	};
	char key[HASH_SHA256_HEX_LEN + 1], want[HASH_SHA256_HEX_LEN + 1];
	char h[TIME_RFC3339_LEN + 1], st[TIME_RFC3339_LEN + 1], en[TIME_RFC3339_LEN + 1];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		_cleanup_free_ char *text = NULL;

		assert_int_equal(stack_record_key(rows[i].hour,
		                                  "C79389AF-4480-48CC-8FA2-EE8CED8E843D",
		                                  "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5",
		                                  rows[i].start, rows[i].end, "{}", key),
		                 0);
		assert_true(asprintf(&text,
		                     "%s\nc79389af-4480-48cc-8fa2-ee8ced8e843d\n"
		                     "fab6eb84500b4a09a8ca7358f8bbaea5\n%s\n%s\n{}",
		                     time_format_rfc3339(rows[i].hour, h),
		                     time_format_rfc3339(rows[i].start, st),
		                     time_format_rfc3339(rows[i].end, en)) > 0);
		hash_sha256_hex(text, strlen(text), want);
		assert_string_equal(key, want);
	}
	/* a time out of range after cached ones is still refused, and the next key is right */
	assert_int_equal(
	        stack_record_key(HOUR, "s", "m", HOUR - 3600, INT64_C(253402300800), "{}", key),
	        -EINVAL);
	assert_int_equal(stack_record_key(HOUR, "s", "m", HOUR - 3600, HOUR, "{}", key), 0);
	hash_sha256_hex("2026-11-01T10:00:00Z\ns\nm\n2026-11-01T09:00:00Z\n"
	                "2026-11-01T10:00:00Z\n{}",
	                strlen("2026-11-01T10:00:00Z\ns\nm\n2026-11-01T09:00:00Z\n"
	                       "2026-11-01T10:00:00Z\n{}"),
	                want);
	assert_string_equal(key, want);
}

/* ARM error bodies of both shapes, from the test data and by hand. */
static void
test_stack_arm_error_parse_shapes(void **state)
{
	static const struct {
		const char *file, *code, *message_start;
	} files[] = {
	        {"usage-error-503.json", "ServiceUnavailable", "A retryable error"},
	        {"usage-error-future.json", "RequestEndTimeIsInFuture", "The value for"},
	        {"arm-error-registration-not-found.json", "RegistrationNotFound", "The provided"},
	        {"arm-error-unauthorized-csp.json", "UnauthorizedCspRegistration", "The provided"},
	};
	struct stack_arm_error e = {0};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		size_t size;
		_cleanup_free_ char *body = read_file(files[i].file, &size);

		assert_int_equal(stack_arm_error_parse(body, size, &e), 0);
		assert_string_equal(e.code, files[i].code);
		assert_non_null(e.message);
		assert_true(strncmp(e.message, files[i].message_start,
		                    strlen(files[i].message_start)) == 0);
		stack_arm_error_done(&e);
		assert_null(e.code);
	}

	static const char flat[] =
	        "{\"code\":\"SubscriberIdIsNotDirectTenant\",\"message\":\"no\"}";
	assert_int_equal(stack_arm_error_parse(flat, strlen(flat), &e), 0);
	assert_string_equal(e.code, "SubscriberIdIsNotDirectTenant");
	assert_string_equal(e.message, "no");
	stack_arm_error_done(&e);

	static const char no_message[] = "{\"error\":{\"code\":\"X\"}}";
	assert_int_equal(stack_arm_error_parse(no_message, strlen(no_message), &e), 0);
	assert_string_equal(e.code, "X");
	assert_null(e.message);
	stack_arm_error_done(&e);

	/* an OAuth error (token-error.json's shape), garbage and empty codes are not ARM errors */
	static const char *const bad[] = {
	        "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215\"}",
	        "<html>Bad Gateway</html>",
	        "",
	        "{\"error\":{\"code\":5}}",
	        "{\"error\":{\"code\":\"\"}}",
	        "[\"code\"]",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		e.code = (char *)"untouched";
		assert_int_equal(stack_arm_error_parse(bad[i], strlen(bad[i]), &e), -EBADMSG);
		assert_string_equal(e.code, "untouched");
	}
	size_t size;
	_cleanup_free_ char *token_error = read_file("token-error.json", &size);
	e = (struct stack_arm_error){0};
	assert_int_equal(stack_arm_error_parse(token_error, size, &e), -EBADMSG);
}

/* The user-subscriptions list of the test data, every field. */
static void
test_stack_subscriptions_parse_testdata(void **state)
{
	struct stack_subscription_list *list = NULL;
	char error[STACK_ERROR_MAX];
	size_t size;
	_cleanup_free_ char *body = read_file("subscriptions.json", &size);
	const struct stack_subscription *s;

	(void)state;
	assert_int_equal(stack_subscriptions_parse(body, size, &list, error), 0);
	assert_int_equal(list->n_subscriptions, 3);
	assert_int_equal(list->n_skipped, 0);
	assert_null(list->skipped_reason);
	assert_null(list->next_link);

	s = &list->subscriptions[0];
	assert_string_equal(s->subscription_id, "c79389af-4480-48cc-8fa2-ee8ced8e843d");
	assert_string_equal(s->tenant_id, "104edf09-7fc1-459f-8c4e-b062db480b90");
	assert_string_equal(s->display_name, "Fabrikam web");
	assert_string_equal(s->owner, "admin@fabrikam.onmicrosoft.com");
	assert_string_equal(s->state, "Enabled");
	assert_string_equal(s->delegated_provider_subscription_id, PROVIDER);
	assert_string_equal(list->subscriptions[1].tenant_id, s->tenant_id);
	s = &list->subscriptions[2];
	assert_string_equal(s->subscription_id, "5e3b1c44-7f0e-4d8a-b1a9-2c6f0d4e8a21");
	assert_string_equal(s->tenant_id, "d9b782d5-d098-4374-8f2c-3907cc34611c");
	assert_string_equal(s->display_name, "Woodgrove dev");
	assert_string_equal(s->state, "Disabled");
	stack_subscription_list_free(list);
}

/* Ids are lower-cased; entries that cannot be cached are skipped and counted; nextLink kept. */
static void
test_stack_subscriptions_parse_skips_bad_entries(void **state)
{
	static const char text[] =
	        "{\"nextLink\":\"https://h/next?x=%3d\",\"value\":["
	        "{\"subscriptionId\":\"C79389AF-4480-48CC-8FA2-EE8CED8E843D\","
	        "\"tenantId\":\"104EDF09-7FC1-459F-8C4E-B062DB480B90\","
	        "\"delegatedProviderSubscriptionId\":\"AAAAAAAA-27B1-4CCF-9AA1-DE0F925731E6\"},"
	        "{\"subscriptionId\":\"nope\",\"tenantId\":\"t\"},"
	        "{\"tenantId\":\"t\"},"
	        "{\"subscriptionId\":\"0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10\"},"
	        "{\"subscriptionId\":\"0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10\",\"tenantId\":7},"
	        "{\"subscriptionId\":\"0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10\",\"tenantId\":\"\"},"
	        "42,"
	        "{\"subscriptionId\":\"5e3b1c44-7f0e-4d8a-b1a9-2c6f0d4e8a21\",\"tenantId\":\"t2\","
	        "\"displayName\":5,\"state\":null}]}";
	struct stack_subscription_list *list = NULL;
	char error[STACK_ERROR_MAX];

	(void)state;
	assert_int_equal(stack_subscriptions_parse(text, strlen(text), &list, error), 0);
	assert_int_equal(list->n_subscriptions, 2);
	assert_int_equal(list->n_skipped, 6);
	assert_string_equal(list->skipped_reason, "subscription 2: subscriptionId: not a GUID");
	assert_string_equal(list->next_link, "https://h/next?x=%3d");
	assert_string_equal(list->subscriptions[0].subscription_id,
	                    "c79389af-4480-48cc-8fa2-ee8ced8e843d");
	assert_string_equal(list->subscriptions[0].tenant_id,
	                    "104edf09-7fc1-459f-8c4e-b062db480b90");
	assert_string_equal(list->subscriptions[0].delegated_provider_subscription_id,
	                    "aaaaaaaa-27b1-4ccf-9aa1-de0f925731e6");
	assert_null(list->subscriptions[0].display_name);
	assert_null(list->subscriptions[1].display_name);
	assert_null(list->subscriptions[1].state);
	assert_string_equal(list->subscriptions[1].tenant_id, "t2");
	stack_subscription_list_free(list);

	assert_int_equal(stack_subscriptions_parse("{\"value\":[]}", 12, &list, error), 0);
	assert_int_equal(list->n_subscriptions, 0);
	stack_subscription_list_free(list);
}

/* A body that is not a list is refused (an empty list would mark every subscription gone). */
static void
test_stack_subscriptions_parse_malformed(void **state)
{
	static const struct {
		const char *body, *message;
	} cases[] = {
	        {"", "not JSON"},
	        {"{", "not JSON"},
	        {"{\"value\":[],\"x\":\"\xff\"}", "not JSON"},
	        {"[]", "not a JSON object but an array"},
	        {"{}", "no value array"},
	        {"{\"value\":{}}", "no value array"},
	        {"{\"error\":{\"code\":\"X\"}}", "no value array"},
	        {"{\"value\":[],\"nextLink\":[]}", "nextLink: not a string but an array"},
	};
	struct stack_subscription_list *list = NULL;
	char error[STACK_ERROR_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		int r = stack_subscriptions_parse(cases[i].body, strlen(cases[i].body), &list,
		                                  error);

		if (r != -EBADMSG || !strstr(error, cases[i].message))
			fail_msg("case %zu: %d \"%s\"", i, r, error);
		assert_null(list);
	}
}

/* Both metadata documents: login endpoint without its trailing slash, the first audience. */
static void
test_stack_metadata_parse_testdata(void **state)
{
	struct stack_metadata m = {0};
	char error[STACK_ERROR_MAX];
	size_t size;
	_cleanup_free_ char *aad = read_file("metadata-endpoints-aad.json", &size);

	(void)state;
	assert_int_equal(stack_metadata_parse(aad, size, &m, error), 0);
	assert_string_equal(m.login_endpoint, "https://login.windows.net");
	assert_string_equal(m.audience,
	                    "https://contoso.onmicrosoft.com/4de154de-f8a8-4017-af41-df619da68155");
	stack_metadata_done(&m);
	assert_null(m.login_endpoint);

	_cleanup_free_ char *adfs = read_file("metadata-endpoints-adfs.json", &size);
	assert_int_equal(stack_metadata_parse(adfs, size, &m, error), 0);
	assert_string_equal(m.login_endpoint, "https://adfs.local.azurestack.external/adfs");
	assert_string_equal(
	        m.audience,
	        "https://management.adfs.azurestack.local/e2bf6aa1-7a8f-4bb9-b8cb-caef446339ec");
	stack_metadata_done(&m);

	static const char top[] = "{\"loginEndpoint\":\"https://l/\",\"authentication\":"
	                          "{\"audiences\":[\"a\",\"b\"]}}";
	assert_int_equal(stack_metadata_parse(top, strlen(top), &m, error), 0);
	assert_string_equal(m.login_endpoint, "https://l");
	assert_string_equal(m.audience, "a");
	stack_metadata_done(&m);
}

/* A metadata document without what auth needs, or with a plain-HTTP login endpoint, is refused. */
static void
test_stack_metadata_parse_malformed(void **state)
{
	static const struct {
		const char *body, *message;
	} cases[] = {
	        {"nope", "not JSON"},
	        {"[]", "not a JSON object"},
	        {"{}", "loginEndpoint: missing"},
	        {"{\"authentication\":{\"loginEndpoint\":5,\"audiences\":[\"a\"]}}",
	         "loginEndpoint: missing or not a string"},
	        {"{\"authentication\":{\"loginEndpoint\":\"http://l/\",\"audiences\":[\"a\"]}}",
	         "not an https URL"},
	        {"{\"authentication\":{\"loginEndpoint\":\"https:///x\",\"audiences\":[\"a\"]}}",
	         "not an https URL"},
	        {"{\"authentication\":{\"loginEndpoint\":\"https://l/\"}}", "audiences[0]"},
	        {"{\"authentication\":{\"loginEndpoint\":\"https://l/\",\"audiences\":[]}}",
	         "audiences[0]"},
	        {"{\"authentication\":{\"loginEndpoint\":\"https://l/\",\"audiences\":[\"\"]}}",
	         "audiences[0]"},
	        {"{\"authentication\":{\"loginEndpoint\":\"https://l/\",\"audiences\":[1]}}",
	         "audiences[0]"},
	};
	struct stack_metadata m = {.login_endpoint = (char *)"untouched"};
	char error[STACK_ERROR_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		int r = stack_metadata_parse(cases[i].body, strlen(cases[i].body), &m, error);

		if (r != -EBADMSG || !strstr(error, cases[i].message))
			fail_msg("case %zu: %d \"%s\"", i, r, error);
		assert_string_equal(m.login_endpoint, "untouched");
	}
}

/* The usage URL of section 4, with and without subscriberId; bad arguments refused. */
static void
test_stack_usage_url_build(void **state)
{
	char *url = NULL;

	(void)state;
	assert_int_equal(stack_usage_url(ARM, PROVIDER, HOUR, NULL, &url), 0);
	assert_string_equal(url,
	                    ARM "/subscriptions/" PROVIDER
	                        "/providers/Microsoft.Commerce.Admin/subscriberUsageAggregates"
	                        "?reportedStartTime=2026-11-01T10%3A00%3A00Z"
	                        "&reportedEndTime=2026-11-01T11%3A00%3A00Z"
	                        "&aggregationGranularity=Hourly&api-version=2015-06-01-preview");
	free(url);

	assert_int_equal(stack_usage_url(ARM "/", PROVIDER, HOUR - 86400,
	                                 "c79389af-4480-48cc-8fa2-ee8ced8e843d", &url),
	                 0);
	assert_string_equal(url, ARM "/subscriptions/" PROVIDER
	                             "/providers/Microsoft.Commerce.Admin/subscriberUsageAggregates"
	                             "?reportedStartTime=2026-10-31T10%3A00%3A00Z"
	                             "&reportedEndTime=2026-10-31T11%3A00%3A00Z"
	                             "&aggregationGranularity=Hourly&api-version=2015-06-01-preview"
	                             "&subscriberId=c79389af-4480-48cc-8fa2-ee8ced8e843d");
	free(url);

	/* a day boundary */
	assert_int_equal(stack_usage_url(ARM, PROVIDER, HOUR + 13 * 3600, NULL, &url), 0);
	assert_non_null(strstr(url, "reportedStartTime=2026-11-01T23%3A00%3A00Z&reportedEndTime="
	                            "2026-11-02T00%3A00%3A00Z&"));
	free(url);

	url = NULL;
	assert_int_equal(stack_usage_url(ARM, PROVIDER, HOUR + 1, NULL, &url), -EINVAL);
	assert_int_equal(stack_usage_url(ARM, "provider", HOUR, NULL, &url), -EINVAL);
	assert_int_equal(stack_usage_url(ARM, PROVIDER, HOUR, "x&y=z", &url), -EINVAL);
	assert_int_equal(stack_usage_url("http://h", PROVIDER, HOUR, NULL, &url), -EINVAL);
	assert_int_equal(stack_usage_url(NULL, PROVIDER, HOUR, NULL, &url), -EINVAL);
	assert_null(url);
}

/* The user-subscriptions and metadata URLs. */
static void
test_stack_subscriptions_url_build(void **state)
{
	char *url = NULL;

	(void)state;
	assert_int_equal(stack_subscriptions_url(ARM "/", PROVIDER, &url), 0);
	assert_string_equal(url, ARM "/subscriptions/" PROVIDER "/providers/"
	                             "Microsoft.Subscriptions.Admin/subscriptions"
	                             "?api-version=2015-11-01");
	free(url);
	url = NULL;
	assert_int_equal(stack_subscriptions_url(ARM, "nope", &url), -EINVAL);
	assert_null(url);

	assert_int_equal(stack_metadata_url(ARM, &url), 0);
	assert_string_equal(url, ARM "/metadata/endpoints?api-version=2015-01-01");
	free(url);
	url = NULL;
	assert_int_equal(stack_metadata_url("adminmanagement.local", &url), -EINVAL);
	assert_null(url);
}

/* The token goes only to https links of the arm_endpoint's host and port. */
static void
test_stack_link_authority_ok_cases(void **state)
{
	static const char *const same[] = {
	        ARM "/subscriptions/x?continuationToken=a%3d",
	        "https://adminmanagement.local.azurestack.external:443/subscriptions/x",
	        "https://AdminManagement.Local.AzureStack.External/x",
	        "HTTPS://adminmanagement.local.azurestack.external",
	        "https://adminmanagement.local.azurestack.external?x=1",
	        "https://adminmanagement.local.azurestack.external#f",
	        "https://adminmanagement.local.azurestack.external:/x",
	};
	static const char *const other[] = {
	        "http://adminmanagement.local.azurestack.external/x",
	        "https://adminmanagement.local.azurestack.external:8443/x",
	        "https://adminmanagement.local.azurestack.external.evil.example/x",
	        ("https://evil.example/" ARM),
	        "https://adminmanagement.local.azurestack.external@evil.example/x",
	        "https://user:pw@adminmanagement.local.azurestack.external/x",
	        "https://evil.example\\@adminmanagement.local.azurestack.external/x",
	        "https://adminmanagement.local.azurestack.external\\.evil.example/x",
	        "https://adminmanagement%2elocal.azurestack.external/x",
	        "https://adminmanagement.local.azurestack.external:0443x/x",
	        "https://adminmanagement.local.azurestack.external:65979/x",
	        "https://adminmanagement.local.azurestack.external:0/x",
	        "https://adminmanagement.local.azurestack.external.:443/x",
	        "https:/adminmanagement.local.azurestack.external/x",
	        "//adminmanagement.local.azurestack.external/x",
	        "/subscriptions/x",
	        "https://",
	        "https:///x",
	        "https://:443/x",
	        "https://admin management.local.azurestack.external/x",
	        "",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(same); i++)
		if (!stack_link_authority_ok(same[i], ARM))
			fail_msg("refused: %s", same[i]);
	for (size_t i = 0; i < ARRAY_SIZE(other); i++)
		if (stack_link_authority_ok(other[i], ARM))
			fail_msg("accepted: %s", other[i]);

	/* an arm_endpoint with a port: the link must name that port */
	assert_true(
	        stack_link_authority_ok("https://h.example:30024/x", "https://H.example:30024"));
	assert_false(stack_link_authority_ok("https://h.example/x", "https://h.example:30024"));
	assert_true(stack_link_authority_ok("https://[fd00::1]:443/x", "https://[FD00::1]"));
	assert_false(stack_link_authority_ok("https://[fd00::1]:444/x", "https://[fd00::1]"));
	assert_false(stack_link_authority_ok("https://[fd00::1/x", "https://[fd00::1]"));
	assert_false(
	        stack_link_authority_ok(ARM, "http://adminmanagement.local.azurestack.external"));
	assert_false(stack_link_authority_ok(NULL, ARM));
	assert_false(stack_link_authority_ok(ARM, NULL));
}

/* The host of a refused link, for the log, never with its user information. */
static void
test_stack_url_host_forms(void **state)
{
	static const struct {
		const char *url, *host;
	} cases[] = {
	        {"https://evil.example/x?y", "evil.example"},
	        {"http://Evil.example:8080", "Evil.example:8080"},
	        {"https://user:secret@evil.example:1/x", "evil.example:1"},
	        {"https://a@b@c/x", "c"},
	        {"ftp://h#f", "h"},
	};
	char *host = NULL;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		assert_int_equal(stack_url_host(cases[i].url, &host), 0);
		assert_string_equal(host, cases[i].host);
		free(host);
	}
	host = NULL;
	assert_int_equal(stack_url_host("/relative", &host), -EINVAL);
	assert_int_equal(stack_url_host("://x", &host), -EINVAL);
	assert_null(host);
}

/* Read a test data file (a new NUL-terminated string; its size without the NUL in *ret_size). */
static char *
read_file(const char *name, size_t *ret_size)
{
	_cleanup_free_ char *path = NULL;
	_cleanup_fclose_ FILE *f = NULL;
	char *buf;
	long size;

	assert_true(asprintf(&path, "%s/%s", TESTDATA_DIR, name) > 0);
	f = fopen(path, "re");
	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size > 0);
	rewind(f);
	buf = malloc((size_t)size + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
	buf[size] = '\0';
	if (ret_size)
		*ret_size = (size_t)size;
	return buf;
}

/* Parse a test data page for HOUR and assert it parses. */
static struct stack_usage_page *
parse_file(const char *name)
{
	struct stack_usage_page *page = NULL;
	char error[STACK_ERROR_MAX];
	size_t size;
	_cleanup_free_ char *body = read_file(name, &size);
	int r = stack_usage_page_parse(200, body, size, HOUR, &page, error);

	if (r != 0)
		fail_msg("%s: %d %s", name, r, error);
	return page;
}

/* One usage record's JSON text from fields (a new string). */
static char *
record_of(const struct fields *f)
{
	const char *names[] = {"subscriptionId", "meterId",  "usageStartTime",
	                       "usageEndTime",   "quantity", "instanceData"};
	const char *values[] = {f->subscription, f->meter, f->start, f->end, f->quantity, NULL};
	_cleanup_free_ char *instance = NULL;
	char *props = strdup(""), *rec;

	assert_non_null(props);
	if (f->instance) {
		json_t *s = json_string(f->instance);

		assert_non_null(s);
		instance = json_dumps(s, JSON_ENCODE_ANY);
		json_decref(s);
		assert_non_null(instance);
		values[5] = instance;
	} else
		values[5] = f->instance_raw;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		char *more;

		if (!values[i])
			continue;
		assert_true(asprintf(&more, "%s%s\"%s\":%s", props, *props ? "," : "", names[i],
		                     values[i]) > 0);
		free(props);
		props = more;
	}
	if (f->extra) {
		char *more;

		assert_true(asprintf(&more, "%s,%s", props, f->extra) > 0);
		free(props);
		props = more;
	}
	assert_true(asprintf(&rec,
	                     "{\"id\":\"/subscriptions/x/UsageAggregate/1\",\"name\":\"1\","
	                     "\"type\":\"Microsoft.Commerce.Admin/UsageAggregate\","
	                     "\"properties\":{%s}}",
	                     props) > 0);
	free(props);
	return rec;
}

/* A page of one record (a new string). */
static char *
page_of(const struct fields *f)
{
	_cleanup_free_ char *rec = record_of(f);
	char *page;

	assert_true(asprintf(&page, "{\"value\":[%s]}", rec) > 0);
	return page;
}

/* Parse a page of one record and assert that the page parses. */
static struct stack_usage_page *
parse_one(const struct fields *f)
{
	_cleanup_free_ char *text = page_of(f);
	struct stack_usage_page *page = NULL;
	char error[STACK_ERROR_MAX];

	if (parse_text(200, text, &page, error) != 0)
		fail_msg("%s\n%s", error, text);
	assert_int_equal(page->n_records, 1);
	return page;
}

/* Parse text as a usage page for HOUR. */
static int
parse_text(long status, const char *text, struct stack_usage_page **ret,
           char error[static STACK_ERROR_MAX])
{
	return stack_usage_page_parse(status, text, strlen(text), HOUR, ret, error);
}

/* Assert record i is quarantined with a reason containing why, and without a key. */
static void
assert_quarantined(const struct stack_usage_page *page, size_t i, const char *why)
{
	const struct stack_record *r = &page->records[i];

	if (!r->reason)
		fail_msg("record %zu is valid, expected \"%s\"", i + 1, why);
	if (!strstr(r->reason, why))
		fail_msg("record %zu: reason \"%s\", expected \"%s\"", i + 1, r->reason, why);
	assert_non_null(r->raw);
	assert_null(r->key);
}

/* Read record-keys.tsv (header line, then file, hour, subscription, meter, key). */
static size_t
read_key_rows(struct key_row rows[static KEY_ROWS])
{
	_cleanup_free_ char *text = read_file("record-keys.tsv", NULL);
	char hour[32];
	size_t n = 0;

	assert_true(strncmp(text, "file\treported_hour\tsubscriptionId\tmeterId\tkey\n", 45) == 0);
	for (char *line = strchr(text, '\n') + 1; *line; line = strchr(line, '\n') + 1) {
		if (*line == '\n')
			continue;
		assert_true(n < KEY_ROWS);
		if (sscanf(line, "%63[^\t]\t%31[^\t]\t%63[^\t]\t%63[^\t]\t%64[0-9a-f]",
		           rows[n].file, hour, rows[n].subscription, rows[n].meter,
		           rows[n].key) != 5)
			fail_msg("record-keys.tsv: bad line: %.100s", line);
		assert_string_equal(hour, "2026-11-01T10:00:00Z");
		assert_int_equal(strlen(rows[n].key), HASH_SHA256_HEX_LEN);
		n++;
		if (!strchr(line, '\n'))
			break;
	}
	return n;
}

/* Run the stack tests. */
/*
 * Large blocks are kept for the next get of their kind that they fit (the smallest that fits),
 * two of a kind at most, the larger ones first; small blocks and other kinds are not shared.
 */
static void
test_stack_blocks_kept(_unused_ void **state)
{
	size_t big = 1024 * 1024, s1, s2, s3, s4, s5;
	char *a, *b, *c, *d, *e;

	a = stack_block_get(STACK_BLOCK_BODY, big, &s1);
	assert_true(s1 >= big);
	memset(a, 'a', s1); /* all of it is usable */
	b = stack_block_get(STACK_BLOCK_BODY, 2 * big, &s2);
	assert_true(s2 >= 2 * big);
	stack_block_put(STACK_BLOCK_BODY, a, s1);
	stack_block_put(STACK_BLOCK_BODY, b, s2);
	c = stack_block_get(STACK_BLOCK_TEXT, big / 2, &s3); /* another kind: new */
	assert_ptr_not_equal(c, a);
	assert_ptr_not_equal(c, b);
	d = stack_block_get(STACK_BLOCK_BODY, big / 2, &s4); /* the smallest that fits */
	assert_ptr_equal(d, a);
	assert_int_equal(s4, s1);
	e = stack_block_get(STACK_BLOCK_BODY, 3 * big, &s5); /* none fits */
	assert_ptr_not_equal(e, b);
	assert_true(s5 >= 3 * big);
	stack_block_put(STACK_BLOCK_BODY, d, s4);
	stack_block_put(STACK_BLOCK_BODY, e, s5); /* two kept already: the smallest goes */
	d = stack_block_get(STACK_BLOCK_BODY, big / 2, &s4);
	assert_ptr_equal(d, b);
	stack_block_put(STACK_BLOCK_BODY, d, s4);
	stack_block_put(STACK_BLOCK_TEXT, c, s3);
	a = stack_block_get(STACK_BLOCK_TEXT, 1000, &s1); /* small: never kept, a new one */
	assert_true(s1 >= 1000);
	stack_block_put(STACK_BLOCK_TEXT, a, s1);
	stack_block_put(STACK_BLOCK_TEXT, NULL, 0);
}

/*
 * A freed block over 16 MiB is not kept (0d660d2): one odd huge page would otherwise hold its
 * memory for the life of the process. Seen through the size a later get hands back: a kept block
 * comes back whole for a smaller request, a new one is about the size asked for. The kinds are
 * emptied first (the blocks taken are held), so that only the block put can come back.
 */
static void
test_stack_blocks_kept_at_most_16_mib(_unused_ void **state)
{
	/* kept_min: lib/stack.c's BLOCK_KEPT_MIN, below which no block is kept */
	const size_t small = 512 * 1024, kept_min = 256 * 1024, mib = 1024 * 1024;
	const enum stack_block_kind kinds[] = {STACK_BLOCK_BODY, STACK_BLOCK_TEXT};

	for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
		void *held[16], *p;
		size_t held_size[16], n_held = 0, size, got;

		/* take every kept block of the kind (earlier tests may have left some, of any kept
		 * size): then a get makes a new one, of the size asked */
		for (;;) {
			assert_true(n_held < ARRAY_SIZE(held));
			held[n_held] = stack_block_get(kinds[k], 1, &held_size[n_held]);
			if (held_size[n_held++] < kept_min)
				break;
		}

		/* 14 MiB asked is 15.75 MiB made: kept, and handed back whole for less */
		p = stack_block_get(kinds[k], 14 * mib, &size);
		assert_true(size > 14 * mib && size <= 16 * mib);
		stack_block_put(kinds[k], p, size);
		p = stack_block_get(kinds[k], small, &got);
		assert_int_equal(got, size);
		stack_block_put(kinds[k], p, got);
		p = stack_block_get(kinds[k], small, &got); /* the same again: nothing else kept */
		assert_int_equal(got, size);

		/* 17 MiB asked is over 16 MiB made: freed, not kept */
		held[n_held] = p;
		held_size[n_held++] = got;
		p = stack_block_get(kinds[k], 17 * mib, &size);
		assert_true(size > 16 * mib);
		stack_block_put(kinds[k], p, size);
		p = stack_block_get(kinds[k], small, &got);
		assert_true(got < 16 * mib);
		assert_true(got >= small);
		stack_block_put(kinds[k], p, got);

		for (size_t i = 0; i < n_held; i++)
			stack_block_put(kinds[k], held[i], held_size[i]);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_stack_usage_page_parse_page1),
	        cmocka_unit_test(test_stack_blocks_kept),
	        cmocka_unit_test(test_stack_blocks_kept_at_most_16_mib),
	        cmocka_unit_test(test_stack_usage_page_parse_outgrows_blocks),
	        cmocka_unit_test(test_stack_usage_page_parse_exact_quantity),
	        cmocka_unit_test(test_stack_usage_page_parse_page2_last),
	        cmocka_unit_test(test_stack_usage_page_parse_keys_match_testdata),
	        cmocka_unit_test(test_stack_usage_page_parse_reordered_same_keys),
	        cmocka_unit_test(test_stack_usage_page_parse_split_two_keys),
	        cmocka_unit_test(test_stack_usage_page_parse_empty),
	        cmocka_unit_test(test_stack_usage_page_parse_not_ready),
	        cmocka_unit_test(test_stack_usage_page_parse_not_ready_testdata),
	        cmocka_unit_test(test_stack_usage_page_parse_malformed_page),
	        cmocka_unit_test(test_stack_usage_page_parse_bad_arguments),
	        cmocka_unit_test(test_stack_usage_page_parse_missing_fields),
	        cmocka_unit_test(test_stack_usage_page_parse_wrong_types),
	        cmocka_unit_test(test_stack_usage_page_parse_guid_shapes),
	        cmocka_unit_test(test_stack_usage_page_parse_times),
	        cmocka_unit_test(test_stack_usage_page_parse_quantities),
	        cmocka_unit_test(test_stack_usage_page_parse_instance_data),
	        cmocka_unit_test(test_stack_usage_page_parse_json_text_as_jansson),
	        cmocka_unit_test(test_stack_usage_page_parse_huge_record),
	        cmocka_unit_test(test_stack_usage_page_parse_quantity_literal_recovery),
	        cmocka_unit_test(test_stack_usage_page_parse_duplicate_members),
	        cmocka_unit_test(test_stack_usage_page_parse_nul_in_string),
	        cmocka_unit_test(test_stack_usage_page_parse_reason_lists_all),
	        cmocka_unit_test(test_stack_record_key_fields),
	        cmocka_unit_test(test_stack_usage_page_parse_repeated_instance_data),
	        cmocka_unit_test(test_stack_record_key_times_vary),
	        cmocka_unit_test(test_stack_arm_error_parse_shapes),
	        cmocka_unit_test(test_stack_subscriptions_parse_testdata),
	        cmocka_unit_test(test_stack_subscriptions_parse_skips_bad_entries),
	        cmocka_unit_test(test_stack_subscriptions_parse_malformed),
	        cmocka_unit_test(test_stack_metadata_parse_testdata),
	        cmocka_unit_test(test_stack_metadata_parse_malformed),
	        cmocka_unit_test(test_stack_usage_url_build),
	        cmocka_unit_test(test_stack_subscriptions_url_build),
	        cmocka_unit_test(test_stack_link_authority_ok_cases),
	        cmocka_unit_test(test_stack_url_host_forms),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
