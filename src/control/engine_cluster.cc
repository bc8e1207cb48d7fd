// The engine's part of cluster tenants (docs/cluster.md): on the control
// thread, it measures the load of each cluster tenant on this node, hands
// it to the agent (cluster/agent.h) to publish, and applies what the agent
// read back: this node's share of each tenant's limit, and the tenant's
// settings as etcd holds them. The agent's thread does all the talking to
// etcd; here nothing waits on the network except a `tenant` command that
// writes a cluster tenant's settings (bounded by Agent::put_settings).
#include <cmath>
#include <set>

#include "control/engine.h"
#include "control/format.h"
#include "control/state_file.h"
#include "io/log.h"

namespace ioband::control {

using nlohmann::json;

namespace {

qos::Rate scaled(const qos::Rate& rate, double share) {
  if (!rate.limited()) return rate;
  qos::Rate out = rate;
  // Never 0: a zero rate means "unlimited".
  out.rate = std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(static_cast<double>(rate.rate) * share)));
  if (rate.max != 0) {
    out.max = std::max<uint64_t>(out.rate, static_cast<uint64_t>(std::llround(static_cast<double>(rate.max) * share)));
  }
  return out;
}

// The tighter of a tenant's own rate and its part of the capacity.
qos::Rate tighter(const qos::Rate& own, const qos::Rate& part) {
  if (!part.limited()) return own;
  if (!own.limited()) return part;
  return own.rate <= part.rate ? own : part;
}

constexpr qos::Rate qos::Limits::*kRates[] = {&qos::Limits::iops_total, &qos::Limits::iops_read,
                                              &qos::Limits::iops_write, &qos::Limits::bps_total,
                                              &qos::Limits::bps_read,   &qos::Limits::bps_write};

// A tenant counts as active for the capacity's split with this much demand
// (mean requests queued or in flight) on the nodes together.
constexpr double kActiveDemand = 0.05;
// ... or this many requests per second against a capacity in IOPS: a tenant
// at a low rate holds few requests at a time, but it uses the capacity (its
// want is its usage).
constexpr double kActiveUsage = 1;

}  // namespace

qos::Limits Engine::enforced_limits(const TenantState& tenant) {
  if (!tenant.cluster) return tenant.limits;
  qos::Limits limits = tenant.limits;
  for (auto rate : kRates) limits.*rate = tighter(limits.*rate, tenant.cluster_capacity.*rate);
  if (limits.unlimited()) return limits;
  const double share = std::clamp(tenant.cluster_share, 0.0, 1.0);
  for (auto rate : kRates) limits.*rate = scaled(limits.*rate, share);
  return limits;
}

Reply Engine::tenant_capacity(const TenantCommand& command) {
  auto refused = [](const std::string& why) { return Reply::failure(Error::refused("tenant capacity: " + why)); };
  if (cluster_ == nullptr) {
    return refused("the capacity is shared by cluster tenants: needs iobandd started with --etcd URL[,URL...] --node NAME");
  }
  Reply reply;
  if (!command.clear_limits && command.limits.empty()) {
    const cluster::Agent::Snapshot snapshot = cluster_->snapshot();
    qos::Limits limits;
    if (snapshot.capacity) {
      if (auto why = cluster_capacity_from_text(*snapshot.capacity, limits)) return refused("etcd holds " + *why);
    }
    const json shown = limits_to_json(limits);
    reply.text = "capacity " + (limits.unlimited() ? std::string("none") : shown.dump()) + "\n";
    reply.data = {{"capacity", limits.unlimited() ? json(nullptr) : shown}, {"connected", snapshot.connected}};
    return reply;
  }
  qos::Limits limits;
  for (const auto& [key, value] : command.limits) {
    if (qos::Status status = qos::set_limit_key(limits, key, value); !status) return refused(status.message());
  }
  if (qos::Status status = qos::validate(limits); !status) return refused(status.message());
  if (limits.reserves() || limits.latency_target_us != 0) {
    return refused("a capacity holds rates only (iops-*, bps-*), not reservations or latency targets");
  }
  const std::optional<std::string> text =
      command.clear_limits ? std::nullopt : std::optional<std::string>(cluster_capacity_to_text(limits));
  if (std::string error = cluster_->put_capacity(text); !error.empty()) return refused("etcd: " + error);
  reply.text = "capacity " + (command.clear_limits ? std::string("none") : limits_to_json(limits).dump()) + "\n";
  reply.data = {{"capacity", command.clear_limits ? json(nullptr) : limits_to_json(limits)}};
  return reply;
}

