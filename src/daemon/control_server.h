#pragma once
// The control socket: a Unix socket (mode 0600) read by one control thread,
// one JSON request per line, each answered by the control engine. Only a
// peer with the daemon's own uid may change state (SO_PEERCRED).

#include <atomic>
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
  // Signal-safe from a reactor: no new commands are read; returns at once.
  void stop_accepting() noexcept;
  // Joins the control thread: call once the reactors no longer run.
  void stop();

 private:
  void run();
  void serve(int fd);

  control::Engine& engine_;
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace ioband::daemon
