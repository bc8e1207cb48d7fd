// A deterministic discrete-event simulator that drives the real scheduler
// (qos::DeviceGroup) in virtual time: no threads, no sleeps, no clock.
//
//   clients ──enqueue──▶ DeviceGroup ──next()──▶ storage model ──completion──┐
//      ▲                     ▲  (timer at `until` when next() says wait)     │
//      └─────────────────────┴───────────────────────complete()──────────────┘
//
// Storage, two models (StorageModel::shared chooses):
//
// Slots (the default): `depth` requests are served in parallel; a request
// occupies one slot for  latency ± jitter + bytes * depth / bandwidth
// (+ per_in_service for each request already in service); requests
// dispatched while every slot is busy wait in the storage's own FIFO (as a
// device queue does). The storage's capacity is therefore depth / service
// time requests per second and `bandwidth` bytes per second.
//
// Shared (the disk presets vm_disk_knee() and vm_disk_elastic()): a
// request r is an amount of work w(r), its device time -- what it costs the
// storage at full speed, linear in its size as blk-iocost's model (by
// direction, sequential or random: StorageCosts). Every request in service
// progresses at once (processor sharing); the storage works at a fraction
// of its full speed that rises with the work in service, counted in units
// (a request is max(1, bytes / unit_bytes) units, U in all):
//   knee N > 0:  efficiency(U) = (m / N) (1 + c) / (1 + c m / N),  m = min(U, N)
//                c = 0: the rate rises in proportion to U and a request's
//                latency stays w(r) N up to the knee; c > 0: it rises
//                faster first and the latency grows below the knee too.
//                Efficiency 1 from N on: the rate is flat and the latency
//                grows with U, as a queue's.
//   no knee:     efficiency(U) = U / (U + K): it keeps rising, ever more slowly.
// Each unit in service progresses efficiency(U) / U * speed(t) ns of work
// per ns; speed(t) is 1 but inside scripted slow-downs (load from outside).
// The device time of a client's completed requests (ClientResult::
// device_time) is the measure of its share of the storage.
//
// Clients: closed-loop (keep `depth` requests outstanding, re-issue on
// completion after `think`) or open-loop (issue at `rate` per second,
// periodically or as a Poisson process), between `start` and `stop`; a
// fraction of their requests is marked sequential. Scenarios are data
// (struct Scenario); scripted changes at given times are `Action`s. The
// device group's settings a scenario leaves unset keep the DeviceGroup's
// defaults; `plain` runs the clients with no scheduler at all (plain
// exports). Everything random comes from one seeded generator.
#pragma once

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <memory>
#include <queue>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "qos/device_group.h"

namespace ioband::sim {

using qos::DeviceId;
using qos::GroupId;
using Nanos = std::int64_t;

constexpr Nanos kMicro = 1'000;
constexpr Nanos kMilli = 1'000'000;
constexpr Nanos kSecond = 1'000'000'000;
constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

constexpr std::uint32_t KiB = 1024;
constexpr std::uint32_t MiB = 1024 * 1024;

// Virtual time origin: far from the clock's epoch so nothing special happens at 0.
inline qos::TimePoint at(Nanos t) {
  return qos::TimePoint(std::chrono::duration_cast<qos::Duration>(std::chrono::nanoseconds(t + 1000 * kSecond)));
}
inline Nanos from(qos::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count() - 1000 * kSecond;
}

// xorshift64*: small, fast, deterministic.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed * 2685821657736338717ull + 1) {}
  std::uint64_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 2685821657736338717ull;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  Nanos exponential(Nanos mean) { return static_cast<Nanos>(-std::log(1.0 - uniform()) * static_cast<double>(mean)); }

 private:
  std::uint64_t state_;
};

// What a request costs the storage at full speed (shared storage), in
// device time: the linear model of qos/device_model.h (per direction, the
// bandwidth of large transfers and the rate of 4 KiB requests, sequential
// and random), with this simulator's own figures. It is the storage's truth;
// the scheduler's device model may differ from it, as a real device's does.
struct StorageCosts : qos::DeviceModel {
  StorageCosts() : qos::DeviceModel{1e9, 100'000, 50'000, 500e6, 60'000, 30'000, 32} {}

  double work_ns(qos::Direction direction, bool sequential, std::uint32_t bytes) const {
    const qos::OpKind op = direction == qos::Direction::read ? qos::OpKind::read : qos::OpKind::write;
    return qos::DeviceCosts::of(*this).cost_ns(op, bytes, sequential);
  }
};

