#include "control/engine.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "control/format.h"
#include "control/language.h"
#include "control/state_file.h"
#include "control/usage.h"
#include "io/image.h"
#include "io/log.h"
#include "ioband/version.h"

namespace ioband::control {

using nlohmann::json;

namespace {

std::string quoted(const std::string& text) { return "\"" + text + "\""; }

std::string join_ids(const std::map<int64_t, GroupSettings>& groups) {
  std::string text;
  for (const auto& [id, group] : groups) {
    if (id == qos::kDefaultGroup) continue;
    text += (text.empty() ? "" : ", ") + std::to_string(id);
  }
  return text;
}

// Sets io_throttle and io_limit together, in the order their invariant
// (io_throttle <= io_limit) allows; on error the device group is unchanged.
qos::Status set_throttle_and_limit(qos::DeviceGroup& group, uint32_t io_throttle, uint32_t io_limit) {
  const uint32_t old_throttle = group.io_throttle();
  const uint32_t old_limit = group.io_limit();
  if (io_throttle <= old_limit) {
    if (qos::Status status = group.set_io_throttle(io_throttle); !status) return status;
    if (qos::Status status = group.set_io_limit(io_limit); !status) {
      (void)group.set_io_throttle(old_throttle);
      return status;
    }
    return {};
  }
  if (qos::Status status = group.set_io_limit(io_limit); !status) return status;
  if (qos::Status status = group.set_io_throttle(io_throttle); !status) {
    (void)group.set_io_limit(old_limit);
    return status;
  }
  return {};
}

qos::Status apply_device_group(qos::DeviceGroup& group, const DeviceGroupSettings& settings) {
  if (qos::Status status = group.set_policy(settings.policy); !status) return status;
  if (qos::Status status = group.set_token(settings.token); !status) return status;
  if (qos::Status status = group.set_carryover(settings.carryover); !status) return status;
  if (qos::Status status = set_throttle_and_limit(group, settings.io_throttle, settings.io_limit); !status) {
    return status;
  }
  group.set_io_limit_auto(settings.io_limit_auto);
  if (settings.device_model) {
    const qos::Status status = group.set_device_model(*settings.device_model, settings.device_model_calibrated);
    if (!status) return qos::Status::error("device model: " + status.message());
  }
  return {};
}

// The sysfs directory of block device major:minor (".../block/sda/sda1"),
// or "" when there is none.
std::string sysfs_block_device(unsigned major, unsigned minor) {
  char link[64];
  std::snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major, minor);
  char* real = ::realpath(link, nullptr);
  if (real == nullptr) return {};
  std::string path = real;
  std::free(real);
  return path;
}

// Two block devices share sectors: they are one, or one is a partition of
// the other.
bool overlapping_block_devices(unsigned a_major, unsigned a_minor, unsigned b_major, unsigned b_minor) {
  if (a_major == b_major && a_minor == b_minor) return true;
  const std::string a = sysfs_block_device(a_major, a_minor);
  const std::string b = sysfs_block_device(b_major, b_minor);
  if (a.empty() || b.empty()) return false;
  return a.starts_with(b + "/") || b.starts_with(a + "/");
}

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", seconds);
  return text;
}

// Gives ioband group `id` of a device (attached) its settings.
qos::Status apply_group(qos::DeviceGroup& group, qos::DeviceId device, int64_t id, const GroupSettings& settings) {
  const std::string which = id == qos::kDefaultGroup ? "default group" : "group " + std::to_string(id);
  if (qos::Status status = group.set_weight(device, id, settings.weight); !status) {
    return qos::Status::error(which + ": " + status.message());
  }
  if (qos::Status status = group.set_range_bw(device, id, settings.range_bw.min_kib, settings.range_bw.max_kib);
      !status) {
    return qos::Status::error(which + ": " + status.message());
  }
  // Admitted before: restoring saved state or undoing a change never fails on
  // a reservation the storage seems too slow for now.
  if (qos::Status status = group.set_limits(device, id, settings.limits, true); !status) {
    return qos::Status::error(which + ": " + status.message());
  }
  return {};
}

// A change applied to the qos layer but not saved is taken back: the device
// group and the device return to `before` wherever `after` differs.
qos::Status revert(qos::DeviceGroup& group, const DeviceGroupSettings& before_group,
                   const DeviceGroupSettings& after_group, const DeviceState& before, const DeviceState& after) {
  qos::Status status;
  auto keep = [&](qos::Status step) {
    if (status && !step) status = step;
  };
  const DeviceGroupSettings& b = before_group;
  const DeviceGroupSettings& a = after_group;
  if (b.policy != a.policy) keep(group.set_policy(b.policy));
  if (b.token != a.token) keep(group.set_token(b.token));
  if (b.carryover != a.carryover) keep(group.set_carryover(b.carryover));
  if (b.io_throttle != a.io_throttle || b.io_limit != a.io_limit) {
    keep(set_throttle_and_limit(group, b.io_throttle, b.io_limit));
  }
  if (b.io_limit_auto != a.io_limit_auto) group.set_io_limit_auto(b.io_limit_auto);
  if (b.device_model != a.device_model || b.device_model_calibrated != a.device_model_calibrated) {
    keep(group.set_device_model(b.device_model.value_or(qos::kDefaultDeviceModel), b.device_model_calibrated));
  }
  for (const auto& [id, settings] : after.groups) {
    if (!before.groups.contains(id)) keep(group.detach(before.device, id));
  }
  for (const auto& [id, settings] : before.groups) {
    auto now = after.groups.find(id);
    if (now == after.groups.end()) {
      keep(group.attach(before.device, id));
      keep(apply_group(group, before.device, id, settings));
    } else if (now->second != settings) {
      keep(apply_group(group, before.device, id, settings));
    }
  }
  if (before.limits != after.limits) keep(group.set_limits(before.device, std::nullopt, before.limits, true));
  return status;
}

