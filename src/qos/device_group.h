// A device group: the bandwidth domain of ioband devices that share one
// piece of storage. It owns the policy, the token pool, carryover,
// io_throttle, io_limit, every group's weight, limits and statistics, and
// decides which queued request goes to the storage next.
//
// Pure: no clock, no syscalls, no threads, no locks. The owner (one reactor)
// passes `now` into every hot-path call and arms a timer for the time that
// `next` returns. Configuration calls return a Status and, on error, leave
// the state as it was.
//
// How the owner drives it:
//   enqueue(r, now);                         // a request arrived
//   for (;;) {                               // after enqueue, complete, a
//     Decision d = group.next(now);          // config change, or the timer
//     if (d.kind != Decision::Kind::dispatch) break;   // wait / empty
//     submit(d.request);
//   }
//   if (d.kind == wait && d.until != TimePoint::max()) arm_timer(d.until);
//   ... on completion: complete(r, now), then the loop again.
//
// Semantics of each policy: see policy docs in src/qos/*_policy.h. Under the
// weight-based policies a heavier group with few requests outstanding holds
// lighter groups to a short storage queue while it is active
// (anticipation.h).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "qos/cost.h"
#include "qos/device_model.h"
#include "qos/limits.h"
#include "qos/observation.h"
#include "qos/policy.h"
#include "qos/request.h"
#include "qos/stats.h"
#include "qos/status.h"
#include "qos/tree.h"

namespace ioband::qos {

inline constexpr std::uint32_t kDefaultWeight = 100;
inline constexpr std::uint32_t kMaxWeight = 1'000'000;
inline constexpr std::uint64_t kDefaultToken = 2048;
inline constexpr std::uint32_t kDefaultCarryover = 2;
inline constexpr std::uint32_t kDefaultIoThrottle = 4;
inline constexpr std::uint32_t kDefaultIoLimit = 128;
// The in-flight window is learned by default (auto_window.h), with io_limit
// as its cap: weights act whenever the clients together ask for more than
// the storage needs, not only past a fixed io_limit.
inline constexpr bool kDefaultIoLimitAuto = true;

struct Decision {
  enum class Kind : std::uint8_t {
    dispatch,  // submit `request` now
    wait,      // requests are queued, none may go before `until`
               // (TimePoint::max(): only a completion or a change frees one)
    empty,     // nothing is queued
  };
  Kind kind = Kind::empty;
  Rule rule = Rule::fair;        // dispatch: the rule that released it
  Request* request = nullptr;    // dispatch
  TimePoint until = TimePoint::max();  // wait

  static Decision dispatch(Request* request, Rule rule) noexcept {
    return {Kind::dispatch, rule, request, TimePoint::max()};
  }
  static Decision wait(TimePoint until) noexcept { return {Kind::wait, Rule::fair, nullptr, until}; }
  static Decision empty() noexcept { return {}; }
};

// range-bw of one group, KiB/s; 0 = none.
struct RangeBw {
  std::uint64_t min_kib = 0;
  std::uint64_t max_kib = 0;
  friend bool operator==(const RangeBw&, const RangeBw&) = default;
};

// A group's reservation (reservation.h), in reserved IOPS: device time a
// second counted in 4 KiB random reads of the device model.
struct ReservationStatus {
  std::uint64_t iops = 0;       // as configured
  std::uint64_t bps = 0;
  double wanted_iops = 0;       // the larger of the two, in IOPS
  double effective_iops = 0;    // after scaling down (the storage is slower than their sum)
  double served_iops = -1;      // in the last whole second; < 0: none yet
  bool met = true;              // served >= 95 % of effective, or it asked for less
  bool scaled = false;          // effective < wanted
  std::uint32_t cap_on_others = 0;  // in flight the others may have while it is behind (latency_target.h); 0: none
};

// The device group's reservations against its capacity (reservation.h).
struct ReservationSummary {
  double capacity_iops = 0;     // what the storage gives now (learned), in IOPS
  double reserved_iops = 0;     // the sum of the groups' reservations
  double factor = 1;            // < 1: every reservation scaled down by it
};

// A node's latency target (latency_target.h): a group's, a device's or a tenant's.
struct LatencyTargetStatus {
  std::int64_t target_ns = 0;
  std::uint32_t permille = 990;   // the percentile, p99 = 990
  std::int64_t percentile_ns = -1;  // of the last epoch; -1: none yet
  bool met = true;                // the last epoch's percentile was within the target
  std::uint32_t cap = 0;          // what the other groups may have in flight; 0: no cap
  std::uint64_t epochs = 0;
  std::uint64_t missed_epochs = 0;
};

// What the storage really did for one request, when that is more than the
// request itself: a qcow2 image's L2 table loads, copy-on-write reads,
// whole-cluster writes, and the metadata writes and syncs of a flush.
struct DeviceIo {
  std::uint32_t reads = 0, writes = 0, syncs = 0;
  std::uint64_t read_bytes = 0, write_bytes = 0;
};

class DeviceGroup {
 public:
  DeviceGroup();
  ~DeviceGroup();
  DeviceGroup(const DeviceGroup&) = delete;
  DeviceGroup& operator=(const DeviceGroup&) = delete;

