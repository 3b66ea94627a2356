/*
 * The simulated world: a scenario (JSON) read once, and everything that follows from it and its
 * seed. Tenants, user subscriptions, resources and the registration are made at load time; the
 * usage records of a reported hour are generated on demand from (seed, hour) alone, so the same
 * scenario always gives the same records, and any hour can be regenerated for the expected
 * charges. The records of the last hours served stay in a small LRU of hours; a page writes
 * its records as JSON text by hand as it is served, without a JSON tree or printf.
 *
 * What the records look like follows a real stamp: each resource kind reports its own meters,
 * with quantities per meter as the documented units imply (known_meters); split aggregates
 * repeat a resource, meter and hour with another instanceData; the record key ends with the
 * canonical instanceData, written here by hand (make_instance) rather than by jansson.
 */
#include <assert.h>
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

/* Resource kinds: which meters their records use (see known_meters). */
enum kind {
	K_VM,
	K_STORAGE,
	K_IP,
	K_DISK,
	K_WEB,
	K_VAULT,
	K_SQL,
	K_MYSQL,
	K_MAX,
};

/* How a meter's quantities look on a real stamp (per hour and resource). */
enum model {
	M_GENERIC,        /* a meter id this table does not know: a mix of literals */
	M_CORE_HOURS,     /* virtual core hours: the VM's cores × the part of the hour it ran */
	M_HOURS,          /* VM, IP address, App Service hours: the part of the hour, 0..1 */
	M_GB_HOURS,       /* capacity in GB-hours: many decimals */
	M_TEN_THOUSANDS,  /* request counts in 10,000s */
	M_TENS,           /* request counts in tens */
	M_DATA_GB,        /* transferred GB: bytes / 10^9 */
	M_GB_SECONDS,     /* GB-s */
	M_DISK_MONTHS,    /* count of disks × month: 1/730 for a whole hour */
	M_DISK_GB_MONTHS, /* disk GB × month */
	M_MB_HOURS,       /* database size in MB × hours */
};

#define PARTIAL_PERCENT 15 /* records for only part of the hour (a VM stopped, an IP freed) */

_Static_assert(K_MAX == SIM_KINDS, "sim.h counts the resource kinds");

/*
 * The meters of ../shared/testdata/meters.tsv (documented Azure Stack Hub meters), in that order
 * (the default meter list), with the kind of resource that reports them and their model.
 */
