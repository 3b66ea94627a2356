/*
 * The simulated world: a scenario (JSON) read once, and everything that follows from it and its
 * seed. Tenants, user subscriptions, resources and the registration are made at load time; the
 * usage records of a reported hour are generated on demand from (seed, hour) alone, so the same
 * scenario always gives the same records, and any hour can be regenerated for the expected
 * charges. Each generated hour keeps its records pre-formatted as JSON text (a small LRU of
 * hours) so that serving a page is a concatenation, not a JSON tree walk.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "hash.h"
#include "sim.h"
#include "timeutil.h"
#include "xmalloc.h"

/* The meter ids of ../shared/testdata/meters.tsv (documented Azure Stack Hub meters). */
static const char *const default_meters[] = {
        "F271A8A388C44D93956A063E1D2FA80B",     "9E2739BA86744796B465F64674B822BA",
        "B4438D5D-453B-4EE1-B42A-DC72E377F1E4", "B5C15376-6C94-4FDD-B655-1A69D138ACA3",
        "B03C6AE7-B080-4BFA-84A3-22C800F315C6", "09F8879E-87E9-4305-A572-4B7BE209F857",
        "B9FF3CD0-28AA-4762-84BB-FF8FBAEA6A90", "50A1AEAF-8ECA-48A0-8973-A5B3077FEE0D",
        "1B8C1DEC-EE42-414B-AA36-6229CF199370", "43DAF82B-4618-444A-B994-40C23F7CD438",
        "9764F92C-E44A-498E-8DC1-AAD66587A810", "3023FEF4-ECA5-4D7B-87B3-CFBC061931E8",
        "EB43DD12-1AA6-4C4B-872C-FAF15A6785EA", "E518E809-E369-4A45-9274-2017B29FFF25",
        "DD0A10BA-A5D6-4CB6-88C0-7D585CEF9FC2", "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5",
        "9CD92D4C-BAFD-4492-B278-BEDC2DE8232A", "6DAB500F-A4FD-49C4-956D-229BB9C8C793",
        "380874f9-300c-48e0-95a0-d2d9a21ade8f", "1b77d90f-427b-4435-b4f1-d78adec53222",
        "d5f7731b-f639-404a-89d0-e46186e22c8d", "ff85ef31-da5b-4eac-95dd-a69d6f97b18a",
        "88ea9228-457a-4091-adc9-ad5194f30b6e", "5b1db88a-8596-4002-8052-347947c26940",
        "7660b45b-b29d-49cb-b816-59f30fbab011", "817007fd-a077-477f-bc01-b876f27205fd",
        "e554b6bc-96cd-4938-a5b5-0da990278519", "cdc0f53a-62a9-4472-a06c-e99a23b02907",
        "b9cb2d1a-84c2-4275-aa8b-70d2145d59aa", "06bde724-9f94-43c0-84c3-d0fc54538369",
        "7ba084ec-ef9c-4d64-a179-7732c6cb5e28", "daef389a-06e5-4684-a7f7-8813d9f792d5",
        "108fa95b-be0d-4cd9-96e8-5b0d59505df1", "578ae51d-4ef9-42f9-85ae-42b52d3d83ac",
        "CBCFEF9A-B91F-4597-A4D3-01FE334BED82", "E6D8CFCD-7734-495E-B1CC-5AB0B9C24BD3",
        "EBF13B9F-B3EA-46FE-BF54-396E93D48AB4", "2C354225-B2FE-42E5-AD89-14F0EA302C87",
        "190C935E-9ADA-48FF-9AB8-56EA1CF9ADAA", "67CC4AFC-0691-48E1-A4B8-D744D1FEDBDE",
        "D1D04836-075C-4F27-BF65-0A1130EC60ED", "957E9F36-2C14-45A1-B6A1-1723EF71A01D",
        "539CDEC7-B4F5-49F6-AAC4-1F15CFF0EDA9", "88039D51-A206-3A89-E9DE-C5117E2D10A6",
        "83A2A13E-4788-78DD-5D55-2831B68ED825", "1083B9DB-E9BB-24BE-A5E9-D6FDD0DDEFE6",
        "264ACB47-AD38-47F8-ADD3-47F01DC4F473", "60B42D72-DC1C-472C-9895-6C516277EDB4",
        "73215A6C-FA54-4284-B9C1-7E8EC871CC5B", "5887D39B-0253-4E12-83C7-03E1A93DFFD9",
};

static const char *const resource_kinds[][2] = {
        {"Microsoft.Compute/virtualMachines", "vm"},
        {"Microsoft.Storage/storageAccounts", "st"},
        {"Microsoft.Network/publicIPAddresses", "pip"},
        {"Microsoft.Compute/disks", "disk"},
};

