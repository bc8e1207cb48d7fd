// The scheduler's cost per request: one enqueue + one dispatch (next) + one
// complete, in steady state, with 1, 100, 10 000 (and 100 000) active groups,
// for each policy. Time is a counter passed in, as the reactor would.
// BM_FairTree: the same groups under a 3-level tree (qos/tree.h): the four
// devices in two tenants (weights 300 and 100; devices 200:100 and 100:300),
// so every dispatch takes its group's effective weight from the tree;
// BM_FairTreeLimited adds a shared limit on each tenant (never reached).
//
// Every group keeps requests queued (it is "active": in the ready heaps), a
// window of 64 requests is in flight, and each iteration completes the
// oldest in-flight request, enqueues it again on its group (a closed-loop
// client) and dispatches the next request the policy picks.
//
//   build-qos/bench/qos_bench  (or --benchmark_filter=fair)
#include <benchmark/benchmark.h>

#include <deque>
#include <vector>

#include "qos/device_group.h"

namespace {

using namespace ioband::qos;

constexpr std::uint32_t kInFlight = 64;
constexpr DeviceId kDevices = 4;

// The NBD layer embeds a Request in its own per-request struct; here each
// gets a cache line of its own.
struct alignas(64) Slot {
  Request request;
};

struct Setup {
  DeviceGroup group;
  std::vector<Slot> requests;
  std::deque<Request*> in_flight;
  TimePoint now = TimePoint() + std::chrono::hours(1);
};

void prepare(Setup& s, Policy policy, int groups, bool limits, bool tree = false) {
  benchmark::DoNotOptimize(s.group.set_policy(policy));
  benchmark::DoNotOptimize(s.group.set_io_limit(kInFlight));
  // A fixed window: one completion frees exactly one dispatch, so every
  // iteration measures the same work (the learned window would move it).
  s.group.set_io_limit_auto(false);
  benchmark::DoNotOptimize(s.group.set_io_throttle(0));  // every request goes through the policy
  if (policy == Policy::weight && groups > 1000) benchmark::DoNotOptimize(s.group.set_token(4'000'000));
  for (DeviceId d = 0; d < kDevices; ++d) benchmark::DoNotOptimize(s.group.add_device(d));
  Limits limit;
  limit.iops_total = {10'000'000, 0, 1};  // never reached: measures the bucket arithmetic
  limit.bps_total = {std::uint64_t{1} << 39, 0, 1};
  if (tree) {
    static_assert(kDevices == 4);
    benchmark::DoNotOptimize(s.group.add_tenant(1, 300));
    benchmark::DoNotOptimize(s.group.add_tenant(2, 100));
    const std::uint32_t device_weights[kDevices] = {200, 100, 100, 300};
    for (DeviceId d = 0; d < kDevices; ++d) {
      benchmark::DoNotOptimize(s.group.set_device_tenant(d, d < 2 ? 1 : 2, device_weights[d]));
    }
    if (limits) {
      benchmark::DoNotOptimize(s.group.set_tenant_limits(1, limit));
      benchmark::DoNotOptimize(s.group.set_tenant_limits(2, limit));
    }
  }
  for (int i = 0; i < groups; ++i) {
    DeviceId device = static_cast<DeviceId>(i % kDevices);
    benchmark::DoNotOptimize(s.group.attach(device, 1000 + i));
    benchmark::DoNotOptimize(s.group.set_weight(device, 1000 + i, 50 + static_cast<std::uint32_t>(i % 4) * 50));
    if (policy == Policy::range_bw && i % 10 == 0) {
      benchmark::DoNotOptimize(s.group.set_range_bw(device, 1000 + i, 1024, 0));
    }
    if (limits && !tree) benchmark::DoNotOptimize(s.group.set_limits(device, 1000 + i, limit));
  }
  // Enough requests that every group stays active with the window in flight.
  int per_group = std::max(4, static_cast<int>(2 * kInFlight) / groups);
  s.requests.resize(static_cast<std::size_t>(groups * per_group));
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    Request& r = s.requests[i].request;
    int g = static_cast<int>(i) % groups;
    r.device = static_cast<DeviceId>(g % kDevices);
    r.group = 1000 + g;
    r.bytes = (i % 8 == 0) ? 65536 : 4096;
    r.direction = (i % 3 == 0) ? Direction::write : Direction::read;
    s.group.enqueue(&r, s.now);
  }
  for (;;) {
    Decision d = s.group.next(s.now);
    if (d.kind != Decision::Kind::dispatch) break;
    s.in_flight.push_back(d.request);
  }
}

void run(benchmark::State& state, Policy policy, bool limits, bool tree = false) {
  int groups = static_cast<int>(state.range(0));
  Setup s;
  prepare(s, policy, groups, limits, tree);
  for (auto _ : state) {
    s.now += std::chrono::microseconds(1);
    Request* done = s.in_flight.front();
    s.in_flight.pop_front();
    s.group.complete(done, s.now);
    s.group.enqueue(done, s.now);
    Decision d = s.group.next(s.now);
    benchmark::DoNotOptimize(d);
    if (d.kind != Decision::Kind::dispatch) {
      state.SkipWithError("next() dispatched nothing after a completion");
      break;
    }
    s.in_flight.push_back(d.request);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["bytes_per_group"] =
      static_cast<double>(s.group.memory_bytes()) / static_cast<double>(groups + kDevices);
}

void BM_Weight(benchmark::State& state) { run(state, Policy::weight, false); }
void BM_WeightIosize(benchmark::State& state) { run(state, Policy::weight_iosize, false); }
void BM_RangeBw(benchmark::State& state) { run(state, Policy::range_bw, false); }
void BM_Fair(benchmark::State& state) { run(state, Policy::fair, false); }
void BM_FairWithLimits(benchmark::State& state) { run(state, Policy::fair, true); }
void BM_FairTree(benchmark::State& state) { run(state, Policy::fair, false, true); }
void BM_FairTreeLimited(benchmark::State& state) { run(state, Policy::fair, true, true); }

#define GROUPS Arg(1)->Arg(100)->Arg(10'000)->Arg(100'000)
BENCHMARK(BM_Weight)->GROUPS;
BENCHMARK(BM_WeightIosize)->GROUPS;
BENCHMARK(BM_RangeBw)->GROUPS;
BENCHMARK(BM_Fair)->GROUPS;
BENCHMARK(BM_FairWithLimits)->GROUPS;
BENCHMARK(BM_FairTree)->GROUPS;
BENCHMARK(BM_FairTreeLimited)->GROUPS;

}  // namespace

BENCHMARK_MAIN();
