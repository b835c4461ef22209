// File-system operations for every part of minipuzzle, on POSIX calls and plain string paths.
//
// Why not std::filesystem: the torch wheel's libtorch.so exports its own copy of std::filesystem, built
// against an older libstdc++. Whichever library the dynamic linker finds first serves our calls, and with
// libtorch's some of them jump to address 0 (remove_all after `prune` exited 139 on the GPU host, issue 18).
// Link-order workarounds depend on the toolchain, so no code of ours may reference std::filesystem at all;
// a post-link check (cmake/check_no_std_filesystem.cmake) fails the build of any program that does.
//
// Errors throw mp::Error naming the path and the system's reason (strerror), except the *_quietly
// functions, which clean up on error paths and must not throw.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mp::fs {

// --- paths as strings (lexical, like std::filesystem::path's members) ---
std::string join(const std::string& a, const std::string& b);  // "a/b"; b absolute -> b
std::string parent(const std::string& path);     // "a/b/c" -> "a/b"; "c" -> ""; "/c" -> "/"
std::string filename(const std::string& path);   // "a/b.json" -> "b.json"; trailing '/' ignored
std::string stem(const std::string& path);       // "a/b.json" -> "b"
std::string extension(const std::string& path);  // "a/b.json" -> ".json"; "a/.hidden" -> ""
std::string absolute(const std::string& path);   // joined to the working directory; no trailing '/'
std::string temp_directory();                    // $TMPDIR, else /tmp

// --- queries (false on any error: a missing or unreadable path is simply "not there") ---
bool exists(const std::string& path);            // follows symbolic links
bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);
bool is_empty_directory(const std::string& path);
bool same_file(const std::string& a, const std::string& b);  // same device and inode
uint64_t file_size(const std::string& path);     // throws when it is not a readable file
std::string read_symlink(const std::string& path);

// Names in a directory (no "." or ".."), sorted; throws when it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);
// Paths of every regular file below dir, relative to it, sorted.
std::vector<std::string> list_files_recursive(const std::string& dir);

// --- changes ---
void create_directories(const std::string& path);  // like mkdir -p; existing directories are fine
bool remove(const std::string& path);              // a file or an empty directory; false when absent
void remove_all(const std::string& path);          // like rm -rf, never following symbolic links
void remove_all_quietly(const std::string& path) noexcept;
void remove_quietly(const std::string& path) noexcept;
void rename(const std::string& from, const std::string& to);  // atomic within one file system
void copy_file(const std::string& from, const std::string& to);  // overwrites `to`
void copy_tree(const std::string& from, const std::string& to);  // directories and regular files

// Writes `bytes` to `path` through a temporary file beside it (PATH.tmp-PID), flushed and renamed into
// place, so a reader sees the old file or the whole new one, never a part; on failure (disk full, say) the
// temporary is removed and the error names the path.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Reads a whole file; throws naming the path when it cannot.
std::string read_file(const std::string& path);

}  // namespace mp::fs
