#include "control/state_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "control/format.h"
#include "control/language.h"
#include "control/tenant.h"
#include "io/log.h"

namespace ioband::control {

using nlohmann::json;

namespace {

// 2: the in-flight window is learned by default (io_limit_auto true). A
// version 1 file saved the old default (a fixed window of 128) for every
// device group whose window nobody set; such a group is read as the new
// default. A window set to another number, or auto, is kept as it was.
constexpr int kStateVersion = 2;

// Thrown inside state_from_json only; carries "element: what".
struct Invalid {
  std::string message;
};

[[noreturn]] void invalid(const std::string& where, const std::string& what) { throw Invalid{where + ": " + what}; }

void check_keys(const json& object, const std::string& where, std::initializer_list<const char*> allowed) {
  if (!object.is_object()) invalid(where, "expected an object");
  for (const auto& [key, value] : object.items()) {
    bool known = false;
    for (const char* name : allowed) known |= key == name;
    if (!known) invalid(where, "unknown key \"" + key + "\"");
  }
}

const json& field(const json& object, const std::string& where, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) invalid(where, std::string("\"") + key + "\" is missing");
  return *it;
}

std::string child(const std::string& where, const char* key) { return where.empty() ? key : where + "." + key; }

int64_t integer(const json& object, const std::string& where, const char* key, int64_t min, int64_t max) {
  const json& value = field(object, where, key);
  const std::string name = child(where, key);
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(max)) invalid(name, "must be at most " + std::to_string(max));
    return static_cast<int64_t>(v);
  }
  if (!value.is_number_integer()) invalid(name, "expected an integer");
  const int64_t v = value.get<int64_t>();
  if (v < min || v > max) invalid(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return v;
}

