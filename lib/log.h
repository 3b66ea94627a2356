/*
 * Logging. Under journald (or when asked) every entry goes to the journal with structured
 * fields; otherwise (or with --foreground) one logfmt line per entry goes to stderr:
 *
 *   ts=2026-11-01T10:00:00.123Z level=warning module=store msg="..." err="..." batch_id=...
 *
 * Every entry carries SYSLOG_IDENTIFIER and AZS_MODULE (the LOG_MODULE of the calling file, which
 * defines it before including this header). Extra fields are passed as key/value pairs with
 * LOG_FIELDS("AZS_BATCH_ID", id, "AZS_RECORDS", n); in logfmt they appear lower-cased without the
 * "AZS_" prefix. Values registered with log_add_secret() never leave this module: any occurrence
 * in a message or field is replaced by "[redacted]".
 *
 * lib/ logs at debug level at most on error paths; the decision maker logs once.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <sys/uio.h>
#include <syslog.h>

#include "macro.h"

#ifndef LOG_MODULE
#define LOG_MODULE "main"
#endif

enum log_target {
	LOG_TARGET_AUTO,    /* journal when $JOURNAL_STREAM is set, stderr otherwise */
	LOG_TARGET_JOURNAL, /* sd_journal_send */
	LOG_TARGET_STDERR,  /* logfmt lines */
};

/* Fixed MESSAGE_IDs of the key events (ARCHITECTURE.md section 8). */
#define LOG_MESSAGE_ID_STARTED            "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c01"
#define LOG_MESSAGE_ID_READY              "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c02"
#define LOG_MESSAGE_ID_BATCH_DEAD         "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c03"
#define LOG_MESSAGE_ID_TENANT_DEFAULT     "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c04"
#define LOG_MESSAGE_ID_CONFLICT           "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c05"
#define LOG_MESSAGE_ID_STORE_FULL         "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c06"
#define LOG_MESSAGE_ID_REGISTRATION_STALE "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c07"
#define LOG_MESSAGE_ID_STOPPING           "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c08"
#define LOG_MESSAGE_ID_RELOADED           "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c09"

void log_open(enum log_target target);
enum log_target log_get_target(void); /* the resolved target: JOURNAL or STDERR */
void log_set_max_level(int level);    /* LOG_ERR .. LOG_DEBUG; default LOG_INFO */
int log_get_max_level(void);
int log_level_from_string(const char *s); /* "error", "warning", "notice", "info", "debug" */
const char *log_level_to_string(int level);

/* Secrets: never printed. Values under 4 bytes are ignored (they would redact everything). */
void log_add_secret(const char *value);
void log_clear_secrets(void);

/* Replace every registered secret in s by "[redacted]"; returns a new string. */
char *log_redact(const char *s);

/* Tests: send stderr-target output to this stream instead (NULL: stderr). */
void log_set_stream(FILE *f);

/*
 * The journal seam. libsystemd's sd_journal_sendv_with_location() always writes to
 * /run/systemd/journal/socket, so tests replace the sender to see exactly what it would be
 * handed: code_file "CODE_FILE=...", code_line "CODE_LINE=...", code_func the bare function
 * name, and the other fields as "KEY=value" iovecs. A sender returning < 0 makes the entry go
 * to stderr instead, as when journald cannot be reached.
 */
struct log_journal {
	int (*sendv)(void *userdata, const char *code_file, const char *code_line,
	             const char *code_func, const struct iovec *iov, int n);
	void *userdata;
};

void log_set_journal(const struct log_journal *journal); /* NULL restores libsystemd */

/*
 * Write one entry. fields: NULL or a NULL-terminated array of key, value pairs (a NULL value
 * skips the pair). error: 0 or an errno (sign ignored), added as ERRNO= / err="...".
 * Returns -abs(error), so "return log_error_errno(r, ...)" passes r on.
 */
int log_internal(int level, int error, const char *module, const char *file, int line,
                 const char *func, const char *const *fields, const char *format, ...)
        _printf_(8, 9);
int log_internalv(int level, int error, const char *module, const char *file, int line,
                  const char *func, const char *const *fields, const char *format, va_list ap)
        _printf_(8, 0);

#define LOG_FIELDS(...) ((const char *const[]){__VA_ARGS__, NULL})

#define log_full_errno_fields(level, error, fields, ...)                                     \
	__extension__({                                                                      \
		int _level = (level), _e = (error);                                          \
		_level <= log_get_max_level()                                                \
		        ? log_internal(_level, _e, LOG_MODULE, __FILE__, __LINE__, __func__, \
		                       (fields), __VA_ARGS__)                                \
		        : -abs(_e);                                                          \
	})

#define log_full_errno(level, error, ...) log_full_errno_fields(level, error, NULL, __VA_ARGS__)
#define log_full(level, ...)              (void)log_full_errno(level, 0, __VA_ARGS__)

#define log_error(...)                    log_full(LOG_ERR, __VA_ARGS__)
#define log_warning(...)                  log_full(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)                   log_full(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)                     log_full(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                    log_full(LOG_DEBUG, __VA_ARGS__)

#define log_error_errno(e, ...)           log_full_errno(LOG_ERR, e, __VA_ARGS__)
#define log_warning_errno(e, ...)         log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_notice_errno(e, ...)          log_full_errno(LOG_NOTICE, e, __VA_ARGS__)
#define log_info_errno(e, ...)            log_full_errno(LOG_INFO, e, __VA_ARGS__)
#define log_debug_errno(e, ...)           log_full_errno(LOG_DEBUG, e, __VA_ARGS__)

/* With structured fields: log_fields(LOG_WARNING, LOG_FIELDS("AZS_BATCH_ID", id), "...", ...). */
#define log_fields(level, fields, ...) (void)log_full_errno_fields(level, 0, fields, __VA_ARGS__)
#define log_fields_errno(level, error, fields, ...) \
	log_full_errno_fields(level, error, fields, __VA_ARGS__)
