/*
 * Unit tests for lib/decimal.c: which texts parse and which are refused, that the parsed value and
 * its scale are exactly what was written, comparison across scales, exact sums and differences,
 * overflow as -ERANGE, and formatting that never uses an exponent.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "decimal.h"
#include "macro.h"

static struct decimal parse_ok(const char *text);
static char *fmt(const struct decimal *d, char buf[static DECIMAL_STRING_MAX]);
static char *repeat(char c, size_t n, const char *prefix, const char *suffix);
static char *read_file(const char *path);

/* Parse text, assert success and return the value. */
static struct decimal
parse_ok(const char *text)
{
	struct decimal d;
	int r = decimal_parse_string(text, &d);

	if (r != 0)
		fail_msg("decimal_parse_string(\"%s\") = %d, expected 0", text, r);
	return d;
}

/* Format d into buf and return buf. */
static char *
fmt(const struct decimal *d, char buf[static DECIMAL_STRING_MAX])
{
	size_t n = decimal_format(d, buf);

	assert_int_equal(n, strlen(buf));
	return buf;
}

/* A new string: prefix, n copies of c, suffix. */
static char *
repeat(char c, size_t n, const char *prefix, const char *suffix)
{
	size_t lp = strlen(prefix), ls = strlen(suffix);
	char *s = malloc(lp + n + ls + 1);

	assert_non_null(s);
	memcpy(s, prefix, lp);
	memset(s + lp, c, n);
	memcpy(s + lp + n, suffix, ls + 1);
	return s;
}

/* Read a whole file into a new NUL-terminated string. */
static char *
read_file(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char *buf;
	long size;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size > 0);
	rewind(f);
	buf = malloc((size_t)size + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
	buf[size] = '\0';
	return buf;
}

/* Every accepted form parses to the coefficient and scale written, and formats as expected. */
static void
test_decimal_parse_accepted_forms(void **state)
{
	static const struct {
		const char *text;
		uint64_t coefficient;
		int32_t scale;
		bool negative;
		const char *formatted;
	} cases[] = {
	        {"0", 0, 0, false, "0"},
	        {"3", 3, 0, false, "3"},
	        {"+3", 3, 0, false, "3"},
	        {"-3.5", 35, 1, true, "-3.5"},
	        {"2.4000000000", 24000000000, 10, false, "2.4000000000"},
	        {".5", 5, 1, false, "0.5"},
	        {"5.", 5, 0, false, "5"},
	        {"0.0015", 15, 4, false, "0.0015"},
	        {"000.0015", 15, 4, false, "0.0015"},
	        {"1e3", 1000, 0, false, "1000"},
	        {"1E+3", 1000, 0, false, "1000"},
	        {"1.5E-3", 15, 4, false, "0.0015"},
	        {"1.5e1", 15, 0, false, "15"},
	        {"1.50e1", 150, 1, false, "15.0"},
	        {"-1.5e-0", 15, 1, true, "-1.5"},
	        {"5.e2", 500, 0, false, "500"},
	        {".5e1", 5, 0, false, "5"},
	        {"1e0000003", 1000, 0, false, "1000"},
	        {"0.000", 0, 3, false, "0.000"},
	        {"123456.1234567891", 1234561234567891, 10, false, "123456.1234567891"},
	        {"0.0416666667", 416666667, 10, false, "0.0416666667"},
	        {"-0.00001", 1, 5, true, "-0.00001"},
	        {"18446744073709551615", UINT64_MAX, 0, false, "18446744073709551615"},
	};
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct decimal d = parse_ok(cases[i].text);

		if (d.coefficient != cases[i].coefficient || d.scale != cases[i].scale ||
		    d.negative != cases[i].negative)
			fail_msg("\"%s\": coefficient %llu scale %d negative %d", cases[i].text,
			         (unsigned long long)d.coefficient, (int)d.scale, (int)d.negative);
		assert_string_equal(fmt(&d, buf), cases[i].formatted);
	}
}

