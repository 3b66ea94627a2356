/*
 * libFuzzer target for lib/config.c through config_load_buffer(). The input is a configuration
 * text. Whatever it holds: the result agrees with the problem list (0 with no error and a config,
 * -EINVAL with at least one error and no config), every message starts with the file name, is
 * one line of printable ASCII (values are never echoed, so nothing of the input but key and
 * section names reaches a message), and a marker that can only come from a value never shows,
 * not even from a *_file key (whose messages name the directory searched, never the name after
 * "=", which may be a pasted secret). A loaded config compares equal to itself for
 * config_restart_needed() and can register its secrets.
 *
 * Relative *_file names resolve beside a directory that does not exist, so the target reads no
 * file unless the input names an absolute path.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "macro.h"

#define FUZZ_NAME   "/nonexistent-azs-fuzz/fuzz.conf"
#define FUZZ_MARKER "SECRETVALUE" /* upper case: never a key or section name we echo */

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Check one message: the file name first, printable ASCII, never the marker. */
static void
check_message(const char *m)
{
	CHECK(strncmp(m, FUZZ_NAME ":", strlen(FUZZ_NAME ":")) == 0);
	for (const char *p = m; *p; p++)
		CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
	CHECK(!strstr(m, FUZZ_MARKER));
}

/* No $CREDENTIALS_DIRECTORY: relative names stay in the nonexistent directory. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	unsetenv("CREDENTIALS_DIRECTORY");
	return 0;
}

/* Run one input. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	struct config_problems p = {0};
	struct config *c = NULL;
	int r;

	r = config_load_buffer(FUZZ_NAME, text, size, &c, &p);
	if (r == 0) {
		char *list = (char *)"untouched";

		CHECK(c);
		CHECK(p.n_errors == 0);
		CHECK(c->commerce.batch_size >= 1 && c->commerce.batch_size <= 1000);
		CHECK(c->commerce.max_inflight >= 1);
		CHECK(c->stack.poll_interval_usec > 0);
		CHECK(c->health.address && c->health.port > 0);
		CHECK(c->stack.client.secret || c->stack.client.certificate);
		CHECK(!(c->stack.client.secret && c->stack.client.certificate));
		config_restart_needed(c, c, &list);
		CHECK(!list);
		config_register_secrets(c);
	} else {
		CHECK(r == -EINVAL);
		CHECK(!c);
		CHECK(p.n_errors >= 1);
	}
	for (size_t i = 0; i < p.n_errors; i++)
		check_message(p.errors[i]);
	for (size_t i = 0; i < p.n_warnings; i++)
		check_message(p.warnings[i]);
	config_problems_done(&p);
	config_free(c);
	/* config_load_buffer() registered what it read, whatever the outcome */
	log_clear_secrets();
	return 0;
}
