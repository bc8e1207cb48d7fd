// The control engine: the model of device groups, ioband devices and ioband
// groups, driven by the dm-ioband command language (create, remove, message,
// table, status, targets) and calibrate, arriving as JSON lines on the
// control socket.
//
// Threads: the engine is called from one control thread only. It owns the
// qos::DeviceGroup objects (one per device group id, created with the first
// device of that id, destroyed with its last) but touches one only inside
// platform.run_on_owner, which runs the function on the group's reactor and
// returns once it has run: when a reply says "ok", the effect holds.
//
// Every change is saved to the state file (atomically) before it is
// acknowledged, and a change that cannot be saved is refused and undone (or,
// for remove, refused before anything is done): the state file, the model
// and the qos layer always agree. restore() rebuilds the same devices and
// settings at start.
//
// calibrate takes up to a minute of I/O: answer_line() hands it back as work
// for another thread (it touches nothing of the engine) and a finish to run
// on the control thread afterwards, which applies and saves the result, so
// the control thread goes on answering meanwhile.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/agent.h"
#include "control/model.h"
#include "control/protocol.h"
#include "control/tenant.h"
#include "io/calibrate.h"
#include "nbd/classify.h"
#include "qos/device_group.h"

namespace ioband::control {

// Classification lives with the data path (nbd/classify.h); the control
// language only names the types.
using GroupType = nbd::GroupType;
using PeerInfo = nbd::PeerIdentity;
using nbd::group_id_for;

// One ioband device as the table line gives it, plus its group type.
struct DeviceConfig {
  std::string name;               // the NBD export name
  std::string path;               // image file or block device; the first sectors*512 bytes are served
  uint64_t sectors = 0;
  int device_group_id = 0;
  uint32_t io_throttle = qos::kDefaultIoThrottle;  // the device group's current values
  uint32_t io_limit = qos::kDefaultIoLimit;
  GroupType type = GroupType::none;  // non-none only when restored from the state file
  nbd::AccessList access;            // who may open the export (empty: everyone)
  std::string format = "raw";        // raw or qcow2 (io/image.h)
};

// What a path is: its size and the device number `table` prints.
struct PathInfo {
  uint64_t bytes = 0;
  unsigned major = 0;  // a block device: st_rdev; a regular file: st_dev (its file system's device)
  unsigned minor = 0;
  bool block_device = false;
};

// stat() (and BLKGETSIZE64 for a block device). "" or "PATH: reason".
std::string probe_path(const std::string& path, PathInfo& info);

// What the daemon provides to the engine.
struct Platform {
  // Open config.path (first sectors*512 bytes) and publish NBD export
  // config.name, scheduled by `group` as device `device` (already added to
  // the group). Returns "" or a sentence ("/x.img: Permission denied").
  std::function<std::string(const DeviceConfig& config, qos::DeviceGroup& group, qos::DeviceId device)>
      create_export;
  // Unpublish the export and return once none of its requests is queued or
  // in flight and its connections are gone. force: end live connections
  // first (the engine only passes force=false when connections() was 0).
  // "" when done; otherwise, after a bounded wait, what is left (a
  // sentence): the export stays unpublished, and a later call waits again.
  std::function<std::string(const std::string& name, bool force)> remove_export;
  // Optional, the same in two steps: unpublish (and with force end the
  // connections) now, and return the wait, which blocks as remove_export
  // does and touches nothing of the engine: remove runs it on a thread of
  // its own, so the control plane goes on answering meanwhile.
  std::function<std::function<std::string()>(const std::string& name, bool force)> unpublish_export;
  // Live NBD connections of the export (empty: none).
  std::function<int(const std::string& name)> connections;
  // Classification may have changed (type, attach or detach): live
  // connections of the export compute their group again (optional).
  std::function<void(const std::string& name, GroupType type)> set_type;
  // The export's access list changed: new connections get the new one
  // (optional; connections already open keep theirs).
  std::function<void(const std::string& name, const nbd::AccessList& access)> set_access;
  // Runs fn on the thread that owns device group `id` (a new id: pick its
  // reactor) and returns when it has run. After a settings change the
  // owner should let the device group dispatch again (DeviceGroupDriver::pump).
  // Empty: fn runs inline (tests, a single-threaded daemon).
  std::function<void(int device_group_id, const std::function<void()>& fn)> run_on_owner;
  // Optional. Called (control thread) before the engine destroys a device
  // group whose last device was removed: drop what refers to it (its
  // driver, timers). The engine then destroys it inside run_on_owner.
  std::function<void(int device_group_id, qos::DeviceGroup& group)> release_device_group;
  // Optional; empty means probe_path (tests inject fake paths here).
  std::function<std::string(const std::string& path, PathInfo& info)> probe;
  // Optional. hold=true: the exports refuse new connections from now on,
  // and the answer is how many they have; hold=false: they take them again.
  // Empty: nothing is held, and the answer is connections()'s.
  std::function<int(const std::vector<std::string>& names, bool hold)> hold_exports;
  // Optional; empty means io::calibrate (tests inject a fake measurement).
  // Runs off the control thread.
  std::function<io::CalibrationReport(const io::CalibrationOptions& options, const std::atomic<bool>& cancel)>
      calibrate;
  // Optional: the NBD server's resource limits and what they did (name,
  // value), shown by status --json as "server_limits".
  std::function<std::vector<std::pair<std::string, uint64_t>>()> limit_counters;
};

class Engine {
 public:
  Engine(Platform platform, std::string state_path);
  // Destroys the device groups on the calling thread: call after the
  // reactors have stopped.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // At start: reads state_path if it exists and recreates every device
  // (through platform.create_export) and setting. "" on success (also when
  // there is no state file yet); otherwise "STATE_PATH: reason" — the start
  // must stop, and this engine never writes the state file again.
  // strict=false: a device that cannot be rebuilt (its image is missing,
  // say) is logged and skipped, and kept in the state file as it was (a
  // `remove` drops it); the others start.
  std::string restore(bool strict = true);

