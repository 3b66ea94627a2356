/*
 * The health server: /healthz, /readyz, /metrics and /v1/status over libevent's evhttp (see
 * health.h). The listening socket is made here by health_listen() (so a bind error comes back as
 * its errno) and handed to evhttp; evhttp, the thread's event base and the thread are made by
 * health_start() and ended by health_stop(), which closes every connection.
 *
 * Two threads, one rule: evhttp and its requests belong to the server's thread, the checks and
 * callbacks to the loop. A question for the loop travels as a job: the thread puts it on a list
 * under the lock and wakes the loop through an eventfd; the loop fills in the answer, puts the job
 * on the other list and wakes the thread through another. Only the thread touches job->req.
 * evhttp keeps a request whose client went away meanwhile until it is answered (it detaches it
 * from the connection), so every job is answered once, by the thread: at health_stop() the thread
 * stops listening, answers those still waiting (503) and runs on until every answer it queued is
 * written out (evhttp calls on_sent), at most HEALTH_DRAIN_MSEC; then, the thread ended, the loop
 * frees evhttp, which closes the connections. The heartbeat is one atomic number, written by the
 * loop's timer and read by the thread. The thread logs nothing, though log.c would take its
 * entries: when its event loop fails it leaves the error for the loop to log, with the rest of
 * what the loop knows of the health server.
 */
#define LOG_MODULE "health"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "health.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "timeutil.h"
#include "xmalloc.h"

#define HEALTH_CHECKS_MAX   16
#define HEALTH_TIMEOUT_SEC  10 /* an idle or slow connection is closed after this */
#define HEALTH_LISTEN_QUEUE 16

struct health_check {
	char *name;
	health_check_fn fn;
	void *userdata;
};

struct health_reasons {
	char *items[HEALTH_REASONS_MAX];
	size_t n;
	size_t dropped;
};

/* A question for the loop and, once the loop has made it, its answer. */
struct health_job {
	struct health_job *next;
	struct evhttp_request *req; /* the thread's: the loop never touches it */
	void (*serve)(struct health *h, struct health_job *job); /* run on the loop */
	int code;                                                /* 0: not answered (yet) */
	const char *reason;
	const char *content_type;
	char *body; /* NULL with a code: evhttp's own error page */
	size_t size;
};

struct job_list {
	struct health_job *head, *tail;
};

struct health {
	struct event_base *base; /* the loop's */
	char *address;
	uint16_t port;
	char *version;
	struct metrics *metrics;
	struct metrics_series *ready;
	void (*refresh)(void *userdata, struct metrics *metrics);
	void (*status)(void *userdata, struct health_status *ret);
	void *userdata;
	uint64_t started_usec; /* monotonic, for the uptime */

	struct health_check checks[HEALTH_CHECKS_MAX];
	size_t n_checks;

	uint64_t beat_usec, stall_usec;
	_Atomic uint64_t beat; /* monotonic usec of the loop's last heartbeat */

	int listen_fd; /* listening, not yet evhttp's */
	uint16_t bound_port;

	/* while started */
	bool started;
	bool thread_runs;
	struct event *beat_timer; /* the loop's */
	struct event *loop_wake;  /* the loop's: jobs to answer */
	int loop_efd;
	pthread_t thread;
	struct event_base *thread_base;
	struct evhttp *http;                  /* the thread's */
	struct evhttp_bound_socket *listener; /* the thread's */
	struct event *thread_wake;            /* the thread's: answers to send, or stop */
	int thread_efd;
	unsigned sending;         /* the thread's: answers queued, not yet written */
	bool draining;            /* the thread's: stopping, answers being written */
	_Atomic int thread_error; /* the thread's event loop failed: -errno; 0 */

	pthread_mutex_t lock;
	struct job_list for_loop;   /* under lock */
	struct job_list for_thread; /* under lock */
	size_t n_jobs;              /* under lock: on either list or on the loop */
	bool stopping;              /* under lock */
};

static int parse_address(const char *address, uint16_t port, struct sockaddr_storage *ret,
                         socklen_t *ret_len);
static void reasons_run(struct health *h, struct health_reasons *reasons);
static void reasons_done(struct health_reasons *reasons);
static json_t *reasons_json(const struct health_reasons *reasons);
static void reply(struct health *h, struct evhttp_request *req, int code, const char *reason,
                  const char *content_type, const char *body, size_t size);
