// fair: start-time fair queueing (Goyal, Vin, Cheng 1996) over one cost unit.
//
// The math. Each group g has a weight w_g; a request r of g costs c(r) cost
// units: its device time under the device model (device_model.h), so that
// shares are shares of the storage's time, not of requests. V is the
// device group's virtual time.
//
//   start tag of g's head request     S_g
//   when g's head r is dispatched     V := max(V, S_g)
//                                     S_g := S_g + c(r) / w_g      (its finish tag)
//   dispatch order                    the smallest S_g among groups allowed to go
//   coming back from idle             S_g := max(S_g, V)
//                                     -- no credit for the time it was away (it
//                                     cannot take over the storage), no debt (it
//                                     goes at once, ahead of every backlogged group
//                                     whose S is above V: it is never starved).
//   between two requests under a      S_g := max(S_g, V - 16 c / w_g): it stayed
//   device's or tenant's limit (its   busy (its client is a round trip away), with
//   requests out, or back < 10 ms)    at most 16 requests of lag; the limit keeps
//                                     it the tokens it is owed (device_group.cc)
//   held back by a limit (its own     S_g is kept: it stayed backlogged and the
//   or its device's)                  limit, not the policy, held it back; the lag
//                                     it builds buys nothing the limit does not
//                                     allow, and it competes fairly with the other
//                                     groups held back with it.
//   held back by another group's      S_g is kept, and V does not pass the least
//   latency target or reservation     S of the groups so held (`bound` of
//   (the guard, latency_target.h)     charge_cost): they stayed backlogged, and
//                                     what the protected group is dispatched by
//                                     weight meanwhile moves its own S, not the
//                                     clock the held ones come back by.
//                                     Otherwise a weight-1 reader going alone moved
//                                     V by a whole read at each dispatch, and two
//                                     writers at 1:3, back at their floors (below),
//                                     came back 3:1 in lag (docs/reservations.md).
//
// Guarantee (SFQ): for two groups i, j backlogged over any interval,
//   | W_i / w_i  -  W_j / w_j |  <=  cmax_i / w_i + cmax_j / w_j
// where W is the cost dispatched in the interval and cmax the largest cost of
// one request: each group stays within one request of its weighted share in
// every window, whatever its length. Weights apply to the next dispatch, so a
// weight change takes effect at once. Cost: O(log groups) per request.
//
// Tenants (tree.h). A group of a device in a tenant is charged c / e(g), e
// its effective weight in the tree (the product of the hweights on its path,
// in the root's units), and comes back from idle at its tenant's V_T (the
// largest start tag its tenant dispatched) rather than V, so a tenant held
// back by its shared limits splits that limit by its own weights.
//
// Busy groups (the order wait, admission.h). A deep group whose queue ran
// empty because all its requests are in the storage or on their way back
// from its client is not idle while one is still in the storage (with none
// there it comes back from idle: make_ready, device_group.cc): when it
// sends again it keeps the lag it had,
// down to V minus the cost of kBusyLag x its depth (busy_peak) requests like
// the one it sends (from_busy; not under a device's or tenant's limit,
// where the tokens kept for returns do it). And while such a group B lags the only group
// ready, A (or one that would go twice before any other ready group: a
// much lighter one beside it does not count), the
// ready one waits for it (up to the order wait) as if B had a
// request queued -- if B's client was away lately: half of its depth or
// more outside (neither queued nor in flight) at a completion within the
// last kRecentlyAway. B's place is its S when its queue ran empty, less its
// last request. A client off the CPU a moment is then paid back after (the
// others are held below their part of the places until it has caught up),
// where before its share was gone for good: it cannot hold more than its
// depth. A group that only lags because its depth is below its share keeps
// all its requests in flight and, once its client has not been away for
// kRecentlyAway, is not waited for: that would idle the storage.
//
// What counts is the service each was given since both became busy, not
// the tags: B's lag from before A came back from idle is not A's debt.
// With s_A A's tag when it last came back from idle (busy_start), A waits
// while
//   S_A - from > kOrderSlack of A's requests, from = max(place_B, s_A),
// and, if B came back (from_busy) after A's start, from at least
//   s_A + (place_B - S_B when it came back),
// what B was served since. Exact while B lagged at A's start and had
// nothing queued from then until now, or until its one return since;
// what B was served before its last return (if it also had requests
// queued after A came) is not counted, and A then waits for more than
// B's due, within the order wait and kRecentlyAway. O(1) beside the heap.
//
// The bound keeps a group whose demand is below its share from banking
// credit; the slack keeps the others from waiting on a lag of a request or
// two. In the simulator with clients off the CPU 1 ms in every 10: the
// README demo on elastic storage 63.0/37.0 -> 65.1/34.9 for 66.7/33.3
// (docs/weights.md).
//
// Virtual time is fixed point: c / w is computed as c * 2^kVtimeShift / w
// (at least 1); when V passes 2^61 every tag is shifted down (rebase), which
// preserves the order and happens at most every few hours.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "qos/cost.h"
#include "qos/group.h"
#include "qos/order_policy.h"

