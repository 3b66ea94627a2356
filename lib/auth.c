/*
 * Client-credentials tokens per audience (see auth.h for the behaviour). One struct auth per
 * client identity; one slot per audience with its cached token, its token request in flight and
 * its backoff; one struct auth_wait per caller waiting for a token.
 *
 * Everything a caller sees happens in dispatch(), run from the loop (a deferred event that
 * auth_get() activates) or from the completion of a request: waiters whose slot has a usable
 * token get it; slots that someone needs (waiters, an invalidated token, a token past 80 % of
 * its life) get a token request unless one is in flight or their backoff is running; waiters
 * that need the metadata document (no login endpoint yet, or no default audience) make it be
 * asked for. A callback may call anything here, auth_free() included: delivery rescans the list
 * after every callback and stops when the object was freed, which then happens on the way out.
 * Waiters added by a callback are numbered after the scan began and wait for the next dispatch,
 * so a callback that asks again cannot keep one dispatch going forever.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define LOG_MODULE "auth"
#include "auth.h"
#include "hash.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "stack.h"
#include "timeutil.h"
#include "xmalloc.h"

#define AUTH_TIMEOUT_DEFAULT       (30 * USEC_PER_SEC)
#define AUTH_RETRY_INITIAL_DEFAULT (1 * USEC_PER_SEC)
#define AUTH_RETRY_MAX_DEFAULT     (300 * USEC_PER_SEC)
#define AUTH_ASSERTION_LIFETIME    600                    /* seconds: exp = nbf + 10 min */
#define AUTH_EXPIRY_MARGIN         (60 * USEC_PER_SEC)    /* at most; a tenth of short lifetimes */
#define AUTH_LIFETIME_MAX          INT64_C(1000000000000) /* seconds; beyond is nonsense */
#define AUTH_ASSERTION_TYPE        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

/* The state of one failing endpoint: failures in a row, and the timer before the next try. */
struct backoff {
	unsigned failures;
	bool waiting;
	struct event *timer;
	char *logged; /* the failure last logged, so that only changes are logged */
	/* for auth_get_status(): since when, and the last failure without its description */
	uint64_t since_usec;
	int error;
	long status;
	char code[AUTH_STATUS_CODE_MAX];
};

struct auth_slot {
	struct auth *auth;
	char *audience;
	char *token;           /* NULL: none cached */
	uint64_t refresh_usec; /* realtime: 80 % of the lifetime */
	uint64_t usable_usec;  /* handed out until here: the expiry less a margin */
	uint64_t expires_usec;
	uint64_t sent_usec;       /* when the request in flight was sent */
	struct http_request *req; /* the token request in flight */
	bool want;                /* ask as soon as allowed (invalidated) */
	struct backoff backoff;
	struct auth_slot *next;
};

struct auth_wait {
	struct auth *auth;
	char *audience; /* NULL: the default audience */
	uint64_t seq;
	auth_callback callback;
	void *userdata;
	bool in_callback;
	struct auth_wait *prev, *next;
};

/* Why a request failed, as handed to waiters and to the log. */
struct failure {
	int error;
	long status;
	const char *code;
	const char *description;
	uint64_t retry_after_usec; /* the endpoint's Retry-After, 0 when none */
};

struct auth {
	struct event_base *base;
	struct http_client *http;
	char *login_endpoint; /* NULL until known */
	char *audience;       /* the default audience; NULL until known */
	char *metadata_url;   /* NULL when nothing is taken from the metadata */
	char *tenant;
	char *client_id;
	char *secret;
	EVP_PKEY *key;
	char *x5t;
	char *token_url; /* NULL until the login endpoint is known */
	uint64_t timeout_usec;
	uint64_t retry_initial_usec;
	uint64_t retry_max_usec;
	struct http_random random;
	bool has_random;

	struct http_request *meta_req;
	struct backoff meta_backoff;

	struct auth_slot *slots;
	struct auth_wait *waits, *waits_tail;
	uint64_t next_seq;
	struct event *kick;
	unsigned dispatching;
	bool dead;
};

static int load_certificate(const char *pem, EVP_PKEY **ret_key, char **ret_x5t);
static int make_assertion(struct auth *a, char **ret);
static char *b64url(const void *data, size_t size);
static int json_seconds(json_t *v, int64_t *ret);
static char *strip_slashes(const char *s);
static void dispatch(struct auth *a);
static void dispatch_begin(struct auth *a);
static void dispatch_end(struct auth *a);
static void deliver_ready(struct auth *a, uint64_t limit);
static void deliver_slot(struct auth *a, struct auth_slot *s, uint64_t limit);
static void fail_waiters(struct auth *a, struct auth_slot *s, bool metadata,
                         const struct failure *f, uint64_t limit);
