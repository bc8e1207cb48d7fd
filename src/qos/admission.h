// Admission: whether the group the policy put first may go to the storage
// now, apart from the order (order_policy.h) and the accounting
// (accounting.h).
//
//   window         no request goes while `window()` are in flight: io_limit
//                  (dm-ioband's fixed window), or the learned one of
//                  io_limit auto (auto_window.h, the default), capped by
//                  io_limit and floored by io_throttle
//   order          the group is the only one ready, and this request would
//                  give it more of the storage's places per unit of weight
//                  than the other busy deep groups hold (their requests are
//                  in the storage and on their way back from the clients):
//                  it waits up to kOrderWait for theirs, while at least
//                  kOrderDepth are in flight (the storage stays busy). The
//                  weights then hold at any window, the learned one free to
//                  stay deep for the rate; a wait that runs out lets the
//                  request go, counted as orderless (auto_window.h). A deep
//                  group whose requests have all come back still holds its
//                  places for kLinger (its client is off the CPU more often
//                  than done: fio twice and iobandd on 2 cores), so the
//                  others do not take them the moment it is away; those
//                  waits are not counted against the window. Only
//                  with io_limit auto: dm-ioband's fixed window keeps
//                  dm-ioband's behaviour
//   places         no group may hold more of the storage's places per unit
//                  of weight than a busy deep group holds with all it has
//                  outstanding, or a lingering one claims (over_places): a
//                  deep client whose depth is below its share of the window,
//                  or whose requests are all back at it a moment, keeps its
//                  share anyway; the others wait for a completion instead
//                  of taking its part (40/20/10 at 16 deep on elastic
//                  storage gave 40/40/20). A group a few deep now (its demand limits
//                  it) is left to the order. Places holding requests of
//                  unlike size (mean costs more than kUnlikeCost apart:
//                  unlike_sizes) count for what they serve (service_of:
//                  the model's cost over the latency measured, Little's
//                  law), so a 1 MiB writer beside a 16-deep 4 KiB reader
//                  holds one write in flight, not 16 (storage that serves
//                  its queue in order gave the reader 2 % of its solo rate,
//                  and this disk 26-43 %); and a group of unlike size that
//                  comes after a group the places parked in the order
//                  waits with it (device_group.cc, behind_places_held).
//                  Under tenants the weights compared are the effective
//                  ones (tree.h, e(g)): tenants A (300: devices at 200 and
//                  100) and B (100) beside a device outside at 200 split
//                  28/22/21/28 for 33/17/17/33 with the tenants left to
//                  the order (bench/tree, docs/hierarchy.md). A group
//                  held at its depth and away from it much of the time -- a
//                  client that comes back to the same most outstanding
//                  again and again (kAtDepth times in a kBucket, the same
//                  most two buckets running) and holds under 3/4 of it on
//                  average, as one that sends its D requests together does
//                  and one sending at a pace of its own does not -- bounds
//                  the others by its service instead: no more than their
//                  part of its most in flight, and no more than their part
//                  of the requests it completed (over kAverageTau). fio on
//                  a shared CPU holds its 16 or none, and the part of the
//                  16 it holds at its peaks gave the light group 31 % of
//                  80/20 (16 deep over TCP, docs/weights.md). Only
//                  under fair with io_limit auto, and not in a device group
//                  with reservations (they give places outside the weights)
//   anticipation   a heavier shallow group holds lighter ones
//                  (anticipation.h); a held group is parked like one held by
//                  a limit and asks again at the anticipated group's next
//                  completion
//   limits         a group's own limits, its policy's cap (range-bw max-bw)
//                  and its device's limits: the device group parks what
//                  they hold until they allow it (limits.h)
//
// Pure: time comes in as arguments.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <vector>

#include "qos/anticipation.h"
#include "qos/auto_window.h"
#include "qos/device_model.h"
#include "qos/group.h"

namespace ioband::qos::detail {

class Admission {
 public:
  // The groups' pool: the lingering groups are linked by slot (see start_lingering).
  void bind(const GroupPool* pool) noexcept { pool_ = pool; }

  // Whether the device group has tenants: the weights compared are then
  // the effective ones (busy_deep_weight()).
  void set_tenants(bool any) noexcept { tenants_ = any; }

  // ---- settings ----
  std::uint32_t io_throttle = kDefaultIoThrottle;
  std::uint32_t io_limit = kDefaultIoLimit;

