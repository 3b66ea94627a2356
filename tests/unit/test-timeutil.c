/*
 * Unit tests for lib/timeutil.c: RFC 3339 parsing (zones, offsets, zero fractions, calendar
 * validity, leap years, trailing text), formatting and its round trip, and the clock seam.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "macro.h"
#include "timeutil.h"

#define T_2026_11_01_10 INT64_C(1793527200) /* 2026-11-01T10:00:00Z, computed outside this code */

struct fake_clock {
	uint64_t realtime;
	uint64_t monotonic;
	unsigned calls;
};

static uint64_t fake_realtime(void *userdata);
static uint64_t fake_monotonic(void *userdata);

/* Parse s and assert it is accepted as t. */
static void
assert_parses_to(const char *s, int64_t t)
{
	int64_t got = -1;
	int r = time_parse_rfc3339(s, &got);

	if (r != 0 || got != t)
		fail_msg("time_parse_rfc3339(\"%s\") = %d, %lld; expected 0, %lld", s, r,
		         (long long)got, (long long)t);
}

/* UTC written as Z, z, +00:00 or -00:00 is the same instant. */
static void
test_time_parse_rfc3339_utc_forms(void **state)
{
	(void)state;
	assert_parses_to("2026-11-01T10:00:00Z", T_2026_11_01_10);
	assert_parses_to("2026-11-01t10:00:00z", T_2026_11_01_10);
	assert_parses_to("2026-11-01T10:00:00+00:00", T_2026_11_01_10);
	assert_parses_to("2026-11-01T10:00:00-00:00", T_2026_11_01_10);
	assert_parses_to("1970-01-01T00:00:00Z", 0);
	assert_parses_to("2038-01-19T03:14:08Z", INT64_C(2147483648));
	assert_parses_to("9999-12-31T23:59:59Z", INT64_C(253402300799));
}

/* Offsets move the instant the right way: local time ahead of UTC is earlier in UTC. */
static void
test_time_parse_rfc3339_offsets(void **state)
{
	(void)state;
	assert_parses_to("2026-11-01T11:00:00+01:00", T_2026_11_01_10);
	assert_parses_to("2026-11-01T09:00:00-01:00", T_2026_11_01_10);
	assert_parses_to("2026-11-01T15:30:00+05:30", T_2026_11_01_10);
	assert_parses_to("2026-11-01T05:15:00-04:45", T_2026_11_01_10);
	assert_parses_to("2026-11-02T09:59:00+23:59", T_2026_11_01_10);
	/* across a month and a year boundary */
	assert_parses_to("2026-12-31T20:00:00-04:00", INT64_C(1798761600));
	assert_parses_to("2027-01-01T01:00:00+01:00", INT64_C(1798761600));
}

/* Fractions of zeros are accepted; a non-zero fraction or an empty one is not. */
static void
test_time_parse_rfc3339_fractions(void **state)
{
	int64_t t = 42;

	(void)state;
	assert_parses_to("2026-11-01T10:00:00.000Z", T_2026_11_01_10);
	assert_parses_to("2026-11-01T10:00:00.0000000+00:00", T_2026_11_01_10);
	assert_parses_to("2026-11-01T10:00:00.0z", T_2026_11_01_10);
	assert_int_equal(time_parse_rfc3339("2026-11-01T10:00:00.500Z", &t), -EINVAL);
	assert_int_equal(time_parse_rfc3339("2026-11-01T10:00:00.0000001Z", &t), -EINVAL);
	assert_int_equal(time_parse_rfc3339("2026-11-01T10:00:00.Z", &t), -EINVAL);
	assert_int_equal(time_parse_rfc3339("2026-11-01T10:00:00.", &t), -EINVAL);
	assert_int_equal(t, 42);
}

/* Dates and times that do not exist are refused, and the out-parameter is left alone. */
static void
test_time_parse_rfc3339_invalid_dates(void **state)
{
	static const char *const bad[] = {
	        "2026-02-30T00:00:00Z", "2026-02-29T00:00:00Z",      "2026-04-31T00:00:00Z",
	        "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z",      "2026-01-00T00:00:00Z",
	        "2026-01-32T00:00:00Z", "2026-11-01T24:00:00Z",      "2026-11-01T10:60:00Z",
	        "2026-11-01T10:00:60Z", "2026-11-01T10:00:00+24:00", "2026-11-01T10:00:00+01:60",
	        "1969-12-31T23:59:59Z", "2100-02-29T00:00:00Z",      "1900-02-29T00:00:00Z",
	};
	int64_t t = 42;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int r = time_parse_rfc3339(bad[i], &t);

		if (r != -EINVAL)
			fail_msg("time_parse_rfc3339(\"%s\") = %d, expected -EINVAL", bad[i], r);
	}
	assert_int_equal(t, 42);
}

