/*
 * azs-usagectl: the operator command line (ARCHITECTURE.md section 9). It opens the store
 * directly: read-only for the read verbs, read-write for the few verbs that change records
 * (these run beside the daemon; WAL and the busy timeout make that safe). Every write records the
 * operator and the reason in the record's history.
 *
 * The whole command line is parsed and checked before anything is opened, so a typo is a usage
 * error (exit 2) even on a host without a store or a configuration. Listings stream: each row is
 * printed from the store's callback, tables with fixed column widths and JSON arrays element by
 * element, so millions of records never sit in memory. Quantities and totals are printed as the
 * exact decimal text the store holds (JSON strings, never numbers).
 *
 * status also asks the running daemon (GET /v1/status on its [health] listen address) through
 * lib/http, the one HTTP client, on a loop of its own; a daemon that does not answer is said to
 * be not reachable, and the store's figures are printed all the same.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "auth.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "registry.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define CTL_NAME           "azs-usagectl"
#define CTL_DEFAULT_CONFIG "/etc/azs-usaged/azs-usaged.conf"
#define CTL_EXIT_FAILURE   1
#define CTL_EXIT_USAGE     2
#define CTL_KEY_MIN        8
#define CTL_KEY_MAX        64
/* key digits shown in tables: far beyond any collision, enough to paste back */
#define CTL_KEY_SHOWN           16
#define CTL_DEFAULT_REASON      "operator"
#define CTL_DEFAULT_LOOKBACK    (6 * 3600) /* [stack] lookback when no configuration is read */
#define CTL_HEALTH_TIMEOUT_USEC (5 * USEC_PER_SEC) /* GET /v1/status of the daemon */
#define CTL_HEALTH_MAX_ANSWER   (1024 * 1024)
#define CTL_NET_TIMEOUT_USEC    (60 * USEC_PER_SEC) /* per ARM or token request */
#define CTL_DEFAULT_STALENESS   (24 * 3600)         /* [registration] max_staleness, seconds */

enum ctl_verb {
	CTL_STATUS,
	CTL_RECORDS,
	CTL_DEAD_LIST,
	CTL_DEAD_RETRY,
	CTL_DEAD_DISCARD,
	CTL_CONFLICTS_LIST,
	CTL_CONFLICTS_ACCEPT,
	CTL_CONFLICTS_REJECT,
	CTL_QUARANTINE,
	CTL_QUARANTINE_SHOW,
	CTL_REPORT,
	CTL_RECOLLECT,
	CTL_LOOKUP,
	CTL_TENANTS,
	CTL_TENANT_ADD,
	CTL_TENANT_REMOVE,
	CTL_REGISTRATION,
	CTL_REGISTRATION_REFRESH,
};

/* Verb options; the table below says which verb takes which. */
enum {
	OPT_STATE = 1u << 0,
	OPT_TENANT = 1u << 1,
	OPT_SUBSCRIPTION = 1u << 2,
	OPT_SINCE = 1u << 3,
	OPT_LIMIT = 1u << 4,
	OPT_ALL = 1u << 5,
	OPT_REASON = 1u << 6,
	OPT_FROM = 1u << 7,
	OPT_TO = 1u << 8,
	OPT_BY = 1u << 9,
	OPT_CSV = 1u << 10,
	OPT_UNREGISTERED = 1u << 11,
	OPT_TENANT_ID = 1u << 12,
	OPT_FORCE = 1u << 13,
	OPT_REPLACE = 1u << 14,
};

struct ctl_option {
	const char *name;
	unsigned bit;
	bool has_arg;
};

static const struct ctl_option ctl_options[] = {
        {"--state", OPT_STATE, true},
        {"--tenant", OPT_TENANT, true},
        {"--subscription", OPT_SUBSCRIPTION, true},
        {"--since", OPT_SINCE, true},
        {"--limit", OPT_LIMIT, true},
        {"--all", OPT_ALL, false},
        {"--reason", OPT_REASON, true},
        {"--from", OPT_FROM, true},
        {"--to", OPT_TO, true},
        {"--by", OPT_BY, true},
        {"--csv", OPT_CSV, false},
        {"--unregistered", OPT_UNREGISTERED, false},
        {"--tenant-id", OPT_TENANT_ID, true},
        {"--force", OPT_FORCE, false},
        {"--replace", OPT_REPLACE, false},
};

struct ctl_verb_def {
	const char *word;
	const char *sub; /* second word; NULL: none */
	enum ctl_verb verb;
	unsigned options;
	unsigned min_args;
	unsigned max_args;
	bool writes;
};

/* The first entry of a word with sub == NULL is what the word alone means. */
static const struct ctl_verb_def ctl_verbs[] = {
        {"status", NULL, CTL_STATUS, 0, 0, 0, false},
        {"records", NULL, CTL_RECORDS,
         OPT_STATE | OPT_TENANT | OPT_SUBSCRIPTION | OPT_SINCE | OPT_LIMIT, 0, 0, false},
        {"dead", NULL, CTL_DEAD_LIST, OPT_LIMIT, 0, 0, false},
        {"dead", "list", CTL_DEAD_LIST, OPT_LIMIT, 0, 0, false},
        {"dead", "retry", CTL_DEAD_RETRY, OPT_ALL | OPT_REASON, 0, UINT_MAX, true},
        {"dead", "discard", CTL_DEAD_DISCARD, OPT_REASON, 1, UINT_MAX, true},
        {"conflicts", NULL, CTL_CONFLICTS_LIST, OPT_LIMIT, 0, 0, false},
        {"conflicts", "list", CTL_CONFLICTS_LIST, OPT_LIMIT, 0, 0, false},
        {"conflicts", "accept", CTL_CONFLICTS_ACCEPT, OPT_REASON, 1, 1, true},
        {"conflicts", "reject", CTL_CONFLICTS_REJECT, OPT_REASON, 1, 1, true},
        {"quarantine", NULL, CTL_QUARANTINE, OPT_LIMIT, 0, 0, false},
        {"quarantine", "list", CTL_QUARANTINE, OPT_LIMIT, 0, 0, false},
        {"quarantine", "show", CTL_QUARANTINE_SHOW, 0, 1, 1, false},
        {"report", NULL, CTL_REPORT, OPT_FROM | OPT_TO | OPT_BY | OPT_CSV, 0, 0, false},
        {"recollect", NULL, CTL_RECOLLECT, OPT_FROM | OPT_TO | OPT_REASON | OPT_FORCE, 0, 0, true},
        {"lookup", NULL, CTL_LOOKUP, 0, 1, 1, false},
        {"tenants", NULL, CTL_TENANTS, OPT_UNREGISTERED, 0, 0, false},
        {"tenant", "add", CTL_TENANT_ADD, OPT_TENANT_ID | OPT_REPLACE, 1, 1, true},
        {"tenant", "remove", CTL_TENANT_REMOVE, 0, 1, 1, true},
        {"registration", NULL, CTL_REGISTRATION, 0, 0, 0, false},
        {"registration", "show", CTL_REGISTRATION, 0, 0, 0, false},
        {"registration", "refresh", CTL_REGISTRATION_REFRESH, 0, 0, 0, true},
};

/* Everything the command line says, checked. */
struct ctl {
	const char *config_path; /* NULL: the default, unless --store is given */
	const char *store_path;
	bool json;
	bool help;
	bool version;

	const struct ctl_verb_def *verb;
	char **args; /* arguments after the verb words: the array ours, the strings argv's */
	size_t n_args;
	unsigned seen; /* OPT_* given */

	int state; /* -1: any */
	const char *tenant;
	const char *tenant_id; /* tenant add --tenant-id, lower-case */
	const char *subscription;
	int64_t since;
	size_t limit;
	const char *reason;
	int64_t from;
	int64_t to;
	enum store_report_by by;

	/* filled when running */
	struct config *config;
	const char *path;
	struct store *store;
	char *actor;
};

static const char *const ctl_help[] = {
        "NAME\n",
        "    azs-usagectl - inspect and repair the azs-usaged usage store, register tenants\n",
        "\n",
        "SYNOPSIS\n",
        "    azs-usagectl [-c FILE | --store PATH] [--json] VERB [ARGUMENTS]\n",
        "    azs-usagectl --help | --version\n",
        "\n",
        "DESCRIPTION\n",
        "    Reads the store of azs-usaged (one SQLite file) directly. Read verbs open it\n",
        "    read-only; the verbs marked (writes) open it read-write and may run while the\n",
        "    daemon runs. Every write is recorded in the history of each record it changes,\n",
        "    with the operator (azs-usagectl:<login name or uid>) and the reason.\n",
        "\n",
        "OPTIONS\n",
        "    -c FILE, --config FILE\n",
        "        Configuration file; the store is its [store] path.\n",
        "        Default: " CTL_DEFAULT_CONFIG ".\n",
        "    --store PATH\n",
        "        Open this database file instead of the configured one (no configuration\n",
        "        is read unless -c is given as well).\n",
        "    --json\n",
        "        JSON output instead of tables.\n",
        "    -h, --help\n",
        "        Show this help and exit.\n",
        "    --version\n",
        "        Show the version and exit.\n",
        "    Options take their value as the next argument or after '=' (--state=dead).\n",
        "\n",
        "VERBS\n",
        "    status\n",
        "        Counts by state, backlog, oldest pending record, collection cursor,\n",
        "        registration and tenant cache age, read from the store; then, with the\n",
        "        configuration, the daemon's own view from GET /v1/status on its [health]\n",
        "        listen address: ready or not and why, version, uptime, its counts, last\n",
        "        page stored and last batch accepted. When the daemon does not answer,\n",
        "        status says it is not reachable and why, and still exits 0.\n",
        "    records [--state S] [--tenant T] [--subscription S] [--since TIME] [--limit N]\n",
        "        List records, newest first. S is one of pending, held, inflight,\n",
        "        forwarded, dead, quarantined, conflict. --subscription matches the user\n",
        "        or the charged subscription; --since compares the collection time.\n",
        "        --state lists what status counts; without it the list also holds\n",
        "        discarded dead letters and resolved conflicts (state dead).\n",
        "    dead [list] [--limit N]\n",
        "        Dead letters: records Commerce refused for good, with its error.\n",
        "    dead retry KEY... | --all [--reason R]                          (writes)\n",
        "        Send dead records again (back to pending). All of them or, when one\n",
        "        cannot be retried, none.\n",
        "    dead discard KEY... --reason R                                  (writes)\n",
        "        Give up on dead records; they stay for audit but leave the dead list.\n",
        "        All of them or none.\n",
        "    conflicts [list] [--limit N]\n",
        "        Records collected again with a different quantity, waiting for a\n",
        "        decision; each row with its own ID (several conflicts of one record\n",
        "        share its key).\n",
        "    conflicts accept CONFLICT [--reason R]                          (writes)\n",
        "        Take the new quantity: replaces the original if it was not forwarded\n",
        "        yet; if it was, a larger quantity forwards the difference as an\n",
        "        adjustment, a smaller one becomes dead with error credit-required.\n",
        "    conflicts reject CONFLICT [--reason R]                          (writes)\n",
        "        Keep the original quantity.\n",
        "    quarantine [list] [--limit N]\n",
        "        Records that failed validation, with the reason. Never forwarded.\n",
        "    quarantine show KEY\n",
        "        One quarantined record: its reason and the raw text as received (with\n",
        "        --json: the members below and raw).\n",
        "    report --from TIME --to TIME [--by subscription|tenant|meter] [--csv]\n",
        "        Exact totals of the forwarded records whose usage started in\n",
        "        [from, to): by charged subscription and meter (default), by tenant and\n",
        "        meter, or by meter. --csv prints CSV with a header line; a cell that\n",
        "        starts with = + - or @ gets a leading ' so that no spreadsheet runs it.\n",
        "    recollect --from HOUR --to HOUR [--reason R] [--force]          (writes)\n",
        "        Collect the reported hours from HOUR to HOUR (both included) again.\n",
        "        Records seen before are deduplicated by key; changed ones become\n",
        "        conflicts. Hours after the collection cursor cannot be recollected;\n",
        "        a range that starts before the first hour ever collected less the\n",
        "        configured lookback needs --force.\n",
        "\n",
        "    lookup USER-SUBSCRIPTION\n",
        "        Which subscription a record of this user subscription would be charged to\n",
        "        now, and why: registered (its tenant's customer subscription), default\n",
        "        (the registration's own subscription), unknown-subscription (not in the\n",
        "        tenant cache after a refresh: the default subscription), or held\n",
        "        (ambiguous: the registration names its tenant twice).\n",
        "    tenants [--unregistered]\n",
        "        Tenants with usage in the store, their customer subscription or the\n",
        "        default one, and per meter the records and their exact total (every\n",
        "        collected record, in any state). Tenants of delegated providers are\n",
        "        listed as not collected here. --unregistered: only the tenants charged\n",
        "        to the default subscription (usually a forgotten registration).\n",
        "    registration [show]\n",
        "        The cached registration: default subscription, customer subscriptions\n",
        "        and their tenants, when it was fetched and whether it is stale.\n",
        "    registration refresh                                            (writes)\n",
        "        Fetch the registration and its customer subscriptions from Azure now\n",
        "        and write the cache; the daemon maps on it within seconds. Held records\n",
        "        go back to pending when it changed.\n",
        "    tenant add CUSTOMER-SUBSCRIPTION --tenant-id T [--replace]       (writes)\n",
        "        Register the tenant's customer subscription in Azure (PUT\n",
        "        .../customerSubscriptions/{id}), then refresh the cache. Replacing the\n",
        "        tenant's customer subscription, or moving one registered for another\n",
        "        tenant, needs --replace (Azure would overwrite it silently).\n",
        "    tenant remove CUSTOMER-SUBSCRIPTION                             (writes)\n",
        "        Remove it (DELETE), then refresh the cache; its tenant is charged to\n",
        "        the default subscription from then on. One that is not there is no\n",
        "        error.\n",
        "    The tenant verbs and registration refresh use the [azure] identity, so\n",
        "    they read its credentials: run them where the configuration's secret files\n",
        "    can be read. Azure's errors are shown with their code, message and what to\n",
        "    do; MetadataResolverBadGatewayError, 429 and 5xx answers are retried a few\n",
        "    times first.\n",
        "\n",
        "ARGUMENTS\n",
        "    KEY     a record key (64 hex digits) or a unique prefix of at least 8.\n",
        "    CONFLICT  a conflict's ID as the conflicts list shows it, or the KEY of a\n",
        "            record with a single open conflict.\n",
        "    TIME    RFC 3339 in UTC or with an offset (2026-11-01T10:00:00Z), or a date\n",
        "            (2026-11-01, midnight UTC).\n",
        "    HOUR    a TIME on the hour.\n",
        "    R       free text stored in the history; default \"" CTL_DEFAULT_REASON "\".\n",
        "    USER-SUBSCRIPTION, CUSTOMER-SUBSCRIPTION, T\n",
        "            subscription and directory tenant ids (GUIDs, any case).\n",
        "\n",
        "OUTPUT\n",
        "    Tables have one line per row under a header. With --json, records, dead,\n",
        "    conflicts and quarantine print an array of objects with the members key,\n",
        "    state, reportedHour, sourceSubscriptionId, tenantId, meterId, quantity,\n",
        "    usageStartTime, usageEndTime, resourceUri, chargedSubscription, chargeReason,\n",
        "    attempts, batchId, errorCode, errorMessage (null where not set; times RFC 3339\n",
        "    in UTC; quantity a string); status prints an object whose member daemon is\n",
        "    null without a configuration, else holds endpoint, url, reachable, error,\n",
        "    ready, reasons and status (the daemon's /v1/status answer, or null); report\n",
        "    an array of rows whose total is an exact decimal string.\n",
        "\n",
        "EXIT STATUS\n",
        "    0   success\n",
        "    1   failure (store or configuration cannot be opened, a key matches no record\n",
        "        or several, the store refused a change, Azure refused a tenant or\n",
        "        registration call, no registration is cached)\n",
        "    2   usage error (unknown verb or option, missing or malformed argument)\n",
        "\n",
        "FILES\n",
        "    " CTL_DEFAULT_CONFIG "\n",
        "    /var/lib/azs-usaged/usage.db (the default [store] path)\n",
        NULL,
};

