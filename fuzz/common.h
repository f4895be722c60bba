// What the fuzz harnesses share: a file the input is written to (for readers that take a path), and where the
// shared test data is. Each harness's contract: any input ends in a result or a rill::Error (or, for
// requests, an openai::ApiError); anything else (a crash, a sanitizer report, another exception, a hang) is a
// finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace rill::fuzz {

// A path under /dev/shm (or TMPDIR) private to this process, ending in `name`.
inline std::string scratch_path(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (tmp ? tmp : "/tmp")) +
                          "/rill-fuzz-" + std::to_string(getpid());
  std::system(("mkdir -p " + dir).c_str());
  return dir + "/" + name;
}

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

inline std::string shared_dir() {
  const char* env = std::getenv("RILL_SHARED_DIR");
  return env ? env : RILL_DEFAULT_SHARED_DIR;
}

}  // namespace rill::fuzz