/* 29 February exists in years divisible by 4, except centuries not divisible by 400. */
static void
test_time_parse_rfc3339_leap_years(void **state)
{
	(void)state;
	assert_parses_to("2024-02-29T00:00:00Z", INT64_C(1709164800));
	assert_parses_to("2000-02-29T23:59:59Z", INT64_C(951868799));
	assert_parses_to("2100-03-01T00:00:00Z", INT64_C(4107542400));
	/* 2024 has 366 days: 1 March follows 29 February by one day */
	assert_parses_to("2024-03-01T00:00:00Z", INT64_C(1709164800) + 86400);
	assert_parses_to("2025-01-01T00:00:00Z", INT64_C(1704067200) + 366 * 86400);
}

/* Malformed shapes and text after the zone are refused. */
static void
test_time_parse_rfc3339_trailing_garbage(void **state)
{
	static const char *const bad[] = {
	        "",
	        "2026-11-01",
	        "2026-11-01T10:00Z",
	        "2026-11-01T10:00:00",
	        "2026-11-01 10:00:00Z",
	        "2026-11-01T10:00:00Zx",
	        "2026-11-01T10:00:00Z ",
	        " 2026-11-01T10:00:00Z",
	        "2026-11-01T10:00:00+00:00Z",
	        "2026-11-01T10:00:00+0000",
	        "2026-11-01T10:00:00+00",
	        "2026-11-01T10:00:00+00:000",
	        "2026-1-01T10:00:00Z",
	        "26-11-01T10:00:00Z",
	        "2026/11/01T10:00:00Z",
	        "2026-11-01T1a:00:00Z",
	        "+2026-11-01T10:00:00Z",
	        "2026-11-01T10:00:00UTC",
	};
	int64_t t = 42;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int r = time_parse_rfc3339(bad[i], &t);

		if (r != -EINVAL)
			fail_msg("time_parse_rfc3339(\"%s\") = %d, expected -EINVAL", bad[i], r);
	}
	assert_int_equal(time_parse_rfc3339(NULL, &t), -EINVAL);
	assert_int_equal(t, 42);
}

/* Formatting writes exactly YYYY-MM-DDTHH:MM:SSZ and parses back to the same instant. */
static void
test_time_format_rfc3339_round_trip(void **state)
{
	static const int64_t times[] = {
	        0,
	        1,
	        59,
	        3600,
	        951868799,
	        1709164800,
	        T_2026_11_01_10,
	        T_2026_11_01_10 + 3599,
	        INT64_C(2147483648),
	        INT64_C(4107542400),
	        INT64_C(253402300799),
	};
	char buf[TIME_RFC3339_LEN + 1];

	(void)state;
	assert_string_equal(time_format_rfc3339(0, buf), "1970-01-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(T_2026_11_01_10, buf), "2026-11-01T10:00:00Z");
	assert_string_equal(time_format_rfc3339(951868799, buf), "2000-02-29T23:59:59Z");
	assert_ptr_equal(time_format_rfc3339(1, buf), buf);
	for (size_t i = 0; i < ARRAY_SIZE(times); i++) {
		int64_t back = -1;

		time_format_rfc3339(times[i], buf);
		assert_int_equal(strlen(buf), TIME_RFC3339_LEN);
		assert_int_equal(time_parse_rfc3339(buf, &back), 0);
		assert_int_equal(back, times[i]);
	}
	/* an offset form normalises to the Z form */
	int64_t t;
	assert_int_equal(time_parse_rfc3339("2026-11-01T09:00:00+00:00", &t), 0);
	assert_string_equal(time_format_rfc3339(t, buf), "2026-11-01T09:00:00Z");
}

/* The cached form writes what the plain one writes, whatever the order of the times. */
static void
test_time_format_rfc3339_cached(void **state)
{
	static const int64_t times[] = {
	        0, /* the zeroed cache's own t: still formatted */
	        0,
	        T_2026_11_01_10,
	        T_2026_11_01_10,
	        T_2026_11_01_10 + 3600,
	        T_2026_11_01_10,
	        INT64_C(253402300800), /* "invalid-time" */
	        INT64_C(253402300800),
	        INT64_C(253402300799),
	        -1,
	        -86400,
	        INT64_C(-62167219201), /* "invalid-time" */
	        951868799,
	        951868799,
	};
	struct time_rfc3339_cache cache = {0}, other = {0};
	char buf[TIME_RFC3339_LEN + 1];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(times); i++) {
		const char *text = time_format_rfc3339_cached(&cache, times[i]);

		assert_ptr_equal(text, cache.text);
		assert_string_equal(text, time_format_rfc3339(times[i], buf));
		/* a second cache going the other way round the same times */
		text = time_format_rfc3339_cached(&other, times[ARRAY_SIZE(times) - 1 - i]);
		assert_string_equal(text,
		                    time_format_rfc3339(times[ARRAY_SIZE(times) - 1 - i], buf));
	}
	/* every hour of a leap year, each twice in a row, against the plain form */
	for (int64_t t = 1704067200; t < 1704067200 + 366 * 86400; t += 3600) {
		assert_string_equal(time_format_rfc3339_cached(&cache, t),
		                    time_format_rfc3339(t, buf));
		assert_string_equal(time_format_rfc3339_cached(&cache, t), buf);
	}
}

