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
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "stack.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define HOUR_SEC                INT64_C(3600)
#define DUE_LIMIT               256 /* schedule rows looked at per decision */
#define SCHEDULE_CHUNK          48  /* hours added to the schedule per loop turn */
#define DEFAULT_TIMEOUT_USEC    (120 * USEC_PER_SEC)
#define DEFAULT_RETRY_INITIAL   (1 * USEC_PER_SEC)
#define DEFAULT_RETRY_MAX       (300 * USEC_PER_SEC)
#define DEFAULT_UNKNOWN_REFRESH (60 * USEC_PER_SEC)
#define API_USAGE               "usage"
#define API_SUBSCRIPTIONS       "subscriptions"

/* collect_pages_total{result} */
#define PAGE_OK        "ok"
#define PAGE_NOT_READY "not_ready"
#define PAGE_RETRY     "retry"
#define PAGE_ERROR     "error"
#define PAGE_SKIPPED   "skipped"

/* A set of strings (nextLinks, subscription ids): sorted, for bsearch. */
struct strset {
	char **v;
	size_t n;
};

/* An hour (scope) remembered between jobs: see the module comment. */
struct hold {
	int64_t hour;
	char *scope;
	unsigned pass;
	uint64_t not_before; /* monotonic */
	char *resume_url;    /* NULL: the store's saved cursor */
	bool restarted;
	char *error; /* the state logged for the hour; NULL: none */
};

/* The hour (scope) being collected. */
struct job {
	int64_t hour;
	char *scope; /* "" or a user subscription */
	unsigned pass;
	char *first_url;
	char *url;          /* the next request */
	struct strset seen; /* the first page and every nextLink of this pass */
	bool restarted;     /* the refused-nextLink restart of this pass is used */
	bool token_retried; /* the one retry after a 401 is used */
	unsigned attempt;   /* transient failures in a row */
	uint64_t not_before;
	void *handle; /* the request in flight */
	char *error;  /* the state logged for the hour; NULL: none */
	size_t pages, records, inserted, duplicates, conflicts, quarantined;
};

/* A refresh of the user-subscription cache in progress. */
struct refresh {
	char *url;
	struct strset seen;
	void *handle;
	int64_t started_at; /* realtime */
	struct stack_subscription_list **lists;
	size_t n_lists;
	size_t skipped;
	char *skipped_reason;
};

/* One request of the default transport. */
struct stack_get {
	struct collector *c;
	char *url;
	uint64_t timeout_usec;
	collector_reply_fn done;
	void *userdata;
	struct auth_wait *wait;
	struct http_request *http;
	char *token;
};

struct collector {
	struct event_base *base;
	struct store *store;
	struct metrics *metrics;
	struct http_client *http;
	struct auth *auth;
	struct collector_transport tp;
	char *arm_endpoint;
	char *provider;
	int64_t collect_from;
	struct collector_settings set;
	uint64_t timeout_usec, retry_initial, retry_max, unknown_refresh;
	const struct http_random *random;

	struct event *timer;
	bool started;

	struct job *job;
	struct hold *holds;
	size_t n_holds;

	uint64_t throttle_until; /* monotonic: no request to the stamp before */
	char *stamp_error;       /* the stamp's failing state as logged; NULL: answering */
	bool paused_backlog;
	bool store_full;
	uint64_t full_until;
	char *store_error; /* another store failure as logged */

	/* the user-subscription cache */
	struct refresh *refresh;
	struct strset subs;    /* every user subscription known in this process */
	bool subs_loaded;      /* a refresh succeeded in this process */
	int64_t subs_fresh_at; /* realtime at which that refresh started */
	int64_t split_wants;   /* a split waits for a refresh started at or after this */
	uint64_t refresh_due;  /* monotonic: the next periodic refresh */
	uint64_t refresh_last; /* monotonic: the last successful one */
	bool unknown_wanted;   /* a page named a subscription the cache does not know */
	struct strset unknown; /* not in the store either, until the next refresh */
	struct strset unknown_logged;
	uint64_t unknown_asked_at; /* monotonic */
	unsigned refresh_attempt;
	uint64_t refresh_not_before;
	char *refresh_error;
	size_t subs_listed;
	struct strset skipped; /* subscriptions logged as not direct tenants */

	int64_t cursor;
	int64_t last_page_at;
	unsigned consecutive_failures;
};

static void tick(evutil_socket_t fd, short what, void *userdata);
static void kick(struct collector *c);
static void seed_subscriptions(struct collector *c);
static void plan(struct collector *c, uint64_t now, uint64_t *wake);
static void job_step(struct collector *c, uint64_t now, uint64_t *wake);
static void job_free(struct job *j);
static void refresh_step(struct collector *c, uint64_t now, uint64_t *wake);
static void refresh_free(struct collector *c, struct refresh *f);
static void refresh_failed(struct collector *c, const char *state, const char *status,
                           const char *code);
static struct hold *hold_find(struct collector *c, int64_t hour, const char *scope);
static void hold_remove(struct collector *c, struct hold *h);
static void strset_clear(struct strset *s);
static bool strset_has(const struct strset *s, const char *v);
static bool strset_add(struct strset *s, const char *v);
static int stack_get(void *userdata, const char *url, uint64_t timeout_usec,
                     collector_reply_fn done, void *done_userdata, void **ret_handle);
