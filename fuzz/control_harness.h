// What the control harnesses share: a fake platform (tests/unit/control_fake.h,
// with the paths of the dm-ioband document and a calibration that measures
// nothing), and a private state directory on tmpfs where there is one, so the
// engine's fsync'ed saves cost microseconds.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "control/engine.h"
#include "unit/control_fake.h"

namespace ioband::fuzz {

inline std::string private_directory() {
  static const std::string path = [] {
    std::string pattern = (::access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm") : std::string("/tmp")) +
                          "/fuzzstate-XXXXXX";
    const char* made = ::mkdtemp(pattern.data());
    if (!made) std::abort();
    std::string dir = made;
    // Removed at exit (a fuzzer that crashes leaves it: it is small).
    static struct Remover {
      std::string dir;
      ~Remover() { std::system(("rm -rf '" + dir + "'").c_str()); }
    } remover{dir};
    return dir;
  }();
  return path;
}

// Whether the private directory is still there; if not (something on the
// machine cleaned /dev/shm or /tmp under the fuzzer's feet), makes it again
// and says no: the input's file checks then mean nothing and it is skipped.
inline bool directory_intact() {
  if (::access(private_directory().c_str(), W_OK) == 0) return true;
  ::mkdir(private_directory().c_str(), 0700);
  std::fprintf(stderr, "fuzz: %s vanished (cleaned by someone else); input skipped\n", private_directory().c_str());
  return false;
}

struct ControlPlatform : control::testing::FakePlatform {
  ControlPlatform() {
    // The reference's other paths (Example #2: logical volumes).
    paths["/dev/mapper/lv0"] = {uint64_t{2097152} * 512, 253, 1};
    paths["/dev/mapper/lv1"] = {uint64_t{2097152} * 512, 253, 2};
  }
  control::Platform platform() {
    control::Platform p = FakePlatform::platform();
    p.calibrate = [](const io::CalibrationOptions&, const std::atomic<bool>&) {
      io::CalibrationReport report;
      report.model = qos::DeviceModel{};
      report.figures.push_back({"rbps", 1, 1e9, {1e9}});
      report.sweep.push_back({"4k-randread@1", 1, 1e4, {1e4}});
      report.seconds = 1;
      return report;
    };
    return p;
  }
};

}  // namespace ioband::fuzz
