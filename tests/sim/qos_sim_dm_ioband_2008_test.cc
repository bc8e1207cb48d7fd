// The 2008 dm-ioband test: three groups with weights 40/20/10, each with 128
// outstanding 4 KiB random requests, for 60 s of virtual time; the shares of
// completed I/O must be 57.1 / 28.6 / 14.3 % within 1 point.
#include <gtest/gtest.h>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

Scenario dm_ioband_2008(qos::Policy policy) {
  Scenario s;
  s.name = "dm-ioband 2008, weights 40/20/10";
  s.policy = policy;
  // A disk doing random 4 KiB I/O: 32 commands in parallel, 8-12 ms each
  // (about 3200 IOPS). io_limit and io_throttle are dm-ioband's defaults.
  s.storage = storage(32, 10 * kMilli, 2 * kMilli);
  s.devices = {0, 1, 2};
  s.groups = {group(0, qos::kDefaultGroup, 40), group(1, qos::kDefaultGroup, 20), group(2, qos::kDefaultGroup, 10)};
  for (DeviceId d = 0; d < 3; ++d) {
    s.clients.push_back(closed_loop("ioband" + std::to_string(d + 1), d, qos::kDefaultGroup, 128));
    s.clients.back().read_fraction = 0.5;
  }
  s.duration = 60 * kSecond;
  return s;
}

void expect_shares(qos::Policy policy) {
  Result result = simulate(dm_ioband_2008(policy));
  std::vector<double> share = shares(result, {"ioband1", "ioband2", "ioband3"}, 0, result.duration);
  std::uint64_t total = 0;
  for (const auto& c : result.clients) total += c.completed.size();
  printf("%s: %.2f / %.2f / %.2f %% of %llu requests, utilization %.3f\n", std::string(qos::to_string(policy)).c_str(),
         share[0], share[1], share[2], static_cast<unsigned long long>(total), result.utilization(0, result.duration));
  EXPECT_NEAR(share[0], 400.0 / 7, 1.0);
  EXPECT_NEAR(share[1], 200.0 / 7, 1.0);
  EXPECT_NEAR(share[2], 100.0 / 7, 1.0);
  EXPECT_GE(result.utilization(0, result.duration), 0.98);
}

TEST(DmIoband2008, WeightPolicy) { expect_shares(qos::Policy::weight); }
TEST(DmIoband2008, WeightIosizePolicy) { expect_shares(qos::Policy::weight_iosize); }
TEST(DmIoband2008, FairPolicy) { expect_shares(qos::Policy::fair); }

}  // namespace
}  // namespace ioband::sim
