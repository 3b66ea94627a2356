/*
 * Unit tests for lib/log.c: the logfmt line (shape, quoting, escaping, one line per entry), level
 * filtering, structured fields, error text, redaction of registered secrets and the return
 * values of the log_*_errno macros. Output is captured through log_set_stream(); journal entries
 * through the log_set_journal() seam, which sees exactly the fields libsystemd would be handed
 * (its sender cannot be aimed at a test socket).
 */
#define LOG_MODULE "test"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"
#include "macro.h"

static char *captured;
static size_t captured_size;
static FILE *capture;

/* Capture stderr-target output in memory, at the default level, with no secrets. */
static int
setup(_unused_ void **state)
{
	capture = open_memstream(&captured, &captured_size);
	assert_non_null(capture);
	log_open(LOG_TARGET_STDERR);
	log_set_stream(capture);
	log_set_max_level(LOG_INFO);
	log_clear_secrets();
	return 0;
}

/* Release the capture and the secrets. */
static int
teardown(_unused_ void **state)
{
	log_set_stream(NULL);
	log_set_journal(NULL);
	fclose(capture);
	capture = NULL;
	free(captured);
	captured = NULL;
	captured_size = 0;
	log_clear_secrets();
	return 0;
}

/* Return what was logged so far. */
static const char *
output(void)
{
	fflush(capture);
	return captured ? captured : "";
}

/* Return what was logged after the timestamp of the first line (from "level="). */
static const char *
output_after_ts(void)
{
	const char *s = output();
	const char *p = strstr(s, " level=");

	assert_non_null(p);
	return p + 1;
}

