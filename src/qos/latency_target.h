// Latency targets: a node's promise that a percentile of its requests'
// latency stays under a target (Linux io.latency's idea), kept by lowering
// what the other nodes may have in flight on the storage, in steps.
//
// A node is a group, an ioband device (all its groups' requests) or a
// tenant (all its devices' requests); "g" below is the node, and "the
// others" every group of the device group outside it: siblings, and the
// nodes elsewhere on the same storage.
//
// The latency of a request is what its client sees of ioband and the
// storage: from its arrival in the queue to its completion.
//
// The control loop, per target (node g, target T, percentile p):
//   epoch      at least 50 ms and 16 of g's completions (at most 2048
//              samples; 250 ms with fewer counts as an idle epoch)
//   q          the p-th percentile of the epoch's latencies of g's requests
// The loop aims below T, so that the percentile over longer spans (a
// second of several epochs) holds too:
//   q > 0.9T   missed: the cap on the others' requests in flight (every
//              group of the device group but g) steps down:
//                  cap := max(1, c * 3/4), or c / 2 when q > 1.5 T
//              c: the cap, or (none yet) the most the others had in flight
//              during the epoch
//   q <= 0.7T  held with room: the cap steps up,
//                  cap := cap + max(1, cap / 8)
//   idle       an epoch without g's completions doubles the cap
//              the cap goes away once it passes io_limit
//   otherwise  the cap stays
// Dispatch: a group outside g waits while the groups outside g already have
// cap requests in flight (it asks again at the next completion). g's groups
// are never held by its own target, and then pass a full in-flight window
// (up to io_limit); two targets each cap the other's node, and a target on
// a device or tenant does not hold the groups inside it (a group's own
// target inside it does).
//
// Reservations use the same cap (reservation.h): a backlogged reserving
// node (a group, a device, a tenant) served less than it wants is missing
// its reservation, because the others' requests already in the storage's
// own queue (a deep device queue ioband does not order) delay its own. Per
// epoch:
//   want     r' * epoch + r' * lag / 2   (lag: how far its tag is behind now,
//            within +-100 ms; at least a quarter of r' * epoch)
//   x        served / want
//   x < 1 and its tag more than 10 ms behind now (served in order, the
//            tag stays within a request of now: nothing to do then)
//            cap := max(1, c * max(1/2, x))       (c: the cap, or the others' peak)
//   else     cap := max(cap + 1, cap * min(5/4, x))   (reservation only)
// in proportion to the miss: a fixed step overshot both ways.
//
// A node's own limit is not the others' doing. In an epoch in which a
// request of the node waited for a limit of its group, device or tenant,
// the node asks for more than its limit gives: its queue, and the latency
// of every request in it, grow with its depth whatever the others do, and
// a reservation above the limit cannot be met. Such an epoch is neither a
// missed target nor a missed reservation; the cap doubles, as when the node
// is idle.
// (Capping the others for it, down to one request in flight, gave the node
// nothing and took the others' rate to a twentieth.)
//
// Unlike io.latency, which throttles every group of a lower priority to
// queue depth 1 and back, the cap moves in steps and stops where the target
// holds, so the others keep what the protected group does not need.
//
// Pure: time comes in as arguments.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "qos/group.h"
#include "qos/reservation.h"
#include "qos/token_bucket.h"

namespace ioband::qos::detail {

// What a latency target sits on: a group, an ioband device or a tenant.
struct LatencyNode {
  enum class Kind : std::uint8_t { group, device, tenant };
  Kind kind = Kind::group;
  const void* node = nullptr;

  static LatencyNode of(const Group* group) noexcept { return {Kind::group, group}; }
  static LatencyNode of(const Device* device) noexcept { return {Kind::device, device}; }
  static LatencyNode of(const Tenant* tenant) noexcept { return {Kind::tenant, tenant}; }
  friend bool operator==(const LatencyNode&, const LatencyNode&) = default;