// Adds the device and its groups and settings; on error removes it again.
qos::Status add_device(qos::DeviceGroup& group, const DeviceState& device) {
  if (qos::Status status = group.add_device(device.device); !status) return status;
  auto apply = [&]() -> qos::Status {
    for (const auto& [id, settings] : device.groups) {
      if (id != qos::kDefaultGroup) {
        if (qos::Status status = group.attach(device.device, id); !status) return status;
      }
      if (qos::Status status = apply_group(group, device.device, id, settings); !status) return status;
    }
    if (!device.limits.empty()) {
      if (qos::Status status = group.set_limits(device.device, std::nullopt, device.limits, true); !status) {
        return status;
      }
    }
    return {};
  };
  qos::Status status = apply();
  if (!status) (void)group.remove_device(device.device);
  return status;
}

}  // namespace

std::string probe_path(const std::string& path, PathInfo& info) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return path + ": " + std::strerror(errno);
  if (S_ISREG(st.st_mode)) {
    info.bytes = static_cast<uint64_t>(st.st_size);
    info.major = major(st.st_dev);
    info.minor = minor(st.st_dev);
    return {};
  }
  if (S_ISBLK(st.st_mode)) {
    info.block_device = true;
    info.major = major(st.st_rdev);
    info.minor = minor(st.st_rdev);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return path + ": " + std::strerror(errno);
    uint64_t bytes = 0;
    const int result = ::ioctl(fd, BLKGETSIZE64, &bytes);
    const int error = errno;
    ::close(fd);
    if (result != 0) return path + ": " + std::strerror(error);
    info.bytes = bytes;
    return {};
  }
  return path + " is neither a regular file nor a block device";
}

Engine::Engine(Platform platform, std::string state_path)
    : platform_(std::move(platform)), state_path_(std::move(state_path)) {}

Engine::~Engine() = default;

void Engine::run_on_owner(int id, const std::function<void()>& fn) {
  if (platform_.run_on_owner) {
    platform_.run_on_owner(id, fn);
  } else {
    fn();
  }
}

qos::Status Engine::call(int id, const std::function<qos::Status(qos::DeviceGroup&)>& fn) {
  qos::DeviceGroup& group = *device_groups_.at(id);
  qos::Status status;
  run_on_owner(id, [&] { status = fn(group); });
  return status;
}

DeviceState* Engine::find_device(const std::string& name) {
  for (DeviceState& device : state_.devices) {
    if (device.name == name) return &device;
  }
  return nullptr;
}

std::optional<Engine::Scheduling> Engine::scheduling(const std::string& name) const {
  for (const DeviceState& device : state_.devices) {
    if (device.name != name) continue;
    return Scheduling{device_groups_.at(device.device_group_id).get(), device.device, device.type};
  }
  return std::nullopt;
}

std::string Engine::state_json() const { return state_to_text(state_); }

std::string Engine::save() { return write_state(state_); }

State Engine::saved_view(const State& state) const {
  State saved = state;
  for (const DeviceState& device : unrestored_) {
    saved.devices.push_back(device);
    saved.device_groups.emplace(device.device_group_id, unrestored_groups_.at(device.device_group_id));
  }
  // A device group goes with its last device.
  std::erase_if(saved.device_groups, [&](const auto& entry) {
    return std::none_of(saved.devices.begin(), saved.devices.end(),
                        [&](const DeviceState& device) { return device.device_group_id == entry.first; });
  });
  return saved;
}

std::string Engine::write_state(const State& state) {
  if (save_disabled_) return state_path_ + ": not written, because it could not be read at start";
  if (auto error = write_file_atomically(state_path_, state_to_text(saved_view(state)))) return *error;
  return {};
}

const DeviceState* Engine::find_unrestored(const std::string& name) const {
  for (const DeviceState& device : unrestored_) {
    if (device.name == name) return &device;
  }
  return nullptr;
}

void Engine::destroy_device_group(int id) {
  auto it = device_groups_.find(id);
  if (it == device_groups_.end()) return;
  if (platform_.release_device_group) platform_.release_device_group(id, *it->second);
  run_on_owner(id, [&] { it->second.reset(); });
  device_groups_.erase(it);
  state_.device_groups.erase(id);
}

