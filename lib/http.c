/*
 * libcurl's multi interface on libevent (the structure of curl's hiperfifo.c / multi-event.c
 * examples). Three structs: the client (event_base, CURLM, one timer), one per socket libcurl
 * asks us to watch (attached with curl_multi_assign), one per request (CURLOPT_PRIVATE: the easy
 * handle, headers, error buffer, body, callback).
 *
 * libcurl tells us what to watch (on_curl_socket) and when to wake it (on_curl_timer); those
 * callbacks only (re)arm libevent events. The events call curl_multi_socket_action() and then
 * drain finished transfers: copy the result, remove the handle, run the callback, free the
 * request. Callbacks therefore run outside libcurl and may start or cancel requests, or free the
 * client (then the drain stops and the client is freed when it unwinds).
 *
 * Extra CA certificates are added to each new connection's OpenSSL context by
 * CURLOPT_SSL_CTX_FUNCTION rather than set as CURLOPT_CAINFO, which would replace the system
 * bundle instead of adding to it. libcurl loads its default CA file and path into the same store
 * after that callback, so the system CAs stay trusted (checked with libcurl 7.88).
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define LOG_MODULE "http"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#define HTTP_CONNECT_TIMEOUT_DEFAULT (30 * USEC_PER_SEC)
#define HTTP_TIMEOUT_DEFAULT         (300 * USEC_PER_SEC)
#define HTTP_HOST_CONNECTIONS        8
#define HTTP_BODY_CHUNK              16384
/* answer buffers kept for the next answers (body_take(), body_give()): how many, and the sizes
 * worth keeping (smaller ones come from malloc's heap anyway; larger ones are rare) */
#define HTTP_SPARES    3
#define HTTP_SPARE_MIN (64u << 10)
#define HTTP_SPARE_MAX (8u << 20)

struct http_socket {
	struct http_client *client;
	curl_socket_t fd;
	struct event *ev;
	struct http_socket *prev, *next;
};

struct http_request {
	struct http_client *client;
	CURL *easy;
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];
	char *upload; /* our copy of the request body (it may hold a secret: wiped when freed) */
	size_t upload_size;
	char *body; /* the answer, NUL-terminated */
	size_t size, cap;
	bool too_large;
	bool in_callback;
	http_callback callback;
	void *userdata;
	struct http_result result;
	struct http_request *prev, *next;
};

struct http_client {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	char *proxy;
	char *user_agent;
	uint64_t max_response;
	uint64_t connect_timeout_usec;
	uint64_t timeout_usec;
	STACK_OF(X509) * cas; /* from ca_file, added to every TLS context */
	bool local;           /* http:// allowed, no proxy */
	struct http_request *requests;
	struct http_socket *sockets;
	/* wiped answer buffers of finished requests, for the next answers: a usage page's body is
	 * about a megabyte, which malloc maps afresh each time (the kernel then zeroes every page
	 * of it again) unless a buffer is kept */
	char *spare[HTTP_SPARES];
	size_t spare_cap[HTTP_SPARES];
	unsigned dispatching; /* nesting depth of drain(): free is deferred while > 0 */
	bool dead;            /* freed from a callback: destroy when drain() unwinds */
};

static int load_cas(const char *path, STACK_OF(X509) * *ret);
static CURLcode request_setup(struct http_request *r, enum http_method method, const char *url,
                              const char *const *headers, uint64_t timeout_usec);
static void request_finish(struct http_request *r, CURLcode code);
static void request_unlink(struct http_request *r);
static struct http_request *request_free(struct http_request *r);
static void client_destroy(struct http_client *c);
static char *body_take(struct http_client *c, size_t want, size_t *ret_cap);
static void body_give(struct http_client *c, char *p, size_t cap);
static void drain(struct http_client *c);
static int curl_to_errno(CURLcode code);
static int curlm_to_errno(CURLMcode code);
static uint64_t random_default(void);
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp);
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp);
static void on_socket_event(evutil_socket_t fd, short what, void *arg);
static void on_timer_event(evutil_socket_t fd, short what, void *arg);
static size_t on_write(char *data, size_t size, size_t n, void *userdata);
static CURLcode on_ssl_ctx(CURL *easy, void *ssl_ctx, void *userdata);