// The storage runs at `speed` (0.5: half speed) in [from, to): load from
// outside. Slots: requests that start service then take 1 / speed as long;
// shared: all work in service progresses at `speed`.
struct SlowDown {
  Nanos from = 0;
  Nanos to = 0;
  double speed = 1;
};

struct StorageModel {
  // ---- Slots ----
  std::uint32_t depth = 32;
  Nanos latency = 10 * kMilli;
  Nanos jitter = 0;        // service time uniform in latency ± jitter
  double bandwidth = 0;    // bytes per second for the whole storage; 0: no transfer time
  // Elastic storage: each request already in service when one starts adds
  // this to its service time, so latency grows with the depth from the first
  // request on and the rate as depth / (latency + depth * per_in_service)
  // keeps rising ever more slowly (a virtual disk on a host page cache).
  Nanos per_in_service = 0;

  // ---- Shared (see the top of this file) ----
  bool shared = false;
  StorageCosts costs;
  std::uint32_t knee = 20;               // N, in units; 0: no knee
  double curvature = 0;                  // c, with a knee
  double ramp = 10;                      // K, without a knee, in units
  std::uint32_t unit_bytes = 128 * KiB;  // a request is max(1, bytes / unit_bytes) units
  double spread = 0;                     // a request's work uniform in w(r) * (1 ± spread)

  // Both models.
  std::vector<SlowDown> slowdowns;

  // Fraction of the storage's full speed at U units in service (shared).
  double efficiency(double units) const {
    if (units <= 0) return 0;
    if (knee == 0) return units / (units + std::max(ramp, 1e-9));
    const double x = std::min(units, static_cast<double>(knee)) / knee;
    return x * (1 + curvature) / (1 + curvature * x);
  }
  std::uint32_t units(std::uint32_t bytes) const { return std::max<std::uint32_t>(1, bytes / unit_bytes); }

  // A request's device time in ns: its work (shared), or its share of the
  // slots at saturation (slots).
  double device_time(qos::Direction direction, bool sequential, std::uint32_t bytes) const {
    if (shared) return costs.work_ns(direction, sequential, bytes);
    double service = static_cast<double>(latency + per_in_service * (depth - 1));
    if (bandwidth > 0) service += static_cast<double>(bytes) * depth / bandwidth * kSecond;
    return service / depth;
  }
};

struct GroupSpec {
  DeviceId device = 0;
  GroupId group = qos::kDefaultGroup;  // kDefaultGroup: the device's default group
  std::uint32_t weight = qos::kDefaultWeight;
  std::optional<qos::Limits> limits;
  std::optional<qos::RangeBw> range;
};

struct ClientSpec {
  std::string name;
  DeviceId device = 0;
  GroupId group = qos::kDefaultGroup;
  enum class Kind { closed, open } kind = Kind::closed;
  std::uint32_t depth = 1;         // closed: requests kept outstanding
  double rate = 0;                 // open: requests per second
  bool poisson = false;            // open: exponential gaps instead of periodic
  std::vector<std::uint32_t> sizes{4 * KiB};  // each request picks one at random
  double read_fraction = 1.0;
  double sequential = 0;           // fraction of requests marked sequential (Request::sequential)
  Nanos think = 0;                 // closed: pause between a completion and the next request
  // closed: the client process is descheduled now and then (a busy CPU):
  // stalls of mean `stall_length` begin at mean gaps of `stall_every`
  // (both exponential, a random stream of the client's own); what completes
  // during a stall is answered when it ends, all at once.
  Nanos stall_every = 0;
  Nanos stall_length = 0;
  Nanos start = 0;
  Nanos stop = kNever;
};

struct Action {
  Nanos at = 0;
  std::function<void(qos::DeviceGroup&)> apply;
};

// Settings left unset keep the DeviceGroup's defaults.
struct Scenario {
  std::string name;
  std::optional<qos::Policy> policy;
  std::optional<std::uint64_t> token;
  std::optional<std::uint32_t> carryover;
  std::optional<std::uint32_t> io_throttle;
  std::optional<std::uint32_t> io_limit;
  std::optional<bool> io_limit_auto;  // io_limit is then the cap of the learned window
  std::optional<qos::CostModel> cost_model;
  // No ioband: every request goes straight to the storage (plain exports;
  // settings, groups, weights, limits and actions are not applied).
  bool plain = false;
  StorageModel storage;
  std::vector<DeviceId> devices{0};
  std::vector<GroupSpec> groups;
  std::vector<std::pair<DeviceId, qos::Limits>> device_limits;  // limits of whole devices
  std::vector<ClientSpec> clients;
  std::vector<Action> actions;
  Nanos duration = 10 * kSecond;
  std::uint64_t seed = 1;
  // The owner's timer fires this much after the time next() asked for (a
  // reactor on a loaded machine wakes late; arrivals and completions are
  // still handled at once). 0: on time.
  Nanos timer_late = 0;
  // > 0: results keep sums per bin of this length instead of every
  // request's times (ClientResult).
  Nanos record_bin = 0;
};

