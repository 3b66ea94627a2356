/*
 * forwarder_set_auth() (lib/forwarder.c) with the default transport: lib/http and lib/auth talk
 * HTTPS to one fake server (tls-fixture.c) that is both the token endpoint and Commerce. The old
 * credentials' token request is held unanswered, or refused; the new ones get "token-new".
 * Asserted: a batch waiting for the old source's token asks the new one at once and is sent with
 * its token; a forwarder failing for want of a token (its probe an hour away: backoff of exactly
 * retry_initial, by a fixed random source) tries the new credentials at once. Every wait is for
 * an event on the loop (tls-fixture's guard turns a hang into a failure).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/http.h>

#include "auth.h"
#include "forwarder.h"
#include "hash.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "tls-fixture.h"
#include "xmalloc.h"

#define TENANT     "adfs-tenant-1"
#define CLIENT_ID  "3f2b1c0d-1111-4a2b-9c3d-0e1f2a3b4c5d"
#define SECRET_OLD "old-Secret-4711"
#define SECRET_NEW "new-Secret-0815"
#define AUDIENCE   "https://commerce.test/"
#define SUB        "0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10"
#define DEFAULT    "9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718"
#define REG                       \
	"/subscriptions/" DEFAULT \
	"/resourcegroups/azurestack/providers/microsoft.azurestack/registrations/r1"
#define METER   "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define HOUR    INT64_C(3600)
#define BACKOFF (3600 * USEC_PER_SEC)

static struct fixture_pki *pki;

enum old_mode {
	OLD_HOLD,   /* the old credentials' token request is never answered */
	OLD_REFUSE, /* it is refused: invalid_client */
};

struct env {
	struct event_base *base;
	struct fixture_server *server;
	struct http_client *http;
	struct auth *auth_old, *auth_new;
	struct store *store;
	struct forwarder *f;
	char dir[64], path[128];
	enum old_mode old_mode;
	unsigned old_token_requests, new_token_requests, commerce_posts;
	struct evhttp_request *held;
	char *authorization; /* of the last Commerce request */
};

/* The backoff's random source: always the largest delay, retry_initial_usec exactly. */
static uint64_t
random_max(void *userdata)
{
	(void)userdata;
	return BACKOFF;
}

static const struct http_random max_random = {.next = random_max};

static void
handle(struct evhttp_request *req, void *userdata)
{
	struct env *e = userdata;
	const char *uri = evhttp_request_get_uri(req);

	if (streq(uri, "/" TENANT "/oauth2/token")) {
		_cleanup_free_ char *body = fixture_request_body(req);

		if (strstr(body, "client_secret=" SECRET_NEW)) {
			e->new_token_requests++;
			fixture_reply(req, 200, "application/json",
			              "{\"token_type\":\"Bearer\",\"expires_in\":\"3599\","
			              "\"access_token\":\"token-new\"}");
		} else if (strstr(body, "client_secret=" SECRET_OLD)) {
			e->old_token_requests++;
			if (e->old_mode == OLD_HOLD && !e->held)
				e->held = req;
			else
				fixture_reply(
				        req, 401, "application/json",
				        "{\"error\":\"invalid_client\",\"error_description\":"
				        "\"AADSTS7000215: Invalid client secret provided.\"}");
		} else
			fixture_reply(req, 400, "application/json",
			              "{\"error\":\"invalid_request\"}");
		return;
	}
	if (streq(uri, "/commerce")) {
		const char *h =
		        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");

		e->commerce_posts++;
		free(e->authorization);
		e->authorization = h ? xstrdup(h) : NULL;
		fixture_reply(
		        req, 503, "application/json",
		        "{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"later\"}}");
		return;
	}
	fixture_reply(req, 404, NULL, NULL);
}

static int
fake_map(_unused_ void *userdata, _unused_ const struct store_record *r, struct store_charge *ret)
{
	*ret = (struct store_charge){
	        .charged_subscription = DEFAULT, .reason = "default", .registration = REG};
	return 0;
}

/* Put n records as one page of the last hour. */
static void
put_records(struct env *e, size_t n)
{
	int64_t now = now_seconds(), hour = now - now % HOUR - HOUR;
	char keys[8][HASH_SHA256_HEX_LEN + 1], uris[8][128];
	struct store_record recs[8];
	struct store_page page = {
	        .reported_hour = hour, .scope = "", .records = recs, .n_records = n, .now = now};
	struct store_page_result res;

	assert_true(n <= ARRAY_SIZE(recs));
	for (size_t i = 0; i < n; i++) {
		char in[32];

		snprintf(in, sizeof(in), "record-%zu", i);
		hash_sha256_hex(in, strlen(in), keys[i]);
		snprintf(uris[i], sizeof(uris[i]), "/subscriptions/" SUB "/vm%zu", i);
		recs[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = keys[i],
		        .reported_hour = hour,
		        .subscription_id = (char *)SUB,
		        .meter_id = (char *)METER,
		        .quantity = (char *)"1.5",
		        .usage_start = hour - HOUR,
		        .usage_end = hour,
		        .resource_uri = uris[i],
		        .location = (char *)"local",
		        .raw = (char *)"{}",
		};
	}
	assert_int_equal(store_put_page(e->store, &page, &res), 0);
	assert_int_equal(res.inserted, n);
}

