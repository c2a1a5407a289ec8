// icecc_read: reference benchmark for icecream's own C++ decoder (libicecc).
//
//   icecc_read FRAMES_FILE PROTOCOL
//
// FRAMES_FILE holds concatenated monitor frames (u32 BE length, then that many bytes starting
// with the u32 BE type word), i.e. the byte stream a scheduler sends a monitor after the
// version handshake, at negotiated protocol PROTOCOL.
//
// The file is pushed through a socketpair into a real MsgChannel and decoded with
// MsgChannel::get_msg(), the same path monitors built on libicecc (icemon, icecream-sundae)
// go through, so the figure includes the socket reads, the library's buffering and framing, and
// Msg object construction. Only the get_msg() loop is timed. Output: one JSON line on stdout.
// Errors: exit 1 with a one-line message on stderr (libicecc may log its own lines before it).
//
// Written against Debian's libicecc-dev 1.4 (PROTOCOL_VERSION 43). It avoids Msg::type (an
// enum member in 1.4, replaced by a value class in HEAD) and classifies messages by their
// dynamic class instead, so it should also build against HEAD headers (untested).

#include <icecc/comm.h>

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

namespace {

// comm.cpp's MAX_MSG_SIZE; not exported by the header. A channel drops larger frames.
constexpr uint32_t kMaxMsgSize = 1 << 20;

// get_msg() blocks in poll() for at most this many seconds per wait. The writer keeps the
// socket busy, so hitting it means something is stuck; it is reported as an error.
constexpr int kReadTimeoutSec = 30;

constexpr size_t kChunk = 1 << 20;

// The monitor messages a scheduler sends (protocol doc §8.2), in type-code order.
enum Kind { K_JOB_LOCAL_DONE, K_MON_GET_CS, K_MON_JOB_BEGIN, K_MON_JOB_DONE,
            K_MON_LOCAL_JOB_BEGIN, K_MON_STATS, K_COUNT };

const char *const kKindName[K_COUNT] = {
    "JOB_LOCAL_DONE", "MON_GET_CS", "MON_JOB_BEGIN", "MON_JOB_DONE",
    "MON_LOCAL_JOB_BEGIN", "MON_STATS",
};

int kind_of_type_word(uint32_t t)
{
    switch (t) {
    case 0x4F: return K_JOB_LOCAL_DONE;
    case 0x53: return K_MON_GET_CS;
    case 0x54: return K_MON_JOB_BEGIN;
    case 0x55: return K_MON_JOB_DONE;
    case 0x56: return K_MON_LOCAL_JOB_BEGIN;
    case 0x57: return K_MON_STATS;
    default: return -1;
    }
}

// Classifies by the object's exact class rather than the type word, to prove get_msg() really
// built the monitor classes (MonGetCSMsg/MonJobDoneMsg derive from GetCSMsg/JobDoneMsg, so only
// an exact match counts). Indexed by Kind.
const std::type_info *const kKindClass[K_COUNT] = {
    &typeid(JobLocalDoneMsg), &typeid(MonGetCSMsg), &typeid(MonJobBeginMsg),
    &typeid(MonJobDoneMsg), &typeid(MonLocalJobBeginMsg), &typeid(MonStatsMsg),
};

int kind_of_msg(const Msg &m)
{
    const std::type_info &t = typeid(m);
    // Fast path: statically linked, each class has exactly one type_info object. type_info's
    // operator== falls back to strcmp() on every mismatch, which showed up in profiles.
    for (int k = 0; k < K_COUNT; ++k)
        if (&t == kKindClass[k])
            return k;
    for (int k = 0; k < K_COUNT; ++k)
        if (t == *kKindClass[k])
            return k;
    return -1;
}

uint32_t be32(const unsigned char *p)
{
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint32_t get_le32(const unsigned char *p)
{
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

struct Error {
    std::string msg;
};

[[noreturn]] void fail(const std::string &msg)
{
    throw Error{msg};
}

std::string errno_text()
{
    return std::strerror(errno);
}

// Walks the file's length prefixes without decoding payloads, streaming in chunks so the
// file never sits in this process's memory (it would dominate max_rss_kb). The callback
// gets (index, byte offset, L, type word) and returns false to stop early.
using FrameVisitor = std::function<bool(size_t, uint64_t, uint32_t, uint32_t)>;

size_t scan_frames(const char *path, const FrameVisitor &visit)
{
    FILE *f = std::fopen(path, "rb");
    if (!f)
        fail(std::string("cannot open ") + path + ": " + errno_text());

    std::vector<unsigned char> buf(kChunk);
    size_t have = 0;      // bytes buffered
    uint64_t base = 0;    // file offset of buf[0]
    uint64_t skip = 0;    // payload bytes of the current frame still to skip
    size_t frames = 0;

    for (;;) {
        size_t n = std::fread(buf.data() + have, 1, buf.size() - have, f);
        if (n == 0) {
            if (std::ferror(f)) {
                std::fclose(f);
                fail(std::string("read error on ") + path);
            }
            break;
        }
        have += n;

        size_t pos = 0;
        for (;;) {
            size_t take = (size_t)std::min<uint64_t>(skip, have - pos);
            pos += take;
            skip -= take;
            if (skip || have - pos < 8)
                break;
            uint32_t len = be32(&buf[pos]);
            uint32_t type = be32(&buf[pos + 4]);
            uint64_t off = base + pos;
            if (len < 4 || len > kMaxMsgSize) {
                std::fclose(f);
                fail("frame #" + std::to_string(frames) + " at byte " + std::to_string(off) +
                     ": invalid length " + std::to_string(len) + " (must be 4.." +
                     std::to_string(kMaxMsgSize) + ")");
            }
            if (!visit(frames, off, len, type)) {
                std::fclose(f);
                return frames;
            }
            ++frames;
            pos += 8;
            skip = len - 4;
        }
        std::memmove(buf.data(), buf.data() + pos, have - pos);
        base += pos;
        have -= pos;
    }
    std::fclose(f);

    if (skip || have)
        fail(std::string(path) + " ends inside frame #" + std::to_string(frames) +
             " (truncated file)");
    return frames;
}

bool read_exact(int fd, unsigned char *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= r;
    }
    return true;
}

bool write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        // MSG_NOSIGNAL: if the reader bails out, we want EPIPE here, not a SIGPIPE kill.
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= r;
    }
    return true;
}

