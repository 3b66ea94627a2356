/*
 * bench-h6-store: how the store's size weighs on the daemon's start and on the loop's cheap
 * queries (issue 13: ready in under 1 s with 10,000,000 records stored). Two verbs:
 *
 *   bench-h6-store fill --path P --records N [--per-hour N] [--forwarded N] [--inflight N]
 *                       [--retry N]
 *       makes a store as a long Commerce outage leaves it: N records collected in pages of
 *       1,000 (about 700 bytes each with their raw text), the first --forwarded of them claimed
 *       and acknowledged in batches of 500, then --inflight records claimed and left inflight
 *       (the daemon was killed with batches on the wire), then --retry records claimed and put
 *       back to pending for a retry an hour later (Commerce refused them); the rest pending.
 *
 *   bench-h6-store open --path P [--cold]
 *       times what the daemon does with the store before READY=1 and what its loop asks at
 *       every scrape: store_open, store_reset_inflight, store_counts, store_oldest_pending,
 *       store_next_due, store_backlog; --cold first drops the file's pages from the page cache
 *       (posix_fadvise), as after a reboot. Prints milliseconds per call and the peak RSS.
 *
 * Not a test: scripts/bench (restart) and the notes of issue 13 use it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define H6_PAGE       1000
#define H6_BATCH      500
#define H6_FIRST_HOUR INT64_C(1793491200) /* 2026-11-01T00:00:00Z */
#define H6_CHARGED    "4f6a0d2e-81c3-4b57-9e2a-6d0c1b3a5f19"

/* One record's strings. */
struct h6_slot {
	char key[HASH_SHA256_HEX_LEN + 1];
	char subscription[40];
	char meter[40];
	char quantity[32];
	char resource_uri[200];
	char raw[700];
};

static double
h6_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Records first .. first + n - 1 of a page of one reported hour. */
static int64_t
h6_page_make(struct h6_slot *slots, struct store_record *records, uint64_t first, size_t n,
             uint64_t per_hour)
{
	int64_t hour = H6_FIRST_HOUR + (int64_t)(first / per_hour) * 3600;

	for (size_t i = 0; i < n; i++) {
		struct h6_slot *s = &slots[i];
		uint64_t k = first + i;
		char identity[96];
		int len;

		snprintf(s->subscription, sizeof(s->subscription),
		         "7d1e5a90-%04x-4c2b-8e3f-%012" PRIx64, (unsigned)(k % 300), k % 300);
		snprintf(s->meter, sizeof(s->meter), "6C0E9A14-2F7B-4D3A-B1C5-0E8F4A2D7B%02u",
		         (unsigned)(k % 24));
		snprintf(s->quantity, sizeof(s->quantity), "%" PRIu64 ".%08" PRIu64, k % 53,
		         (k * 104729) % 100000000u);
		snprintf(s->resource_uri, sizeof(s->resource_uri),
		         "/subscriptions/%s/resourceGroups/group-%u/providers/Microsoft.Compute/"
		         "virtualMachines/vm-%" PRIu64,
		         s->subscription, (unsigned)(k % 17), k % per_hour);
		len = snprintf(identity, sizeof(identity), "h6 record %" PRIu64, k);
		hash_sha256_hex(identity, (size_t)len, s->key);
		snprintf(s->raw, sizeof(s->raw),
		         "{\"id\":\"/subscriptions/%s/providers/Microsoft.Commerce/UsageAggregate/"
		         "%" PRIu64
		         "\",\"properties\":{\"subscriptionId\":\"%s\",\"meterId\":\"%s\","
		         "\"quantity\":%s,\"instanceData\":\"{\\\"Microsoft.Resources\\\":"
		         "{\\\"resourceUri\\\":\\\"%s\\\",\\\"location\\\":\\\"local\\\"}}\"}}",
		         s->subscription, k, s->subscription, s->meter, s->quantity,
		         s->resource_uri);
		records[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = s->key,
		        .reported_hour = hour,
		        .subscription_id = s->subscription,
		        .meter_id = s->meter,
		        .quantity = s->quantity,
		        .usage_start = hour - 3600,
		        .usage_end = hour,
		        .resource_uri = s->resource_uri,
		        .location = (char *)"local",
		        .raw = s->raw,
		};
	}
	return hour;
}

