// The control plane's model: what `table`, `status` and state.json describe.
// Plain values; the engine keeps them equal to what the qos layer accepted.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nbd/access.h"
#include "nbd/classify.h"
#include "qos/device_group.h"
#include "qos/device_model.h"
#include "qos/limits.h"
#include "qos/policy.h"

namespace ioband::control {

// One ioband group of a device (the default group is id -1).
struct GroupSettings {
  uint32_t weight = qos::kDefaultWeight;
  qos::RangeBw range_bw;  // KiB/s; {0, 0} = none
  qos::Limits limits;     // unlimited() = none
  friend bool operator==(const GroupSettings&, const GroupSettings&) = default;
};

// A device group: the settings dm-ioband keeps per physical disk.
struct DeviceGroupSettings {
  int id = 0;
  qos::Policy policy = qos::kDefaultPolicy;
  uint64_t token = qos::kDefaultToken;
  uint32_t carryover = qos::kDefaultCarryover;
  uint32_t io_throttle = qos::kDefaultIoThrottle;
  uint32_t io_limit = qos::kDefaultIoLimit;
  bool io_limit_auto = qos::kDefaultIoLimitAuto;  // the window follows the storage, io_limit caps it
  // The storage's device model (qos/device_model.h); nullopt: the default,
  // never set nor calibrated (and not saved, so a newer default applies).
  std::optional<qos::DeviceModel> device_model;
  bool device_model_calibrated = false;  // measured by iobandctl calibrate, not set by hand
  friend bool operator==(const DeviceGroupSettings&, const DeviceGroupSettings&) = default;
};

// An ioband device.
struct DeviceState {
  std::string name;
  std::string path;
  uint64_t sectors = 0;
  int device_group_id = 0;
  nbd::GroupType type = nbd::GroupType::none;
  std::map<int64_t, GroupSettings> groups{{qos::kDefaultGroup, {}}};  // -1 first, then ascending
  qos::Limits limits;  // of the whole device
  nbd::AccessList access;  // who may open its export; empty: everyone, read-write
  // The image format, fixed at create (given, or detected then) and saved,
  // so a restart never detects again; "raw" is saved as no key.
  std::string format = "raw";

  // Runtime only (not saved).
  qos::DeviceId device = 0;  // index within its device group
  unsigned major = 0, minor = 0;
  bool block_device = false;  // path is a block device (major:minor its own number)
};

// A tenant (qos/tree.h): a level above devices. Its devices are in one
// device group; its weight is its share among the root's children there,
// each device's weight its share within the tenant, and its limits hold for
// its devices together.
struct TenantState {
  uint32_t weight = qos::kDefaultWeight;
  qos::Limits limits;                       // unlimited() = none
  std::map<std::string, uint32_t> devices;  // ioband device name -> its weight in the tenant
  // Cluster-wide (issue 18, docs/cluster.md): weight and limits live in etcd
  // (kept here as last known); the qos layer gets limits * cluster_share.
  bool cluster = false;

  // Runtime only (not saved).
  qos::TenantId id = 0;
  double cluster_share = 1;  // this node's share of the cluster limit
  qos::Limits cluster_capacity;  // its part of the shared capacity (empty: none)
};

struct State {
  std::map<int, DeviceGroupSettings> device_groups;  // by id
  std::vector<DeviceState> devices;                  // in creation order
  std::map<std::string, TenantState> tenants;        // by name
};

}  // namespace ioband::control