uint64_t unsigned_integer(const json& object, const std::string& where, const char* key, uint64_t min, uint64_t max) {
  const json& value = field(object, where, key);
  const std::string name = child(where, key);
  if (!value.is_number_unsigned()) invalid(name, "expected a non-negative integer");
  const uint64_t v = value.get<uint64_t>();
  if (v < min || v > max) invalid(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return v;
}

std::string string(const json& object, const std::string& where, const char* key) {
  const json& value = field(object, where, key);
  if (!value.is_string()) invalid(child(where, key), "expected a string");
  return value.get<std::string>();
}

qos::Limits limits_from(const json& object, const std::string& where) {
  if (!object.is_object()) invalid(where, "expected an object");
  qos::Limits limits;
  for (const auto& [key, value] : object.items()) {
    const std::string name = where + "." + key;
    if (!value.is_number_unsigned()) invalid(name, "expected a non-negative integer");
    if (qos::Status status = qos::set_limit_key(limits, key, value.get<uint64_t>()); !status) {
      invalid(where, status.message());
    }
  }
  if (qos::Status status = qos::validate(limits); !status) invalid(where, status.message());
  return limits;
}

// {"rbps": 500000000, ..., "depth": 32, "calibrated": false}
void device_model_from(const json& object, const std::string& where, DeviceGroupSettings& settings) {
  check_keys(object, where,
             {"rbps", "rseqiops", "rrandiops", "wbps", "wseqiops", "wrandiops", "depth", "calibrated"});
  qos::DeviceModel model;
  for (std::string_view key : kModelKeys) {
    const std::string name(key);
    (void)set_model_key(model, key, unsigned_integer(object, where, name.c_str(), 0, UINT64_MAX));
  }
  if (auto error = qos::model_error(model)) invalid(where, *error);
  const json& calibrated = field(object, where, "calibrated");
  if (!calibrated.is_boolean()) invalid(child(where, "calibrated"), "expected true or false");
  settings.device_model = model;
  settings.device_model_calibrated = calibrated.get<bool>();
}

DeviceGroupSettings device_group_from(const json& object, const std::string& where, int64_t version) {
  check_keys(object, where,
             {"id", "policy", "token", "carryover", "io_throttle", "io_limit", "io_limit_auto", "device_model"});
  DeviceGroupSettings settings;
  settings.id = static_cast<int>(integer(object, where, "id", 0, INT32_MAX));
  const std::string policy = string(object, where, "policy");
  auto parsed = qos::parse_policy(policy);
  if (!parsed) invalid(child(where, "policy"), "unknown policy \"" + policy + "\"");
  settings.policy = *parsed;
  settings.token = unsigned_integer(object, where, "token", 1, UINT64_MAX);
  settings.carryover = static_cast<uint32_t>(unsigned_integer(object, where, "carryover", 0, UINT32_MAX));
  settings.io_throttle = static_cast<uint32_t>(unsigned_integer(object, where, "io_throttle", 0, UINT32_MAX));
  settings.io_limit = static_cast<uint32_t>(unsigned_integer(object, where, "io_limit", 1, UINT32_MAX));
  if (settings.io_throttle > settings.io_limit) {
    invalid(where, "io_throttle (" + std::to_string(settings.io_throttle) + ") exceeds io_limit (" +
                       std::to_string(settings.io_limit) + ")");
  }
  // Optional: files written before io_limit auto existed lack it.
  if (object.contains("io_limit_auto")) {
    const json& value = object.at("io_limit_auto");
    if (!value.is_boolean()) invalid(child(where, "io_limit_auto"), "expected true or false");
    settings.io_limit_auto = value.get<bool>();
  }
  if (version == 1 && !settings.io_limit_auto && settings.io_limit == qos::kDefaultIoLimit) {
    settings.io_limit_auto = qos::kDefaultIoLimitAuto;
  }
  // Optional: files written before the device model existed lack it, and
  // a device group on the default model has none.
  if (object.contains("device_model")) {
    device_model_from(object.at("device_model"), child(where, "device_model"), settings);
  }
  return settings;
}

DeviceState device_from(const json& object, const std::string& where) {
  check_keys(object, where,
             {"name", "path", "sectors", "device_group_id", "type", "limits", "groups", "access", "format"});
  DeviceState device;
  device.name = string(object, where, "name");
  if (auto why = check_device_name(device.name); !why.empty()) invalid(child(where, "name"), why);
  device.path = string(object, where, "path");
  if (device.path.empty() || device.path.front() != '/') invalid(child(where, "path"), "expected an absolute path");
  device.sectors = unsigned_integer(object, where, "sectors", 1, UINT64_MAX / 512);
  if (object.contains("format")) {
    device.format = string(object, where, "format");
    if (device.format != "qcow2" && device.format != "raw") invalid(child(where, "format"), "expected raw or qcow2");
  }
  device.device_group_id = static_cast<int>(integer(object, where, "device_group_id", 0, INT32_MAX));
  const std::string type = string(object, where, "type");
  auto parsed = nbd::parse_group_type(type);
  if (!parsed) invalid(child(where, "type"), "unknown type \"" + type + "\"");
  device.type = *parsed;
  device.limits = limits_from(field(object, where, "limits"), child(where, "limits"));
  const json& groups = field(object, where, "groups");
  if (!groups.is_array()) invalid(child(where, "groups"), "expected an array");
  device.groups.clear();
  for (size_t i = 0; i < groups.size(); ++i) {
    const std::string at = child(where, "groups") + "[" + std::to_string(i) + "]";
    const json& group = groups[i];
    check_keys(group, at, {"id", "weight", "range_bw", "limits"});
    const int64_t id = integer(group, at, "id", -1, INT64_MAX);
    GroupSettings settings;
    settings.weight = static_cast<uint32_t>(unsigned_integer(group, at, "weight", 1, qos::kMaxWeight));
    const json& range = field(group, at, "range_bw");
    check_keys(range, child(at, "range_bw"), {"min_kib", "max_kib"});
    settings.range_bw.min_kib = unsigned_integer(range, child(at, "range_bw"), "min_kib", 0, UINT64_MAX);
    settings.range_bw.max_kib = unsigned_integer(range, child(at, "range_bw"), "max_kib", 0, UINT64_MAX);
    settings.limits = limits_from(field(group, at, "limits"), child(at, "limits"));
    if (!device.groups.emplace(id, settings).second) invalid(child(at, "id"), "group " + std::to_string(id) + " appears twice");
  }
  if (!device.groups.contains(qos::kDefaultGroup)) invalid(child(where, "groups"), "the default group (id -1) is missing");
  if (device.type == nbd::GroupType::none && device.groups.size() > 1) {
    invalid(child(where, "groups"), "groups are attached but the type is none");
  }
  // Optional: absent in files written before access lists, and when
  // everyone may connect.
  if (object.contains("access")) {
    const json& rules = object.at("access");
    const std::string at = child(where, "access");
    if (!rules.is_array()) invalid(at, "expected an array of access rules");
    std::vector<std::string> words;
    for (size_t i = 0; i < rules.size(); ++i) {
      if (!rules[i].is_string()) invalid(at + "[" + std::to_string(i) + "]", "expected a string");
      words.push_back(rules[i].get<std::string>());
    }
    if (words.empty()) invalid(at, "an empty list; leave the key out for everyone");
    if (std::string why = nbd::parse_access_list(words, device.access); !why.empty()) invalid(at, why);
  }
  return device;
}

std::string errno_text(int error) { return std::strerror(error); }

json tenants_to_json(const std::map<std::string, TenantState>& tenants) {
  json array = json::array();
  for (const auto& [name, tenant] : tenants) {
    json devices = json::array();
    for (const auto& [device, weight] : tenant.devices) devices.push_back({{"name", device}, {"weight", weight}});
    json object = {{"name", name}, {"weight", tenant.weight}, {"limits", limits_to_json(tenant.limits)},
                   {"devices", std::move(devices)}};
    if (tenant.cluster) object["cluster"] = true;
    array.push_back(std::move(object));
  }
  return array;
}

// Tenants name devices of the file, each at most once, all of one tenant
// in one device group, whose policy orders by tenant shares.
void tenants_from(const json& tenants, State& state) {
  if (!tenants.is_array()) invalid("tenants", "expected an array");
  std::map<std::string, std::string> tenant_of;  // device -> tenant
  for (size_t i = 0; i < tenants.size(); ++i) {
    const std::string where = "tenants[" + std::to_string(i) + "]";
    const json& object = tenants[i];
    check_keys(object, where, {"name", "weight", "limits", "devices", "cluster"});
    const std::string name = string(object, where, "name");
    if (auto why = check_tenant_name(name); !why.empty()) invalid(child(where, "name"), why);
    TenantState tenant;
    tenant.weight = static_cast<uint32_t>(unsigned_integer(object, where, "weight", 1, qos::kMaxTreeWeight));
    tenant.limits = limits_from(field(object, where, "limits"), child(where, "limits"));
    if (object.contains("cluster")) {
      if (!object["cluster"].is_boolean()) invalid(child(where, "cluster"), "expected true or false");
      tenant.cluster = object["cluster"].get<bool>();
    }
    const json& devices = field(object, where, "devices");
    if (!devices.is_array()) invalid(child(where, "devices"), "expected an array");
    int device_group = -1;
    for (size_t k = 0; k < devices.size(); ++k) {
      const std::string at = child(where, "devices") + "[" + std::to_string(k) + "]";
      check_keys(devices[k], at, {"name", "weight"});
      const std::string device = string(devices[k], at, "name");
      const auto weight = static_cast<uint32_t>(unsigned_integer(devices[k], at, "weight", 1, qos::kMaxTreeWeight));
      auto found = std::find_if(state.devices.begin(), state.devices.end(),
                                [&](const DeviceState& d) { return d.name == device; });
      if (found == state.devices.end()) invalid(child(at, "name"), "no device " + device + " in devices");
      if (auto [it, fresh] = tenant_of.emplace(device, name); !fresh) {
        invalid(child(at, "name"), "device " + device + " is already in tenant " + it->second);
      }
      if (device_group >= 0 && found->device_group_id != device_group) {
        invalid(child(at, "name"), "device " + device + " is in device group " +
                                       std::to_string(found->device_group_id) + ", the tenant's others in " +
                                       std::to_string(device_group));
      }
      device_group = found->device_group_id;
      const qos::Policy policy = state.device_groups.at(device_group).policy;
      if (!qos::orders_by_shares(policy)) {
        invalid(child(at, "name"), "device group " + std::to_string(device_group) + " has policy " +
                                       std::string(qos::to_string(policy)) + ", which does not order by tenant shares");
      }
      tenant.devices.emplace(device, weight);
    }
    if (!state.tenants.emplace(name, std::move(tenant)).second) {
      invalid(child(where, "name"), "tenant " + name + " appears twice");
    }
  }
}

}  // namespace