  // Are `group`'s requests the node's?
  bool contains(const Group& group) const noexcept {
    switch (kind) {
      case Kind::group: return node == &group;
      case Kind::device: return node == group.device;
      case Kind::tenant: return node == group.device->tree.tenant;
    }
    return false;
  }
  std::uint32_t in_flight() const noexcept {
    switch (kind) {
      case Kind::group: return static_cast<const Group*>(node)->in_flight;
      case Kind::device: return static_cast<const Device*>(node)->in_flight;
      case Kind::tenant: return static_cast<const Tenant*>(node)->in_flight;
    }
    return 0;
  }
  std::uint32_t queued() const noexcept {
    switch (kind) {
      case Kind::group: return static_cast<const Group*>(node)->queue_length;
      case Kind::device: return static_cast<const Device*>(node)->queued;
      case Kind::tenant: return static_cast<const Tenant*>(node)->queued;
    }
    return 0;
  }
};

class LatencyTargets {
 public:
  static constexpr Nanos kEpoch = 50'000'000;
  static constexpr Nanos kIdleEpoch = 250'000'000;
  static constexpr std::size_t kMinSamples = 16;
  static constexpr std::size_t kMaxSamples = 2048;
  static constexpr Nanos kRecheck = 1'000'000;  // a held group asks again at least this often
  static constexpr Nanos kBehind = 10'000'000;  // a reservation this far behind may be missed

  bool any() const noexcept { return !targets_.empty(); }
  // Does a cap hold some group back now (until completed() hands it back)?
  bool holding() const noexcept { return !held_.empty(); }
  const std::vector<Group*>& held() const noexcept { return held_; }

  // Sets (target_ns 0: removes) the latency target of `node`, and the
  // reservation it guards (nullptr: none): the node's own, a group's, a
  // device's or a tenant's.
  void set(LatencyNode node, Nanos target_ns, std::uint32_t permille, const GroupReservation* reservation,
           Nanos now) {
    Target* t = find(node);
    if (target_ns == 0 && reservation == nullptr) {
      if (t != nullptr) std::erase_if(targets_, [&](const auto& p) { return p.get() == t; });
      return;
    }
    if (t == nullptr) {
      targets_.push_back(std::make_unique<Target>());
      t = targets_.back().get();
      t->node = node;
      t->samples.reserve(kMaxSamples);
      t->epoch_start = now;
    }
    t->status.target_ns = target_ns;
    t->status.permille = permille;
    t->reservation = reservation;
    t->served_start = reservation != nullptr ? reservation->total_ns : 0;
  }

  // The latency target of `node` (nullptr: none).
  const LatencyTargetStatus* status(LatencyNode node) const noexcept {
    for (const auto& t : targets_) {
      if (t->node == node && t->status.target_ns != 0) return &t->status;
    }
    return nullptr;
  }
  // The cap `node`'s target or reservation puts on the others (0: none).
  std::uint32_t cap_of(LatencyNode node) const noexcept {
    for (const auto& t : targets_) {
      if (t->node == node) return t->status.cap;
    }
    return 0;
  }
  // The smallest cap imposed on `group` by the targets of nodes it is
  // outside of (0: none).
  std::uint32_t cap_on(const Group& group) const noexcept {
    std::uint32_t cap = 0;
    for (const auto& t : targets_) {
      if (!t->node.contains(group) && t->status.cap != 0) {
        cap = cap == 0 ? t->status.cap : std::min(cap, t->status.cap);
      }
    }
    return cap;
  }

  // Must `group` wait, with `in_flight` in the device group? A held group
  // is remembered and handed back by completed().
  // `window_full`: only the groups passes_window() lets through may go.
  bool holds(Group& group, std::uint32_t in_flight, bool window_full) noexcept {
    if (window_full && !passes(group)) {
      if (std::find(held_.begin(), held_.end(), &group) == held_.end()) held_.push_back(&group);
      return true;
    }
    for (const auto& t : targets_) {
      if (t->status.cap == 0 || t->node.contains(group)) continue;
      if (in_flight - t->node.in_flight() >= t->status.cap) {
        if (std::find(held_.begin(), held_.end(), &group) == held_.end()) held_.push_back(&group);
        return true;
      }
    }
    return false;
  }