static void count_sending(struct health *h, struct evhttp_request *req);
static void send_error(struct health *h, struct evhttp_request *req, int code);
static void on_sent(struct evhttp_request *req, void *arg);
static void answer(struct health_job *job, int code, const char *reason, const char *content_type,
                   char *body, size_t size);
static void answer_json(struct health_job *job, int code, const char *reason, json_t *j);
static void answer_refused(struct health_job *job, const char *why);
static void serve_healthz(struct health *h, struct evhttp_request *req);
static void serve_readyz(struct health *h, struct health_job *job);
static void serve_metrics(struct health *h, struct health_job *job);
static void serve_status(struct health *h, struct health_job *job);
static json_t *time_json(int64_t t);
static void on_request(struct evhttp_request *req, void *arg);
static void on_beat(evutil_socket_t fd, short what, void *arg);
static void on_loop_wake(evutil_socket_t fd, short what, void *arg);
static void on_thread_wake(evutil_socket_t fd, short what, void *arg);
static void *thread_main(void *arg);
static void job_push(struct job_list *l, struct health_job *job);
static void job_send(struct health *h, struct health_job *job);
static void job_reply(struct health *h, struct health_job *job);
static void jobs_send_all(struct health *h, struct health_job *jobs, const char *why);
static void thread_report(struct health *h);
static void wake(int efd);
static void drain(int efd);

/* Make a server; it listens once started. */
int
health_new(struct event_base *base, const struct health_options *options, struct health **ret)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct health *h;
	int r;

	if (!base || !options || !ret)
		return -EINVAL;
	r = parse_address(options->address ? options->address : "127.0.0.1", options->port, &ss,
	                  &len);
	if (r < 0)
		return r;

	h = xcalloc(1, sizeof(*h));
	h->base = base;
	h->address = xstrdup(options->address ? options->address : "127.0.0.1");
	h->port = options->port;
	h->version = xstrdup(options->version ? options->version : "unknown");
	h->metrics = options->metrics;
	h->refresh = options->refresh;
	h->status = options->status;
	h->userdata = options->userdata;
	h->started_usec = now_monotonic_usec();
	h->beat_usec = options->beat_usec ? options->beat_usec : HEALTH_BEAT_MSEC * USEC_PER_MSEC;
	h->stall_usec =
	        options->stall_usec ? options->stall_usec : HEALTH_STALL_MSEC * USEC_PER_MSEC;
	h->loop_efd = h->thread_efd = h->listen_fd = -1;
	pthread_mutex_init(&h->lock, NULL);
	if (h->metrics) {
		struct metrics_family *f;

		r = metrics_add_family(
		        h->metrics, METRICS_GAUGE, HEALTH_READY_METRIC,
		        "1 when the daemon is ready (GET /readyz answers 200), else 0.", NULL, NULL,
		        0, &f);
		if (r < 0) {
			health_free(h);
			return r;
		}
		h->ready = metrics_get_series(f, NULL);
	}
	*ret = h;
	return 0;
}

/* Add a readiness check. */
int
health_add_check(struct health *h, const char *name, health_check_fn fn, void *userdata)
{
	assert(h && fn);
	if (h->n_checks >= HEALTH_CHECKS_MAX)
		return -E2BIG;
	h->checks[h->n_checks++] = (struct health_check){
	        .name = xstrdup(name ? name : "?"),
	        .fn = fn,
	        .userdata = userdata,
	};
	return 0;
}

/* Bind and listen; the socket waits for health_start(). */
int
health_listen(struct health *h)
{
	struct sockaddr_storage ss;
	socklen_t len;
	_cleanup_close_ int fd = -1;
	int one = 1, r;

	assert(h);
	if (h->started || h->listen_fd >= 0)
		return 0;
	r = parse_address(h->address, h->port, &ss, &len);
	if (r < 0)
		return r;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, HEALTH_LISTEN_QUEUE) < 0)
		return -errno;
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	h->bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
	                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	h->listen_fd = TAKE_FD(fd);
	return 0;
}

