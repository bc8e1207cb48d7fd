// The ordering half of a device group's policy: which ready group goes next.
//
// The device group (device_group.cc) keeps the ready groups in heaps by the
// key a policy gives them and asks the policy at four points: the key of a
// group, what a dispatch charges it, what a group coming back (from idle, or
// from a limit or the anticipation) starts from, and whether the best key may
// go now. A policy knows nothing of heaps, windows, limits or clocks beyond
// the `now` it is handed; admission (admission.h) and accounting
// (accounting.h) are the device group's. Like Seastar's fair_queue, the
// queue decides only who is next.
//
// A new policy is one file that implements this interface (with its math in
// a comment at the top, as fair_policy.h does), plus its name in policy.h and
// its line in make_order_policy (policies.cc).
//
// Optional parts:
//   reservations   mClock's reservation tags (range-bw): a group whose tag
//                  (GroupExtras::reservation) is due goes before the key order
//   caps           a rate cap that belongs to the policy (range-bw's max-bw)
//   anticipation   whether a heavier shallow group may hold lighter ones
//                  (anticipation.h); range-bw says no
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "qos/group.h"
#include "qos/policy.h"
#include "qos/request.h"
#include "qos/request_cost.h"

namespace ioband::qos::detail {

// Device-group settings a policy reads; the device group owns and changes them.
struct PolicySettings {
  std::uint64_t token = kDefaultToken;          // weight: the token pool per epoch
  std::uint32_t carryover = kDefaultCarryover;  // weight: epochs of unused tokens kept
  std::uint64_t weight_total = 0;               // sum of every group's weight
  RequestCost cost;                             // fair: what a request costs
};

class OrderPolicy {
 public:
  explicit OrderPolicy(const PolicySettings& settings) noexcept : settings_(settings) {}
  virtual ~OrderPolicy() = default;
  OrderPolicy(const OrderPolicy&) = delete;
  OrderPolicy& operator=(const OrderPolicy&) = delete;

  // The rule a dispatch in key order is reported under.
  virtual Rule rule() const noexcept = 0;
  // The group's place in the order: the smallest key goes first.
  virtual std::int64_t key(const Group& group) const noexcept = 0;
  // A group between two requests under a limit (its requests in flight,
  // or back a moment ago: device_group.cc, kept_for_returns) is still
  // busy: how many requests costing `cost` it would send, coming back now,
  // before the group whose key is `key` goes (at most `most`).
  virtual std::uint32_t requests_before(const Group& group, std::int64_t key, Cost cost,
                                        std::uint32_t most) const noexcept {
    (void)group;
    (void)key;
    (void)cost;
    (void)most;
    return 0;
  }
  // requests_before(g, key, cost, ...) is 0 for each such group g whose
  // key(g) >= `key`, and for each g of `device` of weight `lightest` or
  // more when `key` is at or below this place: the device group then skips
  // them without asking each (by default none is ever before).
  virtual std::int64_t between_floor(const Device& device, std::uint32_t lightest, Cost cost) const noexcept {
    (void)device;
    (void)lightest;
    (void)cost;
    return INT64_MAX;
  }
  // Such a group comes back with a request costing `cost`, after
  // from_idle() put its key where an idle group's goes; `before` was its
  // key then. By default nothing changes.
  virtual void from_between(Group& group, std::int64_t before, Cost cost) noexcept {
    (void)group;
    (void)before;
    (void)cost;
  }
  // A group's state when it joins: a new group, every group under a new
  // policy, and queued groups after settings_changed() asked for it.
  virtual void start(Group& group) noexcept = 0;
  // Back with a request after being idle: no credit for the time away.
  virtual void from_idle(Group& group, Nanos now) noexcept = 0;
  // Back with a request while still busy: requests of it in flight, or a
  // deep group whose requests all came back a moment ago (admission.h's
  // lingering). Its client was slow to send, not done. By default as from idle.
  virtual void from_busy(Group& group, Nanos now) noexcept { from_idle(group, now); }
  // Back after a limit or the anticipation held it with requests queued:
  // by default it keeps its tags (the limit, not the policy, held it back).
  virtual void from_hold(Group& group, Nanos now) noexcept {
    (void)group;
    (void)now;
  }
  // The best ready group has key `best_key`: may it go now? False: nobody
  // goes until a completion, a timer or a change (weight: the epoch is not
  // renewed while dm-ioband's dominant group is expected back).
  virtual bool may_go(std::int64_t best_key, std::uint32_t in_flight, std::uint32_t io_throttle) noexcept {
    (void)best_key;
    (void)in_flight;
    (void)io_throttle;
    return true;
  }
  // `group` dispatches `request`, released by `rule`. True: the policy's
  // clock nears its range; the device group then calls rebase() for every
  // group, rebased(), and rebuilds every key.
  virtual bool charge(Group& group, const Request& request, Rule rule, Nanos now) noexcept = 0;
  // What charge() charges `request` under the order (its unit).
  virtual Cost cost_of(const Request& request) const noexcept = 0;
  // The storage did more for a dispatched request of `group` than it was
  // charged (a qcow2 image's metadata and copy-on-write reads): `cost` more,
  // in cost_of()'s unit, without moving the order's clock. True: rebase, as
  // for charge().
  virtual bool charge_more(Group& group, Cost cost) noexcept = 0;
  virtual void rebase(Group& group) noexcept { (void)group; }
  virtual void rebased() noexcept {}
  // A weight, the pool, carryover or the set of groups changed. True: every
  // queued group starts again (start()) and every key is rebuilt.
  virtual bool settings_changed() noexcept { return false; }
  // The group is going away: drop any pointer to it.
  virtual void forget(const Group* group) noexcept { (void)group; }
  // A device's or a tenant's reservation went or changed (reservation.h):
  // `groups`, all of the node's, lose the lead its dispatches gave them
  // over the others' keys; their order among themselves is kept.
  virtual void drop_lead(std::span<Group* const> groups) noexcept { (void)groups; }

  // Reservations: the group has a reservation tag in GroupExtras::reservation.
  virtual bool has_reservation(const Group& group) const noexcept {
    (void)group;
    return false;
  }
  // Caps of the policy: when the group may go (only asked of groups with extras).
  virtual Nanos cap_available_at(Group& group, Nanos now) noexcept {
    (void)group;
    return now;
  }
  // A heavier shallow group may hold lighter ones (anticipation.h).
  virtual bool anticipates() const noexcept { return true; }

 protected:
  const PolicySettings& settings_;
};

// The policy object for `policy` (policies.cc).
std::unique_ptr<OrderPolicy> make_order_policy(Policy policy, const PolicySettings& settings);

}  // namespace ioband::qos::detail
