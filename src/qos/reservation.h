// Reservations: a floor of device time a group gets before the weights
// share the rest (mClock's reservation, Gulati, Merchant, Varman 2010;
// ceph/dmclock's reservation tags and reduce_reservation_tags).
//
// The unit. A reservation is device time a second, in what `fair` charges
// (request_cost.h: the device model, shaped by what the learner found):
//   reservation-iops = N   ->  N * t(4 KiB random read)        ns a second
//   reservation-bps  = B   ->  B * t(large sequential read) / its bytes
//   r_g = the larger of the two
// so 1000 reserved IOPS are the same share of the storage whatever the group
// sends: 1000 4 KiB random reads a second, or as many 64 KiB writes, 1 MiB
// reads, ... as take the same device time.
//
// Levels. A group, an ioband device or a tenant (tree.h) may reserve. A
// node's reservation covers what is reserved below it: a group's dispatches
// count toward its device's and its tenant's reservations too, so the
// storage time a node needs is
//   need(n) = max(r_n, sum of need(c) over its reserving children c)
// (a child without a reservation of its own passes its children's need up),
// and the device group needs N = sum of need(n) over the nodes with no
// reserving parent. A node's reservation is served to the best of its
// groups by the policy's order (the weights below it split it).
//
// The capacity. The storage gives C = 1e9 / s ns of that time a second; s is
// the learner's scale (model_learner.h: s > 1, the storage is slower than
// its model, for example under load from outside ioband).
//   admission   a change is refused when N > 0.9 * C_a, where C_a is
//               1e9 for a calibrated model (the storage as measured) and C
//               otherwise (what was learned); nothing changes then
//   scaling     when the storage slows down, f = min(1, 0.9 * C / N)
//               and every node gets r'_n = f * r_n: proportionally less,
//               and the weights keep a tenth of the storage
//
// The tags (mClock's reservation phase):
//   R_g                      when g's next reserved nanosecond is due
//   reservation rule         among the groups with R_g <= now, the smallest
//                            R_g goes first, before the policy's order; such
//                            a dispatch is not charged to the policy (the
//                            weights share what the reservations leave)
//   every dispatch of g      R_g := min(max(R_g, now - 100 ms) + c(r) * 1e9 / r'_g,
//                                       now + 10 ms)
//                            whatever released it: what the weights give g
//                            counts toward its reservation (dmclock's
//                            reduce_reservation_tags), so g gets the larger
//                            of its reservation and its weighted share
//   back from idle           R_g := max(R_g, now): a group idle (nothing
//                            queued, nothing in flight) for 100 ms or more
//                            banks nothing; a shorter pause keeps R_g
// Guarantee: while the storage gives at least sum_g r'_g, a backlogged g gets
// r'_g over every window, within one request, the storage's latency and the
// 100 ms it may catch up.
//
// Met. Over each 1 s window: the group was served at least 95 % of r'_g, or
// it asked for less: a group idle (nothing queued, nothing in flight) for
// 50 ms of it in all; a device or tenant whose queue drained in it.
//
// Pure: time comes in as arguments.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "qos/request.h"
#include "qos/request_cost.h"
#include "qos/status.h"
#include "qos/token_bucket.h"

