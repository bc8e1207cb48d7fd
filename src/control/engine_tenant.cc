// The engine's tenants (control/tenant.h for the language, qos/tree.h for
// what the scheduler does with them).
//
// The model (State::tenants) names devices; the qos layer holds a tenant in
// the device group of its devices once it has one, and drops it with its
// last. Each change is applied to the qos layer, then saved; a change that
// cannot be saved is taken back (apply_tenant from after to before), as
// message does.
#include <algorithm>

#include "control/engine.h"
#include "control/format.h"
#include "control/tenant.h"
#include "control/usage.h"
#include "io/log.h"

namespace ioband::control {

using nlohmann::json;

namespace {

std::string limits_text(const qos::Limits& limits) {
  std::string text;
  for (std::string_view key : qos::kLimitKeys) {
    const uint64_t value = qos::get_limit_key(limits, key).value_or(0);
    if (value != 0 && !(key.ends_with("-max-length") && value == 1)) {
      text += (text.empty() ? "" : ",") + std::string(key) + "=" + std::to_string(value);
    }
  }
  return text;
}

// "acme: weight 300 devices vm1:200,vm2:100 limit iops-total=2000"
std::string tenant_line(const std::string& name, const TenantState& tenant, bool with_name) {
  std::string line = with_name ? name + ": " : std::string();
  line += "weight " + std::to_string(tenant.weight) + " devices ";
  std::string devices;
  for (const auto& [device, weight] : tenant.devices) {
    devices += (devices.empty() ? "" : ",") + device + ":" + std::to_string(weight);
  }
  line += devices.empty() ? "none" : devices;
  const std::string limits = limits_text(tenant.limits);
  line += " limit " + (limits.empty() ? std::string("none") : limits);
  if (tenant.cluster) {
    char share[32];
    std::snprintf(share, sizeof share, "%.3f", tenant.cluster_share);
    line += std::string(" cluster on (share here ") + share + ")";
  }
  return line;
}

json tenant_json(const std::string& name, const TenantState& tenant) {
  json devices = json::array();
  for (const auto& [device, weight] : tenant.devices) devices.push_back({{"name", device}, {"weight", weight}});
  return {{"name", name},
          {"weight", tenant.weight},
          {"limits", limits_to_json(tenant.limits)},
          {"devices", std::move(devices)}};
}

json share_json(const std::optional<qos::NodeShare>& share) {
  if (!share) return nullptr;
  return {{"configured", share->configured},
          {"effective", share->effective},
          {"configured_path", share->configured_path},
          {"effective_path", share->effective_path},
          {"active", share->active}};
}

}  // namespace

void Engine::forget_in_tenants(State& state, const std::string& device) {
  for (auto& [name, tenant] : state.tenants) tenant.devices.erase(device);
}

std::optional<int> Engine::tenant_device_group(const TenantState& tenant) const {
  for (const DeviceState& device : state_.devices) {
    if (tenant.devices.contains(device.name)) return device.device_group_id;
  }
  return std::nullopt;
}

qos::Status Engine::apply_tenant(const TenantState* before, const TenantState* after, bool admitted) {
  qos::Status result;
  auto keep = [&](qos::Status step) {
    if (result && !step) result = step;
  };
  // -1: no device served (std::optional here trips GCC 12's maybe-uninitialized).
  const int group_before = before ? tenant_device_group(*before).value_or(-1) : -1;
  const int group_after = after ? tenant_device_group(*after).value_or(-1) : -1;
  const qos::TenantId id = before ? before->id : after->id;
  auto served = [&](const std::string& name) -> const DeviceState* {
    for (const DeviceState& device : state_.devices) {
      if (device.name == name) return &device;
    }
    return nullptr;
  };
  if (group_before >= 0) {
    const bool same_group = group_after == group_before;
    keep(call(group_before, [&](qos::DeviceGroup& group) {
      qos::Status status;
      for (const auto& [name, weight] : before->devices) {
        const DeviceState* device = served(name);
        if (device == nullptr || (same_group && after->devices.contains(name))) continue;
        if (qos::Status step = group.set_device_tenant(device->device, std::nullopt); status && !step) status = step;
      }
      if (!same_group) {
        if (qos::Status step = group.remove_tenant(id); status && !step) status = step;
      }
      return status;
    }));
  }
  if (group_after >= 0) {
    const bool same_group = group_after == group_before;
    keep(call(group_after, [&](qos::DeviceGroup& group) -> qos::Status {
      if (!same_group) {
        if (qos::Status status = group.add_tenant(id, after->weight); !status) return status;
      } else if (before->weight != after->weight) {
        if (qos::Status status = group.set_tenant_weight(id, after->weight); !status) return status;
      }
      if (!same_group || enforced_limits(*before) != enforced_limits(*after)) {
        if (qos::Status status = group.set_tenant_limits(id, enforced_limits(*after), admitted); !status) return status;
      }
      for (const auto& [name, weight] : after->devices) {
        const DeviceState* device = served(name);
        if (device == nullptr) continue;
        if (same_group) {
          auto old = before->devices.find(name);
          if (old != before->devices.end() && old->second == weight) continue;
        }
        if (qos::Status status = group.set_device_tenant(device->device, id, weight); !status) return status;
      }
      return {};
    }));
  }
  return result;
}

Reply Engine::tenant(const Request& request) {
  TenantCommand command;
  if (auto error = parse_tenant_command(request.args, command)) return Reply::failure(*error);
  if (command.verb == TenantCommand::Verb::list) return tenant_list(command.name);
  if (command.verb == TenantCommand::Verb::capacity) return tenant_capacity(command);
  const std::string prefix = "tenant " + std::string(verb_name(command.verb)) + " " + command.name + ": ";
  auto refused = [&](const std::string& why) { return Reply::failure(Error::refused(prefix + why)); };

  auto found = state_.tenants.find(command.name);
  const bool exists = found != state_.tenants.end();
  if (command.verb == TenantCommand::Verb::create && exists) return refused("tenant " + command.name + " already exists");
  if (command.verb != TenantCommand::Verb::create && !exists) {
    return refused("no tenant named " + command.name + " (create it first: iobandctl tenant create " + command.name +
                   ")");
  }
  const std::optional<TenantState> before = exists ? std::optional<TenantState>(found->second) : std::nullopt;
  std::optional<TenantState> after = before;
  std::string text;
  switch (command.verb) {
    case TenantCommand::Verb::create:
      after = TenantState{};
      after->id = next_tenant_id_++;
      [[fallthrough]];
    case TenantCommand::Verb::set: {
      if (command.weight_device) {
        auto device = after->devices.find(*command.weight_device);
        if (device == after->devices.end()) {
          return refused(*command.weight_device + " is not in tenant " + command.name + " (attach it first)");
        }
        device->second = *command.weight;
      } else if (command.weight) {
        after->weight = *command.weight;
      }
      if (command.clear_limits) after->limits = {};
      for (const auto& [key, value] : command.limits) {
        if (qos::Status status = qos::set_limit_key(after->limits, key, value); !status) return refused(status.message());
      }
      if (qos::Status status = qos::validate(after->limits); !status) return refused("limit: " + status.message());
      if ((command.cluster ? *command.cluster : after->cluster) && after->limits.reserves()) {
        return refused("limit: a cluster tenant's reservation is not shared among the nodes yet; reserve on its "
                       "devices (message NAME 0 limit reservation-iops=...) instead");
      }
      if ((command.cluster ? *command.cluster : after->cluster) && after->limits.latency_target_us != 0) {
        return refused("limit: a cluster tenant's latency target is not kept across the nodes yet; set it on its "
                       "devices (message NAME 0 limit latency-target=...) instead");
      }
      if (command.cluster || after->cluster) {
        if (std::string why = cluster_command(command.name, command, before ? &*before : nullptr, *after); !why.empty()) {
          return refused(why);
        }
      }
      break;
    }
    case TenantCommand::Verb::attach: {
      const DeviceState* device = find_device(command.device);
      if (device == nullptr) return refused("no ioband device named " + command.device);
      for (const auto& [name, other] : state_.tenants) {
        if (other.devices.contains(command.device)) {
          return refused(command.device + " is already in tenant " + name +
                         (name == command.name ? std::string() : " (detach it there first)"));
        }
      }
      if (auto group = tenant_device_group(*after); group && *group != device->device_group_id) {
        return refused(command.device + " is in device group " + std::to_string(device->device_group_id) +
                       ", the devices of tenant " + command.name + " in device group " + std::to_string(*group) +
                       "; a tenant's devices share one storage (one device group)");
      }
      const qos::Policy policy = state_.device_groups.at(device->device_group_id).policy;
      if (!qos::orders_by_shares(policy)) {
        return refused("device group " + std::to_string(device->device_group_id) + " has policy " +
                       std::string(qos::to_string(policy)) +
                       ", which does not order by tenant shares (iobandctl message " + command.device +
                       " 0 policy fair)");
      }
      after->devices.emplace(command.device, command.weight.value_or(qos::kDefaultWeight));
      break;
    }
    case TenantCommand::Verb::detach:
      if (!after->devices.contains(command.device)) return refused(command.device + " is not in tenant " + command.name);
      after->devices.erase(command.device);
      break;
    case TenantCommand::Verb::remove: after.reset(); break;
    case TenantCommand::Verb::list:
    case TenantCommand::Verb::capacity: break;
  }

  const TenantState* from = before ? &*before : nullptr;
  const TenantState* to = after ? &*after : nullptr;
  if (qos::Status status = apply_tenant(from, to, false); !status) {
    (void)apply_tenant(to, from);
    return refused(status.message());
  }
  if (after) {
    state_.tenants[command.name] = *after;
  } else {
    state_.tenants.erase(command.name);
  }
  if (std::string error = save(); !error.empty()) {
    const qos::Status undone = apply_tenant(to, from);
    if (before) {
      state_.tenants[command.name] = *before;
    } else {
      state_.tenants.erase(command.name);
    }
    return refused("not changed, the state cannot be saved: " + error +
                   (undone ? std::string() : " (and undoing it failed: " + undone.message() + ")"));
  }
  Reply reply;
  if (after) {
    reply.text = tenant_line(command.name, *after, true) + "\n";
    reply.data = {{"tenant", tenant_json(command.name, *after)}};
    if (after->cluster) reply.data["tenant"]["cluster"] = cluster_json(command.name, *after);
  } else {
    reply.data = {{"removed", command.name}};
  }
  return reply;
}

Reply Engine::tenant_list(const std::string& name) {
  if (!name.empty() && !state_.tenants.contains(name)) {
    return Reply::failure(Error::refused("tenant list: no tenant named " + name));
  }
  Reply reply;
  json array = json::array();
  for (const auto& [tenant_name, tenant] : state_.tenants) {
    if (!name.empty() && tenant_name != name) continue;
    reply.text += tenant_line(tenant_name, tenant, name.empty()) + "\n";
    json object = tenant_json(tenant_name, tenant);
    if (auto group = tenant_device_group(tenant)) object["device_group_id"] = *group;
    if (tenant.cluster) object["cluster"] = cluster_json(tenant_name, tenant);
    array.push_back(std::move(object));
  }
  if (state_.tenants.empty()) reply.text = "No tenants found\n";
  reply.data = {{"tenants", std::move(array)}};
  return reply;
}

std::string Engine::restore_tenants(const State& saved) {
  for (const auto& [name, saved_tenant] : saved.tenants) {
    TenantState tenant = saved_tenant;
    tenant.id = next_tenant_id_++;
    if (tenant.cluster) {
      // Until the first read of etcd counts it (docs/cluster.md).
      tenant.cluster_share = cluster_ != nullptr ? cluster_->share(name).share : 1;
      if (cluster_ == nullptr) {
        log_line("tenant " + name + " is cluster-wide but iobandd has no --etcd: its whole limit holds on this node");
      }
    }
    if (qos::Status status = apply_tenant(nullptr, &tenant); !status) {
      (void)apply_tenant(&tenant, nullptr);
      return "tenant " + name + ": " + status.message();
    }
    state_.tenants.emplace(name, std::move(tenant));
  }
  return {};
}

void Engine::add_tree_status(json& data) {
  // The device's tenant, its share and every group's, from the qos layer.
  for (json& object : data["devices"]) {
    const std::string name = object["name"].get<std::string>();
    const DeviceState* device = find_device(name);
    if (device == nullptr) continue;
    json tenant_name = nullptr;
    for (const auto& [tenant, settings] : state_.tenants) {
      if (settings.devices.contains(name)) tenant_name = tenant;
    }
    object["tenant"] = tenant_name;
    (void)call(device->device_group_id, [&](qos::DeviceGroup& group) {
      object["share"] = share_json(group.device_share(device->device));
      object["limiting"] = group.limiting(device->device, std::nullopt);
      if (auto reservation = group.device_reservation(device->device)) object["reservation"] = reservation_json(*reservation);
      if (auto target = group.device_latency_target(device->device)) object["latency_target"] = latency_target_json(*target);
      for (json& group_object : object["groups"]) {
        const int64_t id = group_object["id"].get<int64_t>();
        group_object["share"] = share_json(group.group_share(device->device, id));
        group_object["limiting"] = group.limiting(device->device, id);
      }
      return qos::Status{};
    });
  }
  json tenants = json::array();
  for (const auto& [name, tenant] : state_.tenants) {
    json object = tenant_json(name, tenant);
    if (tenant.cluster) object["cluster"] = cluster_json(name, tenant);
    const std::optional<int> group_id = tenant_device_group(tenant);
    object["device_group_id"] = group_id ? json(*group_id) : json(nullptr);
    object["share"] = nullptr;
    object["limiting"] = false;
    if (group_id) {
      // The id by copy: clang 14 (make fuzz) cannot capture a structured binding.
      (void)call(*group_id, [&, id = tenant.id](qos::DeviceGroup& group) {
        object["share"] = share_json(group.tenant_share(id));
        object["limiting"] = group.tenant_limiting(id);
        if (auto reservation = group.tenant_reservation(id)) object["reservation"] = reservation_json(*reservation);
        if (auto target = group.tenant_latency_target(id)) object["latency_target"] = latency_target_json(*target);
        for (json& device_object : object["devices"]) {
          const DeviceState* device = find_device(device_object["name"].get<std::string>());
          device_object["share"] = device ? share_json(group.device_share(device->device)) : json(nullptr);
        }
        return qos::Status{};
      });
    }
    tenants.push_back(std::move(object));
  }
  data["tenants"] = std::move(tenants);
  if (cluster_ != nullptr) {
    const cluster::Agent::Snapshot snapshot = cluster_->snapshot();
    data["cluster"] = {{"node", cluster_->options().node},
                       {"endpoints", cluster_->options().endpoints},
                       {"mode", cluster::to_string(snapshot.mode)},
                       {"connected", snapshot.connected},
                       {"endpoint", snapshot.endpoint},
                       {"error", snapshot.error.empty() ? json(nullptr) : json(snapshot.error)},
                       {"lease", snapshot.lease},
                       {"nodes", snapshot.nodes},
                       {"reads", snapshot.reads},
                       {"failures", snapshot.failures}};
  }
}

}  // namespace ioband::control