/* Malformed text is -EINVAL, and the out-parameter is left alone. */
static void
test_decimal_parse_rejected_forms(void **state)
{
	static const char *const bad[] = {
	        "",      "NaN",      "nan", "-nan", "Infinity", "-Infinity", "inf",   "INF",
	        "0x10",  " 1",       "1 ",  "\t1",  "1\n",      "1..2",      "1.2.3", "1e",
	        "1e+",   "1e-",      "e3",  "E3",   "+",        "-",         ".",     "+.",
	        "-.",    ".e1",      "--1", "+-1",  "1-",       "1e3.5",     "1e3e4", "1,5",
	        "1_000", "\xd9\xa1", "0b1", "1e 3", "1f",       "\"1\"",     "null",  "true",
	};
	struct decimal d = {.coefficient = 77, .scale = 7, .negative = true};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int r = decimal_parse_string(bad[i], &d);

		if (r != -EINVAL)
			fail_msg("decimal_parse_string(\"%s\") = %d, expected -EINVAL", bad[i], r);
	}
	assert_true(d.coefficient == 77 && d.scale == 7 && d.negative);
	assert_int_equal(decimal_parse_string(NULL, &d), -EINVAL);
}

/* decimal_parse honours size: text past it is not read, an embedded NUL is malformed. */
static void
test_decimal_parse_size_bounded(void **state)
{
	struct decimal d;
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	assert_int_equal(decimal_parse("12.5junk", 4, &d), 0);
	assert_string_equal(fmt(&d, buf), "12.5");
	assert_int_equal(decimal_parse("1\0"
	                               "2",
	                               3, &d),
	                 -EINVAL);
	assert_int_equal(decimal_parse("1", 0, &d), -EINVAL);
}

/* 38 significant digits parse; 39 are -ERANGE; leading zeros do not count. */
static void
test_decimal_parse_digit_limit(void **state)
{
	_cleanup_free_ char *d38 = repeat('9', 38, "", "");
	_cleanup_free_ char *d39 = repeat('9', 39, "", "");
	_cleanup_free_ char *one_then_38_zeros = repeat('0', 38, "1", "");
	_cleanup_free_ char *zeros_then_one = repeat('0', 100, "", "1");
	_cleanup_free_ char *frac38 = repeat('1', 38, "0.", "");
	_cleanup_free_ char *frac39 = repeat('1', 39, "0.", "");
	_cleanup_free_ char *trailing = repeat('0', 38, "1.", "");
	_cleanup_free_ char *neg39 = repeat('9', 39, "-", "");
	char buf[DECIMAL_STRING_MAX];
	struct decimal d;

	(void)state;
	d = parse_ok(d38);
	assert_string_equal(fmt(&d, buf), d38);
	assert_int_equal(decimal_parse_string(d39, &d), -ERANGE);
	assert_int_equal(decimal_parse_string(neg39, &d), -ERANGE);
	assert_int_equal(decimal_parse_string(one_then_38_zeros, &d), -ERANGE);
	d = parse_ok(zeros_then_one);
	assert_true(d.coefficient == 1 && d.scale == 0);
	assert_string_equal(fmt(&d, buf), "1");
	d = parse_ok(frac38);
	assert_int_equal(d.scale, 38);
	assert_string_equal(fmt(&d, buf), frac38);
	assert_int_equal(decimal_parse_string(frac39, &d), -ERANGE);
	/* trailing zeros after the point are kept, so they count: 1 + 38 zeros is 39 digits */
	assert_int_equal(decimal_parse_string(trailing, &d), -ERANGE);
	/* malformed text is -EINVAL even after too many digits */
	_cleanup_free_ char *bad = repeat('9', 50, "", "x");
	assert_int_equal(decimal_parse_string(bad, &d), -EINVAL);
}

