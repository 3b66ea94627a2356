/*
 * HTTPS requests on the event loop: one libcurl multi handle driven by libevent through
 * curl_multi_socket_action(), so no call here ever blocks the loop (name resolution runs in
 * libcurl's resolver threads). Every request ends in exactly one call of its callback, unless it
 * is cancelled or its client freed first.
 *
 * Transport policy, the same for every request:
 *   - https only, TLS 1.2 or newer, peer and host name always verified (there is no switch);
 *     a client made with options.local also takes plain http:// URLs and never uses a proxy:
 *     it is for this host's own services (azs-usagectl asking the daemon's health endpoint);
 *   - the system's CA store is always trusted; options.ca_file adds the certificates of a PEM
 *     bundle to it (into the TLS context of each connection, so both the system CAs and the
 *     bundle are trusted; this needs libcurl built with OpenSSL, as Debian's libcurl4 is);
 *   - options.proxy, or else libcurl's environment (https_proxy, no_proxy, ...);
 *   - responses of any Content-Encoding libcurl knows (gzip, deflate, br, zstd) are accepted and
 *     decoded; options.max_response bounds the decoded body while it is received;
 *   - redirects are not followed (a bearer token must not travel to another host);
 *   - connections are kept and reused by later requests to the same host.
 *
 * The process must ignore SIGPIPE (the daemon does): libcurl is told not to touch signals.
 *
 * Ownership: http_request() copies url, headers and body. A struct http_result and everything
 * it points to belongs to the client and is valid only until the callback returns. The request
 * handle is valid until its callback returns or it is cancelled.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_client;
struct http_request;

struct http_options {
	const char *ca_file;           /* PEM bundle trusted besides the system CAs; NULL: none */
	const char *proxy;             /* e.g. "http://proxy:3128"; NULL or "": the environment */
	const char *user_agent;        /* NULL: none */
	uint64_t max_response;         /* bytes of a decoded response body; 0: no limit */
	uint64_t connect_timeout_usec; /* 0: 30 s */
	uint64_t timeout_usec;         /* whole request, when http_request() is given 0; 0: 5 min */
	unsigned max_host_connections; /* parallel connections per host; 0: 8 */
	bool local;                    /* http:// allowed too, no proxy: this host's own services */
};

enum http_method {
	HTTP_GET,
	HTTP_POST,
	HTTP_PUT,
	HTTP_PATCH,
	HTTP_DELETE,
};

struct http_result {
	int error;                 /* 0: an answer arrived, whatever its status; else -errno */
	const char *error_message; /* why not: libcurl's words or ours; "" when error is 0 */
	long status;               /* HTTP status; also set with some errors (-EFBIG), else 0 */
	const char *content_type;  /* NULL when absent */
	const char *retry_after;   /* the Retry-After value as received; NULL when absent */
	const char *body;          /* NUL-terminated, never NULL; "" when error is not 0 */
	size_t body_size;
	uint64_t total_usec;      /* from the start of the request to its end */
	unsigned new_connections; /* connections this request opened; 0: it reused one */
};

/*
 * What error holds: -ETIMEDOUT (connect or total time-out), -ECONNREFUSED, -EHOSTUNREACH (name
 * not resolved), -ECONNRESET (connection broken, nothing or part of an answer), -EKEYREJECTED (the
 * peer's certificate or name failed verification), -EPROTO (TLS handshake or HTTP protocol error),
 * -EFBIG (the body exceeded max_response), -EBADMSG (undecodable Content-Encoding),
 * -EPROTONOSUPPORT (not an https URL; with options.local, not an http or https one), -EINVAL
 * (malformed URL), -ENOMEM, -EIO (anything else).
 */
typedef void (*http_callback)(const struct http_result *result, void *userdata);

/* A source of uniformly distributed 64-bit numbers; the default is OpenSSL's RAND_bytes(). */
struct http_random {
	uint64_t (*next)(void *userdata);
	void *userdata;
};

/*
 * Make a client on base. Fails with -errno when ca_file cannot be read or holds no certificate
 * (-EBADMSG), or libcurl cannot be set up.
 */
int http_client_new(struct event_base *base, const struct http_options *options,
                    struct http_client **ret);

/*
 * Free a client: pending requests are dropped without their callbacks. May be called from a
 * callback of the client. Accepts NULL; returns NULL.
 */
struct http_client *http_client_free(struct http_client *c);

/*
 * Start a request. headers: NULL or a NULL-terminated list of "Name: value" lines. body: sent
 * with POST, PUT and PATCH (may be empty), and with DELETE when not NULL. timeout_usec: for the
 * whole request, 0 for the client's default. The callback runs from the loop, never from inside
 * this call; it may start requests, cancel others and free the client. *ret (when ret is not
 * NULL) is the handle for http_request_cancel(). Returns 0, or -errno when the request could not
 * be started (then the callback is never called).
 */
int http_request(struct http_client *c, enum http_method method, const char *url,
                 const char *const *headers, const void *body, size_t body_size,
                 uint64_t timeout_usec, http_callback callback, void *userdata,
                 struct http_request **ret);

/*
 * Stop a request without calling its callback. Accepts NULL; a no-op inside the request's own
 * callback (it is freed when the callback returns). Returns NULL.
 */
struct http_request *http_request_cancel(struct http_request *r);

/*
 * A header of the answer (the last value when repeated), or NULL; valid as the result is. result
 * must be the one the callback was handed, not a copy.
 */
const char *http_result_header(const struct http_result *result, const char *name);

const char *http_method_to_string(enum http_method m);

/*
 * Percent-encode s for a URL path segment, a query value or a form value: every byte but the
 * unreserved ones (A-Z a-z 0-9 - . _ ~) as %XX. Returns a new string.
 */
char *http_escape(const char *s);

/*
 * The delay before retry number attempt (0 for the first retry): capped exponential with full
 * jitter, uniform in [0, min(max_usec, initial_usec * 2^attempt)]. random: NULL for the default.
 */
uint64_t http_backoff(unsigned attempt, uint64_t initial_usec, uint64_t max_usec,
                      const struct http_random *random);

/*
 * Parse a Retry-After value (RFC 9110 section 10.2.3): delay-seconds, or an HTTP date (IMF-fixdate,
 * and the obsolete RFC 850 and asctime forms) taken against now (seconds since the epoch); a date
 * in the past is a delay of 0. Writes the delay in microseconds, at most cap_usec (UINT64_MAX: no
 * cap), to *ret_usec. Returns 0, or -EINVAL for anything else (empty, negative, fractions, text).
 */
int http_retry_after_parse(const char *value, int64_t now, uint64_t cap_usec, uint64_t *ret_usec);