std::string Engine::build_device(DeviceState device, const DeviceGroupSettings& wanted, bool explicit_throttle_limit) {
  PathInfo info;
  std::string error = platform_.probe ? platform_.probe(device.path, info) : probe_path(device.path, info);
  if (!error.empty()) return error;
  // A qcow2 image's virtual size is checked when it is opened (platform).
  if (device.format != "qcow2" && info.bytes / 512 < device.sectors) {
    return device.path + " is " + std::to_string(info.bytes) + " bytes, smaller than " + std::to_string(device.sectors) +
           " sectors (" + std::to_string(device.sectors * 512) + " bytes)";
  }
  device.major = info.major;
  device.minor = info.minor;
  device.block_device = info.block_device;
  if (calibration_ && calibration_->block_device && info.block_device &&
      overlapping_block_devices(info.major, info.minor, calibration_->major, calibration_->minor)) {
    return "iobandctl calibrate " + calibration_->device + " is rewriting data in place on " + calibration_->path +
           ", which shares sectors with " + device.path + "; try again when it is done (within a minute)";
  }

  const int id = device.device_group_id;
  const bool new_group = !device_groups_.contains(id);
  const DeviceGroupSettings before = new_group ? DeviceGroupSettings{} : state_.device_groups.at(id);
  DeviceGroupSettings after = before;
  if (new_group) {
    device_groups_.emplace(id, std::make_unique<qos::DeviceGroup>());
    after = wanted;
    after.id = id;
    if (qos::Status status = call(id, [&](qos::DeviceGroup& group) { return apply_device_group(group, after); });
        !status) {
      destroy_device_group(id);
      return "device group " + std::to_string(id) + ": " + status.message();
    }
  } else if (explicit_throttle_limit) {
    after.io_throttle = wanted.io_throttle;
    after.io_limit = wanted.io_limit;
    if (qos::Status status = call(id,
                                  [&](qos::DeviceGroup& group) {
                                    return set_throttle_and_limit(group, after.io_throttle, after.io_limit);
                                  });
        !status) {
      return "device group " + std::to_string(id) + ": " + status.message();
    }
  }
  auto undo_device_group = [&] {
    if (new_group) {
      destroy_device_group(id);
    } else if (explicit_throttle_limit) {
      (void)call(id, [&](qos::DeviceGroup& group) {
        return set_throttle_and_limit(group, before.io_throttle, before.io_limit);
      });
    }
  };

  std::set<qos::DeviceId> used;
  for (const DeviceState& other : state_.devices) {
    if (other.device_group_id == id) used.insert(other.device);
  }
  qos::DeviceId device_id = 0;
  while (used.contains(device_id)) ++device_id;
  device.device = device_id;
  if (qos::Status status = call(id, [&](qos::DeviceGroup& group) { return add_device(group, device); }); !status) {
    undo_device_group();
    return status.message();
  }

  DeviceConfig config;
  config.name = device.name;
  config.path = device.path;
  config.sectors = device.sectors;
  config.device_group_id = id;
  config.io_throttle = after.io_throttle;
  config.io_limit = after.io_limit;
  config.type = device.type;
  config.access = device.access;
  config.format = device.format;
  error = platform_.create_export(config, *device_groups_.at(id), device_id);
  if (!error.empty()) {
    (void)call(id, [&](qos::DeviceGroup& group) { return group.remove_device(device_id); });
    undo_device_group();
    return error;
  }
  state_.device_groups[id] = after;
  state_.devices.push_back(std::move(device));
  return {};
}

// Out of its tenant, before the device leaves the qos layer (the tenant
// leaves the device group with its last device there).
void Engine::leave_tenants(const std::string& name) {
  for (auto& [tenant_name, tenant] : state_.tenants) {
    if (!tenant.devices.contains(name)) continue;
    TenantState without = tenant;
    without.devices.erase(name);
    (void)apply_tenant(&tenant, &without);
    tenant = std::move(without);
  }
}

std::string Engine::destroy_device(const std::string& name, bool force) {
  auto it = std::find_if(state_.devices.begin(), state_.devices.end(),
                         [&](const DeviceState& device) { return device.name == name; });
  if (it == state_.devices.end()) return "no ioband device named " + name;
  const int id = it->device_group_id;
  const qos::DeviceId device_id = it->device;
  if (std::string left = platform_.remove_export(name, force); !left.empty()) return left;
  leave_tenants(name);
  qos::Status status = call(id, [&](qos::DeviceGroup& group) { return group.remove_device(device_id); });
  state_.devices.erase(it);
  const bool last = std::none_of(state_.devices.begin(), state_.devices.end(),
                                 [&](const DeviceState& device) { return device.device_group_id == id; });
  if (last) destroy_device_group(id);
  return status ? std::string() : status.message();
}

std::string Engine::restore(bool strict) {
  State saved;
  bool exists = false;
  if (auto error = read_state_file(state_path_, saved, exists)) {
    save_disabled_ = true;
    return state_path_ + ": " + *error;
  }
  if (!exists) return {};
  for (const DeviceState& device : saved.devices) {
    std::string error = build_device(device, saved.device_groups.at(device.device_group_id), false);
    if (error.empty()) continue;
    if (!strict) {
      // This device only: it stays in the state file, as it was, for when
      // its image is back (a restart) or until it is removed.
      log_line(state_path_ + ": ioband device " + device.name + " not restored: " + error +
               "; it stays in the state file (iobandctl remove " + device.name + " drops it)");
      unrestored_.push_back(device);
      unrestored_groups_.emplace(device.device_group_id, saved.device_groups.at(device.device_group_id));
      continue;
    }
    save_disabled_ = true;
    while (!state_.devices.empty()) (void)destroy_device(state_.devices.back().name, true);
    return state_path_ + ": device " + device.name + ": " + error;
  }
  if (std::string error = restore_tenants(saved); !error.empty()) {
    save_disabled_ = true;
    state_.tenants.clear();
    while (!state_.devices.empty()) (void)destroy_device(state_.devices.back().name, true);
    return state_path_ + ": " + error;
  }
  return {};
}

std::string Engine::handle_line(const std::string& line, bool may_change) {
  Answer answer = answer_line(line, may_change);
  if (!answer.work) return answer.line;
  answer.work();
  return answer.finish();
}

Engine::Answer Engine::answer_line(const std::string& line, bool may_change) {
  Answer answer;
  Request request;
  if (auto error = parse_request(line, request)) {
    answer.line = reply_to_line(Reply::failure(*error), request.id);
    return answer;
  }
  try {
    Reply reply = execute(request, may_change, answer);
    if (!answer.work) answer.line = reply_to_line(reply, request.id);
  } catch (const std::exception& e) {
    // A bug must cost the command, not the daemon.
    answer = Answer{};
    answer.line =
        reply_to_line(Reply::failure(Error::refused(request.command + ": internal error: " + e.what())), request.id);
  }
  return answer;
}

