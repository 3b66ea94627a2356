/*
 * The configuration file (ARCHITECTURE.md section 3): INI text parsed by libinih into one
 * immutable struct config.
 *
 * libinih (Debian 12, version 55) is used through ini_parse_stream() with our own reader. The
 * reader counts lines (the handler has no line number in that build), refuses what libinih would
 * silently get wrong and hands it a blank line instead:
 *   - a line over the limit (libinih would split it and parse the tail as a line of its own);
 *   - leading white space is removed, so an indented key is a key and never a multi-line
 *     continuation of the previous value;
 *   - section headers are checked here (libinih does not call the handler for them);
 *   - lines that are not "key = value" are syntax errors with their line (libinih only returns
 *     the first one).
 * Values are collected per key and validated after the parse, so every problem is reported, in
 * line order, with the missing required keys last. No message ever echoes a value: they say what
 * is wrong and where. That includes *_file keys: a message names the directory a file was looked
 * for in, never the name after "=" (an operator may have pasted the secret there) nor the content.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define LOG_MODULE "config"
#include "config.h"
#include "log.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#ifndef AZS_VERSION
#define AZS_VERSION "0"
#endif

#define CONFIG_MAX_FILE_SIZE   (1024 * 1024) /* the configuration file itself */
#define CONFIG_MAX_SECRET_SIZE (1024 * 1024) /* a secret or certificate file */
#define CONFIG_MAX_NAME        64            /* longest key or section name we echo */
#define USEC_PER_MINUTE        (60 * USEC_PER_SEC)
#define USEC_PER_HOUR          (60 * USEC_PER_MINUTE)
#define USEC_PER_DAY           (24 * USEC_PER_HOUR)
#define CONFIG_MAX_DURATION    (3650 * USEC_PER_DAY)

enum key_type {
	KEY_ENDPOINT,       /* https:// URL without query; trailing slashes removed */
	KEY_URL,            /* https:// URL, query allowed */
	KEY_PROXY,          /* http:// or https:// URL without credentials */
	KEY_GUID,           /* lower-cased */
	KEY_TENANT,         /* GUID or domain name, lower-cased */
	KEY_IDENTITY,       /* aad | adfs */
	KEY_COMPRESS,       /* gzip | none */
	KEY_LOG_LEVEL,      /* int: LOG_ERR .. LOG_DEBUG */
	KEY_SECRET_FILE,    /* struct config_client: secret, secret_file */
	KEY_CERT_FILE,      /* struct config_client: certificate, certificate_file */
	KEY_CA_FILE,        /* resolved path of a readable, non-empty file */
	KEY_TIME_HOUR,      /* RFC 3339, on the hour */
	KEY_DURATION,       /* uint64_t microseconds */
	KEY_SIZE,           /* uint64_t bytes */
	KEY_UINT,           /* unsigned */
	KEY_UINT64,         /* uint64_t */
	KEY_BOOL,           /* bool */
	KEY_TOKEN,          /* printable ASCII without spaces (audiences) */
	KEY_API_VERSION,    /* YYYY-MM-DD[-preview] */
	KEY_RESOURCE_GROUP, /* ARM resource group name */
	KEY_RESOURCE_NAME,  /* ARM resource name */
	KEY_TEXT,           /* printable ASCII (user agent) */
	KEY_PATH,           /* a path; relative: beside the configuration file */
	KEY_LISTEN,         /* ip:port or [ipv6]:port */
};

struct key {
	const char *section;
	const char *name;
	enum key_type type;
	size_t offset;   /* into struct config */
	const char *def; /* NULL: none (the field stays NULL/0 unless required) */
	bool required;
	bool restart;      /* a change needs a restart (config_restart_needed) */
	uint64_t min, max; /* numbers, durations, sizes */
};

#define K(sec, key, t, field, ...)                                                                \
	{                                                                                         \
		.section = sec, .name = key, .type = t, .offset = offsetof(struct config, field), \
		__VA_ARGS__                                                                       \
	}