enum ctl_column {
	COL_ID,
	COL_KEY,
	COL_STATE,
	COL_HOUR,
	COL_SUBSCRIPTION,
	COL_METER,
	COL_QUANTITY,
	COL_CHARGED,
	COL_ATTEMPTS,
	COL_ERROR,
};

struct ctl_column_def {
	const char *header;
	int width; /* 0: the last column, not padded */
};

static const struct ctl_column_def ctl_columns[] = {
        [COL_ID] = {"ID", 10},
        [COL_KEY] = {"KEY", CTL_KEY_SHOWN},
        [COL_STATE] = {"STATE", 11},
        [COL_HOUR] = {"REPORTED HOUR", TIME_RFC3339_LEN},
        [COL_SUBSCRIPTION] = {"SUBSCRIPTION", 36},
        [COL_METER] = {"METER", 36},
        [COL_QUANTITY] = {"QUANTITY", 24},
        [COL_CHARGED] = {"CHARGED TO", 0},
        [COL_ATTEMPTS] = {"ATTEMPTS", 8},
        [COL_ERROR] = {"ERROR", 0},
};

static const enum ctl_column ctl_records_columns[] = {
        COL_KEY, COL_STATE, COL_HOUR, COL_SUBSCRIPTION, COL_METER, COL_QUANTITY, COL_CHARGED,
};
static const enum ctl_column ctl_dead_columns[] = {
        COL_KEY, COL_HOUR, COL_SUBSCRIPTION, COL_METER, COL_QUANTITY, COL_ATTEMPTS, COL_ERROR,
};
static const enum ctl_column ctl_conflicts_columns[] = {
        COL_ID, COL_KEY, COL_HOUR, COL_SUBSCRIPTION, COL_METER, COL_QUANTITY,
};
static const enum ctl_column ctl_quarantine_columns[] = {
        COL_KEY,
        COL_HOUR,
        COL_SUBSCRIPTION,
        COL_ERROR,
};

/* A listing in progress: how rows are printed and how many were. */
struct ctl_list {
	bool json;
	const enum ctl_column *columns;
	size_t n_columns;
	uint64_t n;
};

/* A report in progress. */
struct ctl_report {
	struct ctl *ctl;
	bool csv;
	uint64_t n;
};

static int ctl_usage_error(const char *format, ...) _printf_(1, 2);
static int ctl_fail(int error, const char *format, ...) _printf_(2, 3);
static int ctl_parse(struct ctl *c, int argc, char **argv);
static int ctl_check(struct ctl *c, const char *const *values);
static int ctl_open(struct ctl *c);
static void ctl_done(struct ctl *c);
static int ctl_run(struct ctl *c);
static int ctl_status(struct ctl *c);
static int ctl_list(struct ctl *c);
static int ctl_dead_retry(struct ctl *c);
static int ctl_dead_discard(struct ctl *c);
static int ctl_quarantine_show(struct ctl *c);
static int ctl_conflict_resolve(struct ctl *c);
static int ctl_find_conflict(struct ctl *c, const char *arg, struct store_record *ret);
static int ctl_report(struct ctl *c);
static int ctl_recollect(struct ctl *c);
static int ctl_parse_time(const char *s, int64_t *ret);
static bool ctl_key_valid(const char *s);
static char *ctl_actor(void);
static int ctl_find(struct ctl *c, const char *prefix, enum store_state state,
                    struct store_record *ret);
static int ctl_list_row(void *userdata, const struct store_record *r);
static int ctl_report_row(void *userdata, const struct store_report_row *row);
static json_t *ctl_record_json(const struct store_record *r);
static json_t *ctl_json_string(const char *s);
static json_t *ctl_json_time(int64_t t);
static int ctl_print_json(json_t *j);
static void ctl_put_cell(const char *s, int width, bool last);
static void ctl_put_csv(const char *s, bool last);
static const char *ctl_format_time(int64_t t, char buf[static TIME_RFC3339_LEN + 1]);
static void ctl_health(const struct config *config, json_t *ret);
static void ctl_put_daemon(json_t *j);
static bool ctl_needs_azure(const struct ctl *c);
static int ctl_lookup(struct ctl *c);
static int ctl_tenants(struct ctl *c);
static int ctl_tenant(struct ctl *c);
static int ctl_registration_show(struct ctl *c);
static int ctl_registration_refresh(struct ctl *c);
static void ctl_put_err(const char *s);
static int64_t ctl_max_staleness(const struct ctl *c);

/* Parse the command line, open the store and run the verb; returns the exit status. */
int
main(int argc, char **argv)
{
	struct ctl c = {.state = -1};
	int r;

	r = ctl_parse(&c, argc, argv);
	if (r == 0)
		r = ctl_run(&c);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, CTL_NAME ": writing the output failed: %s\n", strerror(errno));
		if (r == 0)
			r = CTL_EXIT_FAILURE;
	}
	ctl_done(&c);
	return r;
}

/* Say what is wrong with the command line; returns the usage exit status. */
static int
ctl_usage_error(const char *format, ...)
{
	va_list ap;

	fputs(CTL_NAME ": ", stderr);
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	va_end(ap);
	fputs("\nSee '" CTL_NAME " --help'.\n", stderr);
	return CTL_EXIT_USAGE;
}

/* Say why the command failed (with the errno text when error is set); returns exit status 1. */
static int
ctl_fail(int error, const char *format, ...)
{
	va_list ap;

	fputs(CTL_NAME ": ", stderr);
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	va_end(ap);
	if (error != 0 && error != -EOPNOTSUPP)
		fprintf(stderr, ": %s", strerror(abs(error)));
	fputc('\n', stderr);
	return CTL_EXIT_FAILURE;
}

/* Read argv into c: global options anywhere, the verb words, its options and arguments. */
static int
ctl_parse(struct ctl *c, int argc, char **argv)
{
	_cleanup_free_ char **args = xcalloc((size_t)argc + 1, sizeof(char *));
	const char *values[ARRAY_SIZE(ctl_options)] = {0};
	size_t n = 0, skip = 0;
	bool only_args = false, known = false, has_subs = false;

	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		const struct ctl_option *o = NULL;
		const char *value = NULL;
		size_t name_len;

		if (only_args || a[0] != '-' || streq(a, "-")) {
			args[n++] = a;
			continue;
		}
		if (streq(a, "--")) {
			only_args = true;
			continue;
		}
		if (streq(a, "-h") || streq(a, "--help")) {
			c->help = true;
			continue;
		}
		if (streq(a, "--version")) {
			c->version = true;
			continue;
		}
		if (streq(a, "--json")) {
			c->json = true;
			continue;
		}
		if (strncmp(a, "-c", 2) == 0 && a[2] != '-') {
			/* -c FILE or -cFILE */
			if (a[2] != '\0')
				c->config_path = a + 2;
			else if (i + 1 < argc)
				c->config_path = argv[++i];
			else
				return ctl_usage_error("option -c needs a value");
			continue;
		}

		name_len = strcspn(a, "=");
		if (a[name_len] == '=')
			value = a + name_len + 1;
		if (name_len == strlen("--config") && strncmp(a, "--config", name_len) == 0) {
			if (!value && i + 1 >= argc)
				return ctl_usage_error("option --config needs a value");
			c->config_path = value ? value : argv[++i];
			continue;
		}
		if (name_len == strlen("--store") && strncmp(a, "--store", name_len) == 0) {
			if (!value && i + 1 >= argc)
				return ctl_usage_error("option --store needs a value");
			c->store_path = value ? value : argv[++i];
			continue;
		}

		for (size_t k = 0; k < ARRAY_SIZE(ctl_options); k++)
			if (strlen(ctl_options[k].name) == name_len &&
			    strncmp(ctl_options[k].name, a, name_len) == 0)
				o = &ctl_options[k];
		if (!o)
			return ctl_usage_error("unknown option '%.*s'", (int)name_len, a);
		if (c->seen & o->bit)
			return ctl_usage_error("option %s given twice", o->name);
		if (o->has_arg) {
			if (!value) {
				if (i + 1 >= argc)
					return ctl_usage_error("option %s needs a value", o->name);
				value = argv[++i];
			}
			values[o - ctl_options] = value;
		} else if (value) {
			return ctl_usage_error("option %s takes no value", o->name);
		}
		c->seen |= o->bit;
	}

	if (c->help || c->version)
		return 0;
	if (n == 0)
		return ctl_usage_error("no verb given");

	/* the verb: one word, or a word and a sub-verb */
	for (size_t k = 0; k < ARRAY_SIZE(ctl_verbs) && !c->verb; k++) {
		const struct ctl_verb_def *v = &ctl_verbs[k];

		if (streq(v->word, args[0]) && v->sub && n > 1 && streq(v->sub, args[1])) {
			c->verb = v;
			skip = 2;
		}
	}
	for (size_t k = 0; k < ARRAY_SIZE(ctl_verbs) && !c->verb; k++) {
		const struct ctl_verb_def *v = &ctl_verbs[k];

		if (streq(v->word, args[0]) && !v->sub) {
			c->verb = v;
			skip = 1;
		}
	}
	for (size_t k = 0; k < ARRAY_SIZE(ctl_verbs); k++) {
		known = known || streq(ctl_verbs[k].word, args[0]);
		has_subs = has_subs || (streq(ctl_verbs[k].word, args[0]) && ctl_verbs[k].sub);
	}
	if (!known)
		return ctl_usage_error("unknown verb '%s'", args[0]);
	if (!c->verb)
		return n > 1 ? ctl_usage_error("unknown verb '%s %s'", args[0], args[1])
		             : ctl_usage_error("'%s' needs a sub-verb", args[0]);
	/* "dead foo": an unknown sub-verb, not an argument of "dead" (which takes none) */
	if (has_subs && skip == 1 && n > 1 && c->verb->max_args == 0)
		return ctl_usage_error("unknown verb '%s %s'", args[0], args[1]);

	/* the arguments themselves stay in argv, which outlives c */
	c->n_args = n - skip;
	c->args = xcalloc(c->n_args + 1, sizeof(char *));
	memcpy(c->args, args + skip, c->n_args * sizeof(char *));
	return ctl_check(c, values);
}

