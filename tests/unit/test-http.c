/*
 * Unit tests for lib/http.c, over real HTTPS on loopback with a test CA made by the test: answers
 * of every status with their bodies and headers, methods and request bodies, compressed answers,
 * max_response (announced, chunked, and a compressed body that inflates beyond it), time-outs,
 * certificates from an untrusted CA or for another name (must fail), connection reuse, a fresh
 * connection verified again, the proxy from the options and from the environment, plain http
 * without a proxy for a local client, cancelling, callbacks that free the client or start
 * requests; and the pure helpers: backoff bounds and full jitter, Retry-After in seconds, as
 * dates and as garbage, capped, and escaping.
 *
 * No test looks at how long anything took: waits are for events.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <zlib.h>

#include "http.h"
#include "macro.h"
#include "timeutil.h"
#include "tls-fixture.h"
#include "xmalloc.h"

#define BIG_SIZE    100000
#define SECRET_SIZE (2 * BIG_SIZE)
#define SECRET_TEXT "s3cret-t0ken-"

static struct fixture_pki *pki;

/* What the server saw and what the client got. */
struct env {
	struct event_base *base;
	struct fixture_server *server;
	struct http_client *client;
	unsigned requests;           /* requests that reached the handler */
	char method[8];              /* of the last request */
	char *body;                  /* of the last request */
	char *user_agent;            /* of the last request */
	char *authorization;         /* of the last request */
	char *accept_encoding;       /* of the last request */
	char *content_type;          /* of the last request */
	bool has_expect;             /* the last request had an Expect header */
	struct evhttp_request *held; /* a request held without an answer */
};

/* One completed request. */
struct outcome {
	bool done;
	unsigned calls;
	int error;
	char *error_message;
	long status;
	char *body;
	size_t body_size;
	char *content_type;
	char *retry_after;
	char *x_test;
	unsigned new_connections;
};

static void on_outcome(const struct http_result *r, void *userdata);
static void outcome_done(struct outcome *o);

/* Route the test server's requests by path. */
static void
handle(struct evhttp_request *req, void *userdata)
{
	struct env *e = userdata;
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	const char *uri = evhttp_request_get_uri(req);
	static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
	static const enum evhttp_cmd_type cmds[] = {EVHTTP_REQ_GET, EVHTTP_REQ_POST, EVHTTP_REQ_PUT,
	                                            EVHTTP_REQ_PATCH, EVHTTP_REQ_DELETE};
	const char *h;

	e->requests++;
	e->method[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(cmds); i++)
		if (evhttp_request_get_command(req) == cmds[i])
			snprintf(e->method, sizeof(e->method), "%s", methods[i]);
	free(e->body);
	e->body = fixture_request_body(req);
	free(e->user_agent);
	h = evhttp_find_header(in, "User-Agent");
	e->user_agent = h ? xstrdup(h) : NULL;
	free(e->authorization);
	h = evhttp_find_header(in, "Authorization");
	e->authorization = h ? xstrdup(h) : NULL;
	free(e->accept_encoding);
	h = evhttp_find_header(in, "Accept-Encoding");
	e->accept_encoding = h ? xstrdup(h) : NULL;
	free(e->content_type);
	h = evhttp_find_header(in, "Content-Type");
	e->content_type = h ? xstrdup(h) : NULL;
	e->has_expect = evhttp_find_header(in, "Expect") != NULL;

	if (streq(uri, "/ok")) {
		evhttp_add_header(out, "X-Test", "yes");
		fixture_reply(req, 200, "application/json; charset=utf-8", "{\"hello\":\"world\"}");
	} else if (streq(uri, "/echo")) {
		fixture_reply(req, 200, "text/plain", e->body);
	} else if (streq(uri, "/404")) {
		fixture_reply(req, 404, "application/json",
		              "{\"error\":{\"code\":\"NotFound\",\"message\":\"nothing here\"}}");
	} else if (streq(uri, "/500")) {
		fixture_reply(
		        req, 500, "application/json",
		        "{\"error\":{\"code\":\"InternalServerError\",\"message\":\"oops\"}}");
	} else if (streq(uri, "/503")) {
		evhttp_add_header(out, "Retry-After", "7");
		fixture_reply(
		        req, 503, "application/json",
		        "{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"later\"}}");
	} else if (streq(uri, "/empty")) {
		fixture_reply(req, 204, NULL, NULL);
	} else if (streq(uri, "/secret")) {
		/* SECRET_SIZE bytes of SECRET_TEXT over and over, with Content-Length */
		char *text = xmalloc(SECRET_SIZE + 1);

		for (size_t i = 0; i < SECRET_SIZE; i++)
			text[i] = SECRET_TEXT[i % strlen(SECRET_TEXT)];
		text[SECRET_SIZE] = '\0';
		fixture_reply(req, 200, "text/plain", text);
		free(text);
	} else if (streq(uri, "/big")) {
		char *big = xmalloc(BIG_SIZE + 1);

		memset(big, 'x', BIG_SIZE);
		big[BIG_SIZE] = '\0';
		fixture_reply(req, 200, "text/plain", big);
		free(big);
	} else if (streq(uri, "/chunked")) {
		struct evbuffer *b = evbuffer_new();
		char chunk[1000];

		memset(chunk, 'y', sizeof(chunk));
		evhttp_send_reply_start(req, 200, "OK");
		for (int i = 0; i < BIG_SIZE / (int)sizeof(chunk); i++) {
			evbuffer_add(b, chunk, sizeof(chunk));
			evhttp_send_reply_chunk(req, b);
		}
		evhttp_send_reply_end(req);
		evbuffer_free(b);
	} else if (streq(uri, "/gzip")) {
		/* BIG_SIZE 'z' bytes, gzip-compressed: a few hundred bytes on the wire */
		unsigned char *plain = xmalloc(BIG_SIZE), packed[4096];
		z_stream z = {0};
		struct evbuffer *b = evbuffer_new();

		memset(plain, 'z', BIG_SIZE);
		assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY),
		                 Z_OK);
		z.next_in = plain;
		z.avail_in = BIG_SIZE;
		z.next_out = packed;
		z.avail_out = sizeof(packed);
		assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
		evbuffer_add(b, packed, sizeof(packed) - z.avail_out);
		deflateEnd(&z);
		free(plain);
		evhttp_add_header(out, "Content-Encoding", "gzip");
		evhttp_add_header(out, "Content-Type", "text/plain");
		evhttp_send_reply(req, 200, "OK", b);
		evbuffer_free(b);
	} else if (streq(uri, "/close")) {
		evhttp_add_header(out, "Connection", "close");
		fixture_reply(req, 200, "text/plain", "bye");
	} else if (streq(uri, "/never")) {
		e->held = req; /* no answer: the client's time-out ends it */
	} else {
		fixture_reply(req, 404, "text/plain", "no route");
	}
}