static int load_tenants(struct sim_world *w, json_t *sc, uint64_t *rng, char **ret_error);
static int load_clients(struct sim_world *w, json_t *sc, char **ret_error);
static int load_meters(struct sim_world *w, json_t *sc, char **ret_error);
static void make_resources(struct sim_world *w, unsigned per_sub);
static void generate_hour(struct sim_world *w, struct sim_hour *h, int64_t hour);
static void generate_record(const struct sim_world *w, uint64_t *rng, int64_t hour, size_t i,
                            struct sim_record *rec);
static char *escape_json(const char *s);
static const char *get_str(json_t *o, const char *key, const char *dflt);
static long get_int(json_t *o, const char *key, long dflt);
static void lower_copy(char *dst, const char *src, size_t size);

/* One step of splitmix64: the simulator's only source of generated randomness. */
uint64_t
world_splitmix(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* Make a lower-case version-4-shaped GUID from the generator. */
void
world_guid(uint64_t *state, char out[static SIM_GUID_LEN + 1])
{
	uint64_t a = world_splitmix(state), b = world_splitmix(state);

	snprintf(out, SIM_GUID_LEN + 1, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
	         (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff,
	         (unsigned)(0x8000 | ((b >> 48) & 0x3fff)),
	         (unsigned long long)(b & UINT64_C(0xffffffffffff)));
}

/* Tell whether s is a GUID (36 characters, dashes in place); lower_only rejects upper case. */
bool
world_is_guid(const char *s, bool lower_only)
{
	if (!s || strlen(s) != SIM_GUID_LEN)
		return false;
	for (size_t i = 0; i < SIM_GUID_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i]) ||
		           (lower_only && isupper((unsigned char)s[i]))) {
			return false;
		}
	}
	return true;
}

