/*
 * Unit tests for lib/config.c: a full file and the defaults, every error path (missing required
 * keys, bad durations, sizes, GUIDs, URLs, unknown keys and sections, secret/certificate rules,
 * unreadable and missing files), $CREDENTIALS_DIRECTORY lookup and precedence, permission
 * warnings, libinih's line limit and continuation lines as Debian 12 builds it, several mistakes
 * reported together with their lines, secrets never appearing in messages, restart detection and
 * secret registration with the real log module.
 *
 * Every test works in its own mkdtemp() directory holding the configuration and secret files.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <ini.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "config.h"
#include "log.h"
#include "macro.h"
#include "xmalloc.h"

#define STACK_SECRET  "St4ck~Secret.Value_0123456789abcdefXYZ"
#define AZURE_SECRET  "Azur3~Secret.Value_9876543210fedcbaQRS"
#define PASTED_SECRET "Pasted~Secret.Value_5a5a5a5a0b0b0b0b"
#define LOWER_SECRET  "rotated_secret_value_0123456789" /* a valid key name, so it can be echoed */
#define T_2026_11_01  INT64_C(1793491200) /* 2026-11-01T00:00:00Z, computed outside this code */

/* The keys every valid file needs, with secret files named relative to the file. */
#define REQUIRED_STACK                                                       \
	"[stack]\n"                                                          \
	"arm_endpoint = https://adminmanagement.local.azurestack.external\n" \
	"provider_subscription = 11111111-2222-3333-4444-555555555555\n"     \
	"tenant = contoso.onmicrosoft.com\n"                                 \
	"client_id = aaaaaaaa-0000-0000-0000-000000000001\n"                 \
	"client_secret_file = stack-secret\n"
#define REQUIRED_REST                                              \
	"[registration]\n"                                         \
	"subscription_id = 22222222-2222-2222-2222-222222222222\n" \
	"resource_group = azurestack\n"                            \
	"name = azurestack-cloud1\n"                               \
	"[azure]\n"                                                \
	"tenant = 33333333-3333-3333-3333-333333333333\n"          \
	"client_id = aaaaaaaa-0000-0000-0000-000000000002\n"       \
	"client_secret_file = azure-secret\n"                      \
	"[commerce]\n"                                             \
	"url = https://commerce.example/api/usageEvents/batch\n"   \
	"audience = https://commerce.example/\n"
#define REQUIRED REQUIRED_STACK REQUIRED_REST

struct fixture {
	char dir[64];
	char *conf; /* dir/azs-usaged.conf */
	struct config *config;
	struct config_problems problems;
	int r;
};

static char *cert_pem;      /* a self-signed certificate and its key, made once */
static char *other_key_pem; /* a key that does not match cert_pem */

/* Remove one entry of the test directory tree. */
static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Write content into dir/name with mode. */
static char *
write_file(struct fixture *f, const char *name, const char *content, mode_t mode)
{
	char *path = xasprintf("%s/%s", f->dir, name);
	FILE *fp;

	unlink(path);
	fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(fputs(content, fp) >= 0 || !*content, 1);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

/* Write the two usual secret files. */
static void
write_secrets(struct fixture *f)
{
	free(write_file(f, "stack-secret", STACK_SECRET "\n", 0600));
	free(write_file(f, "azure-secret", AZURE_SECRET "\n", 0600));
}

/* Write text as the configuration file and load it. */
static int
load(struct fixture *f, const char *text)
{
	free(write_file(f, "azs-usaged.conf", text, 0600));
	f->config = config_free(f->config);
	config_problems_done(&f->problems);
	f->r = config_load(f->conf, &f->config, &f->problems);
	return f->r;
}

/* Print every problem (helps when an assertion fails). */
static void
dump_problems(const struct fixture *f)
{
	for (size_t i = 0; i < f->problems.n_errors; i++)
		print_message("error: %s\n", f->problems.errors[i]);
	for (size_t i = 0; i < f->problems.n_warnings; i++)
		print_message("warning: %s\n", f->problems.warnings[i]);
}

/* Load text and assert it is valid without warnings. */
static void
load_ok(struct fixture *f, const char *text)
{
	if (load(f, text) != 0 || f->problems.n_warnings > 0)
		dump_problems(f);
	assert_int_equal(f->r, 0);
	assert_non_null(f->config);
	assert_int_equal(f->problems.n_errors, 0);
	assert_int_equal(f->problems.n_warnings, 0);
}

/* True when some message of list equals "CONF" + rest (rest starts with ":LINE: " or ": "). */
static bool
has_message(const struct fixture *f, char **list, size_t n, const char *rest)
{
	_cleanup_free_ char *want = xasprintf("%s%s", f->conf, rest);

	for (size_t i = 0; i < n; i++)
		if (strncmp(list[i], want, strlen(want)) == 0)
			return true;
	return false;
}

/* Assert an error starting with "CONF" + rest exists. */
static void
assert_error(const struct fixture *f, const char *rest)
{
	if (!has_message(f, f->problems.errors, f->problems.n_errors, rest)) {
		dump_problems(f);
		fail_msg("no error \"%s%s\"", f->conf, rest);
	}
}

/* Assert a warning starting with "CONF" + rest exists. */
static void
assert_warning(const struct fixture *f, const char *rest)
{
	if (!has_message(f, f->problems.warnings, f->problems.n_warnings, rest)) {
		dump_problems(f);
		fail_msg("no warning \"%s%s\"", f->conf, rest);
	}
}

/* Assert the load failed with exactly n errors. */
static void
assert_failed_with(const struct fixture *f, size_t n)
{
	if (f->r != -EINVAL || f->problems.n_errors != n)
		dump_problems(f);
	assert_int_equal(f->r, -EINVAL);
	assert_null(f->config);
	assert_int_equal(f->problems.n_errors, n);
}

/* Assert no message contains needle. */
static void
assert_not_in_messages(const struct fixture *f, const char *needle)
{
	for (size_t i = 0; i < f->problems.n_errors; i++)
		if (strstr(f->problems.errors[i], needle))
			fail_msg("error echoes a secret: %s", f->problems.errors[i]);
	for (size_t i = 0; i < f->problems.n_warnings; i++)
		if (strstr(f->problems.warnings[i], needle))
			fail_msg("warning echoes a secret: %s", f->problems.warnings[i]);
}

/* A copy of text with the first occurrence of old replaced by new (old must occur). */
static char *
replace_once(const char *text, const char *old, const char *new)
{
	const char *p = strstr(text, old);

	assert_non_null(p);
	return xasprintf("%.*s%s%s", (int)(p - text), text, new, p + strlen(old));
}

/* Create the test directory. */
static int
setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));

	strcpy(f->dir, "/tmp/test-config-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	f->conf = xasprintf("%s/azs-usaged.conf", f->dir);
	unsetenv("CREDENTIALS_DIRECTORY");
	write_secrets(f);
	*state = f;
	return 0;
}

/* Remove the test directory and free everything. */
static int
teardown(void **state)
{
	struct fixture *f = *state;

	config_free(f->config);
	config_problems_done(&f->problems);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->conf);
	free(f);
	unsetenv("CREDENTIALS_DIRECTORY");
	log_clear_secrets();
	return 0;
}

/* PEM text of a key (private) or certificate. */
static char *
pem_of(EVP_PKEY *key, X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long n;

	assert_non_null(b);
	if (x)
		assert_int_equal(PEM_write_bio_X509(b, x), 1);
	if (key)
		assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
	n = BIO_get_mem_data(b, &data);
	data = xstrndup(data, (size_t)n);
	BIO_free(b);
	return data;
}

