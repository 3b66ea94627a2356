/*
 * store-torture: drives the store the way the daemon does, for the Python tests in this folder.
 *
 *   store-torture run DB [--records R] [--raw-bytes B] [--pages N]
 *       Loop: put page n (R records derived from n, plus the first two records of page n - 1
 *       again, which must come back as duplicates) with the hour's next_link set to "page-<n+1>",
 *       claim a batch, apply outcomes (forwarded, dead, retry). Prints "page <n> committed"
 *       (flushed) after each store_put_page returned. Resumes from the saved next_link, so it
 *       can be killed at any moment and started again on the same file. Stops after page N - 1.
 *   store-torture fill DB [--records R] [--raw-bytes B]
 *       Put pages until the store says -ENOSPC, print "enospc page <n>", wait for a line on
 *       stdin, put the same page again and print "page <n> committed" (exit 0) or fail (exit 1).
 *   store-torture verify DB [--records R] [--raw-bytes B]
 *       Open the store, run store_quick_check() on the whole file and check: every page before
 *       the cursor is complete, each of its records with its raw text, no page at or after it
 *       has a record, the per-state counters equal a count by state, no key is stored twice.
 *       Prints "cursor <K> records <N>" and exits 0, or "FAIL: ..." and 1. It opens the store
 *       as the daemon does (read-write), so closing it checkpoints the WAL away: the crash
 *       test verifies a copy and leaves the killed program's WAL for the next run, as after a
 *       real crash.
 *   --checkpoint-pages P (any mode): checkpoint the WAL every P pages instead of the store's
 *       default, so that a kill can land inside a checkpoint.
 *   Run mode prints "started <us>" once it is ready to put its first page (microseconds since
 *   main began: open and its check, schema creation or migration, resetting inflight records)
 *   and "finished <us>" when it stops by itself. For the crash test it can kill itself with
 *   SIGKILL, so that a kill is placed by the program's progress, not by the test's clock:
 *   --kill-after-us D      D microseconds after main began (a kill during start-up, if D is
 *                          shorter than the start-up);
 *   --kill-after-page N    once this process has committed N pages (N >= 1), then after
 *   --kill-delay-us D      a further D microseconds (0: at once) of putting and forwarding.
 *       It prints "armed after page <n> <us>" when the second kind is armed.
 *   store-torture seed DB
 *       Build a small store for the azs-usagectl tests: two reported hours, three
 *       subscriptions, forwarded, dead, pending, quarantined and conflict records. Prints a
 *       JSON manifest of what it decided for each record (the tests' expectations).
 *   store-torture seed-extra DB
 *       On a seeded store: a second open conflict of the record that has one (quantity 0.5),
 *       and a forwarded record whose meter id a spreadsheet would run as a formula. Prints
 *       {"conflictKey":..., "formulaMeter":...}.
 *   store-torture seed-registry DB
 *       Build a store for the registry verbs of azs-usagectl (lookup, tenants): a tenant
 *       cache (a registered tenant with a listed and a gone subscription, an unregistered
 *       tenant, a delegated provider's tenant) and usage records of those subscriptions and of
 *       one the cache does not know. No registration: the tests fetch it from azs-sim. Prints a
 *       JSON manifest with the ids and every record's subscription, meter and quantity.
 *   store-torture history DB KEY [STATE]
 *       Print the history of the record with this key (prefix): "actor<TAB>action<TAB>detail".
 *   store-torture hours DB
 *       Print every scheduled hour: "<hour> <scope> <pass> <next_link or ->".
 *   store-torture batch DB [--records R] [--forwarded-at T]
 *       Put the next page (R new records) and claim all of them as one batch, which stays
 *       inflight, or with --forwarded-at is acknowledged as forwarded at time T (seconds since
 *       the epoch). Prints "batch <id> <n>". For the daemon's start-up and pruning tests.
 *
 * Exit status: 0 success, 1 a check or store call failed, 2 usage, 3 a write failed with -ENOSPC
 * in run mode.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <jansson.h>

#include "hash.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define TORTURE_HOUR        INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define TORTURE_DUPLICATES  2
#define TORTURE_BATCH       25
#define TORTURE_DEFAULT_SUB "11111111-1111-1111-1111-111111111111"
#define TORTURE_REGISTRATION                                                          \
	"/subscriptions/" TORTURE_DEFAULT_SUB "/resourcegroups/azurestack/providers/" \
	"microsoft.azurestack/registrations/azurestack-torture"

struct torture_options {
	unsigned records;
	size_t raw_bytes;
	long pages;           /* -1: no end */
	int64_t forwarded_at; /* batch mode: 0 leaves the batch inflight */
	long kill_after_us;   /* run mode: -1 none */
	long kill_after_page; /* run mode: pages this process commits before arming; -1 none */
	long kill_delay_us;   /* run mode: after kill_after_page */
};

/* One key we saw while scanning, with its state. */
struct torture_seen {
	char key[HASH_SHA256_HEX_LEN + 1];
	char info_hash[HASH_SHA256_HEX_LEN + 1]; /* of additionalInfo, "" when it has none */
	int state;
};

/* --checkpoint-pages: handed to every store_open of this process */
static unsigned torture_checkpoint_pages;

/* when main began, for "started", "finished" and --kill-after-us */
static uint64_t torture_started_us;

struct torture_scan {
	struct torture_seen *seen;
	size_t n;
	size_t allocated;
	uint64_t by_state[_STORE_STATE_MAX];
};

static int torture_open(const char *path, bool readonly, struct store **ret);
static void torture_kill_now(int signo);
static void torture_kill_arm(long usec);
static uint64_t torture_elapsed_us(void);
static void torture_record(unsigned page, unsigned i, size_t raw_bytes, struct store_record *r);
static void torture_page_records(unsigned page, const struct torture_options *o,
                                 struct store_record **ret, size_t *ret_n);
