/*
 * config.c — `candex serve` options, from the command line and from a
 * config file of "option = value" lines using the same long names. One
 * table drives parsing, the config file and --help, so they cannot drift.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

enum opt_type { OPT_STR, OPT_LIST, OPT_U32, OPT_SIZE, OPT_DOUBLE, OPT_LOGLEVEL };

struct opt {
	const char *name;
	int type;
	size_t off;
	const char *arg;
	const char *help;
};

#define O(f) offsetof(struct cdx_server_config, f)

static const struct opt opts[] = {
	{ "index-dir", OPT_STR, O(index_dir), "DIR",
	    "serve every collection DIR/<name>/ that has a CURRENT link (required)" },
	{ "listen", OPT_LIST, O(listen), "URL",
	    "query socket address: tcp://HOST:PORT, ipc:///PATH or tls+tcp://HOST:PORT; repeatable "
	    "(required)" },
	{ "admin-listen", OPT_STR, O(admin_listen), "URL",
	    "admin socket (the only one accepting reloads), e.g. ipc:///run/candex/admin" },
	{ "admin-ipc-mode", OPT_STR, O(ipc_mode), "OCTAL", "file permissions of an ipc:// admin socket" },
	{ "http-listen", OPT_STR, O(http_listen), "HOST:PORT", "serve /metrics and /healthz over HTTP" },
	{ "http-search-listen", OPT_STR, O(http_search_listen), "HOST:PORT",
	    "serve POST /v1/search (SearchRequest as JSON) over HTTP, on its own listener (off unless set)" },
	{ "config", OPT_STR, O(config_file), "FILE",
	    "read options from FILE (\"option = value\" lines, # comments); flags override it" },
	{ "threads", OPT_U32, O(threads), "N",
	    "search worker threads (0 = one per CPU the process may use: taskset, cgroup cpuset)" },
	{ "contexts", OPT_U32, O(contexts), "N",
	    "concurrent requests the query socket holds (0 = queue-max + 2 x threads)" },
	{ "queue-max", OPT_U32, O(queue_max), "N",
	    "search jobs waiting for a worker; beyond it requests get OVERLOADED (0 = 16 x threads)" },
	{ "max-message", OPT_SIZE, O(max_message), "BYTES",
	    "largest request answered (LIMIT_EXCEEDED above; the connection is dropped above 2x); K/M/G "
	    "suffixes" },
	{ "max-k", OPT_U32, O(max_k), "N", "largest k" },
	{ "max-batch", OPT_U32, O(max_batch), "N", "most query vectors or keys per request" },
	{ "max-excludes", OPT_U32, O(max_excludes), "N", "most exclude ids + keys per request" },
	{ "timeout-ms", OPT_U32, O(timeout_ms), "MS", "deadline of requests that set none" },
	{ "max-timeout-ms", OPT_U32, O(max_timeout_ms), "MS", "cap on a request's own deadline" },
	{ "parallel-batch", OPT_U32, O(parallel_batch), "N",
	    "a batch of at least N queries arriving at an idle server searches on every core (0 = never)" },
	{ "drain-ms", OPT_U32, O(drain_ms), "MS", "longest wait for in-flight requests at shutdown" },
	{ "listener-check-ms", OPT_U32, O(listener_check_ms), "MS",
	    "probe tcp:// and ipc:// listeners this often and recreate one that stopped accepting (0 = "
	    "off)" },
	{ "watch-interval", OPT_DOUBLE, O(watch_interval), "SECONDS",
	    "poll every collection's CURRENT link and reload on change (0 = off; SIGHUP always reloads)" },
	{ "online-recall-fraction", OPT_DOUBLE, O(online_recall_fraction), "F",
	    "fraction of answered queries re-run exactly to export recall@k in /metrics (0 = off)" },
	{ "online-recall-cpu", OPT_DOUBLE, O(online_recall_cpu), "F",
	    "CPU budget of the online recall checker, as a fraction of one core" },
	{ "tls-cert", OPT_STR, O(tls_cert), "FILE", "server certificate (PEM) for tls+tcp:// listeners" },
	{ "tls-key", OPT_STR, O(tls_key), "FILE", "private key (PEM) of --tls-cert" },
	{ "tls-ca", OPT_STR, O(tls_ca), "FILE",
	    "CA (PEM) that client certificates must be signed by: clients must authenticate (mutual TLS)" },
	{ "log-level", OPT_LOGLEVEL, O(log_level), "LEVEL", "debug, info, warn or error" },
};

void
cdx_server_config_init(struct cdx_server_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_message = 16u << 20;
	cfg->max_k = 1000;
	cfg->max_batch = 1024;
	cfg->max_excludes = 10000;
	cfg->timeout_ms = 5000;
	cfg->max_timeout_ms = 60000;
	cfg->parallel_batch = 64;
	cfg->drain_ms = 10000;
	cfg->listener_check_ms = 1000;
	cfg->online_recall_cpu = 0.05;
	cfg->ipc_mode = strdup("0600");
	cfg->log_level = CDX_LOG_INFO;
}

static void
free_strings(struct cdx_server_config *cfg)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(opts); i++) {
		char *base = (char *) cfg + opts[i].off;
		if (opts[i].type == OPT_STR) {
			free(*(char **) base);
			*(char **) base = NULL;
		}
	}
	for (unsigned i = 0; i < cfg->nlisten; i++) {
		free(cfg->listen[i]);
		cfg->listen[i] = NULL;
	}
	cfg->nlisten = 0;
}

void
cdx_server_config_fini(struct cdx_server_config *cfg)
{
	if (cfg != NULL)
		free_strings(cfg);
}

static const struct opt *
find_opt(const char *name, size_t len)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(opts); i++)
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	return NULL;
}

static int
parse_u64(const char *v, uint64_t *out, int size_suffix)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char) *v))
		return CDX_EINVAL;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno != 0)
		return CDX_EINVAL;
	if (size_suffix && *end != '\0') {
		unsigned shift = 0;
		switch (toupper((unsigned char) *end)) {
		case 'K':
			shift = 10;
			break;
		case 'M':
			shift = 20;
			break;
		case 'G':
			shift = 30;
			break;
		default:
			return CDX_EINVAL;
		}
		end++;
		if ((*end == 'i' || *end == 'I') && (end[1] == 'B' || end[1] == 'b'))
			end += 2;
		else if (*end == 'B' || *end == 'b')
			end++;
		if (x > (UINT64_MAX >> shift))
			return CDX_EINVAL;
		x <<= shift;
	}
	if (*end != '\0')
		return CDX_EINVAL;
	*out = x;
	return CDX_OK;
}

/* set_opt applies one option; where says where it came from, for errors. */
static int
set_opt(struct cdx_server_config *cfg, const struct opt *o, const char *v, const char *where)
{
	char *base = (char *) cfg + o->off;
	uint64_t u;
	char *end;

	switch (o->type) {
	case OPT_STR: {
		char *copy = strdup(v);
		if (copy == NULL)
			return cdx_error(CDX_ENOMEM, "out of memory");
		free(*(char **) base);
		*(char **) base = copy;
		return CDX_OK;
	}
	case OPT_LIST:
		if (cfg->nlisten >= CDX_SERVER_MAX_LISTEN)
			return cdx_error(CDX_EINVAL, "%s: more than %d --%s addresses", where,
			    CDX_SERVER_MAX_LISTEN, o->name);
		if ((cfg->listen[cfg->nlisten] = strdup(v)) == NULL)
			return cdx_error(CDX_ENOMEM, "out of memory");
		cfg->nlisten++;
		return CDX_OK;
	case OPT_U32:
		if (parse_u64(v, &u, 0) != CDX_OK || u > UINT32_MAX)
			return cdx_error(CDX_EINVAL, "%s: --%s wants a number up to %u, not '%s'", where,
			    o->name, UINT32_MAX, v);
		*(uint32_t *) base = (uint32_t) u;
		return CDX_OK;
	case OPT_SIZE:
		if (parse_u64(v, &u, 1) != CDX_OK || u == 0)
			return cdx_error(
			    CDX_EINVAL, "%s: --%s wants a size like 16M, not '%s'", where, o->name, v);
		*(uint64_t *) base = u;
		return CDX_OK;
	case OPT_DOUBLE: {
		errno = 0;
		double d = strtod(v, &end);
		if (errno != 0 || end == v || *end != '\0' || !isfinite(d) || d < 0)
			return cdx_error(
			    CDX_EINVAL, "%s: --%s wants a number >= 0, not '%s'", where, o->name, v);
		*(double *) base = d;
		return CDX_OK;
	}
	case OPT_LOGLEVEL:
		if (cdx_log_level_parse(v, (int *) base) != CDX_OK)
			return cdx_error(CDX_EINVAL,
			    "%s: --%s: unknown level '%s' (debug, info, warn, error)", where, o->name, v);
		return CDX_OK;
	}
	return cdx_error(CDX_EINTERNAL, "option type");
}

