// The device group's core: the ready queues and the dispatch loop. Three
// parts are elsewhere, each in its own file:
//   order       which ready group goes next: the policy (order_policy.h;
//               fair_policy.h, weight_policy.h, range_bw_policy.h)
//   admission   whether it may go now: the in-flight window and the
//               anticipation (admission.h), limits (limits.h, token_bucket.h)
//   accounting  what its statistics count (accounting.h)
// This file holds what ties them: the heaps, parking, the request queues,
// and the control plane's checks.
//
// Structure. Each ioband device keeps a min-heap of its ready groups by
// policy key (and, for a policy with reservations, one by reservation time);
// the device group keeps a min-heap of devices by the key of their best
// group. The best group of the device group is therefore the top of the top
// device: weights are flat over all devices, and a device held back by its
// own limits leaves the top heap in O(log devices) without touching its
// groups. Groups or devices held back by a limit (or a group by the
// anticipation) are "parked" in timer heaps keyed by when they may go again.
// Every operation is O(log groups).
#include "qos/device_group.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <string>

#include "qos/accounting.h"
#include "qos/admission.h"
#include "qos/group.h"
#include "qos/latency_target.h"
#include "qos/order_policy.h"
#include "qos/range_bw_policy.h"
#include "qos/weight_policy.h"

namespace ioband::qos {

using detail::Admission;
using detail::Device;
using detail::Group;
using detail::GroupExtras;
using detail::IndexedHeap;
using detail::OrderPolicy;
using detail::RangeBwPolicy;
using detail::RequestState;
using detail::WeightOrder;

namespace {

constexpr DeviceId kMaxDevices = 1u << 16;
// A device id takes the low 16 bits of Request::SchedulerState::resolved_key.
static_assert(kMaxDevices <= (1u << 16));
constexpr std::uint64_t kMaxToken = (std::uint64_t{1} << 31) - 1;
constexpr std::uint32_t kMaxCarryover = 64;
constexpr std::uint32_t kMaxIoLimit = 1u << 20;
constexpr std::uint64_t kMaxRangeKib = std::uint64_t{1} << 30;  // 1 TiB/s

std::string device_name(DeviceId device) { return "device " + std::to_string(device); }

double ratio(std::uint64_t part, std::uint64_t whole) noexcept {
  return whole == 0 ? 0.0 : static_cast<double>(part) / static_cast<double>(whole);
}

std::string group_name(DeviceId device, GroupId group) {
  return group == kDefaultGroup ? "the default group of " + device_name(device)
                                : "group " + std::to_string(group) + " of " + device_name(device);
}

}  // namespace

struct DeviceGroup::Impl {
  // ---- settings ----
  Policy policy_name = kDefaultPolicy;
  detail::PolicySettings settings;
  std::unique_ptr<OrderPolicy> policy = detail::make_order_policy(kDefaultPolicy, settings);
  // The policy's constants, asked once per policy rather than per request.
  bool anticipates = policy->anticipates();
  Rule policy_rule = policy->rule();
  // The policy's class, when the hot path calls it directly (with_order):
  // fair, weight and weight-iosize are known there, and a virtual call per
  // key and charge costs more than the test.
  enum class Order : std::uint8_t { fair, weight, other };
  static Order order_of(Policy name) noexcept {
    if (name == Policy::fair) return Order::fair;
    return name == Policy::weight || name == Policy::weight_iosize ? Order::weight : Order::other;
  }
  Order order = order_of(kDefaultPolicy);
  Admission admission;
  CostModel cost_model{};  // the token model set_cost_model() gave fair, if any
  DeviceModel device_model = kDefaultDeviceModel;
  bool device_model_calibrated = false;
  bool model_learning = true;
  detail::ModelLearner learner;
  double in_flight_ns = 0;   // the model's time of the reads and writes in flight
  double saturation_ns = 0;  // in flight from which the storage counts as saturated
  // The request whose storage I/O charge_device_io found beyond it, and what its
  // storage I/O was in the learner's terms (its class, -1 for a mix, and
  // its model time): learn() counts that, not the request's own class.
  const Request* learn_as_request = nullptr;
  int learn_as_class = -1;
  double learn_as_ns = 0;
  detail::Reservations reservations;  // reservation-iops / -bps (reservation.h)
  detail::LatencyTargets latency;     // latency targets (latency_target.h)
  // fair: the least tag of the groups latency.holds() holds now (V does not pass it: fair_policy.h).
  std::int64_t held_floor = INT64_MAX;

  // ---- hooks: which optional features are configured ----
  // Tenants, limits of a device or tenant, reservations (and range-bw's
  // min-bw) and latency targets each add work to every request when they
  // are used. This word says which are, so that the hot path tests one bit
  // per feature (usually all clear) instead of following each feature's
  // pointers. A group's own limits, range-bw and reservation live in its
  // extras: the null pointer is that group's flag. Kept by refresh_hooks()
  // after every configuration change.
  enum Hook : std::uint8_t { kHookTree = 1, kHookLimits = 2, kHookReserve = 4, kHookLatency = 8 };
  std::uint8_t hooks = 0;

  // ---- model ----
  std::vector<std::unique_ptr<Device>> devices;  // by DeviceId; null = none
  std::size_t device_count = 0;
  std::size_t group_count = 0;  // attached + default, not retired
  detail::GroupPool pool;
  std::vector<std::uint32_t> ready_positions;  // by group slot: position in its device's ready heap
  // Busy deep groups with nothing queued, by the S they had when their queue
  // ran empty (fair_policy.h, "Busy groups"): the least is the one the only
  // ready group may wait for. Entries whose group has since queued again or
  // gone idle are dropped when they reach the top.
  // Both by group slot, grown when a group first needs them (only deep
  // groups do: an idle group costs nothing here).
  std::vector<std::uint32_t> busy_positions;
  detail::SlotHeap busy_behind{&busy_positions};
  std::vector<Nanos> away_at;  // when it last had half its depth or more outside
  // When it last came back while still busy (fair only): V then, and its
  // tag before it came back (behind()).
  struct BusyReturn {
    std::int64_t vtime = INT64_MIN;
    std::int64_t tag = 0;
  };
  std::vector<BusyReturn> busy_returns;
  void busy_room(std::uint32_t slot) {
    if (slot < busy_positions.size()) return;
    const std::size_t size = std::max<std::size_t>(slot + 1, 2 * busy_positions.size());
    busy_positions.resize(size, detail::kNotInHeap);
    away_at.resize(size, kLongAgo);
    busy_returns.resize(size);
  }
  static constexpr Nanos kLongAgo = INT64_MIN / 2;
  std::vector<Group*> retired;  // detached, requests still in flight
  detail::Tenants tenants;      // tree.h
  std::vector<detail::Tenant*> reserving_tenants;  // tenants with a reservation (reservation.h)
  std::vector<Device*> lingering;  // devices of tenants whose linger may be over (tree.h)
  // Groups under a limit of their device or tenant with nothing queued
  // since their last dispatch, their requests in flight or back for less
  // than detail::kLinger (see kept_for_returns): each in its device's
  // `returning` heap by the policy's key, its place there by slot; those
  // back (lingering) also in a list by when they came back, oldest first,
  // through returning_by_slot. Both by slot, sized once a limit is used.
  static constexpr Nanos kStillOut = INT64_MAX;
  static constexpr std::uint32_t kNoSlot = UINT32_MAX;
  struct Returning {
    Nanos idle_at = kStillOut;  // its last request came back then; kStillOut while one is in flight
    std::uint32_t prev = kNoSlot, next = kNoSlot;  // in the lingering list
  };
  std::vector<std::uint32_t> returning_positions;
  std::vector<Returning> returning_by_slot;
  std::uint32_t returning_count = 0;
  std::uint32_t returned_oldest = kNoSlot, returned_newest = kNoSlot;  // the lingering list's ends
  Nanos linger_until = INT64_MAX;  // the earliest end of a linger among them

  // ---- scheduling ----
  IndexedHeap<Device, &Device::top_index> top;                         // by best ready key
  IndexedHeap<Device, &Device::top_reservation_index> top_reserved;    // by earliest reservation
  IndexedHeap<Group, &Group::timer_index> group_timers;                // by wake time
  IndexedHeap<Device, &Device::timer_index> device_timers;             // by wake time
  std::uint32_t queued = 0;
  std::uint32_t in_flight = 0;
  std::uint32_t wait_epoch = 0;  // bumped whenever next() answers "wait"
  Nanos last_now = 0;            // latest time seen on the hot path (for control-plane changes)
  std::uint64_t mapping_stamp = new_mapping_stamp();  // see groups_changed()
  Nanos window_closed_at = INT64_MIN;  // last time next() found the in-flight window full

  // ---- statistics: the wide counters (group.h, accounting.h) ----
  std::vector<detail::WideCounters> wide;     // of the groups that folded
  std::vector<std::uint32_t> wide_by_slot;    // by Group::slot: index + 1 into `wide`, 0: none yet
  std::vector<std::uint32_t> wide_free;

  ~Impl() {
    for (auto& device : devices) {
      if (!device) continue;
      destroy_groups(*device);
    }
    for (Group* group : retired) pool.destroy(group);
  }

  // ------------------------------------------------------------------ lookup
  Device* find_device(DeviceId id) const noexcept { return id < devices.size() ? devices[id].get() : nullptr; }

  static Group* find_group(const Device& device, GroupId id) noexcept {
    return id == kDefaultGroup ? device.default_group : device.groups.find(id);
  }

  template <typename Visit>
  static void for_each_group(const Device& device, Visit visit) {
    visit(device.default_group);
    device.groups.for_each([&](GroupId, Group* group) { visit(group); });
  }

  template <typename Visit>
  void for_each_group(Visit visit) const {
    for (const auto& device : devices) {
      if (device) for_each_group(*device, visit);
    }
  }

  void destroy_groups(Device& device) {
    for_each_group(device, [&](Group* group) { destroy_group(group); });
  }

  // ------------------------------------------------------- ready structures
  void update_device(Device& device) noexcept {
    if (device.parked()) {
      if (top.contains(&device)) top.erase(&device);
      if (top_reserved.contains(&device)) top_reserved.erase(&device);
      return;
    }
    if (!device.ready.empty()) {
      std::int64_t key = device.ready.top().key;
      if (top.contains(&device)) {
        top.update(&device, key);
      } else {
        top.push(&device, key);
      }
    } else if (top.contains(&device)) {
      top.erase(&device);
    }
    if (!(hooks & kHookReserve)) return;  // top_reserved is empty (refresh_hooks)
    // A device's own reservation (reservation.h) is due for its best ready group.
    const bool own = device.reserve.active() && !device.ready.empty();
    if (!device.reserved.empty() || own) {
      std::int64_t key = device.reserved.empty() ? INT64_MAX : device.reserved.top().key;
      if (own) key = std::min<std::int64_t>(key, device.reserve.tag);
      if (top_reserved.contains(&device)) {
        top_reserved.update(&device, key);
      } else {
        top_reserved.push(&device, key);
      }
    } else if (top_reserved.contains(&device)) {
      top_reserved.erase(&device);
    }
  }

  // ---- the policy's calls on the hot path: direct for fair and weight ----
  // `call(order)` with the policy as its own (final) class where it is one
  // the hot path knows, so that the compiler calls (and inlines) it directly.
  template <typename Call>
  [[gnu::always_inline]] decltype(auto) with_order(Call&& call) const noexcept {
    switch (order) {
      case Order::fair: return call(static_cast<detail::FairOnlyOrder&>(*policy));
      case Order::weight: return call(static_cast<WeightOrder&>(*policy));
      case Order::other: break;
    }
    return call(*policy);
  }
  [[gnu::always_inline]] std::int64_t order_key(const Group& group) const noexcept {
    return with_order([&](auto& p) { return p.key(group); });
  }
  // A callable giving the policy's cost of `request` when called: the
  // anticipation asks for it only where it counts (anticipation.h: its credit).
  auto lazy_cost(const Request& request) const noexcept {
    return [this, &request] { return static_cast<double>(with_order([&](auto& p) { return p.cost_of(request); })); };
  }
  // `model_ns`: settings.cost.model_ns(request), which fair's cost starts from.
  [[gnu::always_inline]] bool order_charge(Group& group, const Request& request, Rule rule, Nanos now,
                                           double model_ns) noexcept {
    if (order == Order::fair) {
      const std::int64_t bound = (hooks & kHookLatency) && latency.holding() ? held_floor : INT64_MAX;
      return static_cast<detail::FairOnlyOrder&>(*policy).charge_cost(group, settings.cost.of(request, model_ns), bound);
    }
    return with_order([&](auto& p) __attribute__((always_inline)) { return p.charge(group, request, rule, now); });
  }

