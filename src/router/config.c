/*
 * config.c — `candex route` options, from the command line and from a
 * config file of "option = value" lines with the same long names. One table
 * drives parsing, the file and --help.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "router/router.h"
#include "shard/shard.h"

enum { T_STR, T_LISTEN, T_GROUP, T_U32, T_SIZE, T_DOUBLE, T_LOGLEVEL };

struct ropt {
	const char *name;
	int type;
	size_t off;
	const char *arg;
	const char *help;
};

#define O(f) offsetof(struct cdx_router_config, f)

static const struct ropt ropts[] = {
	{ "listen", T_LISTEN, 0, "URL",
	    "address clients use, as for candex serve: tcp://HOST:PORT or ipc:///PATH; repeatable "
	    "(required)" },
	{ "group", T_GROUP, 0, "NAME=MEMBERS",
	    "a shard group and its replicas: NAME=URL[,URL...] (candex serve --shards ... listeners), or "
	    "NAME=dns:HOST:PORT to dial every address HOST resolves to (a Kubernetes headless Service); "
	    "repeatable (required)" },
	{ "http-listen", T_STR, O(http_listen), "HOST:PORT", "serve /metrics and /healthz over HTTP" },
	{ "config", T_STR, O(config_file), "FILE",
	    "read options from FILE (\"option = value\" lines, # comments); flags override it" },
	{ "timeout-ms", T_U32, O(timeout_ms), "MS", "deadline of requests that set none" },
	{ "max-timeout-ms", T_U32, O(max_timeout_ms), "MS", "cap on a request's own deadline" },
	{ "try-timeout-ms", T_U32, O(try_timeout_ms), "MS",
	    "longest wait for one attempt at a group before trying again (0 = half the time left; the "
	    "last attempt: all of it)" },
	{ "retries", T_U32, O(retries), "N",
	    "attempts at a group after the first, on a timeout or a retryable answer, within the deadline" },
	{ "poll-ms", T_U32, O(poll_ms), "MS",
	    "ask every replica what it serves this often (versions, shards: the routing view)" },
	{ "dns-interval", T_DOUBLE, O(dns_interval), "SECONDS", "resolve dns: groups again this often" },
	{ "min-coverage", T_DOUBLE, O(min_coverage), "F",
	    "answer UNAVAILABLE rather than partial results covering less than this fraction of the "
	    "items (0 = any partial answer)" },
	{ "contexts", T_U32, O(contexts), "N", "client requests handled at once" },
	{ "max-message", T_SIZE, O(max_message), "BYTES", "largest request or group answer; K/M/G suffixes" },
	{ "drain-ms", T_U32, O(drain_ms), "MS", "longest wait for in-flight requests at shutdown" },
	{ "log-level", T_LOGLEVEL, O(log_level), "LEVEL", "debug, info, warn or error" },
};

void
cdx_router_config_init(struct cdx_router_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->timeout_ms = 5000;
	cfg->max_timeout_ms = 60000;
	cfg->retries = 2;
	cfg->poll_ms = 1000;
	cfg->dns_interval = 5;
	cfg->contexts = 256;
	cfg->max_message = 16u << 20;
	cfg->drain_ms = 10000;
	cfg->log_level = CDX_LOG_INFO;
}

static void
free_list(char **v, unsigned *n)
{
	for (unsigned i = 0; i < *n; i++) {
		free(v[i]);
		v[i] = NULL;
	}
	*n = 0;
}

void
cdx_router_config_fini(struct cdx_router_config *cfg)
{
	if (cfg == NULL)
		return;
	free_list(cfg->listen, &cfg->nlisten);
	free_list(cfg->group, &cfg->ngroups);
	free(cfg->http_listen);
	free(cfg->config_file);
	cfg->http_listen = cfg->config_file = NULL;
}

static const struct ropt *
find_ropt(const char *name, size_t len)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(ropts); i++)
		if (strlen(ropts[i].name) == len && strncmp(ropts[i].name, name, len) == 0)
			return &ropts[i];
	return NULL;
}

/* number parses all of v as a decimal number >= 0 (with a K/M/G suffix
 * when size): strict, so that "12x" or "" is refused, not read as 12 or 0. */
