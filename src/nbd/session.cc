#include "nbd/session.h"

#include <fcntl.h>
#include <poll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "io/log.h"
#include "nbd/scheduler.h"

namespace ioband::nbd {

// ---------------------------------------------------------------- requests

void NbdRequest::finish(int32_t result) noexcept { session->io_done(*this, result); }

bool NbdRequest::ensure_capacity(uint32_t bytes) noexcept {
  if (capacity >= bytes) return true;
  const uint32_t before = capacity;
  free(data);
  data = nullptr;
  capacity = 0;
  const uint32_t rounded = (bytes + 4095u) & ~4095u;
  void* p = nullptr;
  if (posix_memalign(&p, 4096, rounded) != 0) {
    session->buffer_changed(before, 0);
    return false;
  }
  data = static_cast<uint8_t*>(p);
  capacity = rounded;
  session->buffer_changed(before, rounded);
  return true;
}

NbdRequest::~NbdRequest() {
  if (capacity) session->buffer_changed(capacity, 0);
  free(data);
}

// ---------------------------------------------------------------- lifecycle

Session::Session(SessionHost host, int fd, PeerIdentity peer, uint64_t id)
    : host_(std::move(host)),
      fd_(fd),
      transport_(net::plain_transport(fd)),
      peer_(std::move(peer)),
      id_(id),
      started_(host_.reactor->now()),
      last_input_(started_),
      last_send_progress_(started_) {
  // sendfile() has no "don't wait" flag: the socket itself must not block.
  // The ring's recv and poll wait for readiness either way.
  const int fl = fcntl(fd_, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
  (void)ensure_staging();  // failing, arm_recv polls and the first input tries again
  recv_op_.session = this;
  send_op_.session = this;
  cork_op_.session = this;
  hold_timer_op_.session = this;
  tls_op_.session = this;
  // A Unix stream socket is writable again once its unread data is at most
  // a quarter of the send buffer (unix_writable() in the kernel).
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  if (peer_.unix_socket && getsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0 && sndbuf > 0) {
    cork_threshold_ = static_cast<uint32_t>(sndbuf) / 4;
  }
}

Session::~Session() {
  drop_staging();
  drop_free_requests();
  if (export_) export_->connections.fetch_sub(1, std::memory_order_relaxed);
  transport_.reset();  // TLS says goodbye on the socket before it closes
  close(fd_);
}

void Session::start() noexcept {
  uint8_t greeting[18];
  store16(store64(store64(greeting, kNbdMagic), kOptionMagic), kFlagFixedNewstyle | kFlagNoZeroes);
  handshake_out_.assign(reinterpret_cast<char*>(greeting), sizeof greeting);
  flush();
  arm_recv();
  maybe_destroy();
}

void Session::resume_on(io::Reactor* reactor) noexcept {
  ++busy_;
  resume_on_inner(reactor);
  --busy_;
  maybe_destroy();
}

void Session::resume_on_inner(io::Reactor* reactor) noexcept {
  host_.reactor = reactor;
  phase_ = Phase::kTransmission;
  process_input();
}

// Requests in flight on the storage complete and are acknowledged; those
// still queued in the scheduler get ESHUTDOWN (see cancel_waiting).
void Session::shutdown() noexcept {
  shutting_down_ = true;
  begin_close("server shutting down");  // destroys at once if idle
}

// remove --force: as a server stop, for this export only — requests on the
// storage finish and are answered while the socket takes the replies, those
// queued in the scheduler get ESHUTDOWN, nothing more is read, then the
// connection closes.
void Session::abort() noexcept {
  shutting_down_ = true;
  aborted_ = true;
  begin_close("export removed");
  // A client that does not read would keep the connection and its replies'
  // memory forever: the waiting send ends (see wait_writable).
  if (send_pending_) ::shutdown(fd_, SHUT_RDWR);
}

void Session::begin_close(const char* why) noexcept {
  if (phase_ != Phase::kClosing) {
    phase_ = Phase::kClosing;
    close_reason_ = why;
  }
  if (recv_pending_ || tls_ == Tls::handshake) transport_->cancel(*host_.reactor);
  if (cork_pending_) host_.reactor->cancel(&cork_op_);
  if (hold_timer_pending_) host_.reactor->cancel(&hold_timer_op_);
  if (waiting_) cancel_waiting();
  // A write whose data never fully arrived is not acknowledged; its buffer
  // is released once no recv can still be writing into it.
  if (payload_request_ && !(payload_direct_ && recv_pending_)) {
    NbdRequest* r = payload_request_;
    payload_request_ = nullptr;
    payload_direct_ = false;
    release_request(r);
  }
  maybe_destroy();
}

void Session::maybe_destroy() noexcept {
  if (phase_ != Phase::kClosing || recv_pending_ || send_pending_ || flush_scheduled_ || cork_pending_ || hold_timer_pending_ ||
      inflight_ != 0 ||
      busy_ != 0 || tls_ == Tls::handshake) {
    return;
  }
  if (limit_closed_) return host_.on_closed(this);  // the server logged it, rate-limited
  std::string line = "connection " + std::to_string(id_) + " closed";
  if (export_) line += " (export " + export_->name + ")";
  if (close_reason_) line += ": " + std::string(close_reason_);
  log_line(line);
  host_.on_closed(this);  // deletes this
}

// ---------------------------------------------------------------- input

bool Session::reading_paused() const noexcept {
  return inflight_ >= kMaxInflight || inflight_bytes_ >= kMaxInflightBytes;
}

void Session::arm_recv() noexcept {
  if (recv_pending_ || input_closed_ || phase_ == Phase::kClosing || phase_ == Phase::kMigrating) return;
  // After STARTTLS the next bytes are the TLS handshake's, not options.
  if (tls_ == Tls::acked || tls_ == Tls::handshake) return;
  if (!in_ && !payload_direct_) {
    // Idle: the staging buffer comes back with the first byte.
    io_uring_prep_poll_add(host_.reactor->prepare(&recv_op_), fd_, POLLIN);
    input_polling_ = true;
  } else if (payload_direct_) {
    NbdRequest* r = payload_request_;
    transport_->recv(*host_.reactor, &recv_op_, r->data + r->received, r->header.length - r->received);
  } else {
    if (in_start_ == in_end_) in_start_ = in_end_ = 0;
    if (in_end_ == kStagingSize) {
      std::memmove(in_.get(), in_.get() + in_start_, available());
      in_end_ -= in_start_;
      in_start_ = 0;
    }
    recv_asked_ = kStagingSize - in_end_;
    transport_->recv(*host_.reactor, &recv_op_, in_.get() + in_end_, recv_asked_);
  }
  recv_pending_ = true;
}

void Session::recv_done(int32_t result) noexcept {
  ++busy_;
  recv_done_inner(result);
  --busy_;
  maybe_destroy();
}

void Session::recv_done_inner(int32_t result) noexcept {
  recv_pending_ = false;
  if (input_polling_ && phase_ != Phase::kClosing) {
    input_polling_ = false;
    if (result < 0 && result != -EINTR) return begin_close("connection reset");
    if (!ensure_staging()) return begin_close("out of memory");
    return arm_recv();
  }
  input_polling_ = false;
  if (staging_release_) {
    staging_release_ = false;
    if (result == -ECANCELED && phase_ != Phase::kClosing) {
      drop_staging();
      return arm_recv();
    }
  }
  if (phase_ == Phase::kClosing) {
    input_closed_ = true;
    if (payload_request_) {
      NbdRequest* r = payload_request_;
      payload_request_ = nullptr;
      payload_direct_ = false;
      release_request(r);
    }
    return maybe_destroy();
  }
  if (result == -EAGAIN || result == -EINTR || result == -ENOBUFS) {
    arm_recv();
    return;
  }
  if (result <= 0) {
    input_closed_ = true;
    return begin_close(result == 0 ? "client disconnected" : "connection reset");
  }
  last_input_ = host_.reactor->now();
  // A full staging buffer means the socket may hold more requests; a
  // payload read straight into its buffer says nothing about that.
  if (!payload_direct_ && static_cast<uint32_t>(result) == recv_asked_) host_.reactor->expect_more();
  if (payload_direct_) {
    NbdRequest* r = payload_request_;
    r->received += static_cast<uint32_t>(result);
    if (r->received == r->header.length) {
      payload_direct_ = false;
      payload_request_ = nullptr;
      dispatch(*r);
    }
  } else {
    in_end_ += static_cast<uint32_t>(result);
  }
  process_input();
}

void Session::process_input() noexcept {
  for (;;) {
    bool progressed = false;
    switch (phase_) {
      case Phase::kGreeting:
      case Phase::kOptions: progressed = process_handshake(); break;
      case Phase::kTransmission: progressed = process_request(); break;
      case Phase::kMigrating:
      case Phase::kClosing: progressed = false; break;
    }
    if (!progressed) break;
  }
  // Reading stops while the session is over its limits (memory stays
  // bounded); a WRITE whose payload is arriving is always completed.
  const bool want_input = payload_request_ != nullptr || discard_ != 0 || phase_ != Phase::kTransmission ||
                          (!reading_paused() && !disconnect_requested_ && !waiting_memory_ && !(cork_pending_ && memory_speed_));
  if (want_input) arm_recv();
}

void Session::drop_free_requests() noexcept {
  while (free_) {
    NbdRequest* r = free_;
    free_ = r->next;
    delete r;
  }
  free_count_ = 0;
}

bool Session::ensure_staging() noexcept {
  if (in_) return true;
  in_.reset(new (std::nothrow) uint8_t[kStagingSize]);
  if (!in_) return false;
  host_.limits->memory.add_staging(kStagingSize);
  return true;
}

void Session::drop_staging() noexcept {
  if (!in_) return;
  in_.reset();
  in_start_ = in_end_ = 0;
  host_.limits->memory.add_staging(-static_cast<int64_t>(kStagingSize));
}

// Only a plain socket: a TLS transport may hold decrypted bytes a poll
// would not see. Only with nothing half-read, nothing in flight and
// nothing to send: the connection is truly idle, and its next input is a
// new request (or option).
void Session::release_idle_input(std::chrono::steady_clock::time_point now) noexcept {
  if (!in_ || !recv_pending_ || input_polling_ || staging_release_ || tls_ != Tls::plain || payload_request_ ||
      payload_direct_ || discard_ != 0 || available() != 0 || inflight_ != 0 || out_head_ || waiting_memory_ ||
      handshake_sent_ < handshake_out_.size() || now - last_input_ < RequestMemory::kStagingIdle ||
      (phase_ != Phase::kOptions && phase_ != Phase::kTransmission)) {
    return;
  }
  drop_free_requests();
  std::vector<iovec>().swap(iov_);
  staging_release_ = true;
  transport_->cancel(*host_.reactor);
}

// ---------------------------------------------------------------- handshake

bool Session::process_handshake() noexcept {
  if (tls_ == Tls::acked || tls_ == Tls::handshake) return false;
  if (discard_) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(discard_, available()));
    in_start_ += n;
    discard_ -= n;
    return discard_ == 0 && available() > 0;
  }
  const uint8_t* p = in_.get() + in_start_;
  if (phase_ == Phase::kGreeting) {
    if (available() < 4) return false;
    const uint32_t flags = load32(p);
    in_start_ += 4;
    if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
      begin_close("unknown client handshake flags");
      return false;
    }
    no_zeroes_ = flags & kClientNoZeroes;
    phase_ = Phase::kOptions;
    return true;
  }
  if (available() < 16) return false;
  const uint64_t magic = load64(p);
  const uint32_t option = load32(p + 8);
  const uint32_t length = load32(p + 12);
  if (magic != kOptionMagic) {
    begin_close("bad option magic");
    return false;
  }
  if (++options_seen_ > kMaxOptions) {
    begin_close("too many handshake options");
    return false;
  }
  if (length > kMaxOptionLength) {
    if (option == kOptExportName) {  // no way to answer an error: hang up
      begin_close("export name too long");
      return false;
    }
    // Answer, then hang up rather than read what may be gigabytes.
    in_start_ += 16;
    option_error(option, kRepErrTooBig, "option data too long");
    begin_close("handshake option too long");
    return false;
  }
  if (available() < 16 + length) return false;
  in_start_ += 16 + length;
  handle_option(option, p + 16, length);
  return phase_ == Phase::kOptions || phase_ == Phase::kTransmission;
}

