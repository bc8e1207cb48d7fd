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
  if (!started_) {
    started_ = true;
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
  Wide drained = Wide{elapsed} * rate_ + remainder_;
  Wide units = drained / kNanosPerSecond;
  if (units >= level_) {
    level_ = 0;
    remainder_ = 0;
  } else {
    level_ -= static_cast<std::uint64_t>(units);
    remainder_ = static_cast<std::uint64_t>(drained % kNanosPerSecond);
  }
}

Nanos TokenBucket::available_at(Nanos now) const noexcept {
  if (level_ <= capacity_) return now;
  // Need (level - capacity) units drained: ceil((excess * 1e9 - remainder) / rate).
  Wide needed = Wide{level_ - capacity_} * kNanosPerSecond - remainder_;
  Wide wait = (needed + rate_ - 1) / rate_;
  return now + static_cast<Nanos>(wait);
}

void TokenBucket::charge(std::uint64_t units) noexcept {
  std::uint64_t room = UINT64_MAX - level_;
  level_ += std::min(units, room);
}

void LimitState::configure_pair(Pair& pair, const Rate& rate, std::uint64_t unit) noexcept {
  if (rate.rate == 0) {
    pair.sustained.reconfigure(0, 0);
    pair.burst.reconfigure(0, 0);
    return;
  }
  std::uint64_t sustained_rate = rate.rate * unit;
  std::uint64_t capacity = rate.max > rate.rate ? (rate.max - rate.rate) * unit * rate.max_length
                                                : sustained_rate / 10;
  pair.sustained.reconfigure(sustained_rate, capacity);
  if (rate.max > rate.rate) {
    pair.burst.reconfigure(rate.max * unit, rate.max * unit / 10);
  } else {
    pair.burst.reconfigure(0, 0);
  }
}

void LimitState::configure(const Limits& limits) noexcept {
  limits_ = limits;
  configure_pair(iops_[total], limits.iops_total, kIopsUnit);
  configure_pair(iops_[read], limits.iops_read, kIopsUnit);
  configure_pair(iops_[write], limits.iops_write, kIopsUnit);
  configure_pair(bps_[total], limits.bps_total, 1);
  configure_pair(bps_[read], limits.bps_read, 1);
  configure_pair(bps_[write], limits.bps_write, 1);
}

std::uint64_t LimitState::iops_units(std::uint32_t bytes) const noexcept {
  if (limits_.iops_size == 0 || bytes <= limits_.iops_size) return kIopsUnit;
  return std::uint64_t{bytes} * kIopsUnit / limits_.iops_size;
}

Nanos LimitState::available_at(Direction direction, std::uint32_t bytes, Nanos now,
                               bool* direction_specific) noexcept {
  (void)bytes;  // a request passes while the level is within capacity, whatever its size
  int own = direction == Direction::read ? read : write;
  Nanos at = now;
  bool specific = false;
  auto consider = [&](TokenBucket& bucket, bool is_direction) {
    if (!bucket.enabled()) return;
    bucket.advance(now);
    Nanos t = bucket.available_at(now);
    if (t > at) {
      at = t;
      specific = is_direction;
    }
  };
  for (Pair* pair : {&iops_[total], &bps_[total]}) {
    consider(pair->sustained, false);
    consider(pair->burst, false);
  }
  for (Pair* pair : {&iops_[own], &bps_[own]}) {
    consider(pair->sustained, true);
    consider(pair->burst, true);
  }
  if (direction_specific) *direction_specific = specific;
  return at;
}

void LimitState::charge(Direction direction, std::uint32_t bytes, Nanos now) noexcept {
  int own = direction == Direction::read ? read : write;
  std::uint64_t ops = iops_units(bytes);
  for (int index : {static_cast<int>(total), own}) {
    for (TokenBucket* bucket : {&iops_[index].sustained, &iops_[index].burst}) {
      if (!bucket->enabled()) continue;
      bucket->advance(now);
      bucket->charge(ops);
    }
    for (TokenBucket* bucket : {&bps_[index].sustained, &bps_[index].burst}) {
      if (!bucket->enabled()) continue;
      bucket->advance(now);
      bucket->charge(bytes);
    }
  }
}

}  // namespace ioband::qos
