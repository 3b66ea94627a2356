/*
 * Exact decimal arithmetic on quantity strings (see decimal.h for the accepted text).
 *
 * A value is sign * coefficient * 10^-scale with an unsigned 128-bit coefficient. The
 * coefficient is built from every digit written after the leading zeros, so trailing zeros after
 * the point are kept: "2.4000000000" is 24000000000 at scale 10 and counts 11 digits, while
 * "000.0015" is 15 at scale 4 and counts 2. A text whose coefficient needs more than
 * DECIMAL_MAX_DIGITS digits is rejected with -ERANGE, even when the extra digits are trailing
 * zeros: dropping them would change the scale the sender wrote, and nothing here ever rounds.
 *
 * An exponent moves the point: "1.5E-3" is 15 at scale 4. A negative scale is not representable,
 * so "1e3" becomes 1000 at scale 0 (the coefficient takes the zeros, and must still fit in 38
 * digits). Exponents beyond int32 and results with a scale above DECIMAL_MAX_SCALE are -ERANGE.
 *
 * Sums align to the larger scale and fail with -ERANGE when the exact result does not fit. Zero
 * is never negative. There is no floating point anywhere in this file.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "decimal.h"
#include "macro.h"
#include "xmalloc.h"

#define U128_MAX (~(decimal_u128)0)
#define P19      ((decimal_u128)UINT64_C(10000000000000000000))

/* 10^0 .. 10^38; 10^38 is the first coefficient that is too large. */
static const decimal_u128 pow10_table[DECIMAL_MAX_DIGITS + 1] = {
        UINT64_C(1),
        UINT64_C(10),
        UINT64_C(100),
        UINT64_C(1000),
        UINT64_C(10000),
        UINT64_C(100000),
        UINT64_C(1000000),
        UINT64_C(10000000),
        UINT64_C(100000000),
        UINT64_C(1000000000),
        UINT64_C(10000000000),
        UINT64_C(100000000000),
        UINT64_C(1000000000000),
        UINT64_C(10000000000000),
        UINT64_C(100000000000000),
        UINT64_C(1000000000000000),
        UINT64_C(10000000000000000),
        UINT64_C(100000000000000000),
        UINT64_C(1000000000000000000),
        P19,
        P19 * 10,
        P19 * 100,
        P19 * 1000,
        P19 * 10000,
        P19 * 100000,
        P19 * 1000000,
        P19 * 10000000,
        P19 * 100000000,
        P19 * 1000000000,
        P19 *UINT64_C(10000000000),
        P19 *UINT64_C(100000000000),
        P19 *UINT64_C(1000000000000),
        P19 *UINT64_C(10000000000000),
        P19 *UINT64_C(100000000000000),
        P19 *UINT64_C(1000000000000000),
        P19 *UINT64_C(10000000000000000),
        P19 *UINT64_C(100000000000000000),
        P19 *UINT64_C(1000000000000000000),
        P19 *P19,
};

#define COEFFICIENT_LIMIT (pow10_table[DECIMAL_MAX_DIGITS])

static unsigned count_digits(decimal_u128 c);
static int scale_up(decimal_u128 c, int32_t n, decimal_u128 *ret);
static int add_signed(const struct decimal *a, const struct decimal *b, bool b_negative,
                      struct decimal *ret);

