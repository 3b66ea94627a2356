/*
 * bench-floor: the JSON floor of one record's life (ARCHITECTURE.md section 11), run by
 * `scripts/bench catchup` beside the daemon on the same usage pages.
 *
 * The pages are usage-API answers saved from the simulator (one file each). For every page,
 * timed:
 *   - parse: json_loadb() of the page as the daemon reads it (JSON_ALLOW_NUL), then per record
 *     the members the daemon takes (subscriptionId, meterId, usageStartTime and usageEndTime
 *     through time_parse_rfc3339, quantity, instanceData) and instanceData itself through
 *     json_loads(JSON_DECODE_ANY) with its Microsoft.Resources members (resourceUri, location,
 *     and tags and additionalInfo written compact with json_dumps, the form the store and the
 *     encoder take);
 *   - encode: the page's records as Commerce batches of --batch events through the daemon's own
 *     encoder, commerce_request_build(), with gzip unless --no-gzip (as [commerce] compress).
 * Nothing else the daemon does is here (record keys, validation, the store, TLS): this is the
 * cost that JSON alone puts on a record, which the daemon's CPU per record is compared with.
 * The quantity is written from jansson's number (the daemon keeps the literal of the page).
 *
 * The pages are read in turn, again and again, until --records records have been timed, in three
 * runs of a third each after one untimed pass; prints the median of the runs in microseconds of
 * CPU time per record, and one line "floor ..." of key=value figures for scripts.
 *
 *   bench-floor [--records N] [--batch N] [--no-gzip] PAGE-FILE...
 *
 * Built with the tests, never run as one.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "commerce.h"
#include "hash.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define RUNS     3
#define BATCH_ID "6f1c2b7a-4d3e-4f5a-8b9c-0d1e2f3a4b5c"
#define REG_ID                                                                                     \
	"/subscriptions/dd8597b4-8739-4467-8b10-f8679f62bfbf/resourcegroups/azurestack/providers/" \
	"microsoft.azurestack/registrations/benchregistration"
#define TENANT "104edf09-1d6a-4c2b-a1f2-0f6f5d3c2b1a"

struct file {
	char *data;
	size_t size;
};

/* One record's strings as the floor makes them: borrowed from the page's tree or owned. */
struct slot {
	char key[HASH_SHA256_HEX_LEN + 1];
	char quantity[40];
	char *tags;            /* owned (json_dumps) */
	char *additional_info; /* owned (json_dumps) */
	json_t *instance;      /* the parsed instanceData, kept while the batch is encoded */
};

struct floor {
	struct file *files;
	size_t n_files;
	size_t batch;
	bool gzip;
	struct store_record *records; /* COMMERCE_BATCH_MAX per page chunk, reused */
	struct slot *slots;
	size_t capacity;
	uint64_t counter; /* for the usageEventIds */
	double parse_s, encode_s;
	uint64_t bytes_sent;
};

static double cpu_seconds(void);
static int read_file(const char *path, struct file *ret);
static int floor_page(struct floor *f, const struct file *page, uint64_t *ret_records);
static int cmp_double(const void *a, const void *b);

