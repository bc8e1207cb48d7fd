// The cluster agent of one iobandd: a thread of its own that speaks to etcd
// (cluster/etcd.h) a few times a second, so that neither the reactors nor
// the control thread ever wait on the network.
//
// Each period it renews the node's lease (granting a new one if it
// expired), publishes the node's report under it (one key per node, every
// cluster tenant in it: one write a period, whatever the number of tenants),
// reads every node's report and every cluster tenant's settings, and feeds
// the reads (or their failure) to a ClusterView (cluster/shares.h). The
// control thread hands it the loads to publish (set_loads) and takes the
// shares and settings from a snapshot; settings changes go through
// put_settings, which the agent's thread performs.
//
// Keys (under options.prefix, default "/ioband/v1/"):
//   nodes/NODE      the node's report, JSON, under its lease
//   tenants/NAME    a cluster tenant's settings, JSON (the control layer's)
//   capacity        the capacity cluster tenants share by weight, JSON
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster/etcd.h"
#include "cluster/shares.h"

namespace ioband::cluster {

struct AgentOptions {
  std::string node;                    // this daemon's name in the cluster
  std::vector<std::string> endpoints;  // etcd client URLs
  std::string prefix = "/ioband/v1/";
  std::chrono::milliseconds period{250};
  ShareOptions shares;                 // lease, fallback, floor
  EtcdOptions etcd;
  std::function<void(const std::string&)> log;  // state changes (reachable or not, lease lost)
};

// A node name: 1..64 of [A-Za-z0-9._-]. "" or why not.
std::string check_node_name(std::string_view name);

// The JSON of a node's report and back (nullopt: not a report).
std::string report_to_text(const NodeReport& report);
std::optional<NodeReport> report_from_text(const std::string& node, const std::string& text);

class Agent {
 public:
  explicit Agent(AgentOptions options);
  ~Agent();  // stops the thread
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  void start();
  void stop();

  // What the next publication carries (control thread).
  void set_loads(std::map<std::string, TenantLoad> tenants);

  struct Snapshot {
    ShareMode mode = ShareMode::alone;
    bool connected = false;       // the last exchange with etcd succeeded
    std::string endpoint;         // that answered last
    std::string error;            // of the last failed exchange ("" if the last one succeeded)
    std::int64_t lease = 0;       // the node's lease id (0: none)
    std::uint64_t reads = 0;      // successful reads so far
    std::uint64_t failures = 0;   // failed exchanges so far
    std::vector<std::string> nodes;                      // alive at the last read
    std::map<std::string, TenantShare> tenants;          // this node's tenants (as last set_loads)
    std::map<std::string, TenantLoad> loads;             // as last published by this node
    std::map<std::string, std::map<std::string, double>> shares;  // tenant -> node -> share
    std::map<std::string, std::string> settings;         // tenant -> settings text, as read
    std::optional<std::string> capacity;                 // the capacity's text, as read
    std::map<std::string, double> demand;                // tenant -> its demand on every node together
    std::map<std::string, double> usage;                 // tenant -> requests/s on every node together
    std::map<std::string, double> part;                  // tenant -> the part of the capacity it had (0: none)
  };
  Snapshot snapshot() const;
  // The share of `tenant` on this node now (cluster/shares.h).
  TenantShare share(const std::string& tenant) const;

  // Writes (or with nullopt deletes) a tenant's settings in etcd, on the
  // agent's thread; waits at most `wait`. "" or why it failed.
  std::string put_settings(const std::string& tenant, const std::optional<std::string>& text,
                           std::chrono::milliseconds wait = std::chrono::seconds(3));
  // Writes (or with nullopt deletes) the shared capacity, on the agent's thread.
  std::string put_capacity(const std::optional<std::string>& text,
                           std::chrono::milliseconds wait = std::chrono::seconds(3));
  // Reads a tenant's settings from etcd now (nullopt: none). "" or why not.
  std::string get_settings(const std::string& tenant, std::optional<std::string>& text,
                           std::chrono::milliseconds wait = std::chrono::seconds(3));

  const AgentOptions& options() const noexcept { return options_; }

 private:
  struct Job {
    std::function<std::string(EtcdClient&)> run;
    std::promise<std::string> done;
  };
  void run();
  // One period's exchange; "" or what failed.
  std::string exchange(EtcdClient& client, std::vector<NodeReport>& reports, std::map<std::string, std::string>& settings,
                       std::optional<std::string>& capacity, NodeReport& published);
  std::string submit(std::function<std::string(EtcdClient&)> run, std::chrono::milliseconds wait);
  void log(const std::string& line) const;

  AgentOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::map<std::string, TenantLoad> loads_;
  std::deque<std::shared_ptr<Job>> jobs_;
  ClusterView view_;
  Snapshot snapshot_;
  std::uint64_t sequence_ = 0;
  std::int64_t lease_ = 0;  // agent thread only
  std::thread thread_;
};

}  // namespace ioband::cluster
