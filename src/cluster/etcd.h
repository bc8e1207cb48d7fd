// A client of etcd's v3 JSON gateway (grpc-gateway: POST /v3/kv/put,
// /v3/kv/range, /v3/kv/deleterange, /v3/lease/grant, /v3/lease/keepalive;
// keys and values base64, 64-bit numbers as JSON strings), over libcurl.
//
// Blocking, and meant for one thread of its own (cluster/agent.h): never
// the reactors' or the control thread's. Several endpoints: a call goes to
// the endpoint that answered last, and on a connection error, a timeout or
// a 5xx it tries the next ones in turn, each at most once per call, so
// losing an etcd member costs one timeout at most, once.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace ioband::cluster {

std::string base64_encode(std::string_view bytes);
// nullopt: not base64.
std::optional<std::string> base64_decode(std::string_view text);

// "http://127.0.0.1:2379,http://10.0.0.2:2379" -> the URLs, or why not.
std::string parse_endpoints(std::string_view list, std::vector<std::string>& out);

struct EtcdOptions {
  std::chrono::milliseconds connect_timeout{300};
  std::chrono::milliseconds request_timeout{1000};
};

class EtcdClient {
 public:
  explicit EtcdClient(std::vector<std::string> endpoints, EtcdOptions options = {});
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  struct KeyValue {
    std::string key, value;
    std::int64_t mod_revision = 0;
  };
  // Each returns "" on success, or what failed ("http://a:2379: Couldn't
  // connect to server; http://b:2379: Timeout was reached").
  std::string put(const std::string& key, const std::string& value, std::int64_t lease = 0);
  std::string range_prefix(const std::string& prefix, std::vector<KeyValue>& out);
  std::string get(const std::string& key, std::optional<KeyValue>& out);
  std::string remove(const std::string& key);
  // A lease of `ttl` seconds; its id in `id`.
  std::string lease_grant(std::int64_t ttl, std::int64_t& id);
  // Renews the lease; `ttl` is what is left (0: it has expired, grant another).
  std::string lease_keepalive(std::int64_t id, std::int64_t& ttl);

  // The endpoint that answered last ("" before any answer).
  const std::string& endpoint() const noexcept { return answered_; }
  const std::vector<std::string>& endpoints() const noexcept { return endpoints_; }

 private:
  // POSTs body to path, trying the endpoints in turn; the parsed reply.
  std::string call(const std::string& path, const nlohmann::json& body, nlohmann::json& reply);

  std::vector<std::string> endpoints_;
  EtcdOptions options_;
  std::size_t current_ = 0;
  std::string answered_;
  void* curl_ = nullptr;  // CURL*, reused: keeps the connection open
};

}  // namespace ioband::cluster