/* clang-format off */
static const struct key keys[] = {
	K("stack", "arm_endpoint", KEY_ENDPOINT, stack.arm_endpoint, .required = true,
	  .restart = true),
	K("stack", "provider_subscription", KEY_GUID, stack.provider_subscription, .required = true,
	  .restart = true),
	K("stack", "identity", KEY_IDENTITY, stack.identity, .def = "aad", .restart = true),
	K("stack", "tenant", KEY_TENANT, stack.tenant, .def = NULL),
	K("stack", "client_id", KEY_GUID, stack.client.client_id, .required = true),
	K("stack", "client_secret_file", KEY_SECRET_FILE, stack.client, .def = NULL),
	K("stack", "client_certificate_file", KEY_CERT_FILE, stack.client, .def = NULL),
	K("stack", "login_endpoint", KEY_ENDPOINT, stack.login_endpoint, .restart = true),
	K("stack", "audience", KEY_TOKEN, stack.audience, .restart = true),
	K("stack", "collect_from", KEY_TIME_HOUR, stack.collect_from, .def = NULL),
	K("stack", "poll_interval", KEY_DURATION, stack.poll_interval_usec, .def = "5m",
	  .min = USEC_PER_SEC, .max = CONFIG_MAX_DURATION),
	K("stack", "settle", KEY_DURATION, stack.settle_usec, .def = "30m", .min = 0,
	  .max = CONFIG_MAX_DURATION),
	K("stack", "lookback", KEY_DURATION, stack.lookback_usec, .def = "6h", .min = USEC_PER_SEC,
	  .max = CONFIG_MAX_DURATION),
	K("stack", "per_subscriber", KEY_BOOL, stack.per_subscriber, .def = "false"),
	K("stack", "refresh_interval", KEY_DURATION, stack.refresh_interval_usec, .def = "15m",
	  .min = USEC_PER_SEC, .max = CONFIG_MAX_DURATION),

	K("registration", "arm_endpoint", KEY_ENDPOINT, registration.arm_endpoint,
	  .def = "https://management.azure.com", .restart = true),
	K("registration", "subscription_id", KEY_GUID, registration.subscription_id,
	  .required = true, .restart = true),
	K("registration", "resource_group", KEY_RESOURCE_GROUP, registration.resource_group,
	  .required = true, .restart = true),
	K("registration", "name", KEY_RESOURCE_NAME, registration.name, .required = true,
	  .restart = true),
	K("registration", "api_version", KEY_API_VERSION, registration.api_version,
	  .def = "2017-06-01", .restart = true),
	K("registration", "audience", KEY_TOKEN, registration.audience,
	  .def = "https://management.azure.com/", .restart = true),
	K("registration", "refresh_interval", KEY_DURATION, registration.refresh_interval_usec,
	  .def = "15m", .min = USEC_PER_SEC, .max = CONFIG_MAX_DURATION),
	K("registration", "max_staleness", KEY_DURATION, registration.max_staleness_usec,
	  .def = "24h", .min = USEC_PER_SEC, .max = CONFIG_MAX_DURATION),

	K("azure", "tenant", KEY_TENANT, azure.tenant, .required = true),
	K("azure", "client_id", KEY_GUID, azure.client.client_id, .required = true),
	K("azure", "client_secret_file", KEY_SECRET_FILE, azure.client, .def = NULL),
	K("azure", "client_certificate_file", KEY_CERT_FILE, azure.client, .def = NULL),
	K("azure", "login_endpoint", KEY_ENDPOINT, azure.login_endpoint,
	  .def = "https://login.microsoftonline.com", .restart = true),

	K("commerce", "url", KEY_URL, commerce.url, .required = true, .restart = true),
	K("commerce", "audience", KEY_TOKEN, commerce.audience, .required = true, .restart = true),
	K("commerce", "batch_size", KEY_UINT, commerce.batch_size, .def = "500", .min = 1,
	  .max = 1000),
	K("commerce", "batch_bytes", KEY_SIZE, commerce.batch_bytes, .def = "4M", .min = 1024,
	  .max = UINT64_C(1) << 30),
	K("commerce", "max_inflight", KEY_UINT, commerce.max_inflight, .def = "4", .min = 1,
	  .max = 1024),
	K("commerce", "compress", KEY_COMPRESS, commerce.compress, .def = "gzip"),
	K("commerce", "timeout", KEY_DURATION, commerce.timeout_usec, .def = "30s",
	  .min = USEC_PER_MSEC, .max = CONFIG_MAX_DURATION),
	K("commerce", "retry_initial", KEY_DURATION, commerce.retry_initial_usec, .def = "1s",
	  .min = USEC_PER_MSEC, .max = CONFIG_MAX_DURATION),
	K("commerce", "retry_max", KEY_DURATION, commerce.retry_max_usec, .def = "5m",
	  .min = USEC_PER_MSEC, .max = CONFIG_MAX_DURATION),

	K("store", "path", KEY_PATH, store.path, .def = "/var/lib/azs-usaged/usage.db",
	  .restart = true),
	K("store", "retention", KEY_DURATION, store.retention_usec, .def = "35d",
	  .min = USEC_PER_HOUR, .max = CONFIG_MAX_DURATION),
	K("store", "max_pending", KEY_UINT64, store.max_pending, .def = "50000000", .min = 1,
	  .max = UINT64_MAX),

	K("http", "ca_file", KEY_CA_FILE, http.ca_file, .restart = true),
	K("http", "proxy", KEY_PROXY, http.proxy, .restart = true),
	K("http", "user_agent", KEY_TEXT, http.user_agent, .def = "azs-usaged/" AZS_VERSION),
	K("http", "max_response", KEY_SIZE, http.max_response, .def = "64M", .min = 1024,
	  .max = UINT64_C(1) << 32),

	K("health", "listen", KEY_LISTEN, health, .def = "127.0.0.1:9480", .restart = true),

	K("log", "level", KEY_LOG_LEVEL, log.level, .def = "info"),
};
/* clang-format on */

#define N_KEYS ARRAY_SIZE(keys)

static const char *const sections[] = {"stack", "registration", "azure",  "commerce",
                                       "store", "http",         "health", "log"};

struct problem {
	unsigned line; /* 0: none (missing key) */
	size_t seq;    /* order of discovery, to keep the sort stable */
	bool warning;
	char *text;
};

struct slot {
	char *value; /* as written; NULL: not given */
	unsigned line;
};

struct parse {
	const char *name; /* the file, for messages */
	char *dir;        /* its directory, for relative names */
	const char *p, *end;
	unsigned line;
	int section;             /* index into sections[]; -1: none or unknown */
	bool in_unknown_section; /* the current section was reported unknown */
	struct slot slots[N_KEYS];
	struct problem *problems;
	size_t n_problems;
	size_t n_errors;
	unsigned flags; /* CONFIG_SKIP_SECRETS */
};

/*
 * A resolved *_file name. Messages say where the file is (or was looked for), never its name:
 * whatever was written after "=" may be the secret itself, pasted by mistake.
 */
struct file_ref {
	char *path;  /* what is opened */
	char *where; /* "in DIR", "in $CREDENTIALS_DIRECTORY (DIR)", "at the absolute path given" */
	char *searched; /* for a missing file: every place it was looked for */
};

static void problem_add(struct parse *ps, unsigned line, bool warning, const char *format, ...)
        _printf_(4, 5);
static void key_problem(struct parse *ps, const struct key *k, unsigned line, bool warning,
                        const char *format, ...) _printf_(5, 6);
static char *reader(char *str, int num, void *stream);
static int handler(void *user, const char *section, const char *name, const char *value);
static void apply_keys(struct parse *ps, struct config *c);
static void check_combinations(struct parse *ps, struct config *c);
static void parse_done(struct parse *ps, struct config_problems *problems);
static bool name_echoable(const char *s);
static const struct key *key_find(const char *section, const char *name);
static size_t key_index(const char *section, const char *name);
static int read_whole_fd(int fd, size_t max, char **ret, size_t *ret_size);
static char *path_dirname_abs(const char *path);
static int load_buffer(const char *name, const char *text, size_t size, unsigned flags,
                       struct config **ret, struct config_problems *problems);

/* Read and validate the configuration file at path. */
int
config_load(const char *path, struct config **ret, struct config_problems *problems)
{
	return config_load_flags(path, 0, ret, problems);
}

/* Read and validate the configuration file at path, with CONFIG_* flags. */
int
config_load_flags(const char *path, unsigned flags, struct config **ret,
                  struct config_problems *problems)
{
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *text = NULL;
	struct stat st;
	size_t size;
	int r;

	assert(path);
	assert(ret);

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		r = -errno;
		goto fail;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		r = -EISDIR;
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		goto fail;
	}
	r = read_whole_fd(fd, CONFIG_MAX_FILE_SIZE, &text, &size);
	if (r < 0)
		goto fail;
	return load_buffer(path, text, size, flags, ret, problems);

fail:
	if (problems) {
		problems->errors =
		        xreallocarray(problems->errors, problems->n_errors + 1, sizeof(char *));
		problems->errors[problems->n_errors++] =
		        r == -EINVAL ? xasprintf("%s: not a regular file", path)
		                     : xasprintf("%s: %s", path, strerror(-r));
	}
	return r;
}

/* Parse and validate a configuration held in memory; name stands for the file. */
int
config_load_buffer(const char *name, const char *text, size_t size, struct config **ret,
                   struct config_problems *problems)
{
	return load_buffer(name, text, size, 0, ret, problems);
}