/* Check what the verb was given: its options, argument count and every value's form. */
static int
ctl_check(struct ctl *c, const char *const *values)
{
	const struct ctl_verb_def *v = c->verb;
	const char *verb_name = v->word;
	_cleanup_free_ char *full_name = NULL;

	if (v->sub) {
		full_name = xasprintf("%s %s", v->word, v->sub);
		verb_name = full_name;
	}
	for (size_t k = 0; k < ARRAY_SIZE(ctl_options); k++)
		if ((c->seen & ctl_options[k].bit) && !(v->options & ctl_options[k].bit))
			return ctl_usage_error("option %s does not apply to '%s'",
			                       ctl_options[k].name, verb_name);
	if (c->n_args > v->max_args)
		return ctl_usage_error("unexpected argument '%s' to '%s'", c->args[v->max_args],
		                       verb_name);
	if (c->n_args < v->min_args)
		return ctl_usage_error("'%s' needs %s", verb_name,
		                       v->verb == CTL_LOOKUP ? "a USER-SUBSCRIPTION"
		                       : v->verb == CTL_TENANT_ADD || v->verb == CTL_TENANT_REMOVE
		                               ? "a CUSTOMER-SUBSCRIPTION"
		                               : "a KEY");
	if (c->json && (c->seen & OPT_CSV))
		return ctl_usage_error("--json and --csv exclude each other");

	switch (v->verb) {
	case CTL_DEAD_RETRY:
		if (c->n_args == 0 && !(c->seen & OPT_ALL))
			return ctl_usage_error("'dead retry' needs KEY... or --all");
		if (c->n_args > 0 && (c->seen & OPT_ALL))
			return ctl_usage_error("'dead retry' takes KEY... or --all, not both");
		break;
	case CTL_DEAD_DISCARD:
		if (!(c->seen & OPT_REASON))
			return ctl_usage_error("'dead discard' needs --reason R");
		break;
	case CTL_REPORT:
	case CTL_RECOLLECT:
		if (!(c->seen & OPT_FROM))
			return ctl_usage_error("'%s' needs --from", verb_name);
		if (!(c->seen & OPT_TO))
			return ctl_usage_error("'%s' needs --to", verb_name);
		break;
	case CTL_TENANT_ADD:
		if (!(c->seen & OPT_TENANT_ID))
			return ctl_usage_error("'tenant add' needs --tenant-id T");
		break;
	default:
		break;
	}

	if (v->verb == CTL_LOOKUP || v->verb == CTL_TENANT_ADD || v->verb == CTL_TENANT_REMOVE) {
		/* an id becomes part of a URL: a GUID and nothing else */
		if (!registry_is_guid(c->args[0]))
			return ctl_usage_error("%s '%s': not a subscription id (a GUID)",
			                       v->verb == CTL_LOOKUP ? "USER-SUBSCRIPTION"
			                                             : "CUSTOMER-SUBSCRIPTION",
			                       c->args[0]);
		for (char *p = c->args[0]; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
	}

	if (v->verb == CTL_DEAD_RETRY || v->verb == CTL_DEAD_DISCARD)
		for (size_t i = 0; i < c->n_args; i++)
			if (!ctl_key_valid(c->args[i]))
				return ctl_usage_error("KEY '%s': give %d to %d hex digits",
				                       c->args[i], CTL_KEY_MIN, CTL_KEY_MAX);
	/* a conflict's ID (digits) or a KEY */
	if ((v->verb == CTL_CONFLICTS_ACCEPT || v->verb == CTL_CONFLICTS_REJECT) &&
	    !ctl_key_valid(c->args[0]) &&
	    (strspn(c->args[0], "0123456789") != strlen(c->args[0]) || strlen(c->args[0]) > 18 ||
	     !c->args[0][0]))
		return ctl_usage_error(
		        "CONFLICT '%s': give the ID that 'conflicts' shows, or %d to %d "
		        "hex digits of the key",
		        c->args[0], CTL_KEY_MIN, CTL_KEY_MAX);

	for (size_t k = 0; k < ARRAY_SIZE(ctl_options); k++) {
		const char *value = values[k];
		unsigned bit = ctl_options[k].bit;
		char *end = NULL;
		int64_t t;

		if (!value)
			continue;
		if (bit == OPT_STATE) {
			c->state = store_state_from_string(value);
			if (c->state < 0)
				return ctl_usage_error(
				        "unknown state '%s' (pending, held, inflight, "
				        "forwarded, dead, "
				        "quarantined, conflict)",
				        value);
		} else if (bit == OPT_TENANT || bit == OPT_SUBSCRIPTION) {
			/* stored lower-case; argv is ours to change */
			char *s = (char *)value;

			if (isempty(s))
				return ctl_usage_error("option %s needs a value",
				                       ctl_options[k].name);
			for (char *p = s; *p; p++)
				if (*p >= 'A' && *p <= 'Z')
					*p = (char)(*p - 'A' + 'a');
			if (bit == OPT_TENANT)
				c->tenant = s;
			else
				c->subscription = s;
		} else if (bit == OPT_SINCE || bit == OPT_FROM || bit == OPT_TO) {
			if (ctl_parse_time(value, &t) < 0)
				return ctl_usage_error("%s '%s': not an RFC 3339 time or a date",
				                       ctl_options[k].name, value);
			if (v->verb == CTL_RECOLLECT && !time_on_hour(t))
				return ctl_usage_error("%s '%s': not on the hour",
				                       ctl_options[k].name, value);
			if (bit == OPT_SINCE)
				c->since = t;
			else if (bit == OPT_FROM)
				c->from = t;
			else
				c->to = t;
		} else if (bit == OPT_LIMIT) {
			unsigned long long l;

			errno = 0;
			l = strtoull(value, &end, 10);
			if (errno != 0 || end == value || *end != '\0' || value[0] == '-' ||
			    l == 0 || l > SIZE_MAX)
				return ctl_usage_error("--limit '%s': give a positive number",
				                       value);
			c->limit = (size_t)l;
		} else if (bit == OPT_BY) {
			if (streq(value, "subscription"))
				c->by = STORE_REPORT_BY_SUBSCRIPTION;
			else if (streq(value, "tenant"))
				c->by = STORE_REPORT_BY_TENANT;
			else if (streq(value, "meter"))
				c->by = STORE_REPORT_BY_METER;
			else
				return ctl_usage_error(
				        "--by '%s': give subscription, tenant or meter", value);
		} else if (bit == OPT_REASON) {
			if (isempty(value))
				return ctl_usage_error("--reason needs a text");
			c->reason = value;
		} else if (bit == OPT_TENANT_ID) {
			char *s = (char *)value; /* argv is ours to change */

			if (!registry_is_guid(s))
				return ctl_usage_error(
				        "--tenant-id '%s': not a directory tenant id "
				        "(a GUID)",
				        value);
			for (char *p = s; *p; p++)
				if (*p >= 'A' && *p <= 'Z')
					*p = (char)(*p - 'A' + 'a');
			c->tenant_id = s;
		}
	}

	if (v->verb == CTL_REPORT && c->from >= c->to)
		return ctl_usage_error("--from must be before --to");
	if (v->verb == CTL_RECOLLECT && c->from > c->to)
		return ctl_usage_error("--from must not be after --to");
	return 0;
}

/* Run what the command line asked for; returns the exit status. */
static int
ctl_run(struct ctl *c)
{
	int r;

	if (c->help) {
		for (size_t i = 0; ctl_help[i]; i++)
			fputs(ctl_help[i], stdout);
		return 0;
	}
	if (c->version) {
		printf("%s %s\n", CTL_NAME, AZS_VERSION);
		return 0;
	}

	log_open(LOG_TARGET_STDERR);
	log_set_max_level(LOG_WARNING);

	r = ctl_open(c);
	if (r != 0)
		return r;

	switch (c->verb->verb) {
	case CTL_STATUS:
		return ctl_status(c);
	case CTL_RECORDS:
	case CTL_DEAD_LIST:
	case CTL_CONFLICTS_LIST:
	case CTL_QUARANTINE:
		return ctl_list(c);
	case CTL_QUARANTINE_SHOW:
		return ctl_quarantine_show(c);
	case CTL_DEAD_RETRY:
		return ctl_dead_retry(c);
	case CTL_DEAD_DISCARD:
		return ctl_dead_discard(c);
	case CTL_CONFLICTS_ACCEPT:
	case CTL_CONFLICTS_REJECT:
		return ctl_conflict_resolve(c);
	case CTL_REPORT:
		return ctl_report(c);
	case CTL_RECOLLECT:
		return ctl_recollect(c);
	case CTL_LOOKUP:
		return ctl_lookup(c);
	case CTL_TENANTS:
		return ctl_tenants(c);
	case CTL_TENANT_ADD:
	case CTL_TENANT_REMOVE:
		return ctl_tenant(c);
	case CTL_REGISTRATION:
		return ctl_registration_show(c);
	case CTL_REGISTRATION_REFRESH:
		return ctl_registration_refresh(c);
	default:
		break;
	}
	assert(!"verb without a handler");
	return CTL_EXIT_FAILURE;
}

/* Load the configuration when needed and open the store (read-only unless the verb writes). */
static int
ctl_open(struct ctl *c)
{
	_cleanup_free_ char *error = NULL;
	struct store_options options = {0};
	int r;

	if (c->config_path || !c->store_path || ctl_needs_azure(c)) {
		const char *path = c->config_path ? c->config_path : CTL_DEFAULT_CONFIG;
		struct config_problems problems = {0};

		/* the store verbs need no credentials, which systemd hands only to the unit; the
		 * Azure verbs need the [azure] ones */
		r = config_load_flags(path, ctl_needs_azure(c) ? 0 : CONFIG_SKIP_SECRETS,
		                      &c->config, &problems);
		if (r < 0) {
			/* redacted as the daemon's: a secret may stand where a value was expected
			 */
			for (size_t i = 0; i < problems.n_errors; i++) {
				_cleanup_free_ char *line = log_redact(problems.errors[i]);

				fprintf(stderr, "%s\n", line);
			}
			config_problems_done(&problems);
			return ctl_fail(r, "cannot use the configuration %s", path);
		}
		config_problems_done(&problems);
	}
	c->path = c->store_path ? c->store_path : c->config->store.path;

	options.path = c->path;
	options.readonly = !c->verb->writes;
	options.skip_quick_check = options.readonly; /* the daemon checks the file at its start */
	r = store_open(&options, &c->store, &error);
	if (r < 0) {
		if (error)
			return ctl_fail(0, "cannot open the store %s: %s: %s", c->path,
			                strerror(-r), error);
		return ctl_fail(r, "cannot open the store %s", c->path);
	}
	if (c->verb->writes) {
		c->actor = ctl_actor();
		if (!c->reason)
			c->reason = CTL_DEFAULT_REASON;
	}
	return 0;
}

/* Free what ctl holds. */
static void
ctl_done(struct ctl *c)
{
	c->store = store_free(c->store);
	c->config = config_free(c->config);
	free(c->actor);
	free(c->args);
	c->actor = NULL;
	c->args = NULL;
}

/* Print counts, ages, the cursor and the daemon's readiness. */
static int
ctl_status(struct ctl *c)
{
	_cleanup_(json_decrefp) json_t *o = json_object();
	struct store_counts counts = {0};
	struct store_registration reg = {0};
	int64_t now = now_seconds(), t;
	uint64_t backlog = 0;
	int version = 0, r;
	json_t *records, *j;

	if (!o)
		return ctl_fail(-ENOMEM, "status");
	r = store_schema_version(c->store, &version);
	if (r < 0)
		return ctl_fail(0, "reading the schema version: %s", store_errmsg(c->store));
	r = store_counts(c->store, &counts);
	if (r < 0)
		return ctl_fail(0, "reading the counts: %s", store_errmsg(c->store));
	r = store_backlog(c->store, &backlog);
	if (r < 0)
		return ctl_fail(0, "reading the backlog: %s", store_errmsg(c->store));

	json_object_set_new(o, "store", ctl_json_string(c->path));
	json_object_set_new(o, "schemaVersion", json_integer(version));
	records = json_object();
	for (int s = 0; s < _STORE_STATE_MAX; s++)
		json_object_set_new(records, store_state_to_string((enum store_state)s),
		                    json_integer((json_int_t)counts.by_state[s]));
	json_object_set_new(o, "records", records);
	json_object_set_new(o, "backlog", json_integer((json_int_t)backlog));

	r = store_oldest_pending(c->store, &t);
	if (r < 0 && r != -ENOENT)
		return ctl_fail(0, "reading the oldest pending record: %s", store_errmsg(c->store));
	json_object_set_new(o, "oldestPending", r < 0 ? json_null() : ctl_json_time(t));
	json_object_set_new(o, "oldestPendingAgeSeconds",
	                    r < 0 ? json_null() : json_integer(now - t));

	r = store_cursor_hour(c->store, &t);
	if (r < 0 && r != -ENOENT)
		return ctl_fail(0, "reading the cursor: %s", store_errmsg(c->store));
	json_object_set_new(o, "cursorHour", r < 0 ? json_null() : ctl_json_time(t));

	r = store_registration_get(c->store, &reg);
	if (r < 0 && r != -ENOENT)
		return ctl_fail(0, "reading the registration: %s", store_errmsg(c->store));
	if (r < 0) {
		json_object_set_new(o, "registration", json_null());
	} else {
		j = json_object();
		json_object_set_new(j, "id", ctl_json_string(reg.id));
		json_object_set_new(j, "defaultSubscription",
		                    ctl_json_string(reg.default_subscription));
		json_object_set_new(j, "refreshedAt", ctl_json_time(reg.refreshed_at));
		json_object_set_new(j, "ageSeconds", json_integer(now - reg.refreshed_at));
		/* the daemon is not ready and holds forwarding on a stale cache (section 5) */
		json_object_set_new(j, "stale",
		                    json_boolean(now - reg.refreshed_at > ctl_max_staleness(c)));
		json_object_set_new(o, "registration", j);
		store_registration_done(&reg);
	}

	r = store_subscriptions_refreshed_at(c->store, &t);
	if (r < 0 && r != -ENOENT)
		return ctl_fail(0, "reading the tenant cache: %s", store_errmsg(c->store));
	json_object_set_new(o, "subscriptionsRefreshedAt", r < 0 ? json_null() : ctl_json_time(t));

	if (c->config) {
		j = json_object();
		ctl_health(c->config, j);
		json_object_set_new(o, "daemon", j);
	} else {
		json_object_set_new(o, "daemon", json_null());
	}

	if (c->json)
		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;

	printf("store:            %s (schema %d)\n", c->path, version);
	printf("records:         ");
	for (int s = 0; s < _STORE_STATE_MAX; s++)
		printf(" %s %" PRIu64 "%s", store_state_to_string((enum store_state)s),
		       counts.by_state[s], s + 1 < _STORE_STATE_MAX ? "," : "\n");
	printf("backlog:          %" PRIu64 "\n", backlog);
	j = json_object_get(o, "oldestPending");
	if (json_is_string(j))
		printf("oldest pending:   %s (%" PRId64 " s ago)\n", json_string_value(j),
		       (int64_t)json_integer_value(json_object_get(o, "oldestPendingAgeSeconds")));
	else
		printf("oldest pending:   none\n");
	j = json_object_get(o, "cursorHour");
	printf("cursor hour:      %s\n", json_is_string(j) ? json_string_value(j) : "none yet");
	j = json_object_get(o, "registration");
	if (json_is_object(j))
		printf("registration:     refreshed %s (%" PRId64
		       " s ago), default subscription %s\n",
		       json_string_value(json_object_get(j, "refreshedAt")),
		       (int64_t)json_integer_value(json_object_get(j, "ageSeconds")),
		       json_is_string(json_object_get(j, "defaultSubscription"))
		               ? json_string_value(json_object_get(j, "defaultSubscription"))
		               : "-");
	else
		printf("registration:     never fetched\n");
	if (json_is_true(json_object_get(j, "stale")))
		printf("                  STALE: older than max_staleness, the daemon is not ready "
		       "and holds forwarding until a refresh succeeds\n");
	j = json_object_get(o, "subscriptionsRefreshedAt");
	printf("tenant cache:     %s%s\n", json_is_string(j) ? "refreshed " : "never fetched",
	       json_is_string(j) ? json_string_value(j) : "");

	j = json_object_get(o, "daemon");
	if (!json_is_object(j)) {
		printf("daemon:           unknown (no configuration, so no health address)\n");
	} else if (!json_is_true(json_object_get(j, "reachable"))) {
		printf("daemon:           not reachable at %s (",
		       json_string_value(json_object_get(j, "endpoint")));
		ctl_put_cell(json_string_value(json_object_get(j, "error")), 0, true);
		printf("): is azs-usaged running? The figures above are read from the store\n");
	} else {
		ctl_put_daemon(j);
	}
	return 0;
}

/* The table lines of a daemon that answered: readiness and reasons, then its own view. */
static void
ctl_put_daemon(json_t *j)
{
	json_t *st = json_object_get(j, "status"), *reasons = json_object_get(j, "reasons");
	json_t *records = json_object_get(st, "records"), *v, *reason, *last;
	const char *name;
	size_t i;
	bool first = true;

	if (!json_is_object(st)) {
		printf("daemon:           reachable at %s, but ",
		       json_string_value(json_object_get(j, "endpoint")));
		ctl_put_cell(json_string_value(json_object_get(j, "error")), 0, true);
		printf("\n");
		return;
	}
	if (json_is_true(json_object_get(j, "ready")))
		printf("daemon:           ready");
	else
		printf("daemon:           not ready");
	json_array_foreach(reasons, i, reason)
	{
		printf("%s", i == 0 ? ": " : "; ");
		ctl_put_cell(json_string_value(reason), 0, true);
	}
	printf("\n");
	printf("                  azs-usaged ");
	ctl_put_cell(json_string_value(json_object_get(st, "version")), 0, true);
	printf(", up %" PRId64 " s, at %s\n",
	       (int64_t)json_integer_value(json_object_get(st, "uptime_seconds")),
	       json_string_value(json_object_get(j, "endpoint")));
	printf("                  its counts:");
	json_object_foreach(records, name, v)
	{
		printf("%s ", first ? "" : ",");
		ctl_put_cell(name, 0, true);
		printf(" %" PRId64, (int64_t)json_integer_value(v));
		first = false;
	}
	printf("%s\n", first ? " none yet" : "");
	v = json_object_get(st, "oldest_pending_seconds");
	if (json_is_integer(v))
		printf("                  oldest pending %" PRId64 " s",
		       (int64_t)json_integer_value(v));
	else
		printf("                  nothing pending");
	v = json_object_get(st, "registration_age_seconds");
	if (json_is_integer(v))
		printf(", registration %" PRId64 " s old\n", (int64_t)json_integer_value(v));
	else
		printf(", no registration\n");
	last = json_object_get(st, "last_success");
	v = json_object_get(last, "collect");
	printf("                  last page stored %s",
	       json_is_string(v) ? json_string_value(v) : "never");
	v = json_object_get(last, "forward");
	printf(", last batch accepted %s\n", json_is_string(v) ? json_string_value(v) : "never");
}

/* List records of a kind, streaming each row as the store yields it. */
static int
ctl_list(struct ctl *c)
{
	struct store_query q = {.state = -1, .limit = c->limit};
	struct ctl_list l = {.json = c->json};
	int r;

	switch (c->verb->verb) {
	case CTL_RECORDS:
		q.state = c->state;
		q.tenant_id = c->tenant;
		q.subscription_id = c->subscription;
		q.since = c->since;
		/* --state lists what status counts; the whole list keeps the audit trail */
		q.include_discarded = c->state < 0;
		l.columns = ctl_records_columns;
		l.n_columns = ARRAY_SIZE(ctl_records_columns);
		break;
	case CTL_DEAD_LIST:
		q.state = STORE_DEAD;
		l.columns = ctl_dead_columns;
		l.n_columns = ARRAY_SIZE(ctl_dead_columns);
		break;
	case CTL_CONFLICTS_LIST:
		q.state = STORE_CONFLICT;
		l.columns = ctl_conflicts_columns;
		l.n_columns = ARRAY_SIZE(ctl_conflicts_columns);
		break;
	default:
		q.state = STORE_QUARANTINED;
		l.columns = ctl_quarantine_columns;
		l.n_columns = ARRAY_SIZE(ctl_quarantine_columns);
		break;
	}

	if (!l.json) {
		for (size_t i = 0; i < l.n_columns; i++)
			ctl_put_cell(ctl_columns[l.columns[i]].header,
			             ctl_columns[l.columns[i]].width, i + 1 == l.n_columns);
		putchar('\n');
	}
	r = store_records_query(c->store, &q, ctl_list_row, &l);
	if (l.json)
		fputs(l.n == 0 ? "[]\n" : "\n]\n", stdout);
	if (r < 0)
		return ctl_fail(0, "listing records: %s: %s", strerror(-r),
		                r == -EPIPE || r == -ENOMEM ? "output" : store_errmsg(c->store));
	return 0;
}

/* Drop repeated ids (one record named twice) in place; the number left. */
static size_t
ctl_unique_ids(int64_t *ids, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		bool again = false;

		for (size_t j = 0; j < k; j++)
			again = again || ids[j] == ids[i];
		if (!again)
			ids[k++] = ids[i];
	}
	return k;
}

