/* cmd_demo.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_demo(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex demo: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
