/*
 * The collector's requests and what it makes of the answers (see collector.c for the schedule
 * and the decisions): the usage pages of the hour being collected, stored with their cursor;
 * the answers of section 4 turned into retries, waits and errors; the refresh of the
 * user-subscription cache; and the default transport (lib/auth's token, lib/http's GET).
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

#define API_USAGE         "usage"
#define API_SUBSCRIPTIONS "subscriptions"

/* collect_pages_total{result} */
#define PAGE_OK        "ok"
#define PAGE_NOT_READY "not_ready"
#define PAGE_RETRY     "retry"
#define PAGE_ERROR     "error"
#define PAGE_SKIPPED   "skipped"

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

static void on_job_reply(const struct collector_reply *reply, void *userdata);
static void ahead_parse_start(struct collector *c, int64_t hour, struct ahead *a,
                              const struct collector_reply *reply);
static void ahead_parse_drop(struct collector *c, struct ahead *a);
static void on_prefetch_reply(const struct collector_reply *reply, void *userdata);
static void on_next_reply(const struct collector_reply *reply, void *userdata);
static void replay_early(struct collector *c, struct job *j);
static void on_refresh_reply(const struct collector_reply *reply, void *userdata);
static void refresh_failed(struct collector *c, const char *state, const char *status,
                           const char *code);
static void stack_get_free(struct stack_get *g);

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
	collector_job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, resume_url);
}

/* Send the job's next request, unless paused, throttled or in its backoff. */
void
collector_job_step(struct collector *c, uint64_t now, uint64_t *wake)
{
	struct job *j = c->job;
	uint64_t at = MAX(j->not_before, c->throttle_until);
	char h[TIME_RFC3339_LEN + 1];
	int r;

	if (j->n_ahead > 0 && !j->ahead[0].url) {
		/* the answer to the request asked early is here: it is this step's answer */
		replay_early(c, j);
		return;
	}
	if (!collector_backlog_ok(c) || (c->store_full && now < c->full_until)) {
		/* the next page waits; the saved cursor (or where the job was) is where it resumes
		 */
		collector_job_park(c, j, now, j->url);
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
		          LOG_FIELDS("AZS_REPORTED_HOUR", collector_hour_text(j->hour, h),
		                     "AZS_SUBSCRIPTION", j->scope[0] ? j->scope : NULL),
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
		collector_job_park(c, j, now + c->set.poll_interval_usec, j->url);
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
		        LOG_FIELDS("AZS_REPORTED_HOUR", collector_hour_text(j->hour, h),
		                   "AZS_HTTP_STATUS", status ? st : NULL, "AZS_ARM_ERROR", code,
		                   "AZS_SUBSCRIPTION", j->scope[0] ? j->scope : NULL),
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
	collector_kick(c);
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
	           LOG_FIELDS("AZS_REPORTED_HOUR", collector_hour_text(j->hour, h),
	                      "AZS_HTTP_STATUS", st, "AZS_ARM_ERROR", code, "AZS_SUBSCRIPTION",
	                      j->scope[0] ? j->scope : NULL),
	           "reported hour %s: the stamp refused the nextLink (%ld %s); collecting the "
	           "hour again from its first page",
	           h, status, code ? code : "");
	j->restarted = true;
	free(j->url);
	j->url = xstrdup(j->first_url);
	collector_strset_clear(&j->seen);
	collector_strset_add(&j->seen, j->first_url);
	j->attempt = 0;
	j->not_before = 0;
	collector_kick(c);
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
		collector_store_failed(c, r, "skipping a user subscription");
		collector_job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, NULL);
		return;
	}
	collector_store_ok(c);
	metrics_inc(c->metrics, METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, NULL);
	metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_SKIPPED);
	if (collector_strset_add(&c->skipped, j->scope))
		log_fields(LOG_NOTICE,
		           LOG_FIELDS("AZS_SUBSCRIPTION", j->scope, "AZS_ARM_ERROR", code,
		                      "AZS_REPORTED_HOUR", collector_hour_text(j->hour, h)),
		           "user subscription %s is not a direct tenant of this provider (%s: %s): "
		           "its usage is not collected here; skipped for every hour it is refused "
		           "(logged once)",
		           j->scope, code, message ? message : "");
	collector_job_end(c, j);
}