static void stack_cancel(void *userdata, void *handle);
static void stack_token_refused(void *userdata, const char *token);

/* Make a collector. */
int
collector_new(struct event_base *base, const struct collector_options *o, struct collector **ret)
{
	struct collector *c;

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
		        .get = stack_get,
		        .cancel = stack_cancel,
		        .token_refused = stack_token_refused,
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
	kick(c);
	return 0;
}

static int
seed_one(void *userdata, const struct store_subscription *sub)
{
	struct collector *c = userdata;

	strset_add(&c->subs, sub->subscription_id);
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
			strset_add(&c->subs, rows[i].scope);
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
		job_free(c->job);
		c->job = NULL;
	}
	if (c->refresh) {
		refresh_free(c, c->refresh);
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
	if (c->timer)
		event_free(c->timer);
	for (size_t i = 0; i < c->n_holds; i++) {
		free(c->holds[i].scope);
		free(c->holds[i].resume_url);
		free(c->holds[i].error);
	}
	free(c->holds);
	strset_clear(&c->subs);
	strset_clear(&c->skipped);
	strset_clear(&c->unknown);
	strset_clear(&c->unknown_logged);
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
		kick(c);
}

/* Use another token source: what waits for a token, for a backoff or is in flight goes at once. */
void
collector_set_auth(struct collector *c, struct auth *auth)
{
	if (!c || !auth || c->tp.get != stack_get)
		return;
	c->auth = auth;
	if (c->job) {
		if (c->job->handle)
			c->tp.cancel(c->tp.userdata, c->job->handle);
		c->job->handle = NULL;
		/* a backoff grown on the old credentials says nothing about the new ones */
		c->job->not_before = 0;
		c->job->attempt = 0;
	}
	if (c->refresh && c->refresh->handle) {
		c->tp.cancel(c->tp.userdata, c->refresh->handle);
		c->refresh->handle = NULL;
	}
	c->refresh_not_before = 0;
	c->refresh_attempt = 0;
	kick(c);
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
static void
kick(struct collector *c)
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
	refresh_step(c, now, &wake);
	if (c->job && !c->job->handle)
		job_step(c, now, &wake);
	if (!c->job)
		plan(c, now, &wake);
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
static const char *
hour_text(int64_t hour, char buf[static TIME_RFC3339_LEN + 1])
{
	return time_format_rfc3339(hour, buf);
}

/* Log a store failure once per kind; -ENOSPC is the store-full pause. */
static void
store_failed(struct collector *c, int r, const char *what)
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
static void
store_ok(struct collector *c)
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
static bool
backlog_ok(struct collector *c)
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
		store_failed(c, r, "counting the backlog");
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
		store_failed(c, r, "reading the cursor");
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
			store_failed(c, r, "scheduling reported hours");
			return;
		}
	}
	store_ok(c);
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
	          hour_text(row->hour, h), row->pass, c->subs.n);
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
	strset_add(&j->seen, j->first_url);
	strset_add(&j->seen, j->url);
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
	if (!backlog_ok(c))
		return;
	schedule_hours(c, now, wake);
	if (c->store_full && now < c->full_until)
		return;

	r = store_hours_due(c->store, now_seconds(), DUE_LIMIT, &rows, &n);
	if (r < 0) {
		store_failed(c, r, "reading the schedule");
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
				refresh_step(c, now, wake);
				continue;
			}
			r = split_hour(c, row);
			if (r < 0) {
				store_failed(c, r, "splitting an hour into user subscriptions");
				break;
			}
			*wake = now; /* its scopes are due now */
			break;
		}
		c->job = job_new(c, row);
		job_step(c, now, wake);
	}
	for (size_t i = 0; i < n; i++)
		store_hour_done(&rows[i]);
	free(rows);
}

/* Remember the job's hour in a hold and end the job. */
static void
job_park(struct collector *c, struct job *j, uint64_t not_before, const char *resume_url)
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
	if (c->job == j)
		c->job = NULL;
	job_free(j);
	kick(c);
}

/* End the job: the hour is done for this pass (or skipped). */
static void
job_end(struct collector *c, struct job *j)
{
	struct hold *h = hold_find(c, j->hour, j->scope);

	if (h)
		hold_remove(c, h);
	if (c->job == j)
		c->job = NULL;
	job_free(j);
	kick(c);
}

static void
job_free(struct job *j)
{
	if (!j)
		return;
	free(j->scope);
	free(j->first_url);
	free(j->url);
	strset_clear(&j->seen);
	free(j->error);
	free(j);
}

static void on_job_reply(const struct collector_reply *reply, void *userdata);

/*
 * An error of the hour: log it unless the same was logged last for the hour, count it for
 * readiness when asked, and ask again at the next poll from resume_url (NULL: the saved cursor).
 */
static void hour_wait(struct collector *c, struct job *j, const char *state, bool failure,
                      int level, const char *resume_url, const char *const *fields,
                      const char *format, ...) _printf_(8, 9);

