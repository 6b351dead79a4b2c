/*
 * cmd_query.c — `candex query`: ask a server for the top-k candidates of
 * vectors (.fvecs/.npy rows or stdin) or of stored items (--key), and print
 * them as a table or JSON. A thin user of the client library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "candex/client.h"
#include "cli.h"
#include "common/common.h"
#include "input/input.h"

/* ---- output ---------------------------------------------------------- */

static void
print_json(const struct cdx_result *r)
{
	json_t *root = json_object(), *results = json_array();
	json_object_set_new(root, "index_version", json_string(r->index_version ? r->index_version : ""));
	json_object_set_new(root, "metric", json_string(r->metric ? r->metric : ""));
	json_object_set_new(root, "nprobe", json_integer(r->nprobe));
	json_object_set_new(root, "refine_factor", json_real(r->refine_factor));
	json_object_set_new(root, "recall_target", json_real(r->recall_target));
	json_object_set_new(root, "expected_recall", json_real(r->expected_recall));
	json_object_set_new(root, "target_unmet", json_boolean(r->target_unmet));
	json_object_set_new(root, "server_time_us", json_integer((json_int_t) r->server_time_us));
	json_object_set_new(root, "coverage", json_real(r->coverage));
	if (r->message[0] != '\0')
		json_object_set_new(root, "message", json_string(r->message));
	if (r->applied & CDX_APPLIED_EXPLORE)
		json_object_set_new(root, "seed", json_integer((json_int_t) r->seed));
	for (size_t i = 0; i < r->nqueries; i++) {
		json_t *hits = json_array();
		for (size_t j = 0; j < r->queries[i].nhits; j++) {
			const struct cdx_client_hit *h = &r->queries[i].hits[j];
			json_t *o = json_pack("{s:I, s:s, s:f}", "id", (json_int_t) h->id, "key",
			    h->key ? h->key : "", "score", (double) h->score);
			if (h->collection != NULL && h->collection[0] != '\0')
				json_object_set_new(o, "collection", json_string(h->collection));
			if (r->applied & CDX_APPLIED_EXPLORE) {
				json_object_set_new(o, "explore", json_boolean(h->explore));
				json_object_set_new(o, "propensity", json_real(h->propensity));
			}
			if (h->rank > 0)
				json_object_set_new(o, "rank", json_integer(h->rank));
			json_array_append_new(hits, o);
		}
		json_t *qr = json_pack("{s:o}", "hits", hits);
		if (r->queries[i].exhausted)
			json_object_set_new(qr, "exhausted", json_true());
		json_array_append_new(results, qr);
	}
	json_object_set_new(root, "results", results);
	char *text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(2) | JSON_REAL_PRECISION(7));
	if (text != NULL)
		printf("%s\n", text);
	free(text);
	json_decref(root);
}

static void
print_table(const struct cdx_result *r, const char *collection)
{
	printf("collection %s  version %s  metric %s  nprobe %u  refine %g", collection,
	    r->index_version && *r->index_version ? r->index_version : "-",
	    r->metric && *r->metric ? r->metric : "-", r->nprobe, (double) r->refine_factor);
	for (size_t p = 0; p < r->nparts; p++)
		printf("%s%s %s", p ? ", " : "  parts: ", r->parts[p].collection, r->parts[p].index_version);
	if (r->applied & CDX_APPLIED_EXPLORE)
		printf("  seed %llu", (unsigned long long) r->seed);
	if (r->recall_target > 0)
		printf("  recall_target %g", (double) r->recall_target);
	if (r->expected_recall > 0)
		printf("  expected_recall %.4f", (double) r->expected_recall);
	if (r->target_unmet)
		printf("  (target unmet: no measured setting reaches it at this k)");
	printf("  server %.2f ms\n", (double) r->server_time_us / 1000.0);
	if (r->coverage < 1)
		printf("PARTIAL: %.1f%% of the items searched (%llu of %llu): %s\n", 100.0 * r->coverage,
		    (unsigned long long) r->items_searched, (unsigned long long) r->items_total, r->message);
	for (size_t i = 0; i < r->nqueries; i++) {
		if (r->nqueries > 1)
			printf("\nquery %zu\n", i);
		int parts = r->nparts > 0, explore = (r->applied & CDX_APPLIED_EXPLORE) != 0;
		printf("%5s  %-12s  %-40s  %-10s", "rank", "id", "key", "score");
		if (parts)
			printf("  %-12s", "collection");
		if (explore)
			printf("  %-7s  %s", "explore", "propensity");
		printf("\n");
		for (size_t j = 0; j < r->queries[i].nhits; j++) {
			const struct cdx_client_hit *h = &r->queries[i].hits[j];
			printf("%5zu  %-12lld  %-40s  %-10.6g", j + 1, (long long) h->id,
			    h->key && *h->key ? h->key : "-", (double) h->score);
			if (parts)
				printf("  %-12s", h->collection);
			if (explore)
				printf("  %-7s  %.4g", h->explore ? "yes" : "no", h->propensity);
			printf("\n");
		}
		if (r->queries[i].nhits == 0)
			printf("  (no candidates)\n");
		if (r->queries[i].exhausted)
			printf("  (fewer than k: nothing else passes)\n");
	}
}