/* Exponents that leave int32, or push the scale or the digits out of range, are -ERANGE. */
static void
test_decimal_parse_exponent_range(void **state)
{
	char buf[DECIMAL_STRING_MAX];
	struct decimal d;

	(void)state;
	assert_int_equal(decimal_parse_string("1e99999999999999999999", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e-99999999999999999999", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e2147483648", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("0e2147483648", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e-2147483649", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e2147483647", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e-2147483648", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e38", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("1e-65", &d), -ERANGE);
	assert_int_equal(decimal_parse_string("0.5e-64", &d), -ERANGE);

	d = parse_ok("1e37");
	assert_int_equal(fmt(&d, buf)[0], '1');
	assert_int_equal(strlen(buf), 38);
	d = parse_ok("1e-64");
	assert_true(d.coefficient == 1 && d.scale == 64);
	assert_int_equal(strlen(fmt(&d, buf)), 66);
	assert_null(strchr(buf, 'e'));
	/* zero: any exponent in range gives zero; the scale still obeys the limit */
	d = parse_ok("0e2147483647");
	assert_true(d.coefficient == 0 && d.scale == 0);
	assert_string_equal(fmt(&d, buf), "0");
	d = parse_ok("0.0e-63");
	assert_int_equal(d.scale, 64);
}

/* "-0" in any spelling is zero without a sign. */
static void
test_decimal_parse_negative_zero(void **state)
{
	static const char *const zeros[] = {"-0", "-0.0", "-.0", "-0e5", "-0.000e-2", "+0"};
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(zeros); i++) {
		struct decimal d = parse_ok(zeros[i]);

		assert_false(d.negative);
		assert_true(decimal_is_zero(&d));
		assert_int_not_equal(fmt(&d, buf)[0], '-');
	}
	struct decimal d = parse_ok("-0.00");
	assert_string_equal(fmt(&d, buf), "0.00");
}

/* The 16-digit quantity of usage-page-1.json (which a double cannot hold) round-trips exactly. */
static void
test_decimal_parse_testdata_quantity(void **state)
{
	_cleanup_free_ char *page = read_file(TESTDATA_DIR "/usage-page-1.json");
	static const char literal[] = "123456.1234567891";
	char buf[DECIMAL_STRING_MAX];
	const char *q;
	struct decimal d;

	(void)state;
	/* take the literal from the file itself, so the test follows the data */
	q = strstr(page, "\"quantity\": 123456.");
	assert_non_null(q);
	q += strlen("\"quantity\": ");
	assert_int_equal(decimal_parse(q, strcspn(q, ",\n}"), &d), 0);
	assert_string_equal(fmt(&d, buf), literal);
	assert_true(d.coefficient == UINT64_C(1234561234567891));
	assert_int_equal(d.scale, 10);
	/* the nearest double is 123456.12345678909..., so a float path would show up here */
	struct decimal near = parse_ok("123456.12345678909");
	assert_int_not_equal(decimal_cmp(&d, &near), 0);
}

/* decimal_cmp orders by value whatever the scale. */
static void
test_decimal_cmp_across_scales(void **state)
{
	static const struct {
		const char *a, *b;
		int expected;
	} cases[] = {
	        {"2.40", "2.4", 0},
	        {"2.4000000000", "2.4", 0},
	        {"1e3", "1000.000", 0},
	        {"0", "-0.000", 0},
	        {"0.0", "0", 0},
	        {"2.41", "2.4", 1},
	        {"2.4", "2.41", -1},
	        {"10", "9.99999999", 1},
	        {"0.001", "0.0009999", 1},
	        {"-1", "0", -1},
	        {"0", "-0.0000001", 1},
	        {"-2.5", "-2.50", 0},
	        {"-2.5", "-2.4", -1},
	        {"-10", "-9.9", -1},
	        {"-1", "1", -1},
	        {"99999999999999999999999999999999999999",
	         "9999999999999999999999999999999999999.9", 1},
	        {"0.00000000000000000000000000000000000001", "1e-38", 0},
	        {"1e-64", "0", 1},
	        {"12345678901234567890123456789012345678",
	         "1.2345678901234567890123456789012345678e37", 0},
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct decimal a = parse_ok(cases[i].a), b = parse_ok(cases[i].b);
		int ab = decimal_cmp(&a, &b), ba = decimal_cmp(&b, &a);

		if (ab != cases[i].expected || ba != -cases[i].expected)
			fail_msg("cmp(%s, %s) = %d / %d, expected %d", cases[i].a, cases[i].b, ab,
			         ba, cases[i].expected);
	}
}

/* 0.1 + 0.2 is exactly 0.3, and sums keep the larger scale. */
static void
test_decimal_add_exact(void **state)
{
	static const struct {
		const char *a, *b, *sum, *difference;
	} cases[] = {
	        {"0.1", "0.2", "0.3", "-0.1"},
	        {"2.4000000000", "1", "3.4000000000", "1.4000000000"},
	        {"1e3", "0.001", "1000.001", "999.999"},
	        {"-3.5", "3.5", "0.0", "-7.0"},
	        {"0.0416666667", "0.0416666667", "0.0833333334", "0.0000000000"},
	        {"123456.1234567891", "0.0000000009", "123456.1234567900", "123456.1234567882"},
	        {"-1", "-2", "-3", "1"},
	        {"0", "0.00", "0.00", "0.00"},
	};
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct decimal a = parse_ok(cases[i].a), b = parse_ok(cases[i].b), r;

		assert_int_equal(decimal_add(&a, &b, &r), 0);
		if (strcmp(fmt(&r, buf), cases[i].sum) != 0)
			fail_msg("%s + %s = %s, expected %s", cases[i].a, cases[i].b, buf,
			         cases[i].sum);
		assert_int_equal(decimal_sub(&a, &b, &r), 0);
		if (strcmp(fmt(&r, buf), cases[i].difference) != 0)
			fail_msg("%s - %s = %s, expected %s", cases[i].a, cases[i].b, buf,
			         cases[i].difference);
	}

	struct decimal a = parse_ok("0.1"), b = parse_ok("0.2"), three = parse_ok("0.3"), r;
	assert_int_equal(decimal_add(&a, &b, &r), 0);
	assert_int_equal(decimal_cmp(&r, &three), 0);
	assert_false(r.negative);
}