static int
number(const char *v, int size, double *out)
{
	char *end;
	if (!isdigit((unsigned char) *v))
		return CDX_EINVAL;
	errno = 0;
	double d = strtod(v, &end);
	if (errno != 0 || !isfinite(d))
		return CDX_EINVAL;
	if (size && *end != '\0') {
		const char *units = "KMG", *u = strchr(units, toupper((unsigned char) *end));
		if (u == NULL)
			return CDX_EINVAL;
		d *= (double) (1ull << (10 * (u - units + 1)));
		end++;
		if (*end == 'i' && end[1] == 'B')
			end += 2;
		else if (*end == 'B')
			end++;
	}
	if (*end != '\0')
		return CDX_EINVAL;
	*out = d;
	return CDX_OK;
}

static int
add_to_list(char **v, unsigned *n, unsigned max, const char *value, const char *where, const char *name)
{
	if (*n >= max)
		return cdx_error(CDX_EINVAL, "%s: more than %u --%s", where, max, name);
	if ((v[*n] = strdup(value)) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	(*n)++;
	return CDX_OK;
}

static int
set_ropt(struct cdx_router_config *cfg, const struct ropt *o, const char *v, const char *where)
{
	char *base = (char *) cfg + o->off;
	double d;
	switch (o->type) {
	case T_STR: {
		char *copy = strdup(v);
		if (copy == NULL)
			return cdx_error(CDX_ENOMEM, "out of memory");
		free(*(char **) base);
		*(char **) base = copy;
		return CDX_OK;
	}
	case T_LISTEN:
		return add_to_list(cfg->listen, &cfg->nlisten, CDX_ROUTER_MAX_LISTEN, v, where, o->name);
	case T_GROUP: {
		const char *eq = strchr(v, '=');
		char name[CDX_NAME_MAX];
		if (eq == NULL || eq == v || (size_t) (eq - v) >= sizeof(name) || eq[1] == '\0')
			return cdx_error(CDX_EINVAL,
			    "%s: --group wants NAME=URL[,URL...] or NAME=dns:HOST:PORT, not '%s'", where, v);
		memcpy(name, v, (size_t) (eq - v));
		name[eq - v] = '\0';
		for (unsigned i = 0; i < cfg->ngroups; i++)
			if (strncmp(cfg->group[i], v, (size_t) (eq - v) + 1) == 0)
				return cdx_error(CDX_EINVAL, "%s: group '%s' is named twice", where, name);
		return add_to_list(cfg->group, &cfg->ngroups, CDX_ROUTER_MAX_GROUPS, v, where, o->name);
	}
	case T_U32:
		if (number(v, 0, &d) != CDX_OK || d != floor(d) || d > UINT32_MAX)
			return cdx_error(CDX_EINVAL, "%s: --%s wants a whole number up to %u, not '%s'",
			    where, o->name, UINT32_MAX, v);
		*(uint32_t *) base = (uint32_t) d;
		return CDX_OK;
	case T_SIZE:
		if (number(v, 1, &d) != CDX_OK || d < 1 || d > 1e15)
			return cdx_error(
			    CDX_EINVAL, "%s: --%s wants a size like 16M, not '%s'", where, o->name, v);
		*(uint64_t *) base = (uint64_t) d;
		return CDX_OK;
	case T_DOUBLE:
		if (number(v, 0, &d) != CDX_OK)
			return cdx_error(
			    CDX_EINVAL, "%s: --%s wants a number >= 0, not '%s'", where, o->name, v);
		*(double *) base = d;
		return CDX_OK;
	case T_LOGLEVEL:
		if (cdx_log_level_parse(v, (int *) base) != CDX_OK)
			return cdx_error(CDX_EINVAL,
			    "%s: --%s: unknown level '%s' (debug, info, warn, error)", where, o->name, v);
		return CDX_OK;
	}
	return cdx_error(CDX_EINTERNAL, "option type");
}

/* file_option applies one config file line (cdx_conf_read's callback). */
static int
file_option(void *arg, const char *name, const char *value, const char *where)
{
	const struct ropt *o = find_ropt(name, strlen(name));
	if (o == NULL || (o->type == T_STR && o->off == O(config_file)))
		return cdx_error(CDX_EINVAL, "%s: unknown option '%s'", where, name);
	return set_ropt(arg, o, value, where);
}

int
cdx_router_config_parse(struct cdx_router_config *cfg, int argc, char **argv)
{
	int rc, listen_from_args = 0, groups_from_args = 0;
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
		if (file != NULL && (rc = cdx_conf_read(file, file_option, cfg)) != CDX_OK)
			return rc;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *value;
		if (strncmp(a, "--", 2) != 0)
			return cdx_error(CDX_EINVAL, "unexpected argument '%s'", a);
		a += 2;
		const char *eq = strchr(a, '=');
		const struct ropt *o = find_ropt(a, eq ? (size_t) (eq - a) : strlen(a));
		if (o == NULL)
			return cdx_error(CDX_EINVAL, "unknown option '%s' (see --help)", argv[i]);
		if (eq != NULL)
			value = eq + 1;
		else if (i + 1 < argc)
			value = argv[++i];
		else
			return cdx_error(CDX_EINVAL, "--%s needs a value (%s)", o->name, o->arg);
		if (o->type == T_STR && o->off == O(config_file))
			continue;
		/* lists on the command line replace the file's */
		if (o->type == T_LISTEN && !listen_from_args++)
			free_list(cfg->listen, &cfg->nlisten);
		if (o->type == T_GROUP && !groups_from_args++)
			free_list(cfg->group, &cfg->ngroups);
		if ((rc = set_ropt(cfg, o, value, "command line")) != CDX_OK)
			return rc;
	}
	if (cfg->nlisten == 0)
		return cdx_error(CDX_EINVAL, "at least one --listen URL is required");
	if (cfg->ngroups == 0)
		return cdx_error(CDX_EINVAL, "at least one --group is required");
	if (cfg->min_coverage > 1)
		return cdx_error(CDX_EINVAL, "--min-coverage must be in [0, 1]");
	if (cfg->poll_ms == 0 || cfg->contexts == 0 || cfg->timeout_ms == 0)
		return cdx_error(CDX_EINVAL, "--poll-ms, --contexts and --timeout-ms must be at least 1");
	return CDX_OK;
}

