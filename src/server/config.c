/*
 * config.c — `candex serve` options, from the command line and from a
 * config file of "option = value" lines using the same long names. One
 * table drives parsing, the config file and --help, so they cannot drift.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/opt.h"
#include "server/server.h"

#define PROG "candex serve"
#define O(f) offsetof(struct cdx_server_config, f)

#define MAX_ADAPT_RUNGS 16

static int
add_listen(const char *v, void *opts)
{
	struct cdx_server_config *cfg = opts;
	if (cfg->nlisten >= CDX_SERVER_MAX_LISTEN)
		return cdx_error(CDX_EINVAL, "at most %d listen addresses", CDX_SERVER_MAX_LISTEN);
	if ((cfg->listen[cfg->nlisten] = strdup(v)) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	cfg->nlisten++;
	return CDX_OK;
}

/* One table drives the command line, the config file and --help. */
static const struct cdx_opt opts[] = {
	CDX_OPT_STRDUP_("index-dir", O(index_dir), "DIR",
	    "serve every collection DIR/<name>/ that has a CURRENT link (required)"),
	CDX_OPT_CALL_("listen", "URL",
	    "query socket address: tcp://HOST:PORT, ipc:///PATH or tls+tcp://HOST:PORT; "
	    "repeatable\n(required)",
	    add_listen),
	CDX_OPT_STRDUP_("admin-listen", O(admin_listen), "URL",
	    "admin socket (the only one accepting reloads), e.g. ipc:///run/candex/admin"),
	CDX_OPT_STRDUP_("admin-ipc-mode", O(ipc_mode), "OCTAL", "file permissions of an ipc:// admin socket"),
	CDX_OPT_STRDUP_("ipc-mode", O(query_ipc_mode), "OCTAL",
	    "file permissions of ipc:// query sockets (connecting needs write permission)"),
	CDX_OPT_STRDUP_("http-listen", O(http_listen), "HOST:PORT",
	    "serve /metrics, /healthz (liveness) and /readyz (readiness) over HTTP"),
	CDX_OPT_STRDUP_("http-search-listen", O(http_search_listen), "HOST:PORT",
	    "serve POST /v1/search (SearchRequest as JSON) over HTTP, on its own listener (off unless set)"),
	CDX_OPT_STRDUP_("config", O(config_file), "FILE",
	    "read options from FILE (\"option = value\" lines, # comments); flags override it"),
	CDX_OPT_NUM_("threads", CDX_OPT_U32, O(threads), "N",
	    "search worker threads (0 = one per CPU the process may use: taskset, cgroup cpuset)", 0, 0),
	CDX_OPT_NUM_("contexts", CDX_OPT_U32, O(contexts), "N",
	    "concurrent requests the query socket holds (0 = queue-max + 2 x threads)", 0, 0),
	CDX_OPT_NUM_("queue-max", CDX_OPT_U32, O(queue_max), "N",
	    "search jobs waiting for a worker; beyond it requests get OVERLOADED (0 = 16 x threads)", 0, 0),
	CDX_OPT_NUM_("max-message", CDX_OPT_BYTES, O(max_message), "BYTES",
	    "largest request answered (LIMIT_EXCEEDED above; the connection is dropped above 2x); "
	    "K/M/G\nsuffixes",
	    0, 0),
	CDX_OPT_NUM_("max-connections", CDX_OPT_U32, O(max_connections), "N",
	    "open query connections; when full, a new one replaces the one longest without a request\n"
	    "(if over 1 s), else it is refused",
	    0, 0),
	CDX_OPT_NUM_("max-receive-memory", CDX_OPT_BYTES, O(max_receive_memory), "BYTES",
	    "memory requests may hold: half at most for frames still arriving (max-connections x 2 x\n"
	    "max-message), the rest for received and decoded requests, beyond which they get OVERLOADED",
	    0, 0),
	CDX_OPT_NUM_("heavy-ms", CDX_OPT_U32, O(heavy_ms), "MS",
	    "searches estimated to take longer run after cheaper ones, on at most half the workers", 0, 0),
	CDX_OPT_NUM_("max-k", CDX_OPT_U32, O(max_k), "N", "largest k", 1, UINT32_MAX),
	CDX_OPT_NUM_("max-batch", CDX_OPT_U32, O(max_batch), "N", "most query vectors or keys per request", 1,
	    UINT32_MAX),
	CDX_OPT_NUM_("max-excludes", CDX_OPT_U32, O(max_excludes), "N",
	    "most excluded ids + keys per request (plain and compact lists together)", 0, 0),
	CDX_OPT_NUM_(
	    "timeout-ms", CDX_OPT_U32, O(timeout_ms), "MS", "deadline of requests that set none", 0, 0),
	CDX_OPT_NUM_(
	    "max-timeout-ms", CDX_OPT_U32, O(max_timeout_ms), "MS", "cap on a request's own deadline", 0, 0),
	CDX_OPT_NUM_("parallel-batch", CDX_OPT_U32, O(parallel_batch), "N",
	    "a batch of at least N queries arriving at an idle server searches on every core (0 = never)", 0,
	    0),
	CDX_OPT_NUM_("drain-ms", CDX_OPT_U32, O(drain_ms), "MS",
	    "longest wait for in-flight requests at shutdown", 0, 0),
	CDX_OPT_NUM_("listener-check-ms", CDX_OPT_U32, O(listener_check_ms), "MS",
	    "probe tcp:// and ipc:// listeners this often and recreate one that stopped accepting (0 =\noff)",
	    0, 0),
	CDX_OPT_NUM_("watch-interval", CDX_OPT_DOUBLE, O(watch_interval), "SECONDS",
	    "poll every collection's CURRENT link and reload on change (0 = off; SIGHUP always reloads)", 0,
	    1e9),
	CDX_OPT_NUM_("online-recall-fraction", CDX_OPT_DOUBLE, O(online_recall_fraction), "F",
	    "fraction of answered queries re-run exactly to export recall@k in /metrics (0 = off)", 0, 1),
	CDX_OPT_NUM_("online-recall-cpu", CDX_OPT_DOUBLE, O(online_recall_cpu), "F",
	    "CPU budget of the online recall checker, as a fraction of one core", 0, 1e3),
	CDX_OPT_STRDUP_("impression-log", O(impression_log), "DIR",
	    "write every answered query's items, slots and propensities to DIR (length-delimited\n"
	    "candex.v1.Impression records, off the request path; docs/recommenders.md)"),
	CDX_OPT_NUM_("impression-log-bytes", CDX_OPT_BYTES, O(impression_log_bytes), "BYTES",
	    "start a new impression log file before one passes this size; K/M/G suffixes", 4096, 1e15),
	CDX_OPT_NUM_("impression-buffer", CDX_OPT_BYTES, O(impression_buffer), "BYTES",
	    "impression records buffered for the writer; beyond it they are dropped and counted", 4096, 1e15),
	CDX_OPT_NUM_("adapt-max-rungs", CDX_OPT_U32, O(adapt_max_rungs), "N",
	    "recall adaptation: when online recall stays below the target, serve up to N\n"
	    "operating points above the chosen one (one rung per decision; back down when\n"
	    "the cheaper one reaches the target again); needs --online-recall-fraction\n"
	    "(0 = off; a ladder has a handful of rungs)",
	    0, MAX_ADAPT_RUNGS),
	CDX_OPT_NUM_("adapt-window", CDX_OPT_U32, O(adapt_window), "N",
	    "checked queries (at one collection, k tier and rung) behind each adaptation\n"
	    "decision (a decision needs a confidence interval)",
	    10, UINT32_MAX),
	CDX_OPT_NUM_("adapt-window-seconds", CDX_OPT_DOUBLE, O(adapt_window_seconds), "SECONDS",
	    "the least time each adaptation decision's window spans", 0, 1e9),
	CDX_OPT_STRDUP_("tls-cert", O(tls_cert), "FILE", "server certificate (PEM) for tls+tcp:// listeners"),
	CDX_OPT_STRDUP_("tls-key", O(tls_key), "FILE", "private key (PEM) of --tls-cert"),
	CDX_OPT_STRDUP_("tls-ca", O(tls_ca), "FILE",
	    "CA (PEM) that client certificates must be signed by: clients must authenticate (mutual TLS)"),
	CDX_OPT_STRDUP_("shards", O(shards), "LIST",
	    "serve only these shards of each collection, as one shard group behind candex route: 0-3,8;\n"
	    "per collection 'tracks:0-3;podcasts:none' (default: all)"),
	CDX_OPT_NUM_("keep-previous", CDX_OPT_DOUBLE, O(keep_previous), "SECONDS",
	    "keep a version a reload replaced loaded for requests that name it (index_version) until\n"
	    "none has for SECONDS: shard groups behind candex route need it (0 = free it at once)",
	    0, 1e9),
	CDX_OPT_LOGLEVEL_("log-level", O(log_level), "debug, info, warn or error [info]"),
};