/* A million additions of 1e-10 give exactly 0.0001000000. */
static void
test_decimal_add_many_small(void **state)
{
	struct decimal step = parse_ok("0.0000000001"), sum = parse_ok("0"), expected;
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	for (int i = 0; i < 1000000; i++)
		assert_int_equal(decimal_add(&sum, &step, &sum), 0);
	assert_string_equal(fmt(&sum, buf), "0.0001000000");
	expected = parse_ok("0.0001");
	assert_int_equal(decimal_cmp(&sum, &expected), 0);
	/* and back down to exactly zero */
	for (int i = 0; i < 1000000; i++)
		assert_int_equal(decimal_sub(&sum, &step, &sum), 0);
	assert_true(decimal_is_zero(&sum));
	assert_false(sum.negative);
	assert_string_equal(fmt(&sum, buf), "0.0000000000");
}

/* Results past 38 digits are -ERANGE, never rounded; near misses that fit succeed. */
static void
test_decimal_add_overflow(void **state)
{
	_cleanup_free_ char *max = repeat('9', 38, "", "");
	_cleanup_free_ char *max_frac = repeat('9', 37, "", ".9");
	_cleanup_free_ char *big = repeat('0', 37, "1", "");
	char buf[DECIMAL_STRING_MAX];
	struct decimal a, b, r = {.coefficient = 42};

	(void)state;
	a = parse_ok(max);
	b = parse_ok("1");
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
	assert_true(r.coefficient == 42); /* untouched on failure */
	b = parse_ok("-1");
	assert_int_equal(decimal_sub(&a, &b, &r), -ERANGE);
	a = parse_ok(max);
	a.negative = true;
	b = parse_ok("1");
	assert_int_equal(decimal_sub(&a, &b, &r), -ERANGE);
	assert_int_equal(decimal_add(&a, &b, &r), 0);

	/* aligning 10^37 to scale 1 needs 39 digits: -ERANGE when the sum needs them too */
	a = parse_ok(big);
	b = parse_ok("0.5");
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
	/* ... but not when the other operand cancels it: 10^37 - 9999...9.9 = 0.1 */
	b = parse_ok(max_frac);
	assert_int_equal(decimal_sub(&a, &b, &r), 0);
	assert_string_equal(fmt(&r, buf), "0.1");
	b.negative = true;
	assert_int_equal(decimal_add(&a, &b, &r), 0);
	assert_string_equal(fmt(&r, buf), "0.1");

	/* scales 64 apart: the large-scale operand alone would overflow 128 bits */
	a = parse_ok("1");
	b = parse_ok("1e-64");
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
	b = parse_ok("0e-64");
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
	b = parse_ok("1e-37");
	assert_int_equal(decimal_add(&a, &b, &r), 0);
	assert_int_equal(r.scale, 37);

	/* 34 at scale 37 is just under 2^128; adding 0.03 must not wrap round to a small value */
	a = parse_ok("34");
	b = parse_ok("0.0300000000000000000000000000000000000");
	assert_int_equal(b.scale, 37);
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
	a.negative = b.negative = true;
	assert_int_equal(decimal_add(&a, &b, &r), -ERANGE);
}

