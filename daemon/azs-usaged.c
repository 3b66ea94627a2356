/*
 * azs-usaged, the daemon: reads the options and the configuration, builds the event loop with
 * its signal events and the systemd notifications (READY, RELOADING, STOPPING, STATUS, the
 * watchdog), runs the loop and tears everything down in reverse. The pipelines of
 * ARCHITECTURE.md section 2 are made by daemon_start() after the loop exists, in the order
 * store, registry, collector, forwarder, health, started by daemon_loop() after READY=1 and
 * stopped by daemon_stop() in reverse.
 *
 * The store is opened (and checked) before READY=1; records a previous run left inflight go back
 * to pending with their batch ids, so they are re-sent under the same usageEventIds. Two loop
 * timers look after it: the STATUS= line ("pending 120, dead 0, held 0, last forward 14s ago"),
 * and pruning of forwarded records past [store] retention, a small transaction per loop turn so
 * the loop never stalls. The health server listens on [health] listen before READY=1 too: a
 * daemon that cannot be watched does not start. It answers /healthz on a thread of its own from
 * the loop's heartbeat (lib/health.h), so that a busy loop is never taken for a dead one, and
 * hands the other questions to the loop. Its /readyz asks one check per concern: the
 * store (cannot be read, the last write failed, records held as ambiguous), the two token
 * sources, the collector, the registry and the forwarder.
 *
 * The collector gets the HTTP client (libcurl multi on this loop), the stamp's token source and
 * the metrics registry; it starts after READY=1 and is stopped first on SIGTERM, its requests in
 * flight cancelled (a page not yet committed is collected again after the restart). SIGHUP hands
 * it the new intervals; new stack credentials get a new token source.
 *
 * The [azure] identity's token source serves the registry (the registration cache and the charge
 * mapping) and the forwarder, which claims batches with the registry's map and holds while its
 * cache is stale. On SIGTERM the forwarder claims nothing more and gets up to 30 s for the batches
 * in flight to be answered and their outcomes stored; then the loop ends and everything is torn
 * down: forwarder, collector, registry, then the token sources, HTTP and the store. SIGHUP hands
 * the forwarder its new batch sizes and backoff and the registry its new intervals; new [azure]
 * credentials get a new token source, handed to both.
 */
#define LOG_MODULE "main"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "auth.h"
#include "collector.h"
#include "config.h"
#include "forwarder.h"
#include "health.h"
#include "http.h"
#include "jsonarena.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "registry.h"
#include "store.h"
#include "timeutil.h"

#define DAEMON_DEFAULT_CONFIG "/etc/azs-usaged/azs-usaged.conf"
#define DAEMON_EXIT_USAGE     2
#define DAEMON_STATUS_SEC     10   /* STATUS= refresh */
#define DAEMON_PRUNE_SEC      600  /* look for forwarded records past retention */
#define DAEMON_PRUNE_CHUNK    2000 /* rows per prune transaction: a few ms of the loop */
#define DAEMON_DRAIN_USEC     (30 * USEC_PER_SEC) /* SIGTERM: wait for batches in flight */

/* when the health server started: forwarding counts as failing from then until a success */
static int64_t daemon_health_since;

#define DAEMON_COLLECT_FAILURES 3 /* polls failed in a row that make the daemon not ready */

struct health;

/* What the command line asked for. */
struct daemon_options {
	const char *config_path;
	bool check_config;
	bool foreground;
};

/* Everything the running daemon owns; the loop callbacks get a pointer to it. */
struct daemon {
	const char *config_path;
	struct config *config;

	struct event_base *base;
	struct event *sigterm;
	struct event *sigint;
	struct event *sighup;
	struct event *watchdog;
	struct event *status_timer;
	struct event *prune_timer;
	uint64_t pruned; /* forwarded records pruned in the current pass */
	bool stopping;   /* SIGTERM: the forwarder is draining */

	/* What the pipelines share: metrics, the HTTP client, the stamp's token source. */
	struct metrics *metrics;
	struct http_client *http;
	struct auth *stack_auth;
	struct auth *azure_auth; /* the [azure] identity: registration and Commerce */

	/* The pipelines, in start order; each is stopped before the ones above it. */
	struct store *store;
	struct registry *registry;
	struct collector *collector;
	struct forwarder *forwarder;
	struct health *health;
};

static int parse_options(int argc, char **argv, struct daemon_options *ret);
static void print_help(void);
static int check_config(const char *path);
static int daemon_load_config(struct daemon *d);
static int daemon_start(struct daemon *d);
static int daemon_loop(struct daemon *d);
static void daemon_stop(struct daemon *d);
static int daemon_add_signal(struct daemon *d, int signo, struct event **ret);
static int daemon_start_watchdog(struct daemon *d);
static int daemon_open_store(struct daemon *d);
static int daemon_new_auth(struct daemon *d, const char *identity,
                           const struct auth_options *options, const char *certificate_file,
                           struct auth **ret);
static int daemon_new_stack_auth(struct daemon *d, const struct config *endpoints,
                                 const struct config *credentials, struct auth **ret);
static int daemon_new_collector(struct daemon *d);
static void daemon_collector_settings(const struct config *c, struct collector_settings *ret);
static int daemon_new_azure_auth(struct daemon *d, const struct config *endpoints,
                                 const struct config *credentials, struct auth **ret);