  // A group with queued requests, in no heap, becomes a candidate, coming
  // back from idle (or after a settings change) or from a hold (a limit or
  // the anticipation): the policy says what each starts from. (Groups held
  // back with their whole device lag the same way; resetting only the ones
  // with limits of their own would starve them behind their device-mates.)
  // `between_cost`: the group comes back between two requests under a
  // limit (kept_for_returns), with a request of that cost.
  void make_ready(Group& group, bool from_idle = true, Cost between_cost = 0) noexcept {
    assert(group.head != nullptr && !is_ready(group) && !group.parked());
    if (from_idle) {
      const std::int64_t before = group.vtime;
      // (Only fair keeps a busy group's lag: for the others from_busy is
      // from_idle. Under a device's or tenant's limit the tokens kept for
      // returns and from_between do that part.) A lingering group, all its
      // requests back at its client, comes back from idle: its busy_peak
      // restarted at its last completion. Its claim still counts for the
      // places and the order's wait (admission.h), not for its lag: keeping
      // its lag as well was tried and not kept (docs/weights.md, "A
      // lingering group back from busy").
      if (order == Order::fair && detail::Admission::deep(group.busy_peak) && group.in_flight > 0 &&
          !under_shared_limit(*group.device)) {
        returned_busy(group);  // still busy (fair_policy.h, "Busy groups"): its start stays
      } else {
        with_order([&](auto& p) { p.from_idle(group, last_now); });
        if (between_cost == 0 && order == Order::fair) group.set_busy_start(group.vtime);  // busy from here (behind())
      }
      if (between_cost != 0) policy->from_between(group, before, between_cost);
      // hook: reservations. Idle means nothing queued and nothing in flight:
      // a group whose requests all went to a deep storage queue at once is
      // still busy, and keeps what it is owed.
      if (group.extras && group.in_flight == 0) group.extras->reserve.from_idle(last_now);
    } else {
      policy->from_hold(group, last_now);
    }
    Device& device = *group.device;
    device.ready.push(group.slot, order_key(group));
    if (has_reservation(group)) device.reserved.push(group.extras.get(), reservation_key(group));
    update_device(device);
  }

  // ---- hook: reservations (reservation.h) ----
  // A group is in its device's reservation heap for range-bw's min-bw or for
  // reservation-iops / -bps, under the earlier of the two tags.
  bool has_reservation(const Group& group) const noexcept {
    return policy->has_reservation(group) || (group.extras && group.extras->reserve.active());
  }
  Nanos reservation_key(const Group& group) const noexcept {
    Nanos key = INT64_MAX;
    if (policy->has_reservation(group)) key = group.extras->reservation;
    if (group.extras->reserve.active()) key = std::min(key, group.extras->reserve.tag);
    return key;
  }
  // Device time the storage gives a second, in what fair charges: the
  // learned figure; for admission the calibrated model's, or the larger of
  // the model's and the learned one (a reservation admitted once is
  // restored at start whatever was learned: set_limits' `admitted`).
  double capacity_ns(bool admission_check) const noexcept {
    if (!model_learning || (admission_check && device_model_calibrated)) return 1e9;
    const double learned = 1e9 / learner.scale();
    return admission_check ? std::max(1e9, learned) : learned;
  }
  void rescale_reservations() noexcept {
    reservations.set_units(settings.cost);
    reservations.rescale(capacity_ns(false));
  }
  // Each reservation's parent: the nearest reserving node above it
  // (reservation.h). After every change of a reservation or of the tree.
  void relink_reservations() noexcept {
    for (auto& device : devices) {
      if (!device) continue;
      detail::Tenant* tenant = device->tree.tenant;
      detail::GroupReservation* above_device = tenant && tenant->reserve.configured() ? &tenant->reserve : nullptr;
      device->reserve.parent = above_device;
      detail::GroupReservation* above_group = device->reserve.configured() ? &device->reserve : above_device;
      for_each_group(*device, [&](Group* group) {
        if (group->extras) group->extras->reserve.parent = above_group;
      });
    }
  }
  // Sets the reservation of a node (a group's, a device's, a tenant's) from
  // `limits`; unless `admitted`, refused (and taken back) when the device
  // group's need would pass 90 % of the capacity.
  // `lowered` (if given): it went or was lowered (OrderPolicy::drop_lead).
  Status set_reservation(detail::GroupReservation& r, detail::GroupReservation::Level level, const Limits& limits,
                         bool admitted, bool* lowered = nullptr) {
    const std::uint64_t old_iops = r.iops, old_bps = r.bps;
    reservations.set(r, level, limits.reservation_iops, limits.reservation_bps, last_now);
    relink_reservations();
    reservations.set_units(settings.cost);
    if (limits.reserves() && !admitted) {
      const double capacity = capacity_ns(true);
      const char* kind = device_model_calibrated ? "calibrated" : capacity > 1e9 ? "learned" : "device model's";
      if (Status status = reservations.admit(capacity, kind); !status) {
        reservations.set(r, level, old_iops, old_bps, last_now);
        relink_reservations();
        rescale_reservations();
        return status;
      }
    }
    rescale_reservations();
    if (lowered != nullptr) *lowered = r.iops < old_iops || r.bps < old_bps;
    return {};
  }
  // A leaf went idle (tree.h); its device may start to linger in its tenant.
  void leaf_idle(Device& device, std::uint32_t weight, Nanos now) noexcept {
    if (!detail::leaf_idle(device.tree, weight, now)) return;
    if (std::find(lingering.begin(), lingering.end(), &device) == lingering.end()) lingering.push_back(&device);
    linger_until = std::min(linger_until, now + detail::kLinger);
  }
  // Devices whose linger is over leave their tenants' active sums.
  void end_lingers(Nanos now) noexcept {
    linger_until = INT64_MAX;
    std::erase_if(lingering, [&](Device* device) {
      detail::DeviceNode& node = device->tree;
      if (!node.lingering) return true;  // came back, or moved out of its tenant
      if (now - node.idle_at >= detail::kLinger) {
        detail::device_idle(node);
        return true;
      }
      linger_until = std::min(linger_until, node.idle_at + detail::kLinger);
      return false;
    });
  }

  // A node became active (something queued or in flight below it): it banks nothing.
  void nodes_from_idle(Device& device, Nanos now) noexcept {
    if (device.tree.active_leaves != 1) return;
    if (device.reserve.active()) device.reserve.from_idle(now);
    detail::Tenant* tenant = device.tree.tenant;
    if (tenant != nullptr && tenant->active_devices == 1 && tenant->reserve.active()) tenant->reserve.from_idle(now);
  }
  // The tenant whose reservation is due first (before `before`), and its
  // device whose best ready group goes first by the policy's order. A scan
  // of the devices: tenants hold few, and only reserving tenants are asked.
  std::pair<detail::Tenant*, Device*> due_tenant(Nanos now, Nanos before) const noexcept {
    detail::Tenant* best = nullptr;
    for (detail::Tenant* tenant : reserving_tenants) {
      const Nanos tag = tenant->reserve.tag;
      if (tenant->queued == 0 || tag > now || tag >= before || (best != nullptr && tag >= best->reserve.tag)) continue;
      best = tenant;
    }
    if (best == nullptr) return {nullptr, nullptr};
    Device* pick = nullptr;
    for (const auto& device : devices) {
      if (!device || device->tree.tenant != best || device->parked() || device->ready.empty()) continue;
      if (pick == nullptr || device->ready.top().key < pick->ready.top().key) pick = device.get();
    }
    return {best, pick};
  }

  bool is_ready(const Group& group) const noexcept { return ready_positions[group.slot] != detail::kNotInHeap; }

  // When `group`'s own reservation is next due, if later than `now`
  // (INT64_MAX: it has none, or it is due already). A group parked by the
  // anticipation or by another's latency target comes back then: parked, it
  // is out of the reservation heap. One held although due (range-bw's min-bw
  // due too: not released by reservation-iops) keeps its recheck; a timer
  // at a time already past would come back at once, again and again.
  static Nanos reservation_due(const Group& group, Nanos now) noexcept {
    if (!group.extras || !group.extras->reserve.active() || group.extras->reserve.tag <= now) return INT64_MAX;
    return group.extras->reserve.tag;
  }
  static bool reserved(const Group& group) noexcept {
    return group.extras && group.extras->reservation_index != detail::kNotInHeap;
  }

  // Out of every heap (ready, reservation, parked).
  void take_out(Group& group) noexcept {
    Device& device = *group.device;
    if (is_ready(group)) device.ready.erase(group.slot);
    if (reserved(group)) device.reserved.erase(group.extras.get());
    if (group.parked()) group_timers.erase(&group);
    update_device(device);
  }

  // Re-evaluates a group after its settings changed.
  void refresh(Group& group) noexcept {
    take_out(group);
    if (group.head != nullptr) make_ready(group);
  }

  void park_group(Group& group, Nanos until) noexcept {
    Device& device = *group.device;
    if (is_ready(group)) device.ready.erase(group.slot);
    if (reserved(group)) device.reserved.erase(group.extras.get());
    group_timers.push(&group, until);
    update_device(device);
  }

  void park_device(Device& device, Nanos until) noexcept {
    device_timers.push(&device, until);
    update_device(device);
  }

  void release_timers(Nanos now) noexcept {
    while (!group_timers.empty() && group_timers.top().key <= now) make_ready(*group_timers.pop(), false);
    while (!device_timers.empty() && device_timers.top().key <= now) update_device(*device_timers.pop());
  }

  TimePoint earliest_timer() const noexcept {
    Nanos at = INT64_MAX;
    if (!group_timers.empty()) at = std::min(at, group_timers.top().key);
    if (!device_timers.empty()) at = std::min(at, device_timers.top().key);
    return at == INT64_MAX ? TimePoint::max() : from_nanos(at);
  }

  // Rebuilds keys after a change that moves every key (weights, pool, rebase).
  void rekey_all() noexcept {
    busy_behind.clear();  // the tags moved (rebase, a new start): filled again as queues run empty
    for (auto& device : devices) {
      if (!device) continue;
      device->ready.rekey([&](std::uint32_t slot) { return policy->key(*pool.at(slot)); });
      update_device(*device);
    }
    rekey_returning();
  }
  void rekey_returning() noexcept {
    if (returning_count == 0) return;
    for (auto& device : devices) {
      if (device) device->returning.rekey([&](std::uint32_t slot) { return policy->key(*pool.at(slot)); });
    }
  }

  // A weight, the pool, carryover or the set of groups changed: the policy
  // says whether queued groups start again (weight: dm-ioband refills every
  // group; idle ones are refilled lazily when they come back).
  void settings_changed() noexcept {
    if (!policy->settings_changed()) return;
    for (auto& device : devices) {
      if (!device) continue;
      device->ready.for_each([&](std::uint32_t slot) { policy->start(*pool.at(slot)); });
    }
    group_timers.for_each([&](Group* group) { policy->start(*group); });
    rekey_all();
  }

  // Everything re-ordered under a new policy.
  void set_policy(Policy name) {
    policy_name = name;
    policy = detail::make_order_policy(name, settings);
    order = order_of(name);
    anticipates = policy->anticipates();
    policy_rule = policy->rule();
    admission.policy_changed();
    busy_behind.clear();
    std::fill(busy_returns.begin(), busy_returns.end(), BusyReturn{});
    for (auto& device : devices) {
      if (!device) continue;
      device->ready.clear();
      device->reserved.clear();
    }
    top.clear();
    top_reserved.clear();
    group_timers.clear();
    for_each_group([&](Group* group) {
      policy->start(*group);
      if (order == Order::fair) group->set_busy_start(group->vtime);  // (the weight policies' words before)
    });
    rekey_returning();
    for_each_group([&](Group* group) {
      if (group->head != nullptr) make_ready(*group);
    });
    for (auto& device : devices) {
      if (device) update_device(*device);
    }
  }

  void rebase() noexcept {
    if (order == Order::fair && held_floor != INT64_MAX) {  // in the tags' new units
      held_floor = std::max<std::int64_t>(held_floor - static_cast<detail::FairOnlyOrder&>(*policy).virtual_time(), 0);
    }
    std::fill(busy_returns.begin(), busy_returns.end(), BusyReturn{});  // (behind(): from before, in the old units)
    for_each_group([&](Group* group) {
      const std::int64_t before = group->vtime;
      policy->rebase(*group);
      // Its start (behind()) moves with its tag; both were at most its tag.
      if (order == Order::fair) {
        group->set_busy_start(std::max<std::int64_t>(group->busy_start() - (before - group->vtime), 0));
      }
    });
    policy->rebased();
    rekey_all();
  }

  // Heaps never allocate on the hot path: their room is made here, by the
  // control plane. Only groups with limits or range-bw (or on a device with
  // limits) can be parked or hold a reservation, so only those get room there.
  void reserve_capacity() {
    std::size_t parkable = 0, limited_groups = 0;
    for (auto& device : devices) {
      if (!device) continue;
      std::size_t groups = device->groups.size() + 1;
      device->ready.reserve(groups);
      device->reserved.reserve(device->groups_with_extras);
      const bool limited = device->limits.active() || (device->tree.tenant && device->tree.tenant->limits.active());
      parkable += limited ? groups : device->groups_with_extras;
      if (limited) {
        limited_groups += groups;
        device->returning.reserve(groups);
      }
    }
    if (limited_groups != 0) size_returning();  // kept_for_returns
    top.reserve(device_count);
    top_reserved.reserve(device_count);
    device_timers.reserve(device_count);
    // hook: latency targets can hold any group.
    group_timers.reserve(latency.any() ? pool.live() : parkable);
  }

