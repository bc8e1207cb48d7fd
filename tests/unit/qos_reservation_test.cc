// Reservations and latency targets at the qos layer: their keys, what is
// refused (and that a refusal changes nothing), admission at 90 % of the
// capacity, the reservation rule request by request, and the latency
// target's cap, with a fake clock.
#include <gtest/gtest.h>

#include <deque>

#include "qos/device_group.h"
#include "qos/limits.h"
#include "qos/reservation.h"

namespace ioband::qos {
namespace {

const TimePoint kStart = TimePoint() + std::chrono::hours(1);

Limits reserve(std::uint64_t iops, std::uint64_t bps = 0) {
  Limits limits;
  limits.reservation_iops = iops;
  limits.reservation_bps = bps;
  return limits;
}

// A device model whose capacity is 10,000 reserved IOPS (4 KiB random reads).
DeviceModel model_10k() {
  DeviceModel model;
  model.read_rand_iops = 10'000;
  return model;
}

TEST(ReservationKeys, AreLimitKeysWithTheirOwnChecks) {
  Limits limits;
  ASSERT_TRUE(set_limit_key(limits, "reservation-iops", 500));
  ASSERT_TRUE(set_limit_key(limits, "reservation-bps", 10'000'000));
  ASSERT_TRUE(set_limit_key(limits, "latency-target-us", 2000));
  ASSERT_TRUE(set_limit_key(limits, "latency-percentile-permille", 999));
  EXPECT_TRUE(validate(limits));
  EXPECT_TRUE(limits.unlimited());  // no rate limit among them
  EXPECT_FALSE(limits.empty());
  EXPECT_EQ(get_limit_key(limits, "reservation-iops"), 500u);

  Limits bad = limits;
  bad.latency_target_us = 5;
  EXPECT_EQ(validate(bad).message(), "latency-target must be from 10us to 10s, not 5us");
  bad = limits;
  bad.latency_percentile_permille = 400;
  EXPECT_EQ(validate(bad).message(), "latency-percentile must be from 50 to 99.9, not 40.0");
  bad = Limits{};
  bad.latency_percentile_permille = 990;
  EXPECT_NE(validate(bad).message().find("latency-percentile needs latency-target"), std::string::npos);
  bad = Limits{};
  bad.reservation_iops = std::uint64_t{1} << 31;
  EXPECT_NE(validate(bad).message().find("reservation-iops"), std::string::npos);
}

TEST(ReservationAdmission, RefusesPast90PercentNamingCapacityAndSumAndChangesNothing) {
  DeviceGroup g;
  ASSERT_TRUE(g.set_device_model(model_10k(), true));
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.attach(0, 2));
  ASSERT_TRUE(g.set_limits(0, 1, reserve(5000)));
  Status refused = g.set_limits(0, 2, reserve(4500));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.message(),
            "reservations would total 9500 IOPS (4 KiB random reads a second, in device time), "
            "above 90 % of the calibrated capacity of 10000 IOPS (at most 9000 may be reserved); nothing was changed");
  EXPECT_FALSE(g.reservation(0, 2).has_value());
  EXPECT_EQ(g.limits(0, 2), Limits{});
  EXPECT_NEAR(g.reservations().reserved_iops, 5000, 0.5);
  // Exactly 90 % is allowed; changing group 1's own reservation counts it once.
  ASSERT_TRUE(g.set_limits(0, 2, reserve(4000)));
  ASSERT_TRUE(g.set_limits(0, 1, reserve(5000)));
  EXPECT_FALSE(g.set_limits(0, 1, reserve(5001)));
  EXPECT_NEAR(g.reservations().reserved_iops, 9000, 0.5);
  // bytes/s count as the device time of large sequential reads: 100 MB/s on a
  // 500 MB/s model is a fifth of the storage, 2000 IOPS of it.
  ASSERT_TRUE(g.set_limits(0, 2, reserve(0, 100'000'000)));
  const auto status = g.reservation(0, 2);
  ASSERT_TRUE(status.has_value());
  EXPECT_NEAR(status->wanted_iops, 2000, 20);
  // Clearing frees the room; a whole device carries a latency target too.
  ASSERT_TRUE(g.set_limits(0, 1, Limits{}));
  EXPECT_FALSE(g.reservation(0, 1).has_value());
  Limits target;
  target.latency_target_us = 2000;
  ASSERT_TRUE(g.set_limits(0, std::nullopt, target));
  ASSERT_TRUE(g.device_latency_target(0).has_value());
  EXPECT_EQ(g.device_latency_target(0)->target_ns, 2'000'000);
  EXPECT_FALSE(g.latency_target(0, 1).has_value());
  ASSERT_TRUE(g.set_limits(0, std::nullopt, Limits{}));
  EXPECT_FALSE(g.device_latency_target(0).has_value());
  // A detached group's reservation leaves with it.
  ASSERT_TRUE(g.set_limits(0, 2, reserve(8000)));
  ASSERT_TRUE(g.detach(0, 2));
  EXPECT_EQ(g.reservations().reserved_iops, 0);
  ASSERT_TRUE(g.set_limits(0, 1, reserve(9000)));
}