/* Listen, hand the socket to a new evhttp on the thread's base, start the thread. */
int
health_start(struct health *h)
{
	const char *what;
	struct timeval tv;
	sigset_t all, old;
	int r;

	assert(h);
	if (h->started)
		return 0;
	r = health_listen(h);
	if (r < 0)
		return r;

	/* from here on health_stop() undoes whatever was made */
	h->started = true;
	h->sending = 0;
	h->draining = false;
	atomic_store_explicit(&h->thread_error, 0, memory_order_relaxed);
	what = "eventfd()";
	h->loop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->loop_efd < 0) {
		r = -errno;
		goto fail;
	}
	h->thread_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->thread_efd < 0) {
		r = -errno;
		goto fail;
	}
	r = -ENOMEM;
	what = "event_base_new()";
	h->thread_base = event_base_new();
	if (!h->thread_base)
		goto fail;
	what = "event_new()";
	h->thread_wake =
	        event_new(h->thread_base, h->thread_efd, EV_READ | EV_PERSIST, on_thread_wake, h);
	h->loop_wake = event_new(h->base, h->loop_efd, EV_READ | EV_PERSIST, on_loop_wake, h);
	h->beat_timer = event_new(h->base, -1, EV_PERSIST, on_beat, h);
	if (!h->thread_wake || !h->loop_wake || !h->beat_timer)
		goto fail;
	r = -EIO;
	what = "event_add()";
	tv = (struct timeval){.tv_sec = (time_t)(h->beat_usec / USEC_PER_SEC),
	                      .tv_usec = (suseconds_t)(h->beat_usec % USEC_PER_SEC)};
	if (event_add(h->thread_wake, NULL) < 0 || event_add(h->loop_wake, NULL) < 0 ||
	    event_add(h->beat_timer, &tv) < 0)
		goto fail;

	r = -ENOMEM;
	what = "evhttp_new()";
	h->http = evhttp_new(h->thread_base);
	if (!h->http)
		goto fail;
	/* every method reaches on_request, which answers 405 (evhttp itself would say 501) */
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(h->http, HEALTH_MAX_HEADERS);
	evhttp_set_max_body_size(h->http, HEALTH_MAX_BODY);
	evhttp_set_timeout(h->http, HEALTH_TIMEOUT_SEC);
	evhttp_set_gencb(h->http, on_request, h);
	r = -EIO;
	what = "evhttp_accept_socket_with_handle()";
	h->listener = evhttp_accept_socket_with_handle(h->http, h->listen_fd);
	if (!h->listener)
		goto fail;
	h->listen_fd = -1; /* evhttp closes it */

	atomic_store_explicit(&h->beat, now_monotonic_usec(), memory_order_relaxed);
	/* signals stay with the loop thread: the thread starts with all of them blocked */
	what = "pthread_create()";
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&h->thread, NULL, thread_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0)
		goto fail;
	h->thread_runs = true;
	(void)pthread_setname_np(h->thread, "azs-health"); /* for top -H, perf, /proc */
	log_debug("listening on %s port %u", h->address, h->bound_port);
	return 0;

fail:
	log_error_errno(r, "cannot start the health server on %s port %u: %s failed: %m",
	                h->address, h->bound_port, what);
	health_stop(h);
	return r;
}

/*
 * Stop: the thread stops listening, answers what still waits and writes out the answers it
 * made, and ends; then evhttp is freed here (closing every connection) and nothing of the
 * server is left. Also after the thread's loop failed: what it left is answered and freed here.
 */
