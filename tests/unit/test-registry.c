/*
 * Unit tests for lib/registry.c. The pure parts first: the customerSubscriptions page parser on
 * ../shared/testdata and on every empty form (no body, {}, no value) and malformed variants, the
 * advice for every ARM error code of ARCHITECTURE.md section 9, the retry rule.
 *
 * Then the mapping of section 5 on a store in a temporary file, through the store's own claim
 * (store_claim_batch with registry_map): every row of the table (registered, default,
 * unknown-subscription after a tenant-cache refresh, ambiguous held), a gone subscription that
 * keeps its tenant, a subscription not known yet that is held and mapped once the tenant cache
 * was refreshed, a registration change that puts held records back, the first default charge of
 * each tenant noticed once (MESSAGE_ID, metric), staleness and age on the timeutil clock seam, a
 * cached registration that is not the configured one, and lookups.
 *
 * Last, refreshes and tenant operations over real HTTPS (tls-fixture.c) against a small Azure
 * Resource Manager and token endpoint inside the test: paging through nextLink, every empty
 * answer, a failed refresh that keeps the cache, retries (503, MetadataResolverBadGatewayError,
 * exhausted), a new token after a 401, a nextLink loop or another host refused, PUT and DELETE
 * in every documented form, and a started registry that logs each change of state once. Nothing
 * sleeps; no test looks at how long anything took; no token may appear in the log.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "auth.h"
#include "hash.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "registry.h"
#include "store.h"
#include "timeutil.h"
#include "tls-fixture.h"
#include "xmalloc.h"

#define T0          INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define AAD_TENANT  "contoso.onmicrosoft.com"
#define CLIENT_ID   "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f"
#define SECRET      "registry-test-Secret-93b1"
#define AUDIENCE    "https://management.azure.com/"
#define SUB_DEFAULT "dd8597b4-8739-4467-8b10-f8679f62bfbf"
#define RG          "azurestack"
#define NAME        "azurestack-5bf881b2-6be7-42a1-9f47-d6fcb6737747"
#define REG_PATH                                            \
	"/subscriptions/" SUB_DEFAULT "/resourceGroups/" RG \
	"/providers/Microsoft.AzureStack/registrations/" NAME
#define REG_ID_LOWER                                        \
	"/subscriptions/" SUB_DEFAULT "/resourcegroups/" RG \
	"/providers/microsoft.azurestack/registrations/" NAME
#define TENANT_A   "104edf09-7fc1-459f-8c4e-b062db480b90" /* registered (testdata) */
#define CUSTOMER_A "e09a4e93-29a7-4eba-a6d4-76202383f07f"
#define TENANT_B   "2c4a7e10-1111-4222-8333-444455556666" /* not registered */
#define TENANT_C   "3d5b8f21-2222-4333-9444-555566667777" /* not registered */
#define TENANT_D   "4e6c9a32-3333-4444-a555-666677778888" /* a delegated provider's */
#define CUSTOMER_B "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"
#define CUSTOMER_X "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
#define SUB_A1     "c79389af-4480-48cc-8fa2-ee8ced8e843d"
#define SUB_A2     "0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10" /* gone later */
#define SUB_B1     "aaaaaaaa-0000-4000-8000-0000000000b1"
#define SUB_B2     "aaaaaaaa-0000-4000-8000-0000000000b2"
#define SUB_C1     "aaaaaaaa-0000-4000-8000-0000000000c1"
#define SUB_D1     "aaaaaaaa-0000-4000-8000-0000000000d1"
#define SUB_NEW    "aaaaaaaa-0000-4000-8000-0000000000e1" /* not in the tenant cache */
#define DELEGATED  "99999999-0000-4000-8000-000000000099"
#define METER      "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define MAX_ISSUED 16
#define MAX_QUEUE  16

static struct fixture_pki *pki;
static uint64_t fake_now_usec;

/* One canned answer of the fake Azure Resource Manager. */
struct answer {
	int status;
	const char *body;
	const char *retry_after;
	const char *method; /* only for this method; NULL: any */
};

/* Azure Resource Manager and Azure AD inside the test. */
struct arm {
	struct fixture_server *server;
	const char *url;
	char *registration;   /* the registration's answer */
	const char *pages[8]; /* the value arrays of the list's pages */
	size_t n_pages;
	const char *list_raw;  /* answer the list with exactly this (NULL: the pages) */
	bool list_no_body;     /* answer the list with no body at all */
	const char *next_link; /* the first page's nextLink instead of page 2 */
	struct answer queue[MAX_QUEUE];
	size_t n_queue, next_queue;
	int put_status, delete_status;
	const char *put_body;
	bool refuse_first_token; /* the first token is answered 401 once */
	/* what it saw */
	unsigned token_requests, arm_requests, registration_requests, list_requests;
	char *last_method, *last_uri, *last_body, *last_content_type;
	char *issued[MAX_ISSUED];
	size_t n_issued;
	char *violation;
};

struct env {
	struct event_base *base;
	struct arm arm;
	struct http_client *http;
	struct auth *auth;
	struct store *store;
	struct registry *reg;
	struct metrics *metrics;
	char dir[64];
	char *db;
	FILE *log;
	char *log_text;
	size_t log_size;
	/* results of the registry */
	unsigned results;
	unsigned stop_after; /* registry_stop() in the callback after this many results */
	bool done;
	struct registry_result last;
	char *last_code, *last_message;
	unsigned key_seq;
};

static uint64_t
fake_clock(void *userdata)
{
	(void)userdata;
	return fake_now_usec;
}

static uint64_t
zero_draw(void *userdata)
{
	(void)userdata;
	return 0;
}

static const struct http_random zero_random = {zero_draw, NULL};

/* Note the first thing the fake service found wrong. */
static void
violation(struct arm *a, const char *what)
{
	if (!a->violation)
		a->violation = xstrdup(what);
}

/* Remember what a request was. */
static void
arm_note(struct arm *a, struct evhttp_request *req, const char *method)
{
	const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");

	free(a->last_method);
	free(a->last_uri);
	free(a->last_body);
	free(a->last_content_type);
	a->last_method = xstrdup(method);
	a->last_uri = xstrdup(evhttp_request_get_uri(req));
	a->last_body = fixture_request_body(req);
	a->last_content_type = ct ? xstrdup(ct) : NULL;
}

/* The token endpoint: a new token per request. */
static void
arm_token(struct arm *a, struct evhttp_request *req)
{
	_cleanup_free_ char *body = fixture_request_body(req);
	_cleanup_free_ char *answer = NULL;
	char *token;

	a->token_requests++;
	if (!strstr(body, "client_secret="
	                  "registry-test-Secret-93b1") ||
	    !strstr(body, "grant_type=client_credentials"))
		violation(a, "token request without the client secret");
	if (a->n_issued == MAX_ISSUED)
		fail_msg("too many tokens");
	token = xasprintf("arm-token-%zu-%08x", a->n_issued + 1, (unsigned)rand());
	a->issued[a->n_issued++] = token;
	answer = xasprintf("{\"token_type\":\"Bearer\",\"expires_in\":\"3599\","
	                   "\"access_token\":\"%s\"}",
	                   token);
	fixture_reply(req, 200, "application/json", answer);
}

