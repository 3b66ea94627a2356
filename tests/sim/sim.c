/*
 * azs-sim: a faithful Azure simulator for the tests, the demo and the benchmark of azs-usaged.
 *
 * One process, one libevent evhttp on one loopback port, HTTPS through bufferevent_openssl. It
 * plays, at once:
 *   - the stamp:  GET /metadata/endpoints, the provider usage API
 *                 (…/Microsoft.Commerce.Admin/subscriberUsageAggregates) and the admin
 *                 user-subscriptions API (…/Microsoft.Subscriptions.Admin/subscriptions);
 *   - identity:   POST /{tenant}/oauth2/token (Azure AD) and, on an AD FS stamp,
 *                 POST /adfs/oauth2/token (AD FS, the only issuer of the stack audience then);
 *   - ARM:        the registration, its customerSubscriptions list, PUT and DELETE of one;
 *   - Commerce:   POST {commerce.path} (default /api/usageEvents/batch), with a SQLite ledger;
 *   - control:    /_sim/... (loopback only, no token): world, faults, clock, ledger summary,
 *                 expected events, request log, reset.
 * The world comes from a JSON scenario and its seed (sim-world.c); faults come from the scenario
 * and POST /_sim/faults. Unknown paths answer like ARM: 404 {"error":{"code":…,"message":…}}.
 *
 * Fault plan: a list of rules, evaluated in order, the first that fires wins:
 *   {"endpoint": "metadata|token|usage|subscriptions|arm|commerce|any", "method", "path",
 *    "status": 503, "code", "message", "retryAfter": "2" | "http-date:+5",
 *    "action": "status|timeout|reset|slow|delay|malformed|events|poison|nextLinkLoop|
 *               changeQuantity|notReady|lateRecords|expireToken|nextLinkAuthority|
 *               deleteSubscriptions|omitResults|reorderResults",
 *    "times": N, "after": N, "rate": 0..1, "delayMs", "events": [usageEventId…], "hour", "count",
 *    "delta", "body", "authority", "subscriptions": [id…], "afterProcessing": true}
 * A matching request counts as seen; the rule fires once seen > after, while fired < times and
 * (with rate) when the seeded generator draws below rate. status/timeout/reset/slow/delay/
 * malformed are applied here around the handler (timeout/reset after it with afterProcessing);
 * the others are taken by the handlers: events/poison/omitResults/reorderResults (Commerce),
 * nextLinkLoop/changeQuantity/notReady/lateRecords/expireToken (usage), nextLinkAuthority
 * (usage, subscriptions), deleteSubscriptions (subscriptions). README.md has the details.
 *
 * ARM answers customerSubscriptions PUT with 201 and no body and DELETE with 204, as
 * documented; POST /_sim/arm (or the scenario's armAnswers) picks the other documented forms.
 *
 * Speed: usage records are formatted once per generated hour and pages are concatenations; the
 * Commerce body is parsed flat in place; the ledger is written in one transaction per batch; the
 * CPU time of each request is added to its endpoint (/_sim/ledger/summary reports it).
 *
 * Clocks: the usage API (RequestEndTimeIsInFuture, which hours are expected) runs on the
 * simulated clock (--now fixes it; POST /_sim/clock sets or advances it; without --now it is
 * real time). Tokens, JWT checks, Retry-After dates and messageTime use the real clock.
 *
 * Expected charges are computed from the registration as it is when the summary is asked for.
 *
 * Usage: azs-sim --listen 127.0.0.1:0 --cert server.pem --key server.key
 *                --scenario scenario.json --state-dir DIR [--port-file FILE] [--now RFC3339]
 *                [--seed N] [--records-per-hour N] [--hours N]
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "hash.h"
#include "sim.h"
#include "timeutil.h"
#include "xmalloc.h"

#define USAGE_API_VERSION "2015-06-01-preview"
#define SUBS_API_VERSION  "2015-11-01"
#define MAX_SEGMENTS      16

/* A reply held back by a fault (delay, slow body, reset). */
struct pending {
	struct sim *s;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct event *timer;
	struct evbuffer *body;
	int status;
	enum sim_action action;
	unsigned delay_ms;
	size_t chunk;
	bool started;
};

/* The api-version values each endpoint accepts (NULL-terminated). */
static const char *const metadata_versions[] = {"2015-01-01", NULL};
static const char *const usage_versions[] = {USAGE_API_VERSION, NULL};
static const char *const subs_versions[] = {SUBS_API_VERSION, NULL};
static const char *const registration_versions[] = {"2017-06-01", "2020-06-01-preview",
                                                    "2022-06-01", NULL};

static const char *const action_names[SIM_ACT_MAX] = {
        [SIM_ACT_STATUS] = "status",
        [SIM_ACT_TIMEOUT] = "timeout",
        [SIM_ACT_RESET] = "reset",
        [SIM_ACT_SLOW] = "slow",
        [SIM_ACT_DELAY] = "delay",
        [SIM_ACT_MALFORMED] = "malformed",
        [SIM_ACT_EVENTS] = "events",
        [SIM_ACT_POISON] = "poison",
        [SIM_ACT_NEXTLINK_LOOP] = "nextLinkLoop",
        [SIM_ACT_CHANGE_QUANTITY] = "changeQuantity",
        [SIM_ACT_NOT_READY] = "notReady",
        [SIM_ACT_LATE_RECORDS] = "lateRecords",
        [SIM_ACT_EXPIRE_TOKEN] = "expireToken",
        [SIM_ACT_NEXTLINK_AUTHORITY] = "nextLinkAuthority",
        [SIM_ACT_DELETE_SUBSCRIPTIONS] = "deleteSubscriptions",
        [SIM_ACT_OMIT_RESULTS] = "omitResults",
        [SIM_ACT_REORDER_RESULTS] = "reorderResults",
};

static const char *const put_answers[] = {
        [SIM_PUT_201_EMPTY] = "201-empty",
        [SIM_PUT_201_BODY] = "201-body",
        [SIM_PUT_200_BODY] = "200-body",
        [SIM_PUT_200_EMPTY] = "200-empty",
};
static const char *const delete_answers[] = {
        [SIM_DELETE_204] = "204",
        [SIM_DELETE_200_204] = "200-204",
};
static const char *const list_answers[] = {
        [SIM_LIST_VALUE] = "value",
        [SIM_LIST_NONE] = "none",
        [SIM_LIST_OBJECT] = "object",
};

static const char *const endpoint_names[SIM_EP_MAX] = {
        "metadata", "token", "usage", "subscriptions", "arm", "commerce", "control", "unknown",
};

static const struct {
	const char *code;
	const char *message;
} arm_messages[] = {
        {"RegistrationNotFound", "The provided registration was not found."},
        {"UnauthorizedCspRegistration",
         "The provided registration name is not approved to use multi-tenancy."},
        {"CustomerSubscriptionsNotAllowed",
         "Customer subscriptions are not allowed for registrations with the Capacity billing "
         "model."},
        {"BadCustomerSubscriptionId", "The provided customer subscription id is not valid."},
        {"InvalidCustomerSubscriptionId", "The provided customer subscription id is invalid."},
        {"CustomerSubscriptionNotFound", "The customer subscription was not found."},
        {"InvalidCSPSubscription", "The provided subscription is not a CSP subscription."},
        {"MetadataResolverBadGatewayError", "The metadata resolver returned a bad gateway error."},
        {"SubscriberIdIsNotDirectTenant",
         "The subscriber is not a direct tenant of the provider: its usage is reported to its "
         "own provider."},
        {"ProcessingNotComplete",
         "Usage data processing is not complete for the requested reported time range. Try "
         "again later."},
        {"ExpiredContinuationToken",
         "The continuation token has expired. Start the query again without it."},
        {"RequestEndTimeIsInFuture",
         "The value for ReportedEndTime is in the future. Values in the future are not allowed "
         "for this argument."},
        {"ServiceUnavailable",
         "A retryable error occurred because the service is busy or the call is being throttled."},
        {"ExpiredAuthenticationToken",
         "The access token expiry UTC time is earlier than current UTC time."},
        {"InvalidAuthenticationToken", "The access token is invalid."},
};

static void on_request(struct evhttp_request *req, void *arg);
static struct bufferevent *on_bev(struct event_base *base, void *arg);
static void on_signal(evutil_socket_t fd, short what, void *arg);
static int classify(struct sim *s, const char *path, char **seg, int nseg);
static void send_response(struct evhttp_request *req, struct sim_response *r);
static void fault_reply(struct sim_rule *rule, int ep, const char *path, struct sim_response *r);
static struct sim_rule *fault_generic(struct sim *s, int ep, struct evhttp_request *req,
                                      const char *path);
static bool rule_fires(struct sim *s, struct sim_rule *rule);
static int delta_parse(const char *text, sim_i128 *ret);
static sim_i128 pow10_i128(unsigned n);
static sim_u128 changed_quantity(sim_u128 quantity, sim_i128 delta);
static void next_link_authority(struct sim *s, struct evhttp_request *req, int ep,
                                struct evbuffer *b);
static void not_ready(struct sim_rule *rule, struct sim_response *r);
static char *retry_after_value(const struct sim_rule *rule);
static int arm_answers_load(struct sim *s, json_t *o, char **ret_error);
static json_t *arm_answers_dump(const struct sim *s);
static int answer_index(const char *text, const char *const *names, size_t n);
static int faults_load(struct sim *s, json_t *plan, char **ret_error);
static void faults_free(struct sim *s);
static json_t *faults_dump(const struct sim *s);
static void hold(struct sim *s, struct evhttp_request *req, struct sim_response *r,
                 enum sim_action action, unsigned delay_ms);
static void on_pending_timer(evutil_socket_t fd, short what, void *arg);
static void on_pending_close(struct evhttp_connection *evcon, void *arg);
static void pending_free(struct pending *p);
static void handle_metadata(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                            struct sim_response *r);
static void handle_usage(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                         const char *path, char **seg, struct sim_response *r);
static void handle_subscriptions(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                                 const char *path, char **seg, struct sim_response *r);
static void handle_arm(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                       const char *path, char **seg, int nseg, struct sim_response *r);
static void handle_control(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                           const char *path, struct sim_response *r);
static void customer_entry(struct sim *s, const struct sim_tenant *t, struct evbuffer *b);
static bool subscription_known(const char *id, const char *expected, struct sim_response *r);
static bool api_version_ok(const char *version, const char *const *supported,
                           struct sim_response *r);
