// hybrid: hybrid SSM / attention / MLP language models as types. The one include users need.
#pragma once

#include "config.hpp"
#include "desc.hpp"
#include "block.hpp"
#include "layout.hpp"
#include "runtime_model.hpp"
#include "typed_model.hpp"
#include "aliases.hpp"
