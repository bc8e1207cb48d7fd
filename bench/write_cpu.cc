// write_cpu: what 4 KiB NBD writes over a Unix socket cost a server in
// CPU, apart from what the client costs it.
//
// bench/compare-servers drives every server with fio's nbd engine, whose
// own time per request (one poll, one recv and two sends through libnbd) is
// about as long as a fast server's: a server that keeps up with it never
// runs out of work long enough to sleep, and its CPU per request comes out
// as the client's time per request. This program's client is cheaper: one
// thread sends writes the way libnbd does (the 28-byte request header and
// the 4096-byte payload in two send() calls, random 4 KiB blocks), another
// reads the replies, and at most DEPTH writes are outstanding.
//
//   write_cpu FILE [SECONDS] [ROUNDS]
//     No server: the measured thread plays one, receiving into a 32 KiB
//     buffer, in three modes, interleaved round by round: "recv" only
//     finds the requests; "recv+pwrite" also writes each payload to its
//     block of FILE (an existing file of at least 4 MiB: its contents are
//     overwritten); "recv+pwrite+ack" also sends the 16-byte replies, one
//     sendmsg per receive: a minimal server with plain system calls, no
//     event loop, validation or bookkeeping, whose client never waits for
//     a reply (DEPTH does not apply) — what the kernel's part of a write
//     costs, for comparison with the real servers below.
//
//   write_cpu --nbd SOCKET EXPORT PID [SECONDS] [ROUNDS] [DEPTH] [poll|sleep]
//     A real server on SOCKET (fixed newstyle handshake, NBD_OPT_EXPORT_NAME
//     EXPORT, simple replies, each checked): its CPU per write is the
//     utime+stime of process PID, its threads and its descendants (a server
//     that forks per connection) over the round, divided by the writes
//     answered in it. DEPTH defaults to 32, as in compare-servers' row.
//     With DEPTH writes outstanding the sender polls for the next reply
//     (poll, the default, as a userspace client that polls does) or sleeps
//     until the reply thread wakes it (sleep): the second is slower, and
//     the server's figure moves with it.
//
// Each prints requests per second and CPU microseconds per request, the
// median of the rounds (SECONDS each, default 3; ROUNDS default 3).

#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint32_t kHeader = 28;
constexpr uint32_t kPayload = 4096;
constexpr uint32_t kReply = 16;
constexpr uint32_t kStaging = 32u << 10;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint16_t kCmdWrite = 1;
constexpr uint16_t kCmdDisc = 2;

struct Result {
  double per_second;
  double cpu_us;
};

[[noreturn]] void die(const std::string& what) {
  fprintf(stderr, "write_cpu: %s\n", what.c_str());
  exit(1);
}

void send_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);
    if (sent <= 0) die(std::string("send: ") + (sent < 0 ? strerror(errno) : "closed"));
    p += sent;
    n -= static_cast<size_t>(sent);
  }
}

void recv_all(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    const ssize_t got = recv(fd, p, n, 0);
    if (got <= 0) die(std::string("recv: ") + (got < 0 ? strerror(errno) : "the server closed the connection"));
    p += got;
    n -= static_cast<size_t>(got);
  }
}