/* Make a client on base. */
int
http_client_new(struct event_base *base, const struct http_options *o, struct http_client **ret)
{
	struct http_client *c;
	unsigned host_connections;
	CURLMcode m;
	int r;

	assert(base && o && ret);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -EIO;
	c = xcalloc(1, sizeof(*c));
	c->base = base;
	c->max_response = o->max_response;
	c->local = o->local;
	c->connect_timeout_usec = o->connect_timeout_usec > 0 ? o->connect_timeout_usec
	                                                      : HTTP_CONNECT_TIMEOUT_DEFAULT;
	c->timeout_usec = o->timeout_usec > 0 ? o->timeout_usec : HTTP_TIMEOUT_DEFAULT;
	host_connections =
	        o->max_host_connections > 0 ? o->max_host_connections : HTTP_HOST_CONNECTIONS;
	if (!isempty(o->proxy))
		c->proxy = xstrdup(o->proxy);
	if (!isempty(o->user_agent))
		c->user_agent = xstrdup(o->user_agent);
	if (!isempty(o->ca_file)) {
		curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

		/* the certificates are handed to OpenSSL directly (see the top of this file) */
		if (!v->ssl_version || strncmp(v->ssl_version, "OpenSSL/", 8) != 0) {
			r = log_debug_errno(EOPNOTSUPP,
			                    "ca_file needs libcurl with OpenSSL, not %s",
			                    v->ssl_version ? v->ssl_version : "none");
			goto fail;
		}
		r = load_cas(o->ca_file, &c->cas);
		if (r < 0)
			goto fail;
	}
	c->timer = evtimer_new(base, on_timer_event, c);
	c->multi = curl_multi_init();
	if (!c->timer || !c->multi) {
		r = -ENOMEM;
		goto fail;
	}
	if ((m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket)) ||
	    (m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c)) ||
	    (m = curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer)) ||
	    (m = curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c)) ||
	    (m = curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
	                           (long)host_connections)) ||
	    (m = curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)(2 * host_connections)))) {
		r = curlm_to_errno(m);
		goto fail;
	}
	*ret = c;
	return 0;
fail:
	client_destroy(c);
	return r;
}

/* Free a client, dropping its requests without callbacks; deferred while a callback runs. */
struct http_client *
http_client_free(struct http_client *c)
{
	if (!c)
		return NULL;
	if (c->dispatching > 0) {
		c->dead = true;
		return NULL;
	}
	client_destroy(c);
	return NULL;
}

/* Start a request; its callback runs from the loop. */
int
http_request(struct http_client *c, enum http_method method, const char *url,
             const char *const *headers, const void *body, size_t body_size, uint64_t timeout_usec,
             http_callback callback, void *userdata, struct http_request **ret)
{
	struct http_request *r;
	CURLMcode m;
	CURLcode e;
	int k;

	assert(c && !c->dead && url && callback);
	if (method > HTTP_DELETE || (!body && body_size > 0))
		return -EINVAL;
	r = xcalloc(1, sizeof(*r));
	r->client = c;
	r->callback = callback;
	r->userdata = userdata;
	if (method != HTTP_GET && (body || method != HTTP_DELETE)) {
		r->upload = xmalloc(body_size + 1);
		if (body_size > 0)
			memcpy(r->upload, body, body_size);
		r->upload[body_size] = '\0';
		r->upload_size = body_size;
	}
	r->easy = curl_easy_init();
	if (!r->easy) {
		request_free(r);
		return -ENOMEM;
	}
	e = request_setup(r, method, url, headers, timeout_usec);
	if (e != CURLE_OK) {
		k = curl_to_errno(e);
		log_debug_errno(k, "cannot set up a request: %s", curl_easy_strerror(e));
		request_free(r);
		return k;
	}
	m = curl_multi_add_handle(c->multi, r->easy);
	if (m != CURLM_OK) {
		k = curlm_to_errno(m);
		log_debug_errno(k, "cannot start a request: %s", curl_multi_strerror(m));
		request_free(r);
		return k;
	}
	r->next = c->requests;
	if (c->requests)
		c->requests->prev = r;
	c->requests = r;
	if (ret)
		*ret = r;
	return 0;
}

/* Stop a request without its callback. */
struct http_request *
http_request_cancel(struct http_request *r)
{
	if (!r || r->in_callback)
		return NULL;
	(void)curl_multi_remove_handle(r->client->multi, r->easy);
	request_unlink(r);
	request_free(r);
	return NULL;
}

