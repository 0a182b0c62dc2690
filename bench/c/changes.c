/* changes PATH N: N times chmod(PATH), toggling the owner's execute bit. Each chmod stamps
 * the inode's ctime: the hook of changes by identity (bpf/progs/enforce_ident.bpf.c) runs
 * on every one of them, whatever the file. */
#include <sys/stat.h>
#include "common.h"

int main(int argc, char **argv)
{
	double t0;
	long n, i;

	if (argc != 3) {
		fprintf(stderr, "usage: changes PATH N\n");
		return 2;
	}
	n = atol(argv[2]);
	t0 = now_s();
	for (i = 0; i < n; i++)
		if (chmod(argv[1], (i & 1) ? 0744 : 0644) < 0)
			die("chmod");
	report(n, now_s() - t0);
	return 0;
}
