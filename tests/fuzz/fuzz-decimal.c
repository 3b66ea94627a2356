/*
 * libFuzzer target for lib/decimal.c. The input is one or two decimal texts separated by a ','
 * (a byte no decimal may contain). Every text that parses must format without an exponent and
 * parse back to the same value, scale and text; pairs must compare antisymmetrically and add and
 * subtract consistently: (a + b) - b == a and (a - b) + b == a whenever no step reports -ERANGE.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "macro.h"

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_value(const struct decimal *a, const struct decimal *b);
static void check_one(const char *text, size_t size, const struct decimal *d);
static void check_pair(const struct decimal *a, const struct decimal *b);

/* Run one input. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	const char *comma = memchr(text, ',', size);
	struct decimal a, b;
	int ra, rb;

	if (!comma) {
		if (decimal_parse(text, size, &a) == 0)
			check_one(text, size, &a);
		return 0;
	}
	ra = decimal_parse(text, (size_t)(comma - text), &a);
	rb = decimal_parse(comma + 1, size - (size_t)(comma - text) - 1, &b);
	CHECK(ra == 0 || ra == -EINVAL || ra == -ERANGE);
	CHECK(rb == 0 || rb == -EINVAL || rb == -ERANGE);
	if (ra == 0)
		check_one(text, (size_t)(comma - text), &a);
	if (rb == 0)
		check_one(comma + 1, size - (size_t)(comma - text) - 1, &b);
	if (ra == 0 && rb == 0)
		check_pair(&a, &b);
	return 0;
}

/* True when a and b are the same value at the same scale. */
static bool
same_value(const struct decimal *a, const struct decimal *b)
{
	return a->coefficient == b->coefficient && a->scale == b->scale &&
	       a->negative == b->negative;
}

/* One parsed value: invariants, format, parse again, normalize. */
static void
check_one(const char *text, size_t size, const struct decimal *d)
{
	char out[DECIMAL_STRING_MAX], again_out[DECIMAL_STRING_MAX];
	struct decimal again, zero = {0};
	size_t n;

	CHECK(d->scale >= 0 && d->scale <= DECIMAL_MAX_SCALE);
	CHECK(!(d->negative && d->coefficient == 0));
	CHECK(!memchr(text, 'x', size) && !memchr(text, ' ', size));

	n = decimal_format(d, out);
	CHECK(n < DECIMAL_STRING_MAX && n == strlen(out));
	CHECK(!strpbrk(out, "eE"));
	CHECK(decimal_parse(out, n, &again) == 0);
	CHECK(same_value(d, &again));
	CHECK(decimal_cmp(d, &again) == 0);
	CHECK(decimal_format(&again, again_out) == n && memcmp(out, again_out, n + 1) == 0);
	CHECK(decimal_is_zero(d) == (decimal_cmp(d, &zero) == 0));

	/* normalize gives the same text when the input is a C string */
	if (!memchr(text, '\0', size)) {
		_cleanup_free_ char *copy = strndup(text, size), *norm = NULL;

		CHECK(copy);
		CHECK(decimal_normalize(copy, &norm) == 0);
		CHECK(strcmp(norm, out) == 0);
	}
}

/* Two parsed values: comparison and arithmetic agree with each other. */
static void
check_pair(const struct decimal *a, const struct decimal *b)
{
	struct decimal sum, sum2, diff, back;
	int c = decimal_cmp(a, b), r;

	CHECK(c >= -1 && c <= 1);
	CHECK(decimal_cmp(b, a) == -c);
	CHECK(decimal_cmp(a, a) == 0);

	/* addition commutes, in success and value */
	r = decimal_add(a, b, &sum);
	CHECK(r == 0 || r == -ERANGE);
	CHECK(decimal_add(b, a, &sum2) == r);
	if (r == 0) {
		CHECK(same_value(&sum, &sum2));
		CHECK(sum.scale == MAX(a->scale, b->scale));
		/* sum - b == a when it fits */
		if (decimal_sub(&sum, b, &back) == 0)
			CHECK(decimal_cmp(&back, a) == 0);
		/* adding a positive b moves up, a negative one down */
		CHECK(decimal_cmp(&sum, a) == (decimal_is_zero(b) ? 0 : b->negative ? -1 : 1));
	}

	r = decimal_sub(a, b, &diff);
	CHECK(r == 0 || r == -ERANGE);
	if (r == 0) {
		struct decimal zero = {0};

		/* the sign of a - b is the comparison of a and b */
		CHECK(decimal_cmp(&diff, &zero) == c);
		if (decimal_add(&diff, b, &back) == 0)
			CHECK(decimal_cmp(&back, a) == 0);
	}
}