/* A client with the test CA (and options o when given). */
static struct http_client *
client_new(struct env *e, const struct http_options *o)
{
	struct http_options def = {.ca_file = pki->ca_file, .user_agent = "azs-usaged/test"};
	struct http_client *c = NULL;

	assert_int_equal(http_client_new(e->base, o ? o : &def, &c), 0);
	return c;
}

static int
setup(void **state)
{
	struct env *e = xcalloc(1, sizeof(*e));

	e->base = event_base_new();
	assert_non_null(e->base);
	e->server = fixture_server_new(e->base, pki->server_cert, pki->server_key, handle, e);
	e->client = client_new(e, NULL);
	*state = e;
	return 0;
}

static int
teardown(void **state)
{
	struct env *e = *state;

	http_client_free(e->client);
	fixture_server_free(e->server);
	event_base_free(e->base);
	free(e->body);
	free(e->user_agent);
	free(e->authorization);
	free(e->accept_encoding);
	free(e->content_type);
	free(e);
	return 0;
}

/* GET url (relative to the server unless absolute) on client c and wait for the outcome. */
static void
get(struct env *e, struct http_client *c, const char *path, const char *const *headers,
    uint64_t timeout_usec, struct outcome *o)
{
	char *url = strstr(path, "://") ? xstrdup(path)
	                                : xasprintf("%s%s", fixture_server_url(e->server), path);

	memset(o, 0, sizeof(*o));
	assert_int_equal(
	        http_request(c, HTTP_GET, url, headers, NULL, 0, timeout_usec, on_outcome, o, NULL),
	        0);
	free(url);
	fixture_wait(e->base, &o->done);
	assert_int_equal(o->calls, 1);
}

/* A 200 answer: status, body, Content-Type, another header, what the server received. */
static void
test_http_request_get_ok(void **state)
{
	struct env *e = *state;
	const char *headers[] = {"Authorization: Bearer abc", "Accept: application/json", NULL};
	struct outcome o;

	get(e, e->client, "/ok", headers, 0, &o);
	assert_int_equal(o.error, 0);
	assert_string_equal(o.error_message, "");
	assert_int_equal(o.status, 200);
	assert_string_equal(o.body, "{\"hello\":\"world\"}");
	assert_int_equal(o.body_size, strlen("{\"hello\":\"world\"}"));
	assert_string_equal(o.content_type, "application/json; charset=utf-8");
	assert_string_equal(o.x_test, "yes");
	assert_null(o.retry_after);
	assert_string_equal(e->method, "GET");
	assert_string_equal(e->user_agent, "azs-usaged/test");
	assert_string_equal(e->authorization, "Bearer abc");
	assert_non_null(e->accept_encoding); /* compressed answers are welcome */
	assert_non_null(strstr(e->accept_encoding, "gzip"));
	outcome_done(&o);
}

/* 404, 500 and 503 are answers, not errors: status, body and Retry-After reach the caller. */
static void
test_http_request_error_statuses(void **state)
{
	struct env *e = *state;
	struct outcome o;

	get(e, e->client, "/404", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 404);
	assert_string_equal(o.body,
	                    "{\"error\":{\"code\":\"NotFound\",\"message\":\"nothing here\"}}");
	outcome_done(&o);

	get(e, e->client, "/500", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 500);
	assert_string_equal(o.body,
	                    "{\"error\":{\"code\":\"InternalServerError\",\"message\":\"oops\"}}");
	outcome_done(&o);

	get(e, e->client, "/503", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 503);
	assert_string_equal(o.retry_after, "7");
	outcome_done(&o);

	get(e, e->client, "/empty", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 204);
	assert_string_equal(o.body, "");
	assert_int_equal(o.body_size, 0);
	assert_null(o.content_type);
	outcome_done(&o);
}