struct ClientResult {
  std::string name;
  // Every request (Scenario::record_bin == 0):
  std::vector<Nanos> dispatched;          // dispatch time of every request
  std::vector<Nanos> completed;           // completion time of every request
  std::vector<std::uint32_t> completed_bytes;
  std::vector<double> completed_device_time;  // running sum of the device time of the completed requests, ns
  std::vector<Nanos> latency;             // of every completed request (issue to completion), as `completed`
  // Or sums per bin of Scenario::record_bin (long runs: less memory, no per-request times):
  Nanos bin = 0;
  std::vector<std::uint64_t> completions_in_bin, bytes_in_bin;
  std::vector<double> device_time_in_bin;
  std::uint64_t issued = 0;
  std::uint64_t delayed = 0;              // requests with a queueing delay > 0
  Nanos max_delay = 0;
  Nanos total_delay = 0;
  std::array<std::uint64_t, 5> by_rule{};  // dispatches by qos::Rule

  // Completions (or bytes, or device time: ns, StorageModel::device_time)
  // in [t0, t1); with bins, t0 and t1 must be whole bins.
  std::uint64_t completions(Nanos t0, Nanos t1) const {
    if (bin > 0) return sum_bins(completions_in_bin, t0, t1);
    return static_cast<std::uint64_t>(std::lower_bound(completed.begin(), completed.end(), t1) -
                                      std::lower_bound(completed.begin(), completed.end(), t0));
  }
  std::uint64_t bytes(Nanos t0, Nanos t1) const {
    if (bin > 0) return sum_bins(bytes_in_bin, t0, t1);
    std::uint64_t sum = 0;
    auto first = std::lower_bound(completed.begin(), completed.end(), t0) - completed.begin();
    auto last = std::lower_bound(completed.begin(), completed.end(), t1) - completed.begin();
    for (auto i = first; i < last; ++i) sum += completed_bytes[static_cast<std::size_t>(i)];
    return sum;
  }
  double device_time(Nanos t0, Nanos t1) const {
    if (bin > 0) return sum_bins(device_time_in_bin, t0, t1);
    auto first = std::lower_bound(completed.begin(), completed.end(), t0) - completed.begin();
    auto last = std::lower_bound(completed.begin(), completed.end(), t1) - completed.begin();
    auto sum_to = [&](std::ptrdiff_t n) {
      return n == 0 ? 0.0 : completed_device_time[static_cast<std::size_t>(n - 1)];
    };
    return sum_to(last) - sum_to(first);
  }
  template <typename T>
  T sum_bins(const std::vector<T>& bins, Nanos t0, Nanos t1) const {
    assert(t0 % bin == 0 && t1 % bin == 0 && "with record_bin, ask for whole bins");
    T sum{};
    for (Nanos b = std::max<Nanos>(t0, 0) / bin; b < t1 / bin && b < static_cast<Nanos>(bins.size()); ++b) {
      sum += bins[static_cast<std::size_t>(b)];
    }
    return sum;
  }
  // The most requests dispatched in any window of length `window`.
  std::uint64_t max_dispatched_in(Nanos window) const {
    std::uint64_t best = 0;
    std::size_t lo = 0;
    for (std::size_t hi = 0; hi < dispatched.size(); ++hi) {
      while (dispatched[hi] - dispatched[lo] >= window) ++lo;
      best = std::max<std::uint64_t>(best, hi - lo + 1);
    }
    return best;
  }
};

struct Result {
  std::vector<ClientResult> clients;
  Nanos duration = 0;
  std::uint32_t storage_depth = 0;
  std::vector<double> busy_per_bin;  // slot-nanoseconds of service in each bin
  Nanos bin = 100 * kMilli;
  std::uint64_t events = 0;

  const ClientResult& client(const std::string& name) const {
    for (const ClientResult& c : clients) {
      if (c.name == name) return c;
    }
    assert(false && "no such client");
    return clients.front();
  }
  // Fraction of the storage's slots busy in [t0, t1) (bin-aligned); shared
  // storage: its mean efficiency (1: full speed).
  double utilization(Nanos t0, Nanos t1) const {
    double busy = 0;
    for (Nanos b = t0 / bin; b < t1 / bin && b < static_cast<Nanos>(busy_per_bin.size()); ++b) {
      busy += busy_per_bin[static_cast<std::size_t>(b)];
    }
    return busy / (static_cast<double>(t1 - t0) * storage_depth);
  }
};