static const struct {
	const char *id;
	uint8_t kind;
	uint8_t model;
} known_meters[] = {
        {"F271A8A388C44D93956A063E1D2FA80B", K_IP, M_HOURS}, /* Static IP Address Usage */
        {"9E2739BA86744796B465F64674B822BA", K_IP, M_HOURS}, /* Dynamic IP Address Usage */
        {"B4438D5D-453B-4EE1-B42A-DC72E377F1E4", K_STORAGE, M_GB_HOURS}, /* TableCapacity */
        {"B5C15376-6C94-4FDD-B655-1A69D138ACA3", K_STORAGE, M_GB_HOURS}, /* PageBlobCapacity */
        {"B03C6AE7-B080-4BFA-84A3-22C800F315C6", K_STORAGE, M_GB_HOURS}, /* QueueCapacity */
        {"09F8879E-87E9-4305-A572-4B7BE209F857", K_STORAGE, M_GB_HOURS}, /* BlockBlobCapacity */
        {"B9FF3CD0-28AA-4762-84BB-FF8FBAEA6A90", K_STORAGE,
         M_TEN_THOUSANDS},                                              /* TableTransactions */
        {"50A1AEAF-8ECA-48A0-8973-A5B3077FEE0D", K_STORAGE, M_DATA_GB}, /* TableDataTransIn */
        {"1B8C1DEC-EE42-414B-AA36-6229CF199370", K_STORAGE, M_DATA_GB}, /* TableDataTransOut */
        {"43DAF82B-4618-444A-B994-40C23F7CD438", K_STORAGE, M_TEN_THOUSANDS}, /* BlobTransactions */
        {"9764F92C-E44A-498E-8DC1-AAD66587A810", K_STORAGE, M_DATA_GB},       /* BlobDataTransIn */
        {"3023FEF4-ECA5-4D7B-87B3-CFBC061931E8", K_STORAGE, M_DATA_GB},       /* BlobDataTransOut */
        {"EB43DD12-1AA6-4C4B-872C-FAF15A6785EA", K_STORAGE,
         M_TEN_THOUSANDS},                                               /* QueueTransactions */
        {"E518E809-E369-4A45-9274-2017B29FFF25", K_STORAGE, M_DATA_GB},  /* QueueDataTransIn */
        {"DD0A10BA-A5D6-4CB6-88C0-7D585CEF9FC2", K_STORAGE, M_DATA_GB},  /* QueueDataTransOut */
        {"FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5", K_VM, M_CORE_HOURS},    /* Base VM Size Hours */
        {"9CD92D4C-BAFD-4492-B278-BEDC2DE8232A", K_VM, M_CORE_HOURS},    /* Windows VM Size Hours */
        {"6DAB500F-A4FD-49C4-956D-229BB9C8C793", K_VM, M_HOURS},         /* VM size hours */
        {"380874f9-300c-48e0-95a0-d2d9a21ade8f", K_DISK, M_DISK_MONTHS}, /* S4 */
        {"1b77d90f-427b-4435-b4f1-d78adec53222", K_DISK, M_DISK_MONTHS}, /* S6 */
        {"d5f7731b-f639-404a-89d0-e46186e22c8d", K_DISK, M_DISK_MONTHS}, /* S10 */
        {"ff85ef31-da5b-4eac-95dd-a69d6f97b18a", K_DISK, M_DISK_MONTHS}, /* S15 */
        {"88ea9228-457a-4091-adc9-ad5194f30b6e", K_DISK, M_DISK_MONTHS}, /* S20 */
        {"5b1db88a-8596-4002-8052-347947c26940", K_DISK, M_DISK_MONTHS}, /* S30 */
        {"7660b45b-b29d-49cb-b816-59f30fbab011", K_DISK, M_DISK_MONTHS}, /* P4 */
        {"817007fd-a077-477f-bc01-b876f27205fd", K_DISK, M_DISK_MONTHS}, /* P6 */
        {"e554b6bc-96cd-4938-a5b5-0da990278519", K_DISK, M_DISK_MONTHS}, /* P10 */
        {"cdc0f53a-62a9-4472-a06c-e99a23b02907", K_DISK, M_DISK_MONTHS}, /* P15 */
        {"b9cb2d1a-84c2-4275-aa8b-70d2145d59aa", K_DISK, M_DISK_MONTHS}, /* P20 */
        {"06bde724-9f94-43c0-84c3-d0fc54538369", K_DISK, M_DISK_MONTHS}, /* P30 */
        {"7ba084ec-ef9c-4d64-a179-7732c6cb5e28", K_DISK,
         M_DISK_GB_MONTHS}, /* ActualStandardDiskSize */
        {"daef389a-06e5-4684-a7f7-8813d9f792d5", K_DISK,
         M_DISK_GB_MONTHS}, /* ActualPremiumDiskSize */
        {"108fa95b-be0d-4cd9-96e8-5b0d59505df1", K_DISK,
         M_DISK_GB_MONTHS}, /* ...StandardSnapshotSize */
        {"578ae51d-4ef9-42f9-85ae-42b52d3d83ac", K_DISK,
         M_DISK_GB_MONTHS},                                          /* ...PremiumSnapshotSize */
        {"CBCFEF9A-B91F-4597-A4D3-01FE334BED82", K_SQL, M_MB_HOURS}, /* DatabaseSizeHourSqlMeter */
        {"E6D8CFCD-7734-495E-B1CC-5AB0B9C24BD3", K_MYSQL, M_MB_HOURS}, /* ...HourMySqlMeter */
        {"EBF13B9F-B3EA-46FE-BF54-396E93D48AB4", K_VAULT,
         M_TEN_THOUSANDS}, /* Key Vault transactions */
        {"2C354225-B2FE-42E5-AD89-14F0EA302C87", K_VAULT, M_TEN_THOUSANDS}, /* Advanced keys ... */
        {"190C935E-9ADA-48FF-9AB8-56EA1CF9ADAA", K_WEB, M_CORE_HOURS},      /* App Service */
        {"67CC4AFC-0691-48E1-A4B8-D744D1FEDBDE", K_WEB, M_TENS},            /* Functions Requests */
        {"D1D04836-075C-4F27-BF65-0A1130EC60ED", K_WEB, M_GB_SECONDS}, /* Functions - Compute */
        {"957E9F36-2C14-45A1-B6A1-1723EF71A01D", K_WEB, M_HOURS},  /* Shared App Service Hours */
        {"539CDEC7-B4F5-49F6-AAC4-1F15CFF0EDA9", K_WEB, M_HOURS},  /* Free App Service Hours */
        {"88039D51-A206-3A89-E9DE-C5117E2D10A6", K_WEB, M_HOURS},  /* Small Standard ... Hours */
        {"83A2A13E-4788-78DD-5D55-2831B68ED825", K_WEB, M_HOURS},  /* Medium Standard ... Hours */
        {"1083B9DB-E9BB-24BE-A5E9-D6FDD0DDEFE6", K_WEB, M_HOURS},  /* Large Standard ... Hours */
        {"264ACB47-AD38-47F8-ADD3-47F01DC4F473", K_WEB, M_HOURS},  /* SNI SSL */
        {"60B42D72-DC1C-472C-9895-6C516277EDB4", K_WEB, M_HOURS},  /* IP SSL */
        {"73215A6C-FA54-4284-B9C1-7E8EC871CC5B", K_WEB, M_HOURS},  /* Web Process */
        {"5887D39B-0253-4E12-83C7-03E1A93DFFD9", K_IP, M_DATA_GB}, /* External Egress Bandwidth */
};

/* Resource providers and name prefixes of the kinds, in resource order within a subscription. */
static const char *const resource_kinds[K_MAX][2] = {
        [K_VM] = {"Microsoft.Compute/virtualMachines", "vm"},
        [K_STORAGE] = {"Microsoft.Storage/storageAccounts", "st"},
        [K_IP] = {"Microsoft.Network/publicIPAddresses", "pip"},
        [K_DISK] = {"Microsoft.Compute/disks", "disk"},
        [K_WEB] = {"Microsoft.Web/sites", "app"},
        [K_VAULT] = {"Microsoft.KeyVault/vaults", "kv"},
        [K_SQL] = {"Microsoft.SQLAdapter/databases", "sqldb"},
        [K_MYSQL] = {"Microsoft.MySQLAdapter/databases", "mysqldb"},
};

