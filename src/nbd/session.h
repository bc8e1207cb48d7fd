#pragma once
// One NBD connection: the fixed-newstyle handshake, then transmission.
//
// Input arrives through one outstanding recv into a staging buffer; requests
// are parsed from it, checked by validate_request(), and handed to the
// export's backend. Replies are queued in completion order and written with
// one sendmsg when the reactor has nothing more at hand (input already in
// the socket is read first), so a burst of requests costs one system call
// for all its replies; a reply whose data the backend left in a file goes
// out with sendfile(). When the socket is full a ring poll waits for room.
//
// On a Unix socket, small replies are also held back while the client still
// has more than a quarter of the socket's send buffer unread (about 13
// replies of 4 KiB): they would only queue behind that data. A ring poll for
// POLLOUT, which the kernel reports once the client has read its backlog
// down to that quarter, sends them; by then the client still has that
// quarter to read, so it never waits for them. One sendmsg then carries
// many replies instead of one or two, which is fewer skbs for both sides
// (see docs/performance.md). A client that keeps few requests in flight
// never builds such a backlog and is never held. On memory-speed storage
// the session does not even read input while it holds replies: the poll's
// wake-up then reads, serves and answers everything that came meanwhile.
// At most kMaxInflight requests and kMaxInflightBytes of buffers exist per
// connection: past that, the session stops reading until
// replies drain, so memory is bounded whatever the client does.
//
// Over TLS (TCP: nothing tells how much the client has read) replies are
// held by count instead: while requests keep coming, the session gathers
// up to hold_target_ replies (adapting between 1 and kTlsHoldMax) before it
// seals and sends them, so the client opens full 16 KiB records, one poll
// and two reads each, instead of a record per reply. A ring timeout sends
// them when no request has come for kTlsHoldGap (the client is waiting for
// them) and halves the target; two timeouts close together also cap it at
// half the requests then in flight (the client's depth); a target reached
// grows it by one; a client with one request in flight never reaches two
// and is never held.
//
// Every read and write goes through a net::Transport: the socket itself,
// or TLS after NBD_OPT_STARTTLS (net/tls.h). The session knows STARTTLS as
// an option of the protocol, never how bytes are carried.

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/backend.h"
#include "io/reactor.h"
#include "nbd/classify.h"
#include "nbd/export.h"
#include "nbd/limits.h"
#include "qos/request.h"
#include "nbd/protocol.h"
#include "nbd/validate.h"
#include "net/tls.h"
#include "net/transport.h"

namespace ioband::nbd {

class Session;

// One NBD request: a storage op for the backend and a request descriptor
// for the device group's scheduler.
struct NbdRequest final : io::IoOp, qos::Request {
  Session* session = nullptr;
  RequestHeader header{};
  uint8_t* data = nullptr;  // 4096-aligned payload buffer
  uint32_t capacity = 0;
  uint32_t received = 0;  // WRITE payload bytes received so far
  bool scheduled = false;  // passed through the device group's scheduler
  uint32_t error = kOk;   // NBD error for the reply
  const char* error_reason = nullptr;

  // The reply as up to three iovecs: header, data, extra.
  uint8_t reply_header[32];
  uint32_t reply_header_length = 0;
  const uint8_t* reply_data = nullptr;
  uint32_t reply_data_length = 0;
  // The data part comes from this file by sendfile() (reply_data unused).
  int reply_splice_fd = -1;
  uint64_t reply_splice_offset = 0;
  std::vector<uint8_t> extra;
  NbdRequest* next = nullptr;
  // While waiting in the device group's queue: the session's list of them.
  NbdRequest* waiting_prev = nullptr;
  NbdRequest* waiting_next = nullptr;

  void finish(int32_t result) noexcept override;
  bool ensure_capacity(uint32_t bytes) noexcept;
  ~NbdRequest();
};

// Per-reactor bookkeeping the server keeps for its sessions.
struct SessionHost {
  io::Reactor* reactor = nullptr;
  ExportRegistry* exports = nullptr;
  std::function<void(Session*)> on_closed;  // called on the session's reactor
  std::function<void(Session*, io::Reactor*)> migrate;  // hand to another reactor
  Limits* limits = nullptr;
  std::function<void(Session*)> wait_memory;  // stopped reading until request memory frees
  const net::TlsContext* tls = nullptr;  // nullptr: --tls off
};

class Session {
 public:
  static constexpr uint32_t kStagingSize = 32u << 10;
  static constexpr uint32_t kMaxInflight = 256;
  static constexpr uint64_t kMaxInflightBytes = 96ull << 20;

