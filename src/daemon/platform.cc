#include "daemon/platform.h"

#include <chrono>
#include <future>
#include <thread>

#include "io/backend.h"
#include "io/image.h"
#include "io/log.h"

namespace ioband::daemon {

control::Platform DaemonPlatform::make() {
  control::Platform p;
  p.create_export = [this](const control::DeviceConfig& config, qos::DeviceGroup& group, qos::DeviceId device) {
    return create_export(config, group, device);
  };
  p.remove_export = [this](const std::string& name, bool force) { return remove_export(name, force); };
  p.unpublish_export = [this](const std::string& name, bool force) { return unpublish_export(name, force); };
  p.connections = [this](const std::string& name) {
    if (auto e = exports_.find(name)) return e->connections.load();
    std::lock_guard lock(mutex_);
    auto left = removing_.find(name);
    return left == removing_.end() ? 0 : left->second->connections.load();
  };
  p.set_type = [this](const std::string& name, control::GroupType type) {
    if (auto e = exports_.find(name)) {
      e->scheduling.type.store(type, std::memory_order_relaxed);
      e->scheduling.epoch.fetch_add(1, std::memory_order_release);
    }
  };
  p.set_access = [this](const std::string& name, const nbd::AccessList& access) {
    if (auto e = exports_.find(name)) e->set_access(access);
  };
  p.hold_exports = [this](const std::vector<std::string>& names, bool hold) {
    int connections = 0;
    for (const std::string& name : names) {
      if (auto e = exports_.find(name)) {
        e->held.store(hold);  // before the count is read: see Export::admit
        connections += e->connections.load();
      }
    }
    return connections;
  };
  p.run_on_owner = [this](int id, const std::function<void()>& fn) { run_on_owner(id, fn); };
  p.release_device_group = [this](int id, qos::DeviceGroup&) { release_device_group(id); };
  p.limit_counters = [this] {
    const nbd::Limits& l = server_.limits();
    const nbd::LimitCounters& c = l.counters;
    const auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
    return std::vector<std::pair<std::string, uint64_t>>{
        {"connections", static_cast<uint64_t>(server_.sessions())},
        {"request_memory_bytes", l.memory.used()},
        {"request_memory_peak_bytes", l.memory.peak()},
        {"request_memory_staging_bytes", l.memory.staging()},
        {"request_memory_cap_bytes", l.memory.cap()},
        {"handshake_timeouts", get(c.handshake_timeouts)},
        {"idle_timeouts", get(c.idle_timeouts)},
        {"slow_readers_closed", get(c.slow_readers_closed)},
        {"refused_max_connections", get(c.refused_max_connections)},
        {"refused_per_client", get(c.refused_per_client)},
        {"memory_waits", get(c.memory_waits)},
        {"accept_pauses", get(c.accept_pauses)},
    };
  };
  return p;
}

io::Reactor& DaemonPlatform::reactor_for(int device_group_id) const {
  const size_t n = reactors_.size();
  const size_t index = static_cast<size_t>((device_group_id % static_cast<long>(n) + static_cast<long>(n)) %
                                           static_cast<long>(n));
  return *reactors_[index];
}

std::string DaemonPlatform::create_export(const control::DeviceConfig& config, qos::DeviceGroup& group,
                                          qos::DeviceId device) {
  if (exports_.find(config.name)) return "an export named " + config.name + " already exists";
  io::ImageOptions image;
  image.path = config.path;
  image.format = config.format;
  image.size = config.sectors * 512;
  image.lock = image_locks_;
  image.share_key = reactor_for(config.device_group_id).index();
  std::string error;
  auto backend = io::open_image_backend(image, error);
  if (!backend) return error;
  if (config.format == "qcow2" && backend->size() != config.sectors * 512) {
    return config.path + ": the qcow2 image's virtual size is " + std::to_string(backend->size()) + " bytes (" +
           std::to_string(backend->size() / 512) + " sectors), not the " + std::to_string(config.sectors) +
           " sectors of the table line";
  }

  nbd::DeviceGroupDriver* driver;
  {
    std::lock_guard lock(mutex_);
    auto& slot = drivers_[config.device_group_id];
    if (!slot) slot = std::make_unique<nbd::DeviceGroupDriver>(group, reactor_for(config.device_group_id));
    driver = slot.get();
  }
  auto e = std::make_shared<nbd::Export>();
  e->name = config.name;
  e->description = "ioband device, device group " + std::to_string(config.device_group_id);
  e->backend = std::move(backend);
  e->reactor = &driver->reactor();
  e->scheduling.driver = driver;
  e->scheduling.device = device;
  e->scheduling.type.store(config.type);
  if (!config.access.empty()) e->set_access(config.access);
  log_line("ioband device " + config.name + ": " + e->backend->describe() + ", " + std::to_string(config.sectors) +
           " sectors, device group " + std::to_string(config.device_group_id));
  if (!exports_.add(std::move(e))) return "an export named " + config.name + " already exists";
  return {};
}

std::string DaemonPlatform::remove_export(const std::string& name, bool force) {
  return unpublish_export(name, force)();
}

std::function<std::string()> DaemonPlatform::unpublish_export(const std::string& name, bool force) {
  std::shared_ptr<nbd::Export> e = exports_.remove(name);
  {
    std::lock_guard lock(mutex_);
    auto left = removing_.find(name);
    if (!e && left != removing_.end()) e = left->second;  // a remove that timed out before
    if (left != removing_.end()) removing_.erase(left);
  }
  if (!e) return [] { return std::string(); };
  if (force) server_.disconnect_export(name);
  // Sessions hold the export while they live: when only ours is left, none
  // of its requests is queued or in flight and their buffers are freed.
  // Aborted sessions close at once; only requests still on the storage can
  // make this wait.
  return [this, name, e]() mutable {
    const auto deadline = std::chrono::steady_clock::now() + kRemoveWait;
    while (e.use_count() > 1 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (e.use_count() > 1) {
      const int connections = e->connections.load();
      std::string left = std::to_string(connections) + (connections == 1 ? " connection" : " connections") +
                         " of " + name + " still closing after " + std::to_string(kRemoveWait.count()) +
                         " s, with requests on the storage not finished; the export takes no new connections";
      log_line("remove " + name + ": " + left);
      std::lock_guard lock(mutex_);
      removing_[name] = std::move(e);
      return left;
    }
    log_line("ioband device " + name + " removed");
    return std::string();
  };
}

void DaemonPlatform::run_on_owner(int id, const std::function<void()>& fn) {
  nbd::DeviceGroupDriver* driver = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto it = drivers_.find(id);
    if (it != drivers_.end()) driver = it->second.get();
  }
  if (!running_) {
    fn();
    return;
  }
  std::promise<void> done;
  reactor_for(id).post([&] {
    fn();
    // A changed setting may release queued requests at once.
    if (driver) driver->pump();
    done.set_value();
  });
  done.get_future().wait();
}

std::vector<std::pair<int, nbd::DeviceGroupDriver*>> DaemonPlatform::device_groups() {
  std::lock_guard lock(mutex_);
  std::vector<std::pair<int, nbd::DeviceGroupDriver*>> out;
  for (const auto& [id, driver] : drivers_) out.emplace_back(id, driver.get());
  return out;
}

void DaemonPlatform::release_device_group(int id) {
  std::lock_guard lock(mutex_);
  auto it = drivers_.find(id);
  if (it == drivers_.end()) return;
  it->second->retire();
  retired_.push_back(std::move(it->second));
  drivers_.erase(it);
}

}  // namespace ioband::daemon