  // One request line of the control protocol -> one response line (without
  // the newline). may_change=false (the peer is not the socket's owner):
  // every command that would change state is refused. A calibrate is done
  // here, on the calling thread.
  std::string handle_line(const std::string& line, bool may_change);

  // The answer to a request line: the response line now, or (calibrate)
  // `work`, to run on a thread of its own, then `finish`, to run on the
  // control thread once work has returned, which gives the response line.
  struct Answer {
    std::string line;
    std::function<void()> work;
    std::function<std::string()> finish;
  };
  Answer answer_line(const std::string& line, bool may_change);

  // Ends a calibration under way soon (it is refused as cancelled). Any
  // thread; for a daemon that is stopping.
  void cancel_calibration() noexcept { cancel_calibration_.store(true); }

  // The scheduling of export `name`, or nullopt. Control thread only: the
  // data path gets its group and device through create_export.
  struct Scheduling {
    qos::DeviceGroup* group = nullptr;
    qos::DeviceId device = 0;
    GroupType type = GroupType::none;
  };
  std::optional<Scheduling> scheduling(const std::string& name) const;

  // Cluster tenants (engine_cluster.cc, docs/cluster.md): the agent that
  // speaks to etcd on its own thread (null: iobandd has no --etcd). Set
  // before restore().
  void set_cluster(cluster::Agent* agent) noexcept { cluster_ = agent; }
  // Control thread, every kClusterSample: samples the load of the cluster
  // tenants, hands the agent what to publish each period, applies the
  // shares it computed and the settings etcd holds.
  void cluster_tick();
  static constexpr std::chrono::milliseconds kClusterSample{50};

  // The state file's contents for the current model (tests, diagnostics).
  std::string state_json() const;
  const std::string& state_path() const noexcept { return state_path_; }

 private:
  Reply execute(const Request& request, bool may_change, Answer& answer);
  // calibrate: refused at once, or work and a finish in `answer`.
  Reply calibrate(const Request& request, Answer& answer);
  // The control thread's part once the measurement is done.
  Reply finish_calibration(const io::CalibrationReport& report, int connections);
  Reply finish_remove(const std::string& name, const std::string& left);
  Reply create(const Request& request);
  Reply remove(const Request& request, Answer& answer);
  // The control thread's part once the connections of a removed device are gone.
  Reply message(const Request& request);
  Reply table(const Request& request);
  Reply status(const Request& request);
  Reply targets(const Request& request);
  // Tenants (engine_tenant.cc, control/tenant.h, qos/tree.h).
  Reply tenant(const Request& request);
  Reply tenant_list(const std::string& name);
  Reply tenant_capacity(const TenantCommand& command);  // engine_cluster.cc
  // Moves the qos layer from `before` to `after` (either may be null: no
  // such tenant) for the tenant's devices that are served.
  // `admitted`: false for a change asked for now, whose reservation must pass admission.
  qos::Status apply_tenant(const TenantState* before, const TenantState* after, bool admitted = true);
  // The device group of the tenant's served devices (nullopt: none).
  std::optional<int> tenant_device_group(const TenantState& tenant) const;
  // Takes `device` out of its tenant in `state` (remove).
  static void forget_in_tenants(State& state, const std::string& device);
  // restore(): the saved tenants onto the devices restored.
  std::string restore_tenants(const State& saved);
  // status --json: shares of the tree and the tenants' limit state.
  void add_tree_status(nlohmann::json& reply_data);