// The client's sending side: writes to random blocks, as libnbd sends them,
// while fewer than depth are unanswered; stops when stop is set or the
// socket fails (the measured side has gone).
void send_writes(int fd, uint64_t blocks, long depth, bool sleep, const std::atomic<bool>& stop,
                 std::atomic<long>& sent, const std::atomic<long>& answered) {
  std::mt19937_64 rng(7);
  uint8_t header[kHeader] = {};
  const uint32_t magic = htobe32(kRequestMagic);
  const uint16_t type = htobe16(kCmdWrite);
  const uint32_t length = htobe32(kPayload);
  std::memcpy(header, &magic, 4);
  std::memcpy(header + 6, &type, 2);
  std::memcpy(header + 24, &length, 4);
  std::vector<uint8_t> payload(kPayload, 0x5a);
  uint64_t cookie = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    const long done = answered.load(std::memory_order_acquire);
    if (sent.load(std::memory_order_relaxed) - done >= depth) {
      // Polls for the next reply, or sleeps until the reply thread has some.
      if (sleep) answered.wait(done, std::memory_order_acquire);
      continue;
    }
    const uint64_t offset = htobe64((rng() % blocks) * kPayload);
    ++cookie;
    std::memcpy(header + 8, &cookie, 8);
    std::memcpy(header + 16, &offset, 8);
    if (send(fd, header, kHeader, MSG_NOSIGNAL) != kHeader) return;
    if (send(fd, payload.data(), kPayload, MSG_NOSIGNAL) != kPayload) return;
    sent.fetch_add(1, std::memory_order_relaxed);
  }
}

Result median(std::vector<Result> v) {
  std::sort(v.begin(), v.end(), [](const Result& a, const Result& b) { return a.cpu_us < b.cpu_us; });
  return v[v.size() / 2];
}

// ------------------------------------------------------------ no server

enum Mode { kRecv, kPwrite, kAck };
const char* const kModeName[] = {"recv", "recv+pwrite", "recv+pwrite+ack"};

double thread_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

Result local_round(int fd, uint64_t blocks, Mode mode, double seconds) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die(std::string("socketpair: ") + strerror(errno));
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  const std::atomic<long> unlimited{0};
  std::thread client([&] {
    send_writes(sv[0], blocks, 1L << 62, false, stop, sent, unlimited);
    shutdown(sv[0], SHUT_WR);
  });
  std::thread drain([&] {
    std::vector<uint8_t> sink(64u << 10);
    while (recv(sv[0], sink.data(), sink.size(), 0) > 0) {
    }
  });

  std::vector<uint8_t> staging(kStaging);
  const std::vector<uint8_t> replies(kReply * (kStaging / (kHeader + kPayload) + 1), 0);
  uint32_t start = 0;
  uint32_t end = 0;
  uint64_t served = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  for (;;) {
    if (!stop && std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) stop = true;
    if (start == end) start = end = 0;
    if (end == kStaging) {
      std::memmove(staging.data(), staging.data() + start, end - start);
      end -= start;
      start = 0;
    }
    const ssize_t n = recv(sv[1], staging.data() + end, kStaging - end, 0);
    if (n <= 0) break;
    end += static_cast<uint32_t>(n);
    uint32_t found = 0;
    while (end - start >= kHeader + kPayload) {
      if (mode != kRecv) {
        uint64_t offset;
        std::memcpy(&offset, staging.data() + start + 16, 8);
        offset = be64toh(offset);
        if (pwrite(fd, staging.data() + start + kHeader, kPayload, static_cast<off_t>(offset)) != kPayload) {
          die(std::string("pwrite: ") + strerror(errno));
        }
      }
      start += kHeader + kPayload;
      ++found;
    }
    if (mode == kAck && found > 0 && send(sv[1], replies.data(), kReply * found, MSG_NOSIGNAL) < 0) break;
    served += found;
  }
  const double cpu = thread_cpu_seconds() - c0;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  shutdown(sv[1], SHUT_RDWR);
  client.join();
  drain.join();
  close(sv[0]);
  close(sv[1]);
  return {static_cast<double>(served) / wall, cpu * 1e6 / static_cast<double>(served)};
}