static int
h6_map(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	(void)userdata;
	(void)r;
	*ret = (struct store_charge){
	        .charged_subscription = H6_CHARGED,
	        .reason = "default",
	        .registration = "/subscriptions/" H6_CHARGED "/resourcegroups/azurestack/providers/"
	                        "microsoft.azurestack/registrations/azurestack-h6",
	};
	return 0;
}

enum h6_outcome {
	H6_ACK,
	H6_KEEP,
	H6_RETRY,
};

/* Claim batches of H6_BATCH until n records are claimed, each acknowledged, kept inflight or
 * given back for a retry. */
static int
h6_claim(struct store *s, uint64_t n, enum h6_outcome what, int64_t now)
{
	struct store_outcome *out = xcalloc(H6_BATCH, sizeof(*out));
	uint64_t done = 0;
	int r = 0;

	while (done < n) {
		struct store_claim c = {
		        .max_records = (size_t)MIN((uint64_t)H6_BATCH, n - done),
		        .now = now,
		        .map = h6_map,
		};
		struct store_batch batch = {0};
		size_t applied = 0;

		r = store_claim_batch(s, &c, &batch);
		if (r < 0) {
			fprintf(stderr, "bench-h6-store: claim: %s\n", store_errmsg(s));
			break;
		}
		if (batch.n_records == 0) {
			store_batch_done(&batch);
			break;
		}
		done += batch.n_records;
		if (what != H6_KEEP) {
			for (size_t i = 0; i < batch.n_records; i++)
				out[i] = (struct store_outcome){
				        .id = batch.records[i].id,
				        .kind = what == H6_ACK ? STORE_OUTCOME_FORWARDED
				                               : STORE_OUTCOME_RETRY,
				        .status = "Accepted",
				        .next_attempt_at = now + 3600,
				};
			r = store_apply_outcomes(s, batch.batch_id, out, batch.n_records, now,
			                         &applied);
		}
		store_batch_done(&batch);
		if (r < 0) {
			fprintf(stderr, "bench-h6-store: apply: %s\n", store_errmsg(s));
			break;
		}
	}
	free(out);
	return r;
}

static int
h6_fill(const char *path, uint64_t n, uint64_t per_hour, uint64_t forwarded, uint64_t inflight,
        uint64_t retry)
{
	struct store_options options = {.path = path};
	_cleanup_free_ char *error = NULL;
	struct h6_slot *slots = xcalloc(H6_PAGE, sizeof(*slots));
	struct store_record *records = xcalloc(H6_PAGE, sizeof(*records));
	struct store *s = NULL;
	int64_t now = now_seconds();
	double t0 = h6_seconds();
	int r;

	r = store_open(&options, &s, &error);
	if (r < 0) {
		fprintf(stderr, "bench-h6-store: open %s: %s\n", path, error ? error : "");
		goto out;
	}
	for (uint64_t first = 0; first < n; first += H6_PAGE) {
		size_t k = (size_t)MIN((uint64_t)H6_PAGE, n - first);
		struct store_page_result result = {0};
		struct store_page page = {
		        .scope = "",
		        .next_link = (first + k) % per_hour != 0 ? "next" : NULL,
		        .records = records,
		        .n_records = k,
		        .now = now,
		};

		page.reported_hour = h6_page_make(slots, records, first, k, per_hour);
		r = store_put_page(s, &page, &result);
		if (r < 0) {
			fprintf(stderr, "bench-h6-store: put: %s\n", store_errmsg(s));
			goto out;
		}
		if ((first / H6_PAGE) % 1000 == 999)
			fprintf(stderr, "  %" PRIu64 " records, %.0f s\n", first + k,
			        h6_seconds() - t0);
	}
	r = h6_claim(s, forwarded, H6_ACK, now);
	if (r >= 0)
		r = h6_claim(s, inflight, H6_KEEP, now);
	if (r >= 0)
		r = h6_claim(s, retry, H6_RETRY, now);
	if (r >= 0)
		printf("bench-h6-store: %s filled: %" PRIu64 " records in %.1f s\n", path, n,
		       h6_seconds() - t0);
out:
	store_free(s);
	free(slots);
	free(records);
	return r;
}

