#pragma once
// The reactor: one event loop per thread over one io_uring. Every storage
// and socket operation of the thread goes through submit(); this is the one
// place that knows about submission queue entries (STYLE.md point 11).
//
// An operation is owned by a Completion. Its user_data is the Completion's
// address; the reactor calls on_complete() with the CQE's result and flags.
// The owner must keep the Completion alive until that call (for multishot
// operations, until a CQE arrives without IORING_CQE_F_MORE).

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace ioband::io {

class Completion {
 public:
  virtual void on_complete(int32_t result, uint32_t flags) noexcept = 0;

 protected:
  ~Completion() = default;
};

// A Completion that forwards to a callable; handy for one-off operations
// (timers, signal reads) where a class would be noise.
class CallbackCompletion final : public Completion {
 public:
  explicit CallbackCompletion(std::function<void(int32_t, uint32_t)> fn) : fn_(std::move(fn)) {}
  void on_complete(int32_t result, uint32_t flags) noexcept override { fn_(result, flags); }

 private:
  std::function<void(int32_t, uint32_t)> fn_;
};

class Reactor {
 public:
  // Creates the ring; throws std::system_error if io_uring is unusable.
  explicit Reactor(unsigned entries = 1024, int index = 0);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Returns a cleared SQE whose user_data is owner. When the submission
  // queue is full the pending entries are submitted first, so this never
  // fails while the ring is alive.
  io_uring_sqe* prepare(Completion* owner) noexcept;

  // Runs the loop until stop() is called and idle() holds.
  void run();
  // Thread-safe: asks the loop to stop after the current iteration.
  void stop();
  // Thread-safe: runs fn on the reactor's thread.
  void post(std::function<void()> fn);
  // After run() has returned on every thread: runs what was posted too late
  // to be seen, so no poster waits forever.
  void run_leftovers() { drain_posted(); }
  // Runs fn once after the current batch of completions.
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  // Runs fn at the end of this turn, unless expect_more() was called in it:
  // then the next turn only looks for what is there (no wait), and fn runs
  // after the first turn that found nothing or that did not expect more,
  // at most kMaxBusyTurns turns later. Replies are sent from here, so input
  // already waiting in a socket is read first and one sendmsg (one wake-up
  // of the client) carries the replies to all of it.
  void defer_until_idle(std::function<void()> fn) { idle_deferred_.push_back(std::move(fn)); }
  // A recv filled its whole buffer: more input is probably waiting.
  void expect_more() noexcept { expect_more_ = true; }
  // A connection waits for its client to read a backlog (tens of
  // microseconds at least): while any does, wait() sleeps without polling.
  void hold_begin() noexcept { ++holding_; }
  void hold_end() noexcept { --holding_; }
  // A backend operation is on the ring, waiting for the storage. With many
  // waiting, wait() polls longer (up to storage_poll_ns_): see there.
  void storage_begin() noexcept { ++storage_; }
  void storage_end() noexcept { --storage_; }
  unsigned storage_inflight() const noexcept { return storage_; }
  // The longest wait() polls before it sleeps: max_us while the storage has
  // a deep queue, at most 32 us otherwise; 0: never poll (iobandd
  // --poll-max-us). Call before run().
  static constexpr int64_t kDefaultPollMaxUs = 256;
  void set_poll_max_us(int64_t max_us) noexcept {
    storage_poll_ns_ = max_us * 1000;
    poll_max_ns_ = std::min(kPollMaxNs, storage_poll_ns_);
  }
  static constexpr unsigned kMaxBusyTurns = 8;

  // Arms a one-shot timer; owner->on_complete(-ETIME) when it fires,
  // -ECANCELED if cancelled. ts must live until completion.
  void arm_timer(Completion* owner, __kernel_timespec* ts) noexcept;
  void cancel(Completion* owner) noexcept;

  // While this returns false the loop keeps running after stop().
  void set_idle_check(std::function<bool()> fn) { idle_check_ = std::move(fn); }

  // The time the current batch of completions was reaped: one clock read
  // per loop iteration for everything that happens in it.
  std::chrono::steady_clock::time_point now() const noexcept { return now_; }

  int index() const noexcept { return index_; }
  bool stopping() const noexcept { return stopping_; }
  uint64_t iterations() const noexcept { return iterations_; }

 private:
  class WakeReader;
  void arm_wake() noexcept;
  int wait();  // submits, then polls and sleeps until a completion is ready
  void drain_posted();
  void run_all(std::vector<std::function<void()>>& queue);

  io_uring ring_{};
  int index_;
  int wake_fd_ = -1;
  uint64_t wake_value_ = 0;
  WakeReader* wake_reader_;
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;  // guarded by posted_mutex_
  std::vector<std::function<void()>> deferred_;
  std::vector<std::function<void()>> idle_deferred_;
  std::vector<std::function<void()>> running_;
  std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::now();
  std::function<bool()> idle_check_;
  bool stopping_ = false;
  bool expect_more_ = false;
  bool disabled_ = false;  // created disabled; enabled by run() on its thread
  // Polling before sleeping (see wait()): the budget, QEMU's bounds for it
  // (poll-max-ns 32768, first step 4 us, grow and shrink by 2), and a probe
  // every kProbeEvery sleeps while it is 0; the budget while the storage has
  // kDeepStorage operations or more.
  static constexpr int64_t kPollMaxNs = 32768;
  static constexpr int64_t kPollStartNs = 4000;
  static constexpr unsigned kProbeEvery = 8;
  static constexpr unsigned kDeepStorage = 8;
  int64_t poll_max_ns_ = kPollMaxNs;
  int64_t storage_poll_ns_ = kDefaultPollMaxUs * 1000;
  int64_t poll_ns_ = 0;
  unsigned holding_ = 0;
  unsigned storage_ = 0;  // backend operations on the ring
  unsigned sleeps_since_probe_ = 0;
  uint64_t iterations_ = 0;
};

}  // namespace ioband::io