/* Make a self-signed certificate with its key, and a second unrelated key. */
static int
group_setup(void **state)
{
	EVP_PKEY *key = EVP_RSA_gen(2048), *other = EVP_RSA_gen(2048);
	X509 *x = X509_new();
	_cleanup_free_ char *c = NULL, *k = NULL;

	(void)state;
	if (!key || !other || !x)
		return -1;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"azs-usaged test", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	if (!X509_sign(x, key, EVP_sha256()))
		return -1;
	cert_pem = pem_of(key, x);
	c = pem_of(NULL, x);
	k = pem_of(other, NULL);
	other_key_pem = xasprintf("%s%s", c, k);
	X509_free(x);
	EVP_PKEY_free(key);
	EVP_PKEY_free(other);
	return 0;
}

/* Free the certificates. */
static int
group_teardown(void **state)
{
	(void)state;
	free(cert_pem);
	free(other_key_pem);
	return 0;
}

/* The 1-based line of the first line of text containing needle. */
static unsigned
line_of(const char *text, const char *needle)
{
	const char *p = strstr(text, needle);
	unsigned line = 1;

	assert_non_null(p);
	for (const char *q = text; q < p; q++)
		line += *q == '\n';
	return line;
}

/* Every key set to a non-default value ends up in the struct, normalised. */
static void
test_config_load_full_file(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *cert = write_file(f, "azure.pem", cert_pem, 0600);
	_cleanup_free_ char *ca = write_file(f, "ca.pem", "-----BEGIN CERTIFICATE-----\n", 0644);
	_cleanup_free_ char *secret_path = xasprintf("%s/stack-secret", f->dir);
	_cleanup_free_ char *db = xasprintf("%s/state/usage.db", f->dir);
	const char *text =
	        "; a comment\n"
	        "# another comment\n"
	        "[stack]\n"
	        "arm_endpoint = https://adminmanagement.local.azurestack.external/ ; slash\n"
	        "provider_subscription = 11111111-2222-3333-4444-55555555AAAA\n"
	        "identity = aad\n"
	        "tenant = Contoso.onmicrosoft.com\n"
	        "client_id = AAAAAAAA-0000-0000-0000-000000000001\n"
	        "client_secret_file = stack-secret\n"
	        "login_endpoint = https://login.local/adfs/\n"
	        "audience = https://adminmanagement.local/5ba3b7f2-4f0b-4a1a-9b1d-1a2b3c4d5e6f\n"
	        "collect_from = 2026-11-01T00:00:00Z\n"
	        "poll_interval = 1m30s\n"
	        "settle = 0\n"
	        "lookback = 2h\n"
	        "per_subscriber = true\n"
	        "refresh_interval = 2m\n"
	        "\n"
	        "[registration]\n"
	        "arm_endpoint = https://management.local\n"
	        "subscription_id = 22222222-2222-2222-2222-22222222BBBB\n"
	        "resource_group = azs-rg_1.(x)\n"
	        "name = azurestack-cloud1\n"
	        "api_version = 2020-06-01-preview\n"
	        "audience = https://management.local/\n"
	        "refresh_interval = 10m\n"
	        "max_staleness = 2d\n"
	        "[azure]\n"
	        "tenant = 33333333-3333-3333-3333-33333333CCCC\n"
	        "client_id = aaaaaaaa-0000-0000-0000-000000000002\n"
	        "client_certificate_file = azure.pem\n"
	        "login_endpoint = https://login.example\n"
	        "[commerce]\n"
	        "url = https://commerce.example:8443/api/usageEvents/batch?x=1\n"
	        "audience = https://commerce.example/\n"
	        "batch_size = 1000\n"
	        "batch_bytes = 2048K\n"
	        "max_inflight = 1\n"
	        "compress = none\n"
	        "timeout = 10s\n"
	        "retry_initial = 500ms\n"
	        "retry_max = 1h\n"
	        "[store]\n"
	        "path = state/usage.db\n"
	        "retention = 7d\n"
	        "max_pending = 1000\n"
	        "[http]\n"
	        "ca_file = ca.pem\n"
	        "proxy = http://proxy.local:3128\n"
	        "user_agent = azs-usaged/test (stamp 1)\n"
	        "max_response = 1G\n"
	        "[health]\n"
	        "listen = [::1]:9999\n";
	struct config *c;

	load_ok(f, text);
	c = f->config;
	assert_string_equal(c->path, f->conf);
	assert_string_equal(c->stack.arm_endpoint,
	                    "https://adminmanagement.local.azurestack.external");
	assert_string_equal(c->stack.provider_subscription, "11111111-2222-3333-4444-55555555aaaa");
	assert_int_equal(c->stack.identity, CONFIG_IDENTITY_AAD);
	assert_string_equal(c->stack.tenant, "contoso.onmicrosoft.com");
	assert_string_equal(c->stack.client.client_id, "aaaaaaaa-0000-0000-0000-000000000001");
	assert_string_equal(c->stack.client.secret, STACK_SECRET);
	assert_string_equal(c->stack.client.secret_file, secret_path);
	assert_null(c->stack.client.certificate);
	assert_string_equal(c->stack.login_endpoint, "https://login.local/adfs");
	assert_string_equal(c->stack.audience,
	                    "https://adminmanagement.local/5ba3b7f2-4f0b-4a1a-9b1d-1a2b3c4d5e6f");
	assert_int_equal(c->stack.collect_from, T_2026_11_01);
	assert_int_equal(c->stack.poll_interval_usec, UINT64_C(90000000));
	assert_int_equal(c->stack.settle_usec, 0);
	assert_int_equal(c->stack.lookback_usec, UINT64_C(7200000000));
	assert_true(c->stack.per_subscriber);
	assert_int_equal(c->stack.refresh_interval_usec, UINT64_C(120000000));

	assert_string_equal(c->registration.arm_endpoint, "https://management.local");
	assert_string_equal(c->registration.subscription_id,
	                    "22222222-2222-2222-2222-22222222bbbb");
	assert_string_equal(c->registration.resource_group, "azs-rg_1.(x)");
	assert_string_equal(c->registration.name, "azurestack-cloud1");
	assert_string_equal(c->registration.api_version, "2020-06-01-preview");
	assert_string_equal(c->registration.audience, "https://management.local/");
	assert_int_equal(c->registration.refresh_interval_usec, UINT64_C(600000000));
	assert_int_equal(c->registration.max_staleness_usec, UINT64_C(172800000000));

	assert_string_equal(c->azure.tenant, "33333333-3333-3333-3333-33333333cccc");
	assert_string_equal(c->azure.client.client_id, "aaaaaaaa-0000-0000-0000-000000000002");
	assert_null(c->azure.client.secret);
	assert_null(c->azure.client.secret_file);
	assert_string_equal(c->azure.client.certificate_file, cert);
	assert_non_null(strstr(c->azure.client.certificate, "-----BEGIN CERTIFICATE-----"));
	assert_non_null(strstr(c->azure.client.certificate, "PRIVATE KEY-----"));
	assert_string_equal(c->azure.login_endpoint, "https://login.example");

	assert_string_equal(c->commerce.url,
	                    "https://commerce.example:8443/api/usageEvents/batch?x=1");
	assert_string_equal(c->commerce.audience, "https://commerce.example/");
	assert_int_equal(c->commerce.batch_size, 1000);
	assert_int_equal(c->commerce.batch_bytes, 2048 * 1024);
	assert_int_equal(c->commerce.max_inflight, 1);
	assert_int_equal(c->commerce.compress, CONFIG_COMPRESS_NONE);
	assert_int_equal(c->commerce.timeout_usec, UINT64_C(10000000));
	assert_int_equal(c->commerce.retry_initial_usec, UINT64_C(500000));
	assert_int_equal(c->commerce.retry_max_usec, UINT64_C(3600000000));

	assert_string_equal(c->store.path, db);
	assert_int_equal(c->store.retention_usec, UINT64_C(7) * 86400 * 1000000);
	assert_int_equal(c->store.max_pending, 1000);

	assert_string_equal(c->http.ca_file, ca);
	assert_string_equal(c->http.proxy, "http://proxy.local:3128");
	assert_string_equal(c->http.user_agent, "azs-usaged/test (stamp 1)");
	assert_int_equal(c->http.max_response, UINT64_C(1) << 30);

	assert_string_equal(c->health.listen, "[::1]:9999");
	assert_string_equal(c->health.address, "::1");
	assert_int_equal(c->health.port, 9999);
}

