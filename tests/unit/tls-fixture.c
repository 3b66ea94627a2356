/*
 * The HTTPS fixture of tls-fixture.h: certificates made with OpenSSL's C API into a temporary
 * directory, an evhttp server behind bufferevent_openssl, a CONNECT proxy of two bufferevents
 * per tunnel, and loop waits with a guard timer.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "macro.h"
#include "tls-fixture.h"
#include "xmalloc.h"

#define WAIT_GUARD_SEC 60

struct fixture_server {
	struct event_base *base;
	SSL_CTX *ctx;
	struct evhttp *http;
	fixture_handler handler;
	void *userdata;
	unsigned connections;
	char url[64];
};

struct tunnel {
	struct fixture_proxy *proxy;
	struct bufferevent *client, *target;
	struct tunnel *next;
};

struct fixture_proxy {
	struct event_base *base;
	struct evconnlistener *listener;
	struct tunnel *tunnels;
	unsigned answered;
	char url[64];
};

static EVP_PKEY *make_key(bool rsa);
static X509 *make_cert(const char *cn, const char *san, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *issuer_key, bool ca);
static void write_pem(const char *path, X509 *cert, X509 *chain, EVP_PKEY *key);
static char *read_text(const char *path);
static struct bufferevent *on_server_bev(struct event_base *base, void *arg);
static void on_server_request(struct evhttp_request *req, void *arg);
static void on_proxy_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                            int len, void *arg);
static void on_proxy_head(struct bufferevent *bev, void *arg);
static void on_tunnel_read(struct bufferevent *bev, void *arg);
static void on_tunnel_event(struct bufferevent *bev, short what, void *arg);
static void tunnel_free(struct tunnel *t);
static void on_guard(evutil_socket_t fd, short what, void *arg);
static bool flag_set(void *userdata);

/* Make the PKI in a temporary directory. */
struct fixture_pki *
fixture_pki_new(void)
{
	struct fixture_pki *p = xcalloc(1, sizeof(*p));
	char tmpl[] = "/tmp/azs-tls-XXXXXX";
	EVP_PKEY *ca_key = make_key(false), *rogue_key = make_key(false);
	EVP_PKEY *server_key = make_key(false), *client_key = make_key(true);
	EVP_PKEY *client2_key = make_key(true);
	X509 *ca, *rogue, *server, *rogue_server, *other, *client, *client2;
	char *path;

	if (!mkdtemp(tmpl))
		fail_msg("mkdtemp: %s", strerror(errno));
	p->dir = xstrdup(tmpl);
	ca = make_cert("azs test CA", NULL, ca_key, NULL, NULL, true);
	rogue = make_cert("azs rogue CA", NULL, rogue_key, NULL, NULL, true);
	server =
	        make_cert("127.0.0.1", "IP:127.0.0.1,DNS:localhost", server_key, ca, ca_key, false);
	rogue_server = make_cert("127.0.0.1", "IP:127.0.0.1,DNS:localhost", server_key, rogue,
	                         rogue_key, false);
	other = make_cert("other.example", "DNS:other.example", server_key, ca, ca_key, false);
	client = make_cert("azs test client", NULL, client_key, NULL, NULL, false);
	client2 = make_cert("azs other client", NULL, client2_key, NULL, NULL, false);

	p->ca_file = xasprintf("%s/ca.pem", p->dir);
	write_pem(p->ca_file, ca, NULL, NULL);
	p->rogue_ca_file = xasprintf("%s/rogue-ca.pem", p->dir);
	write_pem(p->rogue_ca_file, rogue, NULL, NULL);
	p->server_key = xasprintf("%s/server.key", p->dir);
	write_pem(p->server_key, NULL, NULL, server_key);
	p->rogue_key = xstrdup(p->server_key);
	p->other_name_key = xstrdup(p->server_key);
	p->server_cert = xasprintf("%s/server.pem", p->dir);
	write_pem(p->server_cert, server, ca, NULL);
	p->rogue_cert = xasprintf("%s/rogue-server.pem", p->dir);
	write_pem(p->rogue_cert, rogue_server, rogue, NULL);
	p->other_name_cert = xasprintf("%s/other-name.pem", p->dir);
	write_pem(p->other_name_cert, other, ca, NULL);
	path = xasprintf("%s/client.pem", p->dir);
	write_pem(path, client, NULL, client_key);
	p->client_pem = read_text(path);
	free(path);
	path = xasprintf("%s/client2.pem", p->dir);
	write_pem(path, client2, NULL, client2_key);
	p->client2_pem = read_text(path);
	free(path);

	X509_free(ca);
	X509_free(rogue);
	X509_free(server);
	X509_free(rogue_server);
	X509_free(other);
	X509_free(client);
	X509_free(client2);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(rogue_key);
	EVP_PKEY_free(server_key);
	EVP_PKEY_free(client_key);
	EVP_PKEY_free(client2_key);
	return p;
}

