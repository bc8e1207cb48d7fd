// The scheduler's cost per request: one enqueue + one dispatch (next) + one
// complete, in steady state, with 1, 100, 10 000 (and 100 000) active groups,
// for each policy. Time is a counter passed in, as the reactor would.
// BM_FairTree: the same groups under a 3-level tree (qos/tree.h): the four
// devices in two tenants (weights 300 and 100; devices 200:100 and 100:300),
// so every dispatch takes its group's effective weight from the tree;
// BM_FairTreeLimited adds a shared limit on each tenant (never reached).
// BM_FairDeviceLimitReturns / BM_FairTenantLimitReturns: 1-deep clients
// under one binding limit, most of them between two requests, whose tokens
// the limit keeps (qos_bench_setup.h, prepare_returns).
//
// Every group keeps requests queued (it is "active": in the ready heaps), a
// window of 64 requests is in flight, and each iteration completes the
// oldest in-flight request, enqueues it again on its group (a closed-loop
// client) and dispatches the next request the policy picks.
//
//   build-qos/bench/qos_bench  (or --benchmark_filter=fair)
#include <benchmark/benchmark.h>

#include "qos_bench_setup.h"

namespace {

using namespace ioband::qos;
using namespace ioband::qos::bench;

// The timed loop: one step (one request dispatched) an iteration.
template <typename S>
bool measure(benchmark::State& state, S& s, bool (*one_step)(S&, Decision&)) {
  for (auto _ : state) {
    Decision d;
    const bool dispatched = one_step(s, d);
    benchmark::DoNotOptimize(d);
    if (!dispatched) {
      state.SkipWithError("next() dispatched nothing");
      return false;
    }
  }
  state.SetItemsProcessed(state.iterations());
  return true;
}

void run(benchmark::State& state, Policy policy, bool limits, bool tree = false) {
  int groups = static_cast<int>(state.range(0));
  Setup s;
  prepare(s, policy, groups, limits, tree);
  if (!measure(state, s, step)) return;
  state.counters["bytes_per_group"] =
      static_cast<double>(s.group.memory_bytes()) / static_cast<double>(groups + kDevices);
}

void run_returns(benchmark::State& state, bool tenant) {
  ReturnsSetup s;
  prepare_returns_bound(s, static_cast<int>(state.range(0)), tenant);
  measure(state, s, step_returns);
}

void BM_Weight(benchmark::State& state) { run(state, Policy::weight, false); }
void BM_WeightIosize(benchmark::State& state) { run(state, Policy::weight_iosize, false); }
void BM_RangeBw(benchmark::State& state) { run(state, Policy::range_bw, false); }
void BM_Fair(benchmark::State& state) { run(state, Policy::fair, false); }
void BM_FairWithLimits(benchmark::State& state) { run(state, Policy::fair, true); }
void BM_FairTree(benchmark::State& state) { run(state, Policy::fair, false, true); }
void BM_FairTreeLimited(benchmark::State& state) { run(state, Policy::fair, true, true); }
void BM_FairDeviceLimitReturns(benchmark::State& state) { run_returns(state, false); }
void BM_FairTenantLimitReturns(benchmark::State& state) { run_returns(state, true); }

#define GROUPS Arg(1)->Arg(100)->Arg(10'000)->Arg(100'000)
BENCHMARK(BM_Weight)->GROUPS;
BENCHMARK(BM_WeightIosize)->GROUPS;
BENCHMARK(BM_RangeBw)->GROUPS;
BENCHMARK(BM_Fair)->GROUPS;
BENCHMARK(BM_FairWithLimits)->GROUPS;
BENCHMARK(BM_FairTree)->GROUPS;
BENCHMARK(BM_FairTreeLimited)->GROUPS;
// A fixed number of requests: the cost moves with the clients' phases, so
// two builds compare over the same stretch of the same (deterministic) run.
BENCHMARK(BM_FairDeviceLimitReturns)->Arg(1000)->Iterations(100'000);
BENCHMARK(BM_FairDeviceLimitReturns)->Arg(10'000)->Iterations(20'000);
BENCHMARK(BM_FairTenantLimitReturns)->Arg(1000)->Iterations(100'000);
BENCHMARK(BM_FairTenantLimitReturns)->Arg(10'000)->Iterations(20'000);

}  // namespace

BENCHMARK_MAIN();