static void
hour_wait(struct collector *c, struct job *j, const char *state, bool failure, int level,
          const char *resume_url, const char *const *fields, const char *format, ...)
{
	if (!streq_ptr(j->error, state)) {
		va_list ap;

		va_start(ap, format);
		if (level <= log_get_max_level())
			log_internalv(level, 0, LOG_MODULE, __FILE__, __LINE__, __func__, fields,
			              format, ap);
		va_end(ap);
		free(j->error);
		j->error = xstrdup(state);
	}
	if (failure)
		c->consecutive_failures++;
	job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, resume_url);
}

/* Send the job's next request, unless paused, throttled or in its backoff. */
static void
job_step(struct collector *c, uint64_t now, uint64_t *wake)
{
	struct job *j = c->job;
	uint64_t at = MAX(j->not_before, c->throttle_until);
	char h[TIME_RFC3339_LEN + 1];
	int r;

	if (!backlog_ok(c) || (c->store_full && now < c->full_until)) {
		/* the next page waits; the saved cursor (or where the job was) is where it resumes
		 */
		job_park(c, j, now, j->url);
		return;
	}
	if (now < at) {
		*wake = MIN(*wake, at);
		return;
	}
	if (!stack_link_authority_ok(j->url, c->arm_endpoint)) {
		_cleanup_free_ char *host = NULL;

		if (stack_url_host(j->url, &host) < 0)
			host = xstrdup("(no host)");
		metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_ERROR);
		hour_wait(c, j, "authority", true, LOG_ERR, j->first_url,
		          LOG_FIELDS("AZS_REPORTED_HOUR", hour_text(j->hour, h), "AZS_SUBSCRIPTION",
		                     j->scope[0] ? j->scope : NULL),
		          "reported hour %s: the stamp's nextLink names another authority (%s) "
		          "than arm_endpoint: not followed, the token is sent only to %s; asking "
		          "again from the first page at the next poll",
		          h, host, c->arm_endpoint);
		return;
	}
	r = c->tp.get(c->tp.userdata, j->url, c->timeout_usec, on_job_reply, c, &j->handle);
	if (r < 0) {
		j->handle = NULL;
		log_error_errno(r, "cannot start a usage request: %m");
		job_park(c, j, now + c->set.poll_interval_usec, j->url);
	}
}

/* The stamp answered (anything but a transient failure): leave the failing state. */
static void
stamp_ok(struct collector *c)
{
	if (c->stamp_error)
		log_info("the stamp's usage API answers again");
	free(c->stamp_error);
	c->stamp_error = NULL;
}

/*
 * A transient failure (503, 429, 5xx, 408, time-out, reset, malformed page, no token): retry the
 * same request after a backoff; a Retry-After holds every request to the stamp until it passes.
 * Logged when the kind of failure changes, not per retry.
 */
static void
transient(struct collector *c, struct job *j, const char *state, long status, const char *code,
          const char *retry_after, const char *detail)
{
	uint64_t now = now_monotonic_usec(), delay, ra = 0;
	char h[TIME_RFC3339_LEN + 1], st[16];
	bool throttle = false;

	if (retry_after &&
	    http_retry_after_parse(retry_after, now_seconds(), c->retry_max, &ra) >= 0) {
		c->throttle_until = MAX(c->throttle_until, now + ra);
		throttle = true;
	}
	if (!streq_ptr(c->stamp_error, state)) {
		snprintf(st, sizeof(st), "%ld", status);
		log_fields(
		        LOG_WARNING,
		        LOG_FIELDS("AZS_REPORTED_HOUR", hour_text(j->hour, h), "AZS_HTTP_STATUS",
		                   status ? st : NULL, "AZS_ARM_ERROR", code, "AZS_SUBSCRIPTION",
		                   j->scope[0] ? j->scope : NULL),
		        "the stamp's usage API is failing (%s)%s; retrying with backoff%s%s",
		        detail,
		        status == 504 && !j->scope[0]
		                ? ": a gateway time-out of the all-tenants query; on a large stamp "
		                  "set [stack] per_subscriber = true to ask one user subscription "
		                  "at a time"
		                : "",
		        throttle ? ", no request before its Retry-After: " : "",
		        throttle ? retry_after : "");
		free(c->stamp_error);
		c->stamp_error = xstrdup(state);
	}
	metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_RETRY);
	delay = http_backoff(j->attempt++, c->retry_initial, c->retry_max, c->random);
	j->not_before = now + delay;
	kick(c);
}

/* An error of the identity or the connection, not of one hour: nothing to the stamp for a poll. */
static void
hold_stamp(struct collector *c)
{
	c->throttle_until =
	        MAX(c->throttle_until, now_monotonic_usec() + c->set.poll_interval_usec);
}

/* The saved or followed nextLink was refused: the hour again from its first page, once a pass. */
static void
restart_hour(struct collector *c, struct job *j, long status, const char *code)
{
	char h[TIME_RFC3339_LEN + 1], st[16];

	snprintf(st, sizeof(st), "%ld", status);
	log_fields(LOG_NOTICE,
	           LOG_FIELDS("AZS_REPORTED_HOUR", hour_text(j->hour, h), "AZS_HTTP_STATUS", st,
	                      "AZS_ARM_ERROR", code, "AZS_SUBSCRIPTION",
	                      j->scope[0] ? j->scope : NULL),
	           "reported hour %s: the stamp refused the nextLink (%ld %s); collecting the "
	           "hour again from its first page",
	           h, status, code ? code : "");
	j->restarted = true;
	free(j->url);
	j->url = xstrdup(j->first_url);
	strset_clear(&j->seen);
	strset_add(&j->seen, j->first_url);
	j->attempt = 0;
	j->not_before = 0;
	kick(c);
}

