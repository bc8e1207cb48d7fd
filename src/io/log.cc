#include "io/log.h"

#include <sys/time.h>

#include <ctime>
#include <mutex>

namespace ioband {

void log_line(const std::string& line) {
  static std::mutex mutex;
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm local{};
  localtime_r(&tv.tv_sec, &local);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &local);
  std::lock_guard lock(mutex);
  std::fprintf(stderr, "%s.%03ld iobandd: %s\n", stamp, static_cast<long>(tv.tv_usec / 1000), line.c_str());
  std::fflush(stderr);
}

}  // namespace ioband