static char *
trim(char *s)
{
	while (isspace((unsigned char) *s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char) e[-1]))
		*--e = '\0';
	return s;
}

int
cdx_server_config_file(struct cdx_server_config *cfg, const char *path)
{
	char *text = NULL, *next, where[600];
	size_t len;
	int rc = cdx_read_file(path, &text, &len);
	if (rc != CDX_OK)
		return rc;
	unsigned lineno = 0;
	for (char *line = text; line != NULL; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		lineno++;
		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		line = trim(line);
		if (*line == '\0')
			continue;
		snprintf(where, sizeof(where), "%s:%u", path, lineno);
		char *eq = strchr(line, '=');
		if (eq == NULL) {
			rc = cdx_error(CDX_EINVAL, "%s: expected 'option = value', got '%s'", where, line);
			break;
		}
		*eq = '\0';
		char *name = trim(line), *value = trim(eq + 1);
		while (*name == '-')
			name++;
		const struct opt *o = find_opt(name, strlen(name));
		if (o == NULL || strcmp(o->name, "config") == 0) {
			rc = cdx_error(CDX_EINVAL, "%s: unknown option '%s'", where, name);
			break;
		}
		if ((rc = set_opt(cfg, o, value, where)) != CDX_OK)
			break;
	}
	free(text);
	return rc;
}