void
health_stop(struct health *h)
{
	struct health_job *left;

	if (!h)
		return;
	if (!h->started) {
		/* listening only (health_listen) */
		if (h->listen_fd >= 0)
			close(h->listen_fd);
		h->listen_fd = -1;
		h->bound_port = 0;
		return;
	}
	if (h->thread_runs) {
		pthread_mutex_lock(&h->lock);
		h->stopping = true;
		pthread_mutex_unlock(&h->lock);
		wake(h->thread_efd);
		pthread_join(h->thread, NULL);
		thread_report(h);
	}
	/*
	 * The thread has ended: what it did not answer (its loop failed, or it never ran) is
	 * answered now, for the requests' sake; evhttp_free() drops it with the connections.
	 */
	pthread_mutex_lock(&h->lock);
	left = h->for_thread.head;
	if (h->for_thread.tail)
		h->for_thread.tail->next = h->for_loop.head;
	else
		left = h->for_loop.head;
	h->for_thread = h->for_loop = (struct job_list){0};
	pthread_mutex_unlock(&h->lock);
	jobs_send_all(h, left, "stopping");
	if (h->http)
		evhttp_free(h->http);
	h->http = NULL;
	h->listener = NULL;
	if (h->listen_fd >= 0)
		close(h->listen_fd);
	h->listen_fd = -1;
	if (h->beat_timer)
		event_free(h->beat_timer);
	if (h->loop_wake)
		event_free(h->loop_wake);
	if (h->thread_wake)
		event_free(h->thread_wake);
	if (h->thread_base)
		event_base_free(h->thread_base);
	h->beat_timer = h->loop_wake = h->thread_wake = NULL;
	h->thread_base = NULL;
	if (h->loop_efd >= 0)
		close(h->loop_efd);
	if (h->thread_efd >= 0)
		close(h->thread_efd);
	h->loop_efd = h->thread_efd = -1;
	assert(!h->for_loop.head && !h->for_thread.head && h->n_jobs == 0);
	h->stopping = false;
	h->thread_runs = false;
	h->started = false;
	h->bound_port = 0;
}

/* Stop and free. */
struct health *
health_free(struct health *h)
{
	if (!h)
		return NULL;
	health_stop(h);
	for (size_t i = 0; i < h->n_checks; i++)
		free(h->checks[i].name);
	pthread_mutex_destroy(&h->lock);
	free(h->address);
	free(h->version);
	free(h);
	return NULL;
}

/* The port listened on. */
uint16_t
health_get_port(const struct health *h)
{
	return h ? h->bound_port : 0;
}

/* Questions on the lists or on the loop. */
size_t
health_get_waiting(struct health *h)
{
	size_t n;

	assert(h);
	pthread_mutex_lock(&h->lock);
	n = h->n_jobs;
	pthread_mutex_unlock(&h->lock);
	return n;
}

/* Run every check; hand the reasons over as strings. */
bool
health_is_ready(struct health *h, char ***ret_reasons)
{
	struct health_reasons reasons = {0};
	bool ready;

	assert(h);
	reasons_run(h, &reasons);
	ready = reasons.n == 0 && reasons.dropped == 0;
	if (ret_reasons) {
		char **strv = xcalloc(reasons.n + 1, sizeof(char *));

		for (size_t i = 0; i < reasons.n; i++)
			strv[i] = TAKE_PTR(reasons.items[i]);
		*ret_reasons = strv;
	}
	reasons_done(&reasons);
	return ready;
}

/* Free a NULL-terminated array of strings. */
char **
health_strv_free(char **strv)
{
	if (!strv)
		return NULL;
	for (char **s = strv; *s; s++)
		free(*s);
	free(strv);
	return NULL;
}

/* Add a reason, cut at HEALTH_REASON_MAX bytes on a UTF-8 boundary. */
void
health_reasons_add(struct health_reasons *reasons, const char *format, ...)
{
	char buf[HEALTH_REASON_MAX + 1];
	va_list ap;
	int n;

	assert(reasons && format);
	if (reasons->n >= HEALTH_REASONS_MAX) {
		reasons->dropped++;
		return;
	}
	va_start(ap, format);
	n = vsnprintf(buf, sizeof(buf), format, ap);
	va_end(ap);
	if (n < 0)
		snprintf(buf, sizeof(buf), "%s", "not ready");
	else if ((size_t)n > HEALTH_REASON_MAX) {
		size_t len = HEALTH_REASON_MAX;

		/* do not leave half a character at the end */
		while (len > 0 && ((unsigned char)buf[len] & 0xC0) == 0x80)
			len--;
		buf[len] = '\0';
	}
	reasons->items[reasons->n++] = xstrdup(buf);
}

/* A numeric address (IPv6 may be in brackets) and a port as a socket address. */
static int
parse_address(const char *address, uint16_t port, struct sockaddr_storage *ret, socklen_t *ret_len)
{
	char host[INET6_ADDRSTRLEN + 2];
	size_t len = strlen(address);

	if (len >= 2 && address[0] == '[' && address[len - 1] == ']' && len - 2 < sizeof(host)) {
		memcpy(host, address + 1, len - 2);
		host[len - 2] = '\0';
	} else if (len < sizeof(host))
		memcpy(host, address, len + 1);
	else
		return -EINVAL;

	memset(ret, 0, sizeof(*ret));
	{
		struct sockaddr_in *sin = (struct sockaddr_in *)ret;

		if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons(port);
			*ret_len = sizeof(*sin);
			return 0;
		}
	}
	{
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ret;

		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons(port);
			*ret_len = sizeof(*sin6);
			return 0;
		}
	}
	return -EINVAL;
}

