// The pieces of the server's resource limits that need no socket: log
// escaping of client-chosen strings, the rate-limited log, the global
// request-memory admission rule, and the identity connection caps count.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "io/log.h"
#include "nbd/limits.h"

namespace ioband {
namespace {

TEST(EscapeForLog, PrintableAsciiPassesUnchanged) {
  EXPECT_EQ(escape_for_log("disk-1 (vm 7)"), "disk-1 (vm 7)");
  EXPECT_EQ(escape_for_log(""), "");
}

TEST(EscapeForLog, ANewlineCannotStartAForgedLine) {
  const std::string name = "x\n2026-01-01 00:00:00.000 iobandd: stopped";
  const std::string escaped = escape_for_log(name);
  EXPECT_EQ(escaped.find('\n'), std::string::npos);
  EXPECT_EQ(escaped, "x\\x0a2026-01-01 00:00:00.000 iobandd: stopped");
}

TEST(EscapeForLog, ControlHighAndBackslashBytesBecomeHex) {
  EXPECT_EQ(escape_for_log(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(escape_for_log("\x1b[2J\r\t\x7f"), "\\x1b[2J\\x0d\\x09\\x7f");
  EXPECT_EQ(escape_for_log("\xc3\xa9"), "\\xc3\\xa9");
  // Otherwise "\x0a" typed by a client would read as an escaped newline.
  EXPECT_EQ(escape_for_log("a\\x0a"), "a\\x5cx0a");
}

// Captures what log_line writes to stderr.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    saved_ = dup(2);
    file_ = std::tmpfile();
    dup2(fileno(file_), 2);
  }
  ~StderrCapture() {
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    std::fclose(file_);
  }
  std::string text() {
    std::fflush(stderr);
    std::string out;
    std::rewind(file_);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file_)) > 0) out.append(buf, n);
    return out;
  }

 private:
  int saved_;
  std::FILE* file_;
};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

TEST(RateLimitedLog, OneLinePerIntervalThenSaysHowManyWereLeftOut) {
  StderrCapture capture;
  RateLimitedLog log(std::chrono::hours(1));
  for (int i = 0; i < 1000; ++i) log.log("accept failed");
  EXPECT_EQ(count(capture.text(), "accept failed"), 1u);
  EXPECT_EQ(log.suppressed(), 999u);

  RateLimitedLog quick(std::chrono::milliseconds(1));
  quick.log("first");
  quick.log("left out");
  usleep(5000);
  quick.log("second");
  const std::string text = capture.text();
  EXPECT_EQ(count(text, "left out"), 0u);
  EXPECT_NE(text.find("second (1 more like it not logged)"), std::string::npos) << text;
}

using nbd::RequestMemory;
constexpr uint64_t MiB = 1ull << 20;

TEST(RequestMemory, HeavySessionsStopAtTheSharedPartLightOnesUseTheReserve) {
  RequestMemory memory;
  memory.set_cap(1024 * MiB);  // reserve: 128 MiB
  // Heavy sessions (32 MiB requests) take the shared 896 MiB, no more.
  uint64_t taken = 0;
  while (memory.admits(32 * MiB, 64 * MiB)) {
    memory.add(32 * MiB);
    taken += 32 * MiB;
  }
  EXPECT_EQ(taken, 896 * MiB);
  EXPECT_TRUE(memory.tight());
  // A new heavy request is refused even from a session holding nothing.
  EXPECT_FALSE(memory.admits(32 * MiB, 0));
  // A light one (4 KiB, session holding 124 KiB) still goes.
  EXPECT_TRUE(memory.admits(4096, 124 * 1024));
  // ... until the light sessions fill the reserve too.
  memory.add(128 * MiB - 4096);
  EXPECT_TRUE(memory.admits(4096, 0));
  memory.add(4096);
  EXPECT_FALSE(memory.admits(4096, 0));
  EXPECT_EQ(memory.peak(), 1024 * MiB);
  // Memory given back is admitted again.
  memory.add(-static_cast<int64_t>(64 * MiB));
  EXPECT_TRUE(memory.admits(4096, 0));
  EXPECT_FALSE(memory.admits(32 * MiB, 64 * MiB));
  memory.add(-static_cast<int64_t>(taken));
  EXPECT_TRUE(memory.admits(32 * MiB, 64 * MiB));
  EXPECT_FALSE(memory.tight());
}

TEST(RequestMemory, StagingBuffersCountAgainstRequestsButAreNeverRefused) {
  RequestMemory memory;
  memory.set_cap(128 * MiB);  // shared part: 112 MiB
  // 3,000 active connections' staging buffers (about 94 MiB) leave a heavy
  // request room for less than 32 MiB of the shared part.
  for (int i = 0; i < 3000; ++i) memory.add_staging(32 * 1024);
  EXPECT_EQ(memory.staging(), 3000ull * 32 * 1024);
  EXPECT_EQ(memory.used(), memory.staging());
  EXPECT_FALSE(memory.admits(32 * MiB, 0));
  EXPECT_TRUE(memory.admits(4 * MiB, 0));
  // Given back when the connections go idle: room again.
  for (int i = 0; i < 3000; ++i) memory.add_staging(-32 * 1024);
  EXPECT_EQ(memory.used(), 0u);
  EXPECT_TRUE(memory.admits(32 * MiB, 0));
}

TEST(RequestMemory, NoCapAdmitsEverything) {
  RequestMemory memory;
  memory.add(1ull << 40);
  EXPECT_TRUE(memory.admits(32 * MiB, 1ull << 40));
}

TEST(ClientKey, UnixPeersCountByUidTcpPeersByAddressWithoutPort) {
  EXPECT_EQ(nbd::client_key(true, 1000, "pid 42 uid 1000"), "uid 1000");
  EXPECT_EQ(nbd::client_key(false, 0, "10.0.0.7:51234"), "10.0.0.7");
  EXPECT_EQ(nbd::client_key(false, 0, "[::1]:51234"), "[::1]");
  EXPECT_EQ(nbd::client_key(false, 0, "10.0.0.7:1"), nbd::client_key(false, 0, "10.0.0.7:2"));
}

}  // namespace
}  // namespace ioband