namespace ioband::qos::detail {

// One node's reservation (a group's in its GroupExtras, a device's, a tenant's).
struct GroupReservation {
  enum Level : std::uint8_t { group = 0, device = 1, tenant = 2 };
  std::uint64_t iops = 0;  // as configured
  std::uint64_t bps = 0;
  double wanted_ns = 0;    // r_g, ns of device time a second
  double rate_ns = 0;      // r'_g (0: none)
  Nanos tag = 0;           // R_g
  Nanos last_charge = INT64_MIN / 2;  // the last dispatch charged (from_idle)
  Level level = group;
  GroupReservation* parent = nullptr;  // the nearest reserving node above (the device group keeps it)
  double need_ns = 0;      // need(n), and the sum of its children's while Reservations::rescale runs
  double total_ns = 0;     // device time served since it was set (latency_target.h's epochs read it)
  // The met window.
  Nanos window_start = INT64_MIN;
  double served_ns = 0;
  bool idle_seen = false;
  double last_served_ns = -1;  // the last whole window; < 0: none yet
  bool last_idle_seen = false;
  // Time the group was idle in the met window: nothing queued, nothing in
  // flight (from went_idle to from_idle). A deep client off the CPU a
  // moment is not asking for less; one idle for a twentieth of the window is.
  static constexpr Nanos kNotIdle = INT64_MIN;
  Nanos idle_since = kNotIdle;
  Nanos idle_ns = 0;

  bool active() const noexcept { return rate_ns > 0; }
  bool configured() const noexcept { return iops != 0 || bps != 0; }  // active once rescaled
  bool due(Nanos now) const noexcept { return active() && tag <= now; }

  // Back from idle. A pause shorter than kPause is not idleness: a deep
  // client whose requests all came back while it was off the CPU (2 CPUs,
  // several clients and iobandd) still wants its reservation, and catches
  // up on what it missed (within kCatchUp).
  void from_idle(Nanos now) noexcept {
    if (now - last_charge >= kPause) tag = std::max(tag, now);
    if (idle_since != kNotIdle) {
      roll(now);
      idle_ns += now - std::max(idle_since, window_start);
      idle_since = kNotIdle;
    }
  }
  // A group's last request came back with nothing queued (groups only: a
  // device's or tenant's reservation counts a drained queue as idle).
  void went_idle(Nanos now) noexcept {
    if (active()) idle_since = now;
  }

  static constexpr Nanos kCatchUp = 100'000'000;  // 100 ms
  static constexpr Nanos kPause = kCatchUp;
  // How far ahead what the weights gave beyond the reservation may put R_g:
  // a group that had the storage to itself while the others were away
  // (their clients off the CPU) would otherwise wait out that surplus in
  // the next second (20.7k then 3.5k IOPS for 12.1k reserved, in the
  // simulator), missing the windows after it.
  static constexpr Nanos kAhead = 10'000'000;
  static constexpr Nanos kWindow = 1'000'000'000;

  // A dispatch of the group (any rule), of `cost_ns` device time.
  void charge(double cost_ns, bool emptied, Nanos now) noexcept {
    if (!active()) return;
    const double due = std::max(1.0, cost_ns * 1e9 / rate_ns);
    tag = std::min(std::max(tag, now - kCatchUp) + static_cast<Nanos>(due), now + kAhead);
    last_charge = now;
    roll(now);
    served_ns += cost_ns;
    total_ns += cost_ns;
    if (emptied) idle_seen = true;
  }

  void roll(Nanos now) noexcept {
    if (window_start == INT64_MIN) window_start = now;
    if (now - window_start < kWindow) return;
    // A whole window without a dispatch counts as idle.
    const bool skipped = now - window_start >= 2 * kWindow;
    last_served_ns = skipped ? 0 : served_ns;
    last_idle_seen = skipped || idle_seen || idle_ns * 20 >= kWindow;
    idle_ns = 0;
    window_start = skipped ? now : window_start + kWindow;
    served_ns = 0;
    idle_seen = false;
  }

  // The last whole window met the reservation (or asked for less).
  bool met() const noexcept { return last_served_ns < 0 || last_idle_seen || last_served_ns >= 0.95 * rate_ns; }
};

class Reservations {
 public:
  static constexpr double kMaxShare = 0.9;

