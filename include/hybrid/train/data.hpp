// Training data lives in include/hybrid/data/ (namespace hybrid::data): source.hpp,
// synthetic.hpp, text.hpp, shards.hpp. This forwards the one trainer.hpp uses, for that file.
#pragma once
#include "../data/source.hpp"