/* The parser behind both public loaders. */
static int
load_buffer(const char *name, const char *text, size_t size, unsigned flags, struct config **ret,
            struct config_problems *problems)
{
	struct parse ps = {
	        .name = name,
	        .p = text,
	        .end = text + size,
	        .section = -1,
	        .flags = flags,
	};
	struct config *c;
	int r;

	assert(name);
	assert(text || size == 0);
	assert(ret);

	ps.dir = path_dirname_abs(name);
	c = xcalloc(1, sizeof(*c));
	c->path = xstrdup(name);

	r = ini_parse_stream(reader, &ps, handler, &ps);
	if (r > 0 && ps.n_errors == 0)
		/* libinih found something the reader let through: never accept it silently */
		problem_add(&ps, (unsigned)r, false, "syntax error");
	else if (r < 0)
		problem_add(&ps, 0, false, "cannot be parsed");

	apply_keys(&ps, c);
	check_combinations(&ps, c);

	r = ps.n_errors > 0 ? -EINVAL : 0;
	parse_done(&ps, problems);
	if (r < 0) {
		config_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* Free a client identity, wiping its secrets. */
static void
client_done(struct config_client *cl)
{
	free(cl->client_id);
	free_secret(cl->secret);
	free(cl->secret_file);
	free_secret(cl->certificate);
	free(cl->certificate_file);
}

/* Free a configuration, wiping every secret it holds. */
struct config *
config_free(struct config *c)
{
	if (!c)
		return NULL;

	free(c->path);

	free(c->stack.arm_endpoint);
	free(c->stack.provider_subscription);
	free(c->stack.tenant);
	client_done(&c->stack.client);
	free(c->stack.login_endpoint);
	free(c->stack.audience);

	free(c->registration.arm_endpoint);
	free(c->registration.subscription_id);
	free(c->registration.resource_group);
	free(c->registration.name);
	free(c->registration.api_version);
	free(c->registration.audience);

	free(c->azure.tenant);
	client_done(&c->azure.client);
	free(c->azure.login_endpoint);

	free(c->commerce.url);
	free(c->commerce.audience);

	free(c->store.path);

	free(c->http.ca_file);
	free(c->http.proxy);
	free(c->http.user_agent);

	free(c->health.listen);
	free(c->health.address);

	explicit_wipe(c, sizeof(*c));
	free(c);
	return NULL;
}

/* Free the problem lists and leave them empty. */
void
config_problems_done(struct config_problems *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_errors; i++)
		free(p->errors[i]);
	for (size_t i = 0; i < p->n_warnings; i++)
		free(p->warnings[i]);
	free(p->errors);
	free(p->warnings);
	*p = (struct config_problems){0};
}

/* Register the private-key lines of a PEM text, and the whole text, as secrets. */
static void
register_pem(const char *pem)
{
	const char *p = pem;
	bool in_key = false;

	log_add_secret(pem);
	while (*p) {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		_cleanup_free_ char *line = xstrndup(p, len);
		size_t n = strlen(line);

		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strncmp(line, "-----BEGIN", 10) == 0)
			in_key = strstr(line, "PRIVATE KEY") != NULL;
		else if (strncmp(line, "-----END", 8) == 0)
			in_key = false;
		else if (in_key && strchr(line, ':') == NULL)
			log_add_secret(line);
		explicit_wipe(line, n);
		p += len;
		if (*p == '\n')
			p++;
	}
}

/* Register a secret file's text as a secret, and each of its lines (it should have one). */
static void
register_lines(const char *text)
{
	const char *p = text;

	log_add_secret(text);
	while (*p) {
		size_t len = strcspn(p, "\r\n");
		_cleanup_free_ char *line = xstrndup(p, len);

		log_add_secret(line);
		explicit_wipe(line, len);
		p += len;
		p += strspn(p, "\r\n");
	}
}

/* Register every secret value of c with log_add_secret(). */
void
config_register_secrets(const struct config *c)
{
	const struct config_client *clients[] = {&c->stack.client, &c->azure.client};

	assert(c);
	for (size_t i = 0; i < ARRAY_SIZE(clients); i++) {
		if (clients[i]->secret)
			log_add_secret(clients[i]->secret);
		if (clients[i]->certificate)
			register_pem(clients[i]->certificate);
	}
}

/* True when the field of key k differs between a and b. */
static bool
key_differs(const struct key *k, const struct config *a, const struct config *b)
{
	const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;

	switch (k->type) {
	case KEY_IDENTITY:
		return *(const enum config_identity *)pa != *(const enum config_identity *)pb;
	case KEY_LISTEN:
		return !streq_ptr(a->health.listen, b->health.listen);
	case KEY_ENDPOINT:
	case KEY_URL:
	case KEY_PROXY:
	case KEY_GUID:
	case KEY_TENANT:
	case KEY_TOKEN:
	case KEY_API_VERSION:
	case KEY_RESOURCE_GROUP:
	case KEY_RESOURCE_NAME:
	case KEY_TEXT:
	case KEY_PATH:
	case KEY_CA_FILE:
		return !streq_ptr(*(char *const *)pa, *(char *const *)pb);
	default:
		/* only the types above are marked restart = true */
		assert(!"restart key of an unexpected type");
		return false;
	}
}

/* List the "section.key" names whose change needs a restart. */
void
config_restart_needed(const struct config *old, const struct config *new, char **ret)
{
	char *list = NULL;

	assert(ret);
	if (!old || !new) {
		*ret = NULL;
		return;
	}
	for (size_t i = 0; i < N_KEYS; i++) {
		char *n;

		if (!keys[i].restart || !key_differs(&keys[i], old, new))
			continue;
		n = list ? xasprintf("%s, %s.%s", list, keys[i].section, keys[i].name)
		         : xasprintf("%s.%s", keys[i].section, keys[i].name);
		free(list);
		list = n;
	}
	*ret = list;
}

/* Append a problem: "NAME:LINE: text" or, without a line, "NAME: text". */
static void
problem_add(struct parse *ps, unsigned line, bool warning, const char *format, ...)
{
	_cleanup_free_ char *text = NULL;
	va_list ap;

	va_start(ap, format);
	text = xvasprintf(format, ap);
	va_end(ap);

	ps->problems = xreallocarray(ps->problems, ps->n_problems + 1, sizeof(struct problem));
	ps->problems[ps->n_problems] = (struct problem){
	        .line = line,
	        .seq = ps->n_problems,
	        .warning = warning,
	        .text = line > 0 ? xasprintf("%s:%u: %s", ps->name, line, text)
	                         : xasprintf("%s: %s", ps->name, text),
	};
	ps->n_problems++;
	if (!warning)
		ps->n_errors++;
}

/* Append a problem about key k: "NAME:LINE: section.key: text". */
static void
key_problem(struct parse *ps, const struct key *k, unsigned line, bool warning, const char *format,
            ...)
{
	_cleanup_free_ char *text = NULL;
	va_list ap;

	va_start(ap, format);
	text = xvasprintf(format, ap);
	va_end(ap);
	problem_add(ps, line, warning, "%s.%s: %s", k->section, k->name, text);
}