static int daemon_new_forwarder(struct daemon *d);
static void daemon_forwarder_settings(const struct config *c, struct forwarder_settings *ret);
static bool daemon_registry_stale(void *userdata);
static void on_drained(void *userdata, unsigned left_inflight);
static int daemon_add_timer(struct daemon *d, event_callback_fn cb, struct event **ret);
static void daemon_notify(struct daemon *d, const char *state);
static void format_ago(int64_t seconds, char *buf, size_t size);
static void daemon_reload(struct daemon *d);
static void daemon_log_problems(const struct config_problems *problems);
static void on_signal(evutil_socket_t fd, short what, void *userdata);
static void on_watchdog(evutil_socket_t fd, short what, void *userdata);
static void on_status_timer(evutil_socket_t fd, short what, void *userdata);
static void on_prune_timer(evutil_socket_t fd, short what, void *userdata);
static int daemon_start_health(struct daemon *d);
static void daemon_health_refresh(void *userdata, struct metrics *metrics);
static void daemon_health_status(void *userdata, struct health_status *ret);
static void daemon_check_store(void *userdata, struct health_reasons *reasons);
static void daemon_check_tokens(void *userdata, struct health_reasons *reasons);
static void daemon_check_auth(struct health_reasons *reasons, const char *identity, struct auth *a);
static void daemon_check_collector(void *userdata, struct health_reasons *reasons);
static void daemon_check_registry(void *userdata, struct health_reasons *reasons);
static void daemon_check_forwarder(void *userdata, struct health_reasons *reasons);