  // What the hooks word should say now: O(devices + tenants).
  std::uint8_t configured_hooks() const noexcept {
    std::uint8_t flags = 0;
    if (policy_name == Policy::range_bw || reservations.any() || !reserving_tenants.empty()) flags |= kHookReserve;
    if (latency.any()) flags |= kHookLatency;
    for (const auto& device : devices) {
      if (!device) continue;
      if (device->limits.active()) flags |= kHookLimits;
      if (device->reserve.configured()) flags |= kHookReserve;
      if (device->tree.tenant != nullptr) flags |= kHookTree;
    }
    tenants.for_each([&](const detail::Tenant& tenant) {
      if (tenant.limits.active()) flags |= kHookLimits | kHookTree;
      if (tenant.reserve.configured()) flags |= kHookReserve | kHookTree;
    });
    return flags;
  }
  // After a configuration change. While the word changes, the heaps are
  // brought up to date under both the old and the new features, so that a
  // device leaves top_reserved before its bit goes and enters it after.
  void refresh_hooks() noexcept {
    const std::uint8_t flags = configured_hooks();
    admission.set_tenants((flags & kHookTree) != 0);  // the weights it compares: effective ones
    if (flags == hooks) return;
    hooks |= flags;
    for (auto& device : devices) {
      if (device) update_device(*device);
    }
    hooks = flags;
  }
  // In a setting that may add or remove a feature: the word is set again
  // when the setting returns, on every path.
  struct HooksRefresh {
    Impl& impl;
    ~HooksRefresh() { impl.refresh_hooks(); }
  };

  // The latency target the limit keys give `node` (none: removes it), and
  // the node's reservation it guards (a group's, a device's or a tenant's:
  // on storage that queues everything itself the order alone cannot give it).
  void set_latency_target(detail::LatencyNode node, const Limits& limits, const detail::GroupReservation& reserve) {
    const detail::GroupReservation* reservation = reserve.active() ? &reserve : nullptr;
    const std::uint64_t permille =
        limits.latency_percentile_permille == 0 ? kDefaultLatencyPermille : limits.latency_percentile_permille;
    latency.set(node, static_cast<Nanos>(limits.latency_target_us) * 1000, static_cast<std::uint32_t>(permille),
                reservation, last_now);
  }

  GroupExtras& extras_of(Group& group) {
    if (!group.extras) {
      group.extras = std::make_unique<GroupExtras>();
      group.extras->group = &group;
      ++group.device->groups_with_extras;
      reserve_capacity();
    }
    return *group.extras;
  }

  void destroy_group(Group* group) noexcept {
    if (group->slot < wide_by_slot.size() && wide_by_slot[group->slot] != 0) {
      const std::uint32_t index = wide_by_slot[group->slot] - 1;
      wide[index] = {};
      wide_free.push_back(index);
      wide_by_slot[group->slot] = 0;
    }
    admission.forget(group);
    if (group->slot < busy_positions.size()) {
      if (busy_behind.contains(group->slot)) busy_behind.erase(group->slot);
      away_at[group->slot] = kLongAgo;  // the slot's next group starts afresh
      busy_returns[group->slot] = {};
    }
    policy->forget(group);
    stop_returning(*group);
    latency.forget(detail::LatencyNode::of(group));  // hook: latency targets
    if (group->extras) {
      if (group->extras->reserve.active()) {  // hook: reservations
        reservations.forget(&group->extras->reserve);
        rescale_reservations();
      }
      --group->device->groups_with_extras;
    }
    pool.destroy(group);
  }

  // A device's reservation (`device`), or a tenant's (`tenant`), went or
  // changed: the node's groups lose the lead its dispatches gave them
  // (OrderPolicy::drop_lead). Call restart_device() on its devices after.
  void drop_reservation_lead(const Device* device, const detail::Tenant* tenant) {
    std::vector<Group*> groups;
    for (auto& d : devices) {
      if (d && (d.get() == device || (tenant != nullptr && d->tree.tenant == tenant))) {
        for_each_group(*d, [&](Group* group) { groups.push_back(group); });
      }
    }
    if (!groups.empty()) policy->drop_lead(groups);
  }

  // ------------------------------------------------------------- tree.h
  // The device's limits, tenant, or its tenant's limits changed: a device
  // held by the old limits asks again, and its groups start from the
  // virtual time (no burst from the lag a limit left them).
  void restart_device(Device& device) noexcept {
    if (device.parked()) device_timers.erase(&device);
    if (device.tree.tenant != nullptr) device.tree.tenant->vtime_restart = true;
    device.ready.for_each([&](std::uint32_t slot) { policy->from_idle(*pool.at(slot), last_now); });
    device.ready.rekey([&](std::uint32_t slot) { return policy->key(*pool.at(slot)); });
    update_device(device);
  }

  // Sums of the root's children: groups of devices outside every tenant,
  // and tenants with devices. {configured (all), active}.
  std::pair<std::uint64_t, std::uint64_t> root_sums() const noexcept {
    std::uint64_t configured = 0, active = 0;
    for (const auto& device : devices) {
      if (!device || device->tree.tenant != nullptr) continue;
      configured += device->tree.leaf_weight;
      active += device->tree.active_leaf_weight;
    }
    tenants.for_each([&](const detail::Tenant& tenant) {
      if (tenant.devices == 0) return;
      configured += tenant.weight;
      if (tenant.active_devices != 0) active += tenant.weight;
    });
    return {configured, active};
  }

  // --------------------------------------------------------------- hot path
  Decision waiting(TimePoint until) noexcept {
    ++wait_epoch;
    return Decision::wait(until);
  }

  // When the group's own limits and its policy's cap let its head go.
  Nanos group_available_at(Group& group, const Request& request, Nanos now) noexcept {
    if (!group.extras) return now;
    Nanos at = now;
    if (group.extras->limits.active()) at = group.extras->limits.available_at(request.direction, now);
    return std::max(at, policy->cap_available_at(group, now));
  }

  // Whether `limits` of the device (or, `tenant`, of its tenant) hold back
  // the group's head `request`. A read (or write) limit holds back only
  // this group's head; a total limit holds back the whole device.
  bool held_by_limit(LimitState& limits, Group& group, Device& device, const Request& request, Nanos now,
                     const detail::Tenant* tenant = nullptr) noexcept {
    bool direction_specific = false;
    Nanos at = limits.available_at(request.direction, now, &direction_specific);
    bool for_returns = false;
    if (at <= now && returning_count != 0) {
      at = kept_for_returns(limits, group, device, request, now, tenant);
      for_returns = at > now;
    }
    if (at <= now) return false;
    admission.paced_by_limit(group, now);
    device.limit_paced_at = now;
    if (direction_specific) {
      park_group(group, at);
    } else {
      park_device(device, at);
      device.held_for_returns = for_returns;
    }
    return true;
  }

  // ---- the tokens a limit keeps for groups ahead of the one asking ----
  // A limit's tokens go in the order of the tags, counting the groups under
  // it that are between two requests (a 1-deep client: its request in
  // flight, or back and the next one on its way from the client, for up to
  // detail::kLinger, the tree's rule for a client off the CPU): such a
  // group ahead of `group` in the order (its tag, were it to ask now, is
  // smaller) is owed the next tokens, as many as it would dispatch before
  // `group`'s turn, not whoever happens to be queued when they come. So
  // `group` may go only if the limit leaves that many requests' room (up to
  // kMaxKept in all); else it waits until it does, or until one comes back
  // (enqueue releases the device). The room is not
  // lost: the buckets keep draining into it, and a group that does not
  // come back leaves it to the next request. Without it, two 1-deep
  // clients at 80:20 under a limit split 56/44 (the light one took every
  // token that came while the heavy one was between requests), and a late
  // wake-up that finds several tokens gave a 1-deep client at most one of
  // them (docs/hierarchy.md).
  static constexpr std::uint32_t kMaxKept = 16;
  Nanos kept_for_returns(LimitState& limits, Group& group, Device& device, const Request& request, Nanos now,
                         const detail::Tenant* tenant) noexcept {
    if (!orders_by_shares(policy_name)) return now;
    // Room for every group that could be owed a token: nothing to count.
    if (limits.available_at_leaving(request.direction, now, kMaxKept, request.bytes) <= now) return now;
    end_returns(now);
    const std::int64_t key = policy->key(group);
    const Cost cost = policy->cost_of(request);  // theirs taken as like this one
    std::uint32_t kept = 0;
    // Only groups before `group` in the order can be owed: those of the
    // scope's devices whose key is below `key` (the heap gives them
    // without looking at the others), on a device whose lightest group
    // could still be owed from where it would come back (between_floor).
    auto below = [&](const Device& scope_device) {
      return !scope_device.returning.empty() && scope_device.returning.top().key < key;
    };
    auto count = [&](const Device& scope_device) {
      bool floor_asked = false;
      scope_device.returning.visit_below(key, [&](std::uint32_t slot) {
        const Group& other = *pool.at(slot);
        if (&other == &group) return true;
        const std::uint32_t owed = policy->requests_before(other, key, cost, kMaxKept - kept);
        kept += owed;
        // One owed nothing though its key is below: perhaps none of the
        // device's is (all too far behind where they would come back).
        if (owed == 0 && !floor_asked) {
          floor_asked = true;
          if (key <= policy->between_floor(scope_device, scope_device.returning_lightest, cost)) return false;
        }
        return kept < kMaxKept;
      });
    };
    if (tenant == nullptr) {
      if (below(device)) count(device);
    } else {
      // The tenant's device furthest behind first: its groups are owed the
      // most each (a device held by the order lags the others by many
      // requests), so the count usually ends there.
      const Device* first = nullptr;
      for (const auto& member : devices) {
        if (member && member->tree.tenant == tenant && below(*member) &&
            (first == nullptr || member->returning.top().key < first->returning.top().key)) {
          first = member.get();
        }
      }
      if (first != nullptr) count(*first);
      for (const auto& member : devices) {
        if (kept >= kMaxKept) break;
        if (member && member.get() != first && member->tree.tenant == tenant && below(*member)) count(*member);
      }
    }
    if (kept == 0) return now;
    return limits.available_at_leaving(request.direction, now, kept, request.bytes);
  }
  bool returning_member(const Group& group) const noexcept {
    return group.slot < returning_positions.size() && returning_positions[group.slot] != detail::kNotInHeap;
  }
  void size_returning() {
    if (returning_positions.size() < pool.slots()) returning_positions.resize(pool.slots(), detail::kNotInHeap);
    if (returning_by_slot.size() < pool.slots()) returning_by_slot.resize(pool.slots());
  }
  // `group`'s queue just emptied (and the dispatch charged it): its requests are all in flight.
  void start_returning(Group& group) {
    Device& device = *group.device;
    if (!device.limits.active() && !(device.tree.tenant != nullptr && device.tree.tenant->limits.active())) return;
    // Room made by reserve_capacity(); the control plane sizes both.
    if (returning_positions.size() <= group.slot) size_returning();
    if (returning_member(group)) {
      unlink_returned(group.slot);
      device.returning.update(group.slot, policy->key(group));
      return;
    }
    device.returning.push(group.slot, policy->key(group));
    device.returning_lightest = std::min(device.returning_lightest, group.weight);
    ++returning_count;
  }
  // Its last request came back with nothing queued: it lingers.
  void returned(const Group& group, Nanos now) noexcept {
    if (!returning_member(group)) return;
    unlink_returned(group.slot);
    Returning& r = returning_by_slot[group.slot];
    r.idle_at = now;
    r.prev = returned_newest;
    if (returned_newest == kNoSlot) {
      returned_oldest = group.slot;
    } else {
      returning_by_slot[returned_newest].next = group.slot;
    }
    returned_newest = group.slot;
  }
  // It queued a request again, its linger is over, or it is going away.
  void stop_returning(const Group& group) noexcept {
    if (!returning_member(group)) return;
    unlink_returned(group.slot);
    Device& device = *group.device;
    device.returning.erase(group.slot);
    if (device.returning.empty()) device.returning_lightest = UINT32_MAX;
    --returning_count;
  }
  // Out of the lingering list, if it is there: its request is in flight.
  void unlink_returned(std::uint32_t slot) noexcept {
    Returning& r = returning_by_slot[slot];
    if (r.idle_at == kStillOut) return;
    (r.prev == kNoSlot ? returned_oldest : returning_by_slot[r.prev].next) = r.next;
    (r.next == kNoSlot ? returned_newest : returning_by_slot[r.next].prev) = r.prev;
    r = Returning{};
  }
  // The groups whose linger is over leave, oldest first (the list is in
  // the order of their returns, which is the order of last_now).
  void end_returns(Nanos now) noexcept {
    while (returned_oldest != kNoSlot && now - returning_by_slot[returned_oldest].idle_at >= detail::kLinger) {
      stop_returning(*pool.at(returned_oldest));
    }
  }
  // Came back within its linger (or with a request still out): between two requests.
  bool between_requests(const Group& group, Nanos now) const noexcept {
    const Nanos idle_at = returning_by_slot[group.slot].idle_at;
    return idle_at == kStillOut || now - idle_at < detail::kLinger;
  }

