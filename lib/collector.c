/*
 * The collection pipeline: the reported-hour schedule, one hour (scope) collected at a time page
 * by page, every page stored with its cursor, the answers of section 4 turned into retries,
 * waits and errors, and the user-subscription cache. See collector.h for the rules.
 *
 * Everything is decided in one place, tick(), run by one loop timer: it is armed for the next
 * moment something may be done (a backoff or Retry-After ending, the next poll, the next hour
 * becoming due, the next cache refresh) and fired at once (a zero timeout, so the loop serves
 * other events first) whenever an answer changed the state. Answers only record what they learned
 * and kick the timer; they never start requests themselves.
 *
 * The schedule itself lives in the store (an hour's pass, saved nextLink and due time survive a
 * restart). What is only worth remembering while the process runs lives in "holds": an hour that
 * waits for the next poll (not ready, refused, failing), where it resumes, whether its one restart
 * from the first page is used, and what was logged about it (so the next failure of the same kind
 * is not logged again).
 */
#define LOG_MODULE "collector"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>

#include "auth.h"
#include "collector.h"
#include "collector-private.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "stack.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define DUE_LIMIT               256 /* schedule rows looked at per decision */
#define SCHEDULE_CHUNK          48  /* hours added to the schedule per loop turn */
#define DEFAULT_TIMEOUT_USEC    (120 * USEC_PER_SEC)
#define DEFAULT_RETRY_INITIAL   (1 * USEC_PER_SEC)
#define DEFAULT_RETRY_MAX       (300 * USEC_PER_SEC)
#define DEFAULT_UNKNOWN_REFRESH (60 * USEC_PER_SEC)

static void tick(evutil_socket_t fd, short what, void *userdata);
static void seed_subscriptions(struct collector *c);
static void plan(struct collector *c, uint64_t now, uint64_t *wake);
static void job_free(struct job *j);
static struct hold *hold_find(struct collector *c, int64_t hour, const char *scope);
static void hold_remove(struct collector *c, struct hold *h);

/* Make a collector. */
int
collector_new(struct event_base *base, const struct collector_options *o, struct collector **ret)
{
	struct collector *c;
	int r;

	if (!base || !o || !o->store || isempty(o->arm_endpoint) ||
	    isempty(o->provider_subscription) || (!o->transport && (!o->http || !o->auth)) ||
	    (o->collect_from >= 0 && !time_on_hour(o->collect_from)))
		return -EINVAL;
	{
		_cleanup_free_ char *u1 = NULL, *u2 = NULL;

		/* every URL made later is made from these two: check them once */
		if (stack_usage_url(o->arm_endpoint, o->provider_subscription, 0, NULL, &u1) < 0 ||
		    stack_subscriptions_url(o->arm_endpoint, o->provider_subscription, &u2) < 0)
			return -EINVAL;
	}

	c = xcalloc(1, sizeof(*c));
	c->base = base;
	c->store = o->store;
	c->metrics = o->metrics;
	c->http = o->http;
	c->auth = o->auth;
	if (o->transport)
		c->tp = *o->transport;
	else
		c->tp = (struct collector_transport){
		        .get = collector_stack_get,
		        .cancel = collector_stack_cancel,
		        .token_refused = collector_stack_token_refused,
		        .userdata = c,
		};
	c->arm_endpoint = xstrdup(o->arm_endpoint);
	c->provider = xstrdup(o->provider_subscription);
	c->collect_from = o->collect_from;
	c->set = o->settings;
	c->timeout_usec = o->request_timeout_usec ? o->request_timeout_usec : DEFAULT_TIMEOUT_USEC;
	c->retry_initial = o->retry_initial_usec ? o->retry_initial_usec : DEFAULT_RETRY_INITIAL;
	c->retry_max = o->retry_max_usec ? o->retry_max_usec : DEFAULT_RETRY_MAX;
	c->unknown_refresh =
	        o->unknown_refresh_usec ? o->unknown_refresh_usec : DEFAULT_UNKNOWN_REFRESH;
	c->random = o->random;
	c->timer = evtimer_new(base, tick, c);
	if (!c->timer) {
		collector_free(c);
		return -ENOMEM;
	}
	if (!o->parse_on_loop) {
		r = worker_new(base, &c->worker);
		if (r < 0) {
			collector_free(c);
			return r;
		}
	}
	*ret = c;
	return 0;
}