  bool auto_window() const noexcept { return auto_; }
  // Turning the learned window on restarts it.
  void set_auto_window(bool on, const DeviceModel& model, bool calibrated, Nanos now) noexcept {
    if (on && !auto_) restart(model, calibrated, now);
    auto_ = on;
  }
  // The learned window starts at the device model's knee; a measured knee
  // is also where the rate rule stops shrinking it.
  void restart(const DeviceModel& model, bool calibrated, Nanos now) noexcept {
    window_.reset(floor(), io_limit, now, model.depth, calibrated ? model.depth : 0);
  }
  std::uint32_t window() const noexcept { return auto_ ? window_.window(floor(), io_limit) : io_limit; }
  // Would one more request in flight give `group`, whose head is `head`,
  // more of the storage's places per unit of weight than a busy deep group
  // holds with all it has outstanding (in flight and queued)? Then it waits
  // for a completion or an arrival (places_held). See "places" above.
  bool over_places(const Group& group, const Request& head, Nanos now) noexcept {
    if (linger_head_ != kNoSlot) expire_lingering(now);
    if (!auto_ || busy_deep_groups_ + linger_groups_ < 2 || !few_groups() || group.in_flight == 0) return false;
    const int size = std::bit_width(head.bytes);
    // Weights in the root's units (group.h, weight_of): under tenants a
    // group's part of the storage is its effective weight, not its own.
    const double weight = weight_of(group);
    // Would `other`, holding `held` places, bound `group`?
    auto bounds = [&](const Group& other, std::uint64_t held) {
      if (&other == &group) return false;
      // Requests of unlike sizes hold unlike parts of a place: each place
      // counts for what it serves (service_of: cost over latency), and the
      // other holds its most outstanding since it was last empty (a
      // reader whose client tops its 16 up in bursts holds 3 at times,
      // and a writer let in then keeps its 1 MiB writes in the storage for
      // milliseconds: 2-8 in flight beside the reader's 16).
      if (unlike_sizes(group, size, other)) {
        const double mine = service_of(group), theirs = service_of(other);
        held = std::max<std::uint64_t>(held, other.busy_peak);
        if (mine == 0 || theirs == 0 || held <= Anticipation::kLowDepth) return false;
        // (n + 1) s / w > held s_other / w_other, multiplied out.
        return static_cast<double>(group.in_flight + 1) * mine * weight_of(other) > static_cast<double>(held) * theirs * weight;
      }
      // A group held at its depth (at_depth) bounds by its service instead:
      // `group` may hold its part of that depth at the most, and no more
      // than its part of what that group was served (requests completed,
      // over kAverageTau). Such a group holds its depth at times and nothing
      // at others, and places held alike need not serve alike: its
      // requests, sent together, took 175 us in the storage over unix
      // sockets, the light group's, sent one by one behind them, 208-290 us.
      if (const DepthTrack* t = tracked(other); t != nullptr && at_depth(*t)) {
        const double other_weight = weight_of(other);
        return static_cast<double>(group.in_flight + 1) * other_weight > static_cast<double>(t->last_most) * weight ||
               track_of(group).served.now(now) * other_weight > t->served.now(now) * weight;
      }
      if (held <= Anticipation::kLowDepth) return false;  // a few now: its demand, not its depth, limits it
      // (n + 1) / w > held / w_other, multiplied out.
      return static_cast<double>(group.in_flight + 1) * weight_of(other) > static_cast<double>(held) * weight;
    };
    for (const Group* other : busy_deep_) {
      if (bounds(*other, std::uint64_t{other->in_flight} + other->queue_length)) return true;
    }
    // A lingering group (its requests all came back a moment ago: its
    // client is off the CPU) holds its claim (start_lingering).
    for (std::uint32_t slot = linger_head_; slot != kNoSlot; slot = at(slot).linger_next) {
      if (bounds(at(slot), claim_of(at(slot)))) return true;
    }
    return false;
  }
  // Are `group`'s requests (its head `head`) of a size unlike `other`'s?
  bool unlike_requests(const Group& group, const Request& head, const Group& other) const noexcept {
    return unlike_sizes(group, std::bit_width(head.bytes), other);
  }
  // The groups over_places parked: they ask again at the next completion,
  // or when a group's outstanding grows (the caller empties the list).
  std::vector<Group*>& places_held() noexcept { return places_held_; }
  const std::vector<Group*>& places_held() const noexcept { return places_held_; }
  // The groups parked behind one of those (device_group.cc,
  // behind_places_held): kept apart, so that nobody waits behind them in turn.
  std::vector<Group*>& behind_held() noexcept { return behind_held_; }
  // Longest a group waits for places without a completion or an arrival:
  // kPlacesRecheck, or until the first lingering group's claim ends.
  Nanos places_recheck(Nanos now) const noexcept {
    return linger_head_ == kNoSlot ? now + kPlacesRecheck : std::min(now + kPlacesRecheck, linger_head_until_);
  }
  static constexpr Nanos kPlacesRecheck = 5'000'000;
  // Beyond this many busy deep and lingering groups the places are not compared (each
  // has about one place of the window at most, and the scan would cost).
  static constexpr std::uint32_t kPlacesGroups = 16;
  // The places compare groups now (or would, with a second busy group).
  bool compares_places() const noexcept { return auto_ && few_groups(); }
  const WindowSteps& window_steps() const noexcept { return window_.steps(); }