std::string Engine::cluster_command(const std::string& name, const TenantCommand& command, const TenantState* before,
                                    TenantState& after) {
  const bool was = before != nullptr && before->cluster;
  if (command.cluster) after.cluster = *command.cluster;
  if (!after.cluster) {
    after.cluster_share = 1;
    return {};
  }
  if (cluster_ == nullptr) return "cluster on needs iobandd started with --etcd URL[,URL...] --node NAME";
  const bool given = (command.weight && !command.weight_device) || !command.limits.empty() || command.clear_limits;
  if (!was) after.cluster_share = cluster_->share(name).share;
  if (!was && !given) {
    // Joining: a tenant etcd already has keeps its settings.
    std::optional<std::string> text;
    if (std::string error = cluster_->get_settings(name, text); !error.empty()) return "etcd: " + error;
    if (text) {
      if (auto why = cluster_settings_from_text(*text, after.weight, after.limits)) {
        return "etcd holds settings of tenant " + name + " that this iobandd cannot read: " + *why;
      }
      return {};
    }
  }
  if (!was || given) {
    if (std::string error = cluster_->put_settings(name, cluster_settings_to_text(after.weight, after.limits));
        !error.empty()) {
      return "etcd: " + error;
    }
  }
  return {};
}

void Engine::cluster_tick() {
  if (cluster_ == nullptr) return;
  const auto now = std::chrono::steady_clock::now();
  const auto period = cluster_->options().period;
  std::map<std::string, cluster::TenantLoad> loads;
  std::map<std::string, ClusterLoad> kept;
  for (const auto& entry : state_.tenants) {
    const std::string& name = entry.first;
    const auto& tenant = entry.second;  // not a structured binding: clang 14 cannot capture one (make fuzz)
    if (!tenant.cluster) continue;
    ClusterSample sample{now, 0, 0};
    if (const std::optional<int> group_id = tenant_device_group(tenant)) {
      (void)call(*group_id, [&](qos::DeviceGroup& group) {
        for (const auto& [device_name, weight] : tenant.devices) {
          const DeviceState* device = find_device(device_name);
          if (device == nullptr) continue;
          sample.backlog += group.queued(device->device) + group.in_flight(device->device);
          for (qos::GroupId id : group.groups(device->device)) {
            if (auto observed = group.observation(device->device, id)) {
              for (const auto& op : observed->ops) sample.completed += op.requests;
            }
          }
        }
        return qos::Status{};
      });
    }
    ClusterLoad& window = kept[name];
    window = std::move(cluster_loads_[name]);
    // A device left the tenant: its counts went with it.
    if (!window.empty() && sample.completed < window.back().completed) window.clear();
    window.push_back(sample);
    while (window.size() > 1 && now - window[1].at >= period) window.pop_front();
    cluster::TenantLoad load;
    double backlog = 0;
    for (const ClusterSample& s : window) backlog += static_cast<double>(s.backlog);
    load.demand = backlog / static_cast<double>(window.size());
    const double seconds = std::chrono::duration<double>(now - window.front().at).count();
    if (seconds > 0) load.usage = static_cast<double>(sample.completed - window.front().completed) / seconds;
    load.share = tenant.cluster_share;
    if (auto part = cluster_parts_.find(name); part != cluster_parts_.end()) load.part = part->second;
    loads[name] = load;
  }
  cluster_loads_ = std::move(kept);
  cluster_->set_loads(std::move(loads));
  cluster_follow(cluster_->snapshot());
}