/* Start collecting from the next loop turn. */
int
collector_start(struct collector *c)
{
	int64_t hour;

	if (!c)
		return -EINVAL;
	if (c->started)
		return 0;
	c->started = true;
	c->refresh_due = 0; /* the cache is read at once: splits need the list in memory */
	seed_subscriptions(c);
	if (c->cursor == 0 && store_cursor_hour(c->store, &hour) >= 0) {
		c->cursor = hour;
		metrics_set(c->metrics, METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, NULL,
		            (double)c->cursor);
	}
	collector_kick(c);
	return 0;
}

static int
seed_one(void *userdata, const struct store_subscription *sub)
{
	struct collector *c = userdata;

	collector_strset_add(&c->subs, sub->subscription_id);
	return 0;
}

/*
 * Know, at the start, every user subscription of the store's cache (those that left the stamp's
 * list too: their late usage is still reported) and those that scopes of the schedule name
 * (per_subscriber asks each of them). One read of the cache, before the loop is busy.
 */
static void
seed_subscriptions(struct collector *c)
{
	struct store_hour *rows = NULL;
	size_t n = 0;
	int r;

	r = store_subscriptions_list(c->store, seed_one, c);
	if (r < 0)
		log_warning_errno(r,
		                  "cannot read the user-subscription cache: %s; the stamp's list "
		                  "will do",
		                  store_errmsg(c->store));
	if (store_hours_due(c->store, INT64_MAX, 0, &rows, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		if (rows[i].scope[0])
			collector_strset_add(&c->subs, rows[i].scope);
		store_hour_done(&rows[i]);
	}
	free(rows);
}

/* Stop: cancel what is in flight, forget the job (its cursor is in the store). */
void
collector_stop(struct collector *c)
{
	if (!c)
		return;
	c->started = false;
	if (c->timer)
		event_del(c->timer);
	if (c->job) {
		if (c->job->handle)
			c->tp.cancel(c->tp.userdata, c->job->handle);
		collector_job_cancel_work(c, c->job);
		job_free(c->job);
		c->job = NULL;
	}
	collector_next_drop(c);
	if (c->refresh) {
		collector_refresh_free(c, c->refresh);
		c->refresh = NULL;
	}
}

/* Stop and free. */
struct collector *
collector_free(struct collector *c)
{
	if (!c)
		return NULL;
	collector_stop(c);
	c->worker = worker_free(c->worker);
	if (c->timer)
		event_free(c->timer);
	for (size_t i = 0; i < c->n_holds; i++) {
		free(c->holds[i].scope);
		free(c->holds[i].resume_url);
		free(c->holds[i].error);
	}
	free(c->holds);
	collector_strset_clear(&c->subs);
	collector_strset_clear(&c->skipped);
	collector_strset_clear(&c->unknown);
	collector_strset_clear(&c->unknown_logged);
	free(c->stamp_error);
	free(c->store_error);
	free(c->refresh_error);
	free(c->arm_endpoint);
	free(c->provider);
	free(c);
	return NULL;
}

/* Apply new settings. */
void
collector_apply(struct collector *c, const struct collector_settings *settings)
{
	if (!c || !settings)
		return;
	if (settings->per_subscriber != c->set.per_subscriber)
		log_info("per_subscriber is now %s: hours scheduled from now on are collected %s",
		         settings->per_subscriber ? "on" : "off",
		         settings->per_subscriber ? "one user subscription at a time"
		                                  : "for all tenants at once");
	c->set = *settings;
	if (c->refresh_last)
		c->refresh_due = c->refresh_last + c->set.refresh_interval_usec;
	if (c->started)
		collector_kick(c);
}

/* Use another token source: what waits for a token, for a backoff or is in flight goes at once. */
void
collector_set_auth(struct collector *c, struct auth *auth)
{
	if (!c || !auth || c->tp.get != collector_stack_get)
		return;
	c->auth = auth;
	if (c->job) {
		if (c->job->handle)
			c->tp.cancel(c->tp.userdata, c->job->handle);
		c->job->handle = NULL;
		c->job->prefetch_adopted = false;
		collector_job_drop_prefetch(c, c->job);
		/* a backoff grown on the old credentials says nothing about the new ones */
		c->job->not_before = 0;
		c->job->attempt = 0;
	}
	collector_next_drop(c); /* asked with the old credentials */
	if (c->refresh && c->refresh->handle) {
		c->tp.cancel(c->tp.userdata, c->refresh->handle);
		c->refresh->handle = NULL;
	}
	c->refresh_not_before = 0;
	c->refresh_attempt = 0;
	collector_kick(c);
}

/* Fill a status summary. */
void
collector_get_status(const struct collector *c, struct collector_status *ret)
{
	*ret = (struct collector_status){
	        .cursor = c->cursor,
	        .last_page_at = c->last_page_at,
	        .consecutive_failures = c->consecutive_failures,
	        .paused_backlog = c->paused_backlog,
	        .store_full = c->store_full,
	        .throttled = c->throttle_until > now_monotonic_usec(),
	        .subscriptions_failing = c->refresh_error != NULL,
	};
}

/* ---- decisions ---------------------------------------------------------------------------- */

/* Run tick() on the next loop turn. */
void
collector_kick(struct collector *c)
{
	if (c->started)
		event_add(c->timer, &(struct timeval){0});
}

/* Arm the timer for the monotonic time at. */
static void
arm(struct collector *c, uint64_t at, uint64_t now)
{
	uint64_t d = at > now ? at - now : 0;
	struct timeval tv = {.tv_sec = (time_t)(d / USEC_PER_SEC),
	                     .tv_usec = (suseconds_t)(d % USEC_PER_SEC)};

	event_add(c->timer, &tv);
}

/* Decide what to do now, and when to look again. */
static void
tick(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct collector *c = userdata;
	uint64_t now = now_monotonic_usec();
	uint64_t wake = now + MAX(c->set.poll_interval_usec, USEC_PER_MSEC);

	if (!c->started)
		return;
	collector_refresh_step(c, now, &wake);
	if (c->job && !c->job->handle && !c->job->parse)
		collector_job_step(c, now, &wake);
	if (!c->job) {
		plan(c, now, &wake);
		/* the next hour asked early is for a job started now, not later */
		if (!c->job)
			collector_next_drop(c);
	}
	if (c->started && !evtimer_pending(c->timer, NULL))
		arm(c, wake, now);
}

/* The hour that starts at or before t. */
static int64_t
floor_hour(int64_t t)
{
	int64_t h = t - t % HOUR_SEC;

	return t < 0 && t % HOUR_SEC ? h - HOUR_SEC : h;
}

/* A reported hour as text for the log. */
const char *
collector_hour_text(int64_t hour, char buf[static TIME_RFC3339_LEN + 1])
{
	return time_format_rfc3339(hour, buf);
}

/* Log a store failure once per kind; -ENOSPC is the store-full pause. */
void
collector_store_failed(struct collector *c, int r, const char *what)
{
	uint64_t now = now_monotonic_usec();

	if (r == -ENOSPC) {
		metrics_inc(c->metrics, METRICS_STORE_FULL_TOTAL, NULL);
		c->full_until = now + c->set.poll_interval_usec;
		if (!c->store_full)
			log_fields(LOG_ERR, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_STORE_FULL),
			           "the store is full (%s): collection pauses, the cursor stays; "
			           "trying again every poll interval",
			           store_errmsg(c->store));
		c->store_full = true;
		return;
	}
	if (!streq_ptr(c->store_error, what)) {
		log_error_errno(r, "the store failed while %s: %s; trying again at the next poll",
		                what, store_errmsg(c->store));
		free(c->store_error);
		c->store_error = xstrdup(what);
	}
}