/* A string member of a JSON object (tags and additionalInfo hold only strings here). */
struct member {
	const char *name;
	const char *value;
};

static int load_tenants(struct sim_world *w, json_t *sc, uint64_t *rng, char **ret_error);
static int load_clients(struct sim_world *w, json_t *sc, char **ret_error);
static int load_meters(struct sim_world *w, json_t *sc, char **ret_error);
static void make_resources(struct sim_world *w, unsigned per_sub);
static const char *intern(struct sim_world *w, char *text, size_t *ret_len);
static void make_instance(struct sim_world *w, struct sim_instance *in, const struct member *tags,
                          size_t n_tags, const struct member *info, size_t n_info, bool ascii,
                          unsigned cores);
static char *object_text(const struct member *m, size_t n, bool sorted, bool ascii);
static void string_text(struct evbuffer *b, const char *s, bool ascii);
static void generate_hour(struct sim_world *w, struct sim_hour *h, int64_t hour);
static void generate_records(const struct sim_world *w, int64_t hour, struct sim_record *out);
static void generate_record(const struct sim_world *w, uint64_t *rng, int64_t hour, size_t i,
                            struct sim_record *recs);
static void model_quantity(const struct sim_world *w, struct sim_record *rec, unsigned minutes,
                           uint64_t r);
static void ratio(struct sim_record *rec, uint64_t num, uint64_t den);
static void digits17(struct sim_record *rec, uint64_t r, unsigned int_digits);
static sim_u128 pow10_u128(unsigned n);
static int meter_info(const char *id, unsigned *ret_kind, unsigned *ret_model);
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
	/* 1: a lower-case hex digit, 2: an upper-case one */
	static const uint8_t hex[256] = {
	        ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
	        ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1,
	        ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['A'] = 2, ['B'] = 2,
	        ['C'] = 2, ['D'] = 2, ['E'] = 2, ['F'] = 2,
	};
	/* the places of the hex digits of 8-4-4-4-12 */
	static const uint8_t digits[32] = {
	        0,  1,  2,  3,  4,  5,  6,  7,  9,  10, 11, 12, 14, 15, 16, 17,
	        19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
	};
	unsigned ok = lower_only ? 1 : 3;
	bool bad = false;

	if (!s || strnlen(s, SIM_GUID_LEN + 1) != SIM_GUID_LEN || s[8] != '-' || s[13] != '-' ||
	    s[18] != '-' || s[23] != '-')
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(digits); i++)
		bad |= !(hex[(unsigned char)s[digits[i]]] & ok);
	return !bad;
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
	v = get_int(sc, "splitPercent", 5);
	if (v < 0 || v > 100) {
		*ret_error = xstrdup("scenario: splitPercent: 0..100");
		return -EINVAL;
	}
	w->split_percent = (unsigned)v;
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
	if (json_object_get(sc, "armAnswers"))
		w->arm_answers = json_incref(json_object_get(sc, "armAnswers"));
	return 0;
}

/* Release everything the world owns. */
void
world_free(struct sim_world *w)
{
	for (size_t i = 0; i < SIM_HOUR_CACHE; i++) {
		free(w->cache[i].recs);
	}
	for (size_t i = 0; i < w->n_res; i++)
		free(w->res[i].uri);
	for (size_t i = 0; i < w->n_texts; i++)
		free(w->texts[i]);
	free(w->texts);
	for (size_t i = 0; i < w->n_meters; i++) {
		free(w->meters[i]);
		free(w->meter_keys[i]);
	}
	for (size_t k = 0; k < SIM_KINDS; k++)
		free(w->kind_meters[k]);
	free(w->meter_keys);
	free(w->meter_models);
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
	json_decref(w->arm_answers);
	memset(w, 0, sizeof(*w));
}

/* Put the customer subscriptions and the subscriptions list back to what the scenario made. */
void
world_reset_state(struct sim_world *w)
{
	for (size_t i = 0; i < w->n_tenants; i++)
		memcpy(w->tenants[i].customer, w->tenants[i].initial_customer,
		       sizeof(w->tenants[i].customer));
	for (size_t i = 0; i < w->n_subs; i++)
		w->subs[i].deleted = false;
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
	if (!world_hour_has_usage(w, hour))
		return 0;
	generate_records(w, hour, out);
	return w->records_per_hour;
}

/*
 * Write a quantity literal: integers of 10^-SIM_QTY_DECIMALS shown with at least `decimals`
 * decimals, more when the value needs them (a changed quantity), never an exponent. Returns
 * its length. The value is cut into the integer part and two halves of ten decimals, so that
 * the digits come from 64-bit arithmetic (pages and the ledger's check write one per record).
 */