/* Only the required keys: everything else takes the documented default. */
static void
test_config_load_defaults(void **state)
{
	struct fixture *f = *state;
	struct config *c;

	load_ok(f, REQUIRED);
	c = f->config;
	assert_int_equal(c->stack.identity, CONFIG_IDENTITY_AAD);
	assert_null(c->stack.login_endpoint);
	assert_null(c->stack.audience);
	assert_int_equal(c->stack.collect_from, -1);
	assert_int_equal(c->stack.poll_interval_usec, UINT64_C(5) * 60 * 1000000);
	assert_int_equal(c->stack.settle_usec, UINT64_C(30) * 60 * 1000000);
	assert_int_equal(c->stack.lookback_usec, UINT64_C(6) * 3600 * 1000000);
	assert_false(c->stack.per_subscriber);
	assert_int_equal(c->stack.refresh_interval_usec, UINT64_C(15) * 60 * 1000000);
	assert_string_equal(c->registration.arm_endpoint, "https://management.azure.com");
	assert_string_equal(c->registration.api_version, "2017-06-01");
	assert_string_equal(c->registration.audience, "https://management.azure.com/");
	assert_int_equal(c->registration.refresh_interval_usec, UINT64_C(15) * 60 * 1000000);
	assert_int_equal(c->registration.max_staleness_usec, UINT64_C(24) * 3600 * 1000000);
	assert_string_equal(c->azure.login_endpoint, "https://login.microsoftonline.com");
	assert_int_equal(c->commerce.batch_size, 500);
	assert_int_equal(c->commerce.batch_bytes, 4 * 1024 * 1024);
	assert_int_equal(c->commerce.max_inflight, 4);
	assert_int_equal(c->commerce.compress, CONFIG_COMPRESS_GZIP);
	assert_int_equal(c->commerce.timeout_usec, UINT64_C(30) * 1000000);
	assert_int_equal(c->commerce.retry_initial_usec, UINT64_C(1000000));
	assert_int_equal(c->commerce.retry_max_usec, UINT64_C(300) * 1000000);
	assert_string_equal(c->store.path, "/var/lib/azs-usaged/usage.db");
	assert_int_equal(c->store.retention_usec, UINT64_C(35) * 86400 * 1000000);
	assert_int_equal(c->store.max_pending, 50000000);
	assert_null(c->http.ca_file);
	assert_null(c->http.proxy);
	assert_string_equal(c->http.user_agent, "azs-usaged/" AZS_VERSION);
	assert_int_equal(c->http.max_response, 64 * 1024 * 1024);
	assert_string_equal(c->health.listen, "127.0.0.1:9480");
	assert_string_equal(c->health.address, "127.0.0.1");
	assert_int_equal(c->health.port, 9480);
	assert_int_equal(c->log.level, LOG_INFO);
}

/* An empty file names every required key, without a line, and nothing else. */
static void
test_config_load_missing_required(void **state)
{
	struct fixture *f = *state;
	static const char *const required[] = {
	        "stack.arm_endpoint",
	        "stack.provider_subscription",
	        "stack.client_id",
	        "registration.subscription_id",
	        "registration.resource_group",
	        "registration.name",
	        "azure.tenant",
	        "azure.client_id",
	        "commerce.url",
	        "commerce.audience",
	        "stack.client_secret_file",
	        "azure.client_secret_file",
	        "stack.tenant",
	};

	load(f, "");
	assert_failed_with(f, ARRAY_SIZE(required));
	for (size_t i = 0; i < ARRAY_SIZE(required); i++) {
		_cleanup_free_ char *rest = xasprintf(": %s: required", required[i]);

		assert_error(f, rest);
	}
	/* an empty value counts as not given */
	load(f, REQUIRED "[store]\n");
	assert_int_equal(f->r, 0);
	load(f, "[commerce]\nurl =\n");
	assert_error(f, ": commerce.url: required");
}

/* Durations: every unit, combinations, and what is refused. */
static void
test_config_load_bad_duration(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
	        "5", "5x", "m", "-5m", "5 m", "1.5h", "99999999999999999999d", "5mm", "0s"};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *text =
		        xasprintf(REQUIRED_STACK "poll_interval = %s\n" REQUIRED_REST, bad[i]);
		_cleanup_free_ char *rest = NULL;

		load(f, text);
		assert_failed_with(f, 1);
		rest = xasprintf(":%u: stack.poll_interval: ", line_of(text, "poll_interval"));
		assert_error(f, rest);
	}
	load(f, REQUIRED "[commerce]\ntimeout = 0\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: commerce.timeout: duration out of range");
	load(f, REQUIRED "[commerce]\ntimeout = 1d2h3m4s5ms\n");
	assert_int_equal(f->r, 0);
	assert_int_equal(f->config->commerce.timeout_usec,
	                 ((((UINT64_C(1) * 24 + 2) * 60 + 3) * 60 + 4) * 1000 + 5) * 1000);
	load(f, REQUIRED "[commerce]\ntimeout = 5x\n");
	assert_error(f, ":19: commerce.timeout: not a duration");
}

/* Sizes: K, M, G in either case are powers of 1024; anything else is refused with its line. */
static void
test_config_load_bad_size(void **state)
{
	struct fixture *f = *state;

	load(f, REQUIRED "[http]\nmax_response = 12345\n");
	assert_int_equal(f->r, 0);
	assert_int_equal(f->config->http.max_response, 12345);
	load(f, REQUIRED "[http]\nmax_response = 3M\n");
	assert_int_equal(f->config->http.max_response, 3 * 1024 * 1024);
	/* every suffix in either case */
	load_ok(f, REQUIRED "[http]\nmax_response = 4k\n[commerce]\nbatch_bytes = 4K\n");
	assert_int_equal(f->config->http.max_response, 4 * 1024);
	assert_int_equal(f->config->commerce.batch_bytes, 4 * 1024);
	load_ok(f, REQUIRED "[http]\nmax_response = 4m\n[commerce]\nbatch_bytes = 4M\n");
	assert_int_equal(f->config->http.max_response, 4 * 1024 * 1024);
	assert_int_equal(f->config->commerce.batch_bytes, 4 * 1024 * 1024);
	load_ok(f, REQUIRED "[http]\nmax_response = 4g\n[commerce]\nbatch_bytes = 1g\n");
	assert_int_equal(f->config->http.max_response, UINT64_C(4) << 30);
	assert_int_equal(f->config->commerce.batch_bytes, UINT64_C(1) << 30);
	load_ok(f, REQUIRED "[http]\nmax_response = 2G\n");
	assert_int_equal(f->config->http.max_response, UINT64_C(2) << 30);
	load(f, REQUIRED "[http]\nmax_response = 4t\n");
	assert_error(f, ":19: http.max_response: not a size");
	load(f, REQUIRED "[http]\nmax_response = 4 m\n");
	assert_error(f, ":19: http.max_response: not a size");
	load(f, REQUIRED "[http]\nmax_response = 4MB\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: http.max_response: not a size");
	load(f, REQUIRED "[commerce]\nbatch_bytes = 1.5M\n");
	assert_error(f, ":19: commerce.batch_bytes: not a size");
	load(f, REQUIRED "[commerce]\nbatch_bytes = 10\n");
	assert_error(f, ":19: commerce.batch_bytes: size out of range");
	load(f, REQUIRED "[commerce]\nbatch_bytes = 99999999999999999999G\n");
	assert_error(f, ":19: commerce.batch_bytes: not a size");
}