  // ---- hot path ----
  // No request may go now with `in_flight` in flight: the window is full
  // (the anticipation's bursts may pass it, up to io_limit).
  bool closed(std::uint32_t in_flight, Nanos now) noexcept {
    if (in_flight < window() || (in_flight < io_limit && anticipation_.exempt_from_window(now))) return false;
    if (auto_) window_.held_back();
    return true;
  }

  // Until when the anticipation holds `group` (0: it does not), whose next
  // request costs `cost()` (the policy's, asked only if needed:
  // anticipation.h), with `queued` requests queued in the device group. A
  // held group is parked by the caller and remembered here.
  template <typename CostOf>
  [[gnu::always_inline]] Nanos holds(Group& group, std::uint32_t in_flight, std::uint32_t queued, CostOf&& cost,
                                     Nanos now) noexcept {
    // A backlog of two of the largest windows (io_limit) or more: the order
    // decides among the groups queued (thousands of shallow ones), the
    // anticipation holds no shallow one.
    const bool backlog = queued >= 2 * io_limit;
    const Nanos until = anticipation_.holds(group, in_flight, backlog, cost, now);
    if (until != 0 && std::find(held_.begin(), held_.end(), &group) == held_.end()) held_.push_back(&group);
    return until;
  }
  // A limit paces `group`: if it is the anticipated one, nobody is held for it meanwhile.
  void paced_by_limit(const Group& group, Nanos now) noexcept { anticipation_.paced_by_limit(group, now); }

  // `request` of `group` goes now, with `in_flight` in flight before it;
  // `orderless`: see AutoWindow::dispatched; `cost()`: as for holds().
  template <typename CostOf>
  void dispatching(Group& group, Request& request, std::uint32_t in_flight, bool orderless, CostOf&& cost) noexcept {
    if (group.slot >= size_bits_.size()) size_bits_.resize(std::size_t{group.slot} + 1, 0);
    size_bits_[group.slot] = static_cast<std::int8_t>(std::bit_width(request.bytes));
    if (auto_) window_.dispatched(orderless, request.bytes);
    anticipation_.dispatching(group, request, in_flight, cost);
    if (deep(group.busy_peak)) {
      if (group.in_flight == 0) {
        stop_lingering(group);
        become_busy_deep(group);
      }
      ++busy_deep_in_flight_;  // the caller counts it in group.in_flight next
    }
  }

  // A request of `group` was queued; `peak` was its busy_peak before.
  void queued(Group& group, std::uint8_t peak, bool anticipates, Nanos now) noexcept {
    if (auto_ && deep(group.busy_peak)) arrived(group, now);
    if (group.in_flight > 0 && !deep(peak) && deep(group.busy_peak)) {
      stop_lingering(group);
      become_busy_deep(group);
      busy_deep_in_flight_ += group.in_flight;
    }
    if (group.queue_length == 1 && group.in_flight == 0 && !deep(group.busy_peak) && anticipates) {
      anticipation_.arrived(group, now);
    }
  }

