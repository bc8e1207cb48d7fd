// The device model learned while serving: what each kind of request really
// costs this storage, and how fast the storage is now.
//
// Signal. While the storage is saturated (the storage, not the clients nor
// a limit, sets the pace: see the device group), the time between two
// completions is device time the second one used. Over a phase of kPhase of
// such time (and at least kMinCompletions):
//     T  =  sum over completions of  base(r) * factor(class(r))
// where base(r) is the device model's time for r (device_model.h) and
// factor() what this learner has found. The learner compares T with the
// right-hand side, P:
//   - one class alone (>= 95 % of P): that class costs T / P times what is
//     thought; its shape factor moves there (shape learning: how a 1 MiB
//     sequential write compares with a 4 KiB random read on this storage);
//   - a mix: the storage as a whole is T / P times slower; the common scale
//     moves there (the storage slowed down under load from outside ioband,
//     or sped up). A mix cannot tell which class is off.
// Each step goes half the way (in ratio), so a change of the storage's
// speed is tracked within a few phases (about 0.5 s); a ratio beyond
// kMaxStep in one phase is taken as kMaxStep (a hiccup moves it little).
//
// Classes: direction x sequential or random x small (<= 64 KiB) or large.
// FLUSH, TRIM and WRITE_ZEROES are charged by the model and not learned
// from (their latency says little of the device time they take).
//
// What it changes. `fair` charges base(r) * shape(class(r)): only the
// shape moves shares. The scale goes into the learned model that status
// shows (learned_model()). A calibrated model (iobandctl calibrate) is the
// base the learner starts from; `model default` or a new calibration
// starts it afresh.
//
// Pure: time comes in as arguments.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "qos/device_model.h"
#include "qos/request.h"
#include "qos/token_bucket.h"

namespace ioband::qos::detail {

class ModelLearner {
 public:
  static constexpr Nanos kPhase = 100'000'000;           // 100 ms
  static constexpr std::uint32_t kMinCompletions = 32;  // per phase
  static constexpr double kAlone = 0.95;                // of its device time: one class
  static constexpr double kMaxStep = 4;                 // ratio in one phase
  static constexpr double kMaxFactor = 64;              // either way, of the base model
  static constexpr std::uint32_t kLarge = 64 * 1024;
  static constexpr int kClasses = 8;

  // The class of a read or write (-1: not learned).
  static int class_of(OpKind op, Direction direction, bool sequential, std::uint32_t bytes) noexcept {
    if (op != OpKind::read && op != OpKind::write) return -1;
    return (direction == Direction::write ? 4 : 0) + (sequential ? 2 : 0) + (bytes > kLarge ? 1 : 0);
  }

  // The shape factor of a class: what fair multiplies the model's time by.
  double shape(int c) const noexcept { return c < 0 ? 1.0 : shape_[static_cast<std::size_t>(c)]; }
  // How much slower (> 1) or faster the storage is than the model says.
  double scale() const noexcept { return scale_; }

  void reset() noexcept { *this = ModelLearner{}; }

  // A request of class `c` whose model time is `base_ns` completed at `now`;
  // `saturated`: the storage was saturated as it completed (see the device
  // group); `emptied`: nothing was left in flight after it. The time since
  // the previous completion counts as device time of this one when both
  // found the storage saturated and the previous one left something in
  // flight. True when a phase ended and the learned figures moved.
  //
  // The last request of a burst finds the storage saturated (one 1 MiB
  // write is worth more than the knee's reads) and leaves it empty: the
  // pause before the next client's first completion (fio starting its next
  // job, 300-400 ms on this disk) was counted as device time, and moved a
  // class twice over in one phase (docs/weights.md, "The learner across
  // phases").
  bool completed(int c, double base_ns, bool saturated, bool emptied, Nanos now) noexcept {
    const bool counts = saturated && last_saturated_ && !last_emptied_ && now >= last_completion_;
    if (counts) {
      elapsed_ += static_cast<double>(now - last_completion_);
      ++completions_;
      if (c >= 0) {
        base_[static_cast<std::size_t>(c)] += base_ns;
      } else {
        other_ += base_ns;
      }
    }
    last_completion_ = now;
    last_saturated_ = saturated;
    last_emptied_ = emptied;
    if (elapsed_ < static_cast<double>(kPhase) || completions_ < kMinCompletions) return false;
    const bool moved = learn(elapsed_);
    elapsed_ = 0;
    completions_ = 0;
    base_.fill(0);
    other_ = 0;
    return moved;
  }

  // The storage's figures as learned: `base` with each class's factor.
  DeviceModel learned(const DeviceModel& base) const noexcept {
    auto f = [&](int c) { return scale_ * shape_[static_cast<std::size_t>(c)]; };
    DeviceModel m = base;
    m.read_rand_iops = base.read_rand_iops / f(0);
    m.read_bps = base.read_bps / f(1);
    m.read_seq_iops = base.read_seq_iops / f(2);
    m.write_rand_iops = base.write_rand_iops / f(4);
    m.write_bps = base.write_bps / f(7);
    m.write_seq_iops = base.write_seq_iops / f(6);
    return m;
  }

 private:
  bool learn(double elapsed) noexcept {
    double predicted = other_ * scale_;
    int top = -1;
    double top_time = 0;
    for (int c = 0; c < kClasses; ++c) {
      const double t = base_[static_cast<std::size_t>(c)] * scale_ * shape_[static_cast<std::size_t>(c)];
      predicted += t;
      if (t > top_time) {
        top_time = t;
        top = c;
      }
    }
    if (predicted <= 0) return false;
    const double step = std::sqrt(std::clamp(elapsed / predicted, 1 / kMaxStep, kMaxStep));
    if (top >= 0 && top_time >= kAlone * predicted) {
      double& s = shape_[static_cast<std::size_t>(top)];
      s = std::clamp(s * step, 1 / kMaxFactor, kMaxFactor);
    } else {
      scale_ = std::clamp(scale_ * step, 1 / kMaxFactor, kMaxFactor);
    }
    return true;
  }

  std::array<double, kClasses> shape_ = {1, 1, 1, 1, 1, 1, 1, 1};
  double scale_ = 1;
  Nanos last_completion_ = 0;
  bool last_saturated_ = false;
  bool last_emptied_ = true;
  double elapsed_ = 0;  // saturated time in this phase, ns
  std::uint32_t completions_ = 0;
  std::array<double, kClasses> base_{};
  double other_ = 0;
};

}  // namespace ioband::qos::detail
