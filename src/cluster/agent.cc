#include "cluster/agent.h"

#include <nlohmann/json.hpp>

namespace ioband::cluster {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string check_node_name(std::string_view name) {
  if (name.empty()) return "a node name must not be empty";
  if (name.size() > 64) return "a node name has at most 64 characters";
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return "node name \"" + std::string(name) + "\" may hold only letters, digits, '.', '_' and '-'";
  }
  return {};
}

std::string report_to_text(const NodeReport& report) {
  json tenants = json::object();
  for (const auto& [name, load] : report.tenants) {
    tenants[name] = {{"demand", load.demand}, {"usage", load.usage}, {"share", load.share}};
    if (load.part > 0) tenants[name]["part"] = load.part;
  }
  return json{{"sequence", report.sequence}, {"tenants", std::move(tenants)}}.dump();
}

std::optional<NodeReport> report_from_text(const std::string& node, const std::string& text) {
  const json parsed = json::parse(text, nullptr, false);
  if (!parsed.is_object() || !parsed.contains("sequence") || !parsed["sequence"].is_number_unsigned() ||
      !parsed.contains("tenants") || !parsed["tenants"].is_object()) {
    return std::nullopt;
  }
  NodeReport report;
  report.node = node;
  report.sequence = parsed["sequence"].get<std::uint64_t>();
  for (const auto& item : parsed["tenants"].items()) {
    const auto& load = item.value();  // not a structured binding: clang 14 cannot capture one (make fuzz)
    if (!load.is_object()) return std::nullopt;
    auto number = [&](const char* key) { return load.contains(key) && load[key].is_number() ? load[key].get<double>() : 0.0; };
    report.tenants[item.key()] = TenantLoad{number("demand"), number("usage"), number("share"), number("part")};
  }
  return report;
}

Agent::Agent(AgentOptions options) : options_(std::move(options)), view_(options_.node, options_.shares) {}

Agent::~Agent() { stop(); }

void Agent::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void Agent::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Agent::set_loads(std::map<std::string, TenantLoad> tenants) {
  std::lock_guard lock(mutex_);
  loads_ = std::move(tenants);
}

Agent::Snapshot Agent::snapshot() const {
  std::lock_guard lock(mutex_);
  Snapshot snapshot = snapshot_;
  const TimePoint now = Clock::now();
  snapshot.mode = view_.mode(now);
  snapshot.nodes = view_.live_nodes();
  snapshot.shares = view_.shares();
  for (const auto& [tenant, total] : view_.totals()) {
    snapshot.demand[tenant] = total.cluster_demand;
    snapshot.usage[tenant] = total.cluster_usage;
    snapshot.part[tenant] = total.capacity_part;
  }
  snapshot.tenants.clear();
  for (const auto& [tenant, load] : loads_) snapshot.tenants[tenant] = view_.share(now, tenant);
  return snapshot;
}

TenantShare Agent::share(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  return view_.share(Clock::now(), tenant);
}

void Agent::log(const std::string& line) const {
  if (options_.log) options_.log("cluster: " + line);
}

std::string Agent::submit(std::function<std::string(EtcdClient&)> run, std::chrono::milliseconds wait) {
  auto job = std::make_shared<Job>();
  job->run = std::move(run);
  std::future<std::string> done = job->done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || !thread_.joinable()) return "the cluster agent is not running";
    jobs_.push_back(job);
  }
  wake_.notify_all();
  if (done.wait_for(wait) != std::future_status::ready) {
    return "etcd did not answer within " + std::to_string(wait.count()) + " ms";
  }
  return done.get();
}

std::string Agent::put_settings(const std::string& tenant, const std::optional<std::string>& text,
                                std::chrono::milliseconds wait) {
  const std::string key = options_.prefix + "tenants/" + tenant;
  return submit([key, text](EtcdClient& client) { return text ? client.put(key, *text) : client.remove(key); }, wait);
}

std::string Agent::put_capacity(const std::optional<std::string>& text, std::chrono::milliseconds wait) {
  const std::string key = options_.prefix + "capacity";
  return submit([key, text](EtcdClient& client) { return text ? client.put(key, *text) : client.remove(key); }, wait);
}

std::string Agent::get_settings(const std::string& tenant, std::optional<std::string>& text,
                                std::chrono::milliseconds wait) {
  const std::string key = options_.prefix + "tenants/" + tenant;
  auto result = std::make_shared<std::optional<std::string>>();
  std::string error = submit(
      [key, result](EtcdClient& client) {
        std::optional<EtcdClient::KeyValue> kv;
        std::string error = client.get(key, kv);
        if (error.empty() && kv) *result = kv->value;
        return error;
      },
      wait);
  if (error.empty()) text = *result;
  return error;
}