// Plays the scheduler: handshake, then (once the timer runs) the whole file, then EOF.
// The library always offers its compile-time PROTOCOL_VERSION and settles on
// min(ours, peer's), so the only way to land on an older PROTOCOL is for the peer to offer
// exactly that, as an older scheduler would. (A real 1.4 scheduler talking to an older
// monitor arrives at the same negotiated P; the frame layouts depend only on P.)
void writer_main(int fd, const std::string path, uint32_t protocol, std::shared_future<void> go,
                 std::string *error, std::atomic<bool> *failed)
{
    auto bail = [&](const std::string &msg) {
        *error = msg;
        failed->store(true);
        // Wake the reader: it sees EOF instead of waiting for its poll() timeout.
        shutdown(fd, SHUT_RDWR);
    };

    unsigned char v[4];
    if (!read_exact(fd, v, 4))
        return bail("handshake: channel did not send its protocol version");
    uint32_t offered = get_le32(v);
    if (protocol > offered)
        return bail("handshake: library offers protocol " + std::to_string(offered) +
                    ", cannot negotiate " + std::to_string(protocol));
    put_le32(v, protocol);
    if (!write_all(fd, v, 4))
        return bail("handshake: sending our version failed: " + errno_text());
    if (!read_exact(fd, v, 4))
        return bail("handshake: channel closed before answering (it rejected our version?)");
    if (get_le32(v) != protocol)
        return bail("handshake: channel answered " + std::to_string(get_le32(v)) +
                    ", expected " + std::to_string(protocol));
    put_le32(v, protocol);  // confirmation; the channel switches to framed mode on it
    if (!write_all(fd, v, 4))
        return bail("handshake: sending confirmation failed: " + errno_text());

    go.wait();

    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f)
        return bail("writer: cannot open " + path + ": " + errno_text());
    std::vector<unsigned char> buf(kChunk);
    for (;;) {
        size_t n = std::fread(buf.data(), 1, buf.size(), f);
        if (n == 0)
            break;
        if (!write_all(fd, buf.data(), n)) {
            std::fclose(f);
            return bail("writer: send failed: " + errno_text());
        }
    }
    bool read_error = std::ferror(f);
    std::fclose(f);
    if (read_error)
        return bail("writer: read error on " + path);
    shutdown(fd, SHUT_WR);
}