/* GUIDs must have the 8-4-4-4-12 hex shape. */
static void
test_config_load_bad_guid(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
	        "11111111-2222-3333-4444-55555555555",  "11111111-2222-3333-4444-5555555555555",
	        "1111111122223333444455555555555555",   "{11111111-2222-3333-4444-555555555555}",
	        "g1111111-2222-3333-4444-555555555555", "11111111_2222-3333-4444-555555555555",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *text =
		        xasprintf(REQUIRED "[registration]\nsubscription_id = %s\n", bad[i]);

		load(f, text);
		/* the key is given twice now: the second line is a duplicate, not parsed */
		assert_failed_with(f, 1);
		assert_error(f, ":19: registration.subscription_id: given twice (first on line 8)");
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *text =
		        xasprintf("[stack]\nprovider_subscription = %s\n" REQUIRED_REST, bad[i]);

		load(f, text);
		assert_error(f, ":2: stack.provider_subscription: not a GUID");
	}
	load(f, "[azure]\ntenant = not a domain\n");
	assert_error(f, ":2: azure.tenant: not a GUID or a domain name");
	load(f, "[azure]\ntenant = -contoso.com\n");
	assert_error(f, ":2: azure.tenant: not a GUID or a domain name");
	load(f, "[azure]\ntenant = contoso\n");
	assert_error(f, ":2: azure.tenant: not a GUID or a domain name");
}

/* Endpoints must be https://, with a host, no credentials; the proxy may be http://. */
static void
test_config_load_bad_url(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *url, *reason;
	} bad[] = {
	        {"http://commerce.example/x", "not an https:// URL"},
	        {"commerce.example/x", "not an https:// URL"},
	        {"https://", "has no host"},
	        {"https:///x", "has no host"},
	        {"https://user:pw@commerce.example/x", "must not contain user credentials"},
	        {"https://commerce.example:0/x", "has an invalid port"},
	        {"https://commerce.example:99999/x", "has an invalid port"},
	        {"https://commerce example/x", "contains spaces or control characters"},
	        {"https://commerce.example/x#frag", "must not contain a fragment"},
	        {"https://[::1/x", "has an invalid IPv6 host"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *text =
		        xasprintf(REQUIRED_STACK "[commerce]\nurl = %s\n"
		                                 "[registration]\narm_endpoint = %s\n",
		                  bad[i].url, bad[i].url);
		_cleanup_free_ char *e1 = xasprintf(":8: commerce.url: %s", bad[i].reason);
		_cleanup_free_ char *e2 =
		        xasprintf(":10: registration.arm_endpoint: %s", bad[i].reason);

		load(f, text);
		assert_error(f, e1);
		assert_error(f, e2);
	}
	load(f, REQUIRED "[stack]\nlogin_endpoint = https://login.local/?x=1\n");
	assert_error(f, ":19: stack.login_endpoint: must not contain a query");
	load(f, REQUIRED "[http]\nproxy = http://user:pw@proxy:3128\n");
	assert_error(f, ":19: http.proxy: must not contain user credentials");
	assert_not_in_messages(f, "pw@");
	load(f, REQUIRED "[http]\nproxy = socks5://proxy:1080\n");
	assert_error(f, ":19: http.proxy: not an http:// or https:// URL");
	load(f, REQUIRED "[http]\nproxy = https://[fd00::1]:3128\n");
	assert_int_equal(f->r, 0);
	assert_string_equal(f->config->http.proxy, "https://[fd00::1]:3128");
}

/* Unknown keys are errors naming the key but never its value. */
static void
test_config_load_unknown_key(void **state)
{
	struct fixture *f = *state;

	load(f, REQUIRED "[store]\npth = /tmp/x.db\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: store.pth: unknown key");
	assert_not_in_messages(f, "/tmp/x.db");

	/* a key before any section */
	load(f, "path = /tmp/x.db\n" REQUIRED);
	assert_failed_with(f, 1);
	assert_error(f, ":1: key outside of any section");

	/* secrets may only come from files */
	load(f, REQUIRED "[azure]\nclient_secret = " AZURE_SECRET "\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: azure.client_secret: unknown key (secrets are only read from files");
	assert_not_in_messages(f, AZURE_SECRET);
	assert_not_in_messages(f, "Azur3");
}

/* Unknown sections are reported once, at the header, not once per key. */
static void
test_config_load_unknown_section(void **state)
{
	struct fixture *f = *state;

	load(f, REQUIRED "[logging]\nlevel = debug\nformat = json\n");
	assert_failed_with(f, 1);
	assert_error(f, ":18: [logging]: unknown section");
	load(f, REQUIRED "[Stack]\n");
	assert_failed_with(f, 1);
	assert_error(f, ":18: unknown section (not a valid section name)");
	load(f, REQUIRED "[stack\narm_endpoint = https://x.example\n");
	assert_failed_with(f, 1);
	assert_error(f, ":18: section header without closing ']'");
	load(f, REQUIRED "[store] junk\n");
	assert_error(f, ":18: text after the section header");
	load(f, REQUIRED "[store] ; comment\npath = /tmp/a.db\n");
	assert_int_equal(f->r, 0);
	assert_string_equal(f->config->store.path, "/tmp/a.db");
}

/* Setting both a secret and a certificate for one identity is an error at the later line. */
static void
test_config_load_secret_and_certificate(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *cert = write_file(f, "stack.pem", cert_pem, 0600);

	load(f, REQUIRED "[stack]\nclient_certificate_file = stack.pem\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: stack.client_certificate_file: only one of client_secret_file and "
	                "client_certificate_file may be set");

	/* the certificate alone is fine */
	load(f, "[stack]\n"
	        "arm_endpoint = https://adminmanagement.local.azurestack.external\n"
	        "provider_subscription = 11111111-2222-3333-4444-555555555555\n"
	        "identity = adfs\n"
	        "client_id = aaaaaaaa-0000-0000-0000-000000000001\n"
	        "client_certificate_file = stack.pem\n" REQUIRED_REST);
	assert_int_equal(f->r, 0);
	assert_string_equal(f->config->stack.client.certificate_file, cert);
	assert_int_equal(f->config->stack.identity, CONFIG_IDENTITY_ADFS);
	assert_null(f->config->stack.tenant);
}

/* An identity without a secret or a certificate is a missing required key. */
static void
test_config_load_no_secret_nor_certificate(void **state)
{
	struct fixture *f = *state;

	load(f, "[stack]\n"
	        "arm_endpoint = https://adminmanagement.local.azurestack.external\n"
	        "provider_subscription = 11111111-2222-3333-4444-555555555555\n"
	        "tenant = contoso.onmicrosoft.com\n"
	        "client_id = aaaaaaaa-0000-0000-0000-000000000001\n" REQUIRED_REST);
	assert_failed_with(f, 1);
	assert_error(f, ": stack.client_secret_file: required (or stack.client_certificate_file)");
}

/* A file that cannot be read is an error naming the directory it is in (not its name). */
static void
test_config_load_unreadable_secret_file(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("%s/stack-secret", f->dir);
	_cleanup_free_ char *rest = NULL;

	if (geteuid() != 0) {
		assert_int_equal(chmod(path, 0), 0);
		rest = xasprintf(":6: stack.client_secret_file: file in %s: Permission denied",
		                 f->dir);
	} else {
		/* root reads everything: a symlink loop cannot be opened by anyone */
		assert_int_equal(unlink(path), 0);
		assert_int_equal(symlink(path, path), 0);
		rest = xasprintf(":6: stack.client_secret_file: file in %s: Too many levels of "
		                 "symbolic links",
		                 f->dir);
	}
	load(f, REQUIRED);
	assert_failed_with(f, 1);
	assert_error(f, rest);

	/* a directory, and an empty file */
	unlink(path);
	assert_int_equal(mkdir(path, 0700), 0);
	load(f, REQUIRED);
	free(rest);
	rest = xasprintf(":6: stack.client_secret_file: file in %s: Is a directory", f->dir);
	assert_error(f, rest);
	rmdir(path);
	free(write_file(f, "stack-secret", "\n", 0600));
	load(f, REQUIRED);
	free(rest);
	rest = xasprintf(":6: stack.client_secret_file: file in %s: is empty", f->dir);
	assert_failed_with(f, 1);
	assert_error(f, rest);

	/* a FIFO is refused without blocking */
	unlink(path);
	assert_int_equal(mkfifo(path, 0600), 0);
	load(f, REQUIRED);
	free(rest);
	rest = xasprintf(":6: stack.client_secret_file: file in %s: not a regular file", f->dir);
	assert_error(f, rest);
}

