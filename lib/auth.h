/*
 * OAuth2 client-credentials tokens (ARCHITECTURE.md section 10) for one client identity, cached
 * per audience (resource): the stamp's ARM, Azure Resource Manager, Commerce.
 *
 * A token is asked for with auth_get(); the answer always arrives through the callback, from the
 * loop (never from inside auth_get), so a caller has one path. Several callers waiting for one
 * audience share one token request. A cached token is handed out until 80 % of its lifetime has
 * passed; after that the next auth_get() starts a refresh in the background and is still handed
 * the old token while it stays valid (up to a safety margin before it expires); once it is not
 * valid any more, callers wait for the new one. auth_invalidate() after a 401 drops a token and
 * asks for a new one at once.
 *
 * A failed token (or metadata) request answers every caller waiting at that time with the error,
 * the OAuth error code and its description (AADSTS... from Azure AD, MSIS... from AD FS); the
 * next request to that endpoint waits for a backoff (http_backoff: capped exponential, full
 * jitter) that grows with each failure in a row. The change to failing is logged once with the
 * code and description (and again when they change), the recovery once. The client secret, the
 * signed assertion and tokens are never logged. auth_get_status() tells readiness whether tokens
 * can be had: not from a failure until the next token.
 *
 * Token URL: {login_endpoint}/{tenant}/oauth2/token for Azure AD; for AD FS (a login endpoint
 * whose path ends in /adfs) {login_endpoint}/oauth2/token without a tenant. Slashes are joined
 * without doubling. With a certificate, the client authenticates with a client assertion: an RS256
 * JWT with header alg, typ and x5t (base64url of the SHA-1 of the certificate's DER), claims aud
 * (the token URL), iss = sub (the client id), jti (a random UUID), nbf (now) and exp (now + 10
 * min), signed with the certificate's private key; a new one for every request.
 *
 * When login_endpoint or audience is not configured, both come from the stamp's
 * {arm_endpoint}/metadata/endpoints?api-version=2015-01-01 (authentication.loginEndpoint and
 * authentication.audiences[0], read by lib/stack's stack_metadata_parse), asked once and kept.
 *
 * Times come from lib/timeutil's realtime clock (the clock seam); backoff waits are loop timers.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_client;
struct http_random;
struct auth;
struct auth_wait;

struct auth_options {
	const char *login_endpoint; /* NULL: from the metadata document (needs arm_endpoint) */
	const char *audience;       /* for auth_get(NULL); NULL: from the metadata, if any */
	const char *arm_endpoint;   /* the stamp, for the metadata document; NULL: none */
	const char *tenant;         /* Azure AD directory (GUID or domain); unused for AD FS */
	const char *client_id;
	const char *client_secret;   /* exactly one of client_secret and */
	const char *certificate;     /* a PEM holding the certificate and its RSA private key */
	uint64_t timeout_usec;       /* per token or metadata request; 0: 30 s */
	uint64_t retry_initial_usec; /* backoff of a failing endpoint; 0: 1 s */
	uint64_t retry_max_usec;     /* 0: 5 min */
	const struct http_random *random; /* jitter; NULL: the default */
};

/*
 * audience: the token's audience (the resolved one for auth_get(NULL)); NULL when it could not be
 * resolved. token: borrowed until the callback returns. error_description: "AADSTS7000215: ...",
 * "MSIS9622: ...", or libcurl's words for a transport error.
 */
struct auth_result {
	int error; /* 0: token is set; else -errno (below) */
	const char *audience;
	const char *token;
	uint64_t expires_usec;  /* realtime, when the token expires */
	long http_status;       /* of the failed request; 0 for a transport error or success */
	const char *error_code; /* OAuth "error" ("invalid_client"), or NULL */
	const char *error_description;
};

/*
 * What error holds: -EACCES (the token endpoint refused: 4xx), -EREMOTEIO (another HTTP error
 * status, of the token or the metadata endpoint), -EBADMSG (an answer that is not what it should
 * be), or the transport's error (lib/http: -ETIMEDOUT, -ECONNREFUSED, -EKEYREJECTED, ...).
 */
