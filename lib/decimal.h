/*
 * Exact decimal arithmetic on quantity strings. Billing quantities never pass through floating
 * point: they are parsed from their literal text into a sign, an integer coefficient of at most
 * DECIMAL_MAX_DIGITS significant digits and a decimal scale, compared and added exactly, and
 * written back as plain decimal text.
 *
 * Accepted input: optional sign, digits with an optional point ("2.4000000000", "3", ".5", "5."),
 * optional exponent ("1e3", "1.5E-3"). Rejected: empty, "NaN", "Infinity", hex ("0x10"),
 * whitespace, more than DECIMAL_MAX_DIGITS significant digits, exponents that put the value out
 * of range. Formatting keeps the scale of the input (trailing zeros are significant to the
 * sender: "2.4000000000" stays as it is) but never uses an exponent: "1e3" formats as "1000",
 * "1.5E-3" as "0.0015".
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DECIMAL_MAX_DIGITS 38
#define DECIMAL_MAX_SCALE  64
/* The longest formatted decimal: sign, digits, point, leading "0." and zeros up to the scale. */
#define DECIMAL_STRING_MAX (DECIMAL_MAX_DIGITS + DECIMAL_MAX_SCALE + 4)

__extension__ typedef unsigned __int128 decimal_u128;

struct decimal {
	decimal_u128 coefficient; /* < 10^38 */
	int32_t scale; /* value = coefficient * 10^-scale; 0 <= scale <= DECIMAL_MAX_SCALE */
	bool negative; /* never set for zero */
};

/* Parse text of length size; -EINVAL for malformed text, -ERANGE for too many digits. */
int decimal_parse(const char *text, size_t size, struct decimal *ret);
int decimal_parse_string(const char *text, struct decimal *ret);

/* -1, 0, 1 by value (2.40 equals 2.4). */
int decimal_cmp(const struct decimal *a, const struct decimal *b);

/* a + b and a - b exactly; -ERANGE when the result needs more than DECIMAL_MAX_DIGITS digits. */
int decimal_add(const struct decimal *a, const struct decimal *b, struct decimal *ret);
int decimal_sub(const struct decimal *a, const struct decimal *b, struct decimal *ret);

/* Write plain decimal text (see above); returns the length. out holds DECIMAL_STRING_MAX bytes. */
size_t decimal_format(const struct decimal *d, char out[static DECIMAL_STRING_MAX]);

/* Parse and format again: the canonical text of a quantity (a new string), or -EINVAL/-ERANGE. */
int decimal_normalize(const char *text, char **ret);

bool decimal_is_zero(const struct decimal *d);
