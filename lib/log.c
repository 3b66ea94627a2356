/*
 * Logging (see log.h): one entry goes either to the journal, with structured fields and the
 * caller's CODE_FILE/CODE_LINE/CODE_FUNC, or to stderr as exactly one logfmt line. Registered
 * secrets are cut out of the message and of every field value before either target sees them.
 * The journal sender is a seam (log_set_journal) so tests see the fields it is handed.
 *
 * Logging is not on the per-record path, so an entry is simply formatted into a fresh buffer and
 * written with one call. Entries may come from any thread (the store's checkpointer logs its
 * failures): the state below is read and changed under log_lock, and an entry is redacted and
 * written under it, so that a secret registered or cleared by a reload meanwhile is either cut
 * out or already gone, never half-freed; the level is an atomic, read before the lock.
 */
#define SD_JOURNAL_SUPPRESS_LOCATION

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <time.h>

#include <systemd/sd-journal.h>

#include "log.h"
#include "xmalloc.h"

#define LOG_REDACTED   "[redacted]"
#define LOG_SECRET_MIN 4
#define LOG_IDENTIFIER "azs-usaged"

/* A growing string for one logfmt line. */
struct log_buf {
	char *data;
	size_t len;
	size_t size;
};

static _Atomic int log_max_level = LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER; /* for everything below */
static enum log_target log_target = LOG_TARGET_AUTO;
static FILE *log_stream;
static const struct log_journal *log_journal_override;
static char **log_secrets;
static size_t log_n_secrets;