  // `request` of `group` completed with `in_flight` in flight until then
  // (its own counts already lowered); `cost_ns`: its device time, or
  // negative where the places do not compare groups (compares_places());
  // `cost()`: the request's cost, the policy's, as for holds().
  // Returns the groups the anticipation held that must ask again now; the
  // caller empties the list.
  template <typename CostOf>
  [[gnu::always_inline]] std::vector<Group*>& completed(Group& group, const Request& request, std::uint32_t in_flight,
                                                        bool anticipates, double cost_ns, CostOf&& cost,
                                                        Nanos now) noexcept {
    if (cost_ns >= 0) served_by_place(group, cost_ns, now - request.scheduler.time);
    if (auto_) {
      if (anticipation_.engaged(now)) window_.pause();
      window_.completed(now, in_flight, floor(), io_limit);
    }
    if (linger_head_ != kNoSlot) expire_lingering(now);
    if (auto_ && deep(group.busy_peak)) {  // its counts since it went deep (arrived)
      DepthTrack& t = track_of(group);
      t.outstanding.set(group.in_flight + group.queue_length, now);
      t.served.add(now);
    }
    if (deep(group.busy_peak)) {
      --busy_deep_in_flight_;
      if (group.in_flight == 0) start_lingering(group, now);
    }
    if (!deep(group.busy_peak) && !group.retired && anticipates) {
      anticipation_.completed(group, request, in_flight - 1 - group.in_flight, cost, now);
    } else {
      anticipation_.deep_completed(group, now);
    }
    // The groups it held ask again at the anticipated group's completions,
    // and at any other while the allowance has room.
    if (held_.empty() || anticipation_.group() == &group || anticipation_.allows(in_flight - 1)) return held_;
    return none_;
  }

  // Until when the order holds the head request of `group` (0: it goes),
  // with `in_flight` in flight; `alone` as for orderless(). Within 1/32
  // of the others' places per unit of weight it goes. `behind`: a busy
  // deep group with nothing queued is behind `group` in the policy's order
  // (fair_policy.h): it waits for that group's next as well.
  Nanos order_holds(const Group& group, bool alone, std::uint32_t in_flight, Nanos now, bool behind) noexcept {
    if (linger_head_ != kNoSlot) expire_lingering(now);
    if (!auto_ || in_flight < kOrderDepth || !(behind || orderless(group, alone, 33, 32, true))) {
      order_wait_since_ = kNotWaiting;
      return 0;
    }
    if (order_wait_since_ == kNotWaiting) order_wait_since_ = now;
    if (now - order_wait_since_ >= kOrderWait) {
      order_wait_since_ = kNotWaiting;
      return 0;
    }
    return order_wait_since_ + kOrderWait;
  }

  // Was a dispatch of `group` orderless (AutoWindow::dispatched)? `alone`:
  // nothing else is ready or parked. It is when the other busy deep groups
  // (in flight, none queued: their requests wait in the storage and in the
  // clients) hold fewer of the storage's places per unit of weight than
  // `group` would with this request, by more than 1/8: first come, first
  // served gives `group` more than its weight. A group that takes only
  // what its weight allows beside a deep group that cannot ask for more
  // (a 16-deep client at weight 80 whose 16 all sit in the storage) is not
  // disorder: shrinking the window there would only starve the storage.
  // `claims`: lingering groups count, with their claims (the order wait);
  // the window's count leaves them out (a client off the CPU is no sign of
  // a window too deep).
  //
  // Groups whose requests are of a size unlike `group`'s (unlike()): the
  // order wait counts their places for what they serve (service_of); the
  // window's count leaves them out. Between a 1 MiB writer and a 4 KiB
  // reader the places decide (over_places holds the writer to what the
  // reader's places serve), and counting a write against reads took the
  // window to 4-6 where the reader needs 16 (docs/weights.md, "The mixed
  // cell").
  bool orderless(const Group& group, bool alone, std::uint64_t num = 9, std::uint64_t den = 8,
                 bool claims = false) const noexcept {
    if (!alone) return false;
    std::uint32_t self_claim = 0;
    const bool self_busy = group.in_flight > 0 && deep(group.busy_peak);
    const bool self_lingers = claims && !self_busy && lingers(group, &self_claim);
    const bool self = self_busy || self_lingers;
    const std::uint32_t groups = busy_deep_groups_ + (claims ? linger_groups_ : 0);
    if (groups <= (self ? 1u : 0u)) return false;
    const double weight = summed_weight(group);
    double others_weight = busy_deep_weight() + (claims ? linger_weight() : 0) - (self ? weight : 0);
    double others_in_flight = static_cast<double>(busy_deep_in_flight_ + (claims ? linger_claim_ : 0) -
                                                  (self_busy ? group.in_flight : 0) - self_claim);
    if (const Unlike u = unlike(group, claims); u.weight > 0) {
      if (claims) {
        others_in_flight += u.served - u.places;
      } else {
        others_in_flight -= u.places;
        others_weight -= u.weight;
        if (others_weight <= 0) return false;
      }
    }
    // (n + 1) / w > (num / den) N / W, multiplied out.
    return static_cast<double>((std::uint64_t{group.in_flight} + 1) * den) * others_weight >
           others_in_flight * static_cast<double>(num) * weight;
  }