/* ARM: check the token, then the canned answers, then the registration API. */
static void
arm_handle(struct evhttp_request *req, void *userdata)
{
	struct arm *a = userdata;
	const char *uri = evhttp_request_get_uri(req);
	const char *auth =
	        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *method = cmd == EVHTTP_REQ_PUT      ? "PUT"
	                     : cmd == EVHTTP_REQ_DELETE ? "DELETE"
	                     : cmd == EVHTTP_REQ_POST   ? "POST"
	                                                : "GET";
	_cleanup_free_ char *expected = NULL;

	if (strncmp(uri, "/" AAD_TENANT "/oauth2/token", strlen(AAD_TENANT) + 14) == 0) {
		arm_token(a, req);
		return;
	}
	a->arm_requests++;
	arm_note(a, req, method);
	expected = a->n_issued ? xasprintf("Bearer %s", a->issued[a->n_issued - 1]) : NULL;
	if (!auth || !expected || !streq(auth, expected)) {
		violation(a, "ARM request without the newest token");
		fixture_reply(req, 401, "application/json",
		              "{\"error\":{\"code\":\"AuthenticationFailed\",\"message\":\"no\"}}");
		return;
	}
	if (!strstr(uri, "api-version=2017-06-01"))
		violation(a, "ARM request without the api-version");
	if (a->refuse_first_token && a->n_issued == 1) {
		fixture_reply(req, 401, "application/json",
		              "{\"error\":{\"code\":\"ExpiredAuthenticationToken\",\"message\":"
		              "\"The access token expiry.\"}}");
		return;
	}
	while (a->next_queue < a->n_queue) {
		struct answer *q = &a->queue[a->next_queue];

		if (q->method && !streq(q->method, method))
			break;
		a->next_queue++;
		if (q->retry_after)
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
			                  q->retry_after);
		fixture_reply(req, q->status, q->body ? "application/json" : NULL, q->body);
		return;
	}
	if (strncmp(uri, REG_PATH "/customerSubscriptions/", strlen(REG_PATH) + 23) == 0) {
		if (streq(method, "PUT")) {
			fixture_reply(req, a->put_status ? a->put_status : 201,
			              a->put_body ? "application/json" : NULL, a->put_body);
		} else if (streq(method, "DELETE")) {
			fixture_reply(req, a->delete_status ? a->delete_status : 204, NULL, NULL);
		} else {
			violation(a, "unexpected method on a customer subscription");
			fixture_reply(req, 405, NULL, NULL);
		}
		return;
	}
	if (strncmp(uri, REG_PATH "/customerSubscriptions?", strlen(REG_PATH) + 23) == 0) {
		const char *skip = strstr(uri, "$skipToken=");
		size_t page = skip ? strtoul(skip + 11, NULL, 10) : 0;
		_cleanup_free_ char *body = NULL;

		a->list_requests++;
		if (a->list_no_body) {
			fixture_reply(req, 200, NULL, NULL);
			return;
		}
		if (a->list_raw) {
			fixture_reply(req, 200, "application/json", a->list_raw);
			return;
		}
		if (page >= a->n_pages) {
			violation(a, "a page that does not exist");
			fixture_reply(req, 404, NULL, NULL);
			return;
		}
		if (page == 0 && a->next_link)
			body = xasprintf("{\"value\":%s,\"nextLink\":\"%s\"}", a->pages[0],
			                 a->next_link);
		else if (page + 1 < a->n_pages)
			body = xasprintf("{\"value\":%s,\"nextLink\":\"%s" REG_PATH
			                 "/customerSubscriptions?api-version=2017-06-01&"
			                 "$skipToken=%zu\"}",
			                 a->pages[page], a->url, page + 1);
		else
			body = xasprintf("{\"value\":%s}", a->pages[page]);
		fixture_reply(req, 200, "application/json", body);
		return;
	}
	if (strncmp(uri, REG_PATH "?", strlen(REG_PATH) + 1) == 0 && streq(method, "GET")) {
		a->registration_requests++;
		fixture_reply(req, 200, "application/json", a->registration);
		return;
	}
	violation(a, uri);
	fixture_reply(req, 404, "application/json",
	              "{\"error\":{\"code\":\"NotFound\",\"message\":\"no such path\"}}");
}

/* Queue a canned answer. */
static void
queue(struct env *e, int status, const char *body, const char *method)
{
	assert_true(e->arm.n_queue < MAX_QUEUE);
	e->arm.queue[e->arm.n_queue++] = (struct answer){status, body, NULL, method};
}

static char *
read_testdata(const char *name)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", TESTDATA_DIR, name);
	FILE *f = fopen(path, "re");
	char *text = NULL;
	size_t size = 0;

	assert_non_null(f);
	assert_true(getdelim(&text, &size, '\0', f) > 0);
	fclose(f);
	return text;
}

/* What was logged so far. */
static const char *
logged(struct env *e)
{
	fflush(e->log);
	return e->log_text ? e->log_text : "";
}