/* Times before 1970 format with the seconds of the day counted forward, not negative. */
static void
test_time_format_rfc3339_negative_times(void **state)
{
	char buf[TIME_RFC3339_LEN + 1];

	(void)state;
	assert_string_equal(time_format_rfc3339(-1, buf), "1969-12-31T23:59:59Z");
	assert_string_equal(time_format_rfc3339(-86399, buf), "1969-12-31T00:00:01Z");
	assert_string_equal(time_format_rfc3339(-86400, buf), "1969-12-31T00:00:00Z");
	assert_string_equal(time_format_rfc3339(-86401, buf), "1969-12-30T23:59:59Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-2208988800), buf), "1900-01-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-30610224000), buf),
	                    "1000-01-01T00:00:00Z");
}

/* 29 February is written in leap years and skipped in centuries not divisible by 400. */
static void
test_time_format_rfc3339_leap_days(void **state)
{
	char buf[TIME_RFC3339_LEN + 1];

	(void)state;
	assert_string_equal(time_format_rfc3339(INT64_C(1709164800), buf), "2024-02-29T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(1709164800) - 1, buf),
	                    "2024-02-28T23:59:59Z");
	assert_string_equal(time_format_rfc3339(INT64_C(1709164800) + 86400, buf),
	                    "2024-03-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(951782400), buf), "2000-02-29T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(4107542400) - 1, buf),
	                    "2100-02-28T23:59:59Z");
	assert_string_equal(time_format_rfc3339(INT64_C(4107542400), buf), "2100-03-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-2203891200) - 1, buf),
	                    "1900-02-28T23:59:59Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-2203891200), buf), "1900-03-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-62162121600), buf),
	                    "0000-02-29T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(253375862400), buf),
	                    "9999-03-01T00:00:00Z");
}

/* Years 0000 to 9999 are written; a second outside them, or any extreme, is "invalid-time". */
static void
test_time_format_rfc3339_range(void **state)
{
	static const int64_t outside[] = {
	        INT64_C(253402300800),
	        INT64_C(-62167219201),
	        INT64_C(67768036191676800),
	        INT64_C(-67768040609740801),
	        INT64_MAX,
	        INT64_MIN,
	        INT64_MIN + 86399,
	};
	char buf[TIME_RFC3339_LEN + 1];

	(void)state;
	assert_string_equal(time_format_rfc3339(INT64_C(253402300799), buf),
	                    "9999-12-31T23:59:59Z");
	assert_string_equal(time_format_rfc3339(INT64_C(253402214400), buf),
	                    "9999-12-31T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-62167219200), buf),
	                    "0000-01-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-62135596800), buf),
	                    "0001-01-01T00:00:00Z");
	assert_string_equal(time_format_rfc3339(INT64_C(-62135596801), buf),
	                    "0000-12-31T23:59:59Z");
	for (size_t i = 0; i < ARRAY_SIZE(outside); i++) {
		assert_ptr_equal(time_format_rfc3339(outside[i], buf), buf);
		assert_string_equal(buf, "invalid-time");
	}
}

