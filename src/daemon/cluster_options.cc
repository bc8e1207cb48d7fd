#include "daemon/cluster_options.h"

#include <unistd.h>

#include <climits>
#include <cmath>

#include "io/log.h"

namespace ioband::daemon {

void add_cluster_options(CLI::App& app, ClusterOptions& options) {
  app.add_option("--etcd", options.etcd,
                 "etcd client URLs, comma-separated (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379): cluster "
                 "tenants (iobandctl tenant create NAME ... cluster on) keep their weight and limit there and "
                 "split the limit between the nodes by demand; off unless given");
  app.add_option("--node", options.node, "this daemon's name in the cluster (default: the host name)");
  app.add_option("--etcd-lease", options.lease_seconds,
                 "seconds a node's published load lives without renewal: a dead node's share goes to the others "
                 "within 2 x this (etcd's minimum is about 2)")
      ->check(CLI::Range(1.0, 60.0))
      ->capture_default_str();
  app.add_option("--etcd-fallback", options.fallback_seconds,
                 "seconds without etcd after which a node leaves its last share (fail static) for an equal split "
                 "of each limit among the nodes it last saw")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--etcd-period", options.period_ms, "milliseconds between two publications of the node's load")
      ->check(CLI::Range(20u, 5000u))
      ->capture_default_str();
}

std::unique_ptr<cluster::Agent> make_cluster_agent(const ClusterOptions& options, std::string& error) {
  if (options.etcd.empty()) {
    if (!options.node.empty()) error = "--node is the name in a cluster: give --etcd URL too";
    return nullptr;
  }
  cluster::AgentOptions agent;
  if (std::string why = cluster::parse_endpoints(options.etcd, agent.endpoints); !why.empty()) {
    error = "--etcd " + options.etcd + ": " + why;
    return nullptr;
  }
  agent.node = options.node;
  if (agent.node.empty()) {
    char host[HOST_NAME_MAX + 1] = {};
    if (gethostname(host, sizeof host - 1) == 0) agent.node = host;
  }
  if (std::string why = cluster::check_node_name(agent.node); !why.empty()) {
    error = "--node: " + why;
    return nullptr;
  }
  agent.period = std::chrono::milliseconds(options.period_ms);
  agent.shares.lease = std::chrono::milliseconds(std::llround(options.lease_seconds * 1000));
  agent.shares.fallback = std::chrono::milliseconds(std::llround(options.fallback_seconds * 1000));
  if (agent.shares.lease < 4 * agent.period) {
    error = "--etcd-lease must be at least 4 publish periods (--etcd-period " + std::to_string(options.period_ms) +
            " ms): a node one publication late would be dropped";
    return nullptr;
  }
  agent.log = [](const std::string& line) { log_line(line); };
  return std::make_unique<cluster::Agent>(std::move(agent));
}

}  // namespace ioband::daemon
