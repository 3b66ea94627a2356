/*
 * Checking the configuration's values (ARCHITECTURE.md section 3): each key's value or default
 * parsed and validated into struct config, the secret and certificate files read, and the rules
 * that bind keys together. No message echoes a value; a *_file key's message says where the
 * file was looked for, never its name or content.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define LOG_MODULE "config"
#include "config-private.h"
#include "log.h"
#include "xmalloc.h"

/* Parse decimal digits into *ret, refusing overflow; advances *p. */
static int
parse_digits_u64(const char **p, uint64_t *ret)
{
	const char *s = *p;
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*p = s;
	*ret = v;
	return 0;
}

/* Parse a plain unsigned number. */
static int
parse_uint64(const char *s, uint64_t *ret)
{
	uint64_t v;
	int r;

	r = parse_digits_u64(&s, &v);
	if (r < 0)
		return r;
	if (*s)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Parse a duration such as "5m", "1h30m", "250ms" or "0" into microseconds. */
static int
parse_duration(const char *s, uint64_t *ret)
{
	uint64_t total = 0;

	if (streq(s, "0")) {
		*ret = 0;
		return 0;
	}
	if (!*s)
		return -EINVAL;
	while (*s) {
		uint64_t n, unit;
		int r;

		r = parse_digits_u64(&s, &n);
		if (r < 0)
			return r;
		if (strncmp(s, "ms", 2) == 0) {
			unit = USEC_PER_MSEC;
			s += 2;
		} else if (*s == 's') {
			unit = USEC_PER_SEC;
			s++;
		} else if (*s == 'm') {
			unit = USEC_PER_MINUTE;
			s++;
		} else if (*s == 'h') {
			unit = USEC_PER_HOUR;
			s++;
		} else if (*s == 'd') {
			unit = USEC_PER_DAY;
			s++;
		} else {
			return -EINVAL;
		}
		if (n > UINT64_MAX / unit || total > UINT64_MAX - n * unit)
			return -ERANGE;
		total += n * unit;
	}
	*ret = total;
	return 0;
}

/* Parse a size: bytes, or a number with K, M or G in either case (powers of 1024). */
static int
parse_size(const char *s, uint64_t *ret)
{
	uint64_t n, mult = 1;
	int r;

	r = parse_digits_u64(&s, &n);
	if (r < 0)
		return r;
	switch (*s) {
	case '\0':
		break;
	case 'K':
	case 'k':
		mult = UINT64_C(1) << 10;
		s++;
		break;
	case 'M':
	case 'm':
		mult = UINT64_C(1) << 20;
		s++;
		break;
	case 'G':
	case 'g':
		mult = UINT64_C(1) << 30;
		s++;
		break;
	default:
		return -EINVAL;
	}
	if (*s)
		return -EINVAL;
	if (n > UINT64_MAX / mult)
		return -ERANGE;
	*ret = n * mult;
	return 0;
}

/* Parse a boolean. */
static int
parse_bool(const char *s, bool *ret)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*ret = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*ret = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* True when s has the 8-4-4-4-12 hex shape of a GUID. */
static bool
guid_valid(const char *s)
{
	static const int groups[] = {8, 4, 4, 4, 12};

	for (size_t g = 0; g < ARRAY_SIZE(groups); g++) {
		for (int i = 0; i < groups[g]; i++, s++)
			if (!isxdigit((unsigned char)*s))
				return false;
		if (g + 1 < ARRAY_SIZE(groups) && *s++ != '-')
			return false;
	}
	return *s == '\0';
}

/* True when s is a DNS domain name of at least two labels. */
static bool
domain_valid(const char *s)
{
	size_t label = 0, labels = 0, total = strlen(s);

	if (total == 0 || total > 253)
		return false;
	for (const char *p = s;; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > 63 || p[-1] == '-')
				return false;
			labels++;
			label = 0;
			if (*p == '\0')
				break;
			continue;
		}
		if (!isalnum((unsigned char)*p) && !(*p == '-' && label > 0))
			return false;
		label++;
	}
	return labels >= 2;
}