/* A missing file is an error naming the directory it was looked for in (not its name). */
static void
test_config_load_missing_secret_file(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("%s/azure-secret", f->dir);
	_cleanup_free_ char *rest = xasprintf(":14: azure.client_secret_file: no such file in %s "
	                                      "($CREDENTIALS_DIRECTORY is not set)",
	                                      f->dir);

	assert_int_equal(unlink(path), 0);
	load(f, REQUIRED);
	assert_failed_with(f, 1);
	assert_error(f, rest);
}

/* CONFIG_SKIP_SECRETS: absent secret files are no error, and nothing is read. */
static void
test_config_load_flags_skip_secrets(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *stack = xasprintf("%s/stack-secret", f->dir);
	_cleanup_free_ char *azure = xasprintf("%s/azure-secret", f->dir);

	assert_int_equal(unlink(stack), 0);
	assert_int_equal(unlink(azure), 0);
	load(f, REQUIRED);
	assert_failed_with(f, 2);

	f->config = config_free(f->config);
	config_problems_done(&f->problems);
	f->r = config_load_flags(f->conf, CONFIG_SKIP_SECRETS, &f->config, &f->problems);
	assert_int_equal(f->r, 0);
	assert_null(f->config->stack.client.secret);
	assert_null(f->config->azure.client.secret);
	assert_string_equal(f->config->stack.client.secret_file, stack);
	assert_string_equal(f->config->azure.client.secret_file, azure);
}

/* Relative names are found in $CREDENTIALS_DIRECTORY first, then beside the file. */
static void
test_config_load_credentials_directory(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *creds = xasprintf("%s/creds", f->dir);
	_cleanup_free_ char *in_creds = xasprintf("%s/creds/stack-secret", f->dir);
	_cleanup_free_ char *beside = xasprintf("%s/azure-secret", f->dir);
	FILE *fp;

	assert_int_equal(mkdir(creds, 0700), 0);
	fp = fopen(in_creds, "w");
	assert_non_null(fp);
	fputs("from-credentials-directory\r\n", fp);
	fclose(fp);
	chmod(in_creds, 0400);
	setenv("CREDENTIALS_DIRECTORY", creds, 1);

	load_ok(f, REQUIRED);
	/* precedence: the credentials directory wins over the file beside the config */
	assert_string_equal(f->config->stack.client.secret, "from-credentials-directory");
	assert_string_equal(f->config->stack.client.secret_file, in_creds);
	/* not in the credentials directory: beside the config */
	assert_string_equal(f->config->azure.client.secret, AZURE_SECRET);
	assert_string_equal(f->config->azure.client.secret_file, beside);

	/* missing in both: both directories are named, in lookup order */
	unlink(beside);
	load(f, REQUIRED);
	assert_failed_with(f, 1);
	{
		_cleanup_free_ char *rest = xasprintf(":14: azure.client_secret_file: no such file "
		                                      "in $CREDENTIALS_DIRECTORY (%s) or %s",
		                                      creds, f->dir);
		assert_error(f, rest);
	}

	/* found in the credentials directory but unusable: that directory is named */
	free(write_file(f, "azure-secret", AZURE_SECRET "\n", 0600));
	assert_int_equal(chmod(in_creds, 0600), 0);
	fp = fopen(in_creds, "w");
	assert_non_null(fp);
	fclose(fp);
	load(f, REQUIRED);
	assert_failed_with(f, 1);
	{
		_cleanup_free_ char *rest = xasprintf(
		        ":6: stack.client_secret_file: file in $CREDENTIALS_DIRECTORY (%s): is empty",
		        creds);
		assert_error(f, rest);
	}
}

/* A secret or certificate readable by group or others is a warning, not an error. */
static void
test_config_load_world_readable_secret_warning(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("%s/stack-secret", f->dir);
	_cleanup_free_ char *rest = NULL;

	assert_int_equal(chmod(path, 0644), 0);
	load(f, REQUIRED);
	assert_int_equal(f->r, 0);
	assert_non_null(f->config);
	assert_int_equal(f->problems.n_warnings, 1);
	rest = xasprintf(":6: stack.client_secret_file: file in %s: readable by group or others",
	                 f->dir);
	assert_warning(f, rest);
	assert_not_in_messages(f, STACK_SECRET);

	assert_int_equal(chmod(path, 0640), 0);
	load(f, REQUIRED);
	assert_int_equal(f->problems.n_warnings, 1);
	assert_int_equal(chmod(path, 0600), 0);
	load_ok(f, REQUIRED);
}

/*
 * Debian 12's libinih reads lines in 200-byte pieces: 197 characters is the longest whole
 * line; a longer one is an error on its line and its tail is not parsed as a line of its own.
 */
static void
test_config_load_line_over_limit(void **state)
{
	struct fixture *f = *state;
	char agent[256];
	_cleanup_free_ char *ok = NULL, *crlf = NULL, *bad = NULL;
	const char *prefix = "user_agent = ";

	/* 197 characters exactly */
	memset(agent, 'a', sizeof(agent));
	agent[197 - strlen(prefix)] = '\0';
	ok = xasprintf(REQUIRED "[http]\n%s%s\n", prefix, agent);
	load_ok(f, ok);
	assert_string_equal(f->config->http.user_agent, agent);
	crlf = xasprintf(REQUIRED "[http]\r\n%s%s\r\n", prefix, agent);
	load_ok(f, crlf);
	assert_string_equal(f->config->http.user_agent, agent);

	/* 198: refused (with CRLF it would not fit: the limit does not depend on line endings) */
	memset(agent, 'a', sizeof(agent));
	agent[198 - strlen(prefix)] = '\0';
	free(bad);
	bad = xasprintf(REQUIRED "[http]\n%s%s\nmax_response = 1M\n", prefix, agent);
	load(f, bad);
	assert_failed_with(f, 1);
	assert_error(f, ":19: line longer than 197 characters");

	/* 204: libinih alone would read "x = y" after the first 199 bytes as a key of its own */
	memset(agent, 'a', sizeof(agent));
	agent[199 - strlen(prefix)] = '\0';
	free(bad);
	bad = xasprintf(REQUIRED "[http]\n%s%sx = y\nmax_response = 1M\n", prefix, agent);
	load(f, bad);
	assert_failed_with(f, 1);
	assert_error(f, ":19: line longer than 197 characters");
}

/* An indented line is a key of its own, not a continuation of the previous value. */
static void
test_config_load_indented_line_not_continuation(void **state)
{
	struct fixture *f = *state;

	load_ok(f, REQUIRED "[commerce]\n  batch_size = 7\n\tmax_inflight = 2\n");
	assert_int_equal(f->config->commerce.batch_size, 7);
	assert_int_equal(f->config->commerce.max_inflight, 2);
	/* a would-be continuation value is a syntax error with its line */
	load(f, REQUIRED "[http]\nuser_agent = first\n  second part\n");
	assert_failed_with(f, 1);
	assert_error(f, ":20: expected \"key = value\"");
	/* "key: value" is not our syntax */
	load(f, REQUIRED "[health]\nlisten: 127.0.0.1:80\n");
	assert_failed_with(f, 1);
	assert_error(f, ":19: expected \"key = value\"");
}

/* What libinih hands its handler, recorded by raw_handler. */
struct raw_calls {
	unsigned n;
	char names[8][64];
	char values[8][256];
};