/* Each method goes on the wire as itself, with its body and Content-Type. */
static void
test_http_request_methods_and_bodies(void **state)
{
	struct env *e = *state;
	static const enum http_method methods[] = {HTTP_POST, HTTP_PUT, HTTP_PATCH, HTTP_DELETE};
	const char *headers[] = {"Content-Type: application/json", NULL};
	char *url = xasprintf("%s/echo", fixture_server_url(e->server));
	char big[3000];

	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(methods); i++) {
		struct outcome o = {0};
		const char *body = i == 0 ? big : "{\"properties\":{}}";

		assert_int_equal(http_request(e->client, methods[i], url, headers, body,
		                              strlen(body), 0, on_outcome, &o, NULL),
		                 0);
		fixture_wait(e->base, &o.done);
		assert_int_equal(o.error, 0);
		assert_int_equal(o.status, 200);
		assert_string_equal(e->method, http_method_to_string(methods[i]));
		assert_string_equal(e->body, body);
		assert_string_equal(o.body, body);
		assert_string_equal(e->content_type, "application/json");
		assert_false(e->has_expect); /* no 100-continue round trip */
		outcome_done(&o);
	}

	/* PUT with an empty body, DELETE without one */
	{
		struct outcome o = {0};

		assert_int_equal(http_request(e->client, HTTP_PUT, url, NULL, "", 0, 0, on_outcome,
		                              &o, NULL),
		                 0);
		fixture_wait(e->base, &o.done);
		assert_int_equal(o.status, 200);
		assert_string_equal(e->method, "PUT");
		assert_string_equal(e->body, "");
		outcome_done(&o);
		memset(&o, 0, sizeof(o));
		assert_int_equal(http_request(e->client, HTTP_DELETE, url, NULL, NULL, 0, 0,
		                              on_outcome, &o, NULL),
		                 0);
		fixture_wait(e->base, &o.done);
		assert_int_equal(o.status, 200);
		assert_string_equal(e->method, "DELETE");
		outcome_done(&o);
	}
	assert_int_equal(
	        http_request(e->client, HTTP_POST, url, NULL, NULL, 5, 0, on_outcome, NULL, NULL),
	        -EINVAL);
	free(url);
}

/* A gzip answer arrives decoded. */
static void
test_http_request_gzip_decoded(void **state)
{
	struct env *e = *state;
	struct outcome o;

	get(e, e->client, "/gzip", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 200);
	assert_int_equal(o.body_size, BIG_SIZE);
	assert_int_equal(strspn(o.body, "z"), BIG_SIZE);
	outcome_done(&o);
}

/*
 * Answers of every kind and size, one after the other on one client, each exactly as sent: the
 * buffers of finished answers are wiped and kept for the next ones, which must not see what an
 * earlier answer left.
 */
static void
test_http_request_bodies_in_turn(void **state)
{
	static const char *const paths[] = {"/big", "/ok", "/chunked", "/gzip",   "/404",
	                                    "/big", "/ok", "/gzip",    "/chunked"};
	struct env *e = *state;
	struct outcome o;

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		get(e, e->client, paths[i], NULL, 0, &o);
		assert_int_equal(o.error, 0);
		if (streq(paths[i], "/ok"))
			assert_string_equal(o.body, "{\"hello\":\"world\"}");
		else if (streq(paths[i], "/404"))
			assert_string_equal(
			        o.body,
			        "{\"error\":{\"code\":\"NotFound\",\"message\":\"nothing here\"}}");
		else {
			char c = streq(paths[i], "/big")    ? 'x'
			         : streq(paths[i], "/gzip") ? 'z'
			                                    : 'y';
			char span[2] = {c, '\0'};

			assert_int_equal(o.body_size, BIG_SIZE);
			assert_int_equal(strspn(o.body, span), BIG_SIZE);
			assert_int_equal(o.body[BIG_SIZE], '\0');
		}
		if (!streq(paths[i], "/big") && !streq(paths[i], "/gzip") &&
		    !streq(paths[i], "/chunked"))
			assert_int_equal(o.body_size, strlen(o.body));
		outcome_done(&o);
	}
}

/* What a callback saw of an answer's buffer itself (not a copy). */
struct peek {
	bool done;
	const char *buffer; /* the answer's buffer (compared only, never read after the callback) */
	size_t size;
	const char *reused; /* when the buffer is this one: look at its bytes up to span */
	size_t span;
	size_t left; /* bytes between the end of the body (and its NUL) and span not 0 */
	bool body_ok;
};

static void
on_peek(const struct http_result *result, void *userdata)
{
	struct peek *p = userdata;

	p->done = true;
	p->buffer = result->body;
	p->size = result->body_size;
	p->body_ok = result->error == 0 && result->status == 200 && result->body_size == BIG_SIZE &&
	             strspn(result->body, "x") == BIG_SIZE && result->body[BIG_SIZE] == '\0';
	if (result->body == p->reused)
		for (size_t i = result->body_size + 1; i < p->span; i++)
			p->left += result->body[i] != '\0';
}