  Decision next(Nanos now) noexcept {
    last_now = std::max(last_now, now);
    if (now >= linger_until) end_lingers(now);  // hook: the tree's idle devices (tree.h)
    if (queued == 0) return Decision::empty();
    release_timers(now);
    bool window_full = false;  // hook: latency targets (latency_target.h)
    if (admission.closed(in_flight, now)) {
      window_closed_at = now;
      if (!(hooks & kHookLatency) || !latency.passes_window(in_flight, admission.io_limit)) {
        return waiting(TimePoint::max());
      }
      window_full = true;
    }
    for (;;) {
      Device* device;
      Group* group;
      Rule rule;
      bool by_reservation = false;  // released by reservation-iops / -bps, not range-bw's min-bw
      bool by_node = false;         // by a device's or a tenant's reservation
      Nanos reserved_key = INT64_MAX;
      Device* tenant_device = nullptr;
      if (hooks & kHookReserve) {
        if (!top_reserved.empty()) reserved_key = top_reserved.top().key;
        if (!reserving_tenants.empty()) tenant_device = due_tenant(now, reserved_key).second;
      }
      if (tenant_device != nullptr) {
        // A tenant's reservation: its best group by the policy's order.
        device = tenant_device;
        group = pool.at(device->ready.top().item);
        rule = Rule::reservation;
        by_reservation = by_node = true;
      } else if (reserved_key <= now) {
        device = top_reserved.top().item;
        rule = Rule::reservation;
        if (!device->reserved.empty() && device->reserved.top().key <= reserved_key) {
          group = device->reserved.top().item->group;
          by_reservation = group->extras->reserve.due(now) &&
                           !(policy->has_reservation(*group) && group->extras->reservation <= now);
        } else {
          // The device's own reservation: its best group by the policy's order.
          group = pool.at(device->ready.top().item);
          by_reservation = by_node = true;
        }
      } else if (!top.empty()) {
        device = top.top().item;
        group = pool.at(device->ready.top().item);
        rule = policy_rule;
        if (!with_order([&](auto& p) { return p.may_go(top.top().key, in_flight, admission.io_throttle); })) {
          return waiting(earliest_timer());
        }
      } else {
        assert(!group_timers.empty() || !device_timers.empty());
        return waiting(earliest_timer());
      }
      // A reservation is a floor: neither the anticipation nor another
      // group's latency target holds what it releases.
      if (Nanos until = by_reservation ? 0 : admission.holds(*group, in_flight, queued, lazy_cost(*group->head), now);
          until != 0) {
        // A lighter group waits for the anticipated one
        // (anticipation.h): set aside like a group held by a limit, so that
        // the others (the anticipated one first) are served meanwhile.
        park_group(*group, std::min({until, now + detail::Anticipation::kRecheck, reservation_due(*group, now)}));
        continue;
      }
      // ---- hook: latency targets (latency_target.h) ----
      // Another group misses its target: this one waits while the others
      // have the cap in flight (asked again at completions).
      if ((hooks & kHookLatency) && !by_reservation) {
        const bool was_holding = latency.holding();
        if (latency.holds(*group, in_flight, window_full)) {
          // V stays at or below its tag while it is held (fair_policy.h).
          held_floor = was_holding ? std::min(held_floor, group->vtime) : group->vtime;
          park_group(*group, std::min(now + detail::LatencyTargets::kRecheck, reservation_due(*group, now)));
          continue;
        }
      }
      // The dispatch will write the group's counters: fetch them while the
      // head request is on its way.
      __builtin_prefetch(reinterpret_cast<const char*>(group) + 64, 1);
      __builtin_prefetch(reinterpret_cast<const char*>(group) + 128, 1);
      Request& request = *group->head;
      Nanos at = group_available_at(*group, request, now);
      if (at > now) {
        admission.paced_by_limit(*group, now);
        group->extras->limit_paced_at = now;  // pacing needs a limit or range-bw: extras
        park_group(*group, at);
        continue;
      }
      if (hooks & kHookLimits) {
        if (device->limits.active() && held_by_limit(device->limits, *group, *device, request, now)) continue;
        // tree.h: the limits a tenant shares over its devices.
        if (detail::Tenant* tenant = device->tree.tenant; tenant != nullptr && tenant->limits.active() &&
                                                           held_by_limit(tenant->limits, *group, *device, request, now, tenant)) {
          tenant->limit_paced_at = now;
          continue;
        }
      }
      Rule reported = in_flight < admission.io_throttle ? Rule::below_throttle : rule;
      // Was this an order, or first come first served? The latter when
      // nothing else is ready while another deep group has requests in
      // flight but none queued (auto_window.h).
      const bool alone = top.size() == 1 && device->ready.size() == 1 && group_timers.empty();
      // A request that would give its group more than its weight's part of
      // the storage waits a moment for the others' next (admission.h); one
      // a reservation releases does not.
      //
      // For this wait, `group` also counts as alone when it would go
      // kAheadOfOthers more times before any other ready group
      // (ahead_of_others): a much lighter group, always ready (a reader
      // with a reservation and a weight of 1 beside two writers at 1:3),
      // then no longer turns the wait off, and a writer off the CPU a moment
      // no longer loses its part for good (light writer 32.1 % -> 27.1 % of
      // the writers, docs/reservations.md "The writers' split, looked
      // into"). Groups close in the order still do: all of them held for one
      // that was away cost 40/20/10 at 16 deep a tenth of its rate (the
      // same page, "A much lighter group ready beside the writers"). Read
      // only with a busy group behind.
      const bool waits_for_busy = !by_reservation && !busy_behind.empty() &&
                                  (alone || ahead_of_others(*group, request)) &&
          behind(*group, request);
      // A group past its weight's part of a depth-limited group's places
      // waits for a completion or an arrival (admission.h, "places"). Not
      // beside reservations: they give places outside the weights.
      if (!(hooks & kHookReserve) && tracks_busy()) {
        const bool over = admission.over_places(*group, request, now);
        if (over || (!admission.places_held().empty() && behind_places_held(*group, request, in_flight))) {
          park_group(*group, std::min(admission.places_recheck(now), reservation_due(*group, now)));
          (over ? admission.places_held() : admission.behind_held()).push_back(group);
          continue;
        }
      }
      if (Nanos until = by_reservation ? 0 : admission.order_holds(*group, alone, in_flight, now, waits_for_busy);
          until != 0) {
        return waiting(std::min(earliest_timer(), from_nanos(until)));
      }
      admission.dispatching(*group, request, in_flight, admission.orderless(*group, alone), lazy_cost(request));
      dispatch(*group, request, now, rule, by_reservation, by_node);
      prefetch_next();
      return Decision::dispatch(&request, reported);
    }
  }

  bool under_shared_limit(const Device& device) const noexcept {
    return (hooks & kHookLimits) &&
           (device.limits.active() || (device.tree.tenant != nullptr && device.tree.tenant->limits.active()));
  }
  // A deep group back with a request while still busy keeps its lag
  // (from_busy; fair only); under the order wait, where it came back from
  // is kept for behind().
  [[gnu::noinline]] void returned_busy(Group& group) noexcept {
    auto& fair = static_cast<detail::FairOnlyOrder&>(*policy);
    if (admission.auto_window()) {
      busy_room(group.slot);
      busy_returns[group.slot] = {fair.virtual_time(), group.vtime};
    }
    fair.from_busy(group, last_now);
  }

  // fair_policy.h, "Busy groups": the order wait holds `group` (the only
  // one ready, or far ahead of the others) for requests of the order under
  // `fair` and the learned window.
  bool tracks_busy() const noexcept { return policy_name == Policy::fair && admission.auto_window(); }
  // Would `group`, the first of the ready groups, whose head is `request`,
  // go kAheadOfOthers more times before the next ready group (of any
  // device)? Never while a group is parked: it may be back at any moment.
  static constexpr std::uint32_t kAheadOfOthers = 2;
  bool ahead_of_others(const Group& group, const Request& request) const noexcept {
    if (!group_timers.empty()) return false;
    const Cost cost = std::min<Cost>(settings.cost.of(request) * kAheadOfOthers, kMaxCost);
    const std::int64_t until = group.device->ready.top().key + detail::FairPolicy::advance(cost, group.weight);
    const auto* next = group.device->ready.runner_up();
    const auto* next_device = top.runner_up();
    return (next == nullptr || next->key > until) && (next_device == nullptr || next_device->key > until);
  }
  // Is a busy deep group with nothing queued behind `group`, whose head is
  // `request`, by more than the slack? (Not across tenants: their tags are
  // in the tree's units.)
  [[gnu::noinline]] bool behind(const Group& group, const Request& request) noexcept {
    if (busy_behind.empty() || group.device->tree.tenant != nullptr) return false;
    while (!busy_behind.empty()) {
      const Group& other = *pool.at(busy_behind.top().item);
      // (It was deep when it went in; its busy_peak restarts when its last
      // request comes back, while it lingers.)
      if (other.head == nullptr && !other.retired && (other.in_flight > 0 || admission.lingering(other))) break;
      (void)busy_behind.pop();
    }
    // The least one: if its client has not been away lately it lags only
    // because its depth is below its share, and waiting would idle the
    // storage. (Another one further in, away, is not looked for.)
    if (busy_behind.empty() || last_now - away_at[busy_behind.top().item] > detail::kRecentlyAway) return false;
    // Only what both were served since both became busy counts
    // (fair_policy.h, "Busy groups"): A (`group`) is measured from the
    // later of B's place and A's own start, and if B came back after A
    // started, from A's start plus what B was served since it came back.
    const std::uint32_t b = busy_behind.top().item;
    const std::int64_t start = group.busy_start();
    std::int64_t from = std::max(busy_behind.top().key, start);
    if (busy_returns[b].vtime >= start) from = std::max(from, start + (busy_behind.top().key - busy_returns[b].tag));
    const Cost slack = std::min<Cost>(settings.cost.of(request) * detail::kOrderSlack, kMaxCost);
    return group.vtime > from + detail::FairPolicy::advance(slack, group.weight);
  }

  // A dispatch a device's or a tenant's reservation released: the node's
  // groups split it by the policy's order, so their tags move as for a
  // dispatch by weight; but V (and V_T) stay where they are, so that the
  // groups outside the node do not pay for it when they come back from
  // idle. Under dm-ioband's token policies the tokens are simply spent.
  bool charge_inside_node(Group& group, const Request& request, Nanos now) noexcept {
    if (!orders_by_shares(policy_name)) return policy->charge(group, request, policy->rule(), now);
    if (policy_name == Policy::range_bw && RangeBwPolicy::has_cap(group)) group.extras->max_bw.charge(request.bytes);
    const detail::DeviceNode& node = group.device->tree;
    const Cost cost = settings.cost.of(request);
    group.vtime += node.tenant == nullptr ? detail::FairPolicy::advance(cost, group.weight)
                                          : detail::tree_advance(cost, group.weight, node);
    return group.vtime > detail::kVtimeRebase;
  }

  // With many active groups, the group that goes next is rarely in the
  // cache, nor is its head request, nor its extras (limits, range-bw), and a
  // miss costs more than a whole call. So next() fetches two calls ahead: the
  // groups likely to go after the next one (the runner-up in the top device,
  // the best of the runner-up device) with their head requests and extras.
  // Their first lines were usually fetched one call earlier the same way
  // (one of them was a runner-up then too); the next group's were fetched
  // two calls ago. The caller submits this request and handles completions
  // meanwhile.
  void prefetch_next() const noexcept {
    if (top.empty()) return;
    const Device& device = *top.top().item;
    prefetch_group(*pool.at(device.ready.top().item));  // the most urgent, and in the cache
    if (const auto* runner_up = device.ready.runner_up()) prefetch_group(*pool.at(runner_up->item));
    if (const auto* device_runner_up = top.runner_up()) {
      prefetch_group(*pool.at(device_runner_up->item->ready.top().item));
    }
  }

  // The first line of `group` and what a dispatch of it reads beyond its own lines.
  void prefetch_group(const Group& group) const noexcept {
    __builtin_prefetch(&group);
    if (group.head != nullptr) {
      __builtin_prefetch(group.head);
    }
    if (const GroupExtras* extras = group.extras.get()) {
      static_assert(sizeof(GroupExtras) >= 3 * 64);
      const char* line = reinterpret_cast<const char*>(extras);
      __builtin_prefetch(line, 1);
      __builtin_prefetch(line + 64, 1);
      __builtin_prefetch(line + 128, 1);
    }
  }

