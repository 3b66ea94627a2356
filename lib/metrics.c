/*
 * Metrics: a registry of families and series with atomic values, and the Prometheus text
 * exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * Concurrency: values are C11 atomics updated with relaxed ordering (a scrape may see one
 * update before another; Prometheus expects no more). A family's series are a fixed array that
 * only grows: readers load the count with acquire ordering and scan without a lock; making a
 * series, adding a family and rendering take the registry's mutex. Gauges and histogram sums are
 * doubles kept as their bit patterns in 64-bit atomics, changed by compare-and-swap.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "metrics.h"
#include "xmalloc.h"

#define OTHER_LABEL_VALUE "other"

struct metrics_series {
	struct metrics_family *family;
	char *label_value;         /* NULL in an unlabelled family */
	_Atomic uint64_t value;    /* counter: the count; gauge: the double's bits */
	_Atomic uint64_t sum;      /* histogram: the double's bits */
	_Atomic uint64_t *buckets; /* histogram: n_bounds + 1 counts, not cumulative; last +Inf */
};

struct metrics_family {
	struct metrics *registry;
	enum metrics_type type;
	char *name;
	char *help;
	char *label; /* NULL: unlabelled */
	double bounds[METRICS_BUCKETS_MAX];
	size_t n_bounds;
	struct metrics_series *series[METRICS_SERIES_MAX];
	_Atomic size_t n_series;
};

struct metrics {
	pthread_mutex_t lock;
	struct metrics_family **families;
	size_t n_families;
	struct metrics_family *by_id[_METRICS_ID_MAX];
};

/* One family of section 8. */
struct family_def {
	enum metrics_type type;
	const char *name; /* without the prefix */
	const char *label;
	const char *help;
};

static const struct family_def daemon_families[_METRICS_ID_MAX] = {
        [METRICS_RECORDS_COLLECTED_TOTAL] = {METRICS_COUNTER, "records_collected_total", NULL,
                                             "Usage records collected from the stamp and "
                                             "stored under a new key."},
        [METRICS_RECORDS_FORWARDED_TOTAL] = {METRICS_COUNTER, "records_forwarded_total", "status",
                                             "Usage records Azure Commerce has taken, by "
                                             "status (Accepted, Duplicate, Conflict)."},
        [METRICS_RECORDS] = {METRICS_GAUGE, "records", "state",
                             "Usage records in the store, by state."},
        [METRICS_OLDEST_PENDING_SECONDS] = {METRICS_GAUGE, "oldest_pending_seconds", NULL,
                                            "Age of the oldest record waiting to be "
                                            "forwarded, in seconds (0 when none waits)."},
        [METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS] = {METRICS_GAUGE,
                                                      "collect_cursor_timestamp_seconds", NULL,
                                                      "Start of the newest reported hour "
                                                      "scheduled for collection, as a Unix "
                                                      "time."},
        [METRICS_COLLECT_PAGES_TOTAL] = {METRICS_COUNTER, "collect_pages_total", "result",
                                         "Usage pages requested from the stamp, by result."},
        [METRICS_FORWARD_BATCHES_TOTAL] = {METRICS_COUNTER, "forward_batches_total", "result",
                                           "Batches sent to Azure Commerce, by result."},
        [METRICS_FORWARD_RETRIES_TOTAL] = {METRICS_COUNTER, "forward_retries_total", NULL,
                                           "Forwarding attempts that ended in a retry."},
        [METRICS_REGISTRATION_AGE_SECONDS] = {METRICS_GAUGE, "registration_age_seconds", NULL,
                                              "Seconds since the registration cache was last "
                                              "refreshed."},
        [METRICS_TENANTS_CHARGED_DEFAULT] = {METRICS_GAUGE, "tenants_charged_default", NULL,
                                             "Directory tenants whose usage is charged to the "
                                             "default subscription (not registered)."},
        [METRICS_HTTP_REQUEST_DURATION_SECONDS] = {METRICS_HISTOGRAM,
                                                   "http_request_duration_seconds", "api",
                                                   "Duration of HTTP requests to the stamp and "
                                                   "to Azure, by API."},
        [METRICS_CONFLICTS_TOTAL] = {METRICS_COUNTER, "conflicts_total", NULL,
                                     "Records collected again with a different quantity, "
                                     "stored as conflicts."},
        [METRICS_QUARANTINED_TOTAL] = {METRICS_COUNTER, "quarantined_total", NULL,
                                       "Records quarantined because they failed validation."},
        [METRICS_STORE_FULL_TOTAL] = {METRICS_COUNTER, "store_full_total", NULL,
                                      "Times a write found the store full (collection "
                                      "pauses)."},
        [METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL] = {METRICS_COUNTER,
                                                         "collect_skipped_subscriptions_total",
                                                         NULL,
                                                         "User subscriptions skipped for a "
                                                         "reported hour "
                                                         "(SubscriberIdIsNotDirectTenant)."},
        [METRICS_BUILD_INFO] = {METRICS_GAUGE, "build_info", "version",
                                "Build information: the version in a label; always 1."},
};