/* Parse size bytes of decimal text (no terminator needed) into a decimal. */
int
decimal_parse(const char *text, size_t size, struct decimal *ret)
{
	const char *p, *end;
	bool negative = false, exp_negative = false, seen_digit = false;
	decimal_u128 c = 0;
	unsigned ndigits = 0;    /* digits of c, counted from the first non-zero one */
	int64_t frac_digits = 0; /* digits after the point, leading zeros included */
	int64_t exponent = 0, scale;

	if (!text || !ret)
		return -EINVAL;
	p = text;
	end = text + size;

	if (p < end && (*p == '+' || *p == '-'))
		negative = *p++ == '-';

	/* integer part, then the optional fraction: every digit goes into the coefficient */
	for (bool in_fraction = false; p < end; p++) {
		if (*p == '.' && !in_fraction) {
			in_fraction = true;
			continue;
		}
		if (*p < '0' || *p > '9')
			break;
		seen_digit = true;
		if (in_fraction && frac_digits <= DECIMAL_MAX_SCALE + (int64_t)INT32_MAX)
			frac_digits++;
		if (ndigits == 0 && *p == '0')
			continue; /* leading zeros are not significant */
		/* past the limit keep scanning (malformed text is -EINVAL whatever its length) */
		if (ndigits <= DECIMAL_MAX_DIGITS)
			ndigits++;
		if (ndigits <= DECIMAL_MAX_DIGITS)
			c = c * 10 + (decimal_u128)(*p - '0');
	}
	if (!seen_digit)
		return -EINVAL;

	if (p < end && (*p == 'e' || *p == 'E')) {
		bool exp_digit = false, exp_overflow = false;

		p++;
		if (p < end && (*p == '+' || *p == '-'))
			exp_negative = *p++ == '-';
		for (; p < end && *p >= '0' && *p <= '9'; p++) {
			exp_digit = true;
			if (!exp_overflow) {
				exponent = exponent * 10 + (*p - '0');
				/* int32 range: 2147483647 up, 2147483648 down */
				if (exponent > (int64_t)INT32_MAX + exp_negative)
					exp_overflow = true;
			}
		}
		if (!exp_digit || p != end)
			return -EINVAL;
		if (exp_overflow)
			return -ERANGE;
		if (exp_negative)
			exponent = -exponent;
	}
	if (p != end)
		return -EINVAL;
	if (ndigits > DECIMAL_MAX_DIGITS)
		return -ERANGE;

	scale = frac_digits - exponent;
	if (scale > DECIMAL_MAX_SCALE)
		return -ERANGE;
	if (scale < 0) {
		/* the struct has no negative scale: move the zeros into the coefficient */
		if (c != 0) {
			if (-scale > DECIMAL_MAX_DIGITS - (int64_t)ndigits)
				return -ERANGE;
			c *= pow10_table[-scale];
		}
		scale = 0;
	}

	*ret = (struct decimal){
	        .coefficient = c,
	        .scale = (int32_t)scale,
	        .negative = negative && c != 0,
	};
	return 0;
}

/* Parse a NUL-terminated decimal text. */
int
decimal_parse_string(const char *text, struct decimal *ret)
{
	if (!text)
		return -EINVAL;
	return decimal_parse(text, strlen(text), ret);
}

/* Compare by value: -1, 0 or 1. */
int
decimal_cmp(const struct decimal *a, const struct decimal *b)
{
	bool a_zero = a->coefficient == 0, b_zero = b->coefficient == 0;
	int sign, mag;

	if (a_zero && b_zero)
		return 0;
	/* signs first: zero sits between the negatives and the positives */
	if (a_zero)
		return b->negative ? 1 : -1;
	if (b_zero)
		return a->negative ? -1 : 1;
	if (a->negative != b->negative)
		return a->negative ? -1 : 1;
	sign = a->negative ? -1 : 1;

	/* the position of the leading digit decides unless it is the same in both */
	int64_t a_lead = (int64_t)count_digits(a->coefficient) - a->scale;
	int64_t b_lead = (int64_t)count_digits(b->coefficient) - b->scale;

	if (a_lead != b_lead)
		mag = a_lead > b_lead ? 1 : -1;
	else {
		/* same leading digit position: the aligned coefficient has the other's digit
		 * count (at most 38), so this cannot overflow */
		decimal_u128 ac = a->coefficient, bc = b->coefficient;

		if (a->scale < b->scale)
			ac *= pow10_table[b->scale - a->scale];
		else if (b->scale < a->scale)
			bc *= pow10_table[a->scale - b->scale];
		mag = ac == bc ? 0 : ac > bc ? 1 : -1;
	}
	return sign * mag;
}

/* Add exactly at the larger of the two scales. */
int
decimal_add(const struct decimal *a, const struct decimal *b, struct decimal *ret)
{
	return add_signed(a, b, b->negative, ret);
}

/* Subtract exactly at the larger of the two scales. */
int
decimal_sub(const struct decimal *a, const struct decimal *b, struct decimal *ret)
{
	return add_signed(a, b, b->coefficient != 0 && !b->negative, ret);
}