/* Record one libinih handler call. */
static int
raw_handler(void *user, const char *section, const char *name, const char *value)
{
	struct raw_calls *calls = user;

	(void)section;
	if (calls->n < 8) {
		snprintf(calls->names[calls->n], sizeof(calls->names[0]), "%s", name);
		snprintf(calls->values[calls->n], sizeof(calls->values[0]), "%s", value);
	}
	calls->n++;
	return 1;
}

/*
 * Debian 12's libinih itself (what the reader protects against): a line over its limit is split
 * and the tail parsed as a line of its own; an indented line continues the previous value.
 */
static void
test_ini_parse_string_debian_behaviour(void **state)
{
	struct raw_calls calls = {0};
	char text[400];
	int r;

	(void)state;
	/* libinih reads 199 bytes at a time: "k = aaa...a" fills them, "x = y" follows */
	memset(text, 0, sizeof(text));
	strcpy(text, "[s]\nk = ");
	memset(text + strlen(text), 'a', 199 - strlen("k = "));
	strcat(text, "x = y\n");
	r = ini_parse_string(text, raw_handler, &calls);
	assert_int_equal(r, 0);
	assert_int_equal(calls.n, 2);
	assert_string_equal(calls.names[0], "k");
	assert_string_equal(calls.names[1], "x"); /* the tail became a key of its own */
	assert_string_equal(calls.values[1], "y");

	memset(&calls, 0, sizeof(calls));
	r = ini_parse_string("[s]\nk = v\n  other = w\n", raw_handler, &calls);
	assert_int_equal(r, 0);
	assert_int_equal(calls.n, 2);
	assert_string_equal(calls.names[1], "k"); /* a continuation of k, not a key "other" */
	assert_string_equal(calls.values[1], "other = w");
}

/* Three different mistakes are all reported, each with the file and its line, in order. */
static void
test_config_load_three_mistakes(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *e1 = NULL, *e2 = NULL, *e3 = NULL;
	const char *text =
	        REQUIRED_STACK "poll_interval = often\n" REQUIRED_REST "batch_size = 1001\n"
	                       "[health]\n"
	                       "listen = localhost:9480\n";

	load(f, text);
	assert_failed_with(f, 3);
	e1 = xasprintf("%s:%u: stack.poll_interval: not a duration", f->conf,
	               line_of(text, "poll_interval"));
	e2 = xasprintf("%s:%u: commerce.batch_size: out of range (1..1000)", f->conf,
	               line_of(text, "batch_size"));
	e3 = xasprintf("%s:%u: health.listen: not ip:port", f->conf, line_of(text, "listen"));
	assert_true(strncmp(f->problems.errors[0], e1, strlen(e1)) == 0);
	assert_true(strncmp(f->problems.errors[1], e2, strlen(e2)) == 0);
	assert_true(strncmp(f->problems.errors[2], e3, strlen(e3)) == 0);
}

/* No secret ever appears in an error or warning, whatever is broken around it. */
static void
test_config_load_no_secret_in_messages(void **state)
{
	struct fixture *f = *state;
	static const char *const texts[] = {
	        REQUIRED "[stack]\nclient_secret = " STACK_SECRET "\n",
	        REQUIRED "[stack]\nclient_secret=" STACK_SECRET " ; comment\n",
	        REQUIRED "[stack]\n" STACK_SECRET "\n",
	        REQUIRED "[stack]\n  " STACK_SECRET "==\n",
	        REQUIRED "[stack]\n" STACK_SECRET ": x\n",
	        REQUIRED "[" STACK_SECRET "]\n",
	        REQUIRED "[" STACK_SECRET "\n",
	        REQUIRED "[stack] " STACK_SECRET "\n",
	        REQUIRED "[stack]\nsecret" STACK_SECRET " = 1\n",
	        REQUIRED "[stack]\npassword = " STACK_SECRET "\n",
	        REQUIRED "[stack]\naudience = " STACK_SECRET " x\n",
	        REQUIRED "[stack]\npoll_interval = " STACK_SECRET "\n",
	        REQUIRED "[http]\nproxy = http://u:" STACK_SECRET "@p:1\n",
	};

	for (size_t i = 0; i < ARRAY_SIZE(texts); i++) {
		load(f, texts[i]);
		assert_int_equal(f->r, -EINVAL);
		assert_true(f->problems.n_errors >= 1);
		assert_not_in_messages(f, STACK_SECRET);
		assert_not_in_messages(f, "St4ck");
	}

	/* the content of secret files never shows, even when they are broken or exposed */
	free(write_file(f, "stack-secret", STACK_SECRET "\nsecond line\n", 0644));
	load(f, REQUIRED);
	assert_error(f, ":6: stack.client_secret_file: ");
	assert_not_in_messages(f, "St4ck");
	assert_not_in_messages(f, "second line");
	free(write_file(f, "azure.pem", AZURE_SECRET, 0644));
	load(f, REQUIRED "[azure]\nclient_certificate_file = azure.pem\n");
	assert_not_in_messages(f, "Azur3");
}

/* Load each text but skip; each must fail without echoing the pasted name. */
static void
assert_each_fails_silently(struct fixture *f, const char *const *texts, size_t n, const char *skip)
{
	for (size_t i = 0; i < n; i++) {
		if (texts[i] == skip)
			continue;
		load(f, texts[i]);
		assert_failed_with(f, 1);
		assert_not_in_messages(f, "Pasted");
	}
}

/*
 * An operator who pastes the secret itself into a *_file key (client_secret_file = <secret>)
 * never sees it echoed: every message names where the file was looked for, not the name, for a
 * missing, unreadable, directory, empty, multi-line or exposed file, with or without
 * $CREDENTIALS_DIRECTORY, and for the certificate and CA keys too.
 */
static void
test_config_load_pasted_secret_in_file_key_not_echoed(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *creds = xasprintf("%s/creds", f->dir);
	_cleanup_free_ char *pasted = xasprintf("%s/" PASTED_SECRET, f->dir);
	_cleanup_free_ char *text = replace_once(REQUIRED, "client_secret_file = azure-secret",
	                                         "client_secret_file = " PASTED_SECRET);
	_cleanup_free_ char *cert = replace_once(text, "client_secret_file = " PASTED_SECRET,
	                                         "client_certificate_file = " PASTED_SECRET);
	_cleanup_free_ char *abs = replace_once(REQUIRED, "client_secret_file = azure-secret",
	                                        "client_secret_file = /" PASTED_SECRET);
	_cleanup_free_ char *ca = xasprintf(REQUIRED "[http]\nca_file = " PASTED_SECRET "\n");
	_cleanup_free_ char *rest = NULL;
	const char *const texts[] = {text, cert, abs, ca};

	/* missing, beside the file and in both places */
	for (size_t i = 0; i < ARRAY_SIZE(texts); i++) {
		load(f, texts[i]);
		assert_failed_with(f, 1);
		assert_not_in_messages(f, PASTED_SECRET);
		assert_not_in_messages(f, "Pasted");
	}
	load(f, text);
	rest = xasprintf(":14: azure.client_secret_file: no such file in %s "
	                 "($CREDENTIALS_DIRECTORY is not set)",
	                 f->dir);
	assert_error(f, rest);
	load(f, abs);
	assert_error(f, ":14: azure.client_secret_file: no such file at the absolute path given");
	assert_int_equal(mkdir(creds, 0700), 0);
	setenv("CREDENTIALS_DIRECTORY", creds, 1);
	load(f, text);
	assert_failed_with(f, 1);
	assert_not_in_messages(f, "Pasted");
	free(rest);
	rest = xasprintf(":14: azure.client_secret_file: no such file in $CREDENTIALS_DIRECTORY "
	                 "(%s) or %s",
	                 creds, f->dir);
	assert_error(f, rest);
	unsetenv("CREDENTIALS_DIRECTORY");

	/* unreadable (root reads everything: a symlink loop stops anyone) */
	free(write_file(f, PASTED_SECRET, "x-secret-value\n", 0600));
	if (geteuid() != 0) {
		assert_int_equal(chmod(pasted, 0), 0);
	} else {
		assert_int_equal(unlink(pasted), 0);
		assert_int_equal(symlink(pasted, pasted), 0);
	}
	assert_each_fails_silently(f, texts, ARRAY_SIZE(texts), abs);
	assert_int_equal(unlink(pasted), 0);

	/* a directory */
	assert_int_equal(mkdir(pasted, 0700), 0);
	assert_each_fails_silently(f, texts, ARRAY_SIZE(texts), abs);
	load(f, text);
	free(rest);
	rest = xasprintf(":14: azure.client_secret_file: file in %s: Is a directory", f->dir);
	assert_error(f, rest);
	assert_int_equal(rmdir(pasted), 0);

	/* empty */
	free(write_file(f, PASTED_SECRET, "", 0600));
	assert_each_fails_silently(f, texts, ARRAY_SIZE(texts), abs);

	/* more than one line, and readable by others (a warning) */
	free(write_file(f, PASTED_SECRET, "first-line\nsecond-line\n", 0644));
	load(f, text);
	assert_failed_with(f, 1);
	assert_int_equal(f->problems.n_warnings, 1);
	free(rest);
	rest = xasprintf(":14: azure.client_secret_file: file in %s: holds more than one line",
	                 f->dir);
	assert_error(f, rest);
	free(rest);
	rest = xasprintf(":14: azure.client_secret_file: file in %s: readable by group or others",
	                 f->dir);
	assert_warning(f, rest);
	assert_not_in_messages(f, "Pasted");
	assert_not_in_messages(f, "first-line");
	load(f, cert);
	assert_failed_with(f, 1);
	assert_not_in_messages(f, "Pasted");
	assert_not_in_messages(f, "first-line");
}