/* Send dead records again: each KEY, or every dead record with --all. */
static int
ctl_dead_retry(struct ctl *c)
{
	_cleanup_free_ int64_t *ids = NULL;
	int64_t now = now_seconds();
	size_t n = 0;
	int r;

	if (c->seen & OPT_ALL) {
		r = store_dead_retry_all(c->store, c->actor, c->reason, now, &n);
		if (r < 0)
			return ctl_fail(0, "dead retry --all: %s: %s", strerror(-r),
			                store_errmsg(c->store));
		if (c->json) {
			_cleanup_(json_decrefp) json_t *o = json_pack(
			        "{s:s,s:I}", "action", "dead-retry", "records", (json_int_t)n);

			return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
		}
		printf("%zu dead record%s back to pending\n", n, n == 1 ? "" : "s");
		return 0;
	}

	/* resolve every key first: one typo changes nothing */
	ids = xcalloc(c->n_args, sizeof(int64_t));
	for (size_t i = 0; i < c->n_args; i++) {
		struct store_record rec = {0};

		r = ctl_find(c, c->args[i], STORE_DEAD, &rec);
		if (r < 0)
			return CTL_EXIT_FAILURE;
		ids[i] = rec.id;
		store_record_done(&rec);
	}
	n = ctl_unique_ids(ids, c->n_args);
	r = store_dead_retry(c->store, ids, n, c->actor, c->reason, now);
	if (r < 0)
		return ctl_fail(0, "dead retry: %s: %s (nothing changed)", strerror(-r),
		                store_errmsg(c->store));
	if (!c->json)
		for (size_t i = 0; i < c->n_args; i++)
			printf("%s: back to pending\n", c->args[i]);
	if (c->json) {
		_cleanup_(json_decrefp) json_t *o =
		        json_pack("{s:s,s:I}", "action", "dead-retry", "records", (json_int_t)n);

		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	}
	return 0;
}

/* Give up on dead records, with the operator's reason. */
static int
ctl_dead_discard(struct ctl *c)
{
	_cleanup_free_ int64_t *ids = xcalloc(c->n_args, sizeof(int64_t));
	int64_t now = now_seconds();
	size_t n = 0;
	int r;

	for (size_t i = 0; i < c->n_args; i++) {
		struct store_record rec = {0};

		r = ctl_find(c, c->args[i], STORE_DEAD, &rec);
		if (r < 0)
			return CTL_EXIT_FAILURE;
		ids[i] = rec.id;
		store_record_done(&rec);
	}
	n = ctl_unique_ids(ids, c->n_args);
	r = store_dead_discard(c->store, ids, n, c->actor, c->reason, now);
	if (r < 0)
		return ctl_fail(0, "dead discard: %s: %s (nothing changed)", strerror(-r),
		                store_errmsg(c->store));
	if (!c->json)
		for (size_t i = 0; i < c->n_args; i++)
			printf("%s: discarded\n", c->args[i]);
	if (c->json) {
		_cleanup_(json_decrefp) json_t *o =
		        json_pack("{s:s,s:I}", "action", "dead-discard", "records", (json_int_t)n);

		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	}
	return 0;
}

/* Show one quarantined record whole: why, and the text the stamp sent. */
static int
ctl_quarantine_show(struct ctl *c)
{
	struct store_record rec = {0};
	int r;

	r = ctl_find(c, c->args[0], STORE_QUARANTINED, &rec);
	if (r < 0)
		return CTL_EXIT_FAILURE;
	if (c->json) {
		_cleanup_(json_decrefp) json_t *o = ctl_record_json(&rec);

		if (o)
			json_object_set_new(o, "raw", ctl_json_string(rec.raw));
		store_record_done(&rec);
		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	}
	printf("key:      %s\nreported: ", rec.key);
	ctl_put_cell(time_format_rfc3339(rec.reported_hour, (char[TIME_RFC3339_LEN + 1]){0}), 0,
	             true);
	printf("\nreason:   ");
	ctl_put_cell(rec.error_message ? rec.error_message : "-", 0, true);
	printf("\nraw:\n");
	ctl_put_cell(rec.raw ? rec.raw : "-", 0, true);
	printf("\n");
	store_record_done(&rec);
	return 0;
}

