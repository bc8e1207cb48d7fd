// `io_limit auto`: an in-flight window W that follows the storage.
//
// Why. Weights act only on requests the scheduler still holds. Whatever it
// has dispatched waits in the storage's own queue, where every group is
// equal. A fixed io_limit larger than the storage's parallelism P moves the
// queue into the storage and the weights fade (80/20 became 54.5/45.5 on the
// real disk with io_limit 128; 80/20 with io_limit 8). A fixed small io_limit
// costs throughput on storage with deeper parallelism. So W is learned from
// the completions.
//
// Signals (per completed request, O(1) each):
//   s      = complete time - dispatch time (the request's service time,
//            including any queueing inside the storage)
//   s_min  = the smallest s seen; it expires after H = 10 s without a new
//            minimum and is then re-measured by a probe (below)
// and per interval I (it ends at the first completion once >= 50 ms and
// >= 8 completions have passed since it began):
//   mean   = sum(s) / n                 rate = n / elapsed
//   full   = next() was held back by W at least once (there was demand)
//
// Rule, at the end of each interval (floor = max(1, io_throttle),
// cap = io_limit, the last numeric one; floor <= W <= cap):
//   mean > 2 s_min and rate <= 17/16 prev_rate   (queueing in the storage,
//                                                  and depth buys nothing)
//       W <- max(floor, W - max(1, W/8))          multiplicative decrease
//   mean <= 3/2 s_min and full                    (not saturated, demand)
//       W <- min(cap, W + 1)                      additive increase
//       (W <- 2W instead while in slow start: from enabling until the first
//        interval whose mean exceeds 3/2 s_min; that interval ends it with
//        W <- max(floor, W/2), the last doubling having overshot)
//   otherwise                                     hold
// By Little's law, in flight = rate * mean; with a storage that serves P at a
// time with service time L, mean = L while W <= P and grows as W L / P
// beyond. W grows only while mean <= 1.5 s_min and shrinks only above
// 2 s_min, so with s_min ~ L it settles between P and 1.5 P, 2 P at most
// (1.25 P in tests/sim/qos_sim_auto_window_test.cc; jitter lowers s_min and
// with it the band). Utilization stays full (W >= P) while the storage queue
// stays short, so the scheduler, not the storage, orders the requests.
//
// Probe. When s_min is older than H, one interval runs with W/2 (not below
// floor); s_min becomes the smallest s among requests dispatched during the
// probe, and W returns to its value before. Without it, s_min measured with a
// standing storage queue would drift upwards and W with it. Cost: at most
// half the depth during one interval every H (0.5 % of the time).
//
// Pure: time comes in as arguments. Starts at W = clamp(4, floor, cap).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "qos/token_bucket.h"

namespace ioband::qos::detail {

class AutoWindow {
 public:
  static constexpr Nanos kInterval = 50'000'000;      // 50 ms
  static constexpr std::uint32_t kMinSamples = 8;
  static constexpr Nanos kHorizon = 10'000'000'000;   // 10 s
  static constexpr std::uint32_t kInitialWindow = 4;

  void reset(std::uint32_t floor, std::uint32_t cap, Nanos now) noexcept {
    *this = AutoWindow{};
    window_ = std::clamp(kInitialWindow, floor, std::max(floor, cap));
    interval_start_ = now;
    s_min_at_ = now;
  }

  // The window to apply now, within [floor, cap].
  std::uint32_t window(std::uint32_t floor, std::uint32_t cap) const noexcept {
    return std::clamp(window_, floor, std::max(floor, cap));
  }

  // next() held a request back because the window was full.
  void held_back() noexcept { full_ = true; }

  // A request dispatched at `dispatched` completed at `now`.
  void completed(Nanos dispatched, Nanos now, std::uint32_t floor, std::uint32_t cap) noexcept {
    const Nanos service = std::max<Nanos>(now - dispatched, 1);
    if (probing_) {
      if (dispatched >= probe_start_) probe_min_ = std::min(probe_min_, service);
    } else if (service <= s_min_) {
      s_min_ = service;
      s_min_at_ = now;
    }
    ++samples_;
    service_sum_ += service;
    const Nanos elapsed = now - interval_start_;
    if (elapsed < kInterval || samples_ < kMinSamples) return;
    end_interval(now, elapsed, floor, std::max(floor, cap));
  }

  Nanos s_min() const noexcept { return s_min_; }

 private:
  void end_interval(Nanos now, Nanos elapsed, std::uint32_t floor, std::uint32_t cap) noexcept {
    const double rate = static_cast<double>(samples_) / static_cast<double>(elapsed);
    const double mean = static_cast<double>(service_sum_) / samples_;
    const double s_min = static_cast<double>(s_min_);
    window_ = std::clamp(window_, floor, cap);
    if (probing_) {
      probing_ = false;
      if (probe_min_ != kNone) s_min_ = probe_min_;
      s_min_at_ = now;
      window_ = std::clamp(saved_window_, floor, cap);
    } else if (now - s_min_at_ > kHorizon) {
      probing_ = true;
      saved_window_ = window_;
      probe_start_ = now;
      probe_min_ = kNone;
      window_ = std::max(floor, window_ / 2);
    } else {
      const bool queueing = mean > 2 * s_min;
      const bool rising = rate * 16 > prev_rate_ * 17;
      const bool fast = 2 * mean <= 3 * s_min;
      if (slow_start_ && !fast) {
        // Slow start ends: the last doubling overshot; back to the window
        // that was still fast, and on additively from there.
        slow_start_ = false;
        window_ = std::max(floor, window_ / 2);
      } else if (queueing && !rising) {
        window_ = std::max(floor, window_ - std::max<std::uint32_t>(1, window_ / 8));
      } else if (fast && full_) {
        const std::uint64_t grown = slow_start_ ? std::uint64_t{window_} * 2 : std::uint64_t{window_} + 1;
        window_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(grown, cap));
      }
    }
    prev_rate_ = rate;
    samples_ = 0;
    service_sum_ = 0;
    full_ = false;
    interval_start_ = now;
  }

  static constexpr Nanos kNone = std::numeric_limits<Nanos>::max();

  std::uint32_t window_ = kInitialWindow;
  std::uint32_t saved_window_ = kInitialWindow;
  std::uint32_t samples_ = 0;
  bool full_ = false;
  bool slow_start_ = true;
  bool probing_ = false;
  Nanos service_sum_ = 0;
  Nanos interval_start_ = 0;
  Nanos s_min_ = kNone;
  Nanos s_min_at_ = 0;
  Nanos probe_start_ = 0;
  Nanos probe_min_ = kNone;
  double prev_rate_ = 0;
};

}  // namespace ioband::qos::detail