/* ---- main ------------------------------------------------------------ */

struct strlist {
	const char **v;
	size_t n;
};

static int
strlist_add(struct strlist *l, const char *s)
{
	const char **grown = realloc(l->v, (l->n + 1) * sizeof(*grown));
	if (grown == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	l->v = grown;
	l->v[l->n++] = s;
	return CDX_OK;
}

/* read_ids_file reads one int64 a line (blank lines and # comments skipped). */
static int
read_ids_file(const char *path, int64_t **ids, size_t *n)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return cdx_error_errno(CDX_ENOTFOUND, "cannot read %s", path);
	char line[128];
	size_t cap = *n; /* ids already given with --exclude-id */
	unsigned long long lineno = 0;
	int rc = CDX_OK;
	while (rc == CDX_OK && fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		char *p = line, *end;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\n' || *p == '#' || *p == '\0')
			continue;
		errno = 0;
		long long v = strtoll(p, &end, 10);
		while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
			end++;
		if (errno != 0 || end == p || *end != '\0') {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: not an int64 id", path, lineno);
			break;
		}
		if (*n == cap) {
			cap = cap * 2 + 1024;
			int64_t *grown = realloc(*ids, cap * sizeof(int64_t));
			if (grown == NULL) {
				rc = cdx_error(CDX_ENOMEM, "%s", path);
				break;
			}
			*ids = grown;
		}
		(*ids)[(*n)++] = v;
	}
	fclose(f);
	return rc;
}

/* parse_part reads NAME:QUOTA[:SCALE:OFFSET]. */
static int
parse_part(const char *arg, struct cdx_query_part *p)
{
	const char *colon = strchr(arg, ':');
	char *end;
	memset(p, 0, sizeof(*p));
	if (colon == NULL || colon == arg)
		return -1;
	char *name = strndup(arg, (size_t) (colon - arg));
	if (name == NULL)
		return -1;
	p->collection = name;
	unsigned long q = strtoul(colon + 1, &end, 10);
	if (q == 0 || q > 100000 || (*end != '\0' && *end != ':'))
		return -1;
	p->quota = (uint32_t) q;
	if (*end == ':') {
		p->calibration_scale = strtof(end + 1, &end);
		if (*end != ':')
			return -1;
		p->calibration_offset = strtof(end + 1, &end);
		if (*end != '\0')
			return -1;
	}
	return 0;
}

struct query_opts {
	const char *url, *collection, *vector_file, *model, *drop;
	uint64_t row;
	size_t count;
	uint32_t dim, k, nprobe, timeout, retries;
	float refine, recall;
	int format, use_stdin, json, info, reload;
	struct strlist keys, exclude_keys;
	int64_t *exclude_ids;
	size_t n_exclude_ids;
	struct cdx_client_options co;
	/* recommender features (docs/recommenders.md) */
	const char *filter, *group_by;
	int compact, merge;
	uint32_t max_per_group, explore_slots, explore_pool;
	float explore_share;
	uint64_t seed;
	struct cdx_query_part *parts;
	size_t nparts;
};

static int
add_key(const char *v, void *opts)
{
	return strlist_add(&((struct query_opts *) opts)->keys, v);
}

static int
add_exclude_key(const char *v, void *opts)
{
	return strlist_add(&((struct query_opts *) opts)->exclude_keys, v);
}