Reply Engine::execute(const Request& request, bool may_change, Answer& answer) {
  const bool changes = request.command == "create" || request.command == "remove" || request.command == "message" ||
                       request.command == "calibrate" ||
                       (request.command == "tenant" && (request.args.empty() || request.args.front() != "list"));
  if (changes && !may_change) {
    return Reply::failure(
        Error::refused(request.command + ": permission denied: only the owner of the control socket may change state"));
  }
  if (changes && save_disabled_) {
    return Reply::failure(Error::refused(request.command + ": refused: " + state_path_ + " could not be read at start"));
  }
  if (request.command == "create") return create(request);
  if (request.command == "remove") return remove(request, answer);
  if (request.command == "message") return message(request);
  if (request.command == "calibrate") return calibrate(request, answer);
  if (request.command == "tenant") return tenant(request);
  if (request.command == "table") return table(request);
  if (request.command == "status") return status(request);
  return targets(request);
}

Reply Engine::create(const Request& request) {
  if (auto why = check_device_name(request.name); !why.empty()) {
    return Reply::failure(Error::bad_usage("create: " + why, usage_of("create")));
  }
  TableLine line;
  if (auto error = parse_table_line(request.table, line)) {
    error->message = "create " + request.name + ": " + error->message;
    return Reply::failure(*error);
  }
  if (find_device(request.name) != nullptr) {
    return Reply::failure(Error::refused("create: ioband device " + request.name + " already exists"));
  }
  if (removing_.count(request.name)) {
    return Reply::failure(Error::refused("create: ioband device " + request.name +
                                         " is being removed (its connections are closing); try again"));
  }
  if (const DeviceState* kept = find_unrestored(request.name)) {
    return Reply::failure(Error::refused("create: ioband device " + request.name + " is in the state file (" +
                                         kept->path + ") but was not restored at start; remove it first"));
  }
  DeviceState device;
  device.name = request.name;
  device.path = line.path;
  device.sectors = line.sectors;
  device.device_group_id = line.device_group_id;
  device.access = line.access;
  device.format = line.format;
  if (device.format.empty()) {
    // Detected once, here; saved with the device (model.h).
    std::string unreadable;  // then raw: the open below says why
    device.format = io::detect_format(line.path, unreadable);
    if (device.format.empty()) device.format = "raw";
  }
  DeviceGroupSettings wanted;
  auto existing = state_.device_groups.find(line.device_group_id);
  if (existing != state_.device_groups.end()) wanted = existing->second;
  if (line.io_throttle) wanted.io_throttle = *line.io_throttle;
  if (line.io_limit) wanted.io_limit = *line.io_limit;
  const bool explicit_throttle_limit = line.io_throttle.has_value() || line.io_limit.has_value();
  if (std::string error = build_device(std::move(device), wanted, explicit_throttle_limit); !error.empty()) {
    return Reply::failure(Error::refused("create " + request.name + ": " + error));
  }
  Reply reply;
  const DeviceState& created = state_.devices.back();
  reply.data = {{"device", table_json(created, state_.device_groups.at(created.device_group_id))}};
  if (std::string error = save(); !error.empty()) {
    (void)destroy_device(request.name, true);
    return Reply::failure(Error::refused("create " + request.name + ": not created, the state cannot be saved: " + error));
  }
  return reply;
}

Reply Engine::remove(const Request& request, Answer& answer) {
  if (request.name.empty()) return Reply::failure(Error::bad_usage("remove needs NAME", usage_of("remove")));
  Reply done;
  done.data = {{"removed", request.name}};
  if (find_unrestored(request.name) != nullptr) {
    // Only an entry of the state file: nothing is served.
    const std::vector<DeviceState> before = unrestored_;
    const std::map<std::string, TenantState> tenants_before = state_.tenants;
    std::erase_if(unrestored_, [&](const DeviceState& device) { return device.name == request.name; });
    forget_in_tenants(state_, request.name);  // not served: nothing of it in the qos layer
    if (std::string error = save(); !error.empty()) {
      unrestored_ = before;
      state_.tenants = tenants_before;
      return Reply::failure(Error::refused("remove " + request.name + ": not removed, the state cannot be saved: " +
                                           error));
    }
    return done;
  }
  if (removing_.count(request.name)) {
    return Reply::failure(Error::refused("remove " + request.name + ": a remove of it is under way"));
  }
  if (find_device(request.name) == nullptr) {
    return Reply::failure(Error::refused("remove: no ioband device named " + request.name));
  }
  if (std::string why = busy_calibrating(request.name); !why.empty()) {
    return Reply::failure(Error::refused("remove " + request.name + ": " + why));
  }
  const int connections = platform_.connections ? platform_.connections(request.name) : 0;
  if (connections > 0 && !request.force) {
    return Reply::failure(Error::refused("remove " + request.name + ": " + std::to_string(connections) +
                                         (connections == 1 ? " client is" : " clients are") +
                                         " connected; disconnect them, or use remove --force to end their connections"));
  }
  // Saved first: a state that cannot be written refuses the change before
  // any connection is ended.
  State after = state_;
  std::erase_if(after.devices, [&](const DeviceState& device) { return device.name == request.name; });
  forget_in_tenants(after, request.name);
  if (std::string error = write_state(after); !error.empty()) {
    return Reply::failure(Error::refused("remove " + request.name + ": not removed, the state cannot be saved: " +
                                         error));
  }
  if (platform_.unpublish_export) {
    // The wait for the connections runs on a thread of its own (answer.work);
    // meanwhile the device is out of the model (the state file already says
    // so) and its name is taken until finish_remove.
    auto it = std::find_if(state_.devices.begin(), state_.devices.end(),
                           [&](const DeviceState& device) { return device.name == request.name; });
    removing_.emplace(request.name, *it);
    state_.devices.erase(it);
    auto left = std::make_shared<std::string>();
    answer.work = [wait = platform_.unpublish_export(request.name, request.force), left] { *left = wait(); };
    answer.finish = [this, left, name = request.name, id = request.id] {
      return reply_to_line(finish_remove(name, *left), id);
    };
    return {};
  }
  if (std::string error = destroy_device(request.name, request.force); !error.empty()) {
    // Still there: so is its entry.
    std::string saved = save();
    return Reply::failure(Error::refused("remove " + request.name + ": " + error +
                                         (saved.empty() ? "" : "; and the state file could not be restored: " + saved)));
  }
  return done;
}