/* Look up the subscriptions a page names; ask for a refresh when one is unknown. */
static void
check_subscriptions(struct collector *c, const struct stack_usage_page *page)
{
	for (size_t i = 0; i < page->n_records; i++) {
		const char *sub = page->records[i].subscription_id;
		struct store_subscription s = {0};
		int r;

		if (!sub || page->records[i].reason || collector_strset_has(&c->subs, sub) ||
		    collector_strset_has(&c->unknown, sub))
			continue;
		r = store_subscription_get(c->store, sub, &s);
		if (r >= 0) {
			collector_strset_add(&c->subs,
			                     sub); /* known from an earlier run (perhaps gone) */
			store_subscription_done(&s);
		} else if (r == -ENOENT) {
			collector_strset_add(&c->unknown, sub);
			if (collector_strset_add(&c->unknown_logged, sub))
				log_fields(
				        LOG_INFO, LOG_FIELDS("AZS_SUBSCRIPTION", sub),
				        "usage names user subscription %s, which the cache does not "
				        "know: refreshing the cache (logged once per subscription)",
				        sub);
			c->unknown_wanted = true;
		}
	}
}

/* An answer kept: everything of struct collector_reply and its http result, copied. */
struct early {
	int token_error;
	char *token_error_text;
	bool has_http;
	struct http_result http;
	char *error_message, *content_type, *retry_after, *body;
	char *token;
};

static struct early *
early_free(struct early *e)
{
	if (!e)
		return NULL;
	free(e->token_error_text);
	free(e->error_message);
	free(e->content_type);
	free(e->retry_after);
	free(e->body);
	free_secret(e->token);
	free(e);
	return NULL;
}