/* The store took a write: leave the store-full and store-error states. */
void
collector_store_ok(struct collector *c)
{
	if (c->store_full)
		log_notice("the store accepts pages again: collection goes on");
	c->store_full = false;
	if (c->store_error)
		log_info("the store works again");
	free(c->store_error);
	c->store_error = NULL;
}

/* False while the store holds max_pending records waiting to be forwarded (logged on change). */
bool
collector_backlog_ok(struct collector *c)
{
	uint64_t backlog = 0;
	char n[32];
	int r;

	if (c->set.max_pending == 0) {
		c->paused_backlog = false;
		return true;
	}
	r = store_backlog(c->store, &backlog);
	if (r < 0) {
		collector_store_failed(c, r, "counting the backlog");
		return false;
	}
	snprintf(n, sizeof(n), "%" PRIu64, backlog);
	if (backlog >= c->set.max_pending) {
		if (!c->paused_backlog)
			log_fields(LOG_WARNING, LOG_FIELDS("AZS_RECORDS", n),
			           "%" PRIu64
			           " records wait to be forwarded ([store] max_pending is "
			           "%" PRIu64 "): collection pauses until fewer wait",
			           backlog, c->set.max_pending);
		c->paused_backlog = true;
		return false;
	}
	if (c->paused_backlog)
		log_fields(LOG_NOTICE, LOG_FIELDS("AZS_RECORDS", n),
		           "%" PRIu64 " records wait to be forwarded: collection goes on", backlog);
	c->paused_backlog = false;
	return true;
}

