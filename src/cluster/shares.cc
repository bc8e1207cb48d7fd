#include "cluster/shares.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace ioband::cluster {

std::vector<double> water_fill(const std::vector<double>& demands, double floor) {
  const std::size_t n = demands.size();
  std::vector<double> shares(n, 0);
  if (n == 0) return shares;
  if (!(floor >= 0)) floor = 0;
  floor = std::min(floor, 1.0) / static_cast<double>(n);
  std::vector<double> demand(n);
  for (std::size_t i = 0; i < n; ++i) demand[i] = std::isfinite(demands[i]) && demands[i] > 0 ? demands[i] : 0;
  // Nodes move to the floor one round at a time; each round either fixes at
  // least one more node or ends, so at most n rounds.
  std::vector<bool> at_floor(n, false);
  std::size_t floored = 0;
  for (;;) {
    const double rest = 1 - floor * static_cast<double>(floored);
    double total = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!at_floor[i]) total += demand[i];
    }
    const std::size_t open = n - floored;
    bool moved = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (at_floor[i]) continue;
      const double share = total > 0 ? rest * demand[i] / total : rest / static_cast<double>(open);
      if (share < floor) {
        at_floor[i] = true;
        ++floored;
        moved = true;
      }
      shares[i] = share;
    }
    if (!moved) break;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (at_floor[i]) shares[i] = floor;
  }
  return shares;
}

std::map<std::string, double> capacity_split(const std::map<std::string, TenantWeight>& tenants,
                                             double capacity_iops) {
  constexpr double kUnbounded = std::numeric_limits<double>::infinity();
  // A satisfied tenant keeps at least this much (a part of 0 would be a
  // limit of 1 IOPS until the next read).
  constexpr double kLeastWant = 0.01;
  double active = 0;
  // The active tenants by how far their want reaches in units of weight.
  std::vector<std::pair<double, const std::string*>> wanting;
  std::map<std::string, double> wants;
  for (const auto& [name, tenant] : tenants) {
    if (!tenant.active || !(tenant.weight > 0)) continue;
    active += tenant.weight;
    double want = kUnbounded;
    if (capacity_iops > 0) {
      if (tenant.part > 0 && tenant.usage >= 0 && tenant.usage < kSatisfied * tenant.part * capacity_iops) {
        want = std::max(kHeadroom * tenant.usage / capacity_iops, kLeastWant);
      }
      if (tenant.limit > 0) want = std::min(want, tenant.limit / capacity_iops);
    }
    wants[name] = want;
    wanting.emplace_back(want / tenant.weight, &name);
  }
  std::sort(wanting.begin(), wanting.end());
  // Water-filling: the tenant wanting least per weight is served first; it
  // is held to its want if that is under the level the rest would give it.
  std::map<std::string, double> parts;
  double rest = 1;
  double weights = active;
  std::size_t served = 0;
  for (; served < wanting.size(); ++served) {
    const std::string& name = *wanting[served].second;
    const double weight = tenants.at(name).weight;
    const double want = wants[name];
    if (want > rest * weight / weights) break;
    parts[name] = want;
    rest -= want;
    weights -= weight;
  }
  for (std::size_t i = served; i < wanting.size(); ++i) {
    const std::string& name = *wanting[i].second;
    parts[name] = rest * tenants.at(name).weight / weights;
  }
  if (served == wanting.size() && rest > 0 && active > 0) {
    // Every active tenant is satisfied: the rest is spread by weight.
    for (const auto& [want, name] : wanting) parts[*name] += rest * tenants.at(*name).weight / active;
  }
  for (const auto& [name, tenant] : tenants) {
    if (parts.contains(name)) continue;
    const double weight = tenant.weight > 0 ? tenant.weight : 0;
    const double total = tenant.active ? active : active + weight;
    parts[name] = total > 0 ? weight / total : 0;
  }
  return parts;
}

std::string_view to_string(ShareMode mode) noexcept {
  switch (mode) {
    case ShareMode::alone: return "alone";
    case ShareMode::live: return "live";
    case ShareMode::fail_static: return "fail-static";
    case ShareMode::equal_split: return "equal-split";
  }
  return "?";
}