int
main(int argc, char **argv)
{
	static const struct option options[] = {
	        {"records", required_argument, NULL, 'n'},
	        {"batch", required_argument, NULL, 'b'},
	        {"no-gzip", no_argument, NULL, 'z'},
	        {NULL, 0, NULL, 0},
	};
	struct floor f = {.batch = COMMERCE_BATCH_MAX, .gzip = true};
	uint64_t want = 200000, total = 0;
	double per[RUNS], parse[RUNS], encode[RUNS];
	int c;

	while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
		switch (c) {
		case 'n':
			want = strtoull(optarg, NULL, 10);
			break;
		case 'b':
			f.batch = strtoul(optarg, NULL, 10);
			break;
		case 'z':
			f.gzip = false;
			break;
		default:
			fprintf(stderr, "usage: bench-floor [--records N] [--batch N] [--no-gzip] "
			                "PAGE-FILE...\n");
			return 2;
		}
	if (optind >= argc || want < RUNS || f.batch == 0 || f.batch > COMMERCE_BATCH_MAX) {
		fprintf(stderr, "bench-floor: page files, --records >= %d, --batch 1..%d\n", RUNS,
		        COMMERCE_BATCH_MAX);
		return 2;
	}
	f.n_files = (size_t)(argc - optind);
	f.files = xcalloc(f.n_files, sizeof(*f.files));
	for (size_t i = 0; i < f.n_files; i++)
		if (read_file(argv[optind + (int)i], &f.files[i]) < 0)
			return 1;

	/* one untimed pass: the page files in the cache, the allocator warm, the pages checked */
	for (size_t i = 0; i < f.n_files; i++) {
		uint64_t n = 0;

		if (floor_page(&f, &f.files[i], &n) < 0)
			return 1;
		total += n;
	}
	if (total == 0) {
		fprintf(stderr, "bench-floor: the pages hold no records\n");
		return 1;
	}

	for (int run = 0; run < RUNS; run++) {
		uint64_t done = 0;
		size_t i = 0;

		f.parse_s = f.encode_s = 0;
		while (done < want / RUNS) {
			uint64_t n = 0;

			if (floor_page(&f, &f.files[i], &n) < 0)
				return 1;
			done += n;
			i = (i + 1) % f.n_files;
		}
		parse[run] = f.parse_s * 1e6 / (double)done;
		encode[run] = f.encode_s * 1e6 / (double)done;
		per[run] = parse[run] + encode[run];
	}
	qsort(per, RUNS, sizeof(double), cmp_double);
	qsort(parse, RUNS, sizeof(double), cmp_double);
	qsort(encode, RUNS, sizeof(double), cmp_double);

	printf("bench-floor: %zu page files, %" PRIu64 " records in them; %" PRIu64
	       " records timed in %d runs; Commerce batches of %zu, %s\n",
	       f.n_files, total, want / RUNS * RUNS, RUNS, f.batch, f.gzip ? "gzip" : "no gzip");
	printf("  parse (jansson: page, members, instanceData)   %7.3f us per record\n",
	       parse[RUNS / 2]);
	printf("  encode (commerce_request_build%s)          %7.3f us per record\n",
	       f.gzip ? " + gzip" : "       ", encode[RUNS / 2]);
	printf("  floor                                          %7.3f us per record (median of "
	       "%d runs: %.3f..%.3f)\n",
	       per[RUNS / 2], RUNS, per[0], per[RUNS - 1]);
	printf("floor us_per_record=%.3f parse_us=%.3f encode_us=%.3f records=%" PRIu64
	       " page_records=%" PRIu64 "\n",
	       per[RUNS / 2], parse[RUNS / 2], encode[RUNS / 2], want / RUNS * RUNS, total);

	for (size_t i = 0; i < f.n_files; i++)
		free(f.files[i].data);
	free(f.files);
	free(f.records);
	free(f.slots);
	return 0;
}