/* Run the daemon: init in order, loop, teardown in reverse. */
int
main(int argc, char **argv)
{
	struct daemon_options opts;
	struct daemon d = {0};
	int r;

	/*
	 * glibc's malloc maps a block of 256 KiB or more (a usage page's body and its parsed
	 * strings, a Commerce batch) for itself and unmaps it when freed. Left to itself, glibc
	 * raises that threshold to the largest block freed so far, and those blocks then stay in
	 * the heap, resident, after use: scripts/bench catchup's peak RSS 45.8 -> 43.7 MiB.
	 */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	/* jansson's allocator is process-wide: set it before any thread uses jansson */
	jsonarena_install();
	r = parse_options(argc, argv, &opts);
	if (r <= 0)
		return r < 0 ? DAEMON_EXIT_USAGE : EXIT_SUCCESS;
	if (opts.check_config)
		return check_config(opts.config_path) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

	log_open(opts.foreground ? LOG_TARGET_STDERR : LOG_TARGET_AUTO);
	d.config_path = opts.config_path;

	r = daemon_load_config(&d);
	if (r >= 0)
		r = daemon_start(&d);
	if (r >= 0)
		r = daemon_loop(&d);
	daemon_stop(&d);

	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * Parse the command line. Returns 1 to go on, 0 when --help or --version answered everything,
 * -EINVAL on a usage error (already reported).
 */
static int
parse_options(int argc, char **argv, struct daemon_options *ret)
{
	enum { OPT_VERSION = 0x100, OPT_CHECK_CONFIG, OPT_FOREGROUND };
	static const struct option options[] = {
	        {"config", required_argument, NULL, 'c'},
	        {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
	        {"foreground", no_argument, NULL, OPT_FOREGROUND},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, OPT_VERSION},
	        {0},
	};
	struct daemon_options opts = {.config_path = DAEMON_DEFAULT_CONFIG};
	int c;

	while ((c = getopt_long(argc, argv, "c:hnf", options, NULL)) >= 0) {
		switch (c) {
		case 'c':
			opts.config_path = optarg;
			break;
		case 'n':
		case OPT_CHECK_CONFIG:
			opts.check_config = true;
			break;
		case 'f':
		case OPT_FOREGROUND:
			opts.foreground = true;
			break;
		case 'h':
			print_help();
			return 0;
		case OPT_VERSION:
			printf("azs-usaged %s\n", AZS_VERSION);
			return 0;
		default:
			fprintf(stderr, "Try 'azs-usaged --help' for more information.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "azs-usaged: unexpected argument '%s'\n", argv[optind]);
		fprintf(stderr, "Try 'azs-usaged --help' for more information.\n");
		return -EINVAL;
	}
	if (isempty(opts.config_path)) {
		fprintf(stderr, "azs-usaged: -c needs a file name\n");
		return -EINVAL;
	}

	*ret = opts;
	return 1;
}

/* Print the manual. */
static void
print_help(void)
{
	fputs("NAME\n"
	      "    azs-usaged - forward Azure Stack Hub usage to Azure Commerce, per tenant\n"
	      "\n"
	      "SYNOPSIS\n"
	      "    azs-usaged [-c FILE] [--foreground]\n"
	      "    azs-usaged --check-config [-c FILE]\n"
	      "    azs-usaged --help | --version\n"
	      "\n"
	      "DESCRIPTION\n"
	      "    azs-usaged collects the hourly usage records of one Azure Stack Hub stamp,\n"
	      "    queues them durably in SQLite, charges each tenant's usage to the customer\n"
	      "    subscription registered for its directory tenant (or to the default\n"
	      "    subscription of the stamp's registration) and forwards the records in\n"
	      "    batches to Azure Commerce. It runs under systemd (Type=notify) and logs to\n"
	      "    the journal; outside systemd, or with --foreground, it writes one logfmt\n"
	      "    line per entry to standard error.\n"
	      "\n"
	      "OPTIONS\n"
	      "    -c, --config FILE\n"
	      "        Read the configuration from FILE (default " DAEMON_DEFAULT_CONFIG ").\n"
	      "\n"
	      "    -n, --check-config\n"
	      "        Validate the configuration and exit. Every error is printed to\n"
	      "        standard error as FILE:LINE: section.key: reason, then every\n"
	      "        warning as warning: FILE:LINE: section.key: reason; a file\n"
	      "        without errors (warnings allowed) prints 'configuration OK' to\n"
	      "        standard output.\n"
	      "\n"
	      "    -f, --foreground\n"
	      "        Log to standard error in logfmt even when started by systemd.\n"
	      "\n"
	      "    -h, --help\n"
	      "        Print this text and exit.\n"
	      "\n"
	      "    --version\n"
	      "        Print the version and exit.\n"
	      "\n"
	      "SIGNALS\n"
	      "    SIGHUP\n"
	      "        Re-read the configuration file. A file with errors is refused, each\n"
	      "        error logged, and the running configuration kept. Batch sizes,\n"
	      "        intervals, the log level ([log] level) and the credentials of both\n"
	      "        identities apply at once; changed endpoints, the store path and the\n"
	      "        health listen address are logged as needing a restart.\n"
	      "\n"
	      "    SIGTERM, SIGINT\n"
	      "        Stop and exit with status 0.\n"
	      "\n"
	      "    SIGPIPE\n"
	      "        Ignored.\n"
	      "\n"
	      "FILES\n"
	      "    " DAEMON_DEFAULT_CONFIG "\n"
	      "        The configuration (INI). Secrets are never written in it: *_file keys\n"
	      "        name files, looked up in $CREDENTIALS_DIRECTORY first, then beside\n"
	      "        the configuration file.\n"
	      "\n"
	      "    /etc/azs-usaged/credentials/\n"
	      "        The secrets the unit hands over with LoadCredential= (for\n"
	      "        azs-usaged@STAMP: /etc/azs-usaged/credentials/STAMP/). Outside\n"
	      "        systemd nothing sets $CREDENTIALS_DIRECTORY, so check the\n"
	      "        configuration against them with:\n"
	      "            CREDENTIALS_DIRECTORY=/etc/azs-usaged/credentials \\\n"
	      "                azs-usaged --check-config\n"
	      "\n"
	      "ENVIRONMENT\n"
	      "    NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID\n"
	      "        Set by systemd: readiness, reload and stop notifications, and the\n"
	      "        watchdog (WATCHDOG=1 is sent at half of WATCHDOG_USEC).\n"
	      "\n"
	      "    JOURNAL_STREAM, CREDENTIALS_DIRECTORY\n"
	      "        Set by systemd: log to the journal; where credentials are found\n"
	      "        (set CREDENTIALS_DIRECTORY by hand to use them outside the unit).\n"
	      "\n"
	      "EXIT STATUS\n"
	      "    0   stopped by SIGTERM or SIGINT; --check-config found no error;\n"
	      "        --help or --version\n"
	      "    1   invalid configuration, or the daemon could not start (the store\n"
	      "        cannot be opened, [health] listen cannot be bound, ...)\n"
	      "    2   usage error: an unknown option or an unexpected argument\n",
	      stdout);
}

/*
 * --check-config: print every error, then every warning (prefixed "warning: "), and
 * "configuration OK" when there is no error.
 */
static int
check_config(const char *path)
{
	struct config_problems problems = {0};
	struct config *c = NULL;
	int r;

	/* secrets read are registered by config_load() even when it fails: the lines are redacted
	 */
	r = config_load(path, &c, &problems);
	for (size_t i = 0; i < problems.n_errors; i++) {
		_cleanup_free_ char *line = log_redact(problems.errors[i]);

		fprintf(stderr, "%s\n", line);
	}
	/* errors keep the contract form FILE:LINE: section.key: reason; warnings say what they are
	 */
	for (size_t i = 0; i < problems.n_warnings; i++) {
		_cleanup_free_ char *line = log_redact(problems.warnings[i]);

		fprintf(stderr, "warning: %s\n", line);
	}
	if (r < 0 && problems.n_errors == 0)
		fprintf(stderr, "%s: %s\n", path, strerror(-r));
	config_problems_done(&problems);
	config_free(c);
	log_clear_secrets();

	if (r < 0)
		return r;
	printf("configuration OK\n");
	return 0;
}

/* Read the configuration; every error is logged and makes start-up fail. */
static int
daemon_load_config(struct daemon *d)
{
	struct config_problems problems = {0};
	int r;

	/* every secret read is registered by now, even from a file with errors */
	r = config_load(d->config_path, &d->config, &problems);
	daemon_log_problems(&problems);
	config_problems_done(&problems);
	if (r < 0)
		return log_error_errno(r, "configuration %s is invalid, not starting",
		                       d->config_path);
	log_set_max_level(d->config->log.level);

	log_fields(LOG_INFO, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_STARTED),
	           "azs-usaged %s started with configuration %s", AZS_VERSION, d->config_path);
	return 0;
}

/* Build the loop, its signal events and the watchdog timer. */
static int
daemon_start(struct daemon *d)
{
	int r;

	d->base = event_base_new();
	if (!d->base)
		return log_error_errno(-ENOMEM, "cannot create the event loop");

	r = daemon_add_signal(d, SIGTERM, &d->sigterm);
	if (r >= 0)
		r = daemon_add_signal(d, SIGINT, &d->sigint);
	if (r >= 0)
		r = daemon_add_signal(d, SIGHUP, &d->sighup);
	if (r < 0)
		return log_error_errno(r, "cannot install the signal events: %m");
	/* a peer closing a connection must be an error return, not the end of the process; so must
	 * a file size limit (the store's write fails, and /readyz says so) */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);

	r = daemon_start_watchdog(d);
	if (r >= 0)
		r = daemon_open_store(d);
	if (r >= 0)
		r = daemon_new_collector(d);
	if (r >= 0)
		r = daemon_new_forwarder(d);
	if (r >= 0)
		r = daemon_start_health(d);
	if (r >= 0)
		r = daemon_add_timer(d, on_status_timer, &d->status_timer);
	if (r >= 0)
		r = daemon_add_timer(d, on_prune_timer, &d->prune_timer);
	if (r < 0)
		return r;
	/* the first prune pass runs as soon as the loop does */
	event_active(d->prune_timer, EV_TIMEOUT, 0);
	return 0;
}

/*
 * Open the store: create or migrate it, refuse a corrupt or foreign file (it is never reset or
 * overwritten: an operator must look at it), and send what a previous run left inflight back to
 * pending under its batch id.
 */
static int
daemon_open_store(struct daemon *d)
{
	struct store_options options = {.path = d->config->store.path};
	_cleanup_free_ char *error = NULL;
	size_t reset = 0;
	int r;

	r = store_open(&options, &d->store, &error);
	if (r == -EBADMSG)
		return log_error_errno(
		        r,
		        "store %s is damaged or not an azs-usaged store (%s); it was "
		        "left untouched: restore it from a backup or move it away",
		        options.path, error ? error : "quick_check failed");
	if (r < 0)
		return log_error_errno(r, "cannot open the store %s: %s", options.path,
		                       error ? error : strerror(-r));

	r = store_reset_inflight(d->store, &reset);
	if (r < 0)
		return log_error_errno(r, "cannot reset inflight records in %s: %s", options.path,
		                       store_errmsg(d->store));
	if (reset > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%zu", reset);
		log_fields(
		        LOG_NOTICE, LOG_FIELDS("AZS_RECORDS", n),
		        "%zu records were inflight when the daemon last stopped; they will be sent "
		        "again under their batch ids",
		        reset);
	}
	log_info("store %s open", options.path);
	return 0;
}

/*
 * The stamp's token source: the endpoints of one configuration (the login endpoint and audience
 * as configured or, unset, from the stamp's metadata endpoint; a change of them needs a restart)
 * and the tenant and client secret or certificate of another (they apply on SIGHUP).
 */
static int
daemon_new_stack_auth(struct daemon *d, const struct config *endpoints,
                      const struct config *credentials, struct auth **ret)
{
	const struct config *c = credentials;
	struct auth_options options = {
	        .login_endpoint = endpoints->stack.login_endpoint,
	        .audience = endpoints->stack.audience,
	        .arm_endpoint = endpoints->stack.arm_endpoint,
	        .tenant = c->stack.tenant,
	        .client_id = c->stack.client.client_id,
	        .client_secret = c->stack.client.secret,
	        .certificate = c->stack.client.certificate,
	};

	return daemon_new_auth(d, "stack", &options, c->stack.client.certificate_file, ret);
}

/* A token source, saying which identity (and which certificate file) when it cannot be made. */
static int
daemon_new_auth(struct daemon *d, const char *identity, const struct auth_options *options,
                const char *certificate_file, struct auth **ret)
{
	int r;

	r = auth_new(d->base, d->http, options, ret);
	if (r == -EBADMSG || r == -EKEYREJECTED || r == -EOPNOTSUPP)
		return log_error_errno(r,
		                       "the %s client certificate %s cannot be used (it needs the "
		                       "certificate and its RSA private key, in PEM): %m",
		                       identity, certificate_file);
	if (r < 0)
		return log_error_errno(r, "cannot set up the %s identity: %m", identity);
	return 0;
}

/* The intervals and limits of configuration c that the collector takes on SIGHUP too. */
static void
daemon_collector_settings(const struct config *c, struct collector_settings *ret)
{
	*ret = (struct collector_settings){
	        .poll_interval_usec = c->stack.poll_interval_usec,
	        .settle_usec = c->stack.settle_usec,
	        .lookback_usec = c->stack.lookback_usec,
	        .refresh_interval_usec = c->stack.refresh_interval_usec,
	        .per_subscriber = c->stack.per_subscriber,
	        .max_pending = c->store.max_pending,
	};
}

/*
 * Make the metrics registry, the HTTP client, the stamp's token source and the collector (started
 * by daemon_loop() once READY=1 is sent).
 */
static int
daemon_new_collector(struct daemon *d)
{
	const struct config *c = d->config;
	struct http_options http = {
	        .ca_file = c->http.ca_file,
	        .proxy = c->http.proxy,
	        .user_agent = c->http.user_agent,
	        .max_response = c->http.max_response,
	};
	struct collector_options options = {
	        .store = d->store,
	        .arm_endpoint = c->stack.arm_endpoint,
	        .provider_subscription = c->stack.provider_subscription,
	        .collect_from = c->stack.collect_from,
	};
	int r;

	d->metrics = metrics_new_daemon(AZS_VERSION);
	r = http_client_new(d->base, &http, &d->http);
	if (r < 0)
		return log_error_errno(
		        r, "cannot set up HTTP (is [http] ca_file %s a PEM bundle?): %m",
		        c->http.ca_file ? c->http.ca_file : "unset");
	r = daemon_new_stack_auth(d, c, c, &d->stack_auth);
	if (r < 0)
		return r;
	options.metrics = d->metrics;
	options.http = d->http;
	options.auth = d->stack_auth;
	daemon_collector_settings(c, &options.settings);
	r = collector_new(d->base, &options, &d->collector);
	if (r < 0)
		return log_error_errno(r, "cannot set up the collector: %m");
	return 0;
}

/*
 * The [azure] identity's token source (registration and Commerce audiences): the login endpoint
 * of one configuration (a change needs a restart) and the tenant and client secret or
 * certificate of another (they apply on SIGHUP).
 */
static int
daemon_new_azure_auth(struct daemon *d, const struct config *endpoints,
                      const struct config *credentials, struct auth **ret)
{
	const struct config *c = credentials;
	struct auth_options options = {
	        .login_endpoint = endpoints->azure.login_endpoint,
	        .tenant = c->azure.tenant,
	        .client_id = c->azure.client.client_id,
	        .client_secret = c->azure.client.secret,
	        .certificate = c->azure.client.certificate,
	};

	return daemon_new_auth(d, "azure", &options, c->azure.client.certificate_file, ret);
}

/* The batch sizes, limits and backoff of configuration c that the forwarder takes on SIGHUP. */
static void
daemon_forwarder_settings(const struct config *c, struct forwarder_settings *ret)
{
	*ret = (struct forwarder_settings){
	        .batch_size = c->commerce.batch_size,
	        .batch_bytes = c->commerce.batch_bytes,
	        .max_inflight = c->commerce.max_inflight,
	        .timeout_usec = c->commerce.timeout_usec,
	        .retry_initial_usec = c->commerce.retry_initial_usec,
	        .retry_max_usec = c->commerce.retry_max_usec,
	};
}

/* The forwarder's hold: the registration cache is absent or older than max_staleness. */
static bool
daemon_registry_stale(void *userdata)
{
	return registry_is_stale(userdata);
}

/*
 * The [azure] token source, the registry (the registration cache and the charge mapping) and the
 * forwarder, which claims with the registry's map and holds while its cache is stale. Started
 * by daemon_loop() once READY=1 is sent.
 */
static int
daemon_new_forwarder(struct daemon *d)
{
	const struct config *c = d->config;
	struct registry_options ro = {
	        .store = d->store,
	        .http = d->http,
	        .metrics = d->metrics,
	};
	struct forwarder_options fo = {
	        .store = d->store,
	        .metrics = d->metrics,
	        .http = d->http,
	        .url = c->commerce.url,
	        .audience = c->commerce.audience,
	        .gzip = c->commerce.compress == CONFIG_COMPRESS_GZIP,
	        .map = registry_map,
	};
	int r;

	r = daemon_new_azure_auth(d, c, c, &d->azure_auth);
	if (r < 0)
		return r;
	ro.auth = d->azure_auth;
	registry_options_from_config(&ro, c);
	r = registry_new(d->base, &ro, &d->registry);
	if (r < 0)
		return log_error_errno(r, "cannot set up the registry: %m");

	fo.auth = d->azure_auth;
	fo.registration = registry_resource_id(d->registry);
	fo.map_userdata = d->registry;
	fo.is_stale = daemon_registry_stale;
	fo.stale_userdata = d->registry;
	daemon_forwarder_settings(c, &fo.settings);
	r = forwarder_new(d->base, &fo, &d->forwarder);
	if (r < 0)
		return log_error_errno(r, "cannot set up the forwarder: %m");
	return 0;
}

/* A timer event, not yet armed. */
static int
daemon_add_timer(struct daemon *d, event_callback_fn cb, struct event **ret)
{
	struct event *ev = evtimer_new(d->base, cb, d);

	if (!ev)
		return log_error_errno(-ENOMEM, "cannot create a timer");
	*ret = ev;
	return 0;
}

/*
 * Notify systemd of state (e.g. "READY=1", or NULL) together with STATUS=, the one-line summary
 * of ARCHITECTURE.md section 8: "pending 120, dead 0, held 0, last forward 14s ago" (conflicts
 * and quarantined records, which wait for an operator, are named when there are any). The counts
 * are kept incrementally by the store: no scan.
 */
static void
daemon_notify(struct daemon *d, const char *state)
{
	struct store_counts counts;
	struct forwarder_status fs = {0};
	char status[320], extra[96] = "", ago[48];
	int r;

	r = store_counts(d->store, &counts);
	if (r < 0) {
		log_warning_errno(r, "cannot read the record counts: %s", store_errmsg(d->store));
		snprintf(status, sizeof(status), "%s%sSTATUS=the store cannot be read",
		         state ? state : "", state ? "\n" : "");
		sd_notify(0, status);
		return;
	}
	if (counts.by_state[STORE_CONFLICT] > 0 || counts.by_state[STORE_QUARANTINED] > 0)
		snprintf(extra, sizeof(extra), ", conflicts %" PRIu64 ", quarantined %" PRIu64,
		         counts.by_state[STORE_CONFLICT], counts.by_state[STORE_QUARANTINED]);
	if (d->forwarder)
		forwarder_get_status(d->forwarder, &fs);
	if (fs.last_success_at > 0) {
		char when[24];

		format_ago(now_seconds() - fs.last_success_at, when, sizeof(when));
		snprintf(ago, sizeof(ago), "last forward %s ago", when);
	} else {
		snprintf(ago, sizeof(ago), "no forward yet");
	}
	snprintf(status, sizeof(status),
	         "%s%sSTATUS=pending %" PRIu64 ", dead %" PRIu64 ", held %" PRIu64 "%s, %s",
	         state ? state : "", state ? "\n" : "", counts.by_state[STORE_PENDING],
	         counts.by_state[STORE_DEAD], counts.by_state[STORE_HELD], extra, ago);
	sd_notify(0, status);
}

/* A time span as STATUS= shows it: "14s", "5m", "3h", "2d" (whole units, rounded down). */
static void
format_ago(int64_t seconds, char *buf, size_t size)
{
	seconds = MAX(seconds, 0);
	if (seconds < 120)
		snprintf(buf, size, "%" PRId64 "s", seconds);
	else if (seconds < 2 * 3600)
		snprintf(buf, size, "%" PRId64 "m", seconds / 60);
	else if (seconds < 2 * 86400)
		snprintf(buf, size, "%" PRId64 "h", seconds / 3600);
	else
		snprintf(buf, size, "%" PRId64 "d", seconds / 86400);
}

/* Tell systemd we are ready and run the loop until a stop signal. */
static int
daemon_loop(struct daemon *d)
{
	int r;

	daemon_notify(d, "READY=1");
	event_add(d->status_timer, &(struct timeval){.tv_sec = DAEMON_STATUS_SEC});
	log_fields(LOG_INFO, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_READY), "ready");
	r = registry_start(d->registry);
	if (r < 0)
		return log_error_errno(r, "cannot start the registry: %m");
	r = collector_start(d->collector);
	if (r < 0)
		return log_error_errno(r, "cannot start the collector: %m");
	r = forwarder_start(d->forwarder);
	if (r < 0)
		return log_error_errno(r, "cannot start the forwarder: %m");

	r = event_base_dispatch(d->base);
	if (r < 0)
		return log_error_errno(-EIO, "the event loop failed");
	log_info("stopped");
	return 0;
}