size_t
world_quantity_text(sim_u128 quantity, uint8_t decimals, char out[static SIM_QTY_TEXT])
{
	const uint64_t e10 = UINT64_C(10000000000);
	sim_u128 upper = quantity / e10;
	uint64_t lo = (uint64_t)(quantity - upper * e10);
	uint64_t ip = (uint64_t)(upper / e10); /* below 2^128 / 10^20 < 2^64 */
	uint64_t hi = (uint64_t)(upper - (sim_u128)ip * e10);
	char frac[SIM_QTY_DECIMALS], digits[24];
	unsigned d = MIN(decimals, (unsigned)SIM_QTY_DECIMALS), n = 0, k = 0;

	_Static_assert(SIM_QTY_DECIMALS == 20, "a quantity's decimals are two halves of ten");
	for (int i = 9; i >= 0; i--) {
		frac[i] = (char)('0' + hi % 10);
		hi /= 10;
		frac[10 + i] = (char)('0' + lo % 10);
		lo /= 10;
	}
	for (unsigned i = SIM_QTY_DECIMALS; i > d; i--)
		if (frac[i - 1] != '0') {
			d = i;
			break;
		}
	do {
		digits[n++] = (char)('0' + ip % 10);
		ip /= 10;
	} while (ip > 0);
	while (n > 0)
		out[k++] = digits[--n];
	if (d > 0) {
		out[k++] = '.';
		memcpy(out + k, frac, d);
		k += d;
	}
	out[k] = '\0';
	return k;
}

/* Append n bytes at p; the end of what was written. */
static inline char *
put_text(char *p, const char *text, size_t n)
{
	memcpy(p, text, n);
	return p + n;
}

#define put_lit(p, lit) put_text((p), (lit), sizeof(lit) - 1)

/*
 * Append one record as the usage API writes it (compact JSON, quantity a number literal),
 * written straight into the buffer's free space: a page formats its records as it is served.
 */
void
world_format_record(const struct sim_world *w, const struct sim_record *rec, sim_u128 quantity,
                    struct evbuffer *out)
{
	const struct sim_resource *res = &w->res[rec->resource];
	const struct sim_instance *in = &res->inst[rec->variant];
	const char *sub = w->subs[res->usersub].id, *meter = w->meters[rec->meter];
	size_t pl = strlen(w->provider_sub), sl = strlen(sub), ml = strlen(meter), ql;
	char ts[32], te[32], q[SIM_QTY_TEXT];
	struct evbuffer_iovec v;
	char *p;

	world_format_time(rec->usage_start, false, ts);
	world_format_time(rec->usage_start + 3600, false, te);
	ql = world_quantity_text(quantity, rec->decimals, q);
	/* the literal text below is under 400 bytes */
	if (evbuffer_reserve_space(out,
	                           (ev_ssize_t)(400 + pl + 4 * sl + 3 * ml + 2 * 32 + ql +
	                                        w->esc_head_len + res->uri_len + in->esc_tail_len),
	                           &v, 1) < 1)
		abort();
	p = v.iov_base;
	p = put_lit(p, "{\"id\":\"/subscriptions/");
	p = put_text(p, w->provider_sub, pl);
	p = put_lit(p, "/providers/Microsoft.Commerce.Admin/UsageAggregate/");
	p = put_text(p, sub, sl);
	*p++ = '-';
	p = put_text(p, meter, ml);
	p = put_lit(p, "\",\"name\":\"");
	p = put_text(p, sub, sl);
	*p++ = '-';
	p = put_text(p, meter, ml);
	p = put_lit(p, "\",\"type\":\"Microsoft.Commerce.Admin/UsageAggregate\","
	               "\"properties\":{\"subscriptionId\":\"");
	p = put_text(p, sub, sl);
	p = put_lit(p, "\",\"usageStartTime\":\"");
	p = put_text(p, ts, strlen(ts));
	p = put_lit(p, "\",\"usageEndTime\":\"");
	p = put_text(p, te, strlen(te));
	p = put_lit(p, "\",\"instanceData\":\"");
	p = put_text(p, w->esc_head, w->esc_head_len);
	p = put_text(p, res->uri, res->uri_len);
	p = put_text(p, in->esc_tail, in->esc_tail_len);
	p = put_lit(p, "\",\"quantity\":");
	p = put_text(p, q, ql);
	p = put_lit(p, ",\"meterId\":\"");
	p = put_text(p, meter, ml);
	p = put_lit(p, "\"}}");
	v.iov_len = (size_t)(p - (char *)v.iov_base);
	if (evbuffer_commit_space(out, &v, 1) < 0)
		abort();
}

/*
 * Compute the record key of ARCHITECTURE.md section 4 for a generated record: SHA-256 of the
 * reported hour, subscription, meter (lower case, no dashes), usage start and end and the
 * canonical instanceData, joined by \n. The canonical text is written by hand when the world is
 * made (make_instance), not by jansson: the oracle must not share the daemon's encoder.
 */