void
cdx_server_config_init(struct cdx_server_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_message = 4u << 20;
	cfg->max_receive_memory = 2ull << 30;
	cfg->max_connections = 128;
	cfg->heavy_ms = 25;
	cfg->max_k = 1000;
	cfg->max_batch = 1024;
	cfg->max_excludes = 200000;
	cfg->impression_log_bytes = 64u << 20;
	cfg->impression_buffer = 4u << 20;
	cfg->timeout_ms = 5000;
	cfg->max_timeout_ms = 60000;
	cfg->parallel_batch = 64;
	cfg->drain_ms = 10000;
	cfg->listener_check_ms = 1000;
	cfg->online_recall_cpu = 0.05;
	cfg->adapt_max_rungs = 2;
	cfg->adapt_window = 200;
	cfg->adapt_window_seconds = 30;
	cfg->ipc_mode = strdup("0600");
	cfg->query_ipc_mode = strdup("0660");
	cfg->log_level = CDX_LOG_INFO;
}

static void
free_strings(struct cdx_server_config *cfg)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(opts); i++) {
		char *base = (char *) cfg + opts[i].offset;
		if (opts[i].type == CDX_OPT_STRDUP) {
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

/* file_option applies one config file line (cdx_conf_read's callback). */
static int
file_option(void *arg, const char *name, const char *value, const char *where)
{
	if (strcmp(name, "config") == 0)
		return cdx_opt_fail(PROG, "%s: a config file cannot name another (config)", where);
	return cdx_opt_set(PROG, opts, CDX_ARRAY_LEN(opts), arg, name, value, where);
}

int
cdx_server_config_file(struct cdx_server_config *cfg, const char *path)
{
	return cdx_conf_read(path, file_option, cfg);
}

/* octal_mode: 1 if s is empty (keep the umask's mode) or file permissions
 * in octal, 0 to 0777. */
static int
octal_mode(const char *s)
{
	if (s == NULL || *s == '\0')
		return 1;
	size_t n = strspn(s, "01234567");
	return s[n] == '\0' && n <= 4 && strtol(s, NULL, 8) <= 0777;
}

int
cdx_server_config_parse(struct cdx_server_config *cfg, int argc, char **argv)
{
	int rc;

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
	/* --listen on the command line replaces the file's list */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--listen") == 0 || strncmp(argv[i], "--listen=", 9) == 0) {
			for (unsigned j = 0; j < cfg->nlisten; j++)
				free(cfg->listen[j]);
			cfg->nlisten = 0;
			break;
		}
	}
	if ((rc = cdx_opt_parse(PROG, opts, CDX_ARRAY_LEN(opts), cfg, argc, argv, NULL, NULL, 0, NULL))
	    != CDX_OK)
		return rc;
	if (cfg->index_dir == NULL)
		return cdx_opt_fail(PROG, "--index-dir is required");
	if (cfg->nlisten == 0)
		return cdx_opt_fail(PROG, "at least one --listen URL is required");
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		return cdx_opt_fail(PROG, "--tls-cert and --tls-key go together");
	if (!octal_mode(cfg->ipc_mode) || !octal_mode(cfg->query_ipc_mode))
		return cdx_opt_fail(PROG, "--admin-ipc-mode and --ipc-mode want octal permissions like 0660");
	struct cdx_shard_set set;
	int serve;
	if (cdx__srv_shards_for(cfg->shards, NULL, &set, &serve) != CDX_OK)
		return CDX_EINVAL;
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
	    "options (a config file takes the same names: \"max-k = 500\"); [defaults]:\n");
	cdx_opt_usage(out, opts, CDX_ARRAY_LEN(opts), &d);
	cdx_server_config_fini(&d);
}