void Session::option_reply(uint32_t option, uint32_t type, const void* data, uint32_t length) noexcept {
  uint8_t header[20];
  store32(store32(store32(store64(header, kOptionReplyMagic), option), type), length);
  handshake_out_.append(reinterpret_cast<char*>(header), sizeof header);
  if (length) handshake_out_.append(static_cast<const char*>(data), length);
  schedule_flush();
}

void Session::option_error(uint32_t option, uint32_t type, const std::string& message) noexcept {
  option_reply(option, type, message.data(), static_cast<uint32_t>(message.size()));
}

void Session::handle_option(uint32_t option, const uint8_t* data, uint32_t length) noexcept {
  if (!refusal_.empty()) return refuse_option(option);
  // --tls require: nothing but STARTTLS and ABORT before TLS (FORCEDTLS).
  if (tls_missing() && option != kOptStartTls && option != kOptAbort) {
    if (option == kOptExportName) {  // cannot be refused with an error
      log_line("connection " + std::to_string(id_) + ": EXPORT_NAME without TLS, which is required");
      begin_close("TLS required");
      return;
    }
    return option_error(option, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
  }
  switch (option) {
    case kOptExportName: {
      std::string name(reinterpret_cast<const char*>(data), length);
      auto e = host_.exports->find_for_client(name);
      if (!e) {
        log_line("connection " + std::to_string(id_) + ": unknown export '" + escape_for_log(name) + "'");
        begin_close("unknown export");
        return;
      }
      const Access access = access_to(*e);
      if (access == Access::denied) {  // as for an unknown export: no way to say why
        begin_close("access denied");
        return;
      }
      if (!e->admit()) {  // this old-style option has no way to say why
        log_line("connection " + std::to_string(id_) + ": export '" + escape_for_log(name) + "' is held (calibration)");
        begin_close("export held");
        return;
      }
      export_ = std::move(e);
      client_read_only_ = access == Access::read_only;
      uint8_t reply[10 + 124] = {};
      store16(store64(reply, export_->backend->size()), export_->transmission_flags(client_read_only_));
      handshake_out_.append(reinterpret_cast<char*>(reply), no_zeroes_ ? 10 : sizeof reply);
      schedule_flush();
      enter_transmission();
      return;
    }
    case kOptAbort:
      option_reply(option, kRepAck, nullptr, 0);
      begin_close("client aborted the handshake");
      return;
    case kOptList: {
      if (length != 0) return option_error(option, kRepErrInvalid, "LIST takes no data");
      for (auto& e : host_.exports->list()) {
        if (e->access_for(peer_) == Access::denied) continue;  // only what this client may open
        std::string body(4, '\0');
        store32(reinterpret_cast<uint8_t*>(body.data()), static_cast<uint32_t>(e->name.size()));
        body += e->name;
        body += e->description;
        option_reply(option, kRepServer, body.data(), static_cast<uint32_t>(body.size()));
      }
      option_reply(option, kRepAck, nullptr, 0);
      return;
    }
    case kOptStartTls:
      return handle_starttls(length);
    case kOptStructuredReply:
      if (length != 0) return option_error(option, kRepErrInvalid, "STRUCTURED_REPLY takes no data");
      context_.structured_replies = true;
      option_reply(option, kRepAck, nullptr, 0);
      return;
    case kOptInfo:
    case kOptGo:
      return handle_info_or_go(option, data, length);
    case kOptListMetaContext:
    case kOptSetMetaContext:
      return handle_meta_context(option, data, length);
    default:
      return option_error(option, kRepErrUnsup, "option " + std::to_string(option) + " is not supported");
  }
}

void Session::handle_info_or_go(uint32_t option, const uint8_t* data, uint32_t length) noexcept {
  if (length < 6) return option_error(option, kRepErrInvalid, "INFO/GO data too short");
  const uint32_t name_length = load32(data);
  if (name_length > length - 6) return option_error(option, kRepErrInvalid, "export name length out of range");
  const uint16_t requests = load16(data + 4 + name_length);
  if (length != 4 + name_length + 2 + 2u * requests) {
    return option_error(option, kRepErrInvalid, "INFO/GO length does not match its requests");
  }
  std::string name(reinterpret_cast<const char*>(data + 4), name_length);
  auto e = host_.exports->find_for_client(name);
  if (!e) return option_error(option, kRepErrUnknown, "no export named '" + name + "'");
  const Access access = access_to(*e);
  if (access == Access::denied) return option_error(option, kRepErrPolicy, access_denied(*e));
  if (option == kOptGo && !e->admit()) {
    return option_error(option, kRepErrPolicy,
                        "export '" + e->name + "' takes no connection while iobandctl calibrate rewrites its block "
                        "device in place; try again within a minute");
  }

  uint8_t info[14];
  store16(store64(store16(info, kInfoExport), e->backend->size()), e->transmission_flags(access == Access::read_only));
  option_reply(option, kRepInfo, info, 12);
  for (uint16_t i = 0; i < requests; ++i) {
    const uint16_t type = load16(data + 4 + name_length + 2 + 2u * i);
    if (type == kInfoName) {
      std::string body(2, '\0');
      store16(reinterpret_cast<uint8_t*>(body.data()), kInfoName);
      body += e->name;
      option_reply(option, kRepInfo, body.data(), static_cast<uint32_t>(body.size()));
    } else if (type == kInfoDescription && !e->description.empty()) {
      std::string body(2, '\0');
      store16(reinterpret_cast<uint8_t*>(body.data()), kInfoDescription);
      body += e->description;
      option_reply(option, kRepInfo, body.data(), static_cast<uint32_t>(body.size()));
    }
  }
  // Block sizes are sent whether asked or not: any alignment is accepted,
  // 4 KiB is the efficient size, 32 MiB the largest payload.
  store32(store32(store32(store16(info, kInfoBlockSize), 1), e->backend->traits().preferred_block), kMaxPayload);
  option_reply(option, kRepInfo, info, 14);
  option_reply(option, kRepAck, nullptr, 0);
  if (option == kOptGo) {
    export_ = std::move(e);
    client_read_only_ = access == Access::read_only;
    enter_transmission();
  }
}

void Session::handle_meta_context(uint32_t option, const uint8_t* data, uint32_t length) noexcept {
  if (option == kOptSetMetaContext && !context_.structured_replies) {
    return option_error(option, kRepErrInvalid, "SET_META_CONTEXT needs structured replies first");
  }
  if (length < 8) return option_error(option, kRepErrInvalid, "meta context data too short");
  const uint32_t name_length = load32(data);
  if (name_length > length - 8) return option_error(option, kRepErrInvalid, "export name length out of range");
  std::string name(reinterpret_cast<const char*>(data + 4), name_length);
  uint32_t pos = 4 + name_length;
  const uint32_t queries = load32(data + pos);
  pos += 4;
  // Parse every query before answering, so a malformed one answers nothing else.
  std::vector<std::string> asked;
  for (uint32_t i = 0; i < queries; ++i) {
    if (length - pos < 4) return option_error(option, kRepErrInvalid, "meta context query truncated");
    const uint32_t qlen = load32(data + pos);
    pos += 4;
    if (qlen > length - pos) return option_error(option, kRepErrInvalid, "meta context query truncated");
    asked.emplace_back(reinterpret_cast<const char*>(data + pos), qlen);
    pos += qlen;
  }
  if (pos != length) return option_error(option, kRepErrInvalid, "trailing data after meta context queries");
  const auto e = host_.exports->find_for_client(name);
  if (!e) return option_error(option, kRepErrUnknown, "no export named '" + name + "'");
  if (e->access_for(peer_) == Access::denied) return option_error(option, kRepErrPolicy, access_denied(*e));
  bool match = false;
  if (option == kOptListMetaContext && asked.empty()) match = true;
  for (const auto& q : asked) {
    if (q == kBaseAllocation || (option == kOptListMetaContext && (q == "base:" || q == "base:allocation"))) {
      match = true;
    }
  }
  if (option == kOptSetMetaContext) context_.base_allocation = match;
  if (match) {
    std::string body(4, '\0');
    store32(reinterpret_cast<uint8_t*>(body.data()), option == kOptSetMetaContext ? kBaseAllocationId : 0);
    body += kBaseAllocation;
    option_reply(option, kRepMetaContext, body.data(), static_cast<uint32_t>(body.size()));
  }
  option_reply(option, kRepAck, nullptr, 0);
}

// What this client may do with export e (its access list); a refusal is
// logged here, with who the client was seen as.
Access Session::access_to(const Export& e) noexcept {
  const Access access = e.access_for(peer_);
  if (access == Access::denied) {
    log_line("connection " + std::to_string(id_) + " from " + describe_for_access(peer_) + ": refused export '" +
             e.name + "' by its access list");
  }
  return access;
}

// A refused client learns that the export exists (it named it) and who it
// was seen as, not the rules.
std::string Session::access_denied(const Export& e) const {
  return "access to export '" + e.name + "' denied for " + describe_for_access(peer_);
}

void Session::handle_starttls(uint32_t length) noexcept {
  if (!host_.tls) {
    return option_error(kOptStartTls, kRepErrPolicy, "TLS is off on this server (iobandd --tls on or require)");
  }
  if (length != 0) return option_error(kOptStartTls, kRepErrInvalid, "STARTTLS takes no data");
  if (tls_ != Tls::plain) return option_error(kOptStartTls, kRepErrInvalid, "TLS is already on");
  option_reply(kOptStartTls, kRepAck, nullptr, 0);
  tls_ = Tls::acked;  // start_tls() once the answer is out, in clear
}

// The answer to STARTTLS went out in clear; from here on the stream is TLS.
void Session::start_tls() noexcept {
  std::string error;
  // Bytes the client sent after STARTTLS already begin its handshake.
  auto tls = net::TlsTransport::create(*host_.tls, fd_, in_.get() + in_start_, available(), error);
  in_start_ = in_end_ = 0;
  if (!tls) {
    tls_ = Tls::plain;
    log_line("connection " + std::to_string(id_) + ": cannot start TLS: " + error);
    return begin_close("TLS failed");
  }
  tls_transport_ = tls.get();
  transport_ = std::move(tls);
  tls_ = Tls::handshake;
  cork_threshold_ = 0;  // SIOCOUTQ would count ciphertext, not replies
  tls_transport_->handshake(*host_.reactor, &tls_op_);
}

void Session::tls_done(int32_t result) noexcept {
  ++busy_;
  if (result < 0) {
    tls_ = Tls::acked;  // no plain talk after an ACK
    if (phase_ != Phase::kClosing) {
      log_line("connection " + std::to_string(id_) + " from " + peer_.address +
               ": TLS handshake failed: " + tls_transport_->error());
    }
    begin_close("TLS handshake failed");
  } else {
    tls_ = Tls::on;
    peer_.tls_identity = tls_transport_->identity();
    // What was negotiated in clear does not carry over (the spec, and
    // nbdkit): the client asks again under TLS.
    context_.structured_replies = false;
    context_.base_allocation = false;
    log_line("connection " + std::to_string(id_) + " from " + peer_.address + ": TLS " +
             tls_transport_->description() +
             (peer_.tls_identity.empty() ? "" : ", identity '" + peer_.tls_identity + "'"));
    if (phase_ != Phase::kClosing) process_input();
  }
  --busy_;
  maybe_destroy();
}

// export_ was admitted (Export::admit counted the connection).
void Session::enter_transmission() noexcept {
  if (tls_missing()) {  // handle_option refuses first; this is the last line
    begin_close("TLS required");
    return;
  }
  context_.export_size = export_->backend->size();
  context_.read_only = export_->is_read_only() || client_read_only_;
  const io::BackendTraits traits = export_->backend->traits();
  memory_speed_ = traits.memory_speed;
  writes_consumed_below_ = traits.writes_consumed_below;
  log_line("connection " + std::to_string(id_) + " from " + peer_.address + " to export " + export_->name +
           (context_.structured_replies ? " (structured replies)" : "") +
           (client_read_only_ ? " (read-only by its access list)" : ""));
  phase_ = export_->reactor && export_->reactor != host_.reactor ? Phase::kMigrating : Phase::kTransmission;
}

// ---------------------------------------------------------------- transmission

NbdRequest* Session::acquire_request() noexcept {
  NbdRequest* r = free_;
  if (r) {
    free_ = r->next;
    --free_count_;
  } else {
    r = new (std::nothrow) NbdRequest;
    if (!r) return nullptr;
    r->session = this;
  }
  r->next = nullptr;
  r->error = kOk;
  r->error_reason = nullptr;
  r->received = 0;
  r->reply_data = nullptr;
  r->reply_data_length = 0;
  r->reply_splice_fd = -1;
  r->extra.clear();
  r->scheduled = false;
  ++inflight_;
  return r;
}

void Session::release_request(NbdRequest* r) noexcept {
  --inflight_;
  if (r->header.type == kCmdRead || r->header.type == kCmdWrite) inflight_bytes_ -= r->header.length;
  // Keep a few requests and modest buffers for reuse; give back the rest,
  // and buffers above 128 KiB while request memory is tight (limits.h).
  if (free_count_ >= 64) {
    delete r;
  } else {
    if (r->capacity > (1u << 20) || (r->capacity > (128u << 10) && host_.limits->memory.tight())) {
      buffer_changed(r->capacity, 0);
      free(r->data);
      r->data = nullptr;
      r->capacity = 0;
    }
    r->next = free_;
    free_ = r;
    ++free_count_;
  }
}

bool Session::process_request() noexcept {
  if (payload_request_) {
    NbdRequest* r = payload_request_;
    const uint32_t n = std::min(available(), r->header.length - r->received);
    std::memcpy(r->data + r->received, in_.get() + in_start_, n);
    in_start_ += n;
    r->received += n;
    if (r->received < r->header.length) {
      // A large remainder goes straight into the request's buffer.
      payload_direct_ = r->header.length - r->received >= kStagingSize / 2;
      return false;
    }
    payload_request_ = nullptr;
    dispatch(*r);
    return true;
  }
  if (discard_) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(discard_, available()));
    in_start_ += n;
    discard_ -= n;
    return discard_ == 0;
  }
  if (disconnect_requested_ || reading_paused() || available() < kRequestSize) return false;

  const RequestHeader header = decode_request(in_.get() + in_start_);
  in_start_ += kRequestSize;
  const Verdict verdict = validate_request(header, context_);
  switch (verdict.kind) {
    case Verdict::kBrokenStream:
      log_line("connection " + std::to_string(id_) + ": " + verdict.reason + ", closing");
      begin_close(verdict.reason);
      return false;
    case Verdict::kDisconnect:
      disconnect_requested_ = true;
      input_closed_ = true;
      begin_close("client sent DISC");
      return false;
    case Verdict::kReject: {
      NbdRequest* r = acquire_request();
      if (!r) {
        begin_close("out of memory");
        return false;
      }
      r->header = header;
      r->header.length = 0;  // nothing buffered for it
      discard_ = verdict.payload;
      reply_error(*r, verdict.error, verdict.reason);
      return true;
    }
    case Verdict::kServe:
      break;
  }
  NbdRequest* r = acquire_request();
  if (!r) {
    begin_close("out of memory");
    return false;
  }
  r->header = header;
  if (header.type == kCmdRead || header.type == kCmdWrite) {
    inflight_bytes_ += header.length;
    if (header.type == kCmdWrite && header.length < writes_consumed_below_ && available() >= header.length &&
        !export_->scheduling.driver) {
      // Written before dispatch returns (see writes_consumed_below_). Under
      // QoS the write may wait in the scheduler, so it keeps its own copy.
      uint8_t* payload = in_.get() + in_start_;
      in_start_ += header.length;
      dispatch(*r, payload);
      return true;
    }
    if (r->capacity < header.length && !memory_admits(((header.length + 4095ull) & ~4095ull) - r->capacity)) {
      release_request(r);
      in_start_ -= kRequestSize;  // read again once memory is free
      return false;
    }
    if (!r->ensure_capacity(header.length)) {
      discard_ = verdict.payload;
      reply_error(*r, kEnomem, "cannot allocate the request buffer");
      return true;
    }
  }
  if (header.type == kCmdWrite) {
    payload_request_ = r;
    return true;  // the payload is copied on the next pass
  }
  dispatch(*r);
  return true;
}

