// A deterministic discrete-event simulator that drives the real scheduler
// (qos::DeviceGroup) in virtual time: no threads, no sleeps, no clock.
//
//   clients ──enqueue──▶ DeviceGroup ──next()──▶ storage model ──completion──┐
//      ▲                     ▲  (timer at `until` when next() says wait)     │
//      └─────────────────────┴───────────────────────complete()──────────────┘
//
// Storage model: `depth` requests are served in parallel; a request occupies
// one slot for  latency ± jitter + bytes * depth / bandwidth ; requests
// dispatched while every slot is busy wait in the storage's own FIFO (as a
// device queue does). The storage's capacity is therefore depth / service
// time requests per second and `bandwidth` bytes per second.
//
// Clients: closed-loop (keep `depth` requests outstanding, re-issue on
// completion after `think`) or open-loop (issue at `rate` per second,
// periodically or as a Poisson process), between `start` and `stop`.
// Scenarios are data (struct Scenario); scripted changes at given times are
// `Action`s. Everything random comes from one seeded generator.
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

struct StorageModel {
  std::uint32_t depth = 32;
  Nanos latency = 10 * kMilli;
  Nanos jitter = 0;        // service time uniform in latency ± jitter
  double bandwidth = 0;    // bytes per second for the whole storage; 0: no transfer time
  // Elastic storage: each request already in service when one starts adds
  // this to its service time, so latency grows with the depth from the first
  // request on and the rate as depth / (latency + depth * per_in_service)
  // keeps rising ever more slowly (a virtual disk on a host page cache).
  Nanos per_in_service = 0;
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
  Nanos think = 0;                 // closed: pause between a completion and the next request
  Nanos start = 0;
  Nanos stop = kNever;
};

struct Action {
  Nanos at = 0;
  std::function<void(qos::DeviceGroup&)> apply;
};

struct Scenario {
  std::string name;
  qos::Policy policy = qos::Policy::fair;
  std::uint64_t token = qos::kDefaultToken;
  std::uint32_t carryover = qos::kDefaultCarryover;
  std::uint32_t io_throttle = qos::kDefaultIoThrottle;
  std::uint32_t io_limit = qos::kDefaultIoLimit;
  bool io_limit_auto = false;  // io_limit is then the cap of the learned window
  std::optional<qos::CostModel> cost_model;
  StorageModel storage;
  std::vector<DeviceId> devices{0};
  std::vector<GroupSpec> groups;
  std::vector<ClientSpec> clients;
  std::vector<Action> actions;
  Nanos duration = 10 * kSecond;
  std::uint64_t seed = 1;
};

struct ClientResult {
  std::string name;
  std::vector<Nanos> dispatched;          // dispatch time of every request
  std::vector<Nanos> completed;           // completion time of every request
  std::vector<std::uint32_t> completed_bytes;
  std::uint64_t issued = 0;
  std::uint64_t delayed = 0;              // requests with a queueing delay > 0
  Nanos max_delay = 0;
  Nanos total_delay = 0;
  std::array<std::uint64_t, 5> by_rule{};  // dispatches by qos::Rule