  Session(SessionHost host, int fd, PeerIdentity peer, uint64_t id);
  ~Session();

  void start() noexcept;             // sends the greeting
  void resume_on(io::Reactor* reactor) noexcept;  // after migration
  void shutdown() noexcept;          // graceful: stop reading, finish, close
  void abort() noexcept;             // remove --force

  // Limits (limits.h). refuse(): before start(), answer every option with
  // an error saying why (the connection cap) instead of serving.
  void refuse(std::string why) noexcept {
    refusal_ = std::move(why);
    limit_closed_ = true;  // the server logged the refusal, rate-limited
  }
  // Which timeout has run out at now, if any (nullptr: none); see limits.h.
  Expiry expired(std::chrono::steady_clock::time_point now, const LimitsConfig& config) const noexcept;
  // Closes the connection at once, queued replies dropped; the server logs it.
  void expire(Expiry why) noexcept;
  bool waiting_for_memory() const noexcept { return waiting_memory_; }
  bool refusing() const noexcept { return !refusal_.empty(); }
  void retry_memory() noexcept;
  // Without input since RequestMemory::kStagingIdle before now: give back
  // the staging buffer and cached requests, and wait for input with a poll
  // (limits.h). Called by the server's sweep.
  void release_idle_input(std::chrono::steady_clock::time_point now) noexcept;
  std::string client_key;  // the identity counted by the per-client cap; empty: not counted

  uint64_t id() const noexcept { return id_; }
  const PeerIdentity& peer() const noexcept { return peer_; }
  const std::shared_ptr<Export>& exported() const noexcept { return export_; }
  io::Reactor* reactor() const noexcept { return host_.reactor; }
  void set_host(SessionHost host) noexcept { host_ = std::move(host); }

  // Request path: the scheduler releases a request to the storage; the
  // storage finishes it.
  void submit_io(NbdRequest& request) noexcept;
  void io_done(NbdRequest& request, int32_t result) noexcept;

 private:
  enum class Phase : uint8_t { kGreeting, kOptions, kMigrating, kTransmission, kClosing };

  struct RecvOp final : io::Completion {
    Session* session;
    void on_complete(int32_t result, uint32_t) noexcept override { session->recv_done(result); }
  };
  struct SendOp final : io::Completion {
    Session* session;
    void on_complete(int32_t result, uint32_t) noexcept override { session->send_done(result); }
  };
  struct CorkOp final : io::Completion {
    Session* session;
    void on_complete(int32_t, uint32_t) noexcept override { session->cork_done(); }
  };
  struct TlsOp final : io::Completion {
    Session* session;
    void on_complete(int32_t result, uint32_t) noexcept override { session->tls_done(result); }
  };
  struct HoldTimerOp final : io::Completion {
    Session* session;
    void on_complete(int32_t, uint32_t) noexcept override { session->tls_hold_expired(); }
  };
  // plain: no TLS yet; acked: STARTTLS answered, the handshake starts once
  // the answer is sent; handshake: under way; on: the stream is TLS.
  enum class Tls : uint8_t { plain, acked, handshake, on };

  // Input.
  void arm_recv() noexcept;
  // Entry points from the ring hold busy_ while they run; the session is
  // destroyed, if it is done, only as they return.
  void recv_done(int32_t result) noexcept;
  void recv_done_inner(int32_t result) noexcept;
  void io_done_inner(NbdRequest& request, int32_t result) noexcept;
  void resume_on_inner(io::Reactor* reactor) noexcept;
  void process_input() noexcept;
  uint32_t available() const noexcept { return in_end_ - in_start_; }