std::string Agent::exchange(EtcdClient& client, std::vector<NodeReport>& reports,
                            std::map<std::string, std::string>& settings, std::optional<std::string>& capacity,
                            NodeReport& published) {
  const auto ttl = std::max<std::int64_t>(
      1, std::chrono::duration_cast<std::chrono::seconds>(options_.shares.lease + std::chrono::milliseconds(999)).count());
  if (lease_ != 0) {
    std::int64_t left = 0;
    if (std::string error = client.lease_keepalive(lease_, left); !error.empty()) return error;
    if (left <= 0) {
      log("lease " + std::to_string(lease_) + " expired; taking a new one");
      lease_ = 0;
    }
  }
  if (lease_ == 0) {
    if (std::string error = client.lease_grant(ttl, lease_); !error.empty()) return error;
  }
  NodeReport report;
  report.node = options_.node;
  {
    std::lock_guard lock(mutex_);
    report.tenants = loads_;
    report.sequence = ++sequence_;
  }
  if (std::string error = client.put(options_.prefix + "nodes/" + options_.node, report_to_text(report), lease_);
      !error.empty()) {
    // A lease etcd no longer knows (it lost it, or it expired between the
    // keepalive and the put): take a new one next time.
    if (error.find("lease not found") != std::string::npos) lease_ = 0;
    return error;
  }
  published = report;
  std::vector<EtcdClient::KeyValue> values;
  const std::string nodes_prefix = options_.prefix + "nodes/";
  if (std::string error = client.range_prefix(nodes_prefix, values); !error.empty()) return error;
  for (const auto& kv : values) {
    const std::string node = kv.key.substr(nodes_prefix.size());
    if (auto parsed = report_from_text(node, kv.value)) reports.push_back(std::move(*parsed));
  }
  const std::string tenants_prefix = options_.prefix + "tenants/";
  if (std::string error = client.range_prefix(tenants_prefix, values); !error.empty()) return error;
  for (const auto& kv : values) settings[kv.key.substr(tenants_prefix.size())] = kv.value;
  std::optional<EtcdClient::KeyValue> shared;
  if (std::string error = client.get(options_.prefix + "capacity", shared); !error.empty()) return error;
  if (shared) capacity = shared->value;
  return {};
}

void Agent::run() {
  EtcdClient client(options_.endpoints, options_.etcd);
  bool was_connected = true;  // so that a first failure is logged
  std::string last_endpoint;
  auto next = Clock::now();
  for (;;) {
    std::deque<std::shared_ptr<Job>> jobs;
    {
      std::unique_lock lock(mutex_);
      wake_.wait_until(lock, next, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) break;
      jobs.swap(jobs_);
    }
    for (auto& job : jobs) job->done.set_value(job->run(client));
    if (Clock::now() < next) continue;  // woken for a job: the period is not over
    next += options_.period;
    if (next < Clock::now()) next = Clock::now() + options_.period;  // late (a slow etcd): do not catch up

    std::vector<NodeReport> reports;
    std::map<std::string, std::string> settings;
    NodeReport published;
    std::optional<std::string> capacity;
    const std::string error = exchange(client, reports, settings, capacity, published);
    const TimePoint now = Clock::now();
    std::lock_guard lock(mutex_);
    if (error.empty()) {
      view_.observed(now, reports, published);
      snapshot_.connected = true;
      snapshot_.error.clear();
      snapshot_.endpoint = client.endpoint();
      snapshot_.settings = std::move(settings);
      snapshot_.capacity = std::move(capacity);
      snapshot_.loads = published.tenants;
      ++snapshot_.reads;
      if (!was_connected) log("etcd reachable again at " + client.endpoint() + "; shares follow demand");
      else if (client.endpoint() != last_endpoint && !last_endpoint.empty()) log("etcd: now speaking to " + client.endpoint());
      last_endpoint = client.endpoint();
      was_connected = true;
    } else {
      view_.unreachable(now);
      snapshot_.connected = false;
      snapshot_.error = error;
      ++snapshot_.failures;
      if (was_connected) {
        log("etcd unreachable (" + error + "): holding the last shares (fail static), an equal split after " +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(options_.shares.fallback).count()) +
            " ms");
      }
      was_connected = false;
    }
    snapshot_.lease = lease_;
  }
  // Leaving: the node's report goes now rather than when its lease expires.
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(jobs_);
  }
  for (auto& job : left) job->done.set_value("iobandd is stopping");
  if (lease_ != 0) (void)client.remove(options_.prefix + "nodes/" + options_.node);
}

}  // namespace ioband::cluster
