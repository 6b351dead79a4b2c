/*
 * cmd_serve.c — `candex serve`: options (flags + --config file) and the
 * server's main loop; everything else lives in src/server/.
 */
#include <stdio.h>

#include "cli.h"
#include "common/common.h"
#include "server/server.h"

int
cmd_serve(int argc, char **argv)
{
	struct cdx_server_config cfg;
	int rc;

	cdx_server_config_init(&cfg);
	if (cdx_server_config_parse(&cfg, argc, argv) != CDX_OK) {
		fprintf(stderr, "%s\n", cdx_last_error());
		cdx_server_config_fini(&cfg);
		return CLI_EXIT_USAGE;
	}
	if (cfg.help) {
		cdx_server_config_usage(stdout);
		cdx_server_config_fini(&cfg);
		return CLI_EXIT_OK;
	}
	rc = cdx_server_run(&cfg);
	cdx_server_config_fini(&cfg);
	return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