static const char *arm_message(const char *code);
static const char *host_of(struct evhttp_request *req);
static void append_encoded(struct evbuffer *b, const char *s);
static json_t *body_json(struct evhttp_request *req);
static bool is_loopback(struct evhttp_request *req);
static void log_request(struct sim *s, struct evhttp_request *req, int ep, const char *path,
                        int status, const char *action, unsigned events);
static void log_reset(struct sim *s);
static uint64_t thread_cpu_ns(void);
static int write_port_file(const char *path, int port);
static int load_scenario(const char *path, json_t **ret);
static void help(void);

static char *authority;

/* s, or "" for NULL. */
static inline const char *
str_or_empty(const char *s)
{
	return s ? s : "";
} /* "127.0.0.1:PORT": the default host of nextLinks and URLs */

/* Entry point: parse options, load the scenario, listen, run until SIGTERM/SIGINT. */
int
main(int argc, char **argv)
{
	static const struct option options[] = {
	        {"listen", required_argument, NULL, 'l'},
	        {"cert", required_argument, NULL, 'c'},
	        {"key", required_argument, NULL, 'k'},
	        {"scenario", required_argument, NULL, 's'},
	        {"state-dir", required_argument, NULL, 'd'},
	        {"port-file", required_argument, NULL, 'p'},
	        {"now", required_argument, NULL, 'n'},
	        {"seed", required_argument, NULL, 'S'},
	        {"records-per-hour", required_argument, NULL, 'R'},
	        {"hours", required_argument, NULL, 'H'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, 'V'},
	        {NULL, 0, NULL, 0},
	};
	const char *listen = "127.0.0.1:0", *cert = NULL, *key = NULL, *scenario = NULL;
	const char *port_file = NULL, *now = NULL;
	long seed = -1, rph = -1, hours = -1;
	struct sim s = {0};
	json_t *sc = NULL;
	SSL_CTX *ctx = NULL;
	struct evhttp_bound_socket *bound;
	struct event *sigs[2];
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	_cleanup_free_ char *host = NULL, *err = NULL;
	char *colon;
	int port, c, ret = 1;
	struct timespec ts;

	while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
		switch (c) {
		case 'l':
			listen = optarg;
			break;
		case 'c':
			cert = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 's':
			scenario = optarg;
			break;
		case 'd':
			s.state_dir = optarg;
			break;
		case 'p':
			port_file = optarg;
			break;
		case 'n':
			now = optarg;
			break;
		case 'S':
			seed = strtol(optarg, NULL, 10);
			break;
		case 'R':
			rph = strtol(optarg, NULL, 10);
			break;
		case 'H':
			hours = strtol(optarg, NULL, 10);
			break;
		case 'h':
			help();
			return 0;
		case 'V':
			printf("azs-sim %s\n", AZS_VERSION);
			return 0;
		default:
			return 2;
		}
	}
	if (optind < argc || !cert || !key || !s.state_dir) {
		fprintf(stderr,
		        "azs-sim: --cert, --key and --state-dir are required (see --help)\n");
		return 2;
	}
	if (scenario) {
		if (load_scenario(scenario, &sc) < 0)
			return 1;
	} else {
		sc = json_object();
	}
	if (seed >= 0)
		json_object_set_new(sc, "seed", json_integer(seed));
	if (rph >= 0)
		json_object_set_new(sc, "recordsPerHour", json_integer(rph));
	if (hours >= 0) {
		json_t *h = json_object_get(sc, "hours");

		if (!json_is_object(h)) {
			h = json_object();
			json_object_set_new(sc, "hours", h);
		}
		json_object_set_new(h, "count", json_integer(hours));
	}
	if (world_load(&s.world, sc, &err) < 0) {
		fprintf(stderr, "azs-sim: %s\n", err);
		goto out;
	}
	if (now) {
		if (time_parse_rfc3339(now, &s.clock_base) < 0) {
			fprintf(stderr, "azs-sim: --now: not an RFC 3339 time: %s\n", now);
			goto out;
		}
		s.clock_fixed = true;
	}
	s.prng = s.world.seed ^ UINT64_C(0x5eed0fa17);
	if (s.world.faults && faults_load(&s, s.world.faults, &err) < 0) {
		fprintf(stderr, "azs-sim: scenario faults: %s\n", err);
		goto out;
	}
	if (s.world.arm_answers && arm_answers_load(&s, s.world.arm_answers, &err) < 0) {
		fprintf(stderr, "azs-sim: scenario %s\n", err);
		goto out;
	}
	s.hour_queries = json_object();
	s.loops = json_object();
	s.expired = json_object();
	if (commerce_open(&s) < 0)
		goto out;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	s.cpu_start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;

	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		fprintf(stderr, "azs-sim: cannot load the server certificate %s / key %s\n", cert,
		        key);
		goto out;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);

	signal(SIGPIPE, SIG_IGN);
	s.base = event_base_new();
	s.http = s.base ? evhttp_new(s.base) : NULL;
	if (!s.http)
		goto out;
	evhttp_set_bevcb(s.http, on_bev, ctx);
	evhttp_set_gencb(s.http, on_request, &s);
	evhttp_set_allowed_methods(s.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
	                                           EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
	                                           EVHTTP_REQ_HEAD);
	evhttp_set_max_body_size(s.http, (ev_ssize_t)(s.world.max_bytes * 4 + (1 << 20)));
	evhttp_set_timeout(s.http, 600);

	host = xstrdup(listen);
	colon = strrchr(host, ':');
	if (!colon) {
		fprintf(stderr, "azs-sim: --listen: ip:port\n");
		goto out;
	}
	*colon = '\0';
	port = atoi(colon + 1);
	if (host[0] == '[') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	bound = evhttp_bind_socket_with_handle(s.http, host, (ev_uint16_t)port);
	if (!bound) {
		fprintf(stderr, "azs-sim: cannot listen on %s\n", listen);
		goto out;
	}
	if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) < 0)
		goto out;
	/*
	 * Accepted sockets inherit TCP_NODELAY from the listener on Linux: a reply leaves as
	 * several TLS records, and with Nagle the second waits for the client's delayed ACK
	 * (40 ms per small request on a keep-alive connection).
	 */
	setsockopt(evhttp_bound_socket_get_fd(bound), IPPROTO_TCP, TCP_NODELAY, &(int){1},
	           sizeof(int));
	port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
	                                      : ((struct sockaddr_in *)&ss)->sin_port);
	authority = ss.ss_family == AF_INET6 ? xasprintf("[%s]:%d", host, port)
	                                     : xasprintf("%s:%d", host, port);
	if (port_file && write_port_file(port_file, port) < 0) {
		fprintf(stderr, "azs-sim: cannot write %s: %s\n", port_file, strerror(errno));
		goto out;
	}
	sigs[0] = evsignal_new(s.base, SIGTERM, on_signal, s.base);
	sigs[1] = evsignal_new(s.base, SIGINT, on_signal, s.base);
	event_add(sigs[0], NULL);
	event_add(sigs[1], NULL);
	fprintf(stderr, "azs-sim: listening on https://%s\n", authority);
	event_base_dispatch(s.base);
	event_free(sigs[0]);
	event_free(sigs[1]);
	ret = 0;
out:
	if (s.http)
		evhttp_free(s.http);
	if (s.base)
		event_base_free(s.base);
	SSL_CTX_free(ctx);
	commerce_close(&s);
	faults_free(&s);
	identity_reset(&s);
	log_reset(&s);
	json_decref(s.hour_queries);
	json_decref(s.loops);
	json_decref(s.expired);
	world_free(&s.world);
	json_decref(sc);
	free(authority);
	return ret;
}

/* The simulated time (fixed by --now and /_sim/clock, else real time). */
int64_t
sim_now(const struct sim *s)
{
	return s->clock_fixed ? s->clock_base : (int64_t)time(NULL);
}

/* The name of an endpoint class as used in fault rules and the request log. */
const char *
sim_endpoint_name(int ep)
{
	return ep >= 0 && ep < SIM_EP_MAX ? endpoint_names[ep] : "any";
}

/* Append str as a JSON string literal. */
void
sim_json_str(struct evbuffer *b, const char *str)
{
	const char *run = str;

	evbuffer_add(b, "\"", 1);
	for (const char *p = str; *p; p++) {
		unsigned char ch = (unsigned char)*p;

		if (ch != '"' && ch != '\\' && ch >= 0x20)
			continue;
		evbuffer_add(b, run, (size_t)(p - run));
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(b, "\\%c", ch);
		else
			evbuffer_add_printf(b, "\\u%04x", ch);
		run = p + 1;
	}
	evbuffer_add(b, run, strlen(run));
	evbuffer_add(b, "\"", 1);
}

/* Replace the response with an ARM-shaped error. */
void
sim_arm_error(struct sim_response *r, int status, const char *code, const char *message)
{
	evbuffer_drain(r->body, evbuffer_get_length(r->body));
	r->status = status;
	evbuffer_add_printf(r->body, "{\"error\":{\"code\":");
	sim_json_str(r->body, code);
	evbuffer_add_printf(r->body, ",\"message\":");
	sim_json_str(r->body, message ? message : arm_message(code));
	if (streq(code, "RegistrationNotFound"))
		evbuffer_add_printf(r->body, ",\"target\":\"registrationName\"");
	evbuffer_add_printf(r->body, "}}");
}

/*
 * Take a handler-specific rule (poison, per-event code, nextLink loop, changed quantities, ...)
 * for an endpoint: the first one that names event_id (when given; without it, only rules without
 * an events list) and hour (when the rule has one) and whose counters let it fire.
 */
struct sim_rule *
sim_fault_take(struct sim *s, int endpoint, enum sim_action action, const char *event_id,
               int64_t hour)
{
	for (size_t i = 0; i < s->n_rules; i++) {
		struct sim_rule *rule = &s->rules[i];

		if (rule->action != action || (rule->endpoint >= 0 && rule->endpoint != endpoint))
			continue;
		if (event_id ? !sim_rule_has_event(rule, event_id) : rule->n_events > 0)
			continue;
		if (hour >= 0 && rule->hour >= 0 && rule->hour != hour)
			continue;
		if (rule_fires(s, rule))
			return rule;
	}
	return NULL;
}

/* Tell whether a rule lists an event id (a rule without a list names none). */
bool
sim_rule_has_event(const struct sim_rule *rule, const char *event_id)
{
	for (size_t i = 0; i < rule->n_events; i++)
		if (streq(rule->events[i], event_id))
			return true;
	return false;
}

