// weight-iosize with mixed request sizes: one token per 512-byte sector, so
// byte shares follow the weights (within 2 points) even when one group sends
// 4 KiB requests and another 1 MiB.
#include <gtest/gtest.h>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

Scenario mixed_sizes(qos::Policy policy) {
  Scenario s;
  s.name = "mixed sizes";
  s.policy = policy;
  // dm-ioband's fixed window of 128, which this test was written against
  // (the device group's default before io_limit auto).
  s.io_limit = 128;
  s.io_limit_auto = false;
  // 16 in parallel, 2 ms + transfer at 400 MB/s.
  s.storage = storage(16, 2 * kMilli, 500 * kMicro, 400e6);
  s.devices = {0};
  s.groups = {group(0, 1, 50), group(0, 2, 30), group(0, 3, 20)};
  s.clients = {closed_loop("small", 0, 1, 128, {4 * KiB}), closed_loop("large", 0, 2, 128, {MiB}),
               closed_loop("mixed", 0, 3, 128, {4 * KiB, 64 * KiB, MiB})};
  s.duration = 30 * kSecond;
  return s;
}

void run(qos::Policy policy, std::optional<qos::CostModel> model = std::nullopt) {
  Scenario scenario = mixed_sizes(policy);
  scenario.cost_model = model;
  Result result = simulate(scenario);
  std::vector<double> bytes = shares(result, {"small", "large", "mixed"}, 0, result.duration, true);
  std::vector<double> requests = shares(result, {"small", "large", "mixed"}, 0, result.duration);
  printf("%s%s: byte shares %.2f / %.2f / %.2f %% (request shares %.1f / %.1f / %.1f), utilization %.3f\n",
         qos::to_string(policy).data(), model ? " (cost = bytes)" : "", bytes[0], bytes[1], bytes[2], requests[0],
         requests[1], requests[2], result.utilization(0, result.duration));
  EXPECT_NEAR(bytes[0], 50, 2);
  EXPECT_NEAR(bytes[1], 30, 2);
  EXPECT_NEAR(bytes[2], 20, 2);
}

TEST(WeightIosize, ByteSharesFollowWeights) { run(qos::Policy::weight_iosize); }
// fair speaks the same cost unit: with a cost of one token per sector and
// nothing per request it shares bytes too.
TEST(WeightIosize, FairWithByteCostModel) { run(qos::Policy::fair, qos::CostModel{0, qos::kCostPerToken}); }

}  // namespace
}  // namespace ioband::sim
