// Anticipation: a heavier group with few requests keeps the storage's queue
// short for itself.
//
// Why. A client with one request outstanding (a database's log, a guest's
// synchronous reads) sends its next request only after the last one
// returned. The scheduler holds nothing of it most of the time, so its
// weight has nothing to act on: every free slot of the window goes to a deep
// client, and the shallow client's next request waits in the storage behind
// the deep one's (the seed's second experiment: 2 % instead of 80 %; through
// ioband with io_limit 128 its latency went from 146 us to 1090 us). What it
// needs is not an earlier turn but a short queue in the storage, including
// while it is between two requests.
//
// Rule. When a request of a group G of a weight-based policy (fair, weight,
// weight-iosize) arrives or completes, and G never had more than kLowDepth
// requests outstanding since it was last empty (a shallow client, not a deep one nor
// the end of a deep burst), G becomes the anticipated group (unless one of
// larger weight is). While G is anticipated, a deep group C (more than
// kLowDepth outstanding since it was last empty) with weight(C) < weight(G)
// is served in bursts (weights are effective weights, tree.h's e(g): a
// group's share of the storage wherever it sits in the tree): once C has
// been held, each of G's completions earns its cost as credit, and each
// dispatch of C costs its own cost times weight(G) / weight(C) -- costs in
// the policy's unit: device time under fair, dm-ioband's tokens under weight
// and weight-iosize -- so C gets its weight's share of the storage while G is
// active (counted in requests, a 4 KiB reader at weight 10 beside a 1 MiB one
// at 90 got 2.4 % of the device time in the simulator, 6.3 % now). Once the
// credit pays for kBurst of C's requests (at their mean cost), C dispatches
// kBurst of them at once (past the learned window, up to io_limit). Bursts
// take at most 1/kBurstSpacing of the time: the next one starts no earlier
// than 19 times the last one's length (first dispatch to last completion)
// after it ended. Between bursts C waits:
//   - for G's next request, up to a deadline of  clamp(8 x think, 10 ms,
//     50 ms)  after G went empty, think being G's own measured time from a
//     completion to its next request (moving average, 1/8). Generous on
//     purpose: on a busy machine a client's round trip through the socket
//     has a long tail (a client thread waits out other threads' time
//     slices: milliseconds on 2 CPUs), and a deadline missed lets the deep
//     client fill the storage's queue, which the shallow one's next request
//     must then wait out;
//   - or, while G's requests are queued or in flight, for their completion.
// G stops being anticipated when it misses the deadline (it has gone idle:
// the others get the whole window back at once) or when it has more than
// kLowDepth requests outstanding (it is a deep client: the policy's order
// serves it). Groups of equal or larger weight are never held, so equal
// weights behave exactly as without anticipation, and a group that is
// anticipated can only hold back lighter ones.
//
// Lighter shallow groups. Where every client is shallow (the seed's first
// experiment: two guests with one request each, 49/51 at 80/20), nothing
// is ever queued here and the order has nothing to act on: the storage's
// own queue splits it by depth (four 2-deep writers at 40/30/20/10 split
// 25 % each on the disk). A lighter shallow group C has no bursts (it has
// few requests to send) but the same part as a deep one: its dispatches, in
// cost over weight, keep up with G's completions, in cost over weight (it
// may be behind by kShallowSlack of its requests, no more), plus the
// allowance. G's baseline latency is made first, with C held (G may never
// be alone otherwise), for kSlowBaseline at most, and renewed the same way;
// the same G taken again keeps what was learned of it. Not while G has
// requests queued here (the order serves those), nor behind a backlog of
// two io_limits (admission.h: the order decides among thousands of queued
// shallow groups).
//
// Why bursts and not a trickle. Storage shares its time between the
// requests in service: on this VM's disk one other request in flight adds
// ~40 us to a 90 us read. A trickle of one deep request in flight for one
// in four of G's completions (the first version) overlapped nearly all of
// G's requests (a deep request takes several of G's round trips) and cost G
// 25-30 % of its throughput. A burst of kBurst requests is served at the
// storage's full parallelism; G's requests in that time wait behind it once
// (about kBurst / the storage's rate, ~1 ms), and then have the storage to
// themselves for the next kBurst x price of G's round trips. The loss tends
// to G's rate / (price x the storage's rate): a few percent -- unless G
// keeps the storage busy by itself (QD4 here: 25 k IOPS, a burst every
// 10 ms, 10 % of the time, and G lost 25 %). Hence the spacing: a G that
// dense leaves C less than its weight's share, but never nothing.
//
// Allowance. Beyond the bursts, the lighter groups may keep a number
// of requests in flight beside G at all times, as many as cost G nothing:
// learned from G's own latency, alone against with company (learn()), as a
// part of G's cycle -- its latency and its own time between requests, so
// that a client that thinks 5 ms between reads is not protected at the
// others' expense as one that sends its next read at once (a 128-deep
// client beside such a one kept 3.5 % of its solo rate in the simulator). On
// storage that serves requests side by side up to a knee, the others fill
// the knee and G keeps its rate (the simulator's knee: a 1-deep client at
// weight 80 keeps 99 % and the total goes from 0.05 to 0.95 of capacity);
// on storage where every request in service slows the others (this VM's
// disk: two background requests cost a 1-deep reader a third of its rate)
// the allowance stays at 0.
//
// Cost. Where the allowance is 0, the lighter groups get at most their
// weight's share of the requests while G is active: the storage's rate
// falls to what G and that share use. That is the price of the weight: G
// was given more than the others, and a shallow client can only use it as
// latency. O(1) per request; one group tracked.
//
// Pure: time comes in as arguments.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "qos/group.h"
#include "qos/token_bucket.h"