  // The in-flight window is full, and a node whose target caps the others
  // has requests queued: its groups may pass the window (up to io_limit),
  // the others may not. The cap made the room it needs; behind a full window it
  // would wait for the others' completions, the latency its target is against.
  bool passes_window(std::uint32_t in_flight, std::uint32_t io_limit) const noexcept {
    if (in_flight >= io_limit) return false;
    for (const auto& t : targets_) {
      if (t->status.cap != 0 && t->node.queued() != 0) return true;
    }
    return false;
  }

  // A request of `group` completed after `latency_ns`; `limited`: it
  // waited for a limit of its own (its group's, device's or tenant's);
  // `in_flight` still in flight in the device group (its own count already
  // lowered, and its device's and tenant's); `ceiling`: io_limit. Returns
  // the held groups to ask again (the caller empties it).
  std::vector<Group*>& completed(const Group& group, Nanos latency_ns, bool limited, std::uint32_t in_flight,
                                 std::uint32_t ceiling, Nanos now) noexcept {
    for (const auto& p : targets_) {
      Target& t = *p;
      // The others' requests in flight just before this completion.
      const bool own = t.node.contains(group);
      const std::uint32_t others = in_flight - t.node.in_flight() + (own ? 0 : 1);
      t.others_peak = std::max(t.others_peak, others);
      if (own && limited) t.limited = true;
      if (own && t.samples.size() < kMaxSamples) t.samples.push_back(latency_ns);
      const Nanos age = now - t.epoch_start;
      const bool enough = t.samples.size() >= kMinSamples || t.status.target_ns == 0;
      if ((age >= kEpoch && enough) || t.samples.size() >= kMaxSamples || age >= kIdleEpoch) {
        step(t, ceiling, now);
      }
    }
    if (held_.empty()) return held_;
    for (const auto& t : targets_) {
      if (t->status.cap != 0 && in_flight - t->node.in_flight() >= t->status.cap) return none_;
    }
    return held_;
  }

  // The node is going away (a group detached, a device or tenant removed).
  void forget(LatencyNode node) noexcept {
    std::erase_if(targets_, [&](const auto& t) { return t->node == node; });
    if (node.kind == LatencyNode::Kind::group) std::erase(held_, static_cast<const Group*>(node.node));
  }

 private:
  struct Target {
    LatencyNode node;
    LatencyTargetStatus status;
    const GroupReservation* reservation = nullptr;  // guarded too (see reservation.h)
    Nanos epoch_start = 0;
    std::vector<Nanos> samples;
    std::uint32_t others_peak = 0;
    double served_start = 0;  // the reservation's total_ns when the epoch began
    bool limited = false;     // a request of the node waited for a limit of its own this epoch
  };

  bool passes(const Group& group) const noexcept {
    for (const auto& t : targets_) {
      if (t->status.cap != 0 && t->node.contains(group)) return true;
    }
    return false;
  }

  Target* find(LatencyNode node) noexcept {
    for (auto& t : targets_) {
      if (t->node == node) return t.get();
    }
    return nullptr;
  }

