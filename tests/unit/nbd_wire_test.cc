// The NBD wire encoding and the one request check, without sockets.

#include <gtest/gtest.h>

#include <cerrno>

#include "nbd/protocol.h"
#include "nbd/validate.h"

namespace ioband::nbd {
namespace {

TEST(NbdWire, RequestRoundTripsInNetworkOrder) {
  RequestHeader in{kRequestMagic, kCmdFlagFua, kCmdWrite, 0x0102030405060708ULL, 0x1122334455667788ULL, 4096};
  uint8_t buf[kRequestSize];
  encode_request(buf, in);
  // Magic first, big-endian, as the spec lays it out.
  EXPECT_EQ(buf[0], 0x25);
  EXPECT_EQ(buf[3], 0x13);
  EXPECT_EQ(buf[5], kCmdFlagFua);
  EXPECT_EQ(buf[7], kCmdWrite);
  EXPECT_EQ(buf[8], 0x01);
  EXPECT_EQ(buf[27], 0x00);
  EXPECT_EQ(buf[26], 0x10);
  RequestHeader out = decode_request(buf);
  EXPECT_EQ(out.magic, in.magic);
  EXPECT_EQ(out.flags, in.flags);
  EXPECT_EQ(out.type, in.type);
  EXPECT_EQ(out.cookie, in.cookie);
  EXPECT_EQ(out.offset, in.offset);
  EXPECT_EQ(out.length, in.length);
}

TEST(NbdWire, SimpleReplyLayout) {
  uint8_t buf[kSimpleReplySize];
  encode_simple_reply(buf, kEinval, 0xAABBCCDDEEFF0011ULL);
  EXPECT_EQ(load32(buf), kSimpleReplyMagic);
  EXPECT_EQ(load32(buf + 4), 22u);
  EXPECT_EQ(load64(buf + 8), 0xAABBCCDDEEFF0011ULL);
}

TEST(NbdWire, ChunkHeaderLayout) {
  uint8_t buf[kChunkHeaderSize];
  encode_chunk_header(buf, kReplyFlagDone, kChunkOffsetData, 7, 4104);
  EXPECT_EQ(load32(buf), kStructuredReplyMagic);
  EXPECT_EQ(load16(buf + 4), kReplyFlagDone);
  EXPECT_EQ(load16(buf + 6), kChunkOffsetData);
  EXPECT_EQ(load64(buf + 8), 7u);
  EXPECT_EQ(load32(buf + 16), 4104u);
}

TEST(NbdWire, ConstantsMatchTheSpec) {
  EXPECT_EQ(kNbdMagic, 0x4e42444d41474943ULL);
  EXPECT_EQ(kOptionMagic, 0x49484156454F5054ULL);
  EXPECT_EQ(kOptionReplyMagic, 0x3e889045565a9ULL);
  EXPECT_EQ(kRepErrUnsup, 0x80000001u);
  EXPECT_EQ(kChunkError, 32769);
  EXPECT_EQ(kTxCanMultiConn, 256);
  EXPECT_EQ(kTxSendFastZero, 2048);
}

RequestContext context(uint64_t size = 1 << 20, bool read_only = false) {
  RequestContext c;
  c.export_size = size;
  c.read_only = read_only;
  c.structured_replies = true;
  c.base_allocation = true;
  return c;
}

RequestHeader request(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  return RequestHeader{kRequestMagic, flags, type, 1, offset, length};
}

TEST(NbdValidate, ServesRequestsInsideTheExport) {
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 4096), context()).kind, Verdict::kServe);
  Verdict w = validate_request(request(kCmdWrite, (1 << 20) - 512, 512, kCmdFlagFua), context());
  EXPECT_EQ(w.kind, Verdict::kServe);
  EXPECT_EQ(w.payload, 512u);
  EXPECT_EQ(validate_request(request(kCmdFlush, 0, 0), context()).kind, Verdict::kServe);
  EXPECT_EQ(validate_request(request(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagNoHole | kCmdFlagFastZero), context()).kind,
            Verdict::kServe);
  EXPECT_EQ(validate_request(request(kCmdBlockStatus, 0, 1 << 20, kCmdFlagReqOne), context()).kind, Verdict::kServe);
}

