/*
 * The simulated identity provider: Azure AD (POST /{tenant}/oauth2/token) and AD FS
 * (POST /adfs/oauth2/token), client credentials with a client secret or a certificate
 * assertion (an RS256 JWT checked against the scenario's certificate: signature, x5t, aud, iss,
 * sub, exp, nbf, and a jti used only once). Issued tokens are random opaque strings remembered
 * with their audience and expiry until they expire; the other endpoints check them here. Token
 * times use the real clock (the daemon's refresh logic runs on it), never the simulated one.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "hash.h"
#include "sim.h"
#include "timeutil.h"
#include "xmalloc.h"

#define TOKENS_MAX     4096
#define JWT_SKEW       60
#define JWT_DATE_MAX   9007199254740992.0 /* 2^53: past it a double no longer counts seconds */
#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define MSIS_CLIENT_AUTH                                                                            \
	"MSIS9622: Client authentication failed. Please verify the credential provided for client " \
	"authentication is valid."
#define CERT_DOCS                      \
	"Review the documentation at " \
	"https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."

/* Why an assertion was refused: the answer's status, OAuth error and AADSTS description. */
struct refusal {
	int status;
	const char *error;
	char description[512];
};

static int check_assertion(struct sim *s, const struct sim_client *c, const char *jwt,
                           const char *aud, struct refusal *ret);
static void refuse(struct refusal *ret, int status, const char *error, const char *fmt, ...)
        _printf_(4, 5);
static bool numeric_date(json_t *v, double *ret);
static void remember_assertion(struct sim *s, const char *key, int64_t until);
static void azure_time(int64_t t, char out[static 40]);
static unsigned char *b64_decode(const char *s, size_t n, size_t *ret_size);
static bool audience_eq(const char *a, const char *b);
static const struct sim_client *find_client(const struct sim *s, const char *id);
static void token_error(struct sim_response *r, bool adfs, int status, const char *error,
                        const char *aad_description, const char *msis_description);

/*
 * Answer a token request like Azure AD / AD FS do. The stamp's identity decides who issues the
 * stack audience: Azure AD (/{tenant}/oauth2/token) or AD FS (/adfs/oauth2/token, routed here
 * only when the scenario says adfs). The registration and Commerce audiences are public Azure,
 * always Azure AD; AD FS does not know them.
 */