/* Lower-case a string in place. */
static char *
ascii_lower(char *s)
{
	for (char *p = s; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return s;
}

/* True when every byte of s is printable ASCII; spaces only when allow_space. */
static bool
printable(const char *s, bool allow_space)
{
	for (; *s; s++) {
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
		if (*s == ' ' && !allow_space)
			return false;
	}
	return true;
}

/* Parse a port number 1..65535. */
static int
parse_port(const char *s, size_t len, uint16_t *ret)
{
	unsigned v = 0;

	if (len == 0 || len > 5)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -EINVAL;
	*ret = (uint16_t)v;
	return 0;
}

/* Check a host[:port] authority; returns a reason or NULL. */
static const char *
authority_check(const char *s, size_t len)
{
	const char *colon;
	size_t hostlen;
	uint16_t port;

	if (len == 0)
		return "has no host";
	if (memchr(s, '@', len))
		return "must not contain user credentials (secrets are only read from files)";
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		char addr[INET6_ADDRSTRLEN + 1];
		struct in6_addr a6;
		size_t alen;

		if (!close)
			return "has an invalid IPv6 host";
		alen = (size_t)(close - s - 1);
		if (alen == 0 || alen >= sizeof(addr))
			return "has an invalid IPv6 host";
		memcpy(addr, s + 1, alen);
		addr[alen] = '\0';
		if (inet_pton(AF_INET6, addr, &a6) != 1)
			return "has an invalid IPv6 host";
		colon = close + 1;
		if (colon == s + len)
			return NULL;
		if (*colon != ':')
			return "has an invalid host";
	} else {
		colon = memchr(s, ':', len);
		hostlen = colon ? (size_t)(colon - s) : len;
		if (hostlen == 0)
			return "has no host";
		for (size_t i = 0; i < hostlen; i++)
			if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' &&
			    s[i] != '_')
				return "has an invalid host";
		if (!colon)
			return NULL;
	}
	if (parse_port(colon + 1, (size_t)(s + len - colon - 1), &port) < 0)
		return "has an invalid port";
	return NULL;
}

/*
 * Check a URL: https:// (or http:// when allow_http), a valid host, no credentials, no
 * fragment, a query only when allow_query. Returns a reason or NULL.
 */
static const char *
url_check(const char *s, bool allow_http, bool allow_query)
{
	const char *rest, *end;

	if (strncasecmp(s, "https://", 8) == 0)
		rest = s + 8;
	else if (allow_http && strncasecmp(s, "http://", 7) == 0)
		rest = s + 7;
	else
		return allow_http ? "not an http:// or https:// URL" : "not an https:// URL";
	if (!printable(s, false))
		return "contains spaces or control characters";
	if (strchr(s, '#'))
		return "must not contain a fragment ('#')";
	if (!allow_query && strchr(s, '?'))
		return "must not contain a query ('?')";
	end = rest + strcspn(rest, "/?");
	return authority_check(rest, (size_t)(end - rest));
}

/* Check an ARM resource group name. */
static bool
resource_group_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 90 || s[n - 1] == '.')
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("._-()", *s))
			return false;
	return true;
}

/* Check an ARM resource name (no characters ARM refuses in names). */
static bool
resource_name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 260 || !printable(s, false))
		return false;
	return strpbrk(s, "<>%&:\\?/#*\"'") == NULL;
}

/* Check an api-version: YYYY-MM-DD with an optional "-preview"-style suffix. */
static bool
api_version_valid(const char *s)
{
	for (int i = 0; i < 10; i++) {
		bool dash = i == 4 || i == 7;

		if (dash ? s[i] != '-' : !isdigit((unsigned char)s[i]))
			return false;
	}
	s += 10;
	if (!*s)
		return true;
	if (*s++ != '-' || !*s)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s))
			return false;
	return true;
}

