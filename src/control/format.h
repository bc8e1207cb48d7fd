// `table` and `status` as dm-ioband prints them, and as JSON.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/model.h"
#include "qos/stats.h"

namespace ioband::control {

// "ioband1: 0 44371467 ioband 202:33 128 10 400" (no newline); without the
// "NAME: " prefix when with_name is false (dmsetup table NAME).
std::string table_line(const DeviceState& device, const DeviceGroupSettings& device_group, bool with_name);
// Everything about the device: the table's fields plus type, policy, token,
// carryover, limits, and each group's weight, range-bw and limits.
nlohmann::json table_json(const DeviceState& device, const DeviceGroupSettings& device_group);

struct GroupStatus {
  int64_t id = -1;
  qos::GroupStats stats;
};
// "ioband2: 0 44371467 ioband 128 -1 143 90 424 122 78 352"
std::string status_line(const DeviceState& device, const std::vector<GroupStatus>& groups, bool with_name);
nlohmann::json status_json(const DeviceState& device, const std::vector<GroupStatus>& groups, int connections);

// The keys that differ from "no limit" ({"iops-total":100, ...}).
nlohmann::json limits_to_json(const qos::Limits& limits);

}  // namespace ioband::control