  // The units, from what fair charges now (the device model and the shape).
  void set_units(const RequestCost& cost) noexcept {
    Request small;
    small.bytes = 4096;
    small.direction = Direction::read;
    small.op_kind = OpKind::read;
    unit_ns_ = std::max(1.0, cost.device_ns(small));
    Request large = small;
    large.bytes = 1 << 20;
    large.sequential = true;
    byte_ns_ = cost.device_ns(large) / (1 << 20);
  }
  double wanted_ns(std::uint64_t iops, std::uint64_t bps) const noexcept {
    return std::max(static_cast<double>(iops) * unit_ns_, static_cast<double>(bps) * byte_ns_);
  }
  // ns of device time a second, in reserved IOPS (4 KiB random reads).
  double in_iops(double ns) const noexcept { return ns / unit_ns_; }

  // Is N, with the reservations as they are set now, within 0.9 of
  // `capacity_ns`? The refusal names both. (The caller sets the change,
  // asks, and takes it back when refused.)
  Status admit(double capacity_ns, const char* capacity_kind) {
    const double sum = need();
    if (sum <= kMaxShare * capacity_ns) return {};
    auto iops_text = [&](double ns) { return std::to_string(static_cast<std::uint64_t>(in_iops(ns) + 0.5)); };
    return Status::error("reservations would total " + iops_text(sum) +
                         " IOPS (4 KiB random reads a second, in device time), above 90 % of the " + capacity_kind +
                         " capacity of " + iops_text(capacity_ns) + " IOPS (at most " +
                         iops_text(kMaxShare * capacity_ns) + " may be reserved); nothing was changed");
  }

  // Sets (or with 0, 0 clears) a reservation; call rescale() after.
  void set(GroupReservation& r, GroupReservation::Level level, std::uint64_t iops, std::uint64_t bps, Nanos now) {
    const bool was = r.iops != 0 || r.bps != 0;
    const bool is = iops != 0 || bps != 0;
    r.iops = iops;
    r.bps = bps;
    r.level = level;
    if (is && !was) {
      groups_.push_back(&r);
      r.tag = now;
      r.window_start = now;
    }
    if (!is && was) forget(&r);
    if (!is) r = GroupReservation{};
  }
  void forget(const GroupReservation* r) noexcept { std::erase(groups_, r); }

  // The storage gives `capacity_ns` a second now: each r'_g again.
  void rescale(double capacity_ns) noexcept {
    capacity_ns_ = capacity_ns;
    const double sum = need();
    sum_ns_ = sum;
    factor_ = sum > kMaxShare * capacity_ns ? kMaxShare * capacity_ns / sum : 1.0;
    for (GroupReservation* r : groups_) r->rate_ns = r->wanted_ns * factor_;
  }

  // N: the need of every reserving node without a reserving parent. A
  // parent is a level above its children, so one pass per level sums each
  // node's children before the node itself is passed up.
  double need() noexcept {
    for (GroupReservation* r : groups_) {
      r->wanted_ns = wanted_ns(r->iops, r->bps);
      r->need_ns = 0;
    }
    double sum = 0;
    for (int level = GroupReservation::group; level <= GroupReservation::tenant; ++level) {
      for (GroupReservation* r : groups_) {
        if (r->level != level) continue;
        r->need_ns = std::max(r->wanted_ns, r->need_ns);
        if (r->parent != nullptr) {
          r->parent->need_ns += r->need_ns;
        } else {
          sum += r->need_ns;
        }
      }
    }
    return sum;
  }

  template <typename Visit>
  void for_each(Visit visit) const {
    for (GroupReservation* r : groups_) visit(*r);
  }

  bool any() const noexcept { return !groups_.empty(); }
  double factor() const noexcept { return factor_; }  // f: 1 unless scaled down
  double sum_ns() const noexcept { return sum_ns_; }
  double capacity_ns() const noexcept { return capacity_ns_; }

 private:
  std::vector<GroupReservation*> groups_;
  double unit_ns_ = 40'000;  // t(4 KiB random read) of the default model
  double byte_ns_ = 2;
  double factor_ = 1;
  double sum_ns_ = 0;
  double capacity_ns_ = 1e9;
};

}  // namespace ioband::qos::detail