/* Remove the files and free. */
struct fixture_pki *
fixture_pki_free(struct fixture_pki *p)
{
	const char *names[] = {"ca.pem",           "rogue-ca.pem",   "server.key", "server.pem",
	                       "rogue-server.pem", "other-name.pem", "client.pem", "client2.pem"};

	if (!p)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		char *path = xasprintf("%s/%s", p->dir, names[i]);

		(void)unlink(path);
		free(path);
	}
	(void)rmdir(p->dir);
	free(p->dir);
	free(p->ca_file);
	free(p->server_cert);
	free(p->server_key);
	free(p->rogue_ca_file);
	free(p->rogue_cert);
	free(p->rogue_key);
	free(p->other_name_cert);
	free(p->other_name_key);
	free(p->client_pem);
	free(p->client2_pem);
	free(p);
	return NULL;
}

/* Start an HTTPS server on a free loopback port. */
struct fixture_server *
fixture_server_new(struct event_base *base, const char *cert, const char *key,
                   fixture_handler handler, void *userdata)
{
	struct fixture_server *s = xcalloc(1, sizeof(*s));
	struct evhttp_bound_socket *bound;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	s->base = base;
	s->handler = handler;
	s->userdata = userdata;
	s->ctx = SSL_CTX_new(TLS_server_method());
	if (!s->ctx || SSL_CTX_use_certificate_chain_file(s->ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(s->ctx, key, SSL_FILETYPE_PEM) != 1)
		fail_msg("server TLS context: %s", ERR_reason_error_string(ERR_get_error()));
	s->http = evhttp_new(base);
	if (!s->http)
		fail_msg("evhttp_new");
	evhttp_set_bevcb(s->http, on_server_bev, s);
	evhttp_set_gencb(s->http, on_server_request, s);
	evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
	                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
	bound = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
	if (!bound ||
	    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &len) < 0)
		fail_msg("cannot bind the test server");
	snprintf(s->url, sizeof(s->url), "https://127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
	return s;
}

/* Stop the server. */
struct fixture_server *
fixture_server_free(struct fixture_server *s)
{
	if (!s)
		return NULL;
	evhttp_free(s->http);
	SSL_CTX_free(s->ctx);
	free(s);
	return NULL;
}

/* The server's base URL. */
const char *
fixture_server_url(const struct fixture_server *s)
{
	return s->url;
}

/* How many TCP connections the server accepted. */
unsigned
fixture_server_connections(const struct fixture_server *s)
{
	return s->connections;
}

/* Start a CONNECT proxy on a free loopback port. */
struct fixture_proxy *
fixture_proxy_new(struct event_base *base)
{
	struct fixture_proxy *p = xcalloc(1, sizeof(*p));
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof(sin);

	p->base = base;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	p->listener = evconnlistener_new_bind(base, on_proxy_accept, p,
	                                      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
	                                      (struct sockaddr *)&sin, sizeof(sin));
	if (!p->listener ||
	    getsockname(evconnlistener_get_fd(p->listener), (struct sockaddr *)&sin, &len) < 0)
		fail_msg("cannot bind the test proxy");
	snprintf(p->url, sizeof(p->url), "http://127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
	return p;
}

/* Stop the proxy and close its tunnels. */
struct fixture_proxy *
fixture_proxy_free(struct fixture_proxy *p)
{
	if (!p)
		return NULL;
	while (p->tunnels)
		tunnel_free(p->tunnels);
	evconnlistener_free(p->listener);
	free(p);
	return NULL;
}

/* The proxy's URL. */
const char *
fixture_proxy_url(const struct fixture_proxy *p)
{
	return p->url;
}

/* How many tunnels the proxy opened. */
unsigned
fixture_proxy_tunnels(const struct fixture_proxy *p)
{
	return p->answered;
}

/* Run the loop until *done. */
void
fixture_wait(struct event_base *base, const bool *done)
{
	fixture_wait_for(base, flag_set, (void *)done);
}

/* Run the loop until pred() holds; fail after WAIT_GUARD_SEC. */
void
fixture_wait_for(struct event_base *base, bool (*pred)(void *userdata), void *userdata)
{
	bool expired = false;
	struct timeval tv = {.tv_sec = WAIT_GUARD_SEC};
	struct event *guard = evtimer_new(base, on_guard, &expired);

	assert_non_null(guard);
	evtimer_add(guard, &tv);
	while (!pred(userdata) && !expired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(guard);
	if (expired)
		fail_msg("no event after %d s", WAIT_GUARD_SEC);
}

/* Copy a request body. */
char *
fixture_request_body(struct evhttp_request *req)
{
	struct evbuffer *b = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(b);
	char *s = xmalloc(n + 1);

	evbuffer_copyout(b, s, n);
	s[n] = '\0';
	return s;
}

/* Answer with a status and a body. */
void
fixture_reply(struct evhttp_request *req, int status, const char *content_type, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	if (content_type)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
		                  content_type);
	if (body)
		evbuffer_add(b, body, strlen(body));
	evhttp_send_reply(req, status, "Status", b);
	evbuffer_free(b);
}

/* A new EC P-256 key, or an RSA 2048 key. */
static EVP_PKEY *
make_key(bool rsa)
{
	EVP_PKEY *k = rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");

	if (!k)
		fail_msg("key generation failed");
	return k;
}

/* Add an X.509v3 extension. */
static void
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!ext || !X509_add_ext(cert, ext, -1))
		fail_msg("extension %d=%s", nid, value);
	X509_EXTENSION_free(ext);
}

