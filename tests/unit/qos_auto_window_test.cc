// The io_limit auto rule (src/qos/auto_window.h), driven directly with
// service times: slow start, additive increase, multiplicative decrease, the
// rate exemption, the probe of s_min and the bounds.
#include <gtest/gtest.h>

#include "qos/auto_window.h"

namespace ioband::qos::detail {
namespace {

constexpr Nanos kMs = 1'000'000;

struct Driver {
  AutoWindow window;
  Nanos now = 0;
  std::uint32_t floor = 4;
  std::uint32_t cap = 128;

  Driver() { window.reset(floor, cap, now); }
  std::uint32_t w() const { return window.window(floor, cap); }
  // One 50 ms interval of `n` completions of `service` each, the window held
  // back (full) or not.
  void interval(std::uint32_t n, Nanos service, bool full = true) {
    if (full) window.held_back();
    for (std::uint32_t i = 1; i <= n; ++i) {
      Nanos at = now + AutoWindow::kInterval * i / n;
      window.completed(at - service, at, floor, cap);
    }
    now += AutoWindow::kInterval;
  }
};

TEST(QosAutoWindow, SlowStartThenHalvesOnTheFirstSlowInterval) {
  Driver d;
  EXPECT_EQ(d.w(), 4u);
  d.interval(40, kMs);
  EXPECT_EQ(d.w(), 8u);
  d.interval(80, kMs);
  EXPECT_EQ(d.w(), 16u);
  d.interval(80, 2 * kMs);  // latency doubled, rate did not rise: overshot
  EXPECT_EQ(d.w(), 8u);
  d.interval(80, kMs);  // additive from here
  EXPECT_EQ(d.w(), 9u);
  d.interval(80, kMs);
  EXPECT_EQ(d.w(), 10u);
}

TEST(QosAutoWindow, GrowsOnlyWhenTheWindowWasFull) {
  Driver d;
  d.interval(40, kMs, false);
  d.interval(40, kMs, false);
  EXPECT_EQ(d.w(), 4u);
}

TEST(QosAutoWindow, ShrinksGentlyWhenTheStorageQueuesWithoutMoreRate) {
  Driver d;
  for (int i = 0; i < 6; ++i) d.interval(400, kMs);  // slow start up to the cap
  EXPECT_EQ(d.w(), 128u);
  d.interval(400, 2 * kMs);  // ends slow start: halves
  EXPECT_EQ(d.w(), 64u);
  d.interval(400, 3 * kMs);  // > 2 s_min, same rate: - W/8
  EXPECT_EQ(d.w(), 56u);
  d.interval(400, 3 * kMs);
  EXPECT_EQ(d.w(), 49u);
  d.interval(480, 3 * kMs);  // the rate rose: hold
  EXPECT_EQ(d.w(), 49u);
  d.interval(480, 1800 * 1000);  // between 1.5 and 2 s_min: hold
  EXPECT_EQ(d.w(), 49u);
  for (int i = 0; i < 100; ++i) d.interval(480, 5 * kMs);
  EXPECT_EQ(d.w(), d.floor);  // never below io_throttle
}

TEST(QosAutoWindow, ProbesAStaleMinimum) {
  Driver d;
  d.interval(40, kMs);
  d.interval(80, kMs);
  d.interval(80, kMs);
  d.interval(80, 2 * kMs);  // slow start ends
  const std::uint32_t before = d.w();
  EXPECT_EQ(d.window.s_min(), kMs);
  // The storage became slower for good (s = 4 ms): > 2 s_min, so W shrinks
  // to the floor until s_min expires...
  while (d.now < AutoWindow::kHorizon / 2) d.interval(80, 4 * kMs);
  EXPECT_EQ(d.w(), d.floor);
  // ... until s_min, older than the horizon, is re-measured by a probe.
  while (d.window.s_min() != 4 * kMs && d.now < 2 * AutoWindow::kHorizon) d.interval(80, 4 * kMs);
  EXPECT_EQ(d.window.s_min(), 4 * kMs);
  EXPECT_LE(d.now, AutoWindow::kHorizon + 10 * AutoWindow::kInterval);
  for (int i = 0; i < 20; ++i) d.interval(80, 4 * kMs);
  EXPECT_GT(d.w(), d.floor);  // and it grows again
  EXPECT_LE(d.w(), before + 20);
}

TEST(QosAutoWindow, TheProbeHalvesTheWindowForOneInterval) {
  Driver d;
  for (int i = 0; i < 5; ++i) d.interval(400, kMs);
  d.interval(400, 2 * kMs);
  const std::uint32_t steady = d.w();
  // Latency 1.75 s_min: hold; s_min is never refreshed.
  while (d.w() == steady && d.now < 2 * AutoWindow::kHorizon) d.interval(400, 1750 * 1000);
  EXPECT_EQ(d.w(), steady / 2);
  EXPECT_GE(d.now, AutoWindow::kHorizon);
  EXPECT_LE(d.now, AutoWindow::kHorizon + 10 * AutoWindow::kInterval);
  EXPECT_EQ(d.window.s_min(), kMs);
  d.interval(400, 1750 * 1000);
  EXPECT_EQ(d.w(), steady);
  EXPECT_EQ(d.window.s_min(), 1750 * 1000);  // re-measured
}

TEST(QosAutoWindow, BoundsFollowTheSettings) {
  Driver d;
  for (int i = 0; i < 6; ++i) d.interval(400, kMs);
  EXPECT_EQ(d.window.window(4, 128), 128u);
  EXPECT_EQ(d.window.window(4, 32), 32u);   // io_limit lowered: the new cap at once
  EXPECT_EQ(d.window.window(200, 128), 200u);  // io_throttle above the window: the floor
}

}  // namespace
}  // namespace ioband::qos::detail