/* Drop a file's pages from the page cache. */
static void
h6_uncache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	(void)fdatasync(fd);
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

static int
h6_open(const char *path, bool cold)
{
	struct store_options options = {.path = path};
	_cleanup_free_ char *error = NULL;
	struct store *s = NULL;
	struct store_counts counts;
	struct rusage ru;
	size_t reset = 0;
	int64_t t = 0;
	uint64_t backlog = 0;
	double t0, t1, total;
	int r;

	if (cold) {
		_cleanup_free_ char *wal = xasprintf("%s-wal", path);

		h6_uncache(path);
		h6_uncache(wal);
	}
	t0 = h6_seconds();
	r = store_open(&options, &s, &error);
	t1 = h6_seconds();
	if (r < 0) {
		fprintf(stderr, "bench-h6-store: open %s: %s\n", path, error ? error : "");
		return r;
	}
	total = t1 - t0;
	printf("  %-22s %9.1f ms\n", "store_open", (t1 - t0) * 1e3);
#define H6_TIME(name, call)                                             \
	do {                                                            \
		double a = h6_seconds();                                \
		int q = (call);                                         \
		double b = h6_seconds();                                \
		total += b - a;                                         \
		printf("  %-22s %9.1f ms  (%s)\n", name, (b - a) * 1e3, \
		       q < 0 && q != -ENOENT ? store_errmsg(s)          \
		       : q == -ENOENT        ? "none"                   \
		                             : "ok");                          \
		if (q < 0 && q != -ENOENT)                              \
			r = q;                                          \
	} while (0)
	H6_TIME("store_reset_inflight", store_reset_inflight(s, &reset));
	H6_TIME("store_counts", store_counts(s, &counts));
	H6_TIME("store_oldest_pending", store_oldest_pending(s, &t));
	H6_TIME("store_next_due", store_next_due(s, &t));
	H6_TIME("store_backlog", store_backlog(s, &backlog));
	H6_TIME("store_oldest_pending", store_oldest_pending(s, &t));
#undef H6_TIME
	printf("  %zu reset from inflight; pending %" PRIu64 ", inflight %" PRIu64
	       ", forwarded %" PRIu64 "\n",
	       reset, counts.by_state[STORE_PENDING], counts.by_state[STORE_INFLIGHT],
	       counts.by_state[STORE_FORWARDED]);
	getrusage(RUSAGE_SELF, &ru);
	printf("  total %.1f ms, peak RSS %ld KiB\n", total * 1e3, ru.ru_maxrss);
	store_free(s);
	return r;
}

int
main(int argc, char **argv)
{
	const char *path = NULL;
	uint64_t n = 1000000, per_hour = 100000, forwarded = 0, inflight = 0, retry = 0;
	bool cold = false;

	if (argc < 2)
		goto usage;
	for (int i = 2; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (streq(argv[i], "--cold"))
			cold = true;
		else if (!v)
			goto usage;
		else if (streq(argv[i], "--path"))
			path = v, i++;
		else if (streq(argv[i], "--records"))
			n = strtoull(v, NULL, 10), i++;
		else if (streq(argv[i], "--per-hour"))
			per_hour = strtoull(v, NULL, 10), i++;
		else if (streq(argv[i], "--forwarded"))
			forwarded = strtoull(v, NULL, 10), i++;
		else if (streq(argv[i], "--inflight"))
			inflight = strtoull(v, NULL, 10), i++;
		else if (streq(argv[i], "--retry"))
			retry = strtoull(v, NULL, 10), i++;
		else
			goto usage;
	}
	if (!path || per_hour == 0)
		goto usage;
	if (streq(argv[1], "fill"))
		return h6_fill(path, n, per_hour, forwarded, inflight, retry) < 0;
	if (streq(argv[1], "open"))
		return h6_open(path, cold) < 0;
usage:
	fprintf(stderr, "usage: bench-h6-store fill|open --path P [--records N] [--per-hour N]"
	                " [--forwarded N] [--inflight N] [--retry N] [--cold]\n");
	return 2;
}
