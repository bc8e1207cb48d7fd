#include "daemon/http.h"

#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <prometheus/text_serializer.h>

#include "io/log.h"
#include "io/unix_socket.h"

namespace ioband::daemon {

namespace {

// The state of a request that was suspended and resumed.
char kResumed;

std::string read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// A whole response; libmicrohttpd leaves the body out for HEAD.
int respond(MHD_Connection* connection, unsigned status, const char* type, const std::string& body,
            const char* allow = nullptr) {
  MHD_Response* response =
      MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  if (allow != nullptr) MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, allow);
  const MHD_Result result = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return result;
}

bool is_unix_address(const std::string& address) {
  return address.starts_with("unix:") || address.starts_with("/") || address.starts_with("./");
}

// HOST:PORT or [V6]:PORT: a listening TCP socket, or a sentence.
std::string listen_tcp(const std::string& address, int& fd) {
  const std::string usage = address + ": expected HOST:PORT (127.0.0.1:9180, [::1]:9180) or a Unix socket path";
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size() || address.size() - colon > 6 ||
      address.find_first_not_of("0123456789", colon + 1) != std::string::npos ||
      std::stoul(address.substr(colon + 1)) > 65535) {
    return usage;
  }
  std::string host = address.substr(0, colon);
  if (host.starts_with("[")) {
    if (!host.ends_with("]") || host.size() < 3) return usage;
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* result = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), address.c_str() + colon + 1, &hints, &result); rc != 0) {
    return address + ": " + gai_strerror(rc);
  }
  const addrinfo* ai = result;
  fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::string error;
  if (fd < 0) {
    error = address + ": socket: " + std::strerror(errno);
  } else {
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      error = address + ": cannot listen: " + std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(result);
  return error;
}

}  // namespace

HttpServer::HttpServer(DaemonPlatform& platform, const nbd::ExportRegistry& exports)
    : platform_(platform), exports_(exports), collector_(platform, exports) {}

HttpServer::~HttpServer() { stop(); }

std::string HttpServer::start(const std::string& address) {
  int fd = -1;
  if (is_unix_address(address)) {
    const std::string path = address.starts_with("unix:") ? address.substr(5) : address;
    if (path.empty()) return address + ": expected a path after unix:";
    // 0660: the owner and its group may read the metrics. A socket found
    // there is replaced only if no HTTP server answers on it.
    std::string error = io::listen_unix_socket(
        path, 128, 0117, [](int probe) { return io::answers(probe, "HEAD / HTTP/1.0\r\n\r\n"); }, fd);
    if (!error.empty()) return error;
    unix_path_ = path;
  } else if (std::string error = listen_tcp(address, fd); !error.empty()) {
    return error;
  }
  auto give_up = [&](const std::string& error) {
    close(fd);
    if (!unix_path_.empty()) unlink(unix_path_.c_str());
    unix_path_.clear();
    return error;
  };
  // Every pool thread accepts on it after the same wake-up: a blocking
  // accept would hold the thread that lost the race.
  if (const int flags = fcntl(fd, F_GETFL); flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return give_up(address + ": " + std::strerror(errno));
  }
  for (const char* path : kChartJsPaths) {
    chart_js_ = read_file(path);
    if (!chart_js_.empty()) break;
  }
  if (chart_js_.empty()) log_line("--http: libjs-chart.js not found; the dashboard at / will show no charts");
  auto handler = [](void* self, MHD_Connection* connection, const char* url, const char* method, const char* version,
                    const char* upload_data, std::size_t* upload_size, void** state) -> MHD_Result {
    return static_cast<MHD_Result>(
        HttpServer::handle(self, connection, url, method, version, upload_data, upload_size, state));
  };
  // Four threads, each with its own epoll set over its connections; the
  // listener takes the socket and closes it at MHD_stop_daemon.
  daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, nullptr,
                             nullptr, handler, this, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_THREAD_POOL_SIZE, 4u,
                             MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_END);
  if (daemon_ == nullptr) return give_up(address + ": libmicrohttpd did not start");
  waiter_ = std::thread([this] { resume_due(); });
  log_line("http on " + address + ": /metrics, /api/stats and the dashboard at /");
  return {};
}