ClusterView::ClusterView(std::string self, ShareOptions options) : self_(std::move(self)), options_(options) {}

void ClusterView::observed(TimePoint now, const std::vector<NodeReport>& reports, const NodeReport& own) {
  std::map<std::string, Seen> live;
  for (const NodeReport& report : reports) {
    if (report.node == self_) continue;
    Seen seen{report.sequence, now, report};
    if (auto old = nodes_.find(report.node); old != nodes_.end() && old->second.sequence == report.sequence) {
      seen.moved = old->second.moved;
      // Still in the store but silent for a lease: its publisher is stuck or
      // its lease is about to go; either way it no longer takes part.
      if (now - seen.moved >= options_.lease) continue;
    }
    live.emplace(report.node, std::move(seen));
  }
  NodeReport mine = own;
  for (const NodeReport& report : reports) {
    if (report.node == self_) mine = report;  // as the others see it
  }
  mine.node = self_;
  live[self_] = Seen{mine.sequence, now, mine};
  nodes_ = std::move(live);
  last_success_ = now;
  unreachable_since_.reset();
  recompute();
}

void ClusterView::unreachable(TimePoint now) {
  if (!unreachable_since_) unreachable_since_ = now;
}

void ClusterView::recompute() {
  shares_.clear();
  totals_.clear();
  std::map<std::string, std::vector<std::pair<std::string, const TenantLoad*>>> by_tenant;
  for (const auto& [node, seen] : nodes_) {
    for (const auto& [tenant, load] : seen.report.tenants) by_tenant[tenant].emplace_back(node, &load);
  }
  for (const auto& [tenant, loads] : by_tenant) {
    std::vector<double> demands;
    TenantShare total;
    for (const auto& [node, load] : loads) {
      demands.push_back(load->demand);
      total.cluster_demand += load->demand;
      total.cluster_usage += load->usage;
      total.capacity_part = std::max(total.capacity_part, load->part);
    }
    const std::vector<double> shares = water_fill(demands, options_.floor);
    auto& out = shares_[tenant];
    for (std::size_t i = 0; i < loads.size(); ++i) out[loads[i].first] = shares[i];
    total.nodes = loads.size();
    total.share = out.contains(self_) ? out[self_] : 0;
    totals_[tenant] = total;
  }
}

ShareMode ClusterView::mode(TimePoint now) const noexcept {
  if (!last_success_) {
    return unreachable_since_ && now - *unreachable_since_ >= options_.fallback ? ShareMode::equal_split
                                                                                 : ShareMode::alone;
  }
  if (!unreachable_since_) return ShareMode::live;
  // Measured from the last success: a store that answered once and then
  // went away has been missing since then.
  return now - *last_success_ >= options_.fallback ? ShareMode::equal_split : ShareMode::fail_static;
}

TenantShare ClusterView::share(TimePoint now, const std::string& tenant) const {
  const ShareMode current = mode(now);
  TenantShare result;
  auto found = totals_.find(tenant);
  if (found != totals_.end() && found->second.share > 0) {
    result = found->second;
  } else {
    // Not counted yet (or this node did not serve it at the last read).
    result.nodes = found != totals_.end() ? found->second.nodes + 1 : std::max<std::size_t>(nodes_.size(), 1);
    result.share = 1 / static_cast<double>(result.nodes);
  }
  result.mode = current;
  if (current == ShareMode::equal_split) result.share = 1 / static_cast<double>(std::max<std::size_t>(result.nodes, 1));
  if (current == ShareMode::alone) {
    // Nothing read yet: the others may be taking their whole shares, so
    // start from the floor (phi of the limit) until the first read.
    result.share = std::clamp(options_.floor, 0.0, 1.0);
    result.nodes = 1;
  }
  return result;
}

std::vector<std::string> ClusterView::live_nodes() const {
  std::vector<std::string> names;
  for (const auto& [node, seen] : nodes_) names.push_back(node);
  return names;
}

}  // namespace ioband::cluster