/* SubscriberIdIsNotDirectTenant: the hour completes without this subscription. */
static void
skip_subscription(struct collector *c, struct job *j, const char *code, const char *message)
{
	struct store_page page = {
	        .reported_hour = j->hour,
	        .scope = j->scope,
	        .pass = j->pass,
	        .now = now_seconds(),
	};
	char h[TIME_RFC3339_LEN + 1];
	int r;

	r = store_put_page(c->store, &page, NULL);
	if (r < 0) {
		store_failed(c, r, "skipping a user subscription");
		job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, NULL);
		return;
	}
	store_ok(c);
	metrics_inc(c->metrics, METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, NULL);
	metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_SKIPPED);
	if (strset_add(&c->skipped, j->scope))
		log_fields(LOG_NOTICE,
		           LOG_FIELDS("AZS_SUBSCRIPTION", j->scope, "AZS_ARM_ERROR", code,
		                      "AZS_REPORTED_HOUR", hour_text(j->hour, h)),
		           "user subscription %s is not a direct tenant of this provider (%s: %s): "
		           "its usage is not collected here; skipped for every hour it is refused "
		           "(logged once)",
		           j->scope, code, message ? message : "");
	job_end(c, j);
}

/* Look up the subscriptions a page names; ask for a refresh when one is unknown. */
static void
check_subscriptions(struct collector *c, const struct stack_usage_page *page)
{
	for (size_t i = 0; i < page->n_records; i++) {
		const char *sub = page->records[i].subscription_id;
		struct store_subscription s = {0};
		int r;

		if (!sub || page->records[i].reason || strset_has(&c->subs, sub) ||
		    strset_has(&c->unknown, sub))
			continue;
		r = store_subscription_get(c->store, sub, &s);
		if (r >= 0) {
			strset_add(&c->subs, sub); /* known from an earlier run (perhaps gone) */
			store_subscription_done(&s);
		} else if (r == -ENOENT) {
			strset_add(&c->unknown, sub);
			if (strset_add(&c->unknown_logged, sub))
				log_fields(
				        LOG_INFO, LOG_FIELDS("AZS_SUBSCRIPTION", sub),
				        "usage names user subscription %s, which the cache does not "
				        "know: refreshing the cache (logged once per subscription)",
				        sub);
			c->unknown_wanted = true;
		}
	}
}

