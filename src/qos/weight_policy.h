// weight and weight-iosize: dm-ioband's token policy.
//
// The math. W = sum of the weights of every group of every device of the
// device group (idle ones included), P = the token pool (`token`), c =
// `carryover`, E = the device group's epoch.
//
//   initial tokens of group g    I_g = (P * w_g / W + 1) tokens     (dm-ioband's formula)
//   cost of a request            weight: 1 token; weight-iosize: 1 token per 512-byte sector
//   a group may pass a request   while it has tokens left (t_g > 0); passing
//                                costs its tokens, and t_g may end below 0 (a debt)
//   refill                       when no group that has requests ready to go has
//                                tokens, E := E + 1, and every group's tokens become
//                                    t_g := min(t_g + k * I_g, (c + 1) * I_g)
//                                for the k epochs it missed (applied lazily): unused
//                                tokens carry over, at most c epochs' worth; debts
//                                are repaid in full.
//   order among groups           the group with the largest share of its tokens left
//   with tokens                  (t_g / I_g) passes first (dm-ioband's iopriority);
//                                in one integer, the smallest
//                                    K_g = e_g - t_g / I_g     (e_g: epoch of t_g)
//                                which a lazy refill leaves unchanged unless capped,
//                                so K_g is a heap key; g has tokens iff K_g < E.
//   anticipation (io_throttle)   dm-ioband's "dominant group": a group that used at
//                                least 1/8 of its tokens and 1/16 of the pool this
//                                epoch and still has the most tokens. If it has no
//                                request queued now and holds more than 1/8 of I_g,
//                                the epoch is not renewed (others wait for it) unless
//                                fewer than io_throttle requests are in flight.
//
// Guarantee: over an epoch in which every group stays backlogged, group g
// passes I_g tokens' worth, i.e. w_g / W of the pool (+1 token). The refill
// is per epoch, so service is bursty on the scale of one pool: a group
// returning from idle brings up to c epochs of tokens and runs ahead of the
// others for as long (come back from idle: bounded by c * I_g tokens, never
// starved: the largest share left goes first). `fair` avoids that burst.
//
// Not reproduced from dm-ioband: the per-epoch "extra" redistribution of
// tokens left in the pool, the 1/100 quantization of iopriority and the
// 20-token batches (which only add burstiness), and the per-group cap on
// blocked requests (the NBD client's queue depth bounds that here).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "qos/cost.h"
#include "qos/group.h"
#include "qos/order_policy.h"

namespace ioband::qos::detail {

// K_g in units of 1 / 2^kEpochShift epoch.
inline constexpr unsigned kEpochShift = 24;

struct WeightPolicy {
  std::uint64_t pool;          // P, tokens
  std::uint32_t carryover;     // c
  std::uint64_t weight_total;  // W
  std::uint16_t generation;    // bumped when P, c or any weight changes
  std::int64_t generation_epoch;  // E when it was bumped

  // I_g in cost units.
  std::int64_t initial(const Group& group) const noexcept {
    std::uint64_t tokens = weight_total == 0 ? 1 : pool * group.weight / weight_total + 1;
    return static_cast<std::int64_t>(tokens * kCostPerToken);
  }

  static std::int64_t epoch_of(const Group& group, std::int64_t epoch) noexcept {
    // Group epochs are kept mod 2^32; a group is never more than 2^31 behind in
    // practice (and only its carryover cap would be affected).
    std::uint32_t behind = static_cast<std::uint32_t>(epoch) - group.epoch;
    return epoch - static_cast<std::int64_t>(std::min<std::uint32_t>(behind, 1u << 31));
  }