/*
 * Add every reported hour that has become collectable (now >= H + 1h + settle) to the schedule,
 * a chunk per loop turn; set *wake for the next one.
 */
static void
schedule_hours(struct collector *c, uint64_t now, uint64_t *wake)
{
	int64_t real = now_seconds(), settle = (int64_t)(c->set.settle_usec / USEC_PER_SEC);
	int64_t newest = floor_hour(real - settle - HOUR_SEC), first, last, h, due;
	unsigned n = 0;
	int r;

	r = store_cursor_hour(c->store, &last);
	if (r == -ENOENT)
		first = c->collect_from >= 0 ? c->collect_from : floor_hour(real - 24 * HOUR_SEC);
	else if (r < 0) {
		collector_store_failed(c, r, "reading the cursor");
		return;
	} else
		first = last + HOUR_SEC;

	for (h = first; h <= newest; h += HOUR_SEC) {
		if (n++ == SCHEDULE_CHUNK) {
			*wake = now; /* more next turn: signals and I/O are served between chunks */
			return;
		}
		r = store_hour_schedule(c->store, h, "", h + HOUR_SEC + settle);
		if (r < 0) {
			collector_store_failed(c, r, "scheduling reported hours");
			return;
		}
	}
	collector_store_ok(c);
	/* the next hour becomes collectable at its end plus settle */
	due = MAX(first, newest + HOUR_SEC) + HOUR_SEC + settle;
	if (due > real)
		*wake = MIN(*wake, now + (uint64_t)(due - real) * USEC_PER_SEC);
}

/*
 * Split an all-tenants hour into one scope per known user subscription (per_subscriber), each
 * with the same pass and its first page as its cursor, then drop the all-tenants row. A crash
 * between the two leaves both; the split is then made again (the scopes start over, their
 * records deduplicate).
 */
static int
split_hour(struct collector *c, const struct store_hour *row)
{
	int64_t real = now_seconds();
	struct store_page page = {
	        .reported_hour = row->hour,
	        .pass = row->pass,
	        .now = real,
	};
	char h[TIME_RFC3339_LEN + 1];
	int r;

	for (size_t i = 0; i < c->subs.n; i++) {
		_cleanup_free_ char *url = NULL;

		r = stack_usage_url(c->arm_endpoint, c->provider, row->hour, c->subs.v[i], &url);
		if (r < 0)
			continue; /* not a GUID: never queried */
		page.scope = c->subs.v[i];
		page.next_link = url;
		r = store_put_page(c->store, &page, NULL);
		if (r < 0)
			return r;
	}
	page.scope = "";
	page.next_link = NULL;
	page.next_due_at = 0;
	r = store_put_page(c->store, &page, NULL);
	if (r < 0)
		return r;
	log_debug("reported hour %s (pass %u) split into %zu user subscriptions",
	          collector_hour_text(row->hour, h), row->pass, c->subs.n);
	return 0;
}

/* Make the job for a schedule row. */
static struct job *
job_new(struct collector *c, const struct store_hour *row)
{
	struct job *j = xcalloc(1, sizeof(*j));
	struct hold *h = hold_find(c, row->hour, row->scope);
	int r;

	j->hour = row->hour;
	j->scope = xstrdup(row->scope);
	j->pass = row->pass;
	r = stack_usage_url(c->arm_endpoint, c->provider, row->hour,
	                    row->scope[0] ? row->scope : NULL, &j->first_url);
	assert(r >= 0); /* checked by pick_row */
	if (h && h->pass == row->pass) {
		j->restarted = h->restarted;
		j->error = TAKE_PTR(h->error);
		if (h->resume_url)
			j->url = TAKE_PTR(h->resume_url);
	}
	if (h)
		hold_remove(c, h);
	if (!j->url)
		j->url = xstrdup(row->next_link ? row->next_link : j->first_url);
	collector_strset_add(&j->seen, j->first_url);
	collector_strset_add(&j->seen, j->url);
	return j;
}

/*
 * Pick the oldest due schedule row that is not waiting for a poll, splitting all-tenants rows in
 * per_subscriber mode; start its job.
 */