  // Builds a device (its device group if new, its groups and settings) and
  // publishes its export. On error nothing has changed.
  std::string build_device(DeviceState device, const DeviceGroupSettings& device_group, bool explicit_throttle_limit);
  // Unpublishes and forgets a device; the device group goes with its last device.
  std::string destroy_device(const std::string& name, bool force);
  void leave_tenants(const std::string& name);
  void destroy_device_group(int id);
  std::string save();
  // Writes `state` (with the devices not restored) to the state file.
  std::string write_state(const State& state);
  State saved_view(const State& state) const;
  const DeviceState* find_unrestored(const std::string& name) const;
  DeviceState* find_device(const std::string& name);
  void run_on_owner(int id, const std::function<void()>& fn);
  // Runs fn on the owner of device group `id`; returns its status.
  qos::Status call(int id, const std::function<qos::Status(qos::DeviceGroup&)>& fn);
  uint32_t io_window(int id);
  // The devices on the same disk as block device `device` (itself included).
  std::vector<std::string> devices_on_disk(const DeviceState& device) const;
  // Why `name` cannot be removed now ("" if it can).
  std::string busy_calibrating(const std::string& name) const;

  // The calibration under way (at most one).
  struct Calibration {
    std::string device;
    int device_group_id = 0;
    std::string path;
    std::vector<std::string> held;  // exports that refuse new connections until it ends
    bool block_device = false;
    unsigned major = 0, minor = 0;
  };
  std::optional<Calibration> calibration_;
  std::atomic<bool> cancel_calibration_{false};

  Platform platform_;
  std::string state_path_;
  bool save_disabled_ = false;  // restore failed: never overwrite the file we could not read
  State state_;                 // the model, equal to what the qos layer accepted
  // Devices of the state file not restored at start (restore(false)): saved
  // as they were read, never served.
  // Devices removed from the model and the state file whose connections
  // are still closing (remove's work under way): their qos device goes,
  // or (connections left) they come back, in finish_remove.
  std::map<std::string, DeviceState> removing_;
  std::vector<DeviceState> unrestored_;
  std::map<int, DeviceGroupSettings> unrestored_groups_;
  std::map<int, std::unique_ptr<qos::DeviceGroup>> device_groups_;
  qos::TenantId next_tenant_id_ = 1;
  // Cluster tenants (engine_cluster.cc).
  // The samples of the last publish period, oldest first: the agent is
  // handed a sliding window's figures at every tick, so what it publishes
  // is never older than one tick.
  struct ClusterSample {
    std::chrono::steady_clock::time_point at;
    uint64_t backlog = 0;    // requests queued or in flight
    uint64_t completed = 0;  // requests completed so far
  };
  using ClusterLoad = std::deque<ClusterSample>;
  // The limits the qos layer enforces for the tenant: its own, scaled by
  // this node's share when it is cluster-wide.
  static qos::Limits enforced_limits(const TenantState& tenant);
  // A cluster tenant's "cluster" object of status and list --json (only cluster tenants have one).
  nlohmann::json cluster_json(const std::string& name, const TenantState& tenant) const;
  // tenant create/set with cluster on: join (take etcd's settings) or write
  // them; "" or why not (nothing changed).
  std::string cluster_command(const std::string& name, const TenantCommand& command, const TenantState* before,
                              TenantState& after);
  // Settings read from etcd, applied and saved; shares applied.
  void cluster_follow(const cluster::Agent::Snapshot& snapshot);
  cluster::Agent* cluster_ = nullptr;
  std::map<std::string, ClusterLoad> cluster_loads_;
  std::map<std::string, double> cluster_parts_;  // tenant -> its part of the shared capacity, as applied
  std::map<std::string, std::string> cluster_bad_settings_;  // tenant -> text already logged as bad  // a tenant's id in the qos layer (runtime only)
};

}  // namespace ioband::control