int run_local(const char* path, double seconds, int rounds) {
  const int fd = open(path, O_WRONLY);
  struct stat st{};
  if (fd < 0 || fstat(fd, &st) != 0) die(std::string(path) + ": " + strerror(errno));
  const uint64_t blocks = static_cast<uint64_t>(st.st_size) / kPayload;
  if (blocks < 1024) die(std::string(path) + ": need a file of at least 4 MiB");
  std::vector<Result> results[3];
  for (int r = 0; r < rounds; ++r) {
    for (int m = kRecv; m <= kAck; ++m) results[m].push_back(local_round(fd, blocks, static_cast<Mode>(m), seconds));
  }
  printf("4 KiB writes over a Unix socket into %s (%.0f MiB), no server, %d x %.1f s, medians:\n", path,
         static_cast<double>(st.st_size) / (1 << 20), rounds, seconds);
  for (int m = kRecv; m <= kAck; ++m) {
    const Result mid = median(results[m]);
    printf("  %-16s %7.1fk requests/s   CPU %.2f us/request\n", kModeName[m], mid.per_second / 1e3, mid.cpu_us);
  }
  close(fd);
  return 0;
}

// ------------------------------------------------------------ a server

// utime+stime of a process, its threads and its live descendants (a server
// that forks per connection serves from a child), in seconds.
double tree_cpu_seconds(int root) {
  struct Proc {
    int pid, ppid;
    double ticks;
  };
  std::vector<Proc> procs;
  DIR* dir = opendir("/proc");
  if (!dir) die(std::string("/proc: ") + strerror(errno));
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t paren = s.rfind(')');
    if (paren == std::string::npos) continue;  // gone meanwhile
    std::istringstream fields(s.substr(paren + 2));
    std::string field;
    Proc p{atoi(e->d_name), 0, 0};
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i == 4) p.ppid = std::stoi(field);
      if (i == 14 || i == 15) p.ticks += std::stod(field);  // utime, stime
    }
    procs.push_back(p);
  }
  closedir(dir);
  std::vector<int> tree = {root};
  double ticks = 0;
  bool found = false;
  for (size_t i = 0; i < tree.size(); ++i) {
    for (const Proc& p : procs) {
      if (p.pid == tree[i]) {
        ticks += p.ticks;
        found = true;
      }
      if (p.ppid == tree[i]) tree.push_back(p.pid);
    }
  }
  if (!found) die("no process " + std::to_string(root));
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Fixed newstyle handshake with NBD_OPT_EXPORT_NAME; returns the size.
uint64_t handshake(int fd, const std::string& name) {
  uint8_t greeting[18];
  recv_all(fd, greeting, sizeof greeting);
  uint64_t magic;
  std::memcpy(&magic, greeting, 8);
  if (be64toh(magic) != 0x4e42444d41474943ull) die("not an NBD server (bad magic)");
  uint16_t flags;
  std::memcpy(&flags, greeting + 16, 2);
  const bool no_zeroes = be16toh(flags) & 2;
  const uint32_t client_flags = htobe32(1u | (no_zeroes ? 2u : 0u));
  send_all(fd, &client_flags, 4);
  const uint64_t option_magic = htobe64(0x49484156454F5054ull);
  const uint32_t option = htobe32(1);
  const uint32_t length = htobe32(static_cast<uint32_t>(name.size()));
  send_all(fd, &option_magic, 8);
  send_all(fd, &option, 4);
  send_all(fd, &length, 4);
  send_all(fd, name.data(), name.size());
  uint8_t reply[10 + 124];
  recv_all(fd, reply, no_zeroes ? 10 : sizeof reply);
  uint64_t size;
  std::memcpy(&size, reply, 8);
  return be64toh(size);
}

