/*
 * bench-commerce: the cost per event of lib/commerce.c on the forwarding path (ARCHITECTURE.md
 * sections 6 and 11) beside the jansson way of doing the same.
 *
 * Batches of realistic events (SHA-256 keys, lower-case GUIDs, a registration id, a 150-byte
 * resource URI, quantities with ten decimals; a third with tags and half with additionalInfo)
 * are encoded over and over for about --seconds each by:
 *   - commerce_request_build() without gzip (the hand-written encoder);
 *   - json_pack() per event (tags and additionalInfo parsed with json_loads() so that they are
 *     embedded as JSON, as the contract wants) into an array, then json_dumps(JSON_COMPACT) of
 *     {"request":[...]}: what the daemon would do with jansson;
 *   - commerce_request_build() with gzip (level COMMERCE_GZIP_LEVEL), and zlib alone on the same
 *     JSON at levels 1 and 6, with their compression ratios;
 *   - commerce_parse_response() on an answer of one Accepted result per event, and jansson's
 *     json_loadb() alone on it.
 * Prints microseconds of CPU time (this thread) per event, the median of five runs.
 *
 *   bench-commerce [--events N] [--seconds S]
 *
 * Built with the tests, never run as one.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zlib.h>

#include "commerce.h"
#include "hash.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#define RUNS   5
#define T_HOUR INT64_C(1793523600)
#define REG_ID                                                                                     \
	"/subscriptions/dd8597b4-8739-4467-8b10-f8679f62bfbf/resourcegroups/azurestack/providers/" \
	"microsoft.azurestack/registrations/testregistration"
#define BATCH_ID "0d7c5a4e-8f7b-4d38-9c61-2b1f0e9a6d55"

struct bench {
	struct store_record *records;
	size_t n;
	char *answer;
	size_t answer_size;
	double seconds;
	size_t json_size;
	size_t gzip_size[10]; /* by level */
};

typedef void (*bench_fn)(struct bench *b);

static void make_records(struct bench *b);
static void free_records(struct bench *b);
static double cpu_seconds(void);
static double measure(struct bench *b, bench_fn fn);
static void run_encoder(struct bench *b);
static void run_encoder_gzip(struct bench *b);
static void run_jansson(struct bench *b);
static void run_zlib1(struct bench *b);
static void run_zlib6(struct bench *b);
static void run_parse(struct bench *b);
static void run_jansson_parse(struct bench *b);
static size_t zlib_size(const char *data, size_t size, int level);
static char *jansson_body(struct bench *b, size_t *ret_size);
static int cmp_double(const void *a, const void *b);

static char *json_body; /* the encoder's JSON, for the zlib runs */
static size_t json_body_size;

int
main(int argc, char **argv)
{
	static const struct option options[] = {
	        {"events", required_argument, NULL, 'n'},
	        {"seconds", required_argument, NULL, 's'},
	        {NULL, 0, NULL, 0},
	};
	struct bench b = {.n = COMMERCE_BATCH_MAX, .seconds = 1};
	struct commerce_options plain = {0};
	struct commerce_request req;
	double enc, jan, gz, z1, z6, parse, jparse;
	_cleanup_free_ char *jbody = NULL;
	size_t jsize = 0;
	int c;

	while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
		switch (c) {
		case 'n':
			b.n = strtoul(optarg, NULL, 10);
			break;
		case 's':
			b.seconds = strtod(optarg, NULL);
			break;
		default:
			fprintf(stderr, "usage: bench-commerce [--events N] [--seconds S]\n");
			return 2;
		}
	if (b.n == 0 || b.n > COMMERCE_BATCH_MAX || !(b.seconds > 0)) {
		fprintf(stderr, "bench-commerce: --events 1..%d, --seconds > 0\n",
		        COMMERCE_BATCH_MAX);
		return 2;
	}
	make_records(&b);

	/* both encoders must give the same JSON values before they are timed */
	if (commerce_request_build(&plain, BATCH_ID, b.records, b.n, &req) < 0)
		abort();
	jbody = jansson_body(&b, &jsize);
	{
		json_t *x = json_loadb(req.body, req.body_size, 0, NULL);
		json_t *y = json_loadb(jbody, jsize, 0, NULL);

		if (!x || !y || !json_equal(x, y)) {
			fprintf(stderr, "bench-commerce: the two encodings differ\n");
			return 1;
		}
		json_decref(x);
		json_decref(y);
	}
	json_body = req.body;
	json_body_size = req.body_size;
	b.json_size = req.body_size;
	for (int level = 1; level <= 9; level++)
		b.gzip_size[level] = zlib_size(json_body, json_body_size, level);

	enc = measure(&b, run_encoder);
	jan = measure(&b, run_jansson);
	gz = measure(&b, run_encoder_gzip);
	z1 = measure(&b, run_zlib1);
	z6 = measure(&b, run_zlib6);
	parse = measure(&b, run_parse);
	jparse = measure(&b, run_jansson_parse);

	printf("bench-commerce: %zu events per batch, %.0f bytes of JSON per event, "
	       "CPU time per event, median of %d runs of %.1f s\n",
	       b.n, (double)b.json_size / (double)b.n, RUNS, b.seconds);
	printf("  %-52s %7.3f us\n", "encode: commerce_request_build (no gzip)", enc);
	printf("  %-52s %7.3f us  (%.1f x the encoder)\n",
	       "encode: json_pack + json_dumps (jansson)", jan, jan / enc);
	printf("  %-52s %7.3f us  (ratio %.1f)\n", "encode + gzip: commerce_request_build (gzip)",
	       gz, (double)b.json_size / (double)b.gzip_size[COMMERCE_GZIP_LEVEL]);
	printf("  %-52s %7.3f us  (ratio %.1f)\n", "gzip level 1 alone (zlib)", z1,
	       (double)b.json_size / (double)b.gzip_size[1]);
	printf("  %-52s %7.3f us  (ratio %.1f)\n", "gzip level 6 alone (zlib)", z6,
	       (double)b.json_size / (double)b.gzip_size[6]);
	printf("  %-52s %7.3f us\n", "answer: commerce_parse_response (all Accepted)", parse);
	printf("  %-52s %7.3f us\n", "answer: json_loadb alone (jansson)", jparse);
	printf("  gzip ratio by level:");
	for (int level = 1; level <= 9; level++)
		printf(" %d:%.2f", level, (double)b.json_size / (double)b.gzip_size[level]);
	printf("\n");

	commerce_request_done(&req);
	free_records(&b);
	return 0;
}