/* Build the world from a scenario; ret_error gets a message on failure. */
int
world_load(struct sim_world *w, json_t *sc, char **ret_error)
{
	json_t *reg = json_object_get(sc, "registration");
	json_t *aud = json_object_get(sc, "audiences");
	json_t *hours = json_object_get(sc, "hours");
	json_t *commerce = json_object_get(sc, "commerce");
	json_t *empty = json_object_get(sc, "emptyHours");
	uint64_t rng;
	const char *s;
	long v;
	int r;

	memset(w, 0, sizeof(*w));
	for (size_t i = 0; i < SIM_HOUR_CACHE; i++)
		w->cache[i].hour = -1;
	if (!json_is_object(sc)) {
		*ret_error = xstrdup("scenario: not a JSON object");
		return -EINVAL;
	}
	v = get_int(sc, "seed", 1);
	w->seed = (uint64_t)v;
	rng = w->seed;

	s = get_str(sc, "identity", "aad");
	if (!streq(s, "aad") && !streq(s, "adfs")) {
		*ret_error = xstrdup("scenario: identity: aad or adfs");
		return -EINVAL;
	}
	w->adfs = streq(s, "adfs");
	w->aad_tenant = xstrdup(get_str(sc, "aadTenant", ""));

	world_guid(&rng, w->provider_sub);
	world_guid(&rng, w->reg_sub);
	world_guid(&rng, w->cloud_id);
	world_guid(&rng, w->object_id);
	s = get_str(sc, "providerSubscription", NULL);
	if (s)
		lower_copy(w->provider_sub, s, sizeof(w->provider_sub));
	s = get_str(reg, "subscriptionId", NULL);
	if (s)
		lower_copy(w->reg_sub, s, sizeof(w->reg_sub));
	s = get_str(reg, "cloudId", NULL);
	if (s)
		lower_copy(w->cloud_id, s, sizeof(w->cloud_id));
	if (!world_is_guid(w->provider_sub, false) || !world_is_guid(w->reg_sub, false) ||
	    !world_is_guid(w->cloud_id, false)) {
		*ret_error =
		        xstrdup("scenario: providerSubscription, registration.subscriptionId and "
		                "registration.cloudId must be GUIDs");
		return -EINVAL;
	}
	w->reg_rg = xstrdup(get_str(reg, "resourceGroup", "azurestack"));
	s = get_str(reg, "name", NULL);
	w->reg_name = s ? xstrdup(s) : xasprintf("azurestack-%s", w->cloud_id);
	w->billing_model = xstrdup(get_str(reg, "billingModel", "PayAsYouUse"));
	w->reg_id = xasprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.AzureStack/"
	                      "registrations/%s",
	                      w->reg_sub, w->reg_rg, w->reg_name);
	w->reg_id_lower = xstrdup(w->reg_id);
	for (char *p = w->reg_id_lower; *p; p++)
		*p = (char)tolower((unsigned char)*p);

	w->aud_stack = xstrdup(get_str(aud, "stack",
	                               w->adfs ? "https://management.adfs.azurestack.local/"
	                                         "e2bf6aa1-7a8f-4bb9-b8cb-caef446339ec"
	                                       : "https://contoso.onmicrosoft.com/"
	                                         "4de154de-f8a8-4017-af41-df619da68155"));
	w->aud_arm = xstrdup(get_str(aud, "arm", "https://management.azure.com/"));
	w->aud_commerce = xstrdup(get_str(aud, "commerce", "https://commerce.azsim.local/"));
	w->require_auth = !json_is_false(json_object_get(sc, "requireAuth"));

	r = load_meters(w, sc, ret_error);
	if (r < 0)
		return r;
	r = load_tenants(w, sc, &rng, ret_error);
	if (r < 0)
		return r;
	v = get_int(sc, "resourcesPerSubscription", 3);
	if (v < 1 || v > 1000) {
		*ret_error = xstrdup("scenario: resourcesPerSubscription: 1..1000");
		return -EINVAL;
	}
	make_resources(w, (unsigned)v);

	s = get_str(hours, "from", "2026-11-01T00:00:00Z");
	if (time_parse_rfc3339(s, &w->hour_from) < 0 || !time_on_hour(w->hour_from)) {
		*ret_error = xstrdup("scenario: hours.from: an RFC 3339 time on the hour");
		return -EINVAL;
	}
	v = get_int(hours, "count", 48);
	if (v < 0 || v > 24 * 366) {
		*ret_error = xstrdup("scenario: hours.count: 0..8784");
		return -EINVAL;
	}
	w->hour_count = (size_t)v;
	if (json_is_array(empty)) {
		w->n_empty = json_array_size(empty);
		w->empty_hours = xcalloc(w->n_empty + 1, sizeof(int64_t));
		for (size_t i = 0; i < w->n_empty; i++) {
			const char *t = json_string_value(json_array_get(empty, i));

			if (!t || time_parse_rfc3339(t, &w->empty_hours[i]) < 0) {
				*ret_error = xstrdup("scenario: emptyHours: RFC 3339 times");
				return -EINVAL;
			}
		}
	}
	v = get_int(sc, "recordsPerHour", 20);
	if (v < 0 || v > 10000000) {
		*ret_error = xstrdup("scenario: recordsPerHour: 0..10000000");
		return -EINVAL;
	}
	w->records_per_hour = (unsigned)v;
	v = get_int(sc, "latePercent", 10);
	if (v < 0 || v > 100) {
		*ret_error = xstrdup("scenario: latePercent: 0..100");
		return -EINVAL;
	}
	w->late_percent = (unsigned)v;
	v = get_int(sc, "pageSize", 1000);
	if (v < 1 || v > 1000) {
		*ret_error = xstrdup("scenario: pageSize: 1..1000");
		return -EINVAL;
	}
	w->page_size = (unsigned)v;
	w->sub_page_size = (unsigned)MAX(1, get_int(sc, "subscriptionPageSize", 100));
	w->arm_page_size = (unsigned)MAX(1, get_int(sc, "armPageSize", 50));
	w->token_lifetime = (unsigned)MAX(1, get_int(sc, "tokenLifetime", 3600));

	w->commerce_path = xstrdup(get_str(commerce, "path", "/api/usageEvents/batch"));
	w->max_events = (unsigned)MAX(1, get_int(commerce, "maxEvents", 1000));
	w->max_bytes = (size_t)MAX(1, get_int(commerce, "maxBytes", 4 * 1024 * 1024));

	r = load_clients(w, sc, ret_error);
	if (r < 0)
		return r;
	if (json_is_array(json_object_get(sc, "faults")))
		w->faults = json_incref(json_object_get(sc, "faults"));
	return 0;
}