/* Certificates must hold a certificate and the matching unencrypted private key. */
static void
test_config_load_bad_certificate(void **state)
{
	struct fixture *f = *state;
	const char *text = "[stack]\n"
	                   "arm_endpoint = https://adminmanagement.local.azurestack.external\n"
	                   "provider_subscription = 11111111-2222-3333-4444-555555555555\n"
	                   "tenant = contoso.onmicrosoft.com\n"
	                   "client_id = aaaaaaaa-0000-0000-0000-000000000001\n"
	                   "client_certificate_file = stack.pem\n" REQUIRED_REST;
	_cleanup_free_ char *rest = NULL;

	free(write_file(f, "stack.pem", other_key_pem, 0600));
	load(f, text);
	assert_failed_with(f, 1);
	rest = xasprintf(":6: stack.client_certificate_file: file in %s: private key does not "
	                 "match the certificate",
	                 f->dir);
	assert_error(f, rest);

	free(write_file(f, "stack.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n", 0600));
	load(f, text);
	free(rest);
	rest = xasprintf(":6: stack.client_certificate_file: file in %s: holds no PEM certificate",
	                 f->dir);
	assert_error(f, rest);
}

/* Numbers, booleans, enumerations, times and the listen address, each with its reason. */
static void
test_config_load_bad_values(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *line, *error;
	} cases[] = {
	        {"[commerce]\nbatch_size = 0", ":19: commerce.batch_size: out of range (1..1000)"},
	        {"[commerce]\nbatch_size = -1", ":19: commerce.batch_size: not a whole number"},
	        {"[commerce]\nmax_inflight = 0", ":19: commerce.max_inflight: out of range"},
	        {"[commerce]\ncompress = zstd", ":19: commerce.compress: must be gzip or none"},
	        {"[commerce]\nretry_max = 500ms",
	         ":19: commerce.retry_max: shorter than commerce.retry_initial"},
	        {"[stack]\nidentity = ldap", ":19: stack.identity: must be aad or adfs"},
	        {"[stack]\nper_subscriber = maybe", ":19: stack.per_subscriber: not a boolean"},
	        {"[stack]\ncollect_from = 2026-11-01T00:30:00Z",
	         ":19: stack.collect_from: not on the hour"},
	        {"[stack]\ncollect_from = yesterday", ":19: stack.collect_from: not an RFC 3339"},
	        {"[registration]\nmax_staleness = 10m",
	         ":19: registration.max_staleness: must be longer than "
	         "registration.refresh_interval"},
	        {"[registration]\napi_version = latest",
	         ":19: registration.api_version: not an api-version"},
	        {"[health]\nlisten = 127.0.0.1", ":19: health.listen: not ip:port"},
	        {"[health]\nlisten = ::1:80", ":19: health.listen: not ip:port"},
	        {"[health]\nlisten = 127.0.0.1:0", ":19: health.listen: invalid port"},
	        {"[health]\nlisten = 127.0.0.1:65536", ":19: health.listen: invalid port"},
	        {"[store]\nretention = 10m", ":19: store.retention: duration out of range"},
	        {"[store]\nmax_pending = 1e6", ":19: store.max_pending: not a whole number"},
	        {"[http]\nca_file = nothere.pem", ":19: http.ca_file: "},
	        {"[stack]\naudience = a b", ":19: stack.audience: contains spaces"},
	        {"[log]\nlevel = verbose",
	         ":19: log.level: must be error, warning, notice, info or debug"},
	        {"[stack]\nidentity = aad\nidentity = adfs",
	         ":20: stack.identity: given twice (first on line 19)"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		_cleanup_free_ char *text = xasprintf(REQUIRED "%s\n", cases[i].line);

		load(f, text);
		assert_failed_with(f, 1);
		assert_error(f, cases[i].error);
	}
	load(f, REQUIRED "[log]\nlevel = debug\n");
	assert_int_equal(f->r, 0);
	assert_int_equal(f->config->log.level, LOG_DEBUG);
	/* adfs needs no tenant; one given is ignored with a warning */
	load(f, REQUIRED "[stack]\nidentity = adfs\n");
	assert_int_equal(f->r, 0);
	assert_null(f->config->stack.tenant);
	assert_warning(f, ":4: stack.tenant: ignored with identity = adfs");
}

/* The file itself: a missing one is -ENOENT with one problem naming it. */
static void
test_config_load_missing_file(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("%s/nothere.conf", f->dir);
	_cleanup_free_ char *want = xasprintf("%s: No such file or directory", path);

	assert_int_equal(config_load(path, &f->config, &f->problems), -ENOENT);
	assert_null(f->config);
	assert_int_equal(f->problems.n_errors, 1);
	assert_string_equal(f->problems.errors[0], want);
	config_problems_done(&f->problems);
	assert_int_equal(config_load(f->dir, &f->config, NULL), -EISDIR);
}

/* config_load_buffer: NUL bytes in the text and no problems list. */
static void
test_config_load_buffer_nul_byte(void **state)
{
	struct fixture *f = *state;
	static const char text[] = "[stack]\narm_endpoint = https://a\0b.example\n";
	_cleanup_free_ char *name = xasprintf("%s/buffer.conf", f->dir);
	struct config_problems p = {0};
	struct config *c = NULL;

	assert_int_equal(config_load_buffer(name, text, sizeof(text) - 1, &c, &p), -EINVAL);
	assert_null(c);
	assert_true(p.n_errors > 1);
	{
		_cleanup_free_ char *want = xasprintf("%s:2: line contains a NUL byte", name);
		assert_string_equal(p.errors[0], want);
	}
	config_problems_done(&p);
	assert_int_equal(p.n_errors, 0);
	assert_null(p.errors);
	assert_int_equal(config_load_buffer(name, text, sizeof(text) - 1, &c, NULL), -EINVAL);
}