typedef void (*auth_callback)(const struct auth_result *result, void *userdata);

/*
 * Make the token source of one identity. Copies the options. The stamp's identity gives
 * arm_endpoint (and login_endpoint and audience when configured); the Azure identity gives
 * login_endpoint and names the audience in each auth_get(). The http client must outlive the
 * object. Fails with -EINVAL when an option is missing or inconsistent (no client id, neither
 * or both of secret and certificate, neither login_endpoint nor an https arm_endpoint, no tenant
 * for an Azure AD login endpoint), with
 * -EBADMSG when the certificate PEM holds no certificate or no private key, -EKEYREJECTED when no
 * certificate matches the key, -EOPNOTSUPP when the key is not RSA.
 */
int auth_new(struct event_base *base, struct http_client *http, const struct auth_options *o,
             struct auth **ret);

/* Free: waiting callers are dropped without callbacks. May be called from a callback. */
struct auth *auth_free(struct auth *a);

/*
 * Ask for a token for audience (NULL: options.audience or the metadata's; -EINVAL in the result
 * when there is neither). The callback runs once, from the loop. *ret_wait (when ret_wait is not
 * NULL) is for auth_wait_cancel(). Returns 0 (-ENOMEM cannot happen: allocations abort).
 */
int auth_get(struct auth *a, const char *audience, auth_callback callback, void *userdata,
             struct auth_wait **ret_wait);

/* Stop waiting without a callback. Accepts NULL; a no-op in its own callback. Returns NULL. */
struct auth_wait *auth_wait_cancel(struct auth_wait *w);

/*
 * A token was refused (a 401): forget it and ask for a new one at once (after the backoff, when
 * the token endpoint is failing). token: the refused token, so that a 401 for an older token
 * leaves a newer one alone; NULL forgets whatever is cached.
 */
void auth_invalidate(struct auth *a, const char *audience, const char *token);

#define AUTH_STATUS_CODE_MAX     64
#define AUTH_STATUS_AUDIENCE_MAX 256

/*
 * Whether tokens can be had now, for readiness: failing while the last token request of some
 * audience (or the metadata request) failed, from its first failure in a row until a token (or
 * the document) comes. When several fail, the one failing longest is described. No secret is in
 * it: the OAuth error and the AADSTS/MSIS code of the description, never the description itself.
 */
struct auth_status {
	bool failing;
	int64_t failing_since; /* realtime seconds of the first failure in a row; 0: not failing */
	unsigned failures;     /* failures in a row */
	int error;             /* the last one's, as auth_result.error */
	long http_status;      /* of the last failed answer; 0: a transport error */
	char code[AUTH_STATUS_CODE_MAX];         /* "invalid_client AADSTS7000215", "" when none */
	char audience[AUTH_STATUS_AUDIENCE_MAX]; /* whose token; "" for the metadata document */
};

void auth_get_status(const struct auth *a, struct auth_status *ret);

/* True when a login endpoint is AD FS: its path ends in /adfs (a trailing slash or not). */
bool auth_login_is_adfs(const char *login_endpoint);

/*
 * The token URL of a login endpoint (section 10). tenant is needed for Azure AD and ignored for
 * AD FS. -EINVAL without a tenant for Azure AD, or when login_endpoint is not an https URL.
 */
int auth_token_url(const char *login_endpoint, const char *tenant, char **ret);

/*
 * Parse a token answer: access_token, and its lifetime from expires_in (seconds, a number or a
 * decimal string) or, without it, from expires_on (seconds since the epoch, the same) taken
 * against now_usec. -EBADMSG when the answer is not a JSON object with a non-empty access_token
 * and a positive lifetime.
 */
int auth_answer_parse(const char *body, size_t size, uint64_t now_usec, char **ret_token,
                      uint64_t *ret_lifetime_usec);

/*
 * Parse an OAuth error answer {"error": ..., "error_description": ...}: either may be NULL.
 * -EBADMSG when the body is not a JSON object.
 */
int auth_error_parse(const char *body, size_t size, char **ret_code, char **ret_description);