static struct metrics_family *family_find(struct metrics *m, const char *name);
static struct metrics_series *series_scan(struct metrics_family *f, size_t n,
                                          const char *label_value);
static struct metrics_series *series_make(struct metrics_family *f, const char *label_value);
static struct metrics_series *series_free(struct metrics_series *s);
static struct metrics_family *family_free(struct metrics_family *f);
static bool name_valid(const char *s, bool colon);
static bool utf8_valid(const char *s);
static double bits_double(uint64_t b);
static uint64_t double_bits(double v);
static void atomic_double_add(_Atomic uint64_t *a, double delta);
static void render_family(FILE *f, struct metrics_family *fam);
static void render_sample(FILE *f, const char *name, const char *suffix, const char *label,
                          const char *label_value, const char *le, const char *value);
static void put_escaped(FILE *f, const char *s, bool quote);
static void format_double(double v, char out[static 32]);
static int series_cmp(const void *a, const void *b);

/* Make an empty registry. */
struct metrics *
metrics_new(void)
{
	struct metrics *m = xcalloc(1, sizeof(*m));

	if (pthread_mutex_init(&m->lock, NULL) != 0)
		abort();
	return m;
}

/* Make the daemon's registry with every family of section 8. */
struct metrics *
metrics_new_daemon(const char *version)
{
	static const double http_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	                                     1,     2.5,  5,     10,   30,  60};
	struct metrics *m = metrics_new();

	for (size_t i = 0; i < _METRICS_ID_MAX; i++) {
		const struct family_def *d = &daemon_families[i];
		_cleanup_free_ char *name = xasprintf("%s%s", METRICS_PREFIX, d->name);
		bool histogram = d->type == METRICS_HISTOGRAM;
		int k;

		k = metrics_add_family(m, d->type, name, d->help, d->label,
		                       histogram ? http_bounds : NULL,
		                       histogram ? ARRAY_SIZE(http_bounds) : 0, &m->by_id[i]);
		/* the table above is constant: a failure is a bug in it */
		assert(k == 0);
		(void)k;
	}
	metrics_set(m, METRICS_BUILD_INFO, isempty(version) ? "unknown" : version, 1);
	return m;
}

/* Free a registry and everything in it. */
struct metrics *
metrics_free(struct metrics *m)
{
	if (!m)
		return NULL;
	for (size_t i = 0; i < m->n_families; i++)
		family_free(m->families[i]);
	free(m->families);
	pthread_mutex_destroy(&m->lock);
	free(m);
	return NULL;
}

/* Add a family to a registry. */
int
metrics_add_family(struct metrics *m, enum metrics_type type, const char *name, const char *help,
                   const char *label, const double *bounds, size_t n_bounds,
                   struct metrics_family **ret)
{
	struct metrics_family *f;

