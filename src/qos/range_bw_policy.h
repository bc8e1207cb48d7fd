// range-bw: per-group min-bw (reserved) and max-bw (cap), in KiB/s.
//
// The math, in the style of mClock (Gulati, Merchant, Varman 2010), which
// turns dm-ioband's per-second token periods into tags:
//
//   reservation tag of g        R_g: when g's next min-bw byte is due
//   g is behind its min-bw      R_g <= now
//   reservation rule            among groups behind their min-bw, the smallest
//                               R_g goes first (earliest deadline), whatever
//                               the weights; then
//                                   R_g := max(R_g, now - 100 ms) + bytes / min_bw
//                               so a backlogged group behind its reservation
//                               catches up (several at one instant if the storage
//                               completes in batches), by at most 100 ms' worth
//   coming back from idle       R_g := max(R_g, now): an idle group banks no
//                               reservation
//   spare rule                  otherwise, `fair` by weight over the groups not
//                               at their max-bw (start-time fair queueing,
//                               fair_policy.h, fair's cost model); requests
//                               released by reservation are not charged to the
//                               spare share
//   max-bw                      a leaky bucket of max_bw bytes/s with 100 ms of
//                               slack (limits.h), applied whatever the rule
//
// Guarantee: if the storage can serve the sum of the min-bw of the backlogged
// groups, each gets at least its min-bw over every window (within one request
// and the storage latency); no group exceeds max-bw beyond the bucket's bound;
// what is left is shared by weight. A group with max-bw alone is just capped.
#pragma once

#include <algorithm>
#include <cstdint>

#include "qos/fair_policy.h"
#include "qos/group.h"
#include "qos/token_bucket.h"

namespace ioband::qos::detail {

struct RangeBwPolicy {
  static std::uint64_t bytes_per_second(std::uint64_t kib) noexcept { return kib * 1024; }

  static bool has_reservation(const Group& group) noexcept {
    return group.extras && group.extras->range.min_kib != 0;
  }

  static bool has_cap(const Group& group) noexcept { return group.extras && group.extras->range.max_kib != 0; }

  // How far behind its reservation a backlogged group may be and still catch up.
  static constexpr Nanos kCatchUp = 100'000'000;

  static void normalize(GroupExtras& extras, Nanos now) noexcept { extras.reservation = std::max(extras.reservation, now); }

  static void charge_reservation(GroupExtras& extras, std::uint32_t bytes, Nanos now) noexcept {
    std::uint64_t rate = bytes_per_second(extras.range.min_kib);
    // At least one nanosecond per request, so a stream of 0-byte requests
    // cannot hold the reservation rule forever.
    std::uint64_t due = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(
        (static_cast<unsigned __int128>(bytes) * 1'000'000'000u + rate - 1) / rate));
    extras.reservation = std::max(extras.reservation, now - kCatchUp) + static_cast<Nanos>(due);
  }

  static void configure_cap(GroupExtras& extras) noexcept {
    std::uint64_t rate = bytes_per_second(extras.range.max_kib);
    extras.max_bw.reconfigure(rate, rate / 10);
  }
};

// The spare share is fair's order (the class it extends).
class RangeBwOrder final : public FairOrder {
 public:
  using FairOrder::FairOrder;

  Rule rule() const noexcept override { return Rule::spare; }
  void start(Group& group) noexcept override {
    FairOrder::start(group);
    if (group.extras) group.extras->reservation = 0;
  }
  void from_idle(Group& group, Nanos now) noexcept override {
    FairOrder::from_idle(group, now);
    if (group.extras) RangeBwPolicy::normalize(*group.extras, now);
  }
  bool charge(Group& group, const Request& request, Rule rule, Nanos now) noexcept override {
    if (RangeBwPolicy::has_cap(group)) group.extras->max_bw.charge(request.bytes);
    if (rule == Rule::reservation) {
      RangeBwPolicy::charge_reservation(*group.extras, request.bytes, now);
      return false;
    }
    return FairOrder::charge(group, request, rule, now);
  }
  bool has_reservation(const Group& group) const noexcept override { return RangeBwPolicy::has_reservation(group); }
  Nanos cap_available_at(Group& group, Nanos now) noexcept override {
    if (!RangeBwPolicy::has_cap(group)) return now;
    TokenBucket& cap = group.extras->max_bw;
    cap.advance(now);
    return cap.available_at(now);
  }
  bool anticipates() const noexcept override { return false; }
};

}  // namespace ioband::qos::detail