/* Release everything the world owns. */
void
world_free(struct sim_world *w)
{
	for (size_t i = 0; i < SIM_HOUR_CACHE; i++) {
		struct sim_hour *h = &w->cache[i];

		if (h->text)
			for (size_t j = 0; j < h->n; j++)
				free(h->text[j]);
		free(h->text);
		free(h->len);
		free(h->recs);
	}
	for (size_t i = 0; i < w->n_res; i++) {
		free(w->res[i].uri);
		free(w->res[i].uri_lower);
		free(w->res[i].instance_escaped);
	}
	for (size_t i = 0; i < w->n_meters; i++) {
		free(w->meters[i]);
		free(w->meter_keys[i]);
	}
	free(w->meter_keys);
	for (size_t i = 0; i < w->n_clients; i++) {
		free(w->clients[i].client_id);
		free_secret(w->clients[i].secret);
		free(w->clients[i].cert_path);
		free(w->clients[i].x5t);
		EVP_PKEY_free(w->clients[i].pubkey);
	}
	free(w->clients);
	free(w->meters);
	free(w->res);
	free(w->subs);
	free(w->tenants);
	free(w->empty_hours);
	free(w->aad_tenant);
	free(w->reg_rg);
	free(w->reg_name);
	free(w->reg_id);
	free(w->reg_id_lower);
	free(w->billing_model);
	free(w->aud_stack);
	free(w->aud_arm);
	free(w->aud_commerce);
	free(w->commerce_path);
	json_decref(w->faults);
	memset(w, 0, sizeof(*w));
}

/* Put the customer subscriptions back to what the scenario made. */
void
world_reset_registrations(struct sim_world *w)
{
	for (size_t i = 0; i < w->n_tenants; i++)
		memcpy(w->tenants[i].customer, w->tenants[i].initial_customer,
		       sizeof(w->tenants[i].customer));
	w->reg_gen++;
}

/* Tell whether a reported hour holds usage in this scenario. */
bool
world_hour_has_usage(const struct sim_world *w, int64_t hour)
{
	if (hour < w->hour_from || hour >= w->hour_from + (int64_t)w->hour_count * 3600)
		return false;
	for (size_t i = 0; i < w->n_empty; i++)
		if (w->empty_hours[i] == hour)
			return false;
	return w->records_per_hour > 0 && w->n_res > 0;
}

/* The records of one reported hour, generated once and kept in a small LRU; NULL when empty. */
const struct sim_hour *
world_hour(struct sim_world *w, int64_t hour)
{
	struct sim_hour *victim = &w->cache[0];

	if (!world_hour_has_usage(w, hour))
		return NULL;
	for (size_t i = 0; i < SIM_HOUR_CACHE; i++) {
		struct sim_hour *h = &w->cache[i];

		if (h->hour == hour) {
			h->last_used = ++w->cache_tick;
			return h;
		}
		if (h->last_used < victim->last_used)
			victim = h;
	}
	generate_hour(w, victim, hour);
	victim->last_used = ++w->cache_tick;
	return victim;
}

/*
 * The records of one reported hour without formatting them and without the cache (for the
 * expected charges); out has room for records_per_hour records. Returns how many (0: empty).
 */
size_t
world_hour_records(const struct sim_world *w, int64_t hour, struct sim_record *out)
{
	uint64_t rng = w->seed ^ ((uint64_t)hour * UINT64_C(0x9E3779B97F4A7C15));

	if (!world_hour_has_usage(w, hour))
		return 0;
	for (size_t i = 0; i < w->records_per_hour; i++)
		generate_record(w, &rng, hour, i, &out[i]);
	return w->records_per_hour;
}

/* Write the quantity literal of a record: 10 decimals, or an integer, or 2 decimals. */
void
world_quantity_text(uint64_t quantity, uint8_t style, char out[static 32])
{
	unsigned long long ip = (unsigned long long)(quantity / SIM_QTY_SCALE);
	unsigned long long fp = (unsigned long long)(quantity % SIM_QTY_SCALE);

	if (style == 1 && fp == 0)
		snprintf(out, 32, "%llu", ip);
	else if (style == 2 && fp % 100000000 == 0)
		snprintf(out, 32, "%llu.%02llu", ip, fp / 100000000);
	else
		snprintf(out, 32, "%llu.%010llu", ip, fp);
}

/* Append one record as the usage API writes it (compact JSON, quantity a number literal). */
void
world_format_record(const struct sim_world *w, const struct sim_record *rec, uint64_t quantity,
                    struct evbuffer *out)
{
	const struct sim_resource *res = &w->res[rec->resource];
	const char *sub = w->subs[res->usersub].id;
	const char *meter = w->meters[rec->meter];
	char ts[32], te[32], q[32];

	world_format_time(rec->usage_start, false, ts);
	world_format_time(rec->usage_start + 3600, false, te);
	world_quantity_text(quantity, rec->style, q);
	evbuffer_add_printf(out,
	                    "{\"id\":\"/subscriptions/%s/providers/Microsoft.Commerce.Admin/"
	                    "UsageAggregate/%s-%s\",\"name\":\"%s-%s\","
	                    "\"type\":\"Microsoft.Commerce.Admin/UsageAggregate\","
	                    "\"properties\":{\"subscriptionId\":\"%s\",\"usageStartTime\":\"%s\","
	                    "\"usageEndTime\":\"%s\",\"instanceData\":\"%s\",\"quantity\":%s,"
	                    "\"meterId\":\"%s\"}}",
	                    w->provider_sub, sub, meter, sub, meter, sub, ts, te,
	                    res->instance_escaped, q, meter);
}

