/*
 * azs-sim internals shared by its files: the simulated world (scenario, generated usage), the
 * identity provider, the Commerce ledger and the fault plan. One process, one thread, one
 * struct sim; nothing here is a library API of the daemon. See sim.c for the overview.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#define SIM_GUID_LEN     36
#define SIM_KEY_LEN      64
#define SIM_HOUR_CACHE   4
#define SIM_QTY_DECIMALS 20    /* generated quantities and totals: integers of 10^-20 */
#define SIM_QTY_TEXT     64    /* room for a generated quantity literal */
#define SIM_VARIANTS     3     /* instance data variants of a resource (split aggregates) */
#define SIM_KINDS        8     /* resource kinds (sim-world.c) */
#define SIM_LOG_MAX      20000 /* entries kept by /_sim/requests */

__extension__ typedef unsigned __int128 sim_u128;
__extension__ typedef __int128 sim_i128;

enum sim_endpoint {
	SIM_EP_METADATA,
	SIM_EP_TOKEN,
	SIM_EP_USAGE,
	SIM_EP_SUBSCRIPTIONS,
	SIM_EP_ARM,
	SIM_EP_COMMERCE,
	SIM_EP_CONTROL,
	SIM_EP_UNKNOWN,
	SIM_EP_MAX,
};

enum sim_action {
	SIM_ACT_STATUS,
	SIM_ACT_TIMEOUT,
	SIM_ACT_RESET,
	SIM_ACT_SLOW,
	SIM_ACT_DELAY,
	SIM_ACT_MALFORMED,
	SIM_ACT_EVENTS,
	SIM_ACT_POISON,
	SIM_ACT_NEXTLINK_LOOP,
	SIM_ACT_CHANGE_QUANTITY,
	SIM_ACT_NOT_READY,
	SIM_ACT_LATE_RECORDS,
	SIM_ACT_EXPIRE_TOKEN,
	SIM_ACT_NEXTLINK_AUTHORITY,
	SIM_ACT_DELETE_SUBSCRIPTIONS,
	SIM_ACT_OMIT_RESULTS,
	SIM_ACT_REORDER_RESULTS,
	SIM_ACT_MAX,
};

/* How ARM answers PUT and DELETE of a customer subscription and an empty list (/_sim/arm). */
enum sim_put_answer {
	SIM_PUT_201_EMPTY, /* documented */
	SIM_PUT_201_BODY,
	SIM_PUT_200_BODY,
	SIM_PUT_200_EMPTY,
};

enum sim_delete_answer {
	SIM_DELETE_204,     /* documented: 204 whether or not it was there */
	SIM_DELETE_200_204, /* 200 when it was there, 204 when absent */
};

enum sim_list_answer {
	SIM_LIST_VALUE,  /* {"value":[]} */
	SIM_LIST_NONE,   /* 200 without a body */
	SIM_LIST_OBJECT, /* {} */
};

/* One rule of the fault plan (see README.md for the JSON shape). */
struct sim_rule {
	int endpoint; /* enum sim_endpoint, -1 for any */
	enum sim_action action;
	char *method;        /* NULL: any */
	char *path_contains; /* NULL: any */
	int status;
	char *code;
	char *message;
	char *retry_after; /* "2" or "http-date:+5" */
	double rate;       /* 0: always */
	long times;        /* -1: unlimited */
	long after;
	long seen;
	long fired;
	char **events; /* usageEventIds, or subscription ids (deleteSubscriptions) */
	size_t n_events;
	int64_t hour; /* -1: any */
	unsigned count;
	sim_i128 delta;        /* changeQuantity: integers of 10^-20, may be negative */
	char *delta_text;      /* as given, carried in continuation tokens */
	char *body;            /* notReady: error, flat or empty */
	char *authority;       /* nextLinkAuthority: NULL for the default */
	bool after_processing; /* timeout, reset: after the handler ran (the answer is lost) */
	unsigned delay_ms;
};

struct sim_tenant {
	char id[SIM_GUID_LEN + 1];
	char name[32];
	char customer[SIM_GUID_LEN + 1];         /* registered customer subscription or "" */
	char initial_customer[SIM_GUID_LEN + 1]; /* as the scenario made it (reset) */
	bool unlisted; /* its subscriptions have usage but are missing from the subscriptions API */
	char delegated[SIM_GUID_LEN + 1]; /* a delegated provider's subscription, or "" */
};

struct sim_usersub {
	char id[SIM_GUID_LEN + 1];
	size_t tenant;
	bool disabled;
	bool deleted; /* gone from the subscriptions list (a deleteSubscriptions rule) */
	char display[64];
};