/* From year 1000 to 9999 the output is what gmtime_r and strftime write, one instant in ~8 days. */
static void
test_time_format_rfc3339_matches_gmtime(void **state)
{
	char buf[TIME_RFC3339_LEN + 1], want[TIME_RFC3339_LEN + 1];
	unsigned n = 0;

	(void)state;
	for (int64_t t = INT64_C(-30610224000); t <= INT64_C(253402300799); t += 7 * 86400 + 3607) {
		struct tm tm;
		time_t tt = (time_t)t;

		assert_non_null(gmtime_r(&tt, &tm));
		assert_int_equal(strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%SZ", &tm),
		                 TIME_RFC3339_LEN);
		time_format_rfc3339(t, buf);
		if (!streq(buf, want))
			fail_msg("time_format_rfc3339(%lld) = %s, gmtime_r says %s", (long long)t,
			         buf, want);
		n++;
	}
	assert_true(n > 400000);
}

/* time_on_hour is true exactly on whole hours. */
static void
test_time_on_hour_boundaries(void **state)
{
	(void)state;
	assert_true(time_on_hour(0));
	assert_true(time_on_hour(T_2026_11_01_10));
	assert_false(time_on_hour(T_2026_11_01_10 + 1));
	assert_false(time_on_hour(T_2026_11_01_10 - 1));
	assert_false(time_on_hour(1800));
}

/* Realtime from the fake clock. */
static uint64_t
fake_realtime(void *userdata)
{
	struct fake_clock *c = userdata;

	c->calls++;
	return c->realtime;
}

/* Monotonic time from the fake clock. */
static uint64_t
fake_monotonic(void *userdata)
{
	struct fake_clock *c = userdata;

	c->calls++;
	return c->monotonic;
}

/* A replaced clock is what the now_* functions report; NULL brings the system clock back. */
static void
test_timeutil_set_clock_seam(void **state)
{
	struct fake_clock fake = {
	        .realtime = (uint64_t)T_2026_11_01_10 * USEC_PER_SEC + 999999,
	        .monotonic = 5 * USEC_PER_SEC,
	};
	const struct timeutil_clock clock = {fake_realtime, fake_monotonic, &fake};
	uint64_t before;

	(void)state;
	timeutil_set_clock(&clock);
	assert_true(now_realtime_usec() == fake.realtime);
	assert_true(now_monotonic_usec() == 5 * USEC_PER_SEC);
	assert_int_equal(now_seconds(), T_2026_11_01_10); /* whole seconds, truncated */
	fake.realtime += 3600 * USEC_PER_SEC;
	fake.monotonic += USEC_PER_MSEC;
	assert_int_equal(now_seconds(), T_2026_11_01_10 + 3600);
	assert_true(now_monotonic_usec() == 5 * USEC_PER_SEC + USEC_PER_MSEC);
	assert_int_equal(fake.calls, 5);

	timeutil_set_clock(NULL);
	before = (uint64_t)time(NULL);
	assert_true(now_seconds() >= (int64_t)before && now_seconds() <= (int64_t)before + 5);
	assert_int_equal(fake.calls, 5);
	before = now_monotonic_usec();
	assert_true(now_monotonic_usec() >= before);
}

/* Run the timeutil tests. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_time_parse_rfc3339_utc_forms),
	        cmocka_unit_test(test_time_parse_rfc3339_offsets),
	        cmocka_unit_test(test_time_parse_rfc3339_fractions),
	        cmocka_unit_test(test_time_parse_rfc3339_invalid_dates),
	        cmocka_unit_test(test_time_parse_rfc3339_leap_years),
	        cmocka_unit_test(test_time_parse_rfc3339_trailing_garbage),
	        cmocka_unit_test(test_time_format_rfc3339_round_trip),
	        cmocka_unit_test(test_time_format_rfc3339_negative_times),
	        cmocka_unit_test(test_time_format_rfc3339_leap_days),
	        cmocka_unit_test(test_time_format_rfc3339_range),
	        cmocka_unit_test(test_time_format_rfc3339_matches_gmtime),
	        cmocka_unit_test(test_time_format_rfc3339_cached),
	        cmocka_unit_test(test_time_on_hour_boundaries),
	        cmocka_unit_test(test_timeutil_set_clock_seam),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