/* Write d as plain decimal text without an exponent; returns the length written. */
size_t
decimal_format(const struct decimal *d, char out[static DECIMAL_STRING_MAX])
{
	char digits[DECIMAL_MAX_DIGITS + 1];
	decimal_u128 c = d->coefficient;
	size_t nd = 0, n = 0;
	size_t scale = d->scale > 0 ? (size_t)MIN(d->scale, DECIMAL_MAX_SCALE) : 0;

	/* digits in reverse; a zero coefficient still writes one "0" */
	do {
		digits[nd++] = (char)('0' + (unsigned)(c % 10));
		c /= 10;
	} while (c != 0 && nd < sizeof(digits));

	if (d->negative && d->coefficient != 0)
		out[n++] = '-';
	if (nd > scale) {
		for (size_t i = nd; i > scale; i--)
			out[n++] = digits[i - 1];
		if (scale > 0)
			out[n++] = '.';
		for (size_t i = scale; i > 0; i--)
			out[n++] = digits[i - 1];
	} else {
		out[n++] = '0';
		out[n++] = '.';
		for (size_t i = nd; i < scale; i++)
			out[n++] = '0';
		for (size_t i = nd; i > 0; i--)
			out[n++] = digits[i - 1];
	}
	out[n] = '\0';
	return n;
}

/* Parse text and return its canonical text as a new string. */
int
decimal_normalize(const char *text, char **ret)
{
	char buf[DECIMAL_STRING_MAX];
	struct decimal d;
	int r;

	if (!ret)
		return -EINVAL;
	r = decimal_parse_string(text, &d);
	if (r < 0)
		return r;
	decimal_format(&d, buf);
	*ret = xstrdup(buf);
	return 0;
}

/* True when the value is zero, whatever its scale. */
bool
decimal_is_zero(const struct decimal *d)
{
	return d->coefficient == 0;
}

/* Number of decimal digits of c (1 for zero). */
static unsigned
count_digits(decimal_u128 c)
{
	unsigned n = 1;

	while (n <= DECIMAL_MAX_DIGITS && c >= pow10_table[n])
		n++;
	return n;
}

/* c * 10^n, or -ERANGE when that does not fit in 128 bits. */
static int
scale_up(decimal_u128 c, int32_t n, decimal_u128 *ret)
{
	if (c == 0 || n == 0) {
		*ret = c;
		return 0;
	}
	if (n < 0 || n > DECIMAL_MAX_DIGITS || c > U128_MAX / pow10_table[n])
		return -ERANGE;
	*ret = c * pow10_table[n];
	return 0;
}

/*
 * a + (b with sign b_negative). Only the operand with the smaller scale is multiplied; if that
 * alone leaves 128 bits the exact result cannot come back under 10^38 (the other operand is
 * below 10^38), so -ERANGE is the right answer and not an artefact of the representation.
 */
static int
add_signed(const struct decimal *a, const struct decimal *b, bool b_negative, struct decimal *ret)
{
	int32_t scale = MAX(a->scale, b->scale);
	bool a_negative = a->negative && a->coefficient != 0, negative;
	decimal_u128 ac, bc, c;
	int r;

	if (a->scale < 0 || b->scale < 0 || scale > DECIMAL_MAX_SCALE ||
	    a->coefficient >= COEFFICIENT_LIMIT || b->coefficient >= COEFFICIENT_LIMIT)
		return -EINVAL;
	r = scale_up(a->coefficient, scale - a->scale, &ac);
	if (r < 0)
		return r;
	r = scale_up(b->coefficient, scale - b->scale, &bc);
	if (r < 0)
		return r;

	if (a_negative == b_negative) {
		/* both below 2^128 but one below 10^38: the sum overflows only past 10^38 anyway */
		if (ac > U128_MAX - bc)
			return -ERANGE;
		c = ac + bc;
		negative = a_negative;
	} else if (ac >= bc) {
		c = ac - bc;
		negative = a_negative;
	} else {
		c = bc - ac;
		negative = b_negative;
	}
	if (c >= COEFFICIENT_LIMIT)
		return -ERANGE;

	*ret = (struct decimal){
	        .coefficient = c,
	        .scale = scale,
	        .negative = negative && c != 0,
	};
	return 0;
}
