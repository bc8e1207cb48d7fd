#include "nbd/validate.h"

#include <cerrno>
#include <cstdlib>

namespace ioband::nbd {
namespace {

// Flags each command accepts; anything else is EINVAL. The spec makes FUA
// valid on every command (a server may ignore it where it means nothing).
uint16_t allowed_flags(uint16_t type, const RequestContext& context) noexcept {
  switch (type) {
    case kCmdRead: return kCmdFlagFua | (context.structured_replies ? kCmdFlagDf : 0);
    case kCmdWriteZeroes: return kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero;
    case kCmdBlockStatus: return kCmdFlagFua | kCmdFlagReqOne;
    default: return kCmdFlagFua;
  }
}

Verdict reject(uint32_t error, const char* reason, uint32_t payload) noexcept {
  return Verdict{Verdict::kReject, error, payload, reason};
}

}  // namespace

Verdict validate_request(const RequestHeader& request, const RequestContext& context) noexcept {
  if (request.magic != kRequestMagic) return Verdict{Verdict::kBrokenStream, kOk, 0, "bad request magic"};
  const uint32_t payload = request.type == kCmdWrite ? request.length : 0;

  switch (request.type) {
    case kCmdDisc:
      return Verdict{Verdict::kDisconnect, kOk, 0, nullptr};
    case kCmdRead:
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
    case kCmdWriteZeroes:
      break;
    case kCmdBlockStatus:
      if (!context.base_allocation) return reject(kEinval, "block status without a negotiated meta context", 0);
      break;
    default:
      return reject(kEinval, "unknown command", 0);
  }

  if (request.flags & ~allowed_flags(request.type, context)) {
    return reject(kEinval, "flags not valid for this command", payload);
  }

  const bool modifies = request.type == kCmdWrite || request.type == kCmdTrim || request.type == kCmdWriteZeroes;
  if (modifies && context.read_only) return reject(kEperm, "the export is read-only", payload);

  if (request.type == kCmdFlush) {
    if (request.offset != 0 || request.length != 0) return reject(kEinval, "flush with offset or length", 0);
    return Verdict{Verdict::kServe, kOk, 0, nullptr};
  }

  if ((request.type == kCmdRead || request.type == kCmdWrite) && request.length > kMaxPayload) {
    return reject(kEinval, "request larger than 32 MiB", payload);
  }
  if (request.length == 0) return reject(kEinval, "zero-length request", payload);
  if (request.offset > context.export_size || request.length > context.export_size - request.offset) {
    return reject(kEinval, "request beyond the end of the export", payload);
  }
  return Verdict{Verdict::kServe, kOk, payload, nullptr};
}

uint32_t nbd_error_from_errno(int err) noexcept {
  switch (std::abs(err)) {
    case 0: return kOk;
    case EPERM:
    case EROFS:
    case EACCES: return kEperm;
    case ENOMEM: return kEnomem;
    case EINVAL: return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return kEnospc;
    case EOVERFLOW: return kEoverflow;
    case ENOTSUP: return kEnotsup;
    case ESHUTDOWN: return kEshutdown;
    default: return kEio;
  }
}

const char* command_name(uint16_t type) noexcept {
  switch (type) {
    case kCmdRead: return "READ";
    case kCmdWrite: return "WRITE";
    case kCmdDisc: return "DISC";
    case kCmdFlush: return "FLUSH";
    case kCmdTrim: return "TRIM";
    case kCmdCache: return "CACHE";
    case kCmdWriteZeroes: return "WRITE_ZEROES";
    case kCmdBlockStatus: return "BLOCK_STATUS";
    default: return "UNKNOWN";
  }
}

}  // namespace ioband::nbd
