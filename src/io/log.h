#pragma once
// One line per event on stderr, whole lines even from several threads.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace ioband {

void log_line(const std::string& line);

// A string a client chose (an export name, say), fit for a log line: bytes
// outside printable ASCII, and the backslash, become \xNN, so a client can
// neither forge a line (a newline) nor hide one (escape sequences).
std::string escape_for_log(std::string_view text);

// At most one line per interval for one kind of event that a client can
// cause at will (a refused connection, a paused accept). A line written
// after a quiet spell says how many were left out. Thread-safe.
class RateLimitedLog {
 public:
  explicit RateLimitedLog(std::chrono::milliseconds interval = std::chrono::seconds(5)) : interval_(interval) {}
  // Writes line (plus the count left out since the last one) or counts it.
  void log(const std::string& line);
  uint64_t suppressed() const noexcept { return suppressed_.load(std::memory_order_relaxed); }

 private:
  std::chrono::nanoseconds interval_;
  std::atomic<int64_t> next_ns_{0};
  std::atomic<uint64_t> suppressed_{0};
};

}  // namespace ioband