/* Order problems by line; those without a line (missing keys) last. */
static int
problem_compare(const void *a, const void *b)
{
	const struct problem *x = a, *y = b;
	unsigned lx = x->line ? x->line : UINT_MAX, ly = y->line ? y->line : UINT_MAX;

	if (lx != ly)
		return lx < ly ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Hand the collected problems to the caller (or drop them) and free the parse state. */
static void
parse_done(struct parse *ps, struct config_problems *problems)
{
	if (ps->n_problems > 0)
		qsort(ps->problems, ps->n_problems, sizeof(struct problem), problem_compare);
	for (size_t i = 0; i < ps->n_problems; i++) {
		struct problem *pr = &ps->problems[i];

		if (!problems) {
			free(pr->text);
		} else if (pr->warning) {
			problems->warnings = xreallocarray(
			        problems->warnings, problems->n_warnings + 1, sizeof(char *));
			problems->warnings[problems->n_warnings++] = pr->text;
		} else {
			problems->errors = xreallocarray(problems->errors, problems->n_errors + 1,
			                                 sizeof(char *));
			problems->errors[problems->n_errors++] = pr->text;
		}
	}
	free(ps->problems);
	for (size_t i = 0; i < N_KEYS; i++)
		free(ps->slots[i].value);
	free(ps->dir);
}

/* True for a name we may repeat in a message: lower-case letters, digits and '_'. */
static bool
name_echoable(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > CONFIG_MAX_NAME || !(*s >= 'a' && *s <= 'z'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

/* The index of a known section, or -1. */
static int
section_find(const char *name, size_t len)
{
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++)
		if (strlen(sections[i]) == len && memcmp(sections[i], name, len) == 0)
			return (int)i;
	return -1;
}

/* Check a section header line (trimmed, starting with '['); update the current section. */
static void
reader_section(struct parse *ps, const char *s, size_t len)
{
	size_t i, close = 0;
	bool found = false;
	_cleanup_free_ char *name = NULL;

	/* libinih ends the name at ']' or at an inline comment (';' after white space) */
	for (i = 1; i < len; i++) {
		if (s[i] == ']') {
			close = i;
			found = true;
			break;
		}
		if (s[i] == ';' && isspace((unsigned char)s[i - 1]))
			break;
	}
	/* whatever follows, the keys below must not land in the previous section */
	ps->section = -1;
	ps->in_unknown_section = true;
	if (!found) {
		problem_add(ps, ps->line, false, "section header without closing ']'");
		return;
	}
	for (i = close + 1; i < len && isspace((unsigned char)s[i]); i++)
		;
	if (i < len && s[i] != ';') {
		problem_add(ps, ps->line, false, "text after the section header");
		return;
	}
	name = xstrndup(s + 1, close - 1);
	ps->section = section_find(name, strlen(name));
	if (ps->section >= 0)
		ps->in_unknown_section = false;
	else if (name_echoable(name))
		problem_add(ps, ps->line, false, "[%s]: unknown section", name);
	else
		problem_add(ps, ps->line, false, "unknown section (not a valid section name)");
}

/* Check a "key = value" line (trimmed); false when it is a syntax error. */
static bool
reader_key(struct parse *ps, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '=')
			return true;
		if (s[i] == ':' || (s[i] == ';' && i > 0 && isspace((unsigned char)s[i - 1])))
			break;
	}
	problem_add(ps, ps->line, false, "expected \"key = value\"");
	return false;
}

/*
 * The fgets-style reader for ini_parse_stream: one line per call, counted. Lines we refuse are
 * reported here and handed to libinih as blank lines.
 */
static char *
reader(char *str, int num, void *stream)
{
	struct parse *ps = stream;
	const char *s, *nl;
	size_t len;

	if (ps->p >= ps->end)
		return NULL;
	assert(num >= 4);

	s = ps->p;
	nl = memchr(s, '\n', (size_t)(ps->end - s));
	len = nl ? (size_t)(nl - s) : (size_t)(ps->end - s);
	ps->p = nl ? nl + 1 : ps->end;
	ps->line++;

	strcpy(str, "\n");

	if (len > 0 && s[len - 1] == '\r')
		len--;
	if (ps->line == 1 && len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
		s += 3;
		len -= 3;
	}
	if (memchr(s, '\0', len)) {
		problem_add(ps, ps->line, false, "line contains a NUL byte");
		return str;
	}
	/* libinih needs room for "\r\n\0" after the longest line it parses whole */
	if (len > (size_t)num - 3) {
		problem_add(ps, ps->line, false, "line longer than %d characters", num - 3);
		return str;
	}
	/* no leading white space: libinih would take an indented line as a continuation */
	while (len > 0 && isspace((unsigned char)*s)) {
		s++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		len--;
	if (len == 0 || *s == ';' || *s == '#')
		return str;
	if (*s == '[')
		reader_section(ps, s, len);
	else if (!reader_key(ps, s, len))
		return str;

	memcpy(str, s, len);
	str[len] = '\n';
	str[len + 1] = '\0';
	return str;
}

/* The libinih handler: remember each value with its line; all checks come after the parse. */
static int
handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse *ps = user;
	const char *sec;
	size_t i;

	(void)section; /* the reader tracks the section, including the ones libinih truncates */

	if (ps->section < 0) {
		if (!ps->in_unknown_section)
			problem_add(ps, ps->line, false, "key outside of any section");
		return 1;
	}
	sec = sections[ps->section];
	if (!name_echoable(name)) {
		problem_add(ps, ps->line, false, "%s: not a valid key name", sec);
		return 1;
	}
	i = key_index(sec, name);
	if (i == SIZE_MAX) {
		if (strstr(name, "secret") || strstr(name, "password") || strstr(name, "key"))
			problem_add(ps, ps->line, false,
			            "%s.%s: unknown key (secrets are only read from files: "
			            "client_secret_file, client_certificate_file)",
			            sec, name);
		else
			problem_add(ps, ps->line, false, "%s.%s: unknown key", sec, name);
		return 1;
	}
	if (ps->slots[i].value) {
		key_problem(ps, &keys[i], ps->line, false, "given twice (first on line %u)",
		            ps->slots[i].line);
		return 1;
	}
	ps->slots[i].value = xstrdup(value);
	ps->slots[i].line = ps->line;
	return 1;
}

/* The index of a key in keys[], or SIZE_MAX. */
static size_t
key_index(const char *section, const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (streq(keys[i].section, section) && streq(keys[i].name, name))
			return i;
	return SIZE_MAX;
}

/* The key in keys[], or NULL. */
static const struct key *
key_find(const char *section, const char *name)
{
	size_t i = key_index(section, name);

	return i == SIZE_MAX ? NULL : &keys[i];
}

