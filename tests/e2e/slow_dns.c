/* slow_dns.c -- an LD_PRELOAD shim for tests/e2e/test_relay_faults.py: a
 * slow resolver, deterministically.
 *
 * getaddrinfo() of the one host name SLOW_DNS_NAME sleeps SLOW_DNS_MS
 * (default 2000), appends a line to SLOW_DNS_LOG (when set), then answers as
 * for SLOW_DNS_ADDR (default 127.0.0.1) -- or fails with EAI_NONAME when
 * SLOW_DNS_ADDR is "fail". Every other name goes to the real getaddrinfo.
 * The test builds it with gcc at test time:
 *
 *     gcc -shared -fPIC -o slow_dns.so tests/e2e/slow_dns.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static void slow_dns_sleep(void)
{
    const char *ms = getenv("SLOW_DNS_MS");
    long d = ms != NULL ? atol(ms) : 2000;
    struct timespec ts = {d / 1000, (d % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void slow_dns_note(const char *node)
{
    const char *path = getenv("SLOW_DNS_LOG");
    int fd;

    if (path == NULL)
        return;
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return;
    if (write(fd, node, strlen(node)) < 0 || write(fd, "\n", 1) < 0)
        (void)0; /* a test helper: a lost line shows as a failed count */
    close(fd);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *name = getenv("SLOW_DNS_NAME");
    const char *addr = getenv("SLOW_DNS_ADDR");

    if (node != NULL && name != NULL && strcmp(node, name) == 0) {
        slow_dns_sleep();
        slow_dns_note(node);
        if (addr != NULL && strcmp(addr, "fail") == 0)
            return EAI_NONAME;
        node = addr != NULL ? addr : "127.0.0.1";
    }
    return real(node, service, hints, res);
}