/* Join a directory and a relative name. */
static char *
path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir);

	return xasprintf("%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name);
}

/*
 * Resolve a *_file name: absolute as is; relative in $CREDENTIALS_DIRECTORY, else beside us.
 * Besides the path to open, say where that is for messages, which never repeat the name: an
 * operator may have pasted the secret itself after "=".
 */
static void
file_resolve(struct parse *ps, const char *name, struct file_ref *ret)
{
	const char *creds;

	*ret = (struct file_ref){0};
	if (name[0] == '/') {
		ret->path = xstrdup(name);
		ret->where = xstrdup("at the absolute path given");
		ret->searched = xstrdup(ret->where);
		return;
	}
	creds = getenv("CREDENTIALS_DIRECTORY");
	if (!isempty(creds)) {
		char *p = path_join(creds, name);
		struct stat st;

		if (lstat(p, &st) == 0) {
			ret->path = p;
			ret->where = xasprintf("in $CREDENTIALS_DIRECTORY (%s)", creds);
			ret->searched = xstrdup(ret->where);
			return;
		}
		free(p);
		ret->searched = xasprintf("in $CREDENTIALS_DIRECTORY (%s) or %s", creds, ps->dir);
	} else {
		ret->searched = xasprintf("in %s ($CREDENTIALS_DIRECTORY is not set)", ps->dir);
	}
	ret->path = path_join(ps->dir, name);
	ret->where = xasprintf("in %s", ps->dir);
}

/* Free what file_resolve() filled in. */
static void
file_ref_done(struct file_ref *ref)
{
	free(ref->path);
	free(ref->where);
	free(ref->searched);
	*ref = (struct file_ref){0};
}

/* Read all of fd (at most max bytes) into a NUL-terminated buffer. */
int
config_read_whole_fd(int fd, size_t max, char **ret, size_t *ret_size)
{
	size_t size = 0, alloc = 4096;
	char *buf = xmalloc(alloc);

	for (;;) {
		ssize_t n;

		if (size + 1 >= alloc) {
			if (alloc > max) {
				explicit_wipe(buf, size);
				free(buf);
				return -EFBIG;
			}
			buf = xrealloc(buf, alloc * 2);
			alloc *= 2;
		}
		n = read(fd, buf + size, alloc - size - 1);
		if (n < 0) {
			int r = errno == EAGAIN ? -EIO : -errno;

			if (errno == EINTR)
				continue;
			explicit_wipe(buf, size);
			free(buf);
			return r;
		}
		if (n == 0)
			break;
		size += (size_t)n;
	}
	if (size > max) {
		explicit_wipe(buf, size);
		free(buf);
		return -EFBIG;
	}
	buf[size] = '\0';
	*ret = buf;
	*ret_size = size;
	return 0;
}

/* Open path read-only as a regular file; never blocks on FIFOs or devices. */
static int
file_open_regular(const char *path, struct stat *ret_st)
{
	_cleanup_close_ int fd = -1;
	struct stat st;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -EBADF;
	*ret_st = st;
	return TAKE_FD(fd);
}

/* Report a file problem saying where the file was looked for (never its name or content). */
static void
file_problem(struct parse *ps, const struct key *k, unsigned line, const struct file_ref *ref,
             int r)
{
	if (r == -ENOENT)
		config_key_problem(ps, k, line, false, "no such file %s", ref->searched);
	else if (r == -EBADF)
		config_key_problem(ps, k, line, false, "file %s: not a regular file", ref->where);
	else if (r == -EFBIG)
		config_key_problem(ps, k, line, false, "file %s: too large", ref->where);
	else
		config_key_problem(ps, k, line, false, "file %s: %s", ref->where, strerror(-r));
}

/*
 * Read a secret or certificate file named by key k into *ret (trailing newlines stripped).
 * Problems are reported; returns 0 or a negative errno.
 */
