#pragma once
// Locks that keep two programs from writing one file: the state directory
// of a daemon and the images it serves.
//
// An image is locked twice over. flock() (exclusive to write, shared to
// read) keeps two iobandd — or two exports of one — off the same image, and
// names the holder: /proc/locks gives the pid of a flock. QEMU's OFD byte
// locks (the scheme of qemu's block/file-posix.c: a read lock on byte 100+p
// for each permission p held, on byte 200+p for each permission not shared
// with others) make qemu-nbd, qemu-img and QEMU itself refuse an image that
// iobandd writes, and iobandd refuse one that they write; the kernel does not
// give their owner's pid, so the holder is looked for in /proc.

#include <sys/types.h>

#include <string>

namespace ioband::io {

// "pid 1234 (iobandd)", or "pid 1234" when its name cannot be read.
std::string describe_process(pid_t pid);

// A process holding a flock on the file open as fd (this one, too), from
// /proc/locks; 0 when none is found.
pid_t flock_holder(int fd);

// Locks the image open as fd for writing (writable) or reading. "" or a
// sentence naming the holder: "PATH is open in pid 1234 (iobandd); refused
// to write it at the same time". The locks go with the descriptor.
std::string lock_image(int fd, const std::string& path, bool writable);

}  // namespace ioband::io
