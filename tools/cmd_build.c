/* cmd_build.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_build(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex build: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