static void call_back(struct auth *a, struct auth_wait *w, const struct auth_result *res);
static void start_requests(struct auth *a);
static struct auth_slot *wait_slot(struct auth *a, const struct auth_wait *w, bool create);
static bool slot_usable(const struct auth_slot *s, uint64_t now);
static void slot_fetch(struct auth_slot *s);
static void slot_failed(struct auth_slot *s, const struct failure *f);
static void meta_fetch(struct auth *a);
static void meta_failed(struct auth *a, const struct failure *f);
static void backoff_start(struct auth *a, struct backoff *b, const struct failure *f,
                          const char *what);
static void backoff_reset(struct backoff *b, const char *what);
static void status_code(const struct failure *f, char ret[static AUTH_STATUS_CODE_MAX]);
static void wait_unlink(struct auth *a, struct auth_wait *w);
static struct auth_wait *wait_free(struct auth_wait *w);
static void destroy(struct auth *a);
static void schedule(struct auth *a);
static void on_kick(evutil_socket_t fd, short what, void *arg);
static void on_slot_timer(evutil_socket_t fd, short what, void *arg);
static void on_meta_timer(evutil_socket_t fd, short what, void *arg);
static void on_token(const struct http_result *r, void *userdata);
static void on_metadata(const struct http_result *r, void *userdata);
static int on_no_password(char *buf, int size, int rwflag, void *userdata);

/* Make the token source of one identity. */
int
auth_new(struct event_base *base, struct http_client *http, const struct auth_options *o,
         struct auth **ret)
{
	struct auth *a;
	int r;

	assert(base && http && o && ret);
	if (isempty(o->client_id) || isempty(o->client_secret) == isempty(o->certificate))
		return -EINVAL;
	if (isempty(o->login_endpoint) && isempty(o->arm_endpoint))
		return -EINVAL;
	a = xcalloc(1, sizeof(*a));
	a->base = base;
	a->http = http;
	a->client_id = xstrdup(o->client_id);
	a->tenant = isempty(o->tenant) ? NULL : xstrdup(o->tenant);
	a->timeout_usec = o->timeout_usec > 0 ? o->timeout_usec : AUTH_TIMEOUT_DEFAULT;
	a->retry_initial_usec =
	        o->retry_initial_usec > 0 ? o->retry_initial_usec : AUTH_RETRY_INITIAL_DEFAULT;
	a->retry_max_usec = o->retry_max_usec > 0 ? o->retry_max_usec : AUTH_RETRY_MAX_DEFAULT;
	if (o->random) {
		a->random = *o->random;
		a->has_random = true;
	}
	if (!isempty(o->audience))
		a->audience = xstrdup(o->audience);
	if (!isempty(o->login_endpoint)) {
		r = auth_token_url(o->login_endpoint, a->tenant, &a->token_url);
		if (r < 0)
			goto fail;
		a->login_endpoint = strip_slashes(o->login_endpoint);
	}
	if (!isempty(o->arm_endpoint) && (!a->login_endpoint || !a->audience)) {
		r = stack_metadata_url(o->arm_endpoint, &a->metadata_url);
		if (r < 0)
			goto fail;
	}
	if (!isempty(o->client_secret)) {
		a->secret = xstrdup(o->client_secret);
	} else {
		r = load_certificate(o->certificate, &a->key, &a->x5t);
		if (r < 0)
			goto fail;
	}
	a->kick = event_new(base, -1, 0, on_kick, a);
	a->meta_backoff.timer = evtimer_new(base, on_meta_timer, a);
	if (!a->kick || !a->meta_backoff.timer) {
		r = -ENOMEM;
		goto fail;
	}
	*ret = a;
	return 0;
fail:
	destroy(a);
	return r;
}

/* Free, dropping waiters without callbacks; deferred while a callback runs. */
struct auth *
auth_free(struct auth *a)
{
	if (!a)
		return NULL;
	if (a->dispatching > 0) {
		a->dead = true;
		return NULL;
	}
	destroy(a);
	return NULL;
}

/* Ask for a token; the answer comes through the callback, from the loop. */
int
auth_get(struct auth *a, const char *audience, auth_callback callback, void *userdata,
         struct auth_wait **ret_wait)
{
	struct auth_wait *w;

	assert(a && !a->dead && callback);
	w = xcalloc(1, sizeof(*w));
	w->auth = a;
	w->audience = audience ? xstrdup(audience) : NULL;
	w->seq = a->next_seq++;
	w->callback = callback;
	w->userdata = userdata;
	w->prev = a->waits_tail;
	if (a->waits_tail)
		a->waits_tail->next = w;
	else
		a->waits = w;
	a->waits_tail = w;
	schedule(a);
	if (ret_wait)
		*ret_wait = w;
	return 0;
}

/* Stop waiting without a callback. */
struct auth_wait *
auth_wait_cancel(struct auth_wait *w)
{
	if (!w || w->in_callback)
		return NULL;
	wait_unlink(w->auth, w);
	return wait_free(w);
}