TEST(ReservationLevels, ANodeCoversItsChildrenAndAdmissionSumsWhatTheTreeNeeds) {
  DeviceGroup g;
  ASSERT_TRUE(g.set_device_model(model_10k(), true));
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.add_device(1));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.attach(1, 1));
  // A device reserving 5000 covers its group's 3000: 5000 are needed.
  ASSERT_TRUE(g.set_limits(0, std::nullopt, reserve(5000)));
  ASSERT_TRUE(g.set_limits(0, 1, reserve(3000)));
  EXPECT_NEAR(g.reservations().reserved_iops, 5000, 0.5);
  ASSERT_TRUE(g.device_reservation(0).has_value());
  EXPECT_NEAR(g.device_reservation(0)->wanted_iops, 5000, 0.5);
  EXPECT_FALSE(g.device_reservation(1).has_value());
  // Its group asking more than the device: the group's is what counts.
  ASSERT_TRUE(g.set_limits(0, 1, reserve(6000)));
  EXPECT_NEAR(g.reservations().reserved_iops, 6000, 0.5);
  ASSERT_TRUE(g.set_limits(0, 1, reserve(3000)));
  // Beside it, another device's group: the sum is refused past 90 %, naming both.
  Status refused = g.set_limits(1, 1, reserve(4500));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("reservations would total 9500 IOPS"), std::string::npos) << refused.message();
  EXPECT_NE(refused.message().find("calibrated capacity of 10000 IOPS"), std::string::npos) << refused.message();
  EXPECT_FALSE(g.reservation(1, 1).has_value());
  EXPECT_NEAR(g.reservations().reserved_iops, 5000, 0.5);
  // A device's own reservation is refused the same way, and changes nothing.
  EXPECT_FALSE(g.set_limits(1, std::nullopt, reserve(4500)));
  EXPECT_FALSE(g.device_reservation(1).has_value());
  EXPECT_EQ(g.limits(1, std::nullopt), Limits{});

  // A tenant over both devices reserving 8000 covers device 0's 5000 and
  // what device 1's group reserves up to 3000 more.
  ASSERT_TRUE(g.add_tenant(1, 100));
  ASSERT_TRUE(g.set_device_tenant(0, 1));
  ASSERT_TRUE(g.set_device_tenant(1, 1));
  Status tenant_set = g.set_tenant_limits(1, reserve(8000));
  ASSERT_TRUE(tenant_set) << tenant_set.message();
  EXPECT_NEAR(g.reservations().reserved_iops, 8000, 0.5);
  ASSERT_TRUE(g.set_limits(1, 1, reserve(3500)));
  EXPECT_NEAR(g.reservations().reserved_iops, 8500, 0.5);
  refused = g.set_tenant_limits(1, reserve(9500));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("reservations would total 9500 IOPS"), std::string::npos) << refused.message();
  ASSERT_TRUE(g.tenant_reservation(1).has_value());
  EXPECT_NEAR(g.tenant_reservation(1)->wanted_iops, 8000, 0.5);
  EXPECT_EQ(g.tenant_limits(1)->reservation_iops, 8000u);
  Limits target;
  target.latency_target_us = 2000;
  target.reservation_iops = 8000;
  ASSERT_TRUE(g.set_tenant_limits(1, target));
  ASSERT_TRUE(g.tenant_latency_target(1).has_value());
  EXPECT_EQ(g.tenant_latency_target(1)->permille, 990u);
  EXPECT_NEAR(g.tenant_reservation(1)->wanted_iops, 8000, 0.5);
  EXPECT_FALSE(g.reservations().factor < 1);
  // Taking device 0 out of the tenant is never refused: its 5000 now count
  // beside the tenant's 8000, above what the storage gives, so every
  // reservation is scaled down alike.
  ASSERT_TRUE(g.set_device_tenant(0, std::nullopt));
  EXPECT_NEAR(g.reservations().reserved_iops, 13000, 0.5);
  EXPECT_NEAR(g.reservations().factor, 9000.0 / 13000, 1e-3);
  EXPECT_TRUE(g.tenant_reservation(1)->scaled);
  EXPECT_NEAR(g.tenant_reservation(1)->effective_iops, 8000 * 9000.0 / 13000, 1);
  // Removing the device takes its reservation (and its group's) away.
  ASSERT_TRUE(g.remove_device(0));
  EXPECT_NEAR(g.reservations().reserved_iops, 8000, 0.5);
  ASSERT_TRUE(g.set_device_tenant(1, std::nullopt));
  ASSERT_TRUE(g.remove_tenant(1));
  EXPECT_NEAR(g.reservations().reserved_iops, 3500, 0.5);
}