TEST(NbdValidate, OutOfRangeIsEinval) {
  Verdict v = validate_request(request(kCmdRead, 1 << 20, 1), context());
  EXPECT_EQ(v.kind, Verdict::kReject);
  EXPECT_EQ(v.error, kEinval);
  // offset + length overflowing 64 bits must not wrap into range.
  v = validate_request(request(kCmdTrim, ~0ULL - 10, 4096), context());
  EXPECT_EQ(v.error, kEinval);
  // A rejected write still says how much payload to skip.
  v = validate_request(request(kCmdWrite, 1 << 20, 4096), context());
  EXPECT_EQ(v.kind, Verdict::kReject);
  EXPECT_EQ(v.payload, 4096u);
}

TEST(NbdValidate, OversizedPayloadIsRejected) {
  Verdict v = validate_request(request(kCmdRead, 0, kMaxPayload + 1), context(1ull << 30));
  EXPECT_EQ(v.kind, Verdict::kReject);
  EXPECT_EQ(v.error, kEinval);
  // Trim has no payload: large is fine.
  EXPECT_EQ(validate_request(request(kCmdTrim, 0, kMaxPayload + 1), context(1ull << 30)).kind, Verdict::kServe);
}

TEST(NbdValidate, BadFlagsAreEinval) {
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagNoHole), context()).error, kEinval);
  EXPECT_EQ(validate_request(request(kCmdTrim, 0, 512, kCmdFlagFastZero), context()).error, kEinval);
  // FUA is valid on every command.
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagFua), context()).kind, Verdict::kServe);
  EXPECT_EQ(validate_request(request(kCmdFlush, 0, 0, kCmdFlagFua), context()).kind, Verdict::kServe);
  EXPECT_EQ(validate_request(request(kCmdWrite, 0, 512, kCmdFlagNoHole), context()).error, kEinval);
  EXPECT_EQ(validate_request(request(kCmdFlush, 0, 0, 1u << 9), context()).error, kEinval);
  RequestContext simple = context();
  simple.structured_replies = false;
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512, kCmdFlagDf), simple).error, kEinval);
}

TEST(NbdValidate, ReadOnlyExportRefusesChangesWithEperm) {
  for (uint16_t type : {kCmdWrite, kCmdTrim, kCmdWriteZeroes}) {
    Verdict v = validate_request(request(type, 0, 512), context(1 << 20, true));
    EXPECT_EQ(v.kind, Verdict::kReject) << command_name(type);
    EXPECT_EQ(v.error, kEperm) << command_name(type);
  }
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 512), context(1 << 20, true)).kind, Verdict::kServe);
  EXPECT_EQ(validate_request(request(kCmdFlush, 0, 0), context(1 << 20, true)).kind, Verdict::kServe);
}

TEST(NbdValidate, BrokenStreamAndDisconnect) {
  RequestHeader bad = request(kCmdRead, 0, 512);
  bad.magic = 0xdeadbeef;
  EXPECT_EQ(validate_request(bad, context()).kind, Verdict::kBrokenStream);
  EXPECT_EQ(validate_request(request(kCmdDisc, 0, 0), context()).kind, Verdict::kDisconnect);
}

TEST(NbdValidate, UnknownCommandAndBlockStatusWithoutContext) {
  EXPECT_EQ(validate_request(request(99, 0, 512), context()).error, kEinval);
  RequestContext no_context = context();
  no_context.base_allocation = false;
  EXPECT_EQ(validate_request(request(kCmdBlockStatus, 0, 512), no_context).error, kEinval);
  EXPECT_EQ(validate_request(request(kCmdRead, 0, 0), context()).error, kEinval);
}

TEST(NbdValidate, ErrnoMapping) {
  EXPECT_EQ(nbd_error_from_errno(-EIO), kEio);
  EXPECT_EQ(nbd_error_from_errno(ENOSPC), kEnospc);
  EXPECT_EQ(nbd_error_from_errno(-EDQUOT), kEnospc);
  EXPECT_EQ(nbd_error_from_errno(-EROFS), kEperm);
  EXPECT_EQ(nbd_error_from_errno(-ENOTSUP), kEnotsup);
  EXPECT_EQ(nbd_error_from_errno(-EBADF), kEio);  // anything unknown is EIO
  EXPECT_EQ(nbd_error_from_errno(0), kOk);
}

}  // namespace
}  // namespace ioband::nbd