Result server_round(const char* socket_path, const std::string& name, int pid, double seconds, long depth,
                    bool sleep) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (strlen(socket_path) >= sizeof addr.sun_path) die("socket path too long");
  strcpy(addr.sun_path, socket_path);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die(std::string(socket_path) + ": " + strerror(errno));
  }
  const uint64_t blocks = handshake(fd, name) / kPayload;
  if (blocks < 1024) die("the export is smaller than 4 MiB");
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  std::atomic<long> answered{0};
  std::thread client([&] { send_writes(fd, blocks, depth, sleep, stop, sent, answered); });
  std::thread replies([&] {
    std::vector<uint8_t> buf(64u << 10);
    size_t have = 0;
    for (;;) {
      const ssize_t n = recv(fd, buf.data() + have, buf.size() - have, 0);
      if (n <= 0) return;
      have += static_cast<size_t>(n);
      size_t at = 0;
      long count = 0;
      for (; have - at >= kReply; at += kReply, ++count) {
        uint32_t magic, error;
        std::memcpy(&magic, buf.data() + at, 4);
        std::memcpy(&error, buf.data() + at + 4, 4);
        if (be32toh(magic) != kSimpleReplyMagic) die("unexpected reply (not a simple reply)");
        if (error != 0) die("the server failed a write: NBD error " + std::to_string(be32toh(error)));
      }
      std::memmove(buf.data(), buf.data() + at, have - at);
      have -= at;
      answered.fetch_add(count, std::memory_order_release);
      answered.notify_one();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // past the start
  const long a0 = answered.load();
  const double c0 = tree_cpu_seconds(pid);
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const long a1 = answered.load();
  const double c1 = tree_cpu_seconds(pid);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop = true;
  client.join();  // a sleeping sender is woken by the replies still due
  // Every write answered, then NBD_CMD_DISC: a clean end for the server.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (answered.load() < sent.load() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  uint8_t disc[kHeader] = {};
  const uint32_t magic = htobe32(kRequestMagic);
  const uint16_t type = htobe16(kCmdDisc);
  std::memcpy(disc, &magic, 4);
  std::memcpy(disc + 6, &type, 2);
  send_all(fd, disc, sizeof disc);
  shutdown(fd, SHUT_WR);
  replies.join();  // until the server closes
  close(fd);
  if (a1 <= a0) die("no write was answered");
  return {static_cast<double>(a1 - a0) / wall, (c1 - c0) * 1e6 / static_cast<double>(a1 - a0)};
}

int run_server(char** argv, int argc) {
  if (argc < 5) die("usage: write_cpu --nbd SOCKET EXPORT PID [SECONDS] [ROUNDS] [DEPTH] [poll|sleep]");
  const int pid = atoi(argv[4]);
  const double seconds = argc > 5 ? atof(argv[5]) : 3.0;
  const int rounds = argc > 6 ? atoi(argv[6]) : 3;
  const long depth = argc > 7 ? atol(argv[7]) : 32;
  const std::string wait = argc > 8 ? argv[8] : "poll";
  if (pid <= 0 || seconds <= 0 || rounds < 1 || depth < 1) die("PID, SECONDS, ROUNDS and DEPTH must be positive");
  if (wait != "poll" && wait != "sleep") die("the last argument is poll or sleep, not '" + wait + "'");
  std::vector<Result> results;
  for (int r = 0; r < rounds; ++r) results.push_back(server_round(argv[2], argv[3], pid, seconds, depth, wait == "sleep"));
  const Result mid = median(results);
  printf("4 KiB writes to export '%s' on %s, %ld outstanding, client %ss, %d x %.1f s, median: %.1fk writes/s, "
         "server CPU %.2f us/write\n",
         argv[3], argv[2], depth, wait.c_str(), rounds, seconds, mid.per_second / 1e3, mid.cpu_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--nbd") return run_server(argv, argc);
  if (argc < 2 || argv[1][0] == '-') {
    fprintf(stderr,
            "usage: %s FILE [SECONDS] [ROUNDS]\n"
            "       %s --nbd SOCKET EXPORT PID [SECONDS] [ROUNDS] [DEPTH] [poll|sleep]\n",
            argv[0], argv[0]);
    return 2;
  }
  const double seconds = argc > 2 ? atof(argv[2]) : 3.0;
  const int rounds = argc > 3 ? atoi(argv[3]) : 3;
  if (seconds <= 0 || rounds < 1) die("SECONDS and ROUNDS must be positive");
  return run_local(argv[1], seconds, rounds);
}