/* Accept or reject one conflict. */
static int
ctl_conflict_resolve(struct ctl *c)
{
	bool accept = c->verb->verb == CTL_CONFLICTS_ACCEPT;
	struct store_record rec = {0};
	int r;

	r = ctl_find_conflict(c, c->args[0], &rec);
	if (r < 0)
		return CTL_EXIT_FAILURE;
	if (accept)
		r = store_conflict_accept(c->store, rec.id, c->actor, c->reason, now_seconds());
	else
		r = store_conflict_reject(c->store, rec.id, c->actor, c->reason, now_seconds());
	if (r < 0) {
		r = ctl_fail(0, "conflicts %s %s: %s: %s", accept ? "accept" : "reject", c->args[0],
		             strerror(-r), store_errmsg(c->store));
		store_record_done(&rec);
		return r;
	}
	if (c->json) {
		_cleanup_(json_decrefp) json_t *o = json_pack(
		        "{s:s,s:s,s:s}", "action", accept ? "conflict-accept" : "conflict-reject",
		        "key", rec.key, "quantity", rec.quantity ? rec.quantity : "");

		store_record_done(&rec);
		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	}
	printf("%s: conflict %s (quantity %s)\n", c->args[0], accept ? "accepted" : "rejected",
	       rec.quantity ? rec.quantity : "-");
	store_record_done(&rec);
	return 0;
}

/* Print exact totals of what was charged where. */
static int
ctl_report(struct ctl *c)
{
	struct ctl_report rep = {.ctl = c, .csv = (c->seen & OPT_CSV) != 0};
	const char *group = c->by == STORE_REPORT_BY_SUBSCRIPTION ? "chargedSubscription"
	                    : c->by == STORE_REPORT_BY_TENANT     ? "tenantId"
	                                                          : NULL;
	int r;

	if (rep.csv) {
		if (group) {
			ctl_put_csv(group, false);
		}
		ctl_put_csv("meterId", false);
		ctl_put_csv("records", false);
		ctl_put_csv("total", true);
	} else if (!c->json) {
		if (group)
			ctl_put_cell(c->by == STORE_REPORT_BY_SUBSCRIPTION ? "CHARGED SUBSCRIPTION"
			                                                   : "TENANT",
			             36, false);
		ctl_put_cell("METER", 36, false);
		ctl_put_cell("RECORDS", 10, false);
		ctl_put_cell("TOTAL", 0, true);
		putchar('\n');
	}
	r = store_report(c->store, c->from, c->to, c->by, ctl_report_row, &rep);
	if (c->json)
		fputs(rep.n == 0 ? "[]\n" : "\n]\n", stdout);
	if (r < 0)
		return ctl_fail(0, "report: %s: %s", strerror(-r), store_errmsg(c->store));
	return 0;
}

/* Schedule reported hours to be collected again. */
static int
ctl_recollect(struct ctl *c)
{
	char from[TIME_RFC3339_LEN + 1], to[TIME_RFC3339_LEN + 1];
	size_t n = 0;
	int r;

	struct store_recollect rc = {
	        .from = c->from,
	        .to = c->to,
	        /* without a configuration (--store alone) the default lookback */
	        .lookback = c->config ? (int64_t)(c->config->stack.lookback_usec / 1000000)
	                              : CTL_DEFAULT_LOOKBACK,
	        .force = (c->seen & OPT_FORCE) != 0,
	        .actor = c->actor,
	        .reason = c->reason,
	        .now = now_seconds(),
	};

	r = store_recollect(c->store, &rc, &n);
	if (r < 0)
		return ctl_fail(0, "recollect: %s: %s", strerror(-r), store_errmsg(c->store));
	time_format_rfc3339(c->from, from);
	time_format_rfc3339(c->to, to);
	if (c->json) {
		_cleanup_(json_decrefp) json_t *o =
		        json_pack("{s:s,s:s,s:s,s:I}", "action", "recollect", "from", from, "to",
		                  to, "hours", (json_int_t)n);

		return ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	}
	printf("%zu reported hour%s from %s to %s scheduled for collection\n", n, n == 1 ? "" : "s",
	       from, to);
	return 0;
}

/* Parse an RFC 3339 time or a date (midnight UTC). */
static int
ctl_parse_time(const char *s, int64_t *ret)
{
	char buf[sizeof("YYYY-MM-DDT00:00:00Z")];

	if (time_parse_rfc3339(s, ret) == 0)
		return 0;
	if (strlen(s) != strlen("YYYY-MM-DD"))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%sT00:00:00Z", s);
	return time_parse_rfc3339(buf, ret);
}

/* True for 8 to 64 hex digits. */
static bool
ctl_key_valid(const char *s)
{
	size_t n = strlen(s);

	if (n < CTL_KEY_MIN || n > CTL_KEY_MAX)
		return false;
	return strspn(s, "0123456789abcdefABCDEF") == n;
}

/* Who is acting: "azs-usagectl:<login name>", else the user name of the uid, else the uid. */
static char *
ctl_actor(void)
{
	char login[LOGIN_NAME_MAX + 1];
	struct passwd *pw;

	if (getlogin_r(login, sizeof(login)) == 0 && login[0])
		return xasprintf(CTL_NAME ":%s", login);
	pw = getpwuid(getuid());
	if (pw && !isempty(pw->pw_name))
		return xasprintf(CTL_NAME ":%s", pw->pw_name);
	return xasprintf(CTL_NAME ":%u", (unsigned)getuid());
}

/* Find the record in state whose key starts with prefix; says why not on failure. */
static int
ctl_find(struct ctl *c, const char *prefix, enum store_state state, struct store_record *ret)
{
	_cleanup_free_ char *lower = xstrdup(prefix);
	int r;

	for (char *p = lower; *p; p++)
		if (*p >= 'A' && *p <= 'F')
			*p = (char)(*p - 'A' + 'a');
	r = store_record_find(c->store, lower, (int)state, ret);
	if (r == -ENOENT)
		ctl_fail(0, "%s: no %s record has this key", prefix, store_state_to_string(state));
	else if (r == -ENOTUNIQ)
		ctl_fail(0, "%s: the prefix matches several %s records; give more digits", prefix,
		         store_state_to_string(state));
	else if (r < 0)
		ctl_fail(0, "%s: looking up the key: %s: %s", prefix, strerror(-r),
		         store_errmsg(c->store));
	return r;
}

/*
 * Find an open conflict by its id (the conflicts list's ID) or by the key of its record when
 * that record has only one; says why not on failure. Digits only could be either: when both
 * readings find a conflict, and not the same one, nothing is chosen.
 */
static int
ctl_find_conflict(struct ctl *c, const char *arg, struct store_record *ret)
{
	struct store_record by_id = {0};
	size_t len = strlen(arg);
	bool digits = len > 0 && len <= 18 && strspn(arg, "0123456789") == len;
	int r;

	if (digits && store_record_by_id(c->store, strtoll(arg, NULL, 10), &by_id) >= 0 &&
	    by_id.state != STORE_CONFLICT)
		store_record_done(&by_id);
	if (len < 8 || strspn(arg, "0123456789abcdefABCDEF") != len) {
		if (by_id.key) {
			*ret = by_id;
			return 0;
		}
		ctl_fail(0, "%s: no open conflict has this ID", arg);
		return -ENOENT;
	}
	r = store_record_find(c->store, arg, STORE_CONFLICT, ret);
	if (r >= 0 && by_id.key && by_id.id != ret->id) {
		store_record_done(ret);
		store_record_done(&by_id);
		ctl_fail(0,
		         "%s: both the ID of one conflict and a key of another; give more "
		         "digits of the key",
		         arg);
		return -ENOTUNIQ;
	}
	if (r >= 0) {
		store_record_done(&by_id);
		return 0;
	}
	if (by_id.key) {
		*ret = by_id;
		return 0;
	}
	if (r == -ENOTUNIQ)
		ctl_fail(0,
		         "%s: several open conflicts share this key; give the ID that "
		         "'conflicts' shows",
		         arg);
	else if (r == -ENOENT)
		ctl_fail(0, "%s: no open conflict has this ID or key", arg);
	else
		ctl_fail(0, "%s: looking up the conflict: %s: %s", arg, strerror(-r),
		         store_errmsg(c->store));
	return r;
}

/* Print one record of a listing (store callback). */
static int
ctl_list_row(void *userdata, const struct store_record *r)
{
	struct ctl_list *l = userdata;
	char buf[64];

	if (l->json) {
		_cleanup_(json_decrefp) json_t *o = ctl_record_json(r);
		_cleanup_free_ char *text = NULL;

		/* a conflict's own id: several conflicts of one record share its key */
		if (o && l->columns == ctl_conflicts_columns)
			json_object_set_new(o, "id", json_integer(r->id));

		text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (!text)
			return -ENOMEM;
		fputs(l->n == 0 ? "[\n" : ",\n", stdout);
		fputs(text, stdout);
	} else {
		for (size_t i = 0; i < l->n_columns; i++) {
			enum ctl_column col = l->columns[i];
			bool last = i + 1 == l->n_columns;
			const char *v = NULL;

			switch (col) {
			case COL_ID:
				snprintf(buf, sizeof(buf), "%" PRId64, r->id);
				v = buf;
				break;
			case COL_KEY:
				snprintf(buf, sizeof(buf), "%.*s", CTL_KEY_SHOWN,
				         r->key ? r->key : "-");
				v = buf;
				break;
			case COL_STATE:
				v = store_state_to_string(r->state);
				break;
			case COL_HOUR:
				v = ctl_format_time(r->reported_hour, buf);
				break;
			case COL_SUBSCRIPTION:
				v = r->subscription_id;
				break;
			case COL_METER:
				v = r->meter_id;
				break;
			case COL_QUANTITY:
				v = r->quantity;
				break;
			case COL_CHARGED:
				v = r->charged_subscription;
				break;
			case COL_ATTEMPTS:
				snprintf(buf, sizeof(buf), "%u", r->attempts);
				v = buf;
				break;
			case COL_ERROR:
				/* code and message, both stored text: printed cleaned */
				if (r->error_code && r->error_message) {
					ctl_put_cell(r->error_code, 0, true);
					fputs(": ", stdout);
					v = r->error_message;
				} else {
					v = r->error_code ? r->error_code : r->error_message;
				}
				break;
			}
			ctl_put_cell(isempty(v) ? "-" : v,
			             (size_t)col < ARRAY_SIZE(ctl_columns) ? ctl_columns[col].width
			                                                   : 0,
			             last);
		}
		putchar('\n');
	}
	l->n++;
	return ferror(stdout) ? -EPIPE : 0;
}

/* Print one report row (store callback). */
static int
ctl_report_row(void *userdata, const struct store_report_row *row)
{
	struct ctl_report *rep = userdata;
	enum store_report_by by = rep->ctl->by;
	char n[32];

	snprintf(n, sizeof(n), "%" PRIu64, row->records);
	if (rep->ctl->json) {
		_cleanup_(json_decrefp) json_t *o = json_object();
		_cleanup_free_ char *text = NULL;

		if (!o)
			return -ENOMEM;
		if (by == STORE_REPORT_BY_SUBSCRIPTION)
			json_object_set_new(
			        o, "chargedSubscription",
			        ctl_json_string(isempty(row->group) ? NULL : row->group));
		else if (by == STORE_REPORT_BY_TENANT)
			json_object_set_new(
			        o, "tenantId",
			        ctl_json_string(isempty(row->group) ? NULL : row->group));
		json_object_set_new(o, "meterId", ctl_json_string(row->meter_id));
		json_object_set_new(o, "records", json_integer((json_int_t)row->records));
		json_object_set_new(o, "total", ctl_json_string(row->total));
		text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (!text)
			return -ENOMEM;
		fputs(rep->n == 0 ? "[\n" : ",\n", stdout);
		fputs(text, stdout);
	} else if (rep->csv) {
		if (by != STORE_REPORT_BY_METER)
			ctl_put_csv(row->group ? row->group : "", false);
		ctl_put_csv(row->meter_id ? row->meter_id : "", false);
		ctl_put_csv(n, false);
		ctl_put_csv(row->total ? row->total : "", true);
	} else {
		if (by != STORE_REPORT_BY_METER)
			ctl_put_cell(isempty(row->group) ? "-" : row->group, 36, false);
		ctl_put_cell(isempty(row->meter_id) ? "-" : row->meter_id, 36, false);
		ctl_put_cell(n, 10, false);
		ctl_put_cell(isempty(row->total) ? "-" : row->total, 0, true);
		putchar('\n');
	}
	rep->n++;
	return ferror(stdout) ? -EPIPE : 0;
}