static int
secret_file_read(struct parse *ps, const struct key *k, unsigned line, const struct file_ref *ref,
                 char **ret)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	char *buf = NULL;
	size_t size;
	int r;

	fd = file_open_regular(ref->path, &st);
	if (fd < 0) {
		file_problem(ps, k, line, ref, fd);
		return fd;
	}
	r = config_read_whole_fd(fd, CONFIG_MAX_SECRET_SIZE, &buf, &size);
	if (r < 0) {
		file_problem(ps, k, line, ref, r);
		return r;
	}
	while (size > 0 && (buf[size - 1] == '\n' || buf[size - 1] == '\r'))
		buf[--size] = '\0';
	/*
	 * Registered now, before any check can fail: the caller prints the problems of a load
	 * that fails too, and this value may also have been written elsewhere in the file.
	 */
	if (k->type == KEY_CERT_FILE)
		config_register_pem(buf);
	else
		config_register_lines(buf);
	if (size == 0) {
		free(buf);
		config_key_problem(ps, k, line, false, "file %s: is empty", ref->where);
		return -ENODATA;
	}
	if (memchr(buf, '\0', size)) {
		explicit_wipe(buf, size);
		free(buf);
		config_key_problem(ps, k, line, false, "file %s: contains a NUL byte", ref->where);
		return -EINVAL;
	}
	if (st.st_mode & (S_IRGRP | S_IROTH))
		config_key_problem(ps, k, line, true,
		                   "file %s: readable by group or others (chmod 0600 it)",
		                   ref->where);
	*ret = buf;
	return 0;
}

/* Read a secret file only to register its content for redaction; any failure is ignored. */
static void
secret_register_quietly(const struct key *k, const char *path)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	char *buf = NULL;
	size_t size = 0;

	fd = file_open_regular(path, &st);
	if (fd < 0 || config_read_whole_fd(fd, CONFIG_MAX_SECRET_SIZE, &buf, &size) < 0)
		return;
	if (k->type == KEY_CERT_FILE)
		config_register_pem(buf);
	else
		config_register_lines(buf);
	explicit_wipe(buf, size);
	free(buf);
}

/* A PEM password callback that refuses: encrypted keys are not supported (and no prompt). */
static int
pem_no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return 0;
}

/* Check that a PEM text holds a certificate and its unencrypted private key; a reason or NULL. */
static const char *
pem_check(const char *pem)
{
	const char *reason = NULL;
	X509 *x = NULL;
	EVP_PKEY *key = NULL;
	BIO *b;

	b = BIO_new_mem_buf(pem, -1);
	if (b) {
		x = PEM_read_bio_X509(b, NULL, pem_no_password, NULL);
		BIO_free(b);
	}
	b = BIO_new_mem_buf(pem, -1);
	if (b) {
		key = PEM_read_bio_PrivateKey(b, NULL, pem_no_password, NULL);
		BIO_free(b);
	}
	if (!x)
		reason = "holds no PEM certificate";
	else if (!key)
		reason = "holds no unencrypted PEM private key";
	else if (X509_check_private_key(x, key) != 1)
		reason = "private key does not match the certificate";
	X509_free(x);
	EVP_PKEY_free(key);
	ERR_clear_error();
	return reason;
}

