#include "cluster/etcd.h"

#include <curl/curl.h>

#include <array>
#include <mutex>

namespace ioband::cluster {

using nlohmann::json;

namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// The first key after every key that starts with `prefix` (etcd's range_end
// for a prefix): the prefix with its last byte below 0xff incremented.
std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(prefix.back());
    if (last < 0xff) {
      ++last;
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

size_t append_body(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

std::int64_t number(const json& value) {
  // grpc-gateway writes 64-bit integers as strings and leaves out zeros.
  if (value.is_string()) return std::stoll(value.get<std::string>());
  if (value.is_number_integer()) return value.get<std::int64_t>();
  return 0;
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(v >> shift) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  size_t padding = 0;
  for (char c : text) {
    if (c == '=') {
      ++padding;
      continue;
    }
    if (padding != 0) return std::nullopt;  // data after padding
    const size_t at = kAlphabet.find(c);
    if (at == std::string_view::npos) return std::nullopt;
    bits = (bits << 6) | static_cast<uint32_t>(at);
    if (++count == 4) {
      out += char(bits >> 16);
      out += char(bits >> 8);
      out += char(bits);
      bits = 0;
      count = 0;
    }
  }
  if (padding > 2 || count == 1) return std::nullopt;
  if (count == 2) out += char(bits >> 4);
  if (count == 3) {
    out += char(bits >> 10);
    out += char(bits >> 2);
  }
  return out;
}

std::string parse_endpoints(std::string_view list, std::vector<std::string>& out) {
  std::vector<std::string> urls;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string url(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    if (url.empty()) return "an empty endpoint in the list";
    if (!url.starts_with("http://") && !url.starts_with("https://")) {
      return "endpoint \"" + url + "\" is not an http:// or https:// URL (etcd's client URL, e.g. http://127.0.0.1:2379)";
    }
    while (url.ends_with('/')) url.pop_back();
    urls.push_back(url);
  }
  if (urls.empty()) return "no endpoint given";
  out = std::move(urls);
  return {};
}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, EtcdOptions options)
    : endpoints_(std::move(endpoints)), options_(options) {
  global_init();
  curl_ = curl_easy_init();
}

EtcdClient::~EtcdClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

std::string EtcdClient::call(const std::string& path, const json& body, json& reply) {
  CURL* curl = static_cast<CURL*>(curl_);
  if (curl == nullptr) return "libcurl could not be initialised";
  if (endpoints_.empty()) return "no etcd endpoint";
  const std::string request = body.dump();
  std::string errors;
  for (size_t attempt = 0; attempt < endpoints_.size(); ++attempt) {
    const size_t index = (current_ + attempt) % endpoints_.size();
    const std::string url = endpoints_[index] + path;
    std::string response;
    std::array<char, CURL_ERROR_SIZE> error{};
    curl_easy_reset(curl);
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(request.size()));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error.data());
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout.count()));
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(options_.request_timeout.count()));
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // a thread of a multithreaded daemon
    const CURLcode code = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    std::string failure;
    if (code != CURLE_OK) {
      failure = error[0] != '\0' ? error.data() : curl_easy_strerror(code);
    } else if (status >= 500 || status == 0) {
      failure = "HTTP " + std::to_string(status) + " " + response.substr(0, 200);
    } else {
      // The keepalive stream answers {"result": {...}}; the others the object.
      json parsed = json::parse(response, nullptr, false);
      if (parsed.is_discarded()) {
        failure = "not JSON: " + response.substr(0, 200);
      } else if (status >= 400 || parsed.contains("error") || parsed.contains("code")) {
        // A request etcd refused (4xx): the same everywhere, no failover.
        const json& message = parsed.contains("error") && parsed["error"].is_object() ? parsed["error"] : parsed;
        return url + ": " + message.value("message", message.value("error", response.substr(0, 200)));
      } else {
        current_ = index;
        answered_ = endpoints_[index];
        reply = parsed.contains("result") ? parsed["result"] : parsed;
        return {};
      }
    }
    errors += (errors.empty() ? "" : "; ") + endpoints_[index] + ": " + failure;
  }
  current_ = (current_ + 1) % endpoints_.size();
  answered_.clear();
  return errors;
}

std::string EtcdClient::put(const std::string& key, const std::string& value, std::int64_t lease) {
  json body = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  json reply;
  return call("/v3/kv/put", body, reply);
}

std::string EtcdClient::range_prefix(const std::string& prefix, std::vector<KeyValue>& out) {
  json reply;
  if (std::string error =
          call("/v3/kv/range", {{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}}, reply);
      !error.empty()) {
    return error;
  }
  std::vector<KeyValue> values;
  for (const json& kv : reply.value("kvs", json::array())) {
    auto key = base64_decode(kv.value("key", ""));
    auto value = base64_decode(kv.value("value", ""));
    if (!key || !value) return "etcd sent a key or value that is not base64";
    values.push_back({*key, *value, kv.contains("mod_revision") ? number(kv["mod_revision"]) : 0});
  }
  out = std::move(values);
  return {};
}

std::string EtcdClient::get(const std::string& key, std::optional<KeyValue>& out) {
  json reply;
  if (std::string error = call("/v3/kv/range", {{"key", base64_encode(key)}}, reply); !error.empty()) return error;
  out.reset();
  for (const json& kv : reply.value("kvs", json::array())) {
    auto value = base64_decode(kv.value("value", ""));
    if (!value) return "etcd sent a value that is not base64";
    out = KeyValue{key, *value, kv.contains("mod_revision") ? number(kv["mod_revision"]) : 0};
  }
  return {};
}

std::string EtcdClient::remove(const std::string& key) {
  json reply;
  return call("/v3/kv/deleterange", {{"key", base64_encode(key)}}, reply);
}

std::string EtcdClient::lease_grant(std::int64_t ttl, std::int64_t& id) {
  json reply;
  if (std::string error = call("/v3/lease/grant", {{"TTL", std::to_string(ttl)}}, reply); !error.empty()) return error;
  id = reply.contains("ID") ? number(reply["ID"]) : 0;
  if (id == 0) return "etcd granted no lease: " + reply.dump();
  return {};
}

std::string EtcdClient::lease_keepalive(std::int64_t id, std::int64_t& ttl) {
  json reply;
  if (std::string error = call("/v3/lease/keepalive", {{"ID", std::to_string(id)}}, reply); !error.empty()) {
    return error;
  }
  ttl = reply.contains("TTL") ? number(reply["TTL"]) : 0;
  return {};
}

}  // namespace ioband::cluster
