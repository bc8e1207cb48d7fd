// Work conservation: when a group goes idle, the others take its share and
// keep the storage at least 98 % busy; when it comes back it gets its share
// again at once without taking over the storage (STYLE.md point 6).
#include <gtest/gtest.h>

#include "sim/scenarios.h"

namespace ioband::sim {
namespace {

void run(qos::Policy policy) {
  Result result = simulate(idle_group(policy));
  const char* name = qos::to_string(policy).data();
  double before = result.utilization(kSecond, 10 * kSecond);
  double idle = result.utilization(10 * kSecond, 20 * kSecond);
  double after = result.utilization(20 * kSecond, 30 * kSecond);
  std::vector<double> s1 = shares(result, {"a", "b", "c"}, kSecond, 10 * kSecond);
  std::vector<double> s2 = shares(result, {"b", "c"}, 11 * kSecond, 20 * kSecond);
  std::vector<double> s3 = shares(result, {"a-again", "b", "c"}, 21 * kSecond, 30 * kSecond);
  // The first second after a comes back: it gets its share, not more.
  std::vector<double> back = shares(result, {"a-again", "b", "c"}, 20 * kSecond, 21 * kSecond);
  printf("%s: utilization %.4f / %.4f (a idle) / %.4f; shares %.1f/%.1f/%.1f, idle %.1f/%.1f, after %.1f/%.1f/%.1f, "
         "first second back %.1f/%.1f/%.1f\n",
         name, before, idle, after, s1[0], s1[1], s1[2], s2[0], s2[1], s3[0], s3[1], s3[2], back[0], back[1], back[2]);
  EXPECT_GE(before, 0.98);
  EXPECT_GE(idle, 0.98);
  EXPECT_GE(after, 0.98);
  EXPECT_NEAR(s1[0], 50, 1);
  EXPECT_NEAR(s2[0], 50, 1);
  EXPECT_NEAR(s3[0], 50, 1);
  if (policy == qos::Policy::fair) {
    EXPECT_NEAR(back[0], 50, 5);
  }
}

TEST(WorkConserving, Fair) { run(qos::Policy::fair); }
TEST(WorkConserving, Weight) { run(qos::Policy::weight); }
TEST(WorkConserving, WeightIosize) { run(qos::Policy::weight_iosize); }
TEST(WorkConserving, RangeBw) { run(qos::Policy::range_bw); }

}  // namespace
}  // namespace ioband::sim
