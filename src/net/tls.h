#pragma once
// TLS for NBD (NBD_OPT_STARTTLS), with GnuTLS: the server's credentials,
// loaded once at start, and the TLS transport of one connection.
//
// The kernel here has no kTLS, so records are sealed and opened in
// userspace. Ciphertext arrives through an io_uring recv into the
// transport's own buffer; GnuTLS pulls it from there and gnutls_record_recv
// opens it straight into the session's buffer. Replies are gathered into
// full records (16 KiB of plaintext), sealed into an outgoing buffer (the
// push function only appends) and written with a direct non-blocking send,
// as the plain path writes; a ring poll waits when the socket is full. The
// handshake runs the same way, a step at a time from the reactor: it never
// blocks the thread. File data (sendfile on a plain socket) has to be read
// into memory first; the session asks its backend for buffers instead.
//
// Credentials, as nbdkit and QEMU name them: a PSK file in psktool's format
// (USERNAME:HEXKEY per line) and/or a directory with ca-cert.pem,
// server-cert.pem and server-key.pem (ca-crl.pem if present). With
// verify_peer the client must present a certificate that ca-cert.pem signs.
// A connection's identity (for access control and logs) is the PSK username
// or the verified client certificate's DN.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/transport.h"

namespace ioband::net {

// off: STARTTLS is refused (NBD_REP_ERR_POLICY); on: TLS at the client's
// choice; require: every option but STARTTLS and ABORT is refused with
// NBD_REP_ERR_TLS_REQD until TLS is up (the spec's FORCEDTLS).
enum class TlsMode : uint8_t { off, on, require };

std::optional<TlsMode> parse_tls_mode(std::string_view text) noexcept;

struct TlsOptions {
  TlsMode mode = TlsMode::off;
  std::string psk_file;          // empty: no PSK
  std::string certificates_dir;  // empty: no certificates
  bool verify_peer = false;
};

// One PSK user: psktool writes "USERNAME:HEXKEY" lines.
struct PskEntry {
  std::string username;
  std::vector<uint8_t> key;
};
// Parses a PSK file's text; on a bad line, returns nothing and sets error
// to "LINE: reason".
std::optional<std::vector<PskEntry>> parse_psk_file(std::string_view text, std::string& error);

class TlsContext {
 public:
  // nullptr and a message naming the option, the file and the reason if
  // the options or the files are wrong. Warnings (an expired server
  // certificate) go to the log.
  static std::unique_ptr<TlsContext> load(const TlsOptions& options, std::string& error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  TlsMode mode() const noexcept { return options_.mode; }
  const TlsOptions& options() const noexcept { return options_; }
  // "PSK", "X.509" or "PSK and X.509", for the start-up line.
  std::string describe() const;

 private:
  friend class TlsTransport;
  TlsContext() = default;
  const PskEntry* find_user(std::string_view username) const noexcept;

  TlsOptions options_;
  std::vector<PskEntry> users_;
  void* psk_ = nullptr;          // gnutls_psk_server_credentials_t
  void* certificates_ = nullptr;  // gnutls_certificate_credentials_t
  void* priority_ = nullptr;      // gnutls_priority_t
};

class TlsTransport final : public Transport {
 public:
  // early: bytes that arrived after STARTTLS, before the switch (the start
  // of the client's handshake). nullptr and error if GnuTLS fails.
  static std::unique_ptr<TlsTransport> create(const TlsContext& context, int fd, const uint8_t* early,
                                              size_t early_length, std::string& error);
  ~TlsTransport() override;

  // Runs the TLS handshake; owner->on_complete(0) once it is done, or
  // -errno with the reason in error(). Nothing else may run meanwhile.
  void handshake(io::Reactor& reactor, io::Completion* owner) noexcept;
  const std::string& error() const noexcept { return error_; }
  // After the handshake: the PSK username or the client certificate's DN
  // (empty when the client showed none); description: the protocol and
  // cipher suite, for the log.
  const std::string& identity() const noexcept { return identity_; }
  std::string description() const;

  void recv(io::Reactor& reactor, io::Completion* owner, uint8_t* buffer, uint32_t length) noexcept override;
  void cancel(io::Reactor& reactor) noexcept override;
  ssize_t send(const iovec* iov, int count) noexcept override;
  ssize_t send_file(int fd, uint64_t offset, size_t length) noexcept override;
  int flush() noexcept override;
  void wait_writable(io::Reactor& reactor, io::Completion* owner) noexcept override;
  bool zero_copy_files() const noexcept override { return false; }

 private:
  struct CipherRecv final : io::Completion {
    TlsTransport* transport;
    void on_complete(int32_t result, uint32_t) noexcept override { transport->cipher_received(result); }
  };
  struct WritableOp final : io::Completion {
    TlsTransport* transport;
    void on_complete(int32_t result, uint32_t) noexcept override { transport->handshake_writable(result); }
  };
  enum class Stage : uint8_t { handshake, records, failed };

  TlsTransport(const TlsContext& context, int fd);
  static ssize_t pull(void* self, void* data, size_t length) noexcept;
  static ssize_t push(void* self, const void* data, size_t length) noexcept;
  // A PSK user's key into key (a gnutls_datum_t); -1 if there is none.
  static int lookup_psk(void* self, std::string_view username, void* key) noexcept;
  friend class TlsContext;

  void arm_cipher_recv(io::Reactor& reactor) noexcept;
  void cipher_received(int32_t result) noexcept;
  void handshake_step(bool from_ring) noexcept;
  void arm_writable() noexcept;
  void handshake_writable(int32_t result) noexcept;
  void handshake_finish(int32_t result, bool from_ring) noexcept;
  // Opens records into the pending recv's buffer: bytes (> 0), 0 at the
  // peer's close_notify, -EAGAIN when more ciphertext is needed, -errno.
  int32_t open_records() noexcept;
  // Seals plaintext into records in out_; false on a GnuTLS error.
  bool seal(const uint8_t* data, size_t length) noexcept;
  bool seal_gathered() noexcept;
  // Writes out_ to the socket: 0 all written, -EAGAIN, or -errno.
  int write_out() noexcept;
  size_t out_pending() const noexcept { return out_.size() - out_sent_; }

  const TlsContext& context_;
  int fd_;
  void* session_ = nullptr;  // gnutls_session_t
  Stage stage_ = Stage::handshake;
  io::Reactor* reactor_ = nullptr;  // of the operation in progress
  io::Completion* owner_ = nullptr;
  CipherRecv cipher_recv_;
  WritableOp writable_op_;
  bool cipher_recv_pending_ = false;
  bool writable_pending_ = false;
  bool cancelled_ = false;
  bool handshake_done_ = false;  // the last flight may still be unsent
  // The session's pending recv.
  uint8_t* recv_buffer_ = nullptr;
  uint32_t recv_length_ = 0;
  // Ciphertext received and not yet pulled by GnuTLS.
  std::unique_ptr<uint8_t[]> in_;
  uint32_t in_start_ = 0, in_end_ = 0;
  // Sealed records not yet written, and plaintext gathered for the next one.
  std::vector<uint8_t> out_;
  size_t out_sent_ = 0;
  std::unique_ptr<uint8_t[]> gather_;
  uint32_t gathered_ = 0;
  std::string error_;
  std::string identity_;
};

}  // namespace ioband::net