/* Validate one value v (from line, 0 for a default) of key k and store it into c. */
static void
key_apply(struct parse *ps, const struct key *k, const char *v, unsigned line, struct config *c)
{
	char *field = (char *)c + k->offset;
	char **str = (char **)field;
	const char *reason = NULL;
	uint64_t u = 0;
	int r;

	switch (k->type) {
	case KEY_ENDPOINT: {
		char *s;
		size_t n;

		reason = url_check(v, false, false);
		if (reason)
			break;
		s = xstrdup(v);
		n = strlen(s);
		while (n > 8 && s[n - 1] == '/')
			s[--n] = '\0';
		*str = s;
		return;
	}
	case KEY_URL:
		reason = url_check(v, false, true);
		if (!reason)
			*str = xstrdup(v);
		break;
	case KEY_PROXY:
		reason = url_check(v, true, false);
		if (!reason)
			*str = xstrdup(v);
		break;
	case KEY_GUID:
		if (!guid_valid(v))
			reason = "not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)";
		else
			*str = ascii_lower(xstrdup(v));
		break;
	case KEY_TENANT:
		if (!guid_valid(v) && !domain_valid(v))
			reason = "not a GUID or a domain name";
		else
			*str = ascii_lower(xstrdup(v));
		break;
	case KEY_IDENTITY:
		if (streq(v, "aad"))
			*(enum config_identity *)field = CONFIG_IDENTITY_AAD;
		else if (streq(v, "adfs"))
			*(enum config_identity *)field = CONFIG_IDENTITY_ADFS;
		else
			reason = "must be aad or adfs";
		break;
	case KEY_COMPRESS:
		if (streq(v, "gzip"))
			*(enum config_compress *)field = CONFIG_COMPRESS_GZIP;
		else if (streq(v, "none"))
			*(enum config_compress *)field = CONFIG_COMPRESS_NONE;
		else
			reason = "must be gzip or none";
		break;
	case KEY_LOG_LEVEL: {
		int level = log_level_from_string(v);

		if (level < 0)
			reason = "must be error, warning, notice, info or debug";
		else
			*(int *)field = level;
		break;
	}
	case KEY_SECRET_FILE:
	case KEY_CERT_FILE: {
		struct config_client *cl = (struct config_client *)field;
		_cleanup_(file_ref_done) struct file_ref ref = {0};
		char *content = NULL;

		if (!printable(v, true)) {
			reason = "not a file path";
			break;
		}
		file_resolve(ps, v, &ref);
		if (ps->flags & CONFIG_SKIP_SECRETS) {
			/* the caller needs no credentials: resolve the file and keep nothing, but
			 * register what it holds when this user may read it, so that the caller's
			 * messages are redacted as the daemon's are */
			secret_register_quietly(k, ref.path);
			if (k->type == KEY_SECRET_FILE)
				cl->secret_file = TAKE_PTR(ref.path);
			else
				cl->certificate_file = TAKE_PTR(ref.path);
			return;
		}
		if (secret_file_read(ps, k, line, &ref, &content) < 0)
			return;
		if (k->type == KEY_SECRET_FILE) {
			if (strpbrk(content, "\r\n")) {
				free_secret(content);
				config_key_problem(ps, k, line, false,
				                   "file %s: holds more than one line", ref.where);
				return;
			}
			cl->secret = content;
			cl->secret_file = TAKE_PTR(ref.path);
		} else {
			const char *why = pem_check(content);

			if (why) {
				free_secret(content);
				config_key_problem(ps, k, line, false, "file %s: %s", ref.where,
				                   why);
				return;
			}
			cl->certificate = content;
			cl->certificate_file = TAKE_PTR(ref.path);
		}
		return;
	}
	case KEY_CA_FILE: {
		_cleanup_(file_ref_done) struct file_ref ref = {0};
		_cleanup_close_ int fd = -1;
		struct stat st;

		if (!printable(v, true)) {
			reason = "not a file path";
			break;
		}
		file_resolve(ps, v, &ref);
		fd = file_open_regular(ref.path, &st);
		if (fd < 0) {
			file_problem(ps, k, line, &ref, fd);
			return;
		}
		if (st.st_size == 0) {
			config_key_problem(ps, k, line, false, "file %s: is empty", ref.where);
			return;
		}
		*str = TAKE_PTR(ref.path);
		return;
	}
	case KEY_TIME_HOUR: {
		int64_t t;

		if (time_parse_rfc3339(v, &t) < 0 || t < 0)
			reason = "not an RFC 3339 time (YYYY-MM-DDTHH:00:00Z)";
		else if (!time_on_hour(t))
			reason = "not on the hour";
		else
			*(int64_t *)field = t;
		break;
	}
	case KEY_DURATION:
		r = parse_duration(v, &u);
		if (r == -ERANGE)
			reason = "duration too large";
		else if (r < 0)
			reason = "not a duration (a number with ms, s, m, h or d, e.g. 5m)";
		else if (u < k->min || u > k->max)
			reason = k->min == 0               ? "duration out of range"
			         : k->min >= USEC_PER_HOUR ? "duration out of range (at least 1h)"
			         : k->min >= USEC_PER_SEC  ? "duration out of range (at least 1s)"
			                                   : "duration out of range (at least 1ms)";
		else
			*(uint64_t *)field = u;
		break;
	case KEY_SIZE:
		r = parse_size(v, &u);
		if (r < 0)
			reason = "not a size (bytes, or a number with K, M or G)";
		else if (u < k->min || u > k->max)
			reason = "size out of range";
		else
			*(uint64_t *)field = u;
		break;
	case KEY_UINT:
	case KEY_UINT64:
		r = parse_uint64(v, &u);
		if (r < 0)
			reason = "not a whole number";
		else if (u < k->min || u > k->max) {
			config_key_problem(ps, k, line, false,
			                   "out of range (%" PRIu64 "..%" PRIu64 ")", k->min,
			                   k->max);
			return;
		} else if (k->type == KEY_UINT)
			*(unsigned *)field = (unsigned)u;
		else
			*(uint64_t *)field = u;
		break;
	case KEY_BOOL:
		if (parse_bool(v, (bool *)field) < 0)
			reason = "not a boolean (true or false)";
		break;
	case KEY_TOKEN:
		if (!printable(v, false))
			reason = "contains spaces or control characters";
		else
			*str = xstrdup(v);
		break;
	case KEY_API_VERSION:
		if (!api_version_valid(v))
			reason = "not an api-version (YYYY-MM-DD)";
		else
			*str = xstrdup(v);
		break;
	case KEY_RESOURCE_GROUP:
		if (!resource_group_valid(v))
			reason = "not a resource group name";
		else
			*str = xstrdup(v);
		break;
	case KEY_RESOURCE_NAME:
		if (!resource_name_valid(v))
			reason = "not a resource name";
		else
			*str = xstrdup(v);
		break;
	case KEY_TEXT:
		if (!printable(v, true))
			reason = "contains control or non-ASCII characters";
		else
			*str = xstrdup(v);
		break;
	case KEY_PATH:
		if (!printable(v, true) || v[strlen(v) - 1] == '/')
			reason = "not a file path";
		else
			*str = v[0] == '/' ? xstrdup(v) : path_join(ps->dir, v);
		break;
	case KEY_LISTEN: {
		const char *colon, *host = v;
		char addr[INET6_ADDRSTRLEN + 1];
		unsigned char buf[sizeof(struct in6_addr)];
		size_t hlen;
		uint16_t port;
		int af = AF_INET;

		if (v[0] == '[') {
			const char *close = strchr(v, ']');

			af = AF_INET6;
			host = v + 1;
			colon = close ? close + 1 : NULL;
			hlen = close ? (size_t)(close - host) : 0;
		} else {
			colon = strrchr(v, ':');
			hlen = colon ? (size_t)(colon - v) : 0;
		}
		if (!colon || *colon != ':' || hlen == 0 || hlen >= sizeof(addr)) {
			reason = "not ip:port (IPv4 address or [IPv6 address], then :port)";
			break;
		}
		memcpy(addr, host, hlen);
		addr[hlen] = '\0';
		if (inet_pton(af, addr, buf) != 1) {
			reason = "not ip:port (IPv4 address or [IPv6 address], then :port)";
			break;
		}
		if (parse_port(colon + 1, strlen(colon + 1), &port) < 0) {
			reason = "invalid port (1..65535)";
			break;
		}
		c->health.listen = xstrdup(v);
		c->health.address = xstrdup(addr);
		c->health.port = port;
		break;
	}
	}
	if (reason)
		config_key_problem(ps, k, line, false, "%s", reason);
}