void
identity_token(struct sim *s, struct evhttp_request *req, const char *path, struct sim_response *r)
{
	struct sim_world *w = &s->world;
	struct evkeyvalq form = {0};
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	_cleanup_free_ char *body = xmalloc(n + 1), *endpoint = NULL;
	const char *host = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
	const char *grant, *client_id, *resource, *secret, *assertion, *atype;
	const struct sim_client *c;
	bool adfs_path = streq(path, "/adfs/oauth2/token"), known;
	unsigned char raw[24];
	struct sim_token *t;
	time_t now = time(NULL);

	evbuffer_copyout(in, body, n);
	body[n] = '\0';
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		token_error(r, adfs_path, 405, "invalid_request",
		            "AADSTS900561: The endpoint only accepts POST requests.",
		            "MSIS9200: The OAuth token endpoint only accepts POST requests.");
		return;
	}
	if (!adfs_path && !isempty(w->aad_tenant)) {
		size_t tl = strlen(w->aad_tenant);

		if (strncasecmp(path + 1, w->aad_tenant, tl) != 0 || path[1 + tl] != '/') {
			identity_error(
			        r, 400, "invalid_request",
			        "AADSTS90002: Tenant not found. Check to make sure you have the "
			        "correct tenant ID.");
			return;
		}
	}
	if (evhttp_parse_query_str(body, &form) < 0) {
		token_error(r, adfs_path, 400, "invalid_request",
		            "AADSTS900144: The request body must be form-encoded.",
		            "MSIS9201: Received invalid OAuth request. The request body must be "
		            "form-encoded.");
		return;
	}
	grant = evhttp_find_header(&form, "grant_type");
	client_id = evhttp_find_header(&form, "client_id");
	resource = evhttp_find_header(&form, "resource");
	secret = evhttp_find_header(&form, "client_secret");
	assertion = evhttp_find_header(&form, "client_assertion");
	atype = evhttp_find_header(&form, "client_assertion_type");
	if (!grant || !streq(grant, "client_credentials")) {
		token_error(r, adfs_path, 400, "unsupported_grant_type",
		            "AADSTS70003: The app requested an unsupported grant type.",
		            "MSIS9611: The authorization server does not support the requested "
		            "'grant_type'.");
		goto out;
	}
	c = client_id ? find_client(s, client_id) : NULL;
	if (!c) {
		token_error(r, adfs_path, 400, adfs_path ? "invalid_client" : "unauthorized_client",
		            "AADSTS700016: Application with the given identifier was not found in "
		            "the directory.",
		            "MSIS9224: Received invalid OAuth token request. The received "
		            "'client_id' is invalid as no registered client was found with this "
		            "client identifier.");
		goto out;
	}
	/* which audiences this issuer knows (see above) */
	if (!resource)
		known = false;
	else if (adfs_path)
		known = audience_eq(resource, w->aud_stack);
	else
		known = (!w->adfs && audience_eq(resource, w->aud_stack)) ||
		        audience_eq(resource, w->aud_arm) || audience_eq(resource, w->aud_commerce);
	if (!known) {
		token_error(r, adfs_path, 400, "invalid_resource",
		            "AADSTS500011: The resource principal was not found in the tenant.",
		            "MSIS9602: The received 'resource' parameter is not a valid relying "
		            "party identifier.");
		goto out;
	}
	if (secret) {
		if (!c->secret || strlen(secret) != strlen(c->secret) ||
		    CRYPTO_memcmp(secret, c->secret, strlen(secret)) != 0) {
			token_error(r, adfs_path, 401, "invalid_client",
			            "AADSTS7000215: Invalid client secret provided.",
			            MSIS_CLIENT_AUTH);
			goto out;
		}
	} else if (assertion) {
		struct refusal why;

		if (!atype || !streq(atype, ASSERTION_TYPE)) {
			token_error(r, adfs_path, 400, "invalid_request",
			            "AADSTS700025: client_assertion_type must be " ASSERTION_TYPE
			            ".",
			            "MSIS9622: The 'client_assertion_type' must be " ASSERTION_TYPE
			            ".");
			goto out;
		}
		endpoint = xasprintf("https://%s%s", host ? host : "", path);
		if (!c->pubkey) {
			token_error(r, adfs_path, 401, "invalid_client",
			            "AADSTS700027: No certificate is registered for the client.",
			            MSIS_CLIENT_AUTH);
			goto out;
		}
		if (check_assertion(s, c, assertion, endpoint, &why) < 0) {
			/* AD FS does not say which check failed */
			token_error(r, adfs_path, why.status, why.error, why.description,
			            MSIS_CLIENT_AUTH);
			goto out;
		}
	} else {
		token_error(r, adfs_path, 400, "invalid_client",
		            "AADSTS7000218: The request body must contain the following parameter: "
		            "'client_assertion' or 'client_secret'.",
		            MSIS_CLIENT_AUTH);
		goto out;
	}

	/* issue; expired tokens are dropped now and then, valid ones never */
	if (s->n_tokens >= MAX((size_t)TOKENS_MAX, s->tokens_compact_at)) {
		size_t k = 0;

		for (size_t i = 0; i < s->n_tokens; i++) {
			if (s->tokens[i].expires > (int64_t)now)
				s->tokens[k++] = s->tokens[i];
			else
				free(s->tokens[i].audience);
		}
		s->n_tokens = k;
		s->tokens_compact_at = 2 * k;
	}
	s->tokens = xreallocarray(s->tokens, s->n_tokens + 1, sizeof(*s->tokens));
	t = &s->tokens[s->n_tokens++];
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		abort();
	{
		_cleanup_free_ char *b = identity_b64(raw, sizeof(raw), true);

		snprintf(t->value, sizeof(t->value), "azsim.%s", b);
	}
	t->audience = xstrdup(resource);
	t->expires = (int64_t)now + w->token_lifetime;
	r->status = 200;
	if (adfs_path) {
		/* AD FS: lower-case bearer, expires_in a number, no expires_on or not_before */
		evbuffer_add_printf(r->body,
		                    "{\"access_token\":\"%s\",\"token_type\":\"bearer\","
		                    "\"expires_in\":%u}",
		                    t->value, w->token_lifetime);
		goto out;
	}
	evbuffer_add_printf(
	        r->body,
	        "{\"token_type\":\"Bearer\",\"expires_in\":\"%u\",\"expires_on\":\"%lld\","
	        "\"not_before\":\"%lld\",\"resource\":",
	        w->token_lifetime, (long long)t->expires, (long long)now);
	sim_json_str(r->body, resource);
	evbuffer_add_printf(r->body, ",\"access_token\":\"%s\"}", t->value);