/* A certificate for key, signed by issuer (NULL: self-signed), valid from an hour ago for a day. */
static X509 *
make_cert(const char *cn, const char *san, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
          bool ca)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	unsigned char serial[8];
	BIGNUM *bn;

	assert_non_null(x);
	assert_non_null(name);
	X509_set_version(x, 2);
	if (RAND_bytes(serial, sizeof(serial)) != 1)
		fail_msg("RAND_bytes");
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	BN_free(bn);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
	X509_NAME_free(name);
	X509_set_pubkey(x, key);
	add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
	if (ca) {
		add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer ? issuer : x, NID_basic_constraints, "CA:FALSE");
		if (issuer)
			add_ext(x, issuer, NID_authority_key_identifier, "keyid");
		if (san) {
			add_ext(x, issuer, NID_subject_alt_name, san);
			add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
		}
	}
	if (!X509_sign(x, issuer ? issuer_key : key, EVP_sha256()))
		fail_msg("X509_sign");
	return x;
}

/* Write a certificate, an optional chain certificate and an optional key as PEM. */
static void
write_pem(const char *path, X509 *cert, X509 *chain, EVP_PKEY *key)
{
	FILE *f = fopen(path, "we");

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	if ((cert && !PEM_write_X509(f, cert)) || (chain && !PEM_write_X509(f, chain)) ||
	    (key && !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)))
		fail_msg("%s: PEM write failed", path);
	fclose(f);
}

/* Read a whole file as text. */
static char *
read_text(const char *path)
{
	FILE *f = fopen(path, "re");
	char *s = NULL;
	size_t n = 0;

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	if (getdelim(&s, &n, '\0', f) < 0)
		fail_msg("%s: empty", path);
	fclose(f);
	return s;
}

