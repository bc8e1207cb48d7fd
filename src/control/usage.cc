#include "control/usage.h"

#include <utility>

namespace ioband::control {

namespace {

struct Entry {
  std::string_view verb;
  std::string_view usage;
};

constexpr Entry kCommands[] = {
    {"create", "iobandctl create NAME < '0 SECTORS ioband PATH DEVICE_GROUP_ID [IO_THROTTLE [IO_LIMIT]] [RULE...]'"},
    {"remove", "iobandctl remove [--force] NAME"},
    {"message", "iobandctl message NAME 0 VERB [ARG]  (VERB: type attach detach weight token carryover io_throttle "
                "io_limit policy range-bw limit model access reset)"},
    {"calibrate", "iobandctl calibrate [--seconds N] NAME"},
    {"table", "iobandctl table [--target ioband] [NAME]"},
    {"status", "iobandctl status [--target ioband] [NAME]"},
    {"targets", "iobandctl targets"},
    {"tenant", "iobandctl tenant VERB NAME [ARG...]  (VERB: create set attach detach remove list capacity)"},
    {"top", "iobandctl top [--batch N] [--json] [--interval SECONDS] [--sort KEY] [--reverse]"},
};

constexpr Entry kMessageVerbs[] = {
    {"type", "iobandctl message NAME 0 type none|user|gid|pid|pgrp|cgroup"},
    {"attach", "iobandctl message NAME 0 attach ID"},
    {"detach", "iobandctl message NAME 0 detach ID"},
    {"weight", "iobandctl message NAME 0 weight [ID:]VAL"},
    {"token", "iobandctl message NAME 0 token VAL"},
    {"carryover", "iobandctl message NAME 0 carryover VAL"},
    {"io_throttle", "iobandctl message NAME 0 io_throttle VAL"},
    {"io_limit", "iobandctl message NAME 0 io_limit VAL|auto"},
    {"policy", "iobandctl message NAME 0 policy weight|weight-iosize|range-bw|fair"},
    {"range-bw", "iobandctl message NAME 0 range-bw [ID:]MIN:MAX"},
    {"limit", "iobandctl message NAME 0 limit [ID:]KEY=VAL[,KEY=VAL...]|[ID:]none"},
    {"model", "iobandctl message NAME 0 model [KEY=VAL[,KEY=VAL...]|default]"},
    {"access", "iobandctl message NAME 0 access [RULE...]  (RULE: allow=WHO, allow-ro=WHO, deny=WHO)"},
    {"reset", "iobandctl message NAME 0 reset"},
};

constexpr Entry kTenantVerbs[] = {
    {"create", "iobandctl tenant create NAME [weight W] [limit KEY=VAL[,KEY=VAL...]] [cluster on|off]"},
    {"set", "iobandctl tenant set NAME [weight [DEVICE:]W] [limit KEY=VAL[,KEY=VAL...]|none] [cluster on|off]"},
    {"attach", "iobandctl tenant attach NAME DEVICE [weight W]"},
    {"detach", "iobandctl tenant detach NAME DEVICE"},
    {"remove", "iobandctl tenant remove NAME"},
    {"list", "iobandctl tenant list [NAME]"},
    {"capacity", "iobandctl tenant capacity [KEY=VAL[,KEY=VAL...]|none]"},
};

constexpr std::pair<std::string_view, std::string_view> kHelp[] = {
    {"create",
     R"(Create an ioband device NAME and publish it at once as the NBD export NAME.
The table line is read from standard input (or given with --table LINE):

  0 SECTORS ioband PATH DEVICE_GROUP_ID [IO_THROTTLE [IO_LIMIT]] [RULE...] [format=raw|qcow2]

  SECTORS          512-byte sectors of PATH to serve (PATH must be at least this large);
                   for a qcow2 image, its virtual size in sectors
  PATH             an image file or a block device: raw, or qcow2 (with its
                   backing chain), detected from the header at create unless
                   format= says; the format is saved with the device
  DEVICE_GROUP_ID  devices with the same ID share one scheduler (one physical disk)
  IO_THROTTLE      below this many requests in flight, no control (default 4)
  IO_LIMIT         with this many in flight, every new request waits (default 128)
  RULE             who may connect (see "iobandctl message --help", access);
                   given here, the export is never open to others, not even
                   for a moment. Without rules everyone may read and write.

The device starts with its default group (weight 100) and type none.

Example:
  echo "0 $(blockdev --getsize /dev/sda1) ioband /dev/sda1 1" | iobandctl create ioband1
  echo "0 2097152 ioband /srv/vm1.img 1 10 200" | iobandctl create vm1
  echo "0 2097152 ioband /srv/vm2.img 1 allow=uid:qemu allow-ro=gid:backup" | iobandctl create vm2
)"},
    {"remove",
     R"(Remove the ioband device NAME and all its groups. Refused while NBD clients
are connected, unless --force, which ends their connections with ESHUTDOWN.

Example:
  iobandctl remove ioband1
  iobandctl remove --force ioband1
)"},
    {"message",
     R"(Change a setting of ioband device NAME (the sector must be 0):

  type TYPE            how connections map to groups: none, user (uid), gid, pid,
                       pgrp, cgroup (cgroup v2 inode); TCP clients: their IPv4
                       address under every type but none. Refused while groups
                       are attached.
  attach ID            create a group (ID: a number, or an IPv4 address a.b.c.d)
  detach ID            remove a group; its connections go to the default group
  weight VAL           weight of the default group (1..1000000, default 100)
  weight ID:VAL        weight of group ID
  token VAL            tokens per epoch of the device group (weight policies)
  carryover VAL        epochs of unused tokens a group may keep (0..64)
  io_throttle VAL      device group: below VAL requests in flight, no control
  io_limit VAL|auto    device group: at VAL requests in flight, all wait;
                       auto: a window adapted to the storage, at most VAL
  policy NAME          device group: weight, weight-iosize, range-bw or fair
  range-bw [ID:]MIN:MAX  reserved and maximum KiB/s of a group (range-bw policy)
  limit [ID:]KEY=VAL[,KEY=VAL...]
                       limits of the whole device, or of group ID (-1: default
                       group). KEYs as QEMU's: iops-total, iops-read, iops-write,
                       bps-total, bps-read, bps-write, each also with -max and
                       -max-length, and iops-size; VAL 0 removes a key,
                       "limit [ID:]none" removes them all. Of a group, the
                       whole device, or a tenant (tenant set NAME limit ...):
                       reservation-iops=N, reservation-bps=B: a floor served
                       before the weights, in device time (N 4 KiB random
                       reads a second, B bytes/s of large sequential reads,
                       whichever is more), refused past 90 % of the
                       storage's capacity, scaled down while the storage is
                       slower than their sum (status --json says so); a
                       node's reservation covers its groups'. Of the same:
                       latency-target=DURATION (500us, 2ms) with
                       latency-percentile=P (default 99), over all the
                       node's requests: while the node misses it, what the
                       groups outside it (other groups, devices, tenants on
                       the storage) may have in flight is capped, in steps,
                       and raised again as it holds. See docs/reservations.md
  model [KEY=VAL[,KEY=VAL...]]
                       device group: the storage's device model, what a request
                       costs under the fair policy (see iobandctl calibrate,
                       which measures it). KEYs as blk-iocost's io.cost.model:
                       rbps, wbps (bytes/s, K M G suffixes), rseqiops,
                       rrandiops, wseqiops, wrandiops (4 KiB requests/s), and
                       depth (requests in flight from which the storage gives
                       its best); keys not given keep their value. Without an
                       argument: print the model. "model default": back to
                       the default model
  access [RULE...]     who may open the device's export, and whether they may
                       write; the rules replace the list, in order, and the
                       first that matches a client decides; a client no rule
                       matches is refused. Without a RULE: print the list.
                       RULE: allow=WHO (read-write), allow-ro=WHO (read-only:
                       the client sees a read-only export, writes get EPERM),
                       deny=WHO. WHO: all; unix or tcp (the transport);
                       uid:USER, gid:GROUP (Unix-socket clients; a number or a
                       name; gid matches supplementary groups too); an address
                       or network (127.0.0.1, 10.0.0.0/8, ::1, fd00::/8: TCP
                       clients); tls (any TLS client), tls:NAME (its PSK
                       username or certificate DN). "access allow=all": every
                       client (the default). New connections get the new
                       list; open ones keep theirs. Refused clients do not see
                       the export in NBD_OPT_LIST and get NBD_REP_ERR_POLICY
  reset                clear the statistics of the device's groups

Examples:
  iobandctl message ioband1 0 weight 40
  iobandctl message ioband1 0 type user
  iobandctl message ioband1 0 attach 1000
  iobandctl message ioband1 0 weight 1000:30
  iobandctl message ioband1 0 limit 1000:iops-total=200,bps-write=10M
  iobandctl message ioband1 0 limit 1000:reservation-iops=2000
  iobandctl message ioband1 0 limit 1000:latency-target=2ms,latency-percentile=99.9
  iobandctl message ioband1 0 model rbps=500M,rrandiops=40000,depth=16
  iobandctl message ioband1 0 access allow=uid:1000 allow-ro=10.0.0.0/8 deny=all
  iobandctl message ioband1 0 reset
)"},
    {"calibrate",
     R"(Measure the device model of the storage under ioband device NAME and give
it to NAME's device group (all its devices share one piece of storage):
what a request costs under the fair policy, by direction, size and
pattern, as blk-iocost's io.cost.model describes a device:

  rbps, wbps            bytes/s of 1 MiB sequential reads, writes (16 in flight)
  rseqiops, wseqiops    4 KiB sequential reads, writes per second (64 in flight)
  rrandiops, wrandiops  4 KiB random reads, writes per second (writes: 64 in
                        flight; reads: a sweep of 1 to 256 in flight, the
                        rate where it levels off)
  depth                 the knee: the fewest requests in flight that give 95 %
                        of the best 4 KiB random read rate

Each figure is the median of several short runs, interleaved with those of
the other figures, with O_DIRECT (the page cache must not answer: where the
file system refuses O_DIRECT, the result says so). It takes about 25 s,
never more than a minute; --seconds N (1 to 60) gives it N seconds instead
(fewer: rougher figures). The command answers when it is done, prints the
model in one line and how long it took, applies it and saves it with the
state. Run it again whenever the storage changes.

No data is lost: reads are done on the image (on its allocated data; a
hole reads from no storage), writes on a scratch file created next to it
on the same file system (unnamed, filled with data first, gone when the
measurement ends; up to 1 GiB, less when space is short). An image with
less than 256 MiB of data in one run is read on the scratch file too. On a
block device, writes rewrite data just read at the same offsets; this is
refused while any ioband device on that disk has a connection (new ones
wait until the end), or while the disk is mounted.

A result that cannot be right (a figure of zero or out of bounds, a run
that completed nothing for 2 s) is refused with the reason, and the model
stays as it was. Set or look at the model by hand with
"iobandctl message NAME 0 model ...".

Example:
  iobandctl calibrate ioband1
  rbps=1062130688 rseqiops=43296 rrandiops=49395 wbps=784335872 wseqiops=47022 wrandiops=39153 depth=21
  ioband1 (device group 1) calibrated in 24.8 s: ...
)"},
    {"table",
     R"(Print the settings of every ioband device (or of NAME, without the name
prefix), one line each:

  NAME: 0 SECTORS ioband MAJOR:MINOR DEVICE_GROUP_ID IO_THROTTLE IO_LIMIT

MAJOR:MINOR is the block device's number, or for an image file that of the
device holding its file system. A device with access rules shows them after
IO_LIMIT, as create takes them. --json adds the access list ("access"), the
type, policy, token, carryover, limits, every group's weight, and the device
group's device model (with "calibrated": true when iobandctl calibrate measured it).

Example:
  iobandctl table --target ioband
  ioband1: 0 44371467 ioband 202:33 128 10 400
)"},
    {"status",
     R"(Print the statistics of every ioband device (or of NAME, without the name
prefix): NAME: 0 SECTORS ioband DEVICE_GROUP_ID, then for each group (the
default group is -1) seven columns: ID, read requests, delayed read requests,
read sectors, write requests, delayed write requests, write sectors.
--json adds queueing time, queue length, requests in flight, a delay
histogram, the number of connections, and each group's "observation":
completed requests, bytes, errors and a duration histogram per operation,
and the time held back by reason (weight, limit, window); these only grow.
It also shows every device's and group's share of the storage ("share":
configured and effective, of its parent and along the path; see "iobandctl
tenant --help"), each device's tenant, and "tenants": each tenant's share,
devices and limits, and whether its limit held I/O back in the last second.

Example:
  iobandctl status
  ioband2: 0 44371467 ioband 128 -1 143 90 424 122 78 352
)"},
    {"tenant",
     R"(Tenants: a level above ioband devices. A tenant holds devices of one device
group; its weight is its share of the storage among the device group's other
tenants and the groups of devices outside every tenant, each device's weight
its share within the tenant, and each group's weight (message NAME 0 weight)
its share within its device. A node's share of its parent is its weight over
the weights of its siblings that have I/O queued or in flight, so a device
or group that goes idle leaves its share to its siblings first. Weights are
used exactly. A limit set on a tenant holds for all its devices together
(QEMU's throttle group), and the tenant's weights split it.

  create NAME [weight W] [limit KEY=VAL,...]   a tenant (weight 1..10000, default 100)
  set NAME weight W                            the tenant's weight
  set NAME weight DEVICE:W                     a device's weight within the tenant
  set NAME limit KEY=VAL[,KEY=VAL...]          limits shared by its devices (QEMU's keys, as
                                               message limit: iops-total, iops-total-max,
                                               iops-total-max-length, ... bps-write, iops-size),
                                               and a reservation for them together
                                               (reservation-iops, reservation-bps: covers
                                               their own), and a latency target over all
                                               their requests (latency-target=2ms,
                                               latency-percentile=99: while missed, the
                                               devices outside the tenant are capped);
                                               keys not given keep their value
  set NAME limit none                          no limit
  attach NAME DEVICE [weight W]                DEVICE joins (weight 1..10000, default 100);
                                               under policy fair or range-bw only
  detach NAME DEVICE                           DEVICE goes back under the device group
  remove NAME                                  its devices go back under the device group
  list [NAME]                                  every tenant, or NAME: weight, devices, limit
  create|set NAME ... cluster on               cluster-wide (iobandd --etcd URL --node NAME):
                                               weight and limit live in etcd, set and shown
                                               from any node; the limit holds for the
                                               tenant's devices on every node together, each
                                               node enforcing a share that follows where the
                                               I/O is (docs/cluster.md). On a node joining a
                                               tenant etcd already has, create NAME cluster
                                               on takes etcd's weight and limit.
  set NAME cluster off                         this node stops following etcd (keeps the
                                               last weight and limit, as its own)
  capacity [KEY=VAL,...|none]                  a capacity (QEMU's keys) the cluster tenants
                                               share by weight across every node: each
                                               active one gets W / (sum of the active W)
                                               of it, on top of its own limit; shown
                                               without an argument

A device outside every tenant behaves as without tenants. status --json shows
for every tenant, device and group its configured share (weight over all its
siblings' weights) and effective share (over the active siblings'), of its
parent and of the whole storage ("path"), each tenant's limit state,
every reservation against what it was served, and every latency target
against the percentile measured ("latency_target").
Removing a device takes it out of its tenant. Tenants are saved in state.json.
A cluster tenant's "cluster" in status --json and list --json: this node's
share, demand and usage, the tenant's cluster-wide rate, the nodes taking
part, and the etcd connection (live, fail-static, equal-split). remove
takes a cluster tenant off this node only; its settings stay in etcd.

Example:
  iobandctl tenant create acme weight 300 limit iops-total=2000,iops-total-max=4000
  iobandctl tenant attach acme vm1 weight 200
  iobandctl tenant attach acme vm2
  iobandctl tenant set acme weight vm2:50
  iobandctl tenant list
  acme: weight 300 devices vm1:200,vm2:50 limit iops-total=2000,iops-total-max=4000
  iobandctl tenant create web limit iops-total=3000 cluster on     # on node a
  iobandctl tenant create web cluster on                           # on node b: joins
)"},
    {"top",
     R"(A live view of every ioband device and group, refreshed every second (like
iotop): weight, configured share (the weight over the weights of the
groups of its device group that had I/O in the interval, itself counted)
against the delivered share (of the device group's IOPS), IOPS,
MiB/s, latency p50/p99 (arrival to completion, to the histogram's bucket
bound), time held back by the scheduler (ms per second), queued, in flight,
and the limits, followed by (limiting) while one holds requests back.
Rates are the differences of `status --json` counters between two readings.

Keys: i IOPS, b bandwidth, l p99 latency, h held, s delivered share,
w weight, n name (sort); r reverse; q quit.

  --batch N          print N samples and exit, without the screen (scripts)
  --json             one JSON object per sample (implies --batch 1 unless given)
  --interval SECONDS time between samples (default 1)
  --sort KEY         iops, bandwidth, p99, held, share, weight or name

Example:
  iobandctl top
  iobandctl top --batch 3 --json
)"},
    {"targets",
     R"(Print the target types and their versions.

Example:
  iobandctl targets
  ioband           v0.1.0
)"},
};

}  // namespace

std::string usage_of(std::string_view command, std::string_view verb) {
  if (command == "message" && !verb.empty()) {
    for (const Entry& entry : kMessageVerbs) {
      if (entry.verb == verb) return std::string(entry.usage);
    }
  }
  if (command == "tenant" && !verb.empty()) {
    for (const Entry& entry : kTenantVerbs) {
      if (entry.verb == verb) return std::string(entry.usage);
    }
  }
  for (const Entry& entry : kCommands) {
    if (entry.verb == command) return std::string(entry.usage);
  }
  return "iobandctl [--control PATH] [--json] COMMAND ARGS  (COMMAND: create remove message calibrate table status "
         "targets tenant top)";
}

std::string help_of(std::string_view command) {
  for (const auto& [verb, text] : kHelp) {
    if (verb == command) return "usage: " + usage_of(command) + "\n\n" + std::string(text);
  }
  return {};
}

std::string help_text() {
  std::string text =
      "usage: iobandctl [--control PATH] [--json] COMMAND ARGS\n"
      "\n"
      "Control iobandd, the NBD disk server with I/O bandwidth control, with the\n"
      "commands of dm-ioband's dmsetup interface.\n"
      "\n"
      "Commands:\n";
  for (const Entry& entry : kCommands) text += "  " + std::string(entry.usage) + "\n";
  text +=
      "\n"
      "Options:\n"
      "  --control PATH   the daemon's control socket (default: $IOBAND_CONTROL, else ./var/ioband.ctl)\n"
      "  --json           print the reply as JSON\n"
      "  --help           this help; COMMAND --help explains a command\n"
      "  --version        print the version\n"
      "\n"
      "Example (Getting started of dm-ioband):\n"
      "  echo \"0 $(blockdev --getsize /dev/sda1) ioband /dev/sda1 1\" | iobandctl create ioband1\n"
      "  echo \"0 $(blockdev --getsize /dev/sda2) ioband /dev/sda2 1\" | iobandctl create ioband2\n"
      "  iobandctl message ioband1 0 weight 40\n"
      "  iobandctl message ioband2 0 weight 10\n"
      "  iobandctl table\n"
      "  qemu-img info nbd+unix:///ioband1?socket=var/ioband.sock\n"
      "\n"
      "Exit status: 0 done, 1 refused (the reason on stderr), 2 usage error.\n";
  return text;
}

}  // namespace ioband::control
