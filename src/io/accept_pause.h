#pragma once
// What a listener does when accept() fails for want of file descriptors
// (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM): the pending
// connection stays in the backlog and fails the same way if accept is tried
// again at once, which spins (80 % of a core and millions of log lines in
// issue 14). So the listener stops accepting for kInterval and logs one
// line per interval, not one per attempt. Both listeners of the daemon use
// it: the NBD server (a ring timer re-arms its accept) and the control
// server (its poll() leaves the listening socket out until until()).

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "io/log.h"

namespace ioband::io {

class AcceptPause {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kInterval{500};

  // Is this accept() error (a positive errno) one to pause for?
  static bool applies(int error) noexcept {
    return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
  }

  // Pauses from now; logs "WHERE: accept: REASON DETAIL; ..." (rate-limited).
  void pause(int error, const std::string& where, const std::string& detail = {}) {
    until_ = Clock::now() + kInterval;
    log_.log(where + ": accept: " + std::strerror(error) + detail + "; accepting again in " +
             std::to_string(kInterval.count()) + " ms");
  }
  bool paused(Clock::time_point now) const noexcept { return now < until_; }
  Clock::time_point until() const noexcept { return until_; }

 private:
  RateLimitedLog log_;
  Clock::time_point until_{};
};

}  // namespace ioband::io