/* Occurrences of needle in the log. */
static unsigned
log_count(struct env *e, const char *needle)
{
	unsigned n = 0;

	for (const char *p = logged(e); (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* The registry's callback: keep the result. */
static void
on_result(const struct registry_result *res, void *userdata)
{
	struct env *e = userdata;

	e->results++;
	e->last = *res;
	free(e->last_code);
	free(e->last_message);
	e->last_code = res->arm_code ? xstrdup(res->arm_code) : NULL;
	e->last_message = xstrdup(res->message ? res->message : "");
	e->last.arm_code = e->last_code;
	e->last.message = e->last_message;
	e->done = true;
	if (e->stop_after && e->results >= e->stop_after)
		registry_stop(e->reg);
}

static int
setup(void **state)
{
	static const struct timeutil_clock clock = {fake_clock, fake_clock, NULL};
	struct env *e = xcalloc(1, sizeof(*e));
	struct http_options ho = {.ca_file = pki->ca_file, .user_agent = "azs-usaged/test"};
	struct auth_options ao = {0};
	struct store_options so = {0};
	_cleanup_free_ char *error = NULL;

	fake_now_usec = (uint64_t)T0 * USEC_PER_SEC;
	timeutil_set_clock(&clock);
	e->log = open_memstream(&e->log_text, &e->log_size);
	assert_non_null(e->log);
	log_open(LOG_TARGET_STDERR);
	log_set_stream(e->log);
	log_set_max_level(LOG_DEBUG);
	log_clear_secrets(); /* nothing redacted: the module itself must never print them */

	strcpy(e->dir, "/tmp/test-registry-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	e->db = xasprintf("%s/usage.db", e->dir);
	so.path = e->db;
	if (store_open(&so, &e->store, &error) < 0)
		fail_msg("store_open: %s", error);

	e->base = event_base_new();
	assert_non_null(e->base);
	e->arm.server =
	        fixture_server_new(e->base, pki->server_cert, pki->server_key, arm_handle, &e->arm);
	e->arm.url = fixture_server_url(e->arm.server);
	e->arm.registration = read_testdata("registration.json");
	assert_int_equal(http_client_new(e->base, &ho, &e->http), 0);
	ao.login_endpoint = e->arm.url;
	ao.tenant = AAD_TENANT;
	ao.client_id = CLIENT_ID;
	ao.client_secret = SECRET;
	ao.random = &zero_random;
	assert_int_equal(auth_new(e->base, e->http, &ao, &e->auth), 0);
	e->metrics = metrics_new_daemon("test");
	*state = e;
	return 0;
}

static int
teardown(void **state)
{
	struct env *e = *state;
	const char *text = logged(e);
	bool leaked = strstr(text, SECRET) != NULL;
	const char *suffixes[] = {"", "-wal", "-shm"};

	for (size_t i = 0; i < e->arm.n_issued; i++) {
		if (strstr(text, e->arm.issued[i]))
			leaked = true;
		free(e->arm.issued[i]);
	}
	registry_free(e->reg);
	auth_free(e->auth);
	http_client_free(e->http);
	fixture_server_free(e->arm.server);
	event_base_free(e->base);
	store_free(e->store);
	metrics_free(e->metrics);
	for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
		_cleanup_free_ char *p = xasprintf("%s%s", e->db, suffixes[i]);

		(void)unlink(p);
	}
	rmdir(e->dir);
	free(e->db);
	free(e->arm.registration);
	free(e->arm.last_method);
	free(e->arm.last_uri);
	free(e->arm.last_body);
	free(e->arm.last_content_type);
	free(e->last_code);
	free(e->last_message);
	log_set_stream(NULL);
	fclose(e->log);
	timeutil_set_clock(NULL);
	if (getenv("TEST_REGISTRY_LOG"))
		fputs(e->log_text ? e->log_text : "", stderr);
	if (e->arm.violation)
		fail_msg("the fake Azure refused a request: %s", e->arm.violation);
	if (leaked)
		fail_msg("a secret or a token was logged:\n%s", e->log_text);
	free(e->arm.violation);
	free(e->log_text);
	free(e);
	return 0;
}

/* Make the registry: online (ARM in the test) or offline (the store only). */
static void
make_registry(struct env *e, bool online)
{
	struct registry_options o = {
	        .arm_endpoint = e->arm.url,
	        .subscription_id = SUB_DEFAULT,
	        .resource_group = RG,
	        .name = NAME,
	        .audience = AUDIENCE,
	        .retry_initial_usec = 1000,
	        .store = e->store,
	        .http = online ? e->http : NULL,
	        .auth = online ? e->auth : NULL,
	        .metrics = e->metrics,
	        .random = &zero_random,
	        .callback = on_result,
	        .userdata = e,
	};

	e->reg = registry_free(e->reg);
	assert_int_equal(registry_new(e->base, &o, &e->reg), 0);
}

/* Write a registration into the store as a refresh (by anyone) would. */
static void
seed_registration(struct env *e, int64_t refreshed_at, const char *id,
                  const struct store_customer_subscription *list, size_t n)
{
	struct store_registration reg = {
	        .id = (char *)(id ? id : REG_ID_LOWER),
	        .default_subscription = (char *)SUB_DEFAULT,
	        .raw = (char *)"{}",
	        .refreshed_at = refreshed_at,
	};

	assert_int_equal(store_registration_replace(e->store, &reg, list, n), 0);
}

/* The stamp's user subscriptions as the collector caches them; with_a2 false: A2 has gone. */
static void
seed_subscriptions(struct env *e, int64_t now, bool with_a2, bool with_new)
{
	struct store_subscription subs[] = {
	        {.subscription_id = (char *)SUB_A1, .tenant_id = (char *)TENANT_A},
	        {.subscription_id = (char *)SUB_B1, .tenant_id = (char *)TENANT_B},
	        {.subscription_id = (char *)SUB_B2, .tenant_id = (char *)TENANT_B},
	        {.subscription_id = (char *)SUB_C1, .tenant_id = (char *)TENANT_C},
	        {.subscription_id = (char *)SUB_D1,
	         .tenant_id = (char *)TENANT_D,
	         .delegated_provider = (char *)DELEGATED},
	        {.subscription_id = (char *)SUB_A2, .tenant_id = (char *)TENANT_A},
	        {.subscription_id = (char *)SUB_NEW, .tenant_id = (char *)TENANT_C},
	};
	size_t n = 5 + (with_a2 ? 1 : 0);

	if (with_new) {
		subs[n] = subs[6];
		n++;
	}
	assert_int_equal(store_subscriptions_replace(e->store, subs, n, now), 0);
}

/* The default world: A registered with CUSTOMER_A, the tenant cache filled at T0 - 600. */
static void
seed_world(struct env *e)
{
	const struct store_customer_subscription list[] = {
	        {(char *)CUSTOMER_A, (char *)TENANT_A},
	};

	seed_subscriptions(e, T0 - 600, true, false);
	seed_registration(e, T0 - 300, NULL, list, ARRAY_SIZE(list));
}

/* Collect one record per subscription at time `at` (a page of one reported hour). */
static void
put_records(struct env *e, const char *const *subs, size_t n, int64_t at)
{
	struct store_record *recs = xcalloc(n, sizeof(*recs));
	char(*keys)[HASH_SHA256_HEX_LEN + 1] = xcalloc(n, sizeof(*keys));
	struct store_page_result result = {0};
	int64_t hour = T0 - 3600 * (int64_t)(1 + e->key_seq % 24);

	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *identity = xasprintf("record %u %s", e->key_seq++, subs[i]);

		hash_sha256_hex(identity, strlen(identity), keys[i]);
		recs[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = keys[i],
		        .reported_hour = hour,
		        .subscription_id = (char *)subs[i],
		        .meter_id = (char *)METER,
		        .quantity = (char *)"2.4000000000",
		        .usage_start = hour - 3600,
		        .usage_end = hour,
		        .resource_uri = (char *)"/subscriptions/x/resourceGroups/rg/vm",
		        .location = (char *)"local",
		        .raw = (char *)"{}",
		};
	}
	assert_int_equal(store_hour_schedule(e->store, hour, "", hour), 0);
	assert_int_equal(store_put_page(e->store,
	                                &(struct store_page){.reported_hour = hour,
	                                                     .scope = "",
	                                                     .records = recs,
	                                                     .n_records = n,
	                                                     .now = at},
	                                &result),
	                 0);
	assert_int_equal(result.inserted, n);
	free(recs);
	free(keys);
}

/* Claim everything due now through registry_map. */
static int
claim(struct env *e, struct store_batch *b)
{
	struct store_claim c = {
	        .max_records = 1000,
	        .now = now_seconds(),
	        .map = registry_map,
	        .userdata = e->reg,
	};

	*b = (struct store_batch){0};
	return store_claim_batch(e->store, &c, b);
}

/* The claimed record of a subscription, or NULL. */
static const struct store_record *
claimed(const struct store_batch *b, const char *sub)
{
	for (size_t i = 0; i < b->n_records; i++)
		if (streq(b->records[i].subscription_id, sub))
			return &b->records[i];
	return NULL;
}

static uint64_t
held(struct env *e)
{
	struct store_counts c = {0};

	assert_int_equal(store_counts(e->store, &c), 0);
	return c.by_state[STORE_HELD];
}

/* Assert a record's frozen charge. */
static void
assert_charge(const struct store_record *r, const char *charged, const char *reason,
              const char *tenant)
{
	assert_non_null(r);
	assert_string_equal(r->charged_subscription, charged);
	assert_string_equal(r->charge_reason, reason);
	if (tenant)
		assert_string_equal(r->tenant_id, tenant);
	else
		assert_null(r->tenant_id);
	assert_string_equal(r->registration, REG_ID_LOWER);
}

/* --- pure parts -------------------------------------------------------------------------- */

static void
test_registry_is_guid(void **state)
{
	(void)state;
	assert_true(registry_is_guid(CUSTOMER_A));
	assert_true(registry_is_guid("E09A4E93-29A7-4EBA-A6D4-76202383F07F"));
	assert_false(registry_is_guid(NULL));
	assert_false(registry_is_guid(""));
	assert_false(registry_is_guid("e09a4e93-29a7-4eba-a6d4-76202383f07"));
	assert_false(registry_is_guid("e09a4e93-29a7-4eba-a6d4-76202383f07f0"));
	assert_false(registry_is_guid("e09a4e93x29a7-4eba-a6d4-76202383f07f"));
	assert_false(registry_is_guid("g09a4e93-29a7-4eba-a6d4-76202383f07f"));
	assert_false(registry_is_guid("../../../../subscriptions/x/y/zzzzzzzzzz"));
}

static void
test_registry_customer_subscriptions_parse_testdata(void **state)
{
	_cleanup_free_ char *text = read_testdata("customer-subscriptions.json");
	struct store_customer_subscription *list = NULL;
	char *next = NULL, *error = NULL;
	size_t n = 0;

	(void)state;
	assert_int_equal(
	        registry_customer_subscriptions_parse(text, strlen(text), &list, &n, &next, &error),
	        0);
	assert_int_equal(n, 1);
	/* the last segment of the id (upper-case there), lower-cased */
	assert_string_equal(list[0].subscription_id, CUSTOMER_A);
	assert_string_equal(list[0].tenant_id, TENANT_A);
	assert_null(next);
	assert_null(error);
	store_customer_subscription_done(&list[0]);
	free(list);
}

static void
test_registry_customer_subscriptions_parse_empty_forms(void **state)
{
	const char *forms[] = {"",
	                       "  \r\n\t",
	                       "{}",
	                       "{\"value\":[]}",
	                       "{\"value\":null}",
	                       "{\"nextLink\":null}",
	                       "{\"value\":[],\"nextLink\":\"\"}"};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(forms); i++) {
		struct store_customer_subscription *list = (void *)1;
		char *next = (char *)1, *error = NULL;
		size_t n = 99;

		assert_int_equal(registry_customer_subscriptions_parse(forms[i], strlen(forms[i]),
		                                                       &list, &n, &next, &error),
		                 0);
		assert_int_equal(n, 0);
		assert_null(next);
		assert_null(error);
		free(list);
	}
	{
		struct store_customer_subscription *list = NULL;
		char *next = NULL;
		size_t n = 1;

		/* no body at all */
		assert_int_equal(
		        registry_customer_subscriptions_parse(NULL, 0, &list, &n, &next, NULL), 0);
		assert_int_equal(n, 0);
	}
}

static void
test_registry_customer_subscriptions_parse_next_link(void **state)
{
	const char *page =
	        "{\"value\":[{\"id\":\"/x/customerSubscriptions/" CUSTOMER_B "\","
	        "\"properties\":{\"tenantId\":\"2C4A7E10-1111-4222-8333-444455556666\"}}],"
	        "\"nextLink\":\"https://h/next?$skipToken=1\"}";
	struct store_customer_subscription *list = NULL;
	char *next = NULL;
	size_t n = 0;

	(void)state;
	assert_int_equal(
	        registry_customer_subscriptions_parse(page, strlen(page), &list, &n, &next, NULL),
	        0);
	assert_int_equal(n, 1);
	assert_string_equal(list[0].subscription_id, CUSTOMER_B);
	assert_string_equal(list[0].tenant_id, TENANT_B);
	assert_string_equal(next, "https://h/next?$skipToken=1");
	free(next);
	store_customer_subscription_done(&list[0]);
	free(list);
}

static void
test_registry_customer_subscriptions_parse_malformed(void **state)
{
	const char *bad[] = {
	        "{",
	        "[]",
	        "\"value\"",
	        "{\"value\":{}}",
	        "{\"value\":[],\"nextLink\":3}",
	        "{\"value\":[1]}",
	        "{\"value\":[{\"properties\":{\"tenantId\":\"" TENANT_A "\"}}]}",
	        "{\"value\":[{\"id\":\"/x/customerSubscriptions/\",\"properties\":{\"tenantId\":"
	        "\"" TENANT_A "\"}}]}",
	        "{\"value\":[{\"id\":\"/x/customerSubscriptions/abc\",\"properties\":{\"tenantId\":"
	        "\"" TENANT_A "\"}}]}",
	        "{\"value\":[{\"id\":\"" CUSTOMER_A "\",\"properties\":{\"tenantId\":\"" TENANT_A
	        "\"}}]}",
	        "{\"value\":[{\"id\":\"/x/customerSubscriptions/" CUSTOMER_A "\"}]}",
	        "{\"value\":[{\"id\":\"/x/customerSubscriptions/" CUSTOMER_A
	        "\",\"properties\":{\"tenantId\":\"contoso.onmicrosoft.com\"}}]}",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct store_customer_subscription *list = NULL;
		char *next = NULL, *error = NULL;
		size_t n = 0;

		if (registry_customer_subscriptions_parse(bad[i], strlen(bad[i]), &list, &n, &next,
		                                          &error) != -EBADMSG)
			fail_msg("accepted: %s", bad[i]);
		assert_non_null(error);
		assert_null(list);
		free(error);
	}
}

static void
test_registry_arm_advice_every_code(void **state)
{
	/* every code ARCHITECTURE.md section 9 names, and what it must tell the operator */
	static const struct {
		const char *code, *says;
	} codes[] = {
	        {"UnauthorizedCspRegistration", "multi-tenancy is not approved"},
	        {"CustomerSubscriptionsNotAllowed", "Capacity registrations cannot add tenants"},
	        {"RegistrationNotFound", "[registration]"},
	        {"BadCustomerSubscriptionId", "subscription id"},
	        {"InvalidCustomerSubscriptionId", "subscription id"},
	        {"CustomerSubscriptionNotFound", "customer subscription"},
	        {"InvalidCSPSubscription", "CSP subscription"},
	        {"MetadataResolverBadGatewayError", "retried"},
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(codes); i++) {
		const char *advice = registry_arm_advice(codes[i].code);

		if (!advice || !strstr(advice, codes[i].says))
			fail_msg("%s: %s", codes[i].code, advice ? advice : "no advice");
	}
	assert_null(registry_arm_advice("SomethingElse"));
	assert_null(registry_arm_advice(NULL));
}

static void
test_registry_arm_retryable(void **state)
{
	(void)state;
	assert_true(registry_arm_retryable(502, "MetadataResolverBadGatewayError"));
	assert_true(registry_arm_retryable(400, "MetadataResolverBadGatewayError"));
	assert_true(registry_arm_retryable(503, "ServiceUnavailable"));
	assert_true(registry_arm_retryable(500, NULL));
	assert_true(registry_arm_retryable(429, "TooManyRequests"));
	assert_false(registry_arm_retryable(400, "InvalidCSPSubscription"));
	assert_false(registry_arm_retryable(403, "UnauthorizedCspRegistration"));
	assert_false(registry_arm_retryable(404, "RegistrationNotFound"));
}

/* --- the mapping ------------------------------------------------------------------------- */

static void
test_registry_map_every_row(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_A1, SUB_B1, SUB_NEW};
	struct store_batch b = {0};

	seed_world(e);
	make_registry(e, false);
	/* collected before the tenant cache was last refreshed (T0 - 600) */
	put_records(e, subs, ARRAY_SIZE(subs), T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 3);
	assert_charge(claimed(&b, SUB_A1), CUSTOMER_A, "registered", TENANT_A);
	assert_charge(claimed(&b, SUB_B1), SUB_DEFAULT, "default", TENANT_B);
	/* unknown after a refresh */
	assert_charge(claimed(&b, SUB_NEW), SUB_DEFAULT, "unknown-subscription", NULL);
	store_batch_done(&b);
	assert_int_equal(held(e), 0);
	assert_null(registry_not_ready_reason(e->reg));
	assert_false(registry_is_stale(e->reg));
}