/* Ask every check; set the ready gauge from the answer. */
static void
reasons_run(struct health *h, struct health_reasons *reasons)
{
	for (size_t i = 0; i < h->n_checks; i++) {
		size_t before = reasons->n + reasons->dropped;

		h->checks[i].fn(h->checks[i].userdata, reasons);
		if (reasons->n + reasons->dropped > before)
			log_debug("not ready on %s's account", h->checks[i].name);
	}
	metrics_gauge_set(h->ready, reasons->n == 0 && reasons->dropped == 0 ? 1 : 0);
}

/* Free the reasons' strings. */
static void
reasons_done(struct health_reasons *reasons)
{
	for (size_t i = 0; i < reasons->n; i++)
		free(reasons->items[i]);
	reasons->n = 0;
}

/* The reasons as a JSON array; one that is not UTF-8 is shown as such, not dropped. */
static json_t *
reasons_json(const struct health_reasons *reasons)
{
	json_t *a = json_array();

	if (!a)
		return NULL;
	for (size_t i = 0; i < reasons->n; i++) {
		json_t *s = json_string(reasons->items[i]);

		if (!s)
			s = json_string("(a reason that is not valid UTF-8)");
		json_array_append_new(a, s);
	}
	if (reasons->dropped > 0) {
		char more[64];

		snprintf(more, sizeof(more), "and %zu more", reasons->dropped);
		json_array_append_new(a, json_string(more));
	}
	return a;
}

/*
 * Note an answer about to be queued on its connection, so that a stop waits until evhttp has
 * written it (on_sent). A request whose client went away has no connection: evhttp frees it at
 * once, nothing is written.
 */
static void
count_sending(struct health *h, struct evhttp_request *req)
{
	if (!evhttp_request_get_connection(req))
		return;
	evhttp_request_set_on_complete_cb(req, on_sent, h);
	h->sending++;
}

/* On the thread: an answer is written out (evhttp frees the request after this). */
static void
on_sent(_unused_ struct evhttp_request *req, void *arg)
{
	struct health *h = arg;

	assert(h->sending > 0);
	h->sending--;
	if (h->draining && h->sending == 0)
		event_base_loopbreak(h->thread_base);
}

/* evhttp's own error page. */
static void
send_error(struct health *h, struct evhttp_request *req, int code)
{
	count_sending(h, req);
	evhttp_send_error(req, code, NULL);
}

/* Send an answer with a body; nothing of it is cached by a proxy. */
static void
reply(struct health *h, struct evhttp_request *req, int code, const char *reason,
      const char *content_type, const char *body, size_t size)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		send_error(h, req, HTTP_INTERNAL);
		return;
	}
	evhttp_add_header(headers, "Content-Type", content_type);
	evhttp_add_header(headers, "Cache-Control", "no-store");
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	if (evbuffer_add(b, body, size) < 0) {
		evbuffer_free(b);
		send_error(h, req, HTTP_INTERNAL);
		return;
	}
	count_sending(h, req);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

/* The loop's answer to a job: the thread sends it (takes body). */
static void
answer(struct health_job *job, int code, const char *reason, const char *content_type, char *body,
       size_t size)
{
	job->code = code;
	job->reason = reason;
	job->content_type = content_type;
	job->body = body;
	job->size = size;
}

/* A JSON answer (takes j). */
static void
answer_json(struct health_job *job, int code, const char *reason, json_t *j)
{
	char *text = NULL;

	if (j)
		text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (!text) {
		answer(job, HTTP_INTERNAL, NULL, NULL, NULL, 0);
		return;
	}
	answer(job, code, reason, HEALTH_CONTENT_JSON, text, strlen(text));
}

/*
 * A 503 made without the loop, in the shape of the path's answer: /readyz as not ready with why
 * as the reason, /v1/status as a JSON error object, /metrics as text. Made on the thread with a
 * format: why ("busy: ...", "stopping") has no character that JSON escapes.
 */
