// The share rule of a cluster tenant: how a limit L held across the nodes of
// a cluster is split into local budgets, each enforced by the node's own
// token buckets (qos/tree.h's shared tenant limits), with no remote call per
// request. See docs/cluster.md for the rule's bound on overshoot.
//
// The math. Node i publishes its demand d_i >= 0 (the tenant's requests
// queued or in flight there, averaged over the publish period: under a
// common limit a node with twice the clients holds twice the backlog) and
// its usage u_i (requests completed per second). With n nodes taking part
// and a floor f = phi / n (phi in [0, 1], kDefaultFloor), the shares are the
// water-filling of 1 by demand above the floor:
//
//   s_i = max(f, R * d_i / D),   D = sum of d_j over the nodes not at the
//                                floor, R = 1 - f * (nodes at the floor)
//
// so sum s_i = 1 exactly, every node has at least f (a request arriving on
// an idle node goes at once, and its demand shows in the next round), and a
// tenant busy on one node gets 1 - (n-1) f of L there (phi = 0.1, n = 3:
// 93 %). With no demand anywhere the split is equal. Node i's budget is
// s_i * L: every rate and burst of the tenant's limit is scaled by s_i.
//
// Every node computes the shares from the same published reports (its own
// included, as published), so nodes that read the same revision of the
// store agree, and their budgets sum to L.
//
// Time. Nothing here reads a clock: `now` is passed in, and it is only ever
// compared with other times of the same node (a node's clock is never
// trusted across nodes: a report carries a sequence number, not a time).
//
// Faults (ClusterView):
//   - a node whose report is gone from the store (its lease expired) or
//     whose sequence number has not moved for `lease` of our time is gone;
//     its share goes to the others at the next computation;
//   - the store unreachable: the last shares hold (fail static); after
//     `fallback` without a successful read, each node takes an equal split
//     1 / m of the limit, m the nodes it last saw taking part (1 if it
//     never read the store: it then has only itself to go by);
//   - before its first read, a node takes phi of the limit: the others may
//     be using their whole shares;
//   - the store back: the next successful read computes shares again.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ioband::cluster {

using TimePoint = std::chrono::steady_clock::time_point;
using Duration = std::chrono::steady_clock::duration;

inline constexpr double kDefaultFloor = 0.1;  // phi: each node keeps at least phi / n

// One tenant's load on one node, as published.
struct TenantLoad {
  double demand = 0;  // mean requests queued or in flight over the period
  double usage = 0;   // requests completed per second
  double share = 0;   // the share the node applied (for status)
  double part = 0;    // the part of the shared capacity the node applied (0: none)
  friend bool operator==(const TenantLoad&, const TenantLoad&) = default;
};

// One node's report: every cluster tenant it serves.
struct NodeReport {
  std::string node;
  std::uint64_t sequence = 0;  // moves with each publication
  std::map<std::string, TenantLoad> tenants;
};

// The pure rule: demands in, shares out (same order), summing to 1. floor
// is phi in [0, 1]; negative or non-finite demands count as 0.
std::vector<double> water_fill(const std::vector<double>& demands, double floor = kDefaultFloor);