static struct auth *
auth_make(struct env *e, const char *secret)
{
	struct auth_options ao = {
	        .login_endpoint = fixture_server_url(e->server),
	        .audience = AUDIENCE,
	        .tenant = TENANT,
	        .client_id = CLIENT_ID,
	        .client_secret = secret,
	};
	struct auth *a = NULL;

	assert_int_equal(auth_new(e->base, e->http, &ao, &a), 0);
	return a;
}

static int
setup(void **state)
{
	struct env *e = xcalloc(1, sizeof(*e));
	struct http_options ho = {.ca_file = pki->ca_file, .user_agent = "azs-usaged/test"};
	struct store_options so = {0};

	snprintf(e->dir, sizeof(e->dir), "/tmp/test-forwarder-auth-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(e->path, sizeof(e->path), "%s/usage.db", e->dir);
	so.path = e->path;
	assert_int_equal(store_open(&so, &e->store, NULL), 0);
	e->base = event_base_new();
	assert_non_null(e->base);
	e->server = fixture_server_new(e->base, pki->server_cert, pki->server_key, handle, e);
	assert_int_equal(http_client_new(e->base, &ho, &e->http), 0);
	e->auth_old = auth_make(e, SECRET_OLD);
	e->auth_new = auth_make(e, SECRET_NEW);
	*state = e;
	return 0;
}

static int
teardown(void **state)
{
	struct env *e = *state;
	const char *suffix[] = {"", "-wal", "-shm"};
	char p[160];

	forwarder_free(e->f);
	if (e->held)
		fixture_reply(e->held, 500, NULL, NULL);
	auth_free(e->auth_new);
	auth_free(e->auth_old);
	http_client_free(e->http);
	fixture_server_free(e->server);
	event_base_free(e->base);
	store_free(e->store);
	for (size_t i = 0; i < ARRAY_SIZE(suffix); i++) {
		snprintf(p, sizeof(p), "%s%s", e->path, suffix[i]);
		unlink(p);
	}
	rmdir(e->dir);
	free(e->authorization);
	free(e);
	return 0;
}

/* Start the forwarder on the default transport with the old credentials. */
static void
start(struct env *e)
{
	_cleanup_free_ char *url = xasprintf("%s/commerce", fixture_server_url(e->server));
	struct forwarder_options o = {
	        .store = e->store,
	        .http = e->http,
	        .auth = e->auth_old,
	        .url = url,
	        .audience = AUDIENCE,
	        .registration = REG,
	        .map = fake_map,
	        .settings = {.batch_size = 1,
	                     .max_inflight = 1,
	                     .retry_initial_usec = BACKOFF,
	                     .retry_max_usec = BACKOFF},
	        .poll_usec = 20 * USEC_PER_MSEC,
	        .random = &max_random,
	};

	assert_int_equal(forwarder_new(e->base, &o, &e->f), 0);
	assert_int_equal(forwarder_start(e->f), 0);
}

static bool
old_token_held(void *userdata)
{
	return ((struct env *)userdata)->held != NULL;
}

static bool
commerce_posted(void *userdata)
{
	return ((struct env *)userdata)->commerce_posts > 0;
}

static bool
failing_for_token(void *userdata)
{
	struct env *e = userdata;
	struct forwarder_status st;

	forwarder_get_status(e->f, &st);
	return st.failing && st.auth_failing && st.inflight == 0;
}

/* A batch waiting for the old source's token asks the new one, and is sent with its token. */
static void
test_forwarder_set_auth_waiting_batch(void **state)
{
	struct env *e = *state;

	e->old_mode = OLD_HOLD;
	put_records(e, 2);
	start(e);
	fixture_wait_for(e->base, old_token_held, e);
	assert_int_equal(e->commerce_posts, 0);

	forwarder_set_auth(e->f, e->auth_new);
	fixture_wait_for(e->base, commerce_posted, e);
	assert_string_equal(e->authorization, "Bearer token-new");
	assert_int_equal(e->new_token_requests, 1);
	assert_int_equal(e->old_token_requests, 1);
}

/*
 * Failing for want of a token, the forwarder would probe again in an hour (the backoff): new
 * credentials are tried at once, and the batch goes with their token.
 */
static void
test_forwarder_set_auth_failing_tries_at_once(void **state)
{
	struct env *e = *state;

	e->old_mode = OLD_REFUSE;
	put_records(e, 3);
	start(e);
	fixture_wait_for(e->base, failing_for_token, e);
	assert_int_equal(e->commerce_posts, 0);
	assert_true(e->old_token_requests >= 1);

	forwarder_set_auth(e->f, e->auth_new);
	fixture_wait_for(e->base, commerce_posted, e);
	assert_string_equal(e->authorization, "Bearer token-new");
	assert_int_equal(e->new_token_requests, 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_forwarder_set_auth_waiting_batch, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_set_auth_failing_tries_at_once,
	                                        setup, teardown),
	};
	int r;

	log_open(LOG_TARGET_STDERR);
	pki = fixture_pki_new();
	r = cmocka_run_group_tests(tests, NULL, NULL);
	pki = fixture_pki_free(pki);
	return r;
}