/* Forget a refused token and ask for a new one. */
void
auth_invalidate(struct auth *a, const char *audience, const char *token)
{
	const char *aud = audience ? audience : a->audience;
	struct auth_slot *s;

	if (!aud)
		return;
	for (s = a->slots; s && !streq(s->audience, aud); s = s->next)
		;
	if (!s || !s->token || (token && !streq(s->token, token)))
		return; /* an older token than the one cached: the cached one stays */
	free_secret(s->token);
	s->token = NULL;
	s->want = true;
	schedule(a);
}

/* Describe the request that has been failing longest, if any. */
void
auth_get_status(const struct auth *a, struct auth_status *ret)
{
	const struct backoff *worst = NULL;
	const char *audience = "";

	assert(a && ret);
	*ret = (struct auth_status){0};
	if (a->meta_backoff.failures > 0)
		worst = &a->meta_backoff;
	for (const struct auth_slot *s = a->slots; s; s = s->next)
		if (s->backoff.failures > 0 &&
		    (!worst || s->backoff.since_usec < worst->since_usec)) {
			worst = &s->backoff;
			audience = s->audience;
		}
	if (!worst)
		return;
	ret->failing = true;
	ret->failing_since = (int64_t)(worst->since_usec / USEC_PER_SEC);
	ret->failures = worst->failures;
	ret->error = worst->error;
	ret->http_status = worst->status;
	snprintf(ret->code, sizeof(ret->code), "%s", worst->code);
	snprintf(ret->audience, sizeof(ret->audience), "%s", audience);
}

/* Tell whether a login endpoint is AD FS by its path. */
bool
auth_login_is_adfs(const char *login_endpoint)
{
	_cleanup_free_ char *s = NULL;
	const char *host, *path;
	size_t n;

	if (!login_endpoint || !(host = strstr(login_endpoint, "://")))
		return false;
	s = strip_slashes(host + 3);
	path = strchr(s, '/');
	if (!path)
		return false;
	n = strlen(path);
	return n >= 5 && strcasecmp(path + n - 5, "/adfs") == 0;
}

/* Build the token URL of a login endpoint. */
int
auth_token_url(const char *login_endpoint, const char *tenant, char **ret)
{
	_cleanup_free_ char *base = NULL, *t = NULL;

	if (!login_endpoint || strncasecmp(login_endpoint, "https://", 8) != 0)
		return -EINVAL;
	base = strip_slashes(login_endpoint);
	if (strlen(base) <= 8 || base[8] == '/')
		return -EINVAL;
	if (auth_login_is_adfs(base)) {
		*ret = xasprintf("%s/oauth2/token", base);
		return 0;
	}
	if (isempty(tenant))
		return -EINVAL;
	t = http_escape(tenant);
	*ret = xasprintf("%s/%s/oauth2/token", base, t);
	return 0;
}

/* Read the access token and its lifetime from a token answer. */
int
auth_answer_parse(const char *body, size_t size, uint64_t now_usec, char **ret_token,
                  uint64_t *ret_lifetime_usec)
{
	json_t *root = json_loadb(body, size, 0, NULL), *in, *on;
	const char *token = json_string_value(json_object_get(root, "access_token"));
	int64_t seconds = 0, lifetime;
	int r = -EBADMSG;

	if (!json_is_object(root) || isempty(token))
		goto out;
	in = json_object_get(root, "expires_in");
	on = json_object_get(root, "expires_on");
	if (in) {
		if (json_seconds(in, &seconds) < 0)
			goto out;
		lifetime = seconds;
	} else if (on) {
		if (json_seconds(on, &seconds) < 0)
			goto out;
		lifetime = seconds - (int64_t)(now_usec / USEC_PER_SEC);
	} else {
		goto out;
	}
	if (lifetime <= 0 || lifetime > AUTH_LIFETIME_MAX)
		goto out;
	*ret_token = xstrdup(token);
	*ret_lifetime_usec = (uint64_t)lifetime * USEC_PER_SEC;
	r = 0;
out:
	json_decref(root);
	return r;
}

/* Read error and error_description from an OAuth error answer. */
int
auth_error_parse(const char *body, size_t size, char **ret_code, char **ret_description)
{
	json_t *root = json_loadb(body, size, 0, NULL);
	const char *code, *desc;

	if (!json_is_object(root)) {
		json_decref(root);
		return -EBADMSG;
	}
	code = json_string_value(json_object_get(root, "error"));
	desc = json_string_value(json_object_get(root, "error_description"));
	*ret_code = code ? xstrdup(code) : NULL;
	*ret_description = desc ? xstrdup(desc) : NULL;
	json_decref(root);
	return 0;
}

/*
 * Read the RSA private key of a PEM and the certificate that matches it; x5t is the base64url
 * SHA-1 of that certificate's DER. An encrypted key is refused rather than prompted for.
 */