/*
 * A finished answer's buffer is wiped before it is kept for the next answers (5819b7b): a token
 * or anything else an answer held must not stay in the process's memory, nor be seen by the next
 * request. The next, shorter answer gets the very buffer of the one before (the smallest kept one
 * that fits, sized from Content-Length): beyond its own body and NUL, every byte of the buffer
 * that the secret answer filled is zero.
 */
static void
test_http_kept_buffer_wiped(void **state)
{
	struct env *e = *state;
	_cleanup_free_ char *secret_url = xasprintf("%s/secret", fixture_server_url(e->server));
	_cleanup_free_ char *big_url = xasprintf("%s/big", fixture_server_url(e->server));
	struct peek first = {0}, second = {0};

	assert_int_equal(http_request(e->client, HTTP_GET, secret_url, NULL, NULL, 0, 0, on_peek,
	                              &first, NULL),
	                 0);
	fixture_wait(e->base, &first.done);
	assert_int_equal(first.size, SECRET_SIZE);

	second.reused = first.buffer;
	second.span = SECRET_SIZE + 1; /* the first buffer's size: the announced body and a NUL */
	assert_int_equal(http_request(e->client, HTTP_GET, big_url, NULL, NULL, 0, 0, on_peek,
	                              &second, NULL),
	                 0);
	fixture_wait(e->base, &second.done);
	assert_true(second.body_ok);
	assert_ptr_equal(second.buffer, first.buffer); /* kept, so what it held matters */
	assert_int_equal(second.left, 0);
}

/* max_response: announced by Content-Length, sent chunked, or inflated from gzip: -EFBIG. */
static void
test_http_request_max_response(void **state)
{
	struct env *e = *state;
	struct http_options opts = {.ca_file = pki->ca_file, .max_response = BIG_SIZE - 1};
	struct http_client *c = client_new(e, &opts);
	static const char *const paths[] = {"/big", "/chunked", "/gzip"};
	struct outcome o;

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		get(e, c, paths[i], NULL, 0, &o);
		assert_int_equal(o.error, -EFBIG);
		assert_non_null(strstr(o.error_message, "max_response"));
		assert_string_equal(o.body, "");
		assert_int_equal(o.body_size, 0);
		outcome_done(&o);
	}
	http_client_free(c);

	/* exactly at the limit is fine */
	opts.max_response = BIG_SIZE;
	c = client_new(e, &opts);
	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		get(e, c, paths[i], NULL, 0, &o);
		assert_int_equal(o.error, 0);
		assert_int_equal(o.body_size, BIG_SIZE);
		outcome_done(&o);
	}
	http_client_free(c);
}

/* A server that never answers: the request's own time-out ends it with -ETIMEDOUT. */
static void
test_http_request_timeout(void **state)
{
	struct env *e = *state;
	struct outcome o;

	get(e, e->client, "/never", NULL, 200 * USEC_PER_MSEC, &o);
	assert_int_equal(o.error, -ETIMEDOUT);
	assert_int_equal(o.status, 0);
	assert_true(strlen(o.error_message) > 0);
	outcome_done(&o);

	/* the client's default time-out applies when the request gives none */
	{
		struct http_options opts = {.ca_file = pki->ca_file,
		                            .timeout_usec = 200 * USEC_PER_MSEC};
		struct http_client *c = client_new(e, &opts);

		get(e, c, "/never", NULL, 0, &o);
		assert_int_equal(o.error, -ETIMEDOUT);
		outcome_done(&o);
		http_client_free(c);
	}
}

/* A server certificate from a CA the client does not trust is refused, whatever the answer. */
static void
test_http_request_untrusted_ca(void **state)
{
	struct env *e = *state;
	struct fixture_server *rogue =
	        fixture_server_new(e->base, pki->rogue_cert, pki->rogue_key, handle, e);
	char *url = xasprintf("%s/ok", fixture_server_url(rogue));
	struct http_options opts = {.user_agent = "x"};
	struct http_client *system_only = client_new(e, &opts);
	struct outcome o;

	get(e, e->client, url, NULL, 0, &o);
	assert_int_equal(o.error, -EKEYREJECTED);
	assert_int_equal(o.status, 0);
	assert_true(strlen(o.error_message) > 0);
	outcome_done(&o);
	assert_int_equal(e->requests, 0);

	/* without ca_file the test CA is not trusted either: only the system's are */
	get(e, system_only, "/ok", NULL, 0, &o);
	assert_int_equal(o.error, -EKEYREJECTED);
	outcome_done(&o);
	assert_int_equal(e->requests, 0);

	http_client_free(system_only);
	fixture_server_free(rogue);
	free(url);
}

/* A certificate from the trusted CA but for another name is refused. */
static void
test_http_request_wrong_name(void **state)
{
	struct env *e = *state;
	struct fixture_server *other =
	        fixture_server_new(e->base, pki->other_name_cert, pki->other_name_key, handle, e);
	char *url = xasprintf("%s/ok", fixture_server_url(other));
	struct outcome o;

	get(e, e->client, url, NULL, 0, &o);
	assert_int_equal(o.error, -EKEYREJECTED);
	outcome_done(&o);
	assert_int_equal(e->requests, 0);
	fixture_server_free(other);
	free(url);
}