static void
test_registry_map_ambiguous_held_until_changed(void **state)
{
	struct env *e = *state;
	const struct store_customer_subscription twice[] = {
	        {(char *)CUSTOMER_A, (char *)TENANT_A},
	        {(char *)CUSTOMER_X, (char *)TENANT_A},
	};
	const struct store_customer_subscription once[] = {
	        {(char *)CUSTOMER_X, (char *)TENANT_A},
	};
	const char *const subs[] = {SUB_A1, SUB_A1, SUB_B1};
	struct store_batch b = {0};
	const char *customers[2];

	seed_subscriptions(e, T0 - 600, true, false);
	seed_registration(e, T0 - 300, NULL, twice, ARRAY_SIZE(twice));
	make_registry(e, false);
	assert_int_equal(registry_start(e->reg), 0);
	/* warned once, with the tenant and both customer subscriptions */
	assert_int_equal(log_count(e, "names tenant " TENANT_A " twice"), 1);
	assert_int_equal(log_count(e, CUSTOMER_X), 1);
	assert_int_equal(registry_ambiguous_tenants(e->reg), 1);
	assert_int_equal(registry_customer_subscriptions_of(e->reg, TENANT_A, customers), 2);
	assert_string_equal(registry_not_ready_reason(e->reg), "registration names a tenant twice");

	put_records(e, subs, ARRAY_SIZE(subs), T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	/* the ambiguous tenant's records are held, not forwarded */
	assert_int_equal(b.n_records, 1);
	assert_charge(claimed(&b, SUB_B1), SUB_DEFAULT, "default", TENANT_B);
	store_batch_done(&b);
	assert_int_equal(held(e), 2);

	/* another writer fixes the registration: held records come back and are mapped on it */
	fake_now_usec += 10 * USEC_PER_SEC;
	seed_registration(e, T0 + 10, NULL, once, ARRAY_SIZE(once));
	registry_sync(e->reg);
	assert_int_equal(held(e), 0);
	assert_int_equal(registry_ambiguous_tenants(e->reg), 0);
	assert_null(registry_not_ready_reason(e->reg));
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 2);
	for (size_t i = 0; i < b.n_records; i++)
		assert_charge(&b.records[i], CUSTOMER_X, "registered", TENANT_A);
	store_batch_done(&b);
	assert_int_equal(log_count(e, "names tenant " TENANT_A " twice"), 1);
	registry_stop(e->reg);
}