  // Tokens after the lazy refill for epoch E (without changing the group).
  std::int64_t effective_tokens(const Group& group, std::int64_t epoch) const noexcept {
    std::int64_t missed = epoch - epoch_of(group, epoch);
    if (missed == 0) return group.tokens;
    std::int64_t i = initial(group);
    std::int64_t cap = static_cast<std::int64_t>(carryover + 1) * i;
    // missed * i may be huge for a long-idle group: saturate at the cap.
    if (missed > static_cast<std::int64_t>(carryover) + 1 + (group.tokens < 0 ? -group.tokens / i + 1 : 0)) {
      return cap;
    }
    return std::min(group.tokens + missed * i, cap);
  }

  // Come back from idle: the refill it missed, or fresh tokens if the
  // settings changed meanwhile (dm-ioband resets every group then; idle
  // groups are reset lazily, here).
  void normalize(Group& group, std::int64_t epoch) const noexcept {
    if (group.generation != generation) reset(group, generation_epoch);
    refill(group, epoch);
  }

  void refill(Group& group, std::int64_t epoch) const noexcept {
    if (group.epoch == static_cast<std::uint32_t>(epoch)) return;
    group.tokens = effective_tokens(group, epoch);
    group.epoch = static_cast<std::uint32_t>(epoch);
    group.consumed = 0;
  }

  // Fresh tokens for the epoch (a weight or pool change, or a new policy).
  void reset(Group& group, std::int64_t epoch) const noexcept {
    group.tokens = initial(group);
    group.epoch = static_cast<std::uint32_t>(epoch);
    group.consumed = 0;
    group.generation = generation;
  }

  // K_g = e_g - t_g / I_g, fixed point, floor.
  std::int64_t key(const Group& group, std::int64_t epoch) const noexcept {
    std::int64_t i = initial(group);
    __int128 ratio;
    constexpr std::int64_t kNarrow = std::int64_t{1} << (63 - kEpochShift);
    if (group.tokens > -kNarrow && group.tokens < kNarrow) {
      // Almost always: t_g * 2^24 fits in 64 bits, so does the division
      // (a 128-bit one is a library call).
      std::int64_t scaled = group.tokens * (std::int64_t{1} << kEpochShift);
      std::int64_t narrow = scaled / i;
      if (scaled % i != 0 && scaled < 0) --narrow;  // floor
      ratio = narrow;
    } else {
      __int128 scaled = static_cast<__int128>(group.tokens) << kEpochShift;
      ratio = scaled / i;
      if (scaled % i != 0 && scaled < 0) --ratio;  // floor
    }
    return static_cast<std::int64_t>((static_cast<__int128>(epoch_of(group, epoch)) << kEpochShift) - ratio);
  }

  static bool has_tokens(std::int64_t key, std::int64_t epoch) noexcept {
    return key < (epoch << kEpochShift);
  }

  // The epoch to move to so that the group with key K has tokens.
  static std::int64_t epoch_for(std::int64_t key) noexcept {
    std::int64_t floor = key >> kEpochShift;  // arithmetic shift: floor
    return floor + 1;
  }

  // dm-ioband's "really active" test for the dominant group.
  bool active(const Group& group) const noexcept {
    std::int64_t consumed = static_cast<std::int64_t>(group.consumed) * static_cast<std::int64_t>(kCostPerToken);
    return consumed * 8 >= initial(group) && consumed * 16 >= static_cast<std::int64_t>(pool * kCostPerToken);
  }

  static void add_consumed(Group& group, Cost cost) noexcept {
    std::uint64_t tokens = group.consumed + (cost + kCostPerToken - 1) / kCostPerToken;
    group.consumed = static_cast<std::uint32_t>(std::min<std::uint64_t>(tokens, UINT32_MAX));
  }

  // dm-ioband's iopriority test: more than 1/8 of its tokens left.
  bool holds_many_tokens(const Group& group, std::int64_t epoch) const noexcept {
    return effective_tokens(group, epoch) * 8 > initial(group);
  }
};

inline Cost weight_cost(Policy policy, std::uint32_t bytes) noexcept {
  return request_cost(policy == Policy::weight ? kWeightCostModel : kIosizeCostModel, bytes);
}

// weight (one token a request) or weight-iosize (one a sector).
class WeightOrder final : public OrderPolicy {
 public:
  WeightOrder(const PolicySettings& settings, Policy policy) noexcept : OrderPolicy(settings), policy_(policy) {}