/* Route one request, apply a generic fault if one fires, run the handler, answer. */
static void
on_request(struct evhttp_request *req, void *arg)
{
	struct sim *s = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
	struct sim_response r = {.status = 200, .body = evbuffer_new()};
	struct evkeyvalq q = {0};
	int method = (int)evhttp_request_get_command(req), nseg = 0, ep;
	char *seg[MAX_SEGMENTS];
	_cleanup_free_ char *copy = NULL;
	struct sim_rule *rule;
	uint64_t t0 = thread_cpu_ns();

	if (!r.body)
		abort();
	if (!path || !*path)
		path = "/";
	copy = xstrdup(path);
	for (char *p = strtok(copy, "/"); p && nseg < MAX_SEGMENTS; p = strtok(NULL, "/"))
		seg[nseg++] = p;
	if (query)
		evhttp_parse_query_str(query, &q);
	ep = classify(s, path, seg, nseg);

	if (ep == SIM_EP_CONTROL) {
		if (!is_loopback(req))
			sim_arm_error(&r, 403, "Forbidden", "The control API is loopback only.");
		else
			handle_control(s, req, &q, path, &r);
		send_response(req, &r);
		goto out;
	}
	rule = fault_generic(s, ep, req, path);
	if (rule && rule->action == SIM_ACT_STATUS) {
		fault_reply(rule, ep, path, &r);
		log_request(s, req, ep, path, r.status, "status", 0);
		send_response(req, &r);
		goto out;
	}
	if (rule && (rule->action == SIM_ACT_TIMEOUT || rule->action == SIM_ACT_RESET) &&
	    !rule->after_processing) {
		log_request(s, req, ep, path, 0, action_names[rule->action], 0);
		if (rule->action == SIM_ACT_RESET)
			hold(s, req, &r, SIM_ACT_RESET, 0);
		goto out; /* a time-out never answers: evhttp frees the request when the peer goes
		           */
	}

	switch (ep) {
	case SIM_EP_METADATA:
		handle_metadata(s, req, &q, &r);
		break;
	case SIM_EP_TOKEN:
		identity_token(s, req, path, &r);
		break;
	case SIM_EP_USAGE:
		handle_usage(s, req, &q, path, seg, &r);
		break;
	case SIM_EP_SUBSCRIPTIONS:
		handle_subscriptions(s, req, &q, path, seg, &r);
		break;
	case SIM_EP_ARM:
		handle_arm(s, req, &q, path, seg, nseg, &r);
		break;
	case SIM_EP_COMMERCE:
		if (method != EVHTTP_REQ_POST)
			sim_arm_error(&r, 405, "MethodNotAllowed", "Use POST.");
		else if (identity_check(s, req, s->world.aud_commerce, &r))
			commerce_batch(s, req, &r);
		break;
	default:
		sim_arm_error(&r, 404, "NotFound", "The requested path does not exist.");
		break;
	}
	if (rule && (rule->action == SIM_ACT_TIMEOUT || rule->action == SIM_ACT_RESET)) {
		/* afterProcessing: the handler did its work (a batch is in the ledger), the answer
		 * is lost */
		log_request(s, req, ep, path, 0,
		            rule->action == SIM_ACT_TIMEOUT ? "timeout-after" : "reset-after",
		            r.events);
		if (rule->action == SIM_ACT_RESET)
			hold(s, req, &r, SIM_ACT_RESET, 0);
		goto out;
	}
	if (rule && rule->action == SIM_ACT_MALFORMED) {
		size_t n = evbuffer_get_length(r.body);

		r.status = 200;
		evbuffer_drain(r.body, n - n / 2);
		if (evbuffer_get_length(r.body) == 0)
			evbuffer_add_printf(r.body, "{\"value\":[{\"id\":");
	}
	log_request(s, req, ep, path, r.status, rule ? action_names[rule->action] : NULL, r.events);
	if (rule && (rule->action == SIM_ACT_SLOW || rule->action == SIM_ACT_DELAY)) {
		hold(s, req, &r, rule->action, rule->delay_ms ? rule->delay_ms : 200);
		goto out;
	}
	send_response(req, &r);
out:
	if (r.body)
		evbuffer_free(r.body);
	free(r.retry_after);
	evhttp_clear_headers(&q);
	s->cpu_ns[ep] += thread_cpu_ns() - t0;
}

/* Make the TLS bufferevent of a new connection. */
static struct bufferevent *
on_bev(struct event_base *base, void *arg)
{
	SSL *ssl = SSL_new(arg);

	if (!ssl)
		return NULL;
	return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
	                                      BEV_OPT_CLOSE_ON_FREE);
}

/* Stop the loop on SIGTERM/SIGINT. */
static void
on_signal(_unused_ evutil_socket_t fd, _unused_ short what, void *arg)
{
	event_base_loopexit(arg, NULL);
}

/* Decide which endpoint a path belongs to. */
static int
classify(struct sim *s, const char *path, char **seg, int nseg)
{
	if (nseg >= 1 && streq(seg[0], "_sim"))
		return SIM_EP_CONTROL;
	if (streq(path, s->world.commerce_path))
		return SIM_EP_COMMERCE;
	if (nseg == 2 && streq(seg[0], "metadata") && streq(seg[1], "endpoints"))
		return SIM_EP_METADATA;
	/* AD FS exists only on a stamp whose identity is adfs; Azure AD always (public Azure) */
	if (nseg == 3 && streq(seg[1], "oauth2") && streq(seg[2], "token"))
		return streq(seg[0], "adfs") && !s->world.adfs ? SIM_EP_UNKNOWN : SIM_EP_TOKEN;
	if (nseg == 5 && strcasecmp(seg[0], "subscriptions") == 0 &&
	    strcasecmp(seg[2], "providers") == 0) {
		if (strcasecmp(seg[3], "Microsoft.Commerce.Admin") == 0 &&
		    strcasecmp(seg[4], "subscriberUsageAggregates") == 0)
			return SIM_EP_USAGE;
		if (strcasecmp(seg[3], "Microsoft.Subscriptions.Admin") == 0 &&
		    strcasecmp(seg[4], "subscriptions") == 0)
			return SIM_EP_SUBSCRIPTIONS;
	}
	if (nseg >= 8 && nseg <= 10 && strcasecmp(seg[0], "subscriptions") == 0 &&
	    strcasecmp(seg[2], "resourceGroups") == 0 && strcasecmp(seg[4], "providers") == 0 &&
	    strcasecmp(seg[5], "Microsoft.AzureStack") == 0 &&
	    strcasecmp(seg[6], "registrations") == 0 &&
	    (nseg == 8 || strcasecmp(seg[8], "customerSubscriptions") == 0))
		return SIM_EP_ARM;
	return SIM_EP_UNKNOWN;
}

/* Send a complete response with the usual Azure headers. */
static void
send_response(struct evhttp_request *req, struct sim_response *r)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	char id[HASH_UUID_LEN + 1];

	if (hash_uuid4(id) < 0)
		abort();
	if (evbuffer_get_length(r->body) > 0)
		evhttp_add_header(out, "Content-Type", "application/json; charset=utf-8");
	evhttp_add_header(out, "x-ms-request-id", id);
	if (r->retry_after)
		evhttp_add_header(out, "Retry-After", r->retry_after);
	if (r->www_authenticate)
		evhttp_add_header(out, "WWW-Authenticate", r->www_authenticate);
	evhttp_send_reply(req, r->status, NULL, r->body);
}

/* Write the error answer of a status fault, shaped like the endpoint's own errors. */
static void
fault_reply(struct sim_rule *rule, int ep, const char *path, struct sim_response *r)
{
	static const struct {
		int status;
		const char *code;
	} defaults[] = {
	        {400, "BadRequest"},
	        {401, "ExpiredAuthenticationToken"},
	        {403, "AuthorizationFailed"},
	        {404, "NotFound"},
	        {408, "RequestTimeout"},
	        {409, "Conflict"},
	        {413, "RequestEntityTooLarge"},
	        {429, "TooManyRequests"},
	        {500, "InternalServerError"},
	        {502, "BadGateway"},
	        {503, "ServiceUnavailable"},
	        {504, "GatewayTimeout"},
	};
	const char *code = rule->code;

	for (size_t i = 0; !code && i < ARRAY_SIZE(defaults); i++)
		if (defaults[i].status == rule->status)
			code = defaults[i].code;
	if (!code)
		code = "SimulatedFault";
	if (ep == SIM_EP_TOKEN && strncmp(path, "/adfs/", 6) == 0) {
		identity_error_adfs(r, rule->status, rule->code ? rule->code : "server_error",
		                    rule->message ? rule->message
		                                  : "MSIS7012: An error occurred while processing "
		                                    "the request. Contact your administrator for "
		                                    "details.");
	} else if (ep == SIM_EP_TOKEN) {
		identity_error(r, rule->status, rule->code ? rule->code : "temporarily_unavailable",
		               rule->message
		                       ? rule->message
		                       : "AADSTS90033: A transient error has occurred. Please "
		                         "try again.");
	} else {
		sim_arm_error(r, rule->status, code, rule->message);
	}
	if (rule->status == 401)
		r->www_authenticate = "Bearer authorization_uri=\"https://login.windows.net/\", "
		                      "error=\"invalid_token\"";
	r->retry_after = retry_after_value(rule);
}

/* The Retry-After value of a rule: its seconds, or an HTTP date that many seconds ahead. */
static char *
retry_after_value(const struct sim_rule *rule)
{
	if (!rule->retry_after)
		return NULL;
	if (strncmp(rule->retry_after, "http-date:", 10) == 0) {
		time_t t = time(NULL) + strtol(rule->retry_after + 10, NULL, 10);
		char buf[64];
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		return xstrdup(buf);
	}
	return xstrdup(rule->retry_after);
}

