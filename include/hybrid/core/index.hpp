// The index type of every size and offset: 64-bit, so products of sizes never overflow.
#pragma once
#include <cstdint>

namespace hybrid {
using Index = std::int64_t;
}  // namespace hybrid