class Simulator {
 public:
  explicit Simulator(const Scenario& scenario) : scenario_(scenario), random_(scenario.seed) {}

  Result run() {
    if (!scenario_.plain) configure();
    result_.duration = scenario_.duration;
    result_.storage_depth = scenario_.storage.shared ? 1 : scenario_.storage.depth;
    result_.busy_per_bin.assign(static_cast<std::size_t>(scenario_.duration / result_.bin + 1), 0.0);
    for (std::size_t i = 0; i < scenario_.clients.size(); ++i) {
      const ClientSpec& spec = scenario_.clients[i];
      result_.clients.push_back({});
      result_.clients.back().name = spec.name;
      if (scenario_.record_bin > 0) {
        const std::size_t bins = static_cast<std::size_t>(scenario_.duration / scenario_.record_bin + 1);
        result_.clients.back().bin = scenario_.record_bin;
        result_.clients.back().completions_in_bin.assign(bins, 0);
        result_.clients.back().bytes_in_bin.assign(bins, 0);
        result_.clients.back().device_time_in_bin.assign(bins, 0.0);
      }
      clients_.push_back({});
      schedule(std::max<Nanos>(spec.start, 0), EventKind::client_start, i);
    }
    if (!scenario_.plain) {
      for (std::size_t i = 0; i < scenario_.actions.size(); ++i) {
        schedule(scenario_.actions[i].at, EventKind::action, i);
      }
    }
    for (const SlowDown& slowdown : scenario_.storage.slowdowns) {
      schedule(std::max<Nanos>(slowdown.from, 0), EventKind::speed, 0);
      schedule(std::max<Nanos>(slowdown.to, 0), EventKind::speed, 0);
    }
    while (!events_.empty()) {
      Event event = events_.top();
      if (event.time > scenario_.duration) break;
      events_.pop();
      advance(event.time);
      ++result_.events;
      handle(event);
      pump();
    }
    advance(scenario_.duration);
    return std::move(result_);
  }

  qos::DeviceGroup& device_group() { return group_; }

 private:
  enum class EventKind : std::uint8_t { client_start, arrival, reissue, completion, timer, action, speed, storage };

  struct Event {
    Nanos time;
    std::uint64_t sequence;  // FIFO among equal times: determinism
    EventKind kind;
    std::size_t index;
    bool operator>(const Event& other) const {
      return time != other.time ? time > other.time : sequence > other.sequence;
    }
  };

  // Standard layout with the Request first: the Request* the scheduler hands
  // back is the SimRequest*.
  struct SimRequest {
    qos::Request request;
    std::size_t self = 0;
    std::size_t client = 0;
    Nanos issued = 0;
    Nanos dispatched = 0;
    std::uint32_t units = 0;  // shared storage: units while in service
    bool free = true;
  };

  static_assert(std::is_standard_layout_v<SimRequest>);

  struct ClientState {
    std::uint32_t outstanding = 0;
    Nanos stall_from = kNever, stall_to = kNever;  // the next stall (or the current one)
    std::optional<Random> stalls;
  };

  // When the client can issue a request it would issue at `t`: after the
  // stall `t` falls in, if any.
  Nanos client_time(std::size_t client, Nanos t) {
    const ClientSpec& spec = scenario_.clients[client];
    ClientState& state = clients_[client];
    if (spec.stall_every <= 0 || spec.stall_length <= 0) return t;
    if (!state.stalls) {
      state.stalls.emplace(scenario_.seed * 1000003 + client + 1);
      state.stall_from = t + state.stalls->exponential(spec.stall_every);
      state.stall_to = state.stall_from + state.stalls->exponential(spec.stall_length);
    }
    while (state.stall_to <= t) {
      state.stall_from = state.stall_to + state.stalls->exponential(spec.stall_every);
      state.stall_to = state.stall_from + state.stalls->exponential(spec.stall_length);
    }
    return t >= state.stall_from ? state.stall_to : t;
  }

  // Shared storage: a request in service, by the per-unit work at which it is done.
  struct InService {
    double done_at;
    std::size_t index;
    bool operator>(const InService& other) const {
      return done_at != other.done_at ? done_at > other.done_at : index > other.index;
    }
  };

