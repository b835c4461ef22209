// POSIX implementation of mp::fs (see include/minipuzzle/fs.h for why std::filesystem is not used).
#include "minipuzzle/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "minipuzzle/error.h"

namespace mp::fs {
namespace {

std::string reason() { return std::strerror(errno); }

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// Writes all of `size` bytes, retrying short writes and EINTR.
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= size_t(n);
  }
  return true;
}

}  // namespace

std::string join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (b.empty()) return a;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string parent(const std::string& path) {
  const std::string p = strip_trailing_slashes(path);
  const size_t slash = p.rfind('/');
  if (slash == std::string::npos) return "";
  if (slash == 0) return "/";
  return strip_trailing_slashes(p.substr(0, slash));
}

std::string filename(const std::string& path) {
  const std::string p = strip_trailing_slashes(path);
  if (p == "/") return "";
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string extension(const std::string& path) {
  const std::string name = filename(path);
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos || dot == 0 || name == "..") return "";
  return name.substr(dot);
}

std::string stem(const std::string& path) {
  const std::string name = filename(path);
  return name.substr(0, name.size() - extension(name).size());
}

std::string absolute(const std::string& path) {
  // Trailing slashes go: callers append suffixes ("OUT.tmp-PID") that must name a sibling, not a child.
  if (!path.empty() && path[0] == '/') return strip_trailing_slashes(path);
  char buf[PATH_MAX];
  MP_CHECK(::getcwd(buf, sizeof buf) != nullptr, "cannot read the working directory: ", reason());
  return path.empty() ? std::string(buf) : strip_trailing_slashes(join(buf, path));
}

std::string temp_directory() {
  const char* t = std::getenv("TMPDIR");
  return (t && *t) ? std::string(t) : std::string("/tmp");
}

bool exists(const std::string& path) {
  struct stat st;
  return !path.empty() && ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string& path) {
  struct stat st;
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_empty_directory(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (!d) return false;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

uint64_t file_size(const std::string& path) {
  struct stat st;
  MP_CHECK(::stat(path.c_str(), &st) == 0, path, ": cannot read its size: ", reason());
  MP_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  return uint64_t(st.st_size);
}

std::string read_symlink(const std::string& path) {
  std::vector<char> buf(PATH_MAX);
  ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
  MP_CHECK(n >= 0 && size_t(n) < buf.size(), path, ": cannot read the symbolic link: ", reason());
  return std::string(buf.data(), size_t(n));
}

std::vector<std::string> list_directory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  MP_CHECK(d != nullptr, dir, ": cannot list the directory: ", reason());
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> list_files_recursive(const std::string& dir) {
  std::vector<std::string> out;
  std::vector<std::string> pending{""};
  while (!pending.empty()) {
    const std::string rel = pending.back();
    pending.pop_back();
    for (const std::string& name : list_directory(join(dir, rel))) {
      const std::string child = rel.empty() ? name : rel + "/" + name;
      struct stat st;
      if (::lstat(join(dir, child).c_str(), &st) != 0) continue;
      if (S_ISDIR(st.st_mode)) pending.push_back(child);
      else if (S_ISREG(st.st_mode)) out.push_back(child);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void create_directories(const std::string& path) {
  const std::string p = strip_trailing_slashes(path);
  if (p.empty() || is_directory(p)) return;
  const std::string up = parent(p);
  if (!up.empty() && up != p) create_directories(up);
  if (::mkdir(p.c_str(), 0777) != 0 && !(errno == EEXIST && is_directory(p)))
    fail(p, ": cannot create the directory: ", reason());
}

bool remove(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  const int rc = S_ISDIR(st.st_mode) ? ::rmdir(path.c_str()) : ::unlink(path.c_str());
  MP_CHECK(rc == 0, path, ": cannot remove: ", reason());
  return true;
}

void remove_all(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    MP_CHECK(errno == ENOENT, path, ": cannot remove: ", reason());
    return;
  }
  if (S_ISDIR(st.st_mode))  // lstat: a link to a directory is removed as a link, its target untouched
    for (const std::string& name : list_directory(path)) remove_all(join(path, name));
  remove(path);
}

void remove_all_quietly(const std::string& path) noexcept {
  try {
    remove_all(path);
  } catch (...) {
  }
}

void remove_quietly(const std::string& path) noexcept {
  try {
    remove(path);
  } catch (...) {
  }
}

void rename(const std::string& from, const std::string& to) {
  MP_CHECK(::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to, ": ", reason());
}

void copy_file(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(in >= 0, from, ": cannot open for reading: ", reason());
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    const std::string why = reason();
    ::close(in);
    fail(to, ": cannot open for writing: ", why);
  }
  std::vector<char> buf(size_t(1) << 20);
  bool ok = true;
  std::string why;
  for (;;) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false, why = "read failed: " + reason();
      break;
    }
    if (n == 0) break;
    if (!write_all(out, buf.data(), size_t(n))) {
      ok = false, why = "write failed (" + reason() + "); is the disk full?";
      break;
    }
  }
  ::close(in);
  if (::close(out) != 0 && ok) ok = false, why = "write failed (" + reason() + "); is the disk full?";
  if (!ok) {
    remove_quietly(to);
    fail("cannot copy ", from, " to ", to, ": ", why);
  }
}

void copy_tree(const std::string& from, const std::string& to) {
  if (!is_directory(from)) return copy_file(from, to);
  create_directories(to);
  for (const std::string& name : list_directory(from)) copy_tree(join(from, name), join(to, name));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MP_CHECK(fd >= 0, path, ": cannot open ", tmp, " for writing (does the directory exist and is it writable?): ",
           reason());
  bool ok = write_all(fd, bytes.data(), bytes.size());
  std::string why = ok ? "" : reason();
  if (::close(fd) != 0 && ok) ok = false, why = reason();
  if (!ok) {
    remove_quietly(tmp);
    fail(path, ": write failed (", why, "); is the disk full?");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    why = reason();
    remove_quietly(tmp);
    fail(path, ": cannot rename the temporary file into place: ", why);
  }
}

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd >= 0, path, ": cannot open for reading: ", reason());
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = reason();
      ::close(fd);
      fail(path, ": read failed: ", why);
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

}  // namespace mp::fs
