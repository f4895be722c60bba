// Core helpers: string utilities and memory sizes.
#include <gtest/gtest.h>

#include "core/strings.h"

namespace rill {
namespace {

TEST(ReplaceAll, CountsAndEmptyPattern) {
  EXPECT_EQ(replace_all("a-b-c", "-", "+"), "a+b+c");
  EXPECT_EQ(replace_all("a-b-c", "-", "+", 1), "a+b-c");
  EXPECT_EQ(replace_all("abc", "", "x"), "abc");
}

TEST(MemorySize, UnitsAreBinary) {
  EXPECT_EQ(parse_memory_size("1000000", 0), 1000000u);
  EXPECT_EQ(parse_memory_size("512B", 0), 512u);
  EXPECT_EQ(parse_memory_size("64K", 0), 64u << 10);
  EXPECT_EQ(parse_memory_size("512MiB", 0), 512u << 20);
  EXPECT_EQ(parse_memory_size("2GiB", 0), size_t(2) << 30);
  EXPECT_EQ(parse_memory_size("1.5G", 0), size_t(3) << 29);
  EXPECT_EQ(parse_memory_size("1e9", 0), 1000000000u);
}

TEST(MemorySize, PercentOfAvailable) {
  EXPECT_EQ(parse_memory_size("40%", 1000), 400u);
  EXPECT_EQ(parse_memory_size("100%", 1000), 1000u);
  EXPECT_EQ(parse_memory_size("101%", 1000), std::nullopt);
  EXPECT_EQ(parse_memory_size("0.01%", 1000), std::nullopt);  // rounds to nothing
}

TEST(MemorySize, RejectsWhatIsNotASize) {
  for (const char* bad : {"", "GiB", "-1GiB", "0", "2 GiB", "2GB", "2TiB", "nan", "inf", "1e30"})
    EXPECT_EQ(parse_memory_size(bad, 1000), std::nullopt) << bad;
}

TEST(MemorySize, SystemReportsSomeMemory) { EXPECT_GT(available_system_memory(), size_t(1) << 20); }

}  // namespace
}  // namespace rill