/* Tear down in the reverse order of daemon_start() and daemon_load_config(); safe on partial
 * starts. */
static void
daemon_stop(struct daemon *d)
{
	d->health = health_free(d->health);
	d->forwarder = forwarder_free(d->forwarder);
	d->collector = collector_free(d->collector);
	d->registry = registry_free(d->registry);
	if (d->prune_timer)
		event_free(d->prune_timer);
	if (d->status_timer)
		event_free(d->status_timer);
	d->stack_auth = auth_free(d->stack_auth);
	d->azure_auth = auth_free(d->azure_auth);
	d->http = http_client_free(d->http);
	d->metrics = metrics_free(d->metrics);
	d->store = store_free(d->store);
	if (d->watchdog)
		event_free(d->watchdog);
	if (d->sighup)
		event_free(d->sighup);
	if (d->sigint)
		event_free(d->sigint);
	if (d->sigterm)
		event_free(d->sigterm);
	if (d->base)
		event_base_free(d->base);
	d->config = config_free(d->config);
	log_clear_secrets();
}

/* Handle signo as a loop event. */
static int
daemon_add_signal(struct daemon *d, int signo, struct event **ret)
{
	struct event *ev;

	ev = evsignal_new(d->base, signo, on_signal, d);
	if (!ev)
		return -ENOMEM;
	if (event_add(ev, NULL) < 0) {
		event_free(ev);
		return -EINVAL;
	}
	*ret = ev;
	return 0;
}