static void
test_registry_map_gone_subscription_keeps_tenant(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_A2};
	struct store_batch b = {0};
	struct registry_lookup l = {0};

	seed_world(e);
	/* A2 left the stamp's list; its late usage still arrives */
	seed_subscriptions(e, T0 - 60, false, false);
	make_registry(e, false);
	put_records(e, subs, 1, T0 - 30);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 1);
	assert_charge(claimed(&b, SUB_A2), CUSTOMER_A, "registered", TENANT_A);
	store_batch_done(&b);

	assert_int_equal(registry_lookup(e->reg, SUB_A2, &l), 0);
	assert_true(l.known);
	assert_true(l.gone);
	assert_string_equal(l.tenant_id, TENANT_A);
	assert_string_equal(l.reason, "registered");
	registry_lookup_done(&l);
}

static void
test_registry_map_unknown_held_until_tenant_cache_refreshed(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_NEW, SUB_NEW, SUB_A1};
	struct store_batch b = {0};

	seed_world(e);
	make_registry(e, false);
	/* collected after the tenant cache's last refresh: not known *yet* */
	put_records(e, subs, ARRAY_SIZE(subs), T0 - 60);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 1);
	assert_charge(claimed(&b, SUB_A1), CUSTOMER_A, "registered", TENANT_A);
	store_batch_done(&b);
	assert_int_equal(held(e), 2);
	assert_int_equal(log_count(e, "is not in the tenant cache yet"), 1);

	/* nothing changed: a sync leaves them held */
	registry_sync(e->reg);
	assert_int_equal(held(e), 2);

	/* the collector refreshes the tenant cache, which now lists the subscription */
	seed_subscriptions(e, T0 - 20, true, true);
	registry_sync(e->reg);
	assert_int_equal(held(e), 0);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 2);
	for (size_t i = 0; i < b.n_records; i++)
		assert_charge(&b.records[i], SUB_DEFAULT, "default", TENANT_C);
	store_batch_done(&b);
}

/* A registration written by another process in the same second as the copy in memory is still
 * seen: the store counts writes, the time alone would not show it. */
static void
test_registry_sync_sees_a_write_in_the_same_second(void **state)
{
	struct env *e = *state;
	const struct store_customer_subscription both[] = {
	        {(char *)CUSTOMER_A, (char *)TENANT_A},
	        {(char *)CUSTOMER_B, (char *)TENANT_B},
	};
	const char *const subs[] = {SUB_B1};
	struct store_batch b = {0};

	seed_world(e);
	make_registry(e, false);
	registry_sync(e->reg);
	/* azs-usagectl tenant add: the same refreshed_at second as the copy the registry holds */
	seed_registration(e, T0 - 300, NULL, both, ARRAY_SIZE(both));
	registry_sync(e->reg);
	put_records(e, subs, 1, T0 - 60);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 1);
	assert_charge(&b.records[0], CUSTOMER_B, "registered", TENANT_B);
	store_batch_done(&b);
}

static void
test_registry_map_unknown_still_unknown_after_refresh(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_NEW};
	struct store_batch b = {0};

	seed_world(e);
	make_registry(e, false);
	put_records(e, subs, 1, T0 - 60);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 0);
	store_batch_done(&b);
	assert_int_equal(held(e), 1);

	/* refreshed, still not listed: unknown after a refresh, charged to the default */
	seed_subscriptions(e, T0 - 20, true, false);
	registry_sync(e->reg);
	assert_int_equal(held(e), 0);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 1);
	assert_charge(&b.records[0], SUB_DEFAULT, "unknown-subscription", NULL);
	store_batch_done(&b);
}

