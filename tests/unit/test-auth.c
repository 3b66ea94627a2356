/*
 * Unit tests for lib/auth.c. The pure helpers (token URL, AD FS detection, token answers with
 * numbers or strings, OAuth errors) on ../shared/testdata and malformed variants (the metadata
 * document's parser is lib/stack's, tested there); then tokens over real HTTPS from an identity
 * provider inside the test (tls-fixture.c) that checks every request the way Azure AD and AD FS
 * would: the token path (with the tenant for Azure AD, /adfs/oauth2/token for AD FS), the form, the
 * client secret, or the client assertion (RS256 signature against the client certificate, x5t, aud,
 * iss, sub, jti, nbf, exp), and answers in Azure AD v1's shape (numbers as strings, expires_on) or
 * AD FS's (a numeric expires_in only).
 *
 * Behaviour: one request for many waiters, per-audience cache, refresh at 80 % of the lifetime
 * with the old token handed out meanwhile, a new token at once after auth_invalidate(), failures
 * with their error code and description (AADSTS, MSIS) handed to waiters and logged once, backoff
 * before the next attempt (and Retry-After), the status readiness reads (failing since the first
 * failure in a row, the codes without the description, cleared by the next token), the metadata
 * document asked once (failing, broken, then good), and never a secret, an assertion or a token in
 * the log. The realtime clock is the
 * timeutil seam; nothing sleeps and no test looks at how long anything took.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "timeutil.h"
#include "tls-fixture.h"
#include "xmalloc.h"

#define T0           INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define CLIENT_ID    "6f1e8a52-3c4b-4d0e-9a7b-2c5d8e9f0a1b"
#define SECRET       "s3cret+Value&with=odd chars%"
#define TENANT       "contoso.onmicrosoft.com"
#define AUD_ARM      "https://management.azure.com/"
#define AUD_COMMERCE "https://commerce.azsim.local/"
#define AUD_STACK    "https://management.adfs.azurestack.local/e2bf6aa1-7a8f-4bb9-b8cb-caef446339ec"
#define MAX_ISSUED   64

static struct fixture_pki *pki;
static uint64_t fake_now_usec;

/* The identity provider (and metadata endpoint) inside the test. */
struct idp {
	struct fixture_server *server;
	/* how it behaves */
	bool adfs;              /* answers in AD FS's shape, on /adfs/oauth2/token */
	const char *login_path; /* metadata: loginEndpoint = URL + this */
	long lifetime;          /* seconds */
	bool expires_on_only;   /* Azure AD answer without expires_in */
	unsigned fail_next;     /* answer the next token requests with: */
	int fail_status;
	char *fail_body;
	const char *fail_retry_after;
	unsigned meta_fail_next;
	const char *meta_broken; /* answered once with 200 before the good document */
	X509 *cert;              /* the client certificate assertions are checked against */
	char *x5t;
	/* what it saw */
	unsigned token_requests, metadata_requests;
	char *last_path, *last_resource, *last_jti, *violation;
	char *issued[MAX_ISSUED]; /* tokens and assertions: never to be logged */
	size_t n_issued;
};

struct env {
	struct event_base *base;
	struct idp idp;
	struct http_client *http;
	struct auth *auth;
	FILE *log;
	char *log_text;
	size_t log_size;
};

/* One answer of auth_get(). */
struct got {
	bool done;
	unsigned calls;
	int error;
	char *token, *audience, *code, *description;
	uint64_t expires_usec;
	long status;
};

/* A random source for the backoff: a fixed draw, counted. */
struct draw {
	uint64_t value;
	unsigned calls;
};

static void on_got(const struct auth_result *r, void *userdata);
static void got_done(struct got *g);
static char *b64url_encode(const unsigned char *d, size_t n);
static unsigned char *b64url_decode(const char *s, size_t n, size_t *ret_size);
static char *read_testdata(const char *name);

static uint64_t
fake_clock(void *userdata)
{
	return fake_now_usec;
}

static uint64_t
fixed_draw(void *userdata)
{
	struct draw *d = userdata;

	d->calls++;
	return d->value;
}

/* Note what the provider found wrong (the first thing) and refuse the request. */
static void
violation(struct idp *p, struct evhttp_request *req, const char *what)
{
	if (!p->violation)
		p->violation = xstrdup(what);
	fixture_reply(req, 400, "application/json",
	              "{\"error\":\"invalid_request\",\"error_description\":\"test violation\"}");
}

/* Check a client assertion as Azure AD does; NULL when it is good, else what is wrong. */
static const char *
check_assertion(struct idp *p, const char *jwt, const char *aud)
{
	const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
	_cleanup_free_ unsigned char *hdr = NULL, *pay = NULL, *sig = NULL;
	size_t hn = 0, pn = 0, sn = 0;
	json_t *h = NULL, *c = NULL;
	EVP_MD_CTX *md = NULL;
	const char *why = NULL, *jti;
	json_int_t nbf, exp;

	if (!d2 || strchr(d2 + 1, '.'))
		return "not three parts";
	hdr = b64url_decode(jwt, (size_t)(d1 - jwt), &hn);
	pay = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pn);
	sig = b64url_decode(d2 + 1, strlen(d2 + 1), &sn);
	if (!hdr || !pay || !sig)
		return "not base64url";
	h = json_loadb((const char *)hdr, hn, 0, NULL);
	c = json_loadb((const char *)pay, pn, 0, NULL);
	if (!h || !c) {
		why = "not JSON";
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(h, "alg")), "RS256") ||
	    !streq_ptr(json_string_value(json_object_get(h, "typ")), "JWT") ||
	    !streq_ptr(json_string_value(json_object_get(h, "x5t")), p->x5t)) {
		why = "header alg/typ/x5t";
		goto out;
	}
	md = EVP_MD_CTX_new();
	if (!md ||
	    EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(p->cert)) != 1 ||
	    EVP_DigestVerify(md, sig, sn, (const unsigned char *)jwt, (size_t)(d2 - jwt)) != 1) {
		why = "signature";
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(c, "aud")), aud)) {
		why = "aud";
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(c, "iss")), CLIENT_ID) ||
	    !streq_ptr(json_string_value(json_object_get(c, "sub")), CLIENT_ID)) {
		why = "iss/sub";
		goto out;
	}
	jti = json_string_value(json_object_get(c, "jti"));
	if (!jti || strlen(jti) != 36 || (p->last_jti && streq(p->last_jti, jti))) {
		why = "jti missing, not a UUID, or used again";
		goto out;
	}
	free(p->last_jti);
	p->last_jti = xstrdup(jti);
	if (!json_is_integer(json_object_get(c, "nbf")) ||
	    !json_is_integer(json_object_get(c, "exp"))) {
		why = "nbf/exp not NumericDate integers";
		goto out;
	}
	nbf = json_integer_value(json_object_get(c, "nbf"));
	exp = json_integer_value(json_object_get(c, "exp"));
	if (nbf != (json_int_t)(fake_now_usec / USEC_PER_SEC) || exp != nbf + 600)
		why = "nbf is not now or exp is not now + 10 min";