namespace ioband::qos::detail {

inline constexpr unsigned kVtimeShift = 16;
inline constexpr std::uint32_t kBusyLag = 4;     // requests of the busy group's depth
inline constexpr std::uint32_t kOrderSlack = 8;  // requests of the waiting group
inline constexpr unsigned kAwayShift = 1;        // away: half its depth or more outside
inline constexpr Nanos kRecentlyAway = 100'000'000;  // 10 ms lost one cell (docs/weights.md)
inline constexpr std::int64_t kVtimeRebase = std::int64_t{1} << 61;

struct FairPolicy {
  // c / w in virtual time. cost < 2^40 (cost.h bounds) so the shift fits.
  static std::int64_t advance(Cost cost, std::uint32_t weight) noexcept {
    std::uint64_t step = (cost << kVtimeShift) / weight;
    return static_cast<std::int64_t>(std::max<std::uint64_t>(step, 1));
  }

  // Come back from idle / from a limit.
  static void normalize(Group& group, std::int64_t vtime) noexcept { group.vtime = std::max(group.vtime, vtime); }
};

class FairOrder : public OrderPolicy {
 public:
  using OrderPolicy::OrderPolicy;

  Rule rule() const noexcept override { return Rule::fair; }
  std::int64_t key(const Group& group) const noexcept override { return group.vtime; }
  void start(Group& group) noexcept override { group.vtime = vtime_; }
  void from_idle(Group& group, Nanos) noexcept override {
    Tenant* tenant = group.device->tree.tenant;  // tree.h: a tenant's groups come back at V_T
    FairPolicy::normalize(group, tenant == nullptr ? vtime_ : tenant_vtime(*tenant, vtime_, rebases_));
  }

  // Between two requests under a limit (order_policy.h): a group comes
  // back as if it had stayed backlogged, its key kept up to kBetweenLag of
  // its requests behind where an idle group comes back (V, or V_T). Its
  // client is a round trip away, not gone: lifted to V at each return, a
  // 1-deep client lost the tokens of every late wake-up that found several
  // (docs/hierarchy.md). The lag is bounded, so a client that asks less
  // than its share banks no more than kBetweenLag requests.
  static constexpr std::int64_t kBetweenLag = 16;
  std::uint32_t requests_before(const Group& group, std::int64_t key, Cost cost,
                                std::uint32_t most) const noexcept override {
    const std::int64_t step = between_step(group, cost);
    const std::int64_t from = std::max(group.vtime, return_point(group) - kBetweenLag * step);
    if (from >= key) return 0;
    return static_cast<std::uint32_t>(std::min<std::int64_t>(most, (key - from + step - 1) / step));
  }
  // Every such group's `from` above is at least R - kBetweenLag * its
  // step, and its step is at most that of the lightest weight the device
  // holds, taken as not active (the smaller effective weight), with room
  // for the doubles' rounding.
  std::int64_t between_floor(const Device& device, std::uint32_t lightest, Cost cost) const noexcept override {
    const DeviceNode& node = device.tree;
    const double e = std::min<double>(lightest, effective_weight(lightest, false, node));
    const double step = static_cast<double>(cost << kVtimeShift) / e * (1 + 1e-9) + 2;
    if (!(step < 0x1p57)) return INT64_MIN;
    return return_point(node.tenant) - kBetweenLag * static_cast<std::int64_t>(step);
  }
  void from_between(Group& group, std::int64_t before, Cost cost) noexcept override {
    group.vtime = std::max(before, group.vtime - kBetweenLag * between_step(group, cost));
  }

  // Busy groups (above): back while still busy, it keeps its lag, up to
  // kBusyLag x its depth's requests like the one it sends.
  void from_busy(Group& group, Nanos now) noexcept override {
    if (rule() != Rule::fair) return from_idle(group, now);  // range-bw: its own tags
    Tenant* tenant = group.device->tree.tenant;
    const std::int64_t v = tenant == nullptr ? vtime_ : tenant_vtime(*tenant, vtime_, rebases_);
    const Cost lag = std::min<Cost>(settings_.cost.of(*group.head) * kBusyLag * std::max<std::uint8_t>(group.busy_peak, 1),
                                    kMaxCost);
    group.vtime = std::max(group.vtime, v - FairPolicy::advance(lag, group.weight));
  }