// Weights across nodes: a capacity shared by cluster tenants (docs/cluster.md,
// "Weights across nodes"), work-conserving: the capacity is water-filled by
// weight over what the active tenants (demand on some node) want.
//
// What a tenant wants is read from its usage, never asked: one that used
// less than kSatisfied of the part it had last period is satisfied and
// wants kHeadroom times its usage (room to grow by half before it counts as
// wanting more again, and for the noise of a rate counted over one period:
// a satisfied tenant sits at 1 / kHeadroom = 67 % of its part, well under
// kSatisfied); any other active tenant wants without bound, up to its own
// limit. Then, with lambda the level where
// the parts sum to 1:
//
//   c_T = min(want_T, lambda * W_T)
//
// and if every active tenant is satisfied below 1, the rest is spread by
// weight (so the parts of the active tenants always sum to 1). A tenant
// that wants more than it gets therefore never gets less than its weighted
// part W_T / (sum of W over the active tenants). An idle tenant is told
// the part it would have if it came back, against the active tenants'
// weights: W_T / (sum of W_U over the active U, plus W_T), so it starts at
// once and the others make room at the next read.
//
// Usage is in requests per second, so a want is known only against a
// capacity in IOPS (`capacity_iops`, iops-total); with 0 (no such key) or a
// tenant's last part unknown (0), the tenant counts as wanting without
// bound: the split is then by weight alone.
inline constexpr double kSatisfied = 0.85;
inline constexpr double kHeadroom = 1.5;
struct TenantWeight {
  double weight = 100;
  bool active = false;
  double usage = 0;  // requests per second on every node together, the last period
  double part = 0;   // the part of the capacity it had for that period (0: unknown)
  double limit = 0;  // its own IOPS limit (0: none)
};
std::map<std::string, double> capacity_split(const std::map<std::string, TenantWeight>& tenants,
                                             double capacity_iops = 0);

struct ShareOptions {
  Duration lease = std::chrono::seconds(2);       // a report that does not move for this long is gone
  Duration fallback = std::chrono::seconds(10);   // unreachable this long: equal split
  double floor = kDefaultFloor;
};

// How the shares of this node are decided now.
enum class ShareMode {
  alone,        // no successful read yet: the node takes phi (the floor) until one
  live,         // from the last successful read
  fail_static,  // the store is unreachable: the last shares hold
  equal_split,  // unreachable past `fallback`: 1 / (nodes last seen)
};
std::string_view to_string(ShareMode mode) noexcept;

// A tenant's share on this node, and what it was computed from.
struct TenantShare {
  double share = 1;         // of the cluster limit, on this node
  double cluster_usage = 0; // sum of the usage of the nodes taking part
  double cluster_demand = 0;
  double capacity_part = 0; // the largest part of the capacity a node applied (0: none)
  std::size_t nodes = 1;    // taking part (this one included)
  ShareMode mode = ShareMode::alone;
};

// What this node knows of the others: fed with each read of the store (or
// its failure), asked for a tenant's share. Single-threaded.
class ClusterView {
 public:
  ClusterView(std::string self, ShareOptions options = {});

  // A successful read of every node's report at `now`. The node's own
  // report may be missing (not yet published): `own` stands in for it.
  void observed(TimePoint now, const std::vector<NodeReport>& reports, const NodeReport& own);
  // A read (or a publication) failed at `now`.
  void unreachable(TimePoint now);

  ShareMode mode(TimePoint now) const noexcept;
  // The share of `tenant` on this node at `now`. A tenant missing from the
  // last read (this node took it on since): 1 / (nodes seen alive), until
  // the next read counts it.
  TenantShare share(TimePoint now, const std::string& tenant) const;
  // Every tenant's shares on every node of the last computation (status).
  const std::map<std::string, std::map<std::string, double>>& shares() const noexcept { return shares_; }
  // The nodes seen alive at the last successful read (this one included).
  std::vector<std::string> live_nodes() const;
  std::optional<TimePoint> last_success() const noexcept { return last_success_; }
  // The tenants' totals of the last computation (cluster demand and usage).
  const std::map<std::string, TenantShare>& totals() const noexcept { return totals_; }
  const ShareOptions& options() const noexcept { return options_; }

 private:
  struct Seen {
    std::uint64_t sequence = 0;
    TimePoint moved;  // our time when its sequence last changed
    NodeReport report;
  };
  void recompute();

  std::string self_;
  ShareOptions options_;
  std::map<std::string, Seen> nodes_;  // live at the last successful read
  std::optional<TimePoint> last_success_;
  std::optional<TimePoint> unreachable_since_;
  // tenant -> node -> share, and the tenant's totals, of the last read.
  std::map<std::string, std::map<std::string, double>> shares_;
  std::map<std::string, TenantShare> totals_;
};

}  // namespace ioband::cluster
