// A leaky bucket in debt form, and the set of buckets that enforce one Limits
// value (see limits.h for the math and the guarantee).
//
//            cost of each passed request
//                      |
//                      v
//     capacity  - - +-----+ - -   a request may pass while level <= capacity
//                   |#####|
//                   |#####| level (debt, in units)
//                   +--+--+
//                      |  drains at `rate` units per second
//
// Pure: time is an argument (nanoseconds on the caller's steady clock).
#pragma once

#include <array>
#include <cstdint>

#include "qos/limits.h"
#include "qos/request.h"

namespace ioband::qos {

// Nanoseconds since the steady clock's epoch: the scheduler's time.
using Nanos = std::int64_t;
inline Nanos to_nanos(TimePoint t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline TimePoint from_nanos(Nanos ns) noexcept {
  return TimePoint(std::chrono::duration_cast<Duration>(std::chrono::nanoseconds(ns)));
}

class TokenBucket {
 public:
  TokenBucket() = default;
  // rate: units per second (> 0); capacity: units of slack before requests wait.
  TokenBucket(std::uint64_t rate, std::uint64_t capacity) noexcept : rate_(rate), capacity_(capacity) {}

  bool enabled() const noexcept { return rate_ != 0; }
  std::uint64_t rate() const noexcept { return rate_; }
  std::uint64_t capacity() const noexcept { return capacity_; }
  std::uint64_t level() const noexcept { return level_; }

  // Drains the bucket up to `now` (time never runs backwards here).
  void advance(Nanos now) noexcept;
  // After advance(now): may a request pass now?
  bool allows() const noexcept { return level_ <= capacity_; }
  // After advance(now): the earliest time a request may pass (now if it may).
  Nanos available_at(Nanos now) const noexcept { return available_at(now, 0); }
  // After advance(now): the earliest time a request may pass and leave
  // `spare` units of room below the capacity for others (at the latest when
  // the bucket is empty: waiting longer would waste its drain).
  Nanos available_at(Nanos now, std::uint64_t spare) const noexcept;
  // Adds the cost of a passed request.
  void charge(std::uint64_t units) noexcept;
  // Keeps the level when the rate or capacity changes.
  void reconfigure(std::uint64_t rate, std::uint64_t capacity) noexcept {
    rate_ = rate;
    capacity_ = capacity;
  }

 private:
  std::uint64_t rate_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t level_ = 0;
  std::uint64_t remainder_ = 0;  // (elapsed * rate) mod 1e9 not yet drained
  Nanos last_ = kNotStarted;
  static constexpr Nanos kNotStarted = INT64_MIN;
};

// iops buckets count in 1/kIopsUnit of a request, so iops-size can split one.
inline constexpr std::uint64_t kIopsUnit = 1024;

// The buckets of one Limits value: for each of iops/bps x total/read/write
// that is set, a sustained bucket and, when *-max is set, a burst-rate
// bucket. Only the buckets in use are stored, side by side, so checking a
// request touches one or two cache lines however many keys exist.
class LimitState {
 public:
  LimitState() = default;
  explicit LimitState(const Limits& limits) { configure(limits); }

  // New limits; bucket levels are kept so a change never grants a free burst.
  // All-zero limits leave no bucket: the state is inactive.
  void configure(const Limits& limits) noexcept;
  bool active() const noexcept { return count_ != 0; }
  const Limits& limits() const noexcept { return limits_; }

  // Earliest time a request of this direction may pass (now if it may).
  // `direction_specific` tells whether a read/write bucket (not a total one)
  // is what holds it back.
  Nanos available_at(Direction direction, Nanos now, bool* direction_specific = nullptr) noexcept;
  void charge(Direction direction, std::uint32_t bytes, Nanos now) noexcept;
  // Earliest time a request of this direction may pass with room left for
  // `requests` more requests of `bytes` each (their tokens kept for them):
  // see available_at(now, spare) of TokenBucket.
  Nanos available_at_leaving(Direction direction, Nanos now, std::uint32_t requests, std::uint32_t bytes) noexcept;

  // Units charged to the iops buckets for one request.
  std::uint64_t iops_units(std::uint32_t bytes) const noexcept;

 private:
  enum class Scope : std::uint8_t { total, read, write };
  struct Slot {
    TokenBucket bucket;
    Scope scope;
    bool bytes;  // bps (else iops)
  };
  static bool applies(Scope scope, Direction direction) noexcept {
    return scope == Scope::total || (scope == Scope::read) == (direction == Direction::read);
  }
  void configure_rate(const Rate& rate, Scope scope, bool bytes, const LimitState& old) noexcept;

  // What a request touches first: the count, iops-size, then the buckets in
  // use; the configuration as it was given last.
  std::uint8_t count_ = 0;
  std::uint64_t iops_size_ = 0;
  std::array<Slot, 12> slots_{};
  Limits limits_{};
};

}  // namespace ioband::qos