/* The first generic rule (status, time-out, reset, slow, delay, malformed) that fires. */
static struct sim_rule *
fault_generic(struct sim *s, int ep, struct evhttp_request *req, const char *path)
{
	static const char *const methods[] = {
	        [0] = "GET", [1] = "POST", [2] = "HEAD", [3] = "PUT", [4] = "DELETE",
	};
	int cmd = (int)evhttp_request_get_command(req);
	const char *method = cmd == EVHTTP_REQ_GET      ? methods[0]
	                     : cmd == EVHTTP_REQ_POST   ? methods[1]
	                     : cmd == EVHTTP_REQ_HEAD   ? methods[2]
	                     : cmd == EVHTTP_REQ_PUT    ? methods[3]
	                     : cmd == EVHTTP_REQ_DELETE ? methods[4]
	                                                : "OTHER";

	for (size_t i = 0; i < s->n_rules; i++) {
		struct sim_rule *rule = &s->rules[i];

		if (rule->action > SIM_ACT_MALFORMED)
			continue;
		if (rule->action == SIM_ACT_STATUS && rule->n_events > 0)
			continue;
		if (rule->endpoint >= 0 && rule->endpoint != ep)
			continue;
		if (rule->method && strcasecmp(rule->method, method) != 0)
			continue;
		if (rule->path_contains && !strstr(path, rule->path_contains))
			continue;
		if (rule_fires(s, rule))
			return rule;
	}
	return NULL;
}

/* Count a matching request against a rule's after/times/rate; true when it fires. */
static bool
rule_fires(struct sim *s, struct sim_rule *rule)
{
	rule->seen++;
	if (rule->seen <= rule->after)
		return false;
	if (rule->times >= 0 && rule->fired >= rule->times)
		return false;
	if (rule->rate > 0 &&
	    (double)(world_splitmix(&s->prng) >> 11) / 9007199254740992.0 >= rule->rate)
		return false;
	rule->fired++;
	return true;
}

/*
 * Parse a changeQuantity delta ("2.5", "-0.0000000001", "3") into integers of 10^-20, the unit of
 * the generated quantities; at most 20 decimals and 12 integer digits.
 */
static int
delta_parse(const char *text, sim_i128 *ret)
{
	const char *p = text + (*text == '-');
	sim_i128 v = 0;
	int ip = 0, fp = 0;

	for (; *p >= '0' && *p <= '9'; p++, ip++) {
		if (ip == 12)
			return -ERANGE;
		v = v * 10 + (*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, fp++) {
			if (fp == SIM_QTY_DECIMALS)
				return -ERANGE;
			v = v * 10 + (*p - '0');
		}
		if (fp == 0)
			return -EINVAL;
	}
	if (*p || ip == 0)
		return -EINVAL;
	for (; fp < SIM_QTY_DECIMALS; fp++)
		v *= 10;
	*ret = *text == '-' ? -v : v;
	return 0;
}

/* A quantity moved by a delta, clamped at zero (a usage quantity is never negative). */
static sim_u128
changed_quantity(sim_u128 quantity, sim_i128 delta)
{
	if (delta < 0 && (sim_u128)(-delta) > quantity)
		return 0;
	return delta < 0 ? quantity - (sim_u128)(-delta) : quantity + (sim_u128)delta;
}

/* Replace the fault plan with a JSON list of rules. */
static int
faults_load(struct sim *s, json_t *plan, char **ret_error)
{
	struct sim_rule *rules;
	size_t n;

	if (json_is_object(plan) && json_is_array(json_object_get(plan, "rules")))
		plan = json_object_get(plan, "rules");
	if (!json_is_array(plan)) {
		*ret_error = xstrdup("a fault plan is a JSON list of rules");
		return -EINVAL;
	}
	n = json_array_size(plan);
	rules = xcalloc(n + 1, sizeof(*rules));
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(plan, i), *v;
		struct sim_rule *rule = &rules[i];
		const char *ep = json_string_value(json_object_get(o, "endpoint"));
		const char *action = json_string_value(json_object_get(o, "action"));
		const char *hour = json_string_value(json_object_get(o, "hour"));
		const char *body = json_string_value(json_object_get(o, "body"));
		json_t *events = json_object_get(o, "events");
		bool ok = json_is_object(o);

		rule->endpoint = -1;
		rule->times = -1;
		rule->hour = -1;
		if (ok && ep && !streq(ep, "any") && !streq(ep, "*")) {
			rule->endpoint = -2;
			for (int e = 0; e < SIM_EP_CONTROL; e++)
				if (streq(ep, endpoint_names[e]))
					rule->endpoint = e;
			ok = rule->endpoint >= 0;
		}
		rule->status = (int)json_integer_value(json_object_get(o, "status"));
		v = json_object_get(o, "retryAfter");
		if (json_is_integer(v))
			rule->retry_after = xasprintf("%lld", (long long)json_integer_value(v));
		else if (json_is_string(v))
			rule->retry_after = xstrdup(json_string_value(v));
		if (json_object_get(o, "code"))
			rule->code = xstrdup(
			        str_or_empty(json_string_value(json_object_get(o, "code"))));
		if (json_object_get(o, "message"))
			rule->message = xstrdup(
			        str_or_empty(json_string_value(json_object_get(o, "message"))));
		if (json_object_get(o, "method"))
			rule->method = xstrdup(
			        str_or_empty(json_string_value(json_object_get(o, "method"))));
		if (json_object_get(o, "path"))
			rule->path_contains = xstrdup(
			        str_or_empty(json_string_value(json_object_get(o, "path"))));
		if (json_object_get(o, "authority"))
			rule->authority = xstrdup(
			        str_or_empty(json_string_value(json_object_get(o, "authority"))));
		rule->body = xstrdup(body ? body : "error");
		ok = ok && (streq(rule->body, "error") || streq(rule->body, "flat") ||
		            streq(rule->body, "empty"));
		rule->after_processing = json_is_true(json_object_get(o, "afterProcessing"));
		v = json_object_get(o, "rate");
		if (v)
			rule->rate = json_number_value(v);
		if (json_is_integer(json_object_get(o, "times")))
			rule->times = (long)json_integer_value(json_object_get(o, "times"));
		rule->after = (long)json_integer_value(json_object_get(o, "after"));
		rule->count = (unsigned)json_integer_value(json_object_get(o, "count"));
		rule->delay_ms = (unsigned)json_integer_value(json_object_get(o, "delayMs"));
		if (hour && time_parse_rfc3339(hour, &rule->hour) < 0)
			ok = false;
		/* events: usageEventIds; subscriptions: the user subscriptions to delete */
		if (!json_is_array(events))
			events = json_object_get(o, "subscriptions");
		if (json_is_array(events)) {
			rule->n_events = json_array_size(events);
			rule->events = xcalloc(rule->n_events + 1, sizeof(char *));
			for (size_t j = 0; j < rule->n_events; j++)
				rule->events[j] = xstrdup(
				        str_or_empty(json_string_value(json_array_get(events, j))));
		}
		if (action) {
			bool found = false;

			for (size_t a = 0; a < ARRAY_SIZE(action_names); a++)
				if (streq(action, action_names[a])) {
					rule->action = (enum sim_action)a;
					found = true;
				}
			ok = ok && found;
		} else if (rule->n_events > 0) {
			rule->action = rule->status == 400 ? SIM_ACT_POISON : SIM_ACT_EVENTS;
		} else {
			rule->action = SIM_ACT_STATUS;
		}
		if (rule->action == SIM_ACT_STATUS && (rule->status < 100 || rule->status > 599))
			ok = false;
		if (rule->status != 0 && (rule->status < 100 || rule->status > 599))
			ok = false;
		if ((rule->action == SIM_ACT_CHANGE_QUANTITY ||
		     rule->action == SIM_ACT_LATE_RECORDS ||
		     rule->action == SIM_ACT_OMIT_RESULTS) &&
		    rule->count == 0)
			rule->count = 1;
		rule->delta = pow10_i128(SIM_QTY_DECIMALS);
		v = json_object_get(o, "delta");
		if (json_is_integer(v) && json_integer_value(v) > -100000000 &&
		    json_integer_value(v) < 100000000)
			rule->delta =
			        (sim_i128)json_integer_value(v) * pow10_i128(SIM_QTY_DECIMALS);
		else if (v && (!json_is_string(v) ||
		               delta_parse(json_string_value(v), &rule->delta) < 0))
			ok = false;
		rule->delta_text = json_is_string(v) ? xstrdup(json_string_value(v))
		                   : json_is_integer(v)
		                           ? xasprintf("%lld", (long long)json_integer_value(v))
		                           : xstrdup("1");
		if (!ok || rule->rate < 0 || rule->rate > 1) {
			struct sim_rule *old = s->rules;
			size_t old_n = s->n_rules;

			s->rules = rules;
			s->n_rules = n;
			faults_free(s);
			s->rules = old;
			s->n_rules = old_n;
			*ret_error =
			        xasprintf("rule %zu: needs a known endpoint and action, a status "
			                  "100..599 for a status rule, rate 0..1, hour RFC 3339, "
			                  "delta a decimal string with at most 20 decimals, body "
			                  "error, flat or empty",
			                  i);
			return -EINVAL;
		}
	}
	faults_free(s);
	s->rules = rules;
	s->n_rules = n;
	return 0;
}

/* Drop the fault plan. */
static void
faults_free(struct sim *s)
{
	for (size_t i = 0; i < s->n_rules; i++) {
		struct sim_rule *rule = &s->rules[i];

		free(rule->method);
		free(rule->path_contains);
		free(rule->code);
		free(rule->message);
		free(rule->retry_after);
		free(rule->delta_text);
		free(rule->body);
		free(rule->authority);
		for (size_t j = 0; j < rule->n_events; j++)
			free(rule->events[j]);
		free(rule->events);
	}
	free(s->rules);
	s->rules = NULL;
	s->n_rules = 0;
}

/* The fault plan with its counters (GET /_sim/faults). */
static json_t *
faults_dump(const struct sim *s)
{
	json_t *list = json_array();

	for (size_t i = 0; i < s->n_rules; i++) {
		const struct sim_rule *rule = &s->rules[i];

		json_array_append_new(
		        list, json_pack("{s:s, s:s, s:i, s:s?, s:I, s:I, s:I, s:I}", "endpoint",
		                        sim_endpoint_name(rule->endpoint), "action",
		                        action_names[rule->action], "status", rule->status, "code",
		                        rule->code, "times", (json_int_t)rule->times, "after",
		                        (json_int_t)rule->after, "seen", (json_int_t)rule->seen,
		                        "fired", (json_int_t)rule->fired));
	}
	return list;
}