/* Parse decimal digits into *ret, refusing overflow; advances *p. */
static int
parse_digits_u64(const char **p, uint64_t *ret)
{
	const char *s = *p;
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*p = s;
	*ret = v;
	return 0;
}

/* Parse a plain unsigned number. */
static int
parse_uint64(const char *s, uint64_t *ret)
{
	uint64_t v;
	int r;

	r = parse_digits_u64(&s, &v);
	if (r < 0)
		return r;
	if (*s)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Parse a duration such as "5m", "1h30m", "250ms" or "0" into microseconds. */
static int
parse_duration(const char *s, uint64_t *ret)
{
	uint64_t total = 0;

	if (streq(s, "0")) {
		*ret = 0;
		return 0;
	}
	if (!*s)
		return -EINVAL;
	while (*s) {
		uint64_t n, unit;
		int r;

		r = parse_digits_u64(&s, &n);
		if (r < 0)
			return r;
		if (strncmp(s, "ms", 2) == 0) {
			unit = USEC_PER_MSEC;
			s += 2;
		} else if (*s == 's') {
			unit = USEC_PER_SEC;
			s++;
		} else if (*s == 'm') {
			unit = USEC_PER_MINUTE;
			s++;
		} else if (*s == 'h') {
			unit = USEC_PER_HOUR;
			s++;
		} else if (*s == 'd') {
			unit = USEC_PER_DAY;
			s++;
		} else {
			return -EINVAL;
		}
		if (n > UINT64_MAX / unit || total > UINT64_MAX - n * unit)
			return -ERANGE;
		total += n * unit;
	}
	*ret = total;
	return 0;
}

/* Parse a size: bytes, or a number with K, M or G in either case (powers of 1024). */
static int
parse_size(const char *s, uint64_t *ret)
{
	uint64_t n, mult = 1;
	int r;

	r = parse_digits_u64(&s, &n);
	if (r < 0)
		return r;
	switch (*s) {
	case '\0':
		break;
	case 'K':
	case 'k':
		mult = UINT64_C(1) << 10;
		s++;
		break;
	case 'M':
	case 'm':
		mult = UINT64_C(1) << 20;
		s++;
		break;
	case 'G':
	case 'g':
		mult = UINT64_C(1) << 30;
		s++;
		break;
	default:
		return -EINVAL;
	}
	if (*s)
		return -EINVAL;
	if (n > UINT64_MAX / mult)
		return -ERANGE;
	*ret = n * mult;
	return 0;
}

/* Parse a boolean. */
static int
parse_bool(const char *s, bool *ret)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*ret = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*ret = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* True when s has the 8-4-4-4-12 hex shape of a GUID. */
static bool
guid_valid(const char *s)
{
	static const int groups[] = {8, 4, 4, 4, 12};

	for (size_t g = 0; g < ARRAY_SIZE(groups); g++) {
		for (int i = 0; i < groups[g]; i++, s++)
			if (!isxdigit((unsigned char)*s))
				return false;
		if (g + 1 < ARRAY_SIZE(groups) && *s++ != '-')
			return false;
	}
	return *s == '\0';
}

/* True when s is a DNS domain name of at least two labels. */
static bool
domain_valid(const char *s)
{
	size_t label = 0, labels = 0, total = strlen(s);

	if (total == 0 || total > 253)
		return false;
	for (const char *p = s;; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > 63 || p[-1] == '-')
				return false;
			labels++;
			label = 0;
			if (*p == '\0')
				break;
			continue;
		}
		if (!isalnum((unsigned char)*p) && !(*p == '-' && label > 0))
			return false;
		label++;
	}
	return labels >= 2;
}

/* Lower-case a string in place. */
static char *
ascii_lower(char *s)
{
	for (char *p = s; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return s;
}

/* True when every byte of s is printable ASCII; spaces only when allow_space. */
static bool
printable(const char *s, bool allow_space)
{
	for (; *s; s++) {
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
		if (*s == ' ' && !allow_space)
			return false;
	}
	return true;
}

/* Parse a port number 1..65535. */
static int
parse_port(const char *s, size_t len, uint16_t *ret)
{
	unsigned v = 0;

	if (len == 0 || len > 5)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -EINVAL;
	*ret = (uint16_t)v;
	return 0;
}

/* Check a host[:port] authority; returns a reason or NULL. */
static const char *
authority_check(const char *s, size_t len)
{
	const char *colon;
	size_t hostlen;
	uint16_t port;

	if (len == 0)
		return "has no host";
	if (memchr(s, '@', len))
		return "must not contain user credentials (secrets are only read from files)";
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		char addr[INET6_ADDRSTRLEN + 1];
		struct in6_addr a6;
		size_t alen;

		if (!close)
			return "has an invalid IPv6 host";
		alen = (size_t)(close - s - 1);
		if (alen == 0 || alen >= sizeof(addr))
			return "has an invalid IPv6 host";
		memcpy(addr, s + 1, alen);
		addr[alen] = '\0';
		if (inet_pton(AF_INET6, addr, &a6) != 1)
			return "has an invalid IPv6 host";
		colon = close + 1;
		if (colon == s + len)
			return NULL;
		if (*colon != ':')
			return "has an invalid host";
	} else {
		colon = memchr(s, ':', len);
		hostlen = colon ? (size_t)(colon - s) : len;
		if (hostlen == 0)
			return "has no host";
		for (size_t i = 0; i < hostlen; i++)
			if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' &&
			    s[i] != '_')
				return "has an invalid host";
		if (!colon)
			return NULL;
	}
	if (parse_port(colon + 1, (size_t)(s + len - colon - 1), &port) < 0)
		return "has an invalid port";
	return NULL;
}

/*
 * Check a URL: https:// (or http:// when allow_http), a valid host, no credentials, no
 * fragment, a query only when allow_query. Returns a reason or NULL.
 */
static const char *
url_check(const char *s, bool allow_http, bool allow_query)
{
	const char *rest, *end;

	if (strncasecmp(s, "https://", 8) == 0)
		rest = s + 8;
	else if (allow_http && strncasecmp(s, "http://", 7) == 0)
		rest = s + 7;
	else
		return allow_http ? "not an http:// or https:// URL" : "not an https:// URL";
	if (!printable(s, false))
		return "contains spaces or control characters";
	if (strchr(s, '#'))
		return "must not contain a fragment ('#')";
	if (!allow_query && strchr(s, '?'))
		return "must not contain a query ('?')";
	end = rest + strcspn(rest, "/?");
	return authority_check(rest, (size_t)(end - rest));
}

/* Check an ARM resource group name. */
static bool
resource_group_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 90 || s[n - 1] == '.')
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("._-()", *s))
			return false;
	return true;
}

