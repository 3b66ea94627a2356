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
 *
 * This file reads the text and keeps the key table and the problems; config-values.c checks each
 * value, reads the secret files and checks how keys combine.
 */
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

#define LOG_MODULE "config"
#include "config.h"
#include "config-private.h"
#include "log.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#ifndef AZS_VERSION
#define AZS_VERSION "0"
#endif

#define K(sec, key, t, field, ...)                                                                \
	{                                                                                         \
		.section = sec, .name = key, .type = t, .offset = offsetof(struct config, field), \
		__VA_ARGS__                                                                       \
	}

/* clang-format off */
const struct key config_keys[] = {
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

_Static_assert(ARRAY_SIZE(config_keys) == CONFIG_N_KEYS, "CONFIG_N_KEYS counts the keys");

static const char *const sections[] = {"stack", "registration", "azure",  "commerce",
                                       "store", "http",         "health", "log"};

static char *reader(char *str, int num, void *stream);
static int handler(void *user, const char *section, const char *name, const char *value);
static void parse_done(struct parse *ps, struct config_problems *problems);
static bool name_echoable(const char *s);
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
	r = config_read_whole_fd(fd, CONFIG_MAX_FILE_SIZE, &text, &size);
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
		config_problem_add(&ps, (unsigned)r, false, "syntax error");
	else if (r < 0)
		config_problem_add(&ps, 0, false, "cannot be parsed");

	config_apply_keys(&ps, c);
	config_check_combinations(&ps, c);

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
void
config_register_pem(const char *pem)
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
void
config_register_lines(const char *text)
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
			config_register_pem(clients[i]->certificate);
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
	for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
		char *n;

		if (!config_keys[i].restart || !key_differs(&config_keys[i], old, new))
			continue;
		n = list ? xasprintf("%s, %s.%s", list, config_keys[i].section, config_keys[i].name)
		         : xasprintf("%s.%s", config_keys[i].section, config_keys[i].name);
		free(list);
		list = n;
	}
	*ret = list;
}

/* Append a problem: "NAME:LINE: text" or, without a line, "NAME: text". */
void
config_problem_add(struct parse *ps, unsigned line, bool warning, const char *format, ...)
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
void
config_key_problem(struct parse *ps, const struct key *k, unsigned line, bool warning,
                   const char *format, ...)
{
	_cleanup_free_ char *text = NULL;
	va_list ap;

	va_start(ap, format);
	text = xvasprintf(format, ap);
	va_end(ap);
	config_problem_add(ps, line, warning, "%s.%s: %s", k->section, k->name, text);
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
	for (size_t i = 0; i < CONFIG_N_KEYS; i++)
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
		config_problem_add(ps, ps->line, false, "section header without closing ']'");
		return;
	}
	for (i = close + 1; i < len && isspace((unsigned char)s[i]); i++)
		;
	if (i < len && s[i] != ';') {
		config_problem_add(ps, ps->line, false, "text after the section header");
		return;
	}
	name = xstrndup(s + 1, close - 1);
	ps->section = section_find(name, strlen(name));
	if (ps->section >= 0)
		ps->in_unknown_section = false;
	else if (name_echoable(name))
		config_problem_add(ps, ps->line, false, "[%s]: unknown section", name);
	else
		config_problem_add(ps, ps->line, false,
		                   "unknown section (not a valid section name)");
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
	config_problem_add(ps, ps->line, false, "expected \"key = value\"");
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
		config_problem_add(ps, ps->line, false, "line contains a NUL byte");
		return str;
	}
	/* libinih needs room for "\r\n\0" after the longest line it parses whole */
	if (len > (size_t)num - 3) {
		config_problem_add(ps, ps->line, false, "line longer than %d characters", num - 3);
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
			config_problem_add(ps, ps->line, false, "key outside of any section");
		return 1;
	}
	sec = sections[ps->section];
	if (!name_echoable(name)) {
		config_problem_add(ps, ps->line, false, "%s: not a valid key name", sec);
		return 1;
	}
	i = config_key_index(sec, name);
	if (i == SIZE_MAX) {
		if (strstr(name, "secret") || strstr(name, "password") || strstr(name, "key"))
			config_problem_add(ps, ps->line, false,
			                   "%s.%s: unknown key (secrets are only read from files: "
			                   "client_secret_file, client_certificate_file)",
			                   sec, name);
		else
			config_problem_add(ps, ps->line, false, "%s.%s: unknown key", sec, name);
		return 1;
	}
	if (ps->slots[i].value) {
		config_key_problem(ps, &config_keys[i], ps->line, false,
		                   "given twice (first on line %u)", ps->slots[i].line);
		return 1;
	}
	ps->slots[i].value = xstrdup(value);
	ps->slots[i].line = ps->line;
	return 1;
}

/* The index of a key in config_keys[], or SIZE_MAX. */
size_t
config_key_index(const char *section, const char *name)
{
	for (size_t i = 0; i < CONFIG_N_KEYS; i++)
		if (streq(config_keys[i].section, section) && streq(config_keys[i].name, name))
			return i;
	return SIZE_MAX;
}

/* The key in config_keys[], or NULL. */
const struct key *
config_key_find(const char *section, const char *name)
{
	size_t i = config_key_index(section, name);

	return i == SIZE_MAX ? NULL : &config_keys[i];
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