/* Compute the record key of ARCHITECTURE.md section 4 for a generated record. */
void
world_record_key(const struct sim_world *w, int64_t hour, const struct sim_record *rec,
                 char out[static SIM_KEY_LEN + 1])
{
	const struct sim_resource *res = &w->res[rec->resource];
	const char *meter = w->meter_keys[rec->meter];
	char th[32], ts[32], te[32], buf[1024];
	size_t n = 0, ml = strlen(meter);

	_Static_assert(SIM_KEY_LEN == HASH_SHA256_HEX_LEN, "a record key is a SHA-256 hex digest");
	world_format_time(hour, true, th);
	world_format_time(rec->usage_start, true, ts);
	world_format_time(rec->usage_start + 3600, true, te);
	if (4 * (TIME_RFC3339_LEN + 1) + SIM_GUID_LEN + ml + res->uri_lower_len > sizeof(buf))
		abort();
	/* hour, subscription, meter, start, end, resource: joined by \n (the fields are known) */
	memcpy(buf + n, th, TIME_RFC3339_LEN);
	n += TIME_RFC3339_LEN;
	buf[n++] = '\n';
	memcpy(buf + n, w->subs[res->usersub].id, SIM_GUID_LEN);
	n += SIM_GUID_LEN;
	buf[n++] = '\n';
	memcpy(buf + n, meter, ml);
	n += ml;
	buf[n++] = '\n';
	memcpy(buf + n, ts, TIME_RFC3339_LEN);
	n += TIME_RFC3339_LEN;
	buf[n++] = '\n';
	memcpy(buf + n, te, TIME_RFC3339_LEN);
	n += TIME_RFC3339_LEN;
	buf[n++] = '\n';
	memcpy(buf + n, res->uri_lower, res->uri_lower_len);
	n += res->uri_lower_len;
	hash_sha256_hex(buf, n, out);
}

/* The subscription a user subscription's usage is charged to now, and why. */
const char *
world_charged(const struct sim_world *w, size_t usersub, const char **ret_reason)
{
	const struct sim_tenant *t = &w->tenants[w->subs[usersub].tenant];

	if (t->unlisted) {
		*ret_reason = "unknown-subscription";
		return w->reg_sub;
	}
	if (t->customer[0]) {
		*ret_reason = "registered";
		return t->customer;
	}
	*ret_reason = "default";
	return w->reg_sub;
}

/* Index of a tenant by directory tenant id (any case), or -ENOENT. */
int
world_find_tenant(const struct sim_world *w, const char *tenant_id)
{
	for (size_t i = 0; i < w->n_tenants; i++)
		if (strcasecmp(w->tenants[i].id, tenant_id) == 0)
			return (int)i;
	return -ENOENT;
}

/* Index of a user subscription by id (any case), or -ENOENT. */
int
world_find_usersub(const struct sim_world *w, const char *sub_id)
{
	for (size_t i = 0; i < w->n_subs; i++)
		if (strcasecmp(w->subs[i].id, sub_id) == 0)
			return (int)i;
	return -ENOENT;
}

