#pragma once
// iobandd's cluster options (issue 18, docs/cluster.md): --etcd, --node and
// the timing of the share rule, and the agent they make.

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "cluster/agent.h"

namespace ioband::daemon {

struct ClusterOptions {
  std::string etcd;           // URL[,URL...]
  std::string node;           // default: the host name
  double lease_seconds = 2;
  double fallback_seconds = 10;
  unsigned period_ms = 250;
};

void add_cluster_options(CLI::App& app, ClusterOptions& options);
// After parsing: the agent (not started), or null without --etcd. An error
// sentence in `error` stops the start.
std::unique_ptr<cluster::Agent> make_cluster_agent(const ClusterOptions& options, std::string& error);

}  // namespace ioband::daemon
