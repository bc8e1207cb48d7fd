#pragma once
// What the control engine needs from the running daemon: exports opened and
// published, connections ended, work run on the reactor that owns a device
// group. Wiring only.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "control/engine.h"
#include "io/reactor.h"
#include "nbd/export.h"
#include "nbd/scheduler.h"
#include "nbd/server.h"

namespace ioband::daemon {

// How long remove waits for the connections of a device to close.
inline constexpr std::chrono::seconds kRemoveWait{5};

class DaemonPlatform {
 public:
  DaemonPlatform(std::vector<io::Reactor*> reactors, nbd::ExportRegistry& exports, nbd::Server& server)
      : reactors_(std::move(reactors)), exports_(exports), server_(server) {}

  control::Platform make();
  // Before the reactors run, work for a device group runs inline.
  void set_running(bool running) { running_ = running; }
  void set_image_locks(bool lock) { image_locks_ = lock; }
  // The live device groups' drivers, by id (the metrics listener: metrics.h).
  std::vector<std::pair<int, nbd::DeviceGroupDriver*>> device_groups();

 private:
  io::Reactor& reactor_for(int device_group_id) const;
  std::string create_export(const control::DeviceConfig& config, qos::DeviceGroup& group, qos::DeviceId device);
  std::string remove_export(const std::string& name, bool force);
  // Unpublishes now; the function returned waits (control::Platform).
  std::function<std::string()> unpublish_export(const std::string& name, bool force);
  void run_on_owner(int device_group_id, const std::function<void()>& fn);
  void release_device_group(int device_group_id);

  std::vector<io::Reactor*> reactors_;
  nbd::ExportRegistry& exports_;
  nbd::Server& server_;
  std::atomic<bool> running_{false};
  bool image_locks_ = true;
  std::mutex mutex_;
  std::map<int, std::unique_ptr<nbd::DeviceGroupDriver>> drivers_;  // guarded by mutex_
  // A released driver may still have a timer completion in its ring; it is
  // kept until exit rather than freed under that completion.
  std::vector<std::unique_ptr<nbd::DeviceGroupDriver>> retired_;  // guarded by mutex_
  // Exports unpublished by a remove whose connections outlived its wait.
  std::map<std::string, std::shared_ptr<nbd::Export>> removing_;  // guarded by mutex_
};

}  // namespace ioband::daemon