/* Describe the world for tests (GET /_sim/world): ids a daemon configuration needs. */
void
world_describe(const struct sim_world *w, json_t *out)
{
	json_t *tenants = json_array(), *meters = json_array();
	char from[32];

	for (size_t i = 0; i < w->n_tenants; i++) {
		json_t *subs = json_array();

		for (size_t j = 0; j < w->n_subs; j++)
			if (w->subs[j].tenant == i)
				json_array_append_new(subs, json_string(w->subs[j].id));
		json_array_append_new(
		        tenants,
		        json_pack("{s:s, s:s, s:o, s:s?, s:b}", "tenantId", w->tenants[i].id,
		                  "name", w->tenants[i].name, "subscriptions", subs,
		                  "customerSubscription",
		                  w->tenants[i].customer[0] ? w->tenants[i].customer : NULL,
		                  "listed", !w->tenants[i].unlisted));
	}
	for (size_t i = 0; i < w->n_meters; i++)
		json_array_append_new(meters, json_string(w->meters[i]));
	world_format_time(w->hour_from, true, from);
	json_object_set_new(out, "seed", json_integer((json_int_t)w->seed));
	json_object_set_new(out, "identity", json_string(w->adfs ? "adfs" : "aad"));
	json_object_set_new(out, "providerSubscription", json_string(w->provider_sub));
	json_object_set_new(out, "registration",
	                    json_pack("{s:s, s:s, s:s, s:s, s:s}", "id", w->reg_id,
	                              "subscriptionId", w->reg_sub, "resourceGroup", w->reg_rg,
	                              "name", w->reg_name, "cloudId", w->cloud_id));
	json_object_set_new(out, "defaultSubscription", json_string(w->reg_sub));
	json_object_set_new(out, "audiences",
	                    json_pack("{s:s, s:s, s:s}", "stack", w->aud_stack, "arm", w->aud_arm,
	                              "commerce", w->aud_commerce));
	json_object_set_new(out, "tenants", tenants);
	json_object_set_new(out, "meters", meters);
	json_object_set_new(
	        out, "hours",
	        json_pack("{s:s, s:I}", "from", from, "count", (json_int_t)w->hour_count));
	json_object_set_new(out, "recordsPerHour", json_integer(w->records_per_hour));
	json_object_set_new(out, "pageSize", json_integer(w->page_size));
	json_object_set_new(out, "commercePath", json_string(w->commerce_path));
	json_object_set_new(out, "tokenLifetime", json_integer(w->token_lifetime));
}

/* Read the tenants: a count (with registeredTenants) or a list of tenant objects. */
static int
load_tenants(struct sim_world *w, json_t *sc, uint64_t *rng, char **ret_error)
{
	json_t *list = json_object_get(sc, "tenants");
	long per_tenant = get_int(sc, "subscriptionsPerTenant", 2);
	long registered = get_int(sc, "registeredTenants", 2);
	size_t n = json_is_array(list) ? json_array_size(list)
	                               : (size_t)MAX(0, get_int(sc, "tenants", 3));

	if (n > 100000 || per_tenant < 0 || per_tenant > 10000) {
		*ret_error = xstrdup("scenario: tenants / subscriptionsPerTenant out of range");
		return -EINVAL;
	}
	w->tenants = xcalloc(n + 1, sizeof(*w->tenants));
	w->n_tenants = n;
	for (size_t i = 0; i < n; i++) {
		struct sim_tenant *t = &w->tenants[i];
		json_t *o = json_array_get(list, i);
		json_t *subs = json_object_get(o, "subscriptions");
		json_t *reg = json_object_get(o, "registered");
		size_t nsubs = json_is_array(subs)
		                       ? json_array_size(subs)
		                       : (size_t)get_int(o, "subscriptions", per_tenant);
		char customer[SIM_GUID_LEN + 1];
		const char *s;

		world_guid(rng, t->id);
		world_guid(rng, customer);
		s = get_str(o, "tenantId", NULL);
		if (s)
			lower_copy(t->id, s, sizeof(t->id));
		snprintf(t->name, sizeof(t->name), "%s", get_str(o, "name", ""));
		if (!t->name[0])
			snprintf(t->name, sizeof(t->name), "tenant%zu", i + 1);
		if (!world_is_guid(t->id, false)) {
			*ret_error = xasprintf("scenario: tenants[%zu].tenantId: not a GUID", i);
			return -EINVAL;
		}
		if (json_is_string(reg))
			lower_copy(t->customer, json_string_value(reg), sizeof(t->customer));
		else if (json_is_true(reg) || (!o && (long)i < registered))
			memcpy(t->customer, customer, sizeof(customer));
		if (t->customer[0] && !world_is_guid(t->customer, false)) {
			*ret_error = xasprintf("scenario: tenants[%zu].registered: not a GUID", i);
			return -EINVAL;
		}
		memcpy(t->initial_customer, t->customer, sizeof(t->customer));
		t->unlisted = json_is_false(json_object_get(o, "listed"));
		w->subs = xreallocarray(w->subs, w->n_subs + nsubs + 1, sizeof(*w->subs));
		for (size_t j = 0; j < nsubs; j++) {
			struct sim_usersub *u = &w->subs[w->n_subs++];

			memset(u, 0, sizeof(*u));
			world_guid(rng, u->id);
			s = json_string_value(json_array_get(subs, j));
			if (s)
				lower_copy(u->id, s, sizeof(u->id));
			if (!world_is_guid(u->id, false)) {
				*ret_error = xasprintf("scenario: tenants[%zu].subscriptions[%zu]: "
				                       "not a GUID",
				                       i, j);
				return -EINVAL;
			}
			u->tenant = i;
			u->disabled = streq(get_str(o, "state", "Enabled"), "Disabled");
			snprintf(u->display, sizeof(u->display), "%.31s sub%zu", t->name, j + 1);
		}
	}
	return 0;
}