  // The weight of `group` changes from `before` (it may be busy and deep).
  void weight_changed(const Group& group, std::uint32_t before) noexcept {
    if (group.in_flight > 0 && deep(group.busy_peak)) busy_deep_weight_ += std::uint64_t{group.weight} - before;
    if (lingers(group)) linger_weight_ += std::uint64_t{group.weight} - before;
  }

  // A new policy: the anticipation starts afresh.
  void policy_changed() noexcept { anticipation_ = {}; }
  void forget(Group* group) noexcept {
    stop_lingering(*group);
    if (group->slot < depth_.size()) depth_[group->slot] = {};
    if (group->slot < service_.size()) service_[group->slot] = {};
    anticipation_.forget(group);
    unlist(*group);
    std::erase(places_held_, group);
    std::erase(behind_held_, group);
    std::erase(held_, group);
  }

  // The order's wait (order_holds): long enough for a client's round trip
  // (in the simulator 0.2 to 5 ms gave the same cells, 50 us lost two).
  static constexpr Nanos kOrderWait = 500'000;
  static constexpr std::uint32_t kOrderDepth = 8;
  // How long a deep group whose requests all came back still counts as
  // busy, with its places claimed (a client off the CPU a moment).
  static constexpr Nanos kLinger = 5'000'000;

  // Its requests all came back a moment ago and it still counts as busy.
  bool lingering(const Group& group) const noexcept { return lingers(group); }

  // A deep group: more than kLowDepth outstanding since it was last empty.
  static bool deep(std::uint8_t busy_peak) noexcept { return busy_peak > Anticipation::kLowDepth; }

 private:
  std::uint32_t floor() const noexcept { return std::max<std::uint32_t>(io_throttle, 1); }

  bool auto_ = kDefaultIoLimitAuto;
  AutoWindow window_;
  Anticipation anticipation_;
  std::vector<Group*> held_;  // parked by the anticipation
  std::vector<Group*> none_;  // always empty
  // The weights of the busy deep and of the lingering groups, in the root's
  // units (group.h, weight_of): the running sums of their own weights, or,
  // with tenants in the device group, the sum of their effective weights
  // now (those move with the tree's active sums, so they are summed when
  // asked: a walk over those groups, only under tenants and, as for the
  // places, only up to kPlacesGroups of them; beyond, each holds about a
  // place at most and the own weights' sums stand in). summed_weight() is
  // a group's weight in the same units.
  bool effective_sums() const noexcept { return tenants_ && few_groups(); }
  // At most kPlacesGroups busy deep and lingering groups: few enough to walk.
  bool few_groups() const noexcept { return busy_deep_groups_ + linger_groups_ <= kPlacesGroups; }
  double summed_weight(const Group& group) const noexcept {
    return effective_sums() ? weight_of(group) : static_cast<double>(group.weight);
  }
  double busy_deep_weight() const noexcept {
    if (!effective_sums()) return static_cast<double>(busy_deep_weight_);
    double sum = 0;
    for (const Group* g : busy_deep_) sum += weight_of(*g);
    return sum;
  }
  double linger_weight() const noexcept {
    if (!effective_sums()) return static_cast<double>(linger_weight_);
    double sum = 0;
    for (std::uint32_t slot = linger_head_; slot != kNoSlot; slot = at(slot).linger_next) sum += weight_of(at(slot));
    return sum;
  }
  void become_busy_deep(const Group& group) noexcept {
    ++busy_deep_groups_;
    busy_deep_weight_ += group.weight;
    if (busy_deep_index_.size() <= group.slot) busy_deep_index_.resize(std::size_t{group.slot} + 1, kNoSlot);
    busy_deep_index_[group.slot] = static_cast<std::uint32_t>(busy_deep_.size());
    busy_deep_.push_back(&group);
  }

