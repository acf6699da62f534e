#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <hybrid/ops/op_table.hpp>
#include <string>

// Lives here because only the implementing translation unit sees doctest's registry.
TEST_CASE("op table: every op has a backward checked by a finite-difference test") {
  for (const auto& op : hybrid::ops::op_table) {
    CAPTURE(op.name);
    CHECK_FALSE(op.backward.empty());
    bool found = false;
    for (const auto& tc : doctest::detail::getRegisteredTests())
      if (std::string(tc.m_name).rfind(std::string(op.fd_test), 0) == 0) found = true;
    CHECK_MESSAGE(found, "no test case named '", std::string(op.fd_test), "...'");
  }
}