namespace ioband::qos::detail {

class Anticipation {
 public:
  static constexpr std::uint32_t kLowDepth = 4;
  static constexpr std::uint32_t kBurst = 64;
  static constexpr std::int64_t kBurstSpacing = 20;  // a burst, then 19 times as long without
  static constexpr Nanos kRecheck = 2'000'000;  // a held group asks again after 2 ms at the latest
  static constexpr Nanos kMinWait = 10'000'000;  // 10 ms
  static constexpr Nanos kMaxWait = 50'000'000;  // 50 ms

  // `request` of `group`, a shallow group (never more than kLowDepth
  // outstanding since it was last empty), completed with `others` requests
  // of other groups in flight. `cost()`: its cost, the policy's (asked only
  // when it counts: costs are not free on the hot path).
  template <typename CostOf>
  [[gnu::always_inline]] void completed(Group& group, const Request& request, std::uint32_t others, CostOf&& cost,
                                        Nanos now) noexcept {
    if (!take(group, now)) return;
    // Credit only once a lighter group was held (before, nobody needs it).
    if (holding_) {
      const double c = std::max(cost(), 1.0);
      credit_ += c;
      served_ += c / weight_of(group);
    }
    learn(now - request.scheduler.time, request.scheduler.company == 0 && others == 0, now);
    if (group.in_flight + group.queue_length == 0) {
      emptied_at_ = now;
      idle_ = true;
      // Its next gap, alone or in company (others in flight now), outside bursts.
      gap_kind_ = burst_in_flight_ > 0 ? Gap::none : others > 0 ? Gap::shared : Gap::alone;
    }
  }