/* CPU time of this process (one thread), in seconds. */
static double
cpu_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Read a whole file. */
static int
read_file(const char *path, struct file *ret)
{
	_cleanup_fclose_ FILE *fp = fopen(path, "rb");
	size_t cap = 1 << 20, n = 0;
	char *data;

	if (!fp) {
		fprintf(stderr, "bench-floor: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	data = xmalloc(cap);
	for (;;) {
		size_t got = fread(data + n, 1, cap - n, fp);

		n += got;
		if (n < cap)
			break;
		cap *= 2;
		data = xrealloc(data, cap);
	}
	if (ferror(fp)) {
		fprintf(stderr, "bench-floor: %s: read error\n", path);
		free(data);
		return -EIO;
	}
	ret->data = data;
	ret->size = n;
	return 0;
}

/* A string member, or NULL. */
static const char *
member(json_t *obj, const char *name)
{
	return json_string_value(json_object_get(obj, name));
}

/* A JSON value written compact, or NULL for an absent or null value. */
static char *
compact(json_t *v)
{
	if (!v || json_is_null(v))
		return NULL;
	return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Encode records [0, n) in batches of f->batch. */
static int
encode(struct floor *f, size_t n)
{
	struct commerce_options o = {.registration = REG_ID, .gzip = f->gzip};

	for (size_t at = 0; at < n; at += f->batch) {
		struct commerce_request req;
		int r;

		r = commerce_request_build(&o, BATCH_ID, f->records + at, MIN(f->batch, n - at),
		                           &req);
		if (r < 0) {
			fprintf(stderr, "bench-floor: commerce_request_build: %s\n", strerror(-r));
			return r;
		}
		f->bytes_sent += req.body_size;
		commerce_request_done(&req);
	}
	return 0;
}

/* Parse one page and encode its records; the records of the page in *ret_records. */
static int
floor_page(struct floor *f, const struct file *page, uint64_t *ret_records)
{
	double t0, t1, t2, t3;
	json_error_t err;
	json_t *root, *value;
	size_t n;
	int r = 0;

	t0 = cpu_seconds();
	root = json_loadb(page->data, page->size, JSON_ALLOW_NUL, &err);
	value = json_object_get(root, "value");
	if (!json_is_array(value)) {
		fprintf(stderr, "bench-floor: not a usage page (%s)\n", err.text);
		json_decref(root);
		return -EBADMSG;
	}
	n = json_array_size(value);
	if (n > f->capacity) {
		f->records = xreallocarray(f->records, n, sizeof(*f->records));
		f->slots = xreallocarray(f->slots, n, sizeof(*f->slots));
		f->capacity = n;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *props = json_object_get(json_array_get(value, i), "properties");
		struct store_record *rec = &f->records[i];
		struct slot *s = &f->slots[i];
		const char *inst_text = member(props, "instanceData");
		json_t *q = json_object_get(props, "quantity"), *res;

		*s = (struct slot){0};
		*rec = (struct store_record){0};
		if (!inst_text) {
			fprintf(stderr, "bench-floor: record %zu has no instanceData\n", i + 1);
			r = -EBADMSG;
			n = i;
			break;
		}
		s->instance = json_loads(inst_text, JSON_DECODE_ANY, &err);
		res = json_object_get(s->instance, "Microsoft.Resources");
		rec->subscription_id = (char *)member(props, "subscriptionId");
		rec->meter_id = (char *)member(props, "meterId");
		if (time_parse_rfc3339(member(props, "usageStartTime"), &rec->usage_start) < 0 ||
		    time_parse_rfc3339(member(props, "usageEndTime"), &rec->usage_end) < 0 ||
		    !rec->subscription_id || !rec->meter_id || !json_is_number(q) ||
		    !json_is_object(res)) {
			fprintf(stderr, "bench-floor: record %zu lacks a member the daemon needs\n",
			        i + 1);
			json_decref(s->instance);
			r = -EBADMSG;
			n = i;
			break;
		}
		if (json_is_integer(q))
			snprintf(s->quantity, sizeof(s->quantity), "%" JSON_INTEGER_FORMAT,
			         json_integer_value(q));
		else
			snprintf(s->quantity, sizeof(s->quantity), "%.17g", json_real_value(q));
		rec->quantity = s->quantity;
		rec->resource_uri = (char *)member(res, "resourceUri");
		rec->location = (char *)member(res, "location");
		rec->tags = s->tags = compact(json_object_get(res, "tags"));
		rec->additional_info = s->additional_info =
		        compact(json_object_get(res, "additionalInfo"));
	}
	t1 = cpu_seconds();

	/* what the mapping freezes on a record, outside the timing of either side */
	for (size_t i = 0; i < n; i++) {
		struct store_record *rec = &f->records[i];

		snprintf(f->slots[i].key, sizeof(f->slots[i].key), "%064" PRIx64, ++f->counter);
		rec->key = f->slots[i].key;
		rec->reported_hour = rec->usage_end;
		rec->charged_subscription = rec->subscription_id;
		rec->charge_reason = (char *)"registered";
		rec->tenant_id = (char *)TENANT;
		rec->registration = (char *)REG_ID;
	}

	t2 = cpu_seconds();
	if (r == 0 && n > 0)
		r = encode(f, n);
	t3 = cpu_seconds();
	for (size_t i = 0; i < n; i++) {
		free(f->slots[i].tags);
		free(f->slots[i].additional_info);
		json_decref(f->slots[i].instance);
	}
	json_decref(root);
	f->parse_s += (t1 - t0) + (cpu_seconds() - t3); /* freeing the trees is parsing's */
	f->encode_s += t3 - t2;
	*ret_records = n;
	return r;
}

/* Order doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}
