/* bench/fairness, layout tcp: LD_PRELOAD=bindsrc.so IOBAND_BIND_SRC=127.0.0.2 fio ...
 * binds every IPv4 socket to the address in $IOBAND_BIND_SRC before it
 * connects, so that clients on one machine (fio's nbd engine has no option
 * for a source address) reach iobandd from distinct addresses and land in
 * distinct TCP-address groups of one ioband device. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  const char *src = getenv("IOBAND_BIND_SRC");
  if (src && addr && addr->sa_family == AF_INET) {
    struct sockaddr_in s = {0};
    s.sin_family = AF_INET;
    if (inet_pton(AF_INET, src, &s.sin_addr) == 1) bind(fd, (struct sockaddr *)&s, sizeof s);
  }
  return real(fd, addr, len);
}
