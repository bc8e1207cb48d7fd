#pragma once
// What the HTTP listener shows (http.h): a snapshot of every ioband device
// and group, taken on a scrape, and its two forms, Prometheus metric
// families (prometheus-cpp's types, its text exposition) and the JSON of
// /api/stats for the built-in page.
//
// The data path counts per reactor without locks (qos::DeviceGroup's
// counters and observation.h); a snapshot posts one message to each reactor
// that owns a device group and copies the counters there. A request never
// waits for a scrape, and a scrape never locks a request out.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "cluster/agent.h"
#include "nbd/export.h"
#include "qos/device_group.h"

namespace ioband::daemon {

class DaemonPlatform;

struct GroupSample {
  qos::GroupId id = qos::kDefaultGroup;
  std::uint32_t weight = 0;
  qos::Limits limits;
  qos::RangeBw range_bw;
  qos::GroupStats stats;
  qos::GroupObservation observation;
};

struct DeviceSample {
  std::string name;             // the NBD export
  int device_group_id = -1;     // -1: an unscheduled export (iobandd --export)
  int connections = 0;
  std::uint32_t queued = 0;
  std::uint32_t in_flight = 0;
  qos::Limits limits;
  std::vector<GroupSample> groups;  // default first
};

struct DeviceGroupSample {
  int id = 0;
  qos::Policy policy = qos::kDefaultPolicy;
  std::uint32_t io_window = 0;
  std::uint32_t io_limit = 0;
  std::uint32_t io_throttle = 0;
  std::uint32_t queued = 0;
  std::uint32_t in_flight = 0;
  std::uint64_t weight_total = 0;  // of every group of its devices: a group's share is weight / this
};

struct Snapshot {
  std::vector<DeviceGroupSample> device_groups;
  std::vector<DeviceSample> devices;  // by name
  bool complete = true;  // false: a reactor did not answer within the timeout
  double unix_seconds = 0;
  double gather_seconds = 0;  // how long the snapshot took
};

// Takes a snapshot: one message per reactor that owns a device group. Any
// thread but a reactor's. A reactor that does not answer within `timeout`
// leaves its devices out (complete = false).
Snapshot gather(DaemonPlatform& platform, const nbd::ExportRegistry& exports, std::chrono::milliseconds timeout);

// "default" for the default group, else the id.
std::string group_label(qos::GroupId id);

std::vector<prometheus::MetricFamily> to_metric_families(const Snapshot& snapshot);
std::string to_json(const Snapshot& snapshot);
// Cluster tenants (iobandd --etcd): this node's share, demand and usage of
// each, the cluster-wide rate, and the etcd connection, from the agent's
// snapshot (no reactor is asked).
void add_cluster_families(std::vector<prometheus::MetricFamily>& families, const std::string& node,
                          const cluster::Agent::Snapshot& snapshot);

// The Prometheus side: each Collect() takes a fresh snapshot.
class MetricsCollector final : public prometheus::Collectable {
 public:
  MetricsCollector(DaemonPlatform& platform, const nbd::ExportRegistry& exports)
      : platform_(platform), exports_(exports) {}
  std::vector<prometheus::MetricFamily> Collect() const override;
  void set_cluster(const cluster::Agent* agent) noexcept { cluster_ = agent; }

 private:
  DaemonPlatform& platform_;
  const nbd::ExportRegistry& exports_;
  const cluster::Agent* cluster_ = nullptr;
};

}  // namespace ioband::daemon