  // `group`, a shallow group, had nothing outstanding and queued a request.
  void arrived(Group& group, Nanos now) noexcept {
    if (group_ == &group && idle_) {
      const Nanos gap = now - emptied_at_;
      think_ += (gap - think_) / 8;
      // Its own pace, for the allowance: a pause far beyond it (the client
      // stopped a while) counts as 4 times the pace at most. Alone, a
      // moving average; in company, the epoch's (learn()): the others'
      // requests cost G time outside the storage too (iobandd's and the
      // clients' CPU: with 1 ms of think time on this VM, 80 us of the
      // cycle).
      const double x = pace_n_ == 0 ? static_cast<double>(gap) : std::min<double>(gap, 4 * pace_ns_);
      if (gap_kind_ == Gap::alone) {
        pace_ns_ = pace_n_ == 0 ? x : pace_ns_ + (x - pace_ns_) / 8;
        pace_n_ += pace_n_ < kPaceSamples ? 1 : 0;
      } else if (gap_kind_ == Gap::shared && pace_n_ > 0) {
        shared_pace_ += x;
        shared_pace_sq_ += x * x;
        ++shared_pace_n_;
      }
      gap_kind_ = Gap::none;
    }
    if (take(group, now)) idle_ = false;
  }

  // May the next request of `candidate` (`cost()`: its cost) be dispatched
  // now? 0: yes; otherwise the time to ask again (Nanos max: after the
  // anticipated group's next completion, when the device group releases
  // what it held; it asks again after kRecheck at the latest). `backlog`:
  // the device group has requests queued for two windows or more, and the
  // order decides among them (no shallow group is held).
  template <typename CostOf>
  [[gnu::always_inline]] Nanos holds(const Group& candidate, std::uint32_t in_flight, bool backlog, CostOf&& cost,
                                     Nanos now) noexcept {
    const bool shallow = !deep(candidate);
    if ((shallow && backlog) || !applies_to(candidate)) return 0;
    if (!active(now)) {
      group_ = nullptr;
      return 0;
    }
    if (now < paced_until_) return 0;
    if (shallow) return shallow_holds(candidate, in_flight, cost, now);
    holding_ = true;
    if (burst_left_ > 0) return 0;
    if (allows(in_flight)) return 0;
    // No hoarding: a group that stayed away does not come back with a flood.
    // kBurst of its requests as they come on average (a mix of reads and
    // writes would otherwise be held to the credit of its cheapest kind).
    if (typical_cost_ == 0) typical_cost_ = std::max(cost(), 1.0);
    const double burst = kBurst * price(candidate) * typical_cost_;
    credit_ = std::min(credit_, burst);
    if (credit_ >= burst && now >= next_burst_) {
      burst_left_ = kBurst;
      burst_start_ = now;
      return 0;
    }
    const Nanos until = credit_ >= burst ? next_burst_ : std::numeric_limits<Nanos>::max();
    return idle_ ? std::min(until, deadline()) : until;
  }

  // `request` of `candidate` (`cost()`: its cost), allowed by holds(), is
  // dispatched with `in_flight` requests in flight before it.
  template <typename CostOf>
  [[gnu::always_inline]] void dispatching(const Group& candidate, Request& request, std::uint32_t in_flight,
                                          CostOf&& cost) noexcept {
    if (&candidate == group_) {
      request.scheduler.company = static_cast<std::uint8_t>(std::min<std::uint32_t>(in_flight - group_->in_flight, 255));
    }
    if (!deep(candidate)) {
      // Up to G's part at most: what the allowance let go is not a debt.
      if (std::exchange(shallow_counted_, false)) {
        Shallow& state = shallow_of(candidate);
        state.served = std::min(state.served + std::max(cost(), 1.0) / weight_of(candidate), served_);
      }
      return;
    }
    if (!applies_to(candidate)) return;
    const double c = std::max(cost(), 1.0);
    credit_ = std::max(credit_ - price(candidate) * c, 0.0);
    typical_cost_ += (c - typical_cost_) / 8;
    if (burst_left_ > 0) {
      --burst_left_;
      ++burst_in_flight_;
    }
  }

  // A request of `group`, a deep group, completed. The last one of a burst
  // sets the earliest start of the next: bursts take at most
  // 1 / kBurstSpacing of the time, whatever the credit says.
  void deep_completed(const Group& group, Nanos now) noexcept {
    if (burst_in_flight_ == 0 || !applies_to(group) || !deep(group)) return;
    if (--burst_in_flight_ == 0 && burst_left_ == 0) next_burst_ = now + (now - burst_start_) * (kBurstSpacing - 1);
  }