static int
load_certificate(const char *pem, EVP_PKEY **ret_key, char **ret_x5t)
{
	BIO *bio = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int len, r;

	if (!bio)
		return -ENOMEM;
	key = PEM_read_bio_PrivateKey(bio, NULL, on_no_password, NULL);
	if (!key) {
		r = log_debug_errno(EBADMSG, "the client certificate file holds no private key");
		goto out;
	}
	if (!EVP_PKEY_is_a(key, "RSA")) {
		r = log_debug_errno(EOPNOTSUPP, "the client certificate's key is not RSA (RS256)");
		goto out;
	}
	r = -EBADMSG;
	if (BIO_reset(bio) != 1)
		goto out;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
		if (X509_check_private_key(x, key) == 1)
			break;
		X509_free(x);
		r = -EKEYREJECTED;
	}
	if (!x) {
		r = log_debug_errno(r, "the client certificate file holds no certificate%s",
		                    r == -EKEYREJECTED ? " for its private key" : "");
		goto out;
	}
	len = i2d_X509(x, &der);
	if (len <= 0 || !EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha1(), NULL)) {
		r = -EIO;
		goto out;
	}
	*ret_x5t = b64url(md, mdlen);
	*ret_key = TAKE_PTR(key);
	r = 0;
out:
	/* leave nothing in OpenSSL's error queue: libcurl reads it for its own messages */
	ERR_clear_error();
	OPENSSL_free(der);
	X509_free(x);
	EVP_PKEY_free(key);
	BIO_free(bio);
	return r;
}

/* Make and sign a client assertion for the token URL. */
static int
make_assertion(struct auth *a, char **ret)
{
	char jti[HASH_UUID_LEN + 1];
	json_int_t now = (json_int_t)now_seconds();
	json_t *hdr = NULL, *claims = NULL;
	_cleanup_free_ char *h = NULL, *c = NULL, *h64 = NULL, *c64 = NULL, *input = NULL;
	_cleanup_free_ unsigned char *sig = NULL;
	_cleanup_free_ char *sig64 = NULL;
	EVP_MD_CTX *md = NULL;
	size_t siglen = 0;
	int r = -EIO;

	if (hash_uuid4(jti) < 0)
		return -EIO;
	hdr = json_pack("{s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT", "x5t", a->x5t);
	claims = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "aud", a->token_url, "iss",
	                   a->client_id, "sub", a->client_id, "jti", jti, "nbf", now, "exp",
	                   now + AUTH_ASSERTION_LIFETIME);
	if (!hdr || !claims)
		goto out;
	h = json_dumps(hdr, JSON_COMPACT);
	c = json_dumps(claims, JSON_COMPACT);
	if (!h || !c)
		goto out;
	h64 = b64url(h, strlen(h));
	c64 = b64url(c, strlen(c));
	input = xasprintf("%s.%s", h64, c64);
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, a->key) != 1 ||
	    EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)input, strlen(input)) != 1)
		goto out;
	sig = xmalloc(siglen);
	if (EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1)
		goto out;
	sig64 = b64url(sig, siglen);
	*ret = xasprintf("%s.%s", input, sig64);
	r = 0;
out:
	if (r < 0)
		log_debug("cannot sign the client assertion");
	ERR_clear_error();
	EVP_MD_CTX_free(md);
	json_decref(hdr);
	json_decref(claims);
	return r;
}

/* Encode base64url without padding (RFC 7515 appendix C). */
static char *
b64url(const void *data, size_t size)
{
	static const char alphabet[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const unsigned char *d = data;
	char *out = xmalloc(4 * (size / 3) + 5), *p = out;
	size_t i = 0;

	for (; i + 3 <= size; i += 3) {
		uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];

		*p++ = alphabet[v >> 18];
		*p++ = alphabet[(v >> 12) & 63];
		*p++ = alphabet[(v >> 6) & 63];
		*p++ = alphabet[v & 63];
	}
	if (i < size) {
		uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < size ? (uint32_t)d[i + 1] << 8 : 0);

		*p++ = alphabet[v >> 18];
		*p++ = alphabet[(v >> 12) & 63];
		if (i + 1 < size)
			*p++ = alphabet[(v >> 6) & 63];
	}
	*p = '\0';
	return out;
}

/* Read seconds written as a JSON integer, a whole real, or a string of decimal digits. */
static int
json_seconds(json_t *v, int64_t *ret)
{
	if (json_is_integer(v)) {
		*ret = (int64_t)json_integer_value(v);
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);

		if (!(d >= -1e15 && d <= 1e15))
			return -EBADMSG;
		*ret = (int64_t)d;
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		size_t n = strlen(s);
		int64_t x = 0;

		if (n == 0 || n > 15 || strspn(s, "0123456789") != n)
			return -EBADMSG;
		for (size_t i = 0; i < n; i++)
			x = 10 * x + (s[i] - '0');
		*ret = x;
		return 0;
	}
	return -EBADMSG;
}