/* Send WATCHDOG=1 at half the interval systemd asked for, if it asked. */
static int
daemon_start_watchdog(struct daemon *d)
{
	uint64_t usec = 0;
	struct timeval tv;
	int r;

	r = sd_watchdog_enabled(0, &usec);
	if (r < 0)
		log_warning_errno(r, "ignoring an invalid $WATCHDOG_USEC: %m");
	if (r <= 0 || usec == 0)
		return 0;

	usec /= 2;
	tv.tv_sec = (time_t)(usec / 1000000);
	tv.tv_usec = (suseconds_t)(usec % 1000000);
	d->watchdog = event_new(d->base, -1, EV_PERSIST, on_watchdog, d);
	if (!d->watchdog || event_add(d->watchdog, &tv) < 0)
		return log_error_errno(-ENOMEM, "cannot start the watchdog timer");
	log_debug("watchdog ping every %" PRIu64 " ms", usec / 1000);
	return 0;
}

/* Whether an identity's tenant, client id, secret or certificate differ between two loads. */
static bool
credentials_changed(const char *old_tenant, const struct config_client *old, const char *new_tenant,
                    const struct config_client *new)
{
	return !streq_ptr(old_tenant, new_tenant) || !streq_ptr(old->client_id, new->client_id) ||
	       !streq_ptr(old->secret, new->secret) ||
	       !streq_ptr(old->certificate, new->certificate);
}

