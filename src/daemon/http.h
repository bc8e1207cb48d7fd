#pragma once
// iobandd --http ADDR:PORT: one read-only HTTP listener (civetweb, from
// Debian) serving
//   /metrics     the Prometheus text format (metrics.h; prometheus-cpp's
//                types and serializer)
//   /api/stats   the same snapshot as JSON, for the page and for scripts
//                (?after=UNIX_SECONDS waits until then, at most 5 s)
//   /            a live dashboard (dashboard.cc)
//   /chart.js    Chart.js from Debian's libjs-chart.js, read at start
// Anything else is 404; methods other than GET and HEAD are 405. Requests
// are served on civetweb's own threads (64), never on a reactor: a slow or
// stuck HTTP client holds one of those threads (until the 10 s request
// timeout), not the data path and not other scrapes. civetweb 1.15 gives
// each connection a thread: 64 stuck connections at once would hold every
// scrape until the timeout frees one (the data path still goes on).

#include <memory>
#include <string>

#include "daemon/metrics.h"

struct mg_connection;
struct mg_context;

namespace ioband::daemon {

// Where Debian's libjs-chart.js puts the browser build (UMD) of Chart.js.
inline constexpr const char* kChartJsPaths[] = {"/usr/share/javascript/chart.js/chart.umd.js",
                                               "/usr/share/javascript/chart.js/chart.min.js"};

class HttpServer {
 public:
  HttpServer(DaemonPlatform& platform, const nbd::ExportRegistry& exports);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Listens on "HOST:PORT" ("127.0.0.1:9180"). "" or a sentence. Debian's
  // civetweb has neither IPv6 nor Unix sockets: such an address gets a
  // sentence that says so.
  std::string start(const std::string& address);
  void stop();

 private:
  static int handle(mg_connection* connection, void* self);
  int serve(mg_connection* connection);

  DaemonPlatform& platform_;
  const nbd::ExportRegistry& exports_;
  MetricsCollector collector_;
  std::string chart_js_;  // empty: libjs-chart.js is not installed
  mg_context* context_ = nullptr;
};

// The dashboard page (dashboard.cc).
const std::string& dashboard_html();

}  // namespace ioband::daemon
