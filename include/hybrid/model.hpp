// hybrid: hybrid SSM / attention / MLP language models as types. The one include research
// code needs: model types and aliases, training (data sources, optimisers, the trainer,
// training checkpoints), checkpoints and Hugging Face directories, decode state, sampling
// and generation. Optional pieces with their own dependencies have their own headers:
// tokenizer/sentencepiece.hpp and tokenizer/bpe.hpp (CMake target hybrid::tokenizers).
#pragma once

#include "config.hpp"
#include "desc.hpp"
#include "block.hpp"
#include "layout.hpp"
#include "runtime_model.hpp"
#include "typed_model.hpp"
#include "aliases.hpp"
#include "alias_registry.hpp"
#include "data/shards.hpp"
#include "data/synthetic.hpp"
#include "data/text.hpp"
#include "train/optim.hpp"
#include "train/trainer.hpp"
#include "train/checkpoint.hpp"
#include "io/checkpoint.hpp"
#include "hf/checkpoint.hpp"
#include "infer/generate.hpp"
