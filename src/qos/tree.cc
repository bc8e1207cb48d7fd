#include "qos/tree.h"

namespace ioband::qos::detail {

Status check_tree_weight(std::uint32_t weight, const char* what) {
  if (weight == 0 || weight > kMaxTreeWeight) {
    return Status::error(std::string(what) + " weight must be between 1 and " + std::to_string(kMaxTreeWeight) +
                         ", not " + std::to_string(weight));
  }
  return {};
}

Status Tenants::add(TenantId id, std::uint32_t weight) {
  if (Status status = check_tree_weight(weight, "a tenant's"); !status) return status;
  if (tenants_.contains(id)) return Status::error("tenant " + std::to_string(id) + " already exists");
  auto tenant = std::make_unique<Tenant>();
  tenant->id = id;
  tenant->weight = weight;
  tenants_.emplace(id, std::move(tenant));
  return {};
}

Status Tenants::remove(TenantId id) {
  auto it = tenants_.find(id);
  if (it == tenants_.end()) return Status::error("tenant " + std::to_string(id) + " does not exist");
  if (it->second->devices != 0) {
    return Status::error("tenant " + std::to_string(id) + " still has " + std::to_string(it->second->devices) +
                         " device(s)");
  }
  tenants_.erase(it);
  return {};
}

Tenant* Tenants::find(TenantId id) const noexcept {
  auto it = tenants_.find(id);
  return it == tenants_.end() ? nullptr : it->second.get();
}

Status Tenants::set_weight(TenantId id, std::uint32_t weight) {
  Tenant* tenant = find(id);
  if (tenant == nullptr) return Status::error("tenant " + std::to_string(id) + " does not exist");
  if (Status status = check_tree_weight(weight, "a tenant's"); !status) return status;
  tenant->weight = weight;
  return {};
}

void Tenants::place(DeviceNode& node, Tenant* tenant, std::uint32_t weight) noexcept {
  // A lingering device leaves its old tenant's sums now, and comes to the
  // new one as what it is: idle.
  const bool was_counted = counts_active(node);
  node.lingering = false;
  const bool active = node.active_leaves != 0;
  if (Tenant* old = node.tenant; old != nullptr) {
    --old->devices;
    old->weight_sum -= node.weight;
    if (was_counted) {
      --old->active_devices;
      old->active_weight -= node.weight;
    }
  }
  node.tenant = tenant;
  node.weight = weight;
  if (tenant != nullptr) {
    ++tenant->devices;
    tenant->weight_sum += weight;
    if (active) {
      ++tenant->active_devices;
      tenant->active_weight += weight;
    }
  }
}

}  // namespace ioband::qos::detail