/* Check an ARM resource name (no characters ARM refuses in names). */
static bool
resource_name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 260 || !printable(s, false))
		return false;
	return strpbrk(s, "<>%&:\\?/#*\"'") == NULL;
}

/* Check an api-version: YYYY-MM-DD with an optional "-preview"-style suffix. */
static bool
api_version_valid(const char *s)
{
	for (int i = 0; i < 10; i++) {
		bool dash = i == 4 || i == 7;

		if (dash ? s[i] != '-' : !isdigit((unsigned char)s[i]))
			return false;
	}
	s += 10;
	if (!*s)
		return true;
	if (*s++ != '-' || !*s)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s))
			return false;
	return true;
}

/* Join a directory and a relative name. */
static char *
path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir);

	return xasprintf("%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name);
}

/*
 * Resolve a *_file name: absolute as is; relative in $CREDENTIALS_DIRECTORY, else beside us.
 * Besides the path to open, say where that is for messages, which never repeat the name: an
 * operator may have pasted the secret itself after "=".
 */
static void
file_resolve(struct parse *ps, const char *name, struct file_ref *ret)
{
	const char *creds;

	*ret = (struct file_ref){0};
	if (name[0] == '/') {
		ret->path = xstrdup(name);
		ret->where = xstrdup("at the absolute path given");
		ret->searched = xstrdup(ret->where);
		return;
	}
	creds = getenv("CREDENTIALS_DIRECTORY");
	if (!isempty(creds)) {
		char *p = path_join(creds, name);
		struct stat st;

		if (lstat(p, &st) == 0) {
			ret->path = p;
			ret->where = xasprintf("in $CREDENTIALS_DIRECTORY (%s)", creds);
			ret->searched = xstrdup(ret->where);
			return;
		}
		free(p);
		ret->searched = xasprintf("in $CREDENTIALS_DIRECTORY (%s) or %s", creds, ps->dir);
	} else {
		ret->searched = xasprintf("in %s ($CREDENTIALS_DIRECTORY is not set)", ps->dir);
	}
	ret->path = path_join(ps->dir, name);
	ret->where = xasprintf("in %s", ps->dir);
}

/* Free what file_resolve() filled in. */
static void
file_ref_done(struct file_ref *ref)
{
	free(ref->path);
	free(ref->where);
	free(ref->searched);
	*ref = (struct file_ref){0};
}

/* Read all of fd (at most max bytes) into a NUL-terminated buffer. */
static int
read_whole_fd(int fd, size_t max, char **ret, size_t *ret_size)
{
	size_t size = 0, alloc = 4096;
	char *buf = xmalloc(alloc);

	for (;;) {
		ssize_t n;

		if (size + 1 >= alloc) {
			if (alloc > max) {
				explicit_wipe(buf, size);
				free(buf);
				return -EFBIG;
			}
			buf = xrealloc(buf, alloc * 2);
			alloc *= 2;
		}
		n = read(fd, buf + size, alloc - size - 1);
		if (n < 0) {
			int r = errno == EAGAIN ? -EIO : -errno;

			if (errno == EINTR)
				continue;
			explicit_wipe(buf, size);
			free(buf);
			return r;
		}
		if (n == 0)
			break;
		size += (size_t)n;
	}
	if (size > max) {
		explicit_wipe(buf, size);
		free(buf);
		return -EFBIG;
	}
	buf[size] = '\0';
	*ret = buf;
	*ret_size = size;
	return 0;
}

/* Open path read-only as a regular file; never blocks on FIFOs or devices. */
static int
file_open_regular(const char *path, struct stat *ret_st)
{
	_cleanup_close_ int fd = -1;
	struct stat st;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -EBADF;
	*ret_st = st;
	return TAKE_FD(fd);
}

/* Report a file problem saying where the file was looked for (never its name or content). */
static void
file_problem(struct parse *ps, const struct key *k, unsigned line, const struct file_ref *ref,
             int r)
{
	if (r == -ENOENT)
		key_problem(ps, k, line, false, "no such file %s", ref->searched);
	else if (r == -EBADF)
		key_problem(ps, k, line, false, "file %s: not a regular file", ref->where);
	else if (r == -EFBIG)
		key_problem(ps, k, line, false, "file %s: too large", ref->where);
	else
		key_problem(ps, k, line, false, "file %s: %s", ref->where, strerror(-r));
}

/*
 * Read a secret or certificate file named by key k into *ret (trailing newlines stripped).
 * Problems are reported; returns 0 or a negative errno.
 */
static int
secret_file_read(struct parse *ps, const struct key *k, unsigned line, const struct file_ref *ref,
                 char **ret)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	char *buf = NULL;
	size_t size;
	int r;

	fd = file_open_regular(ref->path, &st);
	if (fd < 0) {
		file_problem(ps, k, line, ref, fd);
		return fd;
	}
	r = read_whole_fd(fd, CONFIG_MAX_SECRET_SIZE, &buf, &size);
	if (r < 0) {
		file_problem(ps, k, line, ref, r);
		return r;
	}
	while (size > 0 && (buf[size - 1] == '\n' || buf[size - 1] == '\r'))
		buf[--size] = '\0';
	/*
	 * Registered now, before any check can fail: the caller prints the problems of a load
	 * that fails too, and this value may also have been written elsewhere in the file.
	 */
	if (k->type == KEY_CERT_FILE)
		register_pem(buf);
	else
		register_lines(buf);
	if (size == 0) {
		free(buf);
		key_problem(ps, k, line, false, "file %s: is empty", ref->where);
		return -ENODATA;
	}
	if (memchr(buf, '\0', size)) {
		explicit_wipe(buf, size);
		free(buf);
		key_problem(ps, k, line, false, "file %s: contains a NUL byte", ref->where);
		return -EINVAL;
	}
	if (st.st_mode & (S_IRGRP | S_IROTH))
		key_problem(ps, k, line, true,
		            "file %s: readable by group or others (chmod 0600 it)", ref->where);
	*ret = buf;
	return 0;
}

/* Read a secret file only to register its content for redaction; any failure is ignored. */
static void
secret_register_quietly(const struct key *k, const char *path)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	char *buf = NULL;
	size_t size = 0;

	fd = file_open_regular(path, &st);
	if (fd < 0 || read_whole_fd(fd, CONFIG_MAX_SECRET_SIZE, &buf, &size) < 0)
		return;
	if (k->type == KEY_CERT_FILE)
		register_pem(buf);
	else
		register_lines(buf);
	explicit_wipe(buf, size);
	free(buf);
}

/* A PEM password callback that refuses: encrypted keys are not supported (and no prompt). */
static int
pem_no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return 0;
}