  void configure() {
    auto check = [&](qos::Status status) {
      if (!status) {
        fprintf(stderr, "scenario %s: %s\n", scenario_.name.c_str(), status.message().c_str());
        std::abort();
      }
    };
    if (scenario_.policy) check(group_.set_policy(*scenario_.policy));
    if (scenario_.token) check(group_.set_token(*scenario_.token));
    if (scenario_.carryover) check(group_.set_carryover(*scenario_.carryover));
    if (scenario_.io_throttle || scenario_.io_limit) {
      // io_throttle <= io_limit at every step, whichever way they move.
      const std::uint32_t io_limit = scenario_.io_limit.value_or(group_.io_limit());
      const std::uint32_t io_throttle = scenario_.io_throttle.value_or(group_.io_throttle());
      check(group_.set_io_limit(std::max(io_limit, group_.io_throttle())));
      check(group_.set_io_throttle(io_throttle));
      check(group_.set_io_limit(io_limit));
    }
    if (scenario_.io_limit_auto) group_.set_io_limit_auto(*scenario_.io_limit_auto);
    if (scenario_.cost_model) check(group_.set_cost_model(*scenario_.cost_model));
    for (DeviceId device : scenario_.devices) check(group_.add_device(device));
    for (const GroupSpec& spec : scenario_.groups) {
      if (spec.group != qos::kDefaultGroup) check(group_.attach(spec.device, spec.group));
      check(group_.set_weight(spec.device, spec.group, spec.weight));
      if (spec.limits) check(group_.set_limits(spec.device, spec.group, *spec.limits));
      if (spec.range) check(group_.set_range_bw(spec.device, spec.group, spec.range->min_kib, spec.range->max_kib));
    }
    for (const auto& [device, limits] : scenario_.device_limits) check(group_.set_limits(device, std::nullopt, limits));
  }

  void schedule(Nanos time, EventKind kind, std::size_t index) {
    events_.push({time, sequence_++, kind, index});
  }

  // Accounts storage busy time (and, shared, the work done) up to `time`.
  void advance(Nanos time) {
    const bool shared = scenario_.storage.shared;
    const double busy = shared ? scenario_.storage.efficiency(units_) : static_cast<double>(busy_slots_);
    while (now_ < time) {
      Nanos bin_end = (now_ / result_.bin + 1) * result_.bin;
      Nanos step_end = std::min(time, bin_end);
      std::size_t bin = static_cast<std::size_t>(now_ / result_.bin);
      if (bin < result_.busy_per_bin.size()) {
        result_.busy_per_bin[bin] += busy * static_cast<double>(step_end - now_);
      }
      if (shared) work_ += unit_rate() * static_cast<double>(step_end - now_);
      now_ = step_end;
    }
  }

  void handle(const Event& event) {
    switch (event.kind) {
      case EventKind::client_start: start_client(event.index); break;
      case EventKind::arrival: arrive(event.index); break;
      case EventKind::reissue: issue(event.index); break;
      case EventKind::completion: finish(event.index); break;
      case EventKind::timer:
        if (event.time >= timer_at_) timer_at_ = kNever;
        break;
      case EventKind::action: scenario_.actions[event.index].apply(group_); break;
      case EventKind::speed:
        speed_ = speed_at(now_);
        if (scenario_.storage.shared) shared_changed();
        break;
      case EventKind::storage:
        if (event.time == storage_event_at_) {
          storage_event_at_ = kNever;
          shared_completions();
        }
        break;
    }
  }

  // The storage's speed at `time` (the slowest of the slow-downs then).
  double speed_at(Nanos time) const {
    double speed = 1;
    for (const SlowDown& slowdown : scenario_.storage.slowdowns) {
      if (time >= slowdown.from && time < slowdown.to) speed = std::min(speed, slowdown.speed);
    }
    return std::max(speed, 1e-6);
  }

  bool running(const ClientSpec& spec) const { return now_ >= spec.start && now_ < spec.stop; }

  void start_client(std::size_t client) {
    const ClientSpec& spec = scenario_.clients[client];
    if (spec.kind == ClientSpec::Kind::closed) {
      for (std::uint32_t i = 0; i < spec.depth; ++i) issue(client);
    } else {
      arrive(client);
    }
  }

  // Open loop: issue one and schedule the next arrival.
  void arrive(std::size_t client) {
    const ClientSpec& spec = scenario_.clients[client];
    if (!running(spec)) return;
    issue(client);
    Nanos gap = static_cast<Nanos>(static_cast<double>(kSecond) / spec.rate);
    if (spec.poisson) gap = random_.exponential(gap);
    schedule(now_ + std::max<Nanos>(gap, 1), EventKind::arrival, client);
  }

  std::size_t allocate() {
    if (!free_.empty()) {
      std::size_t index = free_.back();
      free_.pop_back();
      return index;
    }
    requests_.push_back(std::make_unique<SimRequest>());
    requests_.back()->self = requests_.size() - 1;
    return requests_.size() - 1;
  }