/* Hold a reply back: send it after a delay, trickle it slowly, or reset the connection. */
static void
hold(struct sim *s, struct evhttp_request *req, struct sim_response *r, enum sim_action action,
     unsigned delay_ms)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	struct timeval tv = {.tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000};

	p->s = s;
	p->req = req;
	p->evcon = evhttp_request_get_connection(req);
	p->action = action;
	p->status = r->status;
	p->delay_ms = delay_ms;
	p->body = TAKE_PTR(r->body);
	p->chunk = MAX((size_t)1, evbuffer_get_length(p->body) / 8);
	p->timer = evtimer_new(s->base, on_pending_timer, p);
	if (!p->timer)
		abort();
	evhttp_connection_set_closecb(p->evcon, on_pending_close, p);
	if (action != SIM_ACT_RESET) {
		struct evkeyvalq *out = evhttp_request_get_output_headers(req);

		evhttp_add_header(out, "Content-Type", "application/json; charset=utf-8");
		if (r->retry_after)
			evhttp_add_header(out, "Retry-After", r->retry_after);
	}
	evtimer_add(p->timer, &tv);
}

/* Continue a held reply: the delayed answer, the next slow chunk, or the reset. */
static void
on_pending_timer(_unused_ evutil_socket_t fd, _unused_ short what, void *arg)
{
	struct pending *p = arg;
	struct timeval tv = {.tv_sec = p->delay_ms / 1000, .tv_usec = (p->delay_ms % 1000) * 1000};

	if (!p->req) {
		pending_free(p);
		return;
	}
	switch (p->action) {
	case SIM_ACT_RESET: {
		struct bufferevent *bev = evhttp_connection_get_bufferevent(p->evcon);
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		evutil_socket_t sfd = bev ? bufferevent_getfd(bev) : -1;

		if (sfd >= 0)
			setsockopt(sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		evhttp_connection_set_closecb(p->evcon, NULL, NULL);
		evhttp_connection_free(p->evcon);
		pending_free(p);
		return;
	}
	case SIM_ACT_DELAY:
		evhttp_connection_set_closecb(p->evcon, NULL, NULL);
		evhttp_send_reply(p->req, p->status, NULL, p->body);
		pending_free(p);
		return;
	default: {
		struct evbuffer *chunk = evbuffer_new();

		if (!chunk)
			abort();
		if (!p->started) {
			evhttp_send_reply_start(p->req, p->status, NULL);
			p->started = true;
		}
		evbuffer_remove_buffer(p->body, chunk, p->chunk);
		evhttp_send_reply_chunk(p->req, chunk);
		evbuffer_free(chunk);
		if (evbuffer_get_length(p->body) == 0) {
			evhttp_connection_set_closecb(p->evcon, NULL, NULL);
			evhttp_send_reply_end(p->req);
			pending_free(p);
			return;
		}
		evtimer_add(p->timer, &tv);
		return;
	}
	}
}

/* The peer went away while a reply was held: forget the request. */
static void
on_pending_close(_unused_ struct evhttp_connection *evcon, void *arg)
{
	struct pending *p = arg;

	p->req = NULL;
	evtimer_del(p->timer);
	pending_free(p);
}

/* Free a held reply. */
static void
pending_free(struct pending *p)
{
	event_free(p->timer);
	if (p->body)
		evbuffer_free(p->body);
	free(p);
}

/* GET /metadata/endpoints: the stamp's login endpoint and audience. */
static void
handle_metadata(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                struct sim_response *r)
{
	const char *v = evhttp_find_header(q, "api-version");
	const char *host = host_of(req);

	if (!api_version_ok(v, metadata_versions, r))
		return;
	evbuffer_add_printf(
	        r->body,
	        "{\"galleryEndpoint\":\"https://%s/gallery/\",\"graphEndpoint\":"
	        "\"https://%s/graph/\",\"portalEndpoint\":\"https://%s/portal/\","
	        "\"authentication\":{\"loginEndpoint\":\"https://%s/%s\",\"audiences\":[",
	        host, host, host, host, s->world.adfs ? "adfs/" : "");
	sim_json_str(r->body, s->world.aud_stack);
	evbuffer_add_printf(r->body, "]}}");
}

/*
 * The usage API: one reported hour, pages of records written as served, nextLink with a token. The
 * token carries what was decided on the query's first page: the query number of the hour (g),
 * changed quantities (c, d) and records held back as late data (l).
 */
static void
handle_usage(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q, const char *path,
             char **seg, struct sim_response *r)
{
	struct sim_world *w = &s->world;
	const char *start = evhttp_find_header(q, "reportedStartTime");
	const char *end = evhttp_find_header(q, "reportedEndTime");
	const char *gran = evhttp_find_header(q, "aggregationGranularity");
	const char *version = evhttp_find_header(q, "api-version");
	const char *subscriber = evhttp_find_header(q, "subscriberId");
	const char *token = evhttp_find_header(q, "continuationToken");
	const struct sim_hour *hr;
	struct sim_rule *rule;
	unsigned change_count = 0, held = 0;
	int64_t ts, te;
	sim_i128 delta = 0;
	long offset = 0, gen;
	size_t emitted = 0, idx = 0, next = 0, limit = SIZE_MAX;
	bool more = false;
	char th[32];
	_cleanup_free_ char *qkey = NULL, *lkey = NULL, *ekey = NULL, *delta_text = NULL;
	int usersub = -1;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		sim_arm_error(r, 405, "MethodNotAllowed", "Use GET.");
		return;
	}
	if (!identity_check(s, req, w->aud_stack, r) ||
	    !subscription_known(seg[1], w->provider_sub, r))
		return;
	if (!api_version_ok(version, usage_versions, r))
		return;
	if (!start || !end || time_parse_rfc3339(start, &ts) < 0 ||
	    time_parse_rfc3339(end, &te) < 0) {
		sim_arm_error(r, 400, "BadRequest",
		              "reportedStartTime and reportedEndTime must be ISO 8601 times.");
		return;
	}
	if (!time_on_hour(ts) || te != ts + 3600) {
		sim_arm_error(
		        r, 400, "InvalidReportedTimeRange",
		        "The reported time range must be one whole hour starting on the hour.");
		return;
	}
	if (!gran || strcasecmp(gran, "Hourly") != 0) {
		sim_arm_error(r, 400, "InvalidAggregationGranularity",
		              "The simulator serves aggregationGranularity=Hourly only.");
		return;
	}
	if (te > sim_now(s)) {
		sim_arm_error(r, 400, "RequestEndTimeIsInFuture", NULL);
		return;
	}
	if (subscriber) {
		/* a delegated provider's customer (or no subscription of this stamp at all) */
		usersub = world_find_usersub(w, subscriber);
		if (usersub < 0 || w->tenants[w->subs[usersub].tenant].delegated[0]) {
			_cleanup_free_ char *message = xasprintf(
			        "The subscriber '%s' is not a direct tenant of the provider "
			        "subscription '%s'.",
			        subscriber, w->provider_sub);

			sim_arm_error(r, 400, "SubscriberIdIsNotDirectTenant", message);
			return;
		}
	}
	time_format_rfc3339(ts, th);
	qkey = xasprintf("%s|%s", th, subscriber ? subscriber : "");
	if (token) {
		size_t n = strlen(token);
		_cleanup_free_ char *raw = xmalloc(n + 1);
		json_t *t;
		int k = EVP_DecodeBlock((unsigned char *)raw, (const unsigned char *)token, (int)n);
		const char *d;

		if (k < 0) {
			sim_arm_error(r, 400, "InvalidContinuationToken",
			              "The continuation token is malformed.");
			return;
		}
		raw[k] = '\0';
		t = json_loads(raw, JSON_DISABLE_EOF_CHECK, NULL);
		if (!t || !streq_ptr(json_string_value(json_object_get(t, "r")), th) ||
		    !streq_ptr(json_string_value(json_object_get(t, "s")),
		               subscriber ? subscriber : "") ||
		    !json_is_integer(json_object_get(t, "o"))) {
			json_decref(t);
			sim_arm_error(r, 400, "InvalidContinuationToken",
			              "The continuation token does not belong to this query.");
			return;
		}
		offset = (long)json_integer_value(json_object_get(t, "o"));
		gen = (long)json_integer_value(json_object_get(t, "g"));
		change_count = (unsigned)json_integer_value(json_object_get(t, "c"));
		held = (unsigned)json_integer_value(json_object_get(t, "l"));
		d = json_string_value(json_object_get(t, "d"));
		if (d && delta_parse(d, &delta) == 0)
			delta_text = xstrdup(d);
		json_decref(t);
		/* an expired query stays expired: only a new query (first page) gets new tokens */
		ekey = xasprintf("%s|%ld", qkey, gen);
		rule = json_object_get(s->expired, ekey)
		               ? NULL
		               : sim_fault_take(s, SIM_EP_USAGE, SIM_ACT_EXPIRE_TOKEN, NULL, ts);
		if (rule)
			json_object_set_new(s->expired, ekey,
			                    json_integer(rule->status ? rule->status : 400));
		if (json_object_get(s->expired, ekey)) {
			json_t *e = json_object_get(s->expired, ekey);

			sim_arm_error(r, (int)json_integer_value(e), "ExpiredContinuationToken",
			              NULL);
			return;
		}
	} else {
		/* processing not complete: no query of the hour is served yet */
		rule = sim_fault_take(s, SIM_EP_USAGE, SIM_ACT_NOT_READY, NULL, ts);
		if (rule) {
			not_ready(rule, r);
			return;
		}
		gen = (long)json_integer_value(json_object_get(s->hour_queries, qkey)) + 1;
		json_object_set_new(s->hour_queries, qkey, json_integer(gen));
		/* a changed quantity is decided per query; its later pages carry it in the token */
		rule = gen >= 2 ? sim_fault_take(s, SIM_EP_USAGE, SIM_ACT_CHANGE_QUANTITY, NULL, ts)
		                : NULL;
		if (rule) {
			change_count = rule->count;
			delta = rule->delta;
			delta_text = xstrdup(rule->delta_text);
		}
		/* late data: the hour's first query does not see its last records yet */
		rule = gen == 1 ? sim_fault_take(s, SIM_EP_USAGE, SIM_ACT_LATE_RECORDS, NULL, ts)
		                : NULL;
		if (rule)
			held = rule->count;
	}
	hr = world_hour(w, ts);
	if (held > 0 && hr) {
		size_t total = 0;

		for (size_t i = 0; i < hr->n; i++)
			total += usersub < 0 ||
			         w->res[hr->recs[i].resource].usersub == (size_t)usersub;
		limit = total > held ? total - held : 0;
	}
	evbuffer_add_printf(r->body, "{\"value\":[");
	for (size_t i = 0; hr && i < hr->n; i++) {
		if (usersub >= 0 && w->res[hr->recs[i].resource].usersub != (size_t)usersub)
			continue;
		if (idx == limit)
			break;
		if (idx++ < (size_t)offset)
			continue;
		if (emitted == w->page_size) {
			more = true;
			break;
		}
		if (emitted)
			evbuffer_add(r->body, ",", 1);
		world_format_record(w, &hr->recs[i],
		                    idx - 1 < change_count
		                            ? changed_quantity(hr->recs[i].quantity, delta)
		                            : hr->recs[i].quantity,
		                    r->body);
		emitted++;
	}
	next = (size_t)offset + emitted;
	evbuffer_add_printf(r->body, "]");
	/*
	 * A nextLink loop answers with the very nextLink that led to this page (on the first page:
	 * one to this offset, which then repeats itself), so a client that remembers the nextLinks
	 * of the hour sees one again at once. Once fired, the loop lasts for this query.
	 */
	lkey = xasprintf("%s|%ld|%ld", qkey, gen, offset);
	if ((token && json_object_get(s->loops, lkey)) ||
	    sim_fault_take(s, SIM_EP_USAGE, SIM_ACT_NEXTLINK_LOOP, NULL, ts)) {
		json_object_set_new(s->loops, lkey, json_true());
		more = true;
		next = (size_t)offset;
	}
	if (more) {
		_cleanup_free_ char *b64 = NULL;
		struct evbuffer *t = evbuffer_new();

		if (!t)
			abort();
		evbuffer_add_printf(t, "{\"r\":\"%s\",\"s\":\"%s\",\"o\":%zu,\"g\":%ld", th,
		                    subscriber ? subscriber : "", next, gen);
		if (change_count)
			evbuffer_add_printf(t, ",\"c\":%u,\"d\":\"%s\"", change_count, delta_text);
		if (held)
			evbuffer_add_printf(t, ",\"l\":%u", held);
		evbuffer_add_printf(t, "}");
		while (evbuffer_get_length(t) % 3 != 1)
			evbuffer_add(t, " ", 1);
		b64 = identity_b64(evbuffer_pullup(t, -1), evbuffer_get_length(t), false);
		evbuffer_free(t);
		evbuffer_add_printf(r->body, ",\"nextLink\":\"https://");
		next_link_authority(s, req, SIM_EP_USAGE, r->body);
		evbuffer_add_printf(r->body, "%s?reportedStartTime=", path);
		append_encoded(r->body, start);
		evbuffer_add_printf(r->body, "&reportedEndTime=");
		append_encoded(r->body, end);
		evbuffer_add_printf(
		        r->body, "&aggregationGranularity=Hourly&api-version=" USAGE_API_VERSION);
		if (subscriber) {
			evbuffer_add_printf(r->body, "&subscriberId=");
			append_encoded(r->body, subscriber);
		}
		evbuffer_add_printf(r->body, "&continuationToken=");
		append_encoded(r->body, b64);
		evbuffer_add_printf(r->body, "\"");
	}
	evbuffer_add_printf(r->body, "}");
	s->pages_served++;
	s->records_served += emitted;
}