  // Holding lighter groups back now: the rate the storage delivers
  // says nothing about the in-flight window (io_limit auto learns nothing).
  bool engaged(Nanos now) const noexcept { return group_ != nullptr && holding_ && active(now); }

  // The in-flight window is not for the anticipated group's requests (a few
  // at most) nor for a burst (kBurst at most): both go up to io_limit. A
  // window learned while the others were held back would trickle the burst
  // out, which is what bursts are there to avoid.
  bool exempt_from_window(Nanos now) const noexcept {
    return engaged(now) && (burst_left_ > 0 || group_->queue_length > 0);
  }

  // A limit (its own or its device's) held back a request of `group`. While
  // a limit paces the anticipated group, the limit's tokens, not the
  // storage's queue, decide how fast it goes: the policy's order over those
  // tokens gives it its share, and holding the others back would only
  // starve them (a 2-deep group at weight 80 left a 16-deep one at weight 20
  // 4 % of a 3000 IOPS device limit instead of 20 %). Off for kMinWait after
  // the last time the limit held it.
  void paced_by_limit(const Group& group, Nanos now) noexcept {
    if (&group == group_) paced_until_ = now + kMinWait;
  }

  // `group` is about to be destroyed.
  void forget(const Group* group) noexcept {
    if (group_ == group) group_ = nullptr;
    if (last_ == group) last_ = nullptr;
    if (group->slot < shallow_.size()) shallow_[group->slot].era = 0;  // its slot may serve another
  }

  const Group* group() const noexcept { return group_; }

  // With `in_flight` in flight, the allowance has room for another request
  // of a lighter group.
  bool allows(std::uint32_t in_flight) const noexcept {
    return group_ != nullptr && !quiet_ && in_flight - group_->in_flight < static_cast<std::uint32_t>(allowance_);
  }

 private:
  bool applies_to(const Group& candidate) const noexcept {
    return group_ != nullptr && group_ != &candidate && weight_of(candidate) < weight_of(*group_);
  }
  // Deep now, or a moment ago (lingering, admission.h: a deep client whose
  // requests all came back, off the CPU, sends a few again first).
  static bool deep(const Group& group) noexcept { return group.busy_peak > kLowDepth || group.linger != 0; }

