/*
 * Counters, gauges and histograms, rendered in the Prometheus text exposition format 0.0.4
 * (ARCHITECTURE.md section 8). A registry holds families (one metric name with its HELP text,
 * TYPE and at most one label); a family holds one series per label value. metrics_new_daemon()
 * makes the registry with every family of section 8 (prefix azs_usaged_), which callers reach by
 * enum metrics_id.
 *
 * Updating is cheap and never allocates once a series exists: a series is found by comparing
 * its label value with the few the family has (or kept by the caller as a handle), and its value
 * changes by one atomic operation, so worker threads may count too. A series is made the first
 * time its label value is used (under the registry's mutex); after METRICS_SERIES_MAX - 1 label
 * values, further ones are counted under the label value "other" (label values come from the
 * program, not from outside, so this guards only against a mistake). Every update function
 * accepts a NULL registry, family or series and then does nothing, so modules can be tested
 * without one.
 *
 * Values are doubles or unsigned integers: they are counts, ages and durations, never billing
 * quantities (those stay decimal text, see decimal.h).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define METRICS_PREFIX       "azs_usaged_"
#define METRICS_SERIES_MAX   64 /* series per family, the "other" series included */
#define METRICS_BUCKETS_MAX  32 /* histogram upper bounds per family, +Inf not counted */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum metrics_type {
	METRICS_COUNTER,
	METRICS_GAUGE,
	METRICS_HISTOGRAM,
};

/* The families of section 8, in the order they are rendered; label name in braces. */
enum metrics_id {
	METRICS_RECORDS_COLLECTED_TOTAL,          /* counter */
	METRICS_RECORDS_FORWARDED_TOTAL,          /* counter {status} */
	METRICS_RECORDS,                          /* gauge {state} */
	METRICS_OLDEST_PENDING_SECONDS,           /* gauge */
	METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, /* gauge */
	METRICS_COLLECT_PAGES_TOTAL,              /* counter {result} */
	METRICS_FORWARD_BATCHES_TOTAL,            /* counter {result} */
	METRICS_FORWARD_RETRIES_TOTAL,            /* counter */
	METRICS_REGISTRATION_AGE_SECONDS,         /* gauge */
	METRICS_TENANTS_CHARGED_DEFAULT,          /* gauge */
	/* histogram {api}; upper bounds 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60
	 * seconds: 5 ms to a minute, past the default 30 s time-out */
	METRICS_HTTP_REQUEST_DURATION_SECONDS,
	METRICS_CONFLICTS_TOTAL,                     /* counter */
	METRICS_QUARANTINED_TOTAL,                   /* counter */
	METRICS_STORE_FULL_TOTAL,                    /* counter */
	METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, /* counter */
	METRICS_BUILD_INFO,                          /* gauge {version}, always 1 */
	_METRICS_ID_MAX,
};

struct metrics;
struct metrics_family;
struct metrics_series;

struct metrics *metrics_new(void); /* an empty registry */
/* The daemon's registry: every family of section 8; build_info{version} is 1. */
struct metrics *metrics_new_daemon(const char *version);
struct metrics *metrics_free(struct metrics *m); /* accepts NULL, returns NULL */

/*
 * Add a family. name is the whole metric name (a Prometheus name: [a-zA-Z_:][a-zA-Z0-9_:]*),
 * help its HELP text (any UTF-8), label the name of its one label or NULL for none (not
 * starting with "__"; not "le" for a histogram). A histogram takes n_bounds (at most
 * METRICS_BUCKETS_MAX) finite, strictly increasing upper bounds; +Inf is implied. Others take
 * none. An unlabelled family has its one series (at 0) at once. -EINVAL for a bad argument,
 * -EEXIST for a name already there.
 */
int metrics_add_family(struct metrics *m, enum metrics_type type, const char *name,
                       const char *help, const char *label, const double *bounds, size_t n_bounds,
                       struct metrics_family **ret);

/* A family of metrics_new_daemon() by id (borrowed); NULL for other registries. */
struct metrics_family *metrics_get_family(struct metrics *m, enum metrics_id id);

/*
 * The series of a label value (borrowed, lives as long as the registry), made at 0 the first
 * time. label_value is ignored for an unlabelled family; NULL means "" for a labelled one.
 * Text that is not valid UTF-8 is counted under "other".
 */
struct metrics_series *metrics_get_series(struct metrics_family *f, const char *label_value);

/* Update a series; each must match the family's type (asserted). */
void metrics_counter_add(struct metrics_series *s, uint64_t n);
void metrics_gauge_set(struct metrics_series *s, double v);
void metrics_gauge_add(struct metrics_series *s, double delta);
void metrics_histogram_observe(struct metrics_series *s, double v); /* NaN is ignored */

/* Shorthands on the daemon's families: the same, with the series looked up by label value. */
void metrics_inc(struct metrics *m, enum metrics_id id, const char *label_value);
void metrics_add(struct metrics *m, enum metrics_id id, const char *label_value, uint64_t n);
void metrics_set(struct metrics *m, enum metrics_id id, const char *label_value, double v);
void metrics_observe(struct metrics *m, enum metrics_id id, const char *label_value, double v);

/* Read a counter or gauge back (tests, /v1/status); a histogram gives its count. */
double metrics_series_value(struct metrics_series *s);

/*
 * The exposition text of the whole registry: for every family, in the order added, "# HELP" and
 * "# TYPE" lines and then its series sorted by label value (a histogram: cumulative _bucket lines
 * ending with le="+Inf", then _sum and _count). Returns 0 and a new string (its length in
 * ret_size, may be NULL).
 */
int metrics_render(struct metrics *m, char **ret, size_t *ret_size);