out:
	evhttp_clear_headers(&form);
}

/* Check the bearer token of a request for an audience; false with a 401 in r when it fails. */
bool
identity_check(struct sim *s, struct evhttp_request *req, const char *audience,
               struct sim_response *r)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	int64_t now = (int64_t)time(NULL);

	if (!s->world.require_auth)
		return true;
	r->www_authenticate = "Bearer authorization_uri=\"https://login.windows.net/\", "
	                      "error=\"invalid_token\"";
	if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
		sim_arm_error(r, 401, "AuthenticationFailed",
		              "Authentication failed. The 'Authorization' header is missing.");
		return false;
	}
	for (size_t i = 0; i < s->n_tokens; i++) {
		struct sim_token *t = &s->tokens[i];

		if (!streq(t->value, h + 7))
			continue;
		if (t->expires <= now) {
			sim_arm_error(
			        r, 401, "ExpiredAuthenticationToken",
			        "The access token expiry UTC time is earlier than current UTC "
			        "time.");
			return false;
		}
		if (!audience_eq(t->audience, audience)) {
			sim_arm_error(r, 401, "InvalidAuthenticationTokenAudience",
			              "The access token has been obtained for wrong audience or "
			              "resource.");
			return false;
		}
		r->www_authenticate = NULL;
		return true;
	}
	sim_arm_error(r, 401, "InvalidAuthenticationToken", "The access token is invalid.");
	return false;
}

/* Forget every issued token. */
void
identity_reset(struct sim *s)
{
	for (size_t i = 0; i < s->n_tokens; i++)
		free(s->tokens[i].audience);
	free(s->tokens);
	s->tokens = NULL;
	s->n_tokens = 0;
	s->tokens_compact_at = 0;
	json_decref(s->assertions);
	s->assertions = NULL;
	s->assertions_prune_at = 0;
}

/* Base64 (padded) or base64url (unpadded) of data, as a new string. */
char *
identity_b64(const unsigned char *data, size_t size, bool url)
{
	static const char std[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	static const char urlsafe[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const char *a = url ? urlsafe : std;
	char *out = xmalloc(size / 3 * 4 + 5), *p = out;
	size_t i = 0;

	for (; i + 2 < size; i += 3) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];

		*p++ = a[v >> 18];
		*p++ = a[(v >> 12) & 63];
		*p++ = a[(v >> 6) & 63];
		*p++ = a[v & 63];
	}
	if (i < size) {
		uint32_t v =
		        (uint32_t)data[i] << 16 | (i + 1 < size ? (uint32_t)data[i + 1] << 8 : 0);

		*p++ = a[v >> 18];
		*p++ = a[(v >> 12) & 63];
		if (i + 1 < size)
			*p++ = a[(v >> 6) & 63];
		else if (!url)
			*p++ = '=';
		if (!url)
			*p++ = '=';
	}
	*p = '\0';
	return out;
}

/*
 * Write an OAuth2 error like Azure AD: error, description, error_codes (the AADSTS number the
 * description starts with, so the two always agree), timestamp, trace and correlation ids.
 */