	if (!m || !name_valid(name, true) || !help || !utf8_valid(help))
		return -EINVAL;
	if (label && (!name_valid(label, false) || strncmp(label, "__", 2) == 0 ||
	              (type == METRICS_HISTOGRAM && streq(label, "le"))))
		return -EINVAL;
	switch (type) {
	case METRICS_COUNTER:
	case METRICS_GAUGE:
		if (n_bounds != 0)
			return -EINVAL;
		break;
	case METRICS_HISTOGRAM:
		if (n_bounds > METRICS_BUCKETS_MAX || (n_bounds > 0 && !bounds))
			return -EINVAL;
		for (size_t i = 0; i < n_bounds; i++) {
			/* finite: NaN and the infinities fail one of these */
			if (!(bounds[i] > -1e308 && bounds[i] < 1e308))
				return -EINVAL;
			if (i > 0 && !(bounds[i] > bounds[i - 1]))
				return -EINVAL;
		}
		break;
	default:
		return -EINVAL;
	}

	f = xcalloc(1, sizeof(*f));
	f->registry = m;
	f->type = type;
	f->name = xstrdup(name);
	f->help = xstrdup(help);
	f->label = label ? xstrdup(label) : NULL;
	if (n_bounds)
		memcpy(f->bounds, bounds, n_bounds * sizeof(*bounds));
	f->n_bounds = n_bounds;

	pthread_mutex_lock(&m->lock);
	if (family_find(m, name)) {
		pthread_mutex_unlock(&m->lock);
		family_free(f);
		return -EEXIST;
	}
	m->families = xreallocarray(m->families, m->n_families + 1, sizeof(*m->families));
	m->families[m->n_families++] = f;
	if (!label)
		series_make(f, NULL);
	pthread_mutex_unlock(&m->lock);
	if (ret)
		*ret = f;
	return 0;
}

/* Get a daemon family by id. */
struct metrics_family *
metrics_get_family(struct metrics *m, enum metrics_id id)
{
	if (!m || (unsigned)id >= _METRICS_ID_MAX)
		return NULL;
	return m->by_id[id];
}

/* Get (or make) the series of a label value. */
struct metrics_series *
metrics_get_series(struct metrics_family *f, const char *label_value)
{
	struct metrics_series *s;
	size_t n;

	if (!f)
		return NULL;
	if (!f->label)
		return f->series[0];
	if (!label_value)
		label_value = "";
	n = atomic_load_explicit(&f->n_series, memory_order_acquire);
	s = series_scan(f, n, label_value);
	if (s)
		return s;

	pthread_mutex_lock(&f->registry->lock);
	s = series_make(f, label_value);
	pthread_mutex_unlock(&f->registry->lock);
	return s;
}

/* Add to a counter. */
void
metrics_counter_add(struct metrics_series *s, uint64_t n)
{
	if (!s)
		return;
	assert(s->family->type == METRICS_COUNTER);
	atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}

/* Set a gauge. */
void
metrics_gauge_set(struct metrics_series *s, double v)
{
	if (!s)
		return;
	assert(s->family->type == METRICS_GAUGE);
	atomic_store_explicit(&s->value, double_bits(v), memory_order_relaxed);
}

/* Add to a gauge (delta may be negative). */
void
metrics_gauge_add(struct metrics_series *s, double delta)
{
	if (!s)
		return;
	assert(s->family->type == METRICS_GAUGE);
	atomic_double_add(&s->value, delta);
}

/* Count one observation in its bucket and the sum. */
void
metrics_histogram_observe(struct metrics_series *s, double v)
{
	size_t i;

	if (!s || v != v) /* NaN */
		return;
	assert(s->family->type == METRICS_HISTOGRAM);
	for (i = 0; i < s->family->n_bounds; i++)
		if (v <= s->family->bounds[i])
			break;
	atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
	atomic_double_add(&s->sum, v);
}