/* Store a parsed page with the cursor that follows it; go on with the next page or end. */
static void
store_page(struct collector *c, struct job *j, struct stack_usage_page *page)
{
	_cleanup_free_ struct store_record *records = NULL;
	struct store_page_result res = {0};
	int64_t real = now_seconds();
	char h[TIME_RFC3339_LEN + 1], n[32];
	struct store_page sp;
	int r;

	hour_text(j->hour, h);
	if (page->next_link && strset_has(&j->seen, page->next_link)) {
		metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_ERROR);
		hour_wait(c, j, "loop", true, LOG_ERR, j->first_url,
		          LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_SUBSCRIPTION",
		                     j->scope[0] ? j->scope : NULL),
		          "reported hour %s: the stamp's nextLink repeats one seen before in the "
		          "hour (a loop): page not stored; asking again from the first page at the "
		          "next poll",
		          h);
		return;
	}
	records = xcalloc(MAX(page->n_records, 1), sizeof(*records));
	for (size_t i = 0; i < page->n_records; i++) {
		const struct stack_record *s = &page->records[i];

		records[i] = (struct store_record){
		        .state = s->reason ? STORE_QUARANTINED : STORE_PENDING,
		        .key = s->key,
		        .reported_hour = j->hour,
		        .subscription_id = s->subscription_id,
		        .meter_id = s->meter_id,
		        .quantity = s->quantity,
		        .usage_start = s->usage_start,
		        .usage_end = s->usage_end,
		        .resource_uri = s->resource_uri,
		        .location = s->location,
		        .tags = s->tags,
		        .additional_info = s->additional_info,
		        .raw = s->raw,
		        .error_message = s->reason,
		};
	}
	sp = (struct store_page){
	        .reported_hour = j->hour,
	        .scope = j->scope,
	        .pass = j->pass,
	        .next_link = page->next_link,
	        .next_due_at = !page->next_link && j->pass == 0
	                               ? real + (int64_t)(c->set.lookback_usec / USEC_PER_SEC)
	                               : 0,
	        .records = records,
	        .n_records = page->n_records,
	        .now = real,
	};
	r = store_put_page(c->store, &sp, &res);
	if (r < 0) {
		store_failed(c, r, "storing a page");
		job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, j->url);
		return;
	}
	store_ok(c);
	c->consecutive_failures = 0;
	c->last_page_at = real;
	metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_OK);
	metrics_add(c->metrics, METRICS_RECORDS_COLLECTED_TOTAL, NULL, res.inserted);
	metrics_add(c->metrics, METRICS_CONFLICTS_TOTAL, NULL, res.conflicts);
	metrics_add(c->metrics, METRICS_QUARANTINED_TOTAL, NULL, res.quarantined);
	j->pages++;
	j->records += page->n_records;
	j->inserted += res.inserted;
	j->duplicates += res.duplicates;
	j->conflicts += res.conflicts;
	j->quarantined += res.quarantined;
	if (res.conflicts > 0) {
		snprintf(n, sizeof(n), "%zu", res.conflicts);
		log_fields(LOG_WARNING,
		           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_CONFLICT, "AZS_REPORTED_HOUR", h,
		                      "AZS_RECORDS", n, "AZS_SUBSCRIPTION",
		                      j->scope[0] ? j->scope : NULL),
		           "reported hour %s: %zu records came again with another quantity; stored "
		           "as conflicts beside the originals and not forwarded until an operator "
		           "resolves them (azs-usagectl conflicts)",
		           h, res.conflicts);
	}
	if (res.quarantined > 0) {
		snprintf(n, sizeof(n), "%zu", res.quarantined);
		log_fields(LOG_WARNING,
		           LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_RECORDS", n, "AZS_SUBSCRIPTION",
		                      j->scope[0] ? j->scope : NULL),
		           "reported hour %s: %zu records failed validation and are quarantined, "
		           "never forwarded (azs-usagectl quarantine shows why)",
		           h, res.quarantined);
	}
	check_subscriptions(c, page);
	if (j->error) {
		log_fields(LOG_INFO,
		           LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_SUBSCRIPTION",
		                      j->scope[0] ? j->scope : NULL),
		           "reported hour %s answers again", h);
		free(j->error);
		j->error = NULL;
	}

	if (page->next_link) {
		strset_add(&j->seen, page->next_link);
		free(j->url);
		j->url = xstrdup(page->next_link);
		j->attempt = 0;
		j->token_retried = false;
		j->not_before = 0;
		kick(c);
		return;
	}

	snprintf(n, sizeof(n), "%zu", j->records);
	log_fields(j->scope[0] ? LOG_DEBUG : LOG_INFO,
	           LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_RECORDS", n, "AZS_SUBSCRIPTION",
	                      j->scope[0] ? j->scope : NULL),
	           "reported hour %s collected (%s): %zu records in %zu pages, %zu new, %zu "
	           "duplicates, %zu conflicts, %zu quarantined",
	           h,
	           j->pass == 0   ? "first pass"
	           : j->pass == 1 ? "look-back pass"
	                          : "recollection",
	           j->records, j->pages, j->inserted, j->duplicates, j->conflicts, j->quarantined);
	if (j->pass == 0 && j->hour + HOUR_SEC > c->cursor) {
		c->cursor = j->hour + HOUR_SEC;
		metrics_set(c->metrics, METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, NULL,
		            (double)c->cursor);
	}
	job_end(c, j);
}

/* A 2xx answer: a page, not ready yet, or a malformed page. */
static void
page_answer(struct collector *c, struct job *j, const struct http_result *http)
{
	struct stack_usage_page *page = NULL;
	char error[STACK_ERROR_MAX], h[TIME_RFC3339_LEN + 1], st[16];
	int r;

	r = stack_usage_page_parse(http->status, http->body, http->body_size, j->hour, &page,
	                           error);
	if (r == -EAGAIN) {
		struct stack_arm_error e = {0};

		stamp_ok(c);
		(void)stack_arm_error_parse(http->body, http->body_size, &e);
		snprintf(st, sizeof(st), "%ld", http->status);
		metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_NOT_READY);
		hour_wait(c, j, "not-ready", false, LOG_INFO, NULL,
		          LOG_FIELDS("AZS_REPORTED_HOUR", hour_text(j->hour, h), "AZS_HTTP_STATUS",
		                     st, "AZS_ARM_ERROR", e.code, "AZS_SUBSCRIPTION",
		                     j->scope[0] ? j->scope : NULL),
		          "reported hour %s is not ready at the stamp yet (%ld%s%s); asking again "
		          "at the next poll",
		          h, http->status, e.code ? " " : "", e.code ? e.code : "");
		stack_arm_error_done(&e);
		return;
	}
	if (r < 0) {
		_cleanup_free_ char *state = xasprintf("malformed page: %s", error);

		transient(c, j, state, http->status, NULL, NULL, state);
		return;
	}
	stamp_ok(c);
	store_page(c, j, page);
	stack_usage_page_free(page);
}