/* Requests one after the other share one connection. */
static void
test_http_request_reuses_connection(void **state)
{
	struct env *e = *state;
	struct outcome o;

	for (unsigned i = 0; i < 3; i++) {
		get(e, e->client, "/ok", NULL, 0, &o);
		assert_int_equal(o.status, 200);
		assert_int_equal(o.new_connections, i == 0 ? 1 : 0);
		outcome_done(&o);
	}
	assert_int_equal(fixture_server_connections(e->server), 1);
}

/*
 * A server that closes each connection: every request makes a new one, and each new TLS
 * context trusts the extra CA again (it is added per context, not once).
 */
static void
test_http_request_new_connections_verify(void **state)
{
	struct env *e = *state;
	struct outcome o;

	for (unsigned i = 0; i < 3; i++) {
		get(e, e->client, "/close", NULL, 0, &o);
		assert_int_equal(o.error, 0);
		assert_string_equal(o.body, "bye");
		assert_int_equal(o.new_connections, 1);
		outcome_done(&o);
	}
	assert_int_equal(fixture_server_connections(e->server), 3);
}

/* Only https: a plain http URL fails in the callback. */
static void
test_http_request_https_only(void **state)
{
	struct env *e = *state;
	struct outcome o;

	get(e, e->client, "http://127.0.0.1:9/", NULL, 0, &o);
	assert_int_equal(o.error, -EPROTONOSUPPORT);
	outcome_done(&o);
}

/* Answer every request of the plain http listener. */
static void
on_plain(struct evhttp_request *req, void *userdata)
{
	(void)userdata;
	fixture_reply(req, 200, "application/json", "{\"ready\":true}");
}

/* Plain http for the client's own host (options.local): served by a plain evhttp listener, and
 * never through a proxy even when the environment names one. */
static void
test_http_request_local_plain_http(void **state)
{
	struct env *e = *state;
	struct http_options opts = {.local = true};
	struct fixture_proxy *proxy = fixture_proxy_new(e->base);
	struct evhttp *plain = evhttp_new(e->base);
	struct evhttp_bound_socket *bound;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct http_client *c;
	struct outcome o;
	char *url;

	assert_non_null(plain);
	evhttp_set_gencb(plain, on_plain, NULL);
	bound = evhttp_bind_socket_with_handle(plain, "127.0.0.1", 0);
	assert_non_null(bound);
	assert_int_equal(
	        getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &len), 0);
	url = xasprintf("http://127.0.0.1:%u/v1/status",
	                (unsigned)ntohs(((struct sockaddr_in *)&ss)->sin_port));
	assert_int_equal(setenv("http_proxy", fixture_proxy_url(proxy), 1), 0);
	c = client_new(e, &opts);
	get(e, c, url, NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 200);
	assert_string_equal(o.body, "{\"ready\":true}");
	assert_int_equal(fixture_proxy_tunnels(proxy), 0);
	outcome_done(&o);
	unsetenv("http_proxy");

	/* another scheme stays refused */
	get(e, c, "ftp://127.0.0.1:9/", NULL, 0, &o);
	assert_int_equal(o.error, -EPROTONOSUPPORT);
	outcome_done(&o);
	http_client_free(c);
	evhttp_free(plain);
	fixture_proxy_free(proxy);
	free(url);
}

/* A closed port: -ECONNREFUSED. */
static void
test_http_request_refused(void **state)
{
	struct env *e = *state;
	struct fixture_server *gone =
	        fixture_server_new(e->base, pki->server_cert, pki->server_key, handle, e);
	char *url = xasprintf("%s/ok", fixture_server_url(gone));
	struct outcome o;

	fixture_server_free(gone); /* its port is closed now */
	get(e, e->client, url, NULL, 0, &o);
	assert_int_equal(o.error, -ECONNREFUSED);
	outcome_done(&o);
	free(url);
}

static bool
proxy_tunnelled(void *userdata)
{
	return fixture_proxy_tunnels(userdata) > 0;
}

/* [http] proxy and libcurl's https_proxy: the request goes through the proxy's tunnel. */
static void
test_http_request_proxy(void **state)
{
	struct env *e = *state;
	struct fixture_proxy *proxy = fixture_proxy_new(e->base);
	struct http_options opts = {.ca_file = pki->ca_file, .proxy = fixture_proxy_url(proxy)};
	struct http_client *c = client_new(e, &opts);
	struct outcome o;

	get(e, c, "/ok", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 200);
	assert_int_equal(fixture_proxy_tunnels(proxy), 1);
	outcome_done(&o);
	http_client_free(c);
	fixture_proxy_free(proxy);

	/* no proxy option: the environment decides */
	proxy = fixture_proxy_new(e->base);
	assert_int_equal(setenv("https_proxy", fixture_proxy_url(proxy), 1), 0);
	opts.proxy = NULL;
	c = client_new(e, &opts);
	get(e, c, "/ok", NULL, 0, &o);
	assert_int_equal(o.error, 0);
	assert_int_equal(o.status, 200);
	assert_true(proxy_tunnelled(proxy));
	outcome_done(&o);
	http_client_free(c);
	fixture_proxy_free(proxy);
	unsetenv("https_proxy");
}

static bool
server_saw_request(void *userdata)
{
	return ((struct env *)userdata)->requests > 0;
}