/* Copy a URL without its trailing slashes. */
static char *
strip_slashes(const char *s)
{
	size_t n = strlen(s);

	while (n > 0 && s[n - 1] == '/')
		n--;
	return xstrndup(s, n);
}

/* Deliver what can be delivered and start what needs starting. */
static void
dispatch(struct auth *a)
{
	dispatch_begin(a);
	deliver_ready(a, a->next_seq);
	if (!a->dead)
		start_requests(a);
	dispatch_end(a);
}

/* Enter code that may call back: auth_free() is deferred until dispatch_end(). */
static void
dispatch_begin(struct auth *a)
{
	a->dispatching++;
}

/* Leave it; free the object if a callback asked for that. */
static void
dispatch_end(struct auth *a)
{
	assert(a->dispatching > 0);
	if (--a->dispatching == 0 && a->dead)
		destroy(a);
}

/* Hand cached tokens to the waiters (numbered below limit) whose slot has a usable one. */
static void
deliver_ready(struct auth *a, uint64_t limit)
{
	struct auth_wait *w;

again:
	for (w = a->waits; w && !a->dead; w = w->next) {
		struct auth_slot *s;
		struct auth_result res = {0};

		if (w->seq >= limit)
			continue;
		s = wait_slot(a, w, true);
		if (!s || !slot_usable(s, now_realtime_usec()))
			continue;
		res.audience = s->audience;
		res.token = s->token;
		res.expires_usec = s->expires_usec;
		call_back(a, w, &res);
		goto again; /* the callback may have changed anything */
	}
}

/* Hand a slot's fresh token to its waiters (numbered below limit). */
static void
deliver_slot(struct auth *a, struct auth_slot *s, uint64_t limit)
{
	struct auth_wait *w;

again:
	for (w = a->waits; w && !a->dead && s->token; w = w->next) {
		struct auth_result res = {0};

		if (w->seq >= limit || wait_slot(a, w, true) != s)
			continue;
		res.audience = s->audience;
		res.token = s->token;
		res.expires_usec = s->expires_usec;
		call_back(a, w, &res);
		goto again;
	}
}

/*
 * Answer waiters (numbered below limit) with a failure: those of slot s, or with metadata those
 * that needed the metadata document (all that have no slot yet, and all when the token URL is
 * not known).
 */
static void
fail_waiters(struct auth *a, struct auth_slot *s, bool metadata, const struct failure *f,
             uint64_t limit)
{
	struct auth_wait *w;

again:
	for (w = a->waits; w && !a->dead; w = w->next) {
		struct auth_slot *ws;
		struct auth_result res = {
		        .error = f->error,
		        .http_status = f->status,
		        .error_code = f->code,
		        .error_description = f->description,
		};

		if (w->seq >= limit)
			continue;
		ws = wait_slot(a, w, true);
		if (metadata ? (ws && a->token_url) : ws != s)
			continue;
		res.audience = ws ? ws->audience : NULL;
		call_back(a, w, &res);
		goto again;
	}
}

/* Take a waiter off the list and call it with res (its token copied: the slot may drop it). */
static void
call_back(struct auth *a, struct auth_wait *w, const struct auth_result *res)
{
	struct auth_result copy = *res;
	char *token = res->token ? xstrdup(res->token) : NULL;
	char *audience = res->audience ? xstrdup(res->audience) : NULL;

	/* every caller is inside dispatch_begin(): a free in the callback waits for its end */
	assert(a->dispatching > 0);
	copy.token = token;
	copy.audience = audience;
	wait_unlink(a, w);
	w->in_callback = true;
	w->callback(&copy, w->userdata);
	free_secret(token);
	free(audience);
	wait_free(w);
}

/* Start the token and metadata requests that someone needs and that may go now. */
static void
start_requests(struct auth *a)
{
	uint64_t now = now_realtime_usec();
	bool need_meta = false;

	/* slots for every waiter first: a slot with waiters is needed */
	for (struct auth_wait *w = a->waits; w; w = w->next)
		if (!wait_slot(a, w, true))
			need_meta = true; /* the default audience is not known yet */
	for (struct auth_slot *s = a->slots; s && !a->dead; s = s->next) {
		bool waited = false, refresh;

		if (s->req || s->backoff.waiting)
			continue;
		/* waiters that came after the delivery began get the usable token next time */
		for (struct auth_wait *w = a->waits; w && !waited; w = w->next)
			waited = wait_slot(a, w, false) == s && !slot_usable(s, now);
		refresh = s->token && now >= s->refresh_usec && now < s->usable_usec;
		if (!waited && !s->want && !refresh)
			continue;
		if (!a->token_url)
			need_meta = true;
		else
			slot_fetch(s);
	}
	if (need_meta && !a->dead) {
		if (a->metadata_url) {
			meta_fetch(a);
		} else {
			/* auth_get(NULL) without a default audience, and no stamp to ask for one */
			struct failure f = {.error = -EINVAL,
			                    .description = "no audience asked for or configured"};

			fail_waiters(a, NULL, true, &f, a->next_seq);
		}
	}
}

