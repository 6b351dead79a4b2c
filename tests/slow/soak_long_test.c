/*
 * soak_long_test.c — the soak of issue 10 (soak.h): 100 reloads spread over
 * CANDEX_SOAK_SECONDS (default 300) of good clients, malformed requests,
 * vanishing clients and the memory attack; 0 failed good requests, RSS at
 * the end within 5% of the start, no descriptor growth, and SIGTERM under
 * attack ends the server within --drain-ms. docs/reliability.md has the
 * figures and the command.
 */
#include "integration/soak.h"

static void
test_soak_long(void **state)
{
	const char *env = getenv("CANDEX_SOAK_SECONDS");
	double seconds = env != NULL && atof(env) > 0 ? atof(env) : 300;
	struct soak_result r = soak_run(20, seconds, 100);
	soak_check(&r, 100, 0.05);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_soak_long),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