void
cdx_router_config_usage(FILE *out)
{
	struct cdx_router_config d;
	cdx_router_config_init(&d);
	fprintf(out,
	    "usage: candex route --listen URL --group NAME=MEMBERS [--group ...] [options]\n\n"
	    "Answers candex serve's protocol for many shard groups (candex serve --shards LIST with\n"
	    "--keep-previous): fans each search out, merges one exact top-k, fails over between\n"
	    "replicas and says what a partial answer covers (docs/router.md).\n"
	    "SIGTERM/SIGINT drain in-flight requests and exit 0.\n\n"
	    "options (a config file takes the same names: \"group = g0=tcp://10.0.0.1:7700\"):\n");
	for (size_t i = 0; i < CDX_ARRAY_LEN(ropts); i++) {
		const struct ropt *o = &ropts[i];
		const char *base = (const char *) &d + o->off;
		char def[64] = "", head[64];
		if (o->type == T_U32)
			snprintf(def, sizeof(def), "%u", *(const uint32_t *) base);
		else if (o->type == T_SIZE)
			snprintf(def, sizeof(def), "%llu", (unsigned long long) *(const uint64_t *) base);
		else if (o->type == T_DOUBLE)
			snprintf(def, sizeof(def), "%g", *(const double *) base);
		else if (o->type == T_LOGLEVEL)
			snprintf(def, sizeof(def), "info");
		snprintf(head, sizeof(head), "--%s %s", o->name, o->arg);
		fprintf(out, "  %-32s %s", head, o->help);
		if (def[0] != '\0')
			fprintf(out, " [%s]", def);
		fputc('\n', out);
	}
	fprintf(out, "  %-32s %s\n", "-h, --help", "show this help");
	cdx_router_config_fini(&d);
}