out:
	EVP_MD_CTX_free(md);
	json_decref(h);
	json_decref(c);
	return why;
}

/* The metadata endpoint: the shape of metadata-endpoints-*.json, pointing at this server. */
static void
idp_metadata(struct idp *p, struct evhttp_request *req)
{
	char *body;

	p->metadata_requests++;
	if (!streq(evhttp_request_get_uri(req), "/metadata/endpoints?api-version=2015-01-01")) {
		violation(p, req, "metadata URL");
		return;
	}
	if (p->meta_fail_next > 0) {
		p->meta_fail_next--;
		fixture_reply(
		        req, 500, "application/json",
		        "{\"error\":{\"code\":\"InternalServerError\",\"message\":\"oops\"}}");
		return;
	}
	if (p->meta_broken) {
		fixture_reply(req, 200, "application/json", p->meta_broken);
		p->meta_broken = NULL;
		return;
	}
	body = xasprintf(
	        "{\"galleryEndpoint\":\"https://adminportal.local.azurestack.external:30015/"
	        "\",\"graphEndpoint\":\"https://graph.local.azurestack.external/\","
	        "\"portalEndpoint\":\"https://adminportal.local.azurestack.external/\","
	        "\"authentication\":{\"loginEndpoint\":\"%s%s\",\"audiences\":[\"%s\"]}}",
	        fixture_server_url(p->server), p->login_path, AUD_STACK);
	fixture_reply(req, 200, "application/json; charset=utf-8", body);
	free(body);
}

/* The token endpoint. */
static void
idp_token(struct idp *p, struct evhttp_request *req)
{
	struct evkeyvalq form;
	const char *path = evhttp_request_get_uri(req), *ct, *secret, *assertion, *atype, *res;
	char *expected_path =
	        p->adfs ? xstrdup("/adfs/oauth2/token") : xasprintf("/%s/oauth2/token", TENANT);
	char *aud = xasprintf("%s%s", fixture_server_url(p->server), path);
	char *body = fixture_request_body(req), *answer, token[64];
	int64_t now = (int64_t)(fake_now_usec / USEC_PER_SEC);

	TAILQ_INIT(&form);
	p->token_requests++;
	free(p->last_path);
	p->last_path = xstrdup(path);
	ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST || !streq(path, expected_path) ||
	    !ct || !streq(ct, "application/x-www-form-urlencoded") ||
	    evhttp_parse_query_str(body, &form) < 0) {
		violation(p, req, "method, path, Content-Type or form");
		goto out;
	}
	free(p->last_resource);
	res = evhttp_find_header(&form, "resource");
	p->last_resource = xstrdup(res ? res : "");
	secret = evhttp_find_header(&form, "client_secret");
	assertion = evhttp_find_header(&form, "client_assertion");
	atype = evhttp_find_header(&form, "client_assertion_type");
	if (!streq_ptr(evhttp_find_header(&form, "grant_type"), "client_credentials") ||
	    !streq_ptr(evhttp_find_header(&form, "client_id"), CLIENT_ID) ||
	    isempty(p->last_resource) || !secret == !assertion) {
		violation(p, req, "grant_type, client_id, resource, or not one credential");
		goto out;
	}
	if (secret && !streq(secret, SECRET)) {
		violation(p, req, "client_secret");
		goto out;
	}
	if (assertion) {
		const char *why;

		if (p->n_issued < MAX_ISSUED)
			p->issued[p->n_issued++] = xstrdup(assertion);
		if (!streq_ptr(atype, "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")) {
			violation(p, req, "client_assertion_type");
			goto out;
		}
		why = p->cert ? check_assertion(p, assertion, aud) : "no certificate";
		if (why) {
			violation(p, req, why);
			goto out;
		}
	}
	if (p->fail_next > 0) {
		p->fail_next--;
		if (p->fail_retry_after)
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
			                  p->fail_retry_after);
		{
			/* "{n}" in the body becomes the request's number, like a trace id */
			const char *n = strstr(p->fail_body, "{n}");
			char *b = n ? xasprintf("%.*s%u%s", (int)(n - p->fail_body), p->fail_body,
			                        p->token_requests, n + 3)
			            : xstrdup(p->fail_body);

			fixture_reply(req, p->fail_status, "application/json; charset=utf-8", b);
			free(b);
		}
		goto out;
	}
	snprintf(token, sizeof(token), "eyJ0eXAi.tok-%u-%lld.c2ln", p->token_requests,
	         (long long)now);
	if (p->n_issued < MAX_ISSUED)
		p->issued[p->n_issued++] = xstrdup(token);
	if (p->adfs)
		answer = xasprintf("{\"access_token\":\"%s\",\"token_type\":\"bearer\","
		                   "\"expires_in\":%ld}",
		                   token, p->lifetime);
	else if (p->expires_on_only)
		answer = xasprintf("{\"token_type\":\"Bearer\",\"expires_on\":%lld,"
		                   "\"resource\":\"%s\",\"access_token\":\"%s\"}",
		                   (long long)(now + p->lifetime), p->last_resource, token);
	else
		answer = xasprintf("{\"token_type\":\"Bearer\",\"expires_in\":\"%ld\","
		                   "\"ext_expires_in\":\"%ld\",\"expires_on\":\"%lld\","
		                   "\"not_before\":\"%lld\",\"resource\":\"%s\","
		                   "\"access_token\":\"%s\"}",
		                   p->lifetime, p->lifetime, (long long)(now + p->lifetime),
		                   (long long)now, p->last_resource, token);
	fixture_reply(req, 200, "application/json; charset=utf-8", answer);
	free(answer);
out:
	evhttp_clear_headers(&form);
	free(expected_path);
	free(aud);
	free(body);
}

/* Route the provider's requests. */
static void
idp_handle(struct evhttp_request *req, void *userdata)
{
	struct idp *p = userdata;
	const char *uri = evhttp_request_get_uri(req);

	if (strncmp(uri, "/metadata/", 10) == 0)
		idp_metadata(p, req);
	else if (streq(uri, "/ping"))
		fixture_reply(req, 200, "text/plain", "pong");
	else
		idp_token(p, req);
}