/*
 * SIGHUP: read the file again. A file with errors is refused and the running configuration
 * kept; a good one replaces it and the keys that only a restart can apply are named. Either way
 * the secrets read are registered (the old ones stay registered, so they remain unprintable).
 */
static void
daemon_reload(struct daemon *d)
{
	struct config_problems problems = {0};
	_cleanup_free_ char *restart = NULL;
	struct auth *stack = NULL, *azure = NULL;
	struct config *c = NULL;
	char state[128];
	int r;

	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading",
	         now_monotonic_usec());
	sd_notify(0, state);

	/* a rotated secret is registered even when the new file is refused */
	r = config_load(d->config_path, &c, &problems);
	daemon_log_problems(&problems);
	config_problems_done(&problems);
	if (r < 0) {
		log_error_errno(r, "configuration %s is invalid, keeping the running configuration",
		                d->config_path);
		daemon_notify(d, "READY=1");
		return;
	}

	config_restart_needed(d->config, c, &restart);
	/* new credentials: a new token source (the old one's tokens are forgotten), both made
	 * before either is used, so that a file is applied whole or not at all */
	r = 0;
	if (credentials_changed(d->config->stack.tenant, &d->config->stack.client, c->stack.tenant,
	                        &c->stack.client))
		r = daemon_new_stack_auth(d, d->config, c, &stack);
	if (r >= 0 && credentials_changed(d->config->azure.tenant, &d->config->azure.client,
	                                  c->azure.tenant, &c->azure.client))
		r = daemon_new_azure_auth(d, d->config, c, &azure);
	if (r < 0) {
		log_error("the new credentials cannot be used, keeping the running configuration");
		auth_free(stack);
		auth_free(azure);
		config_free(c);
		daemon_notify(d, "READY=1");
		return;
	}
	if (stack) {
		collector_set_auth(d->collector, stack);
		auth_free(d->stack_auth);
		d->stack_auth = stack;
		log_info("the stack credentials changed: new tokens are asked for with them");
	}
	if (azure) {
		registry_set_auth(d->registry, azure);
		forwarder_set_auth(d->forwarder, azure);
		auth_free(d->azure_auth);
		d->azure_auth = azure;
		log_info("the azure credentials changed: new tokens are asked for with them");
	}
	config_free(d->config);
	d->config = c;
	log_set_max_level(c->log.level);
	{
		struct collector_settings settings;

		daemon_collector_settings(c, &settings);
		collector_apply(d->collector, &settings);
	}
	{
		struct forwarder_settings settings;

		daemon_forwarder_settings(c, &settings);
		forwarder_apply(d->forwarder, &settings);
		registry_set_intervals(d->registry, c->registration.refresh_interval_usec,
		                       c->registration.max_staleness_usec);
	}

	log_debug("in force: commerce.batch_size %u, commerce.max_inflight %u, stack.poll_interval "
	          "%" PRIu64 " ms, registration.refresh_interval %" PRIu64 " ms",
	          c->commerce.batch_size, c->commerce.max_inflight,
	          c->stack.poll_interval_usec / USEC_PER_MSEC,
	          c->registration.refresh_interval_usec / USEC_PER_MSEC);
	if (restart)
		log_warning("changed keys need a restart to take effect: %s", restart);
	log_fields(LOG_INFO, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_RELOADED),
	           "configuration %s reloaded", d->config_path);
	daemon_notify(d, "READY=1");
}