json state_to_json(const State& state) {
  json device_groups = json::array();
  for (const auto& [id, settings] : state.device_groups) {
    json object = {{"id", id},
                   {"policy", std::string(qos::to_string(settings.policy))},
                   {"token", settings.token},
                   {"carryover", settings.carryover},
                   {"io_throttle", settings.io_throttle},
                   {"io_limit", settings.io_limit},
                   {"io_limit_auto", settings.io_limit_auto}};
    if (settings.device_model) object["device_model"] = model_to_json(settings);
    device_groups.push_back(std::move(object));
  }
  json devices = json::array();
  for (const DeviceState& device : state.devices) {
    json groups = json::array();
    for (const auto& [id, group] : device.groups) {
      groups.push_back({{"id", id},
                        {"weight", group.weight},
                        {"range_bw", {{"min_kib", group.range_bw.min_kib}, {"max_kib", group.range_bw.max_kib}}},
                        {"limits", limits_to_json(group.limits)}});
    }
    json object = {{"name", device.name},
                   {"path", device.path},
                   {"sectors", device.sectors},
                   {"device_group_id", device.device_group_id},
                   {"type", std::string(nbd::to_string(device.type))},
                   {"limits", limits_to_json(device.limits)},
                   {"groups", std::move(groups)}};
    if (!device.access.empty()) object["access"] = nbd::access_words(device.access);
    if (device.format != "raw") object["format"] = device.format;
    devices.push_back(std::move(object));
  }
  json out = {{"version", kStateVersion}, {"device_groups", std::move(device_groups)}, {"devices", std::move(devices)}};
  if (!state.tenants.empty()) out["tenants"] = tenants_to_json(state.tenants);
  return out;
}