static int
setup(void **state)
{
	static const struct timeutil_clock clock = {fake_clock, fake_clock, NULL};
	struct env *e = xcalloc(1, sizeof(*e));
	struct http_options ho = {.ca_file = pki->ca_file, .user_agent = "azs-usaged/test"};
	BIO *bio;
	unsigned char md[EVP_MAX_MD_SIZE], *der = NULL;
	unsigned int mdlen = 0;
	int len;

	fake_now_usec = (uint64_t)T0 * USEC_PER_SEC;
	timeutil_set_clock(&clock);
	e->log = open_memstream(&e->log_text, &e->log_size);
	assert_non_null(e->log);
	log_open(LOG_TARGET_STDERR);
	log_set_stream(e->log);
	log_set_max_level(LOG_DEBUG);
	log_clear_secrets(); /* nothing redacted: the module itself must never print them */

	e->base = event_base_new();
	assert_non_null(e->base);
	e->idp.login_path = "/";
	e->idp.lifetime = 3600;
	e->idp.server =
	        fixture_server_new(e->base, pki->server_cert, pki->server_key, idp_handle, &e->idp);
	bio = BIO_new_mem_buf(pki->client_pem, -1);
	e->idp.cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	assert_non_null(e->idp.cert);
	len = i2d_X509(e->idp.cert, &der);
	assert_true(len > 0);
	assert_true(EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha1(), NULL));
	OPENSSL_free(der);
	e->idp.x5t = b64url_encode(md, mdlen);
	assert_int_equal(http_client_new(e->base, &ho, &e->http), 0);
	*state = e;
	return 0;
}

/* What was logged so far. */
static const char *
logged(struct env *e)
{
	fflush(e->log);
	return e->log_text ? e->log_text : "";
}

/* How many times s was logged. */
static unsigned
logged_count(struct env *e, const char *s)
{
	unsigned n = 0;

	for (const char *p = logged(e); (p = strstr(p, s)); p++)
		n++;
	return n;
}

static int
teardown(void **state)
{
	struct env *e = *state;
	const char *text = logged(e);
	bool leaked = strstr(text, SECRET) != NULL;

	for (size_t i = 0; i < e->idp.n_issued; i++) {
		if (strstr(text, e->idp.issued[i]))
			leaked = true;
		free(e->idp.issued[i]);
	}
	auth_free(e->auth);
	http_client_free(e->http);
	fixture_server_free(e->idp.server);
	event_base_free(e->base);
	X509_free(e->idp.cert);
	free(e->idp.x5t);
	free(e->idp.fail_body);
	free(e->idp.last_path);
	free(e->idp.last_resource);
	free(e->idp.last_jti);
	log_set_stream(NULL);
	fclose(e->log);
	timeutil_set_clock(NULL);
	if (getenv("TEST_AUTH_LOG")) /* to read what an operator would see */
		fputs(e->log_text ? e->log_text : "", stderr);
	if (e->idp.violation)
		fail_msg("the identity provider refused a request: %s", e->idp.violation);
	if (leaked)
		fail_msg("a secret, an assertion or a token was logged:\n%s", e->log_text);
	free(e->log_text);
	free(e);
	return 0;
}

/* Options for an Azure AD identity with a secret at this provider. */
static struct auth_options
aad_secret(struct env *e)
{
	struct auth_options o = {
	        .login_endpoint = fixture_server_url(e->idp.server),
	        .tenant = TENANT,
	        .client_id = CLIENT_ID,
	        .client_secret = SECRET,
	};

	return o;
}

static void
auth_start(struct env *e, const struct auth_options *o)
{
	assert_int_equal(auth_new(e->base, e->http, o, &e->auth), 0);
}

/* auth_get() and wait for the answer. */
static void
get(struct env *e, const char *audience, struct got *g)
{
	memset(g, 0, sizeof(*g));
	assert_int_equal(auth_get(e->auth, audience, on_got, g, NULL), 0);
	assert_false(g->done); /* never from inside auth_get() */
	fixture_wait(e->base, &g->done);
	assert_int_equal(g->calls, 1);
}

/* Expect a token from get(). */
static void
get_ok(struct env *e, const char *audience, struct got *g)
{
	get(e, audience, g);
	if (g->error != 0)
		fail_msg("no token: %d %s %s", g->error, g->code ? g->code : "",
		         g->description ? g->description : "");
	assert_non_null(g->token);
}

static bool
seen_token_requests(void *userdata)
{
	struct env *e = userdata;

	return e->idp.token_requests >= 2;
}

/* The ping answered. */
static void
on_ping(const struct http_result *r, void *userdata)
{
	*(bool *)userdata = true;
}

/*
 * Run what is already due, then make a request through the same client to the same server and
 * wait for it: a token request started before it reaches the server before it does, so the count
 * of token requests is settled afterwards.
 */
static void
settle(struct env *e)
{
	char *url = xasprintf("%s/ping", fixture_server_url(e->idp.server));
	bool done = false;

	event_base_loop(e->base, EVLOOP_NONBLOCK);
	assert_int_equal(
	        http_request(e->http, HTTP_GET, url, NULL, NULL, 0, 0, on_ping, &done, NULL), 0);
	fixture_wait(e->base, &done);
	free(url);
}

/* The token URL: tenant for Azure AD, none for AD FS, slashes not doubled. */
static void
test_auth_token_url(void **state)
{
	static const struct {
		const char *login, *tenant, *url;
	} ok[] = {
	        {"https://login.microsoftonline.com", "contoso.onmicrosoft.com",
	         "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/token"},
	        {"https://login.windows.net/", "8f2a6c1e-0000-4000-8000-000000000001",
	         "https://login.windows.net/8f2a6c1e-0000-4000-8000-000000000001/oauth2/token"},
	        {"https://login.windows.net//", "t", "https://login.windows.net/t/oauth2/token"},
	        {"https://adfs.local.azurestack.external/adfs/", NULL,
	         "https://adfs.local.azurestack.external/adfs/oauth2/token"},
	        {"https://adfs.local.azurestack.external/adfs", "ignored",
	         "https://adfs.local.azurestack.external/adfs/oauth2/token"},
	        {"https://host:8443/ADFS/", NULL, "https://host:8443/ADFS/oauth2/token"},
	        {"https://login.example/tenant with space", "a/b",
	         "https://login.example/tenant with space/a%2Fb/oauth2/token"},
	};
	static const struct {
		const char *login, *tenant;
	} bad[] = {
	        {"https://login.microsoftonline.com", NULL},
	        {"https://login.microsoftonline.com/", ""},
	        {"http://adfs.local/adfs/", NULL},
	        {"https://", "t"},
	        {"https:///adfs", NULL},
	        {NULL, "t"},
	        {"https://adfs/", NULL}, /* a host called adfs is not an AD FS path */
	};
	char *url;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
		url = NULL;
		assert_int_equal(auth_token_url(ok[i].login, ok[i].tenant, &url), 0);
		assert_string_equal(url, ok[i].url);
		free(url);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		url = NULL;
		if (auth_token_url(bad[i].login, bad[i].tenant, &url) != -EINVAL)
			fail_msg("accepted %s / %s as %s", bad[i].login, bad[i].tenant, url);
		assert_null(url);
	}
}

