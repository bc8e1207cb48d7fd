// The tree (qos/tree.h) through DeviceGroup: hweight over active siblings,
// the effective weight fair charges, activity as requests come and go,
// shares for status, and the checks on tenants.
#include <gtest/gtest.h>

#include <vector>

#include "qos/device_group.h"
#include "qos/fair_policy.h"
#include "qos/tree.h"

namespace ioband::qos {
namespace {

TimePoint at_ms(int ms) { return TimePoint() + std::chrono::hours(1) + std::chrono::milliseconds(ms); }

Request make_request(DeviceId device, GroupId group) {
  Request r;
  r.device = device;
  r.group = group;
  r.bytes = 4096;
  return r;
}

TEST(TreeMath, TheEffectiveWeightIsTheProductOfTheHweightsTimesTheRootSum) {
  detail::Tenant tenant;
  tenant.weight = 300;
  detail::DeviceNode a, b;
  detail::Tenants::place(a, &tenant, 200);
  detail::Tenants::place(b, &tenant, 100);
  EXPECT_EQ(tenant.devices, 2u);
  EXPECT_EQ(tenant.weight_sum, 300u);
  EXPECT_EQ(tenant.active_weight, 0u);
  detail::leaf_active(a, 200);
  detail::leaf_active(a, 300);
  EXPECT_EQ(a.active_leaf_weight, 500u);
  EXPECT_EQ(tenant.active_devices, 1u);
  EXPECT_EQ(tenant.active_weight, 200u);
  // Alone in the tenant: e = 300 * 200/200 * 200/500 = 120, step = c * 2^16 / 120.
  const Cost cost = 1'000'000;
  EXPECT_EQ(detail::tree_advance(cost, 200, a), static_cast<std::int64_t>((cost << 16) / 120));
  detail::leaf_active(b, 100);
  // With b active: e = 300 * 200/300 * 200/500 = 80.
  EXPECT_EQ(detail::tree_advance(cost, 200, a), static_cast<std::int64_t>((cost << 16) / 80));
  // The leaf of b: e = 300 * 100/300 * 100/100 = 100, the same step as a flat weight of 100.
  EXPECT_EQ(detail::tree_advance(cost, 100, b), detail::FairPolicy::advance(cost, 100));
  // A device whose last leaf goes idle lingers in the tenant's sums until
  // its linger ends (the device group ends it kLinger later); one that
  // comes back meanwhile never left them.
  EXPECT_TRUE(detail::leaf_idle(b, 100, 0));
  EXPECT_TRUE(b.lingering);
  EXPECT_EQ(tenant.active_weight, 300u);
  EXPECT_EQ(detail::tree_advance(cost, 200, a), static_cast<std::int64_t>((cost << 16) / 80));
  detail::leaf_active(b, 100);
  EXPECT_FALSE(b.lingering);
  EXPECT_EQ(tenant.active_devices, 2u);
  EXPECT_EQ(tenant.active_weight, 300u);
  EXPECT_TRUE(detail::leaf_idle(b, 100, 0));
  detail::device_idle(b);
  EXPECT_EQ(tenant.active_weight, 200u);
  EXPECT_FALSE(detail::leaf_idle(a, 300, 0));
  EXPECT_TRUE(detail::leaf_idle(a, 200, 0));
  detail::device_idle(a);
  EXPECT_EQ(tenant.active_devices, 0u);
  EXPECT_EQ(tenant.active_weight, 0u);
  detail::Tenants::place(a, nullptr, kDefaultWeight);
  EXPECT_EQ(tenant.devices, 1u);
  EXPECT_EQ(tenant.weight_sum, 100u);
}

TEST(TreeMath, ExtremeWeightsStayInRange) {
  detail::Tenant tenant;
  tenant.weight = 1;
  detail::DeviceNode node;
  detail::Tenants::place(node, &tenant, 1);
  detail::leaf_active(node, 1);
  detail::leaf_active(node, kMaxWeight);
  const std::int64_t step = detail::tree_advance(Cost{1} << 39, 1, node);
  EXPECT_EQ(step, std::int64_t{1} << 52);  // clamped, never negative
  EXPECT_GE(detail::tree_advance(0, kMaxWeight, node), 1);
}

TEST(Tree, TenantsAreChecked) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  EXPECT_EQ(g.add_tenant(1, 0).message(), "a tenant's weight must be between 1 and 10000, not 0");
  EXPECT_FALSE(g.add_tenant(1, 10'001));
  ASSERT_TRUE(g.add_tenant(1, 10'000));
  EXPECT_EQ(g.add_tenant(1, 5).message(), "tenant 1 already exists");
  EXPECT_EQ(g.set_device_tenant(0, 2, 100).message(), "tenant 2 does not exist");
  EXPECT_EQ(g.set_device_tenant(0, 1, 0).message(), "a device's weight must be between 1 and 10000, not 0");
  EXPECT_EQ(g.set_device_tenant(7, 1, 100).message(), "device 7 does not exist");
  ASSERT_TRUE(g.set_device_tenant(0, 1, 100));
  EXPECT_EQ(g.device_tenant(0), std::optional<TenantId>(1));
  EXPECT_EQ(g.remove_tenant(1).message(), "tenant 1 still has 1 device(s)");
  // The token policies do not order by shares.
  EXPECT_NE(g.set_policy(Policy::weight).message().find("device 0 is in tenant 1"), std::string::npos);
  EXPECT_EQ(g.policy(), Policy::fair);
  EXPECT_TRUE(g.set_policy(Policy::range_bw));
  Limits bad;
  bad.iops_total.max = 10;
  EXPECT_FALSE(g.set_tenant_limits(1, bad));
  EXPECT_EQ(g.tenant_limits(1), Limits{});
  // Removing the device takes it out of its tenant.
  ASSERT_TRUE(g.remove_device(0));
  EXPECT_TRUE(g.remove_tenant(1));
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.set_policy(Policy::weight));
  ASSERT_TRUE(g.add_tenant(1, 100));
  EXPECT_NE(g.set_device_tenant(0, 1, 100).message().find("policy weight"), std::string::npos);
  EXPECT_EQ(g.device_tenant(0), std::nullopt);
}

// Tenant A (300): d0 (200) {default 100, g1 300}, d1 (100) {default 100}; d2 outside {default 200}.
void make(DeviceGroup& g) {
  for (DeviceId d = 0; d < 3; ++d) ASSERT_TRUE(g.add_device(d));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.set_weight(0, 1, 300));
  ASSERT_TRUE(g.set_weight(2, kDefaultGroup, 200));
  ASSERT_TRUE(g.add_tenant(1, 300));
  ASSERT_TRUE(g.set_device_tenant(0, 1, 200));
  ASSERT_TRUE(g.set_device_tenant(1, 1, 100));
}

TEST(Tree, SharesFollowActivity) {
  DeviceGroup g;
  make(g);
  // Configured: root 300 + 200; A's devices 200:100; d0's groups 100:300.
  NodeShare tenant = *g.tenant_share(1);
  EXPECT_DOUBLE_EQ(tenant.configured, 0.6);
  EXPECT_FALSE(tenant.active);
  EXPECT_EQ(tenant.effective, 0);
  NodeShare g1 = *g.group_share(0, 1);
  EXPECT_DOUBLE_EQ(g1.configured, 0.75);
  EXPECT_DOUBLE_EQ(g1.configured_path, 0.6 * 2 / 3 * 0.75);
  EXPECT_DOUBLE_EQ(g.device_share(2)->configured, 0.4);

  // g1 of d0 and d2 busy: the tenant has all it gets (300 of 500), d0 all of A's, g1 all of d0's.
  Request r1 = make_request(0, 1), r2 = make_request(2, kDefaultGroup);
  g.enqueue(&r1, at_ms(0));
  g.enqueue(&r2, at_ms(0));
  g1 = *g.group_share(0, 1);
  EXPECT_TRUE(g1.active);
  EXPECT_DOUBLE_EQ(g1.effective, 1.0);
  EXPECT_DOUBLE_EQ(g1.effective_path, 0.6);
  EXPECT_DOUBLE_EQ(g.group_share(2, kDefaultGroup)->effective_path, 0.4);
  // d1 becomes active: d0 keeps 2/3 of A.
  Request r3 = make_request(1, kDefaultGroup);
  g.enqueue(&r3, at_ms(0));
  EXPECT_DOUBLE_EQ(g.group_share(0, 1)->effective_path, 0.6 * 2 / 3);
  EXPECT_DOUBLE_EQ(g.device_share(1)->effective_path, 0.6 / 3);
  // In flight still counts as active; completion makes it idle. (The
  // lightest group waits a while beside the heavier ones, shallow as it is:
  // the anticipation, anticipation.h. The clock follows the scheduler.)
  std::vector<Request*> dispatched;
  TimePoint now = at_ms(1);
  while (dispatched.size() < 3) {
    Decision d = g.next(now);
    ASSERT_NE(d.kind, Decision::Kind::empty);
    if (d.kind == Decision::Kind::wait) {
      ASSERT_LT(d.until, at_ms(1000)) << "held for good";
      now = d.until;
      continue;
    }
    dispatched.push_back(d.request);
  }
  EXPECT_TRUE(g.device_share(1)->active);
  g.complete(&r3, now + std::chrono::milliseconds(1));
  EXPECT_FALSE(g.device_share(1)->active);
  // d1 lingers in A's sum for kLinger (tree.h): a shallow client's gap
  // between two requests does not hand its share to d0.
  EXPECT_DOUBLE_EQ(g.group_share(0, 1)->effective_path, 0.6 * 2 / 3);
  (void)g.next(now + std::chrono::milliseconds(1) + std::chrono::nanoseconds(detail::kLinger - 1));
  EXPECT_DOUBLE_EQ(g.group_share(0, 1)->effective_path, 0.6 * 2 / 3);
  (void)g.next(now + std::chrono::milliseconds(1) + std::chrono::nanoseconds(detail::kLinger));
  EXPECT_DOUBLE_EQ(g.group_share(0, 1)->effective_path, 0.6);
  // A cancelled request leaves its group idle too.
  Request r4 = make_request(1, kDefaultGroup);
  g.enqueue(&r4, now + std::chrono::milliseconds(12));
  EXPECT_TRUE(g.device_share(1)->active);
  EXPECT_TRUE(g.cancel(&r4));
  EXPECT_FALSE(g.device_share(1)->active);
  g.complete(&r1, now + std::chrono::milliseconds(13));
  g.complete(&r2, now + std::chrono::milliseconds(13));
  EXPECT_TRUE(g.tenant_share(1)->active);  // lingering
  (void)g.next(now + std::chrono::milliseconds(13) + std::chrono::nanoseconds(detail::kLinger));
  EXPECT_FALSE(g.tenant_share(1)->active);
}

TEST(Tree, DetachHandsTheQueueAndTheActivityToTheDefaultGroup) {
  DeviceGroup g;
  make(g);
  Request r1 = make_request(0, 1);
  g.enqueue(&r1, at_ms(0));
  EXPECT_TRUE(g.group_share(0, 1)->active);
  ASSERT_TRUE(g.detach(0, 1));
  NodeShare fallback = *g.group_share(0, kDefaultGroup);
  EXPECT_TRUE(fallback.active);
  EXPECT_DOUBLE_EQ(fallback.effective, 1.0);
  EXPECT_DOUBLE_EQ(fallback.configured, 1.0);
  Decision d = g.next(at_ms(1));
  ASSERT_EQ(d.kind, Decision::Kind::dispatch);
  g.complete(d.request, at_ms(2));
  (void)g.next(at_ms(2) + std::chrono::nanoseconds(detail::kLinger));
  EXPECT_FALSE(g.tenant_share(1)->active);
}

// The order: two devices of one tenant at 3:1 and a device outside it with
// the tenant's weight get 3/8, 1/8 and 1/2 of the dispatches.
TEST(Tree, TheOrderFollowsTheTree) {
  DeviceGroup g;
  for (DeviceId d = 0; d < 3; ++d) ASSERT_TRUE(g.add_device(d));
  ASSERT_TRUE(g.set_io_throttle(0));
  ASSERT_TRUE(g.set_io_limit(1));  // one at a time: the order alone decides
  g.set_io_limit_auto(false);
  ASSERT_TRUE(g.add_tenant(1, 100));
  ASSERT_TRUE(g.set_device_tenant(0, 1, 300));
  ASSERT_TRUE(g.set_device_tenant(1, 1, 100));
  std::vector<Request> requests;
  requests.reserve(3 * 400);
  for (DeviceId d = 0; d < 3; ++d) {
    for (int i = 0; i < 400; ++i) requests.push_back(make_request(d, kDefaultGroup));
  }
  for (Request& r : requests) g.enqueue(&r, at_ms(0));
  int count[3] = {};
  for (int i = 0; i < 800; ++i) {
    Decision d = g.next(at_ms(1 + i));
    ASSERT_EQ(d.kind, Decision::Kind::dispatch);
    ++count[d.request->device];
    g.complete(d.request, at_ms(1 + i));
  }
  EXPECT_NEAR(count[0], 300, 2);
  EXPECT_NEAR(count[1], 100, 2);
  EXPECT_NEAR(count[2], 400, 2);
}

}  // namespace
}  // namespace ioband::qos