/*
 * One form of a resource's instanceData (a split aggregate differs in tags or additionalInfo).
 * Both of its texts hold the resource's URI once, verbatim: as served (escaped to sit inside a
 * JSON string) it is esc_head, the URI, esc_tail; in the key's form (members sorted, no white
 * space, UTF-8: section 4) can_head, the URI, can_tail. The pieces are shared by every
 * resource (struct sim_world's texts), so that the bytes a page or a key copies besides the URI
 * stay in the cache however many resources the world has.
 */
struct sim_instance {
	const char *esc_tail;
	size_t esc_tail_len;
	const char *can_head;
	size_t can_head_len;
	const char *can_tail;
	size_t can_tail_len;
	const char *tags; /* JSON text of instanceData's tags ("null" or an object) */
	const char *info; /* JSON text of additionalInfo */
	unsigned cores;
};

struct sim_resource {
	size_t usersub;
	unsigned kind; /* index of resource_kinds (sim-world.c) */
	char *uri;     /* no quote, backslash or control character: it sits in JSON as it is */
	size_t uri_len;
	struct sim_instance inst[SIM_VARIANTS];
	unsigned meter_offset;
};

struct sim_client {
	char *client_id;
	char *secret;     /* NULL: certificate only */
	char *cert_path;  /* NULL: secret only */
	EVP_PKEY *pubkey; /* from the certificate */
	char *x5t;        /* base64url SHA-1 of the certificate DER */
};

/* One generated usage record; everything else is derived from it and the world. */
struct sim_record {
	sim_u128 quantity; /* integers of 10^-SIM_QTY_DECIMALS */
	int64_t usage_start;
	uint32_t resource;
	uint32_t meter;
	uint8_t decimals; /* how many decimals the quantity literal shows */
	uint8_t variant;  /* which instanceData of the resource */
};

struct sim_hour {
	int64_t hour; /* -1: unused slot */
	size_t n;
	struct sim_record *recs; /* a page formats its records as it is served */
	uint64_t last_used;
};

struct sim_world {
	uint64_t seed;
	bool adfs;
	char *aad_tenant; /* the tenant path segment the AAD token endpoint accepts ("" = any) */
	char provider_sub[SIM_GUID_LEN + 1];
	char reg_sub[SIM_GUID_LEN + 1];
	char cloud_id[SIM_GUID_LEN + 1];
	char object_id[SIM_GUID_LEN + 1];
	char *reg_rg;
	char *reg_name;
	char *reg_id;
	char *reg_id_lower; /* what Commerce events name (ARCHITECTURE.md section 6) */
	uint64_t reg_gen;   /* changes whenever a customer subscription does */
	char *billing_model;
	char *aud_stack;
	char *aud_arm;
	char *aud_commerce;
	bool require_auth;
	struct sim_tenant *tenants;
	size_t n_tenants;
	struct sim_usersub *subs;
	size_t n_subs;
	struct sim_resource *res;
	size_t n_res;
	char **texts; /* the distinct pieces of the resources' instanceData (struct sim_instance) */
	size_t n_texts;
	const char *esc_head; /* the served instanceData's text before the URI */
	size_t esc_head_len;
	char **meters;
	char **meter_keys;              /* lower case without dashes, as in the record key */
	uint8_t *meter_models;          /* how each meter's quantities look (sim-world.c) */
	size_t *kind_meters[SIM_KINDS]; /* per resource kind, the meters its records use */
	size_t n_kind_meters[SIM_KINDS];
	size_t n_meters;
	int64_t hour_from;
	size_t hour_count;
	int64_t *empty_hours;
	size_t n_empty;
	unsigned records_per_hour;
	unsigned late_percent;
	unsigned split_percent;
	unsigned page_size;
	unsigned sub_page_size;
	unsigned arm_page_size;
	unsigned token_lifetime;
	struct sim_client *clients;
	size_t n_clients;
	char *commerce_path;
	unsigned max_events;
	size_t max_bytes;
	json_t *faults;      /* the scenario's initial fault plan, or NULL */
	json_t *arm_answers; /* the scenario's armAnswers, or NULL */
	struct sim_hour cache[SIM_HOUR_CACHE];
	uint64_t cache_tick;
};

struct sim_token {
	char value[48];
	char *audience;
	int64_t expires;
};

struct sim_logentry {
	uint8_t endpoint;
	uint16_t status;
	char method[8];
	char *path;
	char *query; /* the raw query string, NULL when none */
	char *action;
	char *correlation_id;
	char *request_id;
	char *host;  /* the Host header */
	bool bearer; /* an Authorization: Bearer header was sent */
	unsigned events;
	int64_t at_ms; /* real time the request was logged, in milliseconds since the epoch */
};