  [[gnu::always_inline]] void dispatch(Group& group, Request& request, Nanos now, Rule rule,
                                       bool by_reservation = false, bool by_node = false) noexcept {
    Device& device = *group.device;
    // Unlink the head (the next request's `prev` goes stale: a head's is not kept).
    group.head = request.scheduler.next;
    if (group.head == nullptr) group.tail = nullptr;
    request.scheduler.next = nullptr;
    request.scheduler.prev = nullptr;
    request.scheduler.state = static_cast<std::uint8_t>(RequestState::in_flight);
    --group.queue_length;
    --device.queued;
    --queued;
    detail::Tenant* tenant = device.tree.tenant;
    if (tenant != nullptr) {
      --tenant->queued;
      ++tenant->in_flight;
    }
    ++group.in_flight;
    ++device.in_flight;
    ++in_flight;

    const double model_ns = settings.cost.model_ns(request);
    if (model_learning) in_flight_ns += model_ns;
    GroupExtras* extras = group.extras.get();
    if (extras != nullptr && extras->limits.active()) extras->limits.charge(request.direction, request.bytes, now);
    // hook: reservations. A dispatch the reservation released is not the
    // policy's (the weights share what reservations leave); every dispatch
    // counts toward the reservation (reservation.h).
    const bool rebase_now = !by_reservation ? order_charge(group, request, rule, now, model_ns)
                            : by_node       ? charge_inside_node(group, request, now)
                                            : false;
    if (hooks & kHookLimits) {
      if (device.limits.active()) device.limits.charge(request.direction, request.bytes, now);
      if (tenant != nullptr && tenant->limits.active()) tenant->limits.charge(request.direction, request.bytes, now);  // tree.h
      if (group.head == nullptr) start_returning(group);  // kept_for_returns, under the key just charged
    }
    if (hooks & kHookReserve) {
      if (extras != nullptr && extras->reserve.active()) {
        extras->reserve.charge(settings.cost.device_ns(request), false, now);  // idle: went_idle()
      }
      if (device.reserve.active()) device.reserve.charge(settings.cost.device_ns(request), device.queued == 0, now);
      if (tenant != nullptr && tenant->reserve.active()) {
        tenant->reserve.charge(settings.cost.device_ns(request), tenant->queued == 0, now);
      }
    }
    detail::count_dispatch(group, request, now, wait_epoch, [this](const Group& g) -> detail::WideCounters& {
      return wide_of(g);
    });
    observe_dispatch(group, request, now);
    request.scheduler.time = now;  // from here on: the dispatch time

    // Requeue the group under its new key, or let it go idle.
    if (group.head != nullptr) {
      if (is_ready(group)) device.ready.update(group.slot, order_key(group));
      if (reserved(group)) device.reserved.update(extras, reservation_key(group));
    } else {
      if (is_ready(group)) device.ready.erase(group.slot);
      if (tracks_busy() && detail::Admission::deep(group.busy_peak) && tenant == nullptr) {
        // Its place: the start tag of the request it just sent (its S before
        // that request), so that a group of large requests is not waited for
        // while that one request is all it is behind by.
        const std::int64_t start = group.vtime - detail::FairPolicy::advance(settings.cost.of(request), group.weight);
        busy_room(group.slot);
        if (busy_behind.contains(group.slot)) {
          busy_behind.update(group.slot, start);
        } else {
          busy_behind.push(group.slot, start);
        }
      }
      if (reserved(group)) device.reserved.erase(extras);
    }
    update_device(device);
    if (rebase_now) rebase();
  }

  // ------------------------------------------------------------ counters
  // The wide counters of `group` (group.h), made on its first fold.
  // wide_by_slot is 4 bytes a group: with 10,000 groups it stays in the
  // cache, where a hash map keyed by the group would not.
  [[gnu::noinline]] detail::WideCounters& wide_of(const Group& group) {
    if (group.slot >= wide_by_slot.size()) wide_by_slot.resize(pool.slots(), 0);
    std::uint32_t& index = wide_by_slot[group.slot];
    if (index == 0) {
      if (wide_free.empty()) {
        wide.emplace_back();
        index = static_cast<std::uint32_t>(wide.size());
      } else {
        index = wide_free.back() + 1;
        wide_free.pop_back();
      }
      wide[index - 1].group = &group;
    }
    return wide[index - 1];
  }

  // Its wide counters, if it has folded (else null).
  detail::WideCounters* wide_if_any(const Group& group) noexcept {
    if (group.slot >= wide_by_slot.size() || wide_by_slot[group.slot] == 0) return nullptr;
    return &wide[wide_by_slot[group.slot] - 1];
  }

  // Why the request waited, decided now (observation.h); the completion counts it.
  void observe_dispatch(const Group& group, Request& request, Nanos now) noexcept {
    Request::SchedulerState& state = request.scheduler;
    const Nanos delay = now - state.time;
    state.queued_16ns = static_cast<std::uint32_t>(std::clamp<Nanos>(delay / 16, 0, UINT32_MAX));
    state.held = 0;
    if (delay <= 0) return;
    // Only limits pace: the group's own (in its extras), its device's or its
    // tenant's (held_by_limit marks the device for both).
    const bool paced = (group.extras && group.extras->limit_paced_at >= state.time) ||
                       group.device->limit_paced_at >= state.time;
    HoldReason reason = HoldReason::weight;
    if (paced) {
      reason = HoldReason::limit;
    } else if (window_closed_at >= state.time) {
      reason = HoldReason::window;
    }
    state.held = static_cast<std::uint8_t>(static_cast<std::uint8_t>(reason) + 1);
  }

  [[gnu::always_inline]] void observe_completion(const Request& request, Nanos now, bool failed) noexcept {
    const Request::SchedulerState& state = request.scheduler;
    const Nanos queued_ns = Nanos{state.queued_16ns} * 16;
    const Nanos duration = std::max<Nanos>(now - state.time, 0) + queued_ns;
    detail::count_completion(*state.group, request, duration, queued_ns, state.held, failed,
                             [this](const Group& g) -> detail::WideCounters& { return wide_of(g); });
  }

  void enqueue(Request& request, TimePoint now) noexcept {
    assert(request.scheduler.state == static_cast<std::uint8_t>(RequestState::idle) && "enqueue: already queued");
    Request::SchedulerState& state = request.scheduler;
    Group* group = state.group;
    std::uint64_t key = mapping_stamp << 16 | request.device;
    if (state.resolved_key != key || state.resolved_group != request.group) {
      group = resolve(request.device, request.group);
      state.resolved_key = key;
      state.resolved_group = request.group;
    }
    Device& device = *group->device;
    Nanos at = to_nanos(now);
    last_now = std::max(last_now, at);

    state.group = group;
    state.time = at;
    state.wait_epoch = wait_epoch;
    state.state = static_cast<std::uint8_t>(RequestState::queued);
    state.next = nullptr;
    state.prev = group->tail;
    if (group->tail == nullptr) {
      group->head = &request;
    } else {
      group->tail->scheduler.next = &request;
    }
    group->tail = &request;
    ++group->queue_length;
    ++device.queued;
    ++queued;
    if (device.tree.tenant != nullptr) ++device.tree.tenant->queued;
    if (group->queue_length == 1 && group->in_flight == 0) {
      detail::leaf_active(device.tree, group->weight);  // tree.h
      nodes_from_idle(device, at);                      // hook: reservations of its device and tenant
    }
    const std::uint8_t peak = group->busy_peak;
    group->busy_peak = static_cast<std::uint8_t>(std::min<std::uint32_t>(
        std::max<std::uint32_t>(peak, group->queue_length + group->in_flight), 255));
    admission.queued(*group, peak, anticipates, last_now);
    Cost between_cost = 0;
    if (group->queue_length == 1 && returning_count != 0 && returning_member(*group)) {
      // Back while the others wait to leave it tokens (kept_for_returns):
      // its device, held for it, may go now.
      if (between_requests(*group, at)) between_cost = policy->cost_of(request);
      stop_returning(*group);
      if (device.parked() && device.held_for_returns) device_timers.erase(&device);
    }
    if (group->queue_length == 1) make_ready(*group, true, between_cost);
    if (group->busy_peak > peak || group->queue_length == 1) release_places_held();
  }
  // The groups over_places parked ask again: a completion freed a place, or
  // a group's outstanding grew (admission.h, "places").
  void release_places_held() noexcept {
    ask_again(admission.places_held());
    ask_again(admission.behind_held());
  }
  // Is a group the places parked (its part of the places is full) before
  // `group` in the order, with requests of unlike size? Then `group` waits
  // for a completion too, while the storage has kOrderDepth in flight:
  // otherwise a 1 MiB writer, whose one place serves more than its share,
  // takes every turn the parked group cannot (three groups at equal weights,
  // a 1 MiB writer, a 4 KiB and a 64 KiB reader, on storage that serves in
  // order: 58/22/20 % of its time, 29/35/36 with this; qos_device_group_test).
  // Groups of like size are left as they were: their places count alike.
  [[gnu::noinline]] bool behind_places_held(const Group& group, const Request& head, std::uint32_t in_flight) const noexcept {
    if (in_flight < detail::Admission::kOrderDepth) return false;
    const std::int64_t key = order_key(group);
    for (const Group* held : admission.places_held()) {
      if (held != &group && order_key(*held) < key && admission.unlike_requests(group, head, *held)) return true;
    }
    return false;
  }
  // The groups the latency guard still holds may have changed since they
  // were held (one let through, one detached): the floor is their least tag
  // again, so that V is not kept below groups that already went on.
  // O(held), as holds() is.
  [[gnu::noinline]] void refresh_held_floor() noexcept {
    held_floor = INT64_MAX;
    for (const Group* g : latency.held()) {
      if (g->parked()) held_floor = std::min(held_floor, g->vtime);
    }
  }
  // Held groups ask again now (a limit that also holds one parks it again
  // in next()); the list is emptied.
  void ask_again(std::vector<Group*>& held) noexcept {
    for (Group* g : held) {
      if (g->parked()) {
        group_timers.erase(g);
        make_ready(*g, false);
      }
    }
    held.clear();
  }

  // The group that queues a request of (device, group id): the attached
  // group, or the device's default group.
  Group* resolve(DeviceId device_id, GroupId group_id) const noexcept {
    Device* device = find_device(device_id);
    assert(device != nullptr && "enqueue: the request's device is not in this device group");
    Group* group = find_group(*device, group_id);
    return group != nullptr ? group : device->default_group;
  }

  // Called whenever a group is attached, detached or destroyed, or a device
  // added or removed: every Request's cached resolution becomes stale.
  // Stamps come from one counter for the whole process, so a stamp of
  // another (or a destroyed) device group never matches this one's.
  // 48 bits: at a million changes a second, they last nine years.
  static std::uint64_t new_mapping_stamp() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  void groups_changed() noexcept { mapping_stamp = new_mapping_stamp(); }

  void restart_window() noexcept { admission.restart(device_model, device_model_calibrated, last_now); }

  // The model learned while serving (model_learner.h) starts from the
  // device model. The storage counts as saturated with the knee's worth of
  // 4 KiB random reads in flight (in device time: four 1 MiB writes are
  // more than 32 small reads), or with requests waiting for a full window.
  void restart_learning() noexcept {
    learner.reset();
    settings.cost.set_shape(learner);
    rescale_reservations();
    saturation_ns = device_model.depth * DeviceCosts::of(device_model).cost_ns(OpKind::read, 4096, false);
  }

  [[gnu::always_inline]] void learn(const Request& request) noexcept {
    const double base = settings.cost.model_ns(request);
    const bool saturated = in_flight_ns >= saturation_ns || (queued > 0 && in_flight >= admission.window());
    in_flight_ns = in_flight > 1 ? std::max(0.0, in_flight_ns - base) : 0;
    // A 4 KiB write that wrote a whole qcow2 cluster took a cluster write's
    // device time: learnt as a 4 KiB write, it would make every 4 KiB write
    // dearer, the groups that wrote in place too.
    int c = detail::RequestCost::class_of(request);
    double learnt_ns = base;
    if (learn_as_request == &request) {
      c = learn_as_class;
      learnt_ns = learn_as_ns;
      learn_as_request = nullptr;
    }
    if (learner.completed(c, learnt_ns, saturated, in_flight == 1, last_now)) {
      settings.cost.set_shape(learner);
      rescale_reservations();  // hook: the storage's speed moved
    }
  }

