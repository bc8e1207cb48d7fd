#pragma once
// NBD wire constants (doc/proto.md of the NetworkBlockDevice/nbd project)
// and big-endian encoding helpers. Everything on the wire is network order.

#include <cstdint>
#include <cstring>
#include <string_view>

namespace ioband::nbd {

// Handshake.
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;  // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454F5054ULL;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9ULL;

inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientNoZeroes = 1u << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptPeekExport = 4,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
  kOptExtendedHeaders = 11,
};

inline constexpr uint32_t kRepErrorBit = 1u << 31;
enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrorBit | 1,
  kRepErrPolicy = kRepErrorBit | 2,
  kRepErrInvalid = kRepErrorBit | 3,
  kRepErrPlatform = kRepErrorBit | 4,
  kRepErrTlsReqd = kRepErrorBit | 5,
  kRepErrUnknown = kRepErrorBit | 6,
  kRepErrShutdown = kRepErrorBit | 7,
  kRepErrBlockSizeReqd = kRepErrorBit | 8,
  kRepErrTooBig = kRepErrorBit | 9,
};

enum InfoType : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags.
enum TransmissionFlag : uint16_t {
  kTxHasFlags = 1u << 0,
  kTxReadOnly = 1u << 1,
  kTxSendFlush = 1u << 2,
  kTxSendFua = 1u << 3,
  kTxRotational = 1u << 4,
  kTxSendTrim = 1u << 5,
  kTxSendWriteZeroes = 1u << 6,
  kTxSendDf = 1u << 7,
  kTxCanMultiConn = 1u << 8,
  kTxSendResize = 1u << 9,
  kTxSendCache = 1u << 10,
  kTxSendFastZero = 1u << 11,
};

// Transmission.
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
inline constexpr size_t kRequestSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kChunkHeaderSize = 20;

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
  kCmdResize = 8,
};

enum CommandFlag : uint16_t {
  kCmdFlagFua = 1u << 0,
  kCmdFlagNoHole = 1u << 1,
  kCmdFlagDf = 1u << 2,
  kCmdFlagReqOne = 1u << 3,
  kCmdFlagFastZero = 1u << 4,
  kCmdFlagPayloadLen = 1u << 5,
};

inline constexpr uint16_t kReplyFlagDone = 1u << 0;
enum ChunkType : uint16_t {
  kChunkNone = 0,
  kChunkOffsetData = 1,
  kChunkOffsetHole = 2,
  kChunkBlockStatus = 5,
  kChunkError = (1u << 15) | 1,
  kChunkErrorOffset = (1u << 15) | 2,
};

// NBD error numbers (not the host's errno values).
enum Error : uint32_t {
  kOk = 0,
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};

inline constexpr std::string_view kBaseAllocation = "base:allocation";
inline constexpr uint32_t kBaseAllocationId = 1;

// Limits the server applies.
inline constexpr uint32_t kMaxPayload = 32u << 20;  // largest READ/WRITE
inline constexpr uint32_t kMaxOptionLength = 16u << 10;  // names are at most 4096 bytes
inline constexpr uint32_t kMaxOptions = 256;
inline constexpr uint32_t kMaxNameLength = 4096;

// Big-endian helpers.
inline uint16_t load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t load32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}
inline uint64_t load64(const uint8_t* p) { return uint64_t{load32(p)} << 32 | load32(p + 4); }
inline uint8_t* store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
  return p + 2;
}
inline uint8_t* store32(uint8_t* p, uint32_t v) {
  store16(p, static_cast<uint16_t>(v >> 16));
  return store16(p + 2, static_cast<uint16_t>(v));
}
inline uint8_t* store64(uint8_t* p, uint64_t v) {
  store32(p, static_cast<uint32_t>(v >> 32));
  return store32(p + 4, static_cast<uint32_t>(v));
}

struct RequestHeader {
  uint32_t magic;
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t length;
};

inline RequestHeader decode_request(const uint8_t* p) {
  return RequestHeader{load32(p), load16(p + 4), load16(p + 6), load64(p + 8), load64(p + 16), load32(p + 24)};
}
inline void encode_request(uint8_t* p, const RequestHeader& h) {
  p = store32(p, h.magic);
  p = store16(p, h.flags);
  p = store16(p, h.type);
  p = store64(p, h.cookie);
  p = store64(p, h.offset);
  store32(p, h.length);
}

inline void encode_simple_reply(uint8_t* p, uint32_t error, uint64_t cookie) {
  p = store32(p, kSimpleReplyMagic);
  p = store32(p, error);
  store64(p, cookie);
}

inline void encode_chunk_header(uint8_t* p, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t length) {
  p = store32(p, kStructuredReplyMagic);
  p = store16(p, flags);
  p = store16(p, type);
  p = store64(p, cookie);
  store32(p, length);
}

}  // namespace ioband::nbd