/* The slot of a waiter's audience, made when create; NULL while the default is unknown. */
static struct auth_slot *
wait_slot(struct auth *a, const struct auth_wait *w, bool create)
{
	const char *aud = w->audience ? w->audience : a->audience;
	struct auth_slot *s, **tail = &a->slots;

	if (!aud)
		return NULL;
	for (s = a->slots; s; s = s->next) {
		if (streq(s->audience, aud))
			return s;
		tail = &s->next;
	}
	if (!create)
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->auth = a;
	s->audience = xstrdup(aud);
	s->backoff.timer = evtimer_new(a->base, on_slot_timer, s);
	if (!s->backoff.timer)
		abort(); /* allocation failure, as xmalloc */
	*tail = s;
	return s;
}

/* True when a slot's token may be handed out at now. */
static bool
slot_usable(const struct auth_slot *s, uint64_t now)
{
	return s->token && now < s->usable_usec;
}

/* Send a slot's token request. */
static void
slot_fetch(struct auth_slot *s)
{
	struct auth *a = s->auth;
	_cleanup_free_ char *id = http_escape(a->client_id), *res = http_escape(s->audience);
	char rid[HASH_UUID_LEN + 1], *body = NULL, *cred = NULL, *rid_header;
	const char *headers[] = {"Content-Type: application/x-www-form-urlencoded",
	                         "Accept: application/json", NULL, NULL};
	int r;

	if (a->secret) {
		cred = http_escape(a->secret);
		body = xasprintf("grant_type=client_credentials&client_id=%s&resource=%s"
		                 "&client_secret=%s",
		                 id, res, cred);
	} else {
		_cleanup_free_ char *type = http_escape(AUTH_ASSERTION_TYPE);

		r = make_assertion(a, &cred);
		if (r < 0) {
			struct failure f = {.error = r, .description = "cannot sign the assertion"};

			slot_failed(s, &f);
			return;
		}
		/* the JWT is base64url and dots: nothing to escape */
		body = xasprintf("grant_type=client_credentials&client_id=%s&resource=%s"
		                 "&client_assertion_type=%s&client_assertion=%s",
		                 id, res, type, cred);
	}
	/* a request id Azure AD echoes in its logs: for support cases */
	if (hash_uuid4(rid) < 0)
		snprintf(rid, sizeof(rid), "%s", "00000000-0000-0000-0000-000000000000");
	rid_header = xasprintf("client-request-id: %s", rid);
	headers[2] = rid_header;
	s->sent_usec = now_realtime_usec();
	s->want = false;
	r = http_request(a->http, HTTP_POST, a->token_url, headers, body, strlen(body),
	                 a->timeout_usec, on_token, s, &s->req);
	free_secret(body);
	free_secret(cred);
	free(rid_header);
	if (r < 0) {
		struct failure f = {.error = r, .description = "cannot start the token request"};

		s->req = NULL;
		slot_failed(s, &f);
	}
}

/* A slot's token request failed: back off, log a change, answer its waiters. */
static void
slot_failed(struct auth_slot *s, const struct failure *f)
{
	struct auth *a = s->auth;
	_cleanup_free_ char *what = xasprintf("token request for %s", s->audience);

	backoff_start(a, &s->backoff, f, what);
	fail_waiters(a, s, false, f, a->next_seq);
}

/* Ask for the metadata document, unless it is on its way or backing off. */
static void
meta_fetch(struct auth *a)
{
	const char *headers[] = {"Accept: application/json", NULL};
	int r;

	if (a->meta_req || a->meta_backoff.waiting || !a->metadata_url)
		return;
	r = http_request(a->http, HTTP_GET, a->metadata_url, headers, NULL, 0, a->timeout_usec,
	                 on_metadata, a, &a->meta_req);
	if (r < 0) {
		struct failure f = {.error = r, .description = "cannot start the metadata request"};

		a->meta_req = NULL;
		meta_failed(a, &f);
	}
}

/* The metadata request failed: back off, log a change, answer the waiters that needed it. */
static void
meta_failed(struct auth *a, const struct failure *f)
{
	_cleanup_free_ char *what = xasprintf("metadata request %s", a->metadata_url);

	backoff_start(a, &a->meta_backoff, f, what);
	fail_waiters(a, NULL, true, f, a->next_seq);
}

/*
 * Count a failure and arm the timer before the next attempt: the backoff, or the endpoint's
 * Retry-After when that is longer (both at most retry_max). Log it when it differs from the
 * failure logged last.
 */