/* Apply every key: the given value, else its default; report missing required keys. */
void
config_apply_keys(struct parse *ps, struct config *c)
{
	c->stack.collect_from = -1;

	for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
		const struct key *k = &config_keys[i];
		const struct slot *sl = &ps->slots[i];

		/* an empty value ("login_endpoint =") means "not set" */
		if (!isempty(sl->value)) {
			key_apply(ps, k, sl->value, sl->line, c);
		} else if (k->required) {
			config_key_problem(ps, k, 0, false, "required");
		} else if (k->def) {
			size_t before = ps->n_errors;

			key_apply(ps, k, k->def, 0, c);
			assert(ps->n_errors == before); /* defaults are valid */
			(void)before;
		}
	}
}

/* The line a key was given on (0: not given). */
static unsigned
key_line(const struct parse *ps, const char *section, const char *name)
{
	size_t i = config_key_index(section, name);

	return i == SIZE_MAX ? 0 : ps->slots[i].line;
}

/* True when the key was given with a non-empty value. */
static bool
key_given(const struct parse *ps, const char *section, const char *name)
{
	size_t i = config_key_index(section, name);

	return i != SIZE_MAX && !isempty(ps->slots[i].value);
}

/* Exactly one of client_secret_file / client_certificate_file in section. */
static void
check_client(struct parse *ps, const char *section)
{
	bool secret = key_given(ps, section, "client_secret_file");
	bool cert = key_given(ps, section, "client_certificate_file");

	if (secret && cert) {
		unsigned ls = key_line(ps, section, "client_secret_file");
		unsigned lc = key_line(ps, section, "client_certificate_file");

		config_key_problem(ps,
		                   config_key_find(section, lc > ls ? "client_certificate_file"
		                                                    : "client_secret_file"),
		                   MAX(ls, lc), false,
		                   "only one of client_secret_file and client_certificate_file "
		                   "may be set");
	} else if (!secret && !cert) {
		config_key_problem(ps, config_key_find(section, "client_secret_file"), 0, false,
		                   "required (or %s.client_certificate_file)", section);
	}
}

