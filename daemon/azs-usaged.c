/*
 * azs-usaged, the daemon: reads the options and the configuration, builds the event loop with
 * its signal events and the systemd notifications (READY, RELOADING, STOPPING, STATUS, the
 * watchdog), runs the loop and tears everything down in reverse. The pipelines of
 * ARCHITECTURE.md section 2 are started by daemon_start() after the loop exists, in the order
 * store, registry, collector, forwarder, health, and stopped by daemon_stop() in reverse.
 */
#define LOG_MODULE "main"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "log.h"
#include "macro.h"
#include "timeutil.h"

#define DAEMON_DEFAULT_CONFIG "/etc/azs-usaged/azs-usaged.conf"
#define DAEMON_EXIT_USAGE     2

struct store;
struct registry;
struct collector;
struct forwarder;
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
static void daemon_reload(struct daemon *d);
static void daemon_log_problems(const struct config_problems *problems);
static void on_signal(evutil_socket_t fd, short what, void *userdata);
static void on_watchdog(evutil_socket_t fd, short what, void *userdata);

/* Run the daemon: init in order, loop, teardown in reverse. */
int
main(int argc, char **argv)
{
	struct daemon_options opts;
	struct daemon d = {0};
	int r;

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
	      "        Validate the configuration and exit. Every problem, errors and\n"
	      "        warnings, is printed to standard error as\n"
	      "        FILE:LINE: section.key: reason; a file without errors prints\n"
	      "        'configuration OK' to standard output.\n"
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
	      "        intervals, the log level ([log] level) and credentials apply at once;\n"
	      "        changed endpoints, the store path and the health listen address are\n"
	      "        logged as needing a restart.\n"
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
	      "ENVIRONMENT\n"
	      "    NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID\n"
	      "        Set by systemd: readiness, reload and stop notifications, and the\n"
	      "        watchdog (WATCHDOG=1 is sent at half of WATCHDOG_USEC).\n"
	      "\n"
	      "    JOURNAL_STREAM, CREDENTIALS_DIRECTORY\n"
	      "        Set by systemd: log to the journal; where credentials are found.\n"
	      "\n"
	      "EXIT STATUS\n"
	      "    0   stopped by SIGTERM or SIGINT; --check-config found no error;\n"
	      "        --help or --version\n"
	      "    1   invalid configuration, or the daemon could not start\n"
	      "    2   usage error: an unknown option or an unexpected argument\n",
	      stdout);
}

/* --check-config: print every problem, "configuration OK" when there is no error. */
static int
check_config(const char *path)
{
	struct config_problems problems = {0};
	struct config *c = NULL;
	int r;

	r = config_load(path, &c, &problems);
	if (r >= 0)
		config_register_secrets(c);
	for (size_t i = 0; i < problems.n_errors; i++) {
		_cleanup_free_ char *line = log_redact(problems.errors[i]);

		fprintf(stderr, "%s\n", line);
	}
	for (size_t i = 0; i < problems.n_warnings; i++) {
		_cleanup_free_ char *line = log_redact(problems.warnings[i]);

		fprintf(stderr, "%s\n", line);
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

	r = config_load(d->config_path, &d->config, &problems);
	if (r >= 0)
		config_register_secrets(d->config);
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
	/* a peer closing a connection must be an error return, not the end of the process */
	signal(SIGPIPE, SIG_IGN);

	return daemon_start_watchdog(d);
}

/* Tell systemd we are ready and run the loop until a stop signal. */
static int
daemon_loop(struct daemon *d)
{
	int r;

	sd_notify(0, "READY=1\nSTATUS=running");
	log_fields(LOG_INFO, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_READY), "ready");

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

/*
 * SIGHUP: read the file again. A file with errors is refused and the running configuration
 * kept; a good one replaces it, its secrets are registered (the old ones stay registered, so
 * they remain unprintable) and the keys that only a restart can apply are named.
 */
static void
daemon_reload(struct daemon *d)
{
	struct config_problems problems = {0};
	_cleanup_free_ char *restart = NULL;
	struct config *c = NULL;
	char state[128];
	int r;

	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading",
	         now_monotonic_usec());
	sd_notify(0, state);

	r = config_load(d->config_path, &c, &problems);
	if (r >= 0)
		config_register_secrets(c);
	daemon_log_problems(&problems);
	config_problems_done(&problems);
	if (r < 0) {
		log_error_errno(r, "configuration %s is invalid, keeping the running configuration",
		                d->config_path);
		sd_notify(0,
		          "READY=1\nSTATUS=running (reload failed, previous configuration kept)");
		return;
	}

	config_restart_needed(d->config, c, &restart);
	config_free(d->config);
	d->config = c;
	log_set_max_level(c->log.level);

	if (restart)
		log_warning("changed keys need a restart to take effect: %s", restart);
	log_fields(LOG_INFO, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_RELOADED),
	           "configuration %s reloaded", d->config_path);
	sd_notify(0, "READY=1\nSTATUS=running");
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
	log_fields(LOG_NOTICE, LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_STOPPING),
	           "stopping on SIG%s", sigabbrev_np(signo));
	event_base_loopbreak(d->base);
}

/* Tell systemd the loop is alive. */
static void
on_watchdog(_unused_ evutil_socket_t fd, _unused_ short what, _unused_ void *userdata)
{
	sd_notify(0, "WATCHDOG=1");
}