/* Check that a PEM text holds a certificate and its unencrypted private key; a reason or NULL. */
static const char *
pem_check(const char *pem)
{
	const char *reason = NULL;
	X509 *x = NULL;
	EVP_PKEY *key = NULL;
	BIO *b;

	b = BIO_new_mem_buf(pem, -1);
	if (b) {
		x = PEM_read_bio_X509(b, NULL, pem_no_password, NULL);
		BIO_free(b);
	}
	b = BIO_new_mem_buf(pem, -1);
	if (b) {
		key = PEM_read_bio_PrivateKey(b, NULL, pem_no_password, NULL);
		BIO_free(b);
	}
	if (!x)
		reason = "holds no PEM certificate";
	else if (!key)
		reason = "holds no unencrypted PEM private key";
	else if (X509_check_private_key(x, key) != 1)
		reason = "private key does not match the certificate";
	X509_free(x);
	EVP_PKEY_free(key);
	ERR_clear_error();
	return reason;
}

/* Validate one value v (from line, 0 for a default) of key k and store it into c. */
static void
key_apply(struct parse *ps, const struct key *k, const char *v, unsigned line, struct config *c)
{
	char *field = (char *)c + k->offset;
	char **str = (char **)field;
	const char *reason = NULL;
	uint64_t u = 0;
	int r;

	switch (k->type) {
	case KEY_ENDPOINT: {
		char *s;
		size_t n;

		reason = url_check(v, false, false);
		if (reason)
			break;
		s = xstrdup(v);
		n = strlen(s);
		while (n > 8 && s[n - 1] == '/')
			s[--n] = '\0';
		*str = s;
		return;
	}
	case KEY_URL:
		reason = url_check(v, false, true);
		if (!reason)
			*str = xstrdup(v);
		break;
	case KEY_PROXY:
		reason = url_check(v, true, false);
		if (!reason)
			*str = xstrdup(v);
		break;
	case KEY_GUID:
		if (!guid_valid(v))
			reason = "not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)";
		else
			*str = ascii_lower(xstrdup(v));
		break;
	case KEY_TENANT:
		if (!guid_valid(v) && !domain_valid(v))
			reason = "not a GUID or a domain name";
		else
			*str = ascii_lower(xstrdup(v));
		break;
	case KEY_IDENTITY:
		if (streq(v, "aad"))
			*(enum config_identity *)field = CONFIG_IDENTITY_AAD;
		else if (streq(v, "adfs"))
			*(enum config_identity *)field = CONFIG_IDENTITY_ADFS;
		else
			reason = "must be aad or adfs";
		break;
	case KEY_COMPRESS:
		if (streq(v, "gzip"))
			*(enum config_compress *)field = CONFIG_COMPRESS_GZIP;
		else if (streq(v, "none"))
			*(enum config_compress *)field = CONFIG_COMPRESS_NONE;
		else
			reason = "must be gzip or none";
		break;
	case KEY_LOG_LEVEL: {
		int level = log_level_from_string(v);

		if (level < 0)
			reason = "must be error, warning, notice, info or debug";
		else
			*(int *)field = level;
		break;
	}
	case KEY_SECRET_FILE:
	case KEY_CERT_FILE: {
		struct config_client *cl = (struct config_client *)field;
		_cleanup_(file_ref_done) struct file_ref ref = {0};
		char *content = NULL;

		if (!printable(v, true)) {
			reason = "not a file path";
			break;
		}
		file_resolve(ps, v, &ref);
		if (ps->flags & CONFIG_SKIP_SECRETS) {
			/* the caller needs no credentials: resolve the file and keep nothing, but
			 * register what it holds when this user may read it, so that the caller's
			 * messages are redacted as the daemon's are */
			secret_register_quietly(k, ref.path);
			if (k->type == KEY_SECRET_FILE)
				cl->secret_file = TAKE_PTR(ref.path);
			else
				cl->certificate_file = TAKE_PTR(ref.path);
			return;
		}
		if (secret_file_read(ps, k, line, &ref, &content) < 0)
			return;
		if (k->type == KEY_SECRET_FILE) {
			if (strpbrk(content, "\r\n")) {
				free_secret(content);
				key_problem(ps, k, line, false, "file %s: holds more than one line",
				            ref.where);
				return;
			}
			cl->secret = content;
			cl->secret_file = TAKE_PTR(ref.path);
		} else {
			const char *why = pem_check(content);

			if (why) {
				free_secret(content);
				key_problem(ps, k, line, false, "file %s: %s", ref.where, why);
				return;
			}
			cl->certificate = content;
			cl->certificate_file = TAKE_PTR(ref.path);
		}
		return;
	}
	case KEY_CA_FILE: {
		_cleanup_(file_ref_done) struct file_ref ref = {0};
		_cleanup_close_ int fd = -1;
		struct stat st;

		if (!printable(v, true)) {
			reason = "not a file path";
			break;
		}
		file_resolve(ps, v, &ref);
		fd = file_open_regular(ref.path, &st);
		if (fd < 0) {
			file_problem(ps, k, line, &ref, fd);
			return;
		}
		if (st.st_size == 0) {
			key_problem(ps, k, line, false, "file %s: is empty", ref.where);
			return;
		}
		*str = TAKE_PTR(ref.path);
		return;
	}
	case KEY_TIME_HOUR: {
		int64_t t;

		if (time_parse_rfc3339(v, &t) < 0 || t < 0)
			reason = "not an RFC 3339 time (YYYY-MM-DDTHH:00:00Z)";
		else if (!time_on_hour(t))
			reason = "not on the hour";
		else
			*(int64_t *)field = t;
		break;
	}
	case KEY_DURATION:
		r = parse_duration(v, &u);
		if (r == -ERANGE)
			reason = "duration too large";
		else if (r < 0)
			reason = "not a duration (a number with ms, s, m, h or d, e.g. 5m)";
		else if (u < k->min || u > k->max)
			reason = k->min == 0               ? "duration out of range"
			         : k->min >= USEC_PER_HOUR ? "duration out of range (at least 1h)"
			         : k->min >= USEC_PER_SEC  ? "duration out of range (at least 1s)"
			                                   : "duration out of range (at least 1ms)";
		else
			*(uint64_t *)field = u;
		break;
	case KEY_SIZE:
		r = parse_size(v, &u);
		if (r < 0)
			reason = "not a size (bytes, or a number with K, M or G)";
		else if (u < k->min || u > k->max)
			reason = "size out of range";
		else
			*(uint64_t *)field = u;
		break;
	case KEY_UINT:
	case KEY_UINT64:
		r = parse_uint64(v, &u);
		if (r < 0)
			reason = "not a whole number";
		else if (u < k->min || u > k->max) {
			key_problem(ps, k, line, false, "out of range (%" PRIu64 "..%" PRIu64 ")",
			            k->min, k->max);
			return;
		} else if (k->type == KEY_UINT)
			*(unsigned *)field = (unsigned)u;
		else
			*(uint64_t *)field = u;
		break;
	case KEY_BOOL:
		if (parse_bool(v, (bool *)field) < 0)
			reason = "not a boolean (true or false)";
		break;
	case KEY_TOKEN:
		if (!printable(v, false))
			reason = "contains spaces or control characters";
		else
			*str = xstrdup(v);
		break;
	case KEY_API_VERSION:
		if (!api_version_valid(v))
			reason = "not an api-version (YYYY-MM-DD)";
		else
			*str = xstrdup(v);
		break;
	case KEY_RESOURCE_GROUP:
		if (!resource_group_valid(v))
			reason = "not a resource group name";
		else
			*str = xstrdup(v);
		break;
	case KEY_RESOURCE_NAME:
		if (!resource_name_valid(v))
			reason = "not a resource name";
		else
			*str = xstrdup(v);
		break;
	case KEY_TEXT:
		if (!printable(v, true))
			reason = "contains control or non-ASCII characters";
		else
			*str = xstrdup(v);
		break;
	case KEY_PATH:
		if (!printable(v, true) || v[strlen(v) - 1] == '/')
			reason = "not a file path";
		else
			*str = v[0] == '/' ? xstrdup(v) : path_join(ps->dir, v);
		break;
	case KEY_LISTEN: {
		const char *colon, *host = v;
		char addr[INET6_ADDRSTRLEN + 1];
		unsigned char buf[sizeof(struct in6_addr)];
		size_t hlen;
		uint16_t port;
		int af = AF_INET;

		if (v[0] == '[') {
			const char *close = strchr(v, ']');

			af = AF_INET6;
			host = v + 1;
			colon = close ? close + 1 : NULL;
			hlen = close ? (size_t)(close - host) : 0;
		} else {
			colon = strrchr(v, ':');
			hlen = colon ? (size_t)(colon - v) : 0;
		}
		if (!colon || *colon != ':' || hlen == 0 || hlen >= sizeof(addr)) {
			reason = "not ip:port (IPv4 address or [IPv6 address], then :port)";
			break;
		}
		memcpy(addr, host, hlen);
		addr[hlen] = '\0';
		if (inet_pton(af, addr, buf) != 1) {
			reason = "not ip:port (IPv4 address or [IPv6 address], then :port)";
			break;
		}
		if (parse_port(colon + 1, strlen(colon + 1), &port) < 0) {
			reason = "invalid port (1..65535)";
			break;
		}
		c->health.listen = xstrdup(v);
		c->health.address = xstrdup(addr);
		c->health.port = port;
		break;
	}
	}
	if (reason)
		key_problem(ps, k, line, false, "%s", reason);
}