/*
 * Answer "processing not complete" for an hour: 202 (or the rule's status) with an ARM error
 * ({"error":{code,message}}), the flat form ({code,message}) or an empty object.
 */
static void
not_ready(struct sim_rule *rule, struct sim_response *r)
{
	const char *code = rule->code ? rule->code : "ProcessingNotComplete";
	const char *message = rule->message ? rule->message : arm_message(code);

	sim_arm_error(r, 0, code, message);
	r->status = rule->status ? rule->status : 202;
	if (streq(rule->body, "flat")) {
		evbuffer_drain(r->body, evbuffer_get_length(r->body));
		evbuffer_add_printf(r->body, "{\"code\":");
		sim_json_str(r->body, code);
		evbuffer_add_printf(r->body, ",\"message\":");
		sim_json_str(r->body, message);
		evbuffer_add_printf(r->body, "}");
	} else if (streq(rule->body, "empty")) {
		evbuffer_drain(r->body, evbuffer_get_length(r->body));
		evbuffer_add_printf(r->body, "{}");
	}
	r->retry_after = retry_after_value(rule);
}

/*
 * Write the authority (host[:port]) of a nextLink: the one the client used, or what a
 * nextLinkAuthority rule says: its authority text ({port}: the listening port, {host}: the host
 * the client used), by default the client's host in upper case with an explicit :443 when the
 * client named no port (an equal authority written otherwise).
 */
static void
next_link_authority(struct sim *s, struct evhttp_request *req, int ep, struct evbuffer *b)
{
	struct sim_rule *rule = sim_fault_take(s, ep, SIM_ACT_NEXTLINK_AUTHORITY, NULL, -1);
	const char *host = host_of(req), *colon = strrchr(host, ':'), *bracket = strrchr(host, ']');
	size_t host_len =
	        colon && (!bracket || colon > bracket) ? (size_t)(colon - host) : strlen(host);

	if (!rule) {
		evbuffer_add_printf(b, "%s", host);
		return;
	}
	if (!rule->authority) {
		for (size_t i = 0; i < host_len; i++)
			evbuffer_add_printf(b, "%c", toupper((unsigned char)host[i]));
		evbuffer_add_printf(b, "%s", host_len == strlen(host) ? ":443" : host + host_len);
		return;
	}
	for (const char *p = rule->authority; *p; p++) {
		if (strncmp(p, "{port}", 6) == 0) {
			evbuffer_add_printf(b, "%s", strrchr(authority, ':') + 1);
			p += 5;
		} else if (strncmp(p, "{host}", 6) == 0) {
			evbuffer_add(b, host, host_len);
			p += 5;
		} else {
			evbuffer_add(b, p, 1);
		}
	}
}

/* The admin user-subscriptions list, paged with $skipToken. */
static void
handle_subscriptions(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q,
                     const char *path, char **seg, struct sim_response *r)
{
	struct sim_world *w = &s->world;
	const char *version = evhttp_find_header(q, "api-version");
	const char *skip = evhttp_find_header(q, "$skipToken");
	size_t from = skip ? (size_t)strtoul(skip, NULL, 10) : 0, to;
	bool more = false;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		sim_arm_error(r, 405, "MethodNotAllowed", "Use GET.");
		return;
	}
	if (!identity_check(s, req, w->aud_stack, r) ||
	    !subscription_known(seg[1], w->provider_sub, r))
		return;
	if (!api_version_ok(version, subs_versions, r))
		return;
	/* deleteSubscriptions rules: checked once per listing (its first page), never undone */
	for (size_t k = 0; !skip && k < s->n_rules; k++) {
		struct sim_rule *rule = &s->rules[k];

		if (rule->action != SIM_ACT_DELETE_SUBSCRIPTIONS ||
		    (rule->endpoint >= 0 && rule->endpoint != SIM_EP_SUBSCRIPTIONS) ||
		    !rule_fires(s, rule))
			continue;
		for (size_t j = 0; j < rule->n_events; j++) {
			int u = world_find_usersub(w, rule->events[j]);

			if (u >= 0)
				w->subs[u].deleted = true;
		}
	}
	evbuffer_add_printf(r->body, "{\"value\":[");
	to = from;
	for (size_t i = from, emitted = 0; i < w->n_subs; i++) {
		const struct sim_usersub *u = &w->subs[i];
		const struct sim_tenant *t = &w->tenants[u->tenant];

		if (t->unlisted || u->deleted)
			continue;
		if (emitted == w->sub_page_size) {
			more = true;
			break;
		}
		evbuffer_add_printf(r->body,
		                    "%s{\"id\":\"/subscriptions/%s/providers/"
		                    "Microsoft.Subscriptions.Admin/subscriptions/%s\","
		                    "\"subscriptionId\":\"%s\",\"delegatedProviderSubscriptionId\":"
		                    "\"%s\",\"displayName\":",
		                    emitted++ ? "," : "", w->provider_sub, u->id, u->id,
		                    t->delegated[0] ? t->delegated : w->provider_sub);
		sim_json_str(r->body, u->display);
		evbuffer_add_printf(
		        r->body,
		        ",\"owner\":\"admin@%s.onmicrosoft.com\",\"tenantId\":\"%s\","
		        "\"routingResourceManagerType\":\"Default\",\"offerId\":"
		        "\"/subscriptions/%s/resourceGroups/plans/providers/"
		        "Microsoft.Subscriptions.Admin/offers/standard\",\"state\":\"%s\"}",
		        w->tenants[u->tenant].name, w->tenants[u->tenant].id, w->provider_sub,
		        u->disabled ? "Disabled" : "Enabled");
		to = i + 1;
	}
	evbuffer_add_printf(r->body, "]");
	if (more) {
		evbuffer_add_printf(r->body, ",\"nextLink\":\"https://");
		next_link_authority(s, req, SIM_EP_SUBSCRIPTIONS, r->body);
		evbuffer_add_printf(r->body, "%s?api-version=" SUBS_API_VERSION "&$skipToken=%zu\"",
		                    path, to);
	}
	evbuffer_add_printf(r->body, "}");
}