Reply Engine::finish_remove(const std::string& name, const std::string& left) {
  auto node = removing_.extract(name);
  DeviceState& device = node.mapped();
  if (!left.empty()) {
    // Connections outlived the wait: the device stays, unpublished (a later
    // remove waits again), and so does its entry.
    state_.devices.push_back(std::move(device));
    std::string saved = save();
    return Reply::failure(Error::refused("remove " + name + ": " + left +
                                         (saved.empty() ? "" : "; and the state file could not be restored: " + saved)));
  }
  const int id = device.device_group_id;
  const qos::DeviceId device_id = device.device;
  leave_tenants(name);
  qos::Status status = call(id, [&](qos::DeviceGroup& group) { return group.remove_device(device_id); });
  const bool last = std::none_of(state_.devices.begin(), state_.devices.end(),
                                 [&](const DeviceState& other) { return other.device_group_id == id; });
  if (last) destroy_device_group(id);
  if (!status) return Reply::failure(Error::refused("remove " + name + ": " + status.message()));
  Reply done;
  done.data = {{"removed", name}};
  return done;
}

Reply Engine::message(const Request& request) {
  if (request.name.empty()) return Reply::failure(Error::bad_usage("message needs NAME", usage_of("message")));
  const std::string verb_word = request.args.empty() ? std::string() : request.args.front();
  if (request.sector != "0") {
    return Reply::failure(
        Error::bad_usage("message " + request.name + ": the sector must be 0, not " + quoted(request.sector),
                         usage_of("message", verb_word)));
  }
  Message message;
  if (auto error = parse_message(request.args, message)) {
    error->message = "message " + request.name + ": " + error->message;
    return Reply::failure(*error);
  }
  DeviceState* device = find_device(request.name);
  if (device == nullptr) return Reply::failure(Error::refused("message: no ioband device named " + request.name));
  const std::string prefix = "message " + device->name + " " + std::string(verb_name(message.verb)) + ": ";
  auto refused = [&](const std::string& why) { return Reply::failure(Error::refused(prefix + why)); };
  const int id = device->device_group_id;
  const qos::DeviceId device_id = device->device;
  DeviceGroupSettings& settings = state_.device_groups.at(id);
  const int64_t group_id = message.group.value_or(qos::kDefaultGroup);
  auto group_name = [&](int64_t group) {
    return group == qos::kDefaultGroup ? std::string("the default group") : "group " + std::to_string(group);
  };
  auto check_attached = [&](int64_t group) -> std::optional<Reply> {
    if (device->groups.contains(group)) return std::nullopt;
    return refused(device->name + " has no group " + std::to_string(group) + " (attach it first: iobandctl message " +
                   device->name + " 0 attach " + std::to_string(group) + ")");
  };
  auto run = [&](const std::function<qos::Status(qos::DeviceGroup&)>& fn) { return call(id, fn); };
  const DeviceState before_device = *device;
  const DeviceGroupSettings before_group = settings;
  bool changed = true;   // saved state changed
  bool reclassify = false;
  std::string text;      // what iobandctl prints (model)

  switch (message.verb) {
    case Message::Verb::type: {
      if (message.type == device->type) {
        changed = false;
        break;
      }
      if (device->groups.size() > 1) {
        return refused("cannot change the type from " + std::string(nbd::to_string(device->type)) + " to " +
                       std::string(nbd::to_string(message.type)) + " while groups are attached (" +
                       join_ids(device->groups) + "); detach them first");
      }
      device->type = message.type;
      reclassify = true;
      break;
    }
    case Message::Verb::attach: {
      if (device->type == nbd::GroupType::none) {
        return refused(device->name + " has type none; set a type first (iobandctl message " + device->name +
                       " 0 type user)");
      }
      if (group_id == qos::kDefaultGroup) return refused("-1 is the default group; it is always attached");
      if (device->groups.contains(group_id)) return refused("group " + std::to_string(group_id) + " is already attached");
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.attach(device_id, group_id); }); !status) {
        return refused(status.message());
      }
      device->groups.emplace(group_id, GroupSettings{});
      reclassify = true;
      break;
    }
    case Message::Verb::detach: {
      if (group_id == qos::kDefaultGroup) return refused("-1 is the default group; it cannot be detached");
      if (auto reply = check_attached(group_id)) return *reply;
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.detach(device_id, group_id); }); !status) {
        return refused(status.message());
      }
      device->groups.erase(group_id);
      reclassify = true;
      break;
    }
    case Message::Verb::weight: {
      if (auto reply = check_attached(group_id)) return *reply;
      const auto weight = static_cast<uint32_t>(message.value);
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_weight(device_id, group_id, weight); });
          !status) {
        return refused(group_name(group_id) + ": " + status.message());
      }
      device->groups.at(group_id).weight = weight;
      break;
    }
    case Message::Verb::token: {
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_token(message.value); }); !status) {
        return refused(status.message());
      }
      settings.token = message.value;
      break;
    }
    case Message::Verb::carryover: {
      if (message.value > UINT32_MAX) return refused("carryover " + std::to_string(message.value) + " is too large");
      const auto carryover = static_cast<uint32_t>(message.value);
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_carryover(carryover); }); !status) {
        return refused(status.message());
      }
      settings.carryover = carryover;
      break;
    }
    case Message::Verb::io_throttle: {
      const auto value = static_cast<uint32_t>(message.value);
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_io_throttle(value); }); !status) {
        return refused(status.message());
      }
      settings.io_throttle = value;
      break;
    }
    case Message::Verb::io_limit: {
      if (message.io_limit_auto) {
        // The numeric io_limit stays, as the cap of the learned window.
        (void)run([&](qos::DeviceGroup& g) {
          g.set_io_limit_auto(true);
          return qos::Status{};
        });
        settings.io_limit_auto = true;
        break;
      }
      const auto value = static_cast<uint32_t>(message.value);
      if (qos::Status status = run([&](qos::DeviceGroup& g) {
            qos::Status set = g.set_io_limit(value);
            if (set) g.set_io_limit_auto(false);  // a number turns auto off
            return set;
          });
          !status) {
        return refused(status.message());
      }
      settings.io_limit = value;
      settings.io_limit_auto = false;
      break;
    }
    case Message::Verb::policy: {
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_policy(message.policy); }); !status) {
        return refused(status.message());
      }
      settings.policy = message.policy;
      break;
    }
    case Message::Verb::range_bw: {
      if (auto reply = check_attached(group_id)) return *reply;
      const qos::RangeBw range = message.range_bw;
      if (qos::Status status = run([&](qos::DeviceGroup& g) {
            return g.set_range_bw(device_id, group_id, range.min_kib, range.max_kib);
          });
          !status) {
        return refused(group_name(group_id) + ": " + status.message());
      }
      device->groups.at(group_id).range_bw = range;
      break;
    }
    case Message::Verb::limit: {
      if (message.group) {
        if (auto reply = check_attached(group_id)) return *reply;
      }
      // Reservations and latency targets ride on the limit keys (qos/limits.h).
      qos::Limits& current = message.group ? device->groups.at(group_id).limits : device->limits;
      qos::Limits limits = message.clear_limits ? qos::Limits{} : current;
      for (const auto& [key, value] : message.limits) {
        if (qos::Status status = qos::set_limit_key(limits, key, value); !status) return refused(status.message());
      }
      const std::optional<qos::GroupId> target = message.group;
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_limits(device_id, target, limits); });
          !status) {
        return refused((message.group ? group_name(group_id) : std::string("the device")) + ": " + status.message());
      }
      current = limits;
      break;
    }
    case Message::Verb::reset: {
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.reset_stats(device_id); }); !status) {
        return refused(status.message());
      }
      changed = false;
      break;
    }
    case Message::Verb::model: {
      // The device group's model: keys not given keep their value, and a
      // model changed by hand is no longer the calibrated one.
      const qos::DeviceModel current = settings.device_model.value_or(qos::kDefaultDeviceModel);
      if (message.model.empty() && !message.model_default) {
        text = model_line(current) + "\n";
        changed = false;
        break;
      }
      std::optional<qos::DeviceModel> wanted;  // nullopt: the default
      if (!message.model_default) {
        qos::DeviceModel model = current;
        for (const auto& [key, value] : message.model) (void)set_model_key(model, key, value);
        wanted = model;
      }
      const qos::DeviceModel applied = wanted.value_or(qos::kDefaultDeviceModel);
      if (qos::Status status = run([&](qos::DeviceGroup& g) { return g.set_device_model(applied, false); }); !status) {
        return refused(status.message());
      }
      settings.device_model = wanted;
      settings.device_model_calibrated = false;
      text = model_line(applied) + "\n";
      break;
    }
    case Message::Verb::access: {
      // New connections get the new list; those already open keep theirs.
      if (message.access) {
        changed = *message.access != device->access;
        device->access = *message.access;
        if (changed && platform_.set_access) platform_.set_access(device->name, device->access);
      } else {
        changed = false;
      }
      for (const std::string& word : nbd::access_words(device->access)) text += (text.empty() ? "" : " ") + word;
      text += "\n";
      break;
    }
  }
  if (changed) {
    if (std::string error = save(); !error.empty()) {
      // All or nothing: what the qos layer took is taken back.
      const qos::Status undone =
          run([&](qos::DeviceGroup& g) { return revert(g, before_group, settings, before_device, *device); });
      *device = before_device;
      settings = before_group;
      return refused("not changed, the state cannot be saved: " + error +
                     (undone ? std::string() : " (and undoing it failed: " + undone.message() + ")"));
    }
  }
  if (reclassify && platform_.set_type) platform_.set_type(device->name, device->type);
  Reply reply;
  reply.text = std::move(text);
  reply.data = {{"device", table_json(*device, settings)}};
  return reply;
}