  // ---- Device-group settings ----
  // Changing the policy re-orders the queued requests under the new one.
  Status set_policy(Policy policy);
  Policy policy() const noexcept;
  // Token pool per epoch (weight, weight-iosize): > 0, default 2048.
  Status set_token(std::uint64_t token);
  std::uint64_t token() const noexcept;
  // Epochs' worth of unused tokens a group may carry over (0..64, default 2).
  Status set_carryover(std::uint32_t carryover);
  std::uint32_t carryover() const noexcept;
  // Below this many in flight, requests pass without control (default 4).
  Status set_io_throttle(std::uint32_t io_throttle);
  std::uint32_t io_throttle() const noexcept;
  // With this many in flight every new request waits (default 128, >= 1).
  Status set_io_limit(std::uint32_t io_limit);
  std::uint32_t io_limit() const noexcept;
  // io_limit auto (the default): the window follows the storage, between
  // max(1, io_throttle) and io_limit; see auto_window.h. Turning it on
  // restarts the learning; set_io_limit keeps it on (the new cap applies).
  void set_io_limit_auto(bool on) noexcept;
  bool io_limit_auto() const noexcept;
  // The window next() applies now: io_limit, or the learned one when auto.
  std::uint32_t io_window() const noexcept;
  // Why the learned window moved since it started (auto_window.h).
  WindowSteps io_window_steps() const noexcept;
  // Cost model of the fair policy (and range-bw's spare share).
  Status set_cost_model(CostModel model);
  CostModel cost_model() const noexcept;
  // The storage's device model (device_model.h): what a request costs in
  // device time under `fair`, and the knee the in-flight window starts at.
  // `calibrated`: measured on this storage (iobandctl calibrate) rather
  // than the default; shown in status. Refused with model_error()'s reason.
  Status set_device_model(const DeviceModel& model, bool calibrated);
  DeviceModel device_model() const noexcept;
  bool device_model_calibrated() const noexcept;
  // The device model as learned while serving (model_learner.h): each
  // figure of device_model() moved by what the storage showed when it was
  // saturated. Learning is on by default; turning it off (or setting a
  // device model) starts it afresh from device_model().
  DeviceModel learned_device_model() const noexcept;
  void set_model_learning(bool on) noexcept;
  bool model_learning() const noexcept;

  // ---- Devices ----
  // A new device holds its default group (weight 100).
  Status add_device(DeviceId device);
  // Refused while the device has requests queued or in flight.
  Status remove_device(DeviceId device);
  bool has_device(DeviceId device) const noexcept;
  std::vector<DeviceId> devices() const;  // ascending

  // ---- Groups (group kDefaultGroup always exists on a device) ----
  Status attach(DeviceId device, GroupId group);
  // Queued requests of the group move to the device's default group, in
  // arrival order; requests in flight complete normally.
  Status detach(DeviceId device, GroupId group);
  bool has_group(DeviceId device, GroupId group) const noexcept;
  std::vector<GroupId> groups(DeviceId device) const;  // default first, then ascending

  Status set_weight(DeviceId device, GroupId group, std::uint32_t weight);  // 1..kMaxWeight
  std::optional<std::uint32_t> weight(DeviceId device, GroupId group) const noexcept;
  // min_kib <= max_kib when both set; max alone allowed; (0, 0) clears.
  Status set_range_bw(DeviceId device, GroupId group, std::uint64_t min_kib, std::uint64_t max_kib);
  std::optional<RangeBw> range_bw(DeviceId device, GroupId group) const noexcept;
  // Limits of a group, or of the whole device when `group` is nullopt.
  // An all-zero Limits removes them. Validated with validate(Limits).
  // `admitted`: accepted before (restoring saved state, undoing a change):
  // no admission check for its reservation.
  Status set_limits(DeviceId device, std::optional<GroupId> group, const Limits& limits, bool admitted = false);
  std::optional<Limits> limits(DeviceId device, std::optional<GroupId> group) const noexcept;
  // Limits also carry a group's reservation (reservation-iops, -bps) and
  // latency target; a reservation that would take the sum past 90 % of the
  // capacity is refused (reservation.h): of the calibrated model's, or of
  // the larger of the model's and the learned one's. A whole device may
  // reserve too (group nullopt), and a tenant (set_tenant_limits): a node's
  // reservation covers its children's (reservation.h). Latency targets sit
  // on any node too: a group's, a whole device's (all its groups'
  // requests) or a tenant's (all its devices'); while one misses, the
  // groups outside its node are capped (latency_target.h).
  std::optional<ReservationStatus> reservation(DeviceId device, GroupId group) const noexcept;  // nullopt: none
  std::optional<ReservationStatus> device_reservation(DeviceId device) const noexcept;        // of the whole device
  std::optional<ReservationStatus> tenant_reservation(TenantId tenant) const noexcept;
  ReservationSummary reservations() const noexcept;
  std::optional<LatencyTargetStatus> latency_target(DeviceId device, GroupId group) const noexcept;  // nullopt: none
  std::optional<LatencyTargetStatus> device_latency_target(DeviceId device) const noexcept;
  std::optional<LatencyTargetStatus> tenant_latency_target(TenantId tenant) const noexcept;
  // The in-flight cap the latency targets of nodes it is outside of impose on the group (0: none).
  std::uint32_t latency_cap_on(DeviceId device, GroupId group) const noexcept;