/* Count the line breaks in s. */
static size_t
count_newlines(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* A plain entry: ts with milliseconds in UTC, level, module, quoted message, one line. */
static void
test_log_internal_logfmt_shape(_unused_ void **state)
{
	const char *s;
	int year, mon, day, h, m, sec, ms;
	char z;

	log_info("collector started with %d pages", 3);
	s = output();
	assert_int_equal(sscanf(s, "ts=%4d-%2d-%2dT%2d:%2d:%2d.%3d%c ", &year, &mon, &day, &h, &m,
	                        &sec, &ms, &z),
	                 8);
	assert_int_equal(z, 'Z');
	assert_true(year >= 2024);
	assert_int_equal(strlen("ts=2026-11-01T10:00:00.123Z "), strstr(s, " level=") - s + 1);
	assert_string_equal(output_after_ts(),
	                    "level=info module=test msg=\"collector started with 3 pages\"\n");
}

/* A single-word message is not quoted. */
static void
test_log_internal_plain_value_unquoted(_unused_ void **state)
{
	log_warning("ready");
	assert_string_equal(output_after_ts(), "level=warning module=test msg=ready\n");
}

/* Empty values and values with '=', '"', '\' are quoted; quotes and backslashes escaped. */
static void
test_log_internal_quotes_and_escapes(_unused_ void **state)
{
	log_fields(LOG_NOTICE,
	           LOG_FIELDS("AZS_EMPTY", "", "AZS_EQ", "a=b", "AZS_QUOTE", "say \"hi\"",
	                      "AZS_BACKSLASH", "c:\\dir", "AZS_PLAIN", "x"),
	           "%s", "");
	assert_string_equal(output_after_ts(),
	                    "level=notice module=test msg=\"\" empty=\"\" eq=\"a=b\" "
	                    "quote=\"say \\\"hi\\\"\" backslash=\"c:\\\\dir\" plain=x\n");
}

/* Line breaks in the message or a field never start a second physical line. */
static void
test_log_internal_one_line_per_entry(_unused_ void **state)
{
	log_fields(LOG_ERR, LOG_FIELDS("AZS_ARM_ERROR", "two\nlines\r\n"),
	           "first\nsecond\n\tthird");
	assert_int_equal(count_newlines(output()), 1);
	assert_string_equal(output_after_ts(),
	                    "level=error module=test msg=\"first\\nsecond\\n\\tthird\" "
	                    "arm_error=\"two\\nlines\\r\\n\"\n");
}

/* Other control characters are written as \xNN. */
static void
test_log_internal_control_characters_escaped(_unused_ void **state)
{
	log_info("bell\a");
	assert_string_equal(output_after_ts(), "level=info module=test msg=\"bell\\x07\"\n");
}

/* Entries above the maximum level are dropped, the rest are written. */
static void
test_log_internal_filters_by_level(_unused_ void **state)
{
	log_set_max_level(LOG_WARNING);
	assert_int_equal(log_get_max_level(), LOG_WARNING);
	log_info("not shown");
	log_debug("not shown either");
	assert_int_equal(log_internal(LOG_NOTICE, 0, "x", __FILE__, __LINE__, __func__, NULL,
	                              "direct call, filtered"),
	                 0);
	assert_string_equal(output(), "");
	log_warning("shown");
	log_error("shown too");
	assert_int_equal(count_newlines(output()), 2);
	assert_non_null(strstr(output(), "level=warning module=test msg=shown\n"));
	assert_non_null(strstr(output(), "level=error module=test msg=\"shown too\"\n"));
	assert_null(strstr(output(), "not shown"));
}

/* At debug level everything is written. */
static void
test_log_internal_debug_level_writes_debug(_unused_ void **state)
{
	log_set_max_level(LOG_DEBUG);
	log_debug("detail");
	assert_string_equal(output_after_ts(), "level=debug module=test msg=detail\n");
}

/* Fields appear lower-cased without "AZS_", in order; a NULL value skips its pair. */
static void
test_log_internal_fields(_unused_ void **state)
{
	log_fields(LOG_INFO,
	           LOG_FIELDS("AZS_BATCH_ID", "b-17", "AZS_TENANT", NULL, "AZS_RECORDS", "500",
	                      "MESSAGE_ID", LOG_MESSAGE_ID_READY),
	           "batch sent");
	assert_string_equal(output_after_ts(),
	                    "level=info module=test msg=\"batch sent\" batch_id=b-17 records=500 "
	                    "message_id=" LOG_MESSAGE_ID_READY "\n");
}

/* An error adds err="<strerror>" and "%m" in the format names that error. */
static void
test_log_internal_errno_text(_unused_ void **state)
{
	int r;

	r = log_error_errno(-ENOSPC, "cannot write %s: %m", "batch");
	assert_int_equal(r, -ENOSPC);
	assert_string_equal(output_after_ts(),
	                    "level=error module=test msg=\"cannot write batch: No space left on "
	                    "device\" err=\"No space left on device\"\n");
}

/* log_*_errno return -abs(error), also when the entry is filtered out; 0 stays 0. */
static void
test_log_error_errno_returns_negative_errno(_unused_ void **state)
{
	assert_int_equal(log_error_errno(EIO, "positive errno"), -EIO);
	assert_int_equal(log_warning_errno(-EAGAIN, "negative errno"), -EAGAIN);
	assert_int_equal(log_debug_errno(-ENOENT, "filtered out"), -ENOENT);
	assert_int_equal(log_info_errno(0, "no error"), 0);
	assert_int_equal(log_fields_errno(LOG_ERR, -EPERM, LOG_FIELDS("AZS_HTTP_STATUS", "403"),
	                                  "forbidden"),
	                 -EPERM);
	assert_null(strstr(output(), "filtered out"));
	assert_non_null(strstr(output(), "msg=\"no error\"\n"));
	assert_non_null(strstr(output(), "http_status=403\n"));
}

/* Logging leaves errno as it was. */
static void
test_log_internal_preserves_errno(_unused_ void **state)
{
	errno = ETIMEDOUT;
	(void)log_error_errno(-ENOSPC, "x %m");
	assert_int_equal(errno, ETIMEDOUT);
}

/* A secret inside a longer message is replaced and no part of it remains. */
static void
test_log_redact_secret_in_message(_unused_ void **state)
{
	log_add_secret("s3cr3t-Value");
	log_info("token=%s;tail", "xxs3cr3t-Valueyy");
	assert_string_equal(output_after_ts(),
	                    "level=info module=test msg=\"token=xx[redacted]yy;tail\"\n");
	assert_null(strstr(output(), "s3cr3t"));
}

/* A secret inside a field value is replaced. */
static void
test_log_redact_secret_in_field(_unused_ void **state)
{
	log_add_secret("hunter2hunter2");
	log_fields(LOG_WARNING, LOG_FIELDS("AZS_ARM_ERROR", "bad client_secret=hunter2hunter2"),
	           "rejected");
	assert_string_equal(output_after_ts(), "level=warning module=test msg=rejected "
	                                       "arm_error=\"bad client_secret=[redacted]\"\n");
}

/* Two different secrets, each occurring twice, are all replaced. */
static void
test_log_redact_two_secrets(_unused_ void **state)
{
	_cleanup_free_ char *r = NULL;

	log_add_secret("alpha-secret");
	log_add_secret("beta-secret");
	r = log_redact("a=alpha-secret b=beta-secret c=alpha-secret beta-secret");
	assert_string_equal(r, "a=[redacted] b=[redacted] c=[redacted] [redacted]");
}

/* Overlapping secrets (and overlapping occurrences of one) collapse into one marker. */
static void
test_log_redact_overlapping_secrets(_unused_ void **state)
{
	_cleanup_free_ char *r1 = NULL, *r2 = NULL, *r3 = NULL;

	log_add_secret("abcdef");
	log_add_secret("defghi");
	r1 = log_redact("xabcdefghiy");
	assert_string_equal(r1, "x[redacted]y");

	log_clear_secrets();
	log_add_secret("abab");
	r2 = log_redact("ababab!");
	assert_string_equal(r2, "[redacted]!");

	/* one secret contained in another */
	log_clear_secrets();
	log_add_secret("pass");
	log_add_secret("mypassword");
	r3 = log_redact("1 mypassword 2 pass");
	assert_string_equal(r3, "1 [redacted] 2 [redacted]");
}

/* Values shorter than four bytes are not registered; clearing forgets secrets. */
static void
test_log_add_secret_short_ignored_and_clear(_unused_ void **state)
{
	_cleanup_free_ char *r1 = NULL, *r2 = NULL, *r3 = NULL;

	log_add_secret("abc");
	log_add_secret("");
	log_add_secret(NULL);
	r1 = log_redact("abc");
	assert_string_equal(r1, "abc");

	log_add_secret("longer");
	r2 = log_redact("a longer text");
	assert_string_equal(r2, "a [redacted] text");
	log_clear_secrets();
	r3 = log_redact("a longer text");
	assert_string_equal(r3, "a longer text");
	assert_null(log_redact(NULL));
}

/* Level names round-trip; unknown names are -EINVAL. */
static void
test_log_level_from_string_names(_unused_ void **state)
{
	assert_int_equal(log_level_from_string("error"), LOG_ERR);
	assert_int_equal(log_level_from_string("warning"), LOG_WARNING);
	assert_int_equal(log_level_from_string("notice"), LOG_NOTICE);
	assert_int_equal(log_level_from_string("info"), LOG_INFO);
	assert_int_equal(log_level_from_string("debug"), LOG_DEBUG);
	assert_int_equal(log_level_from_string("DEBUG"), LOG_DEBUG);
	assert_int_equal(log_level_from_string("verbose"), -EINVAL);
	assert_int_equal(log_level_from_string(""), -EINVAL);
	assert_int_equal(log_level_from_string(NULL), -EINVAL);
	for (int l = LOG_ERR; l <= LOG_DEBUG; l++)
		assert_int_equal(log_level_from_string(log_level_to_string(l)), l);
}

/* AUTO resolves to the journal only when $JOURNAL_STREAM is set. */
static void
test_log_open_auto_follows_journal_stream(_unused_ void **state)
{
	setenv("JOURNAL_STREAM", "8:12345", 1);
	log_open(LOG_TARGET_AUTO);
	assert_int_equal(log_get_target(), LOG_TARGET_JOURNAL);
	unsetenv("JOURNAL_STREAM");
	log_open(LOG_TARGET_AUTO);
	assert_int_equal(log_get_target(), LOG_TARGET_STDERR);
	log_open(LOG_TARGET_JOURNAL);
	assert_int_equal(log_get_target(), LOG_TARGET_JOURNAL);
	log_open(LOG_TARGET_STDERR);
}

/* What the journal seam was handed for the last entry: one "KEY=value" per line. */
struct journal_capture {
	char *fields;
	unsigned calls;
	int result; /* what the fake sender returns */
};

/* The fake journal sender: records every field of the entry, in order. */
static int
capture_sendv(void *userdata, const char *code_file, const char *code_line, const char *code_func,
              const struct iovec *iov, int n)
{
	struct journal_capture *c = userdata;
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);

	assert_non_null(f);
	fprintf(f, "%s\n%s\nCODE_FUNC=%s\n", code_file, code_line, code_func);
	for (int i = 0; i < n; i++) {
		fwrite(iov[i].iov_base, 1, iov[i].iov_len, f);
		fputc('\n', f);
	}
	fclose(f);
	free(c->fields);
	c->fields = buf;
	c->calls++;
	return c->result;
}