/* Read the identity clients: client id with a secret and/or a certificate PEM path. */
static int
load_clients(struct sim_world *w, json_t *sc, char **ret_error)
{
	json_t *list = json_object_get(sc, "clients");
	size_t n = json_array_size(list);

	w->clients = xcalloc(n + 1, sizeof(*w->clients));
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(list, i);
		struct sim_client *c = &w->clients[w->n_clients++];
		const char *id = get_str(o, "clientId", NULL);
		const char *secret = get_str(o, "secret", NULL);
		const char *cert = get_str(o, "certificate", NULL);

		if (!id || (!secret && !cert)) {
			*ret_error = xasprintf("scenario: clients[%zu]: clientId and secret or "
			                       "certificate required",
			                       i);
			return -EINVAL;
		}
		c->client_id = xstrdup(id);
		c->secret = secret ? xstrdup(secret) : NULL;
		if (cert) {
			unsigned char *der = NULL, md[SHA_DIGEST_LENGTH];
			FILE *f = fopen(cert, "re");
			X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
			int len;

			if (f)
				fclose(f);
			if (!x) {
				*ret_error =
				        xasprintf("scenario: clients[%zu].certificate: cannot read "
				                  "a PEM certificate from %s",
				                  i, cert);
				return -EINVAL;
			}
			len = i2d_X509(x, &der);
			if (len <= 0) {
				X509_free(x);
				*ret_error = xstrdup("scenario: certificate: cannot encode DER");
				return -EINVAL;
			}
			SHA1(der, (size_t)len, md);
			OPENSSL_free(der);
			c->x5t = identity_b64(md, sizeof(md), true);
			c->pubkey = X509_get_pubkey(x);
			X509_free(x);
			c->cert_path = xstrdup(cert);
			if (!c->pubkey) {
				*ret_error = xstrdup("scenario: certificate: no public key");
				return -EINVAL;
			}
		}
	}
	return 0;
}

/* Take the meters from the scenario, or the documented list. */
static int
load_meters(struct sim_world *w, json_t *sc, char **ret_error)
{
	json_t *list = json_object_get(sc, "meters");
	size_t n = json_is_array(list) ? json_array_size(list) : ARRAY_SIZE(default_meters);

	if (n == 0) {
		*ret_error = xstrdup("scenario: meters: at least one");
		return -EINVAL;
	}
	w->meters = xcalloc(n, sizeof(char *));
	w->meter_keys = xcalloc(n, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		const char *m = json_is_array(list) ? json_string_value(json_array_get(list, i))
		                                    : default_meters[i];
		char *k;

		if (isempty(m) || strlen(m) > 40 || strpbrk(m, "\"\\/")) {
			*ret_error = xasprintf("scenario: meters[%zu]: not a meter id", i);
			return -EINVAL;
		}
		w->meters[w->n_meters] = xstrdup(m);
		w->meter_keys[w->n_meters++] = k = xstrdup(m);
		for (const char *p = m; *p; p++)
			if (*p != '-')
				*k++ = (char)tolower((unsigned char)*p);
		*k = '\0';
	}
	return 0;
}

/* Give every user subscription its resources, with pre-escaped instanceData. */
static void
make_resources(struct sim_world *w, unsigned per_sub)
{
	w->res = xcalloc(w->n_subs * per_sub + 1, sizeof(*w->res));
	for (size_t s = 0; s < w->n_subs; s++) {
		for (unsigned k = 0; k < per_sub; k++) {
			struct sim_resource *r = &w->res[w->n_res];
			const char *const *kind = resource_kinds[k % ARRAY_SIZE(resource_kinds)];
			const char *tags = "null", *info = "null";
			_cleanup_free_ char *doc = NULL;

			r->usersub = s;
			r->uri = xasprintf(
			        "/subscriptions/%s/resourceGroups/rg%u/providers/%s/%s%02u",
			        w->subs[s].id, k / 4 + 1, kind[0], kind[1], k + 1);
			r->uri_lower = xstrdup(r->uri);
			for (char *p = r->uri_lower; *p; p++)
				*p = (char)tolower((unsigned char)*p);
			r->uri_lower_len = strlen(r->uri_lower);
			if (w->n_res % 3 == 1)
				tags = "{\"costcenter\":\"4711\"}";
			else if (w->n_res % 5 == 2)
				tags = "{\"owner\":\"R&D \\\"lab\\\"\"}";
			if (k % 4 == 0)
				info = "{\"ServiceType\":\"Standard_D2_v2\","
				       "\"ImageType\":\"Windows_Server\"}";
			doc = xasprintf(
			        "{\"Microsoft.Resources\":{\"resourceUri\":\"%s\",\"location\":"
			        "\"local\",\"tags\":%s,\"additionalInfo\":%s}}",
			        r->uri, tags, info);
			r->instance_escaped = escape_json(doc);
			r->tags = tags;
			r->info = info;
			r->meter_offset = (unsigned)((w->n_res * 7 + 3) % w->n_meters);
			w->n_res++;
		}
	}
}