static void
backoff_start(struct auth *a, struct backoff *b, const struct failure *f, const char *what)
{
	uint64_t delay = http_backoff(b->failures, a->retry_initial_usec, a->retry_max_usec,
	                              a->has_random ? &a->random : NULL);
	struct timeval tv;
	char status[24] = "";
	_cleanup_free_ char *key = NULL;

	delay = MAX(delay, MIN(f->retry_after_usec, a->retry_max_usec));
	if (b->failures == 0)
		b->since_usec = now_realtime_usec();
	b->failures++;
	b->error = f->error;
	b->status = f->status;
	status_code(f, b->code);
	b->waiting = true;
	tv.tv_sec = (time_t)(delay / USEC_PER_SEC);
	tv.tv_usec = (suseconds_t)(delay % USEC_PER_SEC);
	evtimer_add(b->timer, &tv);

	if (f->status > 0)
		snprintf(status, sizeof(status), "%ld", f->status);
	/*
	 * The same failure again is not news. Descriptions differ from one attempt to the next
	 * (Azure AD adds trace ids and times, libcurl counts milliseconds), so only their
	 * AADSTS/MSIS code counts.
	 */
	key = xasprintf("%d|%s|%s|%.*s", f->error, status, f->code ? f->code : "",
	                f->code && f->description ? (int)strcspn(f->description, ": ") : 0,
	                f->description ? f->description : "");
	if (b->logged && streq(b->logged, key)) {
		log_debug("%s failed again (%u in a row)", what, b->failures);
		return;
	}
	free(b->logged);
	b->logged = TAKE_PTR(key);
	/* "... failed with HTTP 401: invalid_client: AADSTS7000215: ...", "... failed: <libcurl> */
	(void)log_fields_errno(
	        LOG_WARNING, f->error,
	        LOG_FIELDS("AZS_HTTP_STATUS", f->status >= 300 ? status : NULL),
	        "%s failed%s%s: %s%s%s; next attempt in %.1f s at the earliest", what,
	        f->status >= 300 ? " with HTTP " : "", f->status >= 300 ? status : "",
	        f->code ? f->code : "", f->code && f->description ? ": " : "",
	        f->description ? f->description : (f->code ? "" : strerror(-f->error)),
	        (double)delay / (double)USEC_PER_SEC);
}

/*
 * The OAuth error and the Azure AD or AD FS code the description starts with ("AADSTS7000215",
 * "MSIS9622"): what a readiness reason may show. The rest of the description is left out.
 */
static void
status_code(const struct failure *f, char ret[static AUTH_STATUS_CODE_MAX])
{
	const char *d = f->description;
	int n = 0;

	if (d && (strncmp(d, "AADSTS", 6) == 0 || strncmp(d, "MSIS", 4) == 0)) {
		n = (int)strcspn(d, ": \r\n");
		if (n > 24)
			n = 0;
	}
	snprintf(ret, AUTH_STATUS_CODE_MAX, "%s%s%.*s", f->code ? f->code : "",
	         f->code && n > 0 ? " " : "", n, n > 0 ? d : "");
}

/* A request succeeded: forget the failures; log the recovery when a failure was logged. */
static void
backoff_reset(struct backoff *b, const char *what)
{
	b->failures = 0;
	b->since_usec = 0;
	b->error = 0;
	b->status = 0;
	b->code[0] = '\0';
	if (b->logged) {
		log_info("%s succeeds again", what);
		free(b->logged);
		b->logged = NULL;
	}
}

/* Take a waiter off the list. */
static void
wait_unlink(struct auth *a, struct auth_wait *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else if (a->waits == w)
		a->waits = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else if (a->waits_tail == w)
		a->waits_tail = w->prev;
	w->prev = w->next = NULL;
}

/* Free a waiter that is off the list. */
static struct auth_wait *
wait_free(struct auth_wait *w)
{
	free(w->audience);
	free(w);
	return NULL;
}

/* Free everything: requests cancelled, waiters dropped, secrets wiped. */
static void
destroy(struct auth *a)
{
	while (a->waits) {
		struct auth_wait *w = a->waits;

		wait_unlink(a, w);
		wait_free(w);
	}
	while (a->slots) {
		struct auth_slot *s = a->slots;

		a->slots = s->next;
		http_request_cancel(s->req);
		if (s->backoff.timer)
			event_free(s->backoff.timer);
		free(s->backoff.logged);
		free_secret(s->token);
		free(s->audience);
		free(s);
	}
	http_request_cancel(a->meta_req);
	if (a->meta_backoff.timer)
		event_free(a->meta_backoff.timer);
	free(a->meta_backoff.logged);
	if (a->kick)
		event_free(a->kick);
	EVP_PKEY_free(a->key);
	free(a->x5t);
	free_secret(a->secret);
	free(a->login_endpoint);
	free(a->audience);
	free(a->metadata_url);
	free(a->tenant);
	free(a->client_id);
	free(a->token_url);
	free(a);
}