  // Lingering groups, O(1) per request at any number of groups and with no
  // memory of their own: a list through the groups' linger fields (group.h)
  // by slot, in the order they began, which is the order they end (every
  // one lasts kLinger, and `now` only grows). A group's entry keeps its
  // claim and the low 24 bits of its end; the full end of the first is
  // kept here, and each next one's is within kLinger after it (when one
  // begins, those that ended are gone: all began within kLinger).
  static constexpr std::uint32_t kNoSlot = UINT32_MAX;
  static constexpr unsigned kEndBits = 24;
  static constexpr std::uint32_t kEndMask = (1u << kEndBits) - 1;
  static_assert(kLinger < (Nanos{1} << kEndBits), "the ends in the list are within 2^24 ns of the first");
  static std::uint32_t claim_of(const Group& group) noexcept { return group.linger & 0xff; }
  Group& at(std::uint32_t slot) const noexcept { return *pool_->at(slot); }

  // A deep group's last request came back: for kLinger it still counts as
  // busy and deep, holding its weight's part of the window (no more than it
  // had outstanding, its busy_peak), unless it sends again (stop_lingering) first. Its
  // client is then most likely off the CPU, not done: without this the
  // others take its places the moment its requests are back, and its
  // share is gone for good (it cannot hold more than its depth after).
  void start_lingering(Group& group, Nanos now) noexcept {
    // Its claim: the places its weight gives it in the window among the
    // busy deep groups (itself included), or its depth if that is less
    // (at least 1: a window has a place, and busy_peak is deep).
    const double part = std::ceil(window() * summed_weight(group) / busy_deep_weight());
    const auto claim = static_cast<std::uint32_t>(std::min<double>(group.busy_peak, part));
    --busy_deep_groups_;
    busy_deep_weight_ -= group.weight;
    unlist(group);
    if (group.retired) return;
    if (group.linger != 0) end_lingering(group);
    const Nanos until = now + kLinger;
    group.linger = static_cast<std::uint32_t>(until & kEndMask) << 8 | claim;
    group.linger_next = kNoSlot;
    group.linger_prev = linger_tail_;
    if (linger_tail_ == kNoSlot) {
      linger_head_ = group.slot;
      linger_head_until_ = until;
    } else {
      at(linger_tail_).linger_next = group.slot;
    }
    linger_tail_ = group.slot;
    ++linger_groups_;
    linger_weight_ += group.weight;
    linger_claim_ += claim;
  }
  void stop_lingering(Group& group) noexcept {
    if (group.linger != 0) end_lingering(group);
  }
  // Out of the counts and the list.
  void end_lingering(Group& group) noexcept {
    --linger_groups_;
    linger_weight_ -= group.weight;
    linger_claim_ -= claim_of(group);
    if (group.linger_prev == kNoSlot) {
      linger_head_ = group.linger_next;
      if (linger_head_ != kNoSlot) linger_head_until_ = end_after(linger_head_until_, at(linger_head_));
    } else {
      at(group.linger_prev).linger_next = group.linger_next;
    }
    if (group.linger_next == kNoSlot) {
      linger_tail_ = group.linger_prev;
    } else {
      at(group.linger_next).linger_prev = group.linger_prev;
    }
    group.linger = 0;
  }
  // The end of `next`, which comes after the one that ended at `first` (within kLinger).
  static Nanos end_after(Nanos first, const Group& next) noexcept {
    const auto low = static_cast<std::uint32_t>(first & kEndMask);
    return first + (((next.linger >> 8) - low) & kEndMask);
  }
  bool lingers(const Group& group, std::uint32_t* claim = nullptr) const noexcept {
    if (group.linger == 0) return false;
    if (claim) *claim = claim_of(group);
    return true;
  }
  void expire_lingering(Nanos now) noexcept {
    while (linger_head_ != kNoSlot && linger_head_until_ <= now) end_lingering(at(linger_head_));
  }

  const GroupPool* pool_ = nullptr;
  std::uint32_t linger_head_ = kNoSlot;  // the first to end
  std::uint32_t linger_tail_ = kNoSlot;
  Nanos linger_head_until_ = 0;          // when the first ends

  static constexpr Nanos kNotWaiting = INT64_MIN;
  Nanos order_wait_since_ = kNotWaiting;   // since when order_holds() holds a request back