/* Generate the records of one hour into a cache slot, each pre-formatted. */
static void
generate_hour(struct sim_world *w, struct sim_hour *h, int64_t hour)
{
	uint64_t rng = w->seed ^ ((uint64_t)hour * UINT64_C(0x9E3779B97F4A7C15));
	struct evbuffer *b = evbuffer_new();

	if (h->text)
		for (size_t j = 0; j < h->n; j++)
			free(h->text[j]);
	h->n = w->records_per_hour;
	h->hour = hour;
	h->recs = xreallocarray(h->recs, h->n + 1, sizeof(*h->recs));
	h->text = xreallocarray(h->text, h->n + 1, sizeof(char *));
	h->len = xreallocarray(h->len, h->n + 1, sizeof(size_t));
	if (!b)
		abort();
	for (size_t i = 0; i < h->n; i++) {
		generate_record(w, &rng, hour, i, &h->recs[i]);
		world_format_record(w, &h->recs[i], h->recs[i].quantity, b);
		h->len[i] = evbuffer_get_length(b);
		h->text[i] = xmalloc(h->len[i] + 1);
		evbuffer_remove(b, h->text[i], h->len[i]);
		h->text[i][h->len[i]] = '\0';
	}
	evbuffer_free(b);
}

/*
 * Generate record i of an hour. Resource, meter and usage hour are laid out so that no two
 * records of one reported hour share a record key: within each block of n_res records every
 * resource appears once, its meter advances per block, and after all meters the usage hour moves
 * back by six hours (late records move back by one to five).
 */
static void
generate_record(const struct sim_world *w, uint64_t *rng, int64_t hour, size_t i,
                struct sim_record *rec)
{
	size_t rot = (size_t)((hour / 3600) * 7 % (int64_t)w->n_res);
	size_t j = i / w->n_res;
	uint64_t r1 = world_splitmix(rng), r2 = world_splitmix(rng);
	unsigned late = 0, kind = (unsigned)(r1 % 100);

	rec->resource = (i + rot) % w->n_res;
	rec->meter = (j + w->res[rec->resource].meter_offset) % w->n_meters;
	if ((r1 >> 8) % 100 < w->late_percent)
		late = 1 + (unsigned)((r1 >> 16) % 5);
	rec->usage_start = hour - 3600 - (int64_t)((j / w->n_meters) * 6 + late) * 3600;
	if (kind < 5) {
		rec->style = 1; /* integer literal */
		rec->quantity = (r2 % 50 + 1) * SIM_QTY_SCALE;
	} else if (kind < 15) {
		rec->style = 0; /* 17 significant digits */
		rec->quantity =
		        (1000000 + r2 % 9000000) * SIM_QTY_SCALE + (r2 >> 20) % SIM_QTY_SCALE;
	} else if (kind < 20) {
		rec->style = 2; /* two decimals */
		rec->quantity = (r2 % 100000) * UINT64_C(100000000);
	} else {
		rec->style = 0;
		rec->quantity = r2 % (1000 * SIM_QTY_SCALE);
	}
}

/* Write a time as the usage API does ("+00:00") or as keys and Commerce do ("Z"). */
void
world_format_time(int64_t t, bool zulu, char out[static 32])
{
	time_format_rfc3339(t, out);
	if (!zulu && strlen(out) == TIME_RFC3339_LEN)
		memcpy(out + TIME_RFC3339_LEN - 1, "+00:00", sizeof("+00:00"));
}

/* Escape a JSON text so it can sit inside a JSON string literal. */
static char *
escape_json(const char *s)
{
	char *out = xmalloc(strlen(s) * 2 + 1), *p = out;

	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			*p++ = '\\';
		*p++ = *s;
	}
	*p = '\0';
	return out;
}

/* A string member, or dflt. */
static const char *
get_str(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : dflt;
}

/* An integer member, or dflt. */
static long
get_int(json_t *o, const char *key, long dflt)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

/* Copy a string lower-cased, truncating to size. */
static void
lower_copy(char *dst, const char *src, size_t size)
{
	size_t i = 0;

	for (; src[i] && i < size - 1; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[i] = '\0';
}