void
identity_error(struct sim_response *r, int status, const char *error, const char *description)
{
	char trace[HASH_UUID_LEN + 1], corr[HASH_UUID_LEN + 1], ts[32];
	unsigned long code = 0;
	time_t now = time(NULL);
	struct tm tm;

	if (hash_uuid4(trace) < 0 || hash_uuid4(corr) < 0)
		abort();
	if (strncmp(description, "AADSTS", 6) == 0)
		code = strtoul(description + 6, NULL, 10);
	gmtime_r(&now, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%SZ", &tm);
	evbuffer_drain(r->body, evbuffer_get_length(r->body));
	r->status = status;
	evbuffer_add_printf(r->body, "{\"error\":");
	sim_json_str(r->body, error);
	evbuffer_add_printf(r->body, ",\"error_description\":");
	sim_json_str(r->body, description);
	evbuffer_add_printf(r->body, ",\"error_codes\":[");
	if (code)
		evbuffer_add_printf(r->body, "%lu", code);
	evbuffer_add_printf(r->body,
	                    "],\"timestamp\":\"%s\",\"trace_id\":\"%s\",\"correlation_id\":\"%s\"}",
	                    ts, trace, corr);
}

/*
 * Write an OAuth2 error like AD FS: error and an error_description starting with its MSIS code,
 * nothing else (no error_codes, timestamp or trace ids).
 */
void
identity_error_adfs(struct sim_response *r, int status, const char *error, const char *description)
{
	evbuffer_drain(r->body, evbuffer_get_length(r->body));
	r->status = status;
	evbuffer_add_printf(r->body, "{\"error\":");
	sim_json_str(r->body, error);
	evbuffer_add_printf(r->body, ",\"error_description\":");
	sim_json_str(r->body, description);
	evbuffer_add_printf(r->body, "}");
}

/* Refuse a token request the way the issuer that was asked does (AD FS or Azure AD). */
static void
token_error(struct sim_response *r, bool adfs, int status, const char *error,
            const char *aad_description, const char *msis_description)
{
	if (adfs)
		identity_error_adfs(r, status == 401 ? 400 : status, error, msis_description);
	else
		identity_error(r, status, error, aad_description);
}

/*
 * Verify a client assertion JWT as Azure AD does: RS256 only, x5t and signature against the
 * client's certificate, aud = the token endpoint, iss = sub = client id, exp required and nbf
 * optional (NumericDate, JWT_SKEW of clock skew), a jti that was not used before. On failure
 * the refusal says how to answer.
 */
static int
check_assertion(struct sim *s, const struct sim_client *c, const char *jwt, const char *aud,
                struct refusal *ret)
{
	const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
	_cleanup_free_ unsigned char *hdr = NULL, *pay = NULL, *sig = NULL;
	_cleanup_free_ char *key = NULL;
	size_t hn, pn, sn;
	json_t *h = NULL, *p = NULL, *exp, *nbf;
	const char *jti;
	EVP_MD_CTX *md = NULL;
	int64_t now = (int64_t)time(NULL);
	double e, b = 0;
	int r = -EINVAL;

	refuse(ret, 401, "invalid_client", "AADSTS50027: JWT token is invalid or malformed.");
	if (!d2 || strchr(d2 + 1, '.'))
		return -EINVAL;
	hdr = b64_decode(jwt, (size_t)(d1 - jwt), &hn);
	pay = b64_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pn);
	sig = b64_decode(d2 + 1, strlen(d2 + 1), &sn);
	if (!hdr || !pay || !sig)
		return -EINVAL;
	h = json_loadb((const char *)hdr, hn, 0, NULL);
	p = json_loadb((const char *)pay, pn, 0, NULL);
	if (!json_is_object(h) || !json_is_object(p))
		goto out;
	if (!streq_ptr(json_string_value(json_object_get(h, "alg")), "RS256")) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS5002730: Invalid JWT token. Unsupported key for the signing "
		       "algorithm.");
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(h, "x5t")), c->x5t)) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS700027: Client assertion contains an invalid signature. [Reason - The "
		       "key was not found.] %s",
		       CERT_DOCS);
		goto out;
	}
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, c->pubkey) != 1 ||
	    EVP_DigestVerify(md, sig, sn, (const unsigned char *)jwt, (size_t)(d2 - jwt)) != 1) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS700027: Client assertion failed signature validation. %s", CERT_DOCS);
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(p, "aud")), aud)) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS50027: JWT token is invalid or malformed. [Reason - The audience claim "
		       "does not match the token endpoint.]");
		goto out;
	}
	if (!streq_ptr(json_string_value(json_object_get(p, "iss")), c->client_id) ||
	    !streq_ptr(json_string_value(json_object_get(p, "sub")), c->client_id)) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS700021: Client assertion application identifier doesn't match "
		       "'client_id' parameter. %s",
		       CERT_DOCS);
		goto out;
	}
	exp = json_object_get(p, "exp");
	nbf = json_object_get(p, "nbf");
	jti = json_string_value(json_object_get(p, "jti"));
	/* out of range, the casts to int64_t below would overflow (exp = 1e300) */
	if (!numeric_date(exp, &e) || (nbf && !numeric_date(nbf, &b)) || isempty(jti)) {
		refuse(ret, 401, "invalid_client",
		       "AADSTS50027: JWT token is invalid or malformed. [Reason - exp and jti are "
		       "required, exp and nbf are NumericDate numbers.]");
		goto out;
	}
	if (e + JWT_SKEW <= (double)now || b > (double)(now + JWT_SKEW)) {
		char tn[40], tb[40], te[40];

		azure_time(now, tn);
		azure_time((int64_t)b, tb);
		azure_time((int64_t)e, te);
		refuse(ret, 401, "invalid_client",
		       "AADSTS700024: Client assertion is not within its valid time range. Current "
		       "time: %s, assertion valid from %s, expiry time of assertion %s. %s",
		       tn, tb, te, CERT_DOCS);
		goto out;
	}
	key = xasprintf("%s|%s", c->client_id, jti);
	if (s->assertions && json_integer_value(json_object_get(s->assertions, key)) >= now) {
		refuse(ret, 400, "invalid_request",
		       "AADSTS50013: Assertion is invalid: its jti claim was already used. A client "
		       "assertion is valid for one request; make a new one with a new jti.");
		goto out;
	}
	remember_assertion(s, key, (int64_t)e + JWT_SKEW);
	r = 0;
