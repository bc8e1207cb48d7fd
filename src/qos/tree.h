// The tree of a device group: tenants above devices above groups.
//
//   device group (root)
//     ├── group of a device outside every tenant  (as without tenants: a leaf of the root)
//     └── tenant T  (weight W_T, optional shared limits)
//           └── device d  (weight w_d among T's devices)
//                 └── group g  (weight w_g, the dm-ioband weight)
//
// The math (cgroup v2's hweight). A node is active while any leaf below it
// has requests queued or in flight. A node's share of its parent is its
// weight over the sum of the weights of its ACTIVE siblings:
//
//   hw(n) = w_n / S_parent(n),   S_p = sum of w_c over the active children c of p
//   share(g) = hw(T) * hw(d) * hw(g)                     (product along the path)
//
// so a leaf that goes idle leaves its share to its siblings first, then to
// its parent's siblings. Weights are used exactly (200:300 is 40/60).
//
// A device whose last leaf goes idle stays in its tenant's active sum S_T
// for kLinger more (it "lingers"), and leaves it only if nothing came back
// meanwhile. A shallow client (1 deep) is idle between each completion and
// its next request; without the linger, every such gap lowered S_T, and the
// tags its siblings took meanwhile were steps cost * S_T / ... computed with
// the smaller S_T: cheaper, so they took more than their weight's part, and
// the shallow device less (bench/tree's QD32/QD4/QD1 split). The linger is
// far below the 100 ms in which an idle leaf's share must reach its
// siblings.
//
// How the order uses it. `fair` (start-time fair queueing, fair_policy.h)
// advances a group's tag by cost / weight. Under a tenant the weight is the
// group's effective weight in the root's units: its share times S_root, i.e.
//
//   e(g) = W_T * (w_d / S_T) * (w_g / S_d)
//
// S_root cancels (every leaf of the root is divided by it), so a group
// outside every tenant keeps e(g) = w_g and behaves exactly as before. e(g)
// is computed at each dispatch from the two sums on the path, which change in
// O(1) when a leaf becomes active or idle: there is nothing to recompute for
// the siblings, whatever their number. Between two dispatches the sums may
// change; SFQ's bound then holds per interval of constant sums, each group
// within one request of its share.
//
// Shared limits (QEMU's throttle groups). A tenant may carry a Limits value
// (limits.h): one set of buckets charged by every request of every device of
// the tenant, so the limit holds for the devices together. A request held by
// it parks its device (a read- or write-only limit, its group), and when the
// buckets allow again the tenant's groups go in the order of their tags: the
// tenant's weights, not the depth of each client, split the limit.
//
// A tenant's devices are in one device group (one storage): shares are
// shares of that storage's time.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "qos/cost.h"
#include "qos/policy.h"
#include "qos/reservation.h"
#include "qos/status.h"
#include "qos/token_bucket.h"