TEST(ReservationRule, AReservedGroupBehindItsTagGoesFirstWhateverTheWeights) {
  DeviceGroup g;
  ASSERT_TRUE(g.set_device_model(model_10k(), true));
  ASSERT_TRUE(g.set_io_throttle(0));
  ASSERT_TRUE(g.set_io_limit(1));  // one at a time: the order is visible
  g.set_io_limit_auto(false);
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.attach(0, 2));
  ASSERT_TRUE(g.set_weight(0, 1, 1));
  ASSERT_TRUE(g.set_weight(0, 2, 1000));
  ASSERT_TRUE(g.set_limits(0, 1, reserve(1000)));  // one 4 KiB read every ms
  std::deque<Request> requests;
  auto add = [&](GroupId group, TimePoint now) {
    requests.emplace_back();
    requests.back().device = 0;
    requests.back().group = group;
    requests.back().bytes = 4096;
    g.enqueue(&requests.back(), now);
  };
  for (int i = 0; i < 200; ++i) {
    add(1, kStart);
    add(2, kStart);
  }
  // Over 20 ms, one request completing every 100 us: group 1 gets its 20
  // (one each ms, by reservation), group 2 the rest by weight.
  int reserved = 0, by_reservation = 0, total = 0;
  TimePoint now = kStart;
  for (int step = 0; step < 200; ++step) {
    Decision d = g.next(now);
    ASSERT_EQ(d.kind, Decision::Kind::dispatch);
    reserved += d.request->group == 1;
    by_reservation += d.rule == Rule::reservation;
    ++total;
    now += std::chrono::microseconds(100);
    g.complete(d.request, now);
  }
  EXPECT_GE(reserved, 20);
  EXPECT_LE(reserved, 22);
  EXPECT_GE(by_reservation, 19);
  const auto status = g.reservation(0, 1);
  ASSERT_TRUE(status.has_value());
  EXPECT_FALSE(status->scaled);
  EXPECT_NEAR(status->effective_iops, 1000, 1);
}

