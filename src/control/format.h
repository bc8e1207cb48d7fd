// `table` and `status` as dm-ioband prints them, and as JSON.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/model.h"
#include "qos/device_group.h"
#include "qos/observation.h"
#include "qos/stats.h"

namespace ioband::control {

// "ioband1: 0 44371467 ioband 202:33 128 10 400" (no newline), then the
// access rules if it has any; without the "NAME: " prefix when with_name
// is false (dmsetup table NAME).
std::string table_line(const DeviceState& device, const DeviceGroupSettings& device_group, bool with_name);
// Everything about the device: the table's fields plus type, policy, token,
// carryover, limits, and each group's weight, range-bw and limits.
nlohmann::json table_json(const DeviceState& device, const DeviceGroupSettings& device_group);

struct GroupStatus {
  int64_t id = -1;
  qos::GroupStats stats;
  qos::GroupObservation observation;
  std::optional<qos::ReservationStatus> reservation;      // reservation-iops / -bps
  std::optional<qos::LatencyTargetStatus> latency_target;
  uint32_t in_flight_cap = 0;  // imposed on it by others' latency targets; 0: none
};
// "ioband2: 0 44371467 ioband 128 -1 143 90 424 122 78 352"
std::string status_line(const DeviceState& device, const std::vector<GroupStatus>& groups, bool with_name);
nlohmann::json status_json(const DeviceState& device, const std::vector<GroupStatus>& groups, int connections);

// {"ops": {"read": {"requests", "bytes", "errors", "duration_ns",
// "duration_histogram": [{"le_ns", "count"}...]}, ...}, "held": {"weight":
// {"requests", "ns"}, "limit": ..., "window": ...}}; operations never seen
// are left out. Counters only grow (see observation.h).
nlohmann::json observation_json(const qos::GroupObservation& observation);

// {"capacity_iops", "reserved_iops", "factor", "scaled"}: a device group's
// reservations against what its storage gives now (qos/reservation.h).
nlohmann::json reservations_json(const qos::ReservationSummary& summary);
// One node's reservation (a group's, a device's, a tenant's) in status --json.
nlohmann::json reservation_json(const qos::ReservationStatus& reservation);
// A node's latency target against what it measured (a group's, a device's, a tenant's).
nlohmann::json latency_target_json(const qos::LatencyTargetStatus& target);

// The keys that differ from "no limit" ({"iops-total":100, ...}).
nlohmann::json limits_to_json(const qos::Limits& limits);

// "rbps=1062130688 rseqiops=43296 rrandiops=49395 wbps=784335872
// wseqiops=47022 wrandiops=39153 depth=21": blk-iocost's io.cost.model
// style, one line, no newline. `message NAME 0 model` takes it back as it is.
std::string model_line(const qos::DeviceModel& model);
// {"rbps": ..., ..., "depth": 21, "calibrated": true}
nlohmann::json model_to_json(const qos::DeviceModel& model, bool calibrated);
// The device group's model as table, status and calibrate show it.
nlohmann::json model_to_json(const DeviceGroupSettings& device_group);
// The model a device group learned while serving (qos/model_learner.h):
// the same figures, without "calibrated".
nlohmann::json learned_model_json(const qos::DeviceModel& learned);
// Why the learned window moved since it started (qos/auto_window.h).
nlohmann::json window_steps_json(const qos::WindowSteps& steps);

}  // namespace ioband::control