void Engine::cluster_follow(const cluster::Agent::Snapshot& snapshot) {
  // The capacity's part of every cluster tenant, water-filled by weight over
  // what the active ones use (cluster::capacity_split), from the settings
  // and the reports read.
  std::optional<qos::Limits> capacity;
  if (snapshot.capacity) {
    qos::Limits limits;
    if (auto why = cluster_capacity_from_text(*snapshot.capacity, limits)) {
      if (cluster_bad_settings_["*capacity"] != *snapshot.capacity) {
        log_line("cluster: etcd holds a capacity this iobandd cannot read (" + *why + "); ignoring it");
        cluster_bad_settings_["*capacity"] = *snapshot.capacity;
      }
    } else if (!limits.unlimited()) {
      capacity = limits;
    }
  }
  std::map<std::string, double> parts;
  std::set<std::string> active;
  if (capacity) {
    // Work-conserving against a capacity in IOPS: usage is counted in requests.
    const double iops = capacity->iops_total.limited() ? static_cast<double>(capacity->iops_total.rate) : 0;
    std::map<std::string, cluster::TenantWeight> weights;
    for (const auto& [name, text] : snapshot.settings) {
      uint32_t weight = 0;
      qos::Limits own;
      if (cluster_settings_from_text(text, weight, own)) continue;
      auto demand = snapshot.demand.find(name);
      cluster::TenantWeight& tenant = weights[name];
      tenant.weight = static_cast<double>(weight);
      if (auto usage = snapshot.usage.find(name); usage != snapshot.usage.end()) tenant.usage = usage->second;
      // By usage too only where the split follows usage: by weight alone, a
      // tenant at a trickle would take its whole weighted part from the others.
      tenant.active = (demand != snapshot.demand.end() && demand->second >= kActiveDemand) ||
                      (iops > 0 && tenant.usage >= kActiveUsage);
      if (auto part = snapshot.part.find(name); part != snapshot.part.end()) tenant.part = part->second;
      if (tenant.active) active.insert(name);
      if (own.iops_total.limited()) tenant.limit = static_cast<double>(own.iops_total.rate);
    }
    parts = cluster::capacity_split(weights, iops);
  }
  cluster_parts_.clear();
  for (auto& [name, tenant] : state_.tenants) {
    if (!tenant.cluster) continue;
    TenantState after = tenant;
    after.cluster_capacity = qos::Limits{};
    if (capacity && parts.contains(name)) {
      for (auto rate : kRates) after.cluster_capacity.*rate = scaled((*capacity).*rate, parts[name]);
      // Published for an active tenant only: an idle one's part is only what
      // it was told, and coming back it must count as wanting more.
      if (active.contains(name)) cluster_parts_[name] = parts[name];
    }
    if (snapshot.connected) {
      if (auto text = snapshot.settings.find(name); text != snapshot.settings.end()) {
        uint32_t weight = 0;
        qos::Limits limits;
        if (auto why = cluster_settings_from_text(text->second, weight, limits)) {
          if (cluster_bad_settings_[name] != text->second) {
            log_line("cluster: tenant " + name + ": etcd holds settings this iobandd cannot read (" + *why +
                     "); keeping the last ones");
            cluster_bad_settings_[name] = text->second;
          }
        } else {
          after.weight = weight;
          after.limits = limits;
        }
      }
    }
    if (auto share = snapshot.tenants.find(name); share != snapshot.tenants.end()) {
      after.cluster_share = share->second.share;
    }
    const bool settings_changed = after.weight != tenant.weight || after.limits != tenant.limits;
    if (!settings_changed && std::abs(after.cluster_share - tenant.cluster_share) < 1e-4 &&
        after.cluster_capacity == tenant.cluster_capacity) {
      continue;
    }
    if (qos::Status status = apply_tenant(&tenant, &after); !status) {
      (void)apply_tenant(&after, &tenant);
      log_line("cluster: tenant " + name + ": cannot apply " + (settings_changed ? "etcd's settings" : "its share") +
               ": " + status.message());
      continue;
    }
    tenant = after;
    if (settings_changed) {
      log_line("cluster: tenant " + name + ": settings from etcd applied (weight " + std::to_string(after.weight) + ")");
      if (std::string error = save(); !error.empty()) {
        log_line("cluster: tenant " + name + ": etcd's settings hold but cannot be saved: " + error);
      }
    }
  }
}

json Engine::cluster_json(const std::string& name, const TenantState& tenant) const {
  if (!tenant.cluster) return nullptr;
  json object = {{"share", tenant.cluster_share},
                 {"enforced_limits", limits_to_json(enforced_limits(tenant))},
                 {"capacity_part", tenant.cluster_capacity.unlimited() ? json(nullptr) : limits_to_json(tenant.cluster_capacity)}};
  if (cluster_ == nullptr) {
    object["mode"] = "off";
    object["etcd"] = {{"connected", false}, {"error", "iobandd was started without --etcd"}};
    return object;
  }
  const cluster::Agent::Snapshot snapshot = cluster_->snapshot();
  object["node"] = cluster_->options().node;
  object["mode"] = cluster::to_string(snapshot.mode);
  const cluster::TenantLoad load = snapshot.loads.contains(name) ? snapshot.loads.at(name) : cluster::TenantLoad{};
  object["demand"] = load.demand;
  object["usage"] = load.usage;
  if (auto share = snapshot.tenants.find(name); share != snapshot.tenants.end()) {
    object["cluster_rate"] = share->second.cluster_usage;
    object["cluster_demand"] = share->second.cluster_demand;
    object["nodes"] = share->second.nodes;
  } else {
    object["cluster_rate"] = nullptr;
    object["cluster_demand"] = nullptr;
    object["nodes"] = nullptr;
  }
  json shares = json::object();
  if (auto all = snapshot.shares.find(name); all != snapshot.shares.end()) {
    for (const auto& [node, share] : all->second) shares[node] = share;
  }
  object["shares"] = std::move(shares);
  object["etcd"] = {{"connected", snapshot.connected},
                    {"endpoint", snapshot.endpoint},
                    {"error", snapshot.error.empty() ? json(nullptr) : json(snapshot.error)}};
  return object;
}

}  // namespace ioband::control