/* A cancelled request never calls back; freeing a client drops its requests silently. */
static void
test_http_request_cancel(void **state)
{
	struct env *e = *state;
	char *url = xasprintf("%s/never", fixture_server_url(e->server));
	struct outcome o = {0}, o2 = {0}, o3 = {0};
	struct http_request *r = NULL;
	struct http_client *c = client_new(e, NULL);

	assert_int_equal(
	        http_request(e->client, HTTP_GET, url, NULL, NULL, 0, 0, on_outcome, &o, &r), 0);
	assert_non_null(r);
	fixture_wait_for(e->base, server_saw_request, e);
	assert_null(http_request_cancel(r));
	assert_null(http_request_cancel(NULL));

	/* the loop goes on; a later request completes and the cancelled one stays silent */
	get(e, e->client, "/ok", NULL, 0, &o2);
	assert_int_equal(o2.status, 200);
	outcome_done(&o2);
	assert_int_equal(o.calls, 0);

	assert_int_equal(http_request(c, HTTP_GET, url, NULL, NULL, 0, 0, on_outcome, &o3, NULL),
	                 0);
	assert_null(http_client_free(c));
	assert_null(http_client_free(NULL));
	assert_int_equal(o3.calls, 0);
	free(url);
}

/* State of the callback tests below. */
struct chain {
	struct env *env;
	struct http_client *client;
	struct outcome first, second;
	bool freed;
};

/* Callback: free the client, with another request pending. */
static void
on_free_client(const struct http_result *r, void *userdata)
{
	struct chain *ch = userdata;

	on_outcome(r, &ch->first);
	http_client_free(ch->client);
	ch->freed = true;
}

/* A callback may free its client; requests still pending are dropped without callbacks. */
static void
test_http_callback_frees_client(void **state)
{
	struct env *e = *state;
	struct chain ch = {.env = e, .client = client_new(e, NULL)};
	char *never = xasprintf("%s/never", fixture_server_url(e->server));
	char *ok = xasprintf("%s/ok", fixture_server_url(e->server));

	assert_int_equal(http_request(ch.client, HTTP_GET, never, NULL, NULL, 0, 0, on_outcome,
	                              &ch.second, NULL),
	                 0);
	assert_int_equal(
	        http_request(ch.client, HTTP_GET, ok, NULL, NULL, 0, 0, on_free_client, &ch, NULL),
	        0);
	fixture_wait(e->base, &ch.freed);
	assert_int_equal(ch.first.status, 200);
	assert_int_equal(ch.second.calls, 0);
	outcome_done(&ch.first);
	free(never);
	free(ok);
}

/* Callback: start the second request. */
static void
on_start_next(const struct http_result *r, void *userdata)
{
	struct chain *ch = userdata;
	char *url = xasprintf("%s/echo", fixture_server_url(ch->env->server));

	on_outcome(r, &ch->first);
	assert_int_equal(http_request(ch->client, HTTP_POST, url, NULL, "again", 5, 0, on_outcome,
	                              &ch->second, NULL),
	                 0);
	free(url);
}

/* A callback may start a request on its client. */
static void
test_http_callback_starts_request(void **state)
{
	struct env *e = *state;
	struct chain ch = {.env = e, .client = e->client};
	char *ok = xasprintf("%s/ok", fixture_server_url(e->server));

	assert_int_equal(
	        http_request(e->client, HTTP_GET, ok, NULL, NULL, 0, 0, on_start_next, &ch, NULL),
	        0);
	fixture_wait(e->base, &ch.second.done);
	assert_int_equal(ch.first.status, 200);
	assert_int_equal(ch.second.status, 200);
	assert_string_equal(ch.second.body, "again");
	outcome_done(&ch.first);
	outcome_done(&ch.second);
	free(ok);
}

/* Several requests in flight at once all complete. */
static void
test_http_request_parallel(void **state)
{
	struct env *e = *state;
	char *url = xasprintf("%s/ok", fixture_server_url(e->server));
	struct outcome o[6] = {0};

	for (size_t i = 0; i < ARRAY_SIZE(o); i++)
		assert_int_equal(http_request(e->client, HTTP_GET, url, NULL, NULL, 0, 0,
		                              on_outcome, &o[i], NULL),
		                 0);
	for (size_t i = 0; i < ARRAY_SIZE(o); i++) {
		fixture_wait(e->base, &o[i].done);
		assert_int_equal(o[i].status, 200);
		assert_int_equal(o[i].calls, 1);
		outcome_done(&o[i]);
	}
	free(url);
}

/* ca_file that cannot be read, or holds no certificate, fails the client at once. */
static void
test_http_client_new_bad_ca_file(void **state)
{
	struct env *e = *state;
	char path[] = "/tmp/azs-http-ca-XXXXXX";
	struct http_options opts = {.ca_file = "/nonexistent/ca.pem"};
	struct http_client *c = NULL;
	int fd;

	assert_int_equal(http_client_new(e->base, &opts, &c), -ENOENT);
	assert_null(c);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "not a certificate\n", 18), 18);
	close(fd);
	opts.ca_file = path;
	assert_int_equal(http_client_new(e->base, &opts, &c), -EBADMSG);
	assert_null(c);
	unlink(path);
}

/* A fixed random source. */
static uint64_t
fixed_random(void *userdata)
{
	return *(uint64_t *)userdata;
}