/* Realistic records and the answer Commerce gives when it takes them all. */
static void
make_records(struct bench *b)
{
	static const char *const subs[] = {
	        "c79389af-8e0e-4a05-9b22-3b4a1b7d0e11", "5f2a7c11-3d4e-4b8a-9f60-0a1b2c3d4e5f",
	        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "0f1e2d3c-4b5a-4968-8776-655443322110"};
	static const char *const meters[] = {
	        "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5", "9764F92C-E44A-498E-8DC1-AAD66587A810",
	        "B4438D5D-453B-4EE1-B42A-DC72E377F1E4", "EBF13B9F-B3EA-46FE-BF54-396E93D48AB4"};
	json_t *result = json_array(), *answer;

	b->records = xcalloc(b->n, sizeof(*b->records));
	for (size_t i = 0; i < b->n; i++) {
		struct store_record *r = &b->records[i];
		char key[HASH_SHA256_HEX_LEN + 1];
		_cleanup_free_ char *seed = xasprintf("record %zu", i);

		hash_sha256_hex(seed, strlen(seed), key);
		r->id = (int64_t)i + 1;
		r->key = xstrdup(key);
		r->reported_hour = T_HOUR + 3600;
		r->usage_start = T_HOUR;
		r->usage_end = T_HOUR + 3600;
		r->subscription_id = xstrdup(subs[i % ARRAY_SIZE(subs)]);
		r->meter_id = xstrdup(meters[i % ARRAY_SIZE(meters)]);
		r->quantity = xasprintf("%zu.%010zu", i % 3, (i * 2654435761u) % 10000000000u);
		r->resource_uri = xasprintf("/subscriptions/%s/resourceGroups/rg-%zu/providers/"
		                            "Microsoft.Compute/virtualMachines/vm-%05zu",
		                            subs[i % ARRAY_SIZE(subs)], i % 17, i);
		r->location = xstrdup("local");
		r->tags = i % 3 == 0 ? xstrdup("{\"env\":\"prod\",\"owner\":\"team-17\"}") : NULL;
		r->additional_info = i % 2 == 0 ? xstrdup("{\"ServiceType\":\"Standard_D2_v2\","
		                                          "\"ImageType\":\"Windows_Server\"}")
		                                : NULL;
		r->tenant_id = i % 4 == 3 ? NULL : xstrdup("104edf09-1d6a-4c2b-a1f2-0f6f5d3c2b1a");
		r->charged_subscription =
		        xstrdup(i % 4 == 3 ? "dd8597b4-8739-4467-8b10-f8679f62bfbf"
		                           : "e09a4e93-29a7-4eba-a6d4-76202383f07f");
		r->charge_reason = xstrdup(i % 4 == 3 ? "default" : "registered");
		r->registration = xstrdup(REG_ID);
		json_array_append_new(result, json_pack("{s:s,s:s,s:s}", "usageEventId", key,
		                                        "status", "Accepted", "messageTime",
		                                        "2026-11-01T11:02:03.4567890Z"));
	}
	answer = json_pack("{s:i,s:o}", "count", (int)b->n, "result", result);
	b->answer = json_dumps(answer, JSON_COMPACT);
	b->answer_size = strlen(b->answer);
	json_decref(answer);
}

/* Free the records and the answer. */
static void
free_records(struct bench *b)
{
	for (size_t i = 0; i < b->n; i++) {
		struct store_record *r = &b->records[i];

		free(r->key);
		free(r->subscription_id);
		free(r->meter_id);
		free(r->quantity);
		free(r->resource_uri);
		free(r->location);
		free(r->tags);
		free(r->additional_info);
		free(r->tenant_id);
		free(r->charged_subscription);
		free(r->charge_reason);
		free(r->registration);
	}
	free(b->records);
	free(b->answer);
}