  // A lighter shallow group C: no bursts (it has few requests to send), but
  // the same part of the storage as a deep one. Its dispatches, in cost
  // over weight, keep up with G's completions, in cost over weight
  // (served_): C's cost is w(C) / w(G) of G's. It may be behind by
  // kShallowSlack of its requests at most (no hoarding). Beyond that it
  // waits for G's next completion, or for the deadline while G is away.
  template <typename CostOf>
  Nanos shallow_holds(const Group& candidate, std::uint32_t in_flight, CostOf&& cost, Nanos now) noexcept {
    // G's requests queued here: the policy's order serves them (a full
    // window; thousands of shallow groups), holding C would not.
    if (group_->queue_length > 0) return 0;
    holding_ = true;
    // (Let go, it is counted by dispatching(), which comes next.)
    if (allows(in_flight)) return shallow_counted_ = true, 0;
    // G alone first, for the allowance's baseline (with lighter groups
    // paid by its completions it may never be alone otherwise): until the
    // baseline is ready, kSlowBaseline at most; and while it is renewed
    // (quiet_, kQuiet samples).
    if (quiet_ || (!baseline_ready(now) && now - taken_at_ < kSlowBaseline)) return idle_ ? deadline() : kForever;
    Shallow& state = shallow_of(candidate);
    const double price = std::max(cost(), 1.0) / weight_of(candidate);
    double& v = state.served;
    v = std::max(v, served_ - kShallowSlack * price);
    if (v + price <= served_) return shallow_counted_ = true, 0;
    return idle_ ? deadline() : kForever;
  }
  static constexpr Nanos kForever = std::numeric_limits<Nanos>::max();
  struct Shallow {
    double served = 0;
    std::uint32_t era = 0;
  };
  // A shallow lighter group's dispatches in cost over weight since G was
  // taken (by slot; the first time, and under another G, far behind).
  Shallow& shallow_of(const Group& candidate) {
    if (candidate.slot >= shallow_.size()) shallow_.resize(std::size_t{candidate.slot} + 1);
    Shallow& s = shallow_[candidate.slot];
    if (s.era != era_) s = {-std::numeric_limits<double>::infinity(), era_};
    return s;
  }
  // A unit of C's cost, in units of G's credit: weight(G) / weight(C).
  double price(const Group& candidate) const noexcept { return weight_of(*group_) / weight_of(candidate); }
  // Makes `group` the anticipated one unless a heavier (or as heavy) one
  // still is. Whether it is now.
  [[gnu::always_inline]] bool take(Group& group, Nanos now) noexcept {
    if (group_ == &group) return true;
    if (group_ != nullptr && active(now) && weight_of(*group_) >= weight_of(group)) return false;
    become(group, now);
    return true;
  }
  // `group` is the anticipated one from now on: the credit, the bursts and
  // the lighter groups' parts start again; what was learned of G starts
  // again too, unless G is the group taken last (it went away and came
  // back): it keeps its baseline, pace and allowance (the baseline is
  // renewed every kRefresh epochs anyway). Lighter shallow groups are held
  // while a baseline is made, and a client that comes and goes would hold
  // them each time.
  [[gnu::noinline]] void become(Group& group, Nanos now) noexcept {
    const bool again = &group == last_;
    group_ = &group;
    last_ = &group;
    think_ = kMinWait / 4;
    served_ = 0;
    ++era_;
    credit_ = 0;
    typical_cost_ = 0;
    burst_left_ = burst_in_flight_ = 0;
    next_burst_ = 0;
    paced_until_ = 0;
    holding_ = false;
    start_epoch();
    gap_kind_ = Gap::none;
    trial_ = quiet_ = false;
    if (again) return;
    pace_ns_ = 0;
    pace_n_ = 0;
    taken_at_ = now;
    allowance_ = 0;
    ceiling_ = kNoCeiling;
    below_ceiling_ = 0;
    alone_ns_ = 0;
    alone_n_ = 0;
    alone_var_ = 0;
    since_trial_ = 0;
    trial_gap_ = kMinTrialGap;
    slow_start_ = true;
  }