  Rule rule() const noexcept override { return Rule::weight; }
  std::int64_t key(const Group& group) const noexcept override { return math().key(group, epoch_); }
  void start(Group& group) noexcept override { math().reset(group, epoch_); }
  void from_idle(Group& group, Nanos) noexcept override { math().normalize(group, epoch_); }
  // Its tokens are per epoch, whatever held it.
  void from_hold(Group& group, Nanos) noexcept override { math().normalize(group, epoch_); }

  // All candidates are out of tokens: start the next epoch unless
  // dm-ioband's anticipation of the dominant group says to wait.
  bool may_go(std::int64_t best_key, std::uint32_t in_flight, std::uint32_t io_throttle) noexcept override {
    if (WeightPolicy::has_tokens(best_key, epoch_)) return true;
    if (dominant_ != nullptr && dominant_->head == nullptr && !dominant_->parked() && in_flight >= io_throttle &&
        math().holds_many_tokens(*dominant_, epoch_)) {
      return false;
    }
    epoch_ = std::max(epoch_ + 1, WeightPolicy::epoch_for(best_key));
    dominant_ = nullptr;
    return true;
  }

  // A node's reservation spends its groups' tokens (their weights split
  // it), beyond what their epochs give: gone, it would leave them that
  // debt to wait out, epoch by epoch. They start the epoch with no tokens
  // left, as a group that spent its own.
  void drop_lead(std::span<Group* const> groups) noexcept override {
    const WeightPolicy weights = math();
    for (Group* g : groups) {
      weights.normalize(*g, epoch_);
      g->tokens = std::max<std::int64_t>(g->tokens, 0);
    }
  }

  bool charge(Group& group, const Request& request, Rule, Nanos) noexcept override {
    const WeightPolicy weights = math();
    weights.normalize(group, epoch_);
    const auto cost = static_cast<std::int64_t>(weight_cost(policy_, request.bytes));
    if (weights.active(group) &&
        (dominant_ == nullptr || weights.effective_tokens(group, epoch_) > weights.effective_tokens(*dominant_, epoch_))) {
      dominant_ = &group;
    }
    if (group.tokens > 0 && group.tokens - cost <= 0 && dominant_ == &group) dominant_ = nullptr;
    group.tokens -= cost;
    WeightPolicy::add_consumed(group, static_cast<Cost>(cost));
    return false;
  }
  Cost cost_of(const Request& request) const noexcept override { return weight_cost(policy_, request.bytes); }
  bool charge_more(Group& group, Cost cost) noexcept override {
    const auto more = static_cast<std::int64_t>(std::min(cost, kMaxCost));
    if (group.tokens > 0 && group.tokens - more <= 0 && dominant_ == &group) dominant_ = nullptr;
    group.tokens -= more;
    WeightPolicy::add_consumed(group, cost);
    return false;
  }

  // dm-ioband refills every group when a weight or the pool changes: queued
  // groups now (the device group calls start()), idle ones lazily when they
  // come back (their generation is old).
  bool settings_changed() noexcept override {
    ++generation_;
    generation_epoch_ = epoch_;
    dominant_ = nullptr;
    return true;
  }
  void forget(const Group* group) noexcept override {
    if (dominant_ == group) dominant_ = nullptr;
  }

 private:
  WeightPolicy math() const noexcept {
    return {settings_.token, settings_.carryover, settings_.weight_total, generation_, generation_epoch_};
  }

  Policy policy_;
  std::int64_t epoch_ = 0;      // E
  Group* dominant_ = nullptr;   // dm-ioband's dominant group
  std::uint16_t generation_ = 0;
  std::int64_t generation_epoch_ = 0;
};

}  // namespace ioband::qos::detail
