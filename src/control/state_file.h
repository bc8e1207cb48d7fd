// state.json: the devices, groups and settings that survive a restart.
//
//   {"version": 1,
//    "device_groups": [{"id": 1, "policy": "fair", "token": 2048, "carryover": 2,
//                       "io_throttle": 4, "io_limit": 128, "io_limit_auto": false,
//                       "device_model": {"rbps": 1062130688, "rseqiops": 43296,
//                                        "rrandiops": 49395, "wbps": 784335872,
//                                        "wseqiops": 47022, "wrandiops": 39153,
//                                        "depth": 21, "calibrated": true}}],
//    "devices": [{"name": "ioband1", "path": "/dev/sda1", "sectors": 2048,
//                 "device_group_id": 1, "type": "user", "limits": {},
//                 "groups": [{"id": -1, "weight": 40, "range_bw": {"min_kib": 0, "max_kib": 0},
//                             "limits": {}}, ...]}],
//    "tenants": [{"name": "acme", "weight": 300, "limits": {"iops-total": 2000},
//                 "devices": [{"name": "ioband1", "weight": 200}, ...]}]}
//
// io_limit_auto, device_model and tenants are optional (files of older versions lack
// them; device_model is written only once one was set or calibrated).
// Reading is strict (an unknown key, a wrong type or an out-of-range value is
// an error naming the element) so a damaged or hand-edited file stops the
// start instead of silently losing settings.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "control/model.h"

namespace ioband::control {

nlohmann::json state_to_json(const State& state);
// The file's text: state_to_json, indented, with a final newline.
std::string state_to_text(const State& state);
// Error: "devices[0].groups[1].weight: ..." (the element and what is wrong).
std::optional<std::string> state_from_json(const nlohmann::json& json, State& out);
// Reads and checks PATH. No file: `exists` false and no error. The error
// does not repeat the path ("line 3, column 7: ...", "Permission denied").
std::optional<std::string> read_state_file(const std::string& path, State& out, bool& exists);
// Writes PATH.tmp, fsyncs it, renames it over PATH and fsyncs the
// directory: PATH is the old or the new contents, never a mix. Mode 0600.
std::optional<std::string> write_file_atomically(const std::string& path, const std::string& contents);

// A cluster tenant's settings as kept in etcd (docs/cluster.md):
// {"weight": W, "limits": {...}}, checked as state.json's tenants are.
std::string cluster_settings_to_text(uint32_t weight, const qos::Limits& limits);
std::optional<std::string> cluster_settings_from_text(const std::string& text, uint32_t& weight, qos::Limits& limits);
// The capacity cluster tenants share: {"limits": {...}}.
std::string cluster_capacity_to_text(const qos::Limits& limits);
std::optional<std::string> cluster_capacity_from_text(const std::string& text, qos::Limits& limits);

}  // namespace ioband::control
