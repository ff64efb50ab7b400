#pragma once
// Runs a check on a small, private tmpfs, to see what the code does when the disk fills up.
// The check runs in a child process with a mount namespace of its own (a user namespace too when
// not root), so nothing is mounted for anyone else and nothing is left behind. Where neither can
// be had (a container without the capability, user namespaces switched off), the result says so
// and the caller reports the test as skipped.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

namespace lightunet::test {

struct SmallFilesystemRun {
    bool available = false;   // false: no tmpfs could be mounted here (reason says why)
    std::string reason;       // why not available
    std::string failure;      // what the check reported; empty when it passed
};

namespace detail {
inline bool write_text(const char* path, const std::string& text) {
    const int fd = ::open(path, O_WRONLY);
    if (fd < 0) return false;
    const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
    ::close(fd);
    return ok;
}
}  // namespace detail

// Mounts a tmpfs of `bytes` on `mount_point` (created) in a child, runs `check(mount_point)` there
// and returns what it reported: `check` returns "" when everything held, else what went wrong.
inline SmallFilesystemRun run_on_small_tmpfs(const std::filesystem::path& mount_point, std::size_t bytes,
                                             const std::function<std::string(const std::filesystem::path&)>& check) {
    std::filesystem::create_directories(mount_point);
    const std::filesystem::path report = mount_point.string() + ".report";
    std::filesystem::remove(report);
    const pid_t child = ::fork();
    if (child < 0) return {false, std::string("fork failed: ") + std::strerror(errno), {}};
    if (child == 0) {
        auto finish = [&](int code, const std::string& text) {
            std::ofstream(report) << text;
            ::_exit(code);
        };
        const uid_t uid = ::getuid();
        const gid_t gid = ::getgid();
        if (::unshare(CLONE_NEWNS) != 0) {
            if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) finish(77, std::string("unshare: ") + std::strerror(errno));
            // Root inside the new namespace, mapped to the caller, so created files have an owner.
            detail::write_text("/proc/self/setgroups", "deny");
            if (!detail::write_text("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") ||
                !detail::write_text("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1"))
                finish(77, "cannot map the user into a new user namespace");
        }
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);  // keep our mount to ourselves
        const std::string options = "size=" + std::to_string(bytes);
        if (::mount("tmpfs", mount_point.c_str(), "tmpfs", 0, options.c_str()) != 0)
            finish(77, std::string("mount tmpfs: ") + std::strerror(errno));
        std::string failure;
        try {
            failure = check(mount_point);
        } catch (const std::exception& e) {
            failure = std::string("unexpected exception: ") + e.what();
        }
        finish(failure.empty() ? 0 : 1, failure);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    std::string text;
    {
        std::ifstream in(report);
        text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    std::filesystem::remove(report);
    if (!WIFEXITED(status)) return {true, {}, "the check died (signal " + std::to_string(WTERMSIG(status)) + ")"};
    if (WEXITSTATUS(status) == 77) return {false, text, {}};
    if (WEXITSTATUS(status) != 0 && text.empty()) return {true, {}, "the check failed without a report"};
    return {true, {}, text};
}

// Writes zeros into `file` until the file system is full; returns the bytes written.
inline std::size_t fill_filesystem(const std::filesystem::path& file) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    static const char block[4096] = {};
    std::size_t total = 0;
    for (;;) {
        const ssize_t n = ::write(fd, block, sizeof block);
        if (n <= 0) break;
        total += std::size_t(n);
    }
    ::fsync(fd);
    ::close(fd);
    return total;
}

}  // namespace lightunet::test