std::string state_to_text(const State& state) {
  return state_to_json(state).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::optional<std::string> state_from_json(const json& object, State& out) {
  try {
    check_keys(object, "state", {"version", "device_groups", "devices", "tenants"});
    const json& version = field(object, "state", "version");
    if (!version.is_number_integer() || version.get<int64_t>() < 1 || version.get<int64_t>() > kStateVersion) {
      invalid("version", "this iobandd reads versions 1 to " + std::to_string(kStateVersion) + ", not " +
                             version.dump());
    }
    State state;
    const json& device_groups = field(object, "state", "device_groups");
    if (!device_groups.is_array()) invalid("device_groups", "expected an array");
    for (size_t i = 0; i < device_groups.size(); ++i) {
      const std::string at = "device_groups[" + std::to_string(i) + "]";
      DeviceGroupSettings settings = device_group_from(device_groups[i], at, version.get<int64_t>());
      if (!state.device_groups.emplace(settings.id, settings).second) {
        invalid(at + ".id", "device group " + std::to_string(settings.id) + " appears twice");
      }
    }
    const json& devices = field(object, "state", "devices");
    if (!devices.is_array()) invalid("devices", "expected an array");
    std::set<std::string> names;
    std::set<int> used;
    for (size_t i = 0; i < devices.size(); ++i) {
      const std::string at = "devices[" + std::to_string(i) + "]";
      DeviceState device = device_from(devices[i], at);
      if (!names.insert(device.name).second) invalid(at + ".name", "device " + device.name + " appears twice");
      if (!state.device_groups.contains(device.device_group_id)) {
        invalid(at + ".device_group_id", "device group " + std::to_string(device.device_group_id) +
                                             " is not in device_groups");
      }
      used.insert(device.device_group_id);
      state.devices.push_back(std::move(device));
    }
    for (const auto& [id, settings] : state.device_groups) {
      if (!used.contains(id)) invalid("device_groups", "device group " + std::to_string(id) + " has no device");
    }
    // Optional: absent in files written before tenants, and when there are none.
    if (object.contains("tenants")) tenants_from(object.at("tenants"), state);
    out = std::move(state);
    return std::nullopt;
  } catch (const Invalid& e) {
    return e.message;
  } catch (const json::exception& e) {
    return std::string(e.what());
  }
}

std::optional<std::string> read_state_file(const std::string& path, State& out, bool& exists) {
  exists = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    return errno_text(errno);
  }
  exists = true;
  std::string text;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd);
      return errno_text(error);
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  json object;
  try {
    object = json::parse(text);
  } catch (const json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 3, column 7: ..." -> from "parse error".
    // Not only parse_error: a number beyond a double (1e999) is out_of_range
    // (found by fuzz/state_file; it ended the start with std::terminate).
    std::string what = e.what();
    if (auto bracket = what.find("] "); what.starts_with("[json.exception") && bracket != std::string::npos) {
      what = what.substr(bracket + 2);
    }
    return what;
  }
  return state_from_json(object, out);
}