/* AD FS is recognised by the path of the login endpoint only. */
static void
test_auth_login_is_adfs(void **state)
{
	(void)state;
	assert_true(auth_login_is_adfs("https://adfs.local.azurestack.external/adfs/"));
	assert_true(auth_login_is_adfs("https://adfs.local.azurestack.external/adfs"));
	assert_true(auth_login_is_adfs("https://x/federation/adfs//"));
	assert_false(auth_login_is_adfs("https://login.windows.net/"));
	assert_false(auth_login_is_adfs("https://adfs"));
	assert_false(auth_login_is_adfs("https://adfs/"));
	assert_false(auth_login_is_adfs("https://x/adfs/ls"));
	assert_false(auth_login_is_adfs("https://x/notadfs"));
	assert_false(auth_login_is_adfs("adfs"));
	assert_false(auth_login_is_adfs(NULL));
}

/* Token answers: Azure AD v1 (strings), numbers, AD FS, expires_on alone; and broken ones. */
static void
test_auth_answer_parse(void **state)
{
	const uint64_t now = (uint64_t)T0 * USEC_PER_SEC;
	static const struct {
		const char *body;
		uint64_t lifetime;
	} ok[] = {
	        {"{\"access_token\":\"t\",\"expires_in\":\"3599\",\"expires_on\":\"1\"}", 3599},
	        {"{\"access_token\":\"t\",\"expires_in\":3599}", 3599},
	        {"{\"access_token\":\"t\",\"expires_in\":3599.0}", 3599},
	        {"{\"access_token\":\"t\",\"token_type\":\"bearer\",\"expires_in\":3600}", 3600},
	        {"{\"access_token\":\"t\",\"expires_on\":\"1793530800\"}", 3600},
	        {"{\"access_token\":\"t\",\"expires_on\":1793530800}", 3600},
	};
	static const char *const bad[] = {
	        "",
	        "not json",
	        "[]",
	        "{\"expires_in\":3600}",
	        "{\"access_token\":\"\",\"expires_in\":3600}",
	        "{\"access_token\":7,\"expires_in\":3600}",
	        "{\"access_token\":\"t\"}",
	        "{\"access_token\":\"t\",\"expires_in\":\"abc\"}",
	        "{\"access_token\":\"t\",\"expires_in\":\"-5\"}",
	        "{\"access_token\":\"t\",\"expires_in\":-5}",
	        "{\"access_token\":\"t\",\"expires_in\":0}",
	        "{\"access_token\":\"t\",\"expires_in\":\"1.5\"}",
	        "{\"access_token\":\"t\",\"expires_in\":\" 60\"}",
	        "{\"access_token\":\"t\",\"expires_in\":\"\"}",
	        "{\"access_token\":\"t\",\"expires_in\":1e300}",
	        "{\"access_token\":\"t\",\"expires_in\":99999999999999}",
	        "{\"access_token\":\"t\",\"expires_in\":null}",
	        "{\"access_token\":\"t\",\"expires_on\":\"1793527200\"}", /* already expired */
	        "{\"access_token\":\"t\",\"expires_on\":1000}",
	};
	char *text, *token = NULL;
	uint64_t lifetime = 0;

	(void)state;
	text = read_testdata("token-v1.json");
	/* its expires_in wins over expires_on (which is against the provider's clock) */
	assert_int_equal(auth_answer_parse(text, strlen(text), now, &token, &lifetime), 0);
	assert_string_equal(token, "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl");
	assert_int_equal(lifetime, 3599 * USEC_PER_SEC);
	free(token);
	free(text);
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
		token = NULL;
		if (auth_answer_parse(ok[i].body, strlen(ok[i].body), now, &token, &lifetime) != 0)
			fail_msg("refused %s", ok[i].body);
		assert_string_equal(token, "t");
		assert_int_equal(lifetime, ok[i].lifetime * USEC_PER_SEC);
		free(token);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		token = NULL;
		if (auth_answer_parse(bad[i], strlen(bad[i]), now, &token, &lifetime) != -EBADMSG)
			fail_msg("accepted %s", bad[i]);
		assert_null(token);
	}
}

/* OAuth errors: Azure AD's token-error.json, AD FS's MSIS, and bodies that are not JSON. */
static void
test_auth_error_parse(void **state)
{
	const char *adfs = "{\"error\":\"invalid_client\",\"error_description\":\"MSIS9622: Client "
	                   "authentication failed.\"}";
	char *text = read_testdata("token-error.json"), *code = NULL, *desc = NULL;

	(void)state;
	assert_int_equal(auth_error_parse(text, strlen(text), &code, &desc), 0);
	assert_string_equal(code, "invalid_client");
	assert_string_equal(desc, "AADSTS7000215: Invalid client secret provided.");
	free(code);
	free(desc);
	free(text);
	assert_int_equal(auth_error_parse(adfs, strlen(adfs), &code, &desc), 0);
	assert_string_equal(code, "invalid_client");
	assert_string_equal(desc, "MSIS9622: Client authentication failed.");
	free(code);
	free(desc);
	assert_int_equal(auth_error_parse("{}", 2, &code, &desc), 0);
	assert_null(code);
	assert_null(desc);
	assert_int_equal(auth_error_parse("<html>", 6, &code, &desc), -EBADMSG);
}

/* Read a PEM file of the fixture as text. */
static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	char *s = NULL;
	size_t n = 0;

	assert_non_null(f);
	assert_true(getdelim(&s, &n, '\0', f) > 0);
	fclose(f);
	return s;
}