  bool charge(Group& group, const Request& request, Rule, Nanos) noexcept override {
    return charge_cost(group, settings_.cost.of(request));
  }
  // A node's reservation serves its groups by their tags (their weights
  // split it), so they run ahead of V by what it gave them beyond their
  // weights' share. While it holds, that lead is right: the weights give
  // them nothing more until V catches up, and they get the larger of the
  // two. Kept once the reservation went, it would stop them until V caught
  // up (after 10 s of 20 % reserved for a node whose weights give it 1 %,
  // more than three minutes). The lead is measured at the least tag of the
  // node's active groups (queued or in flight); an idle one comes back
  // where any idle group does (from_idle), not ahead by what the
  // reservation gave it.
  void drop_lead(std::span<Group* const> groups) noexcept override {
    std::int64_t least = INT64_MAX;
    for (Group* g : groups) {
      if (g->head != nullptr || g->in_flight != 0) {
        least = std::min(least, g->vtime);
      } else {
        g->vtime = std::min(g->vtime, vtime_);
      }
    }
    if (least == INT64_MAX || least <= vtime_) return;
    const std::int64_t lead = least - vtime_;
    for (Group* g : groups) {
      if (g->head != nullptr || g->in_flight != 0) g->vtime -= lead;
    }
    // V_T, pushed ahead by the same groups (a node's groups share one tenant).
    if (Tenant* tenant = groups.front()->device->tree.tenant; tenant != nullptr && tenant->vtime > vtime_) {
      tenant->vtime = std::max(vtime_, tenant->vtime - lead);
    }
  }
  // charge() of a request that costs `cost` (settings_.cost.of(), within [1, kMaxCost]);
  // V moves to the group's S, but not past `bound` (the guard's held groups, above).
  bool charge_cost(Group& group, Cost cost, std::int64_t bound = INT64_MAX) noexcept {
    vtime_ = std::max(vtime_, std::min(group.vtime, bound));
    const DeviceNode& node = group.device->tree;
    if (node.tenant == nullptr) {  // the tree's path below, asked once
      group.vtime += FairPolicy::advance(cost, group.weight);
    } else {
      node.tenant->vtime = std::max(tenant_vtime(*node.tenant, vtime_, rebases_), group.vtime);
      group.vtime += tree_advance(cost, group.weight, node);
    }
    return group.vtime > kVtimeRebase;
  }
  Cost cost_of(const Request& request) const noexcept override { return settings_.cost.of(request); }
  std::int64_t virtual_time() const noexcept { return vtime_; }  // V
  bool charge_more(Group& group, Cost cost) noexcept override {
    // Under a tenant: the group's effective weight in the tree (tree.h).
    const DeviceNode& node = group.device->tree;
    cost = std::min(cost, kMaxCost);
    group.vtime += node.tenant == nullptr ? FairPolicy::advance(cost, group.weight)
                                          : tree_advance(cost, group.weight, node);
    return group.vtime > kVtimeRebase;
  }
  void rebase(Group& group) noexcept override { group.vtime = std::max<std::int64_t>(group.vtime - vtime_, 0); }
  void rebased() noexcept override {
    vtime_ = 0;
    ++rebases_;  // every V_T restarts from V
  }

 protected:
  // Where an idle group of `group`'s tenant (or of the root) comes back
  // now: from_idle()'s point, read only.
  std::int64_t return_point(const Group& group) const noexcept { return return_point(group.device->tree.tenant); }
  std::int64_t return_point(const Tenant* tenant) const noexcept {
    if (tenant == nullptr || tenant->vtime_rebases != rebases_) return vtime_;
    return tenant_vtime_follows(*tenant) ? std::max(tenant->vtime, vtime_) : tenant->vtime;
  }
  // Its tag's step for a request costing `cost`, counted as active (tree.h).
  static std::int64_t between_step(const Group& group, Cost cost) noexcept {
    const double e = weight_of(group);  // group.h: e(g), counted as active
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(cost << kVtimeShift) / e));
  }

  std::int64_t vtime_ = 0;  // V
  std::uint32_t rebases_ = 0;
};

// fair itself. range-bw extends FairOrder; this one is final, so that the
// device group's calls through it are direct (device_group.cc with_order).
class FairOnlyOrder final : public FairOrder {
 public:
  using FairOrder::FairOrder;
};

}  // namespace ioband::qos::detail