/* The registration, its customerSubscriptions list, PUT and DELETE of one. */
static void
handle_arm(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q, const char *path,
           char **seg, int nseg, struct sim_response *r)
{
	struct sim_world *w = &s->world;
	const char *version = evhttp_find_header(q, "api-version");
	int method = (int)evhttp_request_get_command(req);

	if (!identity_check(s, req, w->aud_arm, r) || !subscription_known(seg[1], w->reg_sub, r))
		return;
	if (!api_version_ok(version, registration_versions, r))
		return;
	if (strcasecmp(seg[3], w->reg_rg) != 0 || strcasecmp(seg[7], w->reg_name) != 0) {
		sim_arm_error(r, 404, "RegistrationNotFound", NULL);
		return;
	}
	if (nseg == 8) {
		if (method != EVHTTP_REQ_GET) {
			sim_arm_error(r, 405, "MethodNotAllowed", "Use GET.");
			return;
		}
		evbuffer_add_printf(r->body, "{\"id\":");
		sim_json_str(r->body, w->reg_id);
		evbuffer_add_printf(
		        r->body,
		        ",\"name\":\"%s\",\"type\":\"Microsoft.AzureStack/registrations\","
		        "\"location\":\"global\",\"etag\":\"\\\"%.8s-0000-0000-0000-"
		        "5a82517f0000\\\"\",\"properties\":{\"cloudId\":\"%s\","
		        "\"objectId\":\"%s\",\"billingModel\":\"%s\"}}",
		        w->reg_name, w->cloud_id, w->cloud_id, w->object_id, w->billing_model);
		return;
	}
	if (nseg == 9) {
		const char *skip = evhttp_find_header(q, "$skipToken");
		size_t from = skip ? (size_t)strtoul(skip, NULL, 10) : 0, k = 0, emitted = 0;
		bool more = false;

		if (method != EVHTTP_REQ_GET) {
			sim_arm_error(r, 405, "MethodNotAllowed", "Use GET.");
			return;
		}
		for (size_t i = 0; i < w->n_tenants; i++)
			k += w->tenants[i].customer[0] != '\0';
		if (k == 0 && s->list_answer != SIM_LIST_VALUE) {
			/* an empty list as some ARM versions write it: no body at all, or {} */
			if (s->list_answer == SIM_LIST_OBJECT)
				evbuffer_add_printf(r->body, "{}");
			return;
		}
		k = 0;
		evbuffer_add_printf(r->body, "{\"value\":[");
		for (size_t i = 0; i < w->n_tenants; i++) {
			if (!w->tenants[i].customer[0] || k++ < from)
				continue;
			if (emitted == w->arm_page_size) {
				more = true;
				break;
			}
			if (emitted++)
				evbuffer_add(r->body, ",", 1);
			customer_entry(s, &w->tenants[i], r->body);
		}
		evbuffer_add_printf(r->body, "]");
		if (more)
			evbuffer_add_printf(
			        r->body,
			        ",\"nextLink\":\"https://%s%s?api-version=%s&$skipToken="
			        "%zu\"",
			        host_of(req), path, version, from + emitted);
		evbuffer_add_printf(r->body, "}");
		return;
	}
	/* one customer subscription */
	if (!world_is_guid(seg[9], false)) {
		sim_arm_error(r, 400, "InvalidCustomerSubscriptionId", NULL);
		return;
	}
	if (method == EVHTTP_REQ_GET) {
		for (size_t i = 0; i < w->n_tenants; i++)
			if (strcasecmp(w->tenants[i].customer, seg[9]) == 0) {
				customer_entry(s, &w->tenants[i], r->body);
				return;
			}
		sim_arm_error(r, 404, "CustomerSubscriptionNotFound", NULL);
	} else if (method == EVHTTP_REQ_PUT) {
		json_t *body = body_json(req);
		const char *tenant = json_string_value(
		        json_object_get(json_object_get(body, "properties"), "tenantId"));
		int t;

		if (!world_is_guid(tenant, false)) {
			json_decref(body);
			sim_arm_error(
			        r, 400, "BadRequest",
			        "The body must be {\"properties\":{\"tenantId\":\"<guid>\"}}.");
			return;
		}
		if (strcmp(w->billing_model, "Capacity") == 0) {
			json_decref(body);
			sim_arm_error(r, 400, "CustomerSubscriptionsNotAllowed", NULL);
			return;
		}
		t = world_find_tenant(w, tenant);
		if (t < 0) {
			struct sim_tenant *nt;

			w->tenants =
			        xreallocarray(w->tenants, w->n_tenants + 1, sizeof(*w->tenants));
			nt = &w->tenants[w->n_tenants];
			memset(nt, 0, sizeof(*nt));
			for (size_t i = 0; i < SIM_GUID_LEN; i++)
				nt->id[i] = (char)tolower((unsigned char)tenant[i]);
			snprintf(nt->name, sizeof(nt->name), "external%zu", w->n_tenants + 1);
			t = (int)w->n_tenants++;
		}
		json_decref(body);
		for (size_t i = 0; i < w->n_tenants; i++)
			if (strcasecmp(w->tenants[i].customer, seg[9]) == 0)
				w->tenants[i].customer[0] = '\0';
		for (size_t i = 0; i < SIM_GUID_LEN; i++)
			w->tenants[t].customer[i] = (char)tolower((unsigned char)seg[9][i]);
		w->tenants[t].customer[SIM_GUID_LEN] = '\0';
		w->reg_gen++;
		/* documented: 201 with an empty body; /_sim/arm chooses another documented form */
		r->status = s->put_answer == SIM_PUT_200_BODY || s->put_answer == SIM_PUT_200_EMPTY
		                    ? 200
		                    : 201;
		if (s->put_answer == SIM_PUT_201_BODY || s->put_answer == SIM_PUT_200_BODY)
			customer_entry(s, &w->tenants[t], r->body);
	} else if (method == EVHTTP_REQ_DELETE) {
		bool found = false;

		for (size_t i = 0; i < w->n_tenants; i++)
			if (strcasecmp(w->tenants[i].customer, seg[9]) == 0) {
				w->tenants[i].customer[0] = '\0';
				w->reg_gen++;
				found = true;
			}
		/* documented: 204 (also when it was not there); or 200 when it was there */
		r->status = found && s->delete_answer == SIM_DELETE_200_204 ? 200 : 204;
	} else {
		sim_arm_error(r, 405, "MethodNotAllowed", "Use GET, PUT or DELETE.");
	}
}

/* The control API: world, faults, clock, ledger summary, expected events, requests, reset. */
static void
handle_control(struct sim *s, struct evhttp_request *req, struct evkeyvalq *q, const char *path,
               struct sim_response *r)
{
	int method = (int)evhttp_request_get_command(req);
	const char *from_s = evhttp_find_header(q, "from"),
	           *until_s = evhttp_find_header(q, "until");
	int64_t from = INT64_MIN / 2, until = INT64_MAX / 2;
	json_t *out = NULL;

	if ((from_s && time_parse_rfc3339(from_s, &from) < 0) ||
	    (until_s && time_parse_rfc3339(until_s, &until) < 0)) {
		sim_arm_error(r, 400, "BadRequest", "from and until must be RFC 3339 times.");
		return;
	}
	if (streq(path, "/_sim/world") && method == EVHTTP_REQ_GET) {
		char now[32];

		out = json_object();
		world_describe(&s->world, out);
		json_object_set_new(out, "url", json_sprintf("https://%s", host_of(req)));
		time_format_rfc3339(sim_now(s), now);
		json_object_set_new(out, "now", json_string(now));
	} else if (streq(path, "/_sim/faults") && method == EVHTTP_REQ_GET) {
		out = json_pack("{s:o}", "rules", faults_dump(s));
	} else if (streq(path, "/_sim/faults") && method == EVHTTP_REQ_POST) {
		json_t *plan = body_json(req);
		_cleanup_free_ char *err = NULL;

		if (!plan || faults_load(s, plan, &err) < 0) {
			json_decref(plan);
			sim_arm_error(r, 400, "BadRequest", err ? err : "The body is not JSON.");
			return;
		}
		json_decref(plan);
		out = json_pack("{s:o}", "rules", faults_dump(s));
	} else if (streq(path, "/_sim/clock")) {
		char now[32];

		if (method == EVHTTP_REQ_POST) {
			json_t *b = body_json(req), *adv = json_object_get(b, "advance");
			const char *n = json_string_value(json_object_get(b, "now"));
			int64_t t;

			if (n && time_parse_rfc3339(n, &t) == 0) {
				s->clock_base = t;
				s->clock_fixed = true;
			} else if (json_is_integer(adv)) {
				s->clock_base = sim_now(s) + json_integer_value(adv);
				s->clock_fixed = true;
			} else if (json_is_true(json_object_get(b, "real"))) {
				s->clock_fixed = false;
			} else {
				json_decref(b);
				sim_arm_error(r, 400, "BadRequest",
				              "Use {\"now\":RFC3339}, {\"advance\":seconds} or "
				              "{\"real\":true}.");
				return;
			}
			json_decref(b);
		}
		time_format_rfc3339(sim_now(s), now);
		out = json_pack("{s:s, s:b}", "now", now, "fixed", s->clock_fixed);
	} else if (streq(path, "/_sim/arm")) {
		if (method == EVHTTP_REQ_POST) {
			json_t *b = body_json(req);
			_cleanup_free_ char *err = NULL;

			if (!json_is_object(b) || arm_answers_load(s, b, &err) < 0) {
				json_decref(b);
				sim_arm_error(r, 400, "BadRequest",
				              err ? err : "The body is not JSON.");
				return;
			}
			json_decref(b);
		}
		out = arm_answers_dump(s);
	} else if (streq(path, "/_sim/ledger/summary") && method == EVHTTP_REQ_GET) {
		commerce_summary(s, from, until, r->body);
	} else if (streq(path, "/_sim/expected/events") && method == EVHTTP_REQ_GET) {
		const char *limit = evhttp_find_header(q, "limit");

		commerce_expected_events(s, from, until,
		                         limit ? (size_t)strtoul(limit, NULL, 10) : SIZE_MAX,
		                         r->body);
	} else if (streq(path, "/_sim/requests") && method == EVHTTP_REQ_GET) {
		json_t *counts = json_object(), *list = json_array();

		for (int e = 0; e < SIM_EP_MAX; e++) {
			json_t *c = json_object();

			for (int st = 0; st < 600; st++)
				if (s->counts[e][st]) {
					char k[8];

					snprintf(k, sizeof(k), "%d", st);
					json_object_set_new(c, k, json_integer(s->counts[e][st]));
				}
			json_object_set_new(counts, endpoint_names[e], c);
		}
		for (size_t i = 0; i < s->n_log; i++) {
			const struct sim_logentry *l = &s->log[i];

			json_array_append_new(
			        list,
			        json_pack(
			                "{s:s, s:s, s:s, s:s?, s:i, s:s?, s:s?, s:s?, s:i, s:s?, s:b, s:I}",
			                "endpoint", endpoint_names[l->endpoint], "method",
			                l->method, "path", l->path, "query", l->query, "status",
			                l->status, "action", l->action, "correlationId",
			                l->correlation_id, "requestId", l->request_id, "events",
			                l->events, "host", l->host, "bearer", l->bearer, "atMs",
			                (json_int_t)l->at_ms));
		}
		out = json_pack("{s:o, s:o}", "counts", counts, "requests", list);
	} else if (streq(path, "/_sim/reset") && method == EVHTTP_REQ_POST) {
		_cleanup_free_ char *err = NULL;

		commerce_reset(s);
		log_reset(s);
		memset(s->counts, 0, sizeof(s->counts));
		world_reset_state(&s->world);
		json_object_clear(s->hour_queries);
		json_object_clear(s->loops);
		json_object_clear(s->expired);
		s->put_answer = SIM_PUT_201_EMPTY;
		s->delete_answer = SIM_DELETE_204;
		s->list_answer = SIM_LIST_VALUE;
		if (s->world.arm_answers)
			arm_answers_load(s, s->world.arm_answers, &err);
		s->pages_served = s->records_served = 0;
		if (s->world.faults)
			faults_load(s, s->world.faults, &err);
		else
			faults_free(s);
		out = json_pack("{s:b}", "reset", 1);
	} else {
		sim_arm_error(r, 404, "NotFound", "Unknown control path.");
		return;
	}
	if (out) {
		char *text = json_dumps(out, JSON_COMPACT);

		evbuffer_add(r->body, text, strlen(text));
		free(text);
		json_decref(out);
	}
}

