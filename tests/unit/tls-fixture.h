/*
 * What the lib/http and lib/auth tests share: a throw-away PKI made with OpenSSL (a test CA, server
 * certificates for 127.0.0.1 signed by it and by a CA nobody trusts, an RSA client certificate),
 * an evhttp HTTPS server on a free loopback port, an HTTP CONNECT proxy, and waiting on the loop
 * for an event (never for a time: a 60 s guard only turns a hang into a failure).
 */
#pragma once

#include <stdbool.h>

struct event_base;
struct evhttp_request;

struct fixture_pki {
	char *dir;         /* a temporary directory holding the files below */
	char *ca_file;     /* the test CA (PEM) */
	char *server_cert; /* CN and SAN 127.0.0.1 and localhost, signed by the test CA */
	char *server_key;
	char *rogue_ca_file; /* a CA the clients do not trust */
	char *rogue_cert;    /* the same names, signed by the rogue CA */
	char *rogue_key;
	char *other_name_cert; /* signed by the test CA for another host name */
	char *other_name_key;
	char *client_pem;  /* an RSA certificate followed by its private key, as PEM text */
	char *client2_pem; /* another one (a certificate the server does not know) */
};

/* Make the PKI (fails the test on error). */
struct fixture_pki *fixture_pki_new(void);
struct fixture_pki *fixture_pki_free(struct fixture_pki *p);

typedef void (*fixture_handler)(struct evhttp_request *req, void *userdata);

/* An HTTPS server on 127.0.0.1 with cert and key, every request going to handler. */
struct fixture_server *fixture_server_new(struct event_base *base, const char *cert,
                                          const char *key, fixture_handler handler, void *userdata);
struct fixture_server *fixture_server_free(struct fixture_server *s);
const char *fixture_server_url(const struct fixture_server *s);      /* https://127.0.0.1:PORT */
unsigned fixture_server_connections(const struct fixture_server *s); /* TCP connections so far */

/* An HTTP CONNECT proxy on 127.0.0.1 that tunnels to numeric host:port targets. */
struct fixture_proxy *fixture_proxy_new(struct event_base *base);
struct fixture_proxy *fixture_proxy_free(struct fixture_proxy *p);
const char *fixture_proxy_url(const struct fixture_proxy *p);  /* http://127.0.0.1:PORT */
unsigned fixture_proxy_tunnels(const struct fixture_proxy *p); /* CONNECTs answered 200 */

/* Run the loop until *done is true. */
void fixture_wait(struct event_base *base, const bool *done);

/* Run the loop until pred(userdata) is true (checked after each loop iteration). */
void fixture_wait_for(struct event_base *base, bool (*pred)(void *userdata), void *userdata);

/* The body of a request as a new NUL-terminated string. */
char *fixture_request_body(struct evhttp_request *req);

/* Answer a request with status, an optional Content-Type and a body (NULL: empty). */
void fixture_reply(struct evhttp_request *req, int status, const char *content_type,
                   const char *body);