/* Log the problems of a configuration load: errors as errors, warnings as warnings. */
static void
daemon_log_problems(const struct config_problems *problems)
{
	for (size_t i = 0; i < problems->n_errors; i++)
		log_error("%s", problems->errors[i]);
	for (size_t i = 0; i < problems->n_warnings; i++)
		log_warning("%s", problems->warnings[i]);
}

/* A signal arrived: reload on SIGHUP, otherwise stop. */
static void
on_signal(evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct daemon *d = userdata;
	int signo = (int)fd;

	if (signo == SIGHUP) {
		daemon_reload(d);
		return;
	}

	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
	/* nothing new is asked for; what is in flight is dropped and collected again next time */
	collector_stop(d->collector);
	log_fields(LOG_NOTICE, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_STOPPING),
	           "stopping on SIG%s", sigabbrev_np(signo));
	/* no new batch; those in flight get up to 30 s to have their outcomes stored */
	if (d->forwarder && !d->stopping) {
		d->stopping = true;
		forwarder_drain(d->forwarder, DAEMON_DRAIN_USEC, on_drained, d);
		return;
	}
	event_base_loopbreak(d->base);
}

/* The batches in flight at SIGTERM are settled (or the wait is over): leave the loop. */
static void
on_drained(void *userdata, unsigned left_inflight)
{
	struct daemon *d = userdata;

	if (left_inflight > 0)
		log_notice("%u batches still in flight after %" PRIu64
		           " s; they are sent again after the restart",
		           left_inflight, DAEMON_DRAIN_USEC / USEC_PER_SEC);
	event_base_loopbreak(d->base);
}

/* Tell systemd the loop is alive. */
static void
on_watchdog(_unused_ evutil_socket_t fd, _unused_ short what, _unused_ void *userdata)
{
	sd_notify(0, "WATCHDOG=1");
}

/* Refresh STATUS= and re-arm. */
static void
on_status_timer(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct daemon *d = userdata;

	daemon_notify(d, NULL);
	event_add(d->status_timer, &(struct timeval){.tv_sec = DAEMON_STATUS_SEC});
}

/*
 * Delete one chunk of forwarded records older than the retention. A full chunk means there may
 * be more: the next chunk runs on the next loop turn (so signals and I/O are served between
 * chunks); otherwise the pass is over and the next one comes in DAEMON_PRUNE_SEC.
 */
static void
on_prune_timer(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct daemon *d = userdata;
	int64_t before = now_seconds() - (int64_t)(d->config->store.retention_usec / USEC_PER_SEC);
	size_t deleted = 0;
	int r;

	r = store_prune(d->store, before, DAEMON_PRUNE_CHUNK, &deleted);
	if (r < 0) {
		/* -ENOSPC included: deleting needs journal space too; the next pass tries again */
		log_warning_errno(r, "pruning forwarded records failed: %s",
		                  store_errmsg(d->store));
		deleted = 0;
	}
	d->pruned += deleted;
	if (deleted == DAEMON_PRUNE_CHUNK) {
		event_add(d->prune_timer, &(struct timeval){0});
		return;
	}
	if (d->pruned > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%" PRIu64, d->pruned);
		log_fields(LOG_INFO, LOG_FIELDS("AZS_RECORDS", n),
		           "pruned %" PRIu64 " forwarded records past the retention", d->pruned);
		d->pruned = 0;
	}
	event_add(d->prune_timer, &(struct timeval){.tv_sec = DAEMON_PRUNE_SEC});
}

/*
 * The health server on [health] listen, bound before READY=1 (/healthz answers at once, from
 * its own thread; the rest once the loop runs): readiness from one check per concern, /metrics with
 * the store's gauges refreshed at each scrape, /v1/status from the same sources. An address that
 * cannot be bound stops the start: a daemon nobody can watch would look down to its monitoring
 * anyway, and the operator learns why at once instead of from a missing scrape.
 */
static int
daemon_start_health(struct daemon *d)
{
	struct health_options options = {
	        .address = d->config->health.address,
	        .port = d->config->health.port,
	        .version = AZS_VERSION,
	        .metrics = d->metrics,
	        .refresh = daemon_health_refresh,
	        .status = daemon_health_status,
	        .userdata = d,
	};
	int r;

	r = health_new(d->base, &options, &d->health);
	if (r >= 0)
		r = health_add_check(d->health, "store", daemon_check_store, d);
	if (r >= 0)
		r = health_add_check(d->health, "tokens", daemon_check_tokens, d);
	if (r >= 0)
		r = health_add_check(d->health, "collector", daemon_check_collector, d);
	if (r >= 0)
		r = health_add_check(d->health, "registry", daemon_check_registry, d);
	if (r >= 0)
		r = health_add_check(d->health, "forwarder", daemon_check_forwarder, d);
	if (r < 0)
		return log_error_errno(r, "cannot set up the health server: %m");
	r = health_listen(d->health);
	if (r < 0)
		return log_error_errno(r, "cannot listen on [health] listen %s, not starting: %m",
		                       d->config->health.listen);
	/* a failure after the bind is logged by health_start(), naming what failed */
	r = health_start(d->health);
	if (r < 0)
		return log_error_errno(r, "cannot start the health server, not starting: %m");
	daemon_health_since = now_seconds();
	log_info("health server listening on %s", d->config->health.listen);
	return 0;
}

/* Before /metrics: the gauges read from the store and the registry, not counted. */
static void
daemon_health_refresh(void *userdata, struct metrics *metrics)
{
	struct daemon *d = userdata;
	struct store_counts counts;
	int64_t t;

	if (store_counts(d->store, &counts) >= 0)
		for (int i = 0; i < _STORE_STATE_MAX; i++)
			metrics_set(metrics, METRICS_RECORDS, store_state_to_string(i),
			            (double)counts.by_state[i]);
	if (store_oldest_pending(d->store, &t) >= 0)
		metrics_set(metrics, METRICS_OLDEST_PENDING_SECONDS, NULL,
		            (double)MAX(now_seconds() - t, 0));
	else
		metrics_set(metrics, METRICS_OLDEST_PENDING_SECONDS, NULL, 0);
	if (registry_age(d->registry, &t) >= 0)
		metrics_set(metrics, METRICS_REGISTRATION_AGE_SECONDS, NULL, (double)t);
}