static void
answer_refused(struct health_job *job, const char *why)
{
	const char *type = HEALTH_CONTENT_JSON;
	char *text;

	if (job->serve == serve_readyz)
		text = xasprintf("{\"ready\":false,\"reasons\":[\"%s\"]}", why);
	else if (job->serve == serve_status)
		text = xasprintf("{\"error\":\"%s\"}", why);
	else {
		text = xasprintf("%s\n", why);
		type = HEALTH_CONTENT_TEXT;
	}
	answer(job, HTTP_SERVUNAVAIL, "Service Unavailable", type, text, strlen(text));
}

/* True while a heartbeat is fresh (health.h). */
bool
health_beat_fresh(uint64_t beat_usec, uint64_t now_usec, uint64_t stall_usec)
{
	return now_usec <= beat_usec || now_usec - beat_usec < stall_usec;
}

/* GET /healthz, on the thread: 200 while the loop's heartbeat is fresh. */
static void
serve_healthz(struct health *h, struct evhttp_request *req)
{
	uint64_t beat = atomic_load_explicit(&h->beat, memory_order_relaxed);
	uint64_t now = now_monotonic_usec();
	char text[96];
	int n;

	if (health_beat_fresh(beat, now, h->stall_usec)) {
		reply(h, req, HTTP_OK, "OK", HEALTH_CONTENT_TEXT, "ok\n", 3);
		return;
	}
	n = snprintf(text, sizeof(text), "stalled: the loop has not turned for %" PRIu64 " ms\n",
	             (now - beat) / USEC_PER_MSEC);
	reply(h, req, HTTP_SERVUNAVAIL, "Service Unavailable", HEALTH_CONTENT_TEXT, text,
	      (size_t)MIN(n, (int)sizeof(text) - 1));
}

/* GET /readyz: 200 or 503 with the reasons. */
static void
serve_readyz(struct health *h, struct health_job *job)
{
	struct health_reasons reasons = {0};
	bool ready;
	json_t *j;

	reasons_run(h, &reasons);
	ready = reasons.n == 0 && reasons.dropped == 0;
	j = json_pack("{s:b, s:o*}", "ready", ready, "reasons", reasons_json(&reasons));
	reasons_done(&reasons);
	answer_json(job, ready ? HTTP_OK : HTTP_SERVUNAVAIL, ready ? "OK" : "Service Unavailable",
	            j);
}

/* GET /metrics: refresh the gauges that are read, not counted, and render. */
static void
serve_metrics(struct health *h, struct health_job *job)
{
	struct health_reasons reasons = {0};
	char *text = NULL;
	size_t size = 0;
	int r;

	if (h->refresh)
		h->refresh(h->userdata, h->metrics);
	reasons_run(h, &reasons); /* azs_usaged_ready */
	reasons_done(&reasons);
	r = metrics_render(h->metrics, &text, &size);
	if (r < 0) {
		log_debug_errno(r, "cannot render the metrics: %m");
		answer(job, HTTP_INTERNAL, NULL, NULL, NULL, 0);
		return;
	}
	answer(job, HTTP_OK, "OK", METRICS_CONTENT_TYPE, text, size);
}

/* GET /v1/status: the daemon in one JSON object. */
static void
serve_status(struct health *h, struct health_job *job)
{
	struct health_status st = {
	        .oldest_pending_seconds = -1,
	        .registration_age_seconds = -1,
	};
	struct health_reasons reasons = {0};
	json_t *records, *j;
	bool ready;

	if (h->status)
		h->status(h->userdata, &st);
	reasons_run(h, &reasons);
	ready = reasons.n == 0 && reasons.dropped == 0;

	records = json_object();
	for (size_t i = 0; records && i < st.n_counts && i < HEALTH_COUNTS_MAX; i++)
		if (st.counts[i].state)
			json_object_set_new(records, st.counts[i].state,
			                    json_integer((json_int_t)st.counts[i].count));
	j = json_pack("{s:s, s:I, s:b, s:o*, s:o*, s:o, s:o, s:o, s:o, s:{s:o, s:o}}", "version",
	              h->version, "uptime_seconds",
	              (json_int_t)((now_monotonic_usec() - h->started_usec) / USEC_PER_SEC),
	              "ready", ready, "reasons", reasons_json(&reasons), "records", records,
	              "oldest_pending_seconds",
	              st.oldest_pending_seconds >= 0 ? json_integer(st.oldest_pending_seconds)
	                                             : json_null(),
	              "cursor_hour", time_json(st.cursor), "cursor_timestamp",
	              st.cursor > 0 ? json_integer(st.cursor) : json_null(),
	              "registration_age_seconds",
	              st.registration_age_seconds >= 0 ? json_integer(st.registration_age_seconds)
	                                               : json_null(),
	              "last_success", "collect", time_json(st.last_collect_success), "forward",
	              time_json(st.last_forward_success));
	reasons_done(&reasons);
	answer_json(job, HTTP_OK, "OK", j);
}

