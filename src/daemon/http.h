#pragma once
// iobandd --http ADDRESS: one read-only HTTP listener (GNU libmicrohttpd,
// from Debian) serving
//   /metrics     the Prometheus text format (metrics.h; prometheus-cpp's
//                types and serializer)
//   /api/stats   the same snapshot as JSON, for the page and for scripts
//                (?after=UNIX_SECONDS answers once then, at most 5 s on)
//   /            a live dashboard (dashboard.cc)
//   /chart.js    Chart.js from Debian's libjs-chart.js, read at start
// Anything else is 404; methods other than GET and HEAD are 405.
//
// ADDRESS is HOST:PORT (127.0.0.1:9180, [::1]:9180) or a Unix socket
// (unix:/run/ioband/http.sock, or any path starting with / or ./; mode
// 0660). We make the listening socket, so both kinds are one code path.
//
// Requests are served by a few threads of libmicrohttpd's, each waiting on
// epoll over its connections, never on a reactor: a slow or stuck client
// costs a connection (closed after 10 s of silence), not a thread, so it
// stalls neither the data path nor other scrapes. A request for ?after= is
// suspended, not slept on: the waiter thread resumes it when due.

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/metrics.h"

struct MHD_Connection;
struct MHD_Daemon;

namespace ioband::daemon {

// Where Debian's libjs-chart.js puts the browser build (UMD) of Chart.js.
inline constexpr const char* kChartJsPaths[] = {"/usr/share/javascript/chart.js/chart.umd.js",
                                               "/usr/share/javascript/chart.js/chart.min.js"};

class HttpServer {
 public:
  HttpServer(DaemonPlatform& platform, const nbd::ExportRegistry& exports);
  // /metrics also shows the cluster tenants (iobandd --etcd). Before start().
  void set_cluster(const cluster::Agent* agent) noexcept { collector_.set_cluster(agent); }
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Listens on ADDRESS (see above). "" or a sentence.
  std::string start(const std::string& address);
  void stop();

 private:
  using Clock = std::chrono::steady_clock;

  // libmicrohttpd's access handler; `state` is the request's: null on its
  // first call, kResumed once a suspended request is resumed.
  static int handle(void* self, MHD_Connection* connection, const char* url, const char* method,
                    const char* version, const char* upload_data, std::size_t* upload_size, void** state);
  int serve(MHD_Connection* connection, const std::string& method, const std::string& url, void** state);
  // Suspends the request until `due` (false if the server is stopping).
  bool suspend_until(MHD_Connection* connection, Clock::time_point due);
  void resume_due();  // the waiter thread

  DaemonPlatform& platform_;
  const nbd::ExportRegistry& exports_;
  MetricsCollector collector_;
  std::string chart_js_;   // empty: libjs-chart.js is not installed
  std::string unix_path_;  // removed at stop
  MHD_Daemon* daemon_ = nullptr;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::multimap<Clock::time_point, MHD_Connection*> suspended_;  // guarded by mutex_
  bool stopping_ = false;                                          // guarded by mutex_
  std::thread waiter_;
};

// The dashboard page (dashboard.cc).
const std::string& dashboard_html();

}  // namespace ioband::daemon