static char *
strdup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* keep_body false: the body is left out (a 2xx's page is on the worker with its own copy) */
static struct early *
early_copy(const struct collector_reply *reply, bool keep_body)
{
	struct early *e = xcalloc(1, sizeof(*e));

	e->token_error = reply->token_error;
	e->token_error_text = strdup_or_null(reply->token_error_text);
	e->token = strdup_or_null(reply->token);
	if (reply->http) {
		const struct http_result *h = reply->http;

		e->has_http = true;
		e->http = *h;
		e->error_message = strdup_or_null(h->error_message);
		e->content_type = strdup_or_null(h->content_type);
		e->retry_after = strdup_or_null(h->retry_after);
		if (!keep_body)
			e->http.body_size = 0;
		e->body = xmalloc(e->http.body_size + 1);
		memcpy(e->body, h->body ? h->body : "", e->http.body_size);
		e->body[e->http.body_size] = '\0';
		e->http.error_message = e->error_message;
		e->http.content_type = e->content_type;
		e->http.retry_after = e->retry_after;
		e->http.body = e->body;
	}
	return e;
}

/*
 * The value of the page's top-level "nextLink" member, found without parsing the page: NULL when
 * there is none, it is not a plain string or it has an escape. Only a guess: what is asked with
 * it is used only when the parsed page's nextLink is the same text.
 */
static char *
scan_next_link(const char *body, size_t size)
{
	static const char key[] = "\"nextLink\"";
	const char *p = body, *end = body + size;
	int depth = 0;

	while (p < end) {
		char ch = *p;

		if (ch == '"') {
			const char *q = p + 1, *close;

			/* the end of the string: a quote not escaped by an odd run of backslashes
			 */
			for (;;) {
				const char *b;

				close = memchr(q, '"', (size_t)(end - q));
				if (!close)
					return NULL;
				b = close;
				while (b > p + 1 && b[-1] == '\\')
					b--;
				if ((close - b) % 2 == 0)
					break;
				q = close + 1;
			}
			if (depth == 1 && (size_t)(close + 1 - p) == sizeof(key) - 1 &&
			    memcmp(p, key, sizeof(key) - 1) == 0) {
				const char *v = close + 1, *ve;

				while (v < end && strchr(" \t\r\n", *v) && *v)
					v++;
				if (v >= end || *v != ':')
					return NULL;
				v++;
				while (v < end && strchr(" \t\r\n", *v) && *v)
					v++;
				if (v >= end || *v != '"')
					return NULL;
				v++;
				for (ve = v; ve < end && *ve != '"'; ve++)
					if (*ve == '\\' || (unsigned char)*ve < 0x20)
						return NULL;
				if (ve >= end || ve == v)
					return NULL;
				return xstrndup(v, (size_t)(ve - v));
			}
			p = close + 1;
			continue;
		}
		if (ch == '{' || ch == '[')
			depth++;
		else if (ch == '}' || ch == ']')
			depth--;
		p++;
	}
	return NULL;
}

/*
 * The job's last page seems to be here (no nextLink): ask already for the first page of the hour
 * after it, the one the next job most likely asks first (the oldest due hour: a catch-up goes
 * hour after hour), when that hour is collectable now, so that the stamp makes it while the last
 * pages are parsed and stored. Only after an all-tenants first pass; one at a time. Its answer
 * goes to the worker like any early page. The next job takes it only when it starts at once with
 * that very request (collector_next_take); the hour's checkpoints are those of before, since
 * nothing of it is stored but by that job.
 */
static void
ask_next_hour(struct collector *c, struct job *j)
{
	int64_t hour = j->hour + HOUR_SEC, settle = (int64_t)(c->set.settle_usec / USEC_PER_SEC);
	_cleanup_free_ char *url = NULL;
	int r;

	if (c->next.url || j->scope[0] || j->pass != 0 || c->set.per_subscriber ||
	    hour + HOUR_SEC + settle > now_seconds())
		return;
	if (stack_usage_url(c->arm_endpoint, c->provider, hour, NULL, &url) < 0)
		return;
	r = c->tp.get(c->tp.userdata, url, c->timeout_usec, on_next_reply, c, &c->next.handle);
	if (r < 0) {
		c->next.handle = NULL;
		return;
	}
	c->next.url = TAKE_PTR(url);
	c->next_hour = hour;
}

/*
 * While a page is parsed on the worker thread (or an early answer is kept), ask already for the
 * nextLink it seems to have, when the job's next request could go at once: the stamp makes the
 * next page while this one is parsed and stored. Nothing is asked for a link seen before in the
 * hour, asked already or on another authority (the parsed page's checks decide what happens
 * then), nor beyond COLLECTOR_AHEAD_MAX.
 */
static void
ask_ahead(struct collector *c, struct job *j, const char *next_link)
{
	_cleanup_free_ char *link = NULL;
	uint64_t now = now_monotonic_usec();
	struct ahead *a;
	int r;

	if (j->n_ahead >= COLLECTOR_AHEAD_MAX)
		return;
	if (c->paused_backlog || (c->store_full && now < c->full_until) || now < c->throttle_until)
		return;
	if (!next_link) {
		ask_next_hour(c, j);
		return;
	}
	link = xstrdup(next_link);
	if (collector_strset_has(&j->seen, link) || !stack_link_authority_ok(link, c->arm_endpoint))
		return;
	for (size_t i = 0; i < j->n_ahead; i++)
		if (streq_ptr(j->ahead[i].url, link))
			return;
	a = &j->ahead[j->n_ahead];
	*a = (struct ahead){0};
	r = c->tp.get(c->tp.userdata, link, c->timeout_usec, on_prefetch_reply, c, &a->handle);
	if (r < 0) {
		a->handle = NULL;
		return;
	}
	a->url = TAKE_PTR(link);
	j->n_ahead++;
}

/* A fresh page's answer: ask early for its nextLink, unless asked already from the one before. */
static void
prefetch(struct collector *c, struct job *j, const struct http_result *http)
{
	_cleanup_free_ char *link = NULL;

	if (j->n_ahead > 0)
		return;
	link = scan_next_link(http->body, http->body_size);
	ask_ahead(c, j, link);
}

/* Free what one early request holds, cancelling what is in flight. */
static void
ahead_clear(struct collector *c, struct ahead *a)
{
	if (a->handle)
		c->tp.cancel(c->tp.userdata, a->handle);
	a->handle = NULL;
	free(a->url);
	a->url = NULL;
	free(a->next_link);
	a->next_link = NULL;
	a->early = early_free(a->early);
	ahead_parse_drop(c, a);
}

/* Drop what was asked early, if anything. */
void
collector_job_drop_prefetch(struct collector *c, struct job *j)
{
	for (size_t i = 0; i < j->n_ahead; i++)
		ahead_clear(c, &j->ahead[i]);
	j->n_ahead = 0;
}

/* Take the first early request off the queue into *ret. */
static void
ahead_pop(struct job *j, struct ahead *ret)
{
	assert(j->n_ahead > 0);
	*ret = j->ahead[0];
	memmove(&j->ahead[0], &j->ahead[1], (j->n_ahead - 1) * sizeof(j->ahead[0]));
	j->n_ahead--;
	j->ahead[j->n_ahead] = (struct ahead){0};
}

/*
 * The page is stored and j->url is its nextLink: when that is what was asked early first, the
 * early request becomes the job's (its answer, if here, is taken by the next step), as if asked
 * now; else everything asked early is dropped.
 */
static void
adopt_prefetch(struct collector *c, struct job *j)
{
	struct ahead *a = &j->ahead[0];

	if (j->n_ahead == 0)
		return;
	if (!streq_ptr(a->url, j->url) || !collector_backlog_ok(c)) {
		collector_job_drop_prefetch(c, j);
		return;
	}
	free(a->url);
	a->url = NULL;
	if (a->handle) {
		struct ahead taken;

		/* only the last one is in flight: nothing is asked after it yet */
		assert(j->n_ahead == 1);
		ahead_pop(j, &taken);
		j->handle = taken.handle;
		j->prefetch_adopted = true;
	}
}

/*
 * The answer to a request asked early: the job's answer when adopted, else kept for later (a 2xx
 * page goes to the worker at once, and its nextLink is asked early in turn).
 */
static void
on_prefetch_reply(const struct collector_reply *reply, void *userdata)
{
	struct collector *c = userdata;
	struct job *j = c->job;
	struct ahead *a;

	if (j->prefetch_adopted) {
		j->prefetch_adopted = false;
		on_job_reply(reply, c);
		return;
	}
	/* only the last one asked is in flight */
	assert(j->n_ahead > 0);
	a = &j->ahead[j->n_ahead - 1];
	assert(a->handle && !a->early);
	a->handle = NULL;
	ahead_parse_start(c, j->hour, a, reply);
	a->early = early_copy(reply, !a->parse);
	if (a->parse) {
		a->next_link = scan_next_link(reply->http->body, reply->http->body_size);
		ask_ahead(c, j, a->next_link);
	}
}

/*
 * The answer to the next hour's first page asked early: kept (a 2xx's page goes to the worker at
 * once) for the job that takes it, or the answer of that job's request when it was taken in
 * flight. Its own nextLink waits for that job.
 */
static void
on_next_reply(const struct collector_reply *reply, void *userdata)
{
	struct collector *c = userdata;
	struct ahead *a = &c->next;

	if (!a->handle) {
		/* taken in flight: the job's request, nothing else of it is early */
		assert(c->job && c->job->prefetch_adopted && c->job->n_ahead == 0);
		on_prefetch_reply(reply, c);
		return;
	}
	a->handle = NULL;
	ahead_parse_start(c, c->next_hour, a, reply);
	a->early = early_copy(reply, !a->parse);
	if (a->parse)
		a->next_link = scan_next_link(reply->http->body, reply->http->body_size);
}

/* A new job takes the next hour's first page asked early when it asks that first, in the hour's
 * first pass (the one it was asked for: a look-back pass may not be due yet), else drops it. */
void
collector_next_take(struct collector *c, struct job *j)
{
	struct ahead *a = &c->next;

	if (!a->url)
		return;
	if (c->next_hour != j->hour || j->scope[0] || j->pass != 0 || !streq(a->url, j->url) ||
	    j->n_ahead > 0 || j->handle) {
		collector_next_drop(c);
		return;
	}
	free(a->url);
	a->url = NULL;
	if (a->handle) {
		/* in flight: the job's request from now on (its answer: on_next_reply) */
		j->handle = TAKE_PTR(a->handle);
		j->prefetch_adopted = true;
	} else {
		/* here: the job's first step replays it (replay_early), its page parsed or owed */
		j->ahead[0] = *a;
		j->n_ahead = 1;
	}
	*a = (struct ahead){0};
}

/* Drop the next hour's first page asked early, if any. */
void
collector_next_drop(struct collector *c)
{
	ahead_clear(c, &c->next);
}

/* The kept answer of an adopted early request, as the answer of the job's request. */
static void
replay_early(struct collector *c, struct job *j)
{
	struct collector_reply reply;
	struct early *e;
	struct ahead a;

	ahead_pop(j, &a);
	e = TAKE_PTR(a.early);
	reply = (struct collector_reply){
	        .token_error = e->token_error,
	        .token_error_text = e->token_error_text,
	        .http = e->has_http ? &e->http : NULL,
	        .token = e->token,
	};
	/* a 2xx whose page went to the worker: page_answer() takes it (and j may be gone after) */
	if (a.parse)
		j->replaying = &a;
	on_job_reply(&reply, c);
	assert(!a.parse && !a.task);
	early_free(e);
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

	collector_hour_text(j->hour, h);
	if (page->next_link && collector_strset_has(&j->seen, page->next_link)) {
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
		collector_store_failed(c, r, "storing a page");
		collector_job_park(c, j, now_monotonic_usec() + c->set.poll_interval_usec, j->url);
		return;
	}
	collector_store_ok(c);
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
		collector_strset_add(&j->seen, page->next_link);
		free(j->url);
		j->url = xstrdup(page->next_link);
		j->attempt = 0;
		j->token_retried = false;
		j->not_before = 0;
		adopt_prefetch(c, j);
		collector_kick(c);
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
	collector_job_end(c, j);
}

/* A 2xx answer's body on its way through the worker thread. */
struct parse {
	struct collector *c; /* not touched on the worker thread */
	long status;
	char *body; /* a copy: lib/http's buffer is gone when the answer returns */
	size_t body_size;
	size_t body_block; /* the size of body's block (a STACK_BLOCK_BODY) */
	int64_t hour;
	/* the worker's output */
	int r;
	struct stack_usage_page *page;
	char error[STACK_ERROR_MAX];
};

static void
parse_free(struct parse *p)
{
	stack_usage_page_free(p->page);
	stack_block_put(STACK_BLOCK_BODY, p->body, p->body_block);
	free(p);
}

static struct parse *
parse_new(struct collector *c, int64_t hour, const struct http_result *http)
{
	struct parse *p = xcalloc(1, sizeof(*p));

	p->c = c;
	p->status = http->status;
	p->body = stack_block_get(STACK_BLOCK_BODY, http->body_size + 1, &p->body_block);
	memcpy(p->body, http->body ? http->body : "", http->body_size);
	p->body[http->body_size] = '\0';
	p->body_size = http->body_size;
	p->hour = hour;
	return p;
}

/* On the worker thread: nothing but the body in, the page (or the error) out. */
static void
parse_work(void *userdata)
{
	struct parse *p = userdata;

	p->r = stack_usage_page_parse(p->status, p->body, p->body_size, p->hour, &p->page,
	                              p->error);
	if (p->r >= 0) {
		/* the page owns its strings: the body is not needed any more (only a not-ready
		 * answer's is read again), and need not wait for the store */
		stack_block_put(STACK_BLOCK_BODY, p->body, p->body_block);
		p->body = NULL;
		p->body_size = 0;
	}
}

/* Back on the loop: a page, not ready yet, or a malformed page. */
static void
page_parsed(struct collector *c, struct job *j, const struct parse *p)
{
	char h[TIME_RFC3339_LEN + 1], st[16];

	if (p->r < 0)
		collector_job_drop_prefetch(c, j);
	if (p->r == -EAGAIN) {
		struct stack_arm_error e = {0};

		stamp_ok(c);
		(void)stack_arm_error_parse(p->body, p->body_size, &e);
		snprintf(st, sizeof(st), "%ld", p->status);
		metrics_inc(c->metrics, METRICS_COLLECT_PAGES_TOTAL, PAGE_NOT_READY);
		hour_wait(c, j, "not-ready", false, LOG_INFO, NULL,
		          LOG_FIELDS("AZS_REPORTED_HOUR", collector_hour_text(j->hour, h),
		                     "AZS_HTTP_STATUS", st, "AZS_ARM_ERROR", e.code,
		                     "AZS_SUBSCRIPTION", j->scope[0] ? j->scope : NULL),
		          "reported hour %s is not ready at the stamp yet (%ld%s%s); asking again "
		          "at the next poll",
		          h, p->status, e.code ? " " : "", e.code ? e.code : "");
		stack_arm_error_done(&e);
		return;
	}
	if (p->r < 0) {
		_cleanup_free_ char *state = xasprintf("malformed page: %s", p->error);

		transient(c, j, state, p->status, NULL, NULL, state);
		return;
	}
	stamp_ok(c);
	store_page(c, j, p->page);
}

/* The worker is done with the job's page (or it was cancelled: then only freed). */
static void
parse_done(void *userdata, bool cancelled)
{
	struct parse *p = userdata;
	struct collector *c = p->c;
	struct job *j = c->job;

	if (!cancelled) {
		if (p == c->next.parse) {
			/* the next hour's first page: kept for the job that takes it */
			assert(c->next.task);
			c->next.task = NULL;
			return;
		}
		/* a job's parse is cancelled whenever the job ends, so this is still its job */
		assert(j);
		for (size_t i = 0; i < j->n_ahead; i++)
			if (p == j->ahead[i].parse) {
				/* an early answer's page: kept until the page before is in */
				assert(j->ahead[i].task);
				j->ahead[i].task = NULL;
				return;
			}
		assert(j->parse);
		j->parse = NULL;
		page_parsed(c, j, p);
	}
	parse_free(p);
}

/*
 * An early request's answer is here: when it is one that on_job_reply() would parse (a 2xx), its
 * body goes to the worker now, behind the pages before it (the worker keeps the order), so that
 * it is parsed while the page before is stored. Its result is taken by page_answer() only when
 * the early request is adopted and its answer replayed; else dropped with the early answer.
 */
static void
ahead_parse_start(struct collector *c, int64_t hour, struct ahead *a,
                  const struct collector_reply *reply)
{
	const struct http_result *http = reply->http;

	assert(!a->parse && !a->task);
	if (!c->worker || reply->token_error || !http || http->error || http->status < 200 ||
	    http->status >= 300)
		return;
	a->parse = parse_new(c, hour, http);
	worker_submit(c->worker, parse_work, parse_done, a->parse, &a->task);
}

/* Drop an early answer's page: cancelled if the worker still owes it (parse_done() frees it). */
static void
ahead_parse_drop(struct collector *c, struct ahead *a)
{
	struct parse *p = TAKE_PTR(a->parse);

	if (a->task) {
		worker_cancel(c->worker, a->task);
		a->task = NULL;
	} else if (p)
		parse_free(p);
}

/* A 2xx answer: its body is parsed on the worker thread; parse_done() goes on from there. */
static void
page_answer(struct collector *c, struct job *j, const struct http_result *http)
{
	struct parse *p;

	if (j->replaying) {
		/*
		 * The replayed answer of the adopted early request: its page went to the worker
		 * when it came. Still owed: parse_done() goes on as for any page. Parsed already:
		 * now.
		 */
		struct ahead *a = TAKE_PTR(j->replaying);

		p = TAKE_PTR(a->parse);
		if (j->n_ahead == 0)
			ask_ahead(c, j, a->next_link); /* not asked when the page came */
		free(a->next_link);
		a->next_link = NULL;
		if (a->task) {
			j->parse = TAKE_PTR(a->task);
			return;
		}
		page_parsed(c, j, p);
		parse_free(p);
		return;
	}
	p = parse_new(c, j->hour, http);
	if (!c->worker) {
		/* parse_on_loop: all of it now, inside the answer */
		parse_work(p);
		page_parsed(c, j, p);
		parse_free(p);
		return;
	}
	worker_submit(c->worker, parse_work, parse_done, p, &j->parse);
	prefetch(c, j, http);
}

/* Drop the page being parsed for the job, if any (parse_done() frees it unseen), and what was
 * asked early. */
void
collector_job_cancel_work(struct collector *c, struct job *j)
{
	collector_job_drop_prefetch(c, j);
	if (!j->parse)
		return;
	worker_cancel(c->worker, j->parse);
	j->parse = NULL;
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
	collector_hour_text(j->hour, h);
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
			collector_kick(c);
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

/* Start or continue a refresh when one is due (periodic, for a split, for an unknown one). */
void
collector_refresh_step(struct collector *c, uint64_t now, uint64_t *wake)
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
		collector_strset_add(&f->seen, f->url);
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
	collector_refresh_free(c, c->refresh);
	c->refresh = NULL;
	collector_kick(c);
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
		collector_store_failed(c, r, "writing the user-subscription cache");
		{
			refresh_failed(c, "the store refused the list", NULL, NULL);
			return;
		}
	}
	collector_store_ok(c);
	for (size_t i = 0; i < n; i++)
		collector_strset_add(&c->subs, subs[i].subscription_id);
	collector_strset_clear(&c->unknown); /* looked up in the store again from now on */
	if (c->refresh_error)
		log_info("the user-subscription cache is refreshed again");
	free(c->refresh_error);
	c->refresh_error = NULL;
	/* the same list every refresh_interval is not news: warned when the list changes */
	if (f->skipped > 0)
		log_full(n != c->subs_listed || !c->subs_loaded ? LOG_WARNING : LOG_DEBUG,
		         "the user-subscription list has %zu unusable entries (the first: %s); "
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
	collector_refresh_free(c, f);
	c->refresh = NULL;
	collector_kick(c);
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
	if (list->next_link && collector_strset_has(&f->seen, list->next_link)) {
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
	collector_strset_add(&f->seen, f->url);
	collector_kick(c);
}

/* Free a refresh, cancelling its request. */
void
collector_refresh_free(struct collector *c, struct refresh *f)
{
	if (!f)
		return;
	if (f->handle)
		c->tp.cancel(c->tp.userdata, f->handle);
	free(f->url);
	collector_strset_clear(&f->seen);
	for (size_t i = 0; i < f->n_lists; i++)
		stack_subscription_list_free(f->lists[i]);
	free(f->lists);
	free(f->skipped_reason);
	free(f);
}

/* ---- the default transport: lib/auth's token, lib/http's GET ------------------------------- */

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

int
collector_stack_get(void *userdata, const char *url, uint64_t timeout_usec, collector_reply_fn done,
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

void
collector_stack_cancel(_unused_ void *userdata, void *handle)
{
	struct stack_get *g = handle;

	if (!g)
		return;
	auth_wait_cancel(g->wait);
	http_request_cancel(g->http);
	stack_get_free(g);
}

void
collector_stack_token_refused(void *userdata, const char *token)
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