/* Options that cannot work are refused when the object is made. */
static void
test_auth_new_refuses(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct auth *a = NULL;
	char *cert = read_file(pki->server_cert), *key = read_file(pki->server_key);
	char *ec_pem = xasprintf("%s%s", cert, key);
	const char *k1 = strstr(pki->client_pem, "-----BEGIN PRIVATE KEY-----");
	const char *k2 = strstr(pki->client2_pem, "-----BEGIN PRIVATE KEY-----");
	char *mismatch; /* client2's certificate with client's key */

	assert_non_null(k1);
	assert_non_null(k2);
	mismatch = xasprintf("%.*s%s", (int)(k2 - pki->client2_pem), pki->client2_pem, k1);

	o.client_id = NULL;
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);
	o = aad_secret(e);
	o.certificate = pki->client_pem; /* both */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);
	o.certificate = NULL;
	o.client_secret = ""; /* neither */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);
	o = aad_secret(e);
	o.tenant = NULL; /* Azure AD needs its tenant */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);
	o = aad_secret(e);
	o.login_endpoint = NULL; /* the metadata is needed, and there is no stamp to ask */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);
	o.arm_endpoint = "http://plain.example";
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EINVAL);

	o = aad_secret(e);
	o.client_secret = NULL;
	o.certificate = "no PEM at all";
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EBADMSG);
	o.certificate = cert; /* a certificate without its key */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EBADMSG);
	o.certificate = ec_pem; /* not RSA */
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EOPNOTSUPP);
	/* client2's certificate with client's key: no certificate for the key */
	o.certificate = mismatch;
	assert_int_equal(auth_new(e->base, e->http, &o, &a), -EKEYREJECTED);
	assert_null(a);

	/* and the good ones */
	o.certificate = pki->client_pem;
	assert_int_equal(auth_new(e->base, e->http, &o, &a), 0);
	a = auth_free(a);
	o = aad_secret(e);
	assert_int_equal(auth_new(e->base, e->http, &o, &a), 0);
	assert_null(auth_free(a));
	assert_null(auth_free(NULL));
	free(cert);
	free(key);
	free(ec_pem);
	free(mismatch);
}

/* Azure AD with a secret: the token, cached per audience. */
static void
test_auth_secret_aad(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g, g2, g3;

	o.audience = AUD_ARM;
	auth_start(e, &o);
	get_ok(e, NULL, &g);
	assert_string_equal(g.audience, AUD_ARM);
	assert_non_null(strstr(g.token, "tok-1-"));
	assert_int_equal(g.expires_usec, (uint64_t)(T0 + 3600) * USEC_PER_SEC);
	assert_string_equal(e->idp.last_path, "/" TENANT "/oauth2/token");
	assert_string_equal(e->idp.last_resource, AUD_ARM);

	/* cached: the same token, no new request */
	get_ok(e, AUD_ARM, &g2);
	assert_string_equal(g2.token, g.token);
	/* another audience: its own token */
	get_ok(e, AUD_COMMERCE, &g3);
	assert_string_not_equal(g3.token, g.token);
	assert_string_equal(g3.audience, AUD_COMMERCE);
	assert_string_equal(e->idp.last_resource, AUD_COMMERCE);
	assert_int_equal(e->idp.token_requests, 2);
	assert_int_equal(e->idp.metadata_requests, 0);
	got_done(&g);
	got_done(&g2);
	got_done(&g3);
}

/* Azure AD with a certificate: the provider checks the assertion; each request has a new one. */
static void
test_auth_certificate_aad(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g, g2;

	o.client_secret = NULL;
	o.certificate = pki->client_pem;
	auth_start(e, &o);
	get_ok(e, AUD_ARM, &g);
	assert_int_equal(e->idp.token_requests, 1);
	/* a later request (after a refusal) signs a new assertion with a new jti, a minute later */
	fake_now_usec += 60 * USEC_PER_SEC;
	auth_invalidate(e->auth, AUD_ARM, g.token);
	get_ok(e, AUD_ARM, &g2);
	assert_string_not_equal(g.token, g2.token);
	assert_int_equal(e->idp.token_requests, 2);
	got_done(&g);
	got_done(&g2);
}

/* AD FS through the metadata, with a secret: no tenant in the path, a numeric expires_in. */
static void
test_auth_metadata_adfs_secret(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.arm_endpoint = fixture_server_url(e->idp.server),
	                         .client_id = CLIENT_ID,
	                         .client_secret = SECRET};
	struct got g, g2;

	e->idp.adfs = true;
	e->idp.login_path = "/adfs/";
	e->idp.lifetime = 3600;
	auth_start(e, &o);
	get_ok(e, NULL, &g);
	assert_string_equal(g.audience, AUD_STACK);
	assert_string_equal(e->idp.last_path, "/adfs/oauth2/token");
	assert_string_equal(e->idp.last_resource, AUD_STACK);
	assert_int_equal(g.expires_usec, (uint64_t)(T0 + 3600) * USEC_PER_SEC);
	/* the metadata is asked once */
	auth_invalidate(e->auth, NULL, g.token);
	get_ok(e, NULL, &g2);
	assert_int_equal(e->idp.metadata_requests, 1);
	assert_int_equal(e->idp.token_requests, 2);
	got_done(&g);
	got_done(&g2);
}

/* AD FS through the metadata, with a certificate: aud is the AD FS token URL. */
static void
test_auth_metadata_adfs_certificate(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.arm_endpoint = fixture_server_url(e->idp.server),
	                         .client_id = CLIENT_ID,
	                         .certificate = pki->client_pem};
	struct got g;

	e->idp.adfs = true;
	e->idp.login_path = "/adfs/";
	auth_start(e, &o);
	get_ok(e, NULL, &g);
	assert_string_equal(e->idp.last_path, "/adfs/oauth2/token");
	got_done(&g);
}

/* Azure AD through the metadata (loginEndpoint ends in /), configured audience kept. */
static void
test_auth_metadata_aad_login_only(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.arm_endpoint = fixture_server_url(e->idp.server),
	                         .audience = AUD_ARM,
	                         .tenant = TENANT,
	                         .client_id = CLIENT_ID,
	                         .certificate = pki->client_pem};
	struct got g;

	e->idp.expires_on_only = true;
	auth_start(e, &o);
	get_ok(e, NULL, &g);
	assert_string_equal(g.audience, AUD_ARM);
	assert_string_equal(e->idp.last_path, "/" TENANT "/oauth2/token");
	assert_int_equal(g.expires_usec, (uint64_t)(T0 + 3600) * USEC_PER_SEC);
	assert_int_equal(e->idp.metadata_requests, 1);
	got_done(&g);
}

/* The metadata says Azure AD but no tenant is configured: an error, not a guess. */
static void
test_auth_metadata_aad_without_tenant(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.arm_endpoint = fixture_server_url(e->idp.server),
	                         .client_id = CLIENT_ID,
	                         .client_secret = SECRET};
	struct got g;

	auth_start(e, &o);
	get(e, NULL, &g);
	assert_int_equal(g.error, -EINVAL);
	assert_null(g.token);
	assert_non_null(strstr(g.description, "tenant"));
	assert_int_equal(e->idp.token_requests, 0);
	got_done(&g);
}