static void torture_records_free(struct store_record *r, size_t n);
static int torture_cursor(struct store *s, long *ret);
static int torture_put(struct store *s, unsigned page, const struct torture_options *o);
static int torture_forward(struct store *s);
static int torture_map(void *userdata, const struct store_record *r, struct store_charge *ret);
static int torture_scan_row(void *userdata, const struct store_record *r);
static int torture_seen_cmp(const void *a, const void *b);
static int cmd_run(const char *path, const struct torture_options *o);
static int cmd_fill(const char *path, const struct torture_options *o);
static int cmd_verify(const char *path, const struct torture_options *o);
static int cmd_seed(const char *path);
static int cmd_seed_extra(const char *path);
static int cmd_seed_registry(const char *path);
static int cmd_history(const char *path, const char *key, const char *state);
static int cmd_hours(const char *path);
static int cmd_batch(const char *path, const struct torture_options *o);

/* Dispatch on the mode word. */
int
main(int argc, char **argv)
{
	struct torture_options o = {.records = 10,
	                            .raw_bytes = 600,
	                            .pages = -1,
	                            .kill_after_us = -1,
	                            .kill_after_page = -1};
	int i;

	torture_started_us = now_monotonic_usec();

	if (argc < 3) {
		fprintf(stderr,
		        "usage: store-torture "
		        "run|fill|verify|seed|seed-extra|seed-registry|history|hours|batch DB ...\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 3; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		if (streq(argv[i], "--records"))
			o.records = (unsigned)strtoul(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--raw-bytes"))
			o.raw_bytes = strtoul(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--checkpoint-pages"))
			torture_checkpoint_pages = (unsigned)strtoul(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--pages"))
			o.pages = strtol(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--forwarded-at"))
			o.forwarded_at = strtoll(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--kill-after-us"))
			o.kill_after_us = strtol(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--kill-after-page"))
			o.kill_after_page = strtol(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--kill-delay-us"))
			o.kill_delay_us = strtol(argv[i + 1], NULL, 10);
		else
			break;
	}
	if (o.kill_after_page == 0 || o.kill_delay_us < 0) {
		fprintf(stderr,
		        "--kill-after-page must be at least 1, --kill-delay-us at least 0\n");
		return 2;
	}
	if (o.records < TORTURE_DUPLICATES) {
		fprintf(stderr, "--records must be at least %d\n", TORTURE_DUPLICATES);
		return 2;
	}

	if (streq(argv[1], "run"))
		return cmd_run(argv[2], &o);
	if (streq(argv[1], "fill"))
		return cmd_fill(argv[2], &o);
	if (streq(argv[1], "verify"))
		return cmd_verify(argv[2], &o);
	if (streq(argv[1], "seed"))
		return cmd_seed(argv[2]);
	if (streq(argv[1], "seed-extra"))
		return cmd_seed_extra(argv[2]);
	if (streq(argv[1], "seed-registry"))
		return cmd_seed_registry(argv[2]);
	if (streq(argv[1], "history") && argc >= 4)
		return cmd_history(argv[2], argv[3], argc >= 5 ? argv[4] : NULL);
	if (streq(argv[1], "hours"))
		return cmd_hours(argv[2]);
	if (streq(argv[1], "batch"))
		return cmd_batch(argv[2], &o);
	fprintf(stderr, "store-torture: unknown mode %s\n", argv[1]);
	return 2;
}

/* Open the store, saying why not on failure. */
static int
torture_open(const char *path, bool readonly, struct store **ret)
{
	struct store_options options = {
	        .path = path, .readonly = readonly, .checkpoint_pages = torture_checkpoint_pages};
	_cleanup_free_ char *error = NULL;
	int r;

	r = store_open(&options, ret, &error);
	if (r < 0)
		printf("FAIL: open %s: %s: %s\n", path, strerror(-r), error ? error : "");
	return r;
}

/* SIGALRM handler: die as a crash would, at whatever the program was doing. */
static void
torture_kill_now(int signo)
{
	(void)signo;
	raise(SIGKILL);
}

/* Kill this process with SIGKILL after usec microseconds (0: now). */
static void
torture_kill_arm(long usec)
{
	struct itimerval when = {.it_value = {.tv_sec = usec / 1000000, .tv_usec = usec % 1000000}};
	struct sigaction sa = {.sa_handler = torture_kill_now};

	if (usec <= 0)
		raise(SIGKILL);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) < 0 || setitimer(ITIMER_REAL, &when, NULL) < 0) {
		printf("FAIL: arming the kill: %s\n", strerror(errno));
		exit(1);
	}
}

/* Microseconds since main began. */
static uint64_t
torture_elapsed_us(void)
{
	return now_monotonic_usec() - torture_started_us;
}

/* Record i of a page: everything derived from (page, i), so any process can recompute it. */
static void
torture_record(unsigned page, unsigned i, size_t raw_bytes, struct store_record *r)
{
	_cleanup_free_ char *identity = xasprintf("torture\n%u\n%u", page, i);
	char key[HASH_SHA256_HEX_LEN + 1];

	hash_sha256_hex(identity, strlen(identity), key);
	*r = (struct store_record){
	        .state = STORE_PENDING,
	        .key = xstrdup(key),
	        .reported_hour = TORTURE_HOUR,
	        .subscription_id = xasprintf("00000000-0000-4000-8000-%012u", i % 3),
	        .meter_id = xasprintf("FAB6EB84-500B-4A09-A8CA-7358F8BBAE%02u", i % 4),
	        .quantity = xasprintf("%u.%04u", (page * 7 + i) % 1000, (page * 131 + i) % 10000),
	        .usage_start = TORTURE_HOUR - 3600,
	        .usage_end = TORTURE_HOUR,
	        .resource_uri =
	                xasprintf("/subscriptions/00000000-0000-4000-8000-%012u/resourcegroups/"
	                          "rg/providers/microsoft.compute/virtualmachines/vm-%u-%u",
	                          i % 3, page, i),
	        .location = xstrdup("local"),
	};
	/* raw text of about raw_bytes: a record as the stamp sends it, padded */
	{
		_cleanup_free_ char *base =
		        xasprintf("{\"id\":\"%s\",\"quantity\":%s,\"meterId\":\"%s\"}",
		                  r->resource_uri, r->quantity, r->meter_id);
		size_t len = strlen(base);
		int pad = raw_bytes > len + 10 ? (int)MIN(raw_bytes - len - 10, 65536) : 0;

		r->raw = xasprintf("%.*s,\"pad\":\"%*s\"}", (int)len - 1, base, pad, "");
		/* the store keeps no raw text of a usage record: the row's own bulk is here */
		r->additional_info = xasprintf("{\"pad\":\"%*s\"}", pad, "");
	}
}

/* The records of a page: its own, then the first two of the page before (duplicates). */
static void
torture_page_records(unsigned page, const struct torture_options *o, struct store_record **ret,
                     size_t *ret_n)
{
	size_t n = o->records + (page > 0 ? TORTURE_DUPLICATES : 0);
	struct store_record *r = xcalloc(n, sizeof(*r));

	for (unsigned i = 0; i < o->records; i++)
		torture_record(page, i, o->raw_bytes, &r[i]);
	for (unsigned i = 0; page > 0 && i < TORTURE_DUPLICATES; i++)
		torture_record(page - 1, i, o->raw_bytes, &r[o->records + i]);
	*ret = r;
	*ret_n = n;
}

/* Free records made by torture_page_records. */
static void
torture_records_free(struct store_record *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_record_done(&r[i]);
	free(r);
}

/* The next page to put: from the hour's next_link "page-<n>"; 0 when none; -ENOENT: no hour. */
static int
torture_cursor(struct store *s, long *ret)
{
	struct store_hour *hours = NULL;
	size_t n = 0;
	int r;

	r = store_hours_due(s, INT64_MAX / 2, 64, &hours, &n);
	if (r < 0)
		return r;
	r = -ENOENT;
	for (size_t i = 0; i < n; i++) {
		if (hours[i].hour == TORTURE_HOUR && isempty(hours[i].scope)) {
			*ret = hours[i].next_link
			               ? strtol(hours[i].next_link + strlen("page-"), NULL, 10)
			               : 0;
			r = 0;
		}
		store_hour_done(&hours[i]);
	}
	free(hours);
	return r;
}

/* Put one page with the cursor that follows it; checks the store's counts of the page. */
static int
torture_put(struct store *s, unsigned page, const struct torture_options *o)
{
	_cleanup_free_ char *next = xasprintf("page-%u", page + 1);
	struct store_page_result result = {0};
	struct store_record *records = NULL;
	size_t n = 0;
	int r;

	torture_page_records(page, o, &records, &n);
	struct store_page p = {
	        .reported_hour = TORTURE_HOUR,
	        .scope = "",
	        .pass = 0,
	        .next_link = next,
	        .records = records,
	        .n_records = n,
	        .now = now_seconds(),
	};
	r = store_put_page(s, &p, &result);
	torture_records_free(records, n);
	if (r < 0)
		return r;
	if (result.inserted != o->records ||
	    result.duplicates != (page > 0 ? TORTURE_DUPLICATES : 0) || result.conflicts != 0) {
		printf("FAIL: page %u: inserted %zu duplicates %zu conflicts %zu\n", page,
		       result.inserted, result.duplicates, result.conflicts);
		return -EBADMSG;
	}
	return 0;
}

/* Claim one batch and apply outcomes: about 1 in 8 dead, 1 in 8 retried once, the rest forwarded.
 */
static int
torture_forward(struct store *s)
{
	struct store_claim claim = {
	        .max_records = TORTURE_BATCH,
	        .max_bytes = 4 * 1024 * 1024,
	        .now = now_seconds(),
	        .map = torture_map,
	};
	struct store_batch batch = {0};
	struct store_outcome *out;
	size_t applied = 0;
	int r;

	r = store_claim_batch(s, &claim, &batch);
	if (r < 0)
		return r;
	if (batch.n_records == 0) {
		store_batch_done(&batch);
		return 0;
	}
	out = xcalloc(batch.n_records, sizeof(*out));
	for (size_t i = 0; i < batch.n_records; i++) {
		const struct store_record *rec = &batch.records[i];

		out[i].id = rec->id;
		if (rec->key[0] == '0' || rec->key[0] == '1') {
			out[i].kind = STORE_OUTCOME_DEAD;
			out[i].error_code = "InvalidQuantity";
			out[i].error_message = "torture: refused";
		} else if ((rec->key[0] == '2' || rec->key[0] == '3') && rec->attempts == 0) {
			out[i].kind = STORE_OUTCOME_RETRY;
			out[i].next_attempt_at = claim.now;
		} else {
			out[i].kind = STORE_OUTCOME_FORWARDED;
			out[i].status = "Accepted";
		}
	}
	r = store_apply_outcomes(s, batch.batch_id, out, batch.n_records, claim.now, &applied);
	if (r >= 0 && applied != batch.n_records) {
		printf("FAIL: batch %s: %zu of %zu outcomes applied\n", batch.batch_id, applied,
		       batch.n_records);
		r = -EBADMSG;
	}
	free(out);
	store_batch_done(&batch);
	return r;
}

/* Charge everything to one default subscription. */
static int
torture_map(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	(void)userdata;
	(void)r;
	*ret = (struct store_charge){
	        .charged_subscription = TORTURE_DEFAULT_SUB,
	        .tenant_id = NULL,
	        .reason = "default",
	        .registration = TORTURE_REGISTRATION,
	};
	return 0;
}

/* Put pages and forward until told to stop (or killed). */
static int
cmd_run(const char *path, const struct torture_options *o)
{
	struct store *s = NULL;
	long page = 0, committed = 0;
	size_t reset = 0;
	int r;

	if (o->kill_after_us >= 0)
		torture_kill_arm(o->kill_after_us);
	r = torture_open(path, false, &s);
	if (r < 0)
		return 1;
	r = store_reset_inflight(s, &reset);
	if (r >= 0)
		r = torture_cursor(s, &page);
	if (r == -ENOENT)
		r = store_hour_schedule(s, TORTURE_HOUR, "", TORTURE_HOUR + 3600);
	if (r < 0)
		goto fail;
	printf("started %" PRIu64 "\n", torture_elapsed_us());
	fflush(stdout);
	for (; o->pages < 0 || page < o->pages; page++) {
		r = torture_put(s, (unsigned)page, o);
		if (r < 0)
			goto fail;
		printf("page %ld committed\n", page);
		fflush(stdout);
		if (++committed == o->kill_after_page) {
			printf("armed after page %ld %" PRIu64 "\n", page, torture_elapsed_us());
			fflush(stdout);
			torture_kill_arm(o->kill_delay_us);
		}
		r = torture_forward(s);
		if (r < 0)
			goto fail;
	}
	printf("finished %" PRIu64 "\n", torture_elapsed_us());
	store_free(s);
	return 0;
fail:
	printf("%s page %ld: %s: %s\n", r == -ENOSPC ? "enospc" : "FAIL:", page, strerror(-r),
	       store_errmsg(s));
	store_free(s);
	return r == -ENOSPC ? 3 : 1;
}

/* Fill the store until -ENOSPC, then wait for space and put the same page again. */
static int
cmd_fill(const char *path, const struct torture_options *o)
{
	struct store *s = NULL;
	long page = 0;
	char line[64];
	int r;

	r = torture_open(path, false, &s);
	if (r < 0)
		return 1;
	r = torture_cursor(s, &page);
	if (r == -ENOENT)
		r = store_hour_schedule(s, TORTURE_HOUR, "", TORTURE_HOUR + 3600);
	if (r < 0) {
		printf("FAIL: setup: %s: %s\n", strerror(-r), store_errmsg(s));
		store_free(s);
		return r == -ENOSPC ? 3 : 1;
	}
	for (;; page++) {
		r = torture_put(s, (unsigned)page, o);
		if (r < 0)
			break;
		printf("page %ld committed\n", page);
	}
	if (r != -ENOSPC) {
		printf("FAIL: page %ld: %s: %s\n", page, strerror(-r), store_errmsg(s));
		store_free(s);
		return 1;
	}
	printf("enospc page %ld\n", page);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin)) {
		store_free(s);
		return 3;
	}
	r = torture_put(s, (unsigned)page, o);
	if (r < 0) {
		printf("FAIL: page %ld again: %s: %s\n", page, strerror(-r), store_errmsg(s));
		store_free(s);
		return 1;
	}
	printf("page %ld committed\n", page);
	store_free(s);
	return 0;
}

/* Check the store after a crash (see the file comment). */
static int
cmd_verify(const char *path, const struct torture_options *o)
{
	struct torture_scan scan = {0};
	struct store_query q = {.state = -1};
	struct store_counts counts = {0};
	struct store *s = NULL;
	long cursor = 0;
	uint64_t total = 0;
	unsigned failures = 0;
	int r;

	r = torture_open(path, false, &s);
	if (r < 0)
		return 1;
	/* the open checks only what is bounded (the schema, the small tables, the records' edges):
	 * the whole file here */
	r = store_quick_check(s);
	if (r < 0) {
		printf("FAIL: quick_check: %s\n", store_errmsg(s));
		store_free(s);
		return 1;
	}
	r = torture_cursor(s, &cursor);
	if (r == -ENOENT) {
		cursor = 0;
		r = 0;
	}
	if (r >= 0)
		r = store_counts(s, &counts);
	if (r >= 0)
		r = store_records_query(s, &q, torture_scan_row, &scan);
	if (r < 0) {
		printf("FAIL: reading: %s: %s\n", strerror(-r), store_errmsg(s));
		store_free(s);
		free(scan.seen);
		return 1;
	}

	for (int st = 0; st < _STORE_STATE_MAX; st++) {
		total += scan.by_state[st];
		if (counts.by_state[st] != scan.by_state[st]) {
			printf("FAIL: counter %s = %" PRIu64 ", records in that state %" PRIu64
			       "\n",
			       store_state_to_string((enum store_state)st), counts.by_state[st],
			       scan.by_state[st]);
			failures++;
		}
	}
	if (total != (uint64_t)cursor * o->records) {
		printf("FAIL: %" PRIu64 " records, cursor at page %ld means %" PRIu64 "\n", total,
		       cursor, (uint64_t)cursor * o->records);
		failures++;
	}
	if (scan.n > 0)
		qsort(scan.seen, scan.n, sizeof(*scan.seen), torture_seen_cmp);
	for (size_t i = 1; i < scan.n; i++)
		if (streq(scan.seen[i].key, scan.seen[i - 1].key)) {
			printf("FAIL: key %s stored twice (%s and %s)\n", scan.seen[i].key,
			       store_state_to_string(scan.seen[i - 1].state),
			       store_state_to_string(scan.seen[i].state));
			failures++;
		}

	/* pages before the cursor complete, the next pages absent */
	for (long page = 0; page < cursor + 3; page++) {
		unsigned present = 0;

		for (unsigned i = 0; i < o->records; i++) {
			struct store_record rec = {0};
			struct torture_seen key, *found = NULL;
			char want[HASH_SHA256_HEX_LEN + 1];

			memset(&key, 0, sizeof(key));
			torture_record((unsigned)page, i, o->raw_bytes, &rec);
			memcpy(key.key, rec.key, sizeof(key.key));
			hash_sha256_hex(rec.additional_info, strlen(rec.additional_info), want);
			store_record_done(&rec);
			if (scan.n > 0)
				found = bsearch(&key, scan.seen, scan.n, sizeof(*scan.seen),
				                torture_seen_cmp);
			if (!found)
				continue;
			present++;
			/* the row's bulk (additionalInfo) committed whole with it */
			if (!streq(found->info_hash, want)) {
				printf("FAIL: page %ld record %u: additionalInfo %s\n", page, i,
				       found->info_hash[0] ? "differs" : "missing");
				failures++;
			}
		}
		if (page < cursor && present != o->records) {
			printf("FAIL: page %ld before the cursor has %u of %u records\n", page,
			       present, o->records);
			failures++;
		} else if (page >= cursor && present != 0) {
			printf("FAIL: page %ld at or after the cursor (%ld) has %u records\n", page,
			       cursor, present);
			failures++;
		}
	}

	printf("cursor %ld records %" PRIu64 "\n", cursor, total);
	store_free(s);
	free(scan.seen);
	return failures ? 1 : 0;
}

/* Collect one record's key and state (store callback). */
static int
torture_scan_row(void *userdata, const struct store_record *r)
{
	struct torture_scan *scan = userdata;

	if (r->state < 0 || r->state >= _STORE_STATE_MAX || !r->key ||
	    strlen(r->key) != HASH_SHA256_HEX_LEN)
		return -EBADMSG;
	if (scan->n == scan->allocated) {
		scan->allocated = scan->allocated ? scan->allocated * 2 : 1024;
		scan->seen = xreallocarray(scan->seen, scan->allocated, sizeof(*scan->seen));
	}
	memcpy(scan->seen[scan->n].key, r->key, HASH_SHA256_HEX_LEN + 1);
	if (r->additional_info)
		hash_sha256_hex(r->additional_info, strlen(r->additional_info),
		                scan->seen[scan->n].info_hash);
	else
		scan->seen[scan->n].info_hash[0] = '\0';
	scan->seen[scan->n].state = r->state;
	scan->n++;
	scan->by_state[r->state]++;
	return 0;
}

/* Order seen keys. */
static int
torture_seen_cmp(const void *a, const void *b)
{
	return strcmp(((const struct torture_seen *)a)->key, ((const struct torture_seen *)b)->key);
}

/* What the seed decided for one record. */
struct seed_record {
	struct store_record rec;
	const char *expect; /* final state */
	const char *charged;
	const char *tenant;
	const char *reason;
};

#define SEED_HOUR_1            TORTURE_HOUR
#define SEED_HOUR_2            (TORTURE_HOUR + 3600)
#define SEED_PER_HOUR          12
#define SEED_SUB_REGISTERED    "aaaaaaaa-0000-4000-8000-000000000001"
#define SEED_SUB_DEFAULT       "aaaaaaaa-0000-4000-8000-000000000002"
#define SEED_SUB_UNKNOWN       "aaaaaaaa-0000-4000-8000-000000000003"
#define SEED_TENANT_REGISTERED "bbbbbbbb-0000-4000-8000-000000000001"
#define SEED_TENANT_DEFAULT    "bbbbbbbb-0000-4000-8000-000000000002"
#define SEED_CUSTOMER          "cccccccc-0000-4000-8000-000000000001"

/* Quantities with many digits, so a float anywhere would show. */
static const char *const seed_quantities[] = {
        "0.1",          "0.2",  "2.4000000000", "12345678901234567890.123456789", "3",
        "0.0000000001", "7.25", "100",          "99999999999999999999.999999999", "0.3",
        "42",           "5.5",
};

/* The charge of the seed's three subscriptions. */
static int
seed_map(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	(void)userdata;
	if (streq(r->subscription_id, SEED_SUB_REGISTERED))
		*ret = (struct store_charge){SEED_CUSTOMER, SEED_TENANT_REGISTERED, "registered",
		                             false, TORTURE_REGISTRATION};
	else if (streq(r->subscription_id, SEED_SUB_DEFAULT))
		*ret = (struct store_charge){TORTURE_DEFAULT_SUB, SEED_TENANT_DEFAULT, "default",
		                             false, TORTURE_REGISTRATION};
	else
		*ret = (struct store_charge){TORTURE_DEFAULT_SUB, NULL, "unknown-subscription",
		                             false, TORTURE_REGISTRATION};
	return 0;
}

/* Make seed record i of an hour. */
static void
seed_record(int64_t hour, unsigned i, struct seed_record *sr)
{
	static const char *const subs[] = {SEED_SUB_REGISTERED, SEED_SUB_DEFAULT, SEED_SUB_UNKNOWN};
	_cleanup_free_ char *identity = NULL;
	char key[HASH_SHA256_HEX_LEN + 1];

	identity = xasprintf("seed\n%" PRId64 "\n%u", hour, i);
	hash_sha256_hex(identity, strlen(identity), key);
	sr->rec = (struct store_record){
	        .state = STORE_PENDING,
	        .key = xstrdup(key),
	        .reported_hour = hour,
	        .subscription_id = xstrdup(subs[i % 3]),
	        .meter_id = xasprintf("FAB6EB84-500B-4A09-A8CA-7358F8BBAE%02u", i % 2),
	        .quantity = xstrdup(seed_quantities[i % ARRAY_SIZE(seed_quantities)]),
	        .usage_start = hour - 3600 * (1 + i % 2),
	        .usage_end = hour - 3600 * (i % 2),
	        .resource_uri = xasprintf("/subscriptions/%s/resourcegroups/rg/providers/"
	                                  "microsoft.compute/virtualmachines/vm%u",
	                                  subs[i % 3], i),
	        .location = xstrdup("local"),
	        .raw = xasprintf("{\"seed\":%u}", i),
	};
	/* the dead ones share their first 8 digits: an ambiguous prefix for the tests */
	if (i == 4 || i == 9)
		memcpy(sr->rec.key, "deadbeef", 8);
	sr->charged = i % 3 == 0 ? SEED_CUSTOMER : TORTURE_DEFAULT_SUB;
	sr->tenant = i % 3 == 0 ? SEED_TENANT_REGISTERED : i % 3 == 1 ? SEED_TENANT_DEFAULT : NULL;
	sr->reason = i % 3 == 0 ? "registered" : i % 3 == 1 ? "default" : "unknown-subscription";
	/* record 4 and 9 of each hour are refused, 7 is retried later, the rest accepted */
	sr->expect = i == 4 || i == 9 ? "dead" : i == 7 ? "pending" : "forwarded";
}

/* Add a seed record's manifest entry. */
static void
seed_manifest_add(json_t *manifest, const struct seed_record *sr, const char *state)
{
	char start[TIME_RFC3339_LEN + 1], hour[TIME_RFC3339_LEN + 1];
	bool charged = streq(state, "forwarded") || streq(state, "dead") || streq(state, "pending");

	json_array_append_new(
	        manifest,
	        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s?,s:s?,s:s?}", "key", sr->rec.key, "state",
	                  state, "reportedHour", time_format_rfc3339(sr->rec.reported_hour, hour),
	                  "usageStartTime", time_format_rfc3339(sr->rec.usage_start, start),
	                  "meterId", sr->rec.meter_id, "quantity", sr->rec.quantity,
	                  "sourceSubscriptionId", sr->rec.subscription_id, "chargedSubscription",
	                  charged ? sr->charged : NULL, "tenantId", charged ? sr->tenant : NULL));
}

/* Build the azs-usagectl test store and print its manifest. */
static int
cmd_seed(const char *path)
{
	struct seed_record seeds[2 * SEED_PER_HOUR] = {0};
	struct store_record page[SEED_PER_HOUR + 2];
	struct seed_record quarantined[2] = {0};
	struct seed_record conflicts[2] = {0};
	_cleanup_(json_decrefp) json_t *manifest = json_array();
	struct store *s = NULL;
	int64_t now = now_seconds();
	int r = 0;

	if (torture_open(path, false, &s) < 0)
		return 1;

	for (unsigned h = 0; h < 2 && r >= 0; h++) {
		int64_t hour = h == 0 ? SEED_HOUR_1 : SEED_HOUR_2;
		struct store_page_result result = {0};
		size_t n = 0;

		for (unsigned i = 0; i < SEED_PER_HOUR; i++) {
			seed_record(hour, i, &seeds[h * SEED_PER_HOUR + i]);
			page[n++] = seeds[h * SEED_PER_HOUR + i].rec;
		}
		/* one invalid record per hour */
		seed_record(hour, 100 + h, &quarantined[h]);
		quarantined[h].rec.state = STORE_QUARANTINED;
		free(quarantined[h].rec.quantity);
		quarantined[h].rec.quantity = xstrdup("NaN");
		quarantined[h].rec.error_code = xstrdup("invalid-record");
		quarantined[h].rec.error_message = xstrdup("quantity: not a finite decimal");
		page[n++] = quarantined[h].rec;

		r = store_hour_schedule(s, hour, "", hour + 3600);
		if (r < 0)
			break;
		r = store_put_page(s,
		                   &(struct store_page){.reported_hour = hour,
		                                        .scope = "",
		                                        .next_due_at = now + 6 * 3600,
		                                        .records = page,
		                                        .n_records = n,
		                                        .now = now},
		                   &result);
		if (r >= 0 &&
		    (result.inserted + result.quarantined != n || result.quarantined > 1)) {
			printf("FAIL: seed page: inserted %zu quarantined %zu\n", result.inserted,
			       result.quarantined);
			r = -EBADMSG;
		}
	}

	/* forward: claim everything, answer per the seed's plan */
	while (r >= 0) {
		struct store_claim claim = {
		        .max_records = 5, .max_bytes = 1 << 20, .now = now, .map = seed_map};
		struct store_batch batch = {0};
		struct store_outcome out[5] = {0};
		size_t applied = 0;

		r = store_claim_batch(s, &claim, &batch);
		if (r < 0 || batch.n_records == 0) {
			store_batch_done(&batch);
			break;
		}
		for (size_t i = 0; i < batch.n_records; i++) {
			const char *expect = "forwarded";

			for (size_t k = 0; k < ARRAY_SIZE(seeds); k++)
				if (streq(seeds[k].rec.key, batch.records[i].key))
					expect = seeds[k].expect;
			out[i].id = batch.records[i].id;
			if (streq(expect, "dead")) {
				out[i].kind = STORE_OUTCOME_DEAD;
				out[i].error_code = "InvalidQuantity";
				out[i].error_message = "The quantity is not valid for this meter";
			} else if (streq(expect, "pending")) {
				out[i].kind = STORE_OUTCOME_RETRY;
				out[i].next_attempt_at = now + 86400;
			} else {
				out[i].kind = STORE_OUTCOME_FORWARDED;
				out[i].status = "Accepted";
			}
		}
		r = store_apply_outcomes(s, batch.batch_id, out, batch.n_records, now, &applied);
		store_batch_done(&batch);
	}

	/* a look-back pass of hour 1: record 0 and 2 changed (conflicts), record 1 as "0.20" */
	if (r >= 0) {
		struct store_page_result result = {0};

		seed_record(SEED_HOUR_1, 0, &conflicts[0]);
		seed_record(SEED_HOUR_1, 2, &conflicts[1]);
		free(conflicts[0].rec.quantity);
		conflicts[0].rec.quantity = xstrdup("0.35"); /* was 0.1: larger */
		free(conflicts[1].rec.quantity);
		conflicts[1].rec.quantity = xstrdup("1.5"); /* was 2.4000000000: smaller */
		page[0] = conflicts[0].rec;
		page[1] = seeds[1].rec;
		free(page[1].quantity);
		page[1].quantity = seeds[1].rec.quantity = xstrdup("0.20");
		page[2] = conflicts[1].rec;
		r = store_put_page(s,
		                   &(struct store_page){.reported_hour = SEED_HOUR_1,
		                                        .scope = "",
		                                        .pass = 1,
		                                        .records = page,
		                                        .n_records = 3,
		                                        .now = now},
		                   &result);
		if (r >= 0 && (result.conflicts != 2 || result.duplicates != 1)) {
			printf("FAIL: look-back page: conflicts %zu duplicates %zu\n",
			       result.conflicts, result.duplicates);
			r = -EBADMSG;
		}
		free(seeds[1].rec.quantity);
		seeds[1].rec.quantity = xstrdup(seed_quantities[1]);
	}
	if (r < 0) {
		printf("FAIL: seed: %s: %s\n", strerror(-r), store_errmsg(s));
		store_free(s);
		return 1;
	}

	for (size_t k = 0; k < ARRAY_SIZE(seeds); k++)
		seed_manifest_add(manifest, &seeds[k], seeds[k].expect);
	for (size_t k = 0; k < ARRAY_SIZE(quarantined); k++)
		seed_manifest_add(manifest, &quarantined[k], "quarantined");
	for (size_t k = 0; k < ARRAY_SIZE(conflicts); k++)
		seed_manifest_add(manifest, &conflicts[k], "conflict");
	json_dumpf(manifest, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
	putchar('\n');

	for (size_t k = 0; k < ARRAY_SIZE(seeds); k++)
		store_record_done(&seeds[k].rec);
	for (size_t k = 0; k < 2; k++) {
		store_record_done(&quarantined[k].rec);
		store_record_done(&conflicts[k].rec);
	}
	store_free(s);
	return 0;
}

/* Print the history of one record. */
static int
cmd_history(const char *path, const char *key, const char *state)
{
	struct store_record rec = {0};
	struct store_history *h = NULL;
	struct store *s = NULL;
	size_t n = 0;
	int r;

	if (torture_open(path, true, &s) < 0)
		return 1;
	r = store_record_find(s, key, state ? (int)store_state_from_string(state) : -1, &rec);
	if (r >= 0)
		r = store_record_history(s, rec.id, &h, &n);
	if (r < 0) {
		printf("FAIL: history %s: %s\n", key, strerror(-r));
		store_record_done(&rec);
		store_free(s);
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		printf("%s\t%s\t%s\n", h[i].actor, h[i].action, h[i].detail ? h[i].detail : "");
		store_history_done(&h[i]);
	}
	free(h);
	store_record_done(&rec);
	store_free(s);
	return 0;
}

/* Print the collection schedule. */
static int
cmd_hours(const char *path)
{
	struct store_hour *hours = NULL;
	struct store *s = NULL;
	size_t n = 0;
	int r;

	if (torture_open(path, true, &s) < 0)
		return 1;
	r = store_hours_due(s, INT64_MAX / 2, 100000, &hours, &n);
	if (r < 0) {
		printf("FAIL: hours: %s\n", strerror(-r));
		store_free(s);
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		char t[TIME_RFC3339_LEN + 1];

		printf("%s %s %u %s\n", time_format_rfc3339(hours[i].hour, t),
		       isempty(hours[i].scope) ? "-" : hours[i].scope, hours[i].pass,
		       hours[i].next_link ? hours[i].next_link : "-");
		store_hour_done(&hours[i]);
	}
	free(hours);
	store_free(s);
	return 0;
}

/* What seed-extra adds to a seeded store (see the usage at the top). */
static int
cmd_seed_extra(const char *path)
{
	static const char formula[] = "=HYPERLINK(\"http://example.invalid\",\"x\")";
	struct seed_record again = {0}, odd = {0};
	struct store_page_result result = {0};
	struct store_batch batch = {0};
	struct store *s = NULL;
	int64_t now = now_seconds();
	int r;

	if (torture_open(path, false, &s) < 0)
		return 1;
	/* record 0 of hour 1 has a conflict (0.35) already: a second, under the same key */
	seed_record(SEED_HOUR_1, 0, &again);
	free(again.rec.quantity);
	again.rec.quantity = xstrdup("0.5");
	r = store_put_page(s,
	                   &(struct store_page){.reported_hour = SEED_HOUR_1,
	                                        .scope = "",
	                                        .pass = 2,
	                                        .records = &again.rec,
	                                        .n_records = 1,
	                                        .now = now},
	                   &result);
	if (r >= 0 && result.conflicts != 1)
		r = -EBADMSG;
	/* a meter id as a formula, forwarded */
	seed_record(SEED_HOUR_2, 300, &odd);
	free(odd.rec.meter_id);
	odd.rec.meter_id = xstrdup(formula);
	if (r >= 0)
		r = store_put_page(s,
		                   &(struct store_page){.reported_hour = SEED_HOUR_2,
		                                        .scope = "",
		                                        .pass = 2,
		                                        .records = &odd.rec,
		                                        .n_records = 1,
		                                        .now = now},
		                   &result);
	if (r >= 0)
		r = store_claim_batch(
		        s, &(struct store_claim){.max_records = 10, .now = now, .map = seed_map},
		        &batch);
	for (size_t i = 0; r >= 0 && i < batch.n_records; i++) {
		struct store_outcome o = {.id = batch.records[i].id,
		                          .kind = STORE_OUTCOME_FORWARDED,
		                          .status = "Accepted"};

		r = store_apply_outcomes(s, batch.batch_id, &o, 1, now, NULL);
	}
	store_batch_done(&batch);
	if (r < 0)
		printf("FAIL: seed-extra: %s: %s\n", strerror(-r), store_errmsg(s));
	else
		printf("{\"conflictKey\":\"%s\",\"formulaMeter\":\"%s\"}\n", again.rec.key,
		       "=HYPERLINK(\\\"http://example.invalid\\\",\\\"x\\\")");
	store_record_done(&again.rec);
	store_record_done(&odd.rec);
	store_free(s);
	return r < 0 ? 1 : 0;
}

/* Put the next page and claim it whole as one batch: inflight, or forwarded at o->forwarded_at. */
static int
cmd_batch(const char *path, const struct torture_options *o)
{
	struct store_claim claim = {
	        .max_records = SIZE_MAX,
	        .max_bytes = 0,
	        .now = INT64_MAX / 2,
	        .map = torture_map,
	};
	struct store_batch batch = {0};
	struct store_outcome *out = NULL;
	struct store *s = NULL;
	size_t applied = 0;
	long page = 0;
	int r;

	r = torture_open(path, false, &s);
	if (r < 0)
		return 1;
	r = torture_cursor(s, &page);
	if (r == -ENOENT)
		r = store_hour_schedule(s, TORTURE_HOUR, "", TORTURE_HOUR + 3600);
	if (r >= 0)
		r = torture_put(s, (unsigned)page, o);
	if (r >= 0)
		r = store_claim_batch(s, &claim, &batch);
	if (r >= 0 && o->forwarded_at > 0) {
		out = xcalloc(batch.n_records, sizeof(*out));
		for (size_t i = 0; i < batch.n_records; i++)
			out[i] = (struct store_outcome){
			        .id = batch.records[i].id,
			        .kind = STORE_OUTCOME_FORWARDED,
			        .status = "Accepted",
			};
		r = store_apply_outcomes(s, batch.batch_id, out, batch.n_records, o->forwarded_at,
		                         &applied);
		free(out);
	}
	if (r >= 0)
		printf("batch %s %zu\n", batch.batch_id, batch.n_records);
	else
		printf("FAIL: batch: %s: %s\n", strerror(-r), store_errmsg(s));
	store_batch_done(&batch);
	store_free(s);
	return r < 0 ? 1 : 0;
}

/* The ids of seed-registry (tests/e2e/test_ctl_registry.py builds its azs-sim world on them). */
#define SREG_PROVIDER  "eeeeeeee-0000-4000-8000-000000000001"
#define SREG_DELEGATED "dddddddd-0000-4000-8000-0000000000dd"
#define SREG_TENANT_A  "a0000000-0000-4000-8000-00000000000a"
#define SREG_TENANT_B  "b0000000-0000-4000-8000-00000000000b"
#define SREG_TENANT_D  "d0000000-0000-4000-8000-00000000000d"
#define SREG_SUB_A1    "5a000000-0000-4000-8000-0000000000a1"
#define SREG_SUB_A2    "5a000000-0000-4000-8000-0000000000a2"
#define SREG_SUB_B1    "5b000000-0000-4000-8000-0000000000b1"
#define SREG_SUB_D1    "5d000000-0000-4000-8000-0000000000d1"
#define SREG_SUB_X     "5f000000-0000-4000-8000-0000000000ff"
#define SREG_METER_1   "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define SREG_METER_2   "9764F92C-E44A-498E-8DC1-AAD66587A810"

/* Build the store of the registry verbs' tests and print its manifest. */
static int
cmd_seed_registry(const char *path)
{
	static const struct {
		const char *subscription, *meter, *quantity;
	} usage[] = {
	        {SREG_SUB_A1, SREG_METER_1, "0.1"},
	        {SREG_SUB_A1, SREG_METER_1, "2.4000000000"},
	        {SREG_SUB_A1, SREG_METER_2, "12345678901234567890.123456789"},
	        {SREG_SUB_A2, SREG_METER_1, "0.2"},
	        {SREG_SUB_B1, SREG_METER_1, "3"},
	        {SREG_SUB_B1, SREG_METER_1, "0.0000000001"},
	        {SREG_SUB_X, SREG_METER_1, "7.25"},
	};
	struct store_subscription subs[] = {
	        {.subscription_id = (char *)SREG_SUB_A1,
	         .tenant_id = (char *)SREG_TENANT_A,
	         .delegated_provider = (char *)SREG_PROVIDER},
	        {.subscription_id = (char *)SREG_SUB_B1,
	         .tenant_id = (char *)SREG_TENANT_B,
	         .delegated_provider = (char *)SREG_PROVIDER},
	        {.subscription_id = (char *)SREG_SUB_D1,
	         .tenant_id = (char *)SREG_TENANT_D,
	         .delegated_provider = (char *)SREG_DELEGATED},
	        {.subscription_id = (char *)SREG_SUB_A2,
	         .tenant_id = (char *)SREG_TENANT_A,
	         .delegated_provider = (char *)SREG_PROVIDER},
	};
	struct store_record page[ARRAY_SIZE(usage)] = {0};
	char keys[ARRAY_SIZE(usage)][HASH_SHA256_HEX_LEN + 1];
	_cleanup_(json_decrefp) json_t *manifest = NULL;
	struct store_page_result result = {0};
	struct store *s = NULL;
	int64_t now = now_seconds();
	json_t *records = json_array();
	int r;

	if (torture_open(path, false, &s) < 0)
		return 1;
	/* A2 was listed once and then left the list: gone, its tenant kept */
	r = store_subscriptions_replace(s, subs, ARRAY_SIZE(subs), now - 120);
	if (r >= 0)
		r = store_subscriptions_replace(s, subs, ARRAY_SIZE(subs) - 1, now - 60);
	for (size_t i = 0; i < ARRAY_SIZE(usage); i++) {
		_cleanup_free_ char *identity = xasprintf("seed-registry\n%zu", i);

		hash_sha256_hex(identity, strlen(identity), keys[i]);
		page[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = keys[i],
		        .reported_hour = SEED_HOUR_1,
		        .subscription_id = (char *)usage[i].subscription,
		        .meter_id = (char *)usage[i].meter,
		        .quantity = (char *)usage[i].quantity,
		        .usage_start = SEED_HOUR_1 - 3600,
		        .usage_end = SEED_HOUR_1,
		        .resource_uri = (char *)"/subscriptions/x/resourcegroups/rg/vm",
		        .location = (char *)"local",
		        .raw = (char *)"{}",
		};
		json_array_append_new(records,
		                      json_pack("{s:s,s:s,s:s}", "subscription",
		                                usage[i].subscription, "meterId", usage[i].meter,
		                                "quantity", usage[i].quantity));
	}
	if (r >= 0)
		r = store_hour_schedule(s, SEED_HOUR_1, "", SEED_HOUR_1 + 3600);
	if (r >= 0)
		r = store_put_page(s,
		                   &(struct store_page){.reported_hour = SEED_HOUR_1,
		                                        .scope = "",
		                                        .next_due_at = now + 6 * 3600,
		                                        .records = page,
		                                        .n_records = ARRAY_SIZE(page),
		                                        .now = now},
		                   &result);
	if (r < 0) {
		printf("FAIL: seed-registry: %s: %s\n", strerror(-r), store_errmsg(s));
		json_decref(records);
		store_free(s);
		return 1;
	}
	manifest = json_pack("{s:s,s:s,s:{s:s,s:s,s:s},s:{s:s,s:s,s:s,s:s,s:s},s:o}", "provider",
	                     SREG_PROVIDER, "delegatedProvider", SREG_DELEGATED, "tenants", "A",
	                     SREG_TENANT_A, "B", SREG_TENANT_B, "D", SREG_TENANT_D, "subscriptions",
	                     "A1", SREG_SUB_A1, "A2", SREG_SUB_A2, "B1", SREG_SUB_B1, "D1",
	                     SREG_SUB_D1, "X", SREG_SUB_X, "records", records);
	store_free(s);
	if (!manifest)
		return 1;
	{
		_cleanup_free_ char *text = json_dumps(manifest, JSON_INDENT(1) | JSON_SORT_KEYS);

		puts(text);
	}
	return 0;
}