void Session::dispatch(NbdRequest& r, uint8_t* payload) noexcept {
  const RequestHeader& h = r.header;
  if (h.type == kCmdBlockStatus) {
    build_block_status(r);
    return;
  }
  r.offset = h.offset;
  r.length = h.length;
  r.buffer = payload ? payload : r.data;
  r.flags = 0;
  r.splice_fd = -1;
  if (h.flags & kCmdFlagFua) r.flags |= io::kFua;
  switch (h.type) {
    case kCmdRead:
      r.op = io::Op::kRead;
      if (transport_->zero_copy_files()) r.flags |= io::kSpliceOk;
      if (continues_stream(h.offset, h.length, false)) r.flags |= io::kSequential;
      break;
    case kCmdWrite:
      r.op = io::Op::kWrite;
      if (continues_stream(h.offset, h.length, true)) r.flags |= io::kSequential;
      break;
    case kCmdFlush: r.op = io::Op::kFlush; break;
    case kCmdTrim: r.op = io::Op::kTrim; break;
    case kCmdCache: r.op = io::Op::kCache; break;
    case kCmdWriteZeroes:
      r.op = io::Op::kWriteZeroes;
      if (h.flags & kCmdFlagNoHole) r.flags |= io::kNoHole;
      if (h.flags & kCmdFlagFastZero) r.flags |= io::kFastZero;
      break;
  }
  Scheduling& scheduling = export_->scheduling;
  if (!scheduling.driver) return submit_io(r);
  const uint32_t epoch = scheduling.epoch.load(std::memory_order_acquire);
  if (epoch != classified_epoch_) {
    group_id_ = group_id_for(scheduling.type.load(std::memory_order_relaxed), peer_);
    classified_epoch_ = epoch;
  }
  r.device = scheduling.device;
  r.group = group_id_;
  r.direction = (h.type == kCmdRead || h.type == kCmdCache) ? qos::Direction::read : qos::Direction::write;
  r.bytes = (h.type == kCmdRead || h.type == kCmdWrite) ? h.length : 0;
  switch (h.type) {
    case kCmdWrite: r.op_kind = qos::OpKind::write; break;
    case kCmdFlush: r.op_kind = qos::OpKind::flush; break;
    case kCmdTrim: r.op_kind = qos::OpKind::trim; break;
    case kCmdWriteZeroes: r.op_kind = qos::OpKind::write_zeroes; break;
    default: r.op_kind = qos::OpKind::read; break;
  }
  r.sequential = (r.flags & io::kSequential) != 0;
  r.scheduled = true;
  r.waiting_prev = nullptr;
  r.waiting_next = waiting_;
  if (waiting_) waiting_->waiting_prev = &r;
  waiting_ = &r;
  scheduling.driver->enqueue(r);
}

