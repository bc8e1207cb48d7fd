// iobandd: wiring only. Parses the command line, opens the exports, starts
// one reactor per thread and the NBD server, and stops cleanly on a signal.

#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "control/engine.h"
#include "control/export_spec.h"
#include "daemon/control_server.h"
#include "daemon/limit_options.h"
#include "daemon/cluster_options.h"
#include "daemon/http.h"
#include "daemon/platform.h"
#include "daemon/state_lock.h"
#include "io/backend.h"
#include "io/log.h"
#include "io/image.h"
#include "io/reactor.h"
#include "ioband/version.h"
#include "nbd/export.h"
#include "nbd/server.h"
#include "net/tls.h"

namespace {

using namespace ioband;

constexpr uint64_t kDemoSize = 1ull << 30;

std::string open_export(const control::ExportSpec& spec, bool image_locks, int reactor_index, nbd::Export& out) {
  std::string error;
  std::unique_ptr<io::Backend> backend;
  if (spec.backend == "memory") {
    backend = io::open_memory_backend(spec.size, error);
  } else {
    io::ImageOptions image;
    image.path = spec.path;
    image.format = spec.format;
    image.size = spec.size;
    image.read_only = spec.read_only;
    image.lock = image_locks;
    if (spec.cache_bytes) image.cache_bytes = spec.cache_bytes;
    image.share_key = reactor_index;
    backend = io::open_image_backend(image, error);
  }
  if (!backend) return "export " + spec.name + ": " + error;
  if (spec.fault_errno || spec.fault_delay_ms) {
    io::FaultOptions fault;
    fault.error_number = spec.fault_errno;
    fault.rate = spec.fault_rate;
    fault.delay_ms = spec.fault_delay_ms;
    fault.offset = spec.fault_offset;
    fault.length = spec.fault_length;
    backend = io::wrap_fault_backend(std::move(backend), fault);
  }
  out.name = spec.name;
  out.description = spec.description;
  out.read_only = spec.read_only;
  out.backend = std::move(backend);
  if (!spec.access.empty()) out.set_access(spec.access);
  return {};
}

std::string join(const std::vector<std::string>& words, const std::string& separator) {
  std::string text;
  for (const std::string& word : words) text += (text.empty() ? "" : separator) + word;
  return text;
}

// The embedded default: a sparse 1 GiB image in the state directory.
std::string ensure_demo_image(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) == 0) return {};
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return path + ": " + std::strerror(errno);
  int rc = ftruncate(fd, static_cast<off_t>(kDemoSize));
  std::string error = rc == 0 ? "" : path + ": " + std::strerror(errno);
  close(fd);
  return error;
}

// A socket file made at start goes on every way out of main.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    if (!path.empty()) unlink(path.c_str());
  }
};

