#include "qos/token_bucket.h"

#include <algorithm>
#include <cassert>

namespace ioband::qos {

namespace {
constexpr std::uint64_t kNanosPerSecond = 1'000'000'000;
// 128-bit intermediate: elapsed (< 2^63) * rate (< 2^48) needs more than 64 bits.
using Wide = unsigned __int128;
}  // namespace

void TokenBucket::advance(Nanos now) noexcept {
  if (last_ == kNotStarted) {
    last_ = now;
    return;
  }
  if (now <= last_) return;
  std::uint64_t elapsed = static_cast<std::uint64_t>(now - last_);
  last_ = now;
  if (level_ == 0) {
    remainder_ = 0;
    return;
  }
  std::uint64_t units, remainder;
  std::uint64_t product;
  if (!__builtin_mul_overflow(elapsed, rate_, &product) && product <= UINT64_MAX - remainder_) {
    // The common case (elapsed * rate < 2^64): a division by a constant.
    std::uint64_t drained = product + remainder_;
    units = drained / kNanosPerSecond;
    remainder = drained % kNanosPerSecond;
  } else {
    Wide drained = Wide{elapsed} * rate_ + remainder_;
    Wide wide_units = drained / kNanosPerSecond;
    units = wide_units >= level_ ? level_ : static_cast<std::uint64_t>(wide_units);
    remainder = static_cast<std::uint64_t>(drained % kNanosPerSecond);
  }
  if (units >= level_) {
    level_ = 0;
    remainder_ = 0;
  } else {
    level_ -= units;
    remainder_ = remainder;
  }
}

Nanos TokenBucket::available_at(Nanos now, std::uint64_t spare) const noexcept {
  const std::uint64_t threshold = capacity_ > spare ? capacity_ - spare : 0;
  if (level_ <= threshold) return now;
  // Need (level - threshold) units drained: ceil((excess * 1e9 - remainder) / rate).
  Wide needed = Wide{level_ - threshold} * kNanosPerSecond - remainder_;
  Wide wait = (needed + rate_ - 1) / rate_;
  return now + static_cast<Nanos>(wait);
}

void TokenBucket::charge(std::uint64_t units) noexcept {
  std::uint64_t room = UINT64_MAX - level_;
  level_ += std::min(units, room);
}

void LimitState::configure_rate(const Rate& rate, Scope scope, bool bytes, const LimitState& old) noexcept {
  if (rate.rate == 0) return;
  std::uint64_t unit = bytes ? 1 : kIopsUnit;
  std::uint64_t sustained_rate = rate.rate * unit;
  std::uint64_t capacity =
      rate.max > rate.rate ? (rate.max - rate.rate) * unit * rate.max_length : sustained_rate / 10;
  // Keep the level of the matching bucket of the old configuration.
  auto add = [&](std::uint64_t bucket_rate, std::uint64_t bucket_capacity, int nth) {
    Slot slot{TokenBucket(bucket_rate, bucket_capacity), scope, bytes};
    int seen = 0;
    for (std::uint8_t i = 0; i < old.count_; ++i) {
      const Slot& previous = old.slots_[i];
      if (previous.scope == scope && previous.bytes == bytes && seen++ == nth) {
        slot.bucket = previous.bucket;
        slot.bucket.reconfigure(bucket_rate, bucket_capacity);
        break;
      }
    }
    slots_[count_++] = slot;
  };
  add(sustained_rate, capacity, 0);
  if (rate.max > rate.rate) add(rate.max * unit, rate.max * unit / 10, 1);
}

void LimitState::configure(const Limits& limits) noexcept {
  LimitState old = *this;
  count_ = 0;
  limits_ = limits;
  iops_size_ = limits.iops_size;
  configure_rate(limits.iops_total, Scope::total, false, old);
  configure_rate(limits.iops_read, Scope::read, false, old);
  configure_rate(limits.iops_write, Scope::write, false, old);
  configure_rate(limits.bps_total, Scope::total, true, old);
  configure_rate(limits.bps_read, Scope::read, true, old);
  configure_rate(limits.bps_write, Scope::write, true, old);
}

std::uint64_t LimitState::iops_units(std::uint32_t bytes) const noexcept {
  if (iops_size_ == 0 || bytes <= iops_size_) return kIopsUnit;
  return std::uint64_t{bytes} * kIopsUnit / iops_size_;
}

// A request passes while every bucket's level is within its capacity,
// whatever its size: the size is charged after it passes.
Nanos LimitState::available_at(Direction direction, Nanos now, bool* direction_specific) noexcept {
  Nanos at = now;
  bool specific = false;
  for (std::uint8_t i = 0; i < count_; ++i) {
    Slot& slot = slots_[i];
    if (!applies(slot.scope, direction)) continue;
    slot.bucket.advance(now);
    Nanos t = slot.bucket.available_at(now);
    if (t > at) {
      at = t;
      specific = slot.scope != Scope::total;
    }
  }
  if (direction_specific) *direction_specific = specific;
  return at;
}

Nanos LimitState::available_at_leaving(Direction direction, Nanos now, std::uint32_t requests,
                                       std::uint32_t bytes) noexcept {
  Nanos at = now;
  const std::uint64_t ops = iops_units(bytes) * requests;
  const std::uint64_t byte_units = std::uint64_t{bytes} * requests;
  for (std::uint8_t i = 0; i < count_; ++i) {
    Slot& slot = slots_[i];
    if (!applies(slot.scope, direction)) continue;
    slot.bucket.advance(now);
    at = std::max(at, slot.bucket.available_at(now, slot.bytes ? byte_units : ops));
  }
  return at;
}

void LimitState::charge(Direction direction, std::uint32_t bytes, Nanos now) noexcept {
  std::uint64_t ops = iops_units(bytes);
  for (std::uint8_t i = 0; i < count_; ++i) {
    Slot& slot = slots_[i];
    if (!applies(slot.scope, direction)) continue;
    slot.bucket.advance(now);
    slot.bucket.charge(slot.bytes ? bytes : ops);
  }
}

}  // namespace ioband::qos
