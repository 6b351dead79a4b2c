/*
 * cmd_route.c — `candex route`: options (flags + --config file) and the
 * router's main loop; everything else lives in src/router/.
 */
#include <stdio.h>

#include "cli.h"
#include "common/common.h"
#include "router/router.h"

int
cmd_route(int argc, char **argv)
{
	struct cdx_router_config cfg;
	cdx_router_config_init(&cfg);
	if (cdx_router_config_parse(&cfg, argc, argv) != CDX_OK) {
		fprintf(stderr, "%s\n", cdx_last_error());
		cdx_router_config_fini(&cfg);
		return CLI_EXIT_USAGE;
	}
	if (cfg.help) {
		cdx_router_config_usage(stdout);
		cdx_router_config_fini(&cfg);
		return CLI_EXIT_OK;
	}
	int rc = cdx_router_run(&cfg);
	cdx_router_config_fini(&cfg);
	return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