std::optional<std::string> write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string temporary = path + ".tmp";
  const auto slash = path.rfind('/');
  const std::string directory = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return temporary + ": " + errno_text(errno);
  auto fail = [&](const std::string& what, int error) -> std::optional<std::string> {
    ::close(fd);
    ::unlink(temporary.c_str());
    return what + ": " + errno_text(error);
  };
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(temporary, errno);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail(temporary, errno);
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(temporary.c_str());
    return temporary + ": " + errno_text(error);
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temporary.c_str());
    return path + ": " + errno_text(error);
  }
  // The new contents are in place from here on: a failure to make the
  // rename durable is logged, not returned, since the caller would take a
  // change back that the file already holds.
  const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const int synced = dir < 0 ? -1 : ::fsync(dir);
  const int error = errno;
  if (dir >= 0) ::close(dir);
  if (synced != 0) log_line(directory + ": " + errno_text(error) + " (after writing " + path + ")");
  return std::nullopt;
}

}  // namespace ioband::control

namespace ioband::control {

std::string cluster_settings_to_text(uint32_t weight, const qos::Limits& limits) {
  return json{{"weight", weight}, {"limits", limits_to_json(limits)}}.dump();
}

std::string cluster_capacity_to_text(const qos::Limits& limits) {
  return json{{"limits", limits_to_json(limits)}}.dump();
}

std::optional<std::string> cluster_capacity_from_text(const std::string& text, qos::Limits& limits) {
  try {
    const json object = json::parse(text);
    check_keys(object, "capacity", {"limits"});
    limits = limits_from(field(object, "capacity", "limits"), "capacity.limits");
    return std::nullopt;
  } catch (const Invalid& e) {
    return e.message;
  } catch (const json::exception& e) {
    return std::string(e.what());
  }
}

std::optional<std::string> cluster_settings_from_text(const std::string& text, uint32_t& weight, qos::Limits& limits) {
  try {
    const json object = json::parse(text);
    check_keys(object, "settings", {"weight", "limits"});
    const auto read_weight = static_cast<uint32_t>(unsigned_integer(object, "settings", "weight", 1, qos::kMaxTreeWeight));
    qos::Limits read_limits = limits_from(field(object, "settings", "limits"), "settings.limits");
    weight = read_weight;
    limits = read_limits;
    return std::nullopt;
  } catch (const Invalid& e) {
    return e.message;
  } catch (const json::exception& e) {
    return std::string(e.what());
  }
}

}  // namespace ioband::control