/*
 * Set how ARM answers PUT and DELETE of a customer subscription and an empty list:
 * {"put": "201-empty|201-body|200-body|200-empty", "delete": "204|200-204",
 *  "emptyList": "value|none|object"}, each optional.
 */
static int
arm_answers_load(struct sim *s, json_t *o, char **ret_error)
{
	const char *put = json_string_value(json_object_get(o, "put"));
	const char *del = json_string_value(json_object_get(o, "delete"));
	const char *list = json_string_value(json_object_get(o, "emptyList"));
	int p = put ? answer_index(put, put_answers, ARRAY_SIZE(put_answers)) : (int)s->put_answer;
	int d = del ? answer_index(del, delete_answers, ARRAY_SIZE(delete_answers))
	            : (int)s->delete_answer;
	int l = list ? answer_index(list, list_answers, ARRAY_SIZE(list_answers))
	             : (int)s->list_answer;

	if (!json_is_object(o) || p < 0 || d < 0 || l < 0) {
		*ret_error = xstrdup("armAnswers: put 201-empty, 201-body, 200-body or 200-empty; "
		                     "delete 204 or 200-204; emptyList value, none or object");
		return -EINVAL;
	}
	s->put_answer = (enum sim_put_answer)p;
	s->delete_answer = (enum sim_delete_answer)d;
	s->list_answer = (enum sim_list_answer)l;
	return 0;
}

/* How ARM answers now (GET /_sim/arm). */
static json_t *
arm_answers_dump(const struct sim *s)
{
	return json_pack("{s:s, s:s, s:s}", "put", put_answers[s->put_answer], "delete",
	                 delete_answers[s->delete_answer], "emptyList",
	                 list_answers[s->list_answer]);
}

/* The index of text in a table of names, or -EINVAL. */
static int
answer_index(const char *text, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (streq(text, names[i]))
			return (int)i;
	return -EINVAL;
}

/* Append one customerSubscriptions entry (upper-case id and name, as the API example has). */
static void
customer_entry(struct sim *s, const struct sim_tenant *t, struct evbuffer *b)
{
	char up[SIM_GUID_LEN + 1];

	for (size_t i = 0; i <= SIM_GUID_LEN; i++)
		up[i] = (char)toupper((unsigned char)t->customer[i]);
	evbuffer_add_printf(b, "{\"id\":");
	{
		_cleanup_free_ char *id =
		        xasprintf("%s/customerSubscriptions/%s", s->world.reg_id, up);

		sim_json_str(b, id);
	}
	evbuffer_add_printf(b,
	                    ",\"name\":\"%s/%s\",\"type\":\"Microsoft.AzureStack/registrations/"
	                    "customerSubscriptions\",\"properties\":{\"tenantId\":\"%s\"}}",
	                    s->world.reg_name, up, t->id);
}

/*
 * Check the subscription segment of a path against the one this endpoint serves (any case, like
 * ARM); false with ARM's 404 SubscriptionNotFound when it names another.
 */
static bool
subscription_known(const char *id, const char *expected, struct sim_response *r)
{
	_cleanup_free_ char *message = NULL;

	if (strcasecmp(id, expected) == 0)
		return true;
	message = xasprintf("The subscription '%s' could not be found.", id);
	sim_arm_error(r, 404, "SubscriptionNotFound", message);
	return false;
}

/*
 * Check an api-version query value against the versions an endpoint supports; false with ARM's
 * 400 MissingApiVersionParameter or InvalidApiVersionParameter (naming the supported ones).
 */
static bool
api_version_ok(const char *version, const char *const *supported, struct sim_response *r)
{
	_cleanup_free_ char *message = NULL;
	struct evbuffer *list;

	if (!version) {
		sim_arm_error(r, 400, "MissingApiVersionParameter",
		              "The api-version query parameter (?api-version=) is required for all "
		              "requests.");
		return false;
	}
	for (const char *const *v = supported; *v; v++)
		if (streq(version, *v))
			return true;
	list = evbuffer_new();
	if (!list)
		abort();
	for (const char *const *v = supported; *v; v++)
		evbuffer_add_printf(list, "%s%s", v == supported ? "" : ",", *v);
	evbuffer_add(list, "", 1);
	message = xasprintf("The api-version '%s' is invalid. The supported versions are '%s'.",
	                    version, (const char *)evbuffer_pullup(list, -1));
	evbuffer_free(list);
	sim_arm_error(r, 400, "InvalidApiVersionParameter", message);
	return false;
}

/* The documented message of an ARM error code. */
static const char *
arm_message(const char *code)
{
	for (size_t i = 0; i < ARRAY_SIZE(arm_messages); i++)
		if (streq(arm_messages[i].code, code))
			return arm_messages[i].message;
	return "Simulated error.";
}

/* The host[:port] the client used (Host header), else the listening address. */
static const char *
host_of(struct evhttp_request *req)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");

	return h && *h && !strpbrk(h, "\"\\/ ") ? h : authority;
}

/* Append s percent-encoded the way the usage API does (lower-case hex). */
static void
append_encoded(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~')
			evbuffer_add(b, s, 1);
		else
			evbuffer_add_printf(b, "%%%02x", ch);
	}
}

/* Parse a request body as JSON; NULL when it is not. */
static json_t *
body_json(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);

	return json_loadb((const char *)evbuffer_pullup(in, -1), n, 0, NULL);
}

/* Tell whether the peer is on the loopback interface. */
static bool
is_loopback(struct evhttp_request *req)
{
	const struct sockaddr *sa = evhttp_connection_get_addr(evhttp_request_get_connection(req));

	if (!sa)
		return false;
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

/* Remember a request for /_sim/requests (never a header value other than the two ids). */
static void
log_request(struct sim *s, struct evhttp_request *req, int ep, const char *path, int status,
            const char *action, unsigned events)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *corr = evhttp_find_header(h, "x-ms-correlationid");
	const char *rid = evhttp_find_header(h, "x-ms-requestid");
	const char *host = evhttp_find_header(h, "Host");
	const char *auth = evhttp_find_header(h, "Authorization");
	int cmd = (int)evhttp_request_get_command(req);
	struct sim_logentry *l;

	if (status >= 0 && status < 600)
		s->counts[ep][status]++;
	if (s->n_log >= SIM_LOG_MAX)
		return;
	s->log = xreallocarray(s->log, s->n_log + 1, sizeof(*s->log));
	l = &s->log[s->n_log++];
	memset(l, 0, sizeof(*l));
	l->endpoint = (uint8_t)ep;
	l->status = (uint16_t)status;
	snprintf(l->method, sizeof(l->method), "%s",
	         cmd == EVHTTP_REQ_GET      ? "GET"
	         : cmd == EVHTTP_REQ_POST   ? "POST"
	         : cmd == EVHTTP_REQ_PUT    ? "PUT"
	         : cmd == EVHTTP_REQ_DELETE ? "DELETE"
	                                    : "OTHER");
	l->path = xstrdup(path);
	{
		const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));

		l->query = query ? xstrdup(query) : NULL;
	}
	l->action = action ? xstrdup(action) : NULL;
	l->correlation_id = corr ? xstrndup(corr, 64) : NULL;
	l->request_id = rid ? xstrndup(rid, 64) : NULL;
	l->host = host ? xstrndup(host, 256) : NULL;
	l->bearer = auth && strncasecmp(auth, "Bearer ", 7) == 0;
	l->events = events;
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		l->at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	}
}

/* Forget the request log. */
static void
log_reset(struct sim *s)
{
	for (size_t i = 0; i < s->n_log; i++) {
		free(s->log[i].path);
		free(s->log[i].query);
		free(s->log[i].action);
		free(s->log[i].correlation_id);
		free(s->log[i].request_id);
		free(s->log[i].host);
	}
	free(s->log);
	s->log = NULL;
	s->n_log = 0;
}

/* CPU time of this thread in nanoseconds. */
static uint64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Write the port number to a file atomically (write a temporary file, rename). */
static int
write_port_file(const char *path, int port)
{
	_cleanup_free_ char *tmp = xasprintf("%s.tmp", path);
	FILE *f = fopen(tmp, "we");

	if (!f)
		return -errno;
	fprintf(f, "%d\n", port);
	if (fclose(f) != 0 || rename(tmp, path) < 0)
		return -errno;
	return 0;
}

/* Read the scenario file. */
static int
load_scenario(const char *path, json_t **ret)
{
	json_error_t e;
	json_t *sc = json_load_file(path, JSON_REJECT_DUPLICATES, &e);

	if (!sc) {
		fprintf(stderr, "azs-sim: %s:%d: %s\n", path, e.line, e.text);
		return -EINVAL;
	}
	*ret = sc;
	return 0;
}

/* Print the usage text. */
static void
help(void)
{
	printf("Usage: azs-sim --cert PEM --key PEM --state-dir DIR [options]\n"
	       "\n"
	       "A simulator of Azure Stack Hub, Azure AD / AD FS, ARM registrations and Commerce\n"
	       "for azs-usaged tests. See tests/sim/README.md.\n"
	       "\n"
	       "  --listen IP:PORT        address to listen on (default 127.0.0.1:0: a free port)\n"
	       "  --cert PEM, --key PEM   TLS server certificate (chain) and key\n"
	       "  --scenario FILE         JSON scenario (default: all defaults)\n"
	       "  --state-dir DIR         where the Commerce ledger (ledger.db) lives\n"
	       "  --port-file FILE        write the port here once listening\n"
	       "  --now RFC3339           fix the simulated clock (POST /_sim/clock moves it)\n"
	       "  --seed N, --records-per-hour N, --hours N   override the scenario\n"
	       "  --help, --version\n");
}

/* 10^n as a signed 128-bit integer (n <= 38). */
static sim_i128
pow10_i128(unsigned n)
{
	sim_i128 v = 1;

	while (n--)
		v *= 10;
	return v;
}