  // The busy deep groups (over_places), and each one's place in that list by slot.
  std::vector<const Group*> busy_deep_;
  std::vector<std::uint32_t> busy_deep_index_;
  std::vector<std::int8_t> size_bits_;  // by slot: bit width of the size of its last request dispatched

  // ---- what a place serves ----
  // By slot: the device time (the model's, ns) and the latency (dispatch to
  // completion) of the group's requests, each an exponential mean over about
  // kServiceSamples completions. Their ratio is what one of its places in
  // flight serves per ns (Little's law: a group with n in flight is served
  // n cost / latency). It tells places of unlike size apart whatever the
  // storage does with them: where it serves its queue in order (this disk)
  // a 1 MiB write and a 4 KiB read wait alike, and a place holding a write
  // serves the write's cost -- 42 reads' worth on this disk
  // (docs/weights.md); where it serves them all at once, the write takes
  // as much longer as it costs more, and a place is a place.
  struct Service {
    double cost = 0;
    double latency = 0;
  };
  static constexpr double kServiceSamples = 16;
  std::vector<Service> service_;
  void served_by_place(const Group& group, double cost_ns, Nanos latency_ns) {
    if (group.slot >= service_.size()) service_.resize(std::size_t{group.slot} + 1);
    Service& s = service_[group.slot];
    const double latency = static_cast<double>(std::max<Nanos>(latency_ns, 1));
    if (s.latency == 0) {
      s = {cost_ns, latency};
    } else {
      s.cost += (cost_ns - s.cost) / kServiceSamples;
      s.latency += (latency - s.latency) / kServiceSamples;
    }
  }
  // What one place of `group` serves per ns; 0 before its first completion.
  double service_of(const Group& group) const noexcept {
    if (group.slot >= service_.size() || service_[group.slot].latency == 0) return 0;
    return service_[group.slot].cost / service_[group.slot].latency;
  }
  // Do `a` (its requests' size `a_bits` wide) and `b` send requests of unlike
  // size? By the mean cost of their requests once both completed some (a
  // group that sends seven 4 KiB reads to each 1 MiB write is unlike a
  // 1 MiB writer, whatever its last request), else by the last sizes.
  static constexpr double kUnlikeCost = 2;
  bool unlike_sizes(const Group& a, int a_bits, const Group& b) const noexcept {
    if (b.slot >= size_bits_.size()) return false;
    const double ca = a.slot < service_.size() ? service_[a.slot].cost : 0;
    const double cb = b.slot < service_.size() ? service_[b.slot].cost : 0;
    if (ca > 0 && cb > 0) return std::max(ca, cb) > kUnlikeCost * std::min(ca, cb);
    return std::abs(size_bits_[b.slot] - a_bits) > 1;
  }
  // The other busy deep groups (and with `claims` the lingering ones, by
  // their claims) whose requests are of a size unlike `group`'s
  // (unlike_sizes): their places, their weight (as summed_weight), and what
  // those places serve in `group`'s places (the places themselves where
  // either has no completion yet). Walked only up to kPlacesGroups groups,
  // as the places are.
  struct Unlike {
    double places = 0;
    double weight = 0;
    double served = 0;
  };
  Unlike unlike(const Group& group, bool claims) const noexcept {
    Unlike u;
    if (!few_groups() || group.slot >= size_bits_.size()) return u;
    const int size = size_bits_[group.slot];
    const double mine = service_of(group);
    auto add = [&](const Group& other, double places) {
      if (&other == &group || !unlike_sizes(group, size, other)) return;
      const double theirs = service_of(other);
      u.places += places;
      u.weight += summed_weight(other);
      u.served += mine == 0 || theirs == 0 ? places : places * theirs / mine;
    };
    for (const Group* other : busy_deep_) add(*other, other->in_flight);
    if (claims) {
      for (std::uint32_t slot = linger_head_; slot != kNoSlot; slot = at(slot).linger_next) add(at(slot), claim_of(at(slot)));
    }
    return u;
  }

