#include "daemon/metrics.h"

#include <algorithm>
#include <future>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "control/format.h"
#include "daemon/platform.h"
#include "ioband/version.h"
#include "nbd/scheduler.h"

namespace ioband::daemon {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

double seconds_of(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

struct Owned {
  int id = 0;
  nbd::DeviceGroupDriver* driver = nullptr;
  std::vector<std::pair<std::string, qos::DeviceId>> devices;  // exports it schedules
};

// On the owner reactor: copies what the listener shows of one device group.
void sample_device_group(const Owned& owned, DeviceGroupSample& out, std::vector<DeviceSample>& devices) {
  const qos::DeviceGroup& group = owned.driver->group();
  out.id = owned.id;
  out.policy = group.policy();
  out.io_window = group.io_window();
  out.io_limit = group.io_limit();
  out.io_throttle = group.io_throttle();
  out.queued = group.queued();
  out.in_flight = group.in_flight();
  for (const auto& [name, device] : owned.devices) {
    if (!group.has_device(device)) continue;  // removed since the exports were listed
    DeviceSample sample;
    sample.name = name;
    sample.device_group_id = owned.id;
    sample.queued = group.queued(device);
    sample.in_flight = group.in_flight(device);
    sample.limits = group.limits(device, std::nullopt).value_or(qos::Limits{});
    const std::vector<qos::GroupId> ids = group.groups(device);
    sample.groups.reserve(ids.size());  // a reallocation would copy every sample again, on the reactor
    for (qos::GroupId id : ids) {
      GroupSample g;
      g.id = id;
      g.weight = group.weight(device, id).value_or(0);
      g.limits = group.limits(device, id).value_or(qos::Limits{});
      g.range_bw = group.range_bw(device, id).value_or(qos::RangeBw{});
      g.stats = group.stats(device, id).value_or(qos::GroupStats{});
      g.observation = group.observation(device, id).value_or(qos::GroupObservation{});
      out.weight_total += g.weight;
      sample.groups.push_back(g);
    }
    devices.push_back(std::move(sample));
  }
}

// What one reactor answers.
struct ReactorSample {
  std::vector<DeviceGroupSample> device_groups;
  std::vector<DeviceSample> devices;
};

ClientMetric metric(std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  return m;
}

class Families {
 public:
  MetricFamily& family(const std::string& name, const std::string& help, MetricType type) {
    auto [it, inserted] = index_.try_emplace(name, families_.size());
    if (inserted) families_.push_back({name, help, type, {}});
    return families_[it->second];
  }
  void gauge(const std::string& name, const std::string& help, std::vector<ClientMetric::Label> labels,
             double value) {
    ClientMetric m = metric(std::move(labels));
    m.gauge.value = value;
    family(name, help, MetricType::Gauge).metric.push_back(std::move(m));
  }
  void counter(const std::string& name, const std::string& help, std::vector<ClientMetric::Label> labels,
               double value) {
    ClientMetric m = metric(std::move(labels));
    m.counter.value = value;
    family(name, help, MetricType::Counter).metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> take() { return std::move(families_); }

 private:
  std::vector<MetricFamily> families_;
  std::map<std::string, std::size_t> index_;
};

// A device's or a group's limits as gauges, one series per limited rate.
void limit_gauges(Families& f, const std::string& prefix, const std::vector<ClientMetric::Label>& labels,
                  const qos::Limits& limits) {
  const struct {
    const qos::Rate& rate;
    const char* direction;
    bool bytes;
  } rates[] = {{limits.iops_total, "total", false}, {limits.iops_read, "read", false},
               {limits.iops_write, "write", false}, {limits.bps_total, "total", true},
               {limits.bps_read, "read", true},     {limits.bps_write, "write", true}};
  for (const auto& r : rates) {
    if (!r.rate.limited()) continue;
    auto with = labels;
    with.push_back({"direction", r.direction});
    if (r.bytes) {
      f.gauge(prefix + "_limit_bytes_per_second", "Configured bandwidth limit (iobandctl message ... limit bps-*)",
              with, static_cast<double>(r.rate.rate));
    } else {
      f.gauge(prefix + "_limit_requests_per_second", "Configured request-rate limit (iobandctl message ... limit iops-*)",
              with, static_cast<double>(r.rate.rate));
    }
  }
}

}  // namespace

std::string group_label(qos::GroupId id) { return id == qos::kDefaultGroup ? "default" : std::to_string(id); }

Snapshot gather(DaemonPlatform& platform, const nbd::ExportRegistry& exports, std::chrono::milliseconds timeout) {
  const auto started = std::chrono::steady_clock::now();
  Snapshot snapshot;
  snapshot.unix_seconds =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  // Which device group schedules which export, grouped by reactor.
  std::map<nbd::DeviceGroupDriver*, Owned> owned;
  for (const auto& [id, driver] : platform.device_groups()) owned[driver] = {id, driver, {}};
  std::map<std::string, int> connections;
  for (const auto& e : exports.list()) {
    connections[e->name] = e->connections.load(std::memory_order_relaxed);
    if (auto it = owned.find(e->scheduling.driver); it != owned.end()) {
      it->second.devices.emplace_back(e->name, e->scheduling.device);
    } else if (e->scheduling.driver == nullptr) {
      DeviceSample unscheduled;
      unscheduled.name = e->name;
      snapshot.devices.push_back(std::move(unscheduled));
    }
  }
  std::map<io::Reactor*, std::vector<Owned>> by_reactor;
  for (auto& [driver, o] : owned) by_reactor[&driver->reactor()].push_back(std::move(o));

  // One message per reactor. The answer lives in shared state: a reactor
  // that answers after the timeout writes into it, not into a dead frame.
  std::vector<std::pair<std::shared_ptr<ReactorSample>, std::future<void>>> pending;
  for (auto& [reactor, list] : by_reactor) {
    auto sample = std::make_shared<ReactorSample>();
    auto done = std::make_shared<std::promise<void>>();
    pending.emplace_back(sample, done->get_future());
    reactor->post([sample, done, list = std::move(list)] {
      for (const Owned& o : list) {
        if (o.driver->retired()) continue;  // its device group is being destroyed
        sample->device_groups.emplace_back();
        sample_device_group(o, sample->device_groups.back(), sample->devices);
      }
      done->set_value();
    });
  }
  const auto deadline = started + timeout;
  for (auto& [sample, future] : pending) {
    if (future.wait_until(deadline) != std::future_status::ready) {
      snapshot.complete = false;
      continue;
    }
    for (auto& d : sample->device_groups) snapshot.device_groups.push_back(std::move(d));
    for (auto& d : sample->devices) snapshot.devices.push_back(std::move(d));
  }
  for (DeviceSample& d : snapshot.devices) d.connections = connections[d.name];
  std::sort(snapshot.devices.begin(), snapshot.devices.end(),
            [](const DeviceSample& a, const DeviceSample& b) { return a.name < b.name; });
  std::sort(snapshot.device_groups.begin(), snapshot.device_groups.end(),
            [](const DeviceGroupSample& a, const DeviceGroupSample& b) { return a.id < b.id; });
  snapshot.gather_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return snapshot;
}

std::vector<MetricFamily> to_metric_families(const Snapshot& snapshot) {
  Families f;
  {
    ClientMetric info = metric({{"version", kVersion}});
    info.gauge.value = 1;
    f.family("ioband_build_info", "The running iobandd's version (always 1)", MetricType::Gauge)
        .metric.push_back(std::move(info));
  }
  f.gauge("ioband_scrape_gather_seconds", "Time this scrape took to gather the counters of every reactor", {},
          snapshot.gather_seconds);
  f.gauge("ioband_scrape_complete", "1 if every reactor answered this scrape in time, else 0", {},
          snapshot.complete ? 1 : 0);

  std::map<int, std::uint64_t> weight_total;
  for (const DeviceGroupSample& dg : snapshot.device_groups) {
    const std::vector<ClientMetric::Label> labels = {{"device_group", std::to_string(dg.id)},
                                                     {"policy", std::string(qos::to_string(dg.policy))}};
    weight_total[dg.id] = dg.weight_total;
    f.gauge("ioband_device_group_window_requests", "In-flight window the scheduler applies now (io_limit, or learned)",
            labels, dg.io_window);
    f.gauge("ioband_device_group_io_limit_requests", "Configured io_limit", labels, dg.io_limit);
    f.gauge("ioband_device_group_io_throttle_requests", "Configured io_throttle", labels, dg.io_throttle);
  }

  for (const DeviceSample& d : snapshot.devices) {
    const std::vector<ClientMetric::Label> device = {{"device", d.name}};
    f.gauge("ioband_connections", "Open NBD connections to the export", device, d.connections);
    if (d.device_group_id < 0) continue;
    f.gauge("ioband_device_info", "The device group of each ioband device (always 1): join on device for shares",
            {{"device", d.name}, {"device_group", std::to_string(d.device_group_id)}}, 1);
    f.gauge("ioband_device_queued_requests", "Requests the scheduler holds queued for the device", device, d.queued);
    f.gauge("ioband_device_in_flight_requests", "Requests of the device on the storage", device, d.in_flight);
    limit_gauges(f, "ioband_device", device, d.limits);
    const double total = static_cast<double>(weight_total[d.device_group_id]);
    for (const GroupSample& g : d.groups) {
      const std::vector<ClientMetric::Label> group = {{"device", d.name}, {"group", group_label(g.id)}};
      f.gauge("ioband_group_weight", "Configured weight of the group", group, g.weight);
      f.gauge("ioband_group_weight_share", "Configured share: the group's weight over all weights of its device group",
              group, total > 0 ? g.weight / total : 0);
      limit_gauges(f, "ioband_group", group, g.limits);
      if (g.range_bw.min_kib) {
        f.gauge("ioband_group_reservation_bytes_per_second", "Configured range-bw minimum", group,
                static_cast<double>(g.range_bw.min_kib) * 1024);
      }
      if (g.range_bw.max_kib) {
        f.gauge("ioband_group_range_max_bytes_per_second", "Configured range-bw maximum", group,
                static_cast<double>(g.range_bw.max_kib) * 1024);
      }
      f.gauge("ioband_group_queued_requests", "Requests of the group queued in the scheduler", group,
              g.stats.queue_length);
      f.gauge("ioband_group_in_flight_requests", "Requests of the group on the storage", group, g.stats.in_flight);

      // A group that never served a request has no counters yet (as a
      // client library's labelled child appears with its first use): with
      // thousands of groups attached and few busy, the scrape stays small.
      if (g.observation == qos::GroupObservation{}) continue;
      for (std::size_t kind = 0; kind < qos::kOpKinds; ++kind) {
        const qos::OpObservation& op = g.observation.ops[kind];
        const auto op_kind = static_cast<qos::OpKind>(kind);
        // Reads and writes always (stable series); the rarer operations once seen.
        if (op.requests == 0 && op_kind != qos::OpKind::read && op_kind != qos::OpKind::write) continue;
        auto labels = group;
        labels.push_back({"op", std::string(qos::op_name(op_kind))});
        f.counter("ioband_requests_total", "Requests completed", labels, static_cast<double>(op.requests));
        f.counter("ioband_bytes_total", "Payload bytes of completed requests", labels, static_cast<double>(op.bytes));
        f.counter("ioband_errors_total", "Requests the storage completed with an error", labels,
                  static_cast<double>(op.errors));
        if (op.requests == 0) continue;
        ClientMetric h = metric(labels);
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < qos::kDurationBoundsNs.size(); ++i) {
          cumulative += op.duration_histogram[i];
          h.histogram.bucket.push_back({cumulative, static_cast<double>(qos::kDurationBoundsNs[i]) / 1e9});
        }
        cumulative += op.duration_histogram.back();
        h.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
        h.histogram.sample_count = cumulative;
        h.histogram.sample_sum = seconds_of(op.duration_ns);
        f.family("ioband_request_duration_seconds", "Time from arrival to completion (queued plus on the storage)",
                 MetricType::Histogram)
            .metric.push_back(std::move(h));
      }
      for (std::size_t reason = 0; reason < qos::kHoldReasons; ++reason) {
        auto labels = group;
        labels.push_back({"reason", std::string(qos::to_string(static_cast<qos::HoldReason>(reason)))});
        f.counter("ioband_held_requests_total", "Requests the scheduler held back before dispatching them, by reason",
                  labels, static_cast<double>(g.observation.held_requests[reason]));
        f.counter("ioband_held_seconds_total", "Time requests were held back by the scheduler, by reason", labels,
                  seconds_of(g.observation.held_ns[reason]));
      }
    }
  }
  return f.take();
}

std::string to_json(const Snapshot& snapshot) {
  using nlohmann::json;
  json device_groups = json::array();
  std::map<int, std::uint64_t> weight_total;
  for (const DeviceGroupSample& dg : snapshot.device_groups) {
    weight_total[dg.id] = dg.weight_total;
    device_groups.push_back({{"id", dg.id},
                             {"policy", std::string(qos::to_string(dg.policy))},
                             {"io_window", dg.io_window},
                             {"io_limit", dg.io_limit},
                             {"io_throttle", dg.io_throttle},
                             {"queued", dg.queued},
                             {"in_flight", dg.in_flight},
                             {"weight_total", dg.weight_total}});
  }
  json devices = json::array();
  for (const DeviceSample& d : snapshot.devices) {
    json groups = json::array();
    const double total = d.device_group_id >= 0 ? static_cast<double>(weight_total[d.device_group_id]) : 0;
    for (const GroupSample& g : d.groups) {
      groups.push_back({{"id", g.id},
                        {"name", group_label(g.id)},
                        {"weight", g.weight},
                        {"weight_share", total > 0 ? g.weight / total : 0},
                        {"limits", control::limits_to_json(g.limits)},
                        {"range_bw", {{"min_kib", g.range_bw.min_kib}, {"max_kib", g.range_bw.max_kib}}},
                        {"queued", g.stats.queue_length},
                        {"in_flight", g.stats.in_flight},
                        {"observation", control::observation_json(g.observation)}});
    }
    devices.push_back({{"name", d.name},
                       {"device_group_id", d.device_group_id},
                       {"connections", d.connections},
                       {"queued", d.queued},
                       {"in_flight", d.in_flight},
                       {"limits", control::limits_to_json(d.limits)},
                       {"groups", std::move(groups)}});
  }
  return json{{"time", snapshot.unix_seconds},
              {"complete", snapshot.complete},
              {"version", kVersion},
              {"device_groups", std::move(device_groups)},
              {"devices", std::move(devices)}}
      .dump();
}

std::vector<MetricFamily> MetricsCollector::Collect() const {
  std::vector<MetricFamily> families = to_metric_families(gather(platform_, exports_, std::chrono::seconds(2)));
  if (cluster_ != nullptr) add_cluster_families(families, cluster_->options().node, cluster_->snapshot());
  return families;
}

void add_cluster_families(std::vector<MetricFamily>& families, const std::string& node,
                          const cluster::Agent::Snapshot& snapshot) {
  Families f;
  f.gauge("ioband_cluster_etcd_connected", "1 if this node's last exchange with etcd succeeded, else 0",
          {{"node", node}}, snapshot.connected ? 1 : 0);
  f.counter("ioband_cluster_etcd_failures_total", "Exchanges with etcd that failed (every endpoint tried)",
            {{"node", node}}, static_cast<double>(snapshot.failures));
  for (cluster::ShareMode mode : {cluster::ShareMode::alone, cluster::ShareMode::live, cluster::ShareMode::fail_static,
                                  cluster::ShareMode::equal_split}) {
    f.gauge("ioband_cluster_mode", "1 for how this node decides its shares now (live, fail-static, equal-split, alone)",
            {{"node", node}, {"mode", std::string(cluster::to_string(mode))}}, snapshot.mode == mode ? 1 : 0);
  }
  f.gauge("ioband_cluster_nodes", "Nodes seen alive at the last read of etcd", {{"node", node}},
          static_cast<double>(snapshot.nodes.size()));
  for (const auto& [tenant, share] : snapshot.tenants) {
    const std::vector<ClientMetric::Label> labels = {{"node", node}, {"tenant", tenant}};
    const cluster::TenantLoad load = snapshot.loads.contains(tenant) ? snapshot.loads.at(tenant) : cluster::TenantLoad{};
    f.gauge("ioband_cluster_tenant_share", "This node's share of the cluster tenant's limit (0..1)", labels, share.share);
    f.gauge("ioband_cluster_tenant_demand", "The tenant's requests queued or in flight on this node, mean over a period",
            labels, load.demand);
    f.gauge("ioband_cluster_tenant_usage_iops", "The tenant's requests completed per second on this node", labels,
            load.usage);
    f.gauge("ioband_cluster_tenant_rate_iops", "The tenant's requests completed per second on every node together",
            labels, share.cluster_usage);
    f.gauge("ioband_cluster_tenant_nodes", "Nodes taking part in the tenant", labels, static_cast<double>(share.nodes));
  }
  for (MetricFamily& family : f.take()) families.push_back(std::move(family));
}

}  // namespace ioband::daemon