/* CPU time of this thread, in seconds. */
static double
cpu_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Microseconds per event of fn: the median of RUNS runs of about b->seconds each. */
static double
measure(struct bench *b, bench_fn fn)
{
	double per_event[RUNS];

	fn(b); /* warm up */
	for (int run = 0; run < RUNS; run++) {
		double start = cpu_seconds(), elapsed;
		uint64_t batches = 0;

		do {
			fn(b);
			batches++;
			elapsed = cpu_seconds() - start;
		} while (elapsed < b->seconds);
		per_event[run] = elapsed * 1e6 / (double)(batches * b->n);
	}
	qsort(per_event, RUNS, sizeof(double), cmp_double);
	return per_event[RUNS / 2];
}

/* One batch through the hand-written encoder. */
static void
run_encoder(struct bench *b)
{
	struct commerce_options o = {0};
	struct commerce_request req;

	if (commerce_request_build(&o, BATCH_ID, b->records, b->n, &req) < 0)
		abort();
	commerce_request_done(&req);
}

/* One batch through the encoder with gzip. */
static void
run_encoder_gzip(struct bench *b)
{
	struct commerce_options o = {.gzip = true};
	struct commerce_request req;

	if (commerce_request_build(&o, BATCH_ID, b->records, b->n, &req) < 0)
		abort();
	commerce_request_done(&req);
}

/* One batch the jansson way. */
static void
run_jansson(struct bench *b)
{
	size_t size;

	free(jansson_body(b, &size));
}

/* The encoder's JSON through zlib at level 1. */
static void
run_zlib1(struct bench *b)
{
	(void)b;
	zlib_size(json_body, json_body_size, 1);
}

/* The encoder's JSON through zlib at level 6. */
static void
run_zlib6(struct bench *b)
{
	(void)b;
	zlib_size(json_body, json_body_size, 6);
}

/* The answer through commerce_parse_response. */
static void
run_parse(struct bench *b)
{
	struct commerce_response resp;

	if (commerce_parse_response(b->records, b->n, 200, b->answer, b->answer_size, &resp) < 0 ||
	    resp.n_forwarded != b->n)
		abort();
	commerce_response_done(&resp);
}

/* The answer through jansson alone. */
static void
run_jansson_parse(struct bench *b)
{
	json_t *root = json_loadb(b->answer, b->answer_size, 0, NULL);

	if (!root)
		abort();
	json_decref(root);
}

/* Compress into a gzip member in one call, as the encoder does; returns the size. */
static size_t
zlib_size(const char *data, size_t size, int level)
{
	z_stream z = {0};
	size_t bound, out_size;
	unsigned char *out;

	if (deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		abort();
	bound = deflateBound(&z, (uLong)size);
	out = xmalloc(bound);
	z.next_in = (Bytef *)(uintptr_t)data;
	z.avail_in = (uInt)size;
	z.next_out = out;
	z.avail_out = (uInt)bound;
	if (deflate(&z, Z_FINISH) != Z_STREAM_END)
		abort();
	out_size = z.total_out;
	deflateEnd(&z);
	free(out);
	return out_size;
}

/* The batch body built with json_pack and json_dumps. */
static char *
jansson_body(struct bench *b, size_t *ret_size)
{
	json_t *list = json_array(), *root;
	char *text;

	for (size_t i = 0; i < b->n; i++) {
		const struct store_record *r = &b->records[i];
		char start[TIME_RFC3339_LEN + 1], end[TIME_RFC3339_LEN + 1];
		char hour[TIME_RFC3339_LEN + 1];
		json_t *tags = r->tags ? json_loads(r->tags, JSON_DECODE_ANY, NULL) : NULL;
		json_t *info = r->additional_info
		                       ? json_loads(r->additional_info, JSON_DECODE_ANY, NULL)
		                       : NULL;
		json_t *e = json_pack(
		        "{s:s,s:s,s:s,s:s?,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s?,s:s?,s:o?,s:o?}",
		        "usageEventId", r->key, "subscriptionId", r->charged_subscription,
		        "chargeReason", r->charge_reason, "tenantId", r->tenant_id,
		        "sourceSubscriptionId", r->subscription_id, "registration", r->registration,
		        "meterId", r->meter_id, "quantity", r->quantity, "usageStartTime",
		        time_format_rfc3339(r->usage_start, start), "usageEndTime",
		        time_format_rfc3339(r->usage_end, end), "reportedStartTime",
		        time_format_rfc3339(r->reported_hour, hour), "resourceUri", r->resource_uri,
		        "location", r->location, "tags", tags, "additionalInfo", info);

		if (!e)
			abort();
		json_array_append_new(list, e);
	}
	root = json_pack("{s:o}", "request", list);
	text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!text)
		abort();
	*ret_size = strlen(text);
	return text;
}

/* Order doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}