  // The allowance: how many requests of the lighter groups may be in
  // flight beside G at no cost to it. Each of G's completions is a sample
  // of its latency, alone (nothing else in flight from its dispatch to its
  // completion) or shared. Every kEpoch shared samples (outside bursts) the
  // mean is compared with the alone one (kBaseline samples): within
  // kTolerance even with the comparison's noise, one more request is
  // allowed (twice as many until the first epoch that costs G); when the
  // noise leaves it open, more samples are taken, up to kMaxEpoch; beyond, a quarter fewer (after
  // kEarly samples already when it is far beyond), and the level that
  // failed becomes a ceiling that growth reaches again only after
  // kCeilingWait good epochs below it. At 0, one request is tried again
  // after trial_gap_ alone samples, a gap that doubles with each failed
  // trial: storage where any company costs G stays at 0 almost always.
  // Every kRefresh epochs with an allowance, the lighter groups are held
  // until kQuiet alone samples renew the baseline.
  void learn(Nanos latency, bool alone, Nanos now) noexcept {
    const double x = static_cast<double>(latency);
    if (alone) {
      const double weight = 1.0 / (alone_n_ < kBaseline ? alone_n_ + 1 : kBaseline);
      const double d = x - alone_ns_;
      alone_ns_ += d * weight;
      alone_var_ = (1 - weight) * (alone_var_ + weight * d * d);
      ++alone_n_;
      if (quiet_ && ++quiet_n_ >= kQuiet) quiet_ = false;
      if (allowance_ < 1 && baseline_ready(now) && ++since_trial_ >= trial_gap_) {
        allowance_ = 1;
        trial_ = true;
        since_trial_ = 0;
      }
      return;
    }
    if (!baseline_ready(now) || burst_in_flight_ > 0 || quiet_) return;
    shared_ns_ += x;
    shared_sq_ += x * x;
    ++shared_n_;
    const double n = shared_n_;
    const double mean = shared_ns_ / n;
    // What company costs G is a part of its rate: its cycle is its latency
    // and its own time between requests, its pace (once measured a few
    // times; a client that never goes empty shows none). A client that
    // thinks 5 ms between reads of 100 us loses 3 % of its rate to 150 us
    // more latency, where the latency alone would say 150 %.
    const double pace = pace_n_ >= kPaceSamples ? pace_ns_ : 0;
    const bool paced = pace > 0 && shared_pace_n_ >= kPaceSamples;
    const double pace_shared = paced ? shared_pace_ / shared_pace_n_ : pace;
    const double cycle = alone_ns_ + pace;
    const double ratio = (mean + pace_shared) / cycle;
    const bool early = shared_n_ >= kEarly && ratio > 1 + kEarlyFactor * kTolerance;
    if (!early && shared_n_ % kEpoch != 0) return;
    // The comparison's own noise (kSigmas standard errors of the ratio):
    // company is free only when the ratio is within kTolerance even at the
    // top of its noise; it costs when it is beyond even at the bottom, or
    // when kMaxEpoch samples still cannot tell (G comes first).
    const double shared_var = std::max(0.0, shared_sq_ / n - mean * mean);
    const double pace_var =
        paced ? std::max(0.0, shared_pace_sq_ / shared_pace_n_ - pace_shared * pace_shared) / shared_pace_n_ : 0;
    const double noise =
        kSigmas * std::sqrt(shared_var / n + pace_var + alone_var_ / std::min<double>(alone_n_, kBaseline)) / cycle;
    const bool free = !early && ratio + noise <= 1 + kTolerance;
    if (!free && !early && ratio - noise <= 1 + kTolerance && shared_n_ < kMaxEpoch) return;
    if (free) {
      if (allowance_ + 1 < ceiling_ || ++below_ceiling_ >= kCeilingWait) {
        // (From 0 too: a lighter shallow group's company, paid by G's
        // completions, is measured without a trial.)
        allowance_ = slow_start_ ? std::min(std::max(allowance_ * 2, 1.0), ceiling_ - 1) : allowance_ + 1;
        below_ceiling_ = 0;
        if (allowance_ >= ceiling_) ceiling_ = kNoCeiling;
      }
      trial_gap_ = kMinTrialGap;
    } else {
      ceiling_ = std::floor(allowance_);
      below_ceiling_ = 0;
      slow_start_ = false;
      allowance_ = std::floor(allowance_ * 3 / 4);
      if (trial_) trial_gap_ = std::min(trial_gap_ * 2, kMaxTrialGap);
    }
    trial_ = false;
    start_epoch();
    if (++epochs_ % kRefresh == 0 && allowance_ >= 1) {
      quiet_ = true;
      quiet_n_ = 0;
    }
  }

  // The samples in company of an epoch, from none.
  void start_epoch() noexcept {
    shared_ns_ = shared_sq_ = 0;
    shared_n_ = 0;
    shared_pace_ = shared_pace_sq_ = 0;
    shared_pace_n_ = 0;
  }

  // The baseline can be judged against: kBaseline alone samples, or
  // kFirstBaseline once G has been anticipated for kSlowBaseline (a client
  // that thinks 5 ms between requests needs 2.6 s for kBaseline, and
  // meanwhile the others are held; its latency is a small part of its
  // cycle, so fewer samples tell as much).
  bool baseline_ready(Nanos now) const noexcept {
    return alone_n_ >= kBaseline || (alone_n_ >= kFirstBaseline && now - taken_at_ >= kSlowBaseline);
  }