  void issue(std::size_t client) {
    const ClientSpec& spec = scenario_.clients[client];
    if (!running(spec)) return;
    std::size_t index = allocate();
    SimRequest& sim = *requests_[index];
    sim.free = false;
    sim.client = client;
    sim.issued = now_;
    sim.request = qos::Request{};
    sim.request.device = spec.device;
    sim.request.group = spec.group;
    sim.request.bytes = spec.sizes.size() == 1 ? spec.sizes[0] : spec.sizes[random_.next() % spec.sizes.size()];
    sim.request.direction = random_.uniform() < spec.read_fraction ? qos::Direction::read : qos::Direction::write;
    sim.request.op_kind = sim.request.direction == qos::Direction::read ? qos::OpKind::read : qos::OpKind::write;
    // Draw only for a real mix: scenarios without one keep their random sequence.
    sim.request.sequential = spec.sequential >= 1 || (spec.sequential > 0 && random_.uniform() < spec.sequential);
    ++clients_[client].outstanding;
    ++result_.clients[client].issued;
    if (scenario_.plain) {
      submit(index, std::nullopt);
    } else {
      group_.enqueue(&sim.request, at(now_));
    }
  }

  // Asks the scheduler for everything it will release now.
  void pump() {
    if (scenario_.plain) return;
    for (;;) {
      qos::Decision decision = group_.next(at(now_));
      if (decision.kind == qos::Decision::Kind::dispatch) {
        submit(reinterpret_cast<SimRequest*>(decision.request)->self, decision.rule);
        continue;
      }
      if (decision.kind == qos::Decision::Kind::wait && decision.until != qos::TimePoint::max()) {
        Nanos when = std::max(from(decision.until) + scenario_.timer_late, now_ + 1);
        if (when < timer_at_) {
          timer_at_ = when;
          schedule(when, EventKind::timer, 0);
        }
      }
      return;
    }
  }

  void submit(std::size_t index, std::optional<qos::Rule> rule) {
    SimRequest& sim = *requests_[index];
    sim.dispatched = now_;
    ClientResult& result = result_.clients[sim.client];
    if (rule) ++result.by_rule[static_cast<std::size_t>(*rule)];
    if (scenario_.record_bin == 0) result.dispatched.push_back(now_);
    Nanos delay = now_ - sim.issued;
    if (delay > 0) ++result.delayed;
    result.max_delay = std::max(result.max_delay, delay);
    result.total_delay += delay;
    if (scenario_.storage.shared) {
      serve_shared(index);
    } else if (busy_slots_ < scenario_.storage.depth) {
      serve(index);
    } else {
      storage_queue_.push_back(index);
    }
  }

  void serve(std::size_t index) {
    const StorageModel& storage = scenario_.storage;
    SimRequest& sim = *requests_[index];
    Nanos service = storage.latency;
    if (storage.jitter > 0) {
      service += static_cast<Nanos>((random_.uniform() * 2 - 1) * static_cast<double>(storage.jitter));
    }
    if (storage.bandwidth > 0) {
      service += static_cast<Nanos>(static_cast<double>(sim.request.bytes) * storage.depth / storage.bandwidth *
                                    static_cast<double>(kSecond));
    }
    service += storage.per_in_service * busy_slots_;
    if (speed_ != 1) service = static_cast<Nanos>(static_cast<double>(service) / speed_);
    ++busy_slots_;
    schedule(now_ + std::max<Nanos>(service, 1), EventKind::completion, index);
  }

  // ---- Shared storage ----
  // Work (ns) each unit in service does per ns now.
  double unit_rate() const {
    return units_ == 0 ? 0 : scenario_.storage.efficiency(units_) / static_cast<double>(units_) * speed_;
  }

  void serve_shared(std::size_t index) {
    const StorageModel& storage = scenario_.storage;
    SimRequest& sim = *requests_[index];
    double work = storage.costs.work_ns(sim.request.direction, sim.request.sequential, sim.request.bytes);
    if (storage.spread > 0) work *= 1 + (random_.uniform() * 2 - 1) * storage.spread;
    sim.units = storage.units(sim.request.bytes);
    units_ += sim.units;
    in_service_.push({work_ + std::max(work, 1.0) / sim.units, index});
    shared_changed();
  }

  // Completes what is done, then schedules the next completion.
  void shared_completions() {
    std::vector<std::size_t> done;
    while (!in_service_.empty() && in_service_.top().done_at <= work_ + 1e-3) {
      done.push_back(in_service_.top().index);
      units_ -= requests_[in_service_.top().index]->units;
      in_service_.pop();
    }
    if (in_service_.empty()) work_ = 0;  // keeps the sums small; nothing refers to it
    shared_changed();
    for (std::size_t index : done) finish(index);
  }