// `met` says whether the group got its reservation or asked for less. A
// client whose requests are all in the storage (its queue in ioband empty)
// is not asking for less; one idle a twentieth of the second or more is.
TEST(ReservationStatus, MetOnlyWhenServedOrIdleNotWhenItsQueueDrains) {
  auto run = [](Nanos idle_each) {
    detail::GroupReservation r;
    r.iops = 1000;
    r.wanted_ns = r.rate_ns = 100'000'000;  // 100 ms of device time a second
    Nanos now = 3'600'000'000'000;
    // 2.5 s, a request of 100 us of device time every 2 ms: half of it.
    for (const Nanos end = now + 2'500'000'000; now < end; now += 2'000'000) {
      if (idle_each != 0) r.from_idle(now);
      r.charge(100'000, false, now);
      if (idle_each != 0) r.went_idle(now + 2'000'000 - idle_each);
    }
    r.roll(now);
    return r;
  };
  const detail::GroupReservation deep = run(0);
  EXPECT_NEAR(deep.last_served_ns, 50'000'000, 200'000);
  EXPECT_FALSE(deep.met());
  // Idle 90 us of every 2 ms: 4.5 % of the window, not asking for less.
  EXPECT_FALSE(run(90'000).met());
  // Idle 200 us of every 2 ms: 10 %, it asked for less.
  EXPECT_TRUE(run(200'000).met());
}

TEST(LatencyTarget, ShowsNothingUntilMeasuredAndCapsTheOthersWhenMissed) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.attach(0, 2));
  Limits target;
  target.latency_target_us = 1000;
  ASSERT_TRUE(g.set_limits(0, 1, target));
  auto status = g.latency_target(0, 1);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->target_ns, 1'000'000);
  EXPECT_EQ(status->permille, 990u);
  EXPECT_EQ(status->percentile_ns, -1);
  EXPECT_EQ(g.latency_cap_on(0, 2), 0u);

  // Group 2 keeps 20 in flight; group 1's requests take 5 ms: missed, and
  // group 2 gets a cap below what it had.
  std::deque<Request> requests;
  auto make = [&](GroupId group) {
    requests.emplace_back();
    requests.back().device = 0;
    requests.back().group = group;
    requests.back().bytes = 4096;
    return &requests.back();
  };
  TimePoint now = kStart;
  std::vector<Request*> others;
  for (int i = 0; i < 20; ++i) {
    Request* r = make(2);
    g.enqueue(r, now);
    Decision d = g.next(now);
    ASSERT_EQ(d.kind, Decision::Kind::dispatch);
    others.push_back(d.request);
  }
  for (int i = 0; i < 40; ++i) {
    Request* r = make(1);
    g.enqueue(r, now);
    Decision d = g.next(now);
    ASSERT_EQ(d.kind, Decision::Kind::dispatch);
    ASSERT_EQ(d.request, r);
    now += std::chrono::milliseconds(5);
    g.complete(r, now);
  }
  status = g.latency_target(0, 1);
  EXPECT_FALSE(status->met);
  EXPECT_EQ(status->percentile_ns, 5'000'000);
  const std::uint32_t cap = g.latency_cap_on(0, 2);
  EXPECT_GT(cap, 0u);
  EXPECT_LT(cap, 20u);
  EXPECT_EQ(g.latency_cap_on(0, 1), 0u);  // never capped by its own target
  // Group 2 is at or above its cap: a new request of it waits.
  Request* waiting = make(2);
  g.enqueue(waiting, now);
  Decision d = g.next(now);
  EXPECT_NE(d.kind, Decision::Kind::dispatch);
  // Removing the target lifts the cap.
  ASSERT_TRUE(g.set_limits(0, 1, Limits{}));
  EXPECT_FALSE(g.latency_target(0, 1).has_value());
  EXPECT_EQ(g.latency_cap_on(0, 2), 0u);
  for (Request* r : others) g.complete(r, now);
}

}  // namespace
}  // namespace ioband::qos