/* splitmix64: a deterministic stream for the distribution checks. */
static uint64_t
splitmix(void *userdata)
{
	uint64_t *s = userdata, z = (*s += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* The cap doubles from initial to max; the draw is the random number modulo cap + 1. */
static void
test_http_backoff_caps(void **state)
{
	uint64_t v = 0;
	struct http_random rnd = {fixed_random, &v};
	const uint64_t s = USEC_PER_SEC;
	const uint64_t caps[] = {1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s};

	(void)state;
	for (unsigned a = 0; a < ARRAY_SIZE(caps); a++) {
		v = caps[a]; /* the largest draw */
		assert_int_equal(http_backoff(a, s, 60 * s, &rnd), caps[a]);
		v = caps[a] + 1; /* wraps to the smallest */
		assert_int_equal(http_backoff(a, s, 60 * s, &rnd), 0);
		v = 0;
		assert_int_equal(http_backoff(a, s, 60 * s, &rnd), 0);
		v = caps[a] + 1 + caps[a] / 2;
		assert_int_equal(http_backoff(a, s, 60 * s, &rnd), caps[a] / 2);
	}
	/* a huge attempt number neither overflows nor loops for long */
	v = UINT64_MAX;
	assert_true(http_backoff(UINT32_MAX, s, 60 * s, &rnd) <= 60 * s);
	assert_true(http_backoff(200, 3, UINT64_MAX, &rnd) <= UINT64_MAX);
	v = UINT64_MAX - 1;
	assert_int_equal(http_backoff(70, 1, UINT64_MAX, &rnd), UINT64_MAX - 1);
	/* initial above max: max; no initial: no delay */
	v = 10 * s;
	assert_int_equal(http_backoff(0, 20 * s, 10 * s, &rnd), 10 * s);
	assert_int_equal(http_backoff(5, 0, 10 * s, &rnd), 0);
	/* the default source stays within bounds */
	for (unsigned a = 0; a < 10; a++)
		assert_true(http_backoff(a, s, 60 * s, NULL) <= MIN(s << a, 60 * s));
}

/* Full jitter: draws spread over the whole of [0, cap], not near the cap. */
static void
test_http_backoff_full_jitter(void **state)
{
	uint64_t seed = 42;
	struct http_random rnd = {splitmix, &seed};
	const uint64_t cap = 8 * USEC_PER_SEC;
	uint64_t lo = UINT64_MAX, hi = 0;
	double sum = 0;
	const int n = 20000;

	(void)state;
	for (int i = 0; i < n; i++) {
		uint64_t d = http_backoff(3, USEC_PER_SEC, 60 * USEC_PER_SEC, &rnd);

		assert_true(d <= cap);
		lo = MIN(lo, d);
		hi = MAX(hi, d);
		sum += (double)d;
	}
	assert_true(lo < cap / 100);
	assert_true(hi > cap - cap / 100);
	assert_true(sum / n > 0.45 * (double)cap && sum / n < 0.55 * (double)cap);
}

enum date_form { IMF_FIXDATE, RFC850, ASCTIME };

/* Write t as an HTTP date in one of its three forms (RFC 9110 section 5.6.7). */
static void
http_date(int64_t t, enum date_form form, char *out, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	switch (form) {
	case IMF_FIXDATE:
		strftime(out, size, "%a, %d %b %Y %H:%M:%S GMT", &tm);
		break;
	case RFC850: { /* two-digit year: that is the obsolete form */
		char day[24], rest[16];

		strftime(day, sizeof(day), "%A, %d-%b", &tm);
		strftime(rest, sizeof(rest), "%H:%M:%S GMT", &tm);
		snprintf(out, size, "%s-%02d %s", day, tm.tm_year % 100, rest);
		break;
	}
	case ASCTIME:
		strftime(out, size, "%a %b %e %H:%M:%S %Y", &tm);
		break;
	}
}

/* Retry-After as delay-seconds, capped. */
static void
test_http_retry_after_seconds(void **state)
{
	const int64_t now = 1793527200; /* 2026-11-01T10:00:00Z */
	uint64_t d = 1;

	(void)state;
	assert_int_equal(http_retry_after_parse("120", now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 120 * USEC_PER_SEC);
	assert_int_equal(http_retry_after_parse(" 5 ", now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 5 * USEC_PER_SEC);
	assert_int_equal(http_retry_after_parse("0", now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 0);
	assert_int_equal(http_retry_after_parse("3600", now, 300 * USEC_PER_SEC, &d), 0);
	assert_int_equal(d, 300 * USEC_PER_SEC);
	/* too large to count in microseconds: still a delay, the cap */
	assert_int_equal(
	        http_retry_after_parse("99999999999999999999999", now, 300 * USEC_PER_SEC, &d), 0);
	assert_int_equal(d, 300 * USEC_PER_SEC);
	assert_int_equal(http_retry_after_parse("18446744073709", now, UINT64_MAX, &d), 0);
	assert_int_equal(d, UINT64_C(18446744073709) * USEC_PER_SEC);
	assert_int_equal(http_retry_after_parse("18446744073710", now, UINT64_MAX, &d), 0);
	assert_int_equal(d, UINT64_MAX);
}

/* Retry-After as an HTTP date in each of the three forms; the past is now. */
static void
test_http_retry_after_dates(void **state)
{
	const int64_t now = 1793527200;
	char buf[80];
	uint64_t d = 1;

	(void)state;
	http_date(now + 30, IMF_FIXDATE, buf, sizeof(buf));
	assert_string_equal(buf, "Sun, 01 Nov 2026 10:00:30 GMT");
	assert_int_equal(http_retry_after_parse(buf, now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 30 * USEC_PER_SEC);
	/* RFC 850 and asctime */
	http_date(now + 45, RFC850, buf, sizeof(buf));
	assert_int_equal(http_retry_after_parse(buf, now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 45 * USEC_PER_SEC);
	http_date(now + 90, ASCTIME, buf, sizeof(buf));
	assert_int_equal(http_retry_after_parse(buf, now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 90 * USEC_PER_SEC);
	/* capped; in the past: 0 */
	http_date(now + 86400, IMF_FIXDATE, buf, sizeof(buf));
	assert_int_equal(http_retry_after_parse(buf, now, 60 * USEC_PER_SEC, &d), 0);
	assert_int_equal(d, 60 * USEC_PER_SEC);
	http_date(now - 600, IMF_FIXDATE, buf, sizeof(buf));
	assert_int_equal(http_retry_after_parse(buf, now, UINT64_MAX, &d), 0);
	assert_int_equal(d, 0);
}

/* Anything else is refused and leaves the result alone. */
static void
test_http_retry_after_garbage(void **state)
{
	static const char *const bad[] = {
	        "",
	        " ",
	        "abc",
	        "-1",
	        "+5",
	        "1.5",
	        "5s",
	        "0x10",
	        "1e3",
	        "soon",
	        "Sun, 99 Foo 2026 10:00:00 GMT",
	        "Sun, 01 Nov",
	        "tomorrow",
	        "120 ; comment",
	};
	uint64_t d = 12345;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		if (http_retry_after_parse(bad[i], 0, UINT64_MAX, &d) != -EINVAL)
			fail_msg("Retry-After \"%s\" accepted as %llu", bad[i],
			         (unsigned long long)d);
		assert_int_equal(d, 12345);
	}
	assert_int_equal(http_retry_after_parse(NULL, 0, UINT64_MAX, &d), -EINVAL);
}

/* Escaping keeps the unreserved characters only. */
static void
test_http_escape(void **state)
{
	char *s;

	(void)state;
	s = http_escape("2026-11-01T10:00:00Z");
	assert_string_equal(s, "2026-11-01T10%3A00%3A00Z");
	free(s);
	s = http_escape("https://management.azure.com/");
	assert_string_equal(s, "https%3A%2F%2Fmanagement.azure.com%2F");
	free(s);
	s = http_escape("a b+c&d=e~f_g.h\xc3\xa9");
	assert_string_equal(s, "a%20b%2Bc%26d%3De~f_g.h%C3%A9");
	free(s);
	s = http_escape("");
	assert_string_equal(s, "");
	free(s);
}

/* Copy what a callback received. */
static void
on_outcome(const struct http_result *r, void *userdata)
{
	struct outcome *o = userdata;
	const char *x = http_result_header(r, "X-Test");

	o->calls++;
	o->done = true;
	o->error = r->error;
	o->error_message = xstrdup(r->error_message);
	o->status = r->status;
	o->body = xmemdup(r->body, r->body_size + 1);
	o->body_size = r->body_size;
	o->content_type = r->content_type ? xstrdup(r->content_type) : NULL;
	o->retry_after = r->retry_after ? xstrdup(r->retry_after) : NULL;
	o->x_test = x ? xstrdup(x) : NULL;
	o->new_connections = r->new_connections;
}

/* Free what on_outcome copied. */
static void
outcome_done(struct outcome *o)
{
	free(o->error_message);
	free(o->body);
	free(o->content_type);
	free(o->retry_after);
	free(o->x_test);
	memset(o, 0, sizeof(*o));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_http_request_get_ok, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_error_statuses, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_methods_and_bodies, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_gzip_decoded, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_bodies_in_turn, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_kept_buffer_wiped, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_max_response, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_timeout, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_untrusted_ca, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_wrong_name, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_reuses_connection, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_new_connections_verify, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_https_only, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_local_plain_http, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_proxy, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_cancel, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_callback_frees_client, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_callback_starts_request, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_request_parallel, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_http_client_new_bad_ca_file, setup, teardown),
	        cmocka_unit_test(test_http_backoff_caps),
	        cmocka_unit_test(test_http_backoff_full_jitter),
	        cmocka_unit_test(test_http_retry_after_seconds),
	        cmocka_unit_test(test_http_retry_after_dates),
	        cmocka_unit_test(test_http_retry_after_garbage),
	        cmocka_unit_test(test_http_escape),
	};
	int r;

	signal(SIGPIPE, SIG_IGN); /* as the daemon does; lib/http needs it */
	/* the loopback tests go direct unless a test sets a proxy */
	unsetenv("https_proxy");
	unsetenv("HTTPS_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	unsetenv("no_proxy");
	unsetenv("NO_PROXY");
	pki = fixture_pki_new();
	r = cmocka_run_group_tests(tests, NULL, NULL);
	fixture_pki_free(pki);
	return r;
}