// A guest reading or writing a file, a copy, a backup: each is a stream of
// requests that start where the one before ended, several of them
// interleaved on one connection at most. One that starts nowhere near is a
// new stream and takes the oldest slot. Reads and writes are separate.
bool Session::continues_stream(uint64_t offset, uint32_t length, bool write) noexcept {
  Streams& streams = write ? write_streams_ : read_streams_;
  for (uint64_t& end : streams.end) {
    if (end == offset) {
      end = offset + length;
      return true;
    }
  }
  streams.end[streams.next] = offset + length;
  streams.next = (streams.next + 1) % kStreams;
  return false;
}

void Session::submit_io(NbdRequest& r) noexcept {
  if (r.scheduled) unlink_waiting(r);
  export_->backend->submit(*host_.reactor, r);
}

void Session::unlink_waiting(NbdRequest& r) noexcept {
  if (r.waiting_prev) {
    r.waiting_prev->waiting_next = r.waiting_next;
  } else if (waiting_ == &r) {
    waiting_ = r.waiting_next;
  }
  if (r.waiting_next) r.waiting_next->waiting_prev = r.waiting_prev;
  r.waiting_prev = r.waiting_next = nullptr;
}

// Requests still queued in the scheduler (held back by a limit, say) when
// the session closes are taken out rather than kept for a client that is
// gone. When the server is stopping they are answered with ESHUTDOWN: a stop
// must not wait for a configured rate, and nothing unacknowledged is lost.
void Session::cancel_waiting() noexcept {
  while (waiting_) {
    NbdRequest* r = waiting_;
    unlink_waiting(*r);
    if (export_->scheduling.driver->group().cancel(r)) {
      r->scheduled = false;
      if (shutting_down_) {
        reply_error(*r, kEshutdown, "server shutting down");
      } else {
        release_request(r);
      }
    }
  }
}

