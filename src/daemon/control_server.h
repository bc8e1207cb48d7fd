#pragma once
// The control socket: a Unix socket (mode 0600) served by one control
// thread, one JSON request per line, each answered by the control engine.
// Only a peer with the daemon's own uid may change state (SO_PEERCRED).
//
// Many clients at once, none able to stall the others: every socket is
// non-blocking and the thread waits in poll() for all of them, each with
// its own buffers and deadlines (a whole request line, a whole reply, and
// silence between requests). Commands still run one at a time, in the
// order their lines are complete, so the engine stays single-threaded.
// Limits: kMaxControlClients connections (one more gets a refusal line and
// is closed) and kMaxControlLine bytes per request line.
//
// A command that takes long (calibrate, a remove whose connections are
// still closing) runs on a worker thread of its own; its client waits for
// the answer while the control thread goes on serving others, and its
// answer is made on the control thread when the work is done.

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "control/engine.h"
#include "io/accept_pause.h"
#include "io/log.h"

namespace ioband::daemon {

inline constexpr size_t kMaxControlClients = 256;
inline constexpr size_t kMaxControlLine = 64 * 1024;
inline constexpr int kDefaultControlTimeoutSeconds = 10;

class ControlServer {
 public:
  // timeout: how long a client may take to send one request line, to read
  // one reply, or stay silent between requests.
  explicit ControlServer(control::Engine& engine,
                         std::chrono::milliseconds timeout = std::chrono::seconds(kDefaultControlTimeoutSeconds))
      : engine_(engine), timeout_(timeout) {}
  ~ControlServer();

  // "" or a sentence.
  std::string listen(const std::string& path);
  void start();
  // Runs `tick` on the control thread every `every` (cluster tenants: the
  // engine samples load and applies shares there). Before start().
  void set_tick(std::chrono::milliseconds every, std::function<void()> tick) {
    tick_every_ = every;
    tick_ = std::move(tick);
  }
  // Signal-safe from a reactor: no new commands are read, a calibration
  // under way is cancelled; returns at once.
  void stop_accepting() noexcept;
  // Joins the control thread: call once the reactors no longer run.
  void stop();
  // Removes the socket file without joining (a daemon about to _exit).
  void unlink_socket() noexcept;

 private:
  using Clock = std::chrono::steady_clock;
  struct Client {
    int fd = -1;
    bool may_change = false;
    std::string in;             // received, not yet answered
    std::string out;            // the reply being sent
    size_t out_sent = 0;
    bool close_after_send = false;
    bool parked = false;        // waiting for a long command's answer
    Clock::time_point deadline;  // of the line, the reply or the silence under way
    const char* waiting_for = "";
  };
  // A client waiting for a long command's answer (calibrate, a remove
  // whose connections are closing): its work runs on a thread of its own.
  struct Parked {
    Client* client = nullptr;
    std::function<std::string()> finish;
    std::thread worker;
    std::atomic<bool> done{false};
  };

  void run();
  void accept_clients();
  // Reads what the client sent; false: it is gone.
  bool receive(Client& client);
  // Sends what the socket takes of its reply; false: it is gone.
  bool send_some(Client& client);
  // Answers its complete lines, one at a time, while nothing else is owed.
  void answer(Client& client);
  void reply(Client& client, std::string line);
  void resume_parked();
  void drop(Client& client, const char* why);
  void arm_deadline(Client& client);

  control::Engine& engine_;
  const std::chrono::milliseconds timeout_;
  std::string path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: a parked command's work is done
  std::vector<std::unique_ptr<Client>> clients_;
  std::list<Parked> parked_;
  uint64_t refused_ = 0;
  io::AcceptPause accept_pause_;  // descriptors ran out
  RateLimitedLog refusal_log_;                           // clients past kMaxControlClients
  std::chrono::milliseconds tick_every_{0};
  std::function<void()> tick_;
  Clock::time_point next_tick_{};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace ioband::daemon