/* Look up a header of the answer a result belongs to. */
const char *
http_result_header(const struct http_result *result, const char *name)
{
	const struct http_request *r =
	        (const struct http_request *)((const char *)result -
	                                      offsetof(struct http_request, result));
	struct curl_header *h = NULL;

	if (curl_easy_header(r->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
		return NULL;
	return h->value;
}

/* Name a method as it goes on the wire. */
const char *
http_method_to_string(enum http_method m)
{
	static const char *const names[] = {
	        [HTTP_GET] = "GET",     [HTTP_POST] = "POST",     [HTTP_PUT] = "PUT",
	        [HTTP_PATCH] = "PATCH", [HTTP_DELETE] = "DELETE",
	};

	return (size_t)m < ARRAY_SIZE(names) ? names[m] : NULL;
}

/* Percent-encode everything but the unreserved characters. */
char *
http_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(s);
	char *out = xmalloc(3 * n + 1), *p = out;

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
			*p++ = (char)ch;
		} else {
			*p++ = '%';
			*p++ = hex[ch >> 4];
			*p++ = hex[ch & 15];
		}
	}
	*p = '\0';
	return out;
}

/* Compute a capped exponential backoff with full jitter. */
uint64_t
http_backoff(unsigned attempt, uint64_t initial_usec, uint64_t max_usec,
             const struct http_random *random)
{
	uint64_t cap = MIN(initial_usec, max_usec), x;

	if (cap == 0)
		return 0;
	/* doubling stops at max_usec, so a huge attempt number costs nothing and cannot overflow */
	for (unsigned i = 0; i < attempt && cap < max_usec; i++)
		cap = cap > max_usec / 2 ? max_usec : 2 * cap;
	x = random ? random->next(random->userdata) : random_default();
	/* the modulo bias is at most cap / 2^64: nothing, for delays of microseconds */
	return cap == UINT64_MAX ? x : x % (cap + 1);
}

/* Parse a Retry-After value into a delay. */
int
http_retry_after_parse(const char *value, int64_t now, uint64_t cap_usec, uint64_t *ret_usec)
{
	char buf[64];
	size_t n;
	uint64_t delay;

	if (!value)
		return -EINVAL;
	while (*value == ' ' || *value == '\t')
		value++;
	n = strlen(value);
	while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t'))
		n--;
	if (n == 0 || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, value, n);
	buf[n] = '\0';
	if (strspn(buf, "0123456789") == n) {
		uint64_t s = 0;

		/* 1*DIGIT: a number too large for us is still a valid, very long delay */
		delay = UINT64_MAX;
		for (size_t i = 0; i <= n; i++) {
			uint64_t d;

			if (i == n) {
				delay = s * USEC_PER_SEC;
				break;
			}
			d = (uint64_t)(buf[i] - '0');
			if (s > (UINT64_MAX / USEC_PER_SEC - d) / 10)
				break;
			s = 10 * s + d;
		}
	} else {
		time_t t;

		/* each HTTP date form starts with the weekday; curl_getdate takes looser text */
		if (!((buf[0] >= 'A' && buf[0] <= 'Z') || (buf[0] >= 'a' && buf[0] <= 'z')))
			return -EINVAL;
		t = curl_getdate(buf, NULL);
		if (t == (time_t)-1)
			return -EINVAL;
		delay = (int64_t)t > now ? (uint64_t)((int64_t)t - now) * USEC_PER_SEC : 0;
	}
	*ret_usec = MIN(delay, cap_usec);
	return 0;
}

/* Read the certificates of a PEM bundle. */
static int
load_cas(const char *path, STACK_OF(X509) * *ret)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	STACK_OF(X509) * cas;
	X509 *x;

	if (!f)
		return log_debug_errno(errno, "cannot open CA file %s: %m", path);
	cas = sk_X509_new_null();
	if (!cas)
		return -ENOMEM;
	while ((x = PEM_read_X509(f, NULL, NULL, NULL)))
		if (!sk_X509_push(cas, x)) {
			X509_free(x);
			sk_X509_pop_free(cas, X509_free);
			return -ENOMEM;
		}
	/* the loop ends at the end of the file, which OpenSSL queues as an error */
	ERR_clear_error();
	if (sk_X509_num(cas) == 0) {
		sk_X509_free(cas);
		return log_debug_errno(EBADMSG, "CA file %s holds no PEM certificate", path);
	}
	*ret = cas;
	return 0;
}