namespace {

bool all_zero(const uint8_t* p, uint32_t n) noexcept {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w) return false;
  }
  for (; i < n; ++i) {
    if (p[i]) return false;
  }
  return true;
}

}  // namespace

void Session::io_done(NbdRequest& r, int32_t result) noexcept {
  ++busy_;
  io_done_inner(r, result);
  --busy_;
  maybe_destroy();
}

void Session::io_done_inner(NbdRequest& r, int32_t result) noexcept {
  if (r.scheduled) {
    r.scheduled = false;
    export_->scheduling.driver->complete(r, result < 0);
  }
  if (result < 0) {
    log_line("connection " + std::to_string(id_) + ": " + command_name(r.header.type) + " at " +
             std::to_string(r.header.offset) + "+" + std::to_string(r.header.length) + " failed: " +
             std::strerror(-result));
    return reply_error(r, nbd_error_from_errno(result), std::strerror(-result));
  }
  const RequestHeader& h = r.header;
  // Data sent from the file (splice_fd) is not looked at here: always a
  // data chunk, never a hole.
  const bool from_file = h.type == kCmdRead && r.splice_fd >= 0;
  if (h.type == kCmdRead && context_.structured_replies && !from_file && all_zero(r.data, h.length)) {
    encode_chunk_header(r.reply_header, kReplyFlagDone, kChunkOffsetHole, h.cookie, 12);
    store32(store64(r.reply_header + kChunkHeaderSize, h.offset), h.length);
    r.reply_header_length = kChunkHeaderSize + 12;
    return queue_reply(r);
  }
  if (h.type == kCmdRead && context_.structured_replies) {
    encode_chunk_header(r.reply_header, kReplyFlagDone, kChunkOffsetData, h.cookie, 8 + h.length);
    store64(r.reply_header + kChunkHeaderSize, h.offset);
    r.reply_header_length = kChunkHeaderSize + 8;
  } else {
    encode_simple_reply(r.reply_header, kOk, h.cookie);
    r.reply_header_length = kSimpleReplySize;
  }
  if (h.type == kCmdRead) {
    r.reply_data = from_file ? nullptr : r.data;
    r.reply_data_length = h.length;
    r.reply_splice_fd = from_file ? r.splice_fd : -1;
    r.reply_splice_offset = h.offset;
  }
  queue_reply(r);
}