  // ---- a group held at its depth ----
  // A count averaged over time (an exponential mean over about kAverageTau).
  struct Average {
    Nanos at = 0;  // when `count` last changed
    double value = 0;
    std::uint32_t count = 0;
    void set(std::uint32_t to, Nanos now) noexcept {
      const Nanos dt = std::min(now - at, 16 * kAverageTau);
      if (dt > 0) value += (count - value) * static_cast<double>(dt) / static_cast<double>(dt + kAverageTau);
      at = now;
      count = to;
    }
  };
  // Events decayed over about kAverageTau: a rate times kAverageTau.
  struct Decayed {
    Nanos at = 0;
    double value = 0;
    double now(Nanos t) const noexcept {
      return value * static_cast<double>(kAverageTau) / static_cast<double>(kAverageTau + std::max<Nanos>(t - at, 0));
    }
    void add(Nanos t) noexcept {
      value = now(t) + 1;
      at = t;
    }
  };
  // By slot. A client that keeps D requests outstanding and sends them in
  // bursts comes back to D again and again; one that sends at a rate of
  // its own (open loop) reaches its most now and then only.
  struct DepthTrack {
    Average outstanding;  // in flight and queued
    Decayed served;       // requests completed
    Nanos bucket_start = 0;
    std::uint32_t most = 0;         // this bucket: the most outstanding
    std::uint32_t reached = 0;      // arrivals that brought it to that most
    std::uint32_t last_most = 0;    // the last whole bucket's
    std::uint32_t last_reached = 0;
    std::uint32_t most_before = 0;  // the one before it
  };
  static constexpr Nanos kAverageTau = 20'000'000;
  static constexpr Nanos kBucket = 50'000'000;
  static constexpr std::uint32_t kAtDepth = 16;  // arrivals reaching the same most in a bucket
  std::vector<DepthTrack> depth_;
  DepthTrack& track_of(const Group& group) {
    if (group.slot >= depth_.size()) depth_.resize(std::size_t{group.slot} + 1);
    return depth_[group.slot];
  }
  const DepthTrack* tracked(const Group& group) const noexcept {
    return group.slot < depth_.size() ? &depth_[group.slot] : nullptr;
  }
  // Held at its depth and away from it a good part of the time: the same
  // most in the last two whole buckets, deep, reached at least kAtDepth
  // times in the last, and on average below 3/4 of it (a client whose
  // requests are nearly all here holds at each moment about what it holds
  // on average: the count of the moment serves).
  static bool at_depth(const DepthTrack& t) noexcept {
    return t.last_reached >= kAtDepth && t.last_most == t.most_before &&
           deep(static_cast<std::uint8_t>(std::min(t.last_most, 255u))) && t.outstanding.value * 4 < t.last_most * 3.0;
  }
  // A request of `group`, deep, arrived (its counts already raised). A
  // shallow group is not tracked: its few requests bound nobody.
  void arrived(const Group& group, Nanos now) noexcept {
    DepthTrack& t = track_of(group);
    if (now - t.bucket_start >= kBucket) {
      const bool skipped = now - t.bucket_start >= 2 * kBucket;
      t.most_before = skipped ? 0 : t.last_most;
      t.last_most = skipped ? 0 : t.most;
      t.last_reached = skipped ? 0 : t.reached;
      t.most = t.outstanding.count;
      t.reached = 0;
      t.bucket_start = now;
    }
    const std::uint32_t count = group.in_flight + group.queue_length;
    t.outstanding.set(count, now);
    t.most = std::max(t.most, count);
    if (count == t.most && count >= t.last_most) ++t.reached;
  }
  std::vector<Group*> places_held_;
  std::vector<Group*> behind_held_;
  bool listed(const Group& group) const noexcept {
    return group.slot < busy_deep_index_.size() && busy_deep_index_[group.slot] != kNoSlot;
  }
  void unlist(const Group& group) noexcept {
    if (!listed(group)) return;
    const std::uint32_t at = busy_deep_index_[group.slot];
    busy_deep_[at] = busy_deep_.back();
    busy_deep_index_[busy_deep_[at]->slot] = at;
    busy_deep_.pop_back();
    busy_deep_index_[group.slot] = kNoSlot;
  }
  std::uint32_t busy_deep_groups_ = 0;     // groups with requests in flight that are deep
  std::uint64_t busy_deep_weight_ = 0;     // their own weights
  bool tenants_ = false;                   // the device group has tenants (busy_deep_weight())
  std::uint64_t busy_deep_in_flight_ = 0;  // their requests in flight
  std::uint32_t linger_groups_ = 0;        // lingering deep groups (start_lingering)
  std::uint64_t linger_weight_ = 0;        // their weights
  std::uint64_t linger_claim_ = 0;         // the places they claim
};

}  // namespace ioband::qos::detail
