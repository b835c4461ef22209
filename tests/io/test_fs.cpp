// mp::fs against hand-derived answers (the lexical path functions follow std::filesystem::path's documented
// results) and against the file system itself (what exists after each change).
#include <sys/stat.h>
#include <unistd.h>

#include "catch.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "run_command.h"

namespace fs = mp::fs;

TEST_CASE("path strings split and join like std::filesystem::path", "[io][fs]") {
  CHECK(fs::join("a", "b") == "a/b");
  CHECK(fs::join("a/", "b") == "a/b");
  CHECK(fs::join("", "b") == "b");
  CHECK(fs::join("a", "/abs") == "/abs");
  CHECK(fs::parent("a/b/c") == "a/b");
  CHECK(fs::parent("a/b/c/") == "a/b");
  CHECK(fs::parent("c") == "");
  CHECK(fs::parent("/c") == "/");
  CHECK(fs::filename("a/b.json") == "b.json");
  CHECK(fs::filename("a/b/") == "b");
  CHECK(fs::stem("dir/model.safetensors") == "model");
  CHECK(fs::stem("dir/archive.tar.gz") == "archive.tar");
  CHECK(fs::extension("dir/archive.tar.gz") == ".gz");
  CHECK(fs::extension("dir/.hidden") == "");
  CHECK(fs::extension("dir/noext") == "");
  CHECK(fs::absolute("/x/y/") == "/x/y");
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  CHECK(fs::absolute("out/") == std::string(cwd) + "/out");
}

TEST_CASE("create, list, copy and remove trees; links are removed, never followed", "[io][fs]") {
  const std::string root = mp::test::temp_dir("fs_tree");
  fs::create_directories(root + "/a/b/c");
  fs::create_directories(root + "/a/b/c");  // existing: fine
  CHECK(fs::is_directory(root + "/a/b/c"));
  fs::write_file_atomic(root + "/a/one.txt", "1");
  fs::write_file_atomic(root + "/a/b/c/two.txt", "22");
  CHECK(fs::list_directory(root + "/a") == std::vector<std::string>{"b", "one.txt"});
  CHECK(fs::list_files_recursive(root + "/a") == std::vector<std::string>{"b/c/two.txt", "one.txt"});
  CHECK(fs::file_size(root + "/a/b/c/two.txt") == 2);
  CHECK_THROWS_WITH(fs::file_size(root + "/a/b"), Catch::Contains("not a regular file"));

  fs::copy_tree(root + "/a", root + "/copy");
  CHECK(fs::read_file(root + "/copy/b/c/two.txt") == "22");
  CHECK(fs::same_file(root + "/a/one.txt", root + "/a/./one.txt"));
  CHECK_FALSE(fs::same_file(root + "/a/one.txt", root + "/copy/one.txt"));

  // A link inside the tree to a directory outside it: remove_all takes the link, not what it points to.
  fs::create_directories(root + "/outside");
  fs::write_file_atomic(root + "/outside/keep.txt", "keep");
  REQUIRE(::symlink((root + "/outside").c_str(), (root + "/a/link").c_str()) == 0);
  fs::remove_all(root + "/a");
  CHECK_FALSE(fs::exists(root + "/a"));
  CHECK(fs::read_file(root + "/outside/keep.txt") == "keep");
  fs::remove_all(root + "/does-not-exist");  // absent: nothing to do, no error
  CHECK(fs::remove(root + "/outside/keep.txt"));
  CHECK_FALSE(fs::remove(root + "/outside/keep.txt"));
  CHECK(fs::is_empty_directory(root + "/outside"));
}

TEST_CASE("write_file_atomic replaces whole files and leaves no temporary behind", "[io][fs]") {
  const std::string root = mp::test::temp_dir("fs_atomic");
  fs::write_file_atomic(root + "/f", "old");
  fs::write_file_atomic(root + "/f", "new contents");
  CHECK(fs::read_file(root + "/f") == "new contents");
  CHECK(fs::list_directory(root) == std::vector<std::string>{"f"});
  // An unwritable destination names the path and leaves nothing.
  CHECK_THROWS_WITH(fs::write_file_atomic(root + "/missing-dir/f", "x"), Catch::Contains(root + "/missing-dir/f"));
  fs::rename(root + "/f", root + "/g");
  CHECK(fs::list_directory(root) == std::vector<std::string>{"g"});
  CHECK_THROWS_WITH(fs::rename(root + "/nope", root + "/h"), Catch::Contains("cannot rename"));
}
