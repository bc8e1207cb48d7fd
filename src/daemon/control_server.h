#pragma once
// The control socket: a Unix socket (mode 0600) read by one control thread,
// one JSON request per line, each answered by the control engine. Only a
// peer with the daemon's own uid may change state (SO_PEERCRED).
//
// A command that takes long (calibrate) runs on a worker thread of its own;
// its client waits for the answer while the control thread goes on serving
// others, and its answer is made on the control thread when the work is done.

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "control/engine.h"

namespace ioband::daemon {

class ControlServer {
 public:
  explicit ControlServer(control::Engine& engine) : engine_(engine) {}
  ~ControlServer();

  // "" or a sentence.
  std::string listen(const std::string& path);
  void start();
  // Signal-safe from a reactor: no new commands are read, a calibration
  // under way is cancelled; returns at once.
  void stop_accepting() noexcept;
  // Joins the control thread: call once the reactors no longer run.
  void stop();

 private:
  // A client waiting for a long command's answer.
  struct Parked {
    int fd = -1;
    bool may_change = false;
    std::string buffer;  // what it sent after that command
    std::function<std::string()> finish;
    std::thread worker;
  };
  enum class Served { closed, parked };

  void run();
  // Answers the client's lines (`buffer` first) until it closes, goes
  // quiet, or sends a long command: then it is parked.
  Served serve(int fd, bool may_change, std::string buffer);
  void resume_parked();

  control::Engine& engine_;
  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: the parked command's work is done
  std::optional<Parked> parked_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace ioband::daemon
