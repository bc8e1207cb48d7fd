// qos_drive: qos_bench's steady state (qos_bench_setup.h) for a fixed
// number of requests, without Google Benchmark, so that a run's counts are
// deterministic: run it under cachegrind twice, and the difference between
// the two runs over the difference in requests is the scheduler's cost per
// request without the setup.
//
//   qos_drive POLICY GROUPS REQUESTS
//     POLICY: fair, weight, weight-iosize, range-bw, fair-limits (a limit on
//             every group), fair-tree (3 levels: 2 tenants over the 4
//             devices), fair-tree-limited (and a shared limit per tenant),
//             fair-device-returns / fair-tenant-returns (1-deep clients
//             under one binding limit: qos_bench_setup.h, prepare_returns)
//
//   valgrind --tool=cachegrind --cache-sim=yes --D1=49152,12,64
//       --LL=2097152,16,64 build/bin/qos_drive fair 10000 400000
//
// It also prints the wall time per request (not meaningful under valgrind).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "qos_bench_setup.h"

using namespace ioband::qos;
using namespace ioband::qos::bench;

namespace {

// Prepares a setup of kind S, then runs `requests` steps of it.
template <typename S, typename Prepare>
int drive(long requests, const std::string& name, int groups, Prepare prepare_setup, bool (*one_step)(S&, Decision&)) {
  S s;
  prepare_setup(s);
  std::uint64_t sum = 0;  // of the dispatched requests' groups: keeps the loop's work observable
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < requests; ++i) {
    Decision d;
    if (!one_step(s, d)) {
      std::fprintf(stderr, "qos_drive: next() dispatched nothing after a completion (step %ld)\n", i);
      return 1;
    }
    sum += d.request->group;
  }
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
  std::printf("%s %d groups: %ld requests, %.1f ns per request (checksum %llu)\n", name.c_str(), groups, requests,
              took.count() / static_cast<double>(requests), static_cast<unsigned long long>(sum));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: qos_drive POLICY GROUPS REQUESTS\n");
    return 2;
  }
  const std::string name = argv[1];
  const int groups = std::atoi(argv[2]);
  const long requests = std::atol(argv[3]);
  Policy policy = Policy::fair;
  bool limits = false, tree = false, returns = false, tenant = false;
  if (name == "weight") {
    policy = Policy::weight;
  } else if (name == "weight-iosize") {
    policy = Policy::weight_iosize;
  } else if (name == "range-bw") {
    policy = Policy::range_bw;
  } else if (name == "fair-limits") {
    limits = true;
  } else if (name == "fair-tree") {
    tree = true;
  } else if (name == "fair-tree-limited") {
    tree = limits = true;
  } else if (name == "fair-device-returns" || name == "fair-tenant-returns") {
    returns = true;
    tenant = name == "fair-tenant-returns";
  } else if (name != "fair") {
    std::fprintf(stderr, "qos_drive: unknown policy %s\n", name.c_str());
    return 2;
  }
  if (groups < 1 || requests < 1) {
    std::fprintf(stderr, "qos_drive: GROUPS and REQUESTS must be positive\n");
    return 2;
  }
  if (returns) return drive(requests, name, groups, [&](ReturnsSetup& s) { prepare_returns_bound(s, groups, tenant); }, step_returns);
  return drive(requests, name, groups, [&](Setup& s) { prepare(s, policy, groups, limits, tree); }, step);
}