  void charge_device_io(const Request& request, const DeviceIo& done, Nanos now) noexcept {
    assert(request.scheduler.state == static_cast<std::uint8_t>(RequestState::in_flight) &&
           "charge_device_io: the request is not in flight");
    Group& group = *request.scheduler.group;
    // `done` priced as requests of the device model: n operations moving
    // b bytes cost as n of b / n each (the model is affine in bytes).
    Cost order_cost = 0;
    double device_ns = 0, model_ns = 0;
    int learn_class = -1;
    auto price = [&](Direction direction, OpKind op, std::uint32_t count, std::uint64_t bytes) {
      Request part;
      part.device = request.device;
      part.direction = direction;
      part.op_kind = op;
      part.sequential = request.sequential;  // as the request was priced: only what it did more counts
      for (std::uint32_t i = 0; i < count; ++i) {
        part.bytes = static_cast<std::uint32_t>(std::min<std::uint64_t>(bytes / count + (i < bytes % count), UINT32_MAX));
        order_cost += policy->cost_of(part);
        device_ns += settings.cost.device_ns(part);
        model_ns += settings.cost.model_ns(part);
      }
      if (count > 0) learn_class = detail::RequestCost::class_of(part);
    };
    price(Direction::read, OpKind::read, done.reads, done.read_bytes);
    price(Direction::write, OpKind::write, done.writes, done.write_bytes);
    price(Direction::write, OpKind::flush, done.syncs, 0);
    const Cost charged = policy->cost_of(request);
    const double charged_ns = settings.cost.device_ns(request);
    if (model_learning && model_ns > settings.cost.model_ns(request)) {
      learn_as_request = &request;
      const bool one_kind = (done.reads > 0) + (done.writes > 0) + (done.syncs > 0) == 1;
      learn_as_class = one_kind ? learn_class : -1;  // a mix: no class's shape, the scale
      learn_as_ns = model_ns;
    }
    if (order_cost <= charged) return;
    const bool rebase_now = policy->charge_more(group, order_cost - charged);
    if (returning_member(group)) group.device->returning.update(group.slot, policy->key(group));  // kept_for_returns
    if (group.extras && group.extras->reserve.active() && device_ns > charged_ns) {
      group.extras->reserve.charge(device_ns - charged_ns, false, now);
    }
    Device& device = *group.device;
    if (group.head != nullptr && is_ready(group)) device.ready.update(group.slot, policy->key(group));
    if (group.head != nullptr && reserved(group)) device.reserved.update(group.extras.get(), reservation_key(group));
    update_device(device);
    if (rebase_now) rebase();
  }

  void complete(Request& request, Nanos now, bool failed) noexcept {
    assert(request.scheduler.state == static_cast<std::uint8_t>(RequestState::in_flight) &&
           "complete: the request is not in flight");
    observe_completion(request, now, failed);
    Group& group = *request.scheduler.group;
    Device& device = *group.device;
    request.scheduler.state = static_cast<std::uint8_t>(RequestState::idle);
    last_now = std::max(last_now, now);
    if (model_learning) learn(request);
    --group.in_flight;
    --device.in_flight;
    if (device.tree.tenant != nullptr) --device.tree.tenant->in_flight;
    --in_flight;
    if (group.in_flight == 0 && group.queue_length == 0) {
      if (group.retired) {
        stop_returning(group);
      } else {
        leaf_idle(device, group.weight, last_now);
        if (group.extras) group.extras->reserve.went_idle(last_now);  // hook: reservations (its met window)
        if (returning_count != 0) returned(group, last_now);  // kept_for_returns
      }
    }
    if (tracks_busy() && detail::Admission::deep(group.busy_peak) &&
        group.in_flight + group.queue_length + (group.busy_peak >> detail::kAwayShift) <= group.busy_peak) {
      busy_room(group.slot);
      away_at[group.slot] = last_now;  // fair_policy.h, "Busy groups": its client is slow to send
    }
    // What a place of a deep group serves (admission.h), where the places compare groups.
    const double cost_ns = tracks_busy() && detail::Admission::deep(group.busy_peak) && admission.compares_places()
                               ? settings.cost.device_ns(request)
                               : -1;
    std::vector<Group*>& release =
        admission.completed(group, request, in_flight + 1, anticipates, cost_ns, lazy_cost(request), last_now);
    // The anticipated group completed: the groups it held ask again now
    // (a limit that also holds one parks it again in next()).
    ask_again(release);
    release_places_held();
    // ---- hook: latency targets (latency_target.h) ----
    if (hooks & kHookLatency) {
      const Nanos latency_ns = std::max<Nanos>(now - request.scheduler.time, 0) + Nanos{request.scheduler.queued_16ns} * 16;
      // A limit of its own held it (its group's, device's or tenant's): not
      // the others' doing (latency_target.h).
      const bool by_limit = request.scheduler.held == static_cast<std::uint8_t>(HoldReason::limit) + 1;
      std::vector<Group*>& again = latency.completed(group, latency_ns, by_limit, in_flight, admission.io_limit, last_now);
      ask_again(again);
      if (order == Order::fair && latency.holding()) refresh_held_floor();
    }
    if (group.in_flight == 0 && group.queue_length == 0) group.busy_peak = 0;
    if (group.retired && group.in_flight == 0) {
      retired.erase(std::find(retired.begin(), retired.end(), &group));
      destroy_group(&group);
      groups_changed();
    }
  }

  static void unlink(Group& group, Request& request) noexcept {
    Request* next = request.scheduler.next;
    Request* prev = request.scheduler.prev;
    bool is_head = group.head == &request;
    if (is_head) {
      group.head = next;  // next's `prev` goes stale: a head's is not kept
    } else {
      prev->scheduler.next = next;
    }
    if (group.tail == &request) {
      group.tail = is_head ? nullptr : prev;
    } else if (!is_head) {
      next->scheduler.prev = prev;
    }
    request.scheduler.next = nullptr;
    request.scheduler.prev = nullptr;
  }

  bool cancel(Request& request) noexcept {
    if (request.scheduler.state != static_cast<std::uint8_t>(RequestState::queued)) return false;
    Group& group = *request.scheduler.group;
    Device& device = *group.device;
    unlink(group, request);
    request.scheduler.state = static_cast<std::uint8_t>(RequestState::idle);
    --group.queue_length;
    --device.queued;
    --queued;
    if (device.tree.tenant != nullptr) --device.tree.tenant->queued;
    if (group.queue_length == 0 && group.in_flight == 0) leaf_idle(device, group.weight, last_now);  // tree.h
    // The keys belong to the group, not to its head: only an emptied group changes.
    if (group.head == nullptr) take_out(group);
    return true;
  }

  // Appends `from`'s queue to `to`'s, merged by arrival time.
  static void merge_queue(Group& from, Group& to) noexcept {
    Request* a = to.head;
    Request* b = from.head;
    Request* head = nullptr;
    Request* tail = nullptr;
    auto append = [&](Request* request) {
      request->scheduler.group = &to;
      request->scheduler.next = nullptr;
      request->scheduler.prev = tail;
      if (head == nullptr) {
        head = request;
      } else {
        tail->scheduler.next = request;
      }
      tail = request;
    };
    while (a != nullptr || b != nullptr) {
      Request* take;
      if (b == nullptr || (a != nullptr && a->scheduler.time <= b->scheduler.time)) {
        take = a;
        a = a->scheduler.next;
      } else {
        take = b;
        b = b->scheduler.next;
      }
      append(take);
    }
    to.head = head;
    to.tail = tail;
    to.queue_length += from.queue_length;
    from.head = nullptr;
    from.tail = nullptr;
    from.queue_length = 0;
  }

  Group* new_group(Device& device, std::uint32_t weight) {
    Group* group = pool.create();
    if (ready_positions.size() < pool.slots()) ready_positions.resize(pool.slots(), detail::kNotInHeap);
    group->device = &device;
    group->weight = weight;
    settings.weight_total += weight;
    device.tree.leaf_weight += weight;
    ++group_count;
    policy->start(*group);
    return group;
  }

  // A group leaves the weights (detached, or its device removed).
  void leave(Group* group) noexcept {
    settings.weight_total -= group->weight;
    group->device->tree.leaf_weight -= group->weight;
    --group_count;
    policy->forget(group);
    // hook: its reservation and latency target end with it, not with its last request in flight.
    latency.forget(detail::LatencyNode::of(group));
    if (group->extras && group->extras->reserve.active()) {
      reservations.forget(&group->extras->reserve);
      group->extras->reserve = {};
      rescale_reservations();
    }
  }

  std::size_t memory_bytes() const noexcept {
    std::size_t bytes = sizeof(Impl) + pool.memory_bytes() + ready_positions.capacity() * sizeof(std::uint32_t);
    bytes += busy_positions.capacity() * sizeof(std::uint32_t) + away_at.capacity() * sizeof(Nanos) +
             busy_returns.capacity() * sizeof(BusyReturn) +
             busy_behind.capacity() * sizeof(detail::SlotHeap::Entry);
    bytes += devices.capacity() * sizeof(devices[0]) + retired.capacity() * sizeof(Group*);
    bytes += (top.capacity() + top_reserved.capacity() + device_timers.capacity()) * sizeof(IndexedHeap<Device, &Device::top_index>::Entry);
    bytes += group_timers.capacity() * sizeof(IndexedHeap<Group, &Group::timer_index>::Entry);
    bytes += returning_by_slot.capacity() * sizeof(Returning) + returning_positions.capacity() * sizeof(std::uint32_t);
    for (const auto& device : devices) {
      if (!device) continue;
      bytes += sizeof(Device) + device->groups.memory_bytes();
      bytes += (device->ready.capacity() + device->returning.capacity()) * sizeof(detail::SlotHeap::Entry);
      bytes += device->reserved.capacity() * sizeof(IndexedHeap<GroupExtras, &GroupExtras::reservation_index>::Entry);
    }
    for_each_group([&](const Group* group) {
      if (group->extras) bytes += sizeof(GroupExtras);
    });
    // The wide counters of groups that folded, and their index by slot.
    bytes += wide.capacity() * sizeof(detail::WideCounters) +
             (wide_free.capacity() + wide_by_slot.capacity()) * sizeof(std::uint32_t);
    return bytes;
  }
};

// ======================================================================
DeviceGroup::DeviceGroup() : impl_(std::make_unique<Impl>()) {
  impl_->admission.bind(&impl_->pool);
  impl_->restart_window();
  impl_->restart_learning();
}
DeviceGroup::~DeviceGroup() = default;

// ---- settings ----
Status DeviceGroup::set_policy(Policy policy) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  switch (policy) {
    case Policy::weight:
    case Policy::weight_iosize:
    case Policy::range_bw:
    case Policy::fair: break;
    default: return Status::error("unknown policy");
  }
  if (!orders_by_shares(policy)) {
    for (const auto& device : impl_->devices) {
      if (device && device->tree.tenant != nullptr) {
        return Status::error("policy " + std::string(to_string(policy)) + " does not order by tenant shares; " +
                             device_name(device->id) + " is in tenant " + std::to_string(device->tree.tenant->id) +
                             " (use fair or range-bw, or take the devices out of their tenants first)");
      }
    }
  }
  if (policy != impl_->policy_name) impl_->set_policy(policy);
  return {};
}
Policy DeviceGroup::policy() const noexcept { return impl_->policy_name; }

Status DeviceGroup::set_token(std::uint64_t token) {
  if (token == 0 || token > kMaxToken) {
    return Status::error("token must be between 1 and " + std::to_string(kMaxToken) + ", not " +
                         std::to_string(token));
  }
  impl_->settings.token = token;
  impl_->settings_changed();
  return {};
}
std::uint64_t DeviceGroup::token() const noexcept { return impl_->settings.token; }

Status DeviceGroup::set_carryover(std::uint32_t carryover) {
  if (carryover > kMaxCarryover) {
    return Status::error("carryover must be between 0 and " + std::to_string(kMaxCarryover) + " epochs, not " +
                         std::to_string(carryover));
  }
  impl_->settings.carryover = carryover;
  impl_->settings_changed();
  return {};
}
std::uint32_t DeviceGroup::carryover() const noexcept { return impl_->settings.carryover; }

Status DeviceGroup::set_io_throttle(std::uint32_t io_throttle) {
  Admission& admission = impl_->admission;
  if (io_throttle > admission.io_limit) {
    return Status::error("io_throttle (" + std::to_string(io_throttle) + ") must not exceed io_limit (" +
                         std::to_string(admission.io_limit) + ")");
  }
  admission.io_throttle = io_throttle;
  return {};
}
std::uint32_t DeviceGroup::io_throttle() const noexcept { return impl_->admission.io_throttle; }

Status DeviceGroup::set_io_limit(std::uint32_t io_limit) {
  if (io_limit == 0 || io_limit > kMaxIoLimit) {
    return Status::error("io_limit must be between 1 and " + std::to_string(kMaxIoLimit) + ", not " +
                         std::to_string(io_limit));
  }
  Admission& admission = impl_->admission;
  if (io_limit < admission.io_throttle) {
    return Status::error("io_limit (" + std::to_string(io_limit) + ") must not be below io_throttle (" +
                         std::to_string(admission.io_throttle) + ")");
  }
  admission.io_limit = io_limit;
  return {};
}
std::uint32_t DeviceGroup::io_limit() const noexcept { return impl_->admission.io_limit; }