static void
plan(struct collector *c, uint64_t now, uint64_t *wake)
{
	struct store_hour *rows = NULL;
	size_t n = 0;
	int r;

	if (c->store_full && now < c->full_until) {
		*wake = MIN(*wake, c->full_until);
		return;
	}
	if (!collector_backlog_ok(c))
		return;
	schedule_hours(c, now, wake);
	if (c->store_full && now < c->full_until)
		return;

	r = store_hours_due(c->store, now_seconds(), DUE_LIMIT, &rows, &n);
	if (r < 0) {
		collector_store_failed(c, r, "reading the schedule");
		return;
	}
	for (size_t i = 0; i < n && !c->job; i++) {
		const struct store_hour *row = &rows[i];
		struct hold *h = hold_find(c, row->hour, row->scope);
		_cleanup_free_ char *url = NULL;

		if (h && h->pass == row->pass && h->not_before > now) {
			*wake = MIN(*wake, h->not_before);
			continue;
		}
		if (row->scope[0] &&
		    stack_usage_url(c->arm_endpoint, c->provider, row->hour, row->scope, &url) < 0)
			continue; /* a scope that is not a subscription id: never asked for */
		if (c->set.per_subscriber && !row->scope[0]) {
			if (!c->subs_loaded || c->subs_fresh_at < row->hour + HOUR_SEC) {
				/* a subscription made late in the hour must be in the list */
				c->split_wants = MAX(c->split_wants, row->hour + HOUR_SEC);
				collector_refresh_step(c, now, wake);
				continue;
			}
			r = split_hour(c, row);
			if (r < 0) {
				collector_store_failed(c, r,
				                       "splitting an hour into user subscriptions");
				break;
			}
			*wake = now; /* its scopes are due now */
			break;
		}
		c->job = job_new(c, row);
		collector_next_take(c, c->job);
		if (!c->job->handle)
			collector_job_step(c, now, wake);
	}
	for (size_t i = 0; i < n; i++)
		store_hour_done(&rows[i]);
	free(rows);
}

/* Remember the job's hour in a hold and end the job. */
void
collector_job_park(struct collector *c, struct job *j, uint64_t not_before, const char *resume_url)
{
	struct hold *h = hold_find(c, j->hour, j->scope);

	if (!h) {
		c->holds = xreallocarray(c->holds, c->n_holds + 1, sizeof(*c->holds));
		h = &c->holds[c->n_holds++];
		*h = (struct hold){.hour = j->hour, .scope = xstrdup(j->scope)};
	}
	h->pass = j->pass;
	h->not_before = not_before;
	free(h->resume_url);
	h->resume_url = resume_url ? xstrdup(resume_url) : NULL;
	h->restarted = j->restarted;
	free(h->error);
	h->error = TAKE_PTR(j->error);
	collector_job_cancel_work(c, j);
	if (c->job == j)
		c->job = NULL;
	job_free(j);
	collector_kick(c);
}

/* End the job: the hour is done for this pass (or skipped). */
void
collector_job_end(struct collector *c, struct job *j)
{
	struct hold *h = hold_find(c, j->hour, j->scope);

	if (h)
		hold_remove(c, h);
	collector_job_cancel_work(c, j);
	if (c->job == j)
		c->job = NULL;
	job_free(j);
	collector_kick(c);
}

static void
job_free(struct job *j)
{
	if (!j)
		return;
	free(j->scope);
	free(j->first_url);
	free(j->url);
	collector_strset_clear(&j->seen);
	free(j->error);
	free(j);
}

/* ---- holds and sets ----------------------------------------------------------------------- */

static struct hold *
hold_find(struct collector *c, int64_t hour, const char *scope)
{
	for (size_t i = 0; i < c->n_holds; i++)
		if (c->holds[i].hour == hour && streq(c->holds[i].scope, scope))
			return &c->holds[i];
	return NULL;
}

static void
hold_remove(struct collector *c, struct hold *h)
{
	size_t i = (size_t)(h - c->holds);

	free(h->scope);
	free(h->resume_url);
	free(h->error);
	c->holds[i] = c->holds[--c->n_holds];
}

static int
strset_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

bool
collector_strset_has(const struct strset *s, const char *v)
{
	return s->n && bsearch(&v, s->v, s->n, sizeof(*s->v), strset_cmp);
}

/* Add v; false when it was there already. */
bool
collector_strset_add(struct strset *s, const char *v)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int d = strcmp(s->v[mid], v);

		if (d == 0)
			return false;
		if (d < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	s->v = xreallocarray(s->v, s->n + 1, sizeof(*s->v));
	memmove(s->v + lo + 1, s->v + lo, (s->n - lo) * sizeof(*s->v));
	s->v[lo] = xstrdup(v);
	s->n++;
	return true;
}

void
collector_strset_clear(struct strset *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	*s = (struct strset){0};
}