/* /v1/status: counts by state, oldest pending, cursor, registration age, last successes. */
static void
daemon_health_status(void *userdata, struct health_status *ret)
{
	struct daemon *d = userdata;
	struct collector_status cs;
	struct forwarder_status fs;
	struct store_counts counts;
	int64_t t;

	if (store_counts(d->store, &counts) >= 0) {
		for (int i = 0; i < _STORE_STATE_MAX && i < HEALTH_COUNTS_MAX; i++) {
			ret->counts[i].state = store_state_to_string(i);
			ret->counts[i].count = counts.by_state[i];
		}
		ret->n_counts = MIN(_STORE_STATE_MAX, HEALTH_COUNTS_MAX);
	}
	if (store_oldest_pending(d->store, &t) >= 0)
		ret->oldest_pending_seconds = MAX(now_seconds() - t, 0);
	if (registry_age(d->registry, &t) >= 0)
		ret->registration_age_seconds = t;
	collector_get_status(d->collector, &cs);
	ret->cursor = cs.cursor;
	ret->last_collect_success = cs.last_page_at;
	forwarder_get_status(d->forwarder, &fs);
	ret->last_forward_success = fs.last_success_at;
}

/*
 * Not ready: the store cannot be read; its last write failed (full, read-only, an I/O error:
 * known from the write itself, so nothing is written here, and cleared by the next write that
 * commits); or records are held as ambiguous. Records held for a subscription the tenant cache
 * does not know yet are a short, normal wait and do not count.
 */
static void
daemon_check_store(void *userdata, struct health_reasons *reasons)
{
	struct daemon *d = userdata;
	uint64_t ambiguous = 0;
	int64_t since = 0;
	int r;

	r = store_write_error(d->store, &since);
	if (r < 0)
		health_reasons_add(reasons, "store %s for %" PRId64 " s: %s",
		                   r == -ENOSPC ? "full" : "not writable",
		                   MAX(now_seconds() - since, 0), strerror(-r));
	r = store_held_ambiguous(d->store, &ambiguous);
	if (r < 0) {
		health_reasons_add(reasons, "store cannot be read: %s", strerror(-r));
		return;
	}
	if (ambiguous > 0)
		health_reasons_add(reasons,
		                   "%" PRIu64 " records held as ambiguous: the registration names "
		                   "their tenant twice (azs-usagectl records --state held)",
		                   ambiguous);
}

/* Not ready: a token (or the stamp's metadata document) cannot be had. */
static void
daemon_check_tokens(void *userdata, struct health_reasons *reasons)
{
	struct daemon *d = userdata;

	daemon_check_auth(reasons, "stack", d->stack_auth);
	daemon_check_auth(reasons, "azure", d->azure_auth);
}

/*
 * One identity's token source: since when it fails, and how, with the HTTP status and the
 * OAuth and AADSTS/MSIS codes only (no description, no secret).
 */
static void
daemon_check_auth(struct health_reasons *reasons, const char *identity, struct auth *a)
{
	struct auth_status st;
	char how[AUTH_STATUS_CODE_MAX + 32];

	if (!a)
		return;
	auth_get_status(a, &st);
	if (!st.failing)
		return;
	if (st.http_status > 0)
		snprintf(how, sizeof(how), "HTTP %ld%s%s", st.http_status, st.code[0] ? " " : "",
		         st.code);
	else
		snprintf(how, sizeof(how), "%s", strerror(-st.error));
	health_reasons_add(reasons,
	                   "no token for the %s identity%s%s for %" PRId64 " s (%u failures): %s",
	                   identity, st.audience[0] ? " " : " (metadata document)", st.audience,
	                   MAX(now_seconds() - st.failing_since, 0), st.failures, how);
}

/* Not ready: the store is full, or collection failed three polls in a row. */
static void
daemon_check_collector(void *userdata, struct health_reasons *reasons)
{
	struct daemon *d = userdata;
	struct collector_status cs;

	collector_get_status(d->collector, &cs);
	if (cs.store_full)
		health_reasons_add(reasons, "store full: collection paused");
	if (cs.consecutive_failures >= DAEMON_COLLECT_FAILURES)
		health_reasons_add(reasons, "collection failed %u polls in a row",
		                   cs.consecutive_failures);
}

/* Not ready: the registration was never fetched, is stale or names a tenant twice. */
static void
daemon_check_registry(void *userdata, struct health_reasons *reasons)
{
	struct daemon *d = userdata;
	const char *why = registry_not_ready_reason(d->registry);

	if (why)
		health_reasons_add(reasons, "%s", why);
}

/*
 * Not ready: Commerce refuses the token, or records wait and no batch has succeeded for longer
 * than [commerce] retry_max (since the start when none has yet).
 */
static void
daemon_check_forwarder(void *userdata, struct health_reasons *reasons)
{
	struct daemon *d = userdata;
	struct forwarder_status fs;
	uint64_t backlog = 0;
	int64_t since, cap = (int64_t)(d->config->commerce.retry_max_usec / USEC_PER_SEC);

	forwarder_get_status(d->forwarder, &fs);
	if (fs.auth_failing)
		health_reasons_add(reasons, "Commerce refuses the token of the azure identity");
	since = fs.last_success_at > 0 ? fs.last_success_at : daemon_health_since;
	if (store_backlog(d->store, &backlog) >= 0 && backlog > 0 && now_seconds() - since > cap)
		health_reasons_add(reasons,
		                   "no batch forwarded for %" PRId64 " s while %" PRIu64
		                   " records wait",
		                   now_seconds() - since, backlog);
}
