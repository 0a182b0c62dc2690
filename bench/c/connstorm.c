/* connstorm N: N loopback TCP connections, both sides in this one process:
 * connect() to a listener on 127.0.0.1 (it completes from the backlog), accept(),
 * close both. The client closes first with SO_LINGER {1, 0} (a reset), so no
 * TIME_WAIT piles up and repeated runs do not run out of ephemeral ports. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct linger lg = { 1, 0 };
	socklen_t alen = sizeof(addr);
	int one = 1, ls;
	long n, i;
	double t0;

	if (argc != 2) {
		fprintf(stderr, "usage: connstorm N\n");
		return 2;
	}
	n = atol(argv[1]);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0)
		die("socket");
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("bind");
	if (listen(ls, 128) < 0)
		die("listen");
	if (getsockname(ls, (struct sockaddr *)&addr, &alen) < 0)
		die("getsockname");
	t0 = now_s();
	for (i = 0; i < n; i++) {
		int c = socket(AF_INET, SOCK_STREAM, 0), a;

		if (c < 0)
			die("socket");
		if (connect(c, (struct sockaddr *)&addr, sizeof(addr)) < 0)
			die("connect");
		a = accept(ls, NULL, NULL);
		if (a < 0)
			die("accept");
		setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c);
		close(a);
	}
	report(n, now_s() - t0);
	close(ls);
	return 0;
}