void DeviceGroup::set_io_limit_auto(bool on) noexcept {
  impl_->admission.set_auto_window(on, impl_->device_model, impl_->device_model_calibrated, impl_->last_now);
}
bool DeviceGroup::io_limit_auto() const noexcept { return impl_->admission.auto_window(); }
std::uint32_t DeviceGroup::io_window() const noexcept { return impl_->admission.window(); }
WindowSteps DeviceGroup::io_window_steps() const noexcept { return impl_->admission.window_steps(); }

Status DeviceGroup::set_cost_model(CostModel model) {
  if (model.request_tokens > kMaxRequestTokens) {
    return Status::error("cost per request must not exceed " + std::to_string(kMaxRequestTokens / kCostPerToken) +
                         " tokens");
  }
  if (model.sector_tokens > kMaxSectorTokens) {
    return Status::error("cost per sector must not exceed 1 token");
  }
  if (model.request_tokens == 0 && model.sector_tokens == 0) {
    return Status::error("the cost model must charge requests or sectors");
  }
  impl_->cost_model = model;
  impl_->settings.cost.set_tokens(model);
  return {};
}
CostModel DeviceGroup::cost_model() const noexcept { return impl_->cost_model; }

Status DeviceGroup::set_device_model(const DeviceModel& model, bool calibrated) {
  if (auto error = model_error(model)) return Status::error(*error);
  impl_->device_model = model;
  impl_->device_model_calibrated = calibrated;
  impl_->settings.cost.set_device_model(model);
  if (impl_->admission.auto_window()) impl_->restart_window();
  impl_->restart_learning();
  return {};
}
DeviceModel DeviceGroup::device_model() const noexcept { return impl_->device_model; }
DeviceModel DeviceGroup::learned_device_model() const noexcept {
  return impl_->learner.learned(impl_->device_model);
}
void DeviceGroup::set_model_learning(bool on) noexcept {
  if (on == impl_->model_learning) return;
  impl_->model_learning = on;
  impl_->in_flight_ns = 0;
  impl_->restart_learning();
}
bool DeviceGroup::model_learning() const noexcept { return impl_->model_learning; }
bool DeviceGroup::device_model_calibrated() const noexcept { return impl_->device_model_calibrated; }

// ---- devices ----
Status DeviceGroup::add_device(DeviceId id) {
  Impl& impl = *impl_;
  if (id >= kMaxDevices) {
    return Status::error(device_name(id) + ": device ids go up to " + std::to_string(kMaxDevices - 1));
  }
  if (impl.find_device(id) != nullptr) return Status::error(device_name(id) + " already exists");
  if (impl.devices.size() <= id) impl.devices.resize(id + 1);
  auto device = std::make_unique<Device>(&impl.ready_positions, &impl.returning_positions);
  device->id = id;
  device->default_group = impl.new_group(*device, kDefaultWeight);
  impl.devices[id] = std::move(device);
  ++impl.device_count;
  impl.reserve_capacity();
  impl.groups_changed();
  impl.settings_changed();
  return {};
}

Status DeviceGroup::remove_device(DeviceId id) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  Device* device = impl.find_device(id);
  if (device == nullptr) return Status::error(device_name(id) + " does not exist");
  if (device->queued != 0 || device->in_flight != 0) {
    return Status::error(device_name(id) + " has " + std::to_string(device->queued) + " requests queued and " +
                         std::to_string(device->in_flight) + " in flight; remove it once they have completed");
  }
  if (impl.top.contains(device)) impl.top.erase(device);
  if (impl.top_reserved.contains(device)) impl.top_reserved.erase(device);
  if (impl.device_timers.contains(device)) impl.device_timers.erase(device);
  detail::Tenants::place(device->tree, nullptr, kDefaultWeight);  // tree.h
  std::erase(impl.lingering, device);
  if (device->reserve.active()) impl.reservations.forget(&device->reserve);  // hook: reservations
  impl.latency.forget(detail::LatencyNode::of(device));                        // hook: latency targets
  Impl::for_each_group(*device, [&](Group* group) { impl.leave(group); });
  impl.relink_reservations();
  impl.rescale_reservations();
  impl.destroy_groups(*device);
  impl.devices[id].reset();
  --impl.device_count;
  impl.groups_changed();
  impl.settings_changed();
  return {};
}

bool DeviceGroup::has_device(DeviceId id) const noexcept { return impl_->find_device(id) != nullptr; }

std::vector<DeviceId> DeviceGroup::devices() const {
  std::vector<DeviceId> ids;
  for (const auto& device : impl_->devices) {
    if (device) ids.push_back(device->id);
  }
  return ids;
}

// ---- groups ----
Status DeviceGroup::attach(DeviceId device_id, GroupId group_id) {
  Impl& impl = *impl_;
  Device* device = impl.find_device(device_id);
  if (device == nullptr) return Status::error(device_name(device_id) + " does not exist");
  if (group_id == kDefaultGroup) return Status::error("group -1 is the default group; it is always attached");
  if (device->groups.find(group_id) != nullptr) return Status::error(group_name(device_id, group_id) + " is already attached");
  Group* group = impl.new_group(*device, kDefaultWeight);
  device->groups.insert(group_id, group);
  impl.reserve_capacity();
  impl.groups_changed();
  impl.settings_changed();
  return {};
}

Status DeviceGroup::detach(DeviceId device_id, GroupId group_id) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  Device* device = impl.find_device(device_id);
  if (device == nullptr) return Status::error(device_name(device_id) + " does not exist");
  if (group_id == kDefaultGroup) return Status::error("the default group cannot be detached");
  Group* group = device->groups.find(group_id);
  if (group == nullptr) return Status::error(group_name(device_id, group_id) + " is not attached");
  Group& fallback = *device->default_group;

  impl.take_out(*group);
  bool fallback_was_idle = fallback.head == nullptr;
  // tree.h: its weight leaves the device's active sum; the default group
  // may become active with the requests it takes over.
  if (group->queue_length + group->in_flight != 0) impl.leaf_idle(*device, group->weight, impl.last_now);
  const bool fallback_was_active = fallback.queue_length + fallback.in_flight != 0;
  if (group->head != nullptr) Impl::merge_queue(*group, fallback);
  if (!fallback_was_active && fallback.head != nullptr) detail::leaf_active(device->tree, fallback.weight);
  if (fallback_was_idle && fallback.head != nullptr) impl.make_ready(fallback);

  device->groups.erase(group_id);
  impl.leave(group);
  if (group->in_flight != 0) {
    group->retired = true;
    impl.retired.push_back(group);
  } else {
    impl.destroy_group(group);
  }
  impl.groups_changed();
  impl.settings_changed();
  return {};
}

bool DeviceGroup::has_group(DeviceId device_id, GroupId group_id) const noexcept {
  Device* device = impl_->find_device(device_id);
  return device != nullptr && Impl::find_group(*device, group_id) != nullptr;
}

std::vector<GroupId> DeviceGroup::groups(DeviceId device_id) const {
  std::vector<GroupId> ids;
  Device* device = impl_->find_device(device_id);
  if (device == nullptr) return ids;
  device->groups.for_each([&](GroupId id, Group*) { ids.push_back(id); });
  std::sort(ids.begin(), ids.end());
  ids.insert(ids.begin(), kDefaultGroup);
  return ids;
}

namespace {
template <typename Impl>
Group* lookup(const Impl& impl, DeviceId device_id, GroupId group_id, Status* status) {
  Device* device = impl.find_device(device_id);
  if (device == nullptr) {
    if (status) *status = Status::error(device_name(device_id) + " does not exist");
    return nullptr;
  }
  Group* group = Impl::find_group(*device, group_id);
  if (group == nullptr && status) *status = Status::error(group_name(device_id, group_id) + " is not attached");
  return group;
}
}  // namespace

Status DeviceGroup::set_weight(DeviceId device_id, GroupId group_id, std::uint32_t weight) {
  Status status;
  Group* group = lookup(*impl_, device_id, group_id, &status);
  if (group == nullptr) return status;
  if (weight == 0 || weight > kMaxWeight) {
    return Status::error("weight must be between 1 and " + std::to_string(kMaxWeight) + ", not " +
                         std::to_string(weight));
  }
  impl_->settings.weight_total += weight;
  impl_->settings.weight_total -= group->weight;
  const std::uint32_t before = group->weight;
  if (impl_->returning_member(*group)) {  // kept_for_returns
    group->device->returning_lightest = std::min(group->device->returning_lightest, weight);
  }
  detail::DeviceNode& node = group->device->tree;  // tree.h
  node.leaf_weight += weight;
  node.leaf_weight -= group->weight;
  if (group->queue_length + group->in_flight != 0) node.active_leaf_weight = node.active_leaf_weight + weight - group->weight;
  group->weight = weight;
  impl_->admission.weight_changed(*group, before);
  impl_->settings_changed();  // fair / range-bw: the next dispatch uses it
  return {};
}

std::optional<std::uint32_t> DeviceGroup::weight(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  return group->weight;
}

Status DeviceGroup::set_range_bw(DeviceId device_id, GroupId group_id, std::uint64_t min_kib, std::uint64_t max_kib) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Status status;
  Group* group = lookup(*impl_, device_id, group_id, &status);
  if (group == nullptr) return status;
  if (min_kib > kMaxRangeKib || max_kib > kMaxRangeKib) {
    return Status::error("range-bw values must not exceed " + std::to_string(kMaxRangeKib) + " KiB/s");
  }
  if (max_kib != 0 && min_kib > max_kib) {
    return Status::error("min-bw (" + std::to_string(min_kib) + " KiB/s) is above max-bw (" +
                         std::to_string(max_kib) + " KiB/s)");
  }
  if (min_kib == 0 && max_kib == 0 && !group->extras) return {};
  GroupExtras& extras = impl_->extras_of(*group);
  bool had_reservation = extras.range.min_kib != 0;
  extras.range = {min_kib, max_kib};
  RangeBwPolicy::configure_cap(extras);
  if (!had_reservation) extras.reservation = 0;
  impl_->refresh(*group);
  return {};
}

std::optional<RangeBw> DeviceGroup::range_bw(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  return group->extras ? group->extras->range : RangeBw{};
}

Status DeviceGroup::set_limits(DeviceId device_id, std::optional<GroupId> group_id, const Limits& limits,
                               bool admitted) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  Device* device = impl.find_device(device_id);
  if (device == nullptr) return Status::error(device_name(device_id) + " does not exist");
  if (Status status = validate(limits); !status) return status;
  auto apply = [&](LimitState& state) {
    if (limits.unlimited()) state = LimitState();  // no level kept past no limit
    state.configure(limits);  // keeps the levels: no free burst from a change
  };
  if (group_id) {
    Group* group = Impl::find_group(*device, *group_id);
    if (group == nullptr) return Status::error(group_name(device_id, *group_id) + " is not attached");
    if (limits.empty() && !group->extras) return {};
    // ---- hook: reservations and latency targets (reservation.h, latency_target.h) ----
    GroupExtras& extras = impl.extras_of(*group);
    if (Status status = impl.set_reservation(extras.reserve, detail::GroupReservation::group, limits, admitted);
        !status) {
      return status;
    }
    apply(extras.limits);
    const bool had_target = impl.latency.any();
    impl.set_latency_target(detail::LatencyNode::of(group), limits, extras.reserve);
    if (impl.latency.any() != had_target) impl.reserve_capacity();
    impl.refresh(*group);
  } else {
    bool lowered = false;
    if (Status status =
            impl.set_reservation(device->reserve, detail::GroupReservation::device, limits, admitted, &lowered);
        !status) {
      return status;
    }
    // The lead a lower reservation no longer gives (another key's change keeps it).
    if (lowered) impl.drop_reservation_lead(device, nullptr);  // restart_device() below
    apply(device->limits);
    impl.set_latency_target(detail::LatencyNode::of(device), limits, device->reserve);  // hook: latency targets
    impl.reserve_capacity();
    impl.restart_device(*device);
  }
  return {};
}

std::optional<Limits> DeviceGroup::limits(DeviceId device_id, std::optional<GroupId> group_id) const noexcept {
  Device* device = impl_->find_device(device_id);
  if (device == nullptr) return std::nullopt;
  if (!group_id) return device->limits.limits();
  Group* group = Impl::find_group(*device, *group_id);
  if (group == nullptr) return std::nullopt;
  return group->extras ? group->extras->limits.limits() : Limits{};
}

namespace {
// `node`'s reservation `r`, and the cap it puts on the others (latency_target.h).
template <typename Impl>
ReservationStatus reservation_status(detail::GroupReservation& r, detail::LatencyNode node, const Impl& impl) {
  const detail::Reservations& all = impl.reservations;
  r.roll(impl.last_now);
  ReservationStatus status;
  status.iops = r.iops;
  status.bps = r.bps;
  status.wanted_iops = all.in_iops(r.wanted_ns);
  status.effective_iops = all.in_iops(r.rate_ns);
  status.served_iops = r.last_served_ns < 0 ? -1 : all.in_iops(r.last_served_ns);
  status.met = r.met();
  status.scaled = all.factor() < 1;
  status.cap_on_others = impl.latency.cap_of(node);
  return status;
}
}  // namespace