/* decimal_format never writes an exponent, even at the extremes. */
static void
test_decimal_format_no_exponent(void **state)
{
	static const char *const inputs[] = {"1e37",     "1e-64", "9.9e-63", "1E10",
	                                     "-4.2e-20", "0e-64", "123e-2"};
	static const char *const expected[] = {
	        "10000000000000000000000000000000000000",
	        "0.0000000000000000000000000000000000000000000000000000000000000001",
	        "0.0000000000000000000000000000000000000000000000000000000000000099",
	        "10000000000",
	        "-0.000000000000000000042",
	        "0.0000000000000000000000000000000000000000000000000000000000000000",
	        "1.23",
	};
	char buf[DECIMAL_STRING_MAX];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(inputs); i++) {
		struct decimal d = parse_ok(inputs[i]), again;

		assert_string_equal(fmt(&d, buf), expected[i]);
		assert_null(strpbrk(buf, "eE"));
		assert_true(strlen(buf) < DECIMAL_STRING_MAX);
		again = parse_ok(buf);
		assert_int_equal(decimal_cmp(&d, &again), 0);
		assert_int_equal(again.scale, d.scale);
	}
}

/* decimal_normalize returns the canonical text as a new string, or the parse error. */
static void
test_decimal_normalize_canonical(void **state)
{
	_cleanup_free_ char *a = NULL, *b = NULL, *c = NULL;
	char *untouched = (char *)"x";

	(void)state;
	assert_int_equal(decimal_normalize("1.5E-3", &a), 0);
	assert_string_equal(a, "0.0015");
	assert_int_equal(decimal_normalize("+2.4000000000", &b), 0);
	assert_string_equal(b, "2.4000000000");
	assert_int_equal(decimal_normalize("-0", &c), 0);
	assert_string_equal(c, "0");
	assert_int_equal(decimal_normalize("NaN", &untouched), -EINVAL);
	assert_int_equal(decimal_normalize("1e99", &untouched), -ERANGE);
	assert_string_equal(untouched, "x");
}

/* Run the decimal tests. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_decimal_parse_accepted_forms),
	        cmocka_unit_test(test_decimal_parse_rejected_forms),
	        cmocka_unit_test(test_decimal_parse_size_bounded),
	        cmocka_unit_test(test_decimal_parse_digit_limit),
	        cmocka_unit_test(test_decimal_parse_exponent_range),
	        cmocka_unit_test(test_decimal_parse_negative_zero),
	        cmocka_unit_test(test_decimal_parse_testdata_quantity),
	        cmocka_unit_test(test_decimal_cmp_across_scales),
	        cmocka_unit_test(test_decimal_add_exact),
	        cmocka_unit_test(test_decimal_add_many_small),
	        cmocka_unit_test(test_decimal_add_overflow),
	        cmocka_unit_test(test_decimal_format_no_exponent),
	        cmocka_unit_test(test_decimal_normalize_canonical),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
