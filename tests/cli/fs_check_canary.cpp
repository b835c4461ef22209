// Deliberately uses std::filesystem: the test `std_filesystem_check_catches` runs the post-link check on this
// program and expects it to be refused, so a broken check (wrong nm flags, a mangling it misses) cannot pass.
#include <filesystem>

int main(int argc, char** argv) {
  if (argc > 1) std::filesystem::remove_all(argv[1]);
  return 0;
}