  // The rate changed (a request started or finished, or the speed): the
  // next completion moves. An event already due earlier stays (it finds
  // nothing done and looks again); one due later is superseded.
  void shared_changed() {
    if (in_service_.empty()) return;
    const double left = std::max(0.0, in_service_.top().done_at - work_);
    const Nanos when = now_ + static_cast<Nanos>(std::ceil(left / unit_rate()));
    if (when < storage_event_at_) {
      storage_event_at_ = when;
      schedule(when, EventKind::storage, 0);
    }
  }

  void finish(std::size_t index) {
    SimRequest& sim = *requests_[index];
    if (!scenario_.storage.shared) {
      --busy_slots_;
      if (!storage_queue_.empty()) {
        std::size_t next = storage_queue_.front();
        storage_queue_.pop_front();
        serve(next);
      }
    }
    if (!scenario_.plain) group_.complete(&sim.request, at(now_));
    ClientResult& result = result_.clients[sim.client];
    const double device_time =
        scenario_.storage.device_time(sim.request.direction, sim.request.sequential, sim.request.bytes);
    if (scenario_.record_bin > 0) {
      const auto bin = static_cast<std::size_t>(now_ / scenario_.record_bin);
      ++result.completions_in_bin[bin];
      result.bytes_in_bin[bin] += sim.request.bytes;
      result.device_time_in_bin[bin] += device_time;
    } else {
      result.completed.push_back(now_);
      result.latency.push_back(now_ - sim.issued);
      result.completed_bytes.push_back(sim.request.bytes);
      result.completed_device_time.push_back(
          (result.completed_device_time.empty() ? 0.0 : result.completed_device_time.back()) + device_time);
    }
    std::size_t client = sim.client;
    --clients_[client].outstanding;
    sim.free = true;
    free_.push_back(index);
    const ClientSpec& spec = scenario_.clients[client];
    if (spec.kind == ClientSpec::Kind::closed) {
      const Nanos when = client_time(client, now_ + spec.think);
      if (when > now_) {
        schedule(when, EventKind::reissue, client);
      } else {
        issue(client);
      }
    }
  }

  Scenario scenario_;
  qos::DeviceGroup group_;
  Random random_;
  Result result_;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::uint64_t sequence_ = 0;
  Nanos now_ = 0;
  Nanos timer_at_ = kNever;
  double speed_ = 1;
  // Slots.
  std::uint32_t busy_slots_ = 0;
  std::deque<std::size_t> storage_queue_;
  // Shared.
  std::priority_queue<InService, std::vector<InService>, std::greater<>> in_service_;
  std::uint64_t units_ = 0;
  double work_ = 0;  // work done per unit in service since the storage was last idle, ns
  Nanos storage_event_at_ = kNever;  // the storage event that counts (earlier ones were superseded)
  std::vector<std::unique_ptr<SimRequest>> requests_;
  std::vector<std::size_t> free_;
  std::vector<ClientState> clients_;
};

inline Result simulate(const Scenario& scenario) { return Simulator(scenario).run(); }

// Builders for scenario data (GCC warns about partial designated initializers).
inline StorageModel storage(std::uint32_t depth, Nanos latency, Nanos jitter = 0, double bandwidth = 0) {
  StorageModel model;
  model.depth = depth;
  model.latency = latency;
  model.jitter = jitter;
  model.bandwidth = bandwidth;
  return model;
}

// Elastic storage (see StorageModel::per_in_service), never queueing itself.
inline StorageModel elastic_storage(Nanos latency, Nanos per_in_service, Nanos jitter = 0) {
  StorageModel model = storage(4096, latency, jitter);
  model.per_in_service = per_in_service;
  return model;
}

