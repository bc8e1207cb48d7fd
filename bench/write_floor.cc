// write_floor: what the kernel alone charges a server for each 4 KiB NBD
// write over a Unix socket, with no event loop, no validation, no NBD
// state: the floor under bench/compare-servers' "CPU per request" column.
//
// A client thread sends writes the way libnbd does, a 28-byte request
// header and the 4096-byte payload in two send() calls, as fast as the
// socket takes them; a second client thread drains the replies, so the
// client never waits for one. The measured thread is the server's side, in
// three modes, interleaved round by round:
//   recv        receive into a 32 KiB buffer and find the requests;
//   +pwrite     and write each payload to its random 4 KiB block of FILE;
//   +ack        and send the 16-byte replies, one sendmsg per receive.
// It prints requests per second and the server thread's CPU time per
// request (getrusage RUSAGE_THREAD), the median of the rounds.
//
// usage: write_floor FILE [SECONDS-PER-ROUND] [ROUNDS]
//   FILE: an existing file of at least 4 MiB; its contents are overwritten
//   (put it where the storage under test is, e.g. /dev/shm).

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr uint32_t kHeader = 28;
constexpr uint32_t kPayload = 4096;
constexpr uint32_t kReply = 16;
constexpr uint32_t kStaging = 32u << 10;

enum Mode { kRecv, kPwrite, kAck };
const char* const kModeName[] = {"recv", "recv+pwrite", "recv+pwrite+ack"};

double thread_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct Result {
  double per_second;
  double cpu_us;
};

Result round(int fd, uint64_t blocks, Mode mode, double seconds) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
    perror("socketpair");
    exit(1);
  }
  std::atomic<bool> stop{false};
  std::thread client([&] {
    std::mt19937_64 rng(7);
    uint8_t header[kHeader] = {};
    std::vector<uint8_t> payload(kPayload, 0x5a);
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t offset = (rng() % blocks) * kPayload;
      std::memcpy(header, &offset, sizeof offset);
      if (send(sv[0], header, kHeader, 0) != kHeader) break;
      if (send(sv[0], payload.data(), kPayload, 0) != kPayload) break;
    }
    shutdown(sv[0], SHUT_WR);
  });
  std::thread drain([&] {
    std::vector<uint8_t> sink(64u << 10);
    while (recv(sv[0], sink.data(), sink.size(), 0) > 0) {
    }
  });

  std::vector<uint8_t> staging(kStaging);
  std::vector<uint8_t> replies(kReply * (kStaging / (kHeader + kPayload) + 1), 0);
  uint32_t start = 0;
  uint32_t end = 0;
  uint64_t served = 0;
  bool stopped = false;
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  for (;;) {
    if (!stopped && std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) {
      stop = true;
      stopped = true;
    }
    if (start == end) start = end = 0;
    if (end == kStaging) {
      std::memmove(staging.data(), staging.data() + start, end - start);
      end -= start;
      start = 0;
    }
    const ssize_t n = recv(sv[1], staging.data() + end, kStaging - end, 0);
    if (n <= 0) break;
    end += static_cast<uint32_t>(n);
    uint32_t answered = 0;
    while (end - start >= kHeader + kPayload) {
      if (mode != kRecv) {
        uint64_t offset;
        std::memcpy(&offset, staging.data() + start, sizeof offset);
        if (pwrite(fd, staging.data() + start + kHeader, kPayload, static_cast<off_t>(offset)) != kPayload) {
          perror("pwrite");
          exit(1);
        }
      }
      start += kHeader + kPayload;
      ++answered;
    }
    if (mode == kAck && answered > 0) {
      if (send(sv[1], replies.data(), kReply * answered, MSG_NOSIGNAL) < 0) break;
    }
    served += answered;
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE [SECONDS-PER-ROUND] [ROUNDS]\n", argv[0]);
    return 2;
  }
  const double seconds = argc > 2 ? atof(argv[2]) : 3.0;
  const int rounds = argc > 3 ? atoi(argv[3]) : 3;
  const int fd = open(argv[1], O_WRONLY);
  struct stat st{};
  if (fd < 0 || fstat(fd, &st) != 0) {
    perror(argv[1]);
    return 1;
  }
  const uint64_t blocks = static_cast<uint64_t>(st.st_size) / kPayload;
  if (blocks < 1024 || seconds <= 0 || rounds < 1) {
    fprintf(stderr, "%s: need a file of at least 4 MiB, seconds > 0, rounds >= 1\n", argv[0]);
    return 2;
  }
  std::vector<Result> results[3];
  for (int r = 0; r < rounds; ++r) {
    for (int m = kRecv; m <= kAck; ++m) results[m].push_back(round(fd, blocks, static_cast<Mode>(m), seconds));
  }
  printf("4 KiB writes over a Unix socket into %s (%.0f MiB), %d x %.1f s, medians:\n", argv[1],
         static_cast<double>(st.st_size) / (1 << 20), rounds, seconds);
  for (int m = kRecv; m <= kAck; ++m) {
    auto& v = results[m];
    std::sort(v.begin(), v.end(), [](const Result& a, const Result& b) { return a.cpu_us < b.cpu_us; });
    const Result& mid = v[v.size() / 2];
    printf("  %-16s %7.1fk requests/s   server CPU %.2f us/request\n", kModeName[m], mid.per_second / 1e3, mid.cpu_us);
  }
  close(fd);
  return 0;
}