static int
add_exclude_id(const char *v, void *opts)
{
	struct query_opts *o = opts;
	int64_t id;
	if (cdx_parse_i64(v, INT64_MIN, INT64_MAX, &id) != CDX_OK)
		return cdx_error(CDX_EINVAL, "expected an int64 id");
	int64_t *grown = realloc(o->exclude_ids, (o->n_exclude_ids + 1) * sizeof(*grown));
	if (grown == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	o->exclude_ids = grown;
	o->exclude_ids[o->n_exclude_ids++] = id;
	return CDX_OK;
}

static int
add_exclude_ids_file(const char *v, void *opts)
{
	struct query_opts *o = opts;
	o->compact = 1;
	return read_ids_file(v, &o->exclude_ids, &o->n_exclude_ids);
}

static int
add_part(const char *v, void *opts)
{
	struct query_opts *o = opts;
	struct cdx_query_part *grown = realloc(o->parts, (o->nparts + 1) * sizeof(*grown));
	if (grown == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	o->parts = grown;
	if (parse_part(v, &o->parts[o->nparts]) != 0)
		return cdx_error(CDX_EINVAL, "expected NAME:QUOTA[:SCALE:OFFSET]");
	o->nparts++;
	return CDX_OK;
}

static int
set_merge(const char *v, void *opts)
{
	struct query_opts *o = opts;
	if (strcmp(v, "interleave") == 0)
		o->merge = CDX_MERGE_INTERLEAVE;
	else if (strcmp(v, "calibrated") == 0)
		o->merge = CDX_MERGE_CALIBRATED;
	else
		return cdx_error(CDX_EINVAL, "expected interleave or calibrated");
	return CDX_OK;
}

static int
set_format(const char *v, void *opts)
{
	return cdx_input_format_parse(v, &((struct query_opts *) opts)->format);
}

#define O(f) offsetof(struct query_opts, f)
static const struct cdx_opt query_options[] = {
	CDX_OPT_STR_("url", O(url), "URL", "server address (tcp://, ipc://, tls+tcp://)"),
	CDX_OPT_STR_("collection", O(collection), "NAME", "collection to search"),
	CDX_OPT_STR_("vector-file", O(vector_file), "F",
	    "query vectors from an .fvecs or .npy (float32/float16/float64) file"),
	CDX_OPT_CALL_("format", "FMT",
	    "read --vector-file as fvecs, npy or raw (little-endian float32,\n"
	    "with --dim D) whatever its name",
	    set_format),
	CDX_OPT_NUM_(
	    "dim", CDX_OPT_U32, O(dim), "D", "dimension of a raw --vector-file", 1, CDX_INPUT_MAX_DIM),
	CDX_OPT_NUM_("row", CDX_OPT_U64, O(row), "I", "first row of --vector-file to send [0]", 0, 0),
	CDX_OPT_NUM_("count", CDX_OPT_SIZE_T, O(count), "N", "rows to send as one batch [1]", 1, 1e7),
	CDX_OPT_CALL_("key", "KEY", "search with a stored item's vector (repeatable: a batch)", add_key),
	CDX_OPT_FLAG_("stdin", O(use_stdin),
	    "read vectors from stdin: numbers separated by spaces or commas,\n"
	    "one vector a line"),
	CDX_OPT_ENTRY("k", 'k', CDX_OPT_U32, O(k), "K", "candidates per query [10]", 1, 1e7, NULL),
	CDX_OPT_NUM_("nprobe", CDX_OPT_U32, O(nprobe), "N",
	    "IVF lists to scan (0 = the operating point for --recall-target,\n"
	    "else for the collection's default target) [0]",
	    0, 1e9),
	CDX_OPT_NUM_("refine", CDX_OPT_FLOAT, O(refine), "F",
	    "re-rank F x (k's tier) candidates exactly (0 = the operating point's or\n"
	    "the collection's default) [0]",
	    0, 1e6),
	CDX_OPT_NUM_("recall-target", CDX_OPT_FLOAT, O(recall), "R",
	    "the cheapest measured operating point reaching R at this k (0 = the\n"
	    "collection's default target); the answer says the point's measured\n"
	    "recall (expected_recall) and whether no point reaches R",
	    0, 1),
	CDX_OPT_CALL_("exclude-key", "K", "never return this item (repeatable)", add_exclude_key),
	CDX_OPT_CALL_("exclude-id", "ID", "never return this id (repeatable)", add_exclude_id),
	CDX_OPT_STR_(
	    "model-version", O(model), "V", "refuse if the index was built from another embedding model"),
	CDX_OPT_STR_("filter", O(filter), "EXPR",
	    "recommender features (docs/recommenders.md):\n"
	    "on item attributes, e.g. 'market has SE and explicit = false'"),
	CDX_OPT_CALL_("exclude-ids-file", "F", "never return these ids (one a line), sent as a compact list",
	    add_exclude_ids_file),
	CDX_OPT_NUM_("max-per-group", CDX_OPT_U32, O(max_per_group), "N",
	    "at most N results per group (crowding) [--group-by ATTR]", 0, 1e6),
	CDX_OPT_STR_("group-by", O(group_by), "ATTR", "the group attribute crowding counts"),
	CDX_OPT_NUM_("explore-slots", CDX_OPT_U32, O(explore_slots), "N",
	    "fill N of the k slots by exploration (or --explore-share F)", 0, 1e6),
	CDX_OPT_NUM_("explore-share", CDX_OPT_FLOAT, O(explore_share), "F",
	    "this share of the k slots filled by exploration", 0, 1),
	CDX_OPT_NUM_("explore-pool", CDX_OPT_U32, O(explore_pool), "P",
	    "sample exploration from the P ranks after the exploit slots", 0, 1e7),
	CDX_OPT_NUM_(
	    "seed", CDX_OPT_U64, O(seed), "S", "exploration seed (default: from the request id)", 0, 0),
	CDX_OPT_CALL_("part", "NAME:QUOTA[:SCALE:OFFSET]",
	    "search several collections at once (repeatable, instead of\n"
	    "--collection); SCALE and OFFSET calibrate scores",
	    add_part),
	CDX_OPT_CALL_(
	    "merge", "HOW", "how parts are merged: interleave or calibrated [interleave]", set_merge),
	CDX_OPT_FLAG_("json", O(json),
	    "JSON output: {\"index_version\",\"nprobe\",\"results\":[{\"hits\":[{\"id\",\"key\","
	    "\"score\"}]}]}"),
	CDX_OPT_NUM_("timeout", CDX_OPT_U32, O(timeout), "MS",
	    "per-attempt timeout and server deadline [5000]", 1, 3600000),
	CDX_OPT_NUM_("retries", CDX_OPT_U32, O(retries), "N",
	    "retries on timeout/unavailable/overload, with backoff [2]", 0, 100),
	CDX_OPT_FLAG_("info", O(info), "print the server's collections (JSON) instead of searching"),
	CDX_OPT_FLAG_(
	    "reload", O(reload), "ask an admin listener to reload (--collection NAME: only that one)"),
	CDX_OPT_STR_("drop", O(drop), "NAME",
	    "ask an admin listener to stop serving NAME, whose CURRENT link is\n"
	    "gone (a reload keeps serving such a collection)"),
	CDX_OPT_STR_("tls-ca", O(co.tls_ca_file), "F",
	    "tls+tcp://: the CA the server's certificate must be signed by\n"
	    "(required unless --tls-insecure)"),
	CDX_OPT_STR_(
	    "tls-cert", O(co.tls_cert_file), "F", "tls+tcp://: this client's certificate (mutual TLS)"),
	CDX_OPT_STR_("tls-key", O(co.tls_key_file), "F", "tls+tcp://: the key of --tls-cert"),
	CDX_OPT_STR_("tls-server-name", O(co.tls_server_name), "NAME",
	    "tls+tcp://: the name the server's certificate must carry"),
	CDX_OPT_FLAG_("tls-insecure", O(co.tls_insecure),
	    "tls+tcp:// without --tls-ca: encrypt but do not verify the server"),
};
#undef O

static const struct cdx_opt_command query_command = {
	.prog = "candex query",
	.head
	= "usage: candex query --url URL --collection NAME (--vector-file F [--row I] [--count N] | --key "
	  "KEY... | "
	  "--stdin)\n"
	  "                    [-k K] [--nprobe N] [--refine F] [--recall-target R] [--exclude-key K...]\n"
	  "                    [--exclude-id ID...] [--model-version V] [--json] [--timeout MS]\n"
	  "                    [--filter EXPR] [--exclude-ids-file F] [--max-per-group N] [--explore-slots "
	  "N]\n"
	  "                    [--part NAME:QUOTA...] (docs/recommenders.md)\n\n"
	  "Asks a candex server for the top-k candidates and prints rank, id, key and score.\n",
	.opts = query_options,
	.nopts = CDX_ARRAY_LEN(query_options),
};

int
cmd_query(int argc, char **argv)
{
	struct query_opts o = { .format = CDX_INPUT_AUTO,
		.count = 1,
		.k = 10,
		.timeout = 5000,
		.retries = 2,
		.merge = CDX_MERGE_INTERLEAVE };
	float *vectors = NULL;
	size_t nvec = 0;
	uint32_t dim = 0;
	cdx_client *client = NULL;
	struct cdx_result *res = NULL;
	struct cdx_client_error err;
	int rc = cdx_opt_command_parse(&query_command, &o, argc, argv, NULL, 0, NULL);
	if (rc >= 0)
		goto out;
	rc = CLI_EXIT_USAGE;
	/* a reload or a drop prints the collections after it */
	int info = o.info || o.reload || o.drop != NULL;
	if (o.url == NULL || (!info && (o.collection == NULL) == (o.nparts == 0))) {
		cdx_opt_command_fail(&query_command, "--url and --collection (or --part) are required");
		goto out;
	}
	if (!info && (o.vector_file != NULL) + (o.keys.n > 0) + o.use_stdin != 1) {
		cdx_opt_command_fail(&query_command, "give exactly one of --vector-file, --key or --stdin");
		goto out;
	}

	rc = CLI_EXIT_FAIL;
	if (!info) {
		int r = CDX_OK;
		struct cdx_vecs v = { 0 };
		if (o.vector_file != NULL)
			r = cdx_vecs_read(&v, o.vector_file, o.dim, o.format, o.row, o.count);
		else if (o.use_stdin)
			r = cdx_vecs_read_text(&v, stdin, "stdin");
		if (r != CDX_OK) {
			fprintf(stderr, "candex query: %s\n", cdx_last_error());
			goto out;
		}
		vectors = v.x;
		nvec = v.n;
		dim = v.dim;
	}
	o.co.timeout_ms = o.timeout;
	o.co.retries = o.retries;
	if (cdx_client_open(&client, o.url, &o.co, &err) != CDX_OK) {
		fprintf(stderr, "candex query: %s\n", err.message);
		goto out;
	}
	if (o.reload) {
		if (cdx_client_reload(client, o.collection, &err) != CDX_OK) {
			fprintf(stderr, "candex query: reload: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("reloaded\n");
	}
	if (o.drop != NULL) {
		if (cdx_client_drop(client, o.drop, &err) != CDX_OK) {
			fprintf(stderr, "candex query: drop: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("dropped %s\n", o.drop);
	}
	if (info) {
		char *text = NULL;
		if (cdx_client_info(client, o.collection, &text, &err) != CDX_OK) {
			fprintf(stderr, "candex query: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("%s\n", text);
		free(text);
		rc = CLI_EXIT_OK;
		goto out;
	}
	struct cdx_query q = {
		.collection = o.collection,
		.vectors = vectors,
		.nvectors = vectors != NULL ? nvec : 0,
		.dim = dim,
		.keys = o.keys.v,
		.nkeys = o.keys.n,
		.k = o.k,
		.nprobe = o.nprobe,
		.refine_factor = o.refine,
		.recall_target = o.recall,
		.exclude_ids = o.exclude_ids,
		.n_exclude_ids = o.n_exclude_ids,
		.exclude_keys = o.exclude_keys.v,
		.n_exclude_keys = o.exclude_keys.n,
		.model_version = o.model,
		.timeout_ms = o.timeout,
		.filter = o.filter,
		.compact_excludes = o.compact,
		.max_per_group = o.max_per_group,
		.group_by = o.group_by,
		.explore_slots = o.explore_slots,
		.explore_share = o.explore_share,
		.explore_pool = o.explore_pool,
		.seed = o.seed,
		.parts = o.parts,
		.nparts = o.nparts,
		.merge = o.merge,
	};
	if (cdx_client_search(client, &q, &res, &err) != CDX_OK) {
		fprintf(stderr, "candex query: %s: %s\n", cdx_errname(err.code), err.message);
		goto out;
	}
	if (o.json)
		print_json(res);
	else
		print_table(res, o.collection ? o.collection : "(parts)");
	rc = CLI_EXIT_OK;
out:
	for (size_t i = 0; i < o.nparts; i++)
		free((char *) o.parts[i].collection);
	free(o.parts);
	cdx_result_free(res);
	cdx_client_close(client);
	free(vectors);
	free(o.keys.v);
	free(o.exclude_keys.v);
	free(o.exclude_ids);
	return rc;
}