/* No audience asked for, none configured, no stamp to ask: the waiter hears -EINVAL. */
static void
test_auth_no_audience(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g;

	auth_start(e, &o);
	get(e, NULL, &g);
	assert_int_equal(g.error, -EINVAL);
	assert_null(g.token);
	assert_null(g.audience);
	assert_int_equal(e->idp.token_requests + e->idp.metadata_requests, 0);
	got_done(&g);
}

/* Many waiters, one request per audience. */
static void
test_auth_waiters_share_one_request(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g[4] = {0};

	auth_start(e, &o);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(auth_get(e->auth, AUD_ARM, on_got, &g[i], NULL), 0);
	assert_int_equal(auth_get(e->auth, AUD_COMMERCE, on_got, &g[3], NULL), 0);
	for (size_t i = 0; i < ARRAY_SIZE(g); i++)
		fixture_wait(e->base, &g[i].done);
	for (size_t i = 0; i < ARRAY_SIZE(g); i++) {
		assert_int_equal(g[i].calls, 1);
		assert_int_equal(g[i].error, 0);
	}
	assert_string_equal(g[0].token, g[1].token);
	assert_string_equal(g[0].token, g[2].token);
	assert_string_not_equal(g[0].token, g[3].token);
	assert_int_equal(e->idp.token_requests, 2);
	for (size_t i = 0; i < ARRAY_SIZE(g); i++)
		got_done(&g[i]);
}

/*
 * At 80 % of the lifetime a refresh starts in the background while the old token is still handed
 * out; close to the expiry callers wait for the new one; before 80 % nothing is asked.
 */
static void
test_auth_refresh_at_80_percent(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g, g2, g3, g4;

	auth_start(e, &o);
	get_ok(e, AUD_ARM, &g);
	assert_int_equal(e->idp.token_requests, 1);

	fake_now_usec = (uint64_t)(T0 + 2879) * USEC_PER_SEC; /* 80 % of 3600 s is 2880 s */
	get_ok(e, AUD_ARM, &g2);
	assert_string_equal(g2.token, g.token);
	settle(e);
	assert_int_equal(e->idp.token_requests, 1);

	fake_now_usec = (uint64_t)(T0 + 2881) * USEC_PER_SEC;
	get_ok(e, AUD_ARM, &g3);
	assert_string_equal(g3.token, g.token);            /* still valid: handed out at once */
	fixture_wait_for(e->base, seen_token_requests, e); /* the refresh, with nobody waiting */

	fake_now_usec = (uint64_t)(T0 + 3550) * USEC_PER_SEC; /* within a minute of the expiry */
	get_ok(e, AUD_ARM, &g4);
	assert_string_not_equal(g4.token, g.token);
	assert_int_equal(g4.expires_usec, (uint64_t)(T0 + 2881 + 3600) * USEC_PER_SEC);
	assert_int_equal(e->idp.token_requests, 2);
	got_done(&g);
	got_done(&g2);
	got_done(&g3);
	got_done(&g4);
}

/* After a 401 the token is dropped and a new one asked for at once; a stale 401 changes nothing. */
static void
test_auth_invalidate_after_401(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g, g2, g3, g4;

	auth_start(e, &o);
	get_ok(e, AUD_ARM, &g);
	auth_invalidate(e->auth, AUD_ARM, g.token);
	fixture_wait_for(e->base, seen_token_requests, e); /* at once, before anyone asks */
	get_ok(e, AUD_ARM, &g2);
	assert_string_not_equal(g2.token, g.token);

	/* a 401 for the old token, from a request that was already in flight */
	auth_invalidate(e->auth, AUD_ARM, g.token);
	auth_invalidate(e->auth, AUD_COMMERCE, g.token); /* no token there: nothing */
	get_ok(e, AUD_ARM, &g3);
	assert_string_equal(g3.token, g2.token);
	settle(e);
	assert_int_equal(e->idp.token_requests, 2);

	/* NULL: whatever is cached goes */
	auth_invalidate(e->auth, AUD_ARM, NULL);
	get_ok(e, AUD_ARM, &g4);
	assert_string_not_equal(g4.token, g2.token);
	assert_int_equal(e->idp.token_requests, 3);
	got_done(&g);
	got_done(&g2);
	got_done(&g3);
	got_done(&g4);
}

/* Azure AD's error reaches the waiter and the log with its code and description. */
static void
test_auth_error_aad(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct draw d = {0};
	struct http_random rnd = {fixed_draw, &d};
	struct auth_status st;
	struct got g;

	o.random = &rnd;
	e->idp.fail_next = 1;
	e->idp.fail_status = 401;
	e->idp.fail_body = read_testdata("token-error.json");
	auth_start(e, &o);
	get(e, AUD_ARM, &g);
	assert_int_equal(g.error, -EACCES);
	assert_int_equal(g.status, 401);
	assert_string_equal(g.code, "invalid_client");
	assert_string_equal(g.description, "AADSTS7000215: Invalid client secret provided.");
	assert_string_equal(g.audience, AUD_ARM);
	assert_null(g.token);
	assert_int_equal(logged_count(e, "invalid_client: AADSTS7000215: Invalid client secret"),
	                 1);
	assert_int_equal(logged_count(e, "level=warning"), 1);
	assert_non_null(strstr(logged(e), "http_status=401"));
	assert_int_equal(d.calls, 1); /* a backoff was drawn */
	/* readiness sees it: the codes, not the description */
	auth_get_status(e->auth, &st);
	assert_true(st.failing);
	assert_int_equal(st.failing_since, (int64_t)(fake_now_usec / USEC_PER_SEC));
	assert_int_equal(st.failures, 1);
	assert_int_equal(st.error, -EACCES);
	assert_int_equal(st.http_status, 401);
	assert_string_equal(st.code, "invalid_client AADSTS7000215");
	assert_string_equal(st.audience, AUD_ARM);
	got_done(&g);
}