/* Apply every key: the given value, else its default; report missing required keys. */
static void
apply_keys(struct parse *ps, struct config *c)
{
	c->stack.collect_from = -1;

	for (size_t i = 0; i < N_KEYS; i++) {
		const struct key *k = &keys[i];
		const struct slot *sl = &ps->slots[i];

		/* an empty value ("login_endpoint =") means "not set" */
		if (!isempty(sl->value)) {
			key_apply(ps, k, sl->value, sl->line, c);
		} else if (k->required) {
			key_problem(ps, k, 0, false, "required");
		} else if (k->def) {
			size_t before = ps->n_errors;

			key_apply(ps, k, k->def, 0, c);
			assert(ps->n_errors == before); /* defaults are valid */
			(void)before;
		}
	}
}

/* The line a key was given on (0: not given). */
static unsigned
key_line(const struct parse *ps, const char *section, const char *name)
{
	size_t i = key_index(section, name);

	return i == SIZE_MAX ? 0 : ps->slots[i].line;
}

/* True when the key was given with a non-empty value. */
static bool
key_given(const struct parse *ps, const char *section, const char *name)
{
	size_t i = key_index(section, name);

	return i != SIZE_MAX && !isempty(ps->slots[i].value);
}

/* Exactly one of client_secret_file / client_certificate_file in section. */
static void
check_client(struct parse *ps, const char *section)
{
	bool secret = key_given(ps, section, "client_secret_file");
	bool cert = key_given(ps, section, "client_certificate_file");

	if (secret && cert) {
		unsigned ls = key_line(ps, section, "client_secret_file");
		unsigned lc = key_line(ps, section, "client_certificate_file");

		key_problem(ps,
		            key_find(section,
		                     lc > ls ? "client_certificate_file" : "client_secret_file"),
		            MAX(ls, lc), false,
		            "only one of client_secret_file and client_certificate_file "
		            "may be set");
	} else if (!secret && !cert) {
		key_problem(ps, key_find(section, "client_secret_file"), 0, false,
		            "required (or %s.client_certificate_file)", section);
	}
}

/* Checks that involve more than one key. */
static void
check_combinations(struct parse *ps, struct config *c)
{
	unsigned line;

	check_client(ps, "stack");
	check_client(ps, "azure");

	if (c->stack.identity == CONFIG_IDENTITY_AAD) {
		if (!key_given(ps, "stack", "tenant"))
			key_problem(ps, key_find("stack", "tenant"), 0, false,
			            "required (with identity = aad)");
	} else if (c->stack.tenant) {
		key_problem(ps, key_find("stack", "tenant"), key_line(ps, "stack", "tenant"), true,
		            "ignored with identity = adfs");
		free(c->stack.tenant);
		c->stack.tenant = NULL;
	}

	if (c->commerce.retry_max_usec > 0 &&
	    c->commerce.retry_max_usec < c->commerce.retry_initial_usec) {
		line = key_line(ps, "commerce", "retry_max");
		if (line > 0)
			key_problem(ps, key_find("commerce", "retry_max"), line, false,
			            "shorter than commerce.retry_initial");
		else
			key_problem(ps, key_find("commerce", "retry_initial"),
			            key_line(ps, "commerce", "retry_initial"), false,
			            "longer than commerce.retry_max");
	}

	if (c->registration.max_staleness_usec > 0 &&
	    c->registration.max_staleness_usec <= c->registration.refresh_interval_usec) {
		line = key_line(ps, "registration", "max_staleness");
		if (line > 0)
			key_problem(ps, key_find("registration", "max_staleness"), line, false,
			            "must be longer than registration.refresh_interval");
		else
			key_problem(ps, key_find("registration", "refresh_interval"),
			            key_line(ps, "registration", "refresh_interval"), false,
			            "must be shorter than registration.max_staleness");
	}
}

/* The directory of path, absolute when it can be resolved. */
static char *
path_dirname_abs(const char *path)
{
	const char *slash = strrchr(path, '/');
	_cleanup_free_ char *dir = NULL;
	char *abs;

	if (!slash)
		dir = xstrdup(".");
	else if (slash == path)
		dir = xstrdup("/");
	else
		dir = xstrndup(path, (size_t)(slash - path));
	abs = realpath(dir, NULL);
	return abs ? abs : TAKE_PTR(dir);
}