namespace {

// The devices a table/status request selects, sorted by name; an error
// when a named device does not exist.
std::optional<Error> select(const State& state, const Request& request, std::vector<const DeviceState*>& out) {
  if (request.target && *request.target != "ioband") return std::nullopt;  // no device of another target
  for (const DeviceState& device : state.devices) {
    if (request.name.empty() || device.name == request.name) out.push_back(&device);
  }
  if (!request.name.empty() && out.empty()) {
    return Error::refused(request.command + ": no ioband device named " + request.name);
  }
  std::sort(out.begin(), out.end(), [](const DeviceState* a, const DeviceState* b) { return a->name < b->name; });
  return std::nullopt;
}

}  // namespace

// The in-flight window a device group applies now (io_limit, or the learned
// one under io_limit auto).
uint32_t Engine::io_window(int id) {
  uint32_t window = 0;
  (void)call(id, [&](qos::DeviceGroup& group) {
    window = group.io_window();
    return qos::Status{};
  });
  return window;
}

Reply Engine::table(const Request& request) {
  std::vector<const DeviceState*> devices;
  if (auto error = select(state_, request, devices)) return Reply::failure(*error);
  Reply reply;
  json array = json::array();
  const bool with_name = request.name.empty();
  for (const DeviceState* device : devices) {
    const DeviceGroupSettings& settings = state_.device_groups.at(device->device_group_id);
    reply.text += table_line(*device, settings, with_name) + "\n";
    json object = table_json(*device, settings);
    object["io_window"] = io_window(device->device_group_id);
    array.push_back(std::move(object));
  }
  if (state_.devices.empty()) reply.text = "No devices found\n";
  reply.data = {{"devices", std::move(array)}};
  return reply;
}