out:
	EVP_MD_CTX_free(md);
	json_decref(h);
	json_decref(p);
	return r;
}

/*
 * Read a NumericDate claim: a JSON number of seconds since the epoch, a fraction allowed (RFC 7519
 * section 2), from 0 to 2^53. False for anything else, NaN included.
 */
static bool
numeric_date(json_t *v, double *ret)
{
	double d;

	if (!json_is_number(v))
		return false;
	d = json_number_value(v);
	if (!(d >= 0 && d <= JWT_DATE_MAX))
		return false;
	*ret = d;
	return true;
}

/* Fill a refusal. */
static void
refuse(struct refusal *ret, int status, const char *error, const char *fmt, ...)
{
	va_list ap;

	ret->status = status;
	ret->error = error;
	va_start(ap, fmt);
	vsnprintf(ret->description, sizeof(ret->description), fmt, ap);
	va_end(ap);
}

/*
 * Remember an accepted assertion's client and jti until it expires (a replay before then is
 * refused); forget the expired ones whenever the table has doubled.
 */
static void
remember_assertion(struct sim *s, const char *key, int64_t until)
{
	int64_t now = (int64_t)time(NULL);
	const char *k;
	json_t *v;
	void *tmp;

	if (!s->assertions)
		s->assertions = json_object();
	json_object_set_new(s->assertions, key, json_integer(until));
	if (json_object_size(s->assertions) < MAX((size_t)1024, s->assertions_prune_at))
		return;
	json_object_foreach_safe(s->assertions, tmp, k, v)
	{
		if (json_integer_value(v) < now)
			json_object_del(s->assertions, k);
	}
	s->assertions_prune_at = 2 * json_object_size(s->assertions);
}

/* Write a time as Azure AD does in its messages: 2026-11-01T10:00:00.0000000Z. */
static void
azure_time(int64_t t, char out[static 40])
{
	char base[TIME_RFC3339_LEN + 1];

	time_format_rfc3339(t, base);
	snprintf(out, 40, "%.19s.0000000Z", base);
}

/* Decode base64 or base64url, padded or not; NULL when malformed. */
static unsigned char *
b64_decode(const char *s, size_t n, size_t *ret_size)
{
	unsigned char *out = xmalloc(n / 4 * 3 + 4);
	uint32_t acc = 0;
	size_t k = 0;
	int bits = 0;

	while (n > 0 && s[n - 1] == '=')
		n--;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		int v;

		if (ch >= 'A' && ch <= 'Z')
			v = ch - 'A';
		else if (ch >= 'a' && ch <= 'z')
			v = ch - 'a' + 26;
		else if (ch >= '0' && ch <= '9')
			v = ch - '0' + 52;
		else if (ch == '+' || ch == '-')
			v = 62;
		else if (ch == '/' || ch == '_')
			v = 63;
		else {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[k++] = (unsigned char)(acc >> bits);
		}
	}
	*ret_size = k;
	return out;
}

/* Compare two audiences, ignoring one trailing slash and case. */
static bool
audience_eq(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	if (la && a[la - 1] == '/')
		la--;
	if (lb && b[lb - 1] == '/')
		lb--;
	return la == lb && strncasecmp(a, b, la) == 0;
}

/* The scenario's client with this id, or NULL. */
static const struct sim_client *
find_client(const struct sim *s, const char *id)
{
	for (size_t i = 0; i < s->world.n_clients; i++)
		if (strcasecmp(s->world.clients[i].client_id, id) == 0)
			return &s->world.clients[i];
	return NULL;
}