/* The answer to a usage request. */
static void
on_job_reply(const struct collector_reply *reply, void *userdata)
{
	struct collector *c = userdata;
	struct job *j = c->job;
	const struct http_result *http = reply->http;
	struct stack_arm_error e = {0};
	char h[TIME_RFC3339_LEN + 1], st[16];
	_cleanup_free_ char *state = NULL;
	long status;

	j->handle = NULL;
	hour_text(j->hour, h);
	if (reply->token_error) {
		state = xasprintf("no token: %s", reply->token_error_text
		                                          ? reply->token_error_text
		                                          : strerror(-reply->token_error));
		transient(c, j, state, 0, NULL, NULL, state);
		return;
	}
	if (http->error) {
		state = xasprintf("%s", http->error_message && *http->error_message
		                                ? http->error_message
		                                : strerror(-http->error));
		if (http->error == -EFBIG || http->error == -EKEYREJECTED ||
		    http->error == -EPROTONOSUPPORT || http->error == -EINVAL) {
			/* no retry makes these go away: an answer over [http] max_response, a
			 * certificate not trusted, a URL the client refuses */
			if (http->error == -EKEYREJECTED)
				hold_stamp(c);
			metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_ERROR);
			hour_wait(c, j, state, true, LOG_ERR, NULL,
			          LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_SUBSCRIPTION",
			                     j->scope[0] ? j->scope : NULL),
			          "reported hour %s: the usage request failed: %s; asking again at "
			          "the next poll",
			          h, state);
			return;
		}
		transient(c, j, state, http->status, NULL, NULL, state);
		return;
	}
	metrics_observe(c->metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, API_USAGE,
	                (double)http->total_usec / (double)USEC_PER_SEC);
	status = http->status;
	if (status >= 200 && status < 300) {
		page_answer(c, j, http);
		return;
	}

	(void)stack_arm_error_parse(http->body, http->body_size, &e);
	snprintf(st, sizeof(st), "%ld", status);
	if (status == 408 || status == 429 || status >= 500) {
		state = xasprintf("%ld %s", status, e.code ? e.code : "");
		transient(c, j, state, status, e.code, http->retry_after, state);
		goto out;
	}
	stamp_ok(c);
	if (status == 401) {
		c->tp.token_refused(c->tp.userdata, reply->token);
		if (!j->token_retried) {
			/* a token the stamp does not take any more: a new one, once, at once */
			j->token_retried = true;
			kick(c);
			goto out;
		}
	}
	if ((status == 400 || status == 404) && !j->restarted && !streq(j->url, j->first_url)) {
		restart_hour(c, j, status, e.code);
		goto out;
	}
	if (status == 400 && streq_ptr(e.code, "RequestEndTimeIsInFuture")) {
		metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_NOT_READY);
		hour_wait(c, j, "future", false, LOG_NOTICE, NULL,
		          LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_HTTP_STATUS", st, "AZS_ARM_ERROR",
		                     e.code, "AZS_SUBSCRIPTION", j->scope[0] ? j->scope : NULL),
		          "reported hour %s has not ended yet by the stamp's clock "
		          "(RequestEndTimeIsInFuture); asking again at the next poll",
		          h);
		goto out;
	}
	if (status == 400 && j->scope[0] && streq_ptr(e.code, "SubscriberIdIsNotDirectTenant")) {
		skip_subscription(c, j, e.code, e.message);
		goto out;
	}
	metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_ERROR);
	if (status == 401 || status == 403)
		hold_stamp(c); /* the identity, not the hour: the other hours would fail alike */
	state = xasprintf("%ld %s", status, e.code ? e.code : "");
	hour_wait(c, j, state, true, LOG_ERR, NULL,
	          LOG_FIELDS("AZS_REPORTED_HOUR", h, "AZS_HTTP_STATUS", st, "AZS_ARM_ERROR", e.code,
	                     "AZS_SUBSCRIPTION", j->scope[0] ? j->scope : NULL),
	          "reported hour %s: the stamp answered %ld %s: %s; the cursor stays, asking "
	          "again at the next poll",
	          h, status, e.code ? e.code : "(no ARM error code)",
	          e.message ? e.message : "(no message)");
out:
	stack_arm_error_done(&e);
}

/* ---- the user-subscription cache ---------------------------------------------------------- */

static void on_refresh_reply(const struct collector_reply *reply, void *userdata);

/* Start or continue a refresh when one is due (periodic, for a split, for an unknown one). */
static void
refresh_step(struct collector *c, uint64_t now, uint64_t *wake)
{
	struct refresh *f = c->refresh;
	uint64_t at;
	bool due;
	int r;

	if (!f) {
		due = now >= c->refresh_due ||
		      (c->split_wants && (!c->subs_loaded || c->subs_fresh_at < c->split_wants)) ||
		      (c->unknown_wanted &&
		       (!c->unknown_asked_at || now >= c->unknown_asked_at + c->unknown_refresh));
		if (!due) {
			*wake = MIN(*wake, c->refresh_due);
			if (c->unknown_wanted)
				*wake = MIN(*wake, c->unknown_asked_at + c->unknown_refresh);
			return;
		}
		if (now < c->refresh_not_before) {
			*wake = MIN(*wake, c->refresh_not_before);
			return;
		}
		if (c->unknown_wanted) {
			c->unknown_asked_at = now;
			c->unknown_wanted = false;
		}
		f = c->refresh = xcalloc(1, sizeof(*f));
		f->started_at = now_seconds();
		r = stack_subscriptions_url(c->arm_endpoint, c->provider, &f->url);
		assert(r >= 0); /* checked by collector_new */
		strset_add(&f->seen, f->url);
	}
	if (f->handle)
		return;
	at = c->throttle_until;
	if (now < at) {
		*wake = MIN(*wake, at);
		return;
	}
	if (!stack_link_authority_ok(f->url, c->arm_endpoint)) {
		_cleanup_free_ char *host = NULL, *state = NULL;

		if (stack_url_host(f->url, &host) < 0)
			host = xstrdup("(no host)");
		state = xasprintf("its nextLink names another authority (%s) than arm_endpoint; "
		                  "not followed",
		                  host);
		{
			refresh_failed(c, state, NULL, NULL);
			return;
		}
	}
	r = c->tp.get(c->tp.userdata, f->url, c->timeout_usec, on_refresh_reply, c, &f->handle);
	if (r < 0) {
		f->handle = NULL;
		refresh_failed(c, "the request could not be started", NULL, NULL);
	}
}