void Session::reply_error(NbdRequest& r, uint32_t error, const char* reason) noexcept {
  const RequestHeader& h = r.header;
  r.reply_data = nullptr;
  r.reply_data_length = 0;
  r.reply_splice_fd = -1;
  const bool structured = context_.structured_replies && (h.type == kCmdRead || h.type == kCmdBlockStatus);
  if (structured) {
    const std::string_view message = reason ? reason : "";
    const uint16_t mlen = static_cast<uint16_t>(std::min<size_t>(message.size(), 4096));
    encode_chunk_header(r.reply_header, kReplyFlagDone, kChunkError, h.cookie, 6u + mlen);
    r.reply_header_length = kChunkHeaderSize;
    r.extra.resize(6 + mlen);
    store16(store32(r.extra.data(), error), mlen);
    std::memcpy(r.extra.data() + 6, message.data(), mlen);
  } else {
    encode_simple_reply(r.reply_header, error, h.cookie);
    r.reply_header_length = kSimpleReplySize;
  }
  queue_reply(r);
}

void Session::build_block_status(NbdRequest& r) noexcept {
  const RequestHeader& h = r.header;
  std::vector<io::Extent> extents;
  extents.reserve(16);
  int rc = export_->backend->block_status(h.offset, h.length, extents);
  if (rc < 0 || extents.empty()) return reply_error(r, nbd_error_from_errno(rc < 0 ? rc : -EIO), "block status failed");
  if (h.flags & kCmdFlagReqOne) extents.resize(1);
  r.extra.resize(4 + 8 * extents.size());
  uint8_t* p = store32(r.extra.data(), kBaseAllocationId);
  uint64_t covered = 0;
  size_t used = 0;
  for (const auto& e : extents) {
    uint64_t len = std::min<uint64_t>(e.length, h.length - covered);
    if (len == 0) break;
    p = store32(store32(p, static_cast<uint32_t>(len)), e.flags);
    covered += len;
    ++used;
  }
  r.extra.resize(4 + 8 * used);
  encode_chunk_header(r.reply_header, kReplyFlagDone, kChunkBlockStatus, h.cookie,
                      static_cast<uint32_t>(r.extra.size()));
  r.reply_header_length = kChunkHeaderSize;
  queue_reply(r);
}

// ---------------------------------------------------------------- output

void Session::queue_reply(NbdRequest& r) noexcept {
  r.next = nullptr;
  if (!out_head_) last_send_progress_ = host_.reactor->now();
  if (out_tail_) {
    out_tail_->next = &r;
  } else {
    out_head_ = &r;
  }
  out_tail_ = &r;
  schedule_flush();
}

void Session::schedule_flush() noexcept {
  if (flush_scheduled_) return;
  flush_scheduled_ = true;
  host_.reactor->defer_until_idle([this] {
    flush_scheduled_ = false;
    if (!hold_replies()) flush();
    maybe_destroy();
  });
}

namespace {

uint32_t reply_size(const NbdRequest& r) noexcept {
  return r.reply_header_length + r.reply_data_length + static_cast<uint32_t>(r.extra.size());
}

// Held replies are small ones, and not many bytes of them: a large reply
// is worth sending at once, and the data of held ones stays in memory.
constexpr uint32_t kCorkReplyMax = 16u << 10;
constexpr uint32_t kCorkBytesMax = 128u << 10;
// Over TLS: at most this many replies or bytes are gathered (64 KiB is four
// full records), and none waits once no request has come for kTlsHoldGap
// (a client that keeps many requests in flight sends the next one within
// microseconds of reading a reply).
constexpr uint32_t kTlsHoldMax = 16;
constexpr uint32_t kTlsHoldBytes = 64u << 10;
constexpr std::chrono::nanoseconds kTlsHoldGap = std::chrono::microseconds(200);
constexpr uint32_t kTlsHoldMin = 4;
constexpr std::chrono::seconds kTlsDepthMemory(1);
constexpr std::chrono::milliseconds kTlsTimeoutsTogether(100);

}  // namespace