/* AD FS's MSIS error likewise. */
static void
test_auth_error_adfs(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.login_endpoint = NULL,
	                         .arm_endpoint = fixture_server_url(e->idp.server),
	                         .client_id = CLIENT_ID,
	                         .certificate = pki->client_pem};
	struct got g;

	e->idp.adfs = true;
	e->idp.login_path = "/adfs/";
	e->idp.fail_next = 1;
	e->idp.fail_status = 401;
	e->idp.fail_body =
	        xstrdup("{\"error\":\"invalid_client\",\"error_description\":\"MSIS9622: "
	                "Client authentication failed. Please verify the credential "
	                "provided for client authentication is valid.\"}");
	auth_start(e, &o);
	get(e, NULL, &g);
	assert_int_equal(g.error, -EACCES);
	assert_int_equal(g.status, 401);
	assert_string_equal(g.code, "invalid_client");
	assert_non_null(strstr(g.description, "MSIS9622"));
	assert_string_equal(g.audience, AUD_STACK);
	assert_int_equal(logged_count(e, "invalid_client: MSIS9622"), 1);
	got_done(&g);
}

/*
 * A failing token endpoint: each failure answers the waiters, the next attempt waits for the
 * backoff (zero here, drawn once per failure); the failure is logged once (its trace id changes,
 * its code does not), the recovery once.
 */
static void
test_auth_failure_backoff_then_success(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct draw d = {0};
	struct http_random rnd = {fixed_draw, &d};
	struct auth_status st;
	struct got g, g2, g3;
	int64_t since;

	o.random = &rnd;
	e->idp.fail_next = 2;
	e->idp.fail_status = 503;
	e->idp.fail_body = xstrdup("{\"error\":\"temporarily_unavailable\",\"error_description\":"
	                           "\"AADSTS90033: A transient error has occurred. Please try "
	                           "again.\\r\\nTrace ID: {n}\",\"error_codes\":[90033]}");
	auth_start(e, &o);
	get(e, AUD_ARM, &g);
	assert_int_equal(g.error, -EREMOTEIO);
	assert_int_equal(g.status, 503);
	assert_string_equal(g.code, "temporarily_unavailable");
	assert_int_equal(d.calls, 1);
	auth_get_status(e->auth, &st);
	assert_true(st.failing);
	assert_string_equal(st.code, "temporarily_unavailable AADSTS90033");
	since = st.failing_since;
	/* a second failure in a row keeps the time of the first */
	fake_now_usec += 5 * USEC_PER_SEC;
	get(e, AUD_ARM, &g2);
	assert_int_equal(g2.error, -EREMOTEIO);
	assert_int_equal(d.calls, 2);
	auth_get_status(e->auth, &st);
	assert_true(st.failing);
	assert_int_equal(st.failing_since, since);
	assert_int_equal(st.failures, 2);
	/* the same failure with another trace id: handed out as it is, logged once */
	assert_non_null(strstr(g.description, "Trace ID: 1"));
	assert_non_null(strstr(g2.description, "Trace ID: 2"));
	get_ok(e, AUD_ARM, &g3);
	assert_int_equal(e->idp.token_requests, 3);
	assert_int_equal(d.calls, 2);
	/* the token clears it */
	auth_get_status(e->auth, &st);
	assert_false(st.failing);
	assert_int_equal(st.failing_since, 0);
	assert_string_equal(st.code, "");
	assert_int_equal(logged_count(e, "temporarily_unavailable: AADSTS90033"), 1);
	assert_int_equal(logged_count(e, "succeeds again"), 1);
	got_done(&g);
	got_done(&g2);
	got_done(&g3);
}

/*
 * While the backoff (here the endpoint's Retry-After of an hour) runs, a waiter is not sent
 * anywhere; freeing the object drops it without a callback.
 */
static void
test_auth_backoff_holds_requests(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct draw d = {0}; /* a backoff of 0: Retry-After decides */
	struct http_random rnd = {fixed_draw, &d};
	struct got g, held = {0};

	o.random = &rnd;
	o.retry_initial_usec = 1;
	o.retry_max_usec = 2 * 3600 * USEC_PER_SEC;
	e->idp.fail_next = 1;
	e->idp.fail_status = 429;
	e->idp.fail_retry_after = "3600";
	e->idp.fail_body = xstrdup("{\"error\":\"temporarily_unavailable\","
	                           "\"error_description\":\"AADSTS50196: loop detected\"}");
	auth_start(e, &o);
	get(e, AUD_ARM, &g);
	assert_int_equal(g.error, -EREMOTEIO);
	assert_int_equal(g.status, 429);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got, &held, NULL), 0);
	settle(e);
	settle(e);
	assert_int_equal(e->idp.token_requests, 1);
	assert_int_equal(held.calls, 0);
	e->auth = auth_free(e->auth);
	settle(e);
	assert_int_equal(held.calls, 0);
	got_done(&g);
}

/*
 * The metadata endpoint fails, then answers a document without an audience: the waiters hear
 * each; the next try works and is kept.
 */
static void
test_auth_metadata_failure(void **state)
{
	struct env *e = *state;
	struct auth_options o = {.arm_endpoint = fixture_server_url(e->idp.server),
	                         .tenant = TENANT,
	                         .client_id = CLIENT_ID,
	                         .client_secret = SECRET};
	struct draw d = {0};
	struct http_random rnd = {fixed_draw, &d};
	struct auth_status st;
	struct got g, g2, g3;

	o.random = &rnd;
	e->idp.meta_fail_next = 1;
	e->idp.meta_broken = "{\"authentication\":{\"loginEndpoint\":\"https://x/\"}}";
	auth_start(e, &o);
	get(e, NULL, &g);
	assert_int_equal(g.error, -EREMOTEIO);
	assert_int_equal(g.status, 500);
	assert_null(g.audience);
	assert_int_equal(e->idp.token_requests, 0);
	assert_int_equal(logged_count(e, "metadata request"), 1);
	auth_get_status(e->auth, &st);
	assert_true(st.failing);
	assert_string_equal(st.audience, "");
	assert_int_equal(st.http_status, 500);
	get(e, AUD_ARM, &g3); /* a token URL is needed for any audience */
	assert_int_equal(g3.error, -EBADMSG);
	assert_non_null(strstr(g3.description, "audiences"));
	assert_int_equal(logged_count(e, "metadata request"), 2);
	get_ok(e, NULL, &g2);
	assert_string_equal(g2.audience, AUD_STACK);
	auth_get_status(e->auth, &st);
	assert_false(st.failing);
	assert_int_equal(e->idp.metadata_requests, 3);
	assert_int_equal(e->idp.token_requests, 1);
	assert_int_equal(logged_count(e, "succeeds again"), 1);
	got_done(&g);
	got_done(&g2);
	got_done(&g3);
}