/* A refresh failed: logged when the kind of failure changes; tried again after a backoff. */
static void
refresh_failed(struct collector *c, const char *state, const char *status, const char *code)
{
	uint64_t now = now_monotonic_usec();

	if (!streq_ptr(c->refresh_error, state)) {
		log_fields(LOG_WARNING,
		           LOG_FIELDS("AZS_HTTP_STATUS", status, "AZS_ARM_ERROR", code),
		           "refreshing the user-subscription cache failed (%s); the cache stays as "
		           "it is, retrying with backoff",
		           state);
		free(c->refresh_error);
		c->refresh_error = xstrdup(state);
	}
	c->refresh_not_before =
	        now + http_backoff(c->refresh_attempt++, c->retry_initial, c->retry_max, c->random);
	refresh_free(c, c->refresh);
	c->refresh = NULL;
	kick(c);
}

/* Every page is in: write the complete list to the store. */
static void
refresh_done(struct collector *c, struct refresh *f)
{
	_cleanup_free_ struct store_subscription *subs = NULL;
	size_t n = 0, total = 0;
	int r;

	for (size_t i = 0; i < f->n_lists; i++)
		total += f->lists[i]->n_subscriptions;
	subs = xcalloc(MAX(total, 1), sizeof(*subs));
	for (size_t i = 0; i < f->n_lists; i++)
		for (size_t k = 0; k < f->lists[i]->n_subscriptions; k++) {
			const struct stack_subscription *s = &f->lists[i]->subscriptions[k];

			subs[n++] = (struct store_subscription){
			        .subscription_id = s->subscription_id,
			        .tenant_id = s->tenant_id,
			        .display_name = s->display_name,
			        .owner = s->owner,
			        .state = s->state,
			        .delegated_provider = s->delegated_provider_subscription_id,
			};
		}
	r = store_subscriptions_replace(c->store, subs, n, now_seconds());
	if (r < 0) {
		store_failed(c, r, "writing the user-subscription cache");
		{
			refresh_failed(c, "the store refused the list", NULL, NULL);
			return;
		}
	}
	store_ok(c);
	for (size_t i = 0; i < n; i++)
		strset_add(&c->subs, subs[i].subscription_id);
	strset_clear(&c->unknown); /* looked up in the store again from now on */
	if (c->refresh_error)
		log_info("the user-subscription cache is refreshed again");
	free(c->refresh_error);
	c->refresh_error = NULL;
	if (f->skipped > 0)
		log_warning("the user-subscription list has %zu unusable entries (the first: %s); "
		            "they are left out",
		            f->skipped, f->skipped_reason ? f->skipped_reason : "?");
	if (n != c->subs_listed || !c->subs_loaded)
		log_info("user-subscription cache refreshed: %zu subscriptions listed, %zu known",
		         n, c->subs.n);
	else
		log_debug("user-subscription cache refreshed: %zu subscriptions", n);
	c->subs_listed = n;
	c->subs_loaded = true;
	c->subs_fresh_at = f->started_at;
	if (c->split_wants && c->subs_fresh_at >= c->split_wants)
		c->split_wants = 0;
	c->refresh_attempt = 0;
	c->refresh_not_before = 0;
	c->refresh_last = now_monotonic_usec();
	c->refresh_due = c->refresh_last + c->set.refresh_interval_usec;
	refresh_free(c, f);
	c->refresh = NULL;
	kick(c);
}