  // ---- Tenants (tree.h): a level above the devices, with shared limits ----
  // A tenant of this device group, weight 1..kMaxTreeWeight.
  Status add_tenant(TenantId tenant, std::uint32_t weight);
  // Refused while devices are in it.
  Status remove_tenant(TenantId tenant);
  bool has_tenant(TenantId tenant) const noexcept;
  Status set_tenant_weight(TenantId tenant, std::uint32_t weight);
  // Limits shared by every device of the tenant (all-zero: none), and its
  // reservation (reservation-iops, -bps; `admitted` as for set_limits).
  Status set_tenant_limits(TenantId tenant, const Limits& limits, bool admitted = false);
  std::optional<Limits> tenant_limits(TenantId tenant) const noexcept;
  // Puts `device` into `tenant` with `weight` among the tenant's devices
  // (moving it out of another), or, with nullopt, back under the root.
  // Tenants order by share under fair and range-bw only: refused under
  // weight and weight-iosize (and set_policy to those while a device is in
  // a tenant).
  Status set_device_tenant(DeviceId device, std::optional<TenantId> tenant, std::uint32_t weight = kDefaultWeight);
  std::optional<TenantId> device_tenant(DeviceId device) const noexcept;
  // Shares for status (NodeShare): of a group, of its device (the sum of
  // its groups' shares outside a tenant), of a tenant.
  std::optional<NodeShare> group_share(DeviceId device, GroupId group) const noexcept;
  std::optional<NodeShare> device_share(DeviceId device) const noexcept;
  std::optional<NodeShare> tenant_share(TenantId tenant) const noexcept;
  // Whether the tenant's shared limits held a request back in the last second.
  bool tenant_limiting(TenantId tenant) const noexcept;
  // The same for the limits of a group, or (nullopt) of the whole device.
  bool limiting(DeviceId device, std::optional<GroupId> group) const noexcept;

  // ---- Hot path ----
  // Queues `request` (its device must exist). Never dispatches by itself.
  void enqueue(Request* request, TimePoint now) noexcept;
  // The next request to submit, or when to ask again, or empty.
  Decision next(TimePoint now) noexcept;
  // A dispatched request finished on the storage (`failed`: with an error;
  // counted in observation()).
  void complete(Request* request, TimePoint now, bool failed = false) noexcept;
  // Before complete(): the storage did `done` for the in-flight request.
  // Its group's share (the order, a reservation) is charged what `done`
  // costs beyond what the request was charged at dispatch, never less (a
  // read of a hole keeps its charge). Limits are not: they count what the
  // clients ask.
  void charge_device_io(Request* request, const DeviceIo& done, TimePoint now) noexcept;
  // Takes a still-queued request out (its client went away). False if it
  // is not queued (already dispatched, or never enqueued).
  bool cancel(Request* request) noexcept;

  // ---- Observation ----
  std::optional<GroupStats> stats(DeviceId device, GroupId group) const noexcept;
  // Requests by operation, bytes, errors, durations and the time held back
  // by reason (observation.h). Counters only grow: reset_stats leaves them.
  std::optional<GroupObservation> observation(DeviceId device, GroupId group) const noexcept;
  // Clears the statistics of every group of the device (not queue_length / in_flight).
  Status reset_stats(DeviceId device);
  std::optional<std::uint32_t> queue_length(DeviceId device, GroupId group) const noexcept;
  std::uint32_t queued() const noexcept;     // whole device group
  std::uint32_t in_flight() const noexcept;  // whole device group
  std::uint32_t queued(DeviceId device) const noexcept;
  std::uint32_t in_flight(DeviceId device) const noexcept;

  // Bytes the scheduler holds (tests and the memory target).
  std::size_t memory_bytes() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ioband::qos
