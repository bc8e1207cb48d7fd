#include "control/format.h"

#include <cmath>

#include <string_view>

#include "control/language.h"

namespace ioband::control {

using nlohmann::json;

std::string table_line(const DeviceState& device, const DeviceGroupSettings& device_group, bool with_name) {
  std::string line = with_name ? device.name + ": " : std::string();
  line += "0 " + std::to_string(device.sectors) + " ioband " + std::to_string(device.major) + ":" +
          std::to_string(device.minor) + " " + std::to_string(device.device_group_id) + " " +
          std::to_string(device_group.io_throttle) + " " + std::to_string(device_group.io_limit);
  // Access rules as create takes them; none when everyone may connect.
  for (const nbd::AccessRule& rule : device.access) line += " " + nbd::to_string(rule);
  if (device.format != "raw") line += " format=" + device.format;
  return line;
}

json reservations_json(const qos::ReservationSummary& summary) {
  return {{"capacity_iops", std::round(summary.capacity_iops)},
          {"reserved_iops", std::round(summary.reserved_iops)},
          {"factor", std::round(summary.factor * 1000) / 1000},
          {"scaled", summary.factor < 1}};
}

json reservation_json(const qos::ReservationStatus& r) {
  return {
      {"iops", r.iops},
      {"bps", r.bps},
      {"wanted_iops", std::round(r.wanted_iops)},
      {"effective_iops", std::round(r.effective_iops)},
      {"served_iops", r.served_iops < 0 ? json(nullptr) : json(std::round(r.served_iops))},
      {"met", r.met},
      {"scaled", r.scaled},
      {"cap_on_others", r.cap_on_others == 0 ? json(nullptr) : json(r.cap_on_others)},
  };
}

json limits_to_json(const qos::Limits& limits) {
  json object = json::object();
  for (std::string_view key : qos::kLimitKeys) {
    const uint64_t value = *qos::get_limit_key(limits, key);
    const bool is_length = key.ends_with("-max-length");
    if (is_length ? value != 1 : value != 0) object[std::string(key)] = value;
  }
  return object;
}

namespace {

// The order blk-iocost's io.cost.model prints them in.
constexpr std::string_view kModelLineKeys[] = {"rbps", "rseqiops", "rrandiops", "wbps", "wseqiops", "wrandiops",
                                               "depth"};

}  // namespace

std::string model_line(const qos::DeviceModel& model) {
  std::string line;
  for (std::string_view key : kModelLineKeys) {
    line += (line.empty() ? "" : " ") + std::string(key) + "=" + std::to_string(get_model_key(model, key));
  }
  return line;
}

json model_to_json(const qos::DeviceModel& model, bool calibrated) {
  json object = json::object();
  for (std::string_view key : kModelLineKeys) object[std::string(key)] = get_model_key(model, key);
  object["calibrated"] = calibrated;
  return object;
}

json model_to_json(const DeviceGroupSettings& device_group) {
  return model_to_json(device_group.device_model.value_or(qos::kDefaultDeviceModel),
                       device_group.device_model && device_group.device_model_calibrated);
}

json learned_model_json(const qos::DeviceModel& learned) {
  json object = model_to_json(learned, false);
  object.erase("calibrated");
  return object;
}

json window_steps_json(const qos::WindowSteps& steps) {
  return {{"up", steps.up}, {"down_rate", steps.down_rate}, {"down_order", steps.down_order},
          {"down_unused", steps.down_unused}};
}

json table_json(const DeviceState& device, const DeviceGroupSettings& device_group) {
  json groups = json::array();
  for (const auto& [id, group] : device.groups) {
    groups.push_back({{"id", id},
                      {"weight", group.weight},
                      {"range_bw", {{"min_kib", group.range_bw.min_kib}, {"max_kib", group.range_bw.max_kib}}},
                      {"limits", limits_to_json(group.limits)}});
  }
  return {
      {"name", device.name},
      {"start", 0},
      {"sectors", device.sectors},
      {"target", "ioband"},
      {"path", device.path},
      {"major", device.major},
      {"minor", device.minor},
      {"device_group_id", device.device_group_id},
      {"io_throttle", device_group.io_throttle},
      {"io_limit", device_group.io_limit},
      {"io_limit_auto", device_group.io_limit_auto},
      {"policy", std::string(qos::to_string(device_group.policy))},
      {"token", device_group.token},
      {"carryover", device_group.carryover},
      {"type", std::string(nbd::to_string(device.type))},
      {"access", nbd::access_words(device.access)},
      {"limits", limits_to_json(device.limits)},
      {"device_model", model_to_json(device_group)},
      {"groups", std::move(groups)},
  };
}

std::string status_line(const DeviceState& device, const std::vector<GroupStatus>& groups, bool with_name) {
  std::string line = with_name ? device.name + ": " : std::string();
  line += "0 " + std::to_string(device.sectors) + " ioband " + std::to_string(device.device_group_id);
  for (const GroupStatus& group : groups) {
    const qos::GroupStats& s = group.stats;
    line += " " + std::to_string(group.id);
    for (uint64_t value : {s.read_requests, s.delayed_read_requests, s.read_sectors, s.write_requests,
                           s.delayed_write_requests, s.write_sectors}) {
      line += " " + std::to_string(value);
    }
  }
  return line;
}

json observation_json(const qos::GroupObservation& observation) {
  json ops = json::object();
  for (size_t kind = 0; kind < observation.ops.size(); ++kind) {
    const qos::OpObservation& op = observation.ops[kind];
    if (op.requests == 0) continue;
    json histogram = json::array();
    for (size_t i = 0; i < op.duration_histogram.size(); ++i) {
      json bucket = {{"count", op.duration_histogram[i]}};
      bucket["le_ns"] = i < qos::kDurationBoundsNs.size() ? json(qos::kDurationBoundsNs[i]) : json(nullptr);
      histogram.push_back(std::move(bucket));
    }
    ops[std::string(qos::op_name(static_cast<qos::OpKind>(kind)))] = {
        {"requests", op.requests},       {"bytes", op.bytes},
        {"errors", op.errors},           {"duration_ns", op.duration_ns},
        {"duration_histogram", std::move(histogram)},
    };
  }
  json held = json::object();
  for (size_t reason = 0; reason < qos::kHoldReasons; ++reason) {
    held[std::string(qos::to_string(static_cast<qos::HoldReason>(reason)))] = {
        {"requests", observation.held_requests[reason]}, {"ns", observation.held_ns[reason]}};
  }
  return {{"ops", std::move(ops)}, {"held", std::move(held)}};
}

json latency_target_json(const qos::LatencyTargetStatus& t) {
  return {
      {"target_us", t.target_ns / 1000},
      {"percentile", t.permille / 10.0},
      {"measured_us", t.percentile_ns < 0 ? json(nullptr) : json(t.percentile_ns / 1000)},
      {"met", t.met},
      {"cap_on_others", t.cap == 0 ? json(nullptr) : json(t.cap)},
      {"epochs", t.epochs},
      {"missed_epochs", t.missed_epochs},
  };
}

json status_json(const DeviceState& device, const std::vector<GroupStatus>& groups, int connections) {
  json group_array = json::array();
  for (const GroupStatus& group : groups) {
    const qos::GroupStats& s = group.stats;
    json histogram = json::array();
    for (size_t i = 0; i < s.delay_histogram.size(); ++i) {
      histogram.push_back({{"from_us", qos::delay_bucket_floor(i).count()}, {"count", s.delay_histogram[i]}});
    }
    group_array.push_back({
        {"id", group.id},
        {"read_requests", s.read_requests},
        {"delayed_read_requests", s.delayed_read_requests},
        {"read_sectors", s.read_sectors},
        {"write_requests", s.write_requests},
        {"delayed_write_requests", s.delayed_write_requests},
        {"write_sectors", s.write_sectors},
        {"delayed_time_ns", s.delayed_time.count()},
        {"queue_length", s.queue_length},
        {"in_flight", s.in_flight},
        {"delay_histogram", std::move(histogram)},
        {"observation", observation_json(group.observation)},
    });
    json& entry = group_array.back();
    if (const auto& r = group.reservation) entry["reservation"] = reservation_json(*r);
    if (const auto& t = group.latency_target) entry["latency_target"] = latency_target_json(*t);
    if (group.in_flight_cap != 0) entry["in_flight_cap"] = group.in_flight_cap;
  }
  return {
      {"name", device.name},
      {"start", 0},
      {"sectors", device.sectors},
      {"target", "ioband"},
      {"device_group_id", device.device_group_id},
      {"connections", connections},
      {"groups", std::move(group_array)},
  };
}

}  // namespace ioband::control