  // Handshake.
  bool process_handshake() noexcept;  // false: wait for more input
  void handle_option(uint32_t option, const uint8_t* data, uint32_t length) noexcept;
  void handle_info_or_go(uint32_t option, const uint8_t* data, uint32_t length) noexcept;
  void handle_meta_context(uint32_t option, const uint8_t* data, uint32_t length) noexcept;
  void option_reply(uint32_t option, uint32_t type, const void* data, uint32_t length) noexcept;
  void option_error(uint32_t option, uint32_t type, const std::string& message) noexcept;
  void enter_transmission() noexcept;
  Access access_to(const Export& e) noexcept;
  std::string access_denied(const Export& e) const;
  void handle_starttls(uint32_t length) noexcept;
  void start_tls() noexcept;
  void tls_done(int32_t result) noexcept;
  bool tls_missing() const noexcept {
    return host_.tls && host_.tls->mode() == net::TlsMode::require && tls_ != Tls::on;
  }

  // Transmission.
  bool process_request() noexcept;  // false: wait for more input
  NbdRequest* acquire_request() noexcept;
  void release_request(NbdRequest* request) noexcept;
  // payload: a WRITE's data where it already is (the staging buffer), for
  // a backend that consumes it within submit(); nullptr: request.data.
  void dispatch(NbdRequest& request, uint8_t* payload = nullptr) noexcept;
  void reply_error(NbdRequest& request, uint32_t error, const char* reason) noexcept;
  void queue_reply(NbdRequest& request) noexcept;
  void build_block_status(NbdRequest& request) noexcept;

  // Output.
  void schedule_flush() noexcept;
  void flush() noexcept;
  void send_queued() noexcept;
  void send_done(int32_t result) noexcept;
  bool send_splice(NbdRequest& request) noexcept;  // false: stop sending now
  void wait_writable() noexcept;
  void account_sent(uint32_t bytes) noexcept;
  void send_failed() noexcept;
  bool hold_replies() noexcept;  // true: a poll or a timeout will send them later
  void cork_done() noexcept;
  bool hold_tls_replies(uint32_t count, uint32_t bytes) noexcept;
  void arm_hold_timer(std::chrono::nanoseconds after) noexcept;
  void tls_hold_expired() noexcept;

  void begin_close(const char* why) noexcept;
  void refuse_option(uint32_t option) noexcept;
  bool memory_admits(uint64_t delta) noexcept;
  void buffer_changed(uint32_t before, uint32_t after) noexcept;
  friend struct NbdRequest;
  void unlink_waiting(NbdRequest& request) noexcept;
  void cancel_waiting() noexcept;
  void maybe_destroy() noexcept;
  bool reading_paused() const noexcept;
  bool continues_stream(uint64_t offset, uint32_t length, bool write) noexcept;
  bool ensure_staging() noexcept;
  void drop_staging() noexcept;
  void drop_free_requests() noexcept;  // the requests cached for reuse, and their buffers

  SessionHost host_;
  int fd_;
  std::unique_ptr<net::Transport> transport_;
  net::TlsTransport* tls_transport_ = nullptr;  // transport_, once TLS starts
  Tls tls_ = Tls::plain;
  TlsOp tls_op_;
  PeerIdentity peer_;
  uint64_t id_;
  Phase phase_ = Phase::kGreeting;
  std::shared_ptr<Export> export_;
  RequestContext context_;
  uint32_t classified_epoch_ = ~0u;  // export's classification epoch seen
  int64_t group_id_ = kDefaultGroupId;
  // Where the last reads of a few streams ended: a read that starts at one
  // of them continues a sequential stream (io::kSequential).
  static constexpr unsigned kStreams = 4;
  struct Streams {
    uint64_t end[kStreams] = {~0ull, ~0ull, ~0ull, ~0ull};
    unsigned next = 0;  // slot a new stream takes
  };
  Streams read_streams_, write_streams_;

  // Input state. in_ is null while an idle connection waits for input
  // with a poll (input_polling_) instead of a recv into it.
  std::unique_ptr<uint8_t[]> in_;
  bool input_polling_ = false;
  bool staging_release_ = false;  // the pending recv was cancelled to give in_ back
  uint32_t in_start_ = 0, in_end_ = 0;
  RecvOp recv_op_;
  bool recv_pending_ = false;
  uint32_t recv_asked_ = 0;  // room the pending recv into the staging buffer had
  bool input_closed_ = false;
  NbdRequest* payload_request_ = nullptr;  // WRITE whose payload is arriving
  bool payload_direct_ = false;            // recv straight into its buffer
  uint64_t discard_ = 0;                   // bytes to skip (rejected payload, oversized option)
  uint32_t options_seen_ = 0;
  bool no_zeroes_ = false;
  bool client_read_only_ = false;  // an allow-ro rule of the export's access list