/* Checks that involve more than one key. */
void
config_check_combinations(struct parse *ps, struct config *c)
{
	unsigned line;

	check_client(ps, "stack");
	check_client(ps, "azure");

	if (c->stack.identity == CONFIG_IDENTITY_AAD) {
		if (!key_given(ps, "stack", "tenant"))
			config_key_problem(ps, config_key_find("stack", "tenant"), 0, false,
			                   "required (with identity = aad)");
	} else if (c->stack.tenant) {
		config_key_problem(ps, config_key_find("stack", "tenant"),
		                   key_line(ps, "stack", "tenant"), true,
		                   "ignored with identity = adfs");
		free(c->stack.tenant);
		c->stack.tenant = NULL;
	}

	if (c->commerce.retry_max_usec > 0 &&
	    c->commerce.retry_max_usec < c->commerce.retry_initial_usec) {
		line = key_line(ps, "commerce", "retry_max");
		if (line > 0)
			config_key_problem(ps, config_key_find("commerce", "retry_max"), line,
			                   false, "shorter than commerce.retry_initial");
		else
			config_key_problem(ps, config_key_find("commerce", "retry_initial"),
			                   key_line(ps, "commerce", "retry_initial"), false,
			                   "longer than commerce.retry_max");
	}

	if (c->registration.max_staleness_usec > 0 &&
	    c->registration.max_staleness_usec <= c->registration.refresh_interval_usec) {
		line = key_line(ps, "registration", "max_staleness");
		if (line > 0)
			config_key_problem(ps, config_key_find("registration", "max_staleness"),
			                   line, false,
			                   "must be longer than registration.refresh_interval");
		else
			config_key_problem(ps, config_key_find("registration", "refresh_interval"),
			                   key_line(ps, "registration", "refresh_interval"), false,
			                   "must be shorter than registration.max_staleness");
	}
}
