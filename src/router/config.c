/*
 * config.c — `candex route` options, from the command line and from a
 * config file of "option = value" lines with the same long names. One table
 * drives parsing, the file and --help.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "common/opt.h"
#include "router/router.h"
#include "shard/shard.h"

#define PROG "candex route"
#define O(f) offsetof(struct cdx_router_config, f)

static int
add_listen(const char *v, void *opts)
{
	struct cdx_router_config *cfg = opts;
	if (cfg->nlisten >= CDX_ROUTER_MAX_LISTEN)
		return cdx_error(CDX_EINVAL, "at most %d listen addresses", CDX_ROUTER_MAX_LISTEN);
	if ((cfg->listen[cfg->nlisten] = strdup(v)) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	cfg->nlisten++;
	return CDX_OK;
}

static int
add_group(const char *v, void *opts)
{
	struct cdx_router_config *cfg = opts;
	const char *eq = strchr(v, '=');
	char name[CDX_NAME_MAX];
	if (eq == NULL || eq == v || (size_t) (eq - v) >= sizeof(name) || eq[1] == '\0')
		return cdx_error(CDX_EINVAL, "expected NAME=URL[,URL...] or NAME=dns:HOST:PORT");
	memcpy(name, v, (size_t) (eq - v));
	name[eq - v] = '\0';
	for (unsigned i = 0; i < cfg->ngroups; i++)
		if (strncmp(cfg->group[i], v, (size_t) (eq - v) + 1) == 0)
			return cdx_error(CDX_EINVAL, "group '%s' is named twice", name);
	if (cfg->ngroups >= CDX_ROUTER_MAX_GROUPS)
		return cdx_error(CDX_EINVAL, "at most %d groups", CDX_ROUTER_MAX_GROUPS);
	if ((cfg->group[cfg->ngroups] = strdup(v)) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	cfg->ngroups++;
	return CDX_OK;
}

/* One table drives the command line, the config file and --help (as for
 * candex serve: src/common/opt.h). */
static const struct cdx_opt ropts[] = {
	CDX_OPT_CALL_("listen", "URL",
	    "address clients use, as for candex serve: tcp://HOST:PORT or ipc:///PATH; repeatable\n"
	    "(required)",
	    add_listen),
	CDX_OPT_CALL_("group", "NAME=MEMBERS",
	    "a shard group and its replicas: NAME=URL[,URL...] (candex serve --shards ... listeners),\n"
	    "or NAME=dns:HOST:PORT to dial every address HOST resolves to (a Kubernetes headless\n"
	    "Service); repeatable (required)",
	    add_group),
	CDX_OPT_STRDUP_("http-listen", O(http_listen), "HOST:PORT", "serve /metrics and /healthz over HTTP"),
	CDX_OPT_STRDUP_("config", O(config_file), "FILE",
	    "read options from FILE (\"option = value\" lines, # comments); flags override it"),
	CDX_OPT_NUM_("timeout-ms", CDX_OPT_U32, O(timeout_ms), "MS", "deadline of requests that set none", 1,
	    UINT32_MAX),
	CDX_OPT_NUM_(
	    "max-timeout-ms", CDX_OPT_U32, O(max_timeout_ms), "MS", "cap on a request's own deadline", 0, 0),
	CDX_OPT_NUM_("try-timeout-ms", CDX_OPT_U32, O(try_timeout_ms), "MS",
	    "longest wait for one attempt at a group before trying again (0 = half the time left;\n"
	    "the last attempt: all of it)",
	    0, 0),
	CDX_OPT_NUM_("retries", CDX_OPT_U32, O(retries), "N",
	    "attempts at a group after the first, on a timeout or a retryable answer, within the deadline", 0,
	    0),
	CDX_OPT_NUM_("poll-ms", CDX_OPT_U32, O(poll_ms), "MS",
	    "ask every replica what it serves this often (versions, shards: the routing view)", 1,
	    UINT32_MAX),
	CDX_OPT_NUM_("dns-interval", CDX_OPT_DOUBLE, O(dns_interval), "SECONDS",
	    "resolve dns: groups again this often", 0, 1e9),
	CDX_OPT_NUM_("min-coverage", CDX_OPT_DOUBLE, O(min_coverage), "F",
	    "answer UNAVAILABLE rather than partial results covering less than this fraction of the\n"
	    "items (0 = any partial answer)",
	    0, 1),
	CDX_OPT_NUM_(
	    "contexts", CDX_OPT_U32, O(contexts), "N", "client requests handled at once", 1, UINT32_MAX),
	CDX_OPT_NUM_("max-message", CDX_OPT_BYTES, O(max_message), "BYTES",
	    "largest request or group answer; K/M/G suffixes", 0, 0),
	CDX_OPT_NUM_("drain-ms", CDX_OPT_U32, O(drain_ms), "MS",
	    "longest wait for in-flight requests at shutdown", 0, 0),
	CDX_OPT_LOGLEVEL_("log-level", O(log_level), "debug, info, warn or error [info]"),
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

/* file_option applies one config file line (cdx_conf_read's callback). */
static int
file_option(void *arg, const char *name, const char *value, const char *where)
{
	if (strcmp(name, "config") == 0)
		return cdx_opt_fail(PROG, "%s: a config file cannot name another (config)", where);
	return cdx_opt_set(PROG, ropts, CDX_ARRAY_LEN(ropts), arg, name, value, where);
}

/* named: whether argv names option --name (lists given there replace the
 * config file's). */
static int
named(int argc, char **argv, const char *name)
{
	size_t n = strlen(name);
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "--", 2) == 0 && strncmp(argv[i] + 2, name, n) == 0
		    && (argv[i][2 + n] == '\0' || argv[i][2 + n] == '='))
			return 1;
	return 0;
}

int
cdx_router_config_parse(struct cdx_router_config *cfg, int argc, char **argv)
{
	int rc;
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
	if (named(argc, argv, "listen"))
		free_list(cfg->listen, &cfg->nlisten);
	if (named(argc, argv, "group"))
		free_list(cfg->group, &cfg->ngroups);
	if ((rc = cdx_opt_parse(PROG, ropts, CDX_ARRAY_LEN(ropts), cfg, argc, argv, NULL, NULL, 0, NULL))
	    != CDX_OK)
		return rc;
	if (cfg->nlisten == 0)
		return cdx_opt_fail(PROG, "at least one --listen URL is required");
	if (cfg->ngroups == 0)
		return cdx_opt_fail(PROG, "at least one --group is required");
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
	    "options (a config file takes the same names: \"group = g0=tcp://10.0.0.1:7700\"); "
	    "[defaults]:\n");
	cdx_opt_usage(out, ropts, CDX_ARRAY_LEN(ropts), &d);
	cdx_router_config_fini(&d);
}
