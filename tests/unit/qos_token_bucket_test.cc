// The leaky bucket and the limit set, with a fake clock (nanoseconds passed in).
#include <gtest/gtest.h>

#include "qos/token_bucket.h"

namespace ioband::qos {
namespace {

constexpr Nanos kSecond = 1'000'000'000;

TEST(TokenBucket, DrainsExactlyAtItsRate) {
  TokenBucket bucket(1000, 0);  // 1000 units a second, no slack
  bucket.advance(0);
  bucket.charge(1000);
  EXPECT_FALSE(bucket.allows());
  EXPECT_EQ(bucket.available_at(0), kSecond);
  // Drain in awkward steps: no unit is lost to rounding.
  for (Nanos t = 333'333; t < kSecond; t += 333'333) bucket.advance(t);
  bucket.advance(kSecond);
  EXPECT_EQ(bucket.level(), 0u);
  EXPECT_TRUE(bucket.allows());
}

TEST(TokenBucket, AvailableAtIsTheFirstInstantItAllows) {
  TokenBucket bucket(3, 1);  // 3 a second, 1 of slack
  bucket.advance(0);
  bucket.charge(5);  // level 5: must drain 4 -> 4/3 s
  Nanos at = bucket.available_at(0);
  EXPECT_EQ(at, (4 * kSecond + 2) / 3);
  TokenBucket copy = bucket;
  copy.advance(at - 1);
  EXPECT_FALSE(copy.allows());
  bucket.advance(at);
  EXPECT_TRUE(bucket.allows());
}

// Leaving room for others (a limit keeping tokens, device_group.cc): the
// request waits until the level is `spare` below the capacity, or at most
// until the bucket is empty (waiting longer would waste its drain).
TEST(TokenBucket, LeavingRoomWaitsForItOrForAnEmptyBucket) {
  TokenBucket bucket(1000, 10);  // 1000 a second, 10 of slack
  bucket.advance(0);
  bucket.charge(12);
  EXPECT_EQ(bucket.available_at(0, 0), bucket.available_at(0));
  EXPECT_EQ(bucket.available_at(0), 2 * kSecond / 1000);        // level 12 -> 10
  EXPECT_EQ(bucket.available_at(0, 4), 6 * kSecond / 1000);     // -> 6
  EXPECT_EQ(bucket.available_at(0, 50), 12 * kSecond / 1000);   // more than the slack: -> 0
  bucket.advance(6 * kSecond / 1000);
  EXPECT_EQ(bucket.available_at(6 * kSecond / 1000, 4), 6 * kSecond / 1000);
}

TEST(TokenBucket, TimeGoingBackwardsIsIgnored) {
  TokenBucket bucket(1000, 0);
  bucket.advance(kSecond);
  bucket.charge(10);
  bucket.advance(0);
  EXPECT_EQ(bucket.level(), 10u);
}

TEST(TokenBucket, LargeRatesAndLongGapsDoNotOverflow) {
  TokenBucket bucket(std::uint64_t{1} << 40, std::uint64_t{1} << 40);
  bucket.advance(0);
  bucket.charge(std::uint64_t{1} << 50);
  bucket.advance(Nanos{1} << 62);
  EXPECT_EQ(bucket.level(), 0u);
}

Limits iops(std::uint64_t rate, std::uint64_t max = 0, std::uint64_t length = 1) {
  Limits limits;
  limits.iops_total = {rate, max, length};
  return limits;
}

// Passes as many requests as the limits allow at `now`; returns how many.
int pass_all(LimitState& state, Nanos now, Direction direction = Direction::read, std::uint32_t bytes = 4096,
             int cap = 1'000'000) {
  int passed = 0;
  while (passed < cap && state.available_at(direction, now) <= now) {
    state.charge(direction, bytes, now);
    ++passed;
  }
  return passed;
}

TEST(LimitState, RateWithoutBurstAllowsTenPercentSlack) {
  LimitState state(iops(1000));
  // capacity 100 requests: 101 pass at once (the one that fills it to 101).
  EXPECT_EQ(pass_all(state, 0), 101);
  // Then one request per millisecond.
  EXPECT_EQ(pass_all(state, 1'000'000), 1);
  EXPECT_EQ(pass_all(state, 10'000'000), 9);
}

TEST(LimitState, BurstLastsMaxLengthSeconds) {
  LimitState state(iops(2000, 4000, 5));
  // Drive a greedy client in 1 ms steps for 20 s and count per second.
  std::vector<int> per_second(20, 0);
  for (Nanos t = 0; t < 20 * kSecond; t += 1'000'000) per_second[static_cast<std::size_t>(t / kSecond)] += pass_all(state, t);
  // Burst bucket: 400 at once, then 4000/s; sustained bucket of (4000 - 2000) * 5
  // fills after 4.8 s; then 2000/s.
  EXPECT_NEAR(per_second[0], 4400, 5);
  for (int s = 1; s < 4; ++s) EXPECT_NEAR(per_second[s], 4000, 2) << s;
  for (int s = 6; s < 20; ++s) EXPECT_NEAR(per_second[s], 2000, 2) << s;
  int total = 0;
  for (int n : per_second) total += n;
  EXPECT_NEAR(total, 2000 * 20 + 10000, 2);
}

TEST(LimitState, IopsSizeCountsLargeRequestsAsSeveral) {
  Limits limits = iops(100);
  limits.iops_size = 4096;
  LimitState state(limits);
  EXPECT_EQ(state.iops_units(512), kIopsUnit);
  EXPECT_EQ(state.iops_units(4096), kIopsUnit);
  EXPECT_EQ(state.iops_units(16384), 4 * kIopsUnit);
  EXPECT_EQ(state.iops_units(6144), kIopsUnit * 3 / 2);
  // capacity 10 requests; 16 KiB requests count 4: 3 pass (levels 4, 8, 12).
  EXPECT_EQ(pass_all(state, 0, Direction::read, 16384), 3);
}

TEST(LimitState, ReadAndWriteLimitsAreSeparateTotalIsShared) {
  Limits limits;
  limits.iops_read = {100, 0, 1};
  limits.iops_write = {10, 0, 1};
  LimitState state(limits);
  EXPECT_EQ(pass_all(state, 0, Direction::write), 2);  // capacity 1 -> 2 pass
  EXPECT_EQ(pass_all(state, 0, Direction::read), 11);
  bool specific = false;
  EXPECT_GT(state.available_at(Direction::write, 0, &specific), 0);
  EXPECT_TRUE(specific);

  Limits total;
  total.iops_total = {100, 0, 1};
  LimitState shared(total);
  EXPECT_EQ(pass_all(shared, 0, Direction::write, 4096, 5), 5);
  EXPECT_EQ(pass_all(shared, 0, Direction::read), 6);
  EXPECT_GT(shared.available_at(Direction::read, 0, &specific), 0);
  EXPECT_FALSE(specific);
}

TEST(LimitState, BytesPerSecond) {
  Limits limits;
  limits.bps_total = {1 << 20, 0, 1};  // 1 MiB/s, 102 KiB of slack
  LimitState state(limits);
  int passed = 0;
  for (Nanos t = 0; t < 10 * kSecond; t += 10'000'000) passed += pass_all(state, t, Direction::write, 65536);
  // 10 MiB in 10 s of 64 KiB requests = 160, plus the slack (2 requests).
  EXPECT_NEAR(passed, 162, 1);
}

TEST(LimitState, ReconfigureKeepsTheDebt) {
  LimitState state(iops(10));
  EXPECT_EQ(pass_all(state, 0), 2);
  state.configure(iops(1000));
  // Level 2 requests at 1000/s: free again within 2 ms, but not at once.
  EXPECT_EQ(pass_all(state, 0), 99);
}

}  // namespace
}  // namespace ioband::qos