void HttpServer::stop() {
  if (daemon_ == nullptr) return;
  {
    // libmicrohttpd must not be stopped with a request suspended: resume
    // them all (they answer at once) and suspend no more.
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (const auto& [due, connection] : suspended_) MHD_resume_connection(connection);
    suspended_.clear();
  }
  wake_.notify_all();
  waiter_.join();
  MHD_stop_daemon(daemon_);
  daemon_ = nullptr;
  if (!unix_path_.empty()) unlink(unix_path_.c_str());
}

bool HttpServer::suspend_until(MHD_Connection* connection, Clock::time_point due) {
  std::lock_guard lock(mutex_);
  if (stopping_) return false;
  MHD_suspend_connection(connection);
  const bool earliest = suspended_.empty() || due < suspended_.begin()->first;
  suspended_.emplace(due, connection);
  if (earliest) wake_.notify_all();
  return true;
}

void HttpServer::resume_due() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    const Clock::time_point now = Clock::now();
    while (!suspended_.empty() && suspended_.begin()->first <= now) {
      MHD_resume_connection(suspended_.begin()->second);
      suspended_.erase(suspended_.begin());
    }
    if (suspended_.empty()) {
      wake_.wait(lock);
    } else {
      wake_.wait_until(lock, suspended_.begin()->first);
    }
  }
}

int HttpServer::handle(void* self, MHD_Connection* connection, const char* url, const char* method,
                       const char* /*version*/, const char* /*upload_data*/, std::size_t* upload_size, void** state) {
  // A body (of a method we refuse anyway) is not read: 405 at once.
  *upload_size = 0;
  return static_cast<HttpServer*>(self)->serve(connection, method ? method : "", url ? url : "", state);
}

int HttpServer::serve(MHD_Connection* connection, const std::string& method, const std::string& url, void** state) {
  if (method != "GET" && method != "HEAD") {
    return respond(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                   method + " is not allowed: this listener is read-only (GET, HEAD)\n", "GET, HEAD");
  }
  if (url == "/metrics") {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, collector_.Collect());
    return respond(connection, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", out.str());
  }
  if (url == "/api/stats") {
    // ?after=UNIX_SECONDS: answer once that time has passed (at most 5 s
    // from now), so that a page or a script gets samples a steady interval
    // apart whatever its own timers do (a headless browser's virtual time
    // fires them at once).
    const char* after = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "after");
    if (after != nullptr && *state != &kResumed) {
      char* end = nullptr;
      const double at = std::strtod(after, &end);
      if (end == after || *end != '\0' || !std::isfinite(at)) {
        return respond(connection, MHD_HTTP_BAD_REQUEST, "text/plain; charset=utf-8",
                       std::string("after=") + after + ": expected a Unix time in seconds\n");
      }
      const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      if (at > now) {
        const auto wait = std::chrono::duration<double>(std::min(at - now, 5.0));
        *state = &kResumed;
        if (suspend_until(connection, Clock::now() + std::chrono::duration_cast<Clock::duration>(wait))) return MHD_YES;
      }
    }
    return respond(connection, MHD_HTTP_OK, "application/json",
                   to_json(gather(platform_, exports_, std::chrono::seconds(2))));
  }
  if (url == "/" || url == "/index.html") {
    return respond(connection, MHD_HTTP_OK, "text/html; charset=utf-8", dashboard_html());
  }
  if (url == "/chart.js" && !chart_js_.empty()) {
    return respond(connection, MHD_HTTP_OK, "text/javascript; charset=utf-8", chart_js_);
  }
  return respond(connection, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
                 url == "/chart.js" ? "Chart.js is not installed (Debian package libjs-chart.js)\n"
                                    : url + " not found; try /metrics, /api/stats or /\n");
}

}  // namespace ioband::daemon