// This VM's disk, measured with fio (4 KiB, O_DIRECT, io_uring; IOPS / mean
// latency in us):
//   randread  QD1 4773/151  QD4 18573/195  QD8 26155/292  QD16 46534/332
//             QD32 66552/470  QD64 72480/874  QD128 85688/1484
//   randwrite QD1 4710/167  QD4 14688/256  QD8 22479/344  QD16 28571/547
//             QD32 52384/596  QD64 55402/1139  QD128 71100/1788
// fio's own time between a completion and the next submission is about
// 50 us (QD1: 1 / 4773 s = 210 us against 151 us of latency): give clients
// that think time to compare with these figures. Sequential 4 KiB requests
// are not measured here; they are taken as half the cost of random ones.
// Bandwidths (1 GB/s read, 600 MB/s write) are a middle-of-the-road SSD's.
//
// The knee shape (issue 13): the rate rises in proportion to the requests
// in service up to 20 (the latency stays that of QD16 measured: 330 us for
// 4 KiB reads, 547 us for writes) and is flat beyond, where the latency
// grows with the depth (a queue): 3.0k IOPS at QD1, 12k at QD4, 24k at
// QD8, 48.5k at QD16, 60.6k from QD20 on (writes 36.6k). Below the knee a
// request's latency does not depend on the others in service.
inline StorageModel vm_disk_knee() {
  StorageModel model;
  model.shared = true;
  model.costs.read_rand_iops = 60'600;
  model.costs.read_seq_iops = 2 * 60'600;
  model.costs.write_rand_iops = 36'600;
  model.costs.write_seq_iops = 2 * 36'600;
  model.costs.read_bps = 1e9;
  model.costs.write_bps = 600e6;
  model.knee = 20;
  model.curvature = 0;
  model.spread = 0.25;
  return model;
}

// The elastic shape, close to the measurements at every depth: no knee,
// rate = C U / (U + 13.4) with C = 95k for random reads (6.6k IOPS at QD1
// without think time, 52k at QD16, 67k at QD32, 78k at QD64, 86k at QD128)
// and 79k for writes (5.5k, 43k, 56k, 65k, 71.5k). A request's latency grows
// with every other request in service.
inline StorageModel vm_disk_elastic() {
  StorageModel model = vm_disk_knee();
  model.costs.read_rand_iops = 95'000;
  model.costs.read_seq_iops = 2 * 95'000;
  model.costs.write_rand_iops = 79'000;
  model.costs.write_seq_iops = 2 * 79'000;
  model.knee = 0;
  model.ramp = 13.4;
  return model;
}

inline GroupSpec group(DeviceId device, GroupId id, std::uint32_t weight) {
  GroupSpec spec;
  spec.device = device;
  spec.group = id;
  spec.weight = weight;
  return spec;
}

inline ClientSpec closed_loop(std::string name, DeviceId device, GroupId group, std::uint32_t depth,
                              std::vector<std::uint32_t> sizes = {4 * KiB}) {
  ClientSpec spec;
  spec.name = std::move(name);
  spec.device = device;
  spec.group = group;
  spec.kind = ClientSpec::Kind::closed;
  spec.depth = depth;
  spec.sizes = std::move(sizes);
  return spec;
}

// One kind of request, kept `depth` deep (closed loop).
struct Workload {
  std::uint32_t depth;
  double read_fraction;
  std::uint32_t bytes;
  double sequential;
  const char* label;
};

// A client of the default group of `device` running `load` in [start, stop).
inline ClientSpec workload_client(const std::string& name, DeviceId device, const Workload& load, Nanos start = 0,
                                  Nanos stop = kNever) {
  ClientSpec c = closed_loop(name, device, qos::kDefaultGroup, load.depth, {load.bytes});
  c.read_fraction = load.read_fraction;
  c.sequential = load.sequential;
  c.start = start;
  c.stop = stop;
  return c;
}

inline ClientSpec open_loop(std::string name, DeviceId device, GroupId group, double rate,
                            std::vector<std::uint32_t> sizes = {4 * KiB}) {
  ClientSpec spec;
  spec.name = std::move(name);
  spec.device = device;
  spec.group = group;
  spec.kind = ClientSpec::Kind::open;
  spec.rate = rate;
  spec.sizes = std::move(sizes);
  return spec;
}

// Share of each client in [t0, t1), by completions or by bytes.
inline std::vector<double> shares(const Result& result, const std::vector<std::string>& names, Nanos t0, Nanos t1,
                                  bool by_bytes = false) {
  std::vector<double> values;
  double total = 0;
  for (const std::string& name : names) {
    const ClientResult& client = result.client(name);
    double value = by_bytes ? static_cast<double>(client.bytes(t0, t1)) : static_cast<double>(client.completions(t0, t1));
    values.push_back(value);
    total += value;
  }
  for (double& value : values) value = total > 0 ? 100.0 * value / total : 0;
  return values;
}

// Share of each client's device time in [t0, t1) (StorageModel::device_time).
inline std::vector<double> device_time_shares(const Result& result, const std::vector<std::string>& names, Nanos t0,
                                              Nanos t1) {
  std::vector<double> values;
  double total = 0;
  for (const std::string& name : names) {
    values.push_back(result.client(name).device_time(t0, t1));
    total += values.back();
  }
  for (double& value : values) value = total > 0 ? 100.0 * value / total : 0;
  return values;
}

}  // namespace ioband::sim