std::optional<ReservationStatus> DeviceGroup::device_reservation(DeviceId device_id) const noexcept {
  Device* device = impl_->find_device(device_id);
  if (device == nullptr || !device->reserve.active()) return std::nullopt;
  return reservation_status(device->reserve, detail::LatencyNode::of(device), *impl_);
}

std::optional<ReservationStatus> DeviceGroup::tenant_reservation(TenantId tenant_id) const noexcept {
  detail::Tenant* tenant = impl_->tenants.find(tenant_id);
  if (tenant == nullptr || !tenant->reserve.active()) return std::nullopt;
  return reservation_status(tenant->reserve, detail::LatencyNode::of(tenant), *impl_);
}

std::optional<ReservationStatus> DeviceGroup::reservation(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr || !group->extras || !group->extras->reserve.active()) return std::nullopt;
  return reservation_status(group->extras->reserve, detail::LatencyNode::of(group), *impl_);
}

ReservationSummary DeviceGroup::reservations() const noexcept {
  const detail::Reservations& all = impl_->reservations;
  ReservationSummary summary;
  summary.capacity_iops = all.in_iops(impl_->capacity_ns(false));
  summary.reserved_iops = all.in_iops(all.sum_ns());
  summary.factor = all.factor();
  return summary;
}

std::optional<LatencyTargetStatus> DeviceGroup::latency_target(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  const LatencyTargetStatus* status = impl_->latency.status(detail::LatencyNode::of(group));
  if (status == nullptr) return std::nullopt;
  return *status;
}

std::optional<LatencyTargetStatus> DeviceGroup::device_latency_target(DeviceId device_id) const noexcept {
  const Device* device = impl_->find_device(device_id);
  if (device == nullptr) return std::nullopt;
  const LatencyTargetStatus* status = impl_->latency.status(detail::LatencyNode::of(device));
  if (status == nullptr) return std::nullopt;
  return *status;
}

std::optional<LatencyTargetStatus> DeviceGroup::tenant_latency_target(TenantId tenant_id) const noexcept {
  const detail::Tenant* tenant = impl_->tenants.find(tenant_id);
  if (tenant == nullptr) return std::nullopt;
  const LatencyTargetStatus* status = impl_->latency.status(detail::LatencyNode::of(tenant));
  if (status == nullptr) return std::nullopt;
  return *status;
}

std::uint32_t DeviceGroup::latency_cap_on(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  return group == nullptr ? 0 : impl_->latency.cap_on(*group);
}

// ---- tenants (tree.h) ----
Status DeviceGroup::add_tenant(TenantId tenant, std::uint32_t weight) { return impl_->tenants.add(tenant, weight); }
Status DeviceGroup::remove_tenant(TenantId tenant_id) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  detail::Tenant* tenant = impl.tenants.find(tenant_id);
  if (tenant != nullptr && tenant->devices == 0 && tenant->reserve.active()) {
    impl.reservations.forget(&tenant->reserve);
    std::erase(impl.reserving_tenants, tenant);
    impl.rescale_reservations();
  }
  if (tenant != nullptr && tenant->devices == 0) impl.latency.forget(detail::LatencyNode::of(tenant));
  return impl.tenants.remove(tenant_id);
}
bool DeviceGroup::has_tenant(TenantId tenant) const noexcept { return impl_->tenants.find(tenant) != nullptr; }
Status DeviceGroup::set_tenant_weight(TenantId tenant, std::uint32_t weight) {
  return impl_->tenants.set_weight(tenant, weight);  // read at each dispatch: nothing to redo
}

Status DeviceGroup::set_tenant_limits(TenantId tenant_id, const Limits& limits, bool admitted) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  detail::Tenant* tenant = impl.tenants.find(tenant_id);
  if (tenant == nullptr) return Status::error("tenant " + std::to_string(tenant_id) + " does not exist");
  if (Status status = validate(limits); !status) return status;
  bool lowered = false;
  if (Status status =
          impl.set_reservation(tenant->reserve, detail::GroupReservation::tenant, limits, admitted, &lowered);
      !status) {
    return status;
  }
  if (lowered) impl.drop_reservation_lead(nullptr, tenant);  // restart_device() below
  std::erase(impl.reserving_tenants, tenant);
  if (tenant->reserve.active()) {
    impl.reserving_tenants.push_back(tenant);
    if (tenant->active_devices == 0) tenant->reserve.from_idle(impl.last_now);
  }
  if (limits.unlimited()) tenant->limits = LimitState();  // no level kept past no limit
  tenant->limits.configure(limits);  // keeps the levels: no free burst from a change
  impl.set_latency_target(detail::LatencyNode::of(tenant), limits, tenant->reserve);  // hook: latency targets
  impl.reserve_capacity();
  for (auto& device : impl.devices) {
    if (device && device->tree.tenant == tenant) impl.restart_device(*device);
  }
  return {};
}

std::optional<Limits> DeviceGroup::tenant_limits(TenantId tenant_id) const noexcept {
  const detail::Tenant* tenant = impl_->tenants.find(tenant_id);
  if (tenant == nullptr) return std::nullopt;
  return tenant->limits.limits();
}

Status DeviceGroup::set_device_tenant(DeviceId device_id, std::optional<TenantId> tenant_id, std::uint32_t weight) {
  Impl::HooksRefresh refresh_hooks{*impl_};
  Impl& impl = *impl_;
  Device* device = impl.find_device(device_id);
  if (device == nullptr) return Status::error(device_name(device_id) + " does not exist");
  detail::Tenant* tenant = nullptr;
  if (tenant_id) {
    tenant = impl.tenants.find(*tenant_id);
    if (tenant == nullptr) return Status::error("tenant " + std::to_string(*tenant_id) + " does not exist");
    if (Status status = detail::check_tree_weight(weight, "a device's"); !status) return status;
    if (!orders_by_shares(impl.policy_name)) {
      return Status::error("policy " + std::string(to_string(impl.policy_name)) +
                           " does not order by tenant shares; use fair or range-bw");
    }
  }
  // Out of a reserving tenant: its groups lose the lead the tenant's
  // reservation gave them (restart_device() below).
  if (device->tree.tenant != nullptr && device->tree.tenant != tenant && device->tree.tenant->reserve.configured()) {
    impl.drop_reservation_lead(device, nullptr);
  }
  // Its queued requests count for the tenant they now wait in.
  if (device->tree.tenant != nullptr) {
    device->tree.tenant->queued -= device->queued;
    device->tree.tenant->in_flight -= device->in_flight;
  }
  if (tenant != nullptr) {
    tenant->queued += device->queued;
    tenant->in_flight += device->in_flight;
  }
  detail::Tenants::place(device->tree, tenant, tenant ? weight : kDefaultWeight);
  impl.relink_reservations();  // hook: a device's reservations count toward its new tenant's
  impl.rescale_reservations();
  impl.reserve_capacity();
  impl.restart_device(*device);
  return {};
}

std::optional<TenantId> DeviceGroup::device_tenant(DeviceId device_id) const noexcept {
  const Device* device = impl_->find_device(device_id);
  if (device == nullptr || device->tree.tenant == nullptr) return std::nullopt;
  return device->tree.tenant->id;
}

std::optional<NodeShare> DeviceGroup::group_share(DeviceId device_id, GroupId group_id) const noexcept {
  const Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  const detail::DeviceNode& node = group->device->tree;
  NodeShare share;
  share.active = group->queue_length + group->in_flight != 0;
  if (node.tenant == nullptr) {
    const auto [configured, active] = impl_->root_sums();
    share.configured = share.configured_path = ratio(group->weight, configured);
    share.effective = share.effective_path = share.active ? ratio(group->weight, active) : 0;
    return share;
  }
  const NodeShare device = *device_share(device_id);
  share.configured = ratio(group->weight, node.leaf_weight);
  share.effective = share.active ? ratio(group->weight, node.active_leaf_weight) : 0;
  share.configured_path = device.configured_path * share.configured;
  share.effective_path = device.effective_path * share.effective;
  return share;
}

std::optional<NodeShare> DeviceGroup::device_share(DeviceId device_id) const noexcept {
  const Device* device = impl_->find_device(device_id);
  if (device == nullptr) return std::nullopt;
  const detail::DeviceNode& node = device->tree;
  NodeShare share;
  share.active = node.active_leaves != 0;
  if (node.tenant == nullptr) {
    const auto [configured, active] = impl_->root_sums();
    share.configured = share.configured_path = ratio(node.leaf_weight, configured);
    share.effective = share.effective_path = ratio(node.active_leaf_weight, active);
    return share;
  }
  const NodeShare tenant = *tenant_share(node.tenant->id);
  share.configured = ratio(node.weight, node.tenant->weight_sum);
  share.effective = share.active ? ratio(node.weight, node.tenant->active_weight) : 0;
  share.configured_path = tenant.configured_path * share.configured;
  share.effective_path = tenant.effective_path * share.effective;
  return share;
}

std::optional<NodeShare> DeviceGroup::tenant_share(TenantId tenant_id) const noexcept {
  const detail::Tenant* tenant = impl_->tenants.find(tenant_id);
  if (tenant == nullptr) return std::nullopt;
  const auto [configured, active] = impl_->root_sums();
  NodeShare share;
  share.active = tenant->active_devices != 0;
  share.configured = share.configured_path = ratio(tenant->weight, configured);
  share.effective = share.effective_path = share.active ? ratio(tenant->weight, active) : 0;
  return share;
}

bool DeviceGroup::tenant_limiting(TenantId tenant_id) const noexcept {
  const detail::Tenant* tenant = impl_->tenants.find(tenant_id);
  return tenant != nullptr && tenant->limit_paced_at != INT64_MIN && tenant->limit_paced_at >= impl_->last_now - 1'000'000'000;
}

bool DeviceGroup::limiting(DeviceId device_id, std::optional<GroupId> group_id) const noexcept {
  Nanos paced_at = INT64_MIN;
  if (group_id) {
    const Group* group = lookup(*impl_, device_id, *group_id, nullptr);
    if (group != nullptr && group->extras) paced_at = group->extras->limit_paced_at;
  } else if (const Device* device = impl_->find_device(device_id)) {
    paced_at = device->limit_paced_at;
  }
  return paced_at != INT64_MIN && paced_at >= impl_->last_now - 1'000'000'000;
}

// ---- hot path ----
void DeviceGroup::enqueue(Request* request, TimePoint now) noexcept { impl_->enqueue(*request, now); }
Decision DeviceGroup::next(TimePoint now) noexcept { return impl_->next(to_nanos(now)); }
void DeviceGroup::complete(Request* request, TimePoint now, bool failed) noexcept {
  impl_->complete(*request, to_nanos(now), failed);
}
void DeviceGroup::charge_device_io(Request* request, const DeviceIo& done, TimePoint now) noexcept {
  impl_->charge_device_io(*request, done, to_nanos(now));
}
bool DeviceGroup::cancel(Request* request) noexcept { return impl_->cancel(*request); }

// ---- observation ----
std::optional<GroupStats> DeviceGroup::stats(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  return detail::stats_of(*group, impl_->wide_if_any(*group));
}

std::optional<GroupObservation> DeviceGroup::observation(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  return detail::observation_of(*group, impl_->wide_if_any(*group));
}

Status DeviceGroup::reset_stats(DeviceId device_id) {
  Device* device = impl_->find_device(device_id);
  if (device == nullptr) return Status::error(device_name(device_id) + " does not exist");
  Impl& impl = *impl_;
  Impl::for_each_group(*device, [&impl](Group* group) {
    detail::reset_dispatch_counters(*group, impl.wide_if_any(*group));
  });
  return {};
}

std::optional<std::uint32_t> DeviceGroup::queue_length(DeviceId device_id, GroupId group_id) const noexcept {
  Group* group = lookup(*impl_, device_id, group_id, nullptr);
  if (group == nullptr) return std::nullopt;
  return group->queue_length;
}

std::uint32_t DeviceGroup::queued() const noexcept { return impl_->queued; }
std::uint32_t DeviceGroup::in_flight() const noexcept { return impl_->in_flight; }
std::uint32_t DeviceGroup::queued(DeviceId device_id) const noexcept {
  Device* device = impl_->find_device(device_id);
  return device ? device->queued : 0;
}
std::uint32_t DeviceGroup::in_flight(DeviceId device_id) const noexcept {
  Device* device = impl_->find_device(device_id);
  return device ? device->in_flight : 0;
}

std::size_t DeviceGroup::memory_bytes() const noexcept { return impl_->memory_bytes(); }

}  // namespace ioband::qos
