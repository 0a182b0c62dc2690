/* spawn N PATH: N times fork() + execve(PATH) + waitpid(); the child's exit status must be 0. */
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

int main(int argc, char **argv)
{
	char *envp[] = { NULL };
	long n, i;
	double t0;

	if (argc != 3) {
		fprintf(stderr, "usage: spawn N PATH\n");
		return 2;
	}
	n = atol(argv[1]);
	char *cargv[] = { argv[2], NULL };
	t0 = now_s();
	for (i = 0; i < n; i++) {
		int status;
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			execve(argv[2], cargv, envp);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) < 0)
			die("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "spawn: child exited with status %d\n", status);
			return 1;
		}
	}
	report(n, now_s() - t0);
	return 0;
}