std::string frame_description(const char *path, size_t index)
{
    std::string desc = "frame #" + std::to_string(index);
    try {
        scan_frames(path, [&](size_t i, uint64_t off, uint32_t len, uint32_t type) {
            if (i < index)
                return true;
            char tail[96];
            std::snprintf(tail, sizeof tail, " (byte offset %" PRIu64 ", L=%" PRIu32
                          ", type 0x%02" PRIX32 ")", off, len, type);
            desc += tail;
            return false;
        });
    } catch (const Error &) {
    }
    return desc;
}

int run(const char *path, const char *protocol_arg)
{
    char *end = nullptr;
    long protocol = std::strtol(protocol_arg, &end, 10);
    if (!*protocol_arg || *end || protocol < MIN_PROTOCOL_VERSION || protocol > PROTOCOL_VERSION)
        fail(std::string("PROTOCOL must be an integer in ") + std::to_string(MIN_PROTOCOL_VERSION) +
             ".." + std::to_string(PROTOCOL_VERSION) + " (this libicecc's range), got '" +
             protocol_arg + "'");

    // Ground truth from the length prefixes. Anything that is not a monitor message is
    // rejected here, before timing, because get_msg() would decode it as something else.
    size_t expected_by_kind[K_COUNT] = {};
    size_t expected = scan_frames(path, [&](size_t i, uint64_t off, uint32_t, uint32_t type) {
        int k = kind_of_type_word(type);
        if (k < 0) {
            char msg[256];
            std::snprintf(msg, sizeof msg, "frame #%zu at byte %" PRIu64 ": type 0x%02" PRIX32
                          " is not a monitor message%s", i, off, type,
                          (type == 0x47 || type == 0x4D)
                              ? " (0x47/0x4D are what an icecream HEAD scheduler puts on "
                                "MON_GET_CS/MON_JOB_DONE; rewrite them to 0x53/0x55)"
                              : "");
            fail(msg);
        }
        ++expected_by_kind[k];
        return true;
    });
    if (expected == 0)
        fail(std::string(path) + " contains no frames");

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        fail("socketpair: " + errno_text());

    std::promise<void> go_promise;
    std::shared_future<void> go = go_promise.get_future().share();
    bool go_released = false;
    std::string writer_error;         // read only after join
    std::atomic<bool> writer_failed{false};
    std::thread writer(writer_main, sv[1], std::string(path), (uint32_t)protocol, go,
                       &writer_error, &writer_failed);

    MsgChannel *chan = nullptr;
    // Every exit path must release and join the writer; closing the channel's end first
    // turns a writer blocked in send() into EPIPE.
    bool cleaned_up = false;
    auto cleanup = [&]() {
        if (cleaned_up)
            return;
        cleaned_up = true;
        delete chan;  // closes sv[0]
        chan = nullptr;
        if (!go_released) {
            go_released = true;
            go_promise.set_value();
        }
        if (writer.joinable())
            writer.join();
        close(sv[1]);
    };

    try {
        // The constructor sends our version and sets O_NONBLOCK on the fd; createChannel() then
        // blocks in wait_for_protocol() until the handshake is done (15 s poll slices), which is
        // why the writer thread must already be running. A dummy AF_UNIX address keeps the
        // channel from calling getnameinfo() on it.
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        chan = Service::createChannel(sv[0], (sockaddr *)&addr, sizeof addr);
        if (!chan) {
            // createChannel() already deleted the channel, which closed sv[0]. Join the
            // writer before reading writer_error.
            cleanup();
            fail("version handshake failed" +
                 (writer_error.empty() ? std::string() : ": " + writer_error));
        }
        if (chan->protocol != protocol)
            fail("channel negotiated protocol " + std::to_string(chan->protocol) + ", expected " +
                 std::to_string(protocol));

        size_t got_by_kind[K_COUNT] = {};
        size_t got = 0;
        int bad_kind_index = -1;

        auto t0 = std::chrono::steady_clock::now();
        go_released = true;
        go_promise.set_value();
        // get_msg() only touches the socket when no complete frame is buffered; it then does one
        // non-blocking read() of whatever fits into its input buffer and poll()s if that was not
        // enough. A NULL return covers timeout, EOF and every decode error (unknown type, or
        // consumed bytes != L, which libicecc >= 1.2 checks). On errors the library's
        // set_error() first logs to stderr and makes one more get_msg(2 s) attempt hoping for a
        // STATUS_TEXT, so a failure can take up to 2 s to surface.
        while (got < expected) {
            Msg *m = chan->get_msg(kReadTimeoutSec);
            if (!m)
                break;
            int k = kind_of_msg(*m);
            delete m;
            if (k < 0) {
                bad_kind_index = (int)got;
                break;
            }
            ++got_by_kind[k];
            ++got;
        }
        auto t1 = std::chrono::steady_clock::now();
        // Sampled now: once cleanup() closes our end, a still-running writer fails with EPIPE,
        // which is a consequence of a decode error, not its cause.
        bool writer_failed_first = writer_failed.load();

        if (bad_kind_index >= 0)
            fail("libicecc decoded " + frame_description(path, bad_kind_index) +
                 " as a non-monitor message class");
        if (got < expected) {
            cleanup();  // join the writer before reading writer_error
            std::string why = !writer_failed_first
                ? "libicecc could not decode " + frame_description(path, got) +
                  " (wrong PROTOCOL for this file, malformed payload, or timeout; libicecc's own "
                  "diagnostics, if any, are on stderr above)"
                : "writer failed: " + writer_error;
            fail("decoded " + std::to_string(got) + " of " + std::to_string(expected) +
                 " frames: " + why);
        }

        // The scan already proved the file ends on a frame boundary; this confirms the
        // library agrees (EOF, no extra message).
        if (Msg *extra = chan->get_msg(kReadTimeoutSec, /*eofAllowed=*/true)) {
            delete extra;
            fail("libicecc returned more messages than the " + std::to_string(expected) +
                 " frames in the file");
        }

        cleanup();
        if (!writer_error.empty())
            fail("writer failed: " + writer_error);
        for (int k = 0; k < K_COUNT; ++k)
            if (got_by_kind[k] != expected_by_kind[k])
                fail(std::string("count mismatch for ") + kKindName[k] + ": file has " +
                     std::to_string(expected_by_kind[k]) + ", libicecc decoded " +
                     std::to_string(got_by_kind[k]));

        double seconds = std::chrono::duration<double>(t1 - t0).count();
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);  // ru_maxrss is in KiB on Linux

        std::printf("{\"frames\": %zu, \"seconds\": %.6f, \"frames_per_second\": %.0f, "
                    "\"max_rss_kb\": %ld, \"protocol\": %ld, \"by_type\": {",
                    got, seconds, got / seconds, ru.ru_maxrss, protocol);
        const char *sep = "";
        for (int k = 0; k < K_COUNT; ++k) {
            if (!got_by_kind[k])
                continue;
            std::printf("%s\"%s\": %zu", sep, kKindName[k], got_by_kind[k]);
            sep = ", ";
        }
        std::printf("}}\n");
        return 0;
    } catch (...) {
        cleanup();
        throw;
    }
}

} // namespace

int main(int argc, char **argv)
{
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s FRAMES_FILE PROTOCOL\n", argv[0]);
        return 2;
    }
    try {
        return run(argv[1], argv[2]);
    } catch (const Error &e) {
        std::fprintf(stderr, "icecc_read: error: %s\n", e.msg.c_str());
        return 1;
    }
}