/* Add one to a daemon counter. */
void
metrics_inc(struct metrics *m, enum metrics_id id, const char *label_value)
{
	metrics_counter_add(metrics_get_series(metrics_get_family(m, id), label_value), 1);
}

/* Add n to a daemon counter. */
void
metrics_add(struct metrics *m, enum metrics_id id, const char *label_value, uint64_t n)
{
	metrics_counter_add(metrics_get_series(metrics_get_family(m, id), label_value), n);
}

/* Set a daemon gauge. */
void
metrics_set(struct metrics *m, enum metrics_id id, const char *label_value, double v)
{
	metrics_gauge_set(metrics_get_series(metrics_get_family(m, id), label_value), v);
}

/* Observe a value in a daemon histogram. */
void
metrics_observe(struct metrics *m, enum metrics_id id, const char *label_value, double v)
{
	metrics_histogram_observe(metrics_get_series(metrics_get_family(m, id), label_value), v);
}

/* Read a series' value. */
double
metrics_series_value(struct metrics_series *s)
{
	uint64_t count = 0;

	if (!s)
		return 0;
	switch (s->family->type) {
	case METRICS_COUNTER:
		return (double)atomic_load_explicit(&s->value, memory_order_relaxed);
	case METRICS_GAUGE:
		return bits_double(atomic_load_explicit(&s->value, memory_order_relaxed));
	case METRICS_HISTOGRAM:
		for (size_t i = 0; i <= s->family->n_bounds; i++)
			count += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
		return (double)count;
	}
	return 0;
}

/* Render the registry as exposition text. */
int
metrics_render(struct metrics *m, char **ret, size_t *ret_size)
{
	_cleanup_fclose_ FILE *f = NULL;
	char *text = NULL;
	size_t size = 0;
	int failed;

	if (!m || !ret)
		return -EINVAL;
	f = open_memstream(&text, &size);
	if (!f)
		return -ENOMEM;
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->n_families; i++)
		render_family(f, m->families[i]);
	pthread_mutex_unlock(&m->lock);
	/* a memory stream fails only when it cannot grow */
	failed = ferror(f);
	failed |= fclose(TAKE_PTR(f)) != 0;
	if (failed) {
		free(text);
		return -ENOMEM;
	}
	*ret = text;
	if (ret_size)
		*ret_size = size;
	return 0;
}

/* The family of that name; the caller holds the lock. */
static struct metrics_family *
family_find(struct metrics *m, const char *name)
{
	for (size_t i = 0; i < m->n_families; i++)
		if (streq(m->families[i]->name, name))
			return m->families[i];
	return NULL;
}

/* The series among the first n with that label value. */
static struct metrics_series *
series_scan(struct metrics_family *f, size_t n, const char *label_value)
{
	for (size_t i = 0; i < n; i++)
		if (streq(f->series[i]->label_value, label_value))
			return f->series[i];
	return NULL;
}

/*
 * Make the series of a label value unless another thread did meanwhile; the caller holds the
 * lock. The last free slot is kept for "other", and text that is not UTF-8 goes there too.
 */
static struct metrics_series *
series_make(struct metrics_family *f, const char *label_value)
{
	size_t n = atomic_load_explicit(&f->n_series, memory_order_relaxed);
	struct metrics_series *s;

	if (label_value) {
		s = series_scan(f, n, label_value);
		if (s)
			return s;
		if (n >= METRICS_SERIES_MAX - 1 || !utf8_valid(label_value)) {
			label_value = OTHER_LABEL_VALUE;
			s = series_scan(f, n, label_value);
			if (s)
				return s;
		}
	}
	assert(n < METRICS_SERIES_MAX);

	s = xcalloc(1, sizeof(*s));
	s->family = f;
	s->label_value = label_value ? xstrdup(label_value) : NULL;
	if (f->type == METRICS_GAUGE || f->type == METRICS_HISTOGRAM)
		atomic_init(&s->value, double_bits(0));
	if (f->type == METRICS_HISTOGRAM) {
		s->buckets = xcalloc(f->n_bounds + 1, sizeof(*s->buckets));
		for (size_t i = 0; i <= f->n_bounds; i++)
			atomic_init(&s->buckets[i], 0);
		atomic_init(&s->sum, double_bits(0));
	}
	f->series[n] = s;
	/* publish: a reader that sees the new count sees the series */
	atomic_store_explicit(&f->n_series, n + 1, memory_order_release);
	return s;
}

