/*
 * The configuration file (ARCHITECTURE.md section 3): INI parsed with libinih into one immutable
 * struct config. Every problem is collected (not just the first) as "FILE:LINE: section.key:
 * reason" or, for a missing required key, "FILE: section.key: required". Secrets are read from
 * *_file keys ($CREDENTIALS_DIRECTORY first for relative names, then beside the config file); a
 * problem with such a file says where it was looked for, never the name given after "=" (which
 * may be the secret itself, pasted by mistake). Every secret is registered with log_add_secret()
 * as soon as it is read, before the load can fail: a caller printing the problems of a broken
 * file (which may hold the secret elsewhere too) redacts it without further ado.
 *
 * Durations are kept in microseconds (suffixes s, m, h, d; "ms" is accepted too), sizes in bytes
 * (suffixes K, M, G in either case; powers of 1024).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum config_identity {
	CONFIG_IDENTITY_AAD,
	CONFIG_IDENTITY_ADFS,
};

enum config_compress {
	CONFIG_COMPRESS_GZIP,
	CONFIG_COMPRESS_NONE,
};

/* One OAuth2 client identity: exactly one of secret or certificate is set. */
struct config_client {
	char *client_id;
	char *secret;           /* content of client_secret_file, trailing newline stripped */
	char *secret_file;      /* resolved path of client_secret_file */
	char *certificate;      /* PEM content (certificate and private key) */
	char *certificate_file; /* resolved path of client_certificate_file */
};

struct config {
	char *path; /* the file this was read from */

	struct {
		char *arm_endpoint;          /* no trailing slash */
		char *provider_subscription; /* lower-case GUID */
		enum config_identity identity;
		char *tenant; /* NULL for adfs */
		struct config_client client;
		char *login_endpoint; /* NULL: from the metadata endpoint */
		char *audience;       /* NULL: from the metadata endpoint */
		int64_t collect_from; /* seconds since the epoch, on the hour; -1: now - 24h */
		uint64_t poll_interval_usec;
		uint64_t settle_usec;
		uint64_t lookback_usec;
		bool per_subscriber;
		uint64_t refresh_interval_usec;
	} stack;

	struct {
		char *arm_endpoint;    /* no trailing slash */
		char *subscription_id; /* lower-case GUID: the default subscription */
		char *resource_group;
		char *name;
		char *api_version;
		char *audience;
		uint64_t refresh_interval_usec;
		uint64_t max_staleness_usec;
	} registration;

	struct {
		char *tenant;
		struct config_client client;
		char *login_endpoint; /* no trailing slash */
	} azure;

	struct {
		char *url;
		char *audience;
		unsigned batch_size; /* 1..1000 */
		uint64_t batch_bytes;
		unsigned max_inflight;
		enum config_compress compress;
		uint64_t timeout_usec;
		uint64_t retry_initial_usec;
		uint64_t retry_max_usec;
	} commerce;

	struct {
		char *path;
		uint64_t retention_usec;
		uint64_t max_pending;
	} store;

	struct {
		char *ca_file; /* NULL: system bundle only */
		char *proxy;   /* NULL: libcurl's environment */
		char *user_agent;
		uint64_t max_response;
	} http;

	struct {
		char *listen;  /* "ip:port" as written */
		char *address; /* the ip part */
		uint16_t port;
	} health;

	struct {
		int level; /* LOG_ERR .. LOG_DEBUG (syslog levels); applies at once on reload */
	} log;
};

/* Problems found while loading: errors make the file invalid, warnings do not. */
struct config_problems {
	char **errors;
	size_t n_errors;
	char **warnings;
	size_t n_warnings;
};

/*
 * Read and validate path. On success *ret is set (even with warnings) and 0 returned; with any
 * error, -EINVAL is returned, *ret is untouched and problems->errors says why. A file that cannot
 * be opened is -errno with one problem line naming it. problems may be NULL. Either way, every
 * secret and private key read from a *_file key has been registered with log_add_secret().
 */
int config_load(const char *path, struct config **ret, struct config_problems *problems);

/*
 * Flags of config_load_flags(). CONFIG_SKIP_SECRETS: *_file keys of client credentials are
 * resolved but not kept (secret and certificate stay NULL), for tools such as azs-usagectl's store
 * verbs that need the configuration but no credentials (which systemd hands only to the unit).
 * A file this user may read is still registered with log_add_secret(), so that the tool's
 * messages are redacted as the daemon's are; one it may not read is no problem.
 */
#define CONFIG_SKIP_SECRETS (1u << 0)

int config_load_flags(const char *path, unsigned flags, struct config **ret,
                      struct config_problems *problems);

/*
 * The same from a buffer (fuzzing, tests): name is used in messages and its directory for
 * relative *_file names.
 */
int config_load_buffer(const char *name, const char *text, size_t size, struct config **ret,
                       struct config_problems *problems);

struct config *config_free(struct config *c); /* wipes secrets; accepts NULL; returns NULL */
void config_problems_done(struct config_problems *p);

/*
 * Register every secret value of c with log_add_secret() again (config_load() already did), e.g.
 * after log_clear_secrets().
 */
void config_register_secrets(const struct config *c);

/*
 * Keys whose change needs a restart (endpoints, store path, health listen address): writes a
 * comma-separated list of "section.key" names that differ into *ret (NULL when none).
 */
void config_restart_needed(const struct config *old, const struct config *new, char **ret);