Reply Engine::status(const Request& request) {
  std::vector<const DeviceState*> devices;
  if (auto error = select(state_, request, devices)) return Reply::failure(*error);
  Reply reply;
  json array = json::array();
  const bool with_name = request.name.empty();
  for (const DeviceState* device : devices) {
    std::vector<GroupStatus> groups;
    qos::ReservationSummary reservations;
    // The device group's own figures, read in the same visit to its thread.
    uint32_t window = 0;
    qos::WindowSteps steps;
    qos::DeviceModel learned = qos::kDefaultDeviceModel;
    (void)call(device->device_group_id, [&](qos::DeviceGroup& group) {
      for (const auto& [id, settings] : device->groups) {
        groups.push_back({id, group.stats(device->device, id).value_or(qos::GroupStats{}),
                          group.observation(device->device, id).value_or(qos::GroupObservation{}),
                          group.reservation(device->device, id), group.latency_target(device->device, id),
                          group.latency_cap_on(device->device, id)});
      }
      reservations = group.reservations();
      window = group.io_window();
      steps = group.io_window_steps();
      learned = group.learned_device_model();
      return qos::Status{};
    });
    reply.text += status_line(*device, groups, with_name) + "\n";
    json object = status_json(*device, groups, platform_.connections ? platform_.connections(device->name) : 0);
    object["io_limit_auto"] = state_.device_groups.at(device->device_group_id).io_limit_auto;
    object["io_window"] = window;
    if (state_.device_groups.at(device->device_group_id).io_limit_auto) {
      object["io_window_steps"] = window_steps_json(steps);
    }
    object["device_model"] = model_to_json(state_.device_groups.at(device->device_group_id));
    object["learned_model"] = learned_model_json(learned);
    // The device group's reservations against its capacity, when it has any.
    if (reservations.reserved_iops > 0) object["reservations"] = reservations_json(reservations);
    array.push_back(std::move(object));
  }
  if (state_.devices.empty()) reply.text = "No devices found\n";
  reply.data = {{"devices", std::move(array)}};
  add_tree_status(reply.data);
  if (platform_.limit_counters) {
    json limits = json::object();
    for (const auto& [name, value] : platform_.limit_counters()) limits[name] = value;
    reply.data["server_limits"] = std::move(limits);
  }
  return reply;
}

std::vector<std::string> Engine::devices_on_disk(const DeviceState& device) const {
  std::vector<std::string> names;
  for (const DeviceState& other : state_.devices) {
    if (other.block_device && overlapping_block_devices(other.major, other.minor, device.major, device.minor)) {
      names.push_back(other.name);
    }
  }
  return names;
}

std::string Engine::busy_calibrating(const std::string& name) const {
  if (!calibration_) return {};
  const bool held = std::find(calibration_->held.begin(), calibration_->held.end(), name) != calibration_->held.end();
  if (name != calibration_->device && !held) return {};
  return "iobandctl calibrate " + calibration_->device + " is under way" +
         (name == calibration_->device ? std::string() : " on the same disk") +
         "; try again when it is done (within a minute)";
}

Reply Engine::calibrate(const Request& request, Answer& answer) {
  if (request.name.empty()) return Reply::failure(Error::bad_usage("calibrate needs NAME", usage_of("calibrate")));
  const double seconds = request.seconds.value_or(io::kDefaultCalibrationSeconds);
  if (!(seconds >= io::kMinCalibrationSeconds && seconds <= io::kMaxCalibrationSeconds)) {
    return Reply::failure(Error::bad_usage("calibrate " + request.name + ": --seconds must be from " +
                                               seconds_text(io::kMinCalibrationSeconds) + " to " +
                                               seconds_text(io::kMaxCalibrationSeconds) + ", not " +
                                               (std::isfinite(seconds) ? seconds_text(seconds) : std::string("that")),
                                           usage_of("calibrate")));
  }
  const DeviceState* device = find_device(request.name);
  if (device == nullptr) return Reply::failure(Error::refused("calibrate: no ioband device named " + request.name));
  const std::string prefix = "calibrate " + request.name + ": ";
  if (calibration_) {
    return Reply::failure(Error::refused(prefix + "iobandctl calibrate " + calibration_->device +
                                         " is under way; one at a time (try again when it is done, within a minute)"));
  }
  if (cancel_calibration_.load()) return Reply::failure(Error::refused(prefix + "iobandd is stopping"));

  Calibration calibration;
  calibration.device = device->name;
  calibration.device_group_id = device->device_group_id;
  calibration.path = device->path;
  calibration.block_device = device->block_device;
  calibration.major = device->major;
  calibration.minor = device->minor;
  int connections = platform_.connections ? platform_.connections(device->name) : 0;
  if (device->block_device) {
    // Writes are measured by writing back data just read: nobody else may
    // write meanwhile, through any ioband device on the same sectors.
    calibration.held = devices_on_disk(*device);
    connections = 0;
    std::string connected;
    if (platform_.hold_exports) {
      connections = platform_.hold_exports(calibration.held, true);
    }
    for (const std::string& name : calibration.held) {
      const int n = platform_.connections ? platform_.connections(name) : 0;
      if (n > 0) connected += (connected.empty() ? "" : ", ") + name + " (" + std::to_string(n) + ")";
      if (!platform_.hold_exports) connections += n;
    }
    if (connections > 0) {
      if (platform_.hold_exports) platform_.hold_exports(calibration.held, false);
      return Reply::failure(Error::refused(
          prefix + device->path + " is a block device, whose writes are measured by rewriting data in place; that "
          "needs every ioband device on it without connections, and " +
          (connected.empty() ? std::string("some") : connected) + (connections == 1 ? " has a client" : " have clients") +
          " connected; disconnect them and try again"));
    }
  }
  io::CalibrationOptions options;
  options.path = device->path;
  options.size = device->sectors * 512;
  options.seconds = seconds;
  options.rewrite_in_place = device->block_device;
  calibration_ = std::move(calibration);
  log_line("calibrate " + device->name + ": measuring " + device->path + " for about " + seconds_text(seconds) + " s" +
           (device->block_device ? ", new connections to " + std::to_string(calibration_->held.size()) +
                                       " device(s) on it held meanwhile"
                                 : std::string()));

  auto report = std::make_shared<io::CalibrationReport>();
  answer.work = [this, options, report] {
    try {
      *report = platform_.calibrate ? platform_.calibrate(options, cancel_calibration_)
                                    : io::calibrate(options, cancel_calibration_);
    } catch (const std::exception& e) {
      report->error = std::string("internal error: ") + e.what();
    }
  };
  answer.finish = [this, report, connections, id = request.id] {
    Reply reply;
    try {
      reply = finish_calibration(*report, connections);
    } catch (const std::exception& e) {
      calibration_.reset();
      reply = Reply::failure(Error::refused("calibrate: internal error: " + std::string(e.what())));
    }
    return reply_to_line(reply, id);
  };
  return {};
}