bool Session::hold_replies() noexcept {
  if (phase_ != Phase::kTransmission || send_pending_ || shutting_down_ || !out_head_ ||
      handshake_sent_ < handshake_out_.size() || (cork_threshold_ == 0 && tls_ != Tls::on)) {
    return false;
  }
  uint32_t bytes = 0;
  uint32_t count = 0;
  for (const NbdRequest* r = out_head_; r; r = r->next) {
    const uint32_t size = reply_size(*r);
    bytes += size;
    ++count;
    if (size > kCorkReplyMax || r->reply_splice_fd >= 0 || bytes > kCorkBytesMax) return false;
  }
  if (tls_ == Tls::on) return hold_tls_replies(count, bytes);
  if (cork_pending_) return true;  // the poll sends them
  if (unread_bound_ <= cork_threshold_) return false;
  int unread = 0;
  if (ioctl(fd_, SIOCOUTQ, &unread) != 0 || unread < 0) return false;
  unread_bound_ = static_cast<uint64_t>(unread);
  if (unread_bound_ <= cork_threshold_) return false;
  // Completes at once if the client read its backlog meanwhile.
  io_uring_prep_poll_add(host_.reactor->prepare(&cork_op_), fd_, POLLOUT);
  cork_pending_ = true;
  host_.reactor->hold_begin();
  return true;
}

bool Session::hold_tls_replies(uint32_t count, uint32_t bytes) noexcept {
  if (count >= hold_target_ || bytes >= kTlsHoldBytes) {
    // Requests kept coming until the target: gather one more next time. A
    // batch of several replies unheld says the same of a client not yet
    // held.
    if (tls_holding_ || count > 1) {
      // Below kTlsHoldMin replies a hold costs the client more than it
      // saves: it reads the other half and then sleeps until the flush.
      if (depth_guess_ < 2 * kTlsHoldMax && host_.reactor->now() - depth_learned_ > kTlsDepthMemory) {
        depth_guess_ = 2 * kTlsHoldMax;  // learn it again: the client may have changed
      }
      const uint32_t half = depth_guess_ / 2;
      const uint32_t cap = half >= kTlsHoldMin ? std::min(half, kTlsHoldMax) : 1;
      if (hold_target_ < cap) ++hold_target_;
    }
    return false;
  }
  tls_holding_ = true;
  if (!hold_timer_pending_) arm_hold_timer(kTlsHoldGap);
  return true;
}

void Session::arm_hold_timer(std::chrono::nanoseconds after) noexcept {
  hold_timeout_.tv_sec = 0;
  hold_timeout_.tv_nsec = after.count();
  host_.reactor->arm_timer(&hold_timer_op_, &hold_timeout_);
  hold_timer_pending_ = true;
}

void Session::tls_hold_expired() noexcept {
  hold_timer_pending_ = false;
  ++busy_;
  if (phase_ == Phase::kClosing) {
    if (out_head_) send_queued();  // held replies are answered before the close
  } else if (tls_holding_ && out_head_) {
    const auto quiet = host_.reactor->now() - last_input_;
    if (quiet < kTlsHoldGap) {
      arm_hold_timer(kTlsHoldGap - quiet);  // requests still come: they decide
    } else {
      // The client sent nothing more: it is waiting for these, and every
      // request it keeps in flight is here — or it was only descheduled
      // for a while. A client held at its depth times out again at once,
      // so two timeouts close together decide; one alone only lowers the
      // target.
      const auto now = host_.reactor->now();
      if (now - last_hold_timeout_ < kTlsTimeoutsTogether) {
        depth_guess_ = std::max({inflight_, timeout_inflight_, 2u});
        depth_learned_ = now;
      }
      last_hold_timeout_ = now;
      timeout_inflight_ = inflight_;
      const uint32_t half = depth_guess_ / 2;
      hold_target_ = std::max<uint32_t>(1, std::min(hold_target_ / 2, half >= kTlsHoldMin ? half : 1));
      flush();
    }
  }
  --busy_;
  maybe_destroy();
}

void Session::cork_done() noexcept {
  cork_pending_ = false;
  host_.reactor->hold_end();
  ++busy_;
  // Ready, or an error (cancelled at close, peer gone) the send will show.
  if (phase_ != Phase::kClosing || out_head_) send_queued();
  // Input left unread while the replies were held (memory-speed storage).
  if (phase_ == Phase::kTransmission) process_input();
  --busy_;
  maybe_destroy();
}

// Replies go out with a direct non-blocking sendmsg: usually the socket
// takes them all and no ring round trip is needed. Only when it is full does
// a ring poll wait for room; then sending resumes where it stopped.
void Session::flush() noexcept {
  // Sending releases requests and may read more input, which may close the
  // session: it is destroyed only by the caller's maybe_destroy() after this.
  tls_holding_ = false;
  ++busy_;
  send_queued();
  --busy_;
}

void Session::send_queued() noexcept {
  for (;;) {
    if (send_pending_) return;
    iov_.clear();
    NbdRequest* splice_next = nullptr;  // the head's file part is next in the stream
    if (handshake_sent_ < handshake_out_.size()) {
      iov_.push_back({handshake_out_.data() + handshake_sent_, handshake_out_.size() - handshake_sent_});
    } else if (out_head_) {
      uint32_t skip = out_offset_;
      bool stop = false;
      for (NbdRequest* r = out_head_; r && !stop && iov_.size() + 3 <= 1020; r = r->next) {
        const bool from_file = r->reply_splice_fd >= 0;
        const iovec parts[3] = {
            {r->reply_header, r->reply_header_length},
            {const_cast<uint8_t*>(r->reply_data), r->reply_data_length},
            {r->extra.data(), r->extra.size()},
        };
        for (int i = 0; i < 3; ++i) {
          const iovec& part = parts[i];
          if (part.iov_len == 0) continue;
          if (skip >= part.iov_len) {
            skip -= static_cast<uint32_t>(part.iov_len);
            continue;
          }
          if (i == 1 && from_file) {
            // A file part ends the gather: what precedes it goes first.
            if (iov_.empty()) splice_next = r;
            stop = true;
            break;
          }
          iov_.push_back({static_cast<uint8_t*>(part.iov_base) + skip, part.iov_len - skip});
          skip = 0;
        }
      }
    } else {
      // What the transport holds (sealed TLS records) goes out first.
      if (const int rc = transport_->flush(); rc != 0) return rc == -EAGAIN ? wait_writable() : send_failed();
      if (tls_ == Tls::acked && phase_ == Phase::kOptions) return start_tls();
      if (phase_ == Phase::kMigrating) host_.migrate(this, export_->reactor);
      return;
    }
    if (splice_next) {
      if (!send_splice(*splice_next)) return;
      continue;
    }
    const ssize_t n = transport_->send(iov_.data(), static_cast<int>(iov_.size()));
    if (n > 0) {
      account_sent(static_cast<uint32_t>(n));
      continue;
    }
    if (n == -EAGAIN || n == -EWOULDBLOCK || n == -EINTR) return wait_writable();
    send_failed();
    return;
  }
}