/* Set an option of an easy handle; on failure return its code from the calling function. */
#define EASY_SET(e, option, value)                                       \
	do {                                                             \
		CURLcode _cc = curl_easy_setopt((e), (option), (value)); \
		if (_cc != CURLE_OK)                                     \
			return _cc;                                      \
	} while (0)

/*
 * libcurl (>= 7.87) keeps the CA store it built in the multi handle for the next connections,
 * but only when the CAs come from a file alone: with the CA directory Debian's libcurl also
 * has by default, each new connection parses the whole system bundle again, and holds its own
 * copy while it lives (a catch-up opens many). Where libcurl has a default CA
 * file, the directory is left out: the distributions that ship both build them from the same
 * certificates, and options.ca_file is there for any other. The extra CAs that on_ssl_ctx()
 * adds are in the cached store as well (it is the first connection's, or one on_ssl_ctx()
 * also adds to), so every connection of the client trusts the same CAs as before.
 */
#if CURL_AT_LEAST_VERSION(7, 87, 0)
#define EASY_SET_CA_CACHE(e)                                                                    \
	do {                                                                                    \
		char *_cainfo = NULL;                                                           \
		if (curl_easy_getinfo((e), CURLINFO_CAINFO, &_cainfo) == CURLE_OK && _cainfo) { \
			EASY_SET((e), CURLOPT_CAPATH, NULL);                                    \
			EASY_SET((e), CURLOPT_CA_CACHE_TIMEOUT, 24L * 3600L);                   \
		}                                                                               \
	} while (0)
#else
#define EASY_SET_CA_CACHE(e) \
	do {                 \
	} while (0)
#endif