/* The answer to a user-subscriptions request. */
static void
on_refresh_reply(const struct collector_reply *reply, void *userdata)
{
	struct collector *c = userdata;
	struct refresh *f = c->refresh;
	const struct http_result *http = reply->http;
	struct stack_subscription_list *list = NULL;
	struct stack_arm_error e = {0};
	_cleanup_free_ char *state = NULL;
	char error[STACK_ERROR_MAX], st[16];
	int r;

	f->handle = NULL;
	if (reply->token_error) {
		state = xasprintf("no token: %s", reply->token_error_text
		                                          ? reply->token_error_text
		                                          : strerror(-reply->token_error));
		{
			refresh_failed(c, state, NULL, NULL);
			return;
		}
	}
	if (http->error) {
		state = xasprintf("%s", http->error_message && *http->error_message
		                                ? http->error_message
		                                : strerror(-http->error));
		{
			refresh_failed(c, state, NULL, NULL);
			return;
		}
	}
	metrics_observe(c->metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, API_SUBSCRIPTIONS,
	                (double)http->total_usec / (double)USEC_PER_SEC);
	snprintf(st, sizeof(st), "%ld", http->status);
	if (http->status < 200 || http->status >= 300) {
		uint64_t ra;

		if (http->status == 401)
			c->tp.token_refused(c->tp.userdata, reply->token);
		if ((http->status == 429 || http->status >= 500) && http->retry_after &&
		    http_retry_after_parse(http->retry_after, now_seconds(), c->retry_max, &ra) >=
		            0)
			c->throttle_until = MAX(c->throttle_until, now_monotonic_usec() + ra);
		(void)stack_arm_error_parse(http->body, http->body_size, &e);
		state = xasprintf("%ld %s%s%s", http->status, e.code ? e.code : "",
		                  e.message ? ": " : "", e.message ? e.message : "");
		refresh_failed(c, state, st, e.code);
		stack_arm_error_done(&e);
		return;
	}
	r = stack_subscriptions_parse(http->body, http->body_size, &list, error);
	if (r < 0) {
		state = xasprintf("malformed list: %s", error);
		{
			refresh_failed(c, state, st, NULL);
			return;
		}
	}
	if (list->next_link && strset_has(&f->seen, list->next_link)) {
		stack_subscription_list_free(list);
		{
			refresh_failed(c, "its nextLink repeats one seen before (a loop)", st,
			               NULL);
			return;
		}
	}
	f->skipped += list->n_skipped;
	if (list->skipped_reason && !f->skipped_reason)
		f->skipped_reason = xstrdup(list->skipped_reason);
	f->lists = xreallocarray(f->lists, f->n_lists + 1, sizeof(*f->lists));
	f->lists[f->n_lists++] = list;
	if (!list->next_link) {
		refresh_done(c, f);
		return;
	}
	free(f->url);
	f->url = xstrdup(list->next_link);
	strset_add(&f->seen, f->url);
	kick(c);
}

/* Free a refresh, cancelling its request. */
static void
refresh_free(struct collector *c, struct refresh *f)
{
	if (!f)
		return;
	if (f->handle)
		c->tp.cancel(c->tp.userdata, f->handle);
	free(f->url);
	strset_clear(&f->seen);
	for (size_t i = 0; i < f->n_lists; i++)
		stack_subscription_list_free(f->lists[i]);
	free(f->lists);
	free(f->skipped_reason);
	free(f);
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

static bool
strset_has(const struct strset *s, const char *v)
{
	return s->n && bsearch(&v, s->v, s->n, sizeof(*s->v), strset_cmp);
}

/* Add v; false when it was there already. */
static bool
strset_add(struct strset *s, const char *v)
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

static void
strset_clear(struct strset *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	*s = (struct strset){0};
}

/* ---- the default transport: lib/auth's token, lib/http's GET ------------------------------- */

static void stack_get_free(struct stack_get *g);

/* The token is here (or not): send the request with it. */
static void
on_stack_http(const struct http_result *result, void *userdata)
{
	struct stack_get *g = userdata;
	struct collector_reply reply = {.http = result, .token = g->token};

	g->http = NULL;
	g->done(&reply, g->userdata);
	stack_get_free(g);
}

static void
on_stack_token(const struct auth_result *result, void *userdata)
{
	struct stack_get *g = userdata;
	char *header = NULL;
	int r;

	g->wait = NULL;
	if (result->error) {
		_cleanup_free_ char *text = NULL;
		struct collector_reply reply = {.token_error = result->error};

		if (result->error_code || result->error_description)
			text = xasprintf(
			        "%s%s%s", result->error_code ? result->error_code : "",
			        result->error_code && result->error_description ? ": " : "",
			        result->error_description ? result->error_description : "");
		reply.token_error_text = text;
		g->done(&reply, g->userdata);
		stack_get_free(g);
		return;
	}
	g->token = xstrdup(result->token);
	header = xasprintf("Authorization: Bearer %s", result->token);
	r = http_request(g->c->http, HTTP_GET, g->url,
	                 (const char *const[]){header, "Accept: application/json", NULL}, NULL, 0,
	                 g->timeout_usec, on_stack_http, g, &g->http);
	free_secret(header);
	if (r < 0) {
		struct http_result failed = {
		        .error = r,
		        .error_message = strerror(-r),
		        .body = "",
		};
		struct collector_reply reply = {.http = &failed, .token = g->token};

		g->http = NULL;
		g->done(&reply, g->userdata);
		stack_get_free(g);
	}
}

static int
stack_get(void *userdata, const char *url, uint64_t timeout_usec, collector_reply_fn done,
          void *done_userdata, void **ret_handle)
{
	struct collector *c = userdata;
	struct stack_get *g = xcalloc(1, sizeof(*g));

	g->c = c;
	g->url = xstrdup(url);
	g->timeout_usec = timeout_usec;
	g->done = done;
	g->userdata = done_userdata;
	auth_get(c->auth, NULL, on_stack_token, g, &g->wait);
	*ret_handle = g;
	return 0;
}

static void
stack_cancel(_unused_ void *userdata, void *handle)
{
	struct stack_get *g = handle;

	if (!g)
		return;
	auth_wait_cancel(g->wait);
	http_request_cancel(g->http);
	stack_get_free(g);
}

static void
stack_token_refused(void *userdata, const char *token)
{
	struct collector *c = userdata;

	auth_invalidate(c->auth, NULL, token);
}

static void
stack_get_free(struct stack_get *g)
{
	free(g->url);
	free_secret(g->token);
	free(g);
}