Reply Engine::finish_calibration(const io::CalibrationReport& report, int connections) {
  const Calibration calibration = std::move(*calibration_);
  calibration_.reset();
  if (!calibration.held.empty() && platform_.hold_exports) platform_.hold_exports(calibration.held, false);
  const std::string prefix = "calibrate " + calibration.device + ": ";
  DeviceState* device = find_device(calibration.device);
  if (device == nullptr || device->device_group_id != calibration.device_group_id || device->path != calibration.path) {
    return Reply::failure(Error::refused(prefix + "the device changed during the measurement; nothing was applied"));
  }
  const int id = device->device_group_id;
  DeviceGroupSettings& settings = state_.device_groups.at(id);
  const std::string kept = "; the model stays as it was (" +
                           model_line(settings.device_model.value_or(qos::kDefaultDeviceModel)) + ")";
  if (!report.error.empty()) {
    log_line(prefix + "not calibrated: " + report.error);
    return Reply::failure(Error::refused(prefix + "not calibrated: " + report.error + kept));
  }
  const qos::DeviceModel model = report.model;
  const DeviceGroupSettings before = settings;
  if (qos::Status status = call(id, [&](qos::DeviceGroup& group) { return group.set_device_model(model, true); });
      !status) {
    return Reply::failure(Error::refused(prefix + "not calibrated: " + status.message() + kept));
  }
  settings.device_model = model;
  settings.device_model_calibrated = true;

  // How much the short runs of one figure differed: the storage's own noise.
  std::string noisiest;
  double spread = 0;
  json figures = json::array();
  for (const io::CalibrationFigure& figure : report.figures) {
    const auto [low, high] = std::minmax_element(figure.samples.begin(), figure.samples.end());
    if (low != figure.samples.end() && *low > 0 && *high / *low - 1 > spread) {
      spread = *high / *low - 1;
      noisiest = figure.name;
    }
    figures.push_back({{"name", figure.name}, {"depth", figure.depth}, {"value", figure.value},
                       {"samples", figure.samples}});
  }
  json sweep = json::array();
  for (const io::CalibrationFigure& point : report.sweep) {
    sweep.push_back({{"depth", point.depth}, {"value", std::round(point.value)}, {"samples", point.samples}});
  }
  std::vector<std::string> notes = report.notes;
  if (connections > 0) {
    notes.push_back(std::to_string(connections) + (connections == 1 ? " client was" : " clients were") +
                    " connected to " + calibration.device + ": their I/O shared the storage with the measurement");
  }
  if (!noisiest.empty()) {
    notes.push_back("the short runs of one figure differed by up to " + std::to_string(std::lround(spread * 100)) +
                    " % (" + noisiest + "): how much the storage's speed varied meanwhile");
  }

  Reply reply;
  reply.text = model_line(model) + "\n" + calibration.device + ": calibrated in " + seconds_text(report.seconds) +
               " s, applied to device group " + std::to_string(id) + "\n";
  for (const std::string& note : notes) reply.text += "  " + note + "\n";
  reply.data = {{"name", calibration.device},
                {"device_group_id", id},
                {"device_model", model_to_json(model, true)},
                {"seconds", report.seconds},
                {"direct", report.direct},
                {"notes", notes},
                {"figures", std::move(figures)},
                {"sweep", std::move(sweep)}};
  log_line(prefix + model_line(model) + " in " + seconds_text(report.seconds) + " s");
  if (std::string error = save(); !error.empty()) {
    (void)call(id, [&](qos::DeviceGroup& group) {
      return group.set_device_model(before.device_model.value_or(qos::kDefaultDeviceModel),
                                    before.device_model_calibrated);
    });
    settings = before;
    return Reply::failure(Error::refused(prefix + "not applied, the state cannot be saved: " + error + kept));
  }
  return reply;
}

Reply Engine::targets(const Request&) {
  Reply reply;
  char line[64];
  std::snprintf(line, sizeof line, "%-16s v%s\n", "ioband", kVersion);
  reply.text = line;
  reply.data = {{"targets", json::array({{{"name", "ioband"}, {"version", kVersion}}})}};
  return reply;
}

}  // namespace ioband::control