struct sim {
	struct event_base *base;
	struct evhttp *http;
	struct sim_world world;
	char *state_dir;
	int64_t clock_base; /* simulated now at clock_set_mono (fixed clock) */
	bool clock_fixed;   /* false: real time */
	uint64_t prng;      /* fault rates */
	struct sim_rule *rules;
	size_t n_rules;
	struct sim_token *tokens;
	size_t n_tokens;
	size_t tokens_compact_at; /* drop expired tokens when n_tokens reaches this */
	json_t *assertions;       /* "client id|jti" of accepted assertions -> their expiry */
	size_t assertions_prune_at;
	sqlite3 *db;
	sqlite3_stmt *insert;
	struct commerce *commerce; /* ledger index and summary state (sim-commerce.c) */
	json_t *hour_queries;      /* "hour|subscriber" -> number of first-page queries */
	json_t *loops;   /* "hour|subscriber|query|offset" of pages whose nextLink loops */
	json_t *expired; /* "hour|subscriber|query" whose continuation tokens have expired */
	enum sim_put_answer put_answer;
	enum sim_delete_answer delete_answer;
	enum sim_list_answer list_answer;
	uint64_t duplicates;
	uint64_t rejected;
	uint64_t batches;
	uint64_t events_seen;
	uint64_t pages_served;
	uint64_t records_served;
	uint64_t cpu_ns[SIM_EP_MAX];
	uint64_t cpu_start_ns;
	unsigned counts[SIM_EP_MAX][600];
	struct sim_logentry *log;
	size_t n_log;
};

/* A response being built by a handler, sent by the dispatcher (which may apply a fault). */
struct sim_response {
	int status;
	struct evbuffer *body;
	char *retry_after;
	const char *www_authenticate;
	unsigned events;
};

/* sim.c */
int64_t sim_now(const struct sim *s);
const char *sim_endpoint_name(int ep);
void sim_json_str(struct evbuffer *b, const char *str);
void sim_arm_error(struct sim_response *r, int status, const char *code, const char *message);
struct sim_rule *sim_fault_take(struct sim *s, int endpoint, enum sim_action action,
                                const char *event_id, int64_t hour);
bool sim_rule_has_event(const struct sim_rule *rule, const char *event_id);

/* sim-world.c */
uint64_t world_splitmix(uint64_t *state);
void world_guid(uint64_t *state, char out[static SIM_GUID_LEN + 1]);
int world_load(struct sim_world *w, json_t *scenario, char **ret_error);
void world_free(struct sim_world *w);
bool world_hour_has_usage(const struct sim_world *w, int64_t hour);
const struct sim_hour *world_hour(struct sim_world *w, int64_t hour);
size_t world_hour_records(const struct sim_world *w, int64_t hour, struct sim_record *out);
void world_format_record(const struct sim_world *w, const struct sim_record *rec, sim_u128 quantity,
                         struct evbuffer *out);
void world_record_key(const struct sim_world *w, int64_t hour, const struct sim_record *rec,
                      char out[static SIM_KEY_LEN + 1]);
size_t world_quantity_text(sim_u128 quantity, uint8_t decimals, char out[static SIM_QTY_TEXT]);
void world_reset_state(struct sim_world *w);
void world_format_time(int64_t t, bool zulu, char out[static 32]);
const char *world_charged(const struct sim_world *w, size_t usersub, const char **ret_reason);
int world_find_tenant(const struct sim_world *w, const char *tenant_id);
int world_find_usersub(const struct sim_world *w, const char *sub_id);
void world_describe(const struct sim_world *w, json_t *out);
bool world_is_guid(const char *s, bool lower_only);

/* sim-identity.c */
void identity_token(struct sim *s, struct evhttp_request *req, const char *path,
                    struct sim_response *r);
bool identity_check(struct sim *s, struct evhttp_request *req, const char *audience,
                    struct sim_response *r);
void identity_reset(struct sim *s);
void identity_error(struct sim_response *r, int status, const char *error, const char *description);
void identity_error_adfs(struct sim_response *r, int status, const char *error,
                         const char *description);
char *identity_b64(const unsigned char *data, size_t size, bool url);

/* sim-commerce.c */
int commerce_open(struct sim *s);
void commerce_close(struct sim *s);
int commerce_reset(struct sim *s);
void commerce_batch(struct sim *s, struct evhttp_request *req, struct sim_response *r);
void commerce_summary(struct sim *s, int64_t from, int64_t until, struct evbuffer *out);
void commerce_expected_events(struct sim *s, int64_t from, int64_t until, size_t limit,
                              struct evbuffer *out);
