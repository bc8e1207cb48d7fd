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

std::string escape_for_log(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out += c;
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    }
  }
  return out;
}

void RateLimitedLog::log(const std::string& line) {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t next = next_ns_.load(std::memory_order_relaxed);
  if (now < next || !next_ns_.compare_exchange_strong(next, now + interval_.count())) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const uint64_t left_out = suppressed_.exchange(0, std::memory_order_relaxed);
  log_line(left_out == 0 ? line : line + " (" + std::to_string(left_out) + " more like it not logged)");
}

}  // namespace ioband