/* The transport's error (an untrusted server) reaches the waiter with libcurl's words. */
static void
test_auth_transport_error(void **state)
{
	struct env *e = *state;
	struct fixture_server *rogue =
	        fixture_server_new(e->base, pki->rogue_cert, pki->rogue_key, idp_handle, &e->idp);
	struct auth_options o = aad_secret(e);
	struct got g;

	o.login_endpoint = fixture_server_url(rogue);
	auth_start(e, &o);
	get(e, AUD_ARM, &g);
	assert_int_equal(g.error, -EKEYREJECTED);
	assert_int_equal(g.status, 0);
	assert_null(g.code);
	assert_true(strlen(g.description) > 0);
	assert_int_equal(e->idp.token_requests, 0);
	got_done(&g);
	e->auth = auth_free(e->auth);
	fixture_server_free(rogue);
}

/* State of the callback tests. */
struct chain {
	struct env *env;
	struct got first, other;
	bool freed;
};

/* Callback: free the object while another waiter is pending. */
static void
on_got_free(const struct auth_result *r, void *userdata)
{
	struct chain *ch = userdata;

	on_got(r, &ch->first);
	ch->env->auth = auth_free(ch->env->auth);
	ch->freed = true;
}

/* A callback may free the object: the other waiters are dropped. */
static void
test_auth_callback_frees(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct chain ch = {.env = e};

	auth_start(e, &o);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got_free, &ch, NULL), 0);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got, &ch.other, NULL), 0);
	fixture_wait(e->base, &ch.freed);
	settle(e);
	assert_int_equal(ch.first.error, 0);
	assert_int_equal(ch.other.calls, 0);
	got_done(&ch.first);
}

/* Callback: ask again (a new waiter inside a callback). */
static void
on_got_again(const struct auth_result *r, void *userdata)
{
	struct chain *ch = userdata;

	on_got(r, &ch->first);
	assert_int_equal(auth_get(ch->env->auth, AUD_ARM, on_got, &ch->other, NULL), 0);
	assert_false(ch->other.done);
}

/*
 * A callback may ask again, when the token has just arrived and when it came from the cache; it
 * is answered from the cache, later, not from inside, and nothing is asked of the provider.
 */
static void
test_auth_callback_asks_again(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct chain ch = {.env = e}, ch2 = {.env = e};

	auth_start(e, &o);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got_again, &ch, NULL), 0);
	fixture_wait(e->base, &ch.other.done);
	assert_string_equal(ch.first.token, ch.other.token);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got_again, &ch2, NULL), 0);
	fixture_wait(e->base, &ch2.other.done);
	assert_string_equal(ch2.first.token, ch.first.token);
	assert_string_equal(ch2.other.token, ch.first.token);
	settle(e);
	assert_int_equal(e->idp.token_requests, 1);
	got_done(&ch.first);
	got_done(&ch.other);
	got_done(&ch2.first);
	got_done(&ch2.other);
}

/* A cancelled waiter is never called; the others are. */
static void
test_auth_cancel(void **state)
{
	struct env *e = *state;
	struct auth_options o = aad_secret(e);
	struct got g1 = {0}, g2 = {0};
	struct auth_wait *w = NULL;

	auth_start(e, &o);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got, &g1, &w), 0);
	assert_int_equal(auth_get(e->auth, AUD_ARM, on_got, &g2, NULL), 0);
	assert_null(auth_wait_cancel(w));
	assert_null(auth_wait_cancel(NULL));
	fixture_wait(e->base, &g2.done);
	settle(e);
	assert_int_equal(g1.calls, 0);
	assert_int_equal(g2.error, 0);
	got_done(&g2);
}

/* Copy what a callback received. */
static void
on_got(const struct auth_result *r, void *userdata)
{
	struct got *g = userdata;

	g->calls++;
	g->done = true;
	g->error = r->error;
	g->token = r->token ? xstrdup(r->token) : NULL;
	g->audience = r->audience ? xstrdup(r->audience) : NULL;
	g->code = r->error_code ? xstrdup(r->error_code) : NULL;
	g->description = r->error_description ? xstrdup(r->error_description) : NULL;
	g->expires_usec = r->expires_usec;
	g->status = r->http_status;
	if (r->error == 0)
		assert_non_null(r->token);
}

/* Free what on_got copied. */
static void
got_done(struct got *g)
{
	free(g->token);
	free(g->audience);
	free(g->code);
	free(g->description);
	memset(g, 0, sizeof(*g));
}

/* Base64url without padding. */
static char *
b64url_encode(const unsigned char *d, size_t n)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = xmalloc(4 * n / 3 + 4), *p = out;
	uint32_t acc = 0;
	int bits = 0;

	for (size_t i = 0; i < n; i++) {
		acc = acc << 8 | d[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			*p++ = a[(acc >> bits) & 63];
		}
	}
	if (bits > 0)
		*p++ = a[(acc << (6 - bits)) & 63];
	*p = '\0';
	return out;
}

/* Decode base64url without padding; NULL on a character outside the alphabet or padding. */
static unsigned char *
b64url_decode(const char *s, size_t n, size_t *ret_size)
{
	unsigned char *out = xmalloc(n * 3 / 4 + 3);
	uint32_t acc = 0;
	size_t k = 0;
	int bits = 0;

	for (size_t i = 0; i < n; i++) {
		const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const char *hit = s[i] ? strchr(a, s[i]) : NULL;

		if (!hit) {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)(hit - a);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[k++] = (unsigned char)(acc >> bits);
		}
	}
	*ret_size = k;
	return out;
}

/* A file of ../shared/testdata as text. */
static char *
read_testdata(const char *name)
{
	char *path = xasprintf("%s/%s", TESTDATA_DIR, name), *text = read_file(path);
	size_t n = strlen(text);

	while (n > 0 && text[n - 1] == '\n')
		text[--n] = '\0';
	free(path);
	return text;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_auth_token_url),
	        cmocka_unit_test(test_auth_login_is_adfs),
	        cmocka_unit_test(test_auth_answer_parse),
	        cmocka_unit_test(test_auth_error_parse),
	        cmocka_unit_test_setup_teardown(test_auth_new_refuses, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_secret_aad, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_certificate_aad, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_metadata_adfs_secret, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_metadata_adfs_certificate, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_auth_metadata_aad_login_only, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_metadata_aad_without_tenant, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_auth_no_audience, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_waiters_share_one_request, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_auth_refresh_at_80_percent, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_invalidate_after_401, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_error_aad, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_error_adfs, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_failure_backoff_then_success, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_auth_backoff_holds_requests, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_metadata_failure, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_transport_error, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_callback_frees, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_callback_asks_again, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_auth_cancel, setup, teardown),
	};
	int r;

	signal(SIGPIPE, SIG_IGN);
	unsetenv("https_proxy");
	unsetenv("HTTPS_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	pki = fixture_pki_new();
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_pki_free(pki);
	return r;
}