// The data part of the head reply, from its file: out_offset_ is inside it.
bool Session::send_splice(NbdRequest& r) noexcept {
  const uint32_t done = out_offset_ - r.reply_header_length;
  const ssize_t n = transport_->send_file(r.reply_splice_fd, r.reply_splice_offset + done, r.reply_data_length - done);
  if (n > 0) {
    account_sent(static_cast<uint32_t>(n));
    return true;
  }
  if (n == -EAGAIN || n == -EWOULDBLOCK || n == -EINTR) {
    wait_writable();
    return false;
  }
  // The file ended early (shrunk under us) or cannot be read: the reply's
  // header promised data that will not come, so the stream is broken.
  log_line("connection " + std::to_string(id_) + ": READ at " + std::to_string(r.header.offset) + "+" +
           std::to_string(r.header.length) + ": the file cannot be sent" +
           (n < 0 ? std::string(": ") + std::strerror(static_cast<int>(-n)) : std::string(" (it is shorter now)")));
  send_failed();
  return false;
}

void Session::wait_writable() noexcept {
  if (aborted_) {
    ::shutdown(fd_, SHUT_RDWR);
    return send_failed();
  }
  transport_->wait_writable(*host_.reactor, &send_op_);
  send_pending_ = true;
}

void Session::send_done(int32_t result) noexcept {
  send_pending_ = false;
  ++busy_;
  // Ready (or an error the next send will report) or interrupted: either
  // way, try again; a real failure shows there.
  if (result >= 0 || result == -EAGAIN || result == -EINTR) {
    send_queued();
  } else {
    send_failed();
  }
  --busy_;
  maybe_destroy();
}

void Session::send_failed() noexcept {
  // The peer is gone: nothing queued can be delivered.
  while (out_head_) {
    NbdRequest* r = out_head_;
    out_head_ = r->next;
    release_request(r);
  }
  out_tail_ = nullptr;
  out_offset_ = 0;
  handshake_out_.clear();
  handshake_sent_ = 0;
  input_closed_ = true;
  begin_close("send failed");
}

void Session::account_sent(uint32_t bytes) noexcept {
  last_send_progress_ = host_.reactor->now();
  unread_bound_ += kUnreadPerSend + 2ull * bytes;
  if (handshake_sent_ < handshake_out_.size()) {
    handshake_sent_ += bytes;
    if (handshake_sent_ == handshake_out_.size()) {
      handshake_out_.clear();
      handshake_sent_ = 0;
    }
    return;
  }
  while (out_head_ && bytes > 0) {
    const uint32_t left = reply_size(*out_head_) - out_offset_;
    if (bytes < left) {
      out_offset_ += bytes;
      break;
    }
    bytes -= left;
    out_offset_ = 0;
    NbdRequest* r = out_head_;
    out_head_ = r->next;
    if (!out_head_) out_tail_ = nullptr;
    release_request(r);
  }
  // Replies drained: a session paused at its limits may read again.
  if (phase_ == Phase::kTransmission) process_input();
}

// ---------------------------------------------------------------- limits

namespace {

// Clients choose how often these happen: one line per interval.
RateLimitedLog memory_log;

}  // namespace

Expiry Session::expired(std::chrono::steady_clock::time_point now, const LimitsConfig& config) const noexcept {
  const auto over = [now](std::chrono::steady_clock::time_point since, std::chrono::seconds limit) {
    return limit.count() > 0 && now - since >= limit;
  };
  switch (phase_) {
    case Phase::kGreeting:
    case Phase::kOptions:
      return over(started_, config.handshake_timeout) ? Expiry::kHandshake : Expiry::kNone;
    case Phase::kTransmission:
      if (out_head_ && over(last_send_progress_, config.send_timeout)) return Expiry::kSlowReader;
      if (inflight_ == 0 && !waiting_memory_ && over(last_input_, config.idle_timeout)) return Expiry::kIdle;
      return Expiry::kNone;
    case Phase::kClosing:
      // A stop or remove --force waits for replies to go out: not forever.
      return out_head_ && over(last_send_progress_, config.send_timeout) ? Expiry::kSlowReader : Expiry::kNone;
    case Phase::kMigrating: return Expiry::kNone;
  }
  return Expiry::kNone;
}

// The ring's recv and polls on the socket end at shutdown(); replies
// queued for a client that does not read are dropped, requests on the
// storage finish and are dropped too (their sends fail).
void Session::expire(Expiry why) noexcept {
  ++busy_;
  limit_closed_ = true;
  ::shutdown(fd_, SHUT_RDWR);
  begin_close(expiry_reason(why));
  if (!send_pending_) send_failed();
  --busy_;
  maybe_destroy();
}

void Session::retry_memory() noexcept {
  ++busy_;
  process_input();
  --busy_;
  maybe_destroy();
}

bool Session::memory_admits(uint64_t delta) noexcept {
  RequestMemory& memory = host_.limits->memory;
  if (memory.admits(delta, held_capacity_)) {
    waiting_memory_ = false;
    return true;
  }
  if (!waiting_memory_) {
    waiting_memory_ = true;
    host_.limits->counters.memory_waits.fetch_add(1, std::memory_order_relaxed);
    memory_log.log("request memory at its cap (" + std::to_string(memory.used() >> 20) + " of " +
                   std::to_string(memory.cap() >> 20) + " MiB, --max-request-memory): connection " +
                   std::to_string(id_) + " from " + peer_.address + " waits before reading more requests");
    host_.wait_memory(this);
  }
  return false;
}

void Session::buffer_changed(uint32_t before, uint32_t after) noexcept {
  held_capacity_ = held_capacity_ + after - before;
  host_.limits->memory.add(static_cast<int64_t>(after) - static_cast<int64_t>(before));
}

// At the connection cap: the handshake goes on so that the client can be
// told why (nbdinfo, qemu-img and libnbd print the server's message), and
// nothing is served.
void Session::refuse_option(uint32_t option) noexcept {
  switch (option) {
    case kOptExportName: return begin_close(refusal_.c_str());  // no way to answer an error
    case kOptAbort:
      option_reply(option, kRepAck, nullptr, 0);
      return begin_close(refusal_.c_str());
    default: return option_error(option, kRepErrPolicy, refusal_);
  }
}

}  // namespace ioband::nbd