/* Run dispatch() from the loop soon. */
static void
schedule(struct auth *a)
{
	event_active(a->kick, EV_TIMEOUT, 1);
}

/* The deferred dispatch. */
static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
	dispatch(arg);
}

/* A slot's backoff is over: requests may go again. */
static void
on_slot_timer(evutil_socket_t fd, short what, void *arg)
{
	struct auth_slot *s = arg;

	s->backoff.waiting = false;
	dispatch(s->auth);
}

/* The metadata backoff is over. */
static void
on_meta_timer(evutil_socket_t fd, short what, void *arg)
{
	struct auth *a = arg;

	a->meta_backoff.waiting = false;
	dispatch(a);
}

/* A token answer arrived (or the request failed). */
static void
on_token(const struct http_result *r, void *userdata)
{
	struct auth_slot *s = userdata;
	struct auth *a = s->auth;
	_cleanup_free_ char *code = NULL, *desc = NULL, *what = NULL;
	struct failure f = {0};
	char *token = NULL;
	uint64_t lifetime = 0, margin;

	s->req = NULL;
	dispatch_begin(a);
	if (r->error < 0) {
		f.error = r->error;
		f.description = r->error_message;
	} else if (r->status == 200) {
		if (auth_answer_parse(r->body, r->body_size, s->sent_usec, &token, &lifetime) < 0) {
			f.error = -EBADMSG;
			f.status = r->status;
			f.description = "the answer has no access_token or no valid lifetime";
		}
	} else {
		f.status = r->status;
		f.error =
		        r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429
		                ? -EACCES
		                : -EREMOTEIO;
		if (auth_error_parse(r->body, r->body_size, &code, &desc) == 0) {
			f.code = code;
			f.description = desc;
		}
		if (r->retry_after)
			(void)http_retry_after_parse(r->retry_after, now_seconds(), UINT64_MAX,
			                             &f.retry_after_usec);
	}
	if (f.error < 0) {
		slot_failed(s, &f);
	} else {
		free_secret(s->token);
		s->token = token;
		s->want = false; /* a 401 while this was on its way concerned an older token */
		s->expires_usec = s->sent_usec + lifetime;
		s->refresh_usec = s->sent_usec + lifetime / 10 * 8;
		margin = MIN(AUTH_EXPIRY_MARGIN, lifetime / 10);
		s->usable_usec = s->expires_usec - margin;
		what = xasprintf("token request for %s", s->audience);
		backoff_reset(&s->backoff, what);
		deliver_slot(a, s, a->next_seq);
	}
	if (!a->dead)
		schedule(a);
	dispatch_end(a);
}

/* The metadata document arrived (or the request failed). */
static void
on_metadata(const struct http_result *r, void *userdata)
{
	struct auth *a = userdata;
	_cleanup_free_ char *url = NULL, *what = NULL, *why = NULL;
	struct stack_metadata m = {0};
	char error[STACK_ERROR_MAX];
	struct failure f = {0};

	a->meta_req = NULL;
	dispatch_begin(a);
	if (r->error < 0) {
		f.error = r->error;
		f.description = r->error_message;
	} else if (r->status != 200) {
		f.error = -EREMOTEIO;
		f.status = r->status;
		f.description = "the metadata endpoint answered with an error";
	} else if (stack_metadata_parse(r->body, r->body_size, &m, error) < 0) {
		f.error = -EBADMSG;
		f.status = r->status;
		why = xasprintf("the metadata is not usable: %s", error);
		f.description = why;
	} else if (!a->token_url && auth_token_url(m.login_endpoint, a->tenant, &url) < 0) {
		f.error = -EINVAL;
		f.status = r->status;
		f.description = "the metadata's login endpoint is Azure AD, but no tenant is "
		                "configured";
	}
	if (f.error < 0) {
		meta_failed(a, &f);
	} else {
		if (!a->token_url) {
			a->token_url = TAKE_PTR(url);
			a->login_endpoint = TAKE_PTR(m.login_endpoint);
		}
		if (!a->audience)
			a->audience = TAKE_PTR(m.audience);
		what = xasprintf("metadata request %s", a->metadata_url);
		backoff_reset(&a->meta_backoff, what);
		log_debug("token URL %s, audience %s (from the metadata)", a->token_url,
		          a->audience);
		/* nothing is asked for again */
		free(a->metadata_url);
		a->metadata_url = NULL;
	}
	stack_metadata_done(&m);
	if (!a->dead)
		schedule(a);
	dispatch_end(a);
}

/* OpenSSL: the key is encrypted; never prompt on a terminal, just fail. */
static int
on_no_password(char *buf, int size, int rwflag, void *userdata)
{
	return -1;
}
