/*
 * libFuzzer target for the user-subscriptions parser of lib/stack.c, and for the two other small
 * documents of the stamp that the same bytes may as well exercise: the metadata endpoints and an
 * ARM error body. Whatever the input: a list or -EBADMSG with a message; every listed
 * subscription has a lower-case dashed GUID id and a non-empty tenant without upper-case ASCII;
 * skipped entries are counted with the first one's reason. Metadata, when accepted, has an https
 * login endpoint without a trailing slash and a non-empty audience; an ARM error has a code.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "stack.h"

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_lower_guid(const char *s);
static bool no_upper(const char *s);

/* Run one input. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = (const char *)data;
	struct stack_subscription_list *list = NULL;
	struct stack_metadata m = {0};
	struct stack_arm_error e = {0};
	char error[STACK_ERROR_MAX];
	int r;

	r = stack_subscriptions_parse(body, size, &list, error);
	CHECK(r == 0 || r == -EBADMSG);
	if (r < 0) {
		CHECK(!list);
		CHECK(error[0] != '\0' && strlen(error) < STACK_ERROR_MAX);
	} else {
		CHECK(list);
		CHECK((list->n_skipped > 0) == (list->skipped_reason != NULL));
		for (size_t i = 0; i < list->n_subscriptions; i++) {
			const struct stack_subscription *s = &list->subscriptions[i];

			CHECK(s->subscription_id && is_lower_guid(s->subscription_id));
			CHECK(s->tenant_id && *s->tenant_id && no_upper(s->tenant_id));
			CHECK(!s->delegated_provider_subscription_id ||
			      no_upper(s->delegated_provider_subscription_id));
		}
		CHECK(!list->next_link || *list->next_link);
		stack_subscription_list_free(list);
	}

	r = stack_metadata_parse(body, size, &m, error);
	CHECK(r == 0 || r == -EBADMSG);
	if (r == 0) {
		size_t n = strlen(m.login_endpoint);

		CHECK(strncasecmp(m.login_endpoint, "https://", 8) == 0 && n > 8);
		CHECK(m.login_endpoint[n - 1] != '/');
		CHECK(m.audience && *m.audience);
		stack_metadata_done(&m);
		CHECK(!m.login_endpoint && !m.audience);
	} else
		CHECK(!m.login_endpoint && error[0] != '\0');

	r = stack_arm_error_parse(body, size, &e);
	CHECK(r == 0 || r == -EBADMSG);
	if (r == 0) {
		CHECK(e.code && *e.code);
		stack_arm_error_done(&e);
	} else
		CHECK(!e.code);
	return 0;
}

/* True for a dashed GUID in lower case. */
static bool
is_lower_guid(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (size_t i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	}
	return true;
}

/* True when s has no upper-case ASCII letter. */
static bool
no_upper(const char *s)
{
	for (; *s; s++)
		if (*s >= 'A' && *s <= 'Z')
			return false;
	return true;
}