/* An epoch time as RFC 3339 text, or null for 0 (never). */
static json_t *
time_json(int64_t t)
{
	char buf[TIME_RFC3339_LEN + 1];

	if (t <= 0)
		return json_null();
	return json_string(time_format_rfc3339(t, buf));
}

/*
 * Route a request, on the thread: /healthz is answered here, the other paths are handed to the
 * loop; unknown paths 404, other methods 405.
 */
static void
on_request(struct evhttp_request *req, void *arg)
{
	static const struct {
		const char *path;
		void (*serve)(struct health *h, struct health_job *job); /* NULL: /healthz */
	} routes[] = {
	        {"/healthz", NULL},
	        {"/readyz", serve_readyz},
	        {"/metrics", serve_metrics},
	        {"/v1/status", serve_status},
	};
	struct health *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	for (size_t i = 0; path && i < ARRAY_SIZE(routes); i++) {
		struct health_job *job;
		bool busy;

		if (strcmp(path, routes[i].path) != 0)
			continue;
		if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
			/* evhttp_send_error() would drop the Allow header */
			evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
			reply(h, req, 405, "Method Not Allowed", HEALTH_CONTENT_TEXT,
			      "method not allowed\n", 19);
			return;
		}
		if (!routes[i].serve) {
			serve_healthz(h, req);
			return;
		}
		if (routes[i].serve == serve_metrics && !h->metrics)
			break;
		job = xcalloc(1, sizeof(*job));
		job->req = req;
		job->serve = routes[i].serve;
		if (h->draining) {
			/* a question on a kept-alive connection while the server stops */
			evhttp_add_header(evhttp_request_get_output_headers(req), "Connection",
			                  "close");
			answer_refused(job, "stopping");
			job_reply(h, job);
			return;
		}
		pthread_mutex_lock(&h->lock);
		busy = h->n_jobs >= HEALTH_JOBS_MAX;
		if (!busy) {
			h->n_jobs++;
			job_push(&h->for_loop, job);
		}
		pthread_mutex_unlock(&h->lock);
		if (busy) {
			char why[64];

			snprintf(why, sizeof(why), "busy: %d questions wait for the loop",
			         HEALTH_JOBS_MAX);
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
			                  "1");
			answer_refused(job, why);
			job_reply(h, job);
			return;
		}
		wake(h->loop_efd);
		return;
	}
	reply(h, req, HTTP_NOTFOUND, "Not Found", HEALTH_CONTENT_TEXT, "not found\n", 10);
}

/* The loop's heartbeat. */
static void
on_beat(_unused_ evutil_socket_t fd, _unused_ short what, void *arg)
{
	struct health *h = arg;

	atomic_store_explicit(&h->beat, now_monotonic_usec(), memory_order_relaxed);
}

/* On the loop: answer the jobs the thread handed over, and hand them back. */
static void
on_loop_wake(_unused_ evutil_socket_t fd, _unused_ short what, void *arg)
{
	struct health *h = arg;
	struct job_list done = {0};
	struct health_job *job;

	drain(h->loop_efd);
	thread_report(h);
	/* the loop turns: as good as a beat */
	atomic_store_explicit(&h->beat, now_monotonic_usec(), memory_order_relaxed);
	pthread_mutex_lock(&h->lock);
	job = h->for_loop.head;
	h->for_loop = (struct job_list){0};
	pthread_mutex_unlock(&h->lock);
	while (job) {
		struct health_job *next = job->next;

		job->serve(h, job);
		job_push(&done, job);
		job = next;
	}
	if (!done.head)
		return;
	pthread_mutex_lock(&h->lock);
	if (h->for_thread.tail)
		h->for_thread.tail->next = done.head;
	else
		h->for_thread.head = done.head;
	h->for_thread.tail = done.tail;
	pthread_mutex_unlock(&h->lock);
	wake(h->thread_efd);
}