/* Apply the client's policy and the request's method, URL, headers and body to its handle. */
static CURLcode
request_setup(struct http_request *r, enum http_method method, const char *url,
              const char *const *headers, uint64_t timeout_usec)
{
	struct http_client *c = r->client;
	CURL *e = r->easy;

	EASY_SET(e, CURLOPT_URL, url);
	EASY_SET(e, CURLOPT_PRIVATE, r);
	EASY_SET(e, CURLOPT_ERRORBUFFER, r->errbuf);
	EASY_SET(e, CURLOPT_NOSIGNAL, 1L);
	EASY_SET(e, CURLOPT_PROTOCOLS_STR, c->local ? "http,https" : "https");
	EASY_SET(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
	EASY_SET(e, CURLOPT_FOLLOWLOCATION, 0L);
	EASY_SET(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	EASY_SET(e, CURLOPT_SSL_VERIFYPEER, 1L);
	EASY_SET(e, CURLOPT_SSL_VERIFYHOST, 2L);
	EASY_SET(e, CURLOPT_PROXY_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	EASY_SET(e, CURLOPT_PROXY_SSL_VERIFYPEER, 1L);
	EASY_SET(e, CURLOPT_PROXY_SSL_VERIFYHOST, 2L);
	EASY_SET_CA_CACHE(e);
	if (c->cas) {
		EASY_SET(e, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
		EASY_SET(e, CURLOPT_SSL_CTX_DATA, c);
	}
	EASY_SET(e, CURLOPT_ACCEPT_ENCODING, "");
	if (c->user_agent)
		EASY_SET(e, CURLOPT_USERAGENT, c->user_agent);
	if (c->local)
		EASY_SET(e, CURLOPT_NOPROXY, "*");
	else if (c->proxy)
		EASY_SET(e, CURLOPT_PROXY, c->proxy);
	EASY_SET(e, CURLOPT_CONNECTTIMEOUT_MS,
	         (long)MAX(c->connect_timeout_usec / USEC_PER_MSEC, UINT64_C(1)));
	if (timeout_usec == 0)
		timeout_usec = c->timeout_usec;
	EASY_SET(e, CURLOPT_TIMEOUT_MS, (long)MAX(timeout_usec / USEC_PER_MSEC, UINT64_C(1)));
	if (c->max_response > 0) /* refused at once when Content-Length announces more */
		EASY_SET(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response);
	EASY_SET(e, CURLOPT_TCP_KEEPALIVE, 1L);
	EASY_SET(e, CURLOPT_WRITEFUNCTION, on_write);
	EASY_SET(e, CURLOPT_WRITEDATA, r);

	/* no "Expect: 100-continue" round trip before large bodies */
	r->headers = curl_slist_append(NULL, "Expect:");
	if (!r->headers)
		return CURLE_OUT_OF_MEMORY;
	for (size_t i = 0; headers && headers[i]; i++) {
		struct curl_slist *l = curl_slist_append(r->headers, headers[i]);

		if (!l)
			return CURLE_OUT_OF_MEMORY;
		r->headers = l;
	}
	EASY_SET(e, CURLOPT_HTTPHEADER, r->headers);

	if (method == HTTP_GET) {
		EASY_SET(e, CURLOPT_HTTPGET, 1L);
		return CURLE_OK;
	}
	if (r->upload) {
		EASY_SET(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->upload_size);
		EASY_SET(e, CURLOPT_POSTFIELDS, r->upload);
	}
	if (method != HTTP_POST)
		EASY_SET(e, CURLOPT_CUSTOMREQUEST, http_method_to_string(method));
	return CURLE_OK;
}

/* Fill the result of a finished transfer. */
static void
request_finish(struct http_request *r, CURLcode code)
{
	struct http_result *res = &r->result;
	struct curl_header *h = NULL;
	long status = 0, connects = 0;
	curl_off_t total = 0;
	char *ct = NULL;

	if (curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
		status = 0;
	if (curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects) != CURLE_OK)
		connects = 0;
	if (curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total) != CURLE_OK)
		total = 0;
	if (curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ct) != CURLE_OK)
		ct = NULL;
	res->status = status;
	res->new_connections = connects > 0 ? (unsigned)connects : 0;
	res->total_usec = total > 0 ? (uint64_t)total : 0;
	res->content_type = ct;
	if (curl_easy_header(r->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h)
		res->retry_after = h->value;
	if (code == CURLE_OK) {
		res->error = 0;
		res->error_message = "";
		res->body = r->body ? r->body : "";
		res->body_size = r->size;
		return;
	}
	res->error = curl_to_errno(code);
	if (r->too_large || code == CURLE_FILESIZE_EXCEEDED) {
		res->error = -EFBIG;
		snprintf(r->errbuf, sizeof(r->errbuf),
		         "the response body exceeds max_response (%llu bytes)",
		         (unsigned long long)r->client->max_response);
	} else if (r->errbuf[0] == '\0') {
		snprintf(r->errbuf, sizeof(r->errbuf), "%s", curl_easy_strerror(code));
	}
	res->error_message = r->errbuf;
	res->body = "";
	res->body_size = 0;
}

/* Take a request off its client's list. */
static void
request_unlink(struct http_request *r)
{
	struct http_client *c = r->client;

	if (r->prev)
		r->prev->next = r->next;
	else if (c->requests == r)
		c->requests = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
}

/* Free a request that is off the multi handle and the list; wipes both bodies. */
static struct http_request *
request_free(struct http_request *r)
{
	if (!r)
		return NULL;
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	if (r->upload) {
		explicit_wipe(r->upload, r->upload_size);
		free(r->upload);
	}
	if (r->body) {
		explicit_wipe(r->body, r->size);
		body_give(r->client, r->body, r->cap);
	}
	free(r);
	return NULL;
}

/*
 * A buffer of at least want bytes for an answer: the smallest spare that is large enough, else a
 * new one. *ret_cap is its size.
 */
static char *
body_take(struct http_client *c, size_t want, size_t *ret_cap)
{
	size_t best = HTTP_SPARES;
	char *p;

	for (size_t i = 0; i < HTTP_SPARES; i++)
		if (c->spare[i] && c->spare_cap[i] >= want &&
		    (best == HTTP_SPARES || c->spare_cap[i] < c->spare_cap[best]))
			best = i;
	if (best == HTTP_SPARES) {
		*ret_cap = want;
		return xmalloc(want);
	}
	p = TAKE_PTR(c->spare[best]);
	*ret_cap = c->spare_cap[best];
	c->spare_cap[best] = 0;
	return p;
}

/* Keep a wiped answer buffer for the next answers, in place of a smaller spare, or free it. */
static void
body_give(struct http_client *c, char *p, size_t cap)
{
	size_t slot = HTTP_SPARES;

	if (cap >= HTTP_SPARE_MIN && cap <= HTTP_SPARE_MAX)
		for (size_t i = 0; i < HTTP_SPARES; i++)
			if (slot == HTTP_SPARES || c->spare_cap[i] < c->spare_cap[slot])
				slot = i; /* an empty slot has cap 0: the smallest */
	if (slot == HTTP_SPARES || c->spare_cap[slot] >= cap) {
		free(p);
		return;
	}
	free(c->spare[slot]);
	c->spare[slot] = p;
	c->spare_cap[slot] = cap;
}

/* Drop every request and release libcurl, then the timer. */
static void
client_destroy(struct http_client *c)
{
	while (c->requests) {
		struct http_request *r = c->requests;

		(void)curl_multi_remove_handle(c->multi, r->easy);
		request_unlink(r);
		request_free(r);
	}
	if (c->multi)
		(void)curl_multi_cleanup(
		        c->multi); /* closes connections: their sockets are removed */
	while (c->sockets) {
		struct http_socket *s = c->sockets;

		c->sockets = s->next;
		event_free(s->ev);
		free(s);
	}
	if (c->timer)
		event_free(c->timer);
	if (c->cas)
		sk_X509_pop_free(c->cas, X509_free);
	free(c->proxy);
	free(c->user_agent);
	for (size_t i = 0; i < HTTP_SPARES; i++)
		free(c->spare[i]);
	free(c);
	curl_global_cleanup();
}

/* Hand finished transfers to their callbacks. */
static void
drain(struct http_client *c)
{
	CURLMsg *msg;
	int left;

	c->dispatching++;
	while (!c->dead && (msg = curl_multi_info_read(c->multi, &left))) {
		struct http_request *r;
		CURL *easy = msg->easy_handle;
		CURLcode code = msg->data.result;
		char *priv = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv) != CURLE_OK || !priv) {
			/* not ours; cannot happen, but never leave a handle in the multi */
			(void)curl_multi_remove_handle(c->multi, easy);
			continue;
		}
		r = (struct http_request *)(void *)priv;
		request_finish(r, code);
		(void)curl_multi_remove_handle(c->multi, easy);
		request_unlink(r);
		r->in_callback = true;
		r->callback(&r->result, r->userdata);
		request_free(r);
	}
	c->dispatching--;
	if (c->dead && c->dispatching == 0)
		client_destroy(c);
}

/* Translate a libcurl result into a negative errno. */
static int
curl_to_errno(CURLcode code)
{
	switch (code) {
	case CURLE_OK:
		return 0;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return -EHOSTUNREACH;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		return -ECONNRESET;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
		return -EKEYREJECTED;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_HTTP_RETURNED_ERROR:
	case CURLE_PROXY:
		return -EPROTO;
	case CURLE_FILESIZE_EXCEEDED:
		return -EFBIG;
	case CURLE_BAD_CONTENT_ENCODING:
		return -EBADMSG;
	case CURLE_UNSUPPORTED_PROTOCOL:
		return -EPROTONOSUPPORT;
	case CURLE_URL_MALFORMAT:
	case CURLE_BAD_FUNCTION_ARGUMENT:
		return -EINVAL;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_NOT_BUILT_IN:
	case CURLE_UNKNOWN_OPTION:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

/* Translate a libcurl multi result into a negative errno. */
static int
curlm_to_errno(CURLMcode code)
{
	switch (code) {
	case CURLM_OK:
		return 0;
	case CURLM_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLM_UNKNOWN_OPTION:
		return -EOPNOTSUPP;
	case CURLM_BAD_HANDLE:
	case CURLM_BAD_EASY_HANDLE:
	case CURLM_ADDED_ALREADY:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* Draw 64 random bits from OpenSSL; the largest value if it cannot (the longest backoff). */
static uint64_t
random_default(void)
{
	uint64_t x;

	if (RAND_bytes((unsigned char *)&x, sizeof(x)) != 1) {
		ERR_clear_error();
		return UINT64_MAX;
	}
	return x;
}

/* libcurl: watch a socket for what it needs, or stop watching it. */
static int
on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct http_client *c = userp;
	struct http_socket *s = socketp;
	short events;

	if (what == CURL_POLL_REMOVE) {
		if (s) {
			event_free(s->ev);
			if (s->prev)
				s->prev->next = s->next;
			else
				c->sockets = s->next;
			if (s->next)
				s->next->prev = s->prev;
			free(s);
			(void)curl_multi_assign(c->multi, fd, NULL);
		}
		return 0;
	}
	events = EV_PERSIST;
	if (what & CURL_POLL_IN)
		events |= EV_READ;
	if (what & CURL_POLL_OUT)
		events |= EV_WRITE;
	if (!s) {
		s = xcalloc(1, sizeof(*s));
		s->client = c;
		s->fd = fd;
		s->ev = event_new(c->base, fd, events, on_socket_event, s);
		if (!s->ev) {
			free(s);
			return -1;
		}
		if (curl_multi_assign(c->multi, fd, s) != CURLM_OK) {
			event_free(s->ev);
			free(s);
			return -1;
		}
		s->next = c->sockets;
		if (c->sockets)
			c->sockets->prev = s;
		c->sockets = s;
	} else {
		event_del(s->ev);
		if (event_assign(s->ev, c->base, fd, events, on_socket_event, s) < 0)
			return -1;
	}
	return event_add(s->ev, NULL) < 0 ? -1 : 0;
}

/* libcurl: wake it after timeout_ms (0: at once); -1 cancels. Only arms the timer. */
static int
on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct http_client *c = userp;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(c->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(c->timer, &tv) < 0 ? -1 : 0;
}

/* A watched socket is ready: let libcurl act on it, then hand out finished transfers. */
static void
on_socket_event(evutil_socket_t fd, short what, void *arg)
{
	struct http_socket *s = arg;
	struct http_client *c = s->client; /* s may be freed by the action */
	int action = 0, running = 0;
	CURLMcode m;

	if (what & EV_READ)
		action |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		action |= CURL_CSELECT_OUT;
	m = curl_multi_socket_action(c->multi, fd, action, &running);
	if (m != CURLM_OK)
		log_debug("curl_multi_socket_action: %s", curl_multi_strerror(m));
	drain(c);
}

/* libcurl's timer expired. */
static void
on_timer_event(evutil_socket_t fd, short what, void *arg)
{
	struct http_client *c = arg;
	int running = 0;
	CURLMcode m;

	m = curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	if (m != CURLM_OK)
		log_debug("curl_multi_socket_action: %s", curl_multi_strerror(m));
	drain(c);
}

/* libcurl: body bytes arrived (decoded); refuse them once max_response would be exceeded. */
static size_t
on_write(char *data, size_t size, size_t n, void *userdata)
{
	struct http_request *r = userdata;
	uint64_t max = r->client->max_response;
	size_t len = size * n;

	if (max > 0 && (uint64_t)r->size + len > max) {
		r->too_large = true;
		return 0; /* not len: libcurl aborts the transfer */
	}
	if (r->size + len + 1 > r->cap) {
		size_t cap = MAX(MAX(r->cap * 2, r->size + len + 1), (size_t)HTTP_BODY_CHUNK);
		curl_off_t announced = -1;
		char *p;

		/* the first bytes: room for the whole body when its length was announced (as
		 * sent: a compressed body may grow when decoded, then the buffer grows too), up
		 * to HTTP_SPARE_MAX: a length announced is not a length received */
		if (!r->body &&
		    curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) ==
		            CURLE_OK &&
		    announced > 0 && (max == 0 || (uint64_t)announced <= max))
			cap = MAX(cap,
			          (size_t)MIN((uint64_t)announced + 1, (uint64_t)HTTP_SPARE_MAX));
		p = body_take(r->client, cap, &cap);
		/* copy instead of realloc so the old buffer can be wiped */
		if (r->body) {
			memcpy(p, r->body, r->size);
			explicit_wipe(r->body, r->size);
			body_give(r->client, r->body, r->cap);
		}
		r->body = p;
		r->cap = cap;
	}
	memcpy(r->body + r->size, data, len);
	r->size += len;
	r->body[r->size] = '\0';
	return len;
}

/* libcurl (OpenSSL): a new TLS context; add the extra CA certificates to its store. */
static CURLcode
on_ssl_ctx(CURL *easy, void *ssl_ctx, void *userdata)
{
	struct http_client *c = userdata;
	X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);

	if (!store)
		return CURLE_SSL_CACERT_BADFILE;
	for (int i = 0; i < sk_X509_num(c->cas); i++)
		if (X509_STORE_add_cert(store, sk_X509_value(c->cas, i)) != 1) {
			/* a certificate already there is not an error (OpenSSL >= 1.1.1) */
			ERR_clear_error();
			return CURLE_SSL_CACERT_BADFILE;
		}
	return CURLE_OK;
}