/* Endpoints, store path and listen address need a restart; batch sizes and secrets do not. */
static void
test_config_restart_needed_detects_changes(void **state)
{
	struct fixture *f = *state;
	struct config *old;
	char *list = (char *)"untouched";

	load_ok(f, REQUIRED);
	old = TAKE_PTR(f->config);

	load_ok(f, REQUIRED);
	config_restart_needed(old, f->config, &list);
	assert_null(list);

	free(write_file(f, "stack-secret", "a-new-secret-value\n", 0600));
	load_ok(f, REQUIRED "[commerce]\nbatch_size = 10\ntimeout = 5s\n[stack]\n"
	                    "poll_interval = 1m\n");
	config_restart_needed(old, f->config, &list);
	assert_null(list);

	load_ok(f, REQUIRED "[store]\npath = /tmp/other.db\n[health]\nlisten = 127.0.0.1:1\n"
	                    "[commerce]\nbatch_size = 10\n");
	config_restart_needed(old, f->config, &list);
	assert_non_null(list);
	assert_string_equal(list, "store.path, health.listen");
	free(list);

	load_ok(f, "[stack]\n"
	           "arm_endpoint = https://adminmanagement.other.example\n"
	           "provider_subscription = 11111111-2222-3333-4444-555555555555\n"
	           "tenant = contoso.onmicrosoft.com\n"
	           "client_id = aaaaaaaa-0000-0000-0000-000000000001\n"
	           "client_secret_file = stack-secret\n" REQUIRED_REST
	           "[http]\nproxy = http://proxy:3128\n");
	config_restart_needed(old, f->config, &list);
	assert_non_null(list);
	assert_string_equal(list, "stack.arm_endpoint, http.proxy");
	free(list);
	config_free(old);
}

/* config_register_secrets hands every secret to the log module, which then redacts it. */
static void
test_config_register_secrets_redacts(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *cert = write_file(f, "azure.pem", cert_pem, 0600);
	_cleanup_free_ char *msg = NULL, *out = NULL, *key_line = NULL;
	const char *k;

	load_ok(f, REQUIRED_STACK "[registration]\n"
	                          "subscription_id = 22222222-2222-2222-2222-222222222222\n"
	                          "resource_group = azurestack\n"
	                          "name = azurestack-cloud1\n"
	                          "[azure]\n"
	                          "tenant = 33333333-3333-3333-3333-333333333333\n"
	                          "client_id = aaaaaaaa-0000-0000-0000-000000000002\n"
	                          "client_certificate_file = azure.pem\n"
	                          "[commerce]\n"
	                          "url = https://commerce.example/api/usageEvents/batch\n"
	                          "audience = https://commerce.example/\n");
	assert_string_equal(f->config->azure.client.certificate_file, cert);
	/* one line of the private key, as it might leak on its own */
	k = strstr(cert_pem, "PRIVATE KEY-----\n");
	assert_non_null(k);
	k += strlen("PRIVATE KEY-----\n");
	key_line = xstrndup(k, strcspn(k, "\n"));
	assert_true(strlen(key_line) > 16);

	log_clear_secrets();
	msg = xasprintf("a=%s b=%s", STACK_SECRET, key_line);
	out = log_redact(msg);
	assert_string_equal(out, msg); /* nothing registered yet */
	free(out);

	config_register_secrets(f->config);
	out = log_redact(msg);
	assert_string_equal(out, "a=[redacted] b=[redacted]");
	free(out);
	out = log_redact(cert_pem);
	assert_null(strstr(out, key_line));
	free(out);
	out = NULL;
	log_clear_secrets();
}

/*
 * A secret read during a load that fails is registered all the same: a file with any error
 * that also holds the secret elsewhere (here as an unknown key, which is echoed, and pasted into
 * another *_file key) prints nothing of it once the caller redacts, as the daemon does. The
 * same for a private key and for every line of a multi-line secret file.
 */
static void
test_config_load_failed_load_registers_secrets(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *key_line = NULL, *text = NULL, *with_cert = NULL;
	bool echoed = false;
	const char *k;

	free(write_file(f, "azure.pem", cert_pem, 0600));

	free(write_file(f, "stack-secret", LOWER_SECRET "\n", 0600));
	text = replace_once(
	        REQUIRED "[commerce]\n" LOWER_SECRET " = 1\n[stack]\npoll_interval = soon\n",
	        "client_secret_file = azure-secret", "client_secret_file = " LOWER_SECRET);
	log_clear_secrets();
	load(f, text);
	assert_failed_with(f, 3);
	for (size_t i = 0; i < f->problems.n_errors; i++) {
		_cleanup_free_ char *out = log_redact(f->problems.errors[i]);

		/* the unknown key is named as written: only redaction keeps the secret out */
		echoed |= strstr(f->problems.errors[i], LOWER_SECRET) != NULL;
		assert_null(strstr(out, LOWER_SECRET));
	}
	assert_true(echoed);

	/* a private key from a file with an unrelated error */
	log_clear_secrets();
	with_cert = replace_once(REQUIRED "[stack]\npoll_interval = soon\n",
	                         "client_secret_file = azure-secret",
	                         "client_certificate_file = azure.pem");
	load(f, with_cert);
	assert_failed_with(f, 1);
	k = strstr(cert_pem, "PRIVATE KEY-----\n");
	assert_non_null(k);
	k += strlen("PRIVATE KEY-----\n");
	key_line = xstrndup(k, strcspn(k, "\n"));
	{
		_cleanup_free_ char *out = log_redact(key_line);
		assert_string_equal(out, "[redacted]");
	}

	/* every line of a secret file refused for holding more than one */
	log_clear_secrets();
	free(write_file(f, "stack-secret", "first-secret-line\nsecond-secret-line\n", 0600));
	load(f, REQUIRED);
	assert_failed_with(f, 1);
	{
		_cleanup_free_ char *out = log_redact("a first-secret-line b second-secret-line");
		assert_string_equal(out, "a [redacted] b [redacted]");
	}
	log_clear_secrets();
}

/* config_free wipes and frees; NULL is accepted. */
static void
test_config_free_accepts_null(void **state)
{
	struct fixture *f = *state;

	assert_null(config_free(NULL));
	config_problems_done(NULL);
	load_ok(f, REQUIRED);
	f->config = config_free(f->config);
	assert_null(f->config);
}

/* The shipped conf/azs-usaged.conf is a readable reference: it fails only on its secret files. */
static void
test_config_load_shipped_file(void **state)
{
	struct fixture *f = *state;
	const char *path = SOURCE_DIR "/conf/azs-usaged.conf";
	struct config *c = NULL;

	(void)f;
	assert_int_equal(config_load(path, &c, &f->problems), -EINVAL);
	if (f->problems.n_errors != 2)
		dump_problems(f);
	assert_int_equal(f->problems.n_errors, 2);
	assert_non_null(strstr(f->problems.errors[0], ": stack.client_secret_file: "));
	assert_non_null(strstr(f->problems.errors[0], ": no such file in "));
	assert_non_null(strstr(f->problems.errors[0], "/conf ($CREDENTIALS_DIRECTORY is not set)"));
	assert_non_null(strstr(f->problems.errors[1], ": azure.client_secret_file: "));
	assert_non_null(strstr(f->problems.errors[1], "/conf ($CREDENTIALS_DIRECTORY is not set)"));
}

/* Run every test, with the certificates made once. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_config_load_full_file, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_defaults, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_missing_required, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_duration, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_size, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_guid, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_url, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_unknown_key, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_unknown_section, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_secret_and_certificate, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_no_secret_nor_certificate, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_unreadable_secret_file, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_missing_secret_file, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_flags_skip_secrets, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_credentials_directory, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_world_readable_secret_warning,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_line_over_limit, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_indented_line_not_continuation,
	                                        setup, teardown),
	        cmocka_unit_test(test_ini_parse_string_debian_behaviour),
	        cmocka_unit_test_setup_teardown(test_config_load_three_mistakes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_no_secret_in_messages, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(
	                test_config_load_pasted_secret_in_file_key_not_echoed, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_certificate, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_bad_values, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_missing_file, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_buffer_nul_byte, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_restart_needed_detects_changes, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_register_secrets_redacts, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_failed_load_registers_secrets,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_free_accepts_null, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_config_load_shipped_file, setup, teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