void
world_record_key(const struct sim_world *w, int64_t hour, const struct sim_record *rec,
                 char out[static SIM_KEY_LEN + 1])
{
	const struct sim_resource *res = &w->res[rec->resource];
	const struct sim_instance *in = &res->inst[rec->variant];
	const char *meter = w->meter_keys[rec->meter];
	char th[32], ts[32], te[32], buf[4096];
	size_t n = 0, ml = strlen(meter);

	_Static_assert(SIM_KEY_LEN == HASH_SHA256_HEX_LEN, "a record key is a SHA-256 hex digest");
	world_format_time(hour, true, th);
	world_format_time(rec->usage_start, true, ts);
	world_format_time(rec->usage_start + 3600, true, te);
	if (3 * (TIME_RFC3339_LEN + 1) + SIM_GUID_LEN + 1 + ml + 1 + TIME_RFC3339_LEN +
	            in->can_head_len + res->uri_len + in->can_tail_len >
	    sizeof(buf))
		abort();
	/* hour, subscription, meter, start, end, instanceData: joined by \n (the fields are known)
	 */
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
	memcpy(buf + n, in->can_head, in->can_head_len);
	n += in->can_head_len;
	memcpy(buf + n, res->uri, res->uri_len);
	n += res->uri_len;
	memcpy(buf + n, in->can_tail, in->can_tail_len);
	n += in->can_tail_len;
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
		json_t *subs = json_array(), *deleted = json_array();

		for (size_t j = 0; j < w->n_subs; j++)
			if (w->subs[j].tenant == i) {
				json_array_append_new(subs, json_string(w->subs[j].id));
				if (w->subs[j].deleted)
					json_array_append_new(deleted, json_string(w->subs[j].id));
			}
		json_array_append_new(
		        tenants,
		        json_pack("{s:s, s:s, s:o, s:s?, s:b, s:s?, s:o}", "tenantId",
		                  w->tenants[i].id, "name", w->tenants[i].name, "subscriptions",
		                  subs, "customerSubscription",
		                  w->tenants[i].customer[0] ? w->tenants[i].customer : NULL,
		                  "listed", !w->tenants[i].unlisted, "delegatedProvider",
		                  w->tenants[i].delegated[0] ? w->tenants[i].delegated : NULL,
		                  "deletedSubscriptions", deleted));
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
	json_object_set_new(out, "splitPercent", json_integer(w->split_percent));
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
		/* a delegated provider's customer: listed under that provider, no usage here */
		reg = json_object_get(o, "delegatedProvider");
		if (json_is_string(reg)) {
			lower_copy(t->delegated, json_string_value(reg), sizeof(t->delegated));
		} else if (json_is_true(reg)) {
			uint64_t st = w->seed ^ UINT64_C(0xde1e6a7ed) ^ (uint64_t)i;

			world_guid(&st,
			           t->delegated); /* not from rng: the other ids stay as they are */
		}
		if (t->delegated[0] &&
		    (!world_is_guid(t->delegated, false) || streq(t->delegated, w->provider_sub))) {
			*ret_error = xasprintf("scenario: tenants[%zu].delegatedProvider: a GUID "
			                       "other than the provider subscription, or true",
			                       i);
			return -EINVAL;
		}
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

/*
 * Take the meters from the scenario, or the documented list, with their models, and give each
 * resource kind its meters (all of them for a kind that none of the meters belongs to).
 */
static int
load_meters(struct sim_world *w, json_t *sc, char **ret_error)
{
	json_t *list = json_object_get(sc, "meters");
	size_t n = json_is_array(list) ? json_array_size(list) : ARRAY_SIZE(known_meters);

	if (n == 0) {
		*ret_error = xstrdup("scenario: meters: at least one");
		return -EINVAL;
	}
	w->meters = xcalloc(n, sizeof(char *));
	w->meter_keys = xcalloc(n, sizeof(char *));
	w->meter_models = xcalloc(n, 1);
	for (size_t k = 0; k < SIM_KINDS; k++)
		w->kind_meters[k] = xcalloc(n, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		const char *m = json_is_array(list) ? json_string_value(json_array_get(list, i))
		                                    : known_meters[i].id;
		unsigned kind, model;
		char *k;

		if (isempty(m) || strlen(m) > 40 || strpbrk(m, "\"\\/")) {
			*ret_error = xasprintf("scenario: meters[%zu]: not a meter id", i);
			return -EINVAL;
		}
		w->meters[w->n_meters] = xstrdup(m);
		w->meter_keys[w->n_meters] = k = xstrdup(m);
		for (const char *p = m; *p; p++)
			if (*p != '-')
				*k++ = (char)tolower((unsigned char)*p);
		*k = '\0';
		if (meter_info(m, &kind, &model) == 0) {
			w->meter_models[w->n_meters] = (uint8_t)model;
			w->kind_meters[kind][w->n_kind_meters[kind]++] = w->n_meters;
		} else {
			w->meter_models[w->n_meters] = M_GENERIC;
		}
		w->n_meters++;
	}
	for (size_t k = 0; k < SIM_KINDS; k++)
		if (w->n_kind_meters[k] == 0) {
			for (size_t i = 0; i < w->n_meters; i++)
				w->kind_meters[k][i] = i;
			w->n_kind_meters[k] = w->n_meters;
		}
	return 0;
}

/* The kind and model of a documented meter id (any case, dashes or not), or -ENOENT. */
static int
meter_info(const char *id, unsigned *ret_kind, unsigned *ret_model)
{
	for (size_t i = 0; i < ARRAY_SIZE(known_meters); i++) {
		const char *a = id, *b = known_meters[i].id;

		for (;; a++, b++) {
			a += *a == '-';
			b += *b == '-';
			if (tolower((unsigned char)*a) != tolower((unsigned char)*b) || !*a)
				break;
		}
		if (!*a && !*b) {
			*ret_kind = known_meters[i].kind;
			*ret_model = known_meters[i].model;
			return 0;
		}
	}
	return -ENOENT;
}

/*
 * Give every user subscription of a direct tenant its resources (a delegated provider's
 * customers have no usage in these pages), kinds in turn, each with its instanceData variants:
 * 0 as the resource is, 1 resized (a VM) or tagged otherwise, 2 with other tags holding a
 * non-ASCII value (written as \u00eb inside the instanceData of every other resource). Two
 * records of one resource, meter and hour with different variants are a split aggregate.
 */
static void
make_resources(struct sim_world *w, unsigned per_sub)
{
	static const struct member vm_d2[] = {{"ServiceType", "Standard_D2_v2"},
	                                      {"ImageType", "Windows_Server"}};
	static const struct member vm_d4[] = {{"ServiceType", "Standard_D4_v2"},
	                                      {"ImageType", "Windows_Server"}};
	static const struct member costcenter[] = {{"costcenter", "4711"}, {"env", "prod"}};
	static const struct member owner[] = {{"owner", "R&D \"lab\""}, {"env", "prod"}};
	static const struct member env_prod[] = {{"env", "prod"}};
	static const struct member other[] = {{"env", "test"}, {"owner", "Zo\xc3\xab"}};

	w->res = xcalloc(w->n_subs * per_sub + 1, sizeof(*w->res));
	for (size_t s = 0; s < w->n_subs; s++) {
		if (w->tenants[w->subs[s].tenant].delegated[0])
			continue;
		for (unsigned k = 0; k < per_sub; k++) {
			struct sim_resource *r = &w->res[w->n_res];
			unsigned kind = k % K_MAX;
			const struct member *tags = NULL, *tags1 = env_prod;
			size_t n_tags = 0, n_tags1 = 1;
			bool vm = kind == K_VM, ascii = w->n_res % 2 == 1;

			r->usersub = s;
			r->kind = kind;
			r->uri = xasprintf(
			        "/subscriptions/%s/resourceGroups/rg%u/providers/%s/%s%02u",
			        w->subs[s].id, k / 4 + 1, resource_kinds[kind][0],
			        resource_kinds[kind][1], k + 1);
			r->uri_len = strlen(r->uri);
			for (const char *c = r->uri; *c; c++) /* it sits in JSON as it is */
				if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
					abort();
			if (w->n_res % 3 == 1) {
				tags = costcenter; /* its first member alone; all of it as variant 1
				                    */
				n_tags = 1;
				tags1 = costcenter;
				n_tags1 = 2;
			} else if (w->n_res % 5 == 2) {
				tags = owner;
				n_tags = 1;
				tags1 = owner;
				n_tags1 = 2;
			}
			make_instance(w, &r->inst[0], tags, n_tags, vm ? vm_d2 : NULL, vm ? 2 : 0,
			              false, vm ? 2 : 1);
			if (vm)
				make_instance(w, &r->inst[1], tags, n_tags, vm_d4, 2, false, 8);
			else
				make_instance(w, &r->inst[1], tags1, n_tags1, NULL, 0, false, 1);
			make_instance(w, &r->inst[2], other, 2, vm ? vm_d2 : NULL, vm ? 2 : 0,
			              ascii, vm ? 2 : 1);
			r->meter_offset = (unsigned)((w->n_res * 7 + 3) % w->n_kind_meters[kind]);
			w->n_res++;
		}
	}
}

/*
 * Make one instanceData: as the usage API serves it (members in its order, inside a JSON string;
 * with ascii, non-ASCII characters of the tags escaped as \uXXXX) and in the canonical form of
 * the record key (section 4: members sorted by name, no white space, non-ASCII as UTF-8, what
 * jansson's json_dumps with JSON_COMPACT | JSON_SORT_KEYS writes). Both are kept as the pieces
 * around the resource's URI (struct sim_instance), shared through the world's texts: the URI
 * needs no escaping (make_resources checks), so escaping the served text piece by piece is
 * escaping it whole.
 */
static void
make_instance(struct sim_world *w, struct sim_instance *in, const struct member *tags,
              size_t n_tags, const struct member *info, size_t n_info, bool ascii, unsigned cores)
{
	_cleanup_free_ char *served_tags = object_text(tags, n_tags, false, ascii);
	_cleanup_free_ char *sorted_tags = object_text(tags, n_tags, true, false);
	_cleanup_free_ char *sorted_info = object_text(info, n_info, true, false);
	_cleanup_free_ char *tail = NULL;

	in->tags = intern(w, object_text(tags, n_tags, false, false), NULL);
	in->info = intern(w, object_text(info, n_info, false, false), NULL);
	in->cores = cores;
	if (!w->esc_head)
		w->esc_head = intern(w, escape_json("{\"Microsoft.Resources\":{\"resourceUri\":\""),
		                     &w->esc_head_len);
	tail = xasprintf("\",\"location\":\"local\",\"tags\":%s,\"additionalInfo\":%s}}",
	                 served_tags, in->info);
	in->esc_tail = intern(w, escape_json(tail), &in->esc_tail_len);
	in->can_head = intern(w,
	                      xasprintf("{\"Microsoft.Resources\":{\"additionalInfo\":%s,"
	                                "\"location\":\"local\",\"resourceUri\":\"",
	                                sorted_info),
	                      &in->can_head_len);
	in->can_tail = intern(w, xasprintf("\",\"tags\":%s}}", sorted_tags), &in->can_tail_len);
}

/*
 * One text of the world's instanceData pieces (taking text, which it frees when the same text
 * is there already); *ret_len: its length, unless ret_len is NULL. There are a few dozen.
 */
static const char *
intern(struct sim_world *w, char *text, size_t *ret_len)
{
	size_t i = 0;

	while (i < w->n_texts && !streq(w->texts[i], text))
		i++;
	if (i < w->n_texts) {
		free(text);
	} else {
		w->texts = xreallocarray(w->texts, w->n_texts + 1, sizeof(*w->texts));
		w->texts[w->n_texts++] = text;
	}
	if (ret_len)
		*ret_len = strlen(w->texts[i]);
	return w->texts[i];
}

/* A JSON object of string members ("null" for none), in order or sorted by name (bytewise). */
static char *
object_text(const struct member *m, size_t n, bool sorted, bool ascii)
{
	const struct member *order[8];
	struct evbuffer *b;
	char *text;

	if (n == 0)
		return xstrdup("null");
	assert(n <= ARRAY_SIZE(order));
	for (size_t i = 0; i < n; i++) {
		size_t j = i;

		while (sorted && j > 0 && strcmp(order[j - 1]->name, m[i].name) > 0) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = &m[i];
	}
	b = evbuffer_new();
	if (!b)
		abort();
	for (size_t i = 0; i < n; i++) {
		evbuffer_add(b, i ? "," : "{", 1);
		string_text(b, order[i]->name, ascii);
		evbuffer_add(b, ":", 1);
		string_text(b, order[i]->value, ascii);
	}
	evbuffer_add(b, "}", 2);
	text = xstrdup((const char *)evbuffer_pullup(b, -1));
	evbuffer_free(b);
	return text;
}

/*
 * Append a JSON string literal: quote and backslash escaped (the texts here have no control
 * characters), with ascii every non-ASCII character as \uXXXX (a surrogate pair beyond U+FFFF).
 */
static void
string_text(struct evbuffer *b, const char *s, bool ascii)
{
	const unsigned char *p = (const unsigned char *)s;

	evbuffer_add(b, "\"", 1);
	while (*p) {
		if (*p == '"' || *p == '\\') {
			evbuffer_add_printf(b, "\\%c", *p++);
		} else if (*p < 0x80 || !ascii) {
			evbuffer_add(b, p++, 1);
		} else {
			unsigned len = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2;
			uint32_t cp = *p++ & (0x7f >> len);

			for (unsigned i = 1; i < len && (*p & 0xc0) == 0x80; i++)
				cp = cp << 6 | (*p++ & 0x3f);
			if (cp >= 0x10000)
				evbuffer_add_printf(b, "\\u%04x\\u%04x",
				                    0xd800 + ((cp - 0x10000) >> 10),
				                    0xdc00 + ((cp - 0x10000) & 0x3ff));
			else
				evbuffer_add_printf(b, "\\u%04x", cp);
		}
	}
	evbuffer_add(b, "\"", 1);
}

/* Generate the records of one hour into a cache slot. */
static void
generate_hour(struct sim_world *w, struct sim_hour *h, int64_t hour)
{
	h->n = w->records_per_hour;
	h->hour = hour;
	h->recs = xreallocarray(h->recs, h->n + 1, sizeof(*h->recs));
	generate_records(w, hour, h->recs);
}

/* Generate every record of an hour from (seed, hour) alone. */
static void
generate_records(const struct sim_world *w, int64_t hour, struct sim_record *out)
{
	uint64_t rng = w->seed ^ ((uint64_t)hour * UINT64_C(0x9E3779B97F4A7C15));

	for (size_t i = 0; i < w->records_per_hour; i++)
		generate_record(w, &rng, hour, i, out);
}

/*
 * Generate record i of an hour (recs[0..i-1] are made). Resource, meter and usage hour are laid
 * out so that no two records of one reported hour share a record key: within each block of n_res
 * records every resource appears once, its meter advances per block through the meters of its
 * kind, and after all of them the usage hour moves back by six hours (late records move back by
 * one to five). A split aggregate (splitPercent) takes the place of record i: the resource, meter
 * and usage hour of record i-1 again with another instanceData, the hour shared between the two
 * (a VM resized, a tag changed: minutes m and 60 - m).
 */
static void
generate_record(const struct sim_world *w, uint64_t *rng, int64_t hour, size_t i,
                struct sim_record *recs)
{
	struct sim_record *rec = &recs[i];
	size_t rot = (size_t)((hour / 3600) * 7 % (int64_t)w->n_res);
	size_t j = i / w->n_res, nk;
	uint64_t r1 = world_splitmix(rng), r2 = world_splitmix(rng), r3 = world_splitmix(rng);
	unsigned late = 0, minutes = 60;
	const struct sim_resource *res;

	if (i > 0 && recs[i - 1].variant == 0 && r3 % 100 < w->split_percent) {
		unsigned m = 1 + (unsigned)((r3 >> 16) % 59);

		*rec = recs[i - 1];
		rec->variant = (uint8_t)(1 + (r3 >> 8) % (SIM_VARIANTS - 1));
		model_quantity(w, &recs[i - 1], m, r2 >> 1);
		model_quantity(w, rec, 60 - m, r2);
		return;
	}
	rec->resource = (uint32_t)((i + rot) % w->n_res);
	res = &w->res[rec->resource];
	nk = w->n_kind_meters[res->kind];
	rec->meter = (uint32_t)w->kind_meters[res->kind][(j + res->meter_offset) % nk];
	rec->variant = 0;
	if ((r1 >> 8) % 100 < w->late_percent)
		late = 1 + (unsigned)((r1 >> 16) % 5);
	rec->usage_start = hour - 3600 - (int64_t)((j / nk) * 6 + late) * 3600;
	if ((r1 >> 24) % 100 < PARTIAL_PERCENT)
		minutes = 1 + (unsigned)((r1 >> 32) % 59);
	model_quantity(w, rec, minutes, r2);
}

/*
 * A record's quantity as its meter reports it for `minutes` of the hour (r: random bits), in
 * integers of 10^-SIM_QTY_DECIMALS with the decimals its literal shows. Ratios that do not end
 * are written with 17 significant digits, like a double printed exactly.
 */
static void
model_quantity(const struct sim_world *w, struct sim_record *rec, unsigned minutes, uint64_t r)
{
	static const unsigned disk_gb[] = {32, 64, 128, 256, 512, 1023};
	const struct sim_resource *res = &w->res[rec->resource];
	uint64_t x = r >> 8;

	switch (w->meter_models[rec->meter]) {
	case M_CORE_HOURS:
		ratio(rec, (uint64_t)res->inst[rec->variant].cores * minutes, 60);
		break;
	case M_HOURS:
		ratio(rec, minutes, 60);
		break;
	case M_DISK_MONTHS:
		ratio(rec, minutes, 60 * 730);
		break;
	case M_DISK_GB_MONTHS:
		ratio(rec, (uint64_t)disk_gb[rec->resource % ARRAY_SIZE(disk_gb)] * minutes,
		      60 * 730);
		break;
	case M_MB_HOURS:
		ratio(rec, (100 + (uint64_t)rec->resource * 7919 % 50000) * minutes, 60);
		break;
	case M_GB_HOURS:
		if (r % 10 == 0) {
			digits17(rec, x, 1 + (unsigned)(r >> 4) % 3);
		} else {
			rec->quantity = (x % (UINT64_C(2000) * 10000000000)) * pow10_u128(10);
			rec->decimals = 10;
		}
		break;
	case M_TEN_THOUSANDS:
		ratio(rec, x % 2000000, 10000);
		break;
	case M_TENS:
		ratio(rec, x % 100000, 10);
		break;
	case M_DATA_GB:
		ratio(rec, x % UINT64_C(50000000000), 1000000000);
		break;
	case M_GB_SECONDS:
		ratio(rec, x % 10000000, 1000);
		break;
	default: /* a meter of unknown unit: ten decimals, 17 digits, integers, two decimals */
		if (r % 100 < 5) {
			ratio(rec, 1 + x % 50, 1);
		} else if (r % 100 < 15) {
			digits17(rec, x, 7);
		} else if (r % 100 < 20) {
			ratio(rec, x % 100000, 100);
		} else {
			rec->quantity = (x % (UINT64_C(1000) * 10000000000)) * pow10_u128(10);
			rec->decimals = 10;
		}
		break;
	}
}

/*
 * num / den exactly when it ends within SIM_QTY_DECIMALS decimals (with the fewest), else cut
 * to 17 significant digits.
 */
static void
ratio(struct sim_record *rec, uint64_t num, uint64_t den)
{
	sim_u128 n = num;

	for (unsigned k = 0;; k++, n *= 10) {
		sim_u128 v = n / den;

		if (n % den == 0 || v >= pow10_u128(16) || k == SIM_QTY_DECIMALS) {
			rec->quantity = v * pow10_u128(SIM_QTY_DECIMALS - k);
			for (; k > 0 && v % 10 == 0; k--) /* cut short at the last decimal */
				v /= 10;
			rec->decimals = (uint8_t)k;
			return;
		}
	}
}

/* A quantity of exactly 17 significant digits, int_digits of them before the point. */
static void
digits17(struct sim_record *rec, uint64_t r, unsigned int_digits)
{
	uint64_t v = UINT64_C(10000000000000000) + r % UINT64_C(90000000000000000);

	rec->decimals = (uint8_t)(17 - int_digits);
	rec->quantity = (sim_u128)v * pow10_u128(SIM_QTY_DECIMALS - rec->decimals);
}

/* 10^n for n <= 38. */
static sim_u128
pow10_u128(unsigned n)
{
	sim_u128 v = 1;

	assert(n <= 38);
	while (n--)
		v *= 10;
	return v;
}

/*
 * Write a time as the usage API does ("+00:00") or as keys and Commerce do ("Z"). The times of
 * a world are whole hours, a few hundred at most, each written for many records: a small table
 * keeps the last ones written (the simulator is one thread).
 */
void
world_format_time(int64_t t, bool zulu, char out[static 32])
{
	static struct {
		int64_t t;
		char text[TIME_RFC3339_LEN + 1];
	} cache[256];
	size_t i = (size_t)((uint64_t)t / 3600 % ARRAY_SIZE(cache));

	if (!cache[i].text[0] || cache[i].t != t) {
		time_format_rfc3339(t, cache[i].text);
		cache[i].t = t;
	}
	memcpy(out, cache[i].text, sizeof(cache[i].text));
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