/*
 * On the thread: send the loop's answers. When stopping: stop listening, answer what the loop
 * did not (503), and end the thread's loop once every answer is written out, or after
 * HEALTH_DRAIN_MSEC at most (a client that does not read); health_stop() then closes the
 * connections.
 */
static void
on_thread_wake(_unused_ evutil_socket_t fd, _unused_ short what, void *arg)
{
	struct health *h = arg;
	struct health_job *answered, *left = NULL;
	bool stopping;

	drain(h->thread_efd);
	pthread_mutex_lock(&h->lock);
	answered = h->for_thread.head;
	h->for_thread = (struct job_list){0};
	stopping = h->stopping;
	if (stopping) {
		left = h->for_loop.head;
		h->for_loop = (struct job_list){0};
	}
	pthread_mutex_unlock(&h->lock);

	jobs_send_all(h, answered, "stopping"); /* all answered by the loop */
	if (!stopping || h->draining)
		return;
	h->draining = true;
	evhttp_del_accept_socket(h->http, h->listener); /* closes the socket */
	h->listener = NULL;
	jobs_send_all(h, left, "stopping");
	if (h->sending == 0)
		event_base_loopbreak(h->thread_base);
	else
		event_base_loopexit(h->thread_base, &(struct timeval){.tv_usec = HEALTH_DRAIN_MSEC *
		                                                                 USEC_PER_MSEC});
}

/*
 * Send each job of a list; one not answered by the loop is answered 503 why (stopping: with
 * Connection: close).
 */
static void
jobs_send_all(struct health *h, struct health_job *jobs, const char *why)
{
	while (jobs) {
		struct health_job *job = jobs;

		jobs = job->next;
		if (!job->code) {
			evhttp_add_header(evhttp_request_get_output_headers(job->req), "Connection",
			                  "close");
			answer_refused(job, why);
		}
		job_send(h, job);
	}
}

/* Send a job's answer (which frees the request) and free the job. */
static void
job_reply(struct health *h, struct health_job *job)
{
	if (job->body)
		reply(h, job->req, job->code, job->reason, job->content_type, job->body, job->size);
	else
		send_error(h, job->req, job->code);
	free(job->body);
	free(job);
}

/*
 * Send the answer of a job that waited for the loop and free it. The body is malloc's: the loop
 * rendered it outside any jsonarena.
 */
static void
job_send(struct health *h, struct health_job *job)
{
	job_reply(h, job);
	pthread_mutex_lock(&h->lock);
	h->n_jobs--;
	pthread_mutex_unlock(&h->lock);
}

static void
job_push(struct job_list *l, struct health_job *job)
{
	job->next = NULL;
	if (l->tail)
		l->tail->next = job;
	else
		l->head = job;
	l->tail = job;
}

/*
 * The server's thread: its own loop, until health_stop(). When the loop fails (or ends unasked)
 * the error is left for the loop thread to log (thread_report), which it does at its next turn.
 */
static void *
thread_main(void *arg)
{
	struct health *h = arg;
	bool stopping;
	int r;

	errno = 0;
	r = event_base_dispatch(h->thread_base);
	pthread_mutex_lock(&h->lock);
	stopping = h->stopping;
	pthread_mutex_unlock(&h->lock);
	if (r < 0 || !stopping) {
		atomic_store_explicit(&h->thread_error, r < 0 && errno > 0 ? -errno : -EIO,
		                      memory_order_relaxed);
		wake(h->loop_efd);
	}
	return NULL;
}

/* On the loop: log that the thread's event loop failed, once. */
static void
thread_report(struct health *h)
{
	int r = atomic_exchange_explicit(&h->thread_error, 0, memory_order_relaxed);

	if (r < 0)
		log_error_errno(r,
		                "the health server's thread ended, its event loop failed: %m; "
		                "nothing on %s port %u answers until the daemon restarts",
		                h->address, h->bound_port);
}

static void
wake(int efd)
{
	(void)eventfd_write(efd, 1);
}

static void
drain(int efd)
{
	eventfd_t n;

	(void)eventfd_read(efd, &n);
}