  // Completions (or bytes) in [t0, t1).
  std::uint64_t completions(Nanos t0, Nanos t1) const {
    return static_cast<std::uint64_t>(std::lower_bound(completed.begin(), completed.end(), t1) -
                                      std::lower_bound(completed.begin(), completed.end(), t0));
  }
  std::uint64_t bytes(Nanos t0, Nanos t1) const {
    std::uint64_t sum = 0;
    auto first = std::lower_bound(completed.begin(), completed.end(), t0) - completed.begin();
    auto last = std::lower_bound(completed.begin(), completed.end(), t1) - completed.begin();
    for (auto i = first; i < last; ++i) sum += completed_bytes[static_cast<std::size_t>(i)];
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
  // Fraction of the storage's slots busy in [t0, t1) (bin-aligned).
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
    configure();
    result_.duration = scenario_.duration;
    result_.storage_depth = scenario_.storage.depth;
    result_.busy_per_bin.assign(static_cast<std::size_t>(scenario_.duration / result_.bin + 1), 0.0);
    for (std::size_t i = 0; i < scenario_.clients.size(); ++i) {
      const ClientSpec& spec = scenario_.clients[i];
      result_.clients.push_back({});
      result_.clients.back().name = spec.name;
      clients_.push_back({});
      schedule(std::max<Nanos>(spec.start, 0), EventKind::client_start, i);
    }
    for (std::size_t i = 0; i < scenario_.actions.size(); ++i) {
      schedule(scenario_.actions[i].at, EventKind::action, i);
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
  enum class EventKind : std::uint8_t { client_start, arrival, reissue, completion, timer, action };

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
    bool free = true;
  };

  static_assert(std::is_standard_layout_v<SimRequest>);

  struct ClientState {
    std::uint32_t outstanding = 0;
  };

  void configure() {
    auto check = [&](qos::Status status) {
      if (!status) {
        fprintf(stderr, "scenario %s: %s\n", scenario_.name.c_str(), status.message().c_str());
        std::abort();
      }
    };
    check(group_.set_policy(scenario_.policy));
    check(group_.set_token(scenario_.token));
    check(group_.set_carryover(scenario_.carryover));
    check(group_.set_io_limit(std::max(scenario_.io_limit, group_.io_throttle())));
    check(group_.set_io_throttle(scenario_.io_throttle));
    check(group_.set_io_limit(scenario_.io_limit));
    group_.set_io_limit_auto(scenario_.io_limit_auto);
    if (scenario_.cost_model) check(group_.set_cost_model(*scenario_.cost_model));
    for (DeviceId device : scenario_.devices) check(group_.add_device(device));
    for (const GroupSpec& spec : scenario_.groups) {
      if (spec.group != qos::kDefaultGroup) check(group_.attach(spec.device, spec.group));
      check(group_.set_weight(spec.device, spec.group, spec.weight));
      if (spec.limits) check(group_.set_limits(spec.device, spec.group, *spec.limits));
      if (spec.range) check(group_.set_range_bw(spec.device, spec.group, spec.range->min_kib, spec.range->max_kib));
    }
  }

  void schedule(Nanos time, EventKind kind, std::size_t index) {
    events_.push({time, sequence_++, kind, index});
  }

  // Accounts storage busy time up to `time`.
  void advance(Nanos time) {
    while (now_ < time) {
      Nanos bin_end = (now_ / result_.bin + 1) * result_.bin;
      Nanos step_end = std::min(time, bin_end);
      std::size_t bin = static_cast<std::size_t>(now_ / result_.bin);
      if (bin < result_.busy_per_bin.size()) {
        result_.busy_per_bin[bin] += static_cast<double>(busy_slots_) * static_cast<double>(step_end - now_);
      }
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
    }
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
    ++clients_[client].outstanding;
    ++result_.clients[client].issued;
    group_.enqueue(&sim.request, at(now_));
  }

  // Asks the scheduler for everything it will release now.
  void pump() {
    for (;;) {
      qos::Decision decision = group_.next(at(now_));
      if (decision.kind == qos::Decision::Kind::dispatch) {
        submit(reinterpret_cast<SimRequest*>(decision.request)->self, decision.rule);
        continue;
      }
      if (decision.kind == qos::Decision::Kind::wait && decision.until != qos::TimePoint::max()) {
        Nanos when = std::max(from(decision.until), now_ + 1);
        if (when < timer_at_) {
          timer_at_ = when;
          schedule(when, EventKind::timer, 0);
        }
      }
      return;
    }
  }

  void submit(std::size_t index, qos::Rule rule) {
    SimRequest& sim = *requests_[index];
    sim.dispatched = now_;
    ClientResult& result = result_.clients[sim.client];
    ++result.by_rule[static_cast<std::size_t>(rule)];
    result.dispatched.push_back(now_);
    Nanos delay = now_ - sim.issued;
    if (delay > 0) ++result.delayed;
    result.max_delay = std::max(result.max_delay, delay);
    result.total_delay += delay;
    if (busy_slots_ < scenario_.storage.depth) {
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
    ++busy_slots_;
    schedule(now_ + std::max<Nanos>(service, 1), EventKind::completion, index);
  }

  void finish(std::size_t index) {
    --busy_slots_;
    if (!storage_queue_.empty()) {
      std::size_t next = storage_queue_.front();
      storage_queue_.pop_front();
      serve(next);
    }
    SimRequest& sim = *requests_[index];
    group_.complete(&sim.request, at(now_));
    ClientResult& result = result_.clients[sim.client];
    result.completed.push_back(now_);
    result.completed_bytes.push_back(sim.request.bytes);
    std::size_t client = sim.client;
    --clients_[client].outstanding;
    sim.free = true;
    free_.push_back(index);
    const ClientSpec& spec = scenario_.clients[client];
    if (spec.kind == ClientSpec::Kind::closed) {
      if (spec.think > 0) {
        schedule(now_ + spec.think, EventKind::reissue, client);
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
  std::uint32_t busy_slots_ = 0;
  std::deque<std::size_t> storage_queue_;
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

}  // namespace ioband::sim