  bool active(Nanos now) const noexcept {
    const std::uint32_t outstanding = group_->in_flight + group_->queue_length;
    if (outstanding > kLowDepth) return false;
    return outstanding > 0 || now < deadline();
  }
  Nanos deadline() const noexcept { return emptied_at_ + std::clamp(8 * think_, kMinWait, kMaxWait); }

  Group* group_ = nullptr;
  const Group* last_ = nullptr;  // the group last taken (become())
  Nanos emptied_at_ = 0;
  Nanos think_ = kMinWait / 4;
  double credit_ = 0;  // cost of G's completions not yet matched by the lighter groups' dispatches
  double typical_cost_ = 0;  // of the lighter groups' requests dispatched (a moving average, 1/8; 0: none yet)
  std::uint32_t burst_left_ = 0;  // dispatches left in the current burst
  std::uint32_t burst_in_flight_ = 0;  // its requests not yet completed
  Nanos burst_start_ = 0;
  Nanos next_burst_ = 0;  // no burst before
  Nanos paced_until_ = 0;  // a limit paces the anticipated group: nobody is held before then
  bool holding_ = false;          // a lighter group asked since G was taken
  // Lighter shallow groups (shallow_holds()).
  static constexpr double kShallowSlack = 2;
  double served_ = 0;  // G's completions since a lighter group was held, in cost over weight
  bool shallow_counted_ = false;  // shallow_holds() let the candidate go: dispatching() counts it
  std::uint32_t era_ = 0;  // of G: one per become()
  std::vector<Shallow> shallow_;
  // G's own time from going empty to its next request (arrived()), for the
  // allowance: a moving average (1/8) from the first sample.
  static constexpr std::uint32_t kPaceSamples = 8;
  double pace_ns_ = 0;
  std::uint32_t pace_n_ = 0;
  enum class Gap : std::uint8_t { none, alone, shared };
  Gap gap_kind_ = Gap::none;  // of G's gap now under way
  double shared_pace_ = 0;    // this epoch's gaps in company: sum, sum of squares, count
  double shared_pace_sq_ = 0;
  std::uint32_t shared_pace_n_ = 0;
  Nanos taken_at_ = 0;
  bool idle_ = false;
  // The allowance (learn()).
  static constexpr std::uint32_t kEpoch = 64;
  static constexpr std::uint32_t kMaxEpoch = 8 * kEpoch;
  static constexpr std::uint32_t kEarly = 16;
  static constexpr double kTolerance = 0.03;
  static constexpr double kEarlyFactor = 5;
  static constexpr double kSigmas = 2;
  static constexpr std::uint32_t kCeilingWait = 8;
  static constexpr double kNoCeiling = 1e9;
  static constexpr std::uint32_t kBaseline = 512;  // alone samples the baseline averages
  static constexpr Nanos kSlowBaseline = 200'000'000;  // 200 ms
  static constexpr std::uint32_t kFirstBaseline = 64;  // for a slow G (baseline_ready())
  static constexpr std::uint32_t kMinTrialGap = 32;
  static constexpr std::uint32_t kMaxTrialGap = 4096;
  static constexpr std::uint32_t kRefresh = 16;
  static constexpr std::uint32_t kQuiet = 8;
  double allowance_ = 0;
  double ceiling_ = kNoCeiling;
  std::uint32_t below_ceiling_ = 0;
  double alone_ns_ = 0;
  std::uint32_t alone_n_ = 0;
  double alone_var_ = 0;
  double shared_ns_ = 0;
  double shared_sq_ = 0;
  std::uint32_t shared_n_ = 0;
  std::uint32_t since_trial_ = 0;
  std::uint32_t trial_gap_ = kMinTrialGap;
  std::uint32_t epochs_ = 0;
  std::uint32_t quiet_n_ = 0;
  bool trial_ = false;
  bool quiet_ = false;
  bool slow_start_ = true;  // until the first epoch that costs G: doubling
};

}  // namespace ioband::qos::detail