namespace ioband::qos {

using TenantId = std::uint32_t;
inline constexpr std::uint32_t kMaxTreeWeight = 10'000;  // tenants and devices in a tenant: 1..10000

// The policies whose order follows the tree's shares: those of fair's tags.
// dm-ioband's token policies (weight, weight-iosize) do not; tenants are
// refused under them.
constexpr bool orders_by_shares(Policy policy) noexcept { return policy == Policy::fair || policy == Policy::range_bw; }

// Shares of one node, for status: configured (over all siblings) and
// effective (over the active siblings, as the order applies it now), each
// of its parent and along the whole path from the root.
struct NodeShare {
  double configured = 0;       // w / sum of the siblings' weights
  double effective = 0;        // w / sum of the active siblings' weights; 0 while idle
  double configured_path = 0;  // product along the path
  double effective_path = 0;
  bool active = false;
};

namespace detail {

struct Tenant {
  TenantId id = 0;
  std::uint32_t weight = 100;
  std::uint32_t devices = 0;         // devices in it
  std::uint32_t active_devices = 0;
  std::uint64_t weight_sum = 0;      // of its devices
  std::uint64_t active_weight = 0;   // of its active devices: S_T
  std::uint32_t queued = 0;          // requests queued on its devices
  std::uint32_t in_flight = 0;       // and in flight
  LimitState limits;                 // shared by its devices
  GroupReservation reserve;          // shared by its devices (reservation.h)
  Nanos limit_paced_at = INT64_MIN;  // last time its limits held a request back
  // V_T: the largest start tag its groups dispatched (fair_policy.h), where
  // its groups come back from idle. Restarted from V when the tenant
  // becomes active, its limits change, or the policy's clock was rebased.
  std::int64_t vtime = 0;
  std::uint32_t vtime_rebases = 0;
  bool vtime_restart = true;
};

// The tree's part of an ioband device (kept in Device).
struct DeviceNode {
  Tenant* tenant = nullptr;             // null: its groups are leaves of the root
  std::uint32_t weight = 100;           // among the tenant's devices
  std::uint32_t active_leaves = 0;      // groups with requests queued or in flight
  std::uint64_t leaf_weight = 0;        // of all its groups
  std::uint64_t active_leaf_weight = 0; // of its active groups: S_d
  // No active leaf, but still counted in its tenant's S_T until
  // idle_at + kLinger (see above).
  bool lingering = false;
  Nanos idle_at = 0;
};

// How long a device without active leaves stays in its tenant's active sum:
// longer than a client's own time between a completion and its next request
// on a loaded machine (a few ms), far below the 100 ms in which an idle
// leaf's share must reach its siblings.
inline constexpr Nanos kLinger = 10'000'000;

// The device counts in its tenant's active sums (has active leaves, or lingers).
inline bool counts_active(const DeviceNode& node) noexcept { return node.active_leaves != 0 || node.lingering; }

// A leaf (group) of weight w becomes active or idle.
inline void leaf_active(DeviceNode& node, std::uint32_t weight) noexcept {
  node.active_leaf_weight += weight;
  if (node.active_leaves++ == 0 && node.tenant != nullptr) {
    if (node.lingering) {
      node.lingering = false;  // back within the linger: it never left the tenant's sums
      return;
    }
    if (node.tenant->active_devices++ == 0) node.tenant->vtime_restart = true;
    node.tenant->active_weight += node.weight;
  }
}
// Returns true when the device's last leaf went idle in a tenant: it now
// lingers, and the caller ends the linger (device_idle) once
// idle_at + kLinger has passed with the device still lingering.
inline bool leaf_idle(DeviceNode& node, std::uint32_t weight, Nanos now) noexcept {
  node.active_leaf_weight -= weight;
  if (--node.active_leaves == 0 && node.tenant != nullptr) {
    node.lingering = true;
    node.idle_at = now;
    return true;
  }
  return false;
}
// The linger is over: the device leaves its tenant's active sums.
inline void device_idle(DeviceNode& node) noexcept {
  node.lingering = false;
  --node.tenant->active_devices;
  node.tenant->active_weight -= node.weight;
}

// The fair tag step of a leaf of weight w on `node`: cost / e(g) in the
// fixed point of fair_policy.h (shift 16), at least 1. The leaf is active.
inline std::int64_t tree_advance(Cost cost, std::uint32_t weight, const DeviceNode& node) noexcept {
  const Tenant& tenant = *node.tenant;
  // One division: S_T * S_d over W_T * w_d * w_g (< 2^57, exact in a double's range).
  const double above = static_cast<double>(cost << 16) * static_cast<double>(tenant.active_weight) *
                       static_cast<double>(node.active_leaf_weight);
  const double below = static_cast<double>(std::uint64_t{tenant.weight} * node.weight * weight);
  const double step = above / below;
  if (!(step >= 1)) return 1;
  if (step > 0x1p52) return std::int64_t{1} << 52;
  return static_cast<std::int64_t>(step);
}

// A leaf's effective weight e(g) in the root's units, for comparing the
// weights of groups anywhere in the tree (the anticipation does): w_g
// outside every tenant, else W_T * (w_d / S_T) * (w_g / S_d). The sums are
// taken as if the leaf were active (`active`: it is, and counted in them),
// so that a group between two requests weighs what it will when it asks.
inline double effective_weight(std::uint32_t weight, bool active, const DeviceNode& node) noexcept {
  if (node.tenant == nullptr) return weight;
  const Tenant& tenant = *node.tenant;
  const std::uint64_t s_d = node.active_leaf_weight + (active ? 0 : weight);
  const std::uint64_t s_t = tenant.active_weight + (counts_active(node) ? 0 : node.weight);
  if (s_d == 0 || s_t == 0) return weight;
  return static_cast<double>(tenant.weight) * node.weight * weight / (static_cast<double>(s_t) * static_cast<double>(s_d));
}

// Where a group of `tenant` comes back from idle: V_T, not the device
// group's V. A tenant held back by its limits lags V, and so do its
// backlogged groups; one of its groups coming back at V would queue behind
// them until the lag is worked off (a 1-deep client of a limited tenant was
// starved by its 32-deep sibling). Within the tenant nothing is gained:
// V_T is where its other groups stand.
//
// A tenant without limits is held back by nothing but the order: V_T never
// falls below V. Otherwise a tenant that asks less than its share (a few
// shallow clients) lags V more and more, since its device lingers and V_T
// never restarts, and its groups come back ever further ahead of everyone:
// credit for the time they were away, which the idle rule refuses
// (fair_policy.h). A 4-deep reader in such a tenant went first at every
// request, as if it had a latency target (docs/hierarchy.md).
inline bool tenant_vtime_follows(const Tenant& tenant) noexcept { return tenant.vtime_restart || !tenant.limits.active(); }
inline std::int64_t tenant_vtime(Tenant& tenant, std::int64_t vtime, std::uint32_t rebases) noexcept {
  if (tenant.vtime_rebases != rebases) {
    tenant.vtime = vtime;
    tenant.vtime_rebases = rebases;
  } else if (tenant_vtime_follows(tenant)) {
    tenant.vtime = std::max(tenant.vtime, vtime);
  }
  tenant.vtime_restart = false;
  return tenant.vtime;
}

// The tenants of one device group.
class Tenants {
 public:
  Status add(TenantId id, std::uint32_t weight);
  // Refused while devices are in it.
  Status remove(TenantId id);
  Tenant* find(TenantId id) const noexcept;
  Status set_weight(TenantId id, std::uint32_t weight);
  template <typename Visit>
  void for_each(Visit visit) const {
    for (const auto& [id, tenant] : tenants_) visit(*tenant);
  }
  std::size_t size() const noexcept { return tenants_.size(); }

  // Moves a device (idle or not) into `tenant` (null: out of every tenant)
  // with `weight` among the tenant's devices.
  static void place(DeviceNode& node, Tenant* tenant, std::uint32_t weight) noexcept;

 private:
  std::map<TenantId, std::unique_ptr<Tenant>> tenants_;
};

Status check_tree_weight(std::uint32_t weight, const char* what);

}  // namespace detail
}  // namespace ioband::qos
