#pragma once
// One daemon per state directory: an exclusive flock on STATE_DIR/iobandd.lock,
// held while the daemon lives, with its pid written in the file so that a
// second daemon can say who holds it.

#include <string>

namespace ioband::daemon {

class StateLock {
 public:
  StateLock() = default;
  ~StateLock();
  StateLock(const StateLock&) = delete;
  StateLock& operator=(const StateLock&) = delete;

  // "" or a sentence: "./var is in use by iobandd pid 1234 (lock ./var/iobandd.lock)".
  std::string acquire(const std::string& state_dir);

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace ioband::daemon