  static void step(Target& t, std::uint32_t ceiling, Nanos now) noexcept {
    LatencyTargetStatus& s = t.status;
    const Nanos target = s.target_ns;
    bool missed = false, halve = false, room = true, idle = true;
    if (target != 0) {
      Nanos q = -1;
      if (t.samples.size() >= kMinSamples || (!t.samples.empty() && now - t.epoch_start >= kIdleEpoch)) {
        const std::size_t n = t.samples.size();
        std::size_t rank = (n * s.permille + 999) / 1000;
        rank = std::clamp<std::size_t>(rank, 1, n) - 1;
        std::nth_element(t.samples.begin(), t.samples.begin() + static_cast<std::ptrdiff_t>(rank), t.samples.end());
        q = t.samples[rank];
      }
      if (q >= 0) {
        s.percentile_ns = q;
        s.met = q <= target;
        ++s.epochs;
        if (!s.met) ++s.missed_epochs;
      }
      missed = 10 * q > 9 * target;
      halve = 2 * q > 3 * target;
      room = q < 0 || 10 * q <= 7 * target;
      idle = q < 0;
    }
    // The reservation: what the group was served in the epoch over what it
    // was due plus half of what it lags (at most the 100 ms it may catch
    // up). Requests of others in the storage's own queue delay it, ahead
    // of the order ioband keeps. Only while it is backlogged: requests
    // queued in ioband, or several in the storage (a deep storage queue
    // takes them all at once); a 1-deep client below its reservation asks
    // for less than it is due.
    double ratio = -1;
    bool behind = false;
    if (t.reservation != nullptr && t.reservation->active()) {
      const GroupReservation& r = *t.reservation;
      const bool backlogged = t.node.queued() != 0 || t.node.in_flight() >= 2;
      if (backlogged) {
        const double due = r.rate_ns * static_cast<double>(now - t.epoch_start) / 1e9;
        const Nanos lag = std::clamp<Nanos>(now - r.tag, -GroupReservation::kCatchUp, GroupReservation::kCatchUp);
        const double want = std::max(0.25 * due, due + 0.5 * r.rate_ns * static_cast<double>(lag) / 1e9);
        ratio = want > 0 ? (r.total_ns - t.served_start) / want : 1;
        behind = ratio < 1 && lag > kBehind && !t.limited;
      }
      if (target == 0) missed = room = false;  // the step below decides alone
      room = room && !behind;
      idle = idle && !backlogged && t.node.in_flight() == 0;
    }
    if (t.limited) {  // its own limit's doing (above): nothing the cap can do for it
      missed = halve = false;
      idle = true;
    }
    if (missed) {
      const std::uint32_t base = s.cap != 0 ? s.cap : std::max<std::uint32_t>(1, t.others_peak);
      const std::uint32_t lower = halve ? base / 2 : base * 3 / 4;
      s.cap = std::max<std::uint32_t>(1, std::min(lower, base - (base > 1 ? 1 : 0)));
    } else if (s.cap != 0 && idle) {
      s.cap *= 2;  // nothing to protect: the others get it back quickly
      if (s.cap > ceiling) s.cap = 0;
    } else if (s.cap != 0 && room) {
      s.cap += std::max<std::uint32_t>(1, s.cap / 8);
      if (s.cap > ceiling) s.cap = 0;
    }
    // The reservation's step, in proportion to how far it was from what it
    // wanted (at most halved, at most a quarter up): a step of fixed size
    // overshot both ways, and the reservation swung from second to second.
    if (behind) {
      const std::uint32_t base = s.cap != 0 ? s.cap : std::max<std::uint32_t>(1, t.others_peak);
      s.cap = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(base * std::max(0.5, ratio)));
    } else if (ratio >= 0 && target == 0 && s.cap != 0 && !t.limited) {
      s.cap = std::max(s.cap + 1, static_cast<std::uint32_t>(std::ceil(s.cap * std::min(1.25, ratio))));
      if (s.cap > ceiling) s.cap = 0;
    }
    if (t.reservation != nullptr) t.served_start = t.reservation->total_ns;
    t.limited = false;
    t.samples.clear();
    t.others_peak = 0;
    t.epoch_start = now;
  }

  std::vector<std::unique_ptr<Target>> targets_;
  std::vector<Group*> held_;
  std::vector<Group*> none_;  // always empty
};

}  // namespace ioband::qos::detail