static void
test_registry_map_first_default_noticed_once_per_tenant(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_B1, SUB_B2, SUB_B1, SUB_C1, SUB_A1};
	const char *const later[] = {SUB_B1};
	const struct store_customer_subscription with_b[] = {
	        {(char *)CUSTOMER_A, (char *)TENANT_A},
	        {(char *)CUSTOMER_B, (char *)TENANT_B},
	};
	const struct store_customer_subscription without_b[] = {
	        {(char *)CUSTOMER_A, (char *)TENANT_A},
	};
	struct metrics_series *gauge;
	struct store_batch b = {0};

	seed_world(e);
	make_registry(e, false);
	gauge = metrics_get_series(metrics_get_family(e->metrics, METRICS_TENANTS_CHARGED_DEFAULT),
	                           NULL);
	put_records(e, subs, ARRAY_SIZE(subs), T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 5);
	store_batch_done(&b);
	assert_int_equal(log_count(e, "message_id=" LOG_MESSAGE_ID_TENANT_DEFAULT), 2);
	assert_int_equal(log_count(e, "tenant=" TENANT_B), 1);
	assert_int_equal(log_count(e, "tenant=" TENANT_C), 1);
	assert_int_equal(log_count(e, "tenant=" TENANT_A), 0);
	assert_true(metrics_series_value(gauge) == 2);

	/* more records of the same tenants: no more notices */
	put_records(e, subs, ARRAY_SIZE(subs), T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	store_batch_done(&b);
	assert_int_equal(log_count(e, "message_id=" LOG_MESSAGE_ID_TENANT_DEFAULT), 2);

	/* B is registered, then removed again: back to default, noticed again */
	seed_registration(e, T0 - 200, NULL, with_b, ARRAY_SIZE(with_b));
	registry_sync(e->reg);
	assert_true(metrics_series_value(gauge) == 1);
	put_records(e, later, 1, T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	assert_charge(claimed(&b, SUB_B1), CUSTOMER_B, "registered", TENANT_B);
	store_batch_done(&b);
	seed_registration(e, T0 - 100, NULL, without_b, ARRAY_SIZE(without_b));
	registry_sync(e->reg);
	put_records(e, later, 1, T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	assert_charge(claimed(&b, SUB_B1), SUB_DEFAULT, "default", TENANT_B);
	store_batch_done(&b);
	assert_int_equal(log_count(e, "tenant=" TENANT_B), 2);
	assert_true(metrics_series_value(gauge) == 2);
}

static void
test_registry_stale_and_age_on_the_clock(void **state)
{
	struct env *e = *state;
	const char *const subs[] = {SUB_A1};
	struct store_batch b = {0};
	int64_t age = 0;

	seed_world(e); /* fetched at T0 - 300 */
	make_registry(e, false);
	assert_int_equal(registry_start(e->reg), 0);
	assert_int_equal(registry_age(e->reg, &age), 0);
	assert_int_equal(age, 300);
	assert_false(registry_is_stale(e->reg));

	/* exactly max_staleness (24 h) old: still fresh */
	fake_now_usec = (uint64_t)(T0 - 300 + 24 * 3600) * USEC_PER_SEC;
	registry_sync(e->reg);
	assert_false(registry_is_stale(e->reg));
	assert_null(registry_not_ready_reason(e->reg));

	/* one second more: stale, logged once, mapping refused, the claim fails unchanged */
	fake_now_usec += USEC_PER_SEC;
	registry_sync(e->reg);
	registry_sync(e->reg);
	assert_true(registry_is_stale(e->reg));
	assert_string_equal(registry_not_ready_reason(e->reg), "registration cache stale");
	assert_int_equal(log_count(e, "message_id=" LOG_MESSAGE_ID_REGISTRATION_STALE), 1);
	assert_int_equal(registry_map(e->reg,
	                              &(struct store_record){.subscription_id = (char *)SUB_A1},
	                              &(struct store_charge){0}),
	                 -ESTALE);
	put_records(e, subs, 1, T0);
	assert_int_equal(claim(e, &b), -ESTALE);
	store_batch_done(&b);
	assert_true(metrics_series_value(metrics_get_series(
	                    metrics_get_family(e->metrics, METRICS_REGISTRATION_AGE_SECONDS),
	                    NULL)) == 24 * 3600 + 1);

	/* someone refreshed it (azs-usagectl registration refresh): fresh again, mapped */
	seed_world(e);
	seed_registration(
	        e, now_seconds(), NULL,
	        &(struct store_customer_subscription){(char *)CUSTOMER_A, (char *)TENANT_A}, 1);
	registry_sync(e->reg);
	assert_false(registry_is_stale(e->reg));
	assert_int_equal(log_count(e, "registration cache is fresh again"), 1);
	assert_int_equal(claim(e, &b), 0);
	assert_int_equal(b.n_records, 1);
	store_batch_done(&b);
	registry_stop(e->reg);
}

/* A mapping of a record of a subscription collected at T0. */
static struct store_charge
map_sub(struct env *e, const char *sub)
{
	struct store_charge c = {0};

	assert_int_equal(registry_map(e->reg,
	                              &(struct store_record){.subscription_id = (char *)sub,
	                                                     .collected_at = T0},
	                              &c),
	                 0);
	assert_non_null(c.reason);
	return c;
}

static void
test_registry_map_repeated_and_after_a_change(void **state)
{
	struct env *e = *state;
	struct store_charge c;

	seed_world(e);
	make_registry(e, false);
	assert_int_equal(registry_start(e->reg), 0);

	/* the same subscription twice in a row (the second from the last charge) */
	for (int i = 0; i < 2; i++) {
		c = map_sub(e, SUB_B1);
		assert_string_equal(c.charged_subscription, SUB_DEFAULT);
		assert_string_equal(c.reason, "default");
		assert_string_equal(c.tenant_id, TENANT_B);
		assert_false(c.hold);
	}
	assert_int_equal(log_count(e, "tenant " TENANT_B " has usage"), 1);
	c = map_sub(e, SUB_A1);
	assert_string_equal(c.charged_subscription, CUSTOMER_A);
	assert_string_equal(c.reason, "registered");
	c = map_sub(e, SUB_B1);
	assert_string_equal(c.reason, "default");
	/* a subscription not in the tenant cache is never answered from the last charge */
	for (int i = 0; i < 2; i++) {
		c = map_sub(e, SUB_NEW);
		assert_true(c.hold);
		assert_string_equal(c.reason, "unknown-subscription");
	}
	c = map_sub(e, SUB_B1);
	assert_string_equal(c.reason, "default");

	/* the registration changes: tenant B registered, A no longer */
	seed_registration(
	        e, T0 - 200, NULL,
	        &(struct store_customer_subscription){(char *)CUSTOMER_B, (char *)TENANT_B}, 1);
	registry_sync(e->reg);
	c = map_sub(e, SUB_B1);
	assert_string_equal(c.charged_subscription, CUSTOMER_B);
	assert_string_equal(c.reason, "registered");
	c = map_sub(e, SUB_A1);
	assert_string_equal(c.charged_subscription, SUB_DEFAULT);
	assert_string_equal(c.reason, "default");
	registry_stop(e->reg);
}

static void
test_registry_never_fetched_and_foreign_cache(void **state)
{
	struct env *e = *state;
	int64_t age;

	make_registry(e, false);
	assert_true(registry_is_stale(e->reg));
	assert_int_equal(registry_age(e->reg, &age), -ENOENT);
	assert_string_equal(registry_not_ready_reason(e->reg), "registration never fetched");
	assert_int_equal(registry_map(e->reg,
	                              &(struct store_record){.subscription_id = (char *)SUB_A1},
	                              &(struct store_charge){0}),
	                 -ESTALE);

	/* a cache of another registration (the configuration changed): not used */
	seed_subscriptions(e, T0 - 600, true, false);
	seed_registration(e, T0 - 10,
	                  "/subscriptions/" SUB_DEFAULT "/resourcegroups/" RG
	                  "/providers/microsoft.azurestack/registrations/another",
	                  NULL, 0);
	make_registry(e, false);
	assert_true(registry_is_stale(e->reg));
	registry_sync(e->reg);
	assert_true(registry_is_stale(e->reg));
	assert_int_equal(log_count(e, "is not the configured"), 1);
}

static void
test_registry_lookup_rows(void **state)
{
	struct env *e = *state;
	struct registry_lookup l = {0};
	const char *charged, *reason;

	seed_world(e);
	make_registry(e, false);

	assert_int_equal(registry_lookup(e->reg, "C79389AF-4480-48CC-8FA2-EE8CED8E843D", &l), 0);
	assert_true(l.known);
	assert_false(l.gone);
	assert_string_equal(l.charged_subscription, CUSTOMER_A);
	assert_string_equal(l.customer_subscription, CUSTOMER_A);
	assert_string_equal(l.reason, "registered");
	registry_lookup_done(&l);

	assert_int_equal(registry_lookup(e->reg, SUB_B2, &l), 0);
	assert_string_equal(l.charged_subscription, SUB_DEFAULT);
	assert_string_equal(l.reason, "default");
	assert_string_equal(l.tenant_id, TENANT_B);
	assert_null(l.customer_subscription);
	registry_lookup_done(&l);

	assert_int_equal(registry_lookup(e->reg, SUB_D1, &l), 0);
	assert_string_equal(l.delegated_provider, DELEGATED);
	registry_lookup_done(&l);

	assert_int_equal(registry_lookup(e->reg, SUB_NEW, &l), 0);
	assert_false(l.known);
	assert_false(l.hold);
	assert_string_equal(l.reason, "unknown-subscription");
	assert_string_equal(l.charged_subscription, SUB_DEFAULT);
	registry_lookup_done(&l);

	assert_int_equal(registry_tenant_charge(e->reg, TENANT_A, &charged, &reason), 0);
	assert_string_equal(charged, CUSTOMER_A);
	assert_int_equal(registry_tenant_charge(e->reg, NULL, &charged, &reason), 0);
	assert_string_equal(reason, "unknown-subscription");
	assert_string_equal(registry_tenant_of(e->reg, "E09A4E93-29A7-4EBA-A6D4-76202383F07F"),
	                    TENANT_A);
	assert_null(registry_tenant_of(e->reg, CUSTOMER_B));
	/* a lookup is no charge: nothing noticed */
	assert_int_equal(log_count(e, "message_id=" LOG_MESSAGE_ID_TENANT_DEFAULT), 0);
}

static void
test_registry_lookup_tenant_cache_never_filled(void **state)
{
	struct env *e = *state;
	struct registry_lookup l = {0};

	seed_registration(e, T0 - 300, NULL, NULL, 0);
	make_registry(e, false);
	assert_int_equal(registry_lookup(e->reg, SUB_A1, &l), 0);
	assert_true(l.waiting);
	assert_true(l.hold);
	registry_lookup_done(&l);
}

/* --- over HTTPS ---------------------------------------------------------------------------- */

/* Refresh and wait for the result. */
static void
refresh(struct env *e)
{
	e->done = false;
	assert_int_equal(registry_refresh(e->reg), 0);
	fixture_wait(e->base, &e->done);
}

static void
test_registry_refresh_pages_writes_the_cache(void **state)
{
	struct env *e = *state;
	_cleanup_free_ char *page1 = NULL;
	_cleanup_free_ char *testdata = read_testdata("customer-subscriptions.json");
	json_t *doc = json_loads(testdata, 0, NULL);
	struct store_registration reg = {0};
	struct store_customer_subscription *list = NULL;
	size_t n = 0;

	page1 = json_dumps(json_object_get(doc, "value"), JSON_COMPACT);
	json_decref(doc);
	e->arm.pages[0] = page1;
	e->arm.pages[1] = "[{\"id\":\"" REG_PATH "/customerSubscriptions/F1E2D3C4-B5A6-4978-8695-"
	                  "A4B3C2D1E0F9\",\"properties\":{\"tenantId\":\"2C4A7E10-1111-4222-8333-"
	                  "444455556666\"}}]";
	e->arm.pages[2] = "[]";
	e->arm.pages[3] = "[{\"id\":\"" REG_PATH "/customerSubscriptions/" CUSTOMER_X
	                  "\",\"properties\":{\"tenantId\":\"" TENANT_C "\"}}]";
	e->arm.n_pages = 4;
	make_registry(e, true);
	refresh(e);
	assert_int_equal(e->last.error, 0);
	assert_true(e->last.changed);
	assert_int_equal(e->last.n_customer_subscriptions, 3);
	assert_int_equal(e->arm.list_requests, 4);

	assert_int_equal(store_registration_get(e->store, &reg), 0);
	assert_string_equal(reg.id, REG_ID_LOWER);
	assert_string_equal(reg.default_subscription, SUB_DEFAULT);
	assert_string_equal(reg.raw, e->arm.registration);
	assert_int_equal(reg.refreshed_at, T0);
	store_registration_done(&reg);
	assert_int_equal(store_customer_subscriptions(e->store, &list, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(list[0].subscription_id, CUSTOMER_X);
	assert_string_equal(list[0].tenant_id, TENANT_C);
	assert_string_equal(list[1].subscription_id, CUSTOMER_A);
	assert_string_equal(list[2].subscription_id, CUSTOMER_B);
	assert_string_equal(list[2].tenant_id, TENANT_B);
	for (size_t i = 0; i < n; i++)
		store_customer_subscription_done(&list[i]);
	free(list);
	assert_string_equal(registry_tenant_of(e->reg, CUSTOMER_B), TENANT_B);

	/* the same again: a good refresh, nothing changed, a new time */
	fake_now_usec += 60 * USEC_PER_SEC;
	refresh(e);
	assert_int_equal(e->last.error, 0);
	assert_false(e->last.changed);
	assert_int_equal(store_registration_get(e->store, &reg), 0);
	assert_int_equal(reg.refreshed_at, T0 + 60);
	store_registration_done(&reg);
	/* one token for all of it */
	assert_int_equal(e->arm.token_requests, 1);
}

static void
test_registry_refresh_empty_answers(void **state)
{
	struct env *e = *state;
	const char *forms[] = {NULL, "{}", "{\"value\":[]}", "{\"value\":null}"};

	make_registry(e, true);
	for (size_t i = 0; i < ARRAY_SIZE(forms); i++) {
		struct store_customer_subscription *list = NULL;
		size_t n = 9;

		/* a registration with one tenant first */
		e->arm.list_raw = NULL;
		e->arm.list_no_body = false;
		e->arm.pages[0] = "[{\"id\":\"/x/customerSubscriptions/" CUSTOMER_A
		                  "\",\"properties\":{\"tenantId\":\"" TENANT_A "\"}}]";
		e->arm.n_pages = 1;
		refresh(e);
		assert_int_equal(e->last.error, 0);
		assert_int_equal(e->last.n_customer_subscriptions, 1);

		e->arm.list_raw = forms[i];
		e->arm.list_no_body = forms[i] == NULL;
		refresh(e);
		if (e->last.error != 0)
			fail_msg("%s: %s", forms[i] ? forms[i] : "no body", e->last.message);
		assert_true(e->last.changed);
		assert_int_equal(e->last.n_customer_subscriptions, 0);
		assert_int_equal(store_customer_subscriptions(e->store, &list, &n), 0);
		assert_int_equal(n, 0);
		free(list);
		assert_null(registry_tenant_of(e->reg, CUSTOMER_A));
	}
}

static void
test_registry_refresh_failure_keeps_the_cache(void **state)
{
	struct env *e = *state;
	_cleanup_free_ char *not_found = read_testdata("arm-error-registration-not-found.json");
	struct store_registration reg = {0};
	const char *const subs[] = {SUB_A1};
	struct store_batch b = {0};

	seed_subscriptions(e, T0 - 600, true, false);
	e->arm.pages[0] = "[{\"id\":\"/x/customerSubscriptions/" CUSTOMER_A
	                  "\",\"properties\":{\"tenantId\":\"" TENANT_A "\"}}]";
	e->arm.n_pages = 1;
	make_registry(e, true);
	refresh(e);
	assert_int_equal(e->last.error, 0);

	fake_now_usec += 3600 * USEC_PER_SEC;
	queue(e, 404, not_found, NULL);
	refresh(e);
	assert_int_equal(e->last.error, -EREMOTEIO);
	assert_int_equal(e->last.http_status, 404);
	assert_string_equal(e->last.arm_code, "RegistrationNotFound");
	assert_string_equal(e->last.message, "The provided registration was not found.");
	assert_int_equal(e->last.attempts, 1); /* not retried */

	/* a page that is not what the API documents */
	e->arm.list_raw = "{\"value\":[{\"id\":\"/x/customerSubscriptions/nope\"}]}";
	refresh(e);
	assert_int_equal(e->last.error, -EBADMSG);

	/* the cache and the mapping stand */
	assert_int_equal(store_registration_get(e->store, &reg), 0);
	assert_int_equal(reg.refreshed_at, T0);
	store_registration_done(&reg);
	assert_string_equal(registry_tenant_of(e->reg, CUSTOMER_A), TENANT_A);
	put_records(e, subs, 1, T0 - 900);
	assert_int_equal(claim(e, &b), 0);
	assert_charge(claimed(&b, SUB_A1), CUSTOMER_A, "registered", TENANT_A);
	store_batch_done(&b);
}

static void
test_registry_refresh_retries_transient_answers(void **state)
{
	struct env *e = *state;

	e->arm.pages[0] = "[]";
	e->arm.n_pages = 1;
	make_registry(e, true);
	queue(e, 503, "{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"busy\"}}", NULL);
	queue(e, 502,
	      "{\"error\":{\"code\":\"MetadataResolverBadGatewayError\",\"message\":\"The "
	      "metadata resolver returned a bad gateway error.\"}}",
	      NULL);
	e->arm.queue[0].retry_after = "0";
	refresh(e);
	assert_int_equal(e->last.error, 0);
	assert_int_equal(e->arm.registration_requests, 1);
	assert_int_equal(e->arm.arm_requests, 4); /* 503, 502, registration, list */

	/* four in a row: given up, with the last answer's code */
	for (unsigned i = 0; i < 4; i++)
		queue(e, 500, "{\"error\":{\"code\":\"InternalServerError\",\"message\":\"x\"}}",
		      NULL);
	refresh(e);
	assert_int_equal(e->last.error, -EREMOTEIO);
	assert_int_equal(e->last.attempts, 4);
	assert_string_equal(e->last.arm_code, "InternalServerError");
}

static void
test_registry_refresh_new_token_after_401(void **state)
{
	struct env *e = *state;

	e->arm.pages[0] = "[]";
	e->arm.n_pages = 1;
	e->arm.refuse_first_token = true;
	make_registry(e, true);
	refresh(e);
	assert_int_equal(e->last.error, 0);
	assert_int_equal(e->arm.token_requests, 2);
}

static void
test_registry_refresh_refuses_bad_next_links(void **state)
{
	struct env *e = *state;
	_cleanup_free_ char *loop = NULL;
	unsigned before;

	e->arm.pages[0] = "[]";
	e->arm.pages[1] = "[]";
	e->arm.n_pages = 2;
	make_registry(e, true);

	/* page 2 links to itself */
	loop = xasprintf("%s" REG_PATH "/customerSubscriptions?api-version=2017-06-01&"
	                 "$skipToken=0",
	                 e->arm.url);
	e->arm.next_link = loop;
	refresh(e);
	assert_int_equal(e->last.error, -EPROTO);

	/* another host never gets the token */
	e->arm.next_link = "https://evil.example/customerSubscriptions?$skipToken=1";
	before = e->arm.arm_requests;
	refresh(e);
	assert_int_equal(e->last.error, -EPROTO);
	assert_non_null(strstr(e->last.message, "evil.example"));
	assert_int_equal(e->arm.arm_requests, before + 2); /* the registration and page 1 */
}

static void
test_registry_tenant_add_every_success_form(void **state)
{
	struct env *e = *state;
	static const struct {
		int status;
		const char *body;
	} forms[] = {
	        {201, NULL},
	        {201, "{\"id\":\"x\",\"properties\":{\"tenantId\":\"" TENANT_B "\"}}"},
	        {200, "{\"id\":\"x\",\"properties\":{\"tenantId\":\"" TENANT_B "\"}}"},
	        {200, NULL},
	};

	make_registry(e, true);
	for (size_t i = 0; i < ARRAY_SIZE(forms); i++) {
		e->arm.put_status = forms[i].status;
		e->arm.put_body = forms[i].body;
		e->done = false;
		assert_int_equal(registry_tenant_add(e->reg, "F1E2D3C4-B5A6-4978-8695-A4B3C2D1E0F9",
		                                     "2C4A7E10-1111-4222-8333-444455556666"),
		                 0);
		fixture_wait(e->base, &e->done);
		assert_int_equal(e->last.op, REGISTRY_TENANT_ADD);
		assert_int_equal(e->last.error, 0);
		assert_int_equal(e->last.http_status, forms[i].status);
		assert_int_equal(e->last.with_body, forms[i].body != NULL);
		assert_string_equal(e->arm.last_method, "PUT");
		assert_string_equal(e->arm.last_uri, REG_PATH "/customerSubscriptions/" CUSTOMER_B
		                                              "?api-version=2017-06-01");
		assert_string_equal(e->arm.last_body,
		                    "{\"properties\":{\"tenantId\":\"" TENANT_B "\"}}");
		assert_string_equal(e->arm.last_content_type, "application/json");
	}
	assert_int_equal(registry_tenant_add(e->reg, "not-a-guid", TENANT_B), -EINVAL);
	assert_int_equal(registry_tenant_add(e->reg, CUSTOMER_B, "contoso.onmicrosoft.com"),
	                 -EINVAL);
}

static void
test_registry_tenant_add_errors(void **state)
{
	struct env *e = *state;

	make_registry(e, true);
	queue(e, 400,
	      "{\"error\":{\"code\":\"CustomerSubscriptionsNotAllowed\",\"message\":\"Customer "
	      "subscriptions are not allowed for registrations with the Capacity billing "
	      "model.\"}}",
	      "PUT");
	e->done = false;
	assert_int_equal(registry_tenant_add(e->reg, CUSTOMER_B, TENANT_B), 0);
	fixture_wait(e->base, &e->done);
	assert_int_equal(e->last.error, -EREMOTEIO);
	assert_string_equal(e->last.arm_code, "CustomerSubscriptionsNotAllowed");
	assert_int_equal(e->last.attempts, 1);

	/* MetadataResolverBadGatewayError twice, then it works */
	for (unsigned i = 0; i < 2; i++)
		queue(e, 502,
		      "{\"error\":{\"code\":\"MetadataResolverBadGatewayError\",\"message\":\"x\"}}",
		      "PUT");
	e->done = false;
	assert_int_equal(registry_tenant_add(e->reg, CUSTOMER_B, TENANT_B), 0);
	assert_int_equal(registry_tenant_add(e->reg, CUSTOMER_B, TENANT_B), -EBUSY);
	assert_int_equal(registry_refresh(e->reg), -EBUSY);
	fixture_wait(e->base, &e->done);
	assert_int_equal(e->last.error, 0);
	assert_int_equal(e->last.attempts, 3);

	/* a status the API does not document */
	e->arm.put_status = 202;
	e->done = false;
	assert_int_equal(registry_tenant_add(e->reg, CUSTOMER_B, TENANT_B), 0);
	fixture_wait(e->base, &e->done);
	assert_int_equal(e->last.error, -EBADMSG);
}

static void
test_registry_tenant_remove_forms(void **state)
{
	struct env *e = *state;
	static const int statuses[] = {204, 200};

	make_registry(e, true);
	for (size_t i = 0; i < ARRAY_SIZE(statuses); i++) {
		e->arm.delete_status = statuses[i];
		e->done = false;
		assert_int_equal(
		        registry_tenant_remove(e->reg, "E09A4E93-29A7-4EBA-A6D4-76202383F07F"), 0);
		fixture_wait(e->base, &e->done);
		assert_int_equal(e->last.op, REGISTRY_TENANT_REMOVE);
		assert_int_equal(e->last.error, 0);
		assert_int_equal(e->last.http_status, statuses[i]);
		assert_string_equal(e->arm.last_method, "DELETE");
		assert_string_equal(e->arm.last_uri, REG_PATH "/customerSubscriptions/" CUSTOMER_A
		                                              "?api-version=2017-06-01");
	}
}

static void
test_registry_started_logs_each_change_once(void **state)
{
	struct env *e = *state;
	_cleanup_free_ char *not_found = read_testdata("arm-error-registration-not-found.json");
	struct registry_options o = {
	        .arm_endpoint = e->arm.url,
	        .subscription_id = SUB_DEFAULT,
	        .resource_group = RG,
	        .name = NAME,
	        .audience = AUDIENCE,
	        .refresh_interval_usec = 20 * USEC_PER_MSEC,
	        .retry_initial_usec = 1000,
	        .max_attempts = 1,
	        .store = e->store,
	        .http = e->http,
	        .auth = e->auth,
	        .random = &zero_random,
	        .callback = on_result,
	        .userdata = e,
	};

	e->arm.pages[0] = "[]";
	e->arm.n_pages = 1;
	for (unsigned i = 0; i < 3; i++)
		queue(e, 404, not_found, NULL);
	queue(e, 403, "{\"error\":{\"code\":\"AuthorizationFailed\",\"message\":\"no\"}}", NULL);
	assert_int_equal(registry_new(e->base, &o, &e->reg), 0);
	e->stop_after = 6; /* four failures, then two good refreshes */
	assert_int_equal(registry_start(e->reg), 0);
	/* nothing cached: not ready at once */
	assert_int_equal(log_count(e, "no registration cached yet"), 1);
	while (e->results < e->stop_after)
		fixture_wait(e->base, &e->done), e->done = false;
	assert_int_equal(e->last.error, 0);
	assert_int_equal(log_count(e, "refreshing the registration failed"), 2);
	assert_int_equal(log_count(e, "arm_error=RegistrationNotFound"), 1);
	assert_int_equal(log_count(e, "arm_error=AuthorizationFailed"), 1);
	assert_int_equal(log_count(e, "refreshed again after 4 failed refreshes"), 1);
	assert_int_equal(log_count(e, "registration cache is fresh again"), 1);
	assert_false(registry_is_stale(e->reg));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_registry_is_guid),
	        cmocka_unit_test(test_registry_customer_subscriptions_parse_testdata),
	        cmocka_unit_test(test_registry_customer_subscriptions_parse_empty_forms),
	        cmocka_unit_test(test_registry_customer_subscriptions_parse_next_link),
	        cmocka_unit_test(test_registry_customer_subscriptions_parse_malformed),
	        cmocka_unit_test(test_registry_arm_advice_every_code),
	        cmocka_unit_test(test_registry_arm_retryable),
	        cmocka_unit_test_setup_teardown(test_registry_map_every_row, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_map_ambiguous_held_until_changed,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_map_gone_subscription_keeps_tenant,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_registry_map_unknown_held_until_tenant_cache_refreshed, setup,
	                teardown),
	        cmocka_unit_test_setup_teardown(
	                test_registry_map_unknown_still_unknown_after_refresh, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_sync_sees_a_write_in_the_same_second,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_registry_map_first_default_noticed_once_per_tenant, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_stale_and_age_on_the_clock, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_map_repeated_and_after_a_change,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_never_fetched_and_foreign_cache,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_lookup_rows, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_lookup_tenant_cache_never_filled,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_pages_writes_the_cache, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_empty_answers, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_failure_keeps_the_cache,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_retries_transient_answers,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_new_token_after_401, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_refresh_refuses_bad_next_links, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_tenant_add_every_success_form, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_registry_tenant_add_errors, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_tenant_remove_forms, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_registry_started_logs_each_change_once, setup,
	                                        teardown),
	};
	int r;

	pki = fixture_pki_new();
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_pki_free(pki);
	return r;
}
