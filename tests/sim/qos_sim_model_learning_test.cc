// The device model learned while serving (model_learner.h), in virtual time
// with default settings and no calibration (issue 13, item 5; what it does
// for shares: qos_sim_weights_learned_test):
//   - when the storage slows down (load from outside ioband) or speeds up
//     again, the learned figures follow within 2 s;
//   - nothing is learned from a storage that is never saturated.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

TEST(ModelLearning, FollowsTheStorageSlowingDownAndSpeedingUpWithinTwoSeconds) {
  // Each alone first (the shape), then both; the storage runs at half speed
  // from 12 s to 20 s.
  const Workload reader{64, 1, 4 * KiB, 0, ""};
  const Workload writer{16, 0, MiB, 1, ""};
  Scenario s;
  s.name = "slow-down";
  s.storage = vm_disk_knee();
  s.storage.slowdowns = {{12 * kSecond, 20 * kSecond, 0.5}};
  s.devices = {0, 1};
  s.clients = {workload_client("reader-solo", 0, reader, 0, 3 * kSecond), workload_client("writer-solo", 1, writer, 3 * kSecond, 6 * kSecond),
               workload_client("reader", 0, reader, 6 * kSecond, kNever), workload_client("writer", 1, writer, 6 * kSecond, kNever)};
  std::vector<std::pair<Nanos, double>> iops;  // learned random-read IOPS, every 100 ms
  for (Nanos t = 100 * kMilli; t < 30 * kSecond; t += 100 * kMilli) {
    s.actions.push_back({t, [&iops, t](qos::DeviceGroup& g) {
                           iops.emplace_back(t, g.learned_device_model().read_rand_iops);
                         }});
  }
  s.duration = 30 * kSecond;
  Result r = simulate(s);
  auto at = [&](Nanos t) {
    for (const auto& [when, value] : iops) {
      if (when >= t) return value;
    }
    return 0.0;
  };
  const double before = at(11900 * kMilli);
  printf("learned random-read IOPS: %.0f at 11.9 s, %.0f at 14 s, %.0f at 19.9 s, %.0f at 22 s (storage: 60600, "
         "half speed in [12 s, 20 s))\n",
         before, at(14 * kSecond), at(19900 * kMilli), at(22 * kSecond));
  EXPECT_NEAR(before, 60'600, 0.1 * 60'600);
  EXPECT_NEAR(at(14 * kSecond) / before, 0.5, 0.1);
  EXPECT_NEAR(at(19900 * kMilli) / before, 0.5, 0.1);
  EXPECT_NEAR(at(22 * kSecond) / before, 1.0, 0.1);
  // Shares do not move with the storage's speed: device time 50/50 in
  // every second around both changes.
  for (Nanos t = 8 * kSecond; t < 24 * kSecond; t += kSecond) {
    const double reader = r.client("reader").device_time(t, t + kSecond);
    const double writer = r.client("writer").device_time(t, t + kSecond);
    EXPECT_NEAR(100 * reader / (reader + writer), 50, 5) << "second " << t / kSecond;
  }
}

TEST(ModelLearning, LearnsNothingFromStorageThatIsNeverSaturated) {
  Scenario s;
  s.name = "shallow";
  s.storage = vm_disk_knee();
  s.clients = {closed_loop("reader", 0, qos::kDefaultGroup, 2), closed_loop("other", 0, qos::kDefaultGroup, 2)};
  qos::DeviceModel learned;
  s.actions = {{9 * kSecond, [&learned](qos::DeviceGroup& g) { learned = g.learned_device_model(); }}};
  s.duration = 10 * kSecond;
  simulate(s);
  EXPECT_EQ(learned, qos::kDefaultDeviceModel);
}

}  // namespace
}  // namespace ioband::sim
