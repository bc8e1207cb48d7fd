#include "daemon/http.h"

#include <civetweb.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <prometheus/text_serializer.h>

#include "io/log.h"

namespace ioband::daemon {

namespace {

// A whole response. HEAD gets the headers only.
void respond(mg_connection* connection, int status, const char* reason, const char* type, const std::string& body,
             const char* extra_headers = "") {
  const bool head = std::strcmp(mg_get_request_info(connection)->request_method, "HEAD") == 0;
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n%s\r\n", status,
            reason, type, body.size(), extra_headers);
  if (!head) mg_write(connection, body.data(), body.size());
}

std::string read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

HttpServer::HttpServer(DaemonPlatform& platform, const nbd::ExportRegistry& exports)
    : platform_(platform), exports_(exports), collector_(platform, exports) {}

HttpServer::~HttpServer() { stop(); }

std::string HttpServer::start(const std::string& address) {
  // Debian's libcivetweb1 (1.15+dfsg) is built without USE_X_DOM_SOCKET and
  // without USE_IPV6: its listening_ports parser then has no syntax for a
  // Unix socket, and takes "[::1]:PORT" only to fail with "Failed to setup
  // server ports". Say which, rather than blame the port.
  if (address.starts_with("unix:") || address.starts_with("/") || address.starts_with("./")) {
    if (mg_check_feature(MG_FEATURES_X_DOMAIN_SOCKET) == 0) {
      return address +
             ": a Unix socket is not possible: the civetweb library iobandd uses (Debian's libcivetweb1) was "
             "built without Unix-socket support (USE_X_DOM_SOCKET); use a loopback HOST:PORT such as "
             "127.0.0.1:9180";
    }
  }
  if (address.starts_with("[") && mg_check_feature(MG_FEATURES_IPV6) == 0) {
    return address +
           ": IPv6 is not possible: the civetweb library iobandd uses (Debian's libcivetweb1) was built without "
           "IPv6 (USE_IPV6); use an IPv4 address such as 127.0.0.1:9180";
  }
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size() ||
      address.find_first_not_of("0123456789", colon + 1) != std::string::npos || address.size() - colon > 6 ||
      std::stoul(address.substr(colon + 1)) > 65535) {
    return address + ": expected HOST:PORT, e.g. 127.0.0.1:9180";
  }
  for (const char* path : kChartJsPaths) {
    chart_js_ = read_file(path);
    if (!chart_js_.empty()) break;
  }
  if (chart_js_.empty()) log_line("--http: libjs-chart.js not found; the dashboard at / will show no charts");
  mg_init_library(0);
  const char* options[] = {"listening_ports", address.c_str(),
                           "num_threads", "64",
                           "request_timeout_ms", "10000",
                           "enable_keep_alive", "yes",
                           nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = this;
  init.configuration_options = options;
  char text[256] = "";
  unsigned code = 0;
  mg_error_data error{};
  error.code = &code;
  error.text = text;
  error.text_buffer_size = sizeof text;
  context_ = mg_start2(&init, &error);
  if (context_ == nullptr) {
    mg_exit_library();
    return address + ": cannot listen (" + (text[0] ? text : "civetweb gave no reason") + "; is the port in use?)";
  }
  mg_set_request_handler(context_, "/", &HttpServer::handle, this);
  log_line("http on " + address + ": /metrics, /api/stats and the dashboard at /");
  return {};
}

void HttpServer::stop() {
  if (context_ == nullptr) return;
  mg_stop(context_);
  context_ = nullptr;
  mg_exit_library();
}

int HttpServer::handle(mg_connection* connection, void* self) {
  return static_cast<HttpServer*>(self)->serve(connection);
}

int HttpServer::serve(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string method = request->request_method ? request->request_method : "";
  const std::string uri = request->local_uri ? request->local_uri : "";
  if (method != "GET" && method != "HEAD") {
    respond(connection, 405, "Method Not Allowed", "text/plain; charset=utf-8",
            method + " is not allowed: this listener is read-only (GET, HEAD)\n", "Allow: GET, HEAD\r\n");
    return 405;
  }
  if (uri == "/metrics") {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, collector_.Collect());
    respond(connection, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", out.str());
    return 200;
  }
  if (uri == "/api/stats") {
    // ?after=UNIX_SECONDS: answer once that time has passed (at most 5 s
    // from now), so that a page or a script gets samples a steady interval
    // apart whatever its own timers do (a headless browser's virtual time
    // fires them at once).
    char after[64] = "";
    if (request->query_string &&
        mg_get_var(request->query_string, std::strlen(request->query_string), "after", after, sizeof after) > 0) {
      char* end = nullptr;
      const double at = std::strtod(after, &end);
      if (end == after || *end != '\0' || !std::isfinite(at)) {
        respond(connection, 400, "Bad Request", "text/plain; charset=utf-8",
                std::string("after=") + after + ": expected a Unix time in seconds\n");
        return 400;
      }
      const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      if (at > now) std::this_thread::sleep_for(std::chrono::duration<double>(std::min(at - now, 5.0)));
    }
    respond(connection, 200, "OK", "application/json", to_json(gather(platform_, exports_, std::chrono::seconds(2))));
    return 200;
  }
  if (uri == "/" || uri == "/index.html") {
    respond(connection, 200, "OK", "text/html; charset=utf-8", dashboard_html());
    return 200;
  }
  if (uri == "/chart.js" && !chart_js_.empty()) {
    respond(connection, 200, "OK", "text/javascript; charset=utf-8", chart_js_);
    return 200;
  }
  respond(connection, 404, "Not Found", "text/plain; charset=utf-8",
          uri == "/chart.js" ? "Chart.js is not installed (Debian package libjs-chart.js)\n"
                             : uri + " not found; try /metrics, /api/stats or /\n");
  return 404;
}

}  // namespace ioband::daemon