// After a stop signal, connections get this long to finish their requests
// and take their replies; then those left are closed at once.
constexpr int kStopGraceSeconds = 3;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"iobandd: a virtual-disk server with I/O bandwidth control, serving disk images over NBD"};
  std::string state_dir = "./var";
  std::string socket_path;
  std::string listen;
  std::string control_path;
  std::vector<std::string> export_texts;
  unsigned threads = 1;
  app.add_option("--state-dir", state_dir, "directory for state, sockets and the demo image")->capture_default_str();
  app.add_option("--socket", socket_path, "NBD Unix socket (default STATE_DIR/ioband.sock)");
  std::string socket_mode;
  app.add_option("--socket-mode", socket_mode,
                 "permissions of the NBD socket, octal (e.g. 0666 so that clients of other users, "
                 "classified by 'type user', can connect); default from the umask");
  app.add_option("--listen", listen,
                 "also serve NBD over TCP on [HOST:]PORT; without a HOST (10809 or :10809) on the loopback "
                 "addresses only. Serving other hosts without TLS prints a warning: limit who may connect with "
                 "the exports' access lists (allow=...)");
  app.add_option("--control", control_path, "control socket for iobandctl (default STATE_DIR/ioband.ctl)");
  app.add_option("--export", export_texts,
                 "NAME=PATH[,format=raw|qcow2][,cache=BYTES][,size=BYTES][,readonly][,backend=raw|memory]"
                 "[,description=TEXT]"
                 "[,fault-errno=E][,fault-rate=F][,fault-delay-ms=N][,fault-offset=BYTES,fault-length=BYTES]"
                 "[,allow=WHO][,allow-ro=WHO][,deny=WHO]... "
                 "(repeatable). The image format is raw or qcow2 (with its backing chain, read and written natively; "
                 "docs/qcow2.md), detected from the header unless format= says; cache= is a qcow2 image's L2 cache "
                 "(default 4M, per image of the chain). Access rules, first match decides, none matches: refused; without rules "
                 "everyone may read and write. WHO: all, unix, tcp, uid:USER, gid:GROUP, an address or "
                 "network (127.0.0.1, 10.0.0.0/8, ::1, fd00::/8), tls, tls:NAME (PSK username or certificate "
                 "DN; write a comma in it as ,,). E.g. disk=/srv/disk.img,allow=uid:1000,allow-ro=gid:disk");
  app.add_option("--threads", threads, "reactor threads (one event loop each)")->check(CLI::Range(1u, 64u))->capture_default_str();
  int64_t poll_max_us = io::Reactor::kDefaultPollMaxUs;
  app.add_option("--poll-max-us", poll_max_us,
                 "longest a reactor polls before it sleeps, in microseconds: this long while the storage has a "
                 "deep queue, at most 32 otherwise; 0 never polls (less CPU, more latency)")
      ->check(CLI::Range(int64_t{0}, int64_t{10000}))
      ->capture_default_str();
  bool strict = false;
  app.add_flag("--strict", strict,
               "stop the start if a device of the state file cannot be restored (its image is missing, say); "
               "by default it is logged and skipped, and kept in the state file");
  bool no_image_locks = false;
  app.add_flag("--no-image-locks", no_image_locks,
               "take no lock on images (by default one writer per image: another iobandd, or qemu-nbd and "
               "QEMU, cannot write an image served read-write, nor iobandd one they write)");
  int control_timeout = daemon::kDefaultControlTimeoutSeconds;
  app.add_option("--control-timeout", control_timeout,
                 "seconds a control client may take to send a request line or read a reply, or stay silent")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  // --tls on|require sets it (the TLS options): TCP clients can then be
  // authenticated and encrypted, and a listener other hosts reach is no
  // longer worth a warning.
  bool tls_enabled = false;
  daemon::LimitOptions limit_options;
  daemon::add_limit_options(app, limit_options);
  std::string tls_mode = "off";
  net::TlsOptions tls_options;
  app.add_option("--tls", tls_mode,
                 "TLS for NBD clients (NBD_OPT_STARTTLS): off; on (each client chooses); require (nothing but "
                 "STARTTLS is answered before TLS)")
      ->check(CLI::IsMember({"off", "on", "require"}))
      ->capture_default_str();
  app.add_option("--tls-psk", tls_options.psk_file,
                 "TLS pre-shared keys: a file of USERNAME:HEXKEY lines, as 'psktool -u NAME -p FILE' writes");
  app.add_option("--tls-certificates", tls_options.certificates_dir,
                 "TLS X.509 credentials: a directory with server-cert.pem, server-key.pem and ca-cert.pem "
                 "(ca-crl.pem if present), the layout QEMU and nbdkit use");
  app.add_flag("--tls-verify-peer", tls_options.verify_peer,
               "with --tls-certificates: require a client certificate signed by ca-cert.pem");
  std::string http_address;
  app.add_option("--http", http_address,
                 "serve /metrics (Prometheus), /api/stats (JSON) and a live dashboard at / on HOST:PORT, "
                 "read-only, e.g. 127.0.0.1:9180 or [::1]:9180, or on a Unix socket: unix:PATH or a path starting "
                 "with / (mode 0660); off unless given");
  daemon::ClusterOptions cluster_options;
  daemon::add_cluster_options(app, cluster_options);
  app.set_version_flag("--version", std::string("iobandd ") + kVersion);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "iobandd: " << e.what() << "\nRun 'iobandd --help' for the options.\n";
    return 2;
  }

  if (!listen.empty()) {
    const auto colon = listen.rfind(':');
    const size_t port_at = colon == std::string::npos ? 0 : colon + 1;
    if (port_at == listen.size() || listen.find_first_not_of("0123456789", port_at) != std::string::npos ||
        listen.size() - port_at > 5 || std::stoul(listen.substr(port_at)) == 0 ||
        std::stoul(listen.substr(port_at)) > 65535) {
      std::cerr << "iobandd: --listen " << listen
                << ": expected [HOST:]PORT, e.g. 10809 (loopback only), 127.0.0.1:10809 or 0.0.0.0:10809\n";
      return 2;
    }
  }

  if (auto error = daemon::finish_limit_options(limit_options); !error.empty()) {
    std::cerr << "iobandd: " << error << "\n";
    return 2;
  }
  tls_options.mode = *net::parse_tls_mode(tls_mode);
  std::string tls_error;
  const std::unique_ptr<net::TlsContext> tls = net::TlsContext::load(tls_options, tls_error);
  if (!tls_error.empty()) {
    std::cerr << "iobandd: " << tls_error << "\n";
    return 1;
  }
  // Only --tls require keeps clear clients off a listener other hosts reach.
  tls_enabled = tls_options.mode == net::TlsMode::require;

  std::vector<control::ExportSpec> specs;
  for (const auto& text : export_texts) {
    control::ExportSpec spec;
    if (auto error = control::parse_export_spec(text, spec)) {
      std::cerr << "iobandd: " << *error << "\n";
      return 2;
    }
    if (auto error = daemon::check_memory_export(spec, limit_options); !error.empty()) {
      std::cerr << "iobandd: " << error << "\n";
      return 2;
    }
    for (const auto& other : specs) {
      if (other.name == spec.name) {
        std::cerr << "iobandd: --export " << spec.name << ": the name is given twice\n";
        return 2;
      }
    }
    specs.push_back(spec);
  }

  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) {
    std::cerr << "iobandd: --state-dir " << state_dir << ": " << ec.message() << "\n";
    return 1;
  }
  const bool image_locks = !no_image_locks;
  daemon::StateLock state_lock;
  if (auto error = state_lock.acquire(state_dir); !error.empty()) {
    std::cerr << "iobandd: --state-dir " << error << "\n";
    return 1;
  }
  if (socket_path.empty()) socket_path = state_dir + "/ioband.sock";
  if (control_path.empty()) control_path = state_dir + "/ioband.ctl";
  const std::string state_path = state_dir + "/state.json";
  struct stat state_stat{};
  // The embedded default serves demo.img only when nothing else is configured.
  if (specs.empty() && stat(state_path.c_str(), &state_stat) != 0) {
    control::ExportSpec demo;
    demo.name = "demo";
    demo.path = state_dir + "/demo.img";
    demo.description = "ioband demo image";
    if (auto error = ensure_demo_image(demo.path); !error.empty()) {
      std::cerr << "iobandd: " << error << "\n";
      return 1;
    }
    specs.push_back(demo);
  }

  // Signals are read through the ring of reactor 0; no thread may take them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A write past the file-size limit (ulimit -f, systemd's LimitFSIZE) must
  // fail with EFBIG, which the client gets as ENOSPC, not kill the daemon.
  signal(SIGXFSZ, SIG_IGN);

  std::vector<std::unique_ptr<io::Reactor>> reactors;
  std::vector<io::Reactor*> reactor_ptrs;
  try {
    for (unsigned i = 0; i < threads; ++i) {
      reactors.push_back(std::make_unique<io::Reactor>(1024, static_cast<int>(i)));
      reactors.back()->set_poll_max_us(poll_max_us);
      reactor_ptrs.push_back(reactors.back().get());
    }
  } catch (const std::exception& e) {
    std::cerr << "iobandd: cannot start an event loop: " << e.what() << "\n";
    return 1;
  }

  nbd::ExportRegistry exports;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto e = std::make_shared<nbd::Export>();
    const int reactor_index = static_cast<int>(i % reactor_ptrs.size());
    if (auto error = open_export(specs[i], image_locks, reactor_index, *e); !error.empty()) {
      std::cerr << "iobandd: " << error << "\n";
      return 1;
    }
    e->reactor = reactor_ptrs[static_cast<size_t>(reactor_index)];
    log_line("export " + e->name + ": " + e->backend->describe() + ", " + std::to_string(e->backend->size()) +
             " bytes" + (e->is_read_only() ? ", read-only" : "") +
             (specs[i].access.empty() ? "" : ", access " + join(nbd::access_words(specs[i].access), " ")));
    exports.add(std::move(e));
  }

  daemon::raise_open_file_limit(limit_options.config);
  nbd::Server server(reactor_ptrs, exports);
  server.set_limits(limit_options.config);
  server.set_tls(tls.get());
  if (auto error = server.listen_unix(socket_path); !error.empty()) {
    std::cerr << "iobandd: --socket " << error << "\n";
    return 1;
  }
  RemoveOnExit socket_file{socket_path};
  if (!socket_mode.empty()) {
    char* end = nullptr;
    const unsigned long mode = std::strtoul(socket_mode.c_str(), &end, 8);
    if (*end != '\0' || mode > 0777 || chmod(socket_path.c_str(), static_cast<mode_t>(mode)) != 0) {
      std::cerr << "iobandd: --socket-mode " << socket_mode << ": expected an octal mode such as 0660\n";
      return 2;
    }
  }
  if (!listen.empty()) {
    if (auto error = server.listen_tcp(listen); !error.empty()) {
      std::cerr << "iobandd: --listen " << error << "\n";
      return 1;
    }
    for (const std::string& where : server.tcp_listeners(true)) {
      if (tls_enabled) break;
      log_line("warning: --listen " + where + " serves NBD to other hosts without TLS required (--tls require): whoever reaches it reads "
               "and writes every export whose access list lets them in (every export without one); give each "
               "export allow=... rules, or listen on 127.0.0.1");
    }
  }

  daemon::DaemonPlatform platform(reactor_ptrs, exports, server);
  platform.set_image_locks(image_locks);
  std::string cluster_error;
  std::unique_ptr<cluster::Agent> cluster_agent = daemon::make_cluster_agent(cluster_options, cluster_error);
  if (!cluster_error.empty()) {
    std::cerr << "iobandd: " << cluster_error << "\n";
    return 2;
  }
  if (cluster_agent) cluster_agent->start();
  control::Engine engine(platform.make(), state_path);
  engine.set_cluster(cluster_agent.get());
  if (auto error = engine.restore(strict); !error.empty()) {
    std::cerr << "iobandd: " << error << "\n";
    return 1;
  }
  daemon::ControlServer control(engine, std::chrono::seconds(control_timeout));
  if (auto error = control.listen(control_path); !error.empty()) {
    std::cerr << "iobandd: --control " << error << "\n";
    return 1;
  }
  if (cluster_agent) control.set_tick(control::Engine::kClusterSample, [&engine] { engine.cluster_tick(); });
  daemon::HttpServer http(platform, exports);
  http.set_cluster(cluster_agent.get());
  if (!http_address.empty()) {
    if (auto error = http.start(http_address); !error.empty()) {
      std::cerr << "iobandd: --http " << error << "\n";
      return 1;
    }
  }
  platform.set_running(true);
  server.start();
  control.start();

  int signal_fd = signalfd(-1, &signals, SFD_CLOEXEC);
  signalfd_siginfo info{};
  io::Reactor& main_reactor = *reactors[0];
  int signals_seen = 0;
  auto exit_now = [&] {
    unlink(socket_path.c_str());
    control.unlink_socket();
    _exit(1);
  };
  __kernel_timespec grace{30, 0};
  io::CallbackCompletion grace_timer([&](int32_t result, uint32_t) {
    if (result == -ETIME) {
      log_line("shutdown: requests still in flight after 30 s, exiting anyway");
      exit_now();
    }
  });
  __kernel_timespec stop_grace{kStopGraceSeconds, 0};
  io::CallbackCompletion stop_grace_timer([&](int32_t result, uint32_t) {
    if (result == -ETIME && server.sessions() > 0) {
      log_line("shutdown: " + std::to_string(server.sessions()) + " connection(s) still open after " +
               std::to_string(kStopGraceSeconds) + " s (clients not reading their replies): closing them");
      server.abort_all();
    }
  });
  std::function<void()> arm_signal;
  io::CallbackCompletion signal_read([&](int32_t result, uint32_t) {
    if (result == static_cast<int32_t>(sizeof info) && info.ssi_signo != SIGPIPE) {
      if (++signals_seen == 1) {
        log_line(std::string("received ") + strsignal(static_cast<int>(info.ssi_signo)) +
                 ", finishing requests in flight");
        control.stop_accepting();
        server.shutdown();
        main_reactor.arm_timer(&grace_timer, &grace);
        main_reactor.arm_timer(&stop_grace_timer, &stop_grace);
        for (auto& r : reactors) r->stop();
      } else {
        log_line("second signal: exiting now");
        exit_now();
      }
    }
    arm_signal();
  });
  arm_signal = [&] {
    io_uring_prep_read(main_reactor.prepare(&signal_read), signal_fd, &info, sizeof info, 0);
  };
  arm_signal();

  log_line(std::string("ioband ") + kVersion + " serving NBD on " + socket_path + ", control on " + control_path +
           (listen.empty() ? "" : " and tcp " + join(server.tcp_listeners(), " ")) + " with " + std::to_string(threads) + " thread(s)" +
           (tls ? ", TLS " + tls->describe() : ""));

  std::vector<std::thread> workers;
  for (size_t i = 1; i < reactors.size(); ++i) {
    workers.emplace_back([r = reactors[i].get()] { r->run(); });
  }
  try {
    main_reactor.run();
  } catch (const std::exception& e) {
    log_line(std::string("event loop failed: ") + e.what());
    exit_now();
  }
  http.stop();  // its scrapes wait for reactors that no longer answer
  for (auto& w : workers) w.join();
  // From now on the control thread's calls (a cluster tick under way) run
  // inline: no reactor is left to take them.
  platform.set_running(false);
  for (auto& r : reactors) r->run_leftovers();
  control.stop();
  log_line("stopped");
  return 0;
}