/* True when the captured entry holds the line "KEY=value" (want). */
static bool
has_field(const struct journal_capture *c, const char *want)
{
	size_t n = strlen(want);

	for (const char *p = c->fields; p && *p;) {
		if (strncmp(p, want, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
			return true;
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return false;
}

/*
 * The journal target: every entry carries MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, AZS_MODULE,
 * the caller's CODE_FILE/CODE_LINE/CODE_FUNC, ERRNO and the extra fields, with registered
 * secrets redacted in the message and in every field; nothing goes to stderr.
 */
static void
test_log_internal_journal_fields(_unused_ void **state)
{
	struct journal_capture c = {0};
	const struct log_journal journal = {.sendv = capture_sendv, .userdata = &c};
	const char *code_line;
	int before, after, line = 0;

	log_set_journal(&journal);
	log_open(LOG_TARGET_JOURNAL);
	log_add_secret("hunter2-secret");

	before = __LINE__;
	log_fields(LOG_WARNING,
	           LOG_FIELDS("AZS_BATCH_ID", "b-1", "AZS_ARM_ERROR", "x hunter2-secret"),
	           "token hunter2-secret refused for %s", "stamp");
	after = __LINE__;
	assert_int_equal(c.calls, 1);
	if (!has_field(&c, "MESSAGE=token [redacted] refused for stamp"))
		fail_msg("fields:\n%s", c.fields);
	assert_true(has_field(&c, "PRIORITY=4"));
	assert_true(has_field(&c, "SYSLOG_IDENTIFIER=azs-usaged"));
	assert_true(has_field(&c, "AZS_MODULE=test"));
	assert_true(has_field(&c, "AZS_BATCH_ID=b-1"));
	assert_true(has_field(&c, "AZS_ARM_ERROR=x [redacted]"));
	assert_true(has_field(&c, "CODE_FILE=" __FILE__));
	/* the line of the call (compilers differ on which line of a multi-line call it is) */
	code_line = strstr(c.fields, "\nCODE_LINE=");
	assert_non_null(code_line);
	assert_int_equal(sscanf(code_line, "\nCODE_LINE=%d\n", &line), 1);
	assert_true(line > before && line < after);
	assert_true(has_field(&c, "CODE_FUNC=test_log_internal_journal_fields"));
	assert_null(strstr(c.fields, "hunter2"));
	assert_null(strstr(c.fields, "ERRNO="));

	log_error_errno(-ENOSPC, "store full");
	assert_int_equal(c.calls, 2);
	assert_true(has_field(&c, "MESSAGE=store full"));
	assert_true(has_field(&c, "PRIORITY=3"));
	assert_true(has_field(&c, "ERRNO=28"));
	assert_string_equal(output(), "");

	log_set_journal(NULL);
	free(c.fields);
}

/* A journal that cannot take the entry: it goes to stderr as a logfmt line instead. */
static void
test_log_internal_journal_failure_falls_back_to_stderr(_unused_ void **state)
{
	struct journal_capture c = {.result = -ECONNREFUSED};
	const struct log_journal journal = {.sendv = capture_sendv, .userdata = &c};

	log_set_journal(&journal);
	log_open(LOG_TARGET_JOURNAL);
	log_add_secret("hunter2-secret");
	log_warning("lost hunter2-secret");
	assert_int_equal(c.calls, 1);
	assert_string_equal(output_after_ts(),
	                    "level=warning module=test msg=\"lost [redacted]\"\n");
	log_set_journal(NULL);
	free(c.fields);
}

/* Run the tests. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_log_internal_logfmt_shape, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_plain_value_unquoted, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_quotes_and_escapes, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_one_line_per_entry, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_control_characters_escaped, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_filters_by_level, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_debug_level_writes_debug, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_fields, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_errno_text, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_error_errno_returns_negative_errno, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_preserves_errno, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_redact_secret_in_message, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_redact_secret_in_field, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_redact_two_secrets, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_redact_overlapping_secrets, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_add_secret_short_ignored_and_clear, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_log_level_from_string_names, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_internal_journal_fields, setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_log_internal_journal_failure_falls_back_to_stderr, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_open_auto_follows_journal_stream, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