/* clang-format off */
static const char *const log_level_names[] = {
	[LOG_EMERG] = "emerg",
	[LOG_ALERT] = "alert",
	[LOG_CRIT] = "crit",
	[LOG_ERR] = "error",
	[LOG_WARNING] = "warning",
	[LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",
	[LOG_DEBUG] = "debug",
};
/* clang-format on */

static enum log_target log_resolve(enum log_target target);
static enum log_target log_target_locked(void);
static char *log_redact_locked(const char *s);
static void log_write_stderr(int level, int error, const char *module, const char *message,
                             const char *const *fields, char **values);
static int log_write_journal(int level, int error, const char *module, const char *file, int line,
                             const char *func, const char *message, const char *const *fields,
                             char **values);
static void buf_append(struct log_buf *b, const char *s, size_t n);
static void buf_puts(struct log_buf *b, const char *s);
static void buf_put_key(struct log_buf *b, const char *key);
static void buf_put_value(struct log_buf *b, const char *value);
static bool value_needs_quotes(const char *value);

/* Choose where entries go; AUTO picks the journal when started by systemd with a journal stream. */
void
log_open(enum log_target target)
{
	pthread_mutex_lock(&log_lock);
	log_target = log_resolve(target);
	pthread_mutex_unlock(&log_lock);
}

/* Return the resolved target. */
enum log_target
log_get_target(void)
{
	enum log_target target;

	pthread_mutex_lock(&log_lock);
	target = log_target_locked();
	pthread_mutex_unlock(&log_lock);
	return target;
}

/* The resolved target, resolving it on first use; under log_lock. */
static enum log_target
log_target_locked(void)
{
	if (log_target == LOG_TARGET_AUTO)
		log_target = log_resolve(LOG_TARGET_AUTO);
	return log_target;
}

/* Set the most verbose level that is still written. */
void
log_set_max_level(int level)
{
	atomic_store_explicit(&log_max_level, MAX(LOG_EMERG, MIN(level, LOG_DEBUG)),
	                      memory_order_relaxed);
}

/* Return the most verbose level that is still written. */
int
log_get_max_level(void)
{
	return atomic_load_explicit(&log_max_level, memory_order_relaxed);
}

/* Parse a level name; returns the syslog level or -EINVAL. */
int
log_level_from_string(const char *s)
{
	if (!s)
		return -EINVAL;
	for (size_t i = 0; i < ARRAY_SIZE(log_level_names); i++)
		if (i >= LOG_ERR && strcasecmp(s, log_level_names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

/* Name a level as it appears in logfmt lines. */
const char *
log_level_to_string(int level)
{
	if (level < 0 || (size_t)level >= ARRAY_SIZE(log_level_names))
		return "unknown";
	return log_level_names[level];
}

/* Register a value that must never be printed; short values are ignored. */
void
log_add_secret(const char *value)
{
	if (!value || strlen(value) < LOG_SECRET_MIN)
		return;
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < log_n_secrets; i++)
		if (streq(log_secrets[i], value))
			goto out;
	log_secrets = xreallocarray(log_secrets, log_n_secrets + 1, sizeof(*log_secrets));
	log_secrets[log_n_secrets++] = xstrdup(value);
out:
	pthread_mutex_unlock(&log_lock);
}

/* Forget every registered secret, wiping the copies. */
void
log_clear_secrets(void)
{
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < log_n_secrets; i++)
		free_secret(log_secrets[i]);
	free(log_secrets);
	log_secrets = NULL;
	log_n_secrets = 0;
	pthread_mutex_unlock(&log_lock);
}

/*
 * Return a copy of s with every registered secret replaced. Occurrences are first marked byte by
 * byte and each run of marked bytes becomes one "[redacted]", so overlapping or adjacent secrets
 * leave no fragment of either behind.
 */
char *
log_redact(const char *s)
{
	char *r;

	pthread_mutex_lock(&log_lock);
	r = log_redact_locked(s);
	pthread_mutex_unlock(&log_lock);
	return r;
}

/* log_redact() under log_lock. */
static char *
log_redact_locked(const char *s)
{
	_cleanup_free_ bool *mark = NULL;
	struct log_buf b = {NULL, 0, 0};
	size_t len, i;
	bool any = false;

	if (!s)
		return NULL;
	if (log_n_secrets == 0)
		return xstrdup(s);

	len = strlen(s);
	mark = xcalloc(len + 1, sizeof(*mark));
	for (size_t k = 0; k < log_n_secrets; k++) {
		const char *secret = log_secrets[k];
		size_t n = strlen(secret);
		const char *p = s;

		while ((p = memmem(p, len - (size_t)(p - s), secret, n))) {
			memset(mark + (p - s), true, n);
			any = true;
			p++;
		}
	}
	if (!any)
		return xstrdup(s);

	for (i = 0; i < len;) {
		size_t j = i;

		if (mark[i]) {
			while (j < len && mark[j])
				j++;
			buf_puts(&b, LOG_REDACTED);
		} else {
			while (j < len && !mark[j])
				j++;
			buf_append(&b, s + i, j - i);
		}
		i = j;
	}
	return b.data;
}

/* Send stderr-target output to f instead of stderr (NULL: back to stderr). */
void
log_set_stream(FILE *f)
{
	pthread_mutex_lock(&log_lock);
	log_stream = f;
	pthread_mutex_unlock(&log_lock);
}

/* Replace the journal sender (tests); NULL goes back to sd_journal_sendv_with_location(). */
void
log_set_journal(const struct log_journal *journal)
{
	pthread_mutex_lock(&log_lock);
	log_journal_override = journal;
	pthread_mutex_unlock(&log_lock);
}

/* Write one entry (varargs form). */
int
log_internal(int level, int error, const char *module, const char *file, int line, const char *func,
             const char *const *fields, const char *format, ...)
{
	va_list ap;
	int r;

	va_start(ap, format);
	r = log_internalv(level, error, module, file, line, func, fields, format, ap);
	va_end(ap);
	return r;
}

/* Write one entry: format, redact, hand to the target; errno is preserved for the caller. */
int
log_internalv(int level, int error, const char *module, const char *file, int line,
              const char *func, const char *const *fields, const char *format, va_list ap)
{
	_cleanup_free_ char *raw = NULL, *message = NULL;
	_cleanup_free_ char **values = NULL;
	size_t n_fields = 0;
	int saved_errno = errno;

	error = abs(error);
	if (level > log_get_max_level())
		return -error;

	/* "%m" in a format names the error being logged, as in systemd. */
	if (error != 0)
		errno = error;
	raw = xvasprintf(format, ap);

	if (fields)
		while (fields[2 * n_fields])
			n_fields++;
	values = xcalloc(n_fields + 1, sizeof(*values));
	pthread_mutex_lock(&log_lock);
	message = log_redact_locked(raw);
	for (size_t i = 0; i < n_fields; i++)
		values[i] = log_redact_locked(fields[2 * i + 1]);
	if (log_target_locked() != LOG_TARGET_JOURNAL ||
	    log_write_journal(level, error, module, file, line, func, message, fields, values) < 0)
		log_write_stderr(level, error, module, message, fields, values);
	pthread_mutex_unlock(&log_lock);
	explicit_wipe(raw, strlen(raw));

	for (size_t i = 0; i < n_fields; i++)
		free(values[i]);
	errno = saved_errno;
	return -error;
}

/* Map AUTO to the journal or stderr. */
static enum log_target
log_resolve(enum log_target target)
{
	if (target != LOG_TARGET_AUTO)
		return target;
	return getenv("JOURNAL_STREAM") ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
}

/* Format one logfmt line and write it with a single call. */
static void
log_write_stderr(int level, int error, const char *module, const char *message,
                 const char *const *fields, char **values)
{
	_cleanup_free_ char *data = NULL;
	struct log_buf b = {NULL, 0, 0};
	struct timespec ts;
	struct tm tm;
	char stamp[64];
	FILE *f = log_stream ? log_stream : stderr;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

	buf_puts(&b, "ts=");
	buf_puts(&b, stamp);
	buf_puts(&b, " level=");
	buf_puts(&b, log_level_to_string(level));
	buf_puts(&b, " module=");
	buf_put_value(&b, module ? module : "");
	buf_puts(&b, " msg=");
	buf_put_value(&b, message);
	if (error != 0) {
		char text[256];

		buf_puts(&b, " err=");
		buf_put_value(&b, strerror_r(error, text, sizeof(text)));
	}
	for (size_t i = 0; fields && fields[2 * i]; i++) {
		if (!values[i])
			continue;
		buf_puts(&b, " ");
		buf_put_key(&b, fields[2 * i]);
		buf_puts(&b, "=");
		buf_put_value(&b, values[i]);
	}
	buf_puts(&b, "\n");
	data = b.data;

	fwrite(data, 1, b.len, f);
	fflush(f);
}

/* Send one entry to the journal with the caller's location; returns < 0 when it cannot. */
static int
log_write_journal(int level, int error, const char *module, const char *file, int line,
                  const char *func, const char *message, const char *const *fields, char **values)
{
	_cleanup_free_ struct iovec *iov = NULL;
	_cleanup_free_ char **owned = NULL;
	_cleanup_free_ char *code_file = NULL, *code_line = NULL;
	size_t n_fields = 0, n_iov = 0, n_owned = 0;
	int r;

	while (fields && fields[2 * n_fields])
		n_fields++;
	iov = xcalloc(n_fields + 5, sizeof(*iov));
	owned = xcalloc(n_fields + 5, sizeof(*owned));

	owned[n_owned++] = xasprintf("MESSAGE=%s", message);
	owned[n_owned++] = xasprintf("PRIORITY=%d", level);
	owned[n_owned++] = xstrdup("SYSLOG_IDENTIFIER=" LOG_IDENTIFIER);
	owned[n_owned++] = xasprintf("AZS_MODULE=%s", module ? module : "");
	if (error != 0)
		owned[n_owned++] = xasprintf("ERRNO=%d", error);
	for (size_t i = 0; i < n_fields; i++)
		if (values[i])
			owned[n_owned++] = xasprintf("%s=%s", fields[2 * i], values[i]);
	for (size_t i = 0; i < n_owned; i++)
		iov[n_iov++] = (struct iovec){.iov_base = owned[i], .iov_len = strlen(owned[i])};

	code_file = xasprintf("CODE_FILE=%s", file ? file : "");
	code_line = xasprintf("CODE_LINE=%d", line);
	if (log_journal_override)
		r = log_journal_override->sendv(log_journal_override->userdata, code_file,
		                                code_line, func ? func : "", iov, (int)n_iov);
	else
		r = sd_journal_sendv_with_location(code_file, code_line, func ? func : "", iov,
		                                   (int)n_iov);

	for (size_t i = 0; i < n_owned; i++)
		free(owned[i]);
	return r;
}

/* Append n bytes. */
static void
buf_append(struct log_buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->size) {
		b->size = MAX(b->size * 2, b->len + n + 1);
		b->size = MAX(b->size, (size_t)128);
		b->data = xrealloc(b->data, b->size);
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

/* Append a string. */
static void
buf_puts(struct log_buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

/* Append a field name as a logfmt key: lower-case, without the "AZS_" prefix, no separators. */
static void
buf_put_key(struct log_buf *b, const char *key)
{
	if (strncmp(key, "AZS_", 4) == 0 && key[4])
		key += 4;
	for (const char *p = key; *p; p++) {
		unsigned char c = (unsigned char)*p;
		char out = isalnum(c) || c == '_' || c == '-' || c == '.' ? (char)tolower(c) : '_';

		buf_append(b, &out, 1);
	}
}

/* Append a value, quoted and escaped when it has to be, and never with a raw line break. */
static void
buf_put_value(struct log_buf *b, const char *value)
{
	bool quote = value_needs_quotes(value);

	if (quote)
		buf_puts(b, "\"");
	for (const char *p = value; *p; p++) {
		unsigned char c = (unsigned char)*p;
		char esc[8];

		switch (c) {
		case '"':
			buf_puts(b, "\\\"");
			break;
		case '\\':
			buf_puts(b, "\\\\");
			break;
		case '\n':
			buf_puts(b, "\\n");
			break;
		case '\r':
			buf_puts(b, "\\r");
			break;
		case '\t':
			buf_puts(b, "\\t");
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				snprintf(esc, sizeof(esc), "\\x%02x", c);
				buf_puts(b, esc);
			} else
				buf_append(b, p, 1);
		}
	}
	if (quote)
		buf_puts(b, "\"");
}

/* Values with a space, quote, equals sign or anything escaped are quoted; so is "". */
static bool
value_needs_quotes(const char *value)
{
	if (!*value)
		return true;
	for (const char *p = value; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == ' ' || c == '"' || c == '=' || c == '\\' || c < 0x20 || c == 0x7f)
			return true;
	}
	return false;
}