int
cdx_server_config_parse(struct cdx_server_config *cfg, int argc, char **argv)
{
	int rc, listen_from_args = 0;

	/* the config file first, so that flags override it */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			cfg->help = 1;
			return CDX_OK;
		}
		const char *file = NULL;
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			file = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			file = argv[i] + 9;
		if (file != NULL && (rc = cdx_server_config_file(cfg, file)) != CDX_OK)
			return rc;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *value;
		if (strncmp(a, "--", 2) != 0)
			return cdx_error(CDX_EINVAL, "unexpected argument '%s'", a);
		a += 2;
		const char *eq = strchr(a, '=');
		const struct opt *o = find_opt(a, eq ? (size_t) (eq - a) : strlen(a));
		if (o == NULL)
			return cdx_error(CDX_EINVAL, "unknown option '%s' (see --help)", argv[i]);
		if (eq != NULL)
			value = eq + 1;
		else if (i + 1 < argc)
			value = argv[++i];
		else
			return cdx_error(CDX_EINVAL, "--%s needs a value (%s)", o->name, o->arg);
		if (strcmp(o->name, "config") == 0)
			continue;
		if (o->type == OPT_LIST && !listen_from_args) {
			/* --listen on the command line replaces the file's list */
			listen_from_args = 1;
			for (unsigned j = 0; j < cfg->nlisten; j++)
				free(cfg->listen[j]);
			cfg->nlisten = 0;
		}
		if ((rc = set_opt(cfg, o, value, "command line")) != CDX_OK)
			return rc;
	}
	if (cfg->index_dir == NULL)
		return cdx_error(CDX_EINVAL, "--index-dir is required");
	if (cfg->nlisten == 0)
		return cdx_error(CDX_EINVAL, "at least one --listen URL is required");
	if (cfg->max_k == 0 || cfg->max_batch == 0)
		return cdx_error(CDX_EINVAL, "--max-k and --max-batch must be at least 1");
	if (cfg->online_recall_fraction > 1)
		return cdx_error(CDX_EINVAL, "--online-recall-fraction must be in [0, 1]");
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		return cdx_error(CDX_EINVAL, "--tls-cert and --tls-key go together");
	return CDX_OK;
}

void
cdx_server_config_usage(FILE *out)
{
	struct cdx_server_config d;
	cdx_server_config_init(&d);
	fprintf(out,
	    "usage: candex serve --index-dir DIR --listen URL [--listen URL...] [options]\n\n"
	    "Serves every collection of an index directory over nng REQ/REP (proto/candex.proto).\n"
	    "SIGHUP reloads changed collections; SIGTERM/SIGINT drain in-flight requests and exit 0.\n\n"
	    "options (a config file takes the same names: \"max-k = 500\"):\n");
	for (size_t i = 0; i < CDX_ARRAY_LEN(opts); i++) {
		const struct opt *o = &opts[i];
		char def[64] = "";
		const char *base = (const char *) &d + o->off;
		switch (o->type) {
		case OPT_U32:
			snprintf(def, sizeof(def), "%u", *(const uint32_t *) base);
			break;
		case OPT_SIZE:
			snprintf(def, sizeof(def), "%llu", (unsigned long long) *(const uint64_t *) base);
			break;
		case OPT_DOUBLE:
			snprintf(def, sizeof(def), "%g", *(const double *) base);
			break;
		case OPT_LOGLEVEL:
			snprintf(def, sizeof(def), "info");
			break;
		case OPT_STR:
			if (*(char *const *) base != NULL)
				snprintf(def, sizeof(def), "%s", *(char *const *) base);
			break;
		}
		char head[64];
		snprintf(head, sizeof(head), "--%s %s", o->name, o->arg);
		fprintf(out, "  %-32s %s", head, o->help);
		if (def[0] != '\0')
			fprintf(out, " [%s]", def);
		fputc('\n', out);
	}
	fprintf(out, "  %-32s %s\n", "-h, --help", "show this help");
	cdx_server_config_fini(&d);
}