/* The JSON object of one record, with exactly the members section 9 names. */
static json_t *
ctl_record_json(const struct store_record *r)
{
	json_t *o = json_object();

	if (!o)
		return NULL;
	json_object_set_new(o, "key", ctl_json_string(r->key));
	json_object_set_new(o, "state", ctl_json_string(store_state_to_string(r->state)));
	json_object_set_new(o, "reportedHour", ctl_json_time(r->reported_hour));
	json_object_set_new(o, "sourceSubscriptionId", ctl_json_string(r->subscription_id));
	json_object_set_new(o, "tenantId", ctl_json_string(r->tenant_id));
	json_object_set_new(o, "meterId", ctl_json_string(r->meter_id));
	json_object_set_new(o, "quantity", ctl_json_string(r->quantity));
	json_object_set_new(o, "usageStartTime",
	                    r->usage_start ? ctl_json_time(r->usage_start) : json_null());
	json_object_set_new(o, "usageEndTime",
	                    r->usage_end ? ctl_json_time(r->usage_end) : json_null());
	json_object_set_new(o, "resourceUri", ctl_json_string(r->resource_uri));
	json_object_set_new(o, "chargedSubscription", ctl_json_string(r->charged_subscription));
	json_object_set_new(o, "chargeReason", ctl_json_string(r->charge_reason));
	json_object_set_new(o, "attempts", json_integer(r->attempts));
	json_object_set_new(o, "batchId", ctl_json_string(r->batch_id));
	json_object_set_new(o, "errorCode", ctl_json_string(r->error_code));
	json_object_set_new(o, "errorMessage", ctl_json_string(r->error_message));
	if (json_object_size(o) != 16) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* A JSON string, null for NULL; text that is not UTF-8 has its non-ASCII bytes made '?'. */
static json_t *
ctl_json_string(const char *s)
{
	_cleanup_free_ char *clean = NULL;
	json_t *j;

	if (!s)
		return json_null();
	j = json_string(s);
	if (j)
		return j;
	clean = xstrdup(s);
	for (char *p = clean; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	return json_string(clean);
}

/* A time as an RFC 3339 JSON string. */
static json_t *
ctl_json_time(int64_t t)
{
	char buf[TIME_RFC3339_LEN + 1];

	return json_string(time_format_rfc3339(t, buf));
}

/* Print a JSON value, indented, with a newline. */
static int
ctl_print_json(json_t *j)
{
	_cleanup_free_ char *text = NULL;

	if (!j)
		return -ENOMEM;
	text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (!text)
		return -ENOMEM;
	puts(text);
	return 0;
}

/* Print a table cell padded to width; control characters become '?' so stored text from outside
 * (error messages, raw records) cannot break the layout or drive the terminal. */
static void
ctl_put_cell(const char *s, int width, bool last)
{
	int n = 0;

	for (const char *p = s; p && *p; p++, n++)
		putchar((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p);
	if (!last)
		printf("%*s", width > n ? width - n + 2 : 2, "");
}

/*
 * Print one CSV field (RFC 4180 quoting), then a comma or the end of the line. A cell that a
 * spreadsheet would run as a formula (it starts with =, +, - or @, or a tab or carriage return
 * that some strip first) gets a leading ' and is then shown as text.
 */
static void
ctl_put_csv(const char *s, bool last)
{
	bool formula = strchr("=+-@\t\r", s[0]) && s[0] != '\0';

	if (formula || strpbrk(s, ",\"\r\n")) {
		putchar('"');
		if (formula)
			putchar('\'');
		for (const char *p = s; *p; p++) {
			if (*p == '"')
				putchar('"');
			putchar(*p);
		}
		putchar('"');
	} else {
		fputs(s, stdout);
	}
	putchar(last ? '\n' : ',');
}

/* Format a time for a table; "-" for none. */
static const char *
ctl_format_time(int64_t t, char buf[static TIME_RFC3339_LEN + 1])
{
	if (t == 0) {
		strcpy(buf, "-");
		return buf;
	}
	return time_format_rfc3339(t, buf);
}

/*
 * The registry verbs (ARCHITECTURE.md sections 5 and 9). lookup, tenants and registration show
 * read the store (through lib/registry, offline, for the mapping); registration refresh and
 * tenant add / remove talk to Azure Resource Manager with the [azure] identity through lib/http
 * and lib/auth on a loop of their own, and write the registration cache.
 */

/* What the network verbs hold: a loop, the client, the identity, the registry, the last result. */
struct ctl_net {
	struct event_base *base;
	struct http_client *http;
	struct auth *auth;
	struct registry *registry;
	bool done;
	struct registry_result result;
	char *code, *message; /* the result's strings, kept */
};

/* A tenant of the tenants listing, while its rows are printed. */
struct ctl_tenants {
	struct ctl *ctl;
	struct registry *registry;
	struct ctl_tenant_subs *subs; /* per tenant: cached subscriptions, delegated ones */
	size_t n_subs;
	char *tenant; /* the tenant whose rows come now ("" for unknown subscriptions) */
	json_t *current;
	uint64_t n;
};

/* A tenant's subscriptions in the tenant cache. */
struct ctl_tenant_subs {
	char *tenant;
	uint64_t subscriptions;
	uint64_t delegated; /* of another (delegated) provider: not collected here */
	char *delegated_provider;
};

/* Keep a registry result (registry callback) and stop the loop. */
static void
ctl_net_result(const struct registry_result *res, void *userdata)
{
	struct ctl_net *n = userdata;

	free(n->code);
	free(n->message);
	n->result = *res;
	n->code = res->arm_code ? xstrdup(res->arm_code) : NULL;
	n->message = xstrdup(res->message ? res->message : "");
	n->result.arm_code = n->code;
	n->result.message = n->message;
	n->done = true;
	event_base_loopbreak(n->base);
}

/* Set up the loop, lib/http, lib/auth ([azure]) and the registry; says why not on failure. */
static int
ctl_net_open(struct ctl *c, struct ctl_net *n)
{
	const struct config *cf = c->config;
	struct http_options ho = {
	        .ca_file = cf->http.ca_file,
	        .proxy = cf->http.proxy,
	        .user_agent = cf->http.user_agent,
	        .max_response = cf->http.max_response,
	};
	struct auth_options ao = {
	        .login_endpoint = cf->azure.login_endpoint,
	        .tenant = cf->azure.tenant,
	        .client_id = cf->azure.client.client_id,
	        .client_secret = cf->azure.client.secret,
	        .certificate = cf->azure.client.certificate,
	        .timeout_usec = CTL_NET_TIMEOUT_USEC,
	};
	struct registry_options ro = {
	        .timeout_usec = CTL_NET_TIMEOUT_USEC,
	        .store = c->store,
	        .callback = ctl_net_result,
	        .userdata = n,
	};
	int r;

	/* libcurl is told to leave signals alone: a peer closing a connection must not kill us */
	signal(SIGPIPE, SIG_IGN);
	n->base = event_base_new();
	if (!n->base)
		return ctl_fail(-ENOMEM, "cannot make an event loop");
	r = http_client_new(n->base, &ho, &n->http);
	if (r < 0)
		return ctl_fail(r, "cannot set up HTTPS (is [http] ca_file %s readable?)",
		                cf->http.ca_file ? cf->http.ca_file : "unset");
	r = auth_new(n->base, n->http, &ao, &n->auth);
	if (r < 0)
		return ctl_fail(r, "cannot use the [azure] identity of %s", c->config->path);
	registry_options_from_config(&ro, cf);
	ro.http = n->http;
	ro.auth = n->auth;
	r = registry_new(n->base, &ro, &n->registry);
	if (r < 0)
		return ctl_fail(r, "cannot read the registration cache: %s",
		                store_errmsg(c->store));
	return 0;
}

/* Tear down what ctl_net_open made. */
static void
ctl_net_done(struct ctl_net *n)
{
	n->registry = registry_free(n->registry);
	n->auth = auth_free(n->auth);
	n->http = http_client_free(n->http);
	if (n->base)
		event_base_free(n->base);
	n->base = NULL;
	free(n->code);
	free(n->message);
	n->code = n->message = NULL;
}

/* Run the loop until the registry's operation has ended. */
static void
ctl_net_wait(struct ctl_net *n)
{
	while (!n->done)
		if (event_base_loop(n->base, EVLOOP_ONCE) < 0)
			break;
}

/* The daemon's answer to GET /v1/status, while azs-usagectl status waits for it. */
struct ctl_probe {
	struct ctl_net net; /* only its loop and HTTP client */
	int error;          /* 0: an answer came; else -errno of lib/http */
	char *error_message;
	long status;
	json_t *doc; /* the answer's JSON object; NULL when none */
};

/* Keep the daemon's answer (lib/http callback) and stop the loop. */
static void
ctl_probe_result(const struct http_result *res, void *userdata)
{
	struct ctl_probe *p = userdata;

	p->error = res->error;
	p->status = res->status;
	if (res->error !=
	    0) /* "Connection refused" says more to an operator than libcurl's words */
		p->error_message = xstrdup(strerror(-res->error));
	else if (res->status == 200)
		p->doc = json_loadb(res->body, res->body_size, 0, NULL);
	if (p->doc && !json_is_object(p->doc)) {
		json_decref(p->doc);
		p->doc = NULL;
	}
	p->net.done = true;
	event_base_loopbreak(p->net.base);
}

/*
 * Ask the daemon's health endpoint for GET /v1/status through lib/http (plain http on the
 * [health] listen address; a wildcard one is asked on loopback). Fills ret with endpoint, url,
 * reachable, error (why not, or what was wrong with the answer), ready and reasons (from the
 * answer), and status: the daemon's own view as /v1/status gave it, or null.
 */
static void
ctl_health(const struct config *config, json_t *ret)
{
	struct http_options ho = {
	        .local = true,
	        .user_agent = CTL_NAME "/" AZS_VERSION,
	        .max_response = CTL_HEALTH_MAX_ANSWER,
	        .connect_timeout_usec = CTL_HEALTH_TIMEOUT_USEC,
	        .timeout_usec = CTL_HEALTH_TIMEOUT_USEC,
	        .max_host_connections = 1,
	};
	struct ctl_probe p = {0};
	_cleanup_free_ char *url = NULL;
	const char *address = config->health.address;
	json_t *ready = NULL, *reasons = NULL;
	int r;

	/* a wildcard listener answers on loopback */
	if (!address || streq(address, "0.0.0.0"))
		address = "127.0.0.1";
	else if (streq(address, "::"))
		address = "::1";
	url = xasprintf("http://%s%s%s:%u/v1/status", strchr(address, ':') ? "[" : "", address,
	                strchr(address, ':') ? "]" : "", (unsigned)config->health.port);
	json_object_set_new(ret, "endpoint", ctl_json_string(config->health.listen));
	json_object_set_new(ret, "url", ctl_json_string(url));

	/* libcurl is told to leave signals alone: a daemon closing a connection must not kill us */
	signal(SIGPIPE, SIG_IGN);
	p.net.base = event_base_new();
	r = p.net.base ? http_client_new(p.net.base, &ho, &p.net.http) : -ENOMEM;
	if (r >= 0)
		r = http_request(p.net.http, HTTP_GET, url, NULL, NULL, 0, 0, ctl_probe_result, &p,
		                 NULL);
	if (r >= 0)
		ctl_net_wait(&p.net);
	if (r >= 0 && !p.net.done)
		r = -EIO; /* the loop failed before the answer */
	if (r < 0)
		p = (struct ctl_probe){
		        .net = p.net, .error = r, .error_message = xstrdup(strerror(-r))};

	json_object_set_new(ret, "reachable", json_boolean(p.error == 0));
	if (p.error != 0)
		json_object_set_new(ret, "error", ctl_json_string(p.error_message));
	else if (p.status != 200)
		json_object_set_new(ret, "error",
		                    json_sprintf("GET /v1/status answered HTTP %ld", p.status));
	else if (!p.doc)
		json_object_set_new(ret, "error",
		                    json_string("GET /v1/status answered no JSON object"));
	else
		json_object_set_new(ret, "error", json_null());
	if (p.doc) {
		ready = json_object_get(p.doc, "ready");
		reasons = json_object_get(p.doc, "reasons");
	}
	json_object_set_new(ret, "ready", json_is_boolean(ready) ? json_copy(ready) : json_null());
	json_object_set_new(ret, "reasons",
	                    json_is_array(reasons) ? json_deep_copy(reasons) : json_array());
	json_object_set_new(ret, "status", p.doc ? p.doc : json_null());
	free(p.error_message);
	ctl_net_done(&p.net);
}

/* Start a refresh and wait for it; the result is in n->result. */
static void
ctl_net_refresh(struct ctl_net *n)
{
	int r;

	n->done = false;
	r = registry_refresh(n->registry);
	if (r < 0) {
		n->result = (struct registry_result){
		        .op = REGISTRY_REFRESH, .error = r, .message = strerror(-r)};
		return;
	}
	ctl_net_wait(n);
}

/* Say what Azure Resource Manager answered and what to do about it; returns exit status 1. */
static int
ctl_arm_fail(const char *what, const struct registry_result *res)
{
	const char *advice = registry_arm_advice(res->arm_code);
	_cleanup_free_ char *message = log_redact(res->message ? res->message : "");

	fputs(CTL_NAME ": ", stderr);
	fputs(what, stderr);
	if (res->arm_code) {
		fprintf(stderr,
		        ": Azure Resource Manager answered HTTP %ld: %s: ", res->http_status,
		        res->arm_code);
		ctl_put_err(message);
	} else {
		fputs(": ", stderr);
		ctl_put_err(message);
		if (res->error != 0 && res->error != -EREMOTEIO && res->error != -EBADMSG &&
		    res->error != -EPROTO)
			fprintf(stderr, " (%s)", strerror(-res->error));
	}
	if (res->attempts > 1)
		fprintf(stderr, " (after %u attempts)", res->attempts);
	fputc('\n', stderr);
	if (advice)
		fprintf(stderr, CTL_NAME ": what to do: %s\n", advice);
	else if (res->arm_code)
		fprintf(stderr,
		        CTL_NAME ": what to do: look up the code %s in the Azure Stack Hub "
		                 "registration documentation; nothing was changed\n",
		        res->arm_code);
	return CTL_EXIT_FAILURE;
}

/* Write text from outside to stderr with control characters made '?'. */
static void
ctl_put_err(const char *s)
{
	for (const char *p = s; p && *p; p++)
		fputc((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
}

/* Whether the verb calls Azure with the [azure] identity (and so needs its credentials). */
static bool
ctl_needs_azure(const struct ctl *c)
{
	return c->verb && (c->verb->verb == CTL_TENANT_ADD || c->verb->verb == CTL_TENANT_REMOVE ||
	                   c->verb->verb == CTL_REGISTRATION_REFRESH);
}

/* The [stack] provider subscription, or NULL without a configuration. */
static const char *
ctl_provider(const struct ctl *c)
{
	return c->config ? c->config->stack.provider_subscription : NULL;
}

/* Seconds of max_staleness: the configured one, else the default (24 h). */
static int64_t
ctl_max_staleness(const struct ctl *c)
{
	return c->config ? (int64_t)(c->config->registration.max_staleness_usec / USEC_PER_SEC)
	                 : CTL_DEFAULT_STALENESS;
}

/* An offline registry on the store (for the mapping); says why not on failure. */
static int
ctl_registry_offline(struct ctl *c, struct registry **ret)
{
	struct registry_options o = {.store = c->store};
	int r;

	if (c->config)
		registry_options_from_config(&o, c->config);
	r = registry_new(NULL, &o, ret);
	if (r < 0)
		return ctl_fail(0, "reading the registration cache: %s: %s", strerror(-r),
		                store_errmsg(c->store));
	return 0;
}

/* Say that no usable registration is cached; returns exit status 1. */
static int
ctl_no_registration(struct ctl *c)
{
	return ctl_fail(0,
	                "no registration%s is cached in %s: run '" CTL_NAME
	                " registration refresh' (the daemon fetches it at its start)",
	                c->config ? " of the configured [registration]" : "", c->path);
}

/* Which subscription a record of USER-SUBSCRIPTION would be charged to now, and why. */
static int
ctl_lookup(struct ctl *c)
{
	_cleanup_(json_decrefp) json_t *o = json_object();
	struct registry *reg = NULL;
	struct registry_lookup l = {0};
	struct store_registration cached = {0};
	const char *provider = ctl_provider(c), *sub = c->args[0];
	int64_t age = 0, refreshed = 0;
	bool collected_here, stale;
	char t1[TIME_RFC3339_LEN + 1];
	int r;

	r = ctl_registry_offline(c, &reg);
	if (r != 0)
		return r;
	r = registry_lookup(reg, sub, &l);
	if (r == -ENOENT) {
		registry_free(reg);
		return ctl_no_registration(c);
	}
	if (r < 0) {
		registry_free(reg);
		return ctl_fail(0, "looking up %s: %s: %s", sub, strerror(-r),
		                store_errmsg(c->store));
	}
	(void)registry_age(reg, &age);
	stale = registry_is_stale(reg);
	if (store_registration_get(c->store, &cached) < 0)
		cached = (struct store_registration){0};
	if (store_subscriptions_refreshed_at(c->store, &refreshed) < 0)
		refreshed = 0;
	collected_here =
	        !l.delegated_provider || !provider || streq(l.delegated_provider, provider);

	json_object_set_new(o, "subscriptionId", json_string(sub));
	json_object_set_new(o, "known", json_boolean(l.known));
	json_object_set_new(o, "gone", json_boolean(l.gone));
	json_object_set_new(o, "tenantId", ctl_json_string(l.tenant_id));
	json_object_set_new(o, "delegatedProviderSubscriptionId",
	                    ctl_json_string(l.delegated_provider));
	json_object_set_new(o, "collectedHere", json_boolean(collected_here));
	json_object_set_new(o, "chargedSubscription", ctl_json_string(l.charged_subscription));
	json_object_set_new(o, "chargeReason", ctl_json_string(l.reason));
	json_object_set_new(o, "held", json_boolean(l.hold));
	json_object_set_new(o, "customerSubscription", ctl_json_string(l.customer_subscription));
	json_object_set_new(o, "registration", ctl_json_string(cached.id));
	json_object_set_new(o, "registrationRefreshedAt",
	                    cached.id ? ctl_json_time(cached.refreshed_at) : json_null());
	json_object_set_new(o, "registrationStale", json_boolean(stale));
	json_object_set_new(o, "tenantCacheRefreshedAt",
	                    refreshed ? ctl_json_time(refreshed) : json_null());

	if (c->json) {
		r = ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	} else {
		printf("user subscription:  %s\n", sub);
		if (!l.known)
			printf("tenant:             unknown (not in the tenant cache)\n");
		else
			printf("tenant:             %s%s\n", l.tenant_id,
			       l.gone ? " (no longer listed by the stamp: its last known tenant)"
			              : "");
		if (!collected_here)
			printf("delegated provider: %s: not collected here (its usage is reported to "
			       "that provider)\n",
			       l.delegated_provider);
		if (l.hold && l.waiting)
			printf("charged to:         held until the tenant cache is refreshed, then the "
			       "default subscription (unknown-subscription) if it is still unknown\n");
		else if (l.hold)
			printf("charged to:         held (%s: the registration names the tenant twice; "
			       "remove one entry with '" CTL_NAME " tenant remove')\n",
			       l.reason);
		else
			printf("charged to:         %s (%s)\n", l.charged_subscription, l.reason);
		printf("registration:       %s, fetched %s (%" PRId64 " s ago)%s\n",
		       cached.id ? cached.id : "-", ctl_format_time(cached.refreshed_at, t1), age,
		       stale ? ", STALE: the daemon holds forwarding until a refresh succeeds"
		             : "");
		printf("tenant cache:       %s%s\n", refreshed ? "refreshed " : "never refreshed",
		       refreshed ? ctl_format_time(refreshed, t1) : "");
		r = 0;
	}
	store_registration_done(&cached);
	registry_lookup_done(&l);
	registry_free(reg);
	return r;
}

/* Order tenant summaries by tenant id. */
static int
ctl_tenant_subs_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ctl_tenant_subs *)a)->tenant,
	              ((const struct ctl_tenant_subs *)b)->tenant);
}

/* Count one cached subscription under its tenant (store callback). */
static int
ctl_tenants_sub(void *userdata, const struct store_subscription *sub)
{
	struct ctl_tenants *t = userdata;
	const char *provider = ctl_provider(t->ctl);
	struct ctl_tenant_subs *e = NULL;

	if (!sub->tenant_id)
		return 0;
	for (size_t i = t->n_subs; i > 0 && !e; i--)
		if (streq(t->subs[i - 1].tenant, sub->tenant_id))
			e = &t->subs[i - 1];
	if (!e) {
		t->subs = xreallocarray(t->subs, t->n_subs + 1, sizeof(*t->subs));
		e = &t->subs[t->n_subs++];
		*e = (struct ctl_tenant_subs){.tenant = xstrdup(sub->tenant_id)};
	}
	e->subscriptions++;
	if (sub->delegated_provider && provider && !streq(sub->delegated_provider, provider)) {
		e->delegated++;
		if (!e->delegated_provider)
			e->delegated_provider = xstrdup(sub->delegated_provider);
	}
	return 0;
}

/* The cached subscriptions of a tenant, or NULL. */
static struct ctl_tenant_subs *
ctl_tenants_find(struct ctl_tenants *t, const char *tenant)
{
	struct ctl_tenant_subs key = {.tenant = (char *)tenant};

	if (t->n_subs == 0)
		return NULL;
	return bsearch(&key, t->subs, t->n_subs, sizeof(*t->subs), ctl_tenant_subs_cmp);
}

/* Whether a tenant's rows are listed: with --unregistered only tenants charged as default. */
static bool
ctl_tenants_wanted(struct ctl_tenants *t, const char *tenant, const char *reason)
{
	if (!(t->ctl->seen & OPT_UNREGISTERED))
		return true;
	return !isempty(tenant) && streq(reason, "default");
}

/* Print the JSON object of the tenant whose rows ended. */
static int
ctl_tenants_flush(struct ctl_tenants *t)
{
	_cleanup_free_ char *text = NULL;

	if (!t->current)
		return 0;
	text = json_dumps(t->current, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(t->current);
	t->current = NULL;
	if (!text)
		return -ENOMEM;
	fputs(t->n == 0 ? "[\n" : ",\n", stdout);
	fputs(text, stdout);
	t->n++;
	return ferror(stdout) ? -EPIPE : 0;
}

/* One tenant and meter of the usage (store callback). */
static int
ctl_tenants_row(void *userdata, const struct store_tenant_usage_row *row)
{
	struct ctl_tenants *t = userdata;
	const char *tenant = isempty(row->tenant_id) ? NULL : row->tenant_id;
	const char *charged = NULL, *reason = NULL;
	struct ctl_tenant_subs *subs = tenant ? ctl_tenants_find(t, tenant) : NULL;
	char n[32];
	int r;

	(void)registry_tenant_charge(t->registry, tenant, &charged, &reason);
	if (!ctl_tenants_wanted(t, tenant, reason))
		return 0;
	snprintf(n, sizeof(n), "%" PRIu64, row->records);
	if (!t->ctl->json) {
		ctl_put_cell(tenant ? tenant : "(unknown subscriptions)", 36, false);
		ctl_put_cell(charged ? charged : "held", 36, false);
		ctl_put_cell(reason, 20, false);
		ctl_put_cell(isempty(row->meter_id) ? "-" : row->meter_id, 36, false);
		ctl_put_cell(n, 10, false);
		ctl_put_cell(isempty(row->total) ? "-" : row->total, 0, true);
		putchar('\n');
		t->n++;
		return ferror(stdout) ? -EPIPE : 0;
	}
	if (!t->tenant || !streq(t->tenant, row->tenant_id)) {
		r = ctl_tenants_flush(t);
		if (r < 0)
			return r;
		free(t->tenant);
		t->tenant = xstrdup(row->tenant_id);
		t->current = json_object();
		json_object_set_new(t->current, "tenantId", ctl_json_string(tenant));
		json_object_set_new(t->current, "chargedSubscription", ctl_json_string(charged));
		json_object_set_new(t->current, "chargeReason", ctl_json_string(reason));
		json_object_set_new(t->current, "collectedHere", json_true());
		json_object_set_new(t->current, "subscriptions",
		                    subs ? json_integer((json_int_t)subs->subscriptions)
		                         : json_null());
		json_object_set_new(t->current, "records", json_integer(0));
		json_object_set_new(t->current, "meters", json_array());
	}
	json_object_set_new(
	        t->current, "records",
	        json_integer(json_integer_value(json_object_get(t->current, "records")) +
	                     (json_int_t)row->records));
	json_array_append_new(json_object_get(t->current, "meters"),
	                      json_pack("{s:o,s:I,s:o}", "meterId", ctl_json_string(row->meter_id),
	                                "records", (json_int_t)row->records, "total",
	                                ctl_json_string(row->total)));
	return 0;
}

/* Tenants with usage, their charge and exact totals; delegated providers' tenants last. */
static int
ctl_tenants(struct ctl *c)
{
	struct ctl_tenants t = {.ctl = c};
	struct registry *reg = NULL;
	int r;

	r = ctl_registry_offline(c, &reg);
	if (r != 0)
		return r;
	t.registry = reg;
	if (registry_age(reg, &(int64_t){0}) == -ENOENT) {
		registry_free(reg);
		return ctl_no_registration(c);
	}
	r = store_subscriptions_list(c->store, ctl_tenants_sub, &t);
	if (r < 0) {
		registry_free(reg);
		return ctl_fail(0, "reading the tenant cache: %s: %s", strerror(-r),
		                store_errmsg(c->store));
	}
	if (t.n_subs > 1)
		qsort(t.subs, t.n_subs, sizeof(*t.subs), ctl_tenant_subs_cmp);

	if (!c->json) {
		ctl_put_cell("TENANT", 36, false);
		ctl_put_cell("CHARGED TO", 36, false);
		ctl_put_cell("REASON", 20, false);
		ctl_put_cell("METER", 36, false);
		ctl_put_cell("RECORDS", 10, false);
		ctl_put_cell("TOTAL", 0, true);
		putchar('\n');
	}
	r = store_tenant_usage(c->store, ctl_tenants_row, &t);
	if (r >= 0 && c->json)
		r = ctl_tenants_flush(&t);
	/* the tenants of delegated providers: their usage is not in this stamp's pages */
	for (size_t i = 0; r >= 0 && i < t.n_subs && !(c->seen & OPT_UNREGISTERED); i++) {
		struct ctl_tenant_subs *s = &t.subs[i];
		char n[32];

		if (s->delegated == 0)
			continue;
		snprintf(n, sizeof(n), "%" PRIu64, s->delegated);
		if (c->json) {
			t.current = json_pack("{s:s,s:n,s:n,s:b,s:s,s:I,s:I,s:[]}", "tenantId",
			                      s->tenant, "chargedSubscription", "chargeReason",
			                      "collectedHere", 0, "delegatedProviderSubscriptionId",
			                      s->delegated_provider, "subscriptions",
			                      (json_int_t)s->delegated, "records", (json_int_t)0,
			                      "meters");
			r = ctl_tenants_flush(&t);
		} else {
			_cleanup_free_ char *why = xasprintf(
			        "not collected here: %s subscription(s) of delegated provider %s",
			        n, s->delegated_provider);

			ctl_put_cell(s->tenant, 36, false);
			ctl_put_cell("-", 36, false);
			ctl_put_cell(why, 0, true);
			putchar('\n');
			t.n++;
		}
	}
	if (c->json)
		fputs(t.n == 0 ? "[]\n" : "\n]\n", stdout);
	for (size_t i = 0; i < t.n_subs; i++) {
		free(t.subs[i].tenant);
		free(t.subs[i].delegated_provider);
	}
	free(t.subs);
	free(t.tenant);
	json_decref(t.current);
	registry_free(reg);
	if (r < 0)
		return ctl_fail(0, "listing tenants: %s: %s", strerror(-r),
		                r == -EPIPE || r == -ENOMEM ? "output" : store_errmsg(c->store));
	return 0;
}

/* Print the cached registration (after a refresh: what changed). */
static int
ctl_registration_print(struct ctl *c, const struct registry_result *refreshed)
{
	_cleanup_(json_decrefp) json_t *o = json_object(), *raw = NULL;
	struct store_registration reg = {0};
	struct store_customer_subscription *list = NULL;
	int64_t age, max = ctl_max_staleness(c);
	char t1[TIME_RFC3339_LEN + 1];
	json_t *cs, *ambiguous, *props;
	size_t n = 0;
	int r;

	r = store_registration_get(c->store, &reg);
	if (r == -ENOENT)
		return ctl_no_registration(c);
	if (r < 0)
		return ctl_fail(0, "reading the registration: %s", store_errmsg(c->store));
	r = store_customer_subscriptions(c->store, &list, &n);
	if (r < 0) {
		store_registration_done(&reg);
		return ctl_fail(0, "reading the customer subscriptions: %s",
		                store_errmsg(c->store));
	}
	age = now_seconds() - reg.refreshed_at;
	raw = reg.raw ? json_loads(reg.raw, 0, NULL) : NULL;
	props = json_object_get(raw, "properties");
	cs = json_array();
	ambiguous = json_array();
	for (size_t i = 0; i < n; i++) {
		bool twice = false;

		for (size_t k = 0; k < n; k++)
			twice = twice || (k != i && streq(list[k].tenant_id, list[i].tenant_id));
		json_array_append_new(cs, json_pack("{s:s,s:s,s:b}", "subscriptionId",
		                                    list[i].subscription_id, "tenantId",
		                                    list[i].tenant_id, "ambiguous", twice));
		if (twice) {
			bool listed = false;
			size_t k;
			json_t *v;

			json_array_foreach(ambiguous, k, v)
			{
				listed = listed || streq(json_string_value(v), list[i].tenant_id);
			}
			if (!listed)
				json_array_append_new(ambiguous, json_string(list[i].tenant_id));
		}
	}
	json_object_set_new(o, "id", ctl_json_string(reg.id));
	json_object_set_new(o, "defaultSubscription", ctl_json_string(reg.default_subscription));
	json_object_set_new(
	        o, "billingModel",
	        ctl_json_string(json_string_value(json_object_get(props, "billingModel"))));
	json_object_set_new(o, "cloudId",
	                    ctl_json_string(json_string_value(json_object_get(props, "cloudId"))));
	json_object_set_new(o, "refreshedAt", ctl_json_time(reg.refreshed_at));
	json_object_set_new(o, "ageSeconds", json_integer(age));
	json_object_set_new(o, "stale", json_boolean(age > max));
	json_object_set_new(o, "customerSubscriptions", cs);
	json_object_set_new(o, "ambiguousTenants", ambiguous);
	if (refreshed) {
		json_object_set_new(o, "changed", json_boolean(refreshed->changed));
		json_object_set_new(o, "unheldRecords",
		                    json_integer((json_int_t)refreshed->n_unheld));
	}

	if (c->json) {
		r = ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
	} else {
		if (refreshed)
			printf("refreshed:            %s%s\n",
			       refreshed->changed ? "changed" : "unchanged",
			       refreshed->n_unheld ? ", held records back to pending" : "");
		printf("registration:         %s\n", reg.id);
		printf("default subscription: %s\n", reg.default_subscription);
		if (json_is_string(json_object_get(o, "billingModel")))
			printf("billing model:        %s\n",
			       json_string_value(json_object_get(o, "billingModel")));
		printf("fetched:              %s (%" PRId64 " s ago)%s\n",
		       ctl_format_time(reg.refreshed_at, t1), age,
		       age > max ? ", STALE: older than max_staleness, the daemon holds forwarding"
		                 : "");
		printf("customer subscriptions: %zu\n", n);
		if (n > 0) {
			ctl_put_cell("CUSTOMER SUBSCRIPTION", 36, false);
			ctl_put_cell("TENANT", 0, true);
			putchar('\n');
		}
		for (size_t i = 0; i < n; i++) {
			json_t *e = json_array_get(cs, i);

			ctl_put_cell(list[i].subscription_id, 36, false);
			ctl_put_cell(list[i].tenant_id, 0, true);
			if (json_is_true(json_object_get(e, "ambiguous")))
				fputs("  (AMBIGUOUS: the tenant is named twice, its usage is held)",
				      stdout);
			putchar('\n');
		}
		r = 0;
	}
	for (size_t i = 0; i < n; i++)
		store_customer_subscription_done(&list[i]);
	free(list);
	store_registration_done(&reg);
	return r;
}

/* registration [show]: the cached registration. */
static int
ctl_registration_show(struct ctl *c)
{
	return ctl_registration_print(c, NULL);
}

/* registration refresh: fetch it from Azure now and write the cache. */
static int
ctl_registration_refresh(struct ctl *c)
{
	struct ctl_net n = {0};
	int r;

	r = ctl_net_open(c, &n);
	if (r == 0) {
		ctl_net_refresh(&n);
		r = n.result.error != 0 ? ctl_arm_fail("registration refresh", &n.result)
		                        : ctl_registration_print(c, &n.result);
	}
	ctl_net_done(&n);
	return r;
}

/* tenant add / tenant remove: the documented PUT / DELETE, then a refresh of the cache. */
static int
ctl_tenant(struct ctl *c)
{
	_cleanup_(json_decrefp) json_t *o = json_object();
	const char *customer = c->args[0], *tenant = c->tenant_id;
	bool add = c->verb->verb == CTL_TENANT_ADD;
	const char *verb = add ? "tenant add" : "tenant remove";
	const char *had[2] = {0}, *owner, *replaced = NULL;
	_cleanup_free_ char *owner_copy = NULL, *replaced_copy = NULL;
	struct ctl_net n = {0};
	struct registry_result op;
	int r;

	r = ctl_net_open(c, &n);
	if (r != 0)
		goto out;

	/* the registration as Azure has it now: what would change */
	ctl_net_refresh(&n);
	if (n.result.error != 0) {
		r = ctl_arm_fail(verb, &n.result);
		goto out;
	}
	owner = registry_tenant_of(n.registry, customer);
	owner_copy = owner ? xstrdup(owner) : NULL;
	if (add) {
		size_t k = registry_customer_subscriptions_of(n.registry, tenant, had);

		if (k == 1 && streq(had[0], customer)) {
			if (c->json) {
				json_object_set_new(o, "customerSubscription",
				                    json_string(customer));
				json_object_set_new(o, "tenantId", json_string(tenant));
				json_object_set_new(o, "changed", json_false());
				r = ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
			} else {
				printf("tenant %s is registered with customer subscription %s already: "
				       "nothing to do\n",
				       tenant, customer);
				r = 0;
			}
			goto out;
		}
		for (size_t i = 0; i < k; i++)
			if (!streq(had[i], customer))
				replaced = had[i];
		if (replaced)
			replaced_copy = xstrdup(replaced);
		if ((replaced || (owner && !streq(owner, tenant))) && !(c->seen & OPT_REPLACE)) {
			if (replaced)
				r = ctl_fail(
				        0,
				        "tenant %s is registered with customer subscription %s: "
				        "adding %s replaces it (its usage is charged to %s from "
				        "then on); give --replace to do that",
				        tenant, replaced, customer, customer);
			else
				r = ctl_fail(
				        0,
				        "customer subscription %s is registered for tenant %s: "
				        "adding it for %s moves it (%s goes back to the default "
				        "subscription); give --replace to do that",
				        customer, owner, tenant, owner);
			goto out;
		}
		n.done = false;
		r = registry_tenant_add(n.registry, customer, tenant);
	} else {
		n.done = false;
		r = registry_tenant_remove(n.registry, customer);
	}
	if (r < 0) {
		r = ctl_fail(r, "%s", verb);
		goto out;
	}
	ctl_net_wait(&n);
	if (n.result.error != 0) {
		r = ctl_arm_fail(verb, &n.result);
		goto out;
	}
	op = n.result;
	op.arm_code = op.message = NULL;

	/* the change is made; the cache follows it so that the daemon maps on it at once */
	ctl_net_refresh(&n);
	json_object_set_new(o, "customerSubscription", json_string(customer));
	json_object_set_new(o, "tenantId", add ? json_string(tenant) : ctl_json_string(owner_copy));
	json_object_set_new(o, "changed", json_true());
	json_object_set_new(o, "httpStatus", json_integer(op.http_status));
	json_object_set_new(o, "answerBody", json_boolean(op.with_body));
	json_object_set_new(o, "attempts", json_integer(op.attempts));
	if (add) {
		json_object_set_new(o, "replacedCustomerSubscription",
		                    ctl_json_string(replaced_copy));
		json_object_set_new(o, "movedFromTenant",
		                    ctl_json_string(owner_copy && !streq(owner_copy, tenant)
		                                            ? owner_copy
		                                            : NULL));
	} else {
		json_object_set_new(o, "wasRegistered", json_boolean(owner_copy != NULL));
	}
	json_object_set_new(o, "cacheRefreshed", json_boolean(n.result.error == 0));
	if (n.result.error != 0) {
		fprintf(stderr,
		        CTL_NAME ": %s: done, but refreshing the registration cache failed (the "
		                 "daemon picks the change up at its next refresh): ",
		        verb);
		ctl_put_err(n.result.arm_code ? n.result.arm_code : "");
		fputs(n.result.arm_code ? ": " : "", stderr);
		ctl_put_err(n.result.message);
		fputc('\n', stderr);
	}
	if (c->json) {
		r = ctl_print_json(o) < 0 ? ctl_fail(-ENOMEM, "printing") : 0;
		goto out;
	}
	if (add) {
		printf("registered: tenant %s -> customer subscription %s (HTTP %ld%s)\n", tenant,
		       customer, op.http_status, op.with_body ? "" : ", no body");
		if (replaced_copy)
			printf("replaced:   customer subscription %s of the tenant\n",
			       replaced_copy);
		if (owner_copy && !streq(owner_copy, tenant))
			printf("moved:      from tenant %s, which is charged to the default "
			       "subscription from now on\n",
			       owner_copy);
	} else if (owner_copy) {
		printf("removed:    customer subscription %s of tenant %s (HTTP %ld); the tenant is "
		       "charged to the default subscription from now on\n",
		       customer, owner_copy, op.http_status);
	} else {
		printf("removed:    customer subscription %s was not registered (HTTP %ld): "
		       "nothing changed\n",
		       customer, op.http_status);
	}
	if (n.result.error == 0)
		printf("cache:      refreshed, %zu customer subscriptions\n",
		       n.result.n_customer_subscriptions);
	r = 0;
out:
	ctl_net_done(&n);
	return r;
}
