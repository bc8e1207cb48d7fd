// Calibration: measures the device model (qos/device_model.h) of the storage
// under an ioband device, with io_uring and O_DIRECT, in well under a minute.
//
// Where, so that no data is ever lost:
//   reads   on the image itself, in its largest run of allocated data (a
//           hole reads from no storage); on the scratch file when the image
//           has less than 256 MiB of it; on a block device, in its first
//           `size` bytes.
//   writes  on a scratch file next to the image (same file system; unnamed
//           with O_TMPFILE, or unlinked right after it is created), filled
//           with data first so that writes overwrite, as a guest's mostly
//           do; on a block device only when the caller allows it (nobody
//           else may write: no connection, no mount), by writing back
//           blocks just read from the same offsets.
//
// What (blk-iocost's io.cost.model figures, and the knee):
//   rrandiops  4 KiB random reads, depth swept 1, 2, 4, ..., 256: the rate of
//              the plateau (the depths within 95 % of the best)
//   depth      the knee: the smallest depth whose rate is >= 95 % of the
//              best, interpolated linearly between swept depths (below the
//              knee the rate grows about linearly with depth: Little's law
//              at a constant latency)
//   rseqiops, wseqiops, wrandiops   4 KiB at depth 64
//   rbps, wbps                      1 MiB sequential at depth 16
// Each figure is the median of several short runs (eight), and the
// runs of all figures are interleaved round by round: a slow second of a
// noisy disk costs one sample of each figure, not every sample of one.
//
// A result that cannot be right is refused with the reason: a stall (a run
// that completed nothing for 2 s), a figure of zero, or a model outside
// qos::model_error's bounds.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "qos/device_model.h"

namespace ioband::io {

inline constexpr double kDefaultCalibrationSeconds = 25;
inline constexpr double kMinCalibrationSeconds = 1;
inline constexpr double kMaxCalibrationSeconds = 60;

struct CalibrationOptions {
  std::string path;   // an image file or a block device
  uint64_t size = 0;  // the bytes of path the ioband device serves; 0: all of it
  // About how long the measurement takes, everything included
  // (kMinCalibrationSeconds..kMaxCalibrationSeconds).
  double seconds = kDefaultCalibrationSeconds;
  // A block device: the caller guarantees that nobody writes to it (no
  // connection to an export of it) and allows writes of data just read
  // back to where it was read. Without it, a block device is refused.
  bool rewrite_in_place = false;
  uint64_t scratch_bytes = uint64_t{1} << 30;  // the largest scratch file
};

// One figure: the rates of its short runs and the value taken from them.
struct CalibrationFigure {
  std::string name;             // "rbps", "rseqiops", ...; "4k-randread@16" in the sweep
  uint32_t depth = 0;           // requests in flight
  double value = 0;             // the median of the samples
  // Per run: requests/s (bytes/s for rbps, wbps); rrandiops: the runs of
  // every depth on the plateau, and `depth` the best one.
  std::vector<double> samples;
};

struct CalibrationReport {
  std::string error;            // why there is no model; empty: `model` is good
  qos::DeviceModel model;
  std::vector<CalibrationFigure> figures;  // rbps rseqiops rrandiops wbps wseqiops wrandiops
  std::vector<CalibrationFigure> sweep;    // 4 KiB random reads by depth
  std::vector<std::string> notes;          // where and how it was measured
  double seconds = 0;                      // how long it took
  bool direct = true;                      // O_DIRECT was accepted everywhere
};

// Measures the device model of options.path. Runs on the calling thread for
// about options.seconds (never past kMaxCalibrationSeconds plus the time to
// drain a stalled device); `cancel` ends it early with an error.
CalibrationReport calibrate(const CalibrationOptions& options, const std::atomic<bool>& cancel);

}  // namespace ioband::io