  // Output state.
  std::string handshake_out_;  // handshake bytes not yet sent
  uint32_t handshake_sent_ = 0;
  NbdRequest* out_head_ = nullptr;
  NbdRequest* out_tail_ = nullptr;
  uint32_t out_offset_ = 0;  // bytes of out_head_'s reply already sent
  std::vector<iovec> iov_;
  SendOp send_op_;
  bool send_pending_ = false;
  bool flush_scheduled_ = false;
  // Holding small replies back (see the top of this file): only on Unix
  // sockets, whose POLLOUT means "the peer has read its backlog down to
  // cork_threshold_ bytes"; 0 = never hold.
  CorkOp cork_op_;
  bool cork_pending_ = false;
  uint32_t cork_threshold_ = 0;
  // At least what SIOCOUTQ would say now: what it said last, plus a bound
  // for each send since. Below cork_threshold_ there is no need to ask (a
  // flush of a few 16-byte acks then costs no ioctl). SIOCOUTQ counts the
  // kernel's socket buffers, not bytes: one send of n bytes adds at most
  // 2n + 2 KiB (measured on Linux 6.18 for every n from 1 to 300000).
  static constexpr uint64_t kUnreadPerSend = 2048;
  uint64_t unread_bound_ = 0;
  // Holding replies over TLS (see the top of this file).
  HoldTimerOp hold_timer_op_;
  __kernel_timespec hold_timeout_{};  // read by the kernel when the timeout is submitted
  bool hold_timer_pending_ = false;
  bool tls_holding_ = false;  // replies have been held since the last flush
  uint32_t hold_target_ = 1;
  // How many requests the client keeps in flight, as two timeouts within
  // kTlsTimeoutsTogether saw it (all of them were here then); holds gather
  // at most half of it, so the client reads one half while the other is
  // gathered, and none when that half is below kTlsHoldMin. It is not raised
  // by holds that reach their target (one that takes every request the
  // client has would never time out, and the client would wait for each
  // flush); a second after it was learnt it is forgotten and learnt again.
  uint32_t depth_guess_ = 32;
  std::chrono::steady_clock::time_point depth_learned_{};
  std::chrono::steady_clock::time_point last_hold_timeout_{};
  uint32_t timeout_inflight_ = 0;  // requests in flight at that timeout
  // The export's storage works at memory speed: while replies are held,
  // requests are left in the socket and read all at once when the poll
  // fires (their replies would be held anyway); on a device they are read
  // and submitted at once, so the device is kept busy.
  bool memory_speed_ = false;
  // Writes shorter than this are written before the backend's submit()
  // returns: one whose payload is all in the staging buffer is written from
  // there, with no copy into a buffer of its own.
  uint32_t writes_consumed_below_ = 0;
  uint32_t busy_ = 0;  // inside flush(): not to be destroyed yet

  // Requests.
  NbdRequest* waiting_ = nullptr;  // queued in the scheduler, not yet submitted
  NbdRequest* free_ = nullptr;
  uint32_t free_count_ = 0;
  uint32_t inflight_ = 0;  // acquired and not yet released
  uint64_t inflight_bytes_ = 0;
  bool disconnect_requested_ = false;
  bool shutting_down_ = false;
  bool aborted_ = false;  // abort(): replies the client does not take are dropped
  const char* close_reason_ = nullptr;

  // Limits (limits.h): when this connection began, last read something,
  // and last sent something while replies waited.
  std::chrono::steady_clock::time_point started_, last_input_, last_send_progress_;
  uint64_t held_capacity_ = 0;  // bytes of request buffers, counted in Limits::memory
  bool waiting_memory_ = false;
  bool limit_closed_ = false;  // closed by a limit: no line of its own (the server logs, rate-limited)
  std::string refusal_;
};

}  // namespace ioband::nbd