/* evhttp: the TLS bufferevent of a new connection (counted). */
static struct bufferevent *
on_server_bev(struct event_base *base, void *arg)
{
	struct fixture_server *s = arg;
	SSL *ssl = SSL_new(s->ctx);

	assert_non_null(ssl);
	s->connections++;
	return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
	                                      BEV_OPT_CLOSE_ON_FREE);
}

/* evhttp: hand a request to the test's handler. */
static void
on_server_request(struct evhttp_request *req, void *arg)
{
	struct fixture_server *s = arg;

	s->handler(req, s->userdata);
}

/* A client connected to the proxy: read its CONNECT head. */
static void
on_proxy_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                void *arg)
{
	struct fixture_proxy *p = arg;
	struct tunnel *t = xcalloc(1, sizeof(*t));

	t->proxy = p;
	t->client = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(t->client);
	t->next = p->tunnels;
	p->tunnels = t;
	bufferevent_setcb(t->client, on_proxy_head, NULL, on_tunnel_event, t);
	bufferevent_enable(t->client, EV_READ | EV_WRITE);
}

/* The CONNECT head: connect to the target, then splice. Anything else: 405. */
static void
on_proxy_head(struct bufferevent *bev, void *arg)
{
	struct tunnel *t = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char line[256], target[128];
	size_t n;

	if (end.pos < 0)
		return;
	n = MIN((size_t)end.pos, sizeof(line) - 1);
	evbuffer_copyout(in, line, n);
	line[n] = '\0';
	evbuffer_drain(in, (size_t)end.pos + 4);
	if (sscanf(line, "CONNECT %127s HTTP/1.", target) != 1 ||
	    evutil_parse_sockaddr_port(target, (struct sockaddr *)&ss, &sslen) < 0) {
		evbuffer_add_printf(bufferevent_get_output(bev),
		                    "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
		return;
	}
	t->target = bufferevent_socket_new(t->proxy->base, -1, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(t->target);
	bufferevent_setcb(t->target, on_tunnel_read, NULL, on_tunnel_event, t);
	bufferevent_setcb(t->client, on_tunnel_read, NULL, on_tunnel_event, t);
	bufferevent_disable(t->client, EV_READ); /* until the target answers */
	if (bufferevent_socket_connect(t->target, (struct sockaddr *)&ss, sslen) < 0)
		tunnel_free(t);
}

/* Splice: what one side sent goes to the other. */
static void
on_tunnel_read(struct bufferevent *bev, void *arg)
{
	struct tunnel *t = arg;
	struct bufferevent *other = bev == t->client ? t->target : t->client;

	evbuffer_add_buffer(bufferevent_get_output(other), bufferevent_get_input(bev));
}

/* Connected to the target: answer 200. Closed or failed on either side: close both. */
static void
on_tunnel_event(struct bufferevent *bev, short what, void *arg)
{
	struct tunnel *t = arg;

	if (what & BEV_EVENT_CONNECTED) {
		t->proxy->answered++;
		evbuffer_add_printf(bufferevent_get_output(t->client),
		                    "HTTP/1.1 200 Connection established\r\n\r\n");
		bufferevent_enable(t->client, EV_READ);
		bufferevent_enable(t->target, EV_READ | EV_WRITE);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		tunnel_free(t);
}

/* Close a tunnel's sockets and forget it. */
static void
tunnel_free(struct tunnel *t)
{
	struct tunnel **pp = &t->proxy->tunnels;

	while (*pp && *pp != t)
		pp = &(*pp)->next;
	if (*pp)
		*pp = t->next;
	if (t->client)
		bufferevent_free(t->client);
	if (t->target)
		bufferevent_free(t->target);
	free(t);
}

/* The wait guard expired. */
static void
on_guard(evutil_socket_t fd, short what, void *arg)
{
	*(bool *)arg = true;
}

/* Predicate: a bool is true. */
static bool
flag_set(void *userdata)
{
	return *(const bool *)userdata;
}