/* Free a series. */
static struct metrics_series *
series_free(struct metrics_series *s)
{
	if (!s)
		return NULL;
	free(s->label_value);
	free(s->buckets);
	free(s);
	return NULL;
}

/* Free a family and its series. */
static struct metrics_family *
family_free(struct metrics_family *f)
{
	size_t n;

	if (!f)
		return NULL;
	n = atomic_load_explicit(&f->n_series, memory_order_relaxed);
	for (size_t i = 0; i < n; i++)
		series_free(f->series[i]);
	free(f->name);
	free(f->help);
	free(f->label);
	free(f);
	return NULL;
}

/* A Prometheus metric name (colon allowed) or label name (colon not allowed). */
static bool
name_valid(const char *s, bool colon)
{
	if (isempty(s))
		return false;
	for (size_t i = 0; s[i]; i++) {
		char c = s[i];
		bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
		              (colon && c == ':');

		if (!letter && !(i > 0 && c >= '0' && c <= '9'))
			return false;
	}
	return true;
}

/* Whether s is valid UTF-8 (the exposition format is UTF-8). */
static bool
utf8_valid(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;

	while (*u) {
		uint32_t cp;
		size_t n;

		if (*u < 0x80) {
			u++;
			continue;
		}
		if (*u >= 0xc2 && *u < 0xe0)
			n = 2, cp = *u & 0x1f;
		else if (*u >= 0xe0 && *u < 0xf0)
			n = 3, cp = *u & 0x0f;
		else if (*u >= 0xf0 && *u < 0xf5)
			n = 4, cp = *u & 0x07;
		else
			return false;
		for (size_t i = 1; i < n; i++) {
			if ((u[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
				return false;
			cp = cp << 6 | (u[i] & 0x3f);
		}
		if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		u += n;
	}
	return true;
}

/* The double whose bits b are. */
static double
bits_double(uint64_t b)
{
	double v;

	memcpy(&v, &b, sizeof(v));
	return v;
}

/* The bits of a double. */
static uint64_t
double_bits(double v)
{
	uint64_t b;

	memcpy(&b, &v, sizeof(b));
	return b;
}

/* Add delta to the double kept in a. */
static void
atomic_double_add(_Atomic uint64_t *a, double delta)
{
	uint64_t old = atomic_load_explicit(a, memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(a, &old,
	                                              double_bits(bits_double(old) + delta),
	                                              memory_order_relaxed, memory_order_relaxed))
		;
}

/* Write one family: HELP, TYPE and its series sorted by label value. */
static void
render_family(FILE *f, struct metrics_family *fam)
{
	static const char *const types[] = {
	        [METRICS_COUNTER] = "counter",
	        [METRICS_GAUGE] = "gauge",
	        [METRICS_HISTOGRAM] = "histogram",
	};
	size_t n = atomic_load_explicit(&fam->n_series, memory_order_acquire);
	struct metrics_series *sorted[METRICS_SERIES_MAX];
	char value[32], le[32];

	fprintf(f, "# HELP %s ", fam->name);
	put_escaped(f, fam->help, false);
	fprintf(f, "\n# TYPE %s %s\n", fam->name, types[fam->type]);

	memcpy(sorted, fam->series, n * sizeof(*sorted));
	qsort(sorted, n, sizeof(*sorted), series_cmp);
	for (size_t i = 0; i < n; i++) {
		struct metrics_series *s = sorted[i];
		uint64_t cumulative = 0;

		switch (fam->type) {
		case METRICS_COUNTER:
			snprintf(value, sizeof(value), "%" PRIu64,
			         atomic_load_explicit(&s->value, memory_order_relaxed));
			render_sample(f, fam->name, "", fam->label, s->label_value, NULL, value);
			break;
		case METRICS_GAUGE:
			format_double(
			        bits_double(atomic_load_explicit(&s->value, memory_order_relaxed)),
			        value);
			render_sample(f, fam->name, "", fam->label, s->label_value, NULL, value);
			break;
		case METRICS_HISTOGRAM:
			for (size_t b = 0; b <= fam->n_bounds; b++) {
				cumulative +=
				        atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
				if (b < fam->n_bounds)
					format_double(fam->bounds[b], le);
				else
					strcpy(le, "+Inf");
				snprintf(value, sizeof(value), "%" PRIu64, cumulative);
				render_sample(f, fam->name, "_bucket", fam->label, s->label_value,
				              le, value);
			}
			format_double(
			        bits_double(atomic_load_explicit(&s->sum, memory_order_relaxed)),
			        value);
			render_sample(f, fam->name, "_sum", fam->label, s->label_value, NULL,
			              value);
			/* the count is the +Inf bucket, read once: the two always agree */
			snprintf(value, sizeof(value), "%" PRIu64, cumulative);
			render_sample(f, fam->name, "_count", fam->label, s->label_value, NULL,
			              value);
			break;
		}
	}
}

/* Write one sample line: name{label="value",le="le"} value. */
static void
render_sample(FILE *f, const char *name, const char *suffix, const char *label,
              const char *label_value, const char *le, const char *value)
{
	fputs(name, f);
	fputs(suffix, f);
	if (label || le) {
		fputc('{', f);
		if (label) {
			fprintf(f, "%s=\"", label);
			put_escaped(f, label_value, true);
			fputc('"', f);
		}
		if (le)
			fprintf(f, "%sle=\"%s\"", label ? "," : "", le);
		fputc('}', f);
	}
	fprintf(f, " %s\n", value);
}

/* Escape a HELP text (\\ and \n) or a label value (also \"). */
static void
put_escaped(FILE *f, const char *s, bool quote)
{
	for (; *s; s++)
		switch (*s) {
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '"':
			fputs(quote ? "\\\"" : "\"", f);
			break;
		default:
			fputc(*s, f);
			break;
		}
}

/*
 * Write a sample value as Prometheus reads it (Go's ParseFloat): NaN, +Inf, -Inf; integers
 * below 2^53 without a point or exponent; others in the shortest form that reads back exactly.
 */
static void
format_double(double v, char out[static 32])
{
	double magnitude = v < 0 ? -v : v;

	if (v != v) {
		strcpy(out, "NaN");
	} else if (magnitude > 1.7976931348623157e308) {
		strcpy(out, v > 0 ? "+Inf" : "-Inf");
	} else if (magnitude < 9007199254740992.0 && v == (double)(int64_t)v) {
		snprintf(out, 32, "%" PRId64, (int64_t)v); /* -0 becomes 0 */
	} else {
		snprintf(out, 32, "%.15g", v);
		if (strtod(out, NULL) != v)
			snprintf(out, 32, "%.17g", v);
	}
}

/* Order series by label value (the unlabelled one alone). */
static int
series_cmp(const void *a, const void *b)
{
	const struct metrics_series *x = *(struct metrics_series *const *)a;
	const struct metrics_series *y = *(struct metrics_series *const *)b;

	return strcmp(x->label_value ? x->label_value : "", y->label_value ? y->label_value : "");
}
